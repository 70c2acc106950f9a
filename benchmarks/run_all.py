"""Run every benchmark at one size, each in its own process, and collect the results.

    python -m benchmarks.run_all --size mini --json results.json

writes ``results.json`` (every benchmark's dict plus wall times), ``results.md`` next to
it (the tables: each benchmark's matmul peaks, ratios, figures; see
:func:`benchmarks.plot.markdown`) and
``benchmarks/results.png``. Each benchmark runs in a fresh subprocess so one does not
inherit another's heap, threads or compiled programs. ``compile`` measures ``mini`` and
``small`` whenever ``--size`` is not ``tiny``, and ``limits_small`` repeats ``limits`` at
``small``. ``bench_t5x`` needs T5X, Flaxformer and prompt-tuning, which are not on
PyPI: run it where they are installed and add its JSON here with ``--merge``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

from benchmarks import plot

BENCHMARKS = (
    "peft", "limits", "limits_small", "routing", "distill", "memory", "decode", "compile"
)  # fmt: skip


def _command(name: str, size: str, reps: int, warmup: int, out: str) -> list[str]:
    if name == "limits_small":
        # The limits again at T5 1.1 small, the size PEFT's 2.2 train/forward was
        # measured at (a step takes ~1.5 s there, so fewer rounds).
        small = "tiny" if size == "tiny" else "small"
        return _command("limits", small, max(1, min(reps, 6)), min(warmup, 1), out)
    cmd = [sys.executable, "-m", f"benchmarks.bench_{name}", "--json", out]
    if name == "compile":
        sizes = "tiny" if size == "tiny" else "mini,small"
        return cmd + ["--sizes", sizes, "--reps", str(min(reps, 3))]
    if name == "memory":
        return cmd + ["--size", size]
    return cmd + ["--size", size, "--reps", str(reps), "--warmup", str(warmup)]


def run_all(
    size: str, *, reps: int, warmup: int, only: tuple[str, ...] = BENCHMARKS
) -> dict[str, Any]:
    """Run the benchmarks in ``only`` one after the other; return the combined dict."""
    unknown = set(only) - set(BENCHMARKS)
    if unknown:
        raise ValueError(f"unknown benchmarks {sorted(unknown)}; known: {BENCHMARKS}")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    combined: dict[str, Any] = {
        "size": size,
        "reps": reps,
        "warmup": warmup,
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "wall_s": {},
        "results": {},
    }
    start_all = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for name in only:
            out = os.path.join(tmp, f"{name}.json")
            start = time.perf_counter()
            print(f"--- {name}", flush=True)
            subprocess.run(_command(name, size, reps, warmup, out), cwd=root, check=True)
            combined["wall_s"][name] = time.perf_counter() - start
            with open(out) as f:
                combined["results"][name] = json.load(f)
    combined["total_wall_s"] = time.perf_counter() - start_all
    return combined


def main(argv=None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=("tiny", "mini", "small"), default="mini")
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--only", default=",".join(BENCHMARKS), help="comma-separated subset")
    p.add_argument(
        "--merge",
        action="append",
        default=[],
        help="a result JSON of a benchmark run elsewhere (e.g. bench_t5x in a venv with "
        "T5X) to add to the table (repeatable)",
    )
    p.add_argument("--json", default="results.json", help="combined results file")
    p.add_argument("--png", default=os.path.join(os.path.dirname(__file__), "results.png"))
    args = p.parse_args(argv)
    combined = run_all(args.size, reps=args.reps, warmup=args.warmup,
                       only=tuple(args.only.split(",")))  # fmt: skip
    for path in args.merge:
        with open(path) as f:
            res = json.load(f)
        if res.get("benchmark") in combined["results"]:
            raise ValueError(f"--merge {path}: benchmark {res.get('benchmark')!r} already ran")
        combined["results"][res["benchmark"]] = res
    with open(args.json, "w") as f:
        json.dump(combined, f, indent=2)
    table = plot.markdown(combined)
    md_path = os.path.splitext(args.json)[0] + ".md"
    with open(md_path, "w") as f:
        f.write(table)
    plot.plot(combined, args.png)
    print(table)
    print(f"wrote {args.json}, {md_path}, {args.png}; {combined['total_wall_s']:.0f} s in all")
    return combined


if __name__ == "__main__":
    main()
