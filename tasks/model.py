"""Model stage task: the base model every later stage starts from (tiny default, hub id, or local folder)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

from prefect import get_run_logger, task

from evisrag_core import modeling
from evisrag_core.config import Params
from evisrag_core.data.schema import SFT_FILE
from evisrag_core.io import atomic_dir, read_jsonl
from tasks import TASK_DEFAULTS


def _training_texts(data_dir: Path) -> Iterator[str]:
    sft = data_dir / "train" / SFT_FILE
    if sft.is_file():
        for row in read_jsonl(sft):
            for message in row.get("messages", []):
                yield str(message.get("content", ""))


@task(name="write-base-model", retries=1, retry_delay_seconds=10, **TASK_DEFAULTS)
def write_base_model(params: Params) -> Path:
    cfg, logger = params.model, get_run_logger()
    with atomic_dir(cfg.out_dir) as out:
        if cfg.source == "tiny":
            modeling.build_tiny_model(
                out,
                cfg.tiny,
                _training_texts(Path(params.data.out_dir)),
                params.seed,
                params.predict.min_pixels,
                params.predict.max_pixels,
            )
        elif cfg.source == "hub":
            modeling.download_model(cfg.name_or_path, out, cfg.revision)
        else:
            shutil.copytree(cfg.name_or_path, out, dirs_exist_ok=True)
        # A folder that cannot be loaded must never become the stage's output.
        modeling.verify_model_dir(out, trust_remote_code=cfg.trust_remote_code)
    logger.info("base model (%s) ready in %s", cfg.source, cfg.out_dir)
    return Path(cfg.out_dir)
