"""Text-to-text formats of the MPT benchmarks (seqio preprocessors on raw records).

Each formatter maps a raw record (the TFDS record, or the same fields read from a jsonl
file) to ``{"inputs": string, "targets": string, ...}`` in T5's style::

    rte sentence1: <s1> sentence2: <s2>             ->  entailment | not_entailment
    stsb sentence1: <s1> sentence2: <s2>            ->  3.8   (label rounded to 0.2)
    squad question: <q> context: <c>                ->  <first gold answer>
    record query: <q> entities: <e1, e2> passage: <p>  ->  <first gold answer>

Features the postprocessors need are kept next to ``inputs``/``targets``: ``label``
(classification and STS-B), ``answers`` (QA: every gold answer), ``group`` (MultiRC: the
question an answer option belongs to). A record without a label (GLUE/SuperGLUE test
splits carry -1) gets the target ``<unk>``, as in T5.

After formatting, :func:`enforce_sequence_lengths` is the tasks' last preprocessor: it
applies the explicit length policy (error or truncate-and-count) before seqio's own
trimming could cut anything silently.
"""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf

from mpt_jax.data import feature_converter

UNKNOWN_TARGET = "<unk>"


def _join(parts: Sequence[tf.Tensor | str]) -> tf.Tensor:
    return tf.strings.join(list(parts))


def _fields_text(prefix: str, example, fields: Sequence[tuple[str, str]]) -> tf.Tensor:
    """``"<prefix> name1: <value1> name2: <value2>"``; ``fields`` are ``(name, key)``."""
    parts: list[tf.Tensor | str] = [prefix] if prefix else []
    for name, key in fields:
        parts += [" " if parts else "", f"{name}: ", example[key]]
    return _join(parts)


def _label_text(label: tf.Tensor, label_names: Sequence[str]) -> tf.Tensor:
    """The label's name; ``<unk>`` for a missing (-1) label."""
    names = tf.constant(list(label_names))
    label = tf.cast(label, tf.int32)
    in_range = tf.logical_and(label >= 0, label < len(label_names))
    return tf.where(in_range, tf.gather(names, tf.maximum(label, 0)), UNKNOWN_TARGET)


def classification(
    dataset: tf.data.Dataset,
    *,
    prefix: str,
    fields: Sequence[tuple[str, str]],
    label_names: Sequence[str],
    label_key: str = "label",
) -> tf.data.Dataset:
    """A labelled record → ``"<prefix> name: value …"`` → the label's name.

    Args:
      dataset: raw records with the string features named in ``fields`` and an integer
        ``label_key`` (an index into ``label_names``; -1 for unlabelled).
      prefix: the task word that opens the input (``"rte"``).
      fields: ``(name shown in the text, record key)`` pairs, in text order.
      label_names: the target text of each class.
      label_key: the record's label feature.

    Returns:
      ``{"inputs", "targets", "label"}`` per record (``label`` int32 for metrics and
      few-shot selection).
    """

    def _format(example):
        return {
            "inputs": _fields_text(prefix, example, fields),
            "targets": _label_text(example[label_key], label_names),
            "label": tf.cast(example[label_key], tf.int32),
        }

    return dataset.map(_format, num_parallel_calls=tf.data.AUTOTUNE)


def regression(
    dataset: tf.data.Dataset,
    *,
    prefix: str,
    fields: Sequence[tuple[str, str]],
    label_key: str = "label",
    step: float = 0.2,
) -> tf.data.Dataset:
    """STS-B: the score rounded to a multiple of ``step`` as text with one decimal.

    ``3.84 → "3.8"``, ``3.9 → "4.0"`` (T5's format). The exact score stays in ``label``
    for the correlation metrics.
    """
    if step <= 0:
        raise ValueError(f"Regression rounding step must be positive; got {step}.")

    def _format(example):
        label = tf.cast(example[label_key], tf.float32)
        rounded = tf.round(label / step) * step
        return {
            "inputs": _fields_text(prefix, example, fields),
            "targets": tf.strings.as_string(rounded, precision=1),
            "label": label,
        }

    return dataset.map(_format, num_parallel_calls=tf.data.AUTOTUNE)


def _answer_texts(answers) -> tf.Tensor:
    """Gold answers as a 1-D string tensor (TFDS SQuAD nests them under ``text``)."""
    return answers["text"] if isinstance(answers, dict) else answers


def _first_or_unknown(answers: tf.Tensor) -> tf.Tensor:
    return tf.cond(tf.size(answers) > 0, lambda: answers[0], lambda: tf.constant(UNKNOWN_TARGET))


def question_answering(
    dataset: tf.data.Dataset,
    *,
    prefix: str = "",
    question_key: str = "question",
    context_key: str = "context",
    answers_key: str = "answers",
) -> tf.data.Dataset:
    """Extractive QA (SQuAD, MRQA): ``"question: <q> context: <c>"`` → the first answer.

    ``answers`` keeps every gold answer for the max-over-answers metrics.
    """

    def _format(example):
        answers = _answer_texts(example[answers_key])
        return {
            "inputs": _fields_text(
                prefix, example, [("question", question_key), ("context", context_key)]
            ),
            "targets": _first_or_unknown(answers),
            "answers": answers,
        }

    return dataset.map(_format, num_parallel_calls=tf.data.AUTOTUNE)


def record(dataset: tf.data.Dataset, *, prefix: str = "record") -> tf.data.Dataset:
    """ReCoRD: ``"record query: <q> entities: <e1, e2, …> passage: <p>"`` → first answer.

    The passage's ``@highlight`` markers become sentence breaks (as in T5); the query
    keeps its ``@placeholder``. ``answers`` keeps every gold answer.
    """

    def _format(example):
        passage = tf.strings.regex_replace(example["passage"], r"(\.\s*)?\n@highlight\n", ". ")
        entities = tf.strings.reduce_join(example["entities"], separator=", ")
        answers = _answer_texts(example["answers"])
        return {
            "inputs": _join(
                [
                    prefix,
                    " query: ",
                    example["query"],
                    " entities: ",
                    entities,
                    " passage: ",
                    passage,
                ]
            ),
            "targets": _first_or_unknown(answers),
            "answers": answers,
        }

    return dataset.map(_format, num_parallel_calls=tf.data.AUTOTUNE)


def multirc(
    dataset: tf.data.Dataset, *, label_names: Sequence[str] = ("False", "True")
) -> tf.data.Dataset:
    """MultiRC: ``"multirc question: <q> answer: <a> paragraph: <p>"`` → False/True.

    ``group`` (``"p<paragraph>-q<question>"``) ties answer options to their question for
    the per-question exact match.
    """

    def _format(example):
        formatted = {
            "inputs": _fields_text(
                "multirc",
                example,
                [("question", "question"), ("answer", "answer"), ("paragraph", "paragraph")],
            ),
            "targets": _label_text(example["label"], label_names),
            "label": tf.cast(example["label"], tf.int32),
            "group": _join(
                [
                    "p",
                    tf.strings.as_string(example["idx"]["paragraph"]),
                    "-q",
                    tf.strings.as_string(example["idx"]["question"]),
                ]
            ),
        }
        return formatted

    return dataset.map(_format, num_parallel_calls=tf.data.AUTOTUNE)


TRUNCATION_COUNTS: dict[str, feature_converter.TruncationCounts] = {}
"""Per task name, the examples the ``"truncate"`` policy has cut so far."""


def enforce_sequence_lengths(
    dataset: tf.data.Dataset,
    sequence_length: dict[str, int] | None = None,
    *,
    task_name: str,
) -> tf.data.Dataset:
    """seqio preprocessor: the explicit length policy for ``inputs`` and ``targets``.

    seqio trims output features to ``sequence_length`` after the preprocessors, without a
    word; this step runs first, so an over-long example is an error (default) or a
    counted, logged cut (``length_policy.truncation = 'truncate'``, the binding the
    feature converter reads too). Without a
    ``sequence_length`` (e.g. caching) it does nothing.
    """
    if not sequence_length:
        return dataset
    lengths = {
        k: int(v)
        for k, v in sequence_length.items()
        if k in ("inputs", "targets") and v is not None
    }
    counts = TRUNCATION_COUNTS.setdefault(task_name, feature_converter.TruncationCounts())
    return feature_converter.enforce_max_lengths(
        dataset,
        lengths,
        truncation=feature_converter.length_policy(),
        counts=counts,
        label=task_name,
    )
