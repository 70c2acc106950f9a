"""Prompt generators against their formulas written out in numpy."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mpt_jax.prompts import (
    ComposedPrompt,
    HierarchicalPrompt,
    MultitaskPrompt,
    SinglePrompt,
    TaskPrompts,
    check_task_ids,
    initializers,
)
from mpt_jax.prompts import compositions as comp

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


# --- ComposedPrompt -----------------------------------------------------------------------

COMPOSITIONS = ("hadamard", "add", "concat", "weighted", "gated", "attention")
SEQ = 5
X = np.random.default_rng(2).normal(size=(len(IDS), SEQ, D)).astype(np.float32)
MASK = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0], [1, 1, 0, 0, 0]])


def _random_like(params, seed=3):
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda x: rng.normal(size=x.shape).astype(np.float32), params)


OBJECTS = {
    "hadamard": comp.Hadamard(),
    "add": comp.Add(),
    "concat": comp.Concat(),
    "weighted": comp.Weighted(),
    "gated": comp.Gated(),
    "attention": comp.Attention(pool_size=2, hidden=3),
}


def _composed(composition, rank):
    return ComposedPrompt(
        num_tasks=T, length=L, embed_dim=D, composition=OBJECTS[composition], task_rank=rank,
        task_length=2 if composition == "concat" else None,
    )  # fmt: skip


def _sig(x):
    return 1 / (1 + np.exp(-x))


def _composed_numpy(composition, p, ids, x, mask):
    """ComposedPrompt written out example by example in numpy."""
    outs = []
    for b, k in enumerate(ids):
        t = p["task_prompts"][k] if "task_prompts" in p else p["task_cols"][k] @ p["task_rows"][k]
        s = p.get("shared")
        if composition == "hadamard":
            outs.append(s * t)
        elif composition == "add":
            outs.append(s + t)
        elif composition == "concat":
            outs.append(np.concatenate([s, t]))
        elif composition == "weighted":
            w = _sig(p["task_weights"][k])
            outs.append((1 - w) * s + w * t)
        elif composition == "gated":
            g = _sig(s @ p["gate_kernel"][0] + t @ p["gate_kernel"][1] + p["gate_bias"])
            outs.append(g[:, None] * s + (1 - g[:, None]) * t)
        else:  # attention, ATTEMPT
            q = x[b][mask[b].astype(bool)].max(axis=0)
            h = q @ p["attn_down"]["kernel"] + p["attn_down"]["bias"]
            h = h * _sig(h)
            h = h @ p["attn_up"]["kernel"] + p["attn_up"]["bias"]
            h = (h - h.mean()) / np.sqrt(h.var() + 1e-6)
            q = h * p["attn_norm"]["scale"] + p["attn_norm"]["bias"]
            pool = np.concatenate([p["source_prompts"], t[None]])  # [P + 1, L, D]
            scores = pool.max(axis=1) @ q / np.sqrt(D)
            a = np.exp(scores - scores.max())
            a /= a.sum()
            outs.append(t + np.einsum("k,kld->ld", a, pool))
    return np.stack(outs)


@pytest.mark.parametrize("rank", [None, 2])
@pytest.mark.parametrize("composition", COMPOSITIONS)
def test_composed_prompt_matches_formula_and_mixed_batch(composition, rank):
    module = _composed(composition, rank)
    variables = jax.eval_shape(module.init, jax.random.key(0), IDS, X, MASK)  # shapes only
    params = _random_like(nn.unbox(variables)["params"])
    out = np.asarray(module.apply({"params": params}, IDS, X, MASK))
    assert out.shape == (len(IDS), module.prompt_length, D)
    expected = _composed_numpy(composition, params, IDS, X, MASK)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)
    stacked = np.concatenate(
        [module.apply({"params": params}, IDS[b : b + 1], X[b : b + 1], MASK[b : b + 1])
         for b in range(len(IDS))]
    )  # fmt: skip
    np.testing.assert_allclose(out, stacked, rtol=1e-5, atol=1e-5)
    names = _names(variables)
    if rank is None:
        assert names["task_prompts"] == ("tasks", "prompt", "embed")
    else:
        assert names["task_cols"] == ("tasks", "prompt", "rank")
        assert names["task_rows"] == ("tasks", "rank", "embed")
    for leaf in jax.tree.leaves(names, is_leaf=lambda x: isinstance(x, tuple)):
        assert all(isinstance(n, str) for n in leaf)  # every axis is named


def test_composed_prompt_jit_and_gradient_against_finite_differences():
    module = _composed("gated", 2)
    shapes = jax.eval_shape(module.init, jax.random.key(0), IDS, X)
    params = _random_like(nn.unbox(shapes)["params"])

    def loss(p):
        return jnp.sum(jnp.sin(module.apply({"params": p}, IDS)))

    grads = jax.jit(jax.grad(loss))(params)
    eps = 1e-2
    for name in ("shared", "task_cols", "task_rows", "gate_kernel"):
        flat = np.asarray(params[name]).ravel()
        for i in (0, flat.size // 2, flat.size - 1):
            up, down = flat.copy(), flat.copy()
            up[i] += eps
            down[i] -= eps
            plus = loss({**params, name: up.reshape(params[name].shape)})
            minus = loss({**params, name: down.reshape(params[name].shape)})
            numeric = (plus - minus) / (2 * eps)
            np.testing.assert_allclose(np.asarray(grads[name]).ravel()[i], numeric, atol=2e-2)


@pytest.mark.parametrize(
    "composition,rank", [("hadamard", None), ("hadamard", 2), ("add", None), ("add", 1)]
)
def test_fresh_composed_prompt_starts_at_shared(composition, rank):
    module = _composed(composition, rank)
    variables = module.init(jax.random.key(0), IDS, None)
    shared = nn.unbox(variables)["params"]["shared"]
    out = module.apply(variables, IDS, None)
    np.testing.assert_allclose(out, np.broadcast_to(shared, out.shape), atol=2e-2)


def test_fresh_weighted_and_gated_start_at_the_midpoint():
    for composition in ("weighted", "gated"):
        module = _composed(composition, None)
        variables = module.init(jax.random.key(0), IDS, None)
        p = nn.unbox(variables)["params"]
        expected = 0.5 * p["shared"] + 0.5 * np.asarray(p["task_prompts"])[IDS]
        np.testing.assert_allclose(module.apply(variables, IDS, None), expected, atol=1e-6)


def test_multitask_prompt_is_the_hadamard_low_rank_preset_of_composed_prompt():
    mpt = MultitaskPrompt(num_tasks=T, length=L, embed_dim=D, num_ranks=R)
    composed = ComposedPrompt(
        num_tasks=T, length=L, embed_dim=D, composition=comp.Hadamard(), task_rank=R
    )
    variables = mpt.init(jax.random.key(0), IDS, None)
    assert jax.tree.structure(variables) == jax.tree.structure(
        composed.init(jax.random.key(0), IDS, None)
    )  # same names (shared, task_cols, task_rows), same logical axes
    params = _random_like(nn.unbox(variables)["params"])
    np.testing.assert_array_equal(
        mpt.apply({"params": params}, IDS), composed.apply({"params": params}, IDS)
    )


def test_string_names_build_the_same_generator_as_objects():
    for name in ("hadamard", "add", "weighted", "gated"):
        by_name = ComposedPrompt(num_tasks=T, length=L, embed_dim=D, composition=name)
        assert by_name == ComposedPrompt(
            num_tasks=T, length=L, embed_dim=D, composition=OBJECTS[name]
        )


def test_composed_prompt_bad_configuration_is_named():
    with pytest.raises(ValueError, match="'hadamard' needs equal lengths.*4.*task length 3"):
        ComposedPrompt(num_tasks=2, length=4, embed_dim=D, task_length=3)
    with pytest.raises(ValueError, match="unknown composition 'mul'"):
        ComposedPrompt(num_tasks=2, length=4, embed_dim=D, composition="mul")
    with pytest.raises(ValueError, match=r"'attention' has required settings \['pool_size'\]"):
        ComposedPrompt(num_tasks=2, length=4, embed_dim=D, composition="attention")
    module = _composed("attention", None)
    with pytest.raises(ValueError, match="embedded_inputs must be given"):
        module.init(jax.random.key(0), IDS, None)


# --- HierarchicalPrompt -------------------------------------------------------------------

GROUPS = (0, 1, 0)  # tasks 0, 2 in group 0; task 1 in group 1


def _level_numpy(composition, base, part, params, prefix, idx):
    if composition == "hadamard":
        return base * part
    if composition == "add":
        return base + part
    if composition == "concat":
        return np.concatenate([base, part])
    if composition == "weighted":
        w = _sig(params[f"{prefix}_weights"][idx])
        return (1 - w) * base + w * part
    kernel, bias = params[f"{prefix}_gate_kernel"], params[f"{prefix}_gate_bias"]
    g = _sig(base @ kernel[0] + part @ kernel[1] + bias)[:, None]
    return g * base + (1 - g) * part


def _part_numpy(params, prefix, idx):
    if f"{prefix}_prompts" in params:
        return params[f"{prefix}_prompts"][idx]
    return params[f"{prefix}_cols"][idx] @ params[f"{prefix}_rows"][idx]


@pytest.mark.parametrize(
    "group_composition,task_composition,group_rank,task_rank",
    [
        ("hadamard", "hadamard", 1, 1),
        ("add", "concat", None, 2),
        ("weighted", "gated", 2, None),
        ("concat", "add", 1, None),
    ],
)
def test_hierarchical_prompt_matches_formula(
    group_composition, task_composition, group_rank, task_rank
):
    module = HierarchicalPrompt(
        task_groups=GROUPS, length=L, embed_dim=D, group_composition=group_composition,
        task_composition=task_composition, group_rank=group_rank, task_rank=task_rank,
        group_length=2 if group_composition == "concat" else None,
        task_length=3 if task_composition == "concat" else None,
    )  # fmt: skip
    variables = jax.eval_shape(module.init, jax.random.key(0), IDS, None)
    names = _names(variables)
    group_key = "group_prompts" if group_rank is None else "group_cols"
    assert names[group_key][0] == "groups"
    params = _random_like(nn.unbox(variables)["params"])
    out = np.asarray(module.apply({"params": params}, IDS, None))
    assert out.shape == (len(IDS), module.prompt_length, D)
    expected = []
    for k in IDS:
        g = GROUPS[k]
        mid = _level_numpy(
            group_composition, params["shared"], _part_numpy(params, "group", g), params,
            "group", g,
        )  # fmt: skip
        expected.append(
            _level_numpy(task_composition, mid, _part_numpy(params, "task", k), params, "task", k)
        )
    np.testing.assert_allclose(out, np.stack(expected), rtol=1e-4, atol=1e-4)
    stacked = np.concatenate([module.apply({"params": params}, [k], None) for k in IDS])
    np.testing.assert_allclose(out, stacked, rtol=1e-5, atol=1e-5)


def test_fresh_hierarchical_mpt_starts_at_shared():
    module = HierarchicalPrompt(task_groups=GROUPS, length=L, embed_dim=D, group_rank=2)
    variables = module.init(jax.random.key(0), IDS, None)
    shared = nn.unbox(variables)["params"]["shared"]
    out = module.apply(variables, IDS, None)
    np.testing.assert_allclose(out, np.broadcast_to(shared, out.shape), atol=1e-3)


def test_hierarchical_bad_groups_are_named():
    with pytest.raises(ValueError, match=r"task 1 has group id 5, out of range \[0, 2\)"):
        HierarchicalPrompt(task_groups=(0, 5), num_groups=2, length=L, embed_dim=D)
    with pytest.raises(ValueError, match=r"groups \[1\] hold no task"):
        HierarchicalPrompt(task_groups=(0, 2), length=L, embed_dim=D)
    with pytest.raises(ValueError, match="task_composition 'attention' cannot be a level"):
        HierarchicalPrompt(
            task_groups=(0,), length=L, embed_dim=D, task_composition=OBJECTS["attention"]
        )
    with pytest.raises(ValueError, match="'add' needs equal lengths"):
        HierarchicalPrompt(
            task_groups=(0,), length=L, embed_dim=D, group_composition="add", group_length=2
        )
    module = HierarchicalPrompt(task_groups=GROUPS, length=L, embed_dim=D)
    with pytest.raises(ValueError, match="task id 3 out of range"):
        module.init(jax.random.key(0), np.array([3]), None)


def test_gin_builds_generators_from_the_docstring_bindings():
    import gin

    gin.clear_config()
    try:
        gin.parse_config(
            """
            prompts.MultitaskPrompt.num_tasks = 2
            prompts.MultitaskPrompt.length = 3
            prompts.MultitaskPrompt.embed_dim = 4
            prompts.MultitaskPrompt.num_ranks = 2
            prompts.MultitaskPrompt.shared_init = @prompts.constant()
            prompts.constant.value = 0.25
            prompts.ComposedPrompt.composition = @compositions.Add()
            """
        )
        module = MultitaskPrompt()
        assert (module.num_tasks, module.length, module.num_ranks) == (2, 3, 2)
        variables = module.init(jax.random.key(0), np.array([0, 1]), None)
        np.testing.assert_array_equal(nn.unbox(variables)["params"]["shared"], 0.25)
        composed = ComposedPrompt(num_tasks=2, length=3, embed_dim=4)
        assert composed.composition == comp.Add()
    finally:
        gin.clear_config()
