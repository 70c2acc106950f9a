"""Prompt training against its limits: inference, full fine-tuning, the machine's matmul rate.

Three candidates over the same prompted model, batch and encoder length (input + prompt),
alternating, medians:

- ``train``: our prompt-only train step (``training.make_train_step``), AdamW;
- ``forward``: inference only, our eval step (``training.make_eval_step``: the same
  forward pass and loss, no dropout, no gradient);
- ``full``: a full fine-tuning step of the same model (``make_full_finetune_step``,
  AdamW on every weight) — the cost prompt tuning avoids.

Ratios: ``train / forward`` (target <= 2.2: the backward pass needs activation gradients
only, no weight gradients, so it should cost about one more forward) and ``train / full``
(target <= 0.5). Achieved GFLOP/s is XLA's ``cost_analysis()`` flop count of each compiled
program over its median time, set against JAX's matmul peak in the workload's dtype
measured in the same process (``common.matmul_peaks``; target for the train step in
float32: >= 0.75). The train step's **matmul floor** (:mod:`benchmarks.matmul_floor`:
each of its own matmuls timed alone at its own shape) splits the gap to that peak in
two: ``shape_limited_over_matmul_peak`` (how fast the step's matmul shapes run at best,
against the square peak) and ``train_over_matmul_floor`` (the step's time over the
time of its matmuls alone: what everything else costs).

    python -m benchmarks.bench_limits --size mini --reps 10 --json limits.json
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from benchmarks import common, matmul_floor
from mpt_jax import training
from mpt_jax.training.full_finetune import make_full_finetune_step


class ForwardStepper:
    """Our eval step (forward + loss, no dropout) as a zero-argument callable."""

    def __init__(self, eval_step, prompt, frozen, batch):
        self.eval_step, self.prompt, self.frozen = eval_step, prompt, frozen
        self.batch = common.device_batch(batch)
        self.metrics = None

    def __call__(self) -> None:
        self.metrics = self.eval_step(self.prompt, self.frozen, self.batch)
        jax.block_until_ready(self.metrics)

    def lowered(self):
        return self.eval_step.lower(self.prompt, self.frozen, self.batch)

    def compile(self):
        """Compile once and run the compiled program from now on (no second compile)."""
        compiled = self.lowered().compile()
        self.eval_step = compiled
        return compiled


#: Target fraction of JAX's matmul peak for the float32 train step.
PEAK_FRACTION_TARGET = 0.75


def run(
    size: str = "mini",
    *,
    reps: int = 10,
    warmup: int = 2,
    matmul_n: int | None = None,
    dtype: str | None = None,
    floor: bool = True,
) -> dict[str, Any]:
    """Train/forward, train/full-fine-tuning, GFLOP/s of each against the matmul peak."""
    w = common.workload(size, dtype)
    batch = common.make_batch(w)
    model, params = common.init_model(w, "mpt")
    prompt, backbone = training.split_params(params)
    frozen = {"backbone": backbone}
    loss_fn = training.task_loss_fn(model)
    tx = common.make_tx("adamw")
    # Train steps donate their state: each gets its own copy of the arrays it trains.
    copy = lambda tree: jax.tree.map(jnp.copy, tree)
    train_step = training.make_train_step(loss_fn, tx)
    train = common.JaxStepper(
        train_step, training.TrainState.create(copy(prompt), tx), frozen, batch,
    )  # fmt: skip
    forward = ForwardStepper(training.make_eval_step(loss_fn), prompt, frozen, batch)
    full = common.JaxStepper(
        make_full_finetune_step(model, tx), training.TrainState.create(copy(params), tx), {},
        batch,
    )  # fmt: skip
    flops = {
        name: common.flops_of(c.compile())
        for name, c in (("train", train), ("forward", forward), ("full", full))
    }
    timings = common.alternate(
        {"train": train, "forward": forward, "full": full}, reps=reps, warmup=warmup
    )
    peaks = common.matmul_peaks(matmul_n)
    peak = peaks[f"jax_{w.dtype}"]

    figures: dict[str, float] = {f"matmul_peak_jax_{w.dtype}_gflops": peak}
    for name, t in timings.items():
        gflops, frac = common.achieved(flops[name], t.median, peak)
        figures[f"{name}_ex_per_s"] = w.batch / t.median
        figures[f"{name}_gflop_per_step"] = flops[name] / 1e9
        figures[f"{name}_gflops_achieved"] = gflops
        figures[f"{name}_frac_of_jax_peak"] = frac
    figures["train_loss"] = train.loss
    ratios = [
        common.ratio(
            "train_over_forward (time)",
            common.paired_ratio(timings["train"], timings["forward"]),
            2.2,
        ),
        common.ratio(
            "train_over_full_finetune (time)",
            common.paired_ratio(timings["train"], timings["full"]),
            0.5,
        ),
        common.ratio("train_flops_over_forward_flops", flops["train"] / flops["forward"]),
        common.ratio("train_flops_over_full_flops", flops["train"] / flops["full"]),
        common.ratio(
            "train_gflops_over_matmul_peak",
            figures["train_frac_of_jax_peak"],
            PEAK_FRACTION_TARGET if w.dtype == "float32" else None,
            ">=",
        ),
    ]
    if floor:
        dots = matmul_floor.dots_of(train_step, train.state, frozen, train.batch, train.rng)
        got = matmul_floor.floor(dots, reps=max(3, min(reps, 10)))
        figures["train_matmul_gflop"] = got["matmul_gflop"]
        figures["train_matmul_floor_s"] = got["floor_s"]
        figures["train_shape_limited_gflops"] = got["shape_limited_gflops"]
        ratios += [
            common.ratio(
                "shape_limited_over_matmul_peak (the step's matmuls alone / square matmul)",
                got["shape_limited_gflops"] / peak,
            ),
            common.ratio(
                "train_over_matmul_floor (time; step / its matmuls alone)",
                timings["train"].median / got["floor_s"],
            ),
        ]
    return common.result("limits", w, figures, ratios, timings=timings, peaks=peaks)


def main(argv=None) -> dict[str, Any]:
    p = common.arg_parser(__doc__.splitlines()[0])
    p.add_argument("--matmul-n", type=int, default=None, help="side of the peak-rate matmul")
    p.add_argument("--no-floor", action="store_true", help="skip the matmul-floor profile")
    args = p.parse_args(argv)
    res = run(
        args.size,
        reps=args.reps,
        warmup=args.warmup,
        matmul_n=args.matmul_n,
        dtype=args.dtype,
        floor=not args.no_floor,
    )
    return common.finish(res, args.json)


if __name__ == "__main__":
    main()
