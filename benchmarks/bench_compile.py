"""Compile time of our prompt-only train step, per size.

For each size, a fresh ``training.make_train_step`` (so nothing is cached from an
earlier trace) is traced and lowered (``jit(...).lower``) and then compiled by XLA
(``.compile()``); both phases are timed separately, ``reps`` times, medians. No
persistent compilation cache is used. Target: the whole compile (trace + lower + XLA)
of ``small`` within 5 s on CPU.

    python -m benchmarks.bench_compile --sizes mini,small --reps 3 --json compile.json
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import jax

from benchmarks import common
from mpt_jax import training

#: Target for the whole compile of the ``small`` train step on CPU (seconds).
SMALL_TARGET_S = 5.0


def compile_once(w: common.Workload, model, params, batch) -> tuple[float, float]:
    """Seconds to trace+lower and to XLA-compile a fresh train step."""
    prompt, backbone = training.split_params(params)
    tx = common.make_tx("adamw")
    state = training.TrainState.create(prompt, tx)
    step = training.make_train_step(training.task_loss_fn(model), tx)
    rng = jax.random.key(0)
    start = time.perf_counter()
    lowered = step.lower(state, {"backbone": backbone}, batch, rng)
    mid = time.perf_counter()
    lowered.compile()
    return mid - start, time.perf_counter() - mid


def run(sizes: tuple[str, ...] = ("mini",), *, reps: int = 3) -> dict[str, Any]:
    """Trace+lower and XLA compile seconds of the train step for each size."""
    if reps < 1:
        raise ValueError(f"reps must be >= 1, got {reps}")
    figures: dict[str, float] = {}
    ratios = []
    for size in sizes:
        w = common.workload(size)
        model, params = common.init_model(w, "mpt")
        batch = common.device_batch(common.make_batch(w))
        runs = [compile_once(w, model, params, batch) for _ in range(reps)]
        lower = statistics.median(r[0] for r in runs)
        xla = statistics.median(r[1] for r in runs)
        figures[f"{size}_trace_lower_s"] = lower
        figures[f"{size}_xla_compile_s"] = xla
        figures[f"{size}_total_compile_s"] = statistics.median(r[0] + r[1] for r in runs)
        if size == "small":
            ratios.append(
                common.ratio(
                    "small_total_compile_s", figures["small_total_compile_s"], SMALL_TARGET_S
                )
            )
    return common.result("compile", common.workload(sizes[0]), figures, ratios, sizes=list(sizes))


def main(argv=None) -> dict[str, Any]:
    p = common.arg_parser(__doc__.splitlines()[0], default_reps=3)
    p.add_argument("--sizes", default=None, help="comma-separated sizes (default: --size)")
    args = p.parse_args(argv)
    sizes = tuple(args.sizes.split(",")) if args.sizes else (args.size,)
    return common.finish(run(sizes, reps=args.reps), args.json)


if __name__ == "__main__":
    main()
