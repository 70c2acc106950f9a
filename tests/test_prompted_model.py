"""PromptedT5: prompt injection, masks, task routing, T5X protocol, packing refusal."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.traverse_util import flatten_dict

from mpt_jax.backbone import T5, get_config
from mpt_jax.model import PromptedT5
from mpt_jax.prompts import MultitaskPrompt, SinglePrompt, TaskPrompts

CFG = get_config("tiny", {"dropout_rate": 0.0})
PROMPT_LEN = 3

# Two examples with encoder padding, one with target padding.
ENC = np.array([[5, 6, 7, 8, 1, 0], [9, 10, 1, 0, 0, 0]], np.int32)
TGT = np.array([[11, 12, 1], [13, 1, 0]], np.int32)
DEC_IN = np.array([[0, 11, 12], [0, 13, 1]], np.int32)
TASKS = np.array([0, 1], np.int32)


@pytest.fixture(scope="module")
def backbone_params():
    return nn.unbox(
        T5(CFG).init(jax.random.PRNGKey(0), ENC, DEC_IN, TGT, enable_dropout=False)["params"]
    )


def _with_prompt(backbone_params, prompt_params):
    return {**backbone_params, "prompt": prompt_params}


def test_tree_is_backbone_tree_plus_prompt(backbone_params):
    model = PromptedT5(CFG, prompt=MultitaskPrompt(num_tasks=2, length=PROMPT_LEN, embed_dim=32))
    params = model.init(jax.random.PRNGKey(1), ENC, DEC_IN, TGT, TASKS, enable_dropout=False)
    flat = {"/".join(k): v.value.shape for k, v in flatten_dict(params["params"]).items()}
    expected = {"/".join(k): v.shape for k, v in flatten_dict(backbone_params).items()}
    expected.update({
        "prompt/shared": (PROMPT_LEN, 32),
        "prompt/task_cols": (2, PROMPT_LEN, 1),
        "prompt/task_rows": (2, 1, 32),
    })  # fmt: skip
    assert flat == expected


def test_prompt_equals_prepended_token_embeddings(backbone_params):
    """A prompt equal to the embeddings of tokens p gives T5(p ++ tokens) exactly."""
    prompt_tokens = np.array([20, 21, 22], np.int32)
    table = np.asarray(backbone_params["token_embedder"]["embedding"])
    params = _with_prompt(backbone_params, {"shared": jnp.asarray(table[prompt_tokens])})
    model = PromptedT5(CFG, prompt=SinglePrompt(length=PROMPT_LEN, embed_dim=32))
    logits = model.apply({"params": params}, ENC, DEC_IN, TGT, TASKS, enable_dropout=False)

    enc_with_prompt = np.concatenate([np.tile(prompt_tokens, (2, 1)), ENC], axis=1)
    ref = T5(CFG).apply(
        {"params": backbone_params}, enc_with_prompt, DEC_IN, TGT, enable_dropout=False
    )
    valid = TGT > 0
    np.testing.assert_allclose(np.asarray(logits)[valid], np.asarray(ref)[valid], atol=1e-5)


def test_encoder_padding_does_not_change_logits(backbone_params):
    model = PromptedT5(CFG, prompt=SinglePrompt(length=PROMPT_LEN, embed_dim=32))
    params = _with_prompt(backbone_params, {"shared": jnp.linspace(-1, 1, PROMPT_LEN * 32).reshape(
        PROMPT_LEN, 32)})  # fmt: skip
    short = model.apply({"params": params}, ENC, DEC_IN, TGT, TASKS, enable_dropout=False)
    padded_enc = np.pad(ENC, ((0, 0), (0, 4)))
    long = model.apply({"params": params}, padded_enc, DEC_IN, TGT, TASKS, enable_dropout=False)
    valid = TGT > 0
    np.testing.assert_allclose(np.asarray(short)[valid], np.asarray(long)[valid], atol=1e-5)


def test_mixed_task_batch_routes_each_example_to_its_prompt(backbone_params):
    model = PromptedT5(CFG, prompt=TaskPrompts(num_tasks=2, length=PROMPT_LEN, embed_dim=32))
    rng = np.random.default_rng(0)
    table = rng.uniform(-0.5, 0.5, (2, PROMPT_LEN, 32)).astype(np.float32)
    params = _with_prompt(backbone_params, {"task_prompts": jnp.asarray(table)})
    mixed = model.apply({"params": params}, ENC, DEC_IN, TGT, TASKS, enable_dropout=False)
    for task in (0, 1):
        same = np.full(2, task, np.int32)
        alone = model.apply({"params": params}, ENC, DEC_IN, TGT, same, enable_dropout=False)
        np.testing.assert_allclose(mixed[task], alone[task], atol=1e-5)
    # The two tasks' prompts differ, so the routed logits differ as well.
    other = model.apply({"params": params}, ENC, DEC_IN, TGT, 1 - TASKS, enable_dropout=False)
    assert np.abs(np.asarray(other[0]) - np.asarray(mixed[0])).max() > 1e-3


def test_encode_decode_protocol_and_forward_with_hidden(backbone_params):
    model = PromptedT5(CFG, prompt=SinglePrompt(length=PROMPT_LEN, embed_dim=32))
    params = {"params": _with_prompt(backbone_params, {"shared": jnp.ones((PROMPT_LEN, 32))})}
    encoded = model.apply(params, ENC, TASKS, enable_dropout=False, method=PromptedT5.encode)
    assert encoded.shape == (2, PROMPT_LEN + ENC.shape[1], 32)
    # T5X zeroes encoder outputs at padded token positions; prompt positions stay.
    np.testing.assert_array_equal(np.asarray(encoded[:, PROMPT_LEN:])[ENC == 0], 0.0)
    assert np.all(np.abs(np.asarray(encoded[:, :PROMPT_LEN])).sum(-1) > 0)
    logits = model.apply(
        params, encoded, ENC, DEC_IN, TGT, enable_dropout=False, method=PromptedT5.decode
    )
    full = model.apply(params, ENC, DEC_IN, TGT, TASKS, enable_dropout=False)
    np.testing.assert_allclose(logits, full, atol=1e-6)
    logits2, hidden = model.apply(
        params, ENC, DEC_IN, TGT, TASKS, enable_dropout=False, method=PromptedT5.forward_with_hidden
    )
    np.testing.assert_allclose(logits2, full, atol=1e-6)
    np.testing.assert_allclose(hidden["encoder"], encoded[:, PROMPT_LEN:], atol=1e-6)
    assert hidden["decoder"].shape == (2, 3, 32)
    # Untied output layer: logits are the decoder state times logits_dense.
    kernel = np.asarray(backbone_params["decoder"]["logits_dense"]["kernel"])
    np.testing.assert_allclose(np.asarray(hidden["decoder"]) @ kernel, full, atol=1e-4)


def test_packing_with_prompt_is_refused(backbone_params):
    model = PromptedT5(CFG, prompt=SinglePrompt(length=PROMPT_LEN, embed_dim=32))
    params = {"params": _with_prompt(backbone_params, {"shared": jnp.ones((PROMPT_LEN, 32))})}
    seg = (ENC > 0).astype(np.int32)
    with pytest.raises(ValueError, match="Packed inputs"):
        model.apply(params, ENC, DEC_IN, TGT, TASKS, seg, (TGT > 0).astype(np.int32))


def test_no_prompt_is_the_plain_backbone(backbone_params):
    plain = T5(CFG).apply({"params": backbone_params}, ENC, DEC_IN, TGT, enable_dropout=False)
    prompted = PromptedT5(CFG).apply(
        {"params": backbone_params}, ENC, DEC_IN, TGT, TASKS, enable_dropout=False
    )
    np.testing.assert_array_equal(plain, prompted)


def test_dropout_is_active_only_when_enabled(backbone_params):
    cfg = CFG.replace(dropout_rate=0.5)
    model = PromptedT5(cfg, prompt=SinglePrompt(length=PROMPT_LEN, embed_dim=32))
    params = {"params": _with_prompt(backbone_params, {"shared": jnp.ones((PROMPT_LEN, 32))})}
    rngs = {"dropout": jax.random.PRNGKey(3)}
    a = model.apply(params, ENC, DEC_IN, TGT, TASKS, enable_dropout=False)
    b = model.apply(params, ENC, DEC_IN, TGT, TASKS, enable_dropout=False)
    c = model.apply(params, ENC, DEC_IN, TGT, TASKS, enable_dropout=True, rngs=rngs)
    np.testing.assert_array_equal(a, b)
    assert np.abs(np.asarray(a) - np.asarray(c)).max() > 1e-2
