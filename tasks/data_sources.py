"""Where the raw records of an mpt task come from: TFDS, or jsonl files bound in gin.

A task's :class:`BenchmarkSource` decides when a dataset is built (not when the task is
registered, so gin bindings parsed later still count):

1. if ``task_data_files.files`` names the task, its jsonl files are read (one JSON record
   per line, with the fields of the TFDS record; e.g. the output of Hugging Face
   ``datasets``' ``to_json`` for GLUE/SuperGLUE), parsed by the task's parser;
2. else, if the task has a TFDS name, ``seqio.TfdsDataSource`` reads it from the TFDS
   data directory (``tfds_data_dir.data_dir``, default TFDS's); a dataset that is not
   prepared there is an error: nothing is downloaded;
3. else (MRQA) an error says which binding to set.

gin example::

    task_data_files.files = {
        'mpt_mrqa_nq': {'train': '/data/mrqa/NaturalQuestions.jsonl.gz',
                        'validation': '/data/mrqa/dev/NaturalQuestions.jsonl.gz'},
        'mpt_glue_rte': {'train': '/data/rte/train.jsonl', 'validation': '/data/rte/dev.jsonl'},
    }

Which TFDS slices the ``train`` / ``validation`` / ``test`` splits read is the gin
binding ``split_protocol.name``: ``"tfds"`` (the datasets' own splits; GLUE/SuperGLUE
test labels are hidden) or ``"heldout"`` (the protocol of ATTEMPT and MPT, which report
results on labelled test sets; see :func:`heldout_splits`).

Files ending in ``.gz`` are read as gzip. A record that lacks a field of the schema is an
error naming the file, the line and the field.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import gin
import seqio
import tensorflow as tf

# A parser turns one JSON line into zero or more records shaped like the output signature.
Parser = Callable[[Mapping[str, Any]], Iterator[Mapping[str, Any]]]


SPLIT_PROTOCOLS = ("tfds", "heldout")
HELDOUT_EXAMPLES = 1_000


@gin.configurable
def split_protocol(name: str = "tfds") -> str:
    """``"tfds"`` or ``"heldout"``: which TFDS slices a task's splits read (gin binding)."""
    if name not in SPLIT_PROTOCOLS:
        raise ValueError(f"split_protocol.name must be one of {SPLIT_PROTOCOLS}; got {name!r}.")
    return name


def heldout_splits(
    train: str = "train", validation: str = "validation", *, small: bool
) -> dict[str, str]:
    """The ``"heldout"`` protocol (ATTEMPT, MPT) as TFDS split slices.

    A dataset with fewer than 10k training examples (``small``) keeps its training set and
    splits its validation set in half: the first half validates, the second is the test
    set. A larger one holds out its first 1,000 training examples for validation and
    tests on its validation set. The slices are deterministic (TFDS slicing), not the
    random halves of ATTEMPT's code, so numbers are comparable in spirit, not digit for
    digit.

    Args:
      train: the TFDS training split (``"train_xl"`` for WinoGrande).
      validation: the TFDS split with labels used for evaluation
        (``"validation_matched"`` for MNLI, ``"test"`` for Yelp).
      small: fewer than 10k training examples.
    """
    if small:
        return {"train": train, "validation": f"{validation}[:50%]", "test": f"{validation}[50%:]"}
    return {
        "train": f"{train}[{HELDOUT_EXAMPLES}:]",
        "validation": f"{train}[:{HELDOUT_EXAMPLES}]",
        "test": validation,
    }


@gin.configurable
def tfds_data_dir(data_dir: str | None = None) -> str | None:
    """The TFDS data directory of prepared datasets (``None``: TFDS's default)."""
    return data_dir


@gin.configurable
def task_data_files(
    files: Mapping[str, Mapping[str, str | Sequence[str]]] | None = None,
) -> dict[str, dict[str, list[str]]]:
    """``{task name: {split: [file patterns]}}`` bound in gin (empty when unbound)."""
    out: dict[str, dict[str, list[str]]] = {}
    for task, splits in (files or {}).items():
        out[task] = {
            split: [patterns] if isinstance(patterns, str) else list(patterns)
            for split, patterns in splits.items()
        }
    return out


def _lines(path: str) -> Iterator[str]:
    """The text lines of a local or ``tf.io.gfile`` file; ``.gz`` files are decompressed."""
    with tf.io.gfile.GFile(path, "rb") as handle:
        stream = gzip.GzipFile(fileobj=handle) if path.endswith(".gz") else handle
        for line in stream:
            yield line.decode("utf-8") if isinstance(line, bytes) else line


def _expand(patterns: Sequence[str], task: str, split: str) -> list[str]:
    paths: list[str] = []
    for pattern in patterns:
        matched = sorted(tf.io.gfile.glob(pattern))
        if not matched:
            raise FileNotFoundError(
                f"No file matches {pattern!r}, bound for task {task!r} split {split!r} in "
                "task_data_files.files."
            )
        paths += matched
    return paths


def _conform(value: Any, spec: Any, where: str) -> Any:
    """Checks a parsed record against the (nested) output signature, field by field."""
    if isinstance(spec, Mapping):
        if not isinstance(value, Mapping):
            raise ValueError(f"{where}: expected an object; got {value!r:.80}.")
        out = {}
        for key, sub_spec in spec.items():
            if key not in value:
                raise ValueError(f"{where}: the record has no field {key!r}.")
            out[key] = _conform(value[key], sub_spec, f"{where}.{key}")
        return out
    return value


def records_from_jsonl(
    paths: Sequence[str], parser: Parser, output_signature: Mapping[str, Any]
) -> Iterator[Mapping[str, Any]]:
    """Parsed records of every line of ``paths``, in file and line order."""
    for path in paths:
        empty = True
        for line_number, line in enumerate(_lines(path), start=1):
            if not line.strip():
                continue
            empty = False
            try:
                raw = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{line_number}: not JSON ({err}).") from None
            for parsed in parser(raw):
                yield _conform(parsed, output_signature, f"{path}:{line_number}")
        if empty:
            raise ValueError(f"{path}: the file holds no record (bound in task_data_files.files)")


def identity_parser(record: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    """A jsonl line that already is one record with the TFDS fields."""
    yield record


class BenchmarkSource(seqio.DataSource):
    """A task's raw records: bound jsonl files if any, else TFDS (see the module docstring).

    Args:
      task_name: the seqio task this source feeds (the key in ``task_data_files.files``).
      splits: the task's split names.
      output_signature: nested ``tf.TensorSpec`` s of one record (jsonl reading).
      parser: jsonl line → records.
      tfds_name: e.g. ``"glue/rte:2.0.0"``; ``None`` when the data only comes from files.
      tfds_splits: task split → TFDS split under ``split_protocol.name = "tfds"``
        (``{"validation": "validation_matched"}``).
      heldout: task split → TFDS slice under ``"heldout"`` (:func:`heldout_splits`).
    """

    def __init__(
        self,
        task_name: str,
        splits: Sequence[str],
        output_signature: Mapping[str, Any],
        parser: Parser = identity_parser,
        tfds_name: str | None = None,
        tfds_splits: Mapping[str, str] | None = None,
        heldout: Mapping[str, str] | None = None,
    ):
        super().__init__(splits=splits, num_input_examples=None, caching_permitted=True)
        self._task_name = task_name
        self._output_signature = output_signature
        self._parser = parser
        self._tfds_name = tfds_name
        self._tfds_splits = {
            "tfds": dict(tfds_splits or {s: s for s in splits}),
            "heldout": dict(heldout or {}),
        }
        self._tfds_sources: dict[str, seqio.TfdsDataSource] = {}  # by protocol and data dir
        self._line_counts: dict[str, int] = {}

    @property
    def tfds_name(self) -> str | None:
        return self._tfds_name

    @property
    def supports_arbitrary_sharding(self) -> bool:
        return False

    def _files(self, split: str) -> list[str] | None:
        splits = task_data_files().get(self._task_name)
        if splits is None:
            return None
        if split not in splits:
            raise ValueError(
                f"task_data_files.files binds {sorted(splits)} for task {self._task_name!r}, "
                f"but split {split!r} was requested."
            )
        return _expand(splits[split], self._task_name, split)

    def tfds_split_map(self) -> dict[str, str]:
        """Task split → TFDS split (or slice) under the current ``split_protocol``."""
        protocol = split_protocol()
        mapping = self._tfds_splits[protocol]
        if not mapping:
            raise ValueError(
                f"Task {self._task_name!r} defines no {protocol!r} split protocol; use "
                f"one of {[p for p, m in self._tfds_splits.items() if m]}."
            )
        return mapping

    def _tfds(self, split: str) -> seqio.TfdsDataSource:
        """The TFDS source, once the dataset is known to be prepared (never downloads)."""
        if self._tfds_name is None:
            raise ValueError(
                f"Task {self._task_name!r} reads its data from files: bind "
                f"task_data_files.files = {{'{self._task_name}': {{'train': '...', "
                "'validation': '...'}}} in gin."
            )
        mapping = self.tfds_split_map()
        if split not in mapping:
            raise ValueError(
                f"Task {self._task_name!r} has no split {split!r} under split protocol "
                f"{split_protocol()!r}; it has {sorted(mapping)}."
            )
        protocol, data_dir = split_protocol(), tfds_data_dir()
        key = f"{protocol}:{data_dir}"
        if key not in self._tfds_sources:
            import tensorflow_datasets as tfds

            builder = tfds.builder(self._tfds_name, data_dir=data_dir)
            if not builder.is_prepared():
                raise FileNotFoundError(
                    f"TFDS dataset {self._tfds_name!r} (task {self._task_name!r}) is not "
                    f"prepared in {builder.data_dir!r}, and nothing is downloaded at run "
                    "time. Prepare it (e.g. `tfds build`), point tfds_data_dir.data_dir at "
                    "it, or bind jsonl files with task_data_files.files."
                )
            self._tfds_sources[key] = seqio.TfdsDataSource(
                tfds_name=self._tfds_name, splits=mapping, tfds_data_dir=data_dir
            )
        return self._tfds_sources[key]

    def _check_split(self, split: str) -> None:
        if split not in self.splits:
            raise ValueError(
                f"Task {self._task_name!r} has splits {list(self.splits)}; got {split!r}."
            )

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
        self._check_split(split)
        files = self._files(split)
        if files is None:
            return self._tfds(split).get_dataset(
                split=split, shuffle=shuffle, seed=seed, shard_info=shard_info
            )
        ds = tf.data.Dataset.from_generator(
            lambda: records_from_jsonl(files, self._parser, self._output_signature),
            output_signature=self._output_signature,
        )
        if shard_info is not None and shard_info.num_shards > 1:
            ds = ds.shard(shard_info.num_shards, shard_info.index)
        if shuffle:
            # Records are generated in file order; shuffle within a generous window.
            ds = ds.shuffle(10_000, seed=seed, reshuffle_each_iteration=True)
        return ds

    def list_shards(self, split: str) -> Sequence[str]:
        self._check_split(split)
        files = self._files(split)
        if files is None:
            return self._tfds(split).list_shards(split)
        return files

    def num_input_examples(self, split: str) -> int | None:
        self._check_split(split)
        files = self._files(split)
        if files is None:
            return self._tfds(split).num_input_examples(split)
        if split not in self._line_counts:
            self._line_counts[split] = sum(
                1 for _ in records_from_jsonl(files, self._parser, self._output_signature)
            )
        return self._line_counts[split]

    def __repr__(self) -> str:
        return (
            f"BenchmarkSource(task={self._task_name!r}, tfds={self._tfds_name!r}, "
            f"splits={list(self.splits)})"
        )


def string_spec() -> tf.TensorSpec:
    return tf.TensorSpec([], tf.string)


def int_spec(dtype: tf.DType = tf.int64) -> tf.TensorSpec:
    return tf.TensorSpec([], dtype)


def strings_spec() -> tf.TensorSpec:
    return tf.TensorSpec([None], tf.string)
