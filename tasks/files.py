"""Your own tasks from jsonl or TSV files, defined in gin: no Python to write.

One gin binding declares every own task; ``mpt-jax`` registers them as seqio tasks (with
the project's ``task_ids`` and length policy, like every mpt task) before a job starts::

    file_tasks.tasks = {
        'my_sentiment': {
            'train': 'data/sentiment/train.jsonl',
            'validation': 'data/sentiment/dev.jsonl',
            'test': 'data/sentiment/test.jsonl',
            'inputs': 'text',                  # the field(s) the input text is made of
            'targets': 'label',                # the field the answer is read from
            'labels': ['negative', 'positive'],  # classification: the label names
            'metric': 'accuracy',
        },
        'my_topic': {'train': 'data/topic/*.tsv', 'inputs': ['title', 'body'], ...},
    }
    file_tasks.mixtures = {'my_sources': ['my_sentiment', 'my_topic']}

Keys of one task (see :class:`FileTask`): ``train`` / ``validation`` / ``test`` (a file,
a glob pattern or a list of them; ``.jsonl``, ``.json`` lines, ``.tsv`` with a header
row, optionally ``.gz``), ``inputs``, ``targets``, ``labels``, ``metric`` (one of
:data:`METRICS`), ``prefix`` (text put before the input), ``scoring`` (``"generate"``:
greedy decoding; ``"rank"``: rank classification over ``labels``, each label scored by
the model's log-likelihood).

Input text: one field is used as it is; several become ``"title: … body: …"``. With
``labels``, a record's target may be a label name or its index (``0``, ``"1"``); any
other value is an error naming the file, the line and the labels.

Python users call :func:`register_file_task` with a :class:`FileTask`.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import glob
import itertools
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import gin
import numpy as np
import seqio
import tensorflow as tf

from mpt_jax.data.task_ids import TASK_IDS_FEATURE, add_task_ids
from mpt_jax.errors import BindingError

from . import metrics as metrics_lib
from . import postprocessors
from .data_sources import _lines
from .preprocessors import enforce_sequence_lengths
from .vocab import TASK_VOCABULARY

SPLITS = ("train", "validation", "test")
SCORINGS = ("generate", "rank")


def _exact_match(targets: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
    """Percentage of predictions equal to their target text (surrounding space ignored)."""
    if len(targets) != len(predictions):
        raise ValueError(f"{len(targets)} targets but {len(predictions)} predictions.")
    hits = [t.strip() == p.strip() for t, p in zip(targets, predictions, strict=True)]
    return {"exact_match": 100.0 * float(np.mean(hits)) if hits else 0.0}


def _squad(targets: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
    return metrics_lib.squad([[t] for t in targets], predictions)


def _float_label(output, example=None, is_target=False) -> float:
    return postprocessors.float_label(output, example, is_target)


@dataclasses.dataclass(frozen=True)
class Metric:
    """A shipped metric: what it needs and how decoded text reaches it."""

    fn: Callable[..., dict]
    needs_labels: bool
    text: bool = False  # compares text (postprocess: the decoded string)


#: Metrics an own task may choose (``metric``), all in percent like the paper's tables.
METRICS: dict[str, Metric] = {
    "accuracy": Metric(metrics_lib.accuracy, needs_labels=True),
    "f1": Metric(metrics_lib.binary_f1, needs_labels=True),
    "macro_f1": Metric(metrics_lib.macro_f1, needs_labels=True),
    "matthews_corr": Metric(metrics_lib.matthews_corrcoef, needs_labels=True),
    "exact_match": Metric(_exact_match, needs_labels=False, text=True),
    "squad": Metric(_squad, needs_labels=False, text=True),
    "pearson_spearman": Metric(metrics_lib.pearson_spearman, needs_labels=False),
}


def rank_accuracy(targets: Sequence[tuple[int, int]], scores: Sequence[float]) -> dict[str, float]:
    """Rank classification: per example, the label with the highest log-likelihood is the
    prediction; percentage of examples where it is the correct label.

    Args:
      targets: per (example, label) row, ``(example index, 1 if the label is correct)``.
      scores: per row, the log-likelihood of the label.
    """
    best: dict[int, tuple[float, int]] = {}
    for (group, correct), score in zip(targets, scores, strict=True):
        if group not in best or score > best[group][0]:
            best[group] = (float(score), int(correct))
    if not best:
        raise ValueError("rank_accuracy got no examples.")
    return {"accuracy": 100.0 * float(np.mean([c for _, c in best.values()]))}


def _rank_target(output, example=None, is_target=False) -> tuple[int, int]:
    del output, is_target
    return int(example["rank_group"]), int(example["rank_correct"])


def _as_list(value: str | Sequence[str] | None) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


@dataclasses.dataclass(frozen=True)
class FileTask:
    """An own task read from files (see the module docstring for the gin form).

    Attributes:
      name: the seqio task name (also the key of the run's task-id mapping).
      train, validation, test: file patterns per split; splits left out do not exist.
      inputs: the record field(s) the input text is made of.
      targets: the record field holding the answer (label name or index with ``labels``).
      labels: the label names of a classification task (its targets are these texts).
      metric: one of :data:`METRICS` (default: ``accuracy`` with labels, else
        ``exact_match``).
      prefix: text put before the input (``"sentiment"`` → ``"sentiment text: …"`` with
        several fields, ``"sentiment …"`` with one).
      scoring: ``"generate"`` or ``"rank"`` (needs ``labels``; evaluation scores each
        label, training still learns to generate the correct one).
    """

    name: str
    train: tuple[str, ...] = ()
    validation: tuple[str, ...] = ()
    test: tuple[str, ...] = ()
    inputs: tuple[str, ...] = ("inputs",)
    targets: str = "targets"
    labels: tuple[str, ...] | None = None
    metric: str | None = None
    prefix: str = ""
    scoring: str = "generate"

    @classmethod
    def from_mapping(cls, name: str, spec: Mapping[str, Any]) -> FileTask:
        """A task from its gin dict; an unknown key or bad value names the task and key."""
        fields = {f.name for f in dataclasses.fields(cls)} - {"name"}
        unknown = sorted(set(spec) - fields)
        if unknown:
            from mpt_jax.runner.preflight import suggest

            raise BindingError(
                f"file_tasks.tasks[{name!r}]: unknown key {unknown[0]!r}"
                f"{suggest(unknown[0], fields)} (keys: {sorted(fields)})"
            )
        kwargs = dict(spec)
        for split in SPLITS:
            kwargs[split] = tuple(_as_list(kwargs.get(split)))
        kwargs["inputs"] = tuple(_as_list(kwargs.get("inputs", "inputs")))
        if kwargs.get("labels") is not None:
            if isinstance(kwargs["labels"], str) or not isinstance(kwargs["labels"], Sequence):
                raise BindingError(
                    f"file_tasks.tasks[{name!r}]['labels'] = {kwargs['labels']!r}: give a list "
                    "of label names, e.g. ['no', 'yes']"
                )
            kwargs["labels"] = tuple(str(label) for label in kwargs["labels"])
            repeated = sorted({x for x in kwargs["labels"] if kwargs["labels"].count(x) > 1})
            if not kwargs["labels"] or repeated:
                raise BindingError(
                    f"file_tasks.tasks[{name!r}]['labels'] = {list(kwargs['labels'])}: give "
                    "distinct label names"
                    + (f" ({repeated} repeated)" if repeated else " (the list is empty)")
                )
        return cls(name=name, **kwargs)

    def __post_init__(self) -> None:
        where = f"file_tasks.tasks[{self.name!r}]"
        if not any(getattr(self, s) for s in SPLITS):
            raise BindingError(f"{where}: give at least one of {SPLITS} (a jsonl or TSV file)")
        if not self.inputs or not all(isinstance(f, str) and f for f in self.inputs):
            raise BindingError(f"{where}: 'inputs' must name record fields; got {self.inputs!r}")
        if self.metric is not None and self.metric not in METRICS:
            from mpt_jax.runner.preflight import suggest

            raise BindingError(
                f"{where}: metric {self.metric!r} is not a shipped metric"
                f"{suggest(self.metric, METRICS)} (choose from {sorted(METRICS)})"
            )
        if METRICS[self.metric_name].needs_labels and not self.labels:
            raise BindingError(
                f"{where}: metric {self.metric_name!r} compares class labels; give 'labels' "
                "(the label names) or choose 'exact_match' / 'squad'"
            )
        if self.scoring not in SCORINGS:
            raise BindingError(f"{where}: scoring must be one of {SCORINGS}; got {self.scoring!r}")
        if self.scoring == "rank" and not self.labels:
            raise BindingError(f"{where}: scoring 'rank' ranks the labels; give 'labels'")

    @property
    def metric_name(self) -> str:
        return self.metric or ("accuracy" if self.labels else "exact_match")

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(s for s in SPLITS if getattr(self, s))

    def files(self, split: str) -> list[str]:
        """The files of ``split`` (patterns expanded); a pattern matching nothing, or a
        file with no record, is an error naming it."""
        paths: list[str] = []
        for pattern in getattr(self, split):
            matched = sorted(glob.glob(pattern)) or sorted(tf.io.gfile.glob(pattern))
            if not matched:
                from mpt_jax.runner.preflight import relative_to_cwd

                raise FileNotFoundError(
                    f"file_tasks.tasks[{self.name!r}][{split!r}]: no file matches {pattern!r}"
                    f"{relative_to_cwd(pattern)}"
                )
            paths += matched
        return paths


# -- reading ---------------------------------------------------------------------------------


class FileTaskError(ValueError):
    """A record of an own task's file that cannot be read as the task declares (named by
    ``file:line``): not JSON, a missing field, a target that is not a label, an empty file.
    Raised when the task is registered, before training (every record is read once)."""


def _records(path: str) -> Iterator[tuple[int, Mapping[str, Any]]]:
    """``(line number, record)`` of a jsonl or TSV file (TSV: the first line names fields)."""
    stem = path.removesuffix(".gz")
    stream = _lines(path)  # read as a stream: a task's files may be large
    first = next(stream, None)
    if first is None:
        return
    # a byte-order mark (Windows editors, Excel) is encoding, not data
    lines = itertools.chain([first.removeprefix("\ufeff")], stream)
    if stem.endswith((".tsv", ".tab")):
        reader = csv.DictReader(lines, delimiter="\t", quoting=csv.QUOTE_NONE)
        for row in reader:
            extra, missing = row.pop(None, []), [k for k, v in row.items() if v is None]
            if extra or missing:
                names = reader.fieldnames or []
                raise FileTaskError(
                    f"{path}:{reader.line_num}: the row has "
                    f"{len(names) + len(extra) - len(missing)} tab-separated field(s); the "
                    f"header names {len(names)}: {names}"
                )
            yield reader.line_num, row
        return
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as err:
            raise FileTaskError(f"{path}:{number}: not a JSON line ({err})") from None


def _field(record: Mapping[str, Any], key: str, where: str) -> Any:
    if not isinstance(record, Mapping):
        shown = repr(record)
        shown = shown if len(shown) <= 80 else shown[:77] + "..."
        raise FileTaskError(f"{where}: expected a JSON object per line; got {shown}")
    if key not in record:
        header = " (a TSV file's first line names its fields)" if ".tsv" in where else ""
        raise FileTaskError(
            f"{where}: the record has no field {key!r} (fields: {sorted(record)}){header}"
        )
    value = record[key]
    if value is None or isinstance(value, list | dict):
        raise FileTaskError(
            f"{where}: field {key!r} is {json.dumps(value)[:60]}; expected text or a number"
        )
    return value


def _label_index(value: Any, labels: Sequence[str], where: str) -> int:
    text = str(value).strip()
    if text in labels:
        return list(labels).index(text)
    if isinstance(value, bool):
        value = int(value)
    try:
        index = int(text) if not isinstance(value, int) else value
    except ValueError:
        index = None
    if index is not None and 0 <= index < len(labels):
        return index
    raise FileTaskError(
        f"{where}: target {value!r} is neither a label name nor an index of {list(labels)}"
    )


def _input_text(task: FileTask, record: Mapping[str, Any], where: str) -> str:
    values = [str(_field(record, key, where)) for key in task.inputs]
    if len(values) == 1:
        body = values[0]
    else:
        body = " ".join(f"{key}: {value}" for key, value in zip(task.inputs, values, strict=True))
    return f"{task.prefix} {body}" if task.prefix else body


def examples(task: FileTask, split: str) -> Iterator[dict[str, Any]]:
    """The split's examples as strings: ``{"inputs", "targets"}`` plus ``label`` (int,
    classification) — or, for a ``"rank"`` task's evaluation splits, one row per label with
    ``rank_group`` (the example's index) and ``rank_correct``."""
    group = 0
    for path in task.files(split):
        any_record = False
        for number, record in _records(path):
            any_record = True
            where = f"{path}:{number}"
            inputs = _input_text(task, record, where)
            target = _field(record, task.targets, where)
            if task.labels is None:
                yield {"inputs": inputs, "targets": str(target)}
                continue
            label = _label_index(target, task.labels, where)
            if task.scoring == "rank" and split != "train":
                for i, name in enumerate(task.labels):
                    yield {"inputs": inputs, "targets": name, "label": label,
                           "rank_group": group, "rank_correct": int(i == label)}  # fmt: skip
                group += 1
            else:
                yield {"inputs": inputs, "targets": task.labels[label], "label": label}
        if not any_record:
            raise FileTaskError(
                f"{path}: the file holds no record (an empty jsonl/TSV file, "
                f"file_tasks.tasks[{task.name!r}][{split!r}])"
            )


def _signature(task: FileTask, split: str) -> dict[str, tf.TensorSpec]:
    spec = {"inputs": tf.TensorSpec([], tf.string), "targets": tf.TensorSpec([], tf.string)}
    if task.labels is not None:
        spec["label"] = tf.TensorSpec([], tf.int64)
        if task.scoring == "rank" and split != "train":
            spec["rank_group"] = tf.TensorSpec([], tf.int64)
            spec["rank_correct"] = tf.TensorSpec([], tf.int64)
    return spec


def _dataset_fn(split: str, shuffle_files: bool = False, seed: int | None = None, *,
                task: FileTask) -> tf.data.Dataset:  # fmt: skip
    del shuffle_files, seed  # seqio shuffles examples after the source
    return tf.data.Dataset.from_generator(
        lambda: examples(task, split), output_signature=_signature(task, split)
    )


# -- registration ----------------------------------------------------------------------------

_REGISTERED: dict[str, FileTask] = {}


def register_file_task(task: FileTask) -> None:
    """Registers ``task`` as a seqio task (replacing an own task of that name registered
    before with another definition). Every record of its files is read now, so a missing
    or empty file, a line that is not JSON, a missing field or a target that is not a label
    is a :class:`FileTaskError` naming ``file:line`` before any training starts."""
    if _REGISTERED.get(task.name) == task and task.name in seqio.TaskRegistry.names():
        return
    for split in task.splits:
        for _ in examples(task, split):  # every record once: its errors name file:line now
            pass
    if task.name in seqio.TaskRegistry.names():
        if task.name not in _REGISTERED:
            raise BindingError(
                f"file_tasks.tasks[{task.name!r}]: a seqio task of that name already exists "
                "(a shipped or your own Python task); choose another name"
            )
        seqio.TaskRegistry.remove(task.name)
    metric = METRICS[task.metric_name]
    if task.scoring == "rank":
        postprocess, metric_fns = _rank_target, [rank_accuracy]
    elif task.labels is not None:
        postprocess = functools.partial(postprocessors.class_label, label_names=task.labels)
        fn = metric.fn
        if task.metric_name == "macro_f1":
            fn = functools.partial(fn, num_classes=len(task.labels))
            fn.__name__ = "macro_f1"
        metric_fns = [fn]
    elif metric.text:
        postprocess, metric_fns = _text, [metric.fn]
    else:
        postprocess, metric_fns = _float_label, [metric.fn]
    seqio.TaskRegistry.add(
        task.name,
        source=seqio.FunctionDataSource(
            dataset_fn=functools.partial(_dataset_fn, task=task), splits=task.splits
        ),
        preprocessors=[
            seqio.preprocessors.tokenize,
            seqio.preprocessors.append_eos,
            functools.partial(add_task_ids, task_name=task.name),
            functools.partial(enforce_sequence_lengths, task_name=task.name),
        ],
        output_features={
            "inputs": seqio.Feature(vocabulary=TASK_VOCABULARY, add_eos=True, required=True),
            "targets": seqio.Feature(vocabulary=TASK_VOCABULARY, add_eos=True, required=True),
            "task_ids": TASK_IDS_FEATURE,
        },
        postprocess_fn=postprocess,
        metric_fns=metric_fns,
    )
    _REGISTERED[task.name] = task


def _text(output, example=None, is_target=False) -> str:
    return postprocessors.to_text(output).strip()


@gin.configurable
def file_tasks(
    tasks: Mapping[str, Mapping[str, Any]] | None = None,
    mixtures: Mapping[str, Sequence[str]] | None = None,
) -> tuple[list[FileTask], dict[str, list[str]]]:
    """The own tasks and mixtures bound in gin (see the module docstring)."""
    parsed = [FileTask.from_mapping(name, spec) for name, spec in (tasks or {}).items()]
    return parsed, {name: list(members) for name, members in (mixtures or {}).items()}


def register_file_tasks() -> list[str]:
    """Registers what ``file_tasks.tasks`` / ``file_tasks.mixtures`` bind; returns the
    names. A mixture of unknown tasks is an error naming them."""
    tasks, mixtures = file_tasks()
    for task in tasks:
        register_file_task(task)
    known = set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names())
    for name, members in mixtures.items():
        missing = [m for m in members if m not in known]
        if missing:
            raise BindingError(
                f"file_tasks.mixtures[{name!r}]: no task named {missing} (own tasks: "
                f"{[t.name for t in tasks]})"
            )
        if name in seqio.MixtureRegistry.names():
            seqio.MixtureRegistry.remove(name)
        seqio.MixtureRegistry.add(name, [(m, 1.0) for m in members])
    return [t.name for t in tasks] + list(mixtures)
