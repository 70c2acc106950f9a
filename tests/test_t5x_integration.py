"""mpt_jax.t5x_ext against the real T5X (skipped when T5X is not installed).

Every test compares T5X's entry points (``loss_fn``, ``score_batch``,
``predict_batch_with_aux``, ``MultiOptimizer``) on a tiny prompted T5 with a numpy
computation from the module's own logits, so a task id that did not reach the prompt,
or a parameter that trained when it should not, shows up as a wrong number.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("t5x.models", reason="T5X is not installed (not on PyPI)")

import flax  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import seqio  # noqa: E402
from flax import traverse_util  # noqa: E402
from flax.linen import partitioning as flax_partitioning  # noqa: E402
from t5x import adafactor, decoding  # noqa: E402
from t5x import partitioning as t5x_partitioning  # noqa: E402
from t5x import train_state as train_state_lib  # noqa: E402

from mpt_jax import prompts  # noqa: E402
from mpt_jax.backbone import get_config  # noqa: E402
from mpt_jax.model import PromptedT5  # noqa: E402
from mpt_jax.t5x_ext import models, optim, partitioning, target_init  # noqa: E402
from mpt_jax.training.objectives import Distillation  # noqa: E402
from mpt_jax.training.optimizers import PromptRecipe  # noqa: E402

CFG = get_config("tiny")
T, L, R, D = 3, 4, 2, CFG.emb_dim
B, S, TGT = 3, 8, 5
SHAPES = {
    "encoder_input_tokens": (B, S),
    "decoder_input_tokens": (B, TGT),
    "decoder_target_tokens": (B, TGT),
    "task_ids": (B,),
}
TYPES = {"encoder_input_tokens": jnp.int32, "decoder_input_tokens": jnp.int32}


def _flat(tree) -> dict[str, np.ndarray]:
    return {
        "/".join(k): np.asarray(v)
        for k, v in traverse_util.flatten_dict(flax.core.unfreeze(tree)).items()
    }


def _optimizer(prompt=None) -> optim.PlaceholderMultiOptimizer:
    """The T5X runs' optimizer (runs/prompt_model.gin): the project's recipe for ``prompt``."""
    return optim.recipe_optimizer(PromptRecipe(), prompt)


def _t5x_model(module, cls=models.PromptedEncoderDecoderModel, **kwargs):
    vocab = seqio.PassThroughVocabulary(size=CFG.vocab_size)
    kwargs.setdefault("decode_fn", functools.partial(decoding.beam_search, alpha=0.0))
    return cls(module, vocab, vocab, _optimizer(getattr(module, "prompt", None)), **kwargs)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _token_ce(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """``-log p(target)`` per token, ``[batch, length]``, in float64."""
    return -np.take_along_axis(_log_softmax(logits), targets[..., None], -1)[..., 0]


@pytest.fixture(scope="module")
def setup():
    module = PromptedT5(
        config=CFG, prompt=prompts.MultitaskPrompt(num_tasks=T, length=L, embed_dim=D, num_ranks=R)
    )
    model = _t5x_model(module)
    variables = model.get_initial_variables(jax.random.PRNGKey(0), SHAPES, TYPES)
    params = flax.core.unfreeze(variables["params"])
    # Distinct task factors, so that the three tasks' prompts differ clearly.
    rng = np.random.RandomState(1)
    params["prompt"]["task_cols"] = jnp.asarray(rng.normal(0, 1, (T, L, R)), jnp.float32)
    params["prompt"]["task_rows"] = jnp.asarray(rng.normal(0, 1, (T, R, D)), jnp.float32)
    enc = rng.randint(3, CFG.vocab_size, (B, S)).astype(np.int32)
    enc[0, 5:] = 0  # padding
    tgt = rng.randint(3, CFG.vocab_size, (B, TGT)).astype(np.int32)
    tgt[1, 3:] = 0
    batch = {
        "encoder_input_tokens": enc,
        "decoder_target_tokens": tgt,
        "decoder_input_tokens": np.concatenate([np.zeros((B, 1), np.int32), tgt[:, :-1]], 1),
        "decoder_loss_weights": (tgt > 0).astype(np.int32),
        "task_ids": np.array([0, 2, 1], np.int32),
    }
    return module, model, variables, params, batch


def _direct_logits(module, params, batch, task_ids) -> np.ndarray:
    return np.asarray(
        module.apply(
            {"params": params},
            batch["encoder_input_tokens"],
            batch["decoder_input_tokens"],
            batch["decoder_target_tokens"],
            jnp.asarray(task_ids),
            enable_dropout=False,
        )
    )


def test_initial_variables_carry_logical_axes_for_every_parameter(setup):
    _, _, variables, _, _ = setup
    names = flax_partitioning.get_axis_names(variables["params_axes"])
    flat_names = {"/".join(k): v for k, v in traverse_util.flatten_dict(names).items()}
    flat_params = _flat(variables["params"])
    assert set(flat_names) == set(flat_params)
    for path, spec in flat_names.items():
        assert len(tuple(spec)) == flat_params[path].ndim, path
    assert tuple(flat_names["prompt/shared"]) == ("prompt", "embed")
    assert tuple(flat_names["prompt/task_cols"]) == ("tasks", "prompt", "rank")
    assert tuple(flat_names["prompt/task_rows"]) == ("tasks", "rank", "embed")
    assert tuple(flat_names["token_embedder/embedding"]) == ("vocab", "embed")


def test_loss_fn_routes_task_ids(setup):
    module, model, _, params, batch = setup
    loss, _ = model.loss_fn(params, batch, None)
    ce = _token_ce(
        _direct_logits(module, params, batch, batch["task_ids"]), batch["decoder_target_tokens"]
    )
    expected = float((ce * batch["decoder_loss_weights"]).sum())  # T5X: a sum when no normaliser
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
    swapped = {**batch, "task_ids": np.array([1, 0, 2], np.int32)}
    loss_swapped, _ = model.loss_fn(params, swapped, None)
    ce_swapped = _token_ce(_direct_logits(module, params, batch, swapped["task_ids"]),
                           batch["decoder_target_tokens"])  # fmt: skip
    np.testing.assert_allclose(
        float(loss_swapped), float((ce_swapped * batch["decoder_loss_weights"]).sum()), rtol=1e-5
    )
    assert abs(float(loss_swapped) - float(loss)) > 1e-3


def test_score_batch_is_per_example_log_likelihood_under_its_own_task(setup):
    module, model, _, params, batch = setup
    scores = np.asarray(model.score_batch(params, batch))
    ce = _token_ce(
        _direct_logits(module, params, batch, batch["task_ids"]), batch["decoder_target_tokens"]
    )
    np.testing.assert_allclose(scores, -(ce * batch["decoder_loss_weights"]).sum(-1), rtol=1e-5)
    # Changing example 1's task changes only example 1's score.
    other = {**batch, "task_ids": np.array([0, 1, 1], np.int32)}
    scores_other = np.asarray(model.score_batch(params, other))
    np.testing.assert_allclose(scores_other[[0, 2]], scores[[0, 2]], rtol=1e-6)
    assert abs(scores_other[1] - scores[1]) > 1e-3


def test_decoding_encodes_each_example_with_its_own_prompt(setup):
    """Beam-search scores (alpha=0: plain log-probabilities) equal teacher-forced scores."""
    _, model, _, params, batch = setup
    predict = jax.jit(lambda p, b: model.predict_batch_with_aux(p, b, num_decodes=2))
    decodes, aux = predict(params, batch)
    decodes = np.asarray(decodes)
    weights = np.ones_like(decodes)
    for i, row in enumerate(decodes):
        eos = np.flatnonzero(row == 1)
        if eos.size:
            weights[i, eos[0] + 1 :] = 0
    forced = {
        **batch,
        "decoder_target_tokens": decodes * weights,
        "decoder_input_tokens": np.concatenate(
            [np.zeros((B, 1), np.int32), (decodes * weights)[:, :-1]], 1
        ),
        "decoder_loss_weights": weights,
    }
    np.testing.assert_allclose(
        np.asarray(aux["scores"]), np.asarray(model.score_batch(params, forced)), rtol=1e-4
    )
    wrong = {**forced, "task_ids": (batch["task_ids"] + 1) % T}
    assert np.all(np.abs(np.asarray(model.score_batch(params, wrong)) - aux["scores"]) > 1e-3)


def test_t5x_step_trains_every_prompt_parameter_and_nothing_else(setup):
    _, model, variables, params, batch = setup
    state = train_state_lib.FlaxOptimTrainState.create(
        model.optimizer_def, flax.core.freeze({**variables, "params": params})
    )
    # Optimizer state (Adafactor's second moments) exists for the prompt only; every
    # other parameter holds the scalar placeholder, before and after a step.
    prompt = {"prompt/shared", "prompt/task_cols", "prompt/task_rows"}
    grads = jax.grad(lambda p: model.loss_fn(p, batch, None)[0])(state.params)
    new = state.apply_gradient(grads, learning_rate=0.3)
    for s in (state, new):
        flat = traverse_util.flatten_dict(flax.core.unfreeze(s.param_states), sep="/")
        assert set(flat) == set(_flat(s.params))
        adafactor_states = {
            k for k, v in flat.items() if isinstance(v, adafactor._AdafactorParamState)
        }
        assert adafactor_states == prompt
        for k in set(flat) - prompt:
            assert flat[k] is optim.PLACEHOLDER or (
                np.shape(flat[k]) == () and float(flat[k]) == 0.0
            ), k
    before, after = _flat(state.params), _flat(new.params)
    changed = {k for k in before if not np.array_equal(before[k], after[k])}
    assert changed == prompt


def _prompted_params(generator) -> dict:
    module = PromptedT5(config=CFG, prompt=generator)
    variables = _t5x_model(module).get_initial_variables(jax.random.PRNGKey(0), SHAPES, TYPES)
    return variables


GENERATORS = {
    "mpt": prompts.MultitaskPrompt(num_tasks=T, length=L, embed_dim=D),
    "attention": prompts.ComposedPrompt(
        num_tasks=T,
        length=L,
        embed_dim=D,
        composition=prompts.compositions.Attention(pool_size=2, hidden=8),
    ),  # fmt: skip
    "gated": prompts.ComposedPrompt(
        num_tasks=T, length=L, embed_dim=D, composition="gated", task_rank=1
    ),
    "hierarchical": prompts.HierarchicalPrompt(
        task_groups=(0, 0, 1),
        length=L,
        embed_dim=D,
        group_composition="weighted",
        task_composition="add",
    ),  # fmt: skip
}


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_traversal_and_rules_cover_every_prompt_parameter(name):
    variables = _prompted_params(GENERATORS[name])
    flat = _flat(variables["params"])
    prompt_paths = {k for k in flat if k.startswith("prompt/")}
    assert len(prompt_paths) >= 2
    assert set(optim.matched_paths(variables["params"])) == prompt_paths
    # Every axis name has a partitioning rule and an Adafactor factor rule.
    rules = dict(
        t5x_partitioning.standard_logical_axis_rules(
            additional_rules=partitioning.prompt_axis_rules()
        )
    )
    factor_rules = optim.logical_factor_rules()
    axes = flax_partitioning.get_axis_names(variables["params_axes"])
    for spec in jax.tree.leaves(axes, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec)):
        for axis in spec:
            assert axis in rules and axis in factor_rules, (name, axis)
    adafactor.Adafactor(logical_factor_rules=factor_rules).set_param_axes(axes)
    # Parameters that do not train hold the placeholder state (never None: Orbax).
    optimizer = _optimizer(GENERATORS[name])  # MPT: one Adafactor per rate group
    optimizer.set_param_axes(axes)  # as T5X does before init_state
    states = optimizer.init_state(variables["params"]).param_states
    flat_states = traverse_util.flatten_dict(flax.core.unfreeze(states), sep="/")
    assert set(flat_states) == set(flat)
    assert {k for k, v in flat_states.items() if v is optim.PLACEHOLDER} == set(flat) - prompt_paths


def test_check_optimizer_states_refuses_none_states_only_where_they_would_be_read():
    class Entry:  # Orbax's metadata entry for a leaf saved as None
        value_type = "None"

    ours = {"target": {"w": 0.0, "prompt": 0.0},
            "state": {"step": 0, "param_states": {"w": 0.0, "prompt": {"v": 0.0}}}}  # fmt: skip
    for none in (Entry(), None):  # Orbax metadata, legacy msgpack
        old = {"target": {"w": 1.0, "prompt": 1.0},
               "state": {"step": 3, "param_states": {"w": none, "prompt": {"v": 1.0}}}}  # fmt: skip
        with pytest.raises(ValueError, match=r"1 parameters \(e.g. \['state/param_states/w'\]\)"):
            optim.check_optimizer_states(old, ours, is_resuming=True)
        # eval / infer restore the parameters only; a stage start drops the states first.
        params_only = {"target": ours["target"]}
        assert optim.check_optimizer_states(old, params_only) is old
        dropped = {"target": old["target"], "state": {"step": 3}}
        assert optim.check_optimizer_states(dropped, ours) is dropped


def test_traversal_frozen_names_and_teacher_scope():
    params = {
        "prompt": {"shared": 0, "task_cols": 0, "pool": {"source_prompts": 0}},
        "teacher_prompt": {"task_prompts": 0},
        "encoder": {"layers_0": {"prompt_like": {"kernel": 0}}},
    }
    assert optim.matched_paths(params) == [
        "prompt/pool/source_prompts", "prompt/shared", "prompt/task_cols"
    ]  # fmt: skip
    frozen = optim.prompt_traversal(frozen=("shared", "source_prompts"))
    assert optim.matched_paths(params, frozen) == ["prompt/task_cols"]
    with pytest.raises(ValueError, match="single path components"):
        optim.prompt_traversal(scopes=("encoder/prompt",))
    with pytest.raises(ValueError, match="unknown prompt axes"):
        partitioning.prompt_axis_rules(sharded=(("heads", "model"),))


def test_unboxed_parameter_without_axes_is_an_error():
    with pytest.raises(ValueError, match=r"\['encoder/w'\]"):
        models.params_axes_from_boxes({"params": {"encoder": {"w": jnp.zeros(2)}}})


def test_batch_without_task_ids_is_an_error(setup):
    _, model, _, params, batch = setup
    no_ids = {k: v for k, v in batch.items() if k != "task_ids"}
    with pytest.raises(KeyError, match="task_ids"):
        model.score_batch(params, no_ids)


@pytest.mark.parametrize("hidden_states", ["both", "none"])
def test_distillation_loss_matches_formula_and_freezes_teachers(setup, hidden_states):
    module, _, _, _, batch = setup
    lam, tau = 0.7, 2.0
    model = _t5x_model(
        module,
        models.PromptDistillationModel,
        teacher_prompt=prompts.TaskPrompts(num_tasks=T, length=L, embed_dim=D),
        recipe=Distillation(weight=lam, temperature=tau, hidden_states=hidden_states),
    )
    variables = model.get_initial_variables(jax.random.PRNGKey(2), SHAPES, TYPES)
    params = flax.core.unfreeze(variables["params"])
    assert params["teacher_prompt"]["task_prompts"].shape == (T, L, D)
    names = flax_partitioning.get_axis_names(variables["params_axes"])
    assert tuple(names["teacher_prompt"]["task_prompts"]) == ("tasks", "prompt", "embed")
    assert optim.matched_paths(params) == ["prompt/shared", "prompt/task_cols", "prompt/task_rows"]

    loss, metrics = model.loss_fn(params, batch, None)

    inputs = [
        batch[k] for k in ("encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens")
    ]
    student = {k: v for k, v in params.items() if k != "teacher_prompt"}
    s_logits, s_hidden = module.apply(
        {"params": student}, *inputs, batch["task_ids"], enable_dropout=False,
        method="forward_with_hidden",
    )  # fmt: skip
    teacher_module = module.clone(prompt=prompts.TaskPrompts(num_tasks=T, length=L, embed_dim=D))
    t_logits, t_hidden = teacher_module.apply(
        {"params": {**student, "prompt": params["teacher_prompt"]}}, *inputs, batch["task_ids"],
        enable_dropout=False, method="forward_with_hidden",
    )  # fmt: skip
    w = batch["decoder_loss_weights"].astype(np.float64)
    ce = (_token_ce(np.asarray(s_logits), batch["decoder_target_tokens"]) * w).sum() / w.sum()
    log_p = _log_softmax(np.asarray(t_logits) / tau)
    log_q = _log_softmax(np.asarray(s_logits) / tau)
    kl = ((np.exp(log_p) * (log_p - log_q)).sum(-1) * w).sum() / w.sum()
    mse = 0.0
    if hidden_states == "both":
        enc_mask = (batch["encoder_input_tokens"] > 0).astype(np.float64)
        for key, mask in (("encoder", enc_mask), ("decoder", w)):
            sq = ((np.asarray(s_hidden[key], np.float64) - np.asarray(t_hidden[key])) ** 2).sum(-1)
            mse += (sq * mask).sum() / (mask.sum() * D)
        assert mse > 0
    expected = ce + lam * (tau**2 * kl + mse)
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
    assert kl > 0
    np.testing.assert_allclose(float(metrics["distill/kl"].compute()), kl, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["distill/task_loss"].compute()), ce, rtol=1e-5)

    grads = jax.grad(lambda p: model.loss_fn(p, batch, None)[0])(params)
    assert float(jnp.abs(grads["teacher_prompt"]["task_prompts"]).max()) == 0.0
    assert float(jnp.abs(grads["prompt"]["shared"]).max()) > 0.0


def test_distillation_model_refuses_settings_it_cannot_honour(setup):
    module = setup[0]
    teacher = prompts.TaskPrompts(num_tasks=T, length=L, embed_dim=D)
    with pytest.raises(ValueError, match="label_smoothing"):
        _t5x_model(module, models.PromptDistillationModel, teacher_prompt=teacher,
                   label_smoothing=0.1)  # fmt: skip


def test_distillation_model_takes_the_gin_bound_recipe(setup):
    """λ, τ and the hidden states are the runner's ``Distillation`` (one definition):
    unbound, the model's recipe is ``Distillation()``; a ``Distillation.weight`` binding
    reaches it."""
    import gin

    teacher = prompts.TaskPrompts(num_tasks=T, length=L, embed_dim=D)
    model = _t5x_model(setup[0], models.PromptDistillationModel, teacher_prompt=teacher)
    assert model.recipe == Distillation()
    with gin.unlock_config():
        gin.parse_config("Distillation.weight = 0.25")
        try:
            model = _t5x_model(setup[0], models.PromptDistillationModel, teacher_prompt=teacher)
        finally:
            gin.clear_config()
    assert model.recipe == Distillation(weight=0.25)


def test_target_prompt_starts_from_the_exported_source_prompt(tmp_path):
    """``average``: both target tasks start at the best rank-1 fit of mean_k U_k V_k."""
    from mpt_jax.prompts import io as prompt_io

    rng = np.random.RandomState(3)
    source = {
        "shared": rng.normal(size=(L, D)).astype(np.float32),
        "task_cols": rng.normal(size=(T, L, R)).astype(np.float32),
        "task_rows": rng.normal(size=(T, R, D)).astype(np.float32),
    }
    prompt_io.save_npy(source, str(tmp_path))

    def start(method, **kw):
        inits = {
            f"{name}_init": target_init.from_source_prompt(str(tmp_path), part, method=method, **kw)
            for name, part in (("shared", "shared"), ("cols", "task_cols"), ("rows", "task_rows"))
        }
        gen = prompts.MultitaskPrompt(num_tasks=2, length=L, embed_dim=D, num_ranks=1, **inits)
        variables = gen.init(jax.random.PRNGKey(0), jnp.zeros(2, jnp.int32))
        return {k: np.asarray(v) for k, v in flax.linen.unbox(variables)["params"].items()}

    target = start("average")
    np.testing.assert_array_equal(target["shared"], source["shared"])
    mean = np.mean([source["task_cols"][k].astype(np.float64) @ source["task_rows"][k]
                    for k in range(T)], axis=0)  # fmt: skip
    u, s, vt = np.linalg.svd(mean)
    best = s[0] * np.outer(u[:, 0], vt[0])
    for k in range(2):  # both target tasks start alike
        np.testing.assert_allclose(target["task_cols"][k] @ target["task_rows"][k], best, atol=1e-4)
    exact = start("exact", source_task=2)
    w2 = source["task_cols"][2].astype(np.float64) @ source["task_rows"][2]
    u, s, vt = np.linalg.svd(w2)
    np.testing.assert_allclose(
        exact["task_cols"][0] @ exact["task_rows"][0], s[0] * np.outer(u[:, 0], vt[0]), atol=1e-4
    )
    with pytest.raises(ValueError, match="part"):
        target_init.from_source_prompt(str(tmp_path), "cols")
    with pytest.raises(ValueError, match="width must match"):
        prompts.MultitaskPrompt(
            num_tasks=1, length=L + 1, embed_dim=D,
            shared_init=target_init.from_source_prompt(str(tmp_path), "shared"),
        ).init(jax.random.PRNGKey(0), jnp.zeros(1, jnp.int32))  # fmt: skip


def test_flaxformer_encoder_equals_prompted_t5_on_the_same_parameters(setup):
    """Flaxformer's T5 with the prompt subclass gives PromptedT5's logits, masks included."""
    pytest.importorskip("flaxformer", reason="Flaxformer is not installed")
    import gin

    from mpt_jax.configs import __path__ as configs_path
    from mpt_jax.t5x_ext import flaxformer_encoder

    captured = {}

    @gin.configurable("capture_architecture")
    def capture(module):
        captured["module"] = module

    # Flaxformer's factories read gin when a module is set up, so the comparison runs
    # while the architecture's gin config is active.
    with gin.unlock_config():
        gin.clear_config()
        gin.add_config_file_search_path(list(configs_path)[0])
        try:
            gin.parse_config_files_and_bindings(
                ["models/mpt.gin", "models/sizes/tiny.gin",
                 "architectures/flaxformer_t5_prompt.gin"],
                ["NUM_TASKS = 3", "PROMPT_LENGTH = 4", "PROMPT_RANK = 2",
                 "ACTIVATION_DTYPE = 'float32'", "DROPOUT_RATE = 0.0",
                 "capture_architecture.module = %ARCHITECTURE"],
                finalize_config=False,
            )  # fmt: skip
            capture()
            _compare_flaxformer(captured["module"], flaxformer_encoder, setup)
        finally:
            gin.clear_config()


def _compare_flaxformer(ff, flaxformer_encoder, setup):
    _, model, _, params, batch = setup
    assert isinstance(ff, flaxformer_encoder.PromptedEncoderDecoder)
    ff_model = _t5x_model(ff)
    ff_vars = ff_model.get_initial_variables(jax.random.PRNGKey(0), SHAPES, TYPES)
    ff_flat = _flat(ff_vars["params"])
    ours = _flat({k: v for k, v in params.items() if k != "prompt"})
    ours.update({f"encoder/prompt/{k}": v for k, v in _flat(params["prompt"]).items()})
    assert set(ff_flat) == set(ours)
    for k in ours:
        assert ff_flat[k].shape == ours[k].shape, k
    assert optim.matched_paths(ff_vars["params"]) == [
        "encoder/prompt/shared", "encoder/prompt/task_cols", "encoder/prompt/task_rows"
    ]  # fmt: skip
    optimizer = _optimizer()
    optimizer.set_param_axes(flax_partitioning.get_axis_names(ff_vars["params_axes"]))
    states = traverse_util.flatten_dict(
        flax.core.unfreeze(optimizer.init_state(ff_vars["params"]).param_states), sep="/"
    )
    placeholders = {k for k, v in states.items() if v is optim.PLACEHOLDER}
    assert placeholders == {k for k in ff_flat if not k.startswith("encoder/prompt/")}
    ff_params = traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in ours.items()})
    np.testing.assert_allclose(
        np.asarray(ff_model.score_batch(ff_params, batch)),
        np.asarray(model.score_batch(params, batch)),
        rtol=2e-4,
    )
    decodes, aux = jax.jit(lambda p, b: ff_model.predict_batch_with_aux(p, b))(ff_params, batch)
    ref, ref_aux = jax.jit(lambda p, b: model.predict_batch_with_aux(p, b))(params, batch)
    np.testing.assert_array_equal(np.asarray(decodes), np.asarray(ref))
    np.testing.assert_allclose(np.asarray(aux["scores"]), np.asarray(ref_aux["scores"]), rtol=2e-4)


def test_t5x_end_to_end(tmp_path):
    """tests/t5x_e2e/run.sh on stock T5X: every stage runs (teachers → export → source with
    distillation → target → the target resumed → eval → infer; a hierarchical prompt on
    Flaxformer), only prompt parameters ever change, the target's first step moves each
    part of the MPT prompt at its recipe rate, and the resumed run trains on from the
    checkpoint it stopped at."""
    pytest.importorskip("flaxformer", reason="Flaxformer is not installed")
    from mpt_jax.t5x_ext.export import read_params
    from mpt_jax.training.optimizers import mpt_recipe

    script = os.path.join(os.path.dirname(__file__), "t5x_e2e", "run.sh")
    env = {**os.environ, "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}"}
    subprocess.run([script, str(tmp_path)], check=True, env=env)

    def params(ckpt, scope=""):
        return _flat(read_params(str(tmp_path / ckpt), scope))

    backbone = params("backbone/checkpoint_2")
    for ckpt in ("target/checkpoint_8", "hierarchical/checkpoint_4"):
        trained = params(ckpt)
        for name, value in backbone.items():
            np.testing.assert_array_equal(trained[name], value, err_msg=f"{ckpt}: {name}")
    target = params("target/checkpoint_8")
    assert set(target) - set(backbone) == {"prompt/shared", "prompt/task_cols", "prompt/task_rows"}
    hierarchical = params("hierarchical/checkpoint_4")
    assert set(hierarchical) - set(backbone) == {
        f"encoder/prompt/{k}"
        for k in ("shared", "group_cols", "group_rows", "task_cols", "task_rows")
    }
    teachers = read_params(str(tmp_path / "teacher" / "checkpoint_4"), "prompt")
    distilled = read_params(str(tmp_path / "source" / "checkpoint_6"), "teacher_prompt")
    np.testing.assert_array_equal(teachers["task_prompts"], distilled["task_prompts"])
    assert (tmp_path / "source" / "peft" / "adapter_model.safetensors").exists()
    # λ reached the source run through the runner's recipe binding (run.sh sets 0.5).
    assert "Distillation.weight = 0.5" in (tmp_path / "source" / "config.gin").read_text()
    assert list((tmp_path / "infer").glob("*-predict.jsonl-*-of-*"))  # T5X's shard names
    # The target's one step from its init (the source's step 6): Δθ = -(lr · sign g + wd θ)
    # with each part's rate (P at 0.3, the factors at 0.03), as the runner's recipe (no
    # dropout there: a prompt entry that dropout zeroes in every example gets no gradient).
    recipe = mpt_recipe()
    first = params("target/checkpoint_7", "prompt")
    for part in ("shared", "task_cols", "task_rows"):
        init = target_init.from_source_prompt(str(tmp_path / "source" / "prompt_npy"), part)
        theta = np.asarray(init(jax.random.PRNGKey(0), first[part].shape), np.float64)
        step = np.abs(first[part] - theta)
        np.testing.assert_allclose(step, recipe.rate(part), atol=1e-4, err_msg=part)
    # The resumed run restored the checkpoint it stopped at and trained on from there.
    assert "target/checkpoint_7" in (tmp_path / "target_resumed.log").read_text()
    resumed = params("target/checkpoint_8", "prompt")
    assert all(not np.array_equal(first[k], resumed[k]) for k in first)
