"""Target adaptation under T5X: start the target prompt from a source MPT checkpoint.

T5X restores a checkpoint into a new run through ``utils.RestoreCheckpointConfig``; its
``state_transformation_fns`` rewrite the checkpoint's state dict before it is loaded.
:func:`source_prompt_transform` is such a function: it reads the source run's MPT prompt
(``prompt/shared [L, D]``, ``prompt/task_cols [Ts, L, r]``, ``prompt/task_rows
[Ts, r, D]``), builds the target prompt with
:func:`mpt_jax.prompts.source_init.init_from_source` (``exact`` source task k, the
``average`` of the source task matrices brought back to rank r by SVD, or
``shared_only``) for the target's number of tasks and rank, and drops what the target
run does not have (the source's prompt optimizer state, which the target starts afresh,
and the distillation teachers ``teacher_prompt/*``). The backbone is restored as saved.

gin (``configs/runs/target.gin``)::

    utils.RestoreCheckpointConfig.state_transformation_fns = [
        @target_init.source_prompt_transform()]
    target_init.source_prompt_transform.method = 'average'   # 'exact' | 'shared_only'
    target_init.source_prompt_transform.source_task = 0      # for 'exact'
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import gin
import numpy as np

from mpt_jax.prompts import source_init

PyTree = Any


def _array(value: Any) -> np.ndarray:
    """A restored value as numpy (T5X may hand lazy arrays with ``get()``)."""
    if hasattr(value, "get") and not isinstance(value, Mapping):
        value = value.get()
    return np.asarray(value)


def _drop(tree: Any, key: str) -> None:
    if isinstance(tree, dict):
        tree.pop(key, None)


@gin.configurable(module="mpt_jax.t5x_ext.target_init")
def source_prompt_transform(
    method: str = "average",
    source_task: int = 0,
    source_tasks: Sequence[int] | None = None,
    scope: str = "prompt",
    drop_scopes: Sequence[str] = ("teacher_prompt",),
    seed: int = 0,
) -> Callable[..., PyTree]:
    """A T5X restore transformation building the target MPT prompt from a source one.

    Args:
      method: ``"exact"``, ``"average"`` or ``"shared_only"``
        (:data:`mpt_jax.prompts.source_init.METHODS`).
      source_task: the source task copied by ``exact`` (its id in the source run).
      source_tasks: the source tasks averaged by ``average`` (default all).
      scope: the prompt's parameter scope in both runs.
      drop_scopes: source-checkpoint scopes the target does not have.
      seed: seed of the fresh factors of ``shared_only``.

    Returns:
      ``fn(state_dict, target_state_dict, *, is_resuming=False) -> state_dict``. When
      resuming the target run itself, the state dict is returned unchanged.
    """
    if method not in source_init.METHODS:
        raise ValueError(f"method must be one of {source_init.METHODS}; got {method!r}.")

    def transform(
        state_dict: PyTree, target_state_dict: PyTree, *, is_resuming: bool = False
    ) -> PyTree:
        if is_resuming:
            return state_dict
        state = dict(state_dict)
        params = dict(state["target"])
        if scope not in params:
            raise KeyError(
                f"The source checkpoint has no '{scope}' parameters (top level: "
                f"{sorted(params)}); is it an MPT source run?"
            )
        source = {k: _array(v) for k, v in params[scope].items()}
        template = target_state_dict["target"][scope]
        params[scope] = source_init.init_from_source(
            source,
            method=method,
            source_task=source_task,
            source_tasks=source_tasks,
            template=dict(template),
            seed=seed,
        )
        for name in drop_scopes:
            _drop(params, name)
        state["target"] = params
        # The target's prompt optimizer state starts afresh (its shapes differ in general).
        if isinstance(state.get("state"), Mapping):
            opt = dict(state["state"])
            if isinstance(opt.get("param_states"), Mapping):
                param_states = dict(opt["param_states"])
                for name in (scope, *drop_scopes):
                    _drop(param_states, name)
                opt["param_states"] = param_states
            state["state"] = opt
        return state

    return transform
