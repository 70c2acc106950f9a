"""Compositions: small pure functions that combine a shared and a task prompt.

Every function here is pure array math with no parameters of its own: the
modules in :mod:`mpt_jax.prompts.generators` own the parameters and call these.
The shared signature is ``fn(shared, task, *extra) -> prompt`` where

- ``shared``: float ``[batch, Ls, embed]`` (or ``[Ls, embed]``, broadcast over batch),
- ``task``:   float ``[batch, Lt, embed]``,
- the result: float ``[batch, L', embed]``; ``L' = Ls = Lt`` except for :func:`concat`
  (``L' = Ls + Lt``).

Written out (``k`` is the example's task)::

    hadamard:  P_k = S * T_k                              (MPT: T_k = U_k V_k)
    add:       P_k = S + T_k
    concat:    P_k = [S ; T_k]                            (along the length axis)
    weighted:  P_k = (1 - w_k) S + w_k T_k                (w_k in [0, 1], one per task)
    gated:     g   = sigmoid(S·a + T_k·b + c)             (one gate per position)
               P_k = g * S + (1 - g) * T_k
    attention: a   = softmax(keys · q / temperature)      (ATTEMPT, Asai et al. 2022)
               P   = T_k + sum_j a_j pool_j + a_own T_k   (pool of source prompts + T_k)

``COMPOSITIONS`` lists the names the generators accept.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array

#: Names accepted by ``ComposedPrompt(composition=...)``.
COMPOSITIONS = ("hadamard", "add", "concat", "weighted", "gated", "attention")
#: Compositions that need the shared and task parts to have the same length.
SAME_LENGTH_COMPOSITIONS = ("hadamard", "add", "weighted", "gated", "attention")


def check_composition(name: str) -> None:
    """Raises ``ValueError`` naming ``name`` and the valid names if it is unknown."""
    if name not in COMPOSITIONS:
        raise ValueError(f"unknown composition {name!r}; expected one of {COMPOSITIONS}")


def check_lengths(composition: str, shared_length: int, task_length: int) -> None:
    """Raises ``ValueError`` if ``composition`` cannot combine prompts of these lengths."""
    if composition in SAME_LENGTH_COMPOSITIONS and shared_length != task_length:
        raise ValueError(
            f"composition {composition!r} needs equal lengths, got shared length "
            f"{shared_length} and task length {task_length} (only 'concat' allows them "
            "to differ)"
        )


def _batched(shared: Array, task: Array) -> Array:
    """Broadcasts ``shared`` ``[Ls, D]`` or ``[B, Ls, D]`` to ``[B, Ls, D]``."""
    if shared.ndim == task.ndim - 1:
        shared = shared[None]
    return jnp.broadcast_to(shared, (task.shape[0],) + shared.shape[1:])


def hadamard(shared: Array, task: Array) -> Array:
    """MPT's composition ``S * T_k`` (elementwise).

    Args:
      shared: ``[batch, L, embed]`` or ``[L, embed]``.
      task: ``[batch, L, embed]``; for MPT ``T_k = U_k V_k``.

    Returns:
      ``[batch, L, embed]``.
    """
    return shared * task


def add(shared: Array, task: Array) -> Array:
    """``S + T_k``. Shapes as :func:`hadamard`."""
    return shared + task


def concat(shared: Array, task: Array) -> Array:
    """``[S ; T_k]`` along the length axis.

    Args:
      shared: ``[batch, Ls, embed]`` or ``[Ls, embed]``.
      task: ``[batch, Lt, embed]``.

    Returns:
      ``[batch, Ls + Lt, embed]`` (shared positions first).
    """
    return jnp.concatenate([_batched(shared, task), task], axis=-2)


def weighted(shared: Array, task: Array, weight: Array) -> Array:
    """Convex mixture ``(1 - w) S + w T_k``.

    Args:
      shared: ``[batch, L, embed]`` or ``[L, embed]``.
      task: ``[batch, L, embed]``.
      weight: ``[batch]`` mixing weights (the example's task weight), normally in [0, 1].

    Returns:
      ``[batch, L, embed]``.
    """
    w = weight[:, None, None]
    return (1.0 - w) * shared + w * task


def gate_values(shared: Array, task: Array, kernel: Array, bias: Array) -> Array:
    """Per-position gate ``g = sigmoid(S·a + T_k·b + c)``.

    Args:
      shared: ``[batch, L, embed]`` or ``[L, embed]``.
      task: ``[batch, L, embed]``.
      kernel: ``[2, embed]``: row 0 is ``a`` (reads the shared prompt), row 1 ``b``.
      bias: ``[]`` scalar ``c``.

    Returns:
      ``[batch, L, 1]`` gates in (0, 1).
    """
    logits = _batched(shared, task) @ kernel[0] + task @ kernel[1] + bias
    return jax.nn.sigmoid(logits)[..., None]


def gated(shared: Array, task: Array, kernel: Array, bias: Array) -> Array:
    """Gated mixture ``g * S + (1 - g) * T_k`` with ``g`` from :func:`gate_values`.

    The gate parameters are the same for every task, so one compiled step serves
    every task (the task only enters through ``T_k``).

    Returns:
      ``[batch, L, embed]``.
    """
    g = gate_values(shared, task, kernel, bias)
    return g * shared + (1.0 - g) * task


def masked_max_pool(x: Array, mask: Array | None = None) -> Array:
    """Max over the length axis, ignoring masked-out positions.

    Args:
      x: ``[..., length, embed]``.
      mask: ``[..., length]`` (1/True = real position) or ``None`` (all positions).

    Returns:
      ``[..., embed]``. A row with no valid position gives zeros (not ``-inf``).
    """
    if mask is None:
        return jnp.max(x, axis=-2)
    valid = mask.astype(bool)[..., None]
    pooled = jnp.max(jnp.where(valid, x, -jnp.inf), axis=-2)
    return jnp.where(jnp.any(valid, axis=-2), pooled, 0.0)


def attention_weights(query: Array, keys: Array, temperature: float | Array) -> Array:
    """Softmax attention weights over a pool of prompts.

    Args:
      query: ``[batch, embed]`` (ATTEMPT: projected max-pooled input).
      keys: ``[batch, pool, embed]`` or ``[pool, embed]`` (max-pooled prompts).
      temperature: positive scalar; larger is flatter.

    Returns:
      ``[batch, pool]`` weights summing to 1 over ``pool``.
    """
    if keys.ndim == 2:
        scores = jnp.einsum("bd,kd->bk", query, keys)
    else:
        scores = jnp.einsum("bd,bkd->bk", query, keys)
    return jax.nn.softmax(scores / temperature, axis=-1)


def attention(pool: Array, task: Array, weights: Array) -> Array:
    """ATTEMPT's instance prompt ``T_k + sum_j a_j pool_j + a_own T_k``.

    The attention runs over the pool of source prompts followed by the example's
    own task prompt, and the result is added to the task prompt.

    Args:
      pool: ``[pool, L, embed]`` source prompts (the same for every example).
      task: ``[batch, L, embed]`` the example's task prompt ``T_k``.
      weights: ``[batch, pool + 1]`` from :func:`attention_weights`; the last
        column weighs ``T_k`` itself.

    Returns:
      ``[batch, L, embed]``.
    """
    mixed = jnp.einsum("bk,kld->bld", weights[:, :-1], pool)
    return task + mixed + weights[:, -1, None, None] * task


def low_rank(cols: Array, rows: Array) -> Array:
    """Task matrices ``W = U V`` from their factors.

    Args:
      cols: ``[..., L, rank]`` (``U``).
      rows: ``[..., rank, embed]`` (``V``).

    Returns:
      ``[..., L, embed]``.
    """
    return jnp.matmul(cols, rows)
