"""Task ids: a stable mapping from seqio task names to the rows of the task factors.

Every MPT parameter with a ``tasks`` axis (``prompt/task_cols`` ``[T, L, r]``,
``prompt/task_rows`` ``[T, r, D]``) is indexed by an integer task id. Which task a row
belongs to is fixed by a :class:`TaskIndex`, an ordered tuple of task names: task
``names[i]`` has id ``i``. A run saves its index as JSON next to its checkpoints; when a
run resumes, or a target run loads a source checkpoint by task name, the saved index is
checked against the current one with :func:`check_compatible`, so a row is never read for
the wrong task.

The ``task_ids`` feature is added by the seqio preprocessor :func:`add_task_ids`, as an
int32 vector of length one per example (``[1]``): tasks declare it as an output feature so
that seqio mixtures keep it and seqio's evaluator can measure it (both assume rank-1
features); the feature converter turns it into the scalar per example (``[B]`` per batch)
that the model takes. Tasks are registered once but used by runs with different
mappings (MNLI is id 0 in the source mixture and id 1 in the GLUE mixture), so
the preprocessor looks the id up in the *active* index when the dataset is built:

- in gin: ``active_task_index.task_names = ['mpt_glue_mnli', 'mpt_glue_qnli', ...]``
  or ``active_task_index.mixture = 'mpt_source_mixture'`` (the mixture's tasks in
  seqio's order, ``Mixture.tasks``: sorted by name);
- in Python: ``with use_task_index(TaskIndex(("mpt_glue_rte",))): ...``.

With neither, building a dataset fails with an error that says how to bind one; there is
no silent default (a default of "every task is id 0" would quietly train one prompt).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import os
from collections.abc import Iterator, Mapping, Sequence

import gin
import seqio
import tensorflow as tf

FORMAT_VERSION = 1


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
        f"{' …' if len(diffs) > 5 else ''}. Use the saved mapping (TaskIndex.load) or map "
        "tasks explicitly when initialising from a source checkpoint."
    )


# -- the active mapping ----------------------------------------------------------------------

_ACTIVE: list[TaskIndex] = []


@gin.configurable
def active_task_index(
    task_names: Sequence[str] | None = None, mixture: str | None = None
) -> TaskIndex:
    """The mapping that :func:`add_task_ids` uses when a dataset is built.

    Precedence: an index set with :func:`use_task_index` (innermost first), then the gin
    bindings ``task_names`` (explicit order) or ``mixture`` (its tasks sorted by name).

    Raises:
      TaskIndexError: when none of them is set, or both gin bindings are.
    """
    if _ACTIVE:
        return _ACTIVE[-1]
    if task_names is not None and mixture is not None:
        raise TaskIndexError(
            "Bind only one of active_task_index.task_names and active_task_index.mixture; "
            f"got task_names={list(task_names)} and mixture={mixture!r}."
        )
    if task_names is not None:
        return TaskIndex(tuple(task_names))
    if mixture is not None:
        return TaskIndex.from_mixture(mixture)
    raise TaskIndexError(
        "No task-id mapping is active. Bind one in gin "
        "(`active_task_index.task_names = [...]` or `active_task_index.mixture = '...'`) "
        "or wrap dataset construction in `with use_task_index(TaskIndex(...)):`."
    )


@contextlib.contextmanager
def use_task_index(index: TaskIndex) -> Iterator[TaskIndex]:
    """Makes ``index`` the active mapping inside the ``with`` block."""
    if not isinstance(index, TaskIndex):
        raise TypeError(f"use_task_index expects a TaskIndex; got {type(index).__name__}.")
    _ACTIVE.append(index)
    try:
        yield index
    finally:
        _ACTIVE.pop()


TASK_IDS_FEATURE = seqio.Feature(
    vocabulary=seqio.PassThroughVocabulary(size=0),
    add_eos=False,
    required=True,
    dtype=tf.int32,
    rank=1,
)
"""The output feature every prompted task declares for ``task_ids`` (``[1]`` per example)."""


def add_task_ids(
    dataset: tf.data.Dataset, *, task_name: str, index: TaskIndex | None = None
) -> tf.data.Dataset:
    """seqio preprocessor: adds ``task_ids`` (int32 ``[1]``) to every example.

    Place it after tokenization (``seqio.preprocessors.tokenize`` would try to encode it).

    Args:
      dataset: examples (dicts of tensors).
      task_name: the seqio task the examples belong to (bound with ``functools.partial``
        when the task is registered).
      index: the mapping; defaults to :func:`active_task_index` at dataset-build time.

    Returns:
      The same examples with ``task_ids = [index.id(task_name)]``.
    """
    index = active_task_index() if index is None else index
    task_id = tf.constant([index.id(task_name)], dtype=tf.int32)

    def _add(example):
        if "task_ids" in example:
            raise TaskIndexError(f"Examples of task {task_name!r} already carry 'task_ids'.")
        return {**example, "task_ids": task_id}

    return dataset.map(_add, num_parallel_calls=tf.data.AUTOTUNE)
