"""Full-parameter training: every weight of the model trains (backbone pretraining, baselines).

Prompt training differentiates the prompt tree only; this module is its counterpart for
the runs where the whole tree trains: pretraining the embedded backbone
(``scripts/pretrain_embedded_backbone.py``) and the full fine-tuning baseline of the
benchmarks. It reuses the training core unchanged — the loss
(:func:`mpt_jax.training.losses.cross_entropy_with_logits`), the step builder
(:func:`mpt_jax.training.step.train_step_fn`: non-finite guard, step-folded dropout keys)
and :class:`~mpt_jax.training.state.TrainState` — with the *whole* parameter tree as the
trainable argument and an empty frozen tree::

    loss_fn = full_loss_fn(model)
    state = TrainState.create(params, tx)           # optimizer state for every weight
    step = make_full_finetune_step(model, tx)
    state, metrics = step(state, {}, batch, rng)    # frozen tree: {}

The model is any module with T5X's ``__call__`` protocol: the plain backbone
(``mpt_jax.backbone.T5``) or a ``PromptedT5`` (its prompt then trains too, and
``task_ids`` are passed when the batch has them).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import optax

from mpt_jax.training import losses
from mpt_jax.training.objectives import LossFn
from mpt_jax.training.step import TrainStep, train_step_fn

PyTree = Any


def _inputs(model: nn.Module, batch: dict) -> dict[str, jax.Array]:
    inputs = {
        "encoder_input_tokens": batch["encoder_input_tokens"],
        "decoder_input_tokens": batch["decoder_input_tokens"],
        "decoder_target_tokens": batch["decoder_target_tokens"],
    }
    if getattr(model, "prompt", None) is not None:
        if "task_ids" not in batch:
            raise KeyError(
                f"{type(model).__name__} has a prompt, so the batch needs 'task_ids' "
                f"(features present: {sorted(batch)})."
            )
        inputs["task_ids"] = batch["task_ids"]
    return inputs


@gin.configurable(denylist=["model"])
def full_loss_fn(model: nn.Module, *, z_loss: float = 0.0) -> LossFn:
    """Token cross-entropy with the whole parameter tree as the trainable argument.

    Returns:
      ``loss_fn(params, frozen, batch, rng) -> (loss, metrics)`` where ``params`` is the
      model's full tree, ``frozen`` must be empty (``{}``) and ``rng`` is a dropout key or
      ``None`` (deterministic). Metrics: ``loss``, ``z_loss``, ``num_tokens``, ``accuracy``
      (the fraction of weighted target tokens whose argmax is right).
    """

    def loss_fn(params, frozen, batch, rng):
        if frozen:
            raise ValueError(
                f"full fine-tuning trains every weight; the frozen tree must be empty, got "
                f"keys {sorted(frozen)}."
            )
        kwargs = {"enable_dropout": False} if rng is None else {"rngs": {"dropout": rng}}
        logits = model.apply({"params": params}, **_inputs(model, batch), **kwargs)
        targets, weights = batch["decoder_target_tokens"], batch["decoder_loss_weights"]
        ce_sum, z_sum, w_sum = losses.cross_entropy_with_logits(
            logits, targets, weights, z_loss=z_loss
        )
        denom = jnp.maximum(w_sum, 1e-8)
        hits = (jnp.argmax(logits, -1) == targets).astype(jnp.float32)
        accuracy = jnp.sum(hits * weights) / denom
        loss = ce_sum / denom
        return loss, {
            "loss": loss,
            "z_loss": z_sum / denom,
            "num_tokens": w_sum,
            "accuracy": accuracy,
        }

    return loss_fn


def make_full_finetune_step(
    model: nn.Module,
    tx: optax.GradientTransformation,
    *,
    z_loss: float = 0.0,
    donate: bool = True,
) -> TrainStep:
    """``step(state, {}, batch, rng) -> (state, metrics)``, jitted, every weight trained.

    Args:
      model: the module (plain ``T5`` or ``PromptedT5``).
      tx: the optimizer of the whole tree (e.g. ``optax.adamw(1e-3)``).
      z_loss: see :func:`mpt_jax.training.losses.cross_entropy_with_logits`.
      donate: donate the state's buffers to the new state.

    Returns:
      The step of :func:`mpt_jax.training.step.train_step_fn` over :func:`full_loss_fn`
      (metrics also carry ``grad_norm`` and ``nonfinite``).
    """
    fn = train_step_fn(full_loss_fn(model, z_loss=z_loss), tx)
    return jax.jit(fn, donate_argnums=(0,) if donate else ())
