"""GLUE tasks: MNLI, QQP, QNLI, SST-2, STS-B, MRPC, RTE, CoLA (TFDS ``glue/*:2.0.0``).

Names ``mpt_glue_<task>``. Formats follow T5 (``"rte sentence1: … sentence2: …"`` →
``entailment``). Splits: ``train``, ``validation``, ``test`` (GLUE test labels are hidden:
targets ``<unk>``); MNLI's ``validation`` is ``validation_matched`` and
``validation_mismatched`` is its own split. Metrics as the MPT paper reports them:
accuracy; F1 and accuracy for MRPC and QQP; Matthews correlation for CoLA; Pearson and
Spearman for STS-B.
"""

from __future__ import annotations

import functools

import tensorflow as tf

from . import metrics, postprocessors, preprocessors
from .common import TaskSpec, register
from .data_sources import BenchmarkSource, heldout_splits, int_spec, string_spec

GLUE_VERSION = "2.0.0"

# task: (TFDS config, text fields (name, key), label names, metric functions)
GLUE_TASKS = {
    "cola": ("cola", [("sentence", "sentence")], ["unacceptable", "acceptable"],
             [metrics.matthews_corrcoef, metrics.accuracy]),
    "sst2": ("sst2", [("sentence", "sentence")], ["negative", "positive"], [metrics.accuracy]),
    "mrpc": ("mrpc", [("sentence1", "sentence1"), ("sentence2", "sentence2")],
             ["not_equivalent", "equivalent"], [metrics.binary_f1, metrics.accuracy]),
    "qqp": ("qqp", [("question1", "question1"), ("question2", "question2")],
            ["not_duplicate", "duplicate"], [metrics.binary_f1, metrics.accuracy]),
    "mnli": ("mnli", [("hypothesis", "hypothesis"), ("premise", "premise")],
             ["entailment", "neutral", "contradiction"], [metrics.accuracy]),
    "qnli": ("qnli", [("question", "question"), ("sentence", "sentence")],
             ["entailment", "not_entailment"], [metrics.accuracy]),
    "rte": ("rte", [("sentence1", "sentence1"), ("sentence2", "sentence2")],
            ["entailment", "not_entailment"], [metrics.accuracy]),
}  # fmt: skip
STSB_FIELDS = [("sentence1", "sentence1"), ("sentence2", "sentence2")]

SPLITS = ("train", "validation", "test")
# Fewer than 10k training examples: the "heldout" protocol halves their validation set.
SMALL_TASKS = ("rte", "mrpc", "stsb", "cola")
MNLI_SPLITS = {
    "train": "train",
    "validation": "validation_matched",
    "validation_mismatched": "validation_mismatched",
    "test": "test_matched",
    "test_mismatched": "test_mismatched",
}


def task_name(task: str) -> str:
    return f"mpt_glue_{task}"


def _signature(fields, label_dtype=tf.int64):
    spec = {key: string_spec() for _, key in fields}
    spec["label"] = (
        int_spec(label_dtype) if label_dtype.is_integer else tf.TensorSpec([], label_dtype)
    )
    spec["idx"] = int_spec(tf.int32)
    return spec


def _source(task: str, config: str, fields, label_dtype=tf.int64) -> BenchmarkSource:
    splits = MNLI_SPLITS if task == "mnli" else {s: s for s in SPLITS}
    validation = splits["validation"]
    return BenchmarkSource(
        task_name(task),
        splits=list(splits),
        output_signature=_signature(fields, label_dtype),
        tfds_name=f"glue/{config}:{GLUE_VERSION}",
        tfds_splits=splits,
        heldout=heldout_splits(validation=validation, small=task in SMALL_TASKS),
    )


def register_glue() -> None:
    for task, (config, fields, label_names, metric_fns) in GLUE_TASKS.items():
        register(
            TaskSpec.classification(
                task_name(task),
                _source(task, config, fields),
                prefix=task,
                fields=fields,
                label_names=label_names,
                metric_fns=metric_fns,
            )
        )
    register(
        TaskSpec(
            name=task_name("stsb"),
            source=_source("stsb", "stsb", STSB_FIELDS, label_dtype=tf.float32),
            formatter=functools.partial(
                preprocessors.regression, prefix="stsb", fields=STSB_FIELDS
            ),
            postprocess_fn=postprocessors.float_label,
            metric_fns=[metrics.pearson_spearman],
            few_shot_label_key=None,
        )
    )


GLUE_TASK_NAMES = tuple(
    task_name(t) for t in ("mnli", "qqp", "qnli", "sst2", "stsb", "mrpc", "rte", "cola")
)
