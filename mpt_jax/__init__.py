"""mpt_jax: Multitask Prompt Tuning (Wang et al., ICLR 2023) for T5 in JAX/Flax.

Subpackages are imported on demand so ``import mpt_jax`` stays cheap:

- ``mpt_jax.prompts``: prompt generators, compositions, initialisers, prompt IO.
- ``mpt_jax.backbone``: a frozen T5 whose parameter tree matches T5X's.
- ``mpt_jax.model``: the prompted T5 (prompt injection, masks, T5X module protocol).
- ``mpt_jax.training``: losses, the prompt-only train step, checkpoints.
- ``mpt_jax.tasks`` / ``mpt_jax.configs``: seqio tasks and gin files.
"""

from mpt_jax.version import __version__

__all__ = ["__version__"]
