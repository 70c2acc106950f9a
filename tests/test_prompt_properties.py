"""Hypothesis properties over generator configurations and mixed-task batches.

Kept fast: tiny sizes, few examples, eager execution (no jit per example).
"""

import flax.linen as nn
import jax
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from mpt_jax.prompts import (
    ComposedPrompt,
    HierarchicalPrompt,
    MultitaskPrompt,
    compositions,
)

SETTINGS = settings(max_examples=25, deadline=None, derandomize=True)


@st.composite
def generator_and_batch(draw):
    """A random generator configuration and a batch of task ids mixing its tasks."""
    kind = draw(st.sampled_from(["mpt", "composed", "hierarchical"]))
    # few distinct sizes, so eager op compilations are reused across examples
    length = draw(st.sampled_from([1, 3]))
    dim = draw(st.sampled_from([2, 4]))
    rank = draw(st.sampled_from([None, 1, 2, 3]))
    if kind == "mpt":
        tasks = draw(st.integers(1, 4))
        module = MultitaskPrompt(tasks, length, dim, num_ranks=rank or 1)
    elif kind == "composed":
        tasks = draw(st.integers(1, 4))
        composition = draw(st.sampled_from(compositions.COMPOSITIONS))
        if composition == "attention":
            composition = compositions.Attention(pool_size=draw(st.sampled_from([1, 2])), hidden=2)
        module = ComposedPrompt(
            tasks, length, dim, composition=composition, task_rank=rank,
            task_length=draw(st.sampled_from([1, 2])) if composition == "concat" else None,
        )  # fmt: skip
    else:
        groups = draw(st.integers(1, 3))
        extra = draw(st.lists(st.integers(0, groups - 1), max_size=3))
        task_groups = tuple(range(groups)) + tuple(extra)  # every group used
        group_comp, task_comp = (
            draw(st.sampled_from(["hadamard", "add", "concat", "weighted", "gated"]))
            for _ in range(2)
        )
        module = HierarchicalPrompt(
            task_groups, length, dim, group_composition=group_comp, task_composition=task_comp,
            group_rank=rank, task_rank=draw(st.sampled_from([None, 1, 2])),
            group_length=draw(st.sampled_from([1, 2])) if group_comp == "concat" else None,
            task_length=draw(st.sampled_from([1, 2])) if task_comp == "concat" else None,
        )  # fmt: skip
        tasks = len(task_groups)
    batch = draw(st.integers(1, 3))
    ids = np.asarray(draw(st.lists(st.integers(0, tasks - 1), min_size=batch, max_size=batch)))
    seq = draw(st.sampled_from([1, 3]))
    return module, ids.astype(np.int32), seq


@SETTINGS
@given(generator_and_batch(), st.integers(0, 2**16))
def test_output_shape_and_mixed_batch_equals_stacked_per_task(case, seed):
    module, ids, seq = case
    rng = np.random.default_rng(seed)
    dim = module.embed_dim
    x = rng.normal(size=(len(ids), seq, dim)).astype(np.float32)
    mask = (np.arange(seq)[None] < rng.integers(1, seq + 1, size=(len(ids), 1))).astype(np.int32)
    # shapes only (no RNG compilation per configuration); values drawn with numpy
    shapes = jax.eval_shape(module.init, jax.random.key(0), ids, x, mask)
    params = jax.tree.map(
        lambda a: rng.normal(size=a.shape).astype(np.float32), nn.unbox(shapes)["params"]
    )
    out = np.asarray(module.apply({"params": params}, ids, x, mask))
    assert out.shape == (len(ids), module.prompt_length, dim)
    assert np.isfinite(out).all()
    for b, k in enumerate(ids):
        single = module.apply({"params": params}, ids[b : b + 1], x[b : b + 1], mask[b : b + 1])
        np.testing.assert_allclose(out[b], single[0], rtol=1e-5, atol=1e-5, err_msg=f"task {k}")


@SETTINGS
@given(
    # (tasks, length, embed, rank): a few shapes, since each new one compiles the RNG
    st.sampled_from([(1, 2, 3, 1), (3, 5, 4, 2), (2, 3, 4, 4), (4, 1, 2, 3)]),
    st.integers(0, 2**16),
)
def test_fresh_mpt_prompt_is_the_shared_prompt(sizes, seed):
    tasks, length, dim, rank = sizes
    module = MultitaskPrompt(tasks, length, dim, num_ranks=rank)
    ids = np.arange(tasks, dtype=np.int32)
    variables = module.init(jax.random.key(seed), ids, None)
    params = nn.unbox(variables)["params"]
    w = np.asarray(params["task_cols"]) @ np.asarray(params["task_rows"])
    assert np.abs(w - 1).max() < 2e-3
    out = module.apply(variables, ids, None)
    shared = np.asarray(params["shared"])
    np.testing.assert_allclose(out, np.broadcast_to(shared, out.shape), atol=1e-3)


@SETTINGS
@given(
    st.integers(1, 2), st.sampled_from([1, 3]), st.sampled_from([1, 2]), st.sampled_from([2, 4]),
    st.data(),
)  # fmt: skip
def test_composition_limits(batch, length, task_length, dim, data):
    """concat lengths add; weighted at 0/1 and a saturated gate select one part."""
    rng = np.random.default_rng(data.draw(st.integers(0, 99)))
    shared = rng.normal(size=(length, dim)).astype(np.float32)
    task = rng.normal(size=(batch, length, dim)).astype(np.float32)
    short = rng.normal(size=(batch, task_length, dim)).astype(np.float32)
    joined = np.asarray(compositions.concat(shared, short))
    assert joined.shape == (batch, length + task_length, dim)
    np.testing.assert_array_equal(joined[:, :length], np.broadcast_to(shared, task.shape))
    np.testing.assert_array_equal(joined[:, length:], short)
    ones, zeros = np.ones(batch, np.float32), np.zeros(batch, np.float32)
    np.testing.assert_allclose(compositions.weighted(shared, task, ones), task, atol=1e-6)
    np.testing.assert_allclose(
        compositions.weighted(shared, task, zeros), np.broadcast_to(shared, task.shape), atol=1e-6
    )
    kernel = np.zeros((2, dim), np.float32)
    np.testing.assert_allclose(
        compositions.gated(shared, task, kernel, np.float32(50.0)),
        np.broadcast_to(shared, task.shape),
        atol=1e-6,
    )
    np.testing.assert_allclose(
        compositions.gated(shared, task, kernel, np.float32(-50.0)), task, atol=1e-6
    )
