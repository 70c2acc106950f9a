"""Logical-axis rules: how every logical axis name of mpt_jax maps onto a device mesh.

Parameters carry logical names (`nn.with_logical_partitioning`); these rules
map them to mesh axes `data` / `model` (T5X's names), so the same model runs
on one CPU and on a TPU pod. The backbone follows T5X's standard rules
(1-D model parallelism over `vocab`, `mlp`, `heads`, `joined_kv`); prompt axes
(`prompt`, `tasks`, `rank`, `groups`, `pool`, `gate`, `hidden`) are
replicated: prompts are tiny, and replicating them keeps their optimizer
updates free of communication.

gin (T5X)::

    partitioning.PjitPartitioner.logical_axis_rules = @mpt_jax.partitioning.logical_axis_rules()
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import gin
import jax
from jax.sharding import PartitionSpec

Rule = tuple[str, str | None]

#: Backbone axes (T5X's `standard_logical_axis_rules` with 1-D model parallelism).
BACKBONE_RULES: tuple[Rule, ...] = (
    ("batch", "data"),
    ("vocab", "model"),
    ("embed", None),
    ("mlp", "model"),
    ("heads", "model"),
    ("kv", None),
    ("joined_kv", "model"),
    ("relpos_buckets", None),
    ("length", None),
    ("layers", None),
)

#: Axes of the prompt generators (`mpt_jax.prompts`); all replicated.
PROMPT_AXES: tuple[str, ...] = ("prompt", "tasks", "rank", "groups", "pool", "gate", "hidden")


@gin.configurable
def logical_axis_rules(
    shard_prompt_tasks: bool = False,
    extra_rules: Sequence[Rule] = (),
) -> tuple[Rule, ...]:
    """The rules for every logical axis mpt_jax uses.

    Args:
      shard_prompt_tasks: shard the `tasks` axis of per-task prompt tables over
        `model` (useful only with very many tasks); otherwise replicated.
      extra_rules: rules placed first, so they override the defaults.

    Returns:
      `((logical_name, mesh_axis_or_None), ...)`, first match wins.
    """
    prompt_rules = tuple(
        (axis, "model" if (axis == "tasks" and shard_prompt_tasks) else None)
        for axis in PROMPT_AXES
    )
    for rule in extra_rules:
        if len(rule) != 2 or not isinstance(rule[0], str):
            raise ValueError(f"A rule is (logical_name, mesh_axis or None), got {rule!r}.")
    return tuple(tuple(r) for r in extra_rules) + BACKBONE_RULES + prompt_rules


def logical_axes(boxed_params: Any) -> Any:
    """Tree of logical-name `PartitionSpec`s of `model.init(...)["params"]` (boxed)."""
    return nn.get_partition_spec(boxed_params)


def mesh_partition_specs(boxed_params: Any, rules: Sequence[Rule] | None = None) -> Any:
    """Tree of mesh `PartitionSpec`s for boxed params under `rules` (default: ours).

    Raises:
      ValueError: a parameter uses a logical name no rule covers (it would be
        silently replicated otherwise).
    """
    rules = tuple(logical_axis_rules() if rules is None else rules)
    known = {name for name, _ in rules}
    specs = logical_axes(boxed_params)

    def to_mesh(spec: PartitionSpec) -> PartitionSpec:
        missing = [name for name in spec if name is not None and name not in known]
        if missing:
            raise ValueError(f"No partitioning rule for logical axes {missing}; add extra_rules.")
        return nn.logical_to_mesh_axes(spec, rules)

    return jax.tree_util.tree_map(to_mesh, specs, is_leaf=lambda x: isinstance(x, PartitionSpec))
