"""Train and eval step builders: jitted, prompt-only gradients, non-finite guard.

``make_train_step(loss_fn, tx)`` returns

    train_step(state, frozen, batch, rng) -> (state, metrics)

- gradients are taken with respect to ``state.params`` (the prompt tree) only; the
  ``frozen`` tree (backbone, teacher prompts) is an ordinary argument that is never
  differentiated, so no weight-gradient matmuls run for it and it has no optimizer state;
- ``state`` is donated: its buffers are reused for the new state (do not touch the
  old state after the call);
- the dropout key is ``fold_in(rng, state.step)``, so a step's randomness depends on
  the step number only and a resumed run repeats an uninterrupted one exactly;
- non-finite guard: when the loss or any gradient is NaN/Inf, the prompt tree and the
  optimizer state are left unchanged (the step counter still advances: the batch was
  consumed) and ``metrics["nonfinite"]`` is 1. The training loop then stops with a
  message naming the step, or, with ``actions.NonFinite.policy = "skip"``, goes on.

Metrics: everything the objective returns plus ``grad_norm`` (global norm of the prompt
gradients) and ``nonfinite`` (0/1).

Task ids. With ``num_tasks`` (the prompt's task count) every step checks
``batch["task_ids"]`` before it runs (:func:`mpt_jax.checks.check_task_ids`): a concrete
batch on the host before dispatch, a traced one (``train_step_fn`` under your own ``jit``)
inside the program. Otherwise an id outside ``[0, num_tasks)`` is clamped by the prompt's
gather and trains another task's prompt. (The training loop checks every host batch too.)

Why not ``optax.apply_if_finite``: it inspects the updates only, not the loss; after
``max_consecutive_errors`` non-finite steps it applies them anyway; and wrapping the
caller's optimizer here would change the optimizer-state tree (``ApplyIfFiniteState``) that
``TrainState.create(params, tx)`` builds and checkpoints hold, so existing checkpoints
would no longer restore. The guard above keeps both trees unchanged in a few lines.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from mpt_jax.checks import check_task_ids
from mpt_jax.training import mesh as mesh_lib
from mpt_jax.training.objectives import LossFn
from mpt_jax.training.state import TrainState

PyTree = Any
TrainStep = Callable[[TrainState, PyTree, dict, jax.Array], tuple[TrainState, dict]]
EvalStep = Callable[[PyTree, PyTree, dict], dict]


def _all_finite(tree: PyTree) -> jax.Array:
    leaves = jax.tree.leaves(tree)
    if not leaves:
        return jnp.array(True)
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def train_step_fn(
    loss_fn: LossFn, tx: optax.GradientTransformation, *, num_tasks: int | None = None
) -> TrainStep:
    """The un-jitted train step (for composing under your own ``jit``/``pjit``); with
    ``num_tasks``, an out-of-range ``batch["task_ids"]`` raises (see the module docstring)."""

    def train_step(state: TrainState, frozen: PyTree, batch: dict, rng: jax.Array):
        check_task_ids(batch.get("task_ids"), num_tasks, "train step")
        step_rng = jax.random.fold_in(rng, state.step)
        grad_fn = jax.value_and_grad(loss_fn, argnums=0, has_aux=True)
        (loss, metrics), grads = grad_fn(state.params, frozen, batch, step_rng)
        finite = jnp.isfinite(loss) & _all_finite(grads)
        updated = state.apply_gradients(grads, tx)
        keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
        new_state = state.replace(
            step=state.step + 1,
            params=keep(updated.params, state.params),
            opt_state=keep(updated.opt_state, state.opt_state),
        )
        metrics = {
            **metrics,
            "loss": loss,
            "grad_norm": optax.global_norm(grads),
            "nonfinite": (~finite).astype(jnp.int32),
        }
        return new_state, metrics

    return train_step


def make_train_step(
    loss_fn: LossFn,
    tx: optax.GradientTransformation,
    *,
    mesh: Mesh | None = None,
    donate: bool = True,
    num_tasks: int | None = None,
) -> TrainStep:
    """Jit :func:`train_step_fn`; with ``mesh``, pin the data-parallel shardings.

    Args:
      loss_fn: an objective (see :mod:`mpt_jax.training.objectives`).
      tx: the prompt tree's optimizer.
      mesh: a ``"data"`` mesh (:func:`mpt_jax.training.mesh.data_mesh`): state, frozen
        tree and rng replicated, batch sharded on its first axis. ``None`` lets jit
        follow the placement of the arguments.
      donate: donate the state's buffers to the new state.
      num_tasks: the prompt's task count: ``batch["task_ids"]`` outside ``[0, num_tasks)``
        raises ``ValueError`` before the step runs (None: not checked).
    """
    kwargs: dict[str, Any] = {"donate_argnums": (0,) if donate else ()}
    if mesh is not None:
        rep, bat = mesh_lib.replicated(mesh), mesh_lib.batch_sharded(mesh)
        kwargs["in_shardings"] = (rep, rep, bat, rep)
        kwargs["out_shardings"] = (rep, rep)
    return _checked(jax.jit(train_step_fn(loss_fn, tx), **kwargs), num_tasks, "train step", 2)


def _checked(jitted: Callable, num_tasks: int | None, where: str, batch_arg: int) -> Callable:
    """``jitted`` behind a host check of its batch's task ids (the jitted function itself
    when there is nothing to check, so ``.lower`` etc. stay available)."""
    if num_tasks is None:
        return jitted

    @functools.wraps(jitted)
    def step(*args):
        check_task_ids(args[batch_arg].get("task_ids"), num_tasks, where)
        return jitted(*args)

    step.lower = jitted.lower  # type: ignore[attr-defined]
    return step


def make_eval_step(
    loss_fn: LossFn, *, mesh: Mesh | None = None, num_tasks: int | None = None
) -> EvalStep:
    """``eval_step(prompt_params, frozen, batch) -> metrics``: the objective without dropout.

    Metrics are the objective's (token means over this batch) plus ``num_tokens``; to
    average over batches weight each batch's ``loss`` by its ``num_tokens``. With
    ``num_tasks``, ``batch["task_ids"]`` outside ``[0, num_tasks)`` raises ``ValueError``.
    """

    def eval_step(prompt_params, frozen, batch):
        loss, metrics = loss_fn(prompt_params, frozen, batch, None)
        metrics = {**metrics, "loss": loss}
        if "num_tokens" not in metrics:
            metrics["num_tokens"] = jnp.sum(batch["decoder_loss_weights"])
        return metrics

    kwargs: dict[str, Any] = {}
    if mesh is not None:
        rep, bat = mesh_lib.replicated(mesh), mesh_lib.batch_sharded(mesh)
        kwargs["in_shardings"] = (rep, rep, bat)
        kwargs["out_shardings"] = rep
    return _checked(jax.jit(eval_step, **kwargs), num_tasks, "eval step", 2)
