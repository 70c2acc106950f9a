"""Text-to-text formatters and the length policy, on hand-made records shaped like TFDS's."""

import functools

import numpy as np
import pytest
import tensorflow as tf

from mpt_jax.tasks import preprocessors


def _run(preprocessor, records):
    ds = tf.data.Dataset.from_tensor_slices(records)
    return list(preprocessor(ds).as_numpy_iterator())


def test_classification_glue_format_and_unlabelled_test():
    records = {
        "sentence1": ["A man sleeps.", "Rain falls."],
        "sentence2": ["A person rests.", "It is dry."],
        "label": np.array([0, -1], np.int64),
        "idx": np.array([0, 1], np.int32),
    }
    rte = functools.partial(
        preprocessors.classification,
        prefix="rte",
        fields=[("sentence1", "sentence1"), ("sentence2", "sentence2")],
        label_names=["entailment", "not_entailment"],
    )
    out = _run(rte, records)
    assert out[0]["inputs"] == b"rte sentence1: A man sleeps. sentence2: A person rests."
    assert out[0]["targets"] == b"entailment" and out[0]["label"] == 0
    assert out[1]["targets"] == b"<unk>" and out[1]["label"] == -1


def test_regression_rounds_to_two_tenths():
    records = {"sentence1": ["a"] * 4, "sentence2": ["b"] * 4, "label": [3.84, 3.9, 0.04, 5.0]}
    stsb = functools.partial(
        preprocessors.regression,
        prefix="stsb",
        fields=[("sentence1", "sentence1"), ("sentence2", "sentence2")],
    )
    out = _run(stsb, records)
    assert [ex["targets"] for ex in out] == [b"3.8", b"4.0", b"0.0", b"5.0"]
    assert out[0]["inputs"] == b"stsb sentence1: a sentence2: b"
    assert out[0]["label"] == pytest.approx(3.84)


def test_question_answering_tfds_nested_and_flat_answers():
    nested = {  # TFDS squad/v1.1
        "question": ["Who?"],
        "context": ["Ada wrote it."],
        "answers": {"text": [["Ada", "Ada Lovelace"]], "answer_start": [[0, 0]]},
    }
    (ex,) = _run(preprocessors.question_answering, nested)
    assert ex["inputs"] == b"question: Who? context: Ada wrote it."
    assert ex["targets"] == b"Ada"
    assert ex["answers"].tolist() == [b"Ada", b"Ada Lovelace"]
    flat = {"question": ["Q"], "context": ["C"], "answers": [["x", "y"]], "id": ["q0"]}
    (ex,) = _run(preprocessors.question_answering, flat)
    assert ex["targets"] == b"x" and ex["answers"].tolist() == [b"x", b"y"]


def test_record_format_and_empty_answers():
    records = {
        "passage": ["Obama met Merkel.\n@highlight\nTalks went well"],
        "query": ["@placeholder thanked Obama."],
        "entities": [["Obama", "Merkel"]],
        "answers": tf.ragged.constant([["Merkel"]]),
        "idx": {"passage": [0], "query": [0]},
    }
    (ex,) = _run(preprocessors.record, records)
    assert ex["inputs"] == (
        b"record query: @placeholder thanked Obama. entities: Obama, Merkel "
        b"passage: Obama met Merkel. Talks went well"
    )
    assert ex["targets"] == b"Merkel"
    records["answers"] = tf.ragged.constant([[]], dtype=tf.string)
    (ex,) = _run(preprocessors.record, records)
    assert ex["targets"] == b"<unk>"


def test_multirc_group_ties_options_to_questions():
    records = {
        "paragraph": ["P", "P"],
        "question": ["Q", "Q"],
        "answer": ["yes", "no"],
        "label": np.array([1, 0], np.int64),
        "idx": {"paragraph": [3, 3], "question": [7, 7], "answer": [0, 1]},
    }
    out = _run(preprocessors.multirc, records)
    assert out[0]["inputs"] == b"multirc question: Q answer: yes paragraph: P"
    assert [ex["targets"] for ex in out] == [b"True", b"False"]
    assert [ex["group"] for ex in out] == [b"p3-q7", b"p3-q7"]


def test_enforce_sequence_lengths_errors_by_default():
    records = {"inputs": tf.ragged.constant([[1, 2, 3, 4, 1]]), "targets": [[5, 1]]}
    ds = tf.data.Dataset.from_tensor_slices(records).map(
        lambda ex: {"inputs": ex["inputs"], "targets": ex["targets"]}
    )
    assert preprocessors.enforce_sequence_lengths(ds, None, task_name="t") is ds
    checked = preprocessors.enforce_sequence_lengths(ds, {"inputs": 4, "targets": 2}, task_name="t")
    with pytest.raises(tf.errors.InvalidArgumentError, match="inputs of t is longer than its"):
        list(checked.as_numpy_iterator())
