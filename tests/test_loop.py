"""The training loop on the tiny prompted T5: resume equals an uninterrupted run, NaN stops
with the step named (or is skipped), metrics reach JSON lines and TensorBoard."""

import dataclasses

import flax.linen as nn
import jax
import numpy as np
import pytest

from mpt_jax.backbone import get_config
from mpt_jax.data.task_ids import TaskIndexError
from mpt_jax.model import PromptedT5
from mpt_jax.prompts.generators import MultitaskPrompt
from mpt_jax.training import actions as A
from mpt_jax.training import make_optimizer, split_params, task_loss_fn
from mpt_jax.training.checkpoints import Checkpointer
from mpt_jax.training.loop import NonFiniteError, train_loop
from mpt_jax.training.summaries import read_metrics, read_tensorboard_scalars

TASKS = ("task_a", "task_b")
BATCH = 4


def batches_with_poison(poison_at: int | None = None):
    """Deterministic batches; batch ``i`` depends on ``i`` only. ``scale`` is NaN at
    ``poison_at`` (the objective multiplies the loss by it)."""

    def batches(start: int):
        i = start
        while True:
            rng = np.random.default_rng(i)
            enc = rng.integers(2, 128, size=(BATCH, 6)).astype(np.int32)
            tgt = rng.integers(2, 128, size=(BATCH, 3)).astype(np.int32)
            yield {
                "encoder_input_tokens": enc,
                "decoder_input_tokens": np.concatenate([np.zeros((BATCH, 1), np.int32),
                                                        tgt[:, :-1]], 1),
                "decoder_target_tokens": tgt,
                "decoder_loss_weights": np.ones_like(tgt, np.float32),
                "task_ids": (np.arange(BATCH) % 2).astype(np.int32),
                "scale": np.full((BATCH,), np.nan if i == poison_at else 1.0, np.float32),
            }  # fmt: skip
            i += 1

    return batches


@pytest.fixture(scope="module")
def setup():
    config = dataclasses.replace(get_config("tiny"), dropout_rate=0.1)
    model = PromptedT5(config, MultitaskPrompt(num_tasks=2, length=2, embed_dim=config.emb_dim))
    batch = next(batches_with_poison()(0))
    inputs = {k: batch[k] for k in ("encoder_input_tokens", "decoder_input_tokens",
                                     "decoder_target_tokens", "task_ids")}  # fmt: skip
    params = nn.unbox(model.init(jax.random.key(0), **inputs, enable_dropout=False)["params"])
    prompt, backbone = split_params(params)
    base = task_loss_fn(model)

    def loss_fn(p, frozen, b, rng):
        loss, metrics = base(p, frozen, b, rng)
        return loss * b["scale"].mean(), metrics

    return loss_fn, make_optimizer(), prompt, {"backbone": backbone}


def run(setup, model_dir, num_steps, poison_at=None, on_nonfinite="raise", eval_every=0,
        **kwargs):  # fmt: skip
    loss_fn, tx, prompt, frozen = setup
    actions = [A.NonFinite(on_nonfinite), A.Checkpoint(every=3), A.Evaluate(every=eval_every),
               A.Console(progress_bar=False)]  # fmt: skip
    return train_loop(
        loss_fn, tx, prompt, frozen, batches_with_poison(poison_at),
        task_names=TASKS, model_dir=model_dir, num_steps=num_steps, seed=7,
        log_every=1, actions=actions, backbone="random:0", **kwargs,
    )  # fmt: skip


def test_resumed_run_ends_identical_to_uninterrupted(setup, tmp_path):
    full = run(setup, str(tmp_path / "full"), 6)
    first = run(setup, str(tmp_path / "resumed"), 4)  # checkpoints at 3 and 4
    assert Checkpointer(tmp_path / "resumed" / "checkpoints").all_steps() == [3, 4]
    second = run(setup, str(tmp_path / "resumed"), 6)
    assert [r["step"] for r in first.train] == [1, 2, 3, 4]
    assert [r["step"] for r in second.train] == [5, 6]  # continued from the saved step
    assert int(second.state.step) == 6
    jax.tree.map(np.testing.assert_array_equal, second.state.params, full.state.params)
    jax.tree.map(np.testing.assert_array_equal, second.state.opt_state, full.state.opt_state)
    # The same losses at the same steps, and the prompt did move.
    full_losses = {r["step"]: r["loss"] for r in full.train}
    for r in first.train + second.train:
        assert r["loss"] == full_losses[r["step"]]
    assert not np.allclose(full.state.params["shared"], setup[2]["shared"])
    # Metrics reached JSON lines and TensorBoard.
    records = read_metrics(str(tmp_path / "full"), "train")
    assert [r["step"] for r in records] == list(range(1, 7))
    assert records[-1]["loss"] == pytest.approx(full.train[-1]["loss"])
    scalars = read_tensorboard_scalars(str(tmp_path / "full"), "train")
    assert scalars["loss"] == {r["step"]: pytest.approx(r["loss"]) for r in full.train}
    meta = Checkpointer(tmp_path / "full" / "checkpoints").restore_meta()
    assert meta["data_position"] == 6 and meta["task_names"] == list(TASKS)


def test_nan_loss_stops_with_the_step_named(setup, tmp_path):
    with pytest.raises(NonFiniteError, match="at step 5") as info:
        run(setup, str(tmp_path), 6, poison_at=4)  # batch 4 is step 5's
    assert info.value.step == 5
    ckpt = Checkpointer(tmp_path / "checkpoints")
    assert ckpt.latest_step() == 3  # the last good checkpoint stays the latest
    assert np.isfinite(ckpt.restore_params()["shared"]).all()


def test_nan_loss_is_skipped_on_request(setup, tmp_path):
    result = run(setup, None, 3, poison_at=1, on_nonfinite="skip")
    assert result.skipped_steps == [2]
    assert int(result.state.step) == 3
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(result.state.params))
    assert [r["skipped_steps"] for r in result.train] == [0, 1, 1]


def test_resume_with_another_task_mapping_is_refused(setup, tmp_path):
    run(setup, str(tmp_path), 1)
    loss_fn, tx, prompt, frozen = setup
    with pytest.raises(TaskIndexError, match="task_b"):
        train_loop(loss_fn, tx, prompt, frozen, batches_with_poison(), task_names=("task_b",
                   "task_a"), model_dir=str(tmp_path), num_steps=2)  # fmt: skip


def test_evaluate_is_called_periodically_and_at_the_end(setup):
    calls = []

    def evaluate(params, step):
        calls.append(step)
        return {"shared_norm": float(np.linalg.norm(np.asarray(params["shared"])))}

    result = run(setup, None, 4, eval_every=2, evaluate=evaluate)
    assert calls == [2, 4]
    want = float(np.linalg.norm(result.state.params["shared"]))
    assert result.eval[-1]["shared_norm"] == pytest.approx(want)


def test_dropout_rng_impl_is_a_choice_and_reproducible(setup, tmp_path):
    """XLA's RngBitGenerator (T5X's hardware RNG) trains reproducibly, with its own draws."""
    prompts = {}
    for name, impl in (("rbg_a", "unsafe_rbg"), ("rbg_b", "unsafe_rbg"), ("tf", "threefry2x32")):
        result = run(setup, str(tmp_path / name), 3, dropout_rng_impl=impl)
        prompts[name] = jax.tree.leaves(result.state.params)
    for a, b in zip(prompts["rbg_a"], prompts["rbg_b"], strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert any(
        not np.array_equal(np.asarray(a), np.asarray(b))
        for a, b in zip(prompts["rbg_a"], prompts["tf"], strict=True)
    )
    with pytest.raises(ValueError, match="'philox'"):
        run(setup, None, 1, dropout_rng_impl="philox")
    # The saved run drew with unsafe_rbg: resuming it with threefry is refused, by name.
    with pytest.raises(ValueError, match="'unsafe_rbg'.*'threefry2x32'"):
        run(setup, str(tmp_path / "rbg_a"), 5, dropout_rng_impl="threefry2x32")
