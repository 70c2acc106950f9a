"""Parameter accounting for prompt generators: shared vs per-task counts.

Parameters are classified by their logical axis names: a parameter with a
``tasks`` axis belongs to the tasks (each task owns ``size / T`` of it), one with
a ``groups`` axis to the groups, any other is shared by every task. The cost of
one task is then the amortised ``total / T``, the figure papers report: MPT with
``L = 100``, ``D = 768``, ``r = 1`` and one target task costs
``L·D + (L + D) = 77,668`` parameters, ≈0.035% of T5-Base; shared by the 8 GLUE
targets it costs ``76,800 / 8 + 868 = 10,468`` (the paper's "10.5K").

Example::

    count = count_parameters(MultitaskPrompt(num_tasks=1, length=100, embed_dim=768))
    count.per_task                      # 77668.0
    count.fraction_of(222_903_552)      # 3.48e-4
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class ParameterCount:
    """Shared and task-specific parameter counts of one generator configuration.

    Attributes:
      shared: parameters used by every task (``shared``, gates, source prompts, …).
      task_specific: parameters one task owns (``U_k``, ``V_k``, its weight, …).
      group_specific: parameters one group owns (hierarchical prompts).
      num_tasks: ``T``.
      num_groups: ``G`` (0 without groups).
    """

    shared: int
    task_specific: int
    group_specific: int
    num_tasks: int
    num_groups: int

    @property
    def total(self) -> int:
        """Every trainable prompt parameter."""
        return (
            self.shared
            + self.num_tasks * self.task_specific
            + (self.num_groups * self.group_specific)
        )

    @property
    def per_task(self) -> float:
        """Amortised cost of one task, ``total / T`` (the papers' "parameters per task")."""
        return self.total / self.num_tasks

    def fraction_of(self, backbone_params: int) -> float:
        """``per_task / backbone_params`` (e.g. 3.5e-4 for MPT on T5-Base)."""
        if backbone_params <= 0:
            raise ValueError(f"backbone_params must be positive, got {backbone_params}")
        return self.per_task / backbone_params


def count_parameters(generator: nn.Module) -> ParameterCount:
    """Counts a generator's parameters without allocating them (``jax.eval_shape``).

    Args:
      generator: any prompt generator; it must have an ``embed_dim`` attribute and
        every parameter must carry logical axis names (all of ours do).
    """
    dim = generator.embed_dim
    ids = jnp.zeros((1,), jnp.int32)
    inputs = jnp.zeros((1, 1, dim), jnp.float32)
    shapes = jax.eval_shape(lambda: generator.init(jax.random.key(0), ids, inputs))["params"]
    boxes = jax.tree.leaves(shapes, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    num_tasks = int(getattr(generator, "num_tasks", 1))
    num_groups = 0
    shared = task = group = 0
    for box in boxes:
        if not isinstance(box, nn.Partitioned):
            raise ValueError(f"parameter of shape {box.shape} has no logical axis names")
        shape, names = box.value.shape, box.names
        size = int(np.prod(shape, dtype=np.int64))
        if "tasks" in names:
            t = shape[names.index("tasks")]
            if t != num_tasks:
                raise ValueError(f"a parameter has {t} tasks but the generator {num_tasks}")
            task += size // t
        elif "groups" in names:
            num_groups = shape[names.index("groups")]
            group += size // num_groups
        else:
            shared += size
    return ParameterCount(shared, task, group, num_tasks, num_groups)
