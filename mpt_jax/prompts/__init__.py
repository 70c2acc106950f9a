"""Prompt generators, compositions, initialisers and prompt IO (pure Flax linen).

A generator maps ``(task_ids [batch], embedded_inputs [batch, S, embed], input_mask)``
to a prompt ``[batch, prompt_length, embed]`` (or a ``GeneratorOutput(prompt,
input_delta)`` when it changes the embedded inputs too); see
:mod:`mpt_jax.prompts.generators`.

- :mod:`~mpt_jax.prompts.generators`: ``SinglePrompt``, ``TaskPrompts``,
  ``MultitaskPrompt`` (MPT), ``ComposedPrompt``, ``HierarchicalPrompt``.
- :mod:`~mpt_jax.prompts.compositions`: the pure combine functions and the composition
  objects a ``ComposedPrompt`` / ``HierarchicalPrompt`` is given (``Hadamard()``, …).
- :mod:`~mpt_jax.prompts.dept`: the DePT composition (a composition in its own module).
- :mod:`~mpt_jax.prompts.initializers`: ``(rng, shape, dtype) -> array`` closures.
- :mod:`~mpt_jax.prompts.source_init`: target prompts from a source MPT prompt.
- :mod:`~mpt_jax.prompts.io`: ``.npy`` per parameter; PEFT MPT adapters.
- :mod:`~mpt_jax.prompts.accounting`: shared / per-task parameter counts.

Logical axis names used by the parameters (for T5X partitioning rules):
:data:`LOGICAL_AXES`.
"""

from mpt_jax.prompts import compositions, initializers
from mpt_jax.prompts.accounting import ParameterCount, count_parameters
from mpt_jax.prompts.generators import (
    LOGICAL_AXES,
    ComposedPrompt,
    GeneratorOutput,
    HierarchicalPrompt,
    MultitaskPrompt,
    SinglePrompt,
    TaskPrompts,
    as_output,
    check_embedded_inputs,
    check_task_ids,
)
from mpt_jax.prompts.source_init import init_from_source

__all__ = [
    "LOGICAL_AXES",
    "ComposedPrompt",
    "GeneratorOutput",
    "HierarchicalPrompt",
    "MultitaskPrompt",
    "ParameterCount",
    "SinglePrompt",
    "TaskPrompts",
    "as_output",
    "check_embedded_inputs",
    "check_task_ids",
    "compositions",
    "count_parameters",
    "init_from_source",
    "initializers",
]
