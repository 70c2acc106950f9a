"""Initialisers and source-checkpoint initialisation, against numpy."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mpt_jax.prompts import MultitaskPrompt
from mpt_jax.prompts import initializers as inits
from mpt_jax.prompts.source_init import init_from_source, truncated_factors

KEY = jax.random.key(0)
VOCAB = np.arange(40, dtype=np.float32).reshape(10, 4)  # row i = [4i, 4i+1, 4i+2, 4i+3]


def test_uniform_normal_constant():
    u = np.asarray(inits.uniform(0.3)(KEY, (200, 4)))
    assert u.shape == (200, 4) and u.min() >= -0.3 and u.max() < 0.3 and u.std() > 0.1
    n = np.asarray(inits.normal(0.02)(KEY, (500, 8)))
    assert abs(n.std() - 0.02) < 0.002
    np.testing.assert_array_equal(inits.constant(2.0)(KEY, (2, 3)), np.full((2, 3), 2.0))
    c = np.asarray(inits.constant(1.0, 0.01)(KEY, (100, 10)))
    assert abs(c.mean() - 1.0) < 0.01 and 0.005 < c.std() < 0.02
    assert inits.uniform()(KEY, (2, 2), jnp.bfloat16).dtype == jnp.bfloat16


def test_ones_factors_multiply_to_one_and_differ_across_rank():
    cols = np.asarray(inits.ones_factor_cols(1e-2)(KEY, (3, 5, 4)))
    rows = np.asarray(inits.ones_factor_rows(1e-2)(jax.random.key(1), (3, 4, 6)))
    w = cols @ rows
    assert np.abs(w - 1).max() < 1e-3  # the first-order terms cancel
    assert np.abs(cols[..., 0] - cols[..., 1]).max() > 1e-3
    np.testing.assert_allclose(cols.mean(axis=-1), 1.0, atol=1e-6)
    rank1 = np.asarray(inits.ones_factor_cols(1e-2)(KEY, (2, 5, 1)))
    np.testing.assert_array_equal(rank1, np.ones((2, 5, 1)))


def test_sampled_vocabulary_uses_table_rows_from_the_first_ids(tmp_path):
    out = np.asarray(inits.from_sampled_vocab(VOCAB, num_ids=3)(KEY, (2, 50, 4)))
    ids = out[..., 0] / 4
    np.testing.assert_array_equal(out, VOCAB[ids.astype(int)])
    assert set(np.unique(ids)) == {0.0, 1.0, 2.0}
    path = tmp_path / "emb.npy"
    np.save(path, VOCAB)
    from_file = inits.from_sampled_vocab(str(path))(KEY, (6, 4))
    assert np.isin(np.asarray(from_file)[:, 0] / 4, np.arange(10)).all()
    with pytest.raises(ValueError, match=r"num_ids=11 out of range \[1, 10\]"):
        inits.from_sampled_vocab(VOCAB, num_ids=11)
    with pytest.raises(ValueError, match=r"shape \(6, 5\) from embeddings of size 4"):
        inits.from_sampled_vocab(VOCAB)(KEY, (6, 5))


def test_text_repeats_with_an_explicit_rule_and_never_crops_silently():
    out = np.asarray(inits.from_text(VOCAB, [3, 1])(KEY, (5, 4)))
    np.testing.assert_array_equal(out, VOCAB[[3, 1, 3, 1, 3]])
    tasks = np.asarray(inits.from_text(VOCAB, [2, 7, 9])(KEY, (2, 3, 4)))
    np.testing.assert_array_equal(tasks, np.stack([VOCAB[[2, 7, 9]]] * 2))
    with pytest.raises(ValueError, match="the text gives 3 positions but the prompt has length 2"):
        inits.from_text(VOCAB, [2, 7, 9])(KEY, (2, 4))
    cropped = inits.from_text(VOCAB, [2, 7, 9], if_long="crop")(KEY, (2, 4))
    np.testing.assert_array_equal(cropped, VOCAB[[2, 7]])
    with pytest.raises(ValueError, match="gives 1 positions but the prompt has length 2"):
        inits.from_text(VOCAB, [2], if_short="error")(KEY, (2, 4))
    with pytest.raises(ValueError, match=r"token id 10 out of range \[0, 10\)"):
        inits.from_text(VOCAB, [1, 10])


def test_class_labels_average_each_labels_tokens():
    init = inits.from_class_labels(VOCAB, [[1, 3], [5]], rest_init=inits.constant(-1.0))
    out = np.asarray(init(KEY, (4, 4)))
    np.testing.assert_allclose(out[0], (VOCAB[1] + VOCAB[3]) / 2)
    np.testing.assert_allclose(out[1], VOCAB[5])
    np.testing.assert_array_equal(out[2:], -1.0)
    with pytest.raises(ValueError, match="2 class labels do not fit in a prompt of length 1"):
        init(KEY, (1, 4))
    with pytest.raises(ValueError, match=r"label 1: token id 12 out of range"):
        inits.from_class_labels(VOCAB, [[1], [12]])


def test_npy_file_shape_is_checked(tmp_path):
    path = tmp_path / "prompt.npy"
    array = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
    np.save(path, array)
    np.testing.assert_array_equal(inits.from_npy(str(path))(KEY, (3, 4)), array)
    with pytest.raises(ValueError, match=r"prompt.npy' holds shape \(3, 4\) but .* \(5, 4\)"):
        inits.from_npy(str(path))(KEY, (5, 4))
    with pytest.raises(FileNotFoundError, match="missing.npy"):
        inits.from_npy(str(tmp_path / "missing.npy"))(KEY, (3, 4))


def test_initializer_plugs_into_a_generator():
    module = MultitaskPrompt(
        num_tasks=2, length=3, embed_dim=4, shared_init=inits.from_text(VOCAB, [4, 5, 6])
    )
    variables = module.init(KEY, np.array([0, 1]), None)
    np.testing.assert_array_equal(nn.unbox(variables)["params"]["shared"], VOCAB[[4, 5, 6]])


# --- source-checkpoint initialisation -----------------------------------------------------

TS, L, D, RS = 3, 5, 7, 1


@pytest.fixture(scope="module")
def source():
    rng = np.random.default_rng(0)
    return {
        "shared": rng.normal(size=(L, D)).astype(np.float32),
        "task_cols": rng.normal(size=(TS, L, RS)).astype(np.float32),
        "task_rows": rng.normal(size=(TS, RS, D)).astype(np.float32),
    }


def test_average_is_the_truncated_svd_of_the_mean_task_matrix(source):
    u, v = source["task_cols"].astype(np.float64), source["task_rows"].astype(np.float64)
    mean_w = np.mean(u @ v, axis=0)
    left, s, right = np.linalg.svd(mean_w)
    for rank in (1, 2, 3):
        target = init_from_source(source, "average", num_target_tasks=4, rank=rank)
        assert target["task_cols"].shape == (4, L, rank)
        assert target["task_rows"].shape == (4, rank, D)
        np.testing.assert_array_equal(target["shared"], source["shared"])
        best = (left[:, :rank] * s[:rank]) @ right[:rank]
        w = target["task_cols"] @ target["task_rows"]
        for k in range(4):
            np.testing.assert_allclose(w[k], best, rtol=1e-4, atol=1e-5)
    # three rank-1 source tasks average to a rank-3 matrix: recovered exactly at rank 3
    np.testing.assert_allclose(w[0], mean_w, rtol=1e-4, atol=1e-5)
    peft_name = init_from_source(source, "AVERAGE_SOURCE_TASKS", rank=3)
    np.testing.assert_array_equal(peft_name["task_cols"], target["task_cols"][:1])
    # and it is not mean(U) · mean(V) (PEFT's AVERAGE_SOURCE_TASKS)
    peft_style = u.mean(axis=0) @ v.mean(axis=0)
    assert np.abs(peft_style - mean_w).max() > 0.1


def test_average_of_chosen_source_tasks(source):
    target = init_from_source(source, "average", source_tasks=[0, 2], rank=2)
    u, v = source["task_cols"], source["task_rows"]
    expected = (u[0] @ v[0] + u[2] @ v[2]) / 2
    w = target["task_cols"][0] @ target["task_rows"][0]
    np.testing.assert_allclose(w, expected, rtol=1e-4, atol=1e-5)


def test_exact_copies_a_source_task_for_every_target_task(source):
    target = init_from_source(source, "exact", source_task=2, num_target_tasks=3)
    for k in range(3):
        np.testing.assert_array_equal(target["task_cols"][k], source["task_cols"][2])
        np.testing.assert_array_equal(target["task_rows"][k], source["task_rows"][2])
    higher = init_from_source(source, "exact", source_task=1, rank=2)
    w = higher["task_cols"][0] @ higher["task_rows"][0]
    np.testing.assert_allclose(w, source["task_cols"][1] @ source["task_rows"][1], atol=1e-5)
    # the extra (zero singular value) component keeps a trainable, non-zero row factor
    assert np.abs(higher["task_rows"][0, 1]).max() > 0.1
    np.testing.assert_array_equal(higher["task_cols"][0, :, 1], 0.0)
    with pytest.raises(ValueError, match=r"source_task 3 out of range \[0, 3\)"):
        init_from_source(source, "exact", source_task=3)


def test_shared_only_copies_shared_with_fresh_factors_near_one(source):
    module = MultitaskPrompt(num_tasks=2, length=L, embed_dim=D, num_ranks=3)
    template = jax.eval_shape(module.init, KEY, np.array([0, 1]), None)["params"]
    target = init_from_source(source, "shared_only", template=template)
    assert target["task_cols"].shape == (2, L, 3) and target["task_rows"].shape == (2, 3, D)
    np.testing.assert_array_equal(target["shared"], source["shared"])
    assert np.abs(target["task_cols"] @ target["task_rows"] - 1).max() < 1e-3
    prompt = module.apply({"params": target}, np.array([1, 0]), None)
    np.testing.assert_allclose(prompt, np.broadcast_to(source["shared"], (2, L, D)), atol=1e-3)


def test_source_shape_mismatches_name_both_shapes(source):
    module = MultitaskPrompt(num_tasks=1, length=L + 1, embed_dim=D)
    template = jax.eval_shape(module.init, KEY, np.array([0]), None)["params"]
    with pytest.raises(ValueError, match=r"shape \(5, 7\) but the target needs \(6, 7\)"):
        init_from_source(source, "average", template=template)
    bad = dict(source, task_rows=source["task_rows"][:, :, :3])
    with pytest.raises(ValueError, match=r"task_rows \(3, 1, 3\)"):
        init_from_source(bad, "average")
    with pytest.raises(ValueError, match="unknown method 'mean'"):
        init_from_source(source, "mean")
    with pytest.raises(ValueError, match="num_target_tasks must be at least 1, got 0"):
        init_from_source(source, "average", num_target_tasks=0)
    with pytest.raises(ValueError, match=r"rank 9 out of range \[1, 5\]"):
        init_from_source(source, "average", rank=9)
    with pytest.raises(ValueError, match=r"source task 4 out of range"):
        init_from_source(source, "average", source_tasks=[0, 4])


def test_truncated_factors_balance_the_singular_values():
    m = np.diag([4.0, 1.0, 0.0])
    u, v = truncated_factors(m, 2)
    np.testing.assert_allclose(np.abs(u[:2, :2]), np.diag([2.0, 1.0]), atol=1e-12)
    np.testing.assert_allclose(u @ v, np.diag([4.0, 1.0, 0.0]), atol=1e-12)
