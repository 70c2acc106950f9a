"""Routing is free: mixed-task batches and MPT's task factors cost (almost) nothing.

Two side-by-side comparisons of our prompt-only train step (AdamW), alternating, medians:

- ``mixed`` vs ``single_task``: the same MPT step on a batch whose examples cycle through
  the 4 tasks, and on a batch where every example has task 0 (same compiled program: the
  task ids are data, not shapes). Target: within 2%.
- ``mpt`` vs ``vanilla``: the MPT step (``P ∘ U_k V_k`` gathered per example) and a
  vanilla prompt-tuning step (``SinglePrompt``: one ``[L, D]`` prompt), same mixed batch.
  Target: within 2%.
- a control: a second, identical MPT step on the mixed batch (its own state and
  compiled program). ``twin_over_mixed`` is what two identical steps measure apart on
  this machine — the noise floor the two 2% targets are read against.

    python -m benchmarks.bench_routing --size mini --reps 10 --json routing.json
"""

from __future__ import annotations

from typing import Any

from benchmarks import common


def run(
    size: str = "mini", *, reps: int = 10, warmup: int = 2, dtype: str | None = None
) -> dict[str, Any]:
    """Mixed/single-task and MPT/vanilla time ratios (targets: 1 ± 2%)."""
    w = common.workload(size, dtype)
    mixed_batch = common.make_batch(w)
    single_batch = common.make_batch(w, task_ids=[0] * w.batch)
    candidates = {
        "mpt_mixed": common.prompt_train_stepper(w, "mpt", batch=mixed_batch),
        "mpt_single_task": common.prompt_train_stepper(w, "mpt", batch=single_batch),
        "vanilla_mixed": common.prompt_train_stepper(w, "single", batch=mixed_batch),
        "mpt_mixed_twin": common.prompt_train_stepper(w, "mpt", batch=mixed_batch),
    }
    timings = common.alternate(candidates, reps=reps, warmup=warmup)
    figures = common.step_figures(w, timings, candidates)
    t = timings
    ratios = [
        common.ratio("mixed_over_single_task (time)",
                     common.paired_ratio(t["mpt_mixed"], t["mpt_single_task"]), 1.0, "~"),
        common.ratio("mpt_over_vanilla (time)",
                     common.paired_ratio(t["mpt_mixed"], t["vanilla_mixed"]), 1.0, "~"),
        common.ratio("twin_over_mixed (time; identical steps: noise floor)",
                     common.paired_ratio(t["mpt_mixed_twin"], t["mpt_mixed"])),
    ]  # fmt: skip
    return common.result("routing", w, figures, ratios, timings=timings)


def main(argv=None) -> dict[str, Any]:
    args = common.arg_parser(__doc__.splitlines()[0]).parse_args(argv)
    res = run(args.size, reps=args.reps, warmup=args.warmup, dtype=args.dtype)
    return common.finish(res, args.json)


if __name__ == "__main__":
    main()
