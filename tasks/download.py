"""Download stage tasks: write the dataset in the project's format (embedded generator, hub or local folder)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from tqdm import tqdm

from evisrag_core.config import DataParams, Params
from evisrag_core.data import hub
from evisrag_core.data.generator import GeneratorSpec, write_world
from evisrag_core.data.schema import RL_FILE, SFT_FILE, TEST_FILE
from evisrag_core.data.verify import verify_split
from evisrag_core.data.worlds import world_named
from evisrag_core.io import atomic_dir
from tasks import TASK_DEFAULTS


def _generate(data: DataParams, seed: int, out: Path) -> dict[str, Any]:
    cfg = data.embedded
    spec = GeneratorSpec(seed, cfg.image_size, cfg.images_per_question, cfg.insufficient_fraction)
    total = cfg.n_test_per_split * len(cfg.splits) + cfg.n_sft + cfg.n_rl
    with tqdm(total=total, desc="generate", unit="q") as bar:
        world = world_named(cfg.world)
        return write_world(world, out, spec, cfg.splits, cfg.n_test_per_split, cfg.n_sft, cfg.n_rl, bar.update)


@task(name="write-dataset", retries=2, retry_delay_seconds=[5, 30], **TASK_DEFAULTS)
def write_dataset(params: Params) -> dict[str, Any]:
    """Write the dataset; every path builds it beside `data.out_dir`, verifies it, then moves it into place."""
    data = params.data
    if data.source == "embedded":
        with atomic_dir(data.out_dir) as out:
            manifest = _generate(data, params.seed, out)
            verify_dataset(out, manifest)
    elif data.source == "hub":
        manifest = hub.download_from_hub(
            Path(data.out_dir),
            Path(data.hub_cache_dir),
            data.benchmarks,
            data.include_train,
            data.hub_revision,
            train_repo=data.hub_train_repo,
        )
    else:
        manifest = hub.import_local(Path(data.local_dir or ""), Path(data.out_dir), data.benchmarks, data.include_train)
    get_run_logger().info("dataset (%s) written to %s: %s", data.source, data.out_dir, manifest["counts"])
    return manifest


def verify_dataset(root: Path, manifest: dict[str, Any]) -> None:
    """Row counts match the manifest and every referenced image exists inside its folder and decodes."""
    files = {"train/sft": ("train", SFT_FILE), "train/rl": ("train", RL_FILE)}
    for key, expected in tqdm(manifest["counts"].items(), desc="verify", unit="split"):
        folder, name = files.get(key, (key, TEST_FILE))
        verify_split(root / folder, name, expected)
