"""Predict stage task: one prediction file per benchmark, resumable across crashes.

Work in progress is kept in `work/predict/<fingerprint>/` (outside DVC's outputs, which DVC deletes before a
stage runs); the fingerprint covers the model files, the test file and the predict params, so a rerun after a
crash resumes only when nothing it depends on changed. A finished file is copied into the output folder in one
rename.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from prefect import get_run_logger, task
from tqdm import tqdm

from evisrag_core import predict as core
from evisrag_core.bad_records import BadRecords
from evisrag_core.config import Params, PredictParams
from evisrag_core.data.schema import TEST_FILE, load_test_split
from evisrag_core.io import atomic_path
from evisrag_core.modeling import load_model_and_processor, require_local_model_dir
from tasks import TASK_DEFAULTS

WORK_DIR = Path("work/predict")
_FULL_HASH_LIMIT = 256 * 1024 * 1024


def _file_digest(path: Path) -> str:
    # Large weight files are identified by size and mtime: hashing 15 GB on every run would cost minutes.
    stat = path.stat()
    if stat.st_size > _FULL_HASH_LIMIT:
        return f"{stat.st_size}-{stat.st_mtime_ns}"
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fingerprint(model_dir: Path, test_file: Path, params: PredictParams) -> str:
    digest = hashlib.sha256(json.dumps(params.model_dump(mode="json"), sort_keys=True).encode())
    for path in sorted(p for p in model_dir.rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(model_dir)}:{_file_digest(path)}".encode())
    digest.update(_file_digest(test_file).encode())
    return digest.hexdigest()[:16]


def make_backend(params: PredictParams, model_dir: Path, trust_remote_code: bool) -> core.Backend:
    sampling, pixels = core.Sampling.from_params(params), (params.min_pixels, params.max_pixels)
    core.set_cpu_threads()
    require_local_model_dir(model_dir, "evisrag model / evisrag sft")
    if params.backend == "vllm":
        from transformers import AutoProcessor

        processor = AutoProcessor.from_pretrained(str(model_dir), trust_remote_code=trust_remote_code)
        return core.VllmBackend(str(model_dir), processor, sampling, params.prompt_template, pixels)
    model, processor = load_model_and_processor(model_dir, trust_remote_code=trust_remote_code)
    return core.TransformersBackend(model, processor, sampling, params.prompt_template, pixels)


@task(name="predict-benchmark", **TASK_DEFAULTS)
def predict_benchmark(
    params: Params, backend: core.Backend, model_dir: Path, split_dir: Path, out_file: Path
) -> dict[str, int]:
    cfg = params.predict
    bad = BadRecords(cfg.on_bad_record)
    records = load_test_split(split_dir, bad)
    requests = core.build_requests(records, split_dir, cfg.top_k, cfg.max_images_per_prompt, bad)
    partial = WORK_DIR / fingerprint(model_dir, split_dir / TEST_FILE, cfg) / out_file.name
    with tqdm(total=len(requests), desc=f"predict {split_dir.name}", unit="q") as bar:
        generated = core.predict_split(requests, partial, backend, cfg.batch_size, bar.update)
    with atomic_path(out_file) as tmp:
        tmp.write_bytes(partial.read_bytes())
    get_run_logger().info("%s: %d generated now, %d resumed", split_dir.name, generated, len(requests) - generated)
    counts = {"questions": len(requests), "generated": generated, "resumed": len(requests) - generated}
    return counts | {"skipped_records": bad.count}


def check_replaceable(out_dir: Path) -> Path:
    """The predictions folder is replaced as a whole; refuse one that holds anything but prediction files."""
    if out_dir.is_dir():
        foreign = sorted(p.name for p in out_dir.iterdir() if not (p.is_file() and p.suffix == ".jsonl"))
        if foreign:
            raise FileExistsError(
                f"{out_dir} is replaced as a whole by predict but holds other files ({', '.join(foreign[:5])}); "
                "choose an empty or new folder with --out"
            )
    return out_dir
