"""Our T5 equals Hugging Face's T5ForConditionalGeneration after `hf_import` (float32).

Small random Hugging Face models are built offline from `transformers.T5Config`
(T5 1.1: gated-GELU, untied output layer; T5 1.0: ReLU, tied and rescaled);
their weights are converted and the logits compared at valid positions of a
padded batch.
"""

import jax
import numpy as np
import pytest

from mpt_jax.backbone import T5
from mpt_jax.backbone.hf_import import (
    config_from_hf,
    convert_hf_state_dict,
    load_hf_checkpoint,
)

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TOLERANCE = 1e-4
S, T = 24, 20  # long enough that the logarithmic position buckets are used


def _batch(vocab: int):
    rng = np.random.default_rng(0)
    enc = rng.integers(2, vocab, (3, S)).astype(np.int32)
    enc[0, 20:] = 0
    enc[1, 9:] = 0
    tgt = rng.integers(2, vocab, (3, T)).astype(np.int32)
    tgt[1, 12:] = 0
    tgt[2, 5:] = 0
    dec_in = np.concatenate([np.zeros((3, 1), np.int32), tgt[:, :-1]], axis=1)
    return enc, dec_in, tgt


def _hf_model(tied: bool, **kwargs):
    torch.manual_seed(0)
    cfg = transformers.T5Config(
        vocab_size=96,
        d_model=32,
        d_kv=8,
        d_ff=48,
        num_layers=2,
        num_decoder_layers=3,
        num_heads=4,
        dropout_rate=0.0,
        tie_word_embeddings=tied,
        decoder_start_token_id=0,
        **kwargs,
    )
    model = transformers.T5ForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        # Make norms non-trivial so that a wrong mapping cannot hide behind ones.
        for name, p in model.named_parameters():
            if "layer_norm" in name:
                p.copy_(1.0 + 0.5 * torch.rand_like(p))
        if not tied:
            # transformers >= 5 ties lm_head to `shared` in memory; give it its own weights.
            model.lm_head.weight = torch.nn.Parameter(0.2 * torch.randn_like(model.shared.weight))
    return model


CASES = {
    "t5_1_1_gated_gelu_untied": dict(
        tied=False,
        feed_forward_proj="gated-gelu",
        relative_attention_num_buckets=8,
        relative_attention_max_distance=16,
    ),
    "t5_1_0_relu_tied": dict(tied=True, feed_forward_proj="relu"),
}

MAX_DIFF: dict[str, float] = {}


def _state_dict(model):
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("case", sorted(CASES))
def test_logits_match_hugging_face(case):
    hf = _hf_model(**CASES[case])
    config = config_from_hf(hf.config, dropout_rate=0.0)
    assert config.logits_via_embedding == CASES[case]["tied"]
    params = convert_hf_state_dict(_state_dict(hf), config)
    enc, dec_in, tgt = _batch(config.vocab_size)

    with torch.no_grad():
        ref = hf(
            input_ids=torch.tensor(enc, dtype=torch.long),
            attention_mask=torch.tensor(enc > 0, dtype=torch.long),
            decoder_input_ids=torch.tensor(dec_in, dtype=torch.long),
        ).logits.numpy()
    ours = np.asarray(
        jax.jit(lambda p: T5(config).apply({"params": p}, enc, dec_in, tgt, enable_dropout=False))(
            params
        )
    )
    valid = tgt > 0
    diff = float(np.abs(ours[valid] - ref[valid]).max())
    MAX_DIFF[case] = diff
    print(f"{case}: max |logit difference| = {diff:.3e}")
    assert diff < TOLERANCE, diff
    # The comparison is not vacuous: logits vary across the vocabulary.
    assert ref[valid].std() > 0.1


def test_safetensors_directory_round_trip(tmp_path):
    from safetensors.numpy import save_file

    hf = _hf_model(**CASES["t5_1_1_gated_gelu_untied"])
    state = _state_dict(hf)
    (tmp_path / "config.json").write_text(hf.config.to_json_string())
    config = config_from_hf(tmp_path)  # reads config.json
    assert config == config_from_hf(hf.config)
    assert not config.logits_via_embedding  # T5 1.1: untied, unscaled
    save_file(state, str(tmp_path / "model.safetensors"))
    loaded = load_hf_checkpoint(tmp_path, config)
    direct = convert_hf_state_dict(state, config)
    flat = jax.tree_util.tree_leaves_with_path(loaded)
    assert len(flat) == len(jax.tree_util.tree_leaves(direct))
    jax.tree_util.tree_map(np.testing.assert_array_equal, loaded, direct)
    # q is copied unscaled and transposed: [out, in] -> [in, out].
    np.testing.assert_array_equal(
        loaded["encoder"]["layers_1"]["attention"]["query"]["kernel"],
        state["encoder.block.1.layer.0.SelfAttention.q.weight"].T,
    )
    np.testing.assert_array_equal(
        loaded["decoder"]["relpos_bias"]["rel_embedding"],
        state["decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"].T,
    )
    # bfloat16 checkpoints load as float32 (exactly the bfloat16 values).
    import ml_dtypes

    half = {k: v.astype(ml_dtypes.bfloat16) for k, v in state.items()}
    save_file(half, str(tmp_path / "model.safetensors"))
    loaded16 = load_hf_checkpoint(tmp_path, config)
    emb = loaded16["token_embedder"]["embedding"]
    assert emb.dtype == np.float32
    np.testing.assert_array_equal(emb, half["shared.weight"].astype(np.float32))


def test_wrong_config_is_refused():
    hf = _hf_model(**CASES["t5_1_0_relu_tied"])
    config = config_from_hf(hf.config)
    state = _state_dict(hf)
    with pytest.raises(ValueError, match="do not fit the config"):
        convert_hf_state_dict(state, config.replace(num_decoder_layers=2))
    with pytest.raises(KeyError, match="block.3"):
        convert_hf_state_dict(state, config.replace(num_decoder_layers=4))
    with pytest.raises(ValueError, match=r"shared.weight has shape"):
        convert_hf_state_dict(state, config.replace(vocab_size=100))


def test_greedy_decoding_matches_hugging_face_generate():
    from mpt_jax.decoding import greedy_decode
    from mpt_jax.model import PromptedT5

    hf = _hf_model(**CASES["t5_1_1_gated_gelu_untied"])
    with torch.no_grad():  # sharper output distribution: EOS wins at varied steps
        hf.lm_head.weight.mul_(8.0)
        hf.lm_head.weight[0].zero_()  # padding is never the likeliest token
        hf.lm_head.weight[1].mul_(4.0)  # EOS sometimes is
    config = config_from_hf(hf.config, dropout_rate=0.0)
    params = convert_hf_state_dict(_state_dict(hf), config)
    enc, _, _ = _batch(config.vocab_size)
    max_len = 8
    with torch.no_grad():
        ref = hf.generate(
            input_ids=torch.tensor(enc, dtype=torch.long),
            attention_mask=torch.tensor(enc > 0, dtype=torch.long),
            do_sample=False,
            num_beams=1,
            max_new_tokens=max_len,
            min_new_tokens=0,
            eos_token_id=1,
            pad_token_id=0,
            decoder_start_token_id=0,
            # transformers' cache mis-sizes when decoder and encoder depths differ.
            use_cache=False,
        ).numpy()[:, 1:]  # drop the start token
    ours, _ = greedy_decode(PromptedT5(config), params, enc, max_decode_length=max_len)
    ref = np.pad(ref, ((0, 0), (0, max_len - ref.shape[1])))
    print("greedy tokens (ours == transformers):\n", np.asarray(ours))
    np.testing.assert_array_equal(np.asarray(ours), ref)
    assert (ref[:, 1:] > 1).any()  # not a trivial immediate EOS
    assert (ref == 1).any()  # some sequence ends before max_len
