"""Prompt runs' checkpoints through T5X's own Orbax save and restore (skipped without T5X).

T5X's ``MultiOptimizer`` gives frozen parameters ``None`` optimizer state, which T5X's
Orbax restore cannot read back; ``optim.PlaceholderMultiOptimizer`` gives them a scalar
instead. Each test drives T5X's checkpoint manager as ``t5x.train`` does (save, then
restore the latest checkpoint of the model directory, or start a new run from it with
the restore rules of ``runs/prompt_finetune.gin``) on a tiny prompted T5.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

pytest.importorskip("t5x.utils", reason="T5X is not installed (not on PyPI)")

import flax  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import seqio  # noqa: E402
from flax import traverse_util  # noqa: E402
from t5x import optimizers, partitioning, utils  # noqa: E402

from mpt_jax import prompts  # noqa: E402
from mpt_jax.backbone import get_config  # noqa: E402
from mpt_jax.model import PromptedT5  # noqa: E402
from mpt_jax.t5x_ext import models, optim  # noqa: E402

CFG = get_config("tiny")
SHAPES = {
    "encoder_input_tokens": (2, 8),
    "decoder_input_tokens": (2, 4),
    "decoder_target_tokens": (2, 4),
    "task_ids": (2,),
}
TYPES = {k: jnp.int32 for k in SHAPES}
STEP = 5
PROMPT = ("prompt/shared", "prompt/task_cols", "prompt/task_rows")
# runs/prompt_finetune.gin's rules for starting a stage from a checkpoint (pinned to the
# gin file by tests/test_gin_configs.py), and runs/prompt_model.gin's restore check.
STAGE_START_MAP = ((r".*prompt.*", None), (r"state/param_states/.*", None))
CHECKS = (optim.check_optimizer_states,)


def _model(optimizer_cls) -> models.PromptedEncoderDecoderModel:
    """A tiny MPT model whose optimizer is ``optimizer_cls`` over the T5X runs' pairs
    (``optim.recipe_optimizer``: one Adafactor per rate group of the project's recipe)."""
    module = PromptedT5(
        config=CFG,
        prompt=prompts.MultitaskPrompt(num_tasks=2, length=3, embed_dim=CFG.emb_dim),
    )
    vocab = seqio.PassThroughVocabulary(size=CFG.vocab_size)
    recipe = optim.recipe_optimizer(prompt=module.prompt)
    opt = optimizer_cls(tuple(zip(recipe.traversals, recipe.sub_optimizers, strict=True)))
    return models.PromptedEncoderDecoderModel(module, vocab, vocab, opt)


def _restore(model, model_dir: str, cfg: utils.RestoreCheckpointConfig | None):
    """T5X's ``train.py`` restore: the first valid config's checkpoint, or None."""
    partitioner = partitioning.PjitPartitioner(num_partitions=1)
    init = utils.TrainStateInitializer(
        model.optimizer_def, model.get_initial_variables, SHAPES, partitioner, TYPES
    )
    cfg, paths = utils.get_first_valid_restore_config_and_paths([cfg] if cfg else [])
    state, manager = utils.create_checkpoint_manager_and_restore(
        init,
        partitioner,
        cfg,
        paths[0] if paths else None,
        jax.random.PRNGKey(0),
        save_checkpoint_cfg=utils.SaveCheckpointConfig(period=1),
        model_dir=model_dir,
        use_orbax=True,
    )
    return state, manager, init


def _resume(model_dir: str, **kwargs) -> utils.RestoreCheckpointConfig:
    """What train.py builds to resume from MODEL_DIR (transformations told is_resuming)."""
    fns = tuple(functools.partial(f, is_resuming=True) for f in CHECKS)
    return utils.RestoreCheckpointConfig(
        path=model_dir, mode="latest", state_transformation_fns=fns, **kwargs
    )


def _flat(tree) -> dict[str, np.ndarray]:
    return {
        k: np.asarray(v)
        for k, v in traverse_util.flatten_dict(flax.core.unfreeze(tree), sep="/").items()
        if v is not None
    }


def _distinct_values(state_dict):
    """Random floats in every float leaf, ``STEP`` in the step."""
    rng = np.random.RandomState(1)

    def fill(x):
        x = np.asarray(x)
        if x.dtype.kind == "f":
            return rng.normal(size=x.shape).astype(x.dtype)
        return np.full(x.shape, STEP, x.dtype)

    return jax.tree.map(fill, state_dict)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """Checkpoints at step 5 of the same run, by our optimizer and by T5X's."""
    out = {}
    for name, cls in (
        ("ours", optim.PlaceholderMultiOptimizer),
        ("stock", optimizers.MultiOptimizer),
    ):
        model_dir = str(tmp_path_factory.mktemp(name))
        state, manager, init = _restore(_model(cls), model_dir, None)
        assert state is None  # nothing to restore yet
        state = init.from_scratch(jax.random.PRNGKey(0))
        # Distinct, non-zero values everywhere, so a restore that read the wrong thing shows.
        state = state.restore_state(_distinct_values(state.state_dict()))
        manager.save(state)
        manager.wait_until_finished()
        out[name] = (model_dir, _flat(state.state_dict()))
    return out


def test_placeholder_states_for_every_frozen_parameter(written):
    _, saved = written["ours"]
    states = {k: v for k, v in saved.items() if k.startswith("state/param_states/")}
    frozen = {k for k in states if not k.startswith("state/param_states/prompt/")}
    params = {k.removeprefix("target/") for k in saved if k.startswith("target/")}
    assert {k.removeprefix("state/param_states/") for k in frozen} == params - set(PROMPT)
    assert all(states[k].shape == () for k in frozen)
    trained = {k.removeprefix("state/param_states/") for k in set(states) - frozen}
    assert {k.rsplit("/", 1)[0] for k in trained} == set(PROMPT)  # Adafactor v, v_row, …


def test_resume_restores_every_value_and_the_step(written):
    model_dir, saved = written["ours"]
    model = _model(optim.PlaceholderMultiOptimizer)
    state, _, _ = _restore(model, model_dir, _resume(model_dir))
    assert int(state.step) == STEP
    restored = _flat(state.state_dict())
    assert set(restored) == set(saved)
    for key, value in saved.items():
        np.testing.assert_array_equal(restored[key], value, err_msg=key)


def test_stock_multioptimizer_cannot_resume_its_own_checkpoint(written):
    """Why the placeholder exists: T5X's MultiOptimizer + Orbax fail on resume."""
    model_dir, _ = written["stock"]
    cfg = utils.RestoreCheckpointConfig(path=model_dir, mode="latest")
    with pytest.raises(ValueError, match=r"NOT_FOUND.*state\.param_states\."):
        _restore(_model(optimizers.MultiOptimizer), model_dir, cfg)


def test_resuming_a_checkpoint_with_none_states_names_the_cause_and_the_way_out(written):
    model_dir, _ = written["stock"]
    with pytest.raises(ValueError, match=r"no optimizer state for \d+ parameters") as err:
        _restore(_model(optim.PlaceholderMultiOptimizer), model_dir, _resume(model_dir))
    assert "INITIAL_CHECKPOINT_PATH" in str(err.value)
    assert "assignment_map" in str(err.value)


@pytest.mark.parametrize(
    "assignment_map, prompt_from_checkpoint",
    [
        (STAGE_START_MAP, False),  # a stage start (runs/prompt_finetune.gin)
        (((r"state/param_states/.*", None),), True),  # OLD_CHECKPOINT_ADVICE: continue a run
    ],
)
def test_checkpoint_with_none_states_starts_a_new_run(
    written, tmp_path, assignment_map, prompt_from_checkpoint
):
    """What the README tells users of old checkpoints to do, done with T5X's restore."""
    model_dir, saved = written["stock"]
    cfg = utils.RestoreCheckpointConfig(
        path=f"{model_dir}/checkpoint_{STEP}",
        mode="specific",
        assignment_map=assignment_map,
        fallback_to_scratch=True,
        state_transformation_fns=CHECKS,
    )
    model = _model(optim.PlaceholderMultiOptimizer)
    state, _, _ = _restore(model, str(tmp_path), cfg)
    restored = _flat(state.state_dict())
    assert int(state.step) == STEP
    for key, value in saved.items():
        if key.startswith("target/") and not key.startswith("target/prompt/"):
            np.testing.assert_array_equal(restored[key], value, err_msg=key)  # the backbone
    for key in PROMPT:
        same = np.array_equal(restored[f"target/{key}"], saved[f"target/{key}"])
        assert same == prompt_from_checkpoint, key
    # Optimizer states start afresh: placeholders for the backbone, zeros for the prompt.
    assert all(
        float(np.abs(v).max()) == 0.0 for k, v in restored.items() if k.startswith("state/param")
    )
