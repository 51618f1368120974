"""Predict stage task: one prediction file per benchmark, resumable across crashes.

Work in progress is kept in `work/predict/<fingerprint>/` (outside DVC's outputs, which DVC deletes before a
stage runs); the fingerprint covers the model files, the test file and the predict params, so a rerun after a
crash resumes only when nothing it depends on changed. A finished file is copied into the output folder in one
rename.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from prefect import get_run_logger, task
from tqdm import tqdm

from evisrag_core import predict as core
from evisrag_core.backend_choice import make_backend
from evisrag_core.bad_records import BadRecords
from evisrag_core.config import Params, PredictParams
from evisrag_core.data.schema import TEST_FILE, list_benchmarks, load_test_split
from evisrag_core.errors import UserError
from evisrag_core.io import atomic_dir, atomic_path, read_jsonl
from tasks import TASK_DEFAULTS, tracking

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
        # vLLM takes the whole split in one call and schedules it itself (continuous batching)
        batch_size = max(1, len(requests)) if getattr(backend, "batch_all", False) else cfg.batch_size
        generated = core.predict_split(requests, partial, backend, batch_size, bar.update)
    with atomic_path(out_file) as tmp:
        tmp.write_bytes(partial.read_bytes())
    get_run_logger().info("%s: %d generated now, %d resumed", split_dir.name, generated, len(requests) - generated)
    counts = {"questions": len(requests), "generated": generated, "resumed": len(requests) - generated}
    return counts | {"skipped_records": bad.count}


class OutputInTheWayError(UserError, FileExistsError):
    """The output folder holds files predict would delete; the user chooses another."""


def check_replaceable(out_dir: Path) -> Path:
    """The predictions folder is replaced as a whole; refuse one that holds anything but prediction files."""
    if out_dir.is_dir():
        foreign = sorted(p.name for p in out_dir.iterdir() if not (p.is_file() and p.suffix == ".jsonl"))
        if foreign:
            raise OutputInTheWayError(
                f"{out_dir} is replaced as a whole by predict but holds other files ({', '.join(foreign[:5])}); "
                "choose an empty or new folder with --out"
            )
    return out_dir


def predict_all(params: Params, model_dir: Path, data_dir: Path, out_dir: Path) -> dict[str, dict[str, int]]:
    """Every benchmark's predictions into `out_dir` (replaced as a whole), a sample of each logged; the work folder
    of partial files goes once all are written."""
    backend = make_backend(params.predict, model_dir, params.model.trust_remote_code)
    counts = {}
    try:
        # All benchmarks' files appear together: a kill never leaves a folder that evaluate would score in part.
        with atomic_dir(check_replaceable(out_dir)) as staging:
            for bench in list_benchmarks(data_dir):
                out_file = staging / f"{bench}.jsonl"
                counts[bench] = predict_benchmark(params, backend, model_dir, data_dir / "test" / bench, out_file)
                tracking.log_predictions_sample(bench, read_jsonl(out_file)[: params.tracking.log_predictions_sample])
    finally:
        if hasattr(backend, "close"):  # the vLLM backend's engine process
            backend.close()
    shutil.rmtree(WORK_DIR, ignore_errors=True)
    return counts
