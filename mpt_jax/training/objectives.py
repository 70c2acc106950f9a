"""Objectives: the losses of :mod:`mpt_jax.training.losses` bound to a prompted model.

An objective is a pure function

    loss_fn(prompt_params, frozen, batch, rng) -> (loss, metrics)

- ``prompt_params``: the trainable prompt tree (``params["prompt"]``); gradients are
  taken with respect to this argument only.
- ``frozen``: a dict of everything that does not train. ``frozen["backbone"]`` is the
  model's parameter tree without ``"prompt"``; distillation adds
  ``frozen["teacher_prompt"]``. Frozen arrays are arguments (not closure constants),
  so they are not baked into the compiled program.
- ``batch``: T5X feature names plus ``task_ids [batch]`` (see docs/ARCHITECTURE.md).
- ``rng``: a PRNG key for dropout, or ``None`` to run deterministically (evaluation).

``loss`` is a float32 scalar (a mean over the weighted target tokens); ``metrics``
is a dict of float32 scalars.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp

from mpt_jax.errors import BindingError
from mpt_jax.training import losses
from mpt_jax.training.state import merge_params

PyTree = Any
Batch = Mapping[str, jax.Array]
LossFn = Callable[[PyTree, PyTree, Batch, jax.Array | None], tuple[jax.Array, dict]]


def _model_inputs(batch: Batch) -> dict[str, jax.Array]:
    if "task_ids" not in batch:
        raise KeyError(
            "batch has no 'task_ids' feature; use mpt_jax.data's feature converter, which keeps "
            f"it (features present: {sorted(batch)})"
        )
    return {
        "encoder_input_tokens": batch["encoder_input_tokens"],
        "decoder_input_tokens": batch["decoder_input_tokens"],
        "decoder_target_tokens": batch["decoder_target_tokens"],
        "task_ids": batch["task_ids"],
    }


def _apply_kwargs(rng: jax.Array | None) -> dict[str, Any]:
    if rng is None:
        return {"enable_dropout": False}
    return {"enable_dropout": True, "rngs": {"dropout": rng}}


def _example_sums(logits: jax.Array, batch: Batch) -> dict[str, jax.Array]:
    """Per-example token cross-entropy sums and weights ``[batch]`` (the loop turns them
    into per-task losses with the batch's ``task_ids``)."""
    per_example = jax.vmap(losses.cross_entropy_with_logits)
    ce, _, weight = per_example(
        logits[:, None],
        batch["decoder_target_tokens"][:, None],
        batch["decoder_loss_weights"][:, None],
    )
    return {"example_loss": ce, "example_weight": weight}


@gin.configurable(denylist=["model"])
def task_loss_fn(model: nn.Module, *, z_loss: float = 0.0) -> LossFn:
    """Token cross-entropy of ``model`` (a ``PromptedT5``) on the batch's targets.

    Metrics: ``loss``, ``z_loss``, ``num_tokens`` (``Σ decoder_loss_weights``), and the
    per-example ``example_loss`` / ``example_weight`` ``[batch]`` (per-task losses).
    """

    def loss_fn(prompt_params, frozen, batch, rng):
        variables = {"params": merge_params(prompt_params, frozen["backbone"])}
        logits = model.apply(variables, **_model_inputs(batch), **_apply_kwargs(rng))
        ce_sum, z_sum, w_sum = losses.cross_entropy_with_logits(
            logits, batch["decoder_target_tokens"], batch["decoder_loss_weights"], z_loss=z_loss
        )
        denom = jnp.maximum(w_sum, 1e-8)
        loss = ce_sum / denom
        metrics = {"loss": loss, "z_loss": z_sum / denom, "num_tokens": w_sum}
        return loss, {**metrics, **_example_sums(logits, batch)}

    return loss_fn


@gin.configurable
@dataclasses.dataclass(frozen=True)
class Distillation:
    """MPT's distillation recipe: ``L_task + weight · (temperature² · KL + MSE)``.

    The single definition of λ and τ for the runner, the demo and the T5X layer
    (``t5x_ext.models.PromptDistillationModel`` takes a ``Distillation``; the T5X gin
    files restate none of its values, checked by ``tests/test_optimizers.py``)::

        Distillation.weight = 0.5

    Attributes:
      weight: λ ≥ 0 (the default is recalled from the paper, not verified).
      temperature: τ > 0 of the KL term.
      hidden_states: ``"encoder"``, ``"decoder"``, ``"both"`` or ``"none"`` (see
        :func:`mpt_jax.training.losses.distillation_loss`).
    """

    weight: float = 0.9
    temperature: float = 1.0
    hidden_states: str = "encoder"

    def __post_init__(self):
        if self.weight < 0:
            raise ValueError(f"Distillation.weight (λ) must be >= 0, got {self.weight}")
        if self.temperature <= 0:
            raise ValueError(f"Distillation.temperature must be > 0, got {self.temperature}")
        if self.hidden_states not in losses.HIDDEN_CHOICES:
            raise BindingError(
                f"Distillation.hidden_states must be one of {losses.HIDDEN_CHOICES}, "
                f"got {self.hidden_states!r}"
            )


@gin.configurable(denylist=["student", "teacher"])
def distillation_loss_fn(
    student: nn.Module,
    teacher: nn.Module,
    recipe: Distillation | None = None,
    *,
    z_loss: float = 0.0,
) -> LossFn:
    """MPT source training: task loss + λ (τ² KL(teacher ‖ student) + MSE of hidden states).

    ``student`` and ``teacher`` are ``PromptedT5`` models over the same backbone; the
    teacher's prompt is a ``TaskPrompts`` generator, so each example is distilled from
    its own task's teacher prompt (selected by ``task_ids``). The teacher runs without
    dropout and under ``stop_gradient`` (its prompt lives in ``frozen["teacher_prompt"]``).
    ``recipe`` (λ, τ, hidden states) defaults to the gin-bound :class:`Distillation`.

    Metrics: ``loss``, ``task_loss``, ``kl``, ``mse``, ``z_loss``, ``num_tokens``, and the
    student's per-example ``example_loss`` / ``example_weight`` ``[batch]``.
    """
    recipe = Distillation() if recipe is None else recipe

    def loss_fn(prompt_params, frozen, batch, rng):
        if "teacher_prompt" not in frozen:
            raise KeyError("distillation needs frozen['teacher_prompt'] (the teachers' prompts)")
        inputs = _model_inputs(batch)
        s_logits, s_hidden = student.apply(
            {"params": merge_params(prompt_params, frozen["backbone"])},
            **inputs,
            **_apply_kwargs(rng),
            method="forward_with_hidden",
        )
        teacher_params = jax.lax.stop_gradient(
            merge_params(frozen["teacher_prompt"], frozen["backbone"])
        )
        t_logits, t_hidden = teacher.apply(
            {"params": teacher_params}, **inputs, enable_dropout=False, method="forward_with_hidden"
        )
        loss, metrics = losses.distillation_loss(
            s_logits,
            t_logits,
            s_hidden,
            t_hidden,
            batch,
            distill_weight=recipe.weight,
            temperature=recipe.temperature,
            hidden_states=recipe.hidden_states,
            z_loss=z_loss,
        )
        metrics = {**metrics, "loss": loss, "num_tokens": jnp.sum(batch["decoder_loss_weights"]),
                   **_example_sums(s_logits, batch)}  # fmt: skip
        return loss, metrics

    return loss_fn
