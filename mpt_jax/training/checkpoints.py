"""Orbax checkpoints of a prompt run: the prompt tree, its optimizer state, and metadata.

A checkpoint directory ``<dir>/<step>/`` holds three orbax items:

- ``params``: the prompt tree (``TrainState.params``), restorable on its own (a source
  checkpoint read by a target run needs nothing else);
- ``opt_state``: the optimizer state of the prompt tree;
- ``meta`` (JSON): ``step``, ``data_position`` (batches consumed), ``task_names`` (the
  task-id mapping, id order), ``backbone`` (how the frozen backbone was obtained: a path
  or ``"random:<seed>"`` — the backbone itself is never copied), ``format_version``, and
  whatever the caller adds under ``extra``: the ``train`` job adds ``extra["identity"]``,
  what made the checkpoint (generator, backbone hash, vocabulary, mapping, version), which
  every reuse compares (:mod:`mpt_jax.training.identity`).

Guarantees:

- Atomic: orbax writes into a temporary directory and renames it when complete, so a
  run killed mid-write leaves the previous checkpoint as the latest good one (the
  half-written directory is not listed as a step).
- Only finite values are written: :meth:`Checkpointer.save` refuses (and logs) a state
  with a NaN/Inf, so it never replaces a good checkpoint with a broken one.
- ``max_to_keep`` newest steps are kept; older ones are deleted after a new one is
  complete.
- Named faults: a checkpoint whose files cannot be read (a truncated array file or
  ``meta``, a missing item) raises :class:`CorruptCheckpointError` naming the step and
  the file; :meth:`Checkpointer.restore_latest` then falls back to the newest readable
  step, and :meth:`Checkpointer.set_aside` renames the unreadable one out of the way.
- Nothing on disk until the first save: opening a checkpointer on a missing folder (a
  misspelled path, a run that fails before its first step) creates no folder.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from mpt_jax.training.state import TrainState

FORMAT_VERSION = 1
#: The checkpoints of a run live in ``<model_dir>/checkpoints``.
CHECKPOINT_SUBDIR = "checkpoints"
PyTree = Any
log = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """A checkpoint that is missing, or that does not fit the run loading it."""


class CorruptCheckpointError(CheckpointError):
    """A checkpoint whose files cannot be read (truncated, missing, undecodable).

    Attributes: ``step``; ``file``, the unreadable file (or the item's folder when the
    reader does not name one); ``reason``, the reader's message, shortened.
    """

    def __init__(self, directory: str, step: int, file: str, reason: str):
        self.step, self.file, self.reason = step, file, reason
        super().__init__(
            f"the checkpoint of step {step} in {directory!r} is unreadable: {file}: {reason}"
        )


_LOCAL_FILE = re.compile(r'local file "([^"]*[^/"])"')


def _corrupt(directory: str, step: int, item: str, error: Exception) -> CorruptCheckpointError:
    """Names the file behind a read ``error`` of ``item`` (TensorStore names it in its
    message; a JSON item has one file, ``metadata``)."""
    message = str(error).split(" [tensorstore_spec=")[0].strip() or type(error).__name__
    found = _LOCAL_FILE.findall(message)
    item_dir = os.path.join(directory, str(step), item)
    if found:
        file = found[-1]
    elif isinstance(error, ValueError) and type(error).__name__ == "JSONDecodeError":
        file = os.path.join(item_dir, "metadata" if item == "meta" else "_METADATA")
        message = f"invalid JSON ({message})"
    else:
        file = item_dir
    if len(message) > 300:
        message = message[:300] + " …"
    return CorruptCheckpointError(directory, step, file, message)


def checkpoint_dir(path: str | os.PathLike) -> str:
    """The checkpoint folder of ``path``: ``<path>/checkpoints`` when ``path`` is a run
    directory that has one, else ``path`` itself."""
    path = os.fspath(path)
    sub = os.path.join(path, CHECKPOINT_SUBDIR)
    return sub if os.path.isdir(sub) else path


def tree_is_finite(tree: PyTree) -> bool:
    """True when every floating-point leaf of ``tree`` is free of NaN and Inf."""
    for leaf in jax.tree.leaves(tree):
        if jnp.issubdtype(jnp.result_type(leaf), jnp.inexact) and not bool(
            np.all(np.isfinite(np.asarray(leaf)))
        ):
            return False
    return True


class Checkpointer:
    """Saves and restores :class:`TrainState` plus run metadata under ``directory``.

    Args:
      directory: the run's checkpoint folder (created if missing).
      max_to_keep: how many of the newest checkpoints to keep (None keeps all).
      async_save: write in a background thread (call :meth:`wait` before reading).
    """

    def __init__(
        self, directory: str | os.PathLike, *, max_to_keep: int | None = 3, async_save: bool = False
    ):
        if max_to_keep is not None and max_to_keep < 1:
            raise ValueError(f"max_to_keep must be >= 1 or None, got {max_to_keep}")
        self.directory = os.path.abspath(os.fspath(directory))
        # create=False: the folder appears with the first save (see :meth:`save`).
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=False, enable_async_checkpointing=async_save
        )
        self._manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=("params", "opt_state", "meta")
        )

    # -- queries ---------------------------------------------------------------------

    def latest_step(self) -> int | None:
        """The newest complete checkpoint's step, or None when there is none."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    # -- writing ---------------------------------------------------------------------

    def save(
        self,
        state: TrainState,
        *,
        data_position: int,
        task_names: tuple[str, ...] | list[str],
        backbone: str,
        extra: Mapping[str, Any] | None = None,
        force: bool = False,
    ) -> bool:
        """Write ``state`` at ``state.step``. Returns False (and writes nothing) when a
        parameter or optimizer value is not finite, or the step already exists."""
        step = int(state.step)
        if not tree_is_finite((state.params, state.opt_state)):
            log.error(
                "Not saving step %d: the prompt or optimizer state holds NaN/Inf; "
                "the latest good checkpoint (step %s) stays.", step, self.latest_step(),
            )  # fmt: skip
            return False
        if step in self._manager.all_steps():
            return False
        meta = {
            "format_version": FORMAT_VERSION,
            "step": step,
            "data_position": int(data_position),
            "task_names": list(task_names),
            "backbone": backbone,
            "extra": dict(extra or {}),
        }
        os.makedirs(self.directory, exist_ok=True)
        args = ocp.args.Composite(
            params=ocp.args.StandardSave(state.params),
            opt_state=ocp.args.StandardSave(state.opt_state),
            meta=ocp.args.JsonSave(meta),
        )
        saved = self._manager.save(step, args=args, force=force)
        return bool(saved)

    def wait(self) -> None:
        """Block until a background save is complete."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()

    # -- reading ---------------------------------------------------------------------

    def _step_or_latest(self, step: int | None) -> int:
        if step is None:
            step = self.latest_step()
            if step is None:
                raise CheckpointError(f"no checkpoint in {self.directory!r}")
        elif step not in self._manager.all_steps():
            raise CheckpointError(
                f"no checkpoint for step {step} in {self.directory!r}; steps: {self.all_steps()}"
            )
        return step

    def _read(self, step: int, item: str, args: Any) -> Any:
        """Item ``item`` of ``step``; a read failure becomes :class:`CorruptCheckpointError`."""
        try:
            return self._manager.restore(step, args=ocp.args.Composite(**{item: args}))[item]
        except Exception as e:  # orbax/TensorStore raise ValueError, OSError, JSON errors
            raise _corrupt(self.directory, step, item, e) from e

    def restore_meta(self, step: int | None = None) -> dict[str, Any]:
        step = self._step_or_latest(step)
        return self._read(step, "meta", ocp.args.JsonRestore())

    def restore_params(self, step: int | None = None, target: PyTree | None = None) -> PyTree:
        """The prompt tree alone (numpy leaves when ``target`` is None)."""
        step = self._step_or_latest(step)
        restore = ocp.args.StandardRestore(_abstract(target) if target is not None else None)
        return self._read(step, "params", restore)

    def restore(self, target: TrainState, step: int | None = None) -> tuple[TrainState, dict]:
        """``(state, meta)`` at ``step`` (default: the latest), shaped like ``target``.

        Raises:
          CorruptCheckpointError: when a file of the checkpoint cannot be read.
          CheckpointError: when there is no such checkpoint, or its prompt tree does not
            have the structure and shapes of ``target.params``.
        """
        step = self._step_or_latest(step)
        meta = self.restore_meta(step)
        _check_tree_fits(self.restore_params(step), target.params, self.directory, step)
        params = self.restore_params(step, target.params)
        opt_state = self._read(
            step, "opt_state", ocp.args.StandardRestore(_abstract(target.opt_state))
        )
        state = TrainState(step=jnp.asarray(meta["step"], jnp.int32), params=params,
                           opt_state=opt_state)  # fmt: skip
        return state, meta

    def restore_latest(
        self,
        target: TrainState,
        *,
        on_corrupt: Callable[[CorruptCheckpointError], None] | None = None,
    ) -> tuple[TrainState, dict] | None:
        """The newest *readable* checkpoint as ``(state, meta)``, or None when there is none.

        Steps are tried newest first; each unreadable one is passed to ``on_corrupt``
        (default: a warning naming its step and file) and the next older one is tried.

        Raises:
          CorruptCheckpointError: when no checkpoint is readable (the newest one's error).
          CheckpointError: when a readable checkpoint does not fit ``target``.
        """
        errors: list[CorruptCheckpointError] = []
        for step in reversed(self.all_steps()):
            try:
                return self.restore(target, step)
            except CorruptCheckpointError as e:
                errors.append(e)
                if on_corrupt is not None:
                    on_corrupt(e)
                else:
                    log.warning("%s; trying the previous checkpoint", e)
        if errors:
            raise errors[0]
        return None

    def set_aside(self, step: int) -> str:
        """Rename step ``step``'s folder to ``<step>.corrupt`` (kept for inspection, no longer
        a step: not restored, not counted by ``max_to_keep``, not in the way of a new save of
        that step). Returns the new path."""
        src = os.path.join(self.directory, str(step))
        dst = src + ".corrupt"
        n = 1
        while os.path.exists(dst):
            n += 1
            dst = f"{src}.corrupt{n}"
        os.rename(src, dst)
        self._manager.reload()
        return dst


def _abstract(tree: PyTree) -> PyTree:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), jnp.result_type(x)), tree)


def _check_tree_fits(saved: PyTree, target: PyTree, directory: str, step: int) -> None:
    saved_shapes = {
        jax.tree_util.keystr(k): np.shape(v) for k, v in jax.tree_util.tree_leaves_with_path(saved)
    }
    target_shapes = {
        jax.tree_util.keystr(k): np.shape(v) for k, v in jax.tree_util.tree_leaves_with_path(target)
    }
    if saved_shapes != target_shapes:
        raise CheckpointError(
            f"the prompt tree in {directory!r} step {step} does not fit this run's prompt: "
            f"saved {saved_shapes}, expected {target_shapes}"
        )
