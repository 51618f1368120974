"""Reliable fetching: retries with exponential backoff, and checksums of downloaded hub snapshots.

Both are plain functions of their inputs (the fetch and the sleep are arguments), so they are tested without a
network; `evisrag_core.data.hub` wires them to `huggingface_hub.snapshot_download`.

Resuming is huggingface_hub's own: a file is downloaded to `blobs/<etag>.incomplete` and a new attempt continues
it with an HTTP Range request; finished files are reused from the cache. What it checks is the size. The checksum
here adds the content: the cache names each blob after its hub etag, which is the file's sha256 for LFS files
and its git blob id (sha1 of `blob <size>\\0` + content) for small files, so every file of a snapshot can be
checked offline against the name it was stored under.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")

# (reason, worth retrying) for an error that means "could not fetch"; None for any other error (raised as is).
Classify = Callable[[BaseException], tuple[str, bool] | None]

_SHA256 = re.compile(r"[0-9a-f]{64}")
_GIT_SHA1 = re.compile(r"[0-9a-f]{40}")
_CHUNK = 1 << 20


class FetchGaveUp(RuntimeError):
    """Fetching failed for good: `reason` says why, after `attempts` attempts; the last error is the cause."""

    def __init__(self, reason: str, attempts: int):
        super().__init__(f"{reason} (after {attempts} attempt(s))")
        self.reason, self.attempts = reason, attempts


class ChecksumError(RuntimeError):
    """Downloaded files whose content does not match the hash the hub gave them."""


def backoff_delays(tries: int, backoff_s: float, max_delay_s: float = 60.0) -> list[float]:
    """The waits between `tries` attempts: backoff_s, 2·backoff_s, 4·backoff_s, ..., each at most max_delay_s."""
    if tries < 1:
        raise ValueError(f"tries must be >= 1, got {tries}")
    return [min(backoff_s * 2**attempt, max_delay_s) for attempt in range(tries - 1)]


def retry_with_backoff(
    fetch: Callable[[], T],
    classify: Classify,
    *,
    tries: int,
    backoff_s: float,
    label: str,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """`fetch()`, retried on errors `classify` calls retryable, waiting `backoff_delays` in between.

    An error `classify` does not know is raised unchanged at once (a bug is not a network problem); a known but
    permanent one (missing repository, offline mode), or the last retryable one, raises FetchGaveUp from it.
    """
    delays = backoff_delays(tries, backoff_s)
    for attempt in range(1, tries + 1):
        try:
            return fetch()
        except Exception as err:
            failure = classify(err)
            if failure is None:
                raise
            reason, retryable = failure
            if not retryable or attempt == tries:
                raise FetchGaveUp(reason, attempt) from err
            delay = delays[attempt - 1]
            log.warning("%s: %s; retrying in %.1f s (attempt %d of %d)", label, reason, delay, attempt + 1, tries)
            sleep(delay)
    raise AssertionError("unreachable: the last attempt returns or raises")


def git_blob_sha1(path: Path) -> str:
    """The id git (and the hub's etag) gives a small file: sha1 over `blob <size>\\0` and the content."""
    digest = hashlib.sha1(f"blob {path.stat().st_size}\0".encode(), usedforsecurity=False)
    _update(digest, path)
    return digest.hexdigest()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    _update(digest, path)
    return digest.hexdigest()


def _update(digest: hashlib._Hash, path: Path) -> None:
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)


def corrupt_files(snapshot_dir: Path) -> tuple[list[Path], int]:
    """(files whose content does not match their blob's etag, files checked) for a hub cache snapshot folder.

    A snapshot file is a symlink to `../../blobs/<etag>` (or, where symlinks are unsupported, a copy with no etag
    to check against: skipped, not counted as checked).
    """
    bad, checked = [], 0
    for path in sorted(Path(snapshot_dir).rglob("*")):
        if not path.is_symlink() or not path.is_file():
            continue
        etag = Path(os.readlink(path)).name
        if _SHA256.fullmatch(etag):
            actual = sha256_of(path)
        elif _GIT_SHA1.fullmatch(etag):
            actual = git_blob_sha1(path)
        else:
            continue
        checked += 1
        if actual != etag:
            bad.append(path)
    return bad, checked


def drop_corrupt(files: list[Path]) -> None:
    """Delete corrupt blobs and their snapshot links, so the next `snapshot_download` fetches them again."""
    for link in files:
        link.resolve().unlink(missing_ok=True)
        link.unlink(missing_ok=True)
