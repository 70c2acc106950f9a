"""Extractive QA: SQuAD (a source task) and the MRQA 2019 targets.

Names: ``mpt_squad`` (TFDS ``squad/v1.1:3.0.0``, or MRQA-format files) and
``mpt_mrqa_<nq|hotpotqa|searchqa|newsqa>`` (MRQA 2019 jsonl files only, bound in gin with
``task_data_files.files``; see ``data_sources.py``). MRQA's dev sets are the
``validation`` split, the split the MPT paper reports.

Format (T5's SQuAD format): ``"question: <q> context: <c>"`` → the first gold answer;
metrics EM and token F1 with SQuAD/MRQA normalisation, maximum over all gold answers.

The MRQA 2019 format: the first line is ``{"header": {...}}``; every other line is one
context with its questions::

    {"context": "...", "qas": [{"qid": "...", "question": "...", "answers": ["..."],
                                "detected_answers": [...]}, ...], ...}

Each question becomes one record ``{"id", "question", "context", "answers"}``.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping
from typing import Any

from . import metrics, postprocessors, preprocessors
from .common import TaskSpec, register
from .data_sources import BenchmarkSource, heldout_splits, string_spec, strings_spec

SQUAD_TFDS_NAME = "squad/v1.1:3.0.0"
SPLITS = ("train", "validation")
SQUAD_SPLITS = ("train", "validation", "test")
# Our name → the dataset's name in the MRQA 2019 release files.
MRQA_TASKS = {
    "nq": "NaturalQuestions",
    "hotpotqa": "HotpotQA",
    "searchqa": "SearchQA",
    "newsqa": "NewsQA",
}

QA_SIGNATURE = {
    "id": string_spec(),
    "question": string_spec(),
    "context": string_spec(),
    "answers": strings_spec(),
}


def mrqa_parser(line: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """One MRQA 2019 jsonl line → one record per question (the header line → none)."""
    if "header" in line:
        return
    if "context" not in line or "qas" not in line:
        raise ValueError(
            f"Not an MRQA 2019 record (needs 'context' and 'qas'): keys {sorted(line)}."
        )
    for qa in line["qas"]:
        yield {
            "id": str(qa.get("qid", qa.get("id", ""))),
            "question": qa["question"],
            "context": line["context"],
            "answers": list(qa["answers"]),
        }


def task_name(task: str) -> str:
    return "mpt_squad" if task == "squad" else f"mpt_mrqa_{task}"


def _qa_spec(task: str, tfds_name: str | None) -> TaskSpec:
    name = task_name(task)
    if tfds_name is None:  # MRQA: the files bound for train and validation
        source = BenchmarkSource(name, SPLITS, QA_SIGNATURE, parser=mrqa_parser)
    else:  # SQuAD: TFDS has no test split; "heldout" tests on its validation set
        source = BenchmarkSource(
            name,
            SQUAD_SPLITS,
            QA_SIGNATURE,
            parser=mrqa_parser,
            tfds_name=tfds_name,
            tfds_splits={s: s for s in SPLITS},
            heldout=heldout_splits(small=False),
        )
    return TaskSpec(
        name=name,
        source=source,
        formatter=preprocessors.question_answering,
        postprocess_fn=functools.partial(postprocessors.qa_answers, answers_key="answers"),
        metric_fns=[metrics.squad],
        few_shot_label_key=None,
    )


def register_qa() -> None:
    register(_qa_spec("squad", SQUAD_TFDS_NAME))
    for task in MRQA_TASKS:
        register(_qa_spec(task, None))


MRQA_TASK_NAMES = tuple(task_name(t) for t in MRQA_TASKS)
