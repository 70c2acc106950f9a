"""Logical-axis rules for the prompt parameters, added to T5X's standard rules.

The prompt generators name their parameter axes ``prompt`` (prompt positions),
``embed``, ``tasks``, ``groups``, ``rank``, ``pool``, ``hidden`` and ``gate``
(:mod:`mpt_jax.prompts.generators`). ``embed`` already has a T5X rule (it follows the
token embedding's sharding); the others are small and are replicated. gin::

    from t5x import partitioning
    from mpt_jax.t5x_ext import partitioning as mpt_partitioning

    partitioning.PjitPartitioner.logical_axis_rules = \
        @partitioning.standard_logical_axis_rules()
    partitioning.standard_logical_axis_rules.additional_rules = \
        @mpt_partitioning.prompt_axis_rules()

On a pod, set ``partitioning.PjitPartitioner.num_partitions`` (model parallelism) and,
for 2-D parameter sharding, ``standard_logical_axis_rules.parameter_partitioning_dims =
2``; the prompt rules stay the same.
"""

from __future__ import annotations

from collections.abc import Sequence

import gin

from mpt_jax.prompts import LOGICAL_AXES

#: Axis names of prompt parameters that T5X's standard rules do not know.
PROMPT_AXES: tuple[str, ...] = tuple(a for a in LOGICAL_AXES if a != "embed")

LogicalAxisRules = Sequence[tuple[str, str | None]]


@gin.configurable(module="mpt_jax.t5x_ext.partitioning")
def prompt_axis_rules(sharded: Sequence[tuple[str, str]] = ()) -> LogicalAxisRules:
    """Rules ``(logical axis, mesh axis or None)`` for the prompt axes.

    Args:
      sharded: optional overrides, e.g. ``(("tasks", "model"),)`` to shard a very large
        task table over the model axis; every name must be one of :data:`PROMPT_AXES`.

    Returns:
      One rule per name in :data:`PROMPT_AXES`, replicated (``None``) unless overridden.
    """
    overrides = dict(sharded)
    unknown = sorted(set(overrides) - set(PROMPT_AXES))
    if unknown:
        raise ValueError(f"sharded names unknown prompt axes {unknown}; known: {PROMPT_AXES}.")
    return tuple((name, overrides.get(name)) for name in PROMPT_AXES)
