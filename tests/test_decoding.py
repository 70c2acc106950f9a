"""Cached greedy/beam decoding and scoring against the full (uncached) forward pass."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mpt_jax.backbone import get_config
from mpt_jax.decoding import (
    beam_search,
    greedy_decode,
    init_cache,
    rank_classification,
    score,
    shift_right,
)
from mpt_jax.model import PromptedT5
from mpt_jax.prompts import TaskPrompts

MAX_LEN = 6
EOS = 1
ENC = np.array([[5, 6, 7, 8, 1, 0], [9, 10, 1, 0, 0, 0], [3, 4, 5, 1, 0, 0]], np.int32)
TASKS = np.array([0, 1, 1], np.int32)


def _model(vocab: int = 128):
    cfg = get_config("tiny", {"dropout_rate": 0.0, "vocab_size": vocab})
    return PromptedT5(cfg, prompt=TaskPrompts(num_tasks=2, length=2, embed_dim=32))


@pytest.fixture(scope="module")
def model_and_params():
    model = _model()
    dec = np.zeros((3, MAX_LEN), np.int32)
    params = nn.unbox(
        model.init(jax.random.PRNGKey(0), ENC, dec, dec, TASKS, enable_dropout=False)["params"]
    )
    # Sharpen the output layer so EOS and other tokens win at different steps.
    kernel = params["decoder"]["logits_dense"]["kernel"]
    params["decoder"]["logits_dense"]["kernel"] = 4.0 * kernel
    return model, params


def _full_log_probs(model, params, tokens):
    """Uncached teacher-forced log-probs `[batch, T, vocab]` of a decoded sequence."""
    logits = model.apply(
        {"params": params},
        ENC,
        shift_right(jnp.asarray(tokens)),
        jnp.ones_like(tokens),  # every row valid: compare all positions
        TASKS,
        enable_dropout=False,
    )
    return np.asarray(jax.nn.log_softmax(logits, axis=-1))


def _valid_upto_eos(tokens):
    """True up to and including the first EOS (the generated part)."""
    after_eos = np.cumsum(np.asarray(tokens) == EOS, axis=1) - (np.asarray(tokens) == EOS)
    return after_eos == 0


def test_greedy_equals_step_by_step_argmax_of_full_forward(model_and_params):
    model, params = model_and_params
    tokens, total = greedy_decode(model, params, ENC, TASKS, max_decode_length=MAX_LEN)
    tokens = np.asarray(tokens)
    log_probs = _full_log_probs(model, params, tokens)
    valid = _valid_upto_eos(tokens)
    np.testing.assert_array_equal(log_probs.argmax(-1)[valid], tokens[valid])
    # After EOS only padding follows.
    assert np.all(tokens[~valid] == 0)
    chosen = np.take_along_axis(log_probs, tokens[..., None], -1)[..., 0]
    np.testing.assert_allclose(total, (chosen * valid).sum(-1), atol=1e-4)
    # The decode is not trivial: some sequence outlives the first step.
    assert valid.sum(1).max() > 1


def test_cached_step_logits_equal_full_forward(model_and_params):
    """Feed a fixed sequence through the cache and compare every step's logits."""
    model, params = model_and_params
    targets = np.array([[7, 8, 9, 10, 11, 1]] * 3, np.int32)
    encoded = model.apply({"params": params}, ENC, TASKS, enable_dropout=False,
                          method=PromptedT5.encode)  # fmt: skip
    cache = init_cache(model, params, encoded, ENC, MAX_LEN)
    inputs = np.asarray(shift_right(jnp.asarray(targets)))
    steps = []
    for t in range(MAX_LEN):
        logits, variables = model.apply(
            {"params": params, "cache": cache}, encoded, ENC, inputs[:, t : t + 1],
            inputs[:, t : t + 1], enable_dropout=False, decode=True, max_decode_length=MAX_LEN,
            mutable=["cache"], method=PromptedT5.decode,
        )  # fmt: skip
        cache = variables["cache"]
        steps.append(np.asarray(logits[:, 0]))
    full = model.apply({"params": params}, ENC, inputs, targets, TASKS, enable_dropout=False)
    np.testing.assert_allclose(np.stack(steps, 1), full, atol=1e-4)
    # Encoder keys were projected once and kept: [batch, heads, L + S, head_dim].
    cross = cache["decoder"]["layers_1"]["encoder_decoder_attention"]
    assert bool(cross["cross_cache_filled"])
    wk = params["decoder"]["layers_1"]["encoder_decoder_attention"]["key"]["kernel"]
    expected = np.einsum("bse,ehd->bhsd", encoded, np.asarray(wk).reshape(32, 4, 8))
    np.testing.assert_allclose(cross["cached_cross_key"], expected, atol=1e-5)


def test_t5x_style_cache_creation_matches_init_cache(model_and_params):
    """T5X creates the cache by calling the module with decode=True on full-length inputs."""
    model, params = model_and_params
    ones = np.ones((3, MAX_LEN), np.int32)
    _, variables = jax.jit(
        lambda p: model.apply(
            {"params": p},
            ENC,
            ones,
            ones,
            TASKS,
            enable_dropout=False,
            decode=True,
            mutable=["cache"],
        )  # fmt: skip
    )(params)
    t5x_cache = variables["cache"]
    encoded = model.apply({"params": params}, ENC, TASKS, enable_dropout=False,
                          method=PromptedT5.encode)  # fmt: skip
    ours = init_cache(model, params, encoded, ENC, MAX_LEN)
    shapes = lambda tree: jax.tree_util.tree_map(lambda x: (x.shape, x.dtype), tree)
    assert shapes(t5x_cache) == shapes(ours)
    for layer in ("layers_0", "layers_1"):
        attn = t5x_cache["decoder"][layer]
        assert int(attn["self_attention"]["cache_index"]) == 0
        # Filled from the real encoder output at the first step, not from this call.
        assert not bool(attn["encoder_decoder_attention"]["cross_cache_filled"])


def test_beam_one_equals_greedy(model_and_params):
    model, params = model_and_params
    g_tokens, g_total = greedy_decode(model, params, ENC, TASKS, max_decode_length=MAX_LEN)
    b_tokens, b_scores = beam_search(
        model, params, ENC, TASKS, beam_size=1, max_decode_length=MAX_LEN
    )
    np.testing.assert_array_equal(b_tokens[:, 0], g_tokens)
    np.testing.assert_allclose(b_scores[:, 0], g_total, atol=1e-4)


def test_beam_scores_equal_recomputed_log_likelihoods(model_and_params):
    model, params = model_and_params
    k = 3
    tokens, scores = beam_search(model, params, ENC, TASKS, beam_size=k, max_decode_length=MAX_LEN)
    tokens, scores = np.asarray(tokens), np.asarray(scores)
    assert tokens.shape == (3, k, MAX_LEN)
    # Best first, and the beams of an example are distinct sequences.
    assert np.all(np.diff(scores, axis=1) <= 1e-6)
    for b in range(3):
        assert len({tuple(row) for row in tokens[b]}) == k
    flat = tokens.reshape(3 * k, MAX_LEN)
    batch = {
        "encoder_input_tokens": np.repeat(ENC, k, 0),
        "decoder_target_tokens": flat,
        "task_ids": np.repeat(TASKS, k),
    }
    np.testing.assert_allclose(score(model, params, batch).reshape(3, k), scores, atol=1e-4)
    # The best beam is at least as likely as the greedy sequence.
    _, g_total = greedy_decode(model, params, ENC, TASKS, max_decode_length=MAX_LEN)
    assert np.all(scores[:, 0] >= np.asarray(g_total) - 1e-4)


def test_score_matches_numpy_log_softmax_sum(model_and_params):
    model, params = model_and_params
    targets = np.array([[7, 8, 1, 0], [9, 1, 0, 0], [4, 4, 4, 1]], np.int32)
    batch = {"encoder_input_tokens": ENC, "decoder_target_tokens": targets, "task_ids": TASKS}
    logits = np.asarray(
        model.apply(
            {"params": params},
            ENC,
            np.asarray(shift_right(jnp.asarray(targets))),
            targets,
            TASKS,
            enable_dropout=False,
        )  # fmt: skip
    ).astype(np.float64)
    log_z = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    token_ll = np.take_along_axis(logits, targets[..., None], -1)[..., 0] - log_z
    expected = (token_ll * (targets > 0)).sum(-1)
    np.testing.assert_allclose(score(model, params, batch), expected, atol=1e-4)
    # Rank classification scores every candidate like `score` does.
    candidates = np.array([[7, 8, 1, 0], [9, 1, 0, 0]], np.int32)
    ranked = np.asarray(rank_classification(model, params, ENC, TASKS, candidates))
    for c in range(2):
        cand_batch = dict(batch, decoder_target_tokens=np.tile(candidates[c], (3, 1)))
        np.testing.assert_allclose(ranked[:, c], score(model, params, cand_batch), atol=1e-4)


def test_prompt_changes_the_decode(model_and_params):
    """Prompts are part of decoding: swapping the task ids changes the scores."""
    model, params = model_and_params
    p = dict(params)
    rng = np.random.default_rng(1)
    p["prompt"] = {"task_prompts": jnp.asarray(rng.normal(0, 2.0, (2, 2, 32)), jnp.float32)}
    _, a = greedy_decode(model, p, ENC, TASKS, max_decode_length=MAX_LEN)
    _, b = greedy_decode(model, p, ENC, 1 - TASKS, max_decode_length=MAX_LEN)
    assert np.abs(np.asarray(a) - np.asarray(b)).max() > 1e-3
