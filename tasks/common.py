"""How every mpt task is put together and registered.

Task names: ``mpt_<benchmark>_<task>`` for benchmark suites (``mpt_glue_rte``,
``mpt_superglue_record``, ``mpt_mrqa_nq``), ``mpt_<task>`` for single datasets
(``mpt_squad``, ``mpt_paws``); few-shot variants ``<name>_<k>shot``
(``mpt_glue_rte_16shot``); mixtures ``mpt_<group>_mixture``. These names are stable: they
are the keys of the saved task-id mapping.

Preprocessing of every task, in order:

1. the benchmark's text-to-text formatter (``preprocessors.py``);
2. ``seqio.preprocessors.tokenize`` and ``append_eos`` (``inputs``, ``targets``);
3. ``seqio.CacheDatasetPlaceholder`` (everything before it depends only on the data;
   few-shot tasks are not cacheable, their subset depends on the seed binding);
4. ``add_task_ids`` (the run's task-id mapping, looked up when the dataset is built);
5. ``enforce_sequence_lengths`` (the explicit length policy; error by default).

Output features: ``inputs`` and ``targets`` with :data:`vocab.TASK_VOCABULARY` and EOS,
plus ``task_ids`` (int32 ``[1]``).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence

import seqio
import tensorflow as tf

from mpt_jax.data.task_ids import TASK_IDS_FEATURE, add_task_ids

from . import few_shot, postprocessors, preprocessors
from .vocab import TASK_VOCABULARY


def output_features(vocabulary: seqio.Vocabulary = TASK_VOCABULARY) -> dict[str, seqio.Feature]:
    """``inputs``/``targets`` (with EOS) in ``vocabulary``, and ``task_ids``."""
    return {
        "inputs": seqio.Feature(vocabulary=vocabulary, add_eos=True, required=True),
        "targets": seqio.Feature(vocabulary=vocabulary, add_eos=True, required=True),
        "task_ids": TASK_IDS_FEATURE,
    }


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """Everything that distinguishes one benchmark task from another.

    Attributes:
      name: the registered seqio name.
      source: its raw records.
      formatter: raw record dataset → ``{"inputs", "targets", …}`` strings.
      postprocess_fn: decoded text → what ``metric_fns`` compare.
      metric_fns: seqio predict metrics ``(targets, predictions) -> dict``.
      few_shot_label_key: the raw record's class feature for k-per-class few-shot
        subsets; ``None`` for k per task (QA).
      num_classes: number of classes (1 for QA and regression).
    """

    name: str
    source: seqio.DataSource
    formatter: Callable[[tf.data.Dataset], tf.data.Dataset]
    postprocess_fn: Callable[..., object]
    metric_fns: Sequence[Callable[..., dict]]
    few_shot_label_key: str | None = None
    num_classes: int = 1

    @classmethod
    def classification(
        cls,
        name: str,
        source: seqio.DataSource,
        *,
        prefix: str,
        fields: Sequence[str],
        label_names: Sequence[str],
        metric_fns: Sequence[Callable[..., dict]],
    ) -> TaskSpec:
        """A classification task: ``"<prefix> field: … " -> label name``, k-per-class shots.

        Generated text that names no label becomes the explicit invalid label (counted
        wrong by every metric), never a dropped example.
        """
        return cls(
            name=name,
            source=source,
            formatter=functools.partial(
                preprocessors.classification,
                prefix=prefix,
                fields=fields,
                label_names=label_names,
            ),
            postprocess_fn=functools.partial(postprocessors.class_label, label_names=label_names),
            metric_fns=metric_fns,
            few_shot_label_key="label",
            num_classes=len(label_names),
        )


def register(spec: TaskSpec, *, few_shot_ks: Sequence[int] = few_shot.FEW_SHOT_KS) -> None:
    """Registers ``spec.name`` and its few-shot variants; names already present are kept.

    Registering again (a second import, a reloaded module) is a no-op, so importing
    ``mpt_jax.tasks`` twice never fails.
    """
    _add(spec.name, spec.source, spec)
    for k in few_shot_ks:
        source = few_shot.FewShotSource(
            spec.source, k, label_key=spec.few_shot_label_key, num_classes=spec.num_classes
        )
        _add(few_shot.few_shot_name(spec.name, k), source, spec)


def _add(name: str, source: seqio.DataSource, spec: TaskSpec) -> None:
    if name in seqio.TaskRegistry.names():
        return
    seqio.TaskRegistry.add(
        name,
        source=source,
        preprocessors=[
            spec.formatter,
            seqio.preprocessors.tokenize,
            seqio.preprocessors.append_eos,
            # Few-shot subsets depend on a gin-bound seed, so their sources forbid caching.
            *([seqio.CacheDatasetPlaceholder()] if source.caching_permitted else []),
            functools.partial(add_task_ids, task_name=name),
            functools.partial(preprocessors.enforce_sequence_lengths, task_name=name),
        ],
        output_features=output_features(),
        postprocess_fn=spec.postprocess_fn,
        metric_fns=list(spec.metric_fns),
    )


def add_mixture(name: str, task_names: Sequence[str], rate: Callable | float) -> None:
    """Registers a seqio mixture once (a second call is a no-op)."""
    if name in seqio.MixtureRegistry.names():
        return
    seqio.MixtureRegistry.add(name, [(t, rate) for t in task_names])
