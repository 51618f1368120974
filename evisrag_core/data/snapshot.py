"""Hub snapshots of the released EVisRAG data: the repository names, and a download whose files match the hub.

Test sets are `openbmb/EVisRAG-Test-<Name>` (HUB_TEST_SETS). The training data is announced as EVisRAG-Train; a
later README revision uploads "a temporary EVisRAG-Train" at HUB_TRAIN_MIRROR, so HUB_TRAIN_REPO may not exist: pass
`train_repo=` to use the mirror. What a snapshot holds, and how it is converted: `evisrag_core.data.convert`.

`revision` applies to every repository downloaded (a branch or tag name; a commit hash only fits one repo); the
commit each snapshot resolved to is recorded in the manifest (`evisrag_core.data.hub`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

from evisrag_core.data import fetch
from evisrag_core.errors import UserError

logger = logging.getLogger(__name__)

HUB_TEST_SETS = ("ChartQA", "InfoVQA", "SlideVQA", "DocVQA", "ViDoSeek")
HUB_TRAIN_REPO = "openbmb/EVisRAG-Train"
HUB_TRAIN_MIRROR = "hmhm1229/EVisRAG-Train"


class HubUnavailableError(UserError, RuntimeError):
    """The hub could not serve a repository; the message says how to run without it."""


def hub_test_repo(name: str) -> str:
    """The hub dataset id of one benchmark's test set."""
    if name not in HUB_TEST_SETS:
        raise ValueError(f"unknown benchmark {name!r}; the hub test sets are {list(HUB_TEST_SETS)}")
    return f"openbmb/EVisRAG-Test-{name}"


def _without_hub_hint() -> str:
    return (
        "To run without the hub, set `data.source: embedded` in params.yaml (the generated default data), or "
        "download the snapshots on a connected machine, copy them here and set `data.source: local` with "
        "`data.local_dir: <folder holding EVisRAG-Test-<Name>/ and EVisRAG-Train/>`."
    )


def _error_chain(err: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _type_names(err: BaseException) -> set[str]:
    return {cls.__name__ for cls in type(err).__mro__}


def _hub_failure(err: BaseException) -> tuple[str, bool] | None:
    """(reason, worth retrying) when `err` means the hub could not serve the repo; None for any other error.

    Checked by class name so the test does not depend on which HTTP client a huggingface_hub version uses.
    """
    chain = list(_error_chain(err))
    names = set().union(*(_type_names(e) for e in chain))
    if "OfflineModeIsEnabled" in names:
        return "downloads are disabled (HF_HUB_OFFLINE is set)", False
    if names & {"RepositoryNotFoundError", "GatedRepoError", "RevisionNotFoundError"}:
        return "the repository or revision was not found, or needs an accepted licence and HF_TOKEN", False
    for item in chain:
        status = getattr(getattr(item, "response", None), "status_code", None)
        if "HfHubHTTPError" in _type_names(item) and status is not None:
            return f"the hub answered HTTP {status}", status >= 500 or status == 429
    if names & {"TransportError", "ConnectionError", "TimeoutError", "LocalEntryNotFoundError"}:
        return "the hub is unreachable (connection failed)", True
    return None


def _describe(err: BaseException) -> str:
    return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"


def _download(repo_id: str, cache_dir: Path, revision: str | None) -> Path:
    from huggingface_hub import snapshot_download  # lazy: the embedded and local paths never need it

    # The token comes from the environment only (False: never fall back to a stored login), and the endpoint is
    # read at call time so HF_ENDPOINT set after import (a mirror) is honoured.
    path = snapshot_download(
        repo_id=repo_id,
        repo_type="dataset",
        revision=revision,
        cache_dir=str(cache_dir),
        token=os.environ.get("HF_TOKEN") or False,
        endpoint=os.environ.get("HF_ENDPOINT") or None,
    )
    return Path(path)


def snapshot(
    repo_id: str, cache_dir: Path, revision: str | None = None, *, tries: int = 3, backoff_s: float = 2.0
) -> Path:
    """Download (or reuse from `cache_dir`) a dataset snapshot whose files all match their hub checksums.

    Connection failures and hub-side errors (5xx, 429) are retried with exponential backoff (`backoff_s`, then
    twice that, ...) up to `tries` attempts in all; a missing repo or offline mode fails at once. An interrupted
    download resumes where it stopped (huggingface_hub's `.incomplete` files). Files whose content does not match
    their etag are deleted and fetched once more. Every failure to get the data raises HubUnavailableError saying
    what to do instead.
    """
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}:
        raise HubUnavailableError(
            f"cannot download {repo_id}: HF_HUB_OFFLINE is set, so the hub is disabled. {_without_hub_hint()}"
        )
    path = _fetch_snapshot(repo_id, Path(cache_dir), revision, tries, backoff_s)
    corrupt, checked = fetch.corrupt_files(path)
    if corrupt:
        logger.warning("%s: %d of %d files fail their checksum; fetching them again", repo_id, len(corrupt), checked)
        fetch.drop_corrupt(corrupt)
        path = _fetch_snapshot(repo_id, Path(cache_dir), revision, tries, backoff_s)
        # Offline, the client returns the cached snapshot without the dropped files: those count as failures too.
        still = [p for p in corrupt if not p.is_file()] + fetch.corrupt_files(path)[0]
        if still:
            raise fetch.ChecksumError(
                f"{repo_id}: {', '.join(str(p.relative_to(path)) for p in still)} did not match the hub's checksum "
                f"and could not be fetched again; delete {cache_dir} and run `evisrag download` on a connected machine"
            )
    logger.info("%s: %d files match their hub checksums", repo_id, checked)
    return path


def _fetch_snapshot(repo_id: str, cache_dir: Path, revision: str | None, tries: int, backoff_s: float) -> Path:
    try:
        return fetch.retry_with_backoff(
            lambda: _download(repo_id, cache_dir, revision),
            _hub_failure,
            tries=tries,
            backoff_s=backoff_s,
            label=repo_id,
        )
    except fetch.FetchGaveUp as err:
        cause = err.__cause__ or err
        raise HubUnavailableError(
            f"cannot download dataset {repo_id} from the Hugging Face hub after {err.attempts} attempt(s): "
            f"{err.reason} ({_describe(cause)}). {_without_hub_hint()}"
        ) from err
