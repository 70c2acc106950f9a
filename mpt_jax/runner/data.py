"""seqio data for the runner: deterministic, resumable training batches.

``train_batches(name, lengths, batch_size, index)`` returns ``batches(start)`` as the
training loop wants it: batch ``i`` of the run is the same whether the run starts at 0 or
resumes at ``start`` (a seqio shuffle with a fixed seed, repeated forever, batched with
``drop_remainder``, then ``skip(start)``). The feature converter is given the task-id
mapping ``index``, so every example's ``task_ids`` comes from it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

import numpy as np

from mpt_jax.data.task_ids import TaskIndex, check_covers
from mpt_jax.errors import BindingError

Batches = Callable[[int], Iterator[dict[str, np.ndarray]]]


def converted_dataset(
    mixture_or_task_name: str,
    task_feature_lengths: Mapping[str, int],
    index: TaskIndex,
    *,
    split: str = "train",
    shuffle: bool = True,
    seed: int = 0,
    num_epochs: int | None = None,
):
    """The feature-converted ``tf.data.Dataset`` (model features, ``task_ids`` scalar)."""
    import seqio

    import mpt_jax.tasks  # noqa: F401  (registers the project's seqio tasks)
    from mpt_jax.data.feature_converter import PromptEncDecFeatureConverter

    check_covers(index, mixture_or_task_name)
    return seqio.get_dataset(
        mixture_or_task_name,
        task_feature_lengths=dict(task_feature_lengths),
        feature_converter=PromptEncDecFeatureConverter(task_index=index),
        dataset_split=split,
        shuffle=shuffle,
        num_epochs=num_epochs,
        seed=seed if shuffle else None,
        # seqio would cut over-long features silently; the converter's length policy
        # (error, or truncate with a logged count) decides instead.
        trim_output_features=False,
    )


def train_batches(
    mixture_or_task_name: str,
    task_feature_lengths: Mapping[str, int],
    batch_size: int,
    index: TaskIndex,
    *,
    split: str = "train",
    seed: int = 0,
) -> Batches:
    """``batches(start)``: numpy batches from position ``start`` of a fixed, endless order."""
    if batch_size < 1:
        raise BindingError(f"train.batch_size must be >= 1, got {batch_size}")

    def batches(start: int) -> Iterator[dict[str, np.ndarray]]:
        ds = converted_dataset(
            mixture_or_task_name, task_feature_lengths, index, split=split, seed=seed
        )
        ds = ds.batch(batch_size, drop_remainder=True).skip(start)
        yield from ds.as_numpy_iterator()

    return batches
