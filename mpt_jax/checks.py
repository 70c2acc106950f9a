"""Task-id checks that hold under ``jit``, for the public entry points.

Inside a compiled program an out-of-range task id is not an error: the generator's gather
clamps it, so id 3 of 3 tasks (or -1) silently uses id 2's prompt, and a train step sends
its gradient to another task. The generators check ids only when they are concrete. So
every public entry point that takes task ids (decoding, scoring, rank classification, the
train and eval steps) calls :func:`check_task_ids` *before* dispatching its jitted
program:

- concrete ids (numpy, a jax array, a list): checked on the host; the call raises
  ``ValueError`` naming the id, the entry point and ``[0, num_tasks)`` and nothing runs;
- traced ids (the entry point called inside the caller's own ``jit``/``grad``/``vmap``):
  a ``jax.debug.callback`` in the program checks them when it runs; the call then fails
  with JAX's runtime error carrying the same message.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import numpy as np


def num_tasks_of(model: Any) -> int | None:
    """The number of tasks of a ``PromptedT5``'s prompt generator, or None when its prompt
    ignores task ids (no prompt, a ``SinglePrompt``)."""
    prompt = getattr(model, "prompt", model)
    if prompt is None:
        return None
    tasks = getattr(prompt, "num_tasks", None)
    return None if tasks is None else int(tasks)


def _raise_if_out_of_range(ids: Any, num_tasks: int, where: str) -> None:
    ids = np.asarray(ids)
    if ids.size and not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"{where}: task_ids must be integers, got dtype {ids.dtype}")
    bad = ids[(ids < 0) | (ids >= num_tasks)]
    if bad.size:
        raise ValueError(
            f"{where}: task id {int(bad.reshape(-1)[0])} is out of range [0, {num_tasks}) "
            f"(the prompt has {num_tasks} tasks; inside jit the id would silently use "
            "another task's prompt)"
        )


def check_task_ids(task_ids: Any, num_tasks: int | None, where: str) -> None:
    """Raises ``ValueError`` when a task id is outside ``[0, num_tasks)``.

    Args:
      task_ids: ``[batch]`` ids, concrete or traced; None is accepted (no ids given).
      num_tasks: the prompt's task count; None skips the check (a prompt without tasks).
      where: the entry point, for the message (``"greedy_decode"``).
    """
    if task_ids is None or num_tasks is None:
        return
    if isinstance(task_ids, jax.core.Tracer):
        check = functools.partial(_raise_if_out_of_range, num_tasks=num_tasks, where=where)
        jax.debug.callback(check, task_ids)
        return
    _raise_if_out_of_range(task_ids, num_tasks, where)
