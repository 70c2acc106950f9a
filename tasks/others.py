"""The "others" targets of the MPT paper: WinoGrande, Yelp-2, SciTail, PAWS-Wiki.

Names ``mpt_<task>``; data from TFDS (``winogrande:1.2.0`` with the ``train_xl``
training set, ``yelp_polarity_reviews:0.2.0``, ``sci_tail:1.0.0``,
``paws_wiki/labeled_final_raw:1.1.0``) or jsonl files. Yelp-2 has no validation split in
TFDS: its ``test`` split serves as ``validation`` (and ``test``). Metric: accuracy.
"""

from __future__ import annotations

from . import metrics
from .common import TaskSpec, register
from .data_sources import BenchmarkSource, heldout_splits, int_spec, string_spec

# task: (TFDS name, task split → TFDS split, text fields, label names)
OTHER_TASKS = {
    "winogrande": (
        "winogrande:1.2.0",
        {"train": "train_xl", "validation": "validation", "test": "test"},
        [("sentence", "sentence"), ("option1", "option1"), ("option2", "option2")],
        ["1", "2"],
    ),
    "yelp_polarity": (
        "yelp_polarity_reviews:0.2.0",
        {"train": "train", "validation": "test", "test": "test"},
        [("sentence", "text")],
        ["negative", "positive"],
    ),
    "scitail": (
        "sci_tail:1.0.0",
        {"train": "train", "validation": "validation", "test": "test"},
        [("premise", "premise"), ("hypothesis", "hypothesis")],
        ["entailment", "neutral"],
    ),
    "paws": (
        "paws_wiki/labeled_final_raw:1.1.0",
        {"train": "train", "validation": "validation", "test": "test"},
        [("sentence1", "sentence1"), ("sentence2", "sentence2")],
        ["different_meaning", "paraphrase"],
    ),
}


def task_name(task: str) -> str:
    return f"mpt_{task}"


def register_others() -> None:
    for task, (tfds_name, splits, fields, label_names) in OTHER_TASKS.items():
        signature = {key: string_spec() for _, key in fields}
        signature["label"] = int_spec()
        register(
            TaskSpec.classification(
                task_name(task),
                BenchmarkSource(
                    task_name(task),
                    list(splits),
                    signature,
                    tfds_name=tfds_name,
                    tfds_splits=splits,
                    # All four have more than 10k training examples.
                    heldout=heldout_splits(
                        train=splits["train"], validation=splits["validation"], small=False
                    ),
                ),
                prefix=task,
                fields=fields,
                label_names=label_names,
                metric_fns=[metrics.accuracy],
            )
        )


OTHER_TASK_NAMES = tuple(task_name(t) for t in OTHER_TASKS)
