"""Decoding and scoring with a `PromptedT5`: greedy, beam search, log-likelihoods.

All functions are pure and jit-compiled (the module and the lengths are static
arguments). Decoding encodes once, then runs the decoder one position per step
against its key/value cache inside `lax.while_loop`, stopping early once every
sequence has emitted EOS.

Task ids are checked before each program is dispatched (:mod:`mpt_jax.checks`): an id
outside ``[0, num_tasks)`` raises ``ValueError`` instead of silently decoding with
another task's prompt, also when these functions are called inside ``jit``.

Token conventions (T5X's): 0 is padding and the decoder start token, 1 is EOS.
Returned sequences hold the generated tokens (no start token), EOS included,
and 0 after it.

Example::

    tokens = greedy_decode(model, params, batch["encoder_input_tokens"],
                           batch["task_ids"], max_decode_length=8)
    seqs, scores = beam_search(model, params, enc, task_ids, beam_size=4,
                               max_decode_length=8)
    loglik = score(model, params, batch)                    # [batch]
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from mpt_jax.checks import check_task_ids, num_tasks_of
from mpt_jax.model import PromptedT5

Array = jax.Array
PAD_ID = 0
EOS_ID = 1
_NEG_INF = -1e9


def _params(params: Mapping[str, Any]) -> Mapping[str, Any]:
    """Accept `{"params": tree}` or the bare tree."""
    return params["params"] if "params" in params else params


def _encode(model: PromptedT5, params, encoder_input_tokens: Array, task_ids: Array | None):
    return model.apply(
        {"params": params},
        encoder_input_tokens,
        task_ids,
        enable_dropout=False,
        method=PromptedT5.encode,
    )


def init_cache(
    model: PromptedT5, params, encoded: Array, encoder_input_tokens: Array, max_decode_length: int
) -> Any:
    """A zero key/value cache for `encoded.shape[0]` sequences of `max_decode_length`.

    The cache's shapes come from an abstract evaluation of the cache-creating
    call (nothing is computed), its values are zeros and `cache_index` 0.
    """
    batch = encoded.shape[0]
    dummy = jnp.zeros((batch, max_decode_length), jnp.int32)

    def create(p, enc, tokens):
        _, variables = model.apply(
            {"params": p},
            enc,
            tokens,
            dummy,
            dummy,
            enable_dropout=False,
            decode=True,
            max_decode_length=max_decode_length,
            mutable=["cache"],
            method=PromptedT5.decode,
        )
        return variables["cache"]

    shapes = jax.eval_shape(create, params, encoded, encoder_input_tokens)
    return jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def _step_logits(model, params, cache, encoded, encoder_input_tokens, tokens, max_len):
    """One cached decoder step: tokens `[n, 1]` -> (log-probs `[n, vocab]`, new cache)."""
    logits, variables = model.apply(
        {"params": params, "cache": cache},
        encoded,
        encoder_input_tokens,
        tokens,
        tokens,
        enable_dropout=False,
        decode=True,
        max_decode_length=max_len,
        mutable=["cache"],
        method=PromptedT5.decode,
    )
    return jax.nn.log_softmax(logits[:, 0].astype(jnp.float32), axis=-1), variables["cache"]


def greedy_decode(
    model: PromptedT5,
    params,
    encoder_input_tokens: Array,
    task_ids: Array | None = None,
    *,
    max_decode_length: int,
    eos_id: int = EOS_ID,
) -> tuple[Array, Array]:
    """Greedy decoding with a key/value cache.

    Args:
      model: the prompted (or plain, `prompt=None`) T5.
      params: its parameters (`{"params": tree}` or the tree).
      encoder_input_tokens: `[batch, S]` int, 0 = padding.
      task_ids: `[batch]` int32 (needed with a prompt).
      max_decode_length: number of tokens to generate at most.
      eos_id: end-of-sequence id.

    Returns:
      `(tokens [batch, max_decode_length], log_probs [batch])`: the generated
      tokens (0 after EOS) and the sum of their log-probabilities.

    Raises:
      ValueError: a task id outside `[0, num_tasks)` of the model's prompt.
    """
    check_task_ids(task_ids, num_tasks_of(model), "greedy_decode")
    return _greedy_decode(
        model, params, encoder_input_tokens, task_ids,
        max_decode_length=max_decode_length, eos_id=eos_id,
    )  # fmt: skip


@functools.partial(jax.jit, static_argnames=("model", "max_decode_length", "eos_id"))
def _greedy_decode(model, params, encoder_input_tokens, task_ids, *, max_decode_length, eos_id):
    params = _params(params)
    encoded = _encode(model, params, encoder_input_tokens, task_ids)
    batch = encoder_input_tokens.shape[0]
    cache = init_cache(model, params, encoded, encoder_input_tokens, max_decode_length)
    tokens = jnp.zeros((batch, max_decode_length + 1), jnp.int32)  # column 0: start token
    state = (jnp.array(0), tokens, cache, jnp.zeros(batch, bool), jnp.zeros(batch, jnp.float32))

    def cond(state):
        i, _, _, finished, _ = state
        return jnp.logical_and(i < max_decode_length, ~jnp.all(finished))

    def body(state):
        i, tokens, cache, finished, total = state
        current = jax.lax.dynamic_slice_in_dim(tokens, i, 1, axis=1)
        log_probs, cache = _step_logits(
            model, params, cache, encoded, encoder_input_tokens, current, max_decode_length
        )
        nxt = jnp.argmax(log_probs, axis=-1).astype(jnp.int32)
        chosen = jnp.take_along_axis(log_probs, nxt[:, None], axis=-1)[:, 0]
        total = total + jnp.where(finished, 0.0, chosen)
        nxt = jnp.where(finished, PAD_ID, nxt)
        tokens = jax.lax.dynamic_update_slice_in_dim(tokens, nxt[:, None], i + 1, axis=1)
        return i + 1, tokens, cache, finished | (nxt == eos_id), total

    _, tokens, _, _, total = jax.lax.while_loop(cond, body, state)
    return tokens[:, 1:], total


def _gather_beams(tree: Any, beam_index: Array, batch: int, beams: int) -> Any:
    """Reorder `[batch * beams, ...]` leaves (scalars stay) by `beam_index` `[batch, beams]`."""

    def gather(x):
        if x.ndim == 0:
            return x
        x = x.reshape((batch, beams) + x.shape[1:])
        idx = beam_index.reshape((batch, beams) + (1,) * (x.ndim - 2))
        return jnp.take_along_axis(x, idx, axis=1).reshape((batch * beams,) + x.shape[2:])

    return jax.tree_util.tree_map(gather, tree)


def beam_search(
    model: PromptedT5,
    params,
    encoder_input_tokens: Array,
    task_ids: Array | None = None,
    *,
    beam_size: int = 4,
    max_decode_length: int,
    eos_id: int = EOS_ID,
) -> tuple[Array, Array]:
    """Beam search ranked by total log-likelihood (no length penalty).

    Every step extends each live beam by every token and keeps the
    `beam_size` best of the `beam_size * vocab` candidates per example; a
    finished beam (EOS emitted) only extends by padding at no cost, so it
    competes with the live beams under its final score. With `beam_size=1`
    this is exactly greedy decoding.

    Args:
      model, params, encoder_input_tokens, task_ids: as for `greedy_decode`.
      beam_size: beams per example (>= 1).
      max_decode_length: number of tokens to generate at most.
      eos_id: end-of-sequence id.

    Returns:
      `(tokens [batch, beam_size, max_decode_length], scores [batch,
      beam_size])`, best first; scores are summed token log-probabilities.

    Raises:
      ValueError: `beam_size < 1`, or a task id outside `[0, num_tasks)`.
    """
    if beam_size < 1:
        raise ValueError(f"beam_size must be >= 1, got {beam_size}.")
    check_task_ids(task_ids, num_tasks_of(model), "beam_search")
    return _beam_search(
        model, params, encoder_input_tokens, task_ids, beam_size=beam_size,
        max_decode_length=max_decode_length, eos_id=eos_id,
    )  # fmt: skip


@functools.partial(jax.jit, static_argnames=("model", "beam_size", "max_decode_length", "eos_id"))
def _beam_search(
    model, params, encoder_input_tokens, task_ids, *, beam_size, max_decode_length, eos_id
):
    params = _params(params)
    batch = encoder_input_tokens.shape[0]
    k = beam_size
    encoded = _encode(model, params, encoder_input_tokens, task_ids)
    # [batch, ...] -> [batch * beams, ...], each example's beams adjacent.
    encoded = jnp.repeat(encoded, k, axis=0)
    enc_tokens = jnp.repeat(encoder_input_tokens, k, axis=0)
    cache = init_cache(model, params, encoded, enc_tokens, max_decode_length)
    vocab = model.config.vocab_size

    tokens = jnp.zeros((batch, k, max_decode_length + 1), jnp.int32)
    # Only beam 0 is live at the start, so the first step picks distinct tokens.
    scores = jnp.tile(jnp.array([0.0] + [_NEG_INF] * (k - 1), jnp.float32), (batch, 1))
    finished = jnp.zeros((batch, k), bool)
    state = (jnp.array(0), tokens, scores, finished, cache)

    def cond(state):
        i, _, _, finished, _ = state
        return jnp.logical_and(i < max_decode_length, ~jnp.all(finished))

    def body(state):
        i, tokens, scores, finished, cache = state
        current = jax.lax.dynamic_slice_in_dim(tokens, i, 1, axis=2).reshape(batch * k, 1)
        log_probs, cache = _step_logits(
            model, params, cache, encoded, enc_tokens, current, max_decode_length
        )
        log_probs = log_probs.reshape(batch, k, vocab)
        pad_only = jnp.full((vocab,), _NEG_INF).at[PAD_ID].set(0.0)
        log_probs = jnp.where(finished[..., None], pad_only, log_probs)
        candidates = (scores[..., None] + log_probs).reshape(batch, k * vocab)
        scores, flat = jax.lax.top_k(candidates, k)
        beam_index, token = flat // vocab, (flat % vocab).astype(jnp.int32)
        tokens = jnp.take_along_axis(tokens, beam_index[..., None], axis=1)
        tokens = jax.lax.dynamic_update_slice_in_dim(tokens, token[..., None], i + 1, axis=2)
        was_finished = jnp.take_along_axis(finished, beam_index, axis=1)
        finished = was_finished | (token == eos_id)
        cache = _gather_beams(cache, beam_index, batch, k)
        return i + 1, tokens, scores, finished, cache

    _, tokens, scores, _, _ = jax.lax.while_loop(cond, body, state)
    return tokens[:, :, 1:], scores


def shift_right(targets: Array, start_id: int = PAD_ID) -> Array:
    """Decoder inputs `[batch, T]` from targets: start token, then targets[:, :-1]."""
    start = jnp.full(targets.shape[:-1] + (1,), start_id, targets.dtype)
    return jnp.concatenate([start, targets[..., :-1]], axis=-1)


def score(model: PromptedT5, params, batch: Mapping[str, Array]) -> Array:
    """Per-example log-likelihood `[batch]` of `decoder_target_tokens`.

    Sums `log p(target_t | inputs, target_<t)` weighted by
    `decoder_loss_weights` (or by `target > 0` when absent), with dropout off.
    `decoder_input_tokens` default to the right-shifted targets. A `task_ids` outside
    `[0, num_tasks)` raises `ValueError`.
    """
    check_task_ids(batch.get("task_ids"), num_tasks_of(model), "score")
    return _score(model, params, batch)


@functools.partial(jax.jit, static_argnames=("model",))
def _score(model: PromptedT5, params, batch: Mapping[str, Array]) -> Array:
    params = _params(params)
    targets = batch["decoder_target_tokens"]
    decoder_inputs = batch.get("decoder_input_tokens")
    if decoder_inputs is None:
        decoder_inputs = shift_right(targets)
    weights = batch.get("decoder_loss_weights")
    if weights is None:
        weights = targets > 0
    logits = model.apply(
        {"params": params},
        batch["encoder_input_tokens"],
        decoder_inputs,
        targets,
        batch.get("task_ids"),
        enable_dropout=False,
    )
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    token_ll = jnp.take_along_axis(log_probs, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return jnp.sum(token_ll * weights.astype(jnp.float32), axis=-1)


def rank_classification(
    model: PromptedT5,
    params,
    encoder_input_tokens: Array,
    task_ids: Array | None,
    candidates: Array,
) -> Array:
    """Log-likelihood `[batch, num_candidates]` of each candidate target per example.

    Encodes each example once and scores all candidates against it; the
    prediction is `argmax` over the last axis.

    Args:
      encoder_input_tokens: `[batch, S]`.
      task_ids: `[batch]` int32 or None.
      candidates: `[num_candidates, T]` target token ids (EOS included, 0 = padding).

    Raises:
      ValueError: a task id outside `[0, num_tasks)`.
    """
    check_task_ids(task_ids, num_tasks_of(model), "rank_classification")
    return _rank_classification(model, params, encoder_input_tokens, task_ids, candidates)


@functools.partial(jax.jit, static_argnames=("model",))
def _rank_classification(model, params, encoder_input_tokens, task_ids, candidates):
    params = _params(params)
    batch, n = encoder_input_tokens.shape[0], candidates.shape[0]
    encoded = _encode(model, params, encoder_input_tokens, task_ids)
    targets = jnp.tile(candidates, (batch, 1))  # [batch * n, T], example-major
    logits = model.apply(
        {"params": params},
        jnp.repeat(encoded, n, axis=0),
        jnp.repeat(encoder_input_tokens, n, axis=0),
        shift_right(targets),
        targets,
        enable_dropout=False,
        method=PromptedT5.decode,
    )
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    token_ll = jnp.take_along_axis(log_probs, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return jnp.sum(token_ll * (targets > 0), axis=-1).reshape(batch, n)
