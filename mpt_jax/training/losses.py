"""Losses of prompt training: token cross-entropy and MPT's teacher→student distillation.

Every loss here is a pure function of arrays. Each returns a *sum* over the weighted
tokens together with the weight it was summed over, so data-parallel shards and
gradient-accumulation micro-batches combine exactly (``sum / weight`` at the end); the
``*_mean`` helpers divide once.

Shapes: ``logits [batch, length, vocab]``, ``targets / weights [batch, length]``,
``hidden [batch, length, embed]`` with ``mask [batch, length]``.

The distillation objective of MPT (Wang et al., ICLR 2023, eq. for source training) is

    L = L_task + λ · (τ² · KL(teacher_τ ‖ student_τ) + MSE(h_teacher, h_student))

where ``teacher_τ`` / ``student_τ`` are the output distributions at temperature ``τ``.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp

Array = jax.Array


def cross_entropy_with_logits(
    logits: Array, targets: Array, weights: Array, *, z_loss: float = 0.0
) -> tuple[Array, Array, Array]:
    """Weighted token cross-entropy, summed.

    Args:
      logits: float ``[batch, length, vocab]``.
      targets: int ``[batch, length]`` target token ids.
      weights: ``[batch, length]`` per-token loss weights (0 at padding).
      z_loss: coefficient of the auxiliary ``z_loss · log(Σ exp logits)²`` term
        (T5X's default is 1e-4; 0 turns it off).

    Returns:
      ``(loss_sum, z_loss_sum, weight_sum)``: the weighted sum of the per-token
      loss (cross-entropy plus the z-loss term), the weighted sum of the z-loss term
      alone, and ``Σ weights``.
    """
    logits = logits.astype(jnp.float32)
    weights = weights.astype(jnp.float32)
    log_z = jax.nn.logsumexp(logits, axis=-1)  # [batch, length]
    target_logit = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), axis=-1)[
        ..., 0
    ]
    token_ce = log_z - target_logit
    token_z = z_loss * jnp.square(log_z)
    return (
        jnp.sum((token_ce + token_z) * weights),
        jnp.sum(token_z * weights),
        jnp.sum(weights),
    )


def kl_divergence_with_temperature(
    teacher_logits: Array, student_logits: Array, weights: Array, *, temperature: float = 1.0
) -> tuple[Array, Array]:
    """``Σ_tokens w · KL(softmax(teacher/τ) ‖ softmax(student/τ))``, summed (no τ² factor).

    Args:
      teacher_logits: float ``[batch, length, vocab]``; treated as a constant
        (``stop_gradient``) — the teacher is never trained by this loss.
      student_logits: float ``[batch, length, vocab]``.
      weights: ``[batch, length]`` per-token weights (the target-token loss weights).
      temperature: ``τ > 0``.

    Returns:
      ``(kl_sum, weight_sum)``.
    """
    if temperature <= 0:
        raise ValueError(f"distillation temperature must be > 0, got {temperature}")
    teacher_logits = jax.lax.stop_gradient(teacher_logits.astype(jnp.float32))
    student_logits = student_logits.astype(jnp.float32)
    weights = weights.astype(jnp.float32)
    log_p = jax.nn.log_softmax(teacher_logits / temperature, axis=-1)
    log_q = jax.nn.log_softmax(student_logits / temperature, axis=-1)
    token_kl = jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1)  # [batch, length]
    return jnp.sum(token_kl * weights), jnp.sum(weights)


def hidden_mse(teacher_hidden: Array, student_hidden: Array, mask: Array) -> tuple[Array, Array]:
    """Squared error between hidden states at the valid positions, summed.

    Args:
      teacher_hidden: float ``[batch, length, embed]`` (``stop_gradient`` applied).
      student_hidden: float ``[batch, length, embed]``.
      mask: ``[batch, length]``, 1 at positions that count.

    Returns:
      ``(squared_error_sum, count)`` with ``count = Σ mask · embed``, so
      ``squared_error_sum / count`` is the mean over valid positions and features.
    """
    if teacher_hidden.shape != student_hidden.shape:
        raise ValueError(
            f"teacher hidden {teacher_hidden.shape} and student hidden {student_hidden.shape} "
            "must have the same shape"
        )
    teacher_hidden = jax.lax.stop_gradient(teacher_hidden.astype(jnp.float32))
    diff = student_hidden.astype(jnp.float32) - teacher_hidden
    mask = mask.astype(jnp.float32)
    sq = jnp.sum(jnp.square(diff), axis=-1)  # [batch, length]
    return jnp.sum(sq * mask), jnp.sum(mask) * teacher_hidden.shape[-1]


HIDDEN_CHOICES = ("encoder", "decoder", "both", "none")


def _safe_div(num: Array, den: Array) -> Array:
    return num / jnp.maximum(den, 1e-8)


def distillation_loss(
    student_logits: Array,
    teacher_logits: Array,
    student_hidden: Mapping[str, Array],
    teacher_hidden: Mapping[str, Array],
    batch: Mapping[str, Array],
    *,
    distill_weight: float,
    temperature: float,
    hidden_states: str,
    z_loss: float = 0.0,
) -> tuple[Array, dict[str, Array]]:
    """MPT's source-training objective, ``L_task + λ (τ² KL + MSE)``, as token means.

    ``distill_weight`` (λ) and ``temperature`` (τ) have no defaults here: the recipe's
    values live once, in :class:`mpt_jax.training.objectives.Distillation`.
    ``hidden_states`` picks what the MSE compares: ``"encoder"`` (encoder output at the
    input positions, prompt positions excluded, masked by ``encoder_input_tokens > 0``),
    ``"decoder"`` (final decoder hidden states, masked by ``decoder_loss_weights``),
    ``"both"`` (the sum of the two means) or ``"none"``.

    Normalisation: ``L_task`` and ``KL`` are means over the weighted target tokens,
    ``MSE`` is a mean over the valid positions and the embed features.

    Configure it through :func:`mpt_jax.training.objectives.distillation_loss_fn` (gin:
    ``Distillation.weight`` etc.), which passes every setting explicitly.

    Args:
      student_logits / teacher_logits: ``[batch, targets_length, vocab]``.
      student_hidden / teacher_hidden: ``{"encoder": [batch, inputs_length, embed],
        "decoder": [batch, targets_length, embed]}`` as returned by
        ``PromptedT5.forward_with_hidden``.
      batch: the batch (``decoder_target_tokens``, ``decoder_loss_weights``,
        ``encoder_input_tokens``).

    Returns:
      ``(loss, metrics)`` with metrics ``task_loss``, ``kl``, ``mse``, ``z_loss``.
    """
    if hidden_states not in HIDDEN_CHOICES:
        raise ValueError(f"hidden_states must be one of {HIDDEN_CHOICES}, got {hidden_states!r}")
    weights = batch["decoder_loss_weights"]
    ce_sum, z_sum, w_sum = cross_entropy_with_logits(
        student_logits, batch["decoder_target_tokens"], weights, z_loss=z_loss
    )
    kl_sum, _ = kl_divergence_with_temperature(
        teacher_logits, student_logits, weights, temperature=temperature
    )
    task_loss = _safe_div(ce_sum, w_sum)
    kl = _safe_div(kl_sum, w_sum)
    mse = jnp.zeros((), jnp.float32)
    if hidden_states in ("encoder", "both"):
        se, n = hidden_mse(
            teacher_hidden["encoder"], student_hidden["encoder"], batch["encoder_input_tokens"] > 0
        )
        mse = mse + _safe_div(se, n)
    if hidden_states in ("decoder", "both"):
        se, n = hidden_mse(teacher_hidden["decoder"], student_hidden["decoder"], weights > 0)
        mse = mse + _safe_div(se, n)
    loss = task_loss + distill_weight * (temperature**2 * kl + mse)
    return loss, {
        "task_loss": task_loss,
        "kl": kl,
        "mse": mse,
        "z_loss": _safe_div(z_sum, w_sum),
    }
