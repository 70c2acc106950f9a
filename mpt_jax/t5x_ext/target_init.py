"""Start a prompt from another run's exported prompt (target adaptation, distillation).

Value-level starts (the average of the source task matrices, a teacher's prompts) are
done by *initialisers* that read the prompt a previous run exported with
:mod:`mpt_jax.t5x_ext.export` (one ``.npy`` per parameter), not by rewriting T5X's
restore: T5X's restore transformations see placeholders rather than values with
Orbax-format checkpoints, so they cannot compute an SVD, and renaming a parameter
there is not honoured by every T5X/Orbax pairing. The backbone still comes from the
checkpoint through ``RestoreCheckpointConfig`` (prompt parameters skipped); the prompt
comes from its initialisers. The same initialisers serve the mpt-jax runner.

:func:`from_source_prompt` builds one part of a target MPT prompt (``shared``,
``task_cols`` or ``task_rows``) from a source MPT prompt with
:func:`mpt_jax.prompts.source_init.init_from_source`: ``exact`` source task k,
``average`` of the source task matrices brought to the target rank by SVD, or
``shared_only`` (fresh factors with ``U V ≈ 1``). The target's number of tasks and rank
are read from the parameter's shape, so one gin binding serves any target. gin
(``configs/runs/target.gin``)::

    prompts.MultitaskPrompt.shared_init = @shared/target_init.from_source_prompt()
    prompts.MultitaskPrompt.cols_init = @cols/target_init.from_source_prompt()
    prompts.MultitaskPrompt.rows_init = @rows/target_init.from_source_prompt()
    target_init.from_source_prompt.directory = %SOURCE_PROMPT_DIR
    target_init.from_source_prompt.method = 'average'
    shared/target_init.from_source_prompt.part = 'shared'
    ...
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gin
import jax
import jax.numpy as jnp
import numpy as np

from mpt_jax.prompts import io as prompt_io
from mpt_jax.prompts import source_init

PARTS = ("shared", "task_cols", "task_rows")
Initializer = Any


@gin.configurable(module="mpt_jax.t5x_ext.target_init")
def from_source_prompt(
    directory: str,
    part: str,
    method: str = "average",
    source_task: int = 0,
    source_tasks: Sequence[int] | None = None,
    seed: int = 0,
) -> Initializer:
    """An initialiser ``(rng, shape, dtype) -> array`` for one part of a target MPT prompt.

    Args:
      directory: the source prompt as exported (``shared.npy``, ``task_cols.npy``,
        ``task_rows.npy``).
      part: which target parameter this initialises: ``shared`` ``[L, D]``,
        ``task_cols`` ``[T, L, r]`` or ``task_rows`` ``[T, r, D]``.
      method: ``exact``, ``average`` or ``shared_only``.
      source_task: the source task copied by ``exact``.
      source_tasks: the source tasks averaged by ``average`` (default all).
      seed: seed of the fresh factors of ``shared_only`` (the same for both factors).

    Returns:
      The initialiser; it ignores ``rng`` (the start is determined by the source).
    """
    if part not in PARTS:
        raise ValueError(f"part must be one of {PARTS}; got {part!r}.")
    if method not in source_init.METHODS:
        raise ValueError(f"method must be one of {source_init.METHODS}; got {method!r}.")

    def init(rng: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
        del rng
        shape = tuple(shape)
        source = prompt_io.load_npy(directory)
        missing = sorted(set(PARTS) - set(source))
        if missing:
            raise ValueError(
                f"{directory!r} holds {sorted(source)}, not an MPT prompt (missing {missing})."
            )
        if part == "shared":
            num_tasks, rank = None, None
        elif len(shape) != 3:
            raise ValueError(f"{part} must have rank 3 ([tasks, ...]); got shape {shape}.")
        else:
            num_tasks, rank = shape[0], shape[2] if part == "task_cols" else shape[1]
        tree = source_init.init_from_source(
            source,
            method=method,
            num_target_tasks=num_tasks,
            rank=rank,
            source_task=source_task,
            source_tasks=source_tasks,
            seed=seed,
        )
        value = np.asarray(tree[part])
        if value.shape != shape:
            raise ValueError(
                f"The source prompt in {directory!r} gives {part} of shape {value.shape}, but "
                f"the target parameter has shape {shape} (prompt length and width must match)."
            )
        return jnp.asarray(value, dtype)

    return init
