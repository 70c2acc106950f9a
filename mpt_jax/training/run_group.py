"""Several independent prompt runs trained at once: states stacked on a run axis, one ``vmap``.

A :class:`RunGroup` is ``R`` runs of one prompt generator (one parameter structure) that
differ in their initial prompts, their batches, their dropout keys and any per-run
hyper-parameters (a learning rate, a distillation weight). Their train states are one
:class:`~mpt_jax.training.state.TrainState` whose leaves carry a leading run axis
``[R, ...]``; one compiled step advances all of them. Runs never interact: run ``r`` of a
group follows exactly the trajectory of :func:`~mpt_jax.training.step.train_step_fn` on
its own (``tests/test_run_group.py``).

    group = RunGroup(loss=lambda h: task_loss_fn(model),
                     optimizer=lambda h: recipe_at(h["learning_rate"]))
    state = group.init(params, {"learning_rate": jnp.array([0.3, 0.1])})   # R = 2
    state, metrics = group.step(state, {"backbone": backbone}, {}, batch, rngs, hyper)
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from mpt_jax.training.objectives import LossFn
from mpt_jax.training.state import TrainState
from mpt_jax.training.step import train_step_fn

PyTree = Any
#: Per-run hyper-parameters: name → ``[R]`` array (one scalar per run inside the step).
Hyper = Mapping[str, jax.Array]


def stack(trees: list[PyTree]) -> PyTree:
    """Trees of equal structure → one tree with a new leading run axis ``[R, ...]``."""
    return jax.tree.map(lambda *xs: jnp.stack([jnp.asarray(x) for x in xs]), *trees)


def num_runs(tree: PyTree) -> int:
    """``R``: the leading axis of a stacked tree."""
    return int(jax.tree.leaves(tree)[0].shape[0])


@dataclasses.dataclass(frozen=True, eq=False)
class RunGroup:
    """``R`` independent runs of one generator, stepped together.

    Attributes:
      loss: ``loss(hyper) -> LossFn`` for one run; ``hyper`` holds that run's scalars
        (e.g. ``distillation_loss_fn(student, teacher, distill_weight=hyper["w"])``).
      optimizer: ``optimizer(hyper) -> optax.GradientTransformation`` for one run
        (e.g. the recipe at ``hyper["learning_rate"]``). Its state's structure must not
        depend on ``hyper``'s values.
    """

    loss: Callable[[Hyper], LossFn]
    optimizer: Callable[[Hyper], optax.GradientTransformation]

    def init(self, params: PyTree, hyper: Hyper) -> TrainState:
        """Step-0 states ``[R, ...]`` from initial prompt trees ``params`` ``[R, ...]``."""
        return jax.vmap(lambda p, h: TrainState.create(p, self.optimizer(h)))(params, dict(hyper))

    @functools.cached_property
    def _step(self):
        def one(state, frozen, per_run, batch, rng, hyper):
            step = train_step_fn(self.loss(hyper), self.optimizer(hyper))
            return step(state, {**frozen, **per_run}, batch, rng)

        return jax.jit(jax.vmap(one, in_axes=(0, None, 0, 0, 0, 0)), donate_argnums=(0,))

    def step(
        self,
        state: TrainState,
        frozen: PyTree,
        per_run: PyTree,
        batch: Mapping[str, Any],
        rngs: jax.Array,
        hyper: Hyper,
    ) -> tuple[TrainState, dict[str, jax.Array]]:
        """One step of every run.

        Args:
          state: the runs' states ``[R, ...]`` (donated).
          frozen: the tree every run shares (``{"backbone": ...}``).
          per_run: frozen entries that differ by run, ``[R, ...]`` (e.g. each run's
            ``teacher_prompt``); merged into ``frozen`` for run ``r``.
          batch: ``[R, B, ...]``, run ``r`` trains on ``batch[r]``.
          rngs: ``[R]`` keys (dropout; folded with the step inside).
          hyper: ``[R]`` arrays.

        Returns:
          ``(state, metrics)``, metrics ``[R]`` each.

        Raises:
          FloatingPointError: when a run's loss or gradient is not finite, naming the runs.
        """
        state, metrics = self._step(state, frozen, per_run, dict(batch), rngs, dict(hyper))
        bad = jnp.asarray(metrics["nonfinite"])
        if bool(jnp.any(bad)):
            raise FloatingPointError(
                f"non-finite loss or gradient at step {int(state.step[0]) - 1} in runs "
                f"{jnp.nonzero(bad)[0].tolist()} (losses {jnp.asarray(metrics['loss']).tolist()})"
            )
        return state, metrics
