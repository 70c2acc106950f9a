"""Data plumbing between seqio tasks and the prompted model.

- ``mpt_jax.data.task_ids``: the task-name → task-id mapping (``TaskIndex``), its JSON
  form and compatibility check, and the seqio preprocessor that adds ``task_ids``.
- ``mpt_jax.data.feature_converter``: ``PromptEncDecFeatureConverter``, seqio's
  encoder-decoder converter with ``task_ids`` kept, packing refused and an explicit
  length policy.
- ``mpt_jax.data.synthetic``: the embedded benchmark the default run trains on.

Submodules import TensorFlow, so they are imported on demand, not here.
"""
