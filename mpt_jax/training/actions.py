"""The training loop's policies, as actions: checkpoints, evaluation, non-finite steps,
signals, prompt-scale telemetry and the console (after T5X's trainer ``BaseAction``s).

The loop (:func:`mpt_jax.training.loop.train_loop`) only steps; everything else is an
:class:`Action` with hooks it calls at fixed points::

    on_start(run)                   once, before the first step (Checkpoint restores here)
    after_step(run, step, metrics)  after every step, in list order (may raise)
    on_log(run, step, record)       at every recorded step (``train_loop.log_every``)
    on_interrupt(run, step)         a signal asked to stop: after ``step``, before exiting
    on_end(run)                     after the last step (not after an error)
    close(run)                      always, last

``run`` is the :class:`Run` the loop shares with its actions (state, position, writer,
console). Order matters in ``after_step`` only: :class:`NonFinite` comes first so that a
non-finite step is stopped before anything records or saves it (:func:`default_actions`
keeps that order). Each action is gin-configurable (``actions.Checkpoint.every = 1000``);
``train_loop.actions = [...]`` replaces the default list.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import shlex
import signal
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import gin
import jax
import numpy as np

from mpt_jax.errors import BindingError
from mpt_jax.training.checkpoints import (
    CHECKPOINT_SUBDIR,
    Checkpointer,
    CorruptCheckpointError,
)
from mpt_jax.training.state import TrainState
from mpt_jax.training.summaries import MetricsWriter

PyTree = Any
EvaluateFn = Callable[[PyTree, int], Mapping[str, float]]
log = logging.getLogger(__name__)


class NonFiniteError(FloatingPointError):
    """A NaN/Inf loss or gradient stopped the run; ``step`` is the failing step (1-based)."""

    def __init__(self, step: int, loss: float):
        self.step = step
        super().__init__(
            f"non-finite loss or gradient at step {step} (loss={loss}); the prompt was not "
            "updated and no checkpoint was written for it. Bind "
            "actions.NonFinite.policy = 'skip' to skip such steps instead."
        )


class TrainingInterrupted(SystemExit):
    """A signal stopped the run at a step boundary (after its checkpoint was saved).

    A ``SystemExit`` whose code is ``128 + signal number`` (130 for SIGINT, 143 for
    SIGTERM, the shell's convention): the process ends non-zero without a traceback.
    """

    def __init__(self, step: int, signum: int):
        self.step, self.signum = step, signum
        super().__init__(128 + signum)


@dataclasses.dataclass
class Run:
    """What the loop shares with its actions.

    Fixed for the run: ``model_dir`` (None: nothing is written), ``task_names`` (the
    task-id mapping, id order), ``num_steps``, ``log_every`` (the record period),
    ``backbone`` (how the backbone was obtained), ``meta`` (JSON facts stored with each
    checkpoint), ``frozen`` (the frozen tree), ``evaluate``, ``generator`` (the prompt
    generator module, or None) and ``rates_at`` (``rates_at(step) -> {"learning_rate": v,
    "learning_rate/<group>": v}``, the optimizer's rates at a step, e.g.
    :meth:`~mpt_jax.training.optimizers.PromptRecipe.rates_at`; None: read them from an
    ``optax.inject_hyperparams`` state, if any).
    Changing: ``state`` (the current :class:`TrainState`, on device; donated by the next
    step, so read it inside a hook only), ``data_position`` (batches consumed),
    ``start_step`` (the step the run started or resumed at), ``batch`` (the host batch of
    the last step), ``scalars`` (extra scalars for the current step's record: actions add
    to it in ``after_step``), ``summary`` (lines of the end-of-run summary),
    ``stop_signal`` (set by :class:`StopOnSignal`), ``skipped_steps``.
    """

    task_names: tuple[str, ...]
    num_steps: int
    log_every: int
    state: TrainState
    writer: MetricsWriter
    model_dir: str | None = None
    backbone: str = "unknown"
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)
    frozen: PyTree = None
    evaluate: EvaluateFn | None = None
    generator: Any = None
    rates_at: Callable[[int], Mapping[str, float]] | None = None
    data_position: int = 0
    start_step: int = 0
    batch: Mapping[str, np.ndarray] | None = None
    scalars: dict[str, float] = dataclasses.field(default_factory=dict)
    summary: list[str] = dataclasses.field(default_factory=list)
    stop_signal: int | None = None
    skipped_steps: list[int] = dataclasses.field(default_factory=list)
    bar: Any = None  # a tqdm bar while one is shown (echo writes above it)

    def echo(self, line: str) -> None:
        """Print a console line (above the progress bar when one is shown)."""
        if self.bar is not None:
            self.bar.write(line, file=sys.stdout)
        else:
            print(line, file=sys.stdout, flush=True)

    def is_log_step(self, step: int) -> bool:
        """Whether ``step``'s metrics are recorded (every ``log_every`` steps and the last)."""
        return step % self.log_every == 0 or step == self.num_steps

    def host_params(self) -> PyTree:
        """The current prompt tree as numpy arrays."""
        return jax.tree.map(np.asarray, jax.device_get(self.state.params))


class Action:
    """A policy hung on the loop; override the hooks you need (all default to nothing)."""

    def on_start(self, run: Run) -> None:
        pass

    def after_step(self, run: Run, step: int, metrics: Mapping[str, Any]) -> None:
        pass

    def on_log(self, run: Run, step: int, record: Mapping[str, float]) -> None:
        pass

    def on_interrupt(self, run: Run, step: int) -> None:
        pass

    def on_end(self, run: Run) -> None:
        pass

    def close(self, run: Run) -> None:
        pass


# -- non-finite steps -------------------------------------------------------------------------

NONFINITE_POLICIES = ("raise", "skip")


@gin.configurable(module="actions")
class NonFinite(Action):
    """What a step with a NaN/Inf loss or gradient does (the step itself already kept the
    prompt and optimizer state unchanged and reported ``metrics["nonfinite"] = 1``).

    Args:
      policy: ``"raise"`` stops with :class:`NonFiniteError` naming the step (the last
        good checkpoint stays the latest); ``"skip"`` prints the step, counts it in
        ``skipped_steps`` and goes on.
    """

    def __init__(self, policy: str = "raise"):
        if policy not in NONFINITE_POLICIES:
            raise BindingError(
                f"actions.NonFinite.policy must be one of {NONFINITE_POLICIES}, got {policy!r}"
            )
        self.policy = policy

    def after_step(self, run: Run, step: int, metrics: Mapping[str, Any]) -> None:
        if not metrics["nonfinite"]:
            return
        if self.policy == "raise":
            raise NonFiniteError(step, float(metrics["loss"]))
        run.skipped_steps.append(step)
        run.echo(f"skipped step {step}: non-finite loss or gradient")


# -- checkpoints ------------------------------------------------------------------------------


def _check_resumable(saved: Mapping[str, Any], run: Run, directory: str) -> None:
    from mpt_jax.data.task_ids import TaskIndex, check_compatible

    check_compatible(
        TaskIndex(tuple(saved["task_names"])),
        TaskIndex(tuple(run.task_names)),
        context=f"resuming from {directory}",
    )
    saved_impl = saved["extra"].get("dropout_rng_impl", "threefry2x32")
    impl = run.meta.get("dropout_rng_impl", "threefry2x32")
    if saved_impl != impl:
        raise ValueError(
            f"the run in {directory} drew dropout with dropout_rng_impl={saved_impl!r}; "
            f"resuming it with {impl!r} would change its draws (bind "
            "train_loop.dropout_rng_impl to the saved one)"
        )


@gin.configurable(module="actions")
class Checkpoint(Action):
    """Resume at the start, save every ``every`` steps and at the last step.

    Resume: the newest *readable* checkpoint of ``<model_dir>/checkpoints`` is restored; a
    newer unreadable one (a truncated array file or ``meta``) is named (step, file),
    renamed to ``<step>.corrupt`` and the run goes on from the older one, saying so. The
    saved task-id mapping and dropout PRNG must equal the run's.

    Saves: atomic (orbax), and never of a state holding NaN/Inf (the last good checkpoint
    stays the latest). On a signal (:class:`StopOnSignal`) the current step is saved.
    Nothing is written before the first save.

    Args:
      every: save period in steps (the final step is always saved).
      keep: how many of the newest checkpoints to keep (None: all).
      resume: restore the latest checkpoint when there is one.
    """

    def __init__(self, every: int = 500, keep: int | None = 3, resume: bool = True):
        if every < 1:
            raise BindingError(f"actions.Checkpoint.every must be >= 1, got {every}")
        if keep is not None and keep < 1:
            raise BindingError(f"actions.Checkpoint.keep must be >= 1 or None, got {keep}")
        self.every, self.keep, self.resume = every, keep, resume
        self._ckpt: Checkpointer | None = None
        self.saved: list[int] = []

    def _checkpointer(self, run: Run) -> Checkpointer | None:
        if self._ckpt is None and run.model_dir:
            self._ckpt = Checkpointer(
                os.path.join(run.model_dir, CHECKPOINT_SUBDIR), max_to_keep=self.keep
            )
        return self._ckpt

    def on_start(self, run: Run) -> None:
        if not (run.model_dir and self.resume):
            return
        if not os.path.isdir(os.path.join(run.model_dir, CHECKPOINT_SUBDIR)):
            return
        ckpt = self._checkpointer(run)
        corrupt: list[CorruptCheckpointError] = []
        restored = ckpt.restore_latest(run.state, on_corrupt=corrupt.append)
        if restored is None:
            return
        state, meta = restored
        _check_resumable(meta, run, ckpt.directory)
        for error in corrupt:
            moved = ckpt.set_aside(error.step)
            run.echo(
                f"checkpoint step {error.step} is unreadable ({error.file}: {error.reason}); "
                f"moved it to {moved}"
            )
        if corrupt:
            run.echo(f"falling back to step {int(meta['step'])}, the newest complete checkpoint")
        run.state, run.data_position = state, int(meta["data_position"])
        run.start_step = int(state.step)
        run.echo(f"resumed from {ckpt.directory} at step {run.start_step}")

    def _save(self, run: Run) -> None:
        ckpt = self._checkpointer(run)
        if ckpt is None:
            return
        saved = ckpt.save(
            run.state, data_position=run.data_position, task_names=list(run.task_names),
            backbone=run.backbone, extra=run.meta,
        )  # fmt: skip
        if saved:
            self.saved.append(int(run.state.step))

    def after_step(self, run: Run, step: int, metrics: Mapping[str, Any]) -> None:
        if step % self.every == 0 or step == run.num_steps:
            self._save(run)

    def on_interrupt(self, run: Run, step: int) -> None:
        if self._checkpointer(run) is None:
            run.echo("no model_dir: nothing was saved")
            return
        if step not in self.saved:
            self._save(run)
        self._ckpt.wait()
        latest = self._ckpt.latest_step()
        run.echo(f"saved the checkpoint of step {latest} in {self._ckpt.directory}")

    def on_end(self, run: Run) -> None:
        if self._ckpt is not None:
            self._ckpt.wait()
            run.summary.append(
                f"checkpoints: {self._ckpt.directory} (steps {self._ckpt.all_steps()})"
            )

    def close(self, run: Run) -> None:
        if self._ckpt is not None:
            self._ckpt.close()
            self._ckpt = None


# -- evaluation -------------------------------------------------------------------------------


def _format(metrics: Mapping[str, float]) -> str:
    return ", ".join(f"{k} {v:.4g}" for k, v in metrics.items())


@gin.configurable(module="actions")
class Evaluate(Action):
    """Call the run's ``evaluate(params, step)`` every ``every`` steps and after the last
    step; print each result on its own line and track the best step.

    Args:
      every: period in steps (0: only after the last step).
      metric: the metric that ranks steps (None: the first one ``evaluate`` returns).
      mode: ``"max"`` (accuracy-like) or ``"min"`` (loss-like).

    Attributes: ``best_step``, ``best_value`` (None before the first evaluation).
    """

    def __init__(self, every: int = 0, metric: str | None = None, mode: str = "max"):
        if every < 0:
            raise BindingError(f"actions.Evaluate.every must be >= 0, got {every}")
        if mode not in ("max", "min"):
            raise BindingError(f"actions.Evaluate.mode must be 'max' or 'min', got {mode!r}")
        self.every, self.metric, self.mode = every, metric, mode
        self.best_step: int | None = None
        self.best_value: float | None = None
        self.last: dict[str, float] = {}

    def _run(self, run: Run, step: int) -> None:
        if run.evaluate is None:
            return
        metrics = {k: float(v) for k, v in run.evaluate(run.state.params, step).items()}
        run.writer.write(step, metrics, kind="eval")
        self.last = metrics
        if self.metric is None and metrics:
            self.metric = next(iter(metrics))
        value = metrics.get(self.metric)
        if value is None:
            raise BindingError(
                f"actions.Evaluate.metric = {self.metric!r} is not among the eval metrics "
                f"{sorted(metrics)}" + ("" if metrics else " (the eval tasks define no metric_fns)")
            )
        best = self.best_value
        if best is None or (value > best if self.mode == "max" else value < best):
            self.best_step, self.best_value = step, value
        run.echo(f"eval step {step}: {_format(metrics)}  (best {self.metric}: "
                 f"{self.best_value:.4g} at step {self.best_step})")  # fmt: skip

    def after_step(self, run: Run, step: int, metrics: Mapping[str, Any]) -> None:
        if self.every and step % self.every == 0 and step != run.num_steps:
            self._run(run, step)

    def on_end(self, run: Run) -> None:
        if run.start_step >= run.num_steps:
            return  # a finished run started again: evaluated when it ended, not twice
        self._run(run, run.num_steps)
        if self.best_step is not None:
            run.summary.append(f"final eval: {_format(self.last)}")
            run.summary.append(f"best step: {self.best_step} ({self.metric} {self.best_value:.4g})")


# -- signals ----------------------------------------------------------------------------------


#: What a POSIX shell reads as it is (shlex's set of safe characters).
_PLAIN = re.compile(r"[\w@%+=:,./-]+", re.ASCII)


def _shell_word(text: str) -> str:
    """``text`` as one shell word: bare when plain, else in double quotes when nothing in it
    is special there (``'runs/x'`` → ``"'runs/x'"``), else ``shlex.quote``."""
    if _PLAIN.fullmatch(text):
        return text
    if not re.search(r'["$`\\!]', text):
        return f'"{text}"'
    return shlex.quote(text)


def shell_join(argv: Sequence[str]) -> str:
    """A command line a reader can check and a shell splits back into ``argv``: only what
    needs it is quoted, and for ``--flag=value`` only the value, so a gin binding reads as
    the README writes it (``--gin.MODEL_DIR="'runs/x'"``, not ``shlex.join``'s
    ``'--gin.MODEL_DIR='"'"'runs/x'"'"''``)."""
    words = []
    for arg in argv:
        flag, eq, value = arg.partition("=")
        if eq and flag.startswith("-") and _PLAIN.fullmatch(flag):
            words.append(f"{flag}={_shell_word(value) if value else ''}")
        else:
            words.append(_shell_word(arg) if arg else "''")
    return " ".join(words)


def _command_line() -> str:
    """This process's command line (``mpt-jax ...``; a script run by Python gets the
    interpreter in front)."""
    argv = list(sys.argv)
    if argv and os.path.basename(argv[0]) == "mpt-jax":
        argv[0] = "mpt-jax"
    elif argv and argv[0].endswith(".py"):
        argv.insert(0, sys.executable)
    return shell_join(argv)


@gin.configurable(module="actions")
class StopOnSignal(Action):
    """SIGINT / SIGTERM stop the run at the next step boundary: the step in flight
    finishes, every action's ``on_interrupt`` runs (:class:`Checkpoint` saves that step),
    the command that resumes the run is printed and :class:`TrainingInterrupted` ends the
    process with ``128 + signal number``. A second signal acts as it would have without
    this action (a second Ctrl-C raises ``KeyboardInterrupt``).

    Handlers are installed only in the main thread, and the previous ones are restored
    when the run ends.

    Args:
      signals: the signal names to catch.
      resume_command: the command printed to resume (default: this process's command
        line, which resumes the run from its checkpoint).
    """

    def __init__(
        self, signals: Sequence[str] = ("SIGINT", "SIGTERM"), resume_command: str | None = None
    ):
        self.signums = [signal.Signals[name] for name in signals]
        self.resume_command = resume_command
        self._previous: dict[int, Any] = {}

    def on_start(self, run: Run) -> None:
        if threading.current_thread() is not threading.main_thread():
            log.warning("not in the main thread: SIGINT/SIGTERM will not save a checkpoint")
            return

        def handler(signum, frame):
            run.stop_signal = signum
            signal.signal(signum, self._previous.pop(signum, signal.SIG_DFL))
            # os.write, not print: a handler may interrupt a print (reentrant buffer).
            name = signal.Signals(signum).name
            message = (f"\n{name}: stopping after the current step (saving a checkpoint); "
                       "send it again to stop at once\n")  # fmt: skip
            os.write(2, message.encode())

        for signum in self.signums:
            self._previous[signum] = signal.signal(signum, handler)

    def on_interrupt(self, run: Run, step: int) -> None:
        name = signal.Signals(run.stop_signal).name
        command = self.resume_command or _command_line()
        run.echo(f"stopped by {name} after step {step} of {run.num_steps}. "
                 f"Resume with the same command:\n  {command}")  # fmt: skip

    def close(self, run: Run) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous = {}


# -- prompt scale -----------------------------------------------------------------------------


def rms(x: Any) -> float:
    """Root mean square of all entries of ``x``."""
    x = np.asarray(x, np.float64)
    return float(np.sqrt(np.mean(np.square(x)))) if x.size else 0.0


def _param_name(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def _embedding(frozen: PyTree) -> np.ndarray | None:
    try:
        return frozen["backbone"]["token_embedder"]["embedding"]
    except (KeyError, TypeError):
        return None


@gin.configurable(module="actions")
class PromptScale(Action):
    """Prompt-scale telemetry: at every recorded step, the RMS of every prompt parameter
    (``prompt_rms/<name>``), of each task's composed prompt (``prompt_rms/task/<task>``,
    the generator applied to task ids ``0..T-1``) and of the backbone's token embeddings
    (``embedding_rms``) go into the step's record (metrics.jsonl, TensorBoard, console).

    A warning is printed once, the first time one of them exceeds the bound:
    ``max_rms`` when given, else ``ratio`` × the embeddings' RMS (prompts far larger than
    the token embeddings they sit beside dominate attention, see issue 12; Adafactor with
    parameter scaling compounds norms).

    Args:
      ratio: the bound as a multiple of the token embeddings' RMS.
      max_rms: an absolute bound (overrides ``ratio``; needed when the frozen tree has no
        ``backbone/token_embedder/embedding``).
    """

    def __init__(self, ratio: float = 10.0, max_rms: float | None = None):
        if ratio <= 0 or (max_rms is not None and max_rms <= 0):
            raise ValueError(
                f"actions.PromptScale.ratio and max_rms must be > 0, got {ratio}, {max_rms}"
            )
        self.ratio, self.max_rms = ratio, max_rms
        self.warned_at: int | None = None
        self._compose: Callable | None = None
        self._embedding_rms: float | None = None

    def on_start(self, run: Run) -> None:
        embedding = _embedding(run.frozen)
        self._embedding_rms = None if embedding is None else rms(jax.device_get(embedding))
        if run.generator is not None:
            generator, num_tasks = run.generator, len(run.task_names)
            dim = getattr(generator, "embed_dim", None)

            def compose(params):
                ids = jax.numpy.arange(num_tasks, dtype=jax.numpy.int32)
                embedded = jax.numpy.zeros((num_tasks, 1, dim), jax.numpy.float32)
                mask = jax.numpy.ones((num_tasks, 1), bool)
                return generator.apply({"params": params}, ids, embedded, mask)

            self._compose = jax.jit(compose) if dim is not None else None

    def bound(self) -> float | None:
        if self.max_rms is not None:
            return self.max_rms
        return None if self._embedding_rms is None else self.ratio * self._embedding_rms

    def measure(self, params: PyTree, task_names: Sequence[str]) -> dict[str, float]:
        """``{name: RMS}`` of the prompt parameters and composed task prompts."""
        out = {
            f"prompt_rms/{_param_name(path)}": rms(leaf)
            for path, leaf in jax.tree_util.tree_leaves_with_path(params)
        }
        if self._compose is not None:
            try:
                prompts = np.asarray(self._compose(params))  # [tasks, length, embed]
            except Exception as e:  # a generator that needs real inputs: parts only
                log.warning("prompt telemetry: cannot compose the task prompts (%s)", e)
                self._compose = None
            else:
                out.update({f"prompt_rms/task/{name}": rms(p)
                            for name, p in zip(task_names, prompts, strict=True)})  # fmt: skip
        return out

    def after_step(self, run: Run, step: int, metrics: Mapping[str, Any]) -> None:
        if not run.is_log_step(step):
            return
        values = self.measure(run.host_params(), run.task_names)
        if self._embedding_rms is not None:
            values["embedding_rms"] = self._embedding_rms
        run.scalars.update(values)
        bound = self.bound()
        if bound is None or self.warned_at is not None:
            return
        over = {k: v for k, v in values.items() if k.startswith("prompt_rms/") and not v <= bound}
        if over:
            self.warned_at = step
            if self.max_rms is not None:
                source = f"actions.PromptScale.max_rms = {self.max_rms:g}"
            else:
                source = f"{self.ratio:g} × the token embeddings' RMS {self._embedding_rms:.3g}"
            shown = ", ".join(f"{k[len('prompt_rms/') :]} {v:.3g}" for k, v in over.items())
            message = (f"WARNING: at step {step} the prompt's RMS passed {bound:.3g} "
                       f"({source}): {shown}. A prompt this large drowns the input; lower the "
                       "learning rate or check the optimizer's parameter scaling "
                       "(warned once per run)")  # fmt: skip
            run.echo(message)


# -- console ----------------------------------------------------------------------------------


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}"


@gin.configurable(module="actions")
class Console(Action):
    """Console lines at every recorded step, a progress bar, and the end-of-run summary.

    A line reads ``step 40/100  loss 1.234 (task_a 1.1, task_b 1.4)  lr 0.3  9.1 steps/s
    ETA 0:00:07``: the record's loss (mean since the last line), the per-task losses when
    the objective reports them, the learning rate of the step (one per parameter group
    with its own rate: ``lr 0.3  lr/task_cols 0.03``), the largest RMS of a task's prompt,
    the training steps/s since the first step (compile and evaluation time excluded) and
    the ETA at that rate. The first step's time (compile included) is printed on its own.

    Args:
      progress_bar: show a tqdm bar (None: only when stderr is a terminal).
    """

    def __init__(self, progress_bar: bool | None = None):
        self.progress_bar = progress_bar
        self.last_record: dict[str, float] = {}

    def on_start(self, run: Run) -> None:
        show = self.progress_bar
        if show is None:
            show = sys.stderr.isatty()
        if show:
            from tqdm.auto import tqdm

            run.bar = tqdm(total=run.num_steps, initial=run.start_step, desc="train", unit="step")
        where = f" in {run.model_dir}" if run.model_dir else ""
        if run.start_step >= run.num_steps:
            run.echo(f"nothing to train{where}: the run is at step {run.start_step} of "
                     f"train_loop.num_steps = {run.num_steps} (raise it to train on)")  # fmt: skip
            return
        run.echo(f"training steps {run.start_step + 1}..{run.num_steps}{where}")

    def after_step(self, run: Run, step: int, metrics: Mapping[str, Any]) -> None:
        if run.bar is not None:
            run.bar.update(1)
            if not metrics["nonfinite"]:
                run.bar.set_postfix(loss=f"{float(metrics['loss']):.4f}")

    def on_log(self, run: Run, step: int, record: Mapping[str, float]) -> None:
        self.last_record = dict(record)
        parts = [f"step {step}/{run.num_steps}"]
        if "loss" in record:
            parts.append(f"loss {record['loss']:.4f}")
        per_task = [(k[len("loss/") :], v) for k, v in record.items() if k.startswith("loss/")]
        inside = ", ".join(f"{n} {v:.3f}" for n, v in per_task)
        distilled = [k for k in ("kl", "mse") if record.get(k)]
        if distilled and "task_loss" in record:  # the objective is the task loss + distillation
            terms = ", ".join(f"{k} {record[k]:.3f}" for k in distilled)
            inside = f"task {record['task_loss']:.3f}" + (f": {inside}" if inside else "")
            inside += f"; {terms}"
        if inside:
            parts[-1] += f" ({inside})"
        rates = [(k, v) for k, v in record.items() if k.startswith("learning_rate")]
        parts += [f"{k.replace('learning_rate', 'lr')} {v:.3g}" for k, v in rates]
        task_rms = [v for k, v in record.items() if k.startswith("prompt_rms/task/")]
        if task_rms:
            parts.append(f"prompt rms {max(task_rms):.3g}")
        if "steps_per_second" in record:
            parts.append(f"{record['steps_per_second']:.2f} steps/s")
            left = run.num_steps - step
            if left and record["steps_per_second"] > 0:
                parts.append(f"ETA {_duration(left / record['steps_per_second'])}")
        elif "first_step_seconds" in record:
            parts.append(f"first step {record['first_step_seconds']:.1f} s (compile included)")
        if record.get("skipped_steps"):
            parts.append(f"skipped {int(record['skipped_steps'])}")
        run.echo("  ".join(parts))

    def on_end(self, run: Run) -> None:
        keep = ("loss", "steps_per_second")
        final = {k: v for k, v in self.last_record.items()
                 if k in keep or k.startswith("loss/")}  # fmt: skip
        if final:
            run.summary.insert(0, f"final train: {_format(final)}")
        if run.model_dir:
            run.summary.append(
                f"metrics: {os.path.join(run.model_dir, 'metrics.jsonl')} "
                f"(TensorBoard: {os.path.join(run.model_dir, 'tensorboard')})"
            )

    def close(self, run: Run) -> None:
        if run.bar is not None:
            run.bar.close()
            run.bar = None


def default_actions() -> list[Action]:
    """The loop's default policies, in the order they must run (each picks up its gin
    bindings): non-finite check, checkpoints, evaluation, prompt scale, console, signals."""
    return [NonFinite(), Checkpoint(), Evaluate(), PromptScale(), Console(), StopOnSignal()]


__all__ = [
    "Action",
    "Checkpoint",
    "Console",
    "Evaluate",
    "NonFinite",
    "NonFiniteError",
    "PromptScale",
    "Run",
    "StopOnSignal",
    "TrainingInterrupted",
    "default_actions",
    "rms",
]
