"""Task ids: a stable mapping from seqio task names to the rows of the task factors.

Every MPT parameter with a ``tasks`` axis (``prompt/task_cols`` ``[T, L, r]``,
``prompt/task_rows`` ``[T, r, D]``) is indexed by an integer task id. Which task a row
belongs to is fixed by a :class:`TaskIndex`, an ordered tuple of task names: task
``names[i]`` has id ``i``. A run saves its index as JSON next to its checkpoints; when a
run resumes, or a target run loads a source checkpoint by task name, the saved index is
checked against the current one with :func:`check_compatible`, so a row is never read for
the wrong task.

Tasks are registered once but used by runs with different mappings (MNLI is id 0 in the
source mixture and id 1 in the GLUE mixture), so the mapping is not known when a task is
registered. It is passed to the feature converter of each run instead, and nothing is
held in a module global:

- the seqio preprocessor :func:`add_task_ids` (bound with the task's name when the task is
  registered) adds ``task_ids = [task_key(name)]``: an int32 ``[1]`` fingerprint of the
  task's name, the same in every run. Tasks declare ``task_ids`` as an output feature so
  that seqio mixtures keep it and seqio's evaluator can measure it (both assume rank-1
  features);
- the run's ``PromptEncDecFeatureConverter(task_index=index)`` turns each key into the
  run's task id (:func:`ids_from_keys`) and the ``[1]`` vector into the scalar per example
  (``[B]`` per batch) that the model takes. A key the mapping does not hold is an error
  naming the mapping; in gin (T5X)::

      feature_converter.PromptEncDecFeatureConverter.task_index = @task_ids.task_index()
      task_ids.task_index.mixture = 'mpt_source_mixture'   # or task_ids.task_index.task_names

Keys lie in ``[2**30, 2**31)`` and ids below ``2**30``, so a converter given keys but no
mapping refuses them instead of training on a wrong row.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import os
from collections.abc import Callable, Mapping, Sequence

import gin
import seqio
import tensorflow as tf

FORMAT_VERSION = 1

#: Task keys (:func:`task_key`) lie in ``[KEY_BASE, 2 * KEY_BASE)``; task ids below it.
KEY_BASE = 2**30


def task_key(name: str) -> int:
    """A stable int32 fingerprint of a task name in ``[2**30, 2**31)`` (the same in every
    run and process): what :func:`add_task_ids` writes and the converter maps to an id."""
    digest = hashlib.sha256(name.encode("utf-8")).digest()
    return KEY_BASE + int.from_bytes(digest[:4], "big") % KEY_BASE


class TaskIndexError(ValueError):
    """A task name or id that the mapping does not know, or two mappings that disagree."""


@dataclasses.dataclass(frozen=True)
class TaskIndex:
    """An ordered, duplicate-free tuple of task names; ``names[i]`` has task id ``i``.

    Attributes:
      names: the task names in id order.
    """

    names: tuple[str, ...]

    def __post_init__(self) -> None:
        names = tuple(self.names)
        object.__setattr__(self, "names", names)
        if not names:
            raise TaskIndexError("A TaskIndex needs at least one task name; got none.")
        for name in names:
            if not isinstance(name, str) or not name:
                raise TaskIndexError(f"Task names must be non-empty strings; got {name!r}.")
        duplicates = sorted(n for n, count in collections.Counter(names).items() if count > 1)
        if duplicates:
            raise TaskIndexError(f"Task names must be unique; {duplicates} repeat in {names}.")
        keys = collections.Counter(task_key(n) for n in names)
        if any(count > 1 for count in keys.values()):
            raise TaskIndexError(f"Two task names of {names} share a task key; rename one.")

    @property
    def num_tasks(self) -> int:
        """The number of tasks ``T`` (the size of every ``tasks`` parameter axis)."""
        return len(self.names)

    def __len__(self) -> int:
        return len(self.names)

    def __contains__(self, name: object) -> bool:
        return name in self.names

    def id(self, name: str) -> int:
        """The task id of ``name``; an error names it and the known names if unknown."""
        try:
            return self.names.index(name)
        except ValueError:
            raise TaskIndexError(
                f"Task {name!r} is not in the task-id mapping; known tasks (id order): "
                f"{list(self.names)}."
            ) from None

    def name(self, task_id: int) -> str:
        """The task name of ``task_id``; an error gives the allowed range if out of range."""
        if not 0 <= int(task_id) < len(self.names):
            raise TaskIndexError(
                f"Task id {task_id} is out of range [0, {len(self.names) - 1}] for the "
                f"mapping {list(self.names)}."
            )
        return self.names[int(task_id)]

    def as_dict(self) -> dict[str, int]:
        """``{name: id}`` for every task."""
        return {name: i for i, name in enumerate(self.names)}

    # -- JSON ------------------------------------------------------------------------------

    def to_json(self) -> str:
        return json.dumps(
            {"format_version": FORMAT_VERSION, "task_names": list(self.names)}, indent=2
        )

    @classmethod
    def from_json(cls, text: str) -> TaskIndex:
        data = json.loads(text)
        if not isinstance(data, Mapping) or "task_names" not in data:
            raise TaskIndexError(
                f"A task-id mapping JSON must be an object with 'task_names'; got {text[:200]!r}."
            )
        version = data.get("format_version", FORMAT_VERSION)
        if version != FORMAT_VERSION:
            raise TaskIndexError(
                f"Task-id mapping format_version {version} is not supported (expected "
                f"{FORMAT_VERSION})."
            )
        return cls(tuple(data["task_names"]))

    def save(self, path: str | os.PathLike) -> None:
        """Writes the mapping as JSON to ``path`` (a local or ``tf.io.gfile`` path)."""
        with tf.io.gfile.GFile(os.fspath(path), "w") as f:
            f.write(self.to_json())

    @classmethod
    def load(cls, path: str | os.PathLike) -> TaskIndex:
        """Reads a mapping saved by :meth:`save`; a missing file is an error naming it."""
        path = os.fspath(path)
        if not tf.io.gfile.exists(path):
            raise FileNotFoundError(f"No task-id mapping file at {path!r}.")
        with tf.io.gfile.GFile(path, "r") as f:
            return cls.from_json(f.read())

    @classmethod
    def from_mixture(cls, mixture_or_task: str) -> TaskIndex:
        """The tasks of a registered seqio mixture (one task: itself).

        The order is seqio's ``Mixture.tasks`` order, sorted by task name (sub-mixtures
        flattened), so it does not depend on the order the mixture was defined in.
        """
        provider = seqio.get_mixture_or_task(mixture_or_task)
        if isinstance(provider, seqio.Mixture):
            return cls(tuple(task.name for task in provider.tasks))
        return cls((provider.name,))


def check_compatible(saved: TaskIndex, current: TaskIndex, *, context: str = "") -> None:
    """Raises unless ``saved`` and ``current`` give every task the same id.

    Args:
      saved: the mapping stored with a checkpoint.
      current: the mapping of the run that loads it.
      context: words saying what is being loaded, put at the front of the error.

    Raises:
      TaskIndexError: naming both mappings and the first task whose id differs.
    """
    if saved.names == current.names:
        return
    prefix = f"{context}: " if context else ""
    saved_ids, current_ids = saved.as_dict(), current.as_dict()
    diffs = [
        f"{name!r}: saved id {saved_ids.get(name)}, current id {current_ids.get(name)}"
        for name in dict.fromkeys(saved.names + current.names)
        if saved_ids.get(name) != current_ids.get(name)
    ]
    raise TaskIndexError(
        f"{prefix}the task-id mapping differs from the saved one. saved: {list(saved.names)}; "
        f"current: {list(current.names)}; differences: {'; '.join(diffs[:5])}"
        f"{' …' if len(diffs) > 5 else ''}. Give this run the saved run's tasks (with "
        "mpt-jax: the same MIXTURE); in Python, use the saved mapping (TaskIndex.load) or map "
        "tasks explicitly when initialising from a source checkpoint."
    )


# -- the mapping of a run, passed to its feature converter ----------------------------------


@gin.configurable
def task_index(task_names: Sequence[str] | None = None, mixture: str | None = None) -> TaskIndex:
    """A mapping from gin: ``task_names`` (explicit order) or ``mixture`` (its tasks sorted
    by name). Bind it to the feature converter (``PromptEncDecFeatureConverter.task_index``).

    Raises:
      TaskIndexError: when neither or both are bound.
    """
    if (task_names is None) == (mixture is None):
        raise TaskIndexError(
            "Bind exactly one of task_index.task_names and task_index.mixture; got "
            f"task_names={None if task_names is None else list(task_names)} and "
            f"mixture={mixture!r}."
        )
    if task_names is not None:
        return TaskIndex(tuple(task_names))
    return TaskIndex.from_mixture(mixture)


def check_covers(index: TaskIndex, mixture_or_task: str) -> None:
    """Raises ``TaskIndexError`` naming the first task of a registered seqio mixture (or the
    task itself) that ``index`` lacks, before any dataset is read."""
    for name in TaskIndex.from_mixture(mixture_or_task).names:
        index.id(name)


def ids_from_keys(index: TaskIndex) -> Callable[[tf.Tensor], tf.Tensor]:
    """``lookup(keys) -> ids``: task keys (int32, any shape) to ``index``'s task ids.

    The table is made once, here (outside any ``Dataset.map``, where TensorFlow does not
    allow creating it); an unknown key fails when the dataset is read, naming the mapping.
    """
    table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(
            tf.constant([task_key(n) for n in index.names], tf.int64),
            tf.range(len(index.names), dtype=tf.int64),
        ),
        default_value=-1,
    )
    message = (
        f"an example of a task that is not in the task-id mapping of the run {list(index.names)} "
        "(task_ids holds the task key written by add_task_ids)"
    )

    def lookup(keys: tf.Tensor) -> tf.Tensor:
        ids = table.lookup(tf.cast(keys, tf.int64))
        with tf.control_dependencies([tf.debugging.assert_non_negative(ids, message=message)]):
            return tf.cast(tf.identity(ids), tf.int32)

    return lookup


TASK_IDS_FEATURE = seqio.Feature(
    vocabulary=seqio.PassThroughVocabulary(size=0),
    add_eos=False,
    required=True,
    dtype=tf.int32,
    rank=1,
)
"""The output feature every prompted task declares for ``task_ids`` (``[1]`` per example)."""


def add_task_ids(dataset: tf.data.Dataset, *, task_name: str) -> tf.data.Dataset:
    """seqio preprocessor: adds ``task_ids = [task_key(task_name)]`` (int32 ``[1]``).

    Place it after tokenization (``seqio.preprocessors.tokenize`` would try to encode it).
    The run's feature converter maps the key to the run's task id.

    Args:
      dataset: examples (dicts of tensors).
      task_name: the seqio task the examples belong to (bound with ``functools.partial``
        when the task is registered).
    """
    key = tf.constant([task_key(task_name)], dtype=tf.int32)

    def _add(example):
        if "task_ids" in example:
            raise TaskIndexError(f"Examples of task {task_name!r} already carry 'task_ids'.")
        return {**example, "task_ids": key}

    return dataset.map(_add, num_parallel_calls=tf.data.AUTOTUNE)
