"""SuperGLUE tasks: BoolQ, CB, WiC, WSC, MultiRC, ReCoRD (TFDS ``super_glue/*:1.0.2``).

Names ``mpt_superglue_<task>``; ReCoRD (``mpt_superglue_record``) is also a source task.
Formats follow T5 (``"boolq question: … passage: …"`` → ``True``); WSC is the
classification form used by ATTEMPT and MPT (``"wsc text: … span1_text: …
span2_text: …"`` → ``True``/``False``, TFDS ``wsc.fixed``). Metrics: accuracy (BoolQ, WiC,
WSC), accuracy and macro F1 (CB), F1a and EM (MultiRC), EM and F1 with the maximum over
the gold answers (ReCoRD). Test labels are hidden (targets ``<unk>``).
"""

from __future__ import annotations

import functools

import tensorflow as tf

from . import metrics, postprocessors, preprocessors
from .common import TaskSpec, register
from .data_sources import BenchmarkSource, heldout_splits, int_spec, string_spec, strings_spec

SUPER_GLUE_VERSION = "1.0.2"
SPLITS = ("train", "validation", "test")
BOOLEAN = ["False", "True"]
# Fewer than 10k training examples: the "heldout" protocol halves their validation set.
SMALL_TASKS = ("boolq", "cb", "wic", "wsc")

# task: (TFDS config, text fields (name, key), label names, extra int32 fields, metrics)
CLASSIFICATION_TASKS = {
    "boolq": ("boolq", [("question", "question"), ("passage", "passage")], BOOLEAN, [],
              [metrics.accuracy]),
    "cb": ("cb", [("hypothesis", "hypothesis"), ("premise", "premise")],
           ["entailment", "contradiction", "neutral"], [],
           [metrics.accuracy, functools.partial(metrics.macro_f1, num_classes=3)]),
    "wic": ("wic", [("sentence1", "sentence1"), ("sentence2", "sentence2"), ("word", "word")],
            BOOLEAN, ["start1", "start2", "end1", "end2"], [metrics.accuracy]),
    "wsc": ("wsc.fixed", [("text", "text"), ("span1_text", "span1_text"),
                          ("span2_text", "span2_text")],
            BOOLEAN, ["span1_index", "span2_index"], [metrics.accuracy]),
}  # fmt: skip


def task_name(task: str) -> str:
    return f"mpt_superglue_{task}"


def _tfds_name(config: str) -> str:
    return f"super_glue/{config}:{SUPER_GLUE_VERSION}"


def _register_classification() -> None:
    for task, (config, fields, label_names, int_fields, metric_fns) in CLASSIFICATION_TASKS.items():
        signature = {key: string_spec() for _, key in fields}
        signature.update({key: int_spec(tf.int32) for key in int_fields})
        signature.update(label=int_spec(), idx=int_spec(tf.int32))
        register(
            TaskSpec.classification(
                task_name(task),
                BenchmarkSource(
                    task_name(task),
                    SPLITS,
                    signature,
                    tfds_name=_tfds_name(config),
                    heldout=heldout_splits(small=task in SMALL_TASKS),
                ),
                prefix=task,
                fields=fields,
                label_names=label_names,
                metric_fns=metric_fns,
            )
        )


def _register_multirc() -> None:
    signature = {
        "paragraph": string_spec(),
        "question": string_spec(),
        "answer": string_spec(),
        "label": int_spec(),
        "idx": {k: int_spec(tf.int32) for k in ("paragraph", "question", "answer")},
    }
    register(
        TaskSpec(
            name=task_name("multirc"),
            source=BenchmarkSource(
                task_name("multirc"),
                SPLITS,
                signature,
                tfds_name=_tfds_name("multirc"),
                heldout=heldout_splits(small=False),
            ),
            formatter=functools.partial(preprocessors.multirc, label_names=BOOLEAN),
            postprocess_fn=functools.partial(postprocessors.multirc, label_names=BOOLEAN),
            metric_fns=[metrics.multirc_f1a_em],
            few_shot_label_key="label",
            num_classes=2,
        )
    )


def _register_record() -> None:
    signature = {
        "passage": string_spec(),
        "query": string_spec(),
        "entities": strings_spec(),
        "answers": strings_spec(),
        "idx": {k: int_spec(tf.int32) for k in ("passage", "query")},
    }
    register(
        TaskSpec(
            name=task_name("record"),
            source=BenchmarkSource(
                task_name("record"),
                SPLITS,
                signature,
                tfds_name=_tfds_name("record"),
                heldout=heldout_splits(small=False),
            ),
            formatter=preprocessors.record,
            postprocess_fn=postprocessors.qa_answers,
            metric_fns=[metrics.squad],
            few_shot_label_key=None,
        )
    )


def register_superglue() -> None:
    _register_classification()
    _register_multirc()
    _register_record()


SUPERGLUE_TASK_NAMES = tuple(task_name(t) for t in ("multirc", "boolq", "wic", "wsc", "cb"))
