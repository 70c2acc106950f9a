"""Several independent prompt runs trained at once: states stacked on a run axis, one ``vmap``.

A :class:`RunGroup` is ``R`` runs of one objective and one optimizer (so one prompt
generator) that differ in their initial prompts, batches, dropout keys, per-run frozen
trees (each run's teachers) and learning-rate multipliers. Their states are one
:class:`~mpt_jax.training.state.TrainState` whose leaves carry a leading run axis
``[R, ...]``; one compiled step advances all of them. Runs never interact: run ``r``
follows exactly the trajectory of :func:`~mpt_jax.training.step.train_step_fn` alone
(``tests/test_run_group.py``)::

    group = RunGroup(stage.loss_fn, stage.optimizer)
    state = group.init(stack([params_a, params_b]))                    # R = 2
    state, metrics = group.step(state, frozen, {}, batch, rngs, lr_scale=jnp.array([1, 0.5]))

``lr_scale`` multiplies run ``r``'s whole update (after the optimizer), so with
Adafactor's decoupled weight decay ``wd · θ`` it scales that term too (1e-5 per step in
prompt tuning's recipe: a rate grid of 0.3 / 0.1 differs from separate optimizers built at
those rates by at most ``2/3 · 1e-5 · θ`` per step). ``lr_scale = 1`` is the optimizer
exactly.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from mpt_jax.training.objectives import LossFn
from mpt_jax.training.state import TrainState
from mpt_jax.training.step import train_step_fn

PyTree = Any


def stack(trees: list[PyTree]) -> PyTree:
    """Trees of equal structure → one tree with a new leading run axis ``[R, ...]``."""
    return jax.tree.map(lambda *xs: jnp.stack([jnp.asarray(x) for x in xs]), *trees)


@dataclasses.dataclass(frozen=True, eq=False)
class RunGroup:
    """``R`` independent runs of one objective and optimizer, stepped together.

    Attributes:
      loss_fn: the objective of one run (:mod:`mpt_jax.training.objectives`).
      optimizer: the optimizer of one run (e.g. ``PromptRecipe().build(...)``).
    """

    loss_fn: LossFn
    optimizer: optax.GradientTransformation

    def init(self, params: PyTree) -> TrainState:
        """Step-0 states ``[R, ...]`` from initial prompt trees ``params`` ``[R, ...]`` (copied:
        :meth:`step` donates the state, and ``params`` may be shared with other groups)."""
        params = jax.tree.map(jnp.array, params)
        return jax.vmap(lambda p: TrainState.create(p, self._tx(jnp.ones(()))))(params)

    def _tx(self, lr_scale: jax.Array) -> optax.GradientTransformation:
        return optax.chain(self.optimizer, optax.scale(lr_scale))

    @functools.cached_property
    def _step(self):
        def one(state, frozen, per_run, batch, rng, lr_scale):
            step = train_step_fn(self.loss_fn, self._tx(lr_scale))
            return step(state, {**frozen, **per_run}, batch, rng)

        return jax.jit(jax.vmap(one, in_axes=(0, None, 0, 0, 0, 0)), donate_argnums=(0,))

    def step(
        self,
        state: TrainState,
        frozen: PyTree,
        per_run: PyTree,
        batch: Mapping[str, Any],
        rngs: jax.Array,
        lr_scale: jax.Array | None = None,
    ) -> tuple[TrainState, dict[str, jax.Array]]:
        """One step of every run.

        Args:
          state: the runs' states ``[R, ...]`` (donated).
          frozen: the tree every run shares (``{"backbone": ...}``).
          per_run: frozen entries that differ by run, ``[R, ...]`` (e.g. each run's
            ``teacher_prompt``); merged over ``frozen`` for run ``r``.
          batch: ``[R, B, ...]``: run ``r`` trains on ``batch[r]``.
          rngs: ``[R]`` keys (dropout; folded with the step inside).
          lr_scale: ``[R]`` multipliers of each run's update (None: all 1).

        Returns:
          ``(state, metrics)``, metrics ``[R]`` each.

        Raises:
          FloatingPointError: when a run's loss or gradient is not finite, naming the runs.
        """
        runs = rngs.shape[0]
        scale = jnp.ones((runs,)) if lr_scale is None else jnp.asarray(lr_scale, jnp.float32)
        state, metrics = self._step(state, frozen, per_run, dict(batch), rngs, scale)
        bad = jnp.asarray(metrics["nonfinite"])
        if bool(jnp.any(bad)):
            raise FloatingPointError(
                f"non-finite loss or gradient at step {int(state.step[0]) - 1} in runs "
                f"{jnp.nonzero(bad)[0].tolist()} (losses {jnp.asarray(metrics['loss']).tolist()})"
            )
        return state, metrics
