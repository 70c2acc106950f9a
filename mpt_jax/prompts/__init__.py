"""Prompt generators, compositions, initialisers and prompt IO (pure Flax linen).

A generator maps ``(task_ids [batch], embedded_inputs [batch, S, embed], input_mask)``
to a prompt ``[batch, prompt_length, embed]``; see :mod:`mpt_jax.prompts.generators`.
"""

from mpt_jax.prompts import compositions, initializers
from mpt_jax.prompts.generators import (
    ComposedPrompt,
    HierarchicalPrompt,
    MultitaskPrompt,
    SinglePrompt,
    TaskPrompts,
    check_embedded_inputs,
    check_task_ids,
)

__all__ = [
    "ComposedPrompt",
    "HierarchicalPrompt",
    "MultitaskPrompt",
    "SinglePrompt",
    "TaskPrompts",
    "check_embedded_inputs",
    "check_task_ids",
    "compositions",
    "initializers",
]
