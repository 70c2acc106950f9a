"""Distillation cost: an MPT source step with per-task teachers vs a plain MPT step.

The source step is the runner's: ``training.distillation_loss_fn(student, teacher)``
(student: ``MultitaskPrompt``; teachers: ``TaskPrompts``, one full prompt per task, run
without dropout under ``stop_gradient``) with ``training.make_train_step``. The plain step
is ``training.task_loss_fn(student)``. Same backbone, batch and optimizer (AdamW),
alternating, medians. The teachers add one forward pass without backward, so the limit
is about 1.5 (forward ≈ 1/3 of a train step would give 1.33).

    python -m benchmarks.bench_distill --size mini --reps 10 --json distill.json
"""

from __future__ import annotations

from typing import Any

from benchmarks import common
from mpt_jax import training


def distill_stepper(w: common.Workload, batch) -> common.JaxStepper:
    """Our source-training step (task loss + KL + encoder-state MSE from the teachers)."""
    student, params = common.init_model(w, "mpt", seed=0)
    teacher, teacher_params = common.init_model(w, "teachers", seed=1)
    prompt, backbone = training.split_params(params)
    frozen = {"backbone": backbone, "teacher_prompt": teacher_params["prompt"]}
    tx = common.make_tx("adamw")
    step = training.make_train_step(training.distillation_loss_fn(student, teacher), tx)
    return common.JaxStepper(step, training.TrainState.create(prompt, tx), frozen, batch)


def run(
    size: str = "mini", *, reps: int = 10, warmup: int = 2, dtype: str | None = None
) -> dict[str, Any]:
    """Time of a distillation step over a plain MPT step (limit ≈ 1.5)."""
    w = common.workload(size, dtype)
    batch = common.make_batch(w)
    candidates = {
        "distill": distill_stepper(w, batch),
        "plain": common.prompt_train_stepper(w, "mpt", batch=batch),
    }
    timings = common.alternate(candidates, reps=reps, warmup=warmup)
    figures = common.step_figures(w, timings, candidates)
    ratios = [
        common.ratio(
            "distill_over_plain (time)",
            common.paired_ratio(timings["distill"], timings["plain"]),
            1.5,
        )
    ]
    return common.result("distill", w, figures, ratios, timings=timings)


def main(argv=None) -> dict[str, Any]:
    args = common.arg_parser(__doc__.splitlines()[0]).parse_args(argv)
    res = run(args.size, reps=args.reps, warmup=args.warmup, dtype=args.dtype)
    return common.finish(res, args.json)


if __name__ == "__main__":
    main()
