"""Checks that hold under jit (issue 15, item 2): an out-of-range task id — 3 of 3 tasks,
or -1 — raises at every public entry point that takes ids, instead of the gather clamping
it to id 2's prompt. Concrete ids are refused before anything is dispatched (the state is
left as it was); ids traced by the caller's own ``jit`` are checked inside the program."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mpt_jax import checks, decoding
from mpt_jax.backbone import get_config
from mpt_jax.model import PromptedT5
from mpt_jax.prompts import MultitaskPrompt, SinglePrompt
from mpt_jax.training import (
    TrainState,
    make_eval_step,
    make_train_step,
    split_params,
    task_loss_fn,
    train_step_fn,
)

NUM_TASKS = 3
ENC = np.array([[5, 6, 1, 0], [7, 1, 0, 0]], np.int32)
TARGETS = np.array([[8, 1], [9, 1]], np.int32)
OUT_OF_RANGE = [np.array([0, 3], np.int32), np.array([-1, 1], np.int32)]
IDS = pytest.mark.parametrize("ids", OUT_OF_RANGE, ids=["3_of_3", "minus_1"])


def _message(ids, where):
    bad = int(ids[(ids < 0) | (ids >= NUM_TASKS)][0])
    return rf"{where}: task id {bad} is out of range \[0, 3\)"


@pytest.fixture(scope="module")
def model_and_params():
    cfg = get_config("tiny", {"dropout_rate": 0.0, "vocab_size": 32})
    model = PromptedT5(cfg, MultitaskPrompt(num_tasks=NUM_TASKS, length=2, embed_dim=32))
    dec = np.zeros_like(TARGETS)
    variables = model.init(jax.random.key(0), ENC, dec, dec, np.zeros(2, np.int32),
                           enable_dropout=False)  # fmt: skip
    return model, nn.unbox(variables["params"])


def _batch(ids):
    return {
        "encoder_input_tokens": ENC,
        "decoder_input_tokens": decoding.shift_right(jnp.asarray(TARGETS)),
        "decoder_target_tokens": TARGETS,
        "decoder_loss_weights": (TARGETS > 0).astype(np.int32),
        "task_ids": ids,
    }


@IDS
def test_greedy_decode_refuses_an_out_of_range_task_id(model_and_params, ids):
    model, params = model_and_params
    with pytest.raises(ValueError, match=_message(ids, "greedy_decode")):
        decoding.greedy_decode(model, params, ENC, ids, max_decode_length=2)


@IDS
def test_beam_search_refuses_an_out_of_range_task_id(model_and_params, ids):
    model, params = model_and_params
    with pytest.raises(ValueError, match=_message(ids, "beam_search")):
        decoding.beam_search(model, params, ENC, ids, beam_size=2, max_decode_length=2)


@IDS
def test_score_refuses_an_out_of_range_task_id(model_and_params, ids):
    model, params = model_and_params
    with pytest.raises(ValueError, match=_message(ids, "score")):
        decoding.score(model, params, _batch(ids))


@IDS
def test_rank_classification_refuses_an_out_of_range_task_id(model_and_params, ids):
    model, params = model_and_params
    with pytest.raises(ValueError, match=_message(ids, "rank_classification")):
        decoding.rank_classification(model, params, ENC, ids, TARGETS)


def test_score_inside_the_callers_jit_refuses_an_out_of_range_task_id(model_and_params):
    """Traced ids cannot be read on the host: the check runs inside the program."""
    model, params = model_and_params
    scored = jax.jit(lambda ids: decoding.score(model, params, _batch(ids)))
    in_range = np.asarray(scored(np.array([0, 2], np.int32)))
    np.testing.assert_allclose(in_range, decoding.score(model, params, _batch(np.array([0, 2]))),
                               rtol=1e-5)  # fmt: skip
    with pytest.raises(Exception, match=_message(OUT_OF_RANGE[0], "score")):
        jax.block_until_ready(scored(OUT_OF_RANGE[0]))


def _train_setup(model_and_params):
    model, params = model_and_params
    prompt, backbone = split_params(params)
    tx = optax.sgd(0.1)
    return model, {"backbone": backbone}, TrainState.create(prompt, tx), tx


@IDS
def test_train_step_refuses_an_out_of_range_task_id_and_keeps_the_state(model_and_params, ids):
    model, frozen, state, tx = _train_setup(model_and_params)
    before = jax.tree.map(np.array, state.params)
    step = make_train_step(task_loss_fn(model), tx, num_tasks=NUM_TASKS)
    with pytest.raises(ValueError, match=_message(ids, "train step")):
        step(state, frozen, _batch(ids), jax.random.key(0))
    # Refused before dispatch: the donated state was not consumed and is unchanged.
    assert int(state.step) == 0
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, state.params), before)


def test_train_step_fn_under_the_callers_jit_refuses_an_out_of_range_task_id(model_and_params):
    model, frozen, state, tx = _train_setup(model_and_params)
    step = jax.jit(train_step_fn(task_loss_fn(model), tx, num_tasks=NUM_TASKS))
    with pytest.raises(Exception, match=_message(OUT_OF_RANGE[0], "train step")):
        jax.block_until_ready(step(state, frozen, _batch(OUT_OF_RANGE[0]), jax.random.key(0)))


@IDS
def test_eval_step_refuses_an_out_of_range_task_id(model_and_params, ids):
    model, frozen, state, _ = _train_setup(model_and_params)
    eval_step = make_eval_step(task_loss_fn(model), num_tasks=NUM_TASKS)
    with pytest.raises(ValueError, match=_message(ids, "eval step")):
        eval_step(state.params, frozen, _batch(ids))
    ok = eval_step(state.params, frozen, _batch(np.array([0, 2], np.int32)))
    assert np.isfinite(float(ok["loss"]))


def test_a_prompt_without_tasks_takes_any_id():
    assert checks.num_tasks_of(PromptedT5(get_config("tiny"), None)) is None
    single = SinglePrompt(length=2, embed_dim=8)
    assert checks.num_tasks_of(PromptedT5(get_config("tiny"), single)) is None
    checks.check_task_ids(np.array([7]), None, "greedy_decode")  # nothing to check
    with pytest.raises(ValueError, match=r"x: task_ids must be integers, got dtype float32"):
        checks.check_task_ids(np.array([0.5], np.float32), 2, "x")
