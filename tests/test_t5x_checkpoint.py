"""T5X checkpoints read without T5X (mpt_jax.backbone.t5x_checkpoint).

The legacy checkpoint is a real one T5X wrote (google-research/prompt-tuning's test data,
in ../shared/data); its reference logits were measured with Flaxformer's T5 1.1
(``t5_1_1_flaxformer.gin`` with that checkpoint's sizes, float32 activations) in a
session with T5X and Flaxformer installed, and are kept in
``tests/data/flaxformer_t5_1_1_tiny_logits.npz``, so this test needs neither.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mpt_jax.backbone import T5, T5Config, load_t5x_checkpoint
from mpt_jax.runner.backbone_loading import check_backbone, load_backbone

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_CKPT = os.path.join(
    ROOT, "..", "shared", "data", "prompt_tuning_test_data", "test_t5_1_1_tiny", "checkpoint_3"
)
REFERENCE = os.path.join(ROOT, "tests", "data", "flaxformer_t5_1_1_tiny_logits.npz")
# The checkpoint's T5 1.1 "tiny" (prompt-tuning's configs/test/t5_1_1_tiny.gin).
TINY_T5_1_1 = T5Config(
    vocab_size=32128, emb_dim=4, num_heads=2, head_dim=2, mlp_dim=8,
    num_encoder_layers=2, num_decoder_layers=2,
    relative_attention_num_buckets=4, relative_attention_max_distance=8,
    dropout_rate=0.0, name="test_t5_1_1_tiny",
)  # fmt: skip

needs_shared = pytest.mark.skipif(
    not os.path.isdir(SHARED_CKPT),
    reason="../shared/data/prompt_tuning_test_data (a real T5X checkpoint) is not present",
)


def _paths(tree) -> dict[str, tuple[int, ...]]:
    return {
        "/".join(str(k.key) for k in path): tuple(v.shape)
        for path, v in jax.tree_util.tree_leaves_with_path(tree)
    }


@needs_shared
def test_legacy_checkpoint_gives_t5x_parameter_tree_in_float32():
    params = load_t5x_checkpoint(SHARED_CKPT)
    check_backbone(params, TINY_T5_1_1, SHARED_CKPT)  # every name and shape, nothing extra
    shapes = _paths(params)
    assert shapes["token_embedder/embedding"] == (32128, 4)
    assert shapes["encoder/relpos_bias/rel_embedding"] == (2, 4)  # [heads, buckets]
    assert shapes["decoder/logits_dense/kernel"] == (4, 32128)
    assert all(v.dtype == np.float32 for v in jax.tree.leaves(params))
    # Inline (msgpack) and tensorstore arrays both read: a scale and a kernel.
    assert np.all(np.isfinite(params["encoder"]["encoder_norm"]["scale"]))
    assert np.abs(params["encoder"]["layers_0"]["attention"]["query"]["kernel"]).max() > 0
    embedding = load_t5x_checkpoint(SHARED_CKPT, scope="token_embedder")
    np.testing.assert_array_equal(embedding["embedding"], params["token_embedder"]["embedding"])


@needs_shared
def test_logits_equal_flaxformer_t5_1_1_on_the_same_checkpoint():
    """Our backbone with the checkpoint's parameters gives Flaxformer's float32 logits."""
    ref = np.load(REFERENCE)
    params = load_t5x_checkpoint(SHARED_CKPT)
    model = T5(TINY_T5_1_1)
    forward = jax.jit(lambda p, *tokens: model.apply({"params": p}, *tokens, enable_dropout=False))
    logits = np.asarray(
        forward(
            params,
            jnp.asarray(ref["encoder_input_tokens"]),
            jnp.asarray(ref["decoder_input_tokens"]),
            jnp.asarray(ref["decoder_target_tokens"]),
        )
    )
    assert logits.shape == (2, 4, 32128) and logits.dtype == np.float32
    np.testing.assert_allclose(logits[..., ref["vocab_ids"]], ref["logits"], atol=1e-4, rtol=0)
    x = logits.astype(np.float64)
    lse = np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1)) + x.max(-1)
    np.testing.assert_allclose(lse, ref["logsumexp"], atol=1e-4, rtol=0)  # the whole vocabulary


@needs_shared
def test_runner_accepts_a_t5x_checkpoint_as_backbone():
    config, params, reference = load_backbone(TINY_T5_1_1, SHARED_CKPT)
    assert config is TINY_T5_1_1 and reference == os.path.abspath(SHARED_CKPT)
    expected = load_t5x_checkpoint(SHARED_CKPT)
    for (path, a), b in zip(
        jax.tree_util.tree_leaves_with_path(params), jax.tree.leaves(expected), strict=True
    ):
        np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))


def _t5x_like_orbax_checkpoint(directory: str, params, dtype=jnp.float32) -> str:
    """A folder laid out as T5X's Orbax checkpoints: checkpoint_<step>/state/_METADATA."""
    import orbax.checkpoint as ocp

    state = {
        "target": jax.tree.map(lambda x: jnp.asarray(x, dtype), params),
        "state": {"step": jnp.asarray(7, jnp.int32),
                  "param_states": jax.tree.map(lambda x: jnp.zeros((), jnp.float32), params)},
    }  # fmt: skip
    path = os.path.join(directory, "checkpoint_7", "state")
    ocp.PyTreeCheckpointer().save(path, state)
    return os.path.dirname(path)


def test_orbax_round_trip_reads_target_and_scopes(tmp_path):
    rng = np.random.RandomState(0)
    params = {
        "token_embedder": {"embedding": rng.normal(size=(11, 4)).astype(np.float32)},
        "encoder": {"prompt": {"shared": rng.normal(size=(3, 4)).astype(np.float32)},
                    "encoder_norm": {"scale": rng.normal(size=(4,)).astype(np.float32)}},
    }  # fmt: skip
    ckpt = _t5x_like_orbax_checkpoint(str(tmp_path), params)
    back = load_t5x_checkpoint(ckpt)
    assert _paths(back) == _paths(params)  # the target tree, no 'target' or 'state' level
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(params), strict=True):
        np.testing.assert_array_equal(a, b)
    prompt = load_t5x_checkpoint(ckpt, scope="encoder/prompt")
    np.testing.assert_array_equal(prompt["shared"], params["encoder"]["prompt"]["shared"])
    with pytest.raises(
        KeyError, match=r"at 'target/encoder' the keys are \['encoder_norm', 'prompt'\]"
    ):
        load_t5x_checkpoint(ckpt, scope="encoder/nope")


def test_bfloat16_checkpoint_is_widened_to_float32(tmp_path):
    table = np.linspace(-2, 2, 24, dtype=np.float32).reshape(6, 4)
    ckpt = _t5x_like_orbax_checkpoint(
        str(tmp_path), {"token_embedder": {"embedding": table}}, jnp.bfloat16
    )
    back = load_t5x_checkpoint(ckpt)["token_embedder"]["embedding"]
    assert back.dtype == np.float32
    np.testing.assert_array_equal(back, np.asarray(jnp.asarray(table, jnp.bfloat16), np.float32))
    assert load_t5x_checkpoint(ckpt, dtype=None)["token_embedder"]["embedding"].dtype != np.float32


def test_a_folder_that_is_no_t5x_checkpoint_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a T5X checkpoint"):
        load_t5x_checkpoint(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_t5x_checkpoint(str(tmp_path / "missing"))
