"""Import the released EVisRAG data from the Hugging Face hub, or from a local copy of its snapshots.

The jobs, one module each: `snapshot` downloads and checks a hub snapshot; `convert` (test sets) and `convert_train`
(SFT and RL data) turn it into the layout of `evisrag_core.data.schema`, with `image_store` writing the images;
`verify` checks every written split. The whole output folder is built beside the target and swapped in only after
every split verified, so a failed import leaves the previous data untouched.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from evisrag_core.data.convert import convert_test_set
from evisrag_core.data.convert_train import convert_train_set
from evisrag_core.data.schema import MANIFEST_FILE, RL_VAL_FILE, TEST_FILE
from evisrag_core.data.snapshot import HUB_TEST_SETS, HUB_TRAIN_REPO, hub_test_repo, snapshot
from evisrag_core.data.verify import verify_split
from evisrag_core.errors import InputNotFoundError
from evisrag_core.io import atomic_dir, write_json_atomic

logger = logging.getLogger(__name__)

LOCAL_TEST_DIR = "EVisRAG-Test-{name}"
LOCAL_TRAIN_DIR = "EVisRAG-Train"


def _build(out_dir: Path, tests: dict[str, Path], train: Path | None, info: dict[str, Any]) -> dict[str, Any]:
    """Convert and verify every split into a staged folder, then write the manifest.

    `counts` holds the splits of the schema (test sets, train/sft, train/rl), keyed like the embedded generator's
    manifest; RL validation rows are counted apart in `validation_counts` so readers of `counts` see only those.
    """
    counts: dict[str, int] = {}
    validation: dict[str, int] = {}
    with atomic_dir(out_dir) as stage:
        for name, snapshot_dir in tests.items():
            split = stage / "test" / name
            counts[f"test/{name}"] = verify_split(split, TEST_FILE, convert_test_set(snapshot_dir, split))
        if train is not None:
            for file_name, rows in convert_train_set(train, stage / "train").items():
                target = validation if file_name == RL_VAL_FILE else counts
                target[f"train/{Path(file_name).stem}"] = verify_split(stage / "train", file_name, rows)
        manifest = {**info, "benchmarks": list(tests), "counts": counts}
        if validation:
            manifest["validation_counts"] = validation
        write_json_atomic(stage / MANIFEST_FILE, manifest)
    logger.info("wrote %s from %s: %s", out_dir, info["source"], counts)
    return manifest


def _check_benchmarks(benchmarks: list[str]) -> None:
    unknown = [b for b in benchmarks if b not in HUB_TEST_SETS]
    if unknown or not benchmarks:
        raise ValueError(f"benchmarks must be a non-empty subset of {list(HUB_TEST_SETS)}; got {benchmarks}")


def download_from_hub(
    out_dir: Path,
    cache_dir: Path,
    benchmarks: list[str],
    include_train: bool,
    revision: str | None,
    *,
    train_repo: str = HUB_TRAIN_REPO,
    tries: int = 3,
    backoff_s: float = 2.0,
) -> dict[str, Any]:
    """Download the chosen test sets (and the training data) and write them to `out_dir`; returns the manifest."""
    _check_benchmarks(benchmarks)
    repos = {name: hub_test_repo(name) for name in benchmarks}
    if include_train:
        repos[LOCAL_TRAIN_DIR] = train_repo
    snapshots = {
        key: snapshot(repo, Path(cache_dir), revision, tries=tries, backoff_s=backoff_s) for key, repo in repos.items()
    }
    info = {
        "source": "hub",
        "revision": revision,
        "repos": {repo: snapshots[key].name for key, repo in repos.items()},  # repo -> snapshot commit
    }
    train = snapshots.pop(LOCAL_TRAIN_DIR, None)
    return _build(Path(out_dir), snapshots, train, info)


def import_local(
    local_dir: Path, out_dir: Path, benchmarks: list[str] | None = None, include_train: bool = True
) -> dict[str, Any]:
    """Convert snapshots copied by hand (`<local_dir>/EVisRAG-Test-<Name>/`, `<local_dir>/EVisRAG-Train/`).

    `benchmarks=None` takes every test set present. Returns the manifest.
    """
    local_dir = Path(local_dir)
    if benchmarks is None:
        benchmarks = [n for n in HUB_TEST_SETS if (local_dir / LOCAL_TEST_DIR.format(name=n)).is_dir()]
        if not benchmarks:
            raise InputNotFoundError(f"{local_dir}: no EVisRAG-Test-<Name> folder; expected one of {HUB_TEST_SETS}")
    _check_benchmarks(benchmarks)
    tests = {name: local_dir / LOCAL_TEST_DIR.format(name=name) for name in benchmarks}
    train = local_dir / LOCAL_TRAIN_DIR if include_train else None
    for folder in [*tests.values(), *([train] if train else [])]:
        if not folder.is_dir():
            raise InputNotFoundError(f"{folder} not found; copy the hub snapshot there (see evisrag_core.data.convert)")
    info = {"source": "local", "local_dir": str(local_dir.resolve())}
    return _build(Path(out_dir), tests, train, info)
