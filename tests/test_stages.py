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


def _batch(rng, task_ids, vocab, inputs=6, targets=3):
    n = len(task_ids)
    target = rng.integers(1, vocab, size=(n, targets)).astype(np.int32)
    return {
        "encoder_input_tokens": rng.integers(1, vocab, size=(n, inputs)).astype(np.int32),
        "decoder_target_tokens": target,
        "decoder_input_tokens": np.pad(target[:, :-1], ((0, 0), (1, 0))),
        "decoder_loss_weights": np.ones((n, targets), np.float32),
        "task_ids": np.asarray(task_ids, np.int32),
    }


def _train(stage, backbone, batches):
    from mpt_jax.training.step import train_step_fn

    step = jax.jit(train_step_fn(stage.loss_fn, stage.optimizer))
    state = TrainState.create(jax.tree.map(jnp.asarray, stage.params), stage.optimizer)
    frozen = {"backbone": backbone, **stage.frozen}
    for batch in batches:
        state, _ = step(state, frozen, batch, jax.random.key(0))
    return jax.tree.map(np.asarray, state.params)


def test_teacher_row_on_a_mixture_equals_its_task_trained_alone(config, backbone):
    """`stages.teacher` equals separate runs: task a's row, trained on a mixture where a is
    in steps 0 and 2 of 4, equals a trained alone on just those steps' a-examples; task c,
    absent from every batch, keeps its row bit for bit (no weight decay)."""
    config = dataclasses.replace(config, dropout_rate=0.0)
    rng = np.random.default_rng(0)
    mixed = stages.teacher(ctx_for(config, backbone, ["a", "b", "c"]))
    alone = stages.teacher(ctx_for(config, backbone, ["a"]))
    table = mixed.params["task_prompts"]
    alone = dataclasses.replace(alone, params={"task_prompts": table[:1]})
    mixture, own = [], []
    for step in range(4):
        a = _batch(rng, [0, 0], config.vocab_size)
        b = _batch(rng, [1, 1, 1], config.vocab_size)
        parts = [a, b] if step % 2 == 0 else [b]
        mixture.append({k: np.concatenate([p[k] for p in parts]) for k in a})
        if step % 2 == 0:
            own.append(a)
    got, want = _train(mixed, backbone, mixture), _train(alone, backbone, own)
    # Equal up to float rounding (the batches differ in size; each step moves a row ~0.3).
    np.testing.assert_allclose(got["task_prompts"][0], want["task_prompts"][0], rtol=1e-4,
                               atol=1e-5)  # fmt: skip
    assert not np.allclose(got["task_prompts"][0], table[0])
    assert not np.allclose(got["task_prompts"][1], table[1])
    np.testing.assert_array_equal(got["task_prompts"][2], table[2])


def test_source_stage_without_teachers_is_the_task_loss_and_with_them_distils(config, backbone):
    from mpt_jax.training.objectives import Distillation

    rng = np.random.default_rng(0)
    ctx = ctx_for(config, backbone, ["a", "b"])
    teachers = stages.SourcePrompt({"task_prompts": rng.normal(size=(2, L, D))}, ("a", "b"))
    plain = stages.source(ctx, None)
    distilled = stages.source(ctx, teachers, distillation=Distillation(weight=0.5))
    batch = _batch(rng, [0, 1], config.vocab_size)
    frozen = {"backbone": backbone}
    loss, _ = plain.loss_fn(plain.params, frozen, batch, None)
    dl, m = distilled.loss_fn(distilled.params, {**frozen, **distilled.frozen}, batch, None)
    np.testing.assert_allclose(m["task_loss"], loss, rtol=1e-6)
    np.testing.assert_allclose(dl, m["task_loss"] + 0.5 * (m["kl"] + m["mse"]), rtol=1e-6)
    assert distilled.meta["distillation"]["weight"] == 0.5


def test_spot_and_target_rescale_the_source_prompt(config, backbone, source_dir):
    from mpt_jax.prompts.source_init import Rescale, prompt_rms

    directory, src = source_dir
    source = stages.load_source(directory)
    ctx = ctx_for(config, backbone, ["t"])
    table = np.asarray(backbone["token_embedder"]["embedding"], np.float64)
    emb_rms = np.sqrt(np.mean(table**2))
    st = stages.spot(ctx, source, source_task="s2", rescale=Rescale("embeddings"))
    np.testing.assert_allclose(prompt_rms(st.params), emb_rms, rtol=1e-5)
    start = _prompt(src, 1)
    ratio = st.params["shared"] / start  # the direction is kept: one factor everywhere
    np.testing.assert_allclose(ratio, emb_rms / np.sqrt(np.mean(start.astype(np.float64) ** 2)),
                               rtol=1e-4)  # fmt: skip
    fresh = stages.target(ctx, init="fresh").params
    got = stages.target(ctx, source, init="exact", source_task="s1", rescale=Rescale("fresh"))
    np.testing.assert_allclose(prompt_rms(got.params), prompt_rms(fresh), rtol=1e-5)
    np.testing.assert_array_equal(got.params["task_cols"][0], src["task_cols"][0])
    assert got.meta["rescale"] == "fresh"
    off = stages.target(ctx, source, init="exact", source_task="s1", rescale=Rescale("off"))
    np.testing.assert_array_equal(off.params["shared"], src["shared"])


def test_prompt_fields_override_the_gin_bindings_and_a_key_seeds_like_an_int(config, backbone):
    ctx = ctx_for(config, backbone, ["a", "b"], seed=3)
    st = stages.source(ctx, prompt_fields={"length": 6, "num_ranks": 2})
    assert st.params["task_cols"].shape == (2, 6, 2) and st.prompt.length == 6
    assert stages.teacher(ctx).params["task_prompts"].shape == (2, L, D)  # gin: L
    keyed = stages.source(dataclasses.replace(ctx, seed=jax.random.key(3)),
                          prompt_fields={"length": 6, "num_ranks": 2})  # fmt: skip
    jax.tree.map(np.testing.assert_array_equal, keyed.params, st.params)
    with pytest.raises(TypeError, match="no field"):
        stages.teacher(ctx, prompt_fields={"lenght": 6})


def test_run_group_stacks_runs_of_one_stage_and_refuses_other_models(config, backbone):
    rng = np.random.default_rng(0)
    ctx = ctx_for(config, backbone, ["a", "b"])
    tables = [rng.normal(size=(2, L, D)).astype(np.float32) for _ in range(3)]
    runs = [stages.source(dataclasses.replace(ctx, seed=s),
                          stages.SourcePrompt({"task_prompts": t}, ("a", "b")))
            for s, t in enumerate(tables)]  # fmt: skip
    group, params, per_run = stages.run_group(runs)
    assert group.loss_fn is runs[0].loss_fn and group.optimizer is runs[0].optimizer
    for r, run in enumerate(runs):
        np.testing.assert_array_equal(params["task_cols"][r], run.params["task_cols"])
        np.testing.assert_array_equal(per_run["teacher_prompt"]["task_prompts"][r], tables[r])
    with pytest.raises(ValueError, match="share the stage's model"):
        stages.run_group([runs[0], stages.source(ctx, prompt_fields={"length": L + 1})])


def test_mpt_stages_train_the_factors_at_mpt_factor_rates(config, backbone, source_dir):
    """Δθ = -(lr · sign g + wd · θ) on the first step: U, V at MPT_FACTOR_RATES, P at the
    recipe's rate; a recipe naming a factor keeps its rate; gin turns the rates off."""
    import gin

    from mpt_jax.training.optimizers import MPT_FACTOR_RATES, PromptRecipe

    directory, _ = source_dir
    source = stages.load_source(directory)

    def rates(st):
        grads = jax.tree.map(lambda p: np.full_like(p, -1.0), st.params)  # sign g = -1
        updates, _ = st.optimizer.update(grads, st.optimizer.init(st.params), st.params)
        return {k: float(np.mean(u + 1e-5 * np.asarray(st.params[k], np.float64)))
                for k, u in updates.items()}  # fmt: skip

    ctx = ctx_for(config, backbone, ["t"])
    want = {"shared": 0.3, **MPT_FACTOR_RATES}
    for st in (stages.target(ctx, source), stages.source(ctx_for(config, backbone, SOURCE_TASKS))):
        assert rates(st) == pytest.approx(want, rel=1e-5)
    named = PromptRecipe(learning_rates={"task_cols": 0.1})
    got = rates(stages.target(ctx, source, recipe=named))
    assert got == pytest.approx({**want, "task_cols": 0.1}, rel=1e-5)
    assert set(rates(stages.teacher(ctx))) == {"task_prompts"}  # no factors, no factor rates
    with gin.unlock_config():
        gin.bind_parameter("mpt_recipe.factor_rates", {})
    try:
        got = rates(stages.target(ctx, source))
    finally:
        with gin.unlock_config():
            gin.bind_parameter("mpt_recipe.factor_rates", MPT_FACTOR_RATES)  # the default
    assert got == pytest.approx({"shared": 0.3, "task_cols": 0.3, "task_rows": 0.3}, rel=1e-5)
