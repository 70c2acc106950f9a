"""Memory: peak RSS of a training step vs inference alone, and optimizer-state bytes.

Each peak is taken in a fresh Python subprocess (``ru_maxrss`` after building the model,
compiling and running a few steps), so one measurement never inherits another's heap:

- ``train``: our prompt-only train step (AdamW);
- ``forward``: our eval step (inference only) on the same model and batch;
- ``peft_train``: PEFT's MPT train step (same weights, same dtype), for reference;
- ``baseline``: the same process after building the model and batch, before any step.

The peak includes XLA's compile-time memory; ``*_rss_after_steps_mb`` is the resident
set once the steps ran (what a long run holds).

Optimizer state is counted from ``jax.eval_shape(tx.init, tree)`` (nothing allocated):
AdamW and our default Adafactor over the prompt tree vs over the whole model (what full
fine-tuning would hold).

    python -m benchmarks.bench_memory --size mini --json memory.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from typing import Any

import jax

from benchmarks import common
from mpt_jax import training

MODES = ("baseline", "train", "forward", "peft_train")
_STEPS = 3


def _peak_rss_mb() -> float:
    # Linux reports ru_maxrss in KiB (macOS in bytes).
    scale = 1.0 if sys.platform == "darwin" else 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def child(mode: str, size: str, dtype: str | None = None) -> dict[str, float]:
    """Run ``mode`` in this process and return its peak RSS (MiB)."""
    w = common.workload(size, dtype)
    batch = common.make_batch(w)
    if mode == "peft_train":
        from benchmarks.bench_peft import peft_stepper, set_torch_threads, torch_device

        set_torch_threads(None)
        fn = peft_stepper(w, common.init_model(w, "mpt")[1], batch, torch_device())
    elif mode in ("train", "baseline"):
        fn = common.prompt_train_stepper(w, "mpt", batch=batch)
    elif mode == "forward":
        from benchmarks.bench_limits import ForwardStepper

        model, params = common.init_model(w, "mpt")
        prompt, backbone = training.split_params(params)
        step = training.make_eval_step(training.task_loss_fn(model))
        fn = ForwardStepper(step, prompt, {"backbone": backbone}, batch)
    else:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if mode != "baseline":
        for _ in range(_STEPS):
            fn()
    import psutil

    return {"peak_rss_mb": _peak_rss_mb(), "rss_mb": psutil.Process().memory_info().rss / 2**20}


def measure(mode: str, size: str, dtype: str | None = None) -> dict[str, float]:
    """Peak RSS and RSS after the steps (MiB) of ``mode`` in a fresh subprocess."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    dtype = dtype or common.default_dtype()
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_memory", "--child", mode, "--size", size,
         "--dtype", dtype],
        cwd=root, capture_output=True, text=True, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"memory child {mode!r} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def optimizer_bytes(size: str) -> dict[str, float]:
    """Optimizer-state bytes over the prompt tree and over the whole tree (no allocation)."""
    w = common.workload(size)
    model, params = common.init_model(w, "mpt")
    prompt, _ = training.split_params(params)
    out = {
        "prompt_param_bytes": common.tree_bytes(prompt),
        "model_param_bytes": common.tree_bytes(params),
    }
    for name in ("adamw", "adafactor"):
        tx = common.make_tx(name)
        out[f"{name}_state_bytes_prompt"] = common.tree_bytes(jax.eval_shape(tx.init, prompt))
        out[f"{name}_state_bytes_full"] = common.tree_bytes(jax.eval_shape(tx.init, params))
    return {k: float(v) for k, v in out.items()}


def run(
    size: str = "mini", *, modes: tuple[str, ...] = MODES, dtype: str | None = None
) -> dict[str, Any]:
    """Peak RSS per mode (fresh subprocesses), their ratios, optimizer-state bytes."""
    w = common.workload(size, dtype)
    figures: dict[str, float] = {}
    for m in modes:
        got = measure(m, size, w.dtype)
        figures[f"{m}_peak_rss_mb"] = got["peak_rss_mb"]
        figures[f"{m}_rss_after_steps_mb"] = got["rss_mb"]
    figures.update(optimizer_bytes(size))
    ratios = []
    if "train" in modes and "forward" in modes:
        ratios.append(common.ratio(
            "train_over_forward (peak RSS)",
            figures["train_peak_rss_mb"] / figures["forward_peak_rss_mb"],
        ))  # fmt: skip
    if "train" in modes and "peft_train" in modes:
        ratios.append(common.ratio(
            "train_over_peft_train (peak RSS)",
            figures["train_peak_rss_mb"] / figures["peft_train_peak_rss_mb"], 1.0,
        ))  # fmt: skip
    ratios.append(common.ratio(
        "adamw_state_prompt_over_full",
        figures["adamw_state_bytes_prompt"] / figures["adamw_state_bytes_full"],
    ))  # fmt: skip
    return common.result("memory", w, figures, ratios, modes=list(modes))


def main(argv=None) -> dict[str, Any]:
    p = common.arg_parser(__doc__.splitlines()[0])
    p.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, from {MODES}")
    p.add_argument("--child", choices=MODES, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.size, args.dtype)))
        return {}
    res = run(args.size, modes=tuple(args.modes.split(",")), dtype=args.dtype)
    return common.finish(res, args.json)


if __name__ == "__main__":
    main()
