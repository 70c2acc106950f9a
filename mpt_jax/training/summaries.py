"""Metrics sinks of a run: JSON lines (``metrics.jsonl``) and TensorBoard summaries.

Every record is ``{"step": int, "kind": "train" | "eval", <name>: float, ...}``, one
per line in ``<model_dir>/metrics.jsonl``; the same scalars go to TensorBoard under
``<model_dir>/tensorboard/<kind>``. A resumed run appends, so steps between the last
checkpoint and an interruption appear twice (the later record is the one that counts).
Nothing is created before the first record: a run that fails before its first step
leaves no folder behind.

Names: ``loss``, ``loss/<task>``, ``learning_rate`` (and ``learning_rate/<group>`` for a
parameter group with its own rate), ``prompt_rms/<param>``,
``prompt_rms/task/<task>``, ``embedding_rms``, ``steps_per_second`` … (see
:mod:`mpt_jax.training.loop`); a ``/`` groups scalars in TensorBoard.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from typing import Any


def _scalar(value: Any) -> float:
    return float(value)


def _scalar_metadata():
    """Marks a summary as a TensorBoard scalar without needing the tensorboard package
    (``tf.summary.scalar`` imports it; the event format is TensorFlow's own)."""
    from tensorflow.core.framework import summary_pb2

    metadata = summary_pb2.SummaryMetadata()
    metadata.plugin_data.plugin_name = "scalars"
    return metadata


class MetricsWriter:
    """Writes metric records; ``model_dir=None`` keeps them in memory only."""

    def __init__(self, model_dir: str | None, *, tensorboard: bool = True):
        self.model_dir = model_dir
        self.records: list[dict[str, Any]] = []
        self._tb: dict[str, Any] = {}
        self._tensorboard = tensorboard and model_dir is not None
        self._jsonl = None

    @property
    def path(self) -> str | None:
        """``<model_dir>/metrics.jsonl`` (None without a ``model_dir``)."""
        return None if self.model_dir is None else os.path.join(self.model_dir, "metrics.jsonl")

    def write(self, step: int, metrics: Mapping[str, Any], kind: str = "train") -> dict:
        """Record ``metrics`` (scalars) at ``step``; returns the record."""
        record = {"step": int(step), "kind": kind}
        record.update({k: _scalar(v) for k, v in metrics.items()})
        self.records.append(record)
        if self.model_dir is not None and self._jsonl is None:
            os.makedirs(self.model_dir, exist_ok=True)
            self._jsonl = open(self.path, "a")  # noqa: SIM115
        if self._jsonl is not None:
            safe = {k: (v if not isinstance(v, float) or math.isfinite(v) else str(v))
                    for k, v in record.items()}  # fmt: skip
            self._jsonl.write(json.dumps(safe) + "\n")
            self._jsonl.flush()
        if self._tensorboard:
            import tensorflow as tf

            if kind not in self._tb:
                self._tb[kind] = tf.summary.create_file_writer(
                    os.path.join(self.model_dir, "tensorboard", kind)
                )
            with self._tb[kind].as_default():
                for name, value in metrics.items():
                    tf.summary.write(
                        name,
                        tf.constant(_scalar(value), tf.float32),
                        step=int(step),
                        metadata=_scalar_metadata(),
                    )
            self._tb[kind].flush()
        return record

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        for writer in self._tb.values():
            writer.close()
        self._tb = {}


def read_tensorboard_scalars(model_dir: str, kind: str = "train") -> dict[str, dict[int, float]]:
    """``{name: {step: value}}`` from the event files of ``<model_dir>/tensorboard/<kind>``."""
    import tensorflow as tf

    folder = os.path.join(model_dir, "tensorboard", kind)
    out: dict[str, dict[int, float]] = {}
    for fname in sorted(os.listdir(folder)):
        for event in tf.compat.v1.train.summary_iterator(os.path.join(folder, fname)):
            for value in event.summary.value:
                scalar = float(tf.make_ndarray(value.tensor))
                out.setdefault(value.tag, {})[int(event.step)] = scalar
    return out


def read_metrics(model_dir: str, kind: str | None = None) -> list[dict[str, Any]]:
    """The records of ``<model_dir>/metrics.jsonl`` (optionally of one ``kind``)."""
    with open(os.path.join(model_dir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f if line.strip()]
    return [r for r in records if kind is None or r["kind"] == kind]
