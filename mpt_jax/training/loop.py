"""The training loop: steps over the data; its policies are actions (:mod:`.actions`).

::

    result = train_loop(loss_fn, tx, prompt_params, frozen, batches,
                        model_dir="runs/x", task_names=index.names, backbone="random:0")

Each step: next batch → the jitted step → ``after_step`` of every action (non-finite
policy, checkpoint, evaluation, telemetry, console) → at every ``log_every``-th step a
metrics record (means over the steps since the last one) goes to ``metrics.jsonl`` and
TensorBoard and to every action's ``on_log``. The default actions are
:func:`~mpt_jax.training.actions.default_actions`; bind ``train_loop.actions`` to choose
others, and each action's settings in gin (``actions.Checkpoint.every = 1000``).

Determinism and resume. Batch ``i`` of the run is ``batches(start)``'s ``(i - start)``-th
element, and step ``s`` draws its dropout key from ``fold_in(key(seed), s)``. A checkpoint
stores the step and the data position (batches consumed), and a restarted run restores
the latest checkpoint and asks ``batches`` to start there, so an interrupted and resumed
run ends with exactly the parameters of an uninterrupted one (tests/test_loop.py).
``batches(start)`` must therefore be a deterministic function of ``start`` (seqio datasets
with a fixed shuffle seed, skipped to ``start``: see :func:`mpt_jax.runner.data.train_batches`).

Data parallelism. The loop builds a ``"data"`` mesh over all local devices, replicates
the prompt/optimizer/frozen trees and shards every batch along its first axis.

Records. ``loss`` and the objective's other scalars (means over the record's finite
steps), ``loss/<task>`` when the objective reports per-example sums ``example_loss`` and
``example_weight`` (``[batch]``: Σ of the token losses and of their weights), the learning
rate(s) of the record's step (``rates_at(step)``, e.g. the recipe's
:meth:`~mpt_jax.training.optimizers.PromptRecipe.rates_at`; without it, those an
``optax.inject_hyperparams`` state holds), ``skipped_steps``,
``steps_per_second`` (the time of data and steps since this process's first step: its
compile time and the actions' time, evaluations included, are excluded; the first step's
own time is ``first_step_seconds``), plus what actions add (``prompt_rms/...``).

Nothing is written before the first step has run: ``on_started`` (the caller's run files,
e.g. ``task_index.json``) is called then, and the metrics and checkpoint folders appear
with their first record, so a run that fails to compile or to read its data leaves
nothing behind.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import gin
import jax
import numpy as np
import optax

from mpt_jax.errors import BindingError
from mpt_jax.training import mesh as mesh_lib
from mpt_jax.training.actions import (
    Action,
    Evaluate,
    NonFiniteError,
    Run,
    TrainingInterrupted,
    default_actions,
)
from mpt_jax.training.objectives import LossFn
from mpt_jax.training.state import TrainState
from mpt_jax.training.step import make_train_step
from mpt_jax.training.summaries import MetricsWriter

PyTree = Any
Batches = Callable[[int], Iterator[Mapping[str, np.ndarray]]]
EvaluateFn = Callable[[PyTree, int], Mapping[str, float]]
log = logging.getLogger(__name__)

__all__ = ["LoopResult", "NonFiniteError", "TrainingInterrupted", "train_loop"]

#: PRNG implementations the dropout key may use (``jax.random.key(..., impl=...)``).
DROPOUT_RNG_IMPLS = ("threefry2x32", "rbg", "unsafe_rbg")
#: Per-example sums an objective may report for per-task losses (``[batch]`` each).
EXAMPLE_SUMS = ("example_loss", "example_weight")


@dataclasses.dataclass
class LoopResult:
    """``state``: the final state (on the host); ``train`` / ``eval``: the metric records;
    ``skipped_steps``: non-finite steps skipped; ``best_step``: the best evaluated step
    (None without evaluation)."""

    state: TrainState
    train: list[dict[str, Any]]
    eval: list[dict[str, Any]]
    skipped_steps: list[int]
    best_step: int | None = None


@functools.lru_cache(maxsize=8)
def _compiled_train_step(loss_fn: LossFn, tx: optax.GradientTransformation, mesh):
    """One jitted step per (objective, optimizer, mesh): a second loop over the same
    objective (resuming in-process, evaluating a sweep) reuses the compiled program."""
    return make_train_step(loss_fn, tx, mesh=mesh)


def _check_batch_task_ids(batch: Mapping[str, np.ndarray], num_tasks: int, step: int) -> None:
    """Inside the jitted step an out-of-range task id would be clamped by the gather, and
    silently train another task's prompt; so the host batch is checked before each step."""
    if "task_ids" not in batch:
        return
    ids = np.asarray(batch["task_ids"])
    bad = ids[(ids < 0) | (ids >= num_tasks)]
    if bad.size:
        raise ValueError(
            f"the batch of step {step} holds task id {int(bad[0])}, out of range "
            f"[0, {num_tasks}) of the run's task-id mapping"
        )


def learning_rates(opt_state: PyTree) -> dict[str, float]:
    """The learning rates an optimizer state holds (``optax.inject_hyperparams``):
    ``{"learning_rate": v}``, or ``{"learning_rate/<group>": v}`` for several."""
    found = []
    for path, leaf in jax.tree_util.tree_leaves_with_path(opt_state):
        if getattr(path[-1], "key", None) == "learning_rate":
            group = [str(k.key) for k in path[:-1] if isinstance(getattr(k, "key", None), str)]
            group = [g for g in group if g not in ("hyperparams", "inner_states")]
            found.append(("/".join(group), float(np.asarray(leaf))))
    if len(found) == 1:
        return {"learning_rate": found[0][1]}
    return {f"learning_rate/{g or i}": v for i, (g, v) in enumerate(found)}


class _Window:
    """The metrics of the finite steps since the last record: scalar means, and per-task
    loss sums from the objective's per-example sums."""

    def __init__(self, task_names: Sequence[str]):
        self.task_names = tuple(task_names)
        self.scalars: list[dict[str, float]] = []
        self.task_sums = np.zeros((2, len(self.task_names)))

    def add(self, metrics: Mapping[str, Any], batch: Mapping[str, np.ndarray]) -> None:
        if metrics["nonfinite"]:
            return
        self.scalars.append({k: float(v) for k, v in metrics.items()
                             if k != "nonfinite" and np.ndim(v) == 0})  # fmt: skip
        if all(k in metrics for k in EXAMPLE_SUMS) and "task_ids" in batch:
            ids, n = np.asarray(batch["task_ids"]), len(self.task_names)
            for row, key in enumerate(EXAMPLE_SUMS):
                self.task_sums[row] += np.bincount(ids, np.asarray(metrics[key]), minlength=n)

    def record(self) -> dict[str, float]:
        out = {}
        if self.scalars:
            out = {k: float(np.mean([w[k] for w in self.scalars])) for k in self.scalars[0]}
        loss, weight = self.task_sums
        out.update({f"loss/{name}": float(loss[i] / weight[i])
                    for i, name in enumerate(self.task_names) if weight[i] > 0})  # fmt: skip
        self.scalars, self.task_sums = [], np.zeros_like(self.task_sums)
        return out


@gin.configurable(
    # Run-specific arguments the caller (the train job) passes; binding them in gin would be
    # silently overridden, so gin refuses them (bind train.seed, train.model_dir instead).
    denylist=[
        "loss_fn",
        "tx",
        "prompt_params",
        "frozen",
        "batches",
        "task_names",
        "model_dir",
        "backbone",
        "seed",
        "evaluate",
        "generator",
        "extra_meta",
        "on_started",
        "rates_at",
    ]
)
def train_loop(
    loss_fn: LossFn,
    tx: optax.GradientTransformation,
    prompt_params: PyTree,
    frozen: PyTree,
    batches: Batches,
    *,
    task_names: Sequence[str],
    model_dir: str | None = None,
    backbone: str = "unknown",
    seed: int = 0,
    evaluate: EvaluateFn | None = None,
    generator: Any = None,
    extra_meta: Mapping[str, Any] | None = None,
    on_started: Callable[[], None] | None = None,
    rates_at: Callable[[int], Mapping[str, float]] | None = None,
    num_steps: int = 1000,
    log_every: int = 50,
    actions: Sequence[Action] | None = None,
    dropout_rng_impl: str = "threefry2x32",
) -> LoopResult:
    """Train ``prompt_params`` for ``num_steps`` steps (in total, counting resumed ones).

    Args:
      loss_fn: the objective, ``loss_fn(prompt, frozen, batch, rng)``.
      tx: the optimizer of the prompt tree.
      prompt_params: the initial prompt tree (ignored when resuming; it is the restore
        target).
      frozen: the frozen tree (``{"backbone": ..., ...}``), never trained.
      batches: ``batches(start)`` yields host batches from position ``start``.
      task_names: the task-id mapping in id order; stored with every checkpoint and
        checked on resume.
      model_dir: the run directory: checkpoints go to ``<model_dir>/checkpoints``, metrics
        to ``metrics.jsonl`` and ``tensorboard/`` (None: nothing is written, no resume).
      backbone: how the backbone was obtained (a path, ``"random:<seed>"``); recorded.
      seed: the dropout seed.
      evaluate: ``evaluate(prompt_params, step) -> {name: value}`` (seqio metrics), called
        by :class:`~mpt_jax.training.actions.Evaluate`.
      generator: the prompt generator module (telemetry composes each task's prompt).
      extra_meta: JSON-able facts stored with each checkpoint (stage, prompt config, …).
      on_started: called once the first step has run (write the run's files there).
      rates_at: ``rates_at(step) -> {"learning_rate": v, "learning_rate/<group>": v}``,
        the learning rates ``tx`` applies at a (1-based) step, recorded with each record
        (:meth:`~mpt_jax.training.optimizers.PromptRecipe.rates_at` of the recipe that
        built ``tx``); None: those an ``optax.inject_hyperparams`` state holds, if any.
      num_steps: the step to stop at.
      log_every: period of metric records (means over the period; the last step too).
      actions: the loop's policies (default: :func:`~.actions.default_actions`).
      dropout_rng_impl: the PRNG of the dropout key, one of ``DROPOUT_RNG_IMPLS``:
        ``"threefry2x32"`` (JAX's default: the same draws on every backend and
        sharding) or ``"rbg"``/``"unsafe_rbg"`` (XLA's RngBitGenerator, what T5X's
        ``use_hardware_rng`` selects: one op per draw instead of a threefry loop, so the
        train step compiles faster at equal speed). Draws differ between
        implementations; a resumed run must keep its own.

    Raises:
      NonFiniteError: a non-finite step under ``actions.NonFinite.policy = "raise"``.
      TrainingInterrupted: SIGINT/SIGTERM (:class:`~.actions.StopOnSignal`), after the
        step in flight was checkpointed; a ``SystemExit`` with code 128 + signal.
    """
    if dropout_rng_impl not in DROPOUT_RNG_IMPLS:
        raise BindingError(
            f"dropout_rng_impl must be one of {DROPOUT_RNG_IMPLS}, got {dropout_rng_impl!r}"
        )
    for name, value in (("num_steps", num_steps), ("log_every", log_every)):
        if value < 1:
            raise BindingError(f"train_loop.{name} must be >= 1, got {value}")
    actions = list(default_actions() if actions is None else actions)
    run = Run(
        task_names=tuple(task_names), num_steps=num_steps, log_every=log_every,
        state=TrainState.create(jax.tree.map(np.asarray, prompt_params), tx),
        writer=MetricsWriter(model_dir), model_dir=model_dir, backbone=backbone,
        meta={**(extra_meta or {}), "dropout_rng_impl": dropout_rng_impl}, frozen=frozen,
        evaluate=evaluate, generator=generator, rates_at=rates_at,
    )  # fmt: skip
    try:
        for action in actions:
            action.on_start(run)
        _steps(run, actions, loss_fn, tx, batches, seed, dropout_rng_impl, on_started)
        for action in actions:
            action.on_end(run)
        if run.summary:
            run.echo("\n".join(["run summary:", *(f"  {line}" for line in run.summary)]))
    finally:
        for action in reversed(actions):
            action.close(run)
        run.writer.close()
    best = [a.best_step for a in actions if isinstance(a, Evaluate)]
    return LoopResult(
        state=jax.device_get(run.state),
        train=[r for r in run.writer.records if r["kind"] == "train"],
        eval=[r for r in run.writer.records if r["kind"] == "eval"],
        skipped_steps=run.skipped_steps,
        best_step=best[0] if best else None,
    )


def _steps(run: Run, actions, loss_fn, tx, batches, seed, rng_impl, on_started) -> None:
    """Steps ``run.start_step + 1 .. run.num_steps``, calling the actions' hooks."""
    mesh = mesh_lib.data_mesh()
    run.state = mesh_lib.replicate(run.state, mesh)
    run.frozen = mesh_lib.replicate(run.frozen, mesh)
    rng = mesh_lib.replicate(jax.random.key(seed, impl=rng_impl), mesh)
    step_fn = _compiled_train_step(loss_fn, tx, mesh)
    window = _Window(run.task_names)
    iterator = iter(batches(run.data_position))
    first_step, first_seconds, train_seconds = None, 0.0, 0.0
    for step in range(run.start_step + 1, run.num_steps + 1):
        t0 = time.perf_counter()
        try:
            batch = next(iterator)
        except StopIteration:
            raise ValueError(
                f"the training data ran out after {run.data_position} batches, before step "
                f"{step} of {run.num_steps}; repeat the dataset (num_epochs=None) or train "
                "fewer steps"
            ) from None
        _check_batch_task_ids(batch, len(run.task_names), step)
        run.state, metrics = step_fn(run.state, run.frozen, mesh_lib.shard_batch(batch, mesh), rng)
        run.data_position += 1
        run.batch, run.scalars = batch, {}
        metrics = jax.device_get(metrics)  # waits for the step: its time ends here
        if first_step is None:
            first_step, first_seconds = step, time.perf_counter() - t0
        else:
            train_seconds += time.perf_counter() - t0
        for action in actions:
            action.after_step(run, step, metrics)
        if step == first_step and on_started is not None:
            on_started()  # the run has started for real: its files may be written
        window.add(metrics, batch)
        if run.is_log_step(step):
            record = window.record()
            if run.rates_at is not None:
                record.update(run.rates_at(step))
            else:
                record.update(learning_rates(run.state.opt_state))
            record.update(run.scalars)
            record["skipped_steps"] = len(run.skipped_steps)
            if step == first_step:
                record["first_step_seconds"] = first_seconds
            else:
                record["steps_per_second"] = (step - first_step) / max(train_seconds, 1e-9)
            record = run.writer.write(step, record, kind="train")
            for action in actions:
                action.on_log(run, step, record)
        if run.stop_signal is not None and step < run.num_steps:
            for action in actions:
                action.on_interrupt(run, step)
            raise TrainingInterrupted(step, run.stop_signal)
