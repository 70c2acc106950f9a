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
program over its median time, set against the measured rate of a large float32 matmul.

    python -m benchmarks.bench_limits --size mini --reps 10 --json limits.json
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from benchmarks import common
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


def run(size: str = "mini", *, reps: int = 10, warmup: int = 2, matmul_n: int | None = None):
    """Train/forward, train/full-fine-tuning, GFLOP/s of each against the matmul rate."""
    w = common.workload(size)
    batch = common.make_batch(w)
    model, params = common.init_model(w, "mpt")
    prompt, backbone = training.split_params(params)
    frozen = {"backbone": backbone}
    loss_fn = training.task_loss_fn(model)
    tx = common.make_tx("adamw")
    # Train steps donate their state: each gets its own copy of the arrays it trains.
    copy = lambda tree: jax.tree.map(jnp.copy, tree)
    train = common.JaxStepper(
        training.make_train_step(loss_fn, tx), training.TrainState.create(copy(prompt), tx),
        frozen, batch,
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
    n = matmul_n or (512 if size == "tiny" else 2048)
    peak = common.matmul_gflops(n, reps=max(3, min(reps, 10)))

    figures: dict[str, float] = {"matmul_f32_gflops": peak}
    for name, t in timings.items():
        figures[f"{name}_ex_per_s"] = w.batch / t.median
        figures[f"{name}_gflop_per_step"] = flops[name] / 1e9
        figures[f"{name}_gflops_achieved"] = flops[name] / t.median / 1e9
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
            "train_gflops_over_matmul_peak", figures["train_gflops_achieved"] / peak, None
        ),
    ]
    return common.result("limits", w, figures, ratios, timings=timings)


def main(argv=None) -> dict[str, Any]:
    p = common.arg_parser(__doc__.splitlines()[0])
    p.add_argument("--matmul-n", type=int, default=None, help="side of the peak-rate matmul")
    args = p.parse_args(argv)
    res = run(args.size, reps=args.reps, warmup=args.warmup, matmul_n=args.matmul_n)
    return common.finish(res, args.json)


if __name__ == "__main__":
    main()
