"""Metrics and postprocessors against hand-computed values."""

import functools

import hypothesis
import hypothesis.strategies as st
import numpy as np
import pytest

from mpt_jax.tasks import metrics, postprocessors
from mpt_jax.tasks.postprocessors import INVALID


def test_accuracy_counts_invalid_as_wrong():
    assert metrics.accuracy([0, 1, 1, 0], [0, 1, INVALID, 1]) == {"accuracy": 50.0}


def test_binary_f1_invalid_is_the_opposite_label():
    # TP = 2 (0, 4), FP = 1 (2), FN = 1 (1: invalid on a positive) -> P = R = 2/3.
    score = metrics.binary_f1([1, 1, 0, 0, 1], [1, INVALID, 1, 0, 1])["f1"]
    assert score == pytest.approx(100 * 2 / 3)
    # Invalid on a negative is a false positive: TP = 1, FP = 1 -> P = 1/2, R = 1.
    assert metrics.binary_f1([0, 1], [INVALID, 1])["f1"] == pytest.approx(100 * 2 / 3)


def test_macro_f1_over_declared_classes():
    # class 0: F1 1; class 1: F1 0; class 2: P = 1/2, R = 1/2 -> F1 1/2. Mean 1/2.
    score = metrics.macro_f1([0, 1, 2, 2], [0, 2, 2, INVALID], num_classes=3)["macro_f1"]
    assert score == pytest.approx(50.0)


def test_matthews_corrcoef_matches_formula():
    tp, fn, tn, fp = 2, 1, 1, 1  # targets [1,1,1,0,0], predictions [1,1,0,0,1]
    expected = (tp * tn - fp * fn) / np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    got = metrics.matthews_corrcoef([1, 1, 1, 0, 0], [1, 1, 0, 0, INVALID])["matthews_corr"]
    assert got == pytest.approx(100 * expected)


def test_pearson_spearman_match_numpy():
    targets = np.array([0.0, 1.2, 2.5, 3.1, 4.8])
    predictions = np.array([0.2, 1.0, 3.0, 2.8, 5.0])
    pearson = np.corrcoef(targets, predictions)[0, 1]
    rank = lambda x: np.argsort(np.argsort(x))  # no ties
    spearman = np.corrcoef(rank(targets), rank(predictions))[0, 1]
    got = metrics.pearson_spearman(targets, predictions)
    assert got["pearson"] == pytest.approx(100 * pearson)
    assert got["spearman"] == pytest.approx(100 * spearman)
    assert got["pearson_spearman"] == pytest.approx(50 * (pearson + spearman))


def test_squad_normalisation_and_max_over_answers():
    assert metrics.normalize_answer("The  Cat, an  animal!") == "cat animal"
    assert metrics.normalize_answer("Theory of a thing") == "theory of thing"
    # Q1: "the big cat" vs {"a cat", "dog"}: EM 0, F1 with "cat" = 2·(1/2·1)/(3/2) = 2/3.
    # Q2: "Paris." vs {"paris"}: EM 1, F1 1.
    got = metrics.squad([["a cat", "dog"], ["paris"]], ["the big cat", "Paris."])
    assert got["em"] == pytest.approx(50.0)
    assert got["f1"] == pytest.approx(100 * (2 / 3 + 1) / 2)
    assert metrics.token_f1_score("", "cat") == 0.0
    with pytest.raises(ValueError, match="non-empty list of answers"):
        metrics.squad([[]], ["x"])


def test_multirc_f1a_and_question_em():
    targets = [
        {"group": "q1", "value": 1},
        {"group": "q1", "value": 0},
        {"group": "q2", "value": 1},
    ]
    predictions = [
        {"group": "q1", "value": 1},
        {"group": "q1", "value": 0},
        {"group": "q2", "value": INVALID},
    ]
    got = metrics.multirc_f1a_em(targets, predictions)
    assert got["em"] == pytest.approx(50.0)  # q1 all right, q2 wrong
    assert got["f1a"] == pytest.approx(100 * 2 / 3)  # TP 1, FN 1, FP 0


def test_mismatched_lengths_are_errors():
    with pytest.raises(ValueError, match="2 targets but 1 predictions"):
        metrics.accuracy([0, 1], [0])


def test_postprocessors_map_text_to_labels():
    label = functools.partial(postprocessors.class_label, label_names=["entailment", "neutral"])
    assert label(b"neutral ") == 1
    assert label("Entailment") == INVALID
    with pytest.raises(ValueError, match="not one of the label names"):
        label("maybe", is_target=True)
    assert postprocessors.float_label(b"3.8") == pytest.approx(3.8)
    assert postprocessors.float_label("three") == postprocessors.INVALID_FLOAT
    assert postprocessors.float_label("3.8", example={"label": 3.84}, is_target=True) == (
        pytest.approx(3.84)
    )
    example = {"answers": np.array([b"a cat", b"the cat"]), "group": b"p0-q1"}
    assert postprocessors.qa_answers("cat", example, is_target=True) == ["a cat", "the cat"]
    assert postprocessors.qa_answers(b" cat ", example) == "cat"
    assert postprocessors.multirc("True", example) == {"group": "p0-q1", "value": 1}
    assert postprocessors.multirc("yes", example) == {"group": "p0-q1", "value": INVALID}


@hypothesis.settings(max_examples=60, deadline=None, derandomize=True)
@hypothesis.given(st.text(max_size=30), st.text(max_size=30))
def test_qa_scores_are_bounded_and_consistent(prediction, gold):
    em = metrics.exact_match_score(prediction, gold)
    f1 = metrics.token_f1_score(prediction, gold)
    assert em in (0.0, 1.0) and 0.0 <= f1 <= 1.0
    assert f1 == pytest.approx(metrics.token_f1_score(gold, prediction))  # symmetric
    if em == 1.0 and metrics.normalize_answer(gold):
        assert f1 == pytest.approx(1.0)
    assert metrics.normalize_answer(metrics.normalize_answer(gold)) == (
        metrics.normalize_answer(gold)
    )
