"""seqio tasks of the embedded benchmark (``mpt_jax.data.synthetic``); nothing is downloaded.

Registered on import (names for the default benchmark, seed 0, 6 sources, 4 targets):

- ``mpt_embedded_source_{i}`` (i < 6) and ``mpt_embedded_target_{j}`` (j < 4): the
  set-comparison tasks, splits ``train`` (:data:`TRAIN_SIZE`), ``validation``
  (:data:`VALIDATION_SIZE`), ``test`` (:data:`TEST_SIZE`);
- ``mpt_embedded_target_{j}_{k}shot`` for k in :data:`FEW_SHOT`: the ``k``-shot training
  set of few-shot seed 0 (:meth:`EmbeddedBenchmark.few_shot`, ``k/2`` per label; the demo
  uses seeds 0, 1, 2) and the same validation/test splits;
- ``mpt_embedded_pretrain``: the backbone's instructed pretraining mixture (train only);
- mixtures ``mpt_embedded_source`` and ``mpt_embedded_target`` (equal rates); their task
  order is the task-id order (``task_index.mixture = 'mpt_embedded_source'``).

Inputs and targets use ``seqio.ByteVocabulary`` with EOS; the metric is exact-match
accuracy in percent. The examples are the ones the demo trains on
(:meth:`EmbeddedBenchmark.examples`), so a T5X run and ``mpt-jax demo`` see the same data.

Gin example (T5X)::

    import mpt_jax.tasks.embedded
    MIXTURE_OR_TASK_NAME = 'mpt_embedded_source'
    TASK_FEATURE_LENGTHS = {'inputs': 16, 'targets': 4}
    PromptEncDecFeatureConverter.task_index = @task_index()
    task_index.mixture = 'mpt_embedded_source'
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import seqio
import tensorflow as tf

from mpt_jax.data import synthetic
from mpt_jax.data.task_ids import TASK_IDS_FEATURE, add_task_ids
from mpt_jax.tasks.preprocessors import enforce_sequence_lengths

PREFIX = "mpt_embedded"
TRAIN_SIZE, VALIDATION_SIZE, TEST_SIZE = 4096, 256, 512
PRETRAIN_SIZE = 65536
FEW_SHOT = (16, 32)

VOCABULARY = seqio.ByteVocabulary()
OUTPUT_FEATURES = {
    "inputs": seqio.Feature(vocabulary=VOCABULARY, add_eos=True),
    "targets": seqio.Feature(vocabulary=VOCABULARY, add_eos=True),
}


def accuracy(targets: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
    """Exact-match accuracy in percent (0…100)."""
    if len(targets) != len(predictions):
        raise ValueError(f"{len(targets)} targets but {len(predictions)} predictions.")
    if not targets:
        raise ValueError("accuracy needs at least one example.")
    hits = sum(t == p for t, p in zip(targets, predictions, strict=True))
    return {"accuracy": 100.0 * hits / len(targets)}


def _as_dataset(examples: list[dict[str, str]]) -> tf.data.Dataset:
    return tf.data.Dataset.from_tensor_slices(
        {
            "inputs": np.array([e["inputs"] for e in examples], dtype=object),
            "targets": np.array([e["targets"] for e in examples], dtype=object),
        }
    )


def _task_dataset_fn(
    split: str,
    shuffle_files: bool = False,
    seed: int | None = None,
    *,
    benchmark: synthetic.EmbeddedBenchmark,
    task_name: str,
    sizes: dict[str, int],
    few_shot: bool = False,
) -> tf.data.Dataset:
    del shuffle_files, seed  # The examples are fixed by the benchmark's seed.
    if few_shot and split == "train":
        return _as_dataset(benchmark.few_shot(task_name, sizes[split], seed=0))
    return _as_dataset(benchmark.examples(task_name, split, sizes[split]))


def _pretrain_dataset_fn(
    split: str,
    shuffle_files: bool = False,
    seed: int | None = None,
    *,
    benchmark: synthetic.EmbeddedBenchmark,
) -> tf.data.Dataset:
    del shuffle_files, seed
    if split != "train":
        raise ValueError(f"{PREFIX}_pretrain has only a 'train' split; got {split!r}.")
    return _as_dataset(synthetic.pretraining_examples(benchmark, PRETRAIN_SIZE))


def _register_task(name: str, dataset_fn, splits: dict[str, int], with_task_ids: bool) -> None:
    # append_eos (not _after_trim) and the explicit length policy last, like every mpt task:
    # an over-long example is an error, or a counted and logged cut, never a silent trim.
    preprocessors = [seqio.preprocessors.tokenize, seqio.preprocessors.append_eos]
    features = dict(OUTPUT_FEATURES)
    if with_task_ids:
        preprocessors.append(functools.partial(add_task_ids, task_name=name))
        features["task_ids"] = TASK_IDS_FEATURE
    preprocessors.append(functools.partial(enforce_sequence_lengths, task_name=name))
    seqio.TaskRegistry.add(
        name,
        source=seqio.FunctionDataSource(
            dataset_fn=dataset_fn, splits=tuple(splits), num_input_examples=splits
        ),
        output_features=features,
        preprocessors=preprocessors,
        metric_fns=[accuracy],
    )


def register(benchmark: synthetic.EmbeddedBenchmark | None = None, prefix: str = PREFIX) -> None:
    """Registers the tasks and mixtures of ``benchmark`` (the default one if ``None``).

    Registering the same names twice is an error (seqio's); use another ``prefix`` for a
    second benchmark.
    """
    benchmark = synthetic.EmbeddedBenchmark() if benchmark is None else benchmark
    full = {"train": TRAIN_SIZE, "validation": VALIDATION_SIZE, "test": TEST_SIZE}
    for kind, tasks in (("source", benchmark.source_tasks), ("target", benchmark.target_tasks)):
        names = []
        for task in tasks:
            name = f"{prefix}_{task.name}"
            fn = functools.partial(
                _task_dataset_fn, benchmark=benchmark, task_name=task.name, sizes=full
            )
            _register_task(name, fn, full, with_task_ids=True)
            names.append(name)
            if kind == "target":
                for k in FEW_SHOT:
                    sizes = {**full, "train": k}
                    fn = functools.partial(
                        _task_dataset_fn,
                        benchmark=benchmark,
                        task_name=task.name,
                        sizes=sizes,
                        few_shot=True,
                    )
                    _register_task(f"{name}_{k}shot", fn, sizes, with_task_ids=True)
        seqio.MixtureRegistry.add(f"{prefix}_{kind}", [(n, 1.0) for n in names])
    _register_task(
        f"{prefix}_pretrain",
        functools.partial(_pretrain_dataset_fn, benchmark=benchmark),
        {"train": PRETRAIN_SIZE},
        with_task_ids=False,
    )


register()
