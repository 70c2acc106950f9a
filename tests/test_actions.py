"""Each action of the training loop alone, on a hand-made :class:`Run` (no training), and
the few that need the loop (prompt-scale warning under Adafactor at lr 1e9, a real signal,
nothing written before the first step) on the tiny model of ``_kill_worker``."""

import json
import os
import shlex
import signal

import _kill_worker as worker
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mpt_jax.errors import BindingError
from mpt_jax.prompts.generators import MultitaskPrompt
from mpt_jax.training import actions as A
from mpt_jax.training.checkpoints import CHECKPOINT_SUBDIR, Checkpointer, CorruptCheckpointError
from mpt_jax.training.loop import learning_rates, train_loop
from mpt_jax.training.state import TrainState
from mpt_jax.training.summaries import MetricsWriter, read_metrics

TASKS = ("task_a", "task_b")


def make_run(model_dir=None, num_steps=10, params=None, **kwargs) -> A.Run:
    params = {"shared": np.ones((2, 4), np.float32)} if params is None else params
    return A.Run(task_names=TASKS, num_steps=num_steps, log_every=1, model_dir=model_dir,
                 state=TrainState.create(params, optax.sgd(0.1)), writer=MetricsWriter(model_dir),
                 backbone="random:0", **kwargs)  # fmt: skip


def advance(run: A.Run, step: int, value: float = 1.0) -> None:
    """Pretend the loop ran to ``step``: the prompt is ``value`` everywhere."""
    params = jax.tree.map(lambda x: np.full_like(x, value), run.state.params)
    run.state = run.state.replace(step=jnp.asarray(step, jnp.int32), params=params)
    run.data_position = step


FINITE = {"loss": 1.0, "nonfinite": 0}
NAN = {"loss": float("nan"), "nonfinite": 1}


# -- NonFinite --------------------------------------------------------------------------------


def test_nonfinite_raises_naming_the_step_or_skips():
    run = make_run()
    A.NonFinite().after_step(run, 3, FINITE)
    with pytest.raises(A.NonFiniteError, match="at step 4 "):
        A.NonFinite().after_step(run, 4, NAN)
    skip = A.NonFinite("skip")
    skip.after_step(run, 4, NAN)
    skip.after_step(run, 5, FINITE)
    skip.after_step(run, 6, NAN)
    assert run.skipped_steps == [4, 6]
    with pytest.raises(ValueError, match="'ignore'"):
        A.NonFinite("ignore")


# -- Checkpoint -------------------------------------------------------------------------------


def _saved_steps(model_dir):
    ckpt = Checkpointer(os.path.join(model_dir, CHECKPOINT_SUBDIR))
    try:
        return ckpt.all_steps()
    finally:
        ckpt.close()


def _train(model_dir, steps, every=3, num_steps=10, values=None):
    """The Checkpoint action over a fake run: step ``s`` sets the prompt to ``values(s)``."""
    run, action = make_run(model_dir, num_steps=num_steps), A.Checkpoint(every=every, keep=None)
    action.on_start(run)
    for s in steps:
        advance(run, s, s if values is None else values(s))
        action.after_step(run, s, FINITE)
    action.close(run)
    return run


def test_checkpoint_saves_every_n_steps_and_the_last(tmp_path):
    _train(str(tmp_path), range(1, 11))
    assert _saved_steps(str(tmp_path)) == [3, 6, 9, 10]


def test_checkpoint_resumes_the_latest_and_writes_nothing_before_its_first_save(tmp_path):
    model_dir = str(tmp_path / "run")
    _train(model_dir, [1, 2])
    assert not os.path.exists(model_dir)  # no save yet: no folder
    _train(model_dir, range(1, 8))
    run, action = make_run(model_dir), A.Checkpoint()
    action.on_start(run)
    assert (run.start_step, run.data_position) == (6, 6)
    np.testing.assert_array_equal(run.state.params["shared"], np.full((2, 4), 6.0))
    action.close(run)


def test_checkpoint_never_writes_nonfinite_values(tmp_path):
    _train(str(tmp_path), range(1, 7), values=lambda s: np.nan if s == 6 else s)
    assert _saved_steps(str(tmp_path)) == [3]


def _truncate(path):
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(size // 2)


def _largest_array_file(step_dir):
    files = [os.path.join(step_dir, "params", "d", n)
             for n in os.listdir(os.path.join(step_dir, "params", "d"))]  # fmt: skip
    return max(files, key=os.path.getsize)


@pytest.mark.parametrize("damage", ["array file", "meta"])
def test_corrupt_latest_checkpoint_is_named_and_the_run_falls_back(tmp_path, capsys, damage):
    """A truncated array file or ``meta`` in the latest checkpoint: the step and the file
    are named, the folder is set aside, the run resumes from the newest complete one and
    saves that step again when it gets there."""
    model_dir = str(tmp_path)
    _train(model_dir, range(1, 10))  # checkpoints 3, 6, 9
    step_dir = os.path.join(model_dir, CHECKPOINT_SUBDIR, "9")
    bad = (_largest_array_file(step_dir) if damage == "array file"
           else os.path.join(step_dir, "meta", "metadata"))  # fmt: skip
    _truncate(bad)
    ckpt = Checkpointer(os.path.join(model_dir, CHECKPOINT_SUBDIR))
    with pytest.raises(CorruptCheckpointError, match="step 9") as info:
        ckpt.restore(make_run().state)
    assert (info.value.step, info.value.file) == (9, bad)
    ckpt.close()

    capsys.readouterr()
    run, action = make_run(model_dir), A.Checkpoint(every=3, keep=None)
    action.on_start(run)
    out = capsys.readouterr().out
    assert f"checkpoint step 9 is unreadable ({bad}" in out
    assert "falling back to step 6" in out
    assert run.start_step == 6
    np.testing.assert_array_equal(run.state.params["shared"], np.full((2, 4), 6.0))
    assert os.path.isdir(step_dir + ".corrupt")  # kept for inspection, no longer a step
    for s in (7, 8, 9):
        advance(run, s, s)
        action.after_step(run, s, FINITE)
    action.close(run)
    assert _saved_steps(model_dir) == [3, 6, 9]


def test_no_readable_checkpoint_is_an_error_naming_the_newest(tmp_path):
    _train(str(tmp_path), range(1, 4))
    _truncate(os.path.join(str(tmp_path), CHECKPOINT_SUBDIR, "3", "meta", "metadata"))
    with pytest.raises(CorruptCheckpointError, match="step 3.*metadata"):
        A.Checkpoint().on_start(make_run(str(tmp_path)))


def test_checkpoint_saves_the_interrupted_step(tmp_path, capsys):
    run, action = make_run(str(tmp_path)), A.Checkpoint(every=5)
    action.on_start(run)
    for s in (1, 2):
        advance(run, s, s)
        action.after_step(run, s, FINITE)
    action.on_interrupt(run, 2)
    action.close(run)
    assert _saved_steps(str(tmp_path)) == [2]
    assert "saved the checkpoint of step 2" in capsys.readouterr().out


# -- Evaluate ---------------------------------------------------------------------------------


def test_evaluate_runs_periodically_and_at_the_end_and_tracks_the_best(capsys):
    scores = {2: 50.0, 4: 70.0, 6: 60.0, 7: 65.0}
    calls = []

    def evaluate(params, step):
        calls.append(step)
        return {"accuracy": scores[step], "loss": 1.0 / scores[step]}

    run, action = make_run(num_steps=7, evaluate=evaluate), A.Evaluate(every=2)
    for s in range(1, 8):
        action.after_step(run, s, FINITE)
    action.on_end(run)
    assert calls == [2, 4, 6, 7]
    assert (action.best_step, action.best_value) == (4, 70.0)
    lines = capsys.readouterr().out.splitlines()
    assert lines[1] == "eval step 4: accuracy 70, loss 0.01429  (best accuracy: 70 at step 4)"
    assert "best step: 4 (accuracy 70)" in run.summary
    assert [r["step"] for r in run.writer.records if r["kind"] == "eval"] == [2, 4, 6, 7]

    low = A.Evaluate(every=2, metric="loss", mode="min")
    for s in range(1, 8):
        low.after_step(run, s, FINITE)
    assert low.best_step == 4
    with pytest.raises(BindingError, match="'bleu' is not among"):
        A.Evaluate(metric="bleu").on_end(run)


# -- Console ----------------------------------------------------------------------------------


def test_console_line_has_loss_per_task_lr_rate_and_eta(capsys):
    run, console = make_run(num_steps=100), A.Console(progress_bar=False)
    console.on_start(run)
    console.on_log(run, 1, {"loss": 2.0, "first_step_seconds": 6.04})
    record = {"loss": 1.23456, "loss/task_a": 1.1, "loss/task_b": 1.4, "learning_rate": 0.3,
              "steps_per_second": 2.0, "skipped_steps": 0.0}  # fmt: skip
    console.on_log(run, 40, record)
    console.on_end(run)
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "training steps 1..100"
    assert out[1] == "step 1/100  loss 2.0000  first step 6.0 s (compile included)"
    # 60 steps left at 2 steps/s: 30 s.
    assert out[2] == ("step 40/100  loss 1.2346 (task_a 1.100, task_b 1.400)  lr 0.3  "
                      "2.00 steps/s  ETA 0:00:30")  # fmt: skip
    assert run.summary[0].startswith("final train: loss 1.235, loss/task_a 1.1")


def test_console_line_of_a_distilled_step_separates_task_loss_and_distillation(capsys):
    run, console = make_run(num_steps=100), A.Console(progress_bar=False)
    record = {"loss": 1.1465, "task_loss": 0.5167, "kl": 0.4307, "mse": 0.2691,
              "loss/task_a": 0.497, "loss/task_b": 0.516}  # fmt: skip
    console.on_log(run, 25, record)
    line = capsys.readouterr().out.splitlines()[-1]
    assert line == ("step 25/100  loss 1.1465 (task 0.517: task_a 0.497, task_b 0.516; "
                    "kl 0.431, mse 0.269)")  # fmt: skip


def test_learning_rates_are_read_from_injected_hyperparameters():
    tx = optax.inject_hyperparams(optax.adafactor)(
        learning_rate=optax.linear_schedule(0.0, 1.0, 10)
    )
    params = {"shared": jnp.ones((2, 4))}
    state = tx.init(params)
    _, state = tx.update(params, state, params)
    _, state = tx.update(params, state, params)
    assert learning_rates(state) == {"learning_rate": pytest.approx(0.1)}
    assert learning_rates(optax.adafactor(0.3).init(params)) == {}
    groups = {"shared": optax.inject_hyperparams(optax.sgd)(learning_rate=0.3),
              "factors": optax.inject_hyperparams(optax.sgd)(learning_rate=0.03)}  # fmt: skip
    tx = optax.multi_transform(groups, {"shared": "shared", "cols": "factors"})
    state = tx.init({"shared": jnp.ones(2), "cols": jnp.ones(3)})
    assert learning_rates(state) == {"learning_rate/factors": pytest.approx(0.03),
                                     "learning_rate/shared": pytest.approx(0.3)}  # fmt: skip


class _Params(A.Action):
    """Keeps the prompt after every step."""

    def __init__(self):
        self.after = {}

    def after_step(self, run, step, metrics):
        self.after[step] = run.host_params()


def test_logged_learning_rates_are_the_recipes_schedule_and_the_applied_step(tmp_path):
    """A two-rate recipe with warm-up: each record's ``learning_rate`` and
    ``learning_rate/task_cols`` equal the schedule at the step (update count step - 1), and
    equal the step the optimizer took: with a constant gradient ``c`` and no weight decay,
    Adafactor's update is ``sign(c)`` (its second moment is ``c²`` at every step), so
    ``θ_s - θ_{s-1} = -lr_s · sign(c)``."""
    from mpt_jax.training.optimizers import Adafactor, PromptRecipe, learning_rate_schedule
    from mpt_jax.training.summaries import read_tensorboard_scalars

    warmup = 4
    schedule = lambda rate: learning_rate_schedule(rate, warmup_steps=warmup)  # noqa: E731
    recipe = PromptRecipe(optimizer=Adafactor(weight_decay=0.0), learning_rate=0.3,
                          learning_rates={"task_cols": 0.03}, schedule=schedule)  # fmt: skip
    c = np.array([[0.5, -2.0, 1.0], [-1.0, 3.0, 0.25]], np.float32)

    def loss_fn(prompt, frozen, batch, rng):
        loss = jnp.sum(c * prompt["shared"]) + jnp.sum(c * prompt["task_cols"])
        return loss * jnp.mean(batch["x"]), {}

    prompt = {"shared": np.zeros((2, 3), np.float32), "task_cols": np.zeros((2, 3), np.float32)}
    batches = lambda start: iter([{"x": np.ones((2,), np.float32)}] * 10)  # noqa: E731
    params = _Params()
    result = train_loop(
        loss_fn, recipe.build(task_axis=("task_cols",)), prompt, {}, batches,
        task_names=TASKS, model_dir=str(tmp_path), num_steps=6, log_every=3,
        actions=[A.NonFinite(), params], rates_at=recipe.rates_at,
    )  # fmt: skip
    tensorboard = read_tensorboard_scalars(str(tmp_path))
    for record in result.train:  # steps 3 (in the warm-up) and 6 (after it)
        step = record["step"]
        expected = {"learning_rate": 0.3 * min(step - 1, warmup) / warmup,
                    "learning_rate/task_cols": 0.03 * min(step - 1, warmup) / warmup}  # fmt: skip
        assert {k: record[k] for k in expected} == pytest.approx(expected), step
        assert {k: tensorboard[k][step] for k in expected} == pytest.approx(expected), step
        moved = {k: params.after[step][k] - params.after[step - 1][k] for k in prompt}
        for name, key in (("shared", "learning_rate"), ("task_cols", "learning_rate/task_cols")):
            np.testing.assert_allclose(moved[name], -expected[key] * np.sign(c), rtol=1e-5)
    assert [r["step"] for r in result.train] == [3, 6]
    assert read_metrics(str(tmp_path), "train")[0]["learning_rate"] == pytest.approx(0.15)
    # one rate for every parameter: one scalar
    assert PromptRecipe(learning_rates={"shared": 0.3}).rates_at(1) == {"learning_rate": 0.3}


# -- PromptScale ------------------------------------------------------------------------------


def _mpt_run(shared_value, embedding_value=1.0):
    generator = MultitaskPrompt(num_tasks=2, length=3, embed_dim=4, num_ranks=1)
    variables = generator.init(jax.random.key(0), jnp.zeros((1,), jnp.int32))
    params = jax.tree.map(np.asarray, nn.unbox(variables["params"]))
    params = {**params, "shared": np.full((3, 4), shared_value, np.float32)}
    frozen = {"backbone": {"token_embedder": {"embedding": np.full((5, 4), embedding_value)}}}
    return make_run(params=params, frozen=frozen, generator=generator), params


def test_prompt_scale_records_rms_of_parts_composed_prompts_and_embeddings():
    run, params = _mpt_run(2.0, embedding_value=0.5)
    action = A.PromptScale()
    action.on_start(run)
    action.after_step(run, 1, FINITE)
    rms = lambda x: float(np.sqrt(np.mean(np.square(x))))
    assert run.scalars["embedding_rms"] == pytest.approx(0.5)
    assert run.scalars["prompt_rms/shared"] == pytest.approx(2.0)
    assert run.scalars["prompt_rms/task_cols"] == pytest.approx(rms(params["task_cols"]))
    for k, name in enumerate(TASKS):  # MPT: shared ∘ (U_k V_k)
        composed = params["shared"] * (params["task_cols"][k] @ params["task_rows"][k])
        assert run.scalars[f"prompt_rms/task/{name}"] == pytest.approx(rms(composed), rel=1e-5)


def test_prompt_scale_warns_once_past_the_bound(capsys):
    run, _ = _mpt_run(2.0, embedding_value=0.1)  # bound 10 × 0.1 = 1 < 2
    action = A.PromptScale()
    action.on_start(run)
    for s in (1, 2, 3):
        action.after_step(run, s, FINITE)
    out = capsys.readouterr().out
    assert out.count("WARNING") == 1 and "at step 1 the prompt's RMS passed 1 " in out
    assert "shared 2, task/task_a 2, task/task_b 2." in out and action.warned_at == 1
    quiet, _ = _mpt_run(2.0, embedding_value=0.1)
    action = A.PromptScale(max_rms=5.0)
    action.on_start(quiet)
    action.after_step(quiet, 1, FINITE)
    assert action.warned_at is None and "WARNING" not in capsys.readouterr().out


# -- On the loop ------------------------------------------------------------------------------


def _loop(model_dir=None, *, tx=None, num_steps=3, actions=None, **kwargs):
    model, loss_fn, default_tx, frozen = worker.model_and_objective()
    actions = actions or [A.NonFinite(), A.Checkpoint(every=2), A.PromptScale(),
                          A.Console(progress_bar=False), A.StopOnSignal()]  # fmt: skip
    return train_loop(
        loss_fn, tx or default_tx, worker.initial_prompt(0), frozen, worker.batches(0),
        task_names=worker.TASKS, model_dir=model_dir, num_steps=num_steps, log_every=1,
        generator=model.prompt, actions=actions, **kwargs,
    )  # fmt: skip


def test_adafactor_at_lr_1e9_warns_about_the_prompt_scale(capsys):
    """Issue 15: Adafactor (parameter scaling on) at lr 1e9 stays finite and ends with a
    prompt of RMS ~1e13 and exit 0; the prompt-scale warning must say so."""
    result = _loop(tx=optax.adafactor(1e9), num_steps=2)
    out = capsys.readouterr().out
    assert out.count("WARNING: at step 1 the prompt's RMS passed") == 1
    assert result.train[0]["prompt_rms/shared"] > 1e6
    assert result.train[0]["prompt_rms/shared"] > 10 * result.train[0]["embedding_rms"]


def test_a_signal_saves_the_step_and_exits_with_128_plus_signal(tmp_path, capsys):
    class SendSignal(A.Action):
        def after_step(self, run, step, metrics):
            if step == 2:
                os.kill(os.getpid(), signal.SIGTERM)

    previous = signal.getsignal(signal.SIGTERM)
    actions = [A.Checkpoint(every=100), SendSignal(), A.Console(progress_bar=False),
               A.StopOnSignal(resume_command="mpt-jax train --gin.X=1")]  # fmt: skip
    with pytest.raises(A.TrainingInterrupted) as info:
        _loop(str(tmp_path), num_steps=5, actions=actions)
    assert (info.value.code, info.value.step) == (128 + signal.SIGTERM, 2)
    assert _saved_steps(str(tmp_path)) == [2]
    out = capsys.readouterr().out
    assert "stopped by SIGTERM after step 2 of 5" in out
    assert "Resume with the same command:\n  mpt-jax train --gin.X=1" in out
    assert signal.getsignal(signal.SIGTERM) is previous  # handler restored


def test_resume_command_quotes_only_what_needs_it_and_splits_back():
    argv = ["mpt-jax", "train", "--gin_file=runner/source.gin", "--gin.MODEL_DIR='runs/x'",
            "--gin.train_loop.num_steps=500", "--gin_bindings=train_loop.seed = 3",
            '--gin.NOTE="a $HOME"', "--gin.E=", "my run", "it's", "",
            "--gin.T=(1, 'a')"]  # fmt: skip
    line = A.shell_join(argv)
    assert line == (
        "mpt-jax train --gin_file=runner/source.gin --gin.MODEL_DIR=\"'runs/x'\" "
        '--gin.train_loop.num_steps=500 --gin_bindings="train_loop.seed = 3" '
        "--gin.NOTE='\"a $HOME\"' --gin.E= \"my run\" \"it's\" '' --gin.T=\"(1, 'a')\""
    )  # fmt: skip
    assert shlex.split(line) == argv
    with_specials = ["a`b", "x\\y", "!", "ü", "*", "~/x", "a\nb"]
    assert shlex.split(A.shell_join(with_specials)) == with_specials


def test_a_run_failing_before_its_first_step_writes_nothing(tmp_path):
    started = []
    model_dir = str(tmp_path / "run")

    def no_data(start):
        return iter(())

    model, loss_fn, tx, frozen = worker.model_and_objective()
    with pytest.raises(ValueError, match="ran out after 0 batches"):
        train_loop(loss_fn, tx, worker.initial_prompt(0), frozen, no_data,
                   task_names=worker.TASKS, model_dir=model_dir, num_steps=2,
                   on_started=lambda: started.append(1))  # fmt: skip
    assert not os.path.exists(model_dir) and not started
    result = _loop(model_dir, num_steps=1, on_started=lambda: started.append(1))
    assert started == [1] and int(result.state.step) == 1
    records = read_metrics(model_dir, "train")
    assert records[0]["step"] == 1 and "prompt_rms/task/source_0" in records[0]
    json.dumps(records)  # every recorded value is JSON


def test_a_finished_run_started_again_trains_and_evaluates_nothing(tmp_path, capsys):
    calls = []

    def evaluate(params, step):
        calls.append(step)
        return {"accuracy": 50.0}

    def actions():
        return [A.Checkpoint(every=2), A.Evaluate(), A.Console(progress_bar=False)]

    _loop(str(tmp_path), num_steps=2, actions=actions(), evaluate=evaluate)
    assert calls == [2]
    capsys.readouterr()
    again = _loop(str(tmp_path), num_steps=2, actions=actions(), evaluate=evaluate)
    out = capsys.readouterr().out
    assert calls == [2] and again.train == [] and again.eval == []  # no second eval row
    assert "nothing to train in" in out and "at step 2 of train_loop.num_steps = 2" in out
    assert "training steps 3..2" not in out
    assert [r["step"] for r in read_metrics(str(tmp_path), "eval")] == [2]
