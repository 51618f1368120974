"""Pipeline overhead: full `dvc repro` wall time and peak RSS, a no-op `dvc repro`, Prefect + MLflow cost per stage.

    .venv/bin/python bench/bench_pipeline.py [--quick] [--out FILE]

In a fresh git repository holding the working tree as git sees it (tracked + new files, ignored ones left out, as
the end-to-end test builds it), with params.yaml's default sizes (`--quick`: the end-to-end test's reduced sizes):

full      `dvc repro` from nothing: wall seconds, and the peak RSS of the largest process in the tree (the kernel's
          ru_maxrss over dvc and every stage process it waited for, read with os.wait4).
noop      `dvc repro` again, nothing to do: median wall seconds of `--repeats` runs.
overhead  the evaluate stage as DVC runs it (`evisrag evaluate`: a process, a Prefect flow run, an MLflow run)
          minus the same library call without Prefect or MLflow (a process importing evisrag_core and calling
          `evaluate_dir` + `write_evaluation`), median of `--repeats` alternating runs. Prefect runs ephemerally
          here (no PREFECT_API_URL), as under a plain `dvc repro`; `evisrag pipeline` shares one server instead,
          measured too (a `prefect server start` on 127.0.0.1 for the runs), with the import time of each module a
          stage process loads (a fresh interpreter per import: the overhead's floor).
pipeline  `evisrag pipeline` as a user runs it, against the running server: the median wall time of a no-op run
          (everything up to date), and of a run where only the evaluate stage is stale (its metrics file and DVC's
          run cache deleted, so DVC must run it). `per_stage_noop_s` = no-op wall / number of stages;
          `run_stage_overhead_s` = (evaluate-stale wall - no-op wall) - the bare library call: what the pipeline adds
          to a stage that runs. One ephemeral no-op run (no server: what `evisrag pipeline` costs out of the box).

The stage processes run the editable install's code (the repository's working tree), with the copy's params and
dvc.yaml, exactly as the end-to-end test does.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from bench_sft import machine

from evisrag_core.io import write_json_atomic

log = logging.getLogger("bench_pipeline")
REPO_ROOT = Path(__file__).resolve().parents[1]
LIBRARY_EVALUATE = (
    "from pathlib import Path\n"
    "from evisrag_core.config import load_params\n"
    "from evisrag_core.evaluate import evaluate_dir, write_evaluation\n"
    "p = load_params('params.yaml')\n"
    "m, rows = evaluate_dir(Path(p.data.out_dir), Path(p.predict.out_dir))\n"
    "write_evaluation(m, rows, Path('bench_metrics.json'), Path('bench_per_question.jsonl'))\n"
)


def copy_checkout(dest: Path) -> None:
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO_ROOT, capture_output=True, check=True
    ).stdout.split(b"\0")
    for name in filter(None, (n.decode() for n in listed)):
        source = REPO_ROOT / name
        if source.is_file() and not name.startswith("bench/results/"):
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)


def shrink_params(path: Path) -> None:
    """The end-to-end test's reduced sizes: every stage runs, in a couple of minutes."""
    params = yaml.safe_load(path.read_text())
    params["data"]["embedded"].update(n_sft=48, n_rl=8, n_test_per_split=8)
    params["sft"].update(max_steps=4, save_steps=2, logging_steps=1, warmup_steps=1)
    params["rsgrpo"].update(
        steps=2, rollout_batch_size=1, n=2, max_new_tokens=16, val_every=0, val_size=2, online_filtering=False
    )
    params["predict"].update(max_new_tokens=24, batch_size=8)
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def timed(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, peak RSS MiB of the largest process in the tree); raises with the output tail on failure."""
    log_file = cwd.parent / "bench_cmd.log"
    started = time.perf_counter()
    with log_file.open("w") as out:
        process = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        tail = "\n".join(log_file.read_text(errors="replace").splitlines()[-30:])
        raise RuntimeError(f"{cmd} failed in {cwd}:\n{tail}")
    return wall, usage.ru_maxrss / 1024


def make_project(root: Path, quick: bool) -> dict[str, str]:
    copy_checkout(root)
    if quick:
        shrink_params(root / "params.yaml")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "EVISRAG_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    # The copy's code, not whatever checkout the editable install (or the caller's PYTHONPATH) points at: the
    # measurement stays the code this benchmark was started from even if the working tree changes meanwhile.
    env["PYTHONPATH"] = str(root)
    # Prefect's ephemeral server must start within 20 s by default; on a loaded 2-core machine it may not, and the
    # stage fails. A longer limit changes nothing when it starts in time.
    env["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "180"
    git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost"]
    for cmd in (["git", "init", "-q"], [*git, "add", "-A"], [*git, "commit", "-qm", "bench"]):
        subprocess.run(cmd, cwd=root, env=env, check=True, capture_output=True)
    return env


IMPORTS = {
    "python": "pass",
    "library (evisrag_core.evaluate)": "import evisrag_core.evaluate",
    "prefect": "import prefect",
    "mlflow": "import mlflow",
    "stage command (flows.cli)": "import flows.cli",
}


def overhead(stage_runs: list[float], library_runs: list[float], prefect: str) -> dict[str, Any]:
    """The evaluate stage process's median wall time minus the bare library process's."""
    stage, library = statistics.median(stage_runs), statistics.median(library_runs)
    return {
        "stage": "evaluate",
        "stage_process_median_s": stage,
        "library_process_median_s": library,
        "overhead_s": stage - library,
        "prefect": prefect,
    }


def import_costs(root: Path, env: dict[str, str], repeats: int) -> dict[str, float]:
    """Median wall seconds of a fresh interpreter importing each module: the floor of a stage process's overhead."""
    return {
        name: statistics.median(timed([sys.executable, "-c", code], root, env)[0] for _ in range(repeats))
        for name, code in IMPORTS.items()
    }


@contextlib.contextmanager
def prefect_server(root: Path, env: dict[str, str]) -> Iterator[str]:
    """A Prefect server on 127.0.0.1 (its own PREFECT_HOME under root) for the duration; yields its API URL."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    home = root / ".bench-prefect-home"
    server_env = {**env, "PREFECT_HOME": str(home)}
    prefect = str(Path(sys.executable).parent / "prefect")
    command = [prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port), "--no-services"]
    with open(root / ".bench-prefect-server.log", "wb") as log_file:
        server = subprocess.Popen(command, cwd=root, env=server_env, stdout=log_file, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the Prefect server did not start; see {root / '.bench-prefect-server.log'}")
            time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


def make_evaluate_stale(root: Path) -> None:
    """Only the evaluate stage is out of date, and DVC cannot restore it: its metrics file and the run cache go."""
    params = yaml.safe_load((root / "params.yaml").read_text())
    (root / params["evaluate"]["metrics_file"]).unlink(missing_ok=True)
    shutil.rmtree(root / ".dvc" / "cache" / "runs", ignore_errors=True)


def pipeline_costs(root: Path, env: dict[str, str], api_url: str, repeats: int, library_s: float) -> dict[str, Any]:
    """`evisrag pipeline` wall times against one running server: no-op, and with only the evaluate stage stale."""
    evisrag = str(Path(sys.executable).parent / "evisrag")
    served = {**env, "PREFECT_API_URL": api_url}
    n_stages = len(yaml.safe_load((root / "dvc.yaml").read_text())["stages"])
    noop = [timed([evisrag, "pipeline"], root, served)[0] for _ in range(repeats)]
    stale = []
    for _ in range(repeats):
        make_evaluate_stale(root)
        stale.append(timed([evisrag, "pipeline"], root, served)[0])
    noop_s, stale_s = statistics.median(noop), statistics.median(stale)
    return {
        "stages": n_stages,
        "noop_median_s": noop_s,
        "noop_runs_s": noop,
        "per_stage_noop_s": noop_s / n_stages,
        "evaluate_stale_median_s": stale_s,
        "evaluate_stale_runs_s": stale,
        "run_stage_overhead_s": stale_s - noop_s - library_s,
        "prefect": "one running server (PREFECT_API_URL)",
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    dvc = str(Path(sys.executable).parent / "dvc")
    result: dict[str, Any] = {"quick": args.quick, "repeats": args.repeats}
    with tempfile.TemporaryDirectory(prefix="bench_pipeline_") as tmp:
        root = Path(tmp) / "project"
        env = make_project(root, args.quick)
        log.info("full dvc repro in %s (%s sizes)", root, "reduced" if args.quick else "default")
        wall, rss = timed([dvc, "repro"], root, env)
        result["full"] = {
            "wall_s": wall,
            "peak_rss_mib": rss,
            "params": "reduced (--quick)" if args.quick else "default",
        }
        noop = [timed([dvc, "repro"], root, env)[0] for _ in range(args.repeats)]
        result["noop"] = {"median_s": statistics.median(noop), "runs_s": noop}
        stage, library = [], []
        for rep in range(args.repeats):
            jobs = [("stage", [str(Path(sys.executable).parent / "evisrag"), "evaluate"])]
            jobs.append(("library", [sys.executable, "-c", LIBRARY_EVALUATE]))
            for name, cmd in jobs[:: 1 if rep % 2 == 0 else -1]:
                (stage if name == "stage" else library).append(timed(cmd, root, env)[0])
        result["overhead"] = overhead(stage, library, "ephemeral (no PREFECT_API_URL)")
        with prefect_server(root, env) as api_url:
            shared = [timed(jobs[0][1], root, {**env, "PREFECT_API_URL": api_url})[0] for _ in range(args.repeats)]
            pipeline = pipeline_costs(root, env, api_url, args.repeats, statistics.median(library))
        evisrag = str(Path(sys.executable).parent / "evisrag")
        pipeline["ephemeral_noop_s"] = timed([evisrag, "pipeline"], root, env)[0]
        result["pipeline"] = pipeline
        server = "one running server (PREFECT_API_URL, as under `evisrag pipeline` or `evisrag serve`)"
        result["overhead_shared_server"] = overhead(shared, library, server)
        result["import_seconds"] = import_costs(root, env, args.repeats)
    result["machine"] = machine()
    result["command"] = " ".join(sys.argv)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="reduced sizes, 1 repeat unless --repeats")
    parser.add_argument("--repeats", type=int, help="runs per timed figure (default 3)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results" / "pipeline.json")
    args = parser.parse_args()
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    result = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out, result)
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=2))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    main()
