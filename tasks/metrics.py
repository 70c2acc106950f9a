"""Metrics as the MPT paper reports them (percentages, like T5 and the paper's tables).

Every function has seqio's predict-metric signature ``fn(targets, predictions) -> {name:
value}``; the task's postprocessor has already mapped generated text to labels, floats or
answer strings (see ``postprocessors.py``).

Invalid predictions (generated text that is no label, :data:`INVALID`) are counted wrong,
never dropped: for accuracy they simply differ from the target; for binary F1 and
Matthews correlation they are replaced by the label opposite to the target (a false
negative on a positive, a false positive on a negative); for macro F1 they stay a class of
their own that is never a target, so they cost the true class its recall.

QA metrics use the official SQuAD v1.1 / MRQA 2019 answer normalisation (lowercase,
punctuation removed, articles "a", "an", "the" removed, whitespace collapsed) and take the
maximum over the gold answers of each question.

Classification counts go through scikit-learn, correlations through scipy.
"""

from __future__ import annotations

import collections
import re
import string
from collections.abc import Mapping, Sequence

import numpy as np
import scipy.stats
import sklearn.metrics

from .postprocessors import INVALID

# -- classification -------------------------------------------------------------------------


def _labels(targets: Sequence[int], predictions: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    targets = np.asarray(targets, dtype=np.int64)
    predictions = np.asarray(predictions, dtype=np.int64)
    if targets.shape != predictions.shape:
        raise ValueError(
            f"{len(targets)} targets but {len(predictions)} predictions; they must pair up."
        )
    if (targets == INVALID).any():
        raise ValueError("A target is not a known label; check the task's label names.")
    return targets, predictions


def _invalid_as_opposite(targets: np.ndarray, predictions: np.ndarray) -> np.ndarray:
    """Binary labels: an invalid prediction becomes ``1 - target`` (counted wrong)."""
    return np.where(predictions == INVALID, 1 - targets, predictions)


def accuracy(targets: Sequence[int], predictions: Sequence[int]) -> dict[str, float]:
    """Percentage of predictions equal to their target."""
    targets, predictions = _labels(targets, predictions)
    return {"accuracy": 100.0 * sklearn.metrics.accuracy_score(targets, predictions)}


def binary_f1(targets: Sequence[int], predictions: Sequence[int]) -> dict[str, float]:
    """F1 of the positive class (label 1): MRPC, QQP, MultiRC's F1a."""
    targets, predictions = _labels(targets, predictions)
    predictions = _invalid_as_opposite(targets, predictions)
    return {"f1": 100.0 * sklearn.metrics.f1_score(targets, predictions, pos_label=1)}


def macro_f1(
    targets: Sequence[int], predictions: Sequence[int], *, num_classes: int
) -> dict[str, float]:
    """Unweighted mean of the per-class F1 over ``range(num_classes)`` (CB)."""
    targets, predictions = _labels(targets, predictions)
    score = sklearn.metrics.f1_score(
        targets, predictions, labels=list(range(num_classes)), average="macro", zero_division=0
    )
    return {"macro_f1": 100.0 * score}


def matthews_corrcoef(targets: Sequence[int], predictions: Sequence[int]) -> dict[str, float]:
    """Matthews correlation coefficient (CoLA), times 100."""
    targets, predictions = _labels(targets, predictions)
    predictions = _invalid_as_opposite(targets, predictions)
    return {"matthews_corr": 100.0 * sklearn.metrics.matthews_corrcoef(targets, predictions)}


def pearson_spearman(targets: Sequence[float], predictions: Sequence[float]) -> dict[str, float]:
    """Pearson and Spearman correlations (STS-B), times 100, and their mean.

    Unparseable predictions arrive as ``-1.0`` (outside STS-B's [0, 5] range) and so
    count against the correlation.
    """
    targets = np.asarray(targets, dtype=np.float64)
    predictions = np.asarray(predictions, dtype=np.float64)
    if targets.shape != predictions.shape:
        raise ValueError(
            f"{len(targets)} targets but {len(predictions)} predictions; they must pair up."
        )
    pearson = 100.0 * scipy.stats.pearsonr(targets, predictions)[0]
    spearman = 100.0 * scipy.stats.spearmanr(targets, predictions)[0]
    return {"pearson": pearson, "spearman": spearman, "pearson_spearman": (pearson + spearman) / 2}


# -- question answering ---------------------------------------------------------------------

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """The SQuAD v1.1 / MRQA answer normalisation.

    Lowercase, drop ASCII punctuation, drop the articles a/an/the, collapse whitespace.
    """
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match_score(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def token_f1_score(prediction: str, gold: str) -> float:
    """Bag-of-tokens F1 between two normalised answers (0 when they share no token)."""
    prediction_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(gold).split()
    common = collections.Counter(prediction_tokens) & collections.Counter(gold_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(prediction_tokens)
    recall = num_same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def squad(targets: Sequence[Sequence[str]], predictions: Sequence[str]) -> dict[str, float]:
    """Exact match and token F1, each the maximum over a question's gold answers, in %.

    Args:
      targets: per question, the list of gold answers (at least one).
      predictions: per question, the generated answer.
    """
    if len(targets) != len(predictions):
        raise ValueError(
            f"{len(targets)} targets but {len(predictions)} predictions; they must pair up."
        )
    if not targets:
        raise ValueError("squad metric got no examples.")
    em, f1 = [], []
    for golds, prediction in zip(targets, predictions, strict=True):
        if isinstance(golds, str) or not len(golds):
            raise ValueError(f"Each target must be a non-empty list of answers; got {golds!r}.")
        em.append(max(exact_match_score(prediction, gold) for gold in golds))
        f1.append(max(token_f1_score(prediction, gold) for gold in golds))
    return {"em": 100.0 * float(np.mean(em)), "f1": 100.0 * float(np.mean(f1))}


# -- MultiRC ----------------------------------------------------------------------------------


def multirc_f1a_em(
    targets: Sequence[Mapping[str, object]], predictions: Sequence[Mapping[str, object]]
) -> dict[str, float]:
    """MultiRC's F1a (binary F1 over all answer options) and EM (exact match per question).

    Args:
      targets, predictions: per answer option, ``{"group": question key, "value": label}``
        (label 1 = the option is correct), as made by ``postprocessors.multirc``.
    """
    if len(targets) != len(predictions):
        raise ValueError(
            f"{len(targets)} targets but {len(predictions)} predictions; they must pair up."
        )
    groups = [t["group"] for t in targets]
    if [p["group"] for p in predictions] != groups:
        raise ValueError("MultiRC targets and predictions are not in the same question order.")
    gold, pred = _labels([t["value"] for t in targets], [p["value"] for p in predictions])
    pred = _invalid_as_opposite(gold, pred)
    f1a = sklearn.metrics.f1_score(gold, pred, pos_label=1)
    correct = collections.defaultdict(list)
    for group, g, p in zip(groups, gold, pred, strict=True):
        correct[group].append(g == p)
    em = np.mean([all(options) for options in correct.values()])
    return {"f1a": 100.0 * f1a, "em": 100.0 * float(em)}
