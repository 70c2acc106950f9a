"""Few-shot variants: k training examples per class (classification) or per task (QA).

The MPT paper adapts to targets with k ∈ {4, 16, 32}. A few-shot task is the full task
whose ``train`` split is replaced by a seeded subset; ``validation`` and ``test`` stay
whole. The subset is

- exact: k per class (a class with fewer than k training examples is an error naming
  it), or k in all for QA;
- reproducible: each record gets a keyed hash (``tf.strings.to_hash_bucket_strong``) of
  its serialised content and the seed; the k smallest hashes of each class win (ties by
  reading order). The same seed and data give the same subset, however the source is
  shuffled or sharded; another seed gives an independent subset.

The seed is a gin binding read when the dataset is built: ``few_shot_seed.seed = 1``.
Selecting reads the whole train split once (cached per source object).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import gin
import numpy as np
import seqio
import tensorflow as tf

FEW_SHOT_KS = (4, 16, 32)

_MAX_HASH = 2**63 - 1


@gin.configurable
def few_shot_seed(seed: int = 0) -> int:
    """The seed of the few-shot subsets (gin: ``few_shot_seed.seed = 13``)."""
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"few_shot_seed.seed must be a non-negative int; got {seed!r}.")
    return seed


def _content_hash(example, seed: int) -> tf.Tensor:
    """A keyed 63-bit hash of every feature of ``example`` (nested dicts included)."""
    parts = [tf.io.serialize_tensor(t) for t in tf.nest.flatten(example)]
    content = tf.strings.reduce_join(tf.stack(parts), separator="\x1f")
    return tf.strings.to_hash_bucket_strong(content, _MAX_HASH, key=[seed, 0x6D7074])


def select_few_shot(
    dataset: tf.data.Dataset, k: int, *, seed: int, label_key: str | None
) -> np.ndarray:
    """Reading-order positions of the k-per-class subset of ``dataset`` (sorted).

    Args:
      dataset: the records, in a fixed reading order.
      k: examples per class (``label_key`` set) or in all (``label_key=None``).
      seed: selects the subset.
      label_key: the record's integer class feature; ``None`` for one class (QA).

    Raises:
      ValueError: classes with fewer than k records, naming them and their counts.
    """
    if k < 1:
        raise ValueError(f"k must be a positive number of examples; got {k}.")

    def _key(example):
        label = example[label_key] if label_key else tf.constant(0, tf.int64)
        return tf.cast(label, tf.int64), _content_hash(example, seed)

    pairs = list(dataset.map(_key).as_numpy_iterator())
    if not pairs:
        raise ValueError("Few-shot selection got an empty training split.")
    labels = np.array([p[0] for p in pairs], dtype=np.int64)
    hashes = np.array([p[1] for p in pairs], dtype=np.int64)
    positions = np.arange(len(pairs))
    classes = [c for c in np.unique(labels) if c >= 0]  # -1: unlabelled, never chosen
    short = {int(c): int((labels == c).sum()) for c in classes if (labels == c).sum() < k}
    if short:
        counts = ", ".join(f"class {c} has {n}" for c, n in short.items())
        raise ValueError(f"{k}-shot needs {k} training examples per class; {counts}.")
    chosen = []
    for label in classes:
        members = positions[labels == label]
        order = np.lexsort((members, hashes[members]))  # by hash, ties by position
        chosen.append(members[order[:k]])
    if not chosen:
        raise ValueError("Few-shot selection found no labelled training examples.")
    return np.sort(np.concatenate(chosen))


class FewShotSource(seqio.DataSource):
    """``base`` with its ``train`` split cut to a seeded k-shot subset.

    Args:
      base: the full task's data source.
      k: examples per class, or per task when ``label_key`` is ``None``.
      label_key: the raw record's class feature (``"label"``), or ``None`` for QA.
      num_classes: the number of classes (for ``num_input_examples``); 1 for QA.
    """

    def __init__(
        self,
        base: seqio.DataSource,
        k: int,
        *,
        label_key: str | None,
        num_classes: int = 1,
    ):
        if k < 1:
            raise ValueError(f"k must be a positive number of examples; got {k}.")
        super().__init__(splits=base.splits, num_input_examples=None, caching_permitted=False)
        self._base = base
        self._k = k
        self._label_key = label_key
        self._num_classes = num_classes if label_key else 1
        self._selected: dict[int, np.ndarray] = {}

    @property
    def k(self) -> int:
        return self._k

    @property
    def supports_arbitrary_sharding(self) -> bool:
        return False

    def selected_positions(self, seed: int | None = None) -> np.ndarray:
        """Reading-order positions (in the unshuffled train split) of the subset."""
        seed = few_shot_seed() if seed is None else seed
        if seed not in self._selected:
            full = self._base.get_dataset(split="train", shuffle=False)
            self._selected[seed] = select_few_shot(
                full, self._k, seed=seed, label_key=self._label_key
            )
        return self._selected[seed]

    def get_dataset(
        self,
        split: str = "train",
        shuffle: bool = True,
        seed: int | None = None,
        shard_info: seqio.ShardInfo | None = None,
        *,
        sequence_length: Mapping[str, int] | None = None,
        use_cached: bool = False,
        num_epochs: int | None = 1,
    ) -> tf.data.Dataset:
        del sequence_length, use_cached, num_epochs
        if split != "train":
            return self._base.get_dataset(
                split=split, shuffle=shuffle, seed=seed, shard_info=shard_info
            )
        if shard_info is not None and shard_info.num_shards > 1:
            raise ValueError(
                f"A {self._k}-shot split is tiny; read it unsharded (got {shard_info})."
            )
        positions = tf.constant(self.selected_positions(), dtype=tf.int64)
        full = self._base.get_dataset(split="train", shuffle=False)
        ds = full.enumerate().filter(lambda i, _: tf.reduce_any(tf.equal(i, positions)))
        ds = ds.map(lambda _, example: example)
        if shuffle:
            ds = ds.shuffle(len(positions), seed=seed, reshuffle_each_iteration=True)
        return ds

    def list_shards(self, split: str) -> Sequence[str]:
        return self._base.list_shards(split)

    def num_input_examples(self, split: str) -> int | None:
        if split == "train":
            return self._k * self._num_classes
        return self._base.num_input_examples(split)

    def __repr__(self) -> str:
        return f"FewShotSource(k={self._k}, label_key={self._label_key!r}, base={self._base!r})"


def few_shot_name(task_name: str, k: int) -> str:
    """``mpt_glue_rte`` → ``mpt_glue_rte_16shot``."""
    return f"{task_name}_{k}shot"
