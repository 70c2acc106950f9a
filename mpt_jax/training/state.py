"""The training state: the step, the prompt tree and its optimizer state — nothing else.

The frozen backbone is not part of the state: it is a separate argument of every step
function, is never differentiated, and has no optimizer state. ``TrainState`` is a plain
pytree (no functions inside), so orbax saves and restores it as is.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

PyTree = Any


@flax.struct.dataclass
class TrainState:
    """``step`` (int32 scalar), ``params`` (the prompt tree), ``opt_state`` (its optax state)."""

    step: jax.Array
    params: PyTree
    opt_state: optax.OptState

    @classmethod
    def create(cls, params: PyTree, tx: optax.GradientTransformation) -> TrainState:
        """A fresh state at step 0 for the prompt tree ``params``."""
        return cls(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))

    def apply_gradients(self, grads: PyTree, tx: optax.GradientTransformation) -> TrainState:
        """One optimizer update; the step counter advances by one."""
        updates, opt_state = tx.update(grads, self.opt_state, self.params)
        params = optax.apply_updates(self.params, updates)
        return self.replace(step=self.step + 1, params=params, opt_state=opt_state)


def split_params(params: PyTree, trainable_key: str = "prompt") -> tuple[PyTree, PyTree]:
    """Split a model's parameter dict into ``(prompt_params, frozen_params)``.

    Args:
      params: the full tree of a ``PromptedT5`` (backbone names plus ``"prompt"``).
      trainable_key: the top-level key that trains.

    Returns:
      ``(params[trainable_key], {every other top-level key})``.
    """
    if trainable_key not in params:
        raise KeyError(
            f"parameter tree has no {trainable_key!r} subtree; top-level keys: {sorted(params)}"
        )
    frozen = {k: v for k, v in params.items() if k != trainable_key}
    return params[trainable_key], frozen


def merge_params(prompt_params: PyTree, frozen_params: PyTree, trainable_key: str = "prompt"):
    """The inverse of :func:`split_params`."""
    if trainable_key in frozen_params:
        raise ValueError(f"frozen params already hold a {trainable_key!r} subtree")
    return {**frozen_params, trainable_key: prompt_params}
