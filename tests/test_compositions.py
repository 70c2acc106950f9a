"""Each composition against its formula written out in numpy, under jit, with gradients."""

import dataclasses
from typing import ClassVar

import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from mpt_jax.prompts import compositions as comp

B, L, LT, D, P = 3, 4, 2, 5, 2
RNG = np.random.default_rng(0)
SHARED = RNG.normal(size=(L, D)).astype(np.float32)
TASK = RNG.normal(size=(B, L, D)).astype(np.float32)
TASK_SHORT = RNG.normal(size=(B, LT, D)).astype(np.float32)
WEIGHT = np.array([0.1, 0.5, 0.9], np.float32)
KERNEL = RNG.normal(size=(2, D)).astype(np.float32)
BIAS = np.float32(0.3)
POOL = RNG.normal(size=(P, L, D)).astype(np.float32)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _gated_numpy(s, t, kernel, bias):
    out = np.empty_like(t)
    for b in range(t.shape[0]):
        for i in range(t.shape[1]):
            g = _sigmoid(s[i] @ kernel[0] + t[b, i] @ kernel[1] + bias)
            out[b, i] = g * s[i] + (1 - g) * t[b, i]
    return out


def _attention_numpy(pool, task, weights):
    out = np.empty_like(task)
    for b in range(task.shape[0]):
        mixed = sum(weights[b, j] * pool[j] for j in range(pool.shape[0]))
        out[b] = task[b] + mixed + weights[b, -1] * task[b]
    return out


CASES = {
    "hadamard": (comp.hadamard, (SHARED, TASK), lambda s, t: s[None] * t),
    "add": (comp.add, (SHARED, TASK), lambda s, t: s[None] + t),
    "concat": (
        comp.concat,
        (SHARED, TASK_SHORT),
        lambda s, t: np.stack([np.concatenate([s, t[b]], axis=0) for b in range(B)]),
    ),
    "weighted": (
        comp.weighted,
        (SHARED, TASK, WEIGHT),
        lambda s, t, w: np.stack([(1 - w[b]) * s + w[b] * t[b] for b in range(B)]),
    ),
    "gated": (comp.gated, (SHARED, TASK, KERNEL, BIAS), _gated_numpy),
    "attention": (
        comp.attention,
        (POOL, TASK, _softmax(RNG.normal(size=(B, P + 1))).astype(np.float32)),
        _attention_numpy,
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_composition_matches_numpy_formula_under_jit(name):
    fn, args, reference = CASES[name]
    out = jax.jit(fn)(*args)
    np.testing.assert_allclose(out, reference(*args), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", sorted(CASES))
def test_composition_gradients_match_finite_differences(name):
    fn, args, _ = CASES[name]
    args = tuple(jnp.asarray(a, jnp.float32) for a in args)
    check_grads(fn, args, order=1, modes=["rev"], eps=1e-2, atol=2e-2, rtol=2e-2)


def test_batched_shared_equals_broadcast_shared():
    batched = np.broadcast_to(SHARED, TASK.shape)
    for name in ("hadamard", "add", "gated"):
        fn, args, _ = CASES[name]
        np.testing.assert_allclose(fn(batched, *args[1:]), fn(*args), rtol=1e-6)
    np.testing.assert_allclose(
        comp.concat(np.broadcast_to(SHARED, (B, L, D)), TASK_SHORT), comp.concat(SHARED, TASK_SHORT)
    )


def test_gate_values_are_sigmoid_of_both_parts():
    g = comp.gate_values(SHARED, TASK, KERNEL, BIAS)
    assert g.shape == (B, L, 1)
    expected = _sigmoid(SHARED @ KERNEL[0] + TASK @ KERNEL[1] + BIAS)
    np.testing.assert_allclose(g[..., 0], expected, rtol=1e-5)


def test_attention_weights_softmax_with_temperature():
    query = RNG.normal(size=(B, D)).astype(np.float32)
    keys = RNG.normal(size=(B, P + 1, D)).astype(np.float32)
    w = jax.jit(comp.attention_weights)(query, keys, 2.0)
    expected = _softmax(np.einsum("bd,bkd->bk", query, keys) / 2.0)
    np.testing.assert_allclose(w, expected, rtol=1e-5)
    np.testing.assert_allclose(np.sum(w, axis=-1), 1.0, rtol=1e-6)
    shared_keys = keys[0]  # [pool, D] keys shared by the batch
    np.testing.assert_allclose(
        comp.attention_weights(query, shared_keys, 1.0),
        _softmax(query @ shared_keys.T),
        rtol=1e-5,
    )
    check_grads(
        lambda q, k: comp.attention_weights(q, k, 2.0),
        (jnp.asarray(query), jnp.asarray(keys)),
        order=1,
        modes=["rev"],
        eps=1e-2,
        atol=2e-2,
        rtol=2e-2,
    )


def test_masked_max_pool_ignores_padding():
    x = RNG.normal(size=(B, 4, D)).astype(np.float32)
    x[:, 3] = 100.0  # a padded position that must not win
    mask = np.array([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]])
    pooled = np.asarray(comp.masked_max_pool(x, mask))
    np.testing.assert_allclose(pooled[0], x[0, :3].max(axis=0))
    np.testing.assert_allclose(pooled[1], x[1, 0])
    np.testing.assert_array_equal(pooled[2], np.zeros(D))  # no valid position
    np.testing.assert_allclose(comp.masked_max_pool(x), x.max(axis=1))


def test_low_rank_is_matrix_product():
    u = RNG.normal(size=(B, L, 2)).astype(np.float32)
    v = RNG.normal(size=(B, 2, D)).astype(np.float32)
    np.testing.assert_allclose(comp.low_rank(u, v), np.einsum("blr,brd->bld", u, v), rtol=1e-5)


def test_bad_names_and_lengths_are_named_in_errors():
    with pytest.raises(ValueError, match=r"unknown composition 'product'; expected one of .*'add'"):
        comp.resolve("product")
    with pytest.raises(
        ValueError, match=r"'attention' has required settings \['pool_size'\].*Attention.pool_size"
    ):
        comp.resolve("attention")
    with pytest.raises(ValueError, match=r"'add' needs equal.*shared length 4.*task length 2"):
        comp.Add().check_lengths(4, 2)
    comp.Concat().check_lengths(4, 2)
    with pytest.raises(ValueError, match="Attention: pool_size must be a positive integer, got 0"):
        comp.Attention(pool_size=0)
    with pytest.raises(ValueError, match="temperature must be positive, got -1"):
        comp.Attention(pool_size=1, temperature=-1.0)


BUILT_IN = {
    "hadamard": comp.Hadamard(),
    "add": comp.Add(),
    "concat": comp.Concat(),
    "weighted": comp.Weighted(),
    "gated": comp.Gated(),
    "attention": comp.Attention(pool_size=2, hidden=3),
}


def test_every_built_in_is_registered_by_its_name():
    assert set(BUILT_IN) <= set(comp.known())
    assert comp.COMPOSITIONS == tuple(BUILT_IN)
    for name, obj in BUILT_IN.items():
        assert obj.name == name
        if name != "attention":
            assert comp.resolve(name) == obj
        assert comp.resolve(obj) is obj


def test_compositions_are_hashable_comparable_and_recorded_stably():
    # a generator configuration (with its composition) is recorded in checkpoints and
    # compared on reuse, and Flax hashes module fields
    assert comp.Attention(pool_size=2) == comp.Attention(pool_size=2)
    assert comp.Attention(pool_size=2) != comp.Attention(pool_size=3)
    assert comp.Add() != comp.Hadamard() and comp.Weighted() != comp.Gated()
    assert len({comp.Add(), comp.Add(), comp.Gated()}) == 2
    assert hash(comp.Attention(pool_size=2, hidden=3)) == hash(BUILT_IN["attention"])
    assert comp.Add().record() == {"class": "Add"}
    assert BUILT_IN["attention"].record() == {
        "class": "Attention", "pool_size": 2, "hidden": 3, "temperature": None
    }  # fmt: skip
    with pytest.raises(dataclasses.FrozenInstanceError):
        BUILT_IN["attention"].pool_size = 4


def test_lengths_each_composition_produces():
    for name, obj in BUILT_IN.items():
        expected = 4 + 2 if name == "concat" else 4
        assert obj.prompt_length(4, 2 if name == "concat" else 4) == expected


def test_gin_binds_composition_objects():
    gin.clear_config()
    try:
        gin.parse_config(
            """
            import mpt_jax.prompts
            prompts.ComposedPrompt.composition = @compositions.Attention()
            compositions.Attention.pool_size = 3
            compositions.Attention.temperature = 2.0
            """
        )
        from mpt_jax.prompts import ComposedPrompt

        gen = ComposedPrompt(num_tasks=2, length=4, embed_dim=8)
        assert gen.composition == comp.Attention(pool_size=3, temperature=2.0)
        gin.clear_config()
        gin.parse_config("prompts.ComposedPrompt.composition = 'gated'")  # older gin files
        assert ComposedPrompt(num_tasks=2, length=4, embed_dim=8).composition == comp.Gated()
    finally:
        gin.clear_config()


def test_a_composition_is_added_by_subclassing_and_registering():
    @comp.register
    @dataclasses.dataclass(frozen=True)
    class Subtract(comp.Composition):
        name: ClassVar[str] = "test_subtract"

        def __call__(self, site, base, part, ids, inputs):
            return base - part

    assert comp.resolve("test_subtract") == Subtract()
    with pytest.raises(ValueError, match="name 'test_subtract' is taken"):

        @comp.register
        @dataclasses.dataclass(frozen=True)
        class Other(comp.Composition):
            name: ClassVar[str] = "test_subtract"
