"""`evisrag pipeline`'s orchestration cost, this checkout against a baseline checkout, interleaved in time.

    .venv/bin/python bench/bench_pipeline_ab.py --baseline DIR [--rounds 4] [--out FILE]

On a shared machine the load moves more between two runs of bench_pipeline.py minutes apart than the difference to
be measured, so this script measures both sides in one window, alternating:

1. One project (this checkout, the end-to-end test's reduced sizes), `dvc repro` once.
2. A copy of it whose code and params.yaml are the baseline's, then `dvc commit --force`: both projects hold the same
   outputs and are up to date, each for its own code.
3. One `prefect server start` on 127.0.0.1 for both. Each round runs, alternating which side goes first:
   - a no-op `evisrag pipeline` on each side (everything up to date);
   - `evisrag pipeline` with only the evaluate stage stale (its metrics file and DVC's run cache deleted).
   Every other round also runs a no-op `evisrag pipeline` without the server (Prefect's temporary one).

Per stage: no-op wall / number of stages. The stage processes of each side run that side's code (PYTHONPATH).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from bench_pipeline import REPO_ROOT, make_evaluate_stale, make_project, prefect_server, shrink_params, timed
from bench_sft import machine

from evisrag_core.io import write_json_atomic

log = logging.getLogger("bench_pipeline_ab")


def tracked_files(checkout: Path) -> list[str]:
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=checkout, capture_output=True, check=True
    ).stdout.split(b"\0")
    return [name.decode() for name in listed if name and (checkout / name.decode()).is_file()]


def baseline_project(current: Path, baseline: Path, dest: Path, env: dict[str, str]) -> None:
    """`current`'s finished project with the baseline's code and params, recorded as up to date."""
    shutil.copytree(current, dest, symlinks=True)
    for name in set(tracked_files(REPO_ROOT)) - set(tracked_files(baseline)):
        (dest / name).unlink(missing_ok=True)  # files the baseline does not have (new modules)
    for name in tracked_files(baseline):
        if not name.startswith("bench/results/"):
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(baseline / name, dest / name)
    shrink_params(dest / "params.yaml")
    dvc = str(Path(sys.executable).parent / "dvc")
    subprocess.run([dvc, "commit", "--force", "-q"], cwd=dest, env=env, check=True, capture_output=True)
    status = subprocess.run([dvc, "status", "-q"], cwd=dest, env=env, capture_output=True)
    assert status.returncode == 0, f"the baseline project is not up to date:\n{status.stdout}{status.stderr}"


def run(args: argparse.Namespace) -> dict[str, Any]:
    evisrag = str(Path(sys.executable).parent / "evisrag")
    dvc = str(Path(sys.executable).parent / "dvc")
    times: dict[str, dict[str, list[float]]] = {s: {"noop": [], "stale": [], "ephemeral_noop": []} for s in ("a", "b")}
    with tempfile.TemporaryDirectory(prefix="bench_pipeline_ab_") as tmp:
        roots = {"a": Path(tmp) / "current", "b": Path(tmp) / "baseline"}
        env = make_project(roots["a"], quick=True)
        log.info("dvc repro in %s", roots["a"])
        timed([dvc, "repro"], roots["a"], env)
        baseline_project(roots["a"], args.baseline.resolve(), roots["b"], env | {"PYTHONPATH": str(roots["b"])})
        envs = {side: env | {"PYTHONPATH": str(root)} for side, root in roots.items()}
        n_stages = len(yaml.safe_load((roots["a"] / "dvc.yaml").read_text())["stages"])
        with prefect_server(roots["a"].parent, env) as api_url:
            for round_ in range(args.rounds):
                order = ["a", "b"] if round_ % 2 == 0 else ["b", "a"]
                for side in order:
                    served = envs[side] | {"PREFECT_API_URL": api_url}
                    times[side]["noop"].append(timed([evisrag, "pipeline"], roots[side], served)[0])
                for side in order:
                    make_evaluate_stale(roots[side])
                    served = envs[side] | {"PREFECT_API_URL": api_url}
                    times[side]["stale"].append(timed([evisrag, "pipeline"], roots[side], served)[0])
                if round_ % 2 == 0:
                    for side in order:
                        times[side]["ephemeral_noop"].append(timed([evisrag, "pipeline"], roots[side], envs[side])[0])
                log.info("round %d: %s", round_, json.dumps(times))
    sides = {}
    for side, name in (("a", "current"), ("b", "baseline")):
        noop, stale = statistics.median(times[side]["noop"]), statistics.median(times[side]["stale"])
        sides[name] = {
            "noop_median_s": noop,
            "per_stage_noop_s": noop / n_stages,
            "evaluate_stale_median_s": stale,
            "evaluate_stale_minus_noop_s": stale - noop,
            "ephemeral_noop_median_s": statistics.median(times[side]["ephemeral_noop"]),
            "runs_s": times[side],
        }
    return {
        "stages": n_stages,
        "rounds": args.rounds,
        "current": str(REPO_ROOT),
        "baseline": str(args.baseline),
        "sides": sides,
        "per_stage_noop_change_s": sides["current"]["per_stage_noop_s"] - sides["baseline"]["per_stage_noop_s"],
        "evaluate_stale_change_s": sides["current"]["evaluate_stale_median_s"]
        - sides["baseline"]["evaluate_stale_median_s"],
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        "command": " ".join(sys.argv),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", type=Path, required=True, help="a checkout of the code to compare against")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results" / "pipeline_ab.json")
    args = parser.parse_args()
    result = run(args)
    write_json_atomic(args.out, result)
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=2))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    main()
