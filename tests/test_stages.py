"""Stages: target/SPoT initialisation from a source checkpoint gives the expected prompt,
teachers train independently per task, task-id mappings are checked, backbones load."""

import dataclasses
import os

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mpt_jax.backbone import get_config
from mpt_jax.data.task_ids import TaskIndexError
from mpt_jax.prompts.generators import HierarchicalPrompt, MultitaskPrompt
from mpt_jax.runner import backbone_loading, stages
from mpt_jax.training import TrainState, make_optimizer
from mpt_jax.training.checkpoints import Checkpointer

SOURCE_TASKS = ("s1", "s2", "s3")
L, D = 4, 32


@pytest.fixture(scope="module")
def config():
    return get_config("tiny")


@pytest.fixture(scope="module")
def backbone(config):
    return backbone_loading.random_backbone(config, seed=0)


def ctx_for(config, backbone, names, seed=0):
    return stages.StageContext(task_names=tuple(names), config=config, backbone=backbone,
                               seed=seed)  # fmt: skip


def _save_run(directory, params, names):
    ckpt = Checkpointer(directory)
    state = TrainState.create(jax.tree.map(jnp.asarray, params), make_optimizer())
    assert ckpt.save(state.replace(step=jnp.asarray(5)), data_position=5, task_names=names,
                     backbone="random:0")  # fmt: skip
    ckpt.close()


@pytest.fixture(scope="module")
def source_dir(tmp_path_factory):
    rng = np.random.default_rng(0)
    params = {
        "shared": rng.normal(size=(L, D)).astype(np.float32),
        "task_cols": rng.normal(size=(3, L, 1)).astype(np.float32),
        "task_rows": rng.normal(size=(3, 1, D)).astype(np.float32),
    }
    directory = str(tmp_path_factory.mktemp("source"))
    _save_run(directory, params, SOURCE_TASKS)
    return directory, params


@pytest.fixture(autouse=True, scope="module")
def prompt_length():
    import gin

    with gin.unlock_config():
        gin.bind_parameter("prompts.MultitaskPrompt.length", L)
        gin.bind_parameter("prompts.SinglePrompt.length", L)
        gin.bind_parameter("prompts.TaskPrompts.length", L)
    yield
    gin.clear_config()


def _prompt(params, k):
    return params["shared"] * (params["task_cols"][k] @ params["task_rows"][k])


def test_target_average_init_is_the_rank_r_average_of_source_task_matrices(
    config, backbone, source_dir
):
    directory, src = source_dir
    st = stages.target(ctx_for(config, backbone, ["t1", "t2"]), stages.load_source(directory))
    got = st.params
    mean = np.mean([src["task_cols"][k] @ src["task_rows"][k] for k in range(3)], axis=0)
    u, s, vt = np.linalg.svd(mean.astype(np.float64))
    best = s[0] * np.outer(u[:, 0], vt[0])  # the best rank-1 approximation of the average
    np.testing.assert_array_equal(got["shared"], src["shared"])
    assert got["task_cols"].shape == (2, L, 1) and got["task_rows"].shape == (2, 1, D)
    for t in range(2):
        np.testing.assert_allclose(got["task_cols"][t] @ got["task_rows"][t], best, rtol=1e-4,
                                   atol=1e-5)  # fmt: skip
    # Averaging a chosen subset, by name.
    st = stages.target(ctx_for(config, backbone, ["t1"]), stages.load_source(directory),
                       source_tasks=["s1", "s3"])  # fmt: skip
    got = st.params
    mean = np.mean([src["task_cols"][k] @ src["task_rows"][k] for k in (0, 2)], axis=0)
    u, s, vt = np.linalg.svd(mean.astype(np.float64))
    np.testing.assert_allclose(got["task_cols"][0] @ got["task_rows"][0],
                               s[0] * np.outer(u[:, 0], vt[0]), rtol=1e-4, atol=1e-5)  # fmt: skip


def test_target_exact_init_by_task_name(config, backbone, source_dir):
    directory, src = source_dir
    source = stages.load_source(directory)
    st = stages.target(ctx_for(config, backbone, ["s3", "s1"]), source, init="exact")
    got = st.params
    for t, k in enumerate((2, 0)):  # each target task starts from its namesake
        np.testing.assert_allclose(_prompt(got, t), _prompt(src, k), rtol=1e-6)
    st = stages.target(ctx_for(config, backbone, ["new"]), source, init="exact", source_task="s2")
    np.testing.assert_allclose(_prompt(st.params, 0), _prompt(src, 1), rtol=1e-6)
    with pytest.raises(TaskIndexError, match="new"):
        stages.target(ctx_for(config, backbone, ["new"]), source, init="exact")


def test_target_shared_only_and_fresh(config, backbone, source_dir):
    directory, src = source_dir
    got = stages.target(ctx_for(config, backbone, ["t"]), stages.load_source(directory),
                        init="shared_only").params  # fmt: skip
    np.testing.assert_array_equal(got["shared"], src["shared"])
    np.testing.assert_allclose(got["task_cols"][0] @ got["task_rows"][0], 1.0, atol=0.05)
    fresh = stages.target(ctx_for(config, backbone, ["t"]), init="fresh").params
    assert not np.allclose(fresh["shared"], src["shared"])
    with pytest.raises(ValueError, match="'nope'"):
        stages.target(ctx_for(config, backbone, ["t"]), init="nope")


def test_spot_starts_from_a_source_task_prompt(config, backbone, source_dir):
    directory, src = source_dir
    source = stages.load_source(directory)
    st = stages.spot(ctx_for(config, backbone, ["t"]), source, source_task="s2")
    np.testing.assert_allclose(st.params["shared"], _prompt(src, 1), rtol=1e-6)
    st = stages.spot(ctx_for(config, backbone, ["t"]), source)
    np.testing.assert_array_equal(st.params["shared"], src["shared"])
    assert st.meta["source_dir"] == directory


def test_source_refuses_teachers_of_other_tasks(config, backbone, tmp_path):
    teacher = {"task_prompts": np.ones((2, L, D), np.float32)}
    _save_run(str(tmp_path), teacher, ("a", "b"))
    teachers = stages.load_source(str(tmp_path))
    with pytest.raises(TaskIndexError, match="'a'"):
        stages.source(ctx_for(config, backbone, ["b", "a"]), teachers)
    st = stages.source(ctx_for(config, backbone, ["a", "b"]), teachers)
    assert isinstance(st.prompt, MultitaskPrompt) and st.prompt.num_tasks == 2
    np.testing.assert_array_equal(st.frozen["teacher_prompt"]["task_prompts"], 1.0)
    assert st.meta["distill"] and st.meta["teacher_dir"] == str(tmp_path)
    alone = stages.source(ctx_for(config, backbone, ["a", "b"]), None)
    assert not alone.frozen and alone.meta["distill"] is False
    with pytest.raises(ValueError, match="not a teacher run"):
        stages.source(ctx_for(config, backbone, ["a"]), stages.SourcePrompt(
            {"shared": np.ones((L, D))}, ("a",)))  # fmt: skip


def test_prompt_tuning_vocab_init_uses_embedding_rows(config, backbone):
    st = stages.prompt_tuning(ctx_for(config, backbone, ["t"]), init="vocab", num_vocab_ids=50)
    prompt = st.params["shared"]
    table = backbone["token_embedder"]["embedding"][:50]
    for row in prompt:
        assert np.min(np.abs(table - row).max(-1)) == 0.0


def test_generator_task_count_must_match_the_mapping(config, backbone):
    with pytest.raises(ValueError, match="3 tasks"):
        stages.build_generator(
            HierarchicalPrompt,
            ctx_for(config, backbone, ["a", "b"]),
            task_groups=(0, 0, 1),
            length=L,
        )
    with pytest.raises(TypeError, match="'init'"):
        stages.build_generator(MultitaskPrompt, ctx_for(config, backbone, ["a"]), init=None)


def test_backbone_loads_from_msgpack_and_safetensors(config, backbone, tmp_path):
    from safetensors.numpy import save_file

    path = str(tmp_path / "b.msgpack")
    with open(path, "wb") as f:
        f.write(flax.serialization.msgpack_serialize({"params": backbone}))
    _, loaded, ref = backbone_loading.load_backbone(config, path)
    jax.tree.map(np.testing.assert_array_equal, loaded, backbone)
    assert ref == os.path.abspath(path)
    flat = {"/".join(str(k.key) for k in p): np.asarray(v)
            for p, v in jax.tree_util.tree_leaves_with_path(backbone)}  # fmt: skip
    save_file(flat, str(tmp_path / "b.safetensors"))
    _, loaded, _ = backbone_loading.load_backbone(config, str(tmp_path / "b.safetensors"))
    jax.tree.map(np.testing.assert_array_equal, loaded, backbone)
    bigger = dataclasses.replace(config, mlp_dim=config.mlp_dim * 2)
    with pytest.raises(ValueError, match="mlp/wi_0/kernel"):
        backbone_loading.load_backbone(bigger, path)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        backbone_loading.load_backbone(config, str(tmp_path / "nowhere.msgpack"))
    import orbax.checkpoint as ocp

    orbax_dir = str(tmp_path / "orbax_backbone")
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(orbax_dir, backbone)
    checkpointer.wait_until_finished()
    _, loaded, _ = backbone_loading.load_backbone(config, orbax_dir)
    jax.tree.map(np.testing.assert_array_equal, loaded, backbone)
    _, random_params, ref = backbone_loading.load_backbone(config, "random:0")
    assert ref == "random:0"
    jax.tree.map(np.testing.assert_array_equal, random_params, backbone)


def test_backbone_from_a_hugging_face_directory(tmp_path):
    """``hf:<dir>``: the config comes from its config.json and the tree passes the checks."""
    transformers = pytest.importorskip("transformers")
    hf_config = transformers.T5Config(
        vocab_size=64, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_decoder_layers=1,
        num_heads=2, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
    )  # fmt: skip
    model = transformers.T5ForConditionalGeneration(hf_config)
    model.save_pretrained(str(tmp_path), safe_serialization=True)
    config, params, ref = backbone_loading.load_backbone(None, f"hf:{tmp_path}")
    assert (config.vocab_size, config.emb_dim, config.num_heads) == (64, 16, 2)
    embedding = model.shared.weight.detach().numpy()
    np.testing.assert_array_equal(params["token_embedder"]["embedding"], embedding)
    assert ref == str(tmp_path)
