"""Downloads: retry with exponential backoff (fake fetches, no network), snapshot checksums on a hub-cache layout,
and the real huggingface_hub client against an unreachable hub."""

from __future__ import annotations

import hashlib
import logging
import subprocess
import time
from pathlib import Path

import pytest

from evisrag_core.data import fetch
from evisrag_core.data.snapshot import HubUnavailableError, _hub_failure, hub_test_repo, snapshot


@pytest.mark.parametrize(
    ("tries", "backoff_s", "max_delay_s", "expected"),
    [
        (1, 2.0, 60.0, []),
        (3, 2.0, 60.0, [2.0, 4.0]),
        (5, 1.5, 60.0, [1.5, 3.0, 6.0, 12.0]),
        (6, 10.0, 30.0, [10.0, 20.0, 30.0, 30.0, 30.0]),  # capped
    ],
)
def test_backoff_doubles_up_to_the_cap(tries: int, backoff_s: float, max_delay_s: float, expected: list[float]):
    assert fetch.backoff_delays(tries, backoff_s, max_delay_s) == expected


def test_backoff_needs_at_least_one_try():
    with pytest.raises(ValueError, match="tries must be >= 1"):
        fetch.backoff_delays(0, 1.0)


class FlakyFetch:
    """Raises the given errors in turn, then returns "snapshot"; counts its calls."""

    def __init__(self, *errors: BaseException):
        self.errors, self.calls = list(errors), 0

    def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "snapshot"


def retry(flaky: FlakyFetch, tries: int, waits: list[float]) -> str:
    return fetch.retry_with_backoff(flaky, _hub_failure, tries=tries, backoff_s=2.0, label="repo", sleep=waits.append)


def test_transient_errors_are_retried_with_growing_waits(caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.WARNING, logger="evisrag_core.data.fetch")
    flaky, waits = FlakyFetch(ConnectionError("reset"), TimeoutError("slow")), []
    assert retry(flaky, tries=3, waits=waits) == "snapshot"
    assert flaky.calls == 3 and waits == [2.0, 4.0]
    assert [r.getMessage() for r in caplog.records] == [
        "repo: the hub is unreachable (connection failed); retrying in 2.0 s (attempt 2 of 3)",
        "repo: the hub is unreachable (connection failed); retrying in 4.0 s (attempt 3 of 3)",
    ]


def test_the_last_transient_error_gives_up_with_its_reason():
    flaky, waits = FlakyFetch(*[ConnectionError("down")] * 4), []
    with pytest.raises(fetch.FetchGaveUp, match=r"unreachable.*after 4 attempt") as excinfo:
        retry(flaky, tries=4, waits=waits)
    assert flaky.calls == 4 and waits == [2.0, 4.0, 8.0]
    assert isinstance(excinfo.value.__cause__, ConnectionError)


class RepositoryNotFoundError(Exception):
    """Named like huggingface_hub's: the classifier goes by class name, whichever HTTP client raised it."""


def test_a_permanent_error_is_not_retried():
    flaky, waits = FlakyFetch(RepositoryNotFoundError("404")), []
    with pytest.raises(fetch.FetchGaveUp, match=r"not found.*after 1 attempt"):
        retry(flaky, tries=5, waits=waits)
    assert flaky.calls == 1 and waits == []


def test_an_unknown_error_is_raised_unchanged_at_once():
    flaky, waits = FlakyFetch(KeyError("a bug, not the network")), []
    with pytest.raises(KeyError):
        retry(flaky, tries=5, waits=waits)
    assert flaky.calls == 1 and waits == []


# --- checksums of a hub cache snapshot ---------------------------------------------------------------------------


def cached_snapshot(cache: Path, files: dict[str, bytes], lfs: set[str]) -> Path:
    """A hub cache snapshot as huggingface_hub lays it out: snapshot files link to blobs named by their etag."""
    blobs, snap = cache / "blobs", cache / "snapshots" / ("c" * 40)
    blobs.mkdir(parents=True)
    for name, data in files.items():
        etag = hashlib.sha256(data).hexdigest() if name in lfs else git_hash_object(cache, data)
        (blobs / etag).write_bytes(data)
        link = snap / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(Path("../" * (len(Path(name).parts) + 1)) / "blobs" / etag)
    return snap


def git_hash_object(tmp: Path, data: bytes) -> str:
    """The id real git gives the content (what the hub sends as the etag of a non-LFS file)."""
    scratch = tmp / "scratch.bin"
    scratch.write_bytes(data)
    out = subprocess.run(["git", "hash-object", str(scratch)], capture_output=True, text=True, check=True)
    scratch.unlink()
    return out.stdout.strip()


FILES = {"top3_test.jsonl": b'{"qid": 1}\n', "imgs/1.png": b"\x89PNG" + bytes(range(256)) * 40}


def test_git_blob_id_matches_git(tmp_path: Path):
    path = tmp_path / "f.jsonl"
    path.write_bytes(FILES["top3_test.jsonl"])
    assert fetch.git_blob_sha1(path) == git_hash_object(tmp_path, FILES["top3_test.jsonl"])


def test_an_intact_snapshot_passes_and_every_file_is_checked(tmp_path: Path):
    snap = cached_snapshot(tmp_path / "cache", FILES, lfs={"imgs/1.png"})
    assert fetch.corrupt_files(snap) == ([], 2)


def test_a_corrupt_blob_is_found_and_dropped_for_refetching(tmp_path: Path):
    snap = cached_snapshot(tmp_path / "cache", FILES, lfs={"imgs/1.png"})
    image = snap / "imgs" / "1.png"
    blob = image.resolve()
    blob.write_bytes(blob.read_bytes()[:-10])  # a download cut short that kept its final name
    corrupt, checked = fetch.corrupt_files(snap)
    assert (corrupt, checked) == ([image], 2)
    fetch.drop_corrupt(corrupt)
    assert not blob.exists() and not image.is_symlink()
    assert (snap / "top3_test.jsonl").is_file()


# --- the real client against an unreachable hub --------------------------------------------------------------------


@pytest.fixture
def unreachable_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # closed port: refused at once


def test_unreachable_hub_fails_fast_and_says_how_to_run_without_it(unreachable_hub: None, tmp_path: Path):
    start = time.monotonic()
    with pytest.raises(HubUnavailableError) as excinfo:
        snapshot(hub_test_repo("InfoVQA"), tmp_path / "cache", tries=2, backoff_s=0.05)
    assert time.monotonic() - start < 15.0
    message = str(excinfo.value)
    assert "openbmb/EVisRAG-Test-InfoVQA" in message and "after 2 attempt(s)" in message
    assert "data.source: embedded" in message
    assert "data.source: local" in message and "data.local_dir" in message


def test_a_corrupt_cached_file_that_cannot_be_refetched_is_an_error(unreachable_hub: None, tmp_path: Path):
    """Offline, the client serves the cache; a blob that fails its checksum is dropped, and since it cannot be
    fetched again the download stops naming the file instead of converting damaged data."""
    repo = hub_test_repo("DocVQA")
    storage = tmp_path / "cache" / f"datasets--{repo.replace('/', '--')}"
    snap = cached_snapshot(storage, FILES, lfs={"imgs/1.png"})
    (storage / "refs").mkdir()
    (storage / "refs" / "main").write_text(snap.name)
    blob = (snap / "imgs" / "1.png").resolve()
    blob.write_bytes(b"not the image the hub hashed")
    with pytest.raises(fetch.ChecksumError, match=r"imgs/1\.png did not match the hub's checksum") as excinfo:
        snapshot(repo, tmp_path / "cache", tries=1)
    assert "evisrag download" in str(excinfo.value)
    assert not blob.exists()
