"""Compile time of our prompt-only train step, per size: cold, hardware RNG, warm cache.

For each size, a fresh ``training.make_train_step`` (and ``jax.clear_caches()``, so
nothing is reused from an earlier trace) is traced and lowered (``jit(...).lower``) and
then compiled by XLA (``.compile()``); both phases are timed separately, ``reps`` times,
medians. XLA's compile is also given in process CPU seconds (``*_xla_compile_cpu_s``,
all threads), which a machine shared with other jobs inflates far less than wall time.
The ways:

- ``cold``: JAX's defaults, no persistent cache — the first run on a machine;
- ``cold_rbg``: the dropout key from XLA's RngBitGenerator
  (``train_loop.dropout_rng_impl = "unsafe_rbg"``, T5X's ``use_hardware_rng``): each
  dropout draw is one op instead of a threefry loop, which XLA compiles much faster;
- ``warm``: JAX's persistent compilation cache (on by default in ``mpt-jax``; here a
  temporary folder filled by one compile first) — every later run of the same step;
- ``cold_o0``, ``cold_fast_compile``: cold, with per-compile XLA options
  (:data:`XLA_OPTION_MODES`, passed to ``Lowered.compile(compiler_options=...)``):
  LLVM at ``-O0``, and XLA:CPU's ``FAST_COMPILE`` preset. Neither is the library's
  default: ``benchmarks/README.md`` ("Cold compile", measured on a Zen 3) gives their
  compile times and the ``-O0`` step's cost.

Targets (issue 17): the whole compile (trace + lower + XLA) of ``small`` within 5 s on
CPU when cold (every cold mode is held to it), within 1 s from the warm cache.

    python -m benchmarks.bench_compile --sizes mini,small --reps 3 --json compile.json
"""

from __future__ import annotations

import statistics
import tempfile
import time
from typing import Any

import jax
from jax._src import compilation_cache as jax_cache

from benchmarks import common
from mpt_jax import compile_cache, training

#: Target for the whole cold compile of the ``small`` train step on CPU (seconds).
SMALL_TARGET_S = 5.0
#: Target for the same compile from a warm persistent cache (seconds).
SMALL_WARM_TARGET_S = 1.0
#: Per-compile XLA options timed as extra cold modes (names are ``DebugOptions``
#: fields of jaxlib 0.10.2; an unknown one raises ``INVALID_ARGUMENT``).
XLA_OPTION_MODES: dict[str, dict[str, Any]] = {
    "cold_o0": {"xla_backend_optimization_level": 0},
    "cold_fast_compile": {"xla_cpu_opt_preset": "CPU_OPT_PRESET_FAST_COMPILE"},
}
#: The ways a compile is timed (see the module docstring).
MODES = ("cold", "cold_rbg", "warm", *XLA_OPTION_MODES)


def small_target_s(mode: str) -> float:
    """The target (seconds) for the ``small`` train step's compile in ``mode``."""
    if mode not in MODES:
        raise ValueError(f"unknown compile mode {mode!r}; known: {MODES}")
    return SMALL_WARM_TARGET_S if mode == "warm" else SMALL_TARGET_S


def compile_once(
    model,
    params,
    batch,
    rng_impl: str = "threefry2x32",
    compiler_options: dict[str, Any] | None = None,
) -> tuple[float, float, float]:
    """Seconds to trace+lower, to XLA-compile (wall) and XLA's process CPU seconds,
    for a fresh train step compiled with ``compiler_options`` (None: XLA's defaults)."""
    jax.clear_caches()
    prompt, backbone = training.split_params(params)
    tx = common.make_tx("adamw")
    state = training.TrainState.create(prompt, tx)
    step = training.make_train_step(training.task_loss_fn(model), tx)
    rng = jax.random.key(0, impl=rng_impl)
    start = time.perf_counter()
    lowered = step.lower(state, {"backbone": backbone}, batch, rng)
    mid, cpu = time.perf_counter(), time.process_time()
    lowered.compile(compiler_options=compiler_options)
    return mid - start, time.perf_counter() - mid, time.process_time() - cpu


def _set_cache(directory: str | None) -> None:
    jax.config.update("jax_compilation_cache_dir", directory)
    jax_cache.reset_cache()


def run(
    sizes: tuple[str, ...] = ("mini",), *, reps: int = 3, dtype: str | None = None
) -> dict[str, Any]:
    """Trace+lower and XLA compile seconds of the train step, per size and mode."""
    if reps < 1:
        raise ValueError(f"reps must be >= 1, got {reps}")
    figures: dict[str, float] = {}
    ratios = []
    for size in sizes:
        w = common.workload(size, dtype)
        model, params = common.init_model(w, "mpt")
        batch = common.device_batch(common.make_batch(w))
        runs: dict[str, list[tuple[float, float, float]]] = {}
        _set_cache(None)
        runs["cold"] = [compile_once(model, params, batch) for _ in range(reps)]
        runs["cold_rbg"] = [compile_once(model, params, batch, "unsafe_rbg") for _ in range(reps)]
        for mode, options in XLA_OPTION_MODES.items():
            runs[mode] = [
                compile_once(model, params, batch, compiler_options=options) for _ in range(reps)
            ]
        with tempfile.TemporaryDirectory() as cache_dir:
            compile_cache.enable(cache_dir)
            jax_cache.reset_cache()
            compile_once(model, params, batch)  # fills the cache
            runs["warm"] = [compile_once(model, params, batch) for _ in range(reps)]
            _set_cache(None)
        for mode in MODES:
            prefix = size if mode == "cold" else f"{size}_{mode}"
            figures[f"{prefix}_trace_lower_s"] = statistics.median(r[0] for r in runs[mode])
            figures[f"{prefix}_xla_compile_s"] = statistics.median(r[1] for r in runs[mode])
            figures[f"{prefix}_xla_compile_cpu_s"] = statistics.median(r[2] for r in runs[mode])
            figures[f"{prefix}_total_compile_s"] = statistics.median(
                r[0] + r[1] for r in runs[mode]
            )
        if size == "small":
            for mode in MODES:
                name = (
                    "small_total_compile_s" if mode == "cold" else f"small_{mode}_total_compile_s"
                )
                ratios.append(common.ratio(name, figures[name], small_target_s(mode)))
    return common.result(
        "compile", common.workload(sizes[0], dtype), figures, ratios, sizes=list(sizes)
    )


def main(argv=None) -> dict[str, Any]:
    p = common.arg_parser(__doc__.splitlines()[0], default_reps=3)
    p.add_argument("--sizes", default=None, help="comma-separated sizes (default: --size)")
    args = p.parse_args(argv)
    sizes = tuple(args.sizes.split(",")) if args.sizes else (args.size,)
    return common.finish(run(sizes, reps=args.reps, dtype=args.dtype), args.json)


if __name__ == "__main__":
    main()
