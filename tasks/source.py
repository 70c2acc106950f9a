"""Mixtures: the six MPT source tasks and the multi-task target benchmarks.

- ``mpt_source_mixture``: MNLI, QNLI, QQP, SST-2, SQuAD, ReCoRD (the paper's source
  tasks, each with > 100k examples). A run's task ids follow seqio's task order, sorted
  by name (``task_index.mixture = 'mpt_source_mixture'``), which here is also
  the paper's order: ``mpt_glue_mnli`` 0, …, ``mpt_superglue_record`` 5.
- ``mpt_glue_mixture`` (8 tasks), ``mpt_superglue_mixture`` (5), ``mpt_mrqa_mixture``
  (4), ``mpt_others_mixture`` (4): the targets trained jointly (MPT's multi-task
  adaptation).

Rates are examples-proportional, :func:`examples_proportional_rate`, with an optional
cap and temperature bound in gin (``examples_proportional_rate.maximum = 524288``, T5's
usual cap; ``temperature = 1.0`` is plain proportional).
"""

from __future__ import annotations

import gin
import seqio

from . import glue, mrqa, others, superglue
from .common import add_mixture

SOURCE_TASK_NAMES = (
    glue.task_name("mnli"),
    glue.task_name("qnli"),
    glue.task_name("qqp"),
    glue.task_name("sst2"),
    mrqa.task_name("squad"),
    superglue.task_name("record"),
)

MIXTURES = {
    "mpt_source_mixture": SOURCE_TASK_NAMES,
    "mpt_glue_mixture": glue.GLUE_TASK_NAMES,
    "mpt_superglue_mixture": superglue.SUPERGLUE_TASK_NAMES,
    "mpt_mrqa_mixture": mrqa.MRQA_TASK_NAMES,
    "mpt_others_mixture": others.OTHER_TASK_NAMES,
}


@gin.configurable
def examples_proportional_rate(
    task: seqio.Task, maximum: int | None = None, temperature: float = 1.0
) -> float:
    """``min(num_train_examples, maximum) ** (1 / temperature)`` (seqio's formula)."""
    if maximum is not None and maximum < 1:
        raise ValueError(f"examples_proportional_rate.maximum must be >= 1; got {maximum}.")
    if temperature <= 0:
        raise ValueError(f"examples_proportional_rate.temperature must be > 0; got {temperature}.")
    return seqio.mixing_rate_num_examples(task, maximum=maximum, temperature=temperature)


def register_mixtures() -> None:
    for name, task_names in MIXTURES.items():
        add_mixture(name, task_names, examples_proportional_rate)
