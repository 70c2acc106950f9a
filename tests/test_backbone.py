"""The T5 backbone: parameter tree, named sizes, buckets, norms, masks, packing, dtype, remat."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.traverse_util import flatten_dict

from mpt_jax.backbone import NAMED_CONFIGS, T5, T5Config, get_config
from mpt_jax.backbone.layers import RmsNorm, relative_position_buckets
from mpt_jax.prompts import LOGICAL_AXES

CFG = get_config("tiny", {"dropout_rate": 0.0})
ENC = np.array([[5, 6, 7, 8, 1, 0], [9, 10, 1, 0, 0, 0]], np.int32)
TGT = np.array([[11, 12, 1], [13, 1, 0]], np.int32)
DEC_IN = np.array([[0, 11, 12], [0, 13, 1]], np.int32)


def _tree(config: T5Config):
    variables = jax.eval_shape(
        lambda: T5(config).init(jax.random.PRNGKey(0), ENC, DEC_IN, TGT, enable_dropout=False)
    )
    return {"/".join(k): v for k, v in flatten_dict(variables["params"]).items()}


def _expected_tiny_tree(tied: bool):
    e, j, m, v, h, buckets = 32, 32, 64, 128, 4, 32
    attn = {
        "query/kernel": ((e, j), ("embed", "joined_kv")),
        "key/kernel": ((e, j), ("embed", "joined_kv")),
        "value/kernel": ((e, j), ("embed", "joined_kv")),
        "out/kernel": ((j, e), ("joined_kv", "embed")),
    }
    wis = ["wi"] if tied else ["wi_0", "wi_1"]
    mlp = {f"{w}/kernel": ((e, m), ("embed", "mlp")) for w in wis}
    mlp["wo/kernel"] = ((m, e), ("mlp", "embed"))
    norm = ((e,), ("embed",))
    tree = {
        "token_embedder/embedding": ((v, e), ("vocab", "embed")),
        "encoder/relpos_bias/rel_embedding": ((h, buckets), ("heads", "relpos_buckets")),
        "encoder/encoder_norm/scale": norm,
        "decoder/relpos_bias/rel_embedding": ((h, buckets), ("heads", "relpos_buckets")),
        "decoder/decoder_norm/scale": norm,
    }
    for i in range(2):
        p = f"encoder/layers_{i}"
        tree[f"{p}/pre_attention_layer_norm/scale"] = norm
        tree[f"{p}/pre_mlp_layer_norm/scale"] = norm
        tree.update({f"{p}/attention/{k}": s for k, s in attn.items()})
        tree.update({f"{p}/mlp/{k}": s for k, s in mlp.items()})
        p = f"decoder/layers_{i}"
        for n in ("pre_self_attention", "pre_cross_attention", "pre_mlp"):
            tree[f"{p}/{n}_layer_norm/scale"] = norm
        tree.update({f"{p}/self_attention/{k}": s for k, s in attn.items()})
        tree.update({f"{p}/encoder_decoder_attention/{k}": s for k, s in attn.items()})
        tree.update({f"{p}/mlp/{k}": s for k, s in mlp.items()})
    if not tied:
        tree["decoder/logits_dense/kernel"] = ((e, v), ("embed", "vocab"))
    return tree


@pytest.mark.parametrize("name,tied", [("tiny", False), ("tiny_t5_1_0", True)])
def test_parameter_tree_names_shapes_and_axes(name, tied):
    tree = _tree(get_config(name))
    got = {k: (tuple(v.value.shape), tuple(v.names)) for k, v in tree.items()}
    assert got == _expected_tiny_tree(tied)
    assert all(v.value.dtype == jnp.float32 for v in tree.values())


#: Logical axis names that T5X's ``standard_logical_axis_rules`` map (t5x/partitioning.py).
T5X_STANDARD_AXES = {
    "batch", "vocab", "embed", "mlp", "heads", "kv", "joined_kv", "relpos_buckets",
    "abspos_buckets", "length", "layers", "stack", "mlp_activations",
}  # fmt: skip


def test_every_axis_is_t5x_standard_or_a_prompt_axis():
    """T5X's standard rules cover the backbone; mpt_jax.t5x_ext.partitioning adds one rule
    per prompt axis of LOGICAL_AXES, so every parameter has a rule (checked against T5X
    itself in test_t5x_integration)."""
    boxed = jax.eval_shape(
        lambda: T5(CFG).init(jax.random.PRNGKey(0), ENC, DEC_IN, TGT, enable_dropout=False)
    )["params"]
    names = {
        n
        for box in jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
        for n in box.names
    }
    assert names <= T5X_STANDARD_AXES
    assert {"embed"} == set(LOGICAL_AXES) & T5X_STANDARD_AXES  # prompts' embed follows T5X


# Hugging Face's parameter counts of the public checkpoints, recomputed from
# `transformers` on the meta device (transformers >= 5 ties lm_head in memory,
# so an untied model adds vocab * d_model).
HF_SIZES = {
    "t5_1_1_small": dict(d_model=512, d_kv=64, d_ff=1024, num_layers=8, num_heads=6,
                         feed_forward_proj="gated-gelu", tie_word_embeddings=False),
    "t5_1_1_base": dict(d_model=768, d_kv=64, d_ff=2048, num_layers=12, num_heads=12,
                        feed_forward_proj="gated-gelu", tie_word_embeddings=False),
    "t5_1_0_small": dict(d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_heads=8,
                         feed_forward_proj="relu"),
    "mt5_small": dict(vocab_size=250112, d_model=512, d_kv=64, d_ff=1024, num_layers=8,
                      num_heads=6, feed_forward_proj="gated-gelu", tie_word_embeddings=False),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(HF_SIZES))
def test_named_sizes_match_hugging_face_parameter_counts(name):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    kwargs = {"vocab_size": 32128, **HF_SIZES[name]}
    with torch.device("meta"):
        hf = transformers.T5ForConditionalGeneration(transformers.T5Config(**kwargs))
    expected = sum(p.numel() for p in hf.parameters())
    if kwargs.get("tie_word_embeddings") is False:
        expected += kwargs["vocab_size"] * kwargs["d_model"]
    ours = sum(int(np.prod(v.value.shape)) for v in _tree(get_config(name)).values())
    assert ours == expected


def test_public_size_table():
    assert get_config("small") == get_config("t5_1_1_small").replace(name="small")
    xxl = get_config("xxl")
    assert (xxl.emb_dim, xxl.mlp_dim, xxl.num_heads, xxl.num_encoder_layers) == (
        4096, 10240, 64, 24,
    )  # fmt: skip
    assert get_config("flan_t5_large").mlp_dim == 2816
    assert get_config("mt5_base").vocab_size == 250112
    mini = get_config("mini")
    assert (mini.emb_dim, mini.mlp_dim, mini.num_heads, mini.head_dim) == (256, 512, 4, 64)
    assert (mini.num_encoder_layers, mini.num_decoder_layers) == (4, 4)
    assert all(c.name == n for n, c in NAMED_CONFIGS.items())


def test_config_errors_name_the_bad_value():
    with pytest.raises(ValueError, match="'huge'"):
        get_config("huge")
    with pytest.raises(ValueError, match="float16"):
        get_config("tiny", {"dtype": "float16"})
    with pytest.raises(ValueError, match="remat_policy"):
        T5Config(remat_policy="some")
    with pytest.raises(ValueError, match="num_heads"):
        T5Config(num_heads=0)
    with pytest.raises(ValueError, match="bogus"):
        get_config("tiny", {"bogus": 1})


def test_relative_position_buckets_match_hugging_face():
    torch = pytest.importorskip("torch")
    from transformers.models.t5.modeling_t5 import T5Attention

    rel = np.arange(-300, 301)[None, :]
    for bidirectional in (True, False):
        for buckets, max_distance in ((32, 128), (8, 16)):
            ours = relative_position_buckets(rel, bidirectional, buckets, max_distance)
            ref = T5Attention._relative_position_bucket(
                torch.tensor(rel), bidirectional, buckets, max_distance
            ).numpy()
            np.testing.assert_array_equal(ours, ref)
            # jnp (traced) input gives the same buckets.
            np.testing.assert_array_equal(
                relative_position_buckets(jnp.asarray(rel), bidirectional, buckets, max_distance),
                ref,
            )
    # Hand-checked values: encoder keys after the query use the upper half.
    assert relative_position_buckets(np.array([-1, 0, 1, 7, -8]), True, 32, 128).tolist() == [
        1, 0, 17, 23, 8,
    ]  # fmt: skip


def test_rms_norm_matches_numpy():
    x = np.random.default_rng(0).normal(size=(2, 3, 8)).astype(np.float32)
    scale = np.linspace(0.5, 2.0, 8).astype(np.float32)
    out = RmsNorm(1e-6).apply({"params": {"scale": scale}}, x)
    expected = x / np.sqrt((x**2).mean(-1, keepdims=True) + 1e-6) * scale
    np.testing.assert_allclose(out, expected, rtol=1e-5)


@pytest.fixture(scope="module")
def params():
    init = jax.jit(lambda key: T5(CFG).init(key, ENC, DEC_IN, TGT, enable_dropout=False))
    return nn.unbox(init(jax.random.PRNGKey(0))["params"])


@functools.partial(jax.jit, static_argnames=("config",))
def _jit_logits(config, params, enc, dec, tgt, enc_seg=None, dec_seg=None):
    return T5(config).apply({"params": params}, enc, dec, tgt, enc_seg, dec_seg,
                            enable_dropout=False)  # fmt: skip


def _logits(config, params, enc=ENC, dec=DEC_IN, tgt=TGT, **kw):
    return np.asarray(_jit_logits(config, params, enc, dec, tgt, **kw))


def test_padding_and_encode_from_embeddings(params):
    base = _logits(CFG, params)
    padded = _logits(CFG, params, np.pad(ENC, ((0, 0), (0, 3))), np.pad(DEC_IN, ((0, 0), (0, 2))),
                     np.pad(TGT, ((0, 0), (0, 2))))  # fmt: skip
    valid = TGT > 0
    np.testing.assert_allclose(padded[:, :3][valid], base[valid], atol=1e-5)
    model = T5(CFG)
    via_tokens = jax.jit(
        lambda p: model.apply({"params": p}, ENC, enable_dropout=False, method=T5.encode)
    )(params)
    embedded = np.asarray(params["token_embedder"]["embedding"])[ENC]
    via_embeddings = jax.jit(
        lambda p: model.apply(
            {"params": p}, embedded, ENC > 0, enable_dropout=False, method=T5.encode_from_embeddings
        )  # fmt: skip
    )(params)
    np.testing.assert_allclose(via_tokens, via_embeddings, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(via_tokens)[ENC == 0], 0.0)


def test_packed_rows_equal_separate_examples(params):
    """Segment ids make a packed row behave like its examples run one by one."""
    enc = np.array([[5, 6, 7, 8, 1, 9, 10, 1, 0]], np.int32)
    enc_seg = np.array([[1, 1, 1, 1, 1, 2, 2, 2, 0]], np.int32)
    tgt = np.array([[11, 12, 1, 13, 1, 0]], np.int32)
    dec = np.array([[0, 11, 12, 0, 13, 0]], np.int32)
    dec_seg = np.array([[1, 1, 1, 2, 2, 0]], np.int32)
    packed = _logits(CFG, params, enc, dec, tgt, enc_seg=enc_seg, dec_seg=dec_seg)
    separate = _logits(CFG, params)
    np.testing.assert_allclose(packed[0, :3], separate[0, :3], atol=1e-5)
    np.testing.assert_allclose(packed[0, 3:5], separate[1, :2], atol=1e-5)


def test_bfloat16_mode_uses_bf16_matmuls_with_f32_outputs(params):
    cfg16 = CFG.replace(dtype="bfloat16")
    fn = lambda p: T5(cfg16).apply({"params": p}, ENC, DEC_IN, TGT, enable_dropout=False)
    hlo = jax.jit(fn).lower(params).as_text()
    dots = [line for line in hlo.splitlines() if "stablehlo.dot_general" in line]
    assert dots and all("bf16" in d and d.rstrip().endswith("f32>") for d in dots), dots[:3]
    f32, b16 = _logits(CFG, params), np.asarray(fn(params))
    assert b16.dtype == np.float32
    rel = np.abs(b16 - f32).max() / np.abs(f32).max()
    assert 0 < rel < 0.05, rel


def test_frozen_weights_stored_in_bfloat16(params):
    """Frozen weights may be stored in bfloat16; activations and logits stay float32."""
    cfg16 = CFG.replace(dtype="bfloat16")
    p16 = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.bfloat16), params)
    logits = _logits(cfg16, p16)
    assert logits.dtype == np.float32
    f32 = _logits(CFG, params)
    assert np.abs(logits - f32).max() / np.abs(f32).max() < 0.05


def test_remat_gives_the_same_gradients(params):
    def loss(config, p):
        logits = T5(config).apply({"params": p}, ENC, DEC_IN, TGT, enable_dropout=False)
        return jnp.mean(jax.nn.logsumexp(logits, -1))

    configs = [CFG] + [CFG.replace(remat_policy=policy) for policy in ("dots", "full")]
    grad_fns = [jax.grad(functools.partial(loss, c)) for c in configs]
    for fn in grad_fns[1:]:
        jaxpr = str(jax.make_jaxpr(fn)(params))
        assert "remat" in jaxpr or "checkpoint" in jaxpr
    ref, *others = jax.jit(lambda p: [fn(p) for fn in grad_fns])(params)
    for got in others:
        jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), got, ref)


def test_one_hot_embedding_equals_lookup(params):
    np.testing.assert_allclose(
        _logits(CFG.replace(one_hot_embedding=True), params), _logits(CFG, params), atol=1e-5
    )


def test_attention_dropout_drops_key_columns_as_t5(monkeypatch):
    """Dropout scales value rows; the result is T5's column-dropped attention weights."""
    from mpt_jax.backbone.layers import MultiHeadAttention

    heads, head_dim, rate = 2, 4, 0.4
    attn = MultiHeadAttention(heads, head_dim, dropout_rate=rate)
    x = jax.random.normal(jax.random.key(0), (3, 5, 8))
    bias = jax.random.normal(jax.random.key(1), (3, heads, 5, 5))
    params = nn.unbox(attn.init(jax.random.key(2), x, x, bias)["params"])
    draws = []
    bernoulli = jax.random.bernoulli
    monkeypatch.setattr(
        jax.random, "bernoulli", lambda *a, **k: draws.append(bernoulli(*a, **k)) or draws[-1]
    )
    out = attn.apply({"params": params}, x, x, bias, deterministic=False,
                     rngs={"dropout": jax.random.key(3)})  # fmt: skip
    (keep,) = draws
    assert keep.shape == (3, heads, 1, 5)  # one draw per key column, shared by queries
    assert 0 < np.asarray(keep).mean() < 1

    p = {k: np.asarray(v["kernel"], np.float64) for k, v in params.items()}
    xs = np.asarray(x, np.float64)
    split = lambda w: w.reshape(8, heads, head_dim)
    q, k, v = (np.einsum("bse,ehd->bhsd", xs, split(p[n])) for n in ("query", "key", "value"))
    logits = np.einsum("bhqd,bhkd->bhqk", q, k) + np.asarray(bias, np.float64)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    weights = np.where(np.asarray(keep), weights / (1 - rate), 0.0)
    ctx = np.einsum("bhqk,bhkd->bhqd", weights, v)
    expected = np.einsum("bhqd,hde->bqe", ctx, p["out"].reshape(heads, head_dim, 8))
    np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_project_values_and_gradients_equal_autodiff(dtype):
    """`project`'s hand-written backward against autodiff of `matmul` and the formula."""
    from mpt_jax.backbone.layers import matmul, project

    kx, kk, kg = jax.random.split(jax.random.key(1), 3)
    x, kernel = jax.random.normal(kx, (2, 9, 4)), jax.random.normal(kk, (4, 6))
    cot = jax.random.normal(kg, (2, 9, 6))
    ours_fn = lambda x, k: project(x, k, jnp.dtype(dtype))
    ref_fn = lambda x, k: matmul("...i,io->...o", x, k, jnp.dtype(dtype))
    out = ours_fn(x, kernel)
    assert out.dtype == jnp.float32
    np.testing.assert_array_equal(out, ref_fn(x, kernel))
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == "float32" else dict(rtol=2e-2, atol=5e-2)
    ours = jax.grad(lambda *a: jnp.sum(ours_fn(*a) * cot), (0, 1))(x, kernel)
    ref = jax.grad(lambda *a: jnp.sum(ref_fn(*a) * cot), (0, 1))(x, kernel)
    x64, k64, g64 = (np.asarray(a, np.float64) for a in (x, kernel, cot))
    formula = (np.einsum("bso,io->bsi", g64, k64), np.einsum("bsi,bso->io", x64, g64))
    for got, autodiff, expected in zip(ours, ref, formula, strict=True):
        assert got.shape == expected.shape and got.dtype == autodiff.dtype == jnp.float32
        np.testing.assert_allclose(got, autodiff, **tol)
        np.testing.assert_allclose(got, expected, **tol)
    # A frozen kernel (prompt tuning): the same input gradient, in the input's dtype,
    # and no weight-gradient matmul in the program at all.
    for x_in in (x, x.astype(jnp.bfloat16)):
        grad_x = jax.grad(lambda x: jnp.sum(ours_fn(x, kernel) * cot))
        dx = grad_x(x_in)
        assert dx.dtype == x_in.dtype
        loose = dict(rtol=2e-2, atol=5e-2)
        x_tol = tol if x_in.dtype == jnp.float32 else loose
        np.testing.assert_allclose(dx.astype(jnp.float32), formula[0], **x_tol)
        eqns = jax.make_jaxpr(grad_x)(x_in).jaxpr.eqns
        assert [e.primitive.name for e in eqns].count("dot_general") == 1  # dx only


@pytest.mark.parametrize("bias_shape", [(2, 3, 4, 6), (1, 3, 4, 6), (2, 1, 4, 6), None])
def test_attention_core_values_and_gradients_equal_autodiff(bias_shape):
    """The hand-written backward pass against autodiff of the plain formula."""
    from mpt_jax.backbone.layers import MASK_BIAS, attention_core

    keys = jax.random.split(jax.random.key(0), 5)
    q = jax.random.normal(keys[0], (2, 3, 4, 5))
    k, v = (jax.random.normal(key, (2, 3, 6, 5)) for key in keys[1:3])
    bias = None if bias_shape is None else jax.random.normal(keys[3], bias_shape)
    if bias is not None:  # a fully masked query row and a masked key, as padding gives
        bias = bias.at[..., 1, :].set(MASK_BIAS).at[..., 3].add(MASK_BIAS)
    cot = jax.random.normal(keys[4], (2, 3, 4, 5))

    def reference(q, k, v, bias):
        logits = jnp.einsum("bhqd,bhkd->bhqk", q, k) + (0.0 if bias is None else bias)
        return jnp.einsum("bhqk,bhkd->bhqd", jax.nn.softmax(logits, axis=-1), v)

    np.testing.assert_allclose(attention_core(q, k, v, bias), reference(q, k, v, bias),
                               rtol=1e-5, atol=1e-6)  # fmt: skip
    argnums = (0, 1, 2) if bias is None else (0, 1, 2, 3)
    ours = jax.grad(lambda *a: jnp.sum(attention_core(*a) * cot), argnums)(q, k, v, bias)
    ref = jax.grad(lambda *a: jnp.sum(reference(*a) * cot), argnums)(q, k, v, bias)
    for a, b in zip(ours, ref, strict=True):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
