"""Prompt generators against their formulas written out in numpy."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mpt_jax.prompts import (
    MultitaskPrompt,
    SinglePrompt,
    TaskPrompts,
    check_task_ids,
    initializers,
)

T, L, D, R = 3, 4, 6, 2
IDS = np.array([2, 0, 1, 2], np.int32)


def _init(module, ids=IDS, seq=3):
    x = jnp.zeros((len(ids), seq, module.embed_dim))
    return module.init(jax.random.key(0), jnp.asarray(ids), x)


def _names(variables):
    boxed = jax.tree.map(
        lambda x: x.names, variables["params"], is_leaf=lambda x: isinstance(x, nn.Partitioned)
    )
    return boxed


def test_check_task_ids_names_the_bad_id_and_range():
    check_task_ids(np.array([0, 2]), 3)
    with pytest.raises(ValueError, match=r"task id 7 out of range \[0, 3\)"):
        check_task_ids(np.array([0, 7]), 3)
    with pytest.raises(ValueError, match=r"task id -1"):
        check_task_ids([-1], 3)
    with pytest.raises(ValueError, match=r"shape \[batch\]"):
        check_task_ids(np.zeros((2, 2), np.int32), 3)


def test_single_prompt_repeats_shared_over_batch():
    module = SinglePrompt(length=L, embed_dim=D)
    variables = _init(module)
    assert _names(variables) == {"shared": ("prompt", "embed")}
    shared = np.asarray(nn.unbox(variables)["params"]["shared"])
    assert shared.shape == (L, D)
    assert np.abs(shared).max() <= 0.5  # uniform(0.5)
    out = module.apply(variables, IDS, jnp.zeros((4, 3, D)))
    np.testing.assert_array_equal(out, np.broadcast_to(shared, (4, L, D)))
    assert module.prompt_length == L


def test_task_prompts_gathers_each_examples_prompt():
    module = TaskPrompts(num_tasks=T, length=L, embed_dim=D)
    variables = _init(module)
    assert _names(variables) == {"task_prompts": ("tasks", "prompt", "embed")}
    table = np.asarray(nn.unbox(variables)["params"]["task_prompts"])
    out = jax.jit(module.apply)(variables, IDS, jnp.zeros((4, 3, D)))
    np.testing.assert_array_equal(out, table[IDS])
    with pytest.raises(ValueError, match="task id 3 out of range"):
        module.apply(variables, np.array([0, 3]), None)


@pytest.fixture(scope="module")
def mpt():
    module = MultitaskPrompt(num_tasks=T, length=L, embed_dim=D, num_ranks=R)
    variables = _init(module)
    rng = np.random.default_rng(0)
    params = {
        "shared": rng.normal(size=(L, D)).astype(np.float32),
        "task_cols": rng.normal(size=(T, L, R)).astype(np.float32),
        "task_rows": rng.normal(size=(T, R, D)).astype(np.float32),
    }
    return module, variables, params


def _mpt_numpy(params, ids):
    p, u, v = params["shared"], params["task_cols"], params["task_rows"]
    return np.stack([p * (u[k] @ v[k]) for k in ids])


def test_mpt_parameter_names_and_axes(mpt):
    module, variables, _ = mpt
    assert _names(variables) == {
        "shared": ("prompt", "embed"),
        "task_cols": ("tasks", "prompt", "rank"),
        "task_rows": ("tasks", "rank", "embed"),
    }
    assert (module.num_virtual_tokens, module.rank, module.prompt_length) == (L, R, L)


def test_mpt_matches_formula_under_jit_and_mixed_batch_equals_stacked(mpt):
    module, _, params = mpt
    apply = jax.jit(lambda p, ids: module.apply({"params": p}, ids))
    out = np.asarray(apply(params, jnp.asarray(IDS)))
    np.testing.assert_allclose(out, _mpt_numpy(params, IDS), rtol=1e-5, atol=1e-6)
    stacked = np.concatenate([apply(params, jnp.asarray([k])) for k in IDS])
    np.testing.assert_allclose(out, stacked, rtol=1e-6, atol=1e-6)


def test_mpt_gradient_matches_analytic_numpy(mpt):
    module, _, params = mpt
    rng = np.random.default_rng(1)
    cot = rng.normal(size=(len(IDS), L, D)).astype(np.float32)

    def loss(p):
        return jnp.sum(module.apply({"params": p}, jnp.asarray(IDS)) * cot)

    grads = jax.jit(jax.grad(loss))(params)
    p, u, v = params["shared"], params["task_cols"], params["task_rows"]
    g_p = sum(cot[b] * (u[k] @ v[k]) for b, k in enumerate(IDS))
    g_u, g_v = np.zeros_like(u), np.zeros_like(v)
    for b, k in enumerate(IDS):
        g_w = cot[b] * p  # d loss / d W_k
        g_u[k] += g_w @ v[k].T
        g_v[k] += u[k].T @ g_w
    np.testing.assert_allclose(grads["shared"], g_p, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(grads["task_cols"], g_u, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(grads["task_rows"], g_v, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("rank", [1, 3])
def test_fresh_mpt_starts_at_the_shared_prompt(rank):
    module = MultitaskPrompt(num_tasks=5, length=L, embed_dim=D, num_ranks=rank)
    variables = _init(module, ids=np.arange(5))
    params = nn.unbox(variables)["params"]
    u, v = np.asarray(params["task_cols"]), np.asarray(params["task_rows"])
    w = u @ v
    assert np.abs(w - 1).max() < 1e-3  # second order in the 1e-2 perturbation
    if rank > 1:  # the rank components differ (symmetry broken)
        assert np.abs(u[..., 0] - u[..., 1]).max() > 1e-3
        assert np.abs(v[:, 0] - v[:, 1]).max() > 1e-4
    out = module.apply(variables, np.arange(5), None)
    np.testing.assert_allclose(out, np.broadcast_to(params["shared"], out.shape), atol=1e-3)


def test_peft_style_init_starts_near_zero():
    module = MultitaskPrompt(
        num_tasks=2, length=L, embed_dim=D,
        cols_init=initializers.normal(0.02), rows_init=initializers.normal(0.02),
    )  # fmt: skip
    out = module.apply(_init(module, ids=np.array([0, 1])), np.array([0, 1]), None)
    assert np.abs(out).max() < 0.01


def test_bad_inputs_name_the_bad_value(mpt):
    module, variables, _ = mpt
    with pytest.raises(ValueError, match="task id 5 out of range"):
        module.apply(variables, np.array([0, 5]), None)
    with pytest.raises(ValueError, match=r"embed size 7 .* embed_dim 6"):
        module.apply(variables, np.array([0]), jnp.zeros((1, 2, 7)))
    with pytest.raises(ValueError, match="batch 2 but task_ids have batch 1"):
        module.apply(variables, np.array([0]), jnp.zeros((2, 2, D)))
    with pytest.raises(ValueError, match="num_ranks must be a positive integer, got 0"):
        MultitaskPrompt(num_tasks=1, length=2, embed_dim=3, num_ranks=0)


def test_output_dtype_follows_embedded_inputs(mpt):
    module, variables, _ = mpt
    out = module.apply(variables, np.array([0]), jnp.zeros((1, 2, D), jnp.bfloat16))
    assert out.dtype == jnp.bfloat16
