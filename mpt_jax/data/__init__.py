"""Data plumbing between seqio tasks and the prompted model.

- ``mpt_jax.data.task_ids``: the task-name → task-id mapping (``TaskIndex``), its JSON
  form and compatibility check, and the seqio preprocessor that adds ``task_ids``.
- ``mpt_jax.data.feature_converter``: ``PromptEncDecFeatureConverter``, seqio's
  encoder-decoder converter with ``task_ids`` kept, packing refused and an explicit
  length policy.
- ``mpt_jax.data.synthetic``: the embedded benchmark the default run trains on.

``mpt_jax.data.TaskIndex`` and ``mpt_jax.data.PromptEncDecFeatureConverter`` are
resolved on first access, so ``import mpt_jax.data`` does not import TensorFlow.
"""

import importlib

_LAZY = {
    "TaskIndex": "mpt_jax.data.task_ids",
    "check_compatible": "mpt_jax.data.task_ids",
    "add_task_ids": "mpt_jax.data.task_ids",
    "PromptEncDecFeatureConverter": "mpt_jax.data.feature_converter",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mpt_jax.data' has no attribute {name!r}")
