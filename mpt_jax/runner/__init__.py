"""The runner: gin-configured jobs (train, eval, infer, export-prompts) and MPT's stages.

- ``jobs``: the job functions the ``mpt-jax`` command calls.
- ``stages``: teacher, source (distillation), target and the baselines, as ``Stage``s.
- ``backbone_loading``: the frozen backbone from a checkpoint (ours, orbax, msgpack,
  safetensors, Hugging Face) or random.
- ``data``: deterministic, resumable seqio training batches.
- ``evaluation``: seqio metrics by decoding or scoring.
- ``demo``: the embedded-benchmark demo (``mpt-jax demo``); ``demo_data`` its batches and
  scorer, ``demo_report`` its table, plot, statistics and ``results.json``.

Submodules import TensorFlow/seqio, so they are imported on demand, not here.
"""
