"""Postprocessors: generated text (or a target) back to what the metrics compare.

Each has seqio's signature ``fn(output, example=None, is_target=False)``; task-specific
arguments are bound with ``functools.partial`` when the task is registered. ``output`` is
the decoded string (``str`` or UTF-8 ``bytes``); ``example`` is the task's example as
numpy values (seqio's evaluator passes it for targets and predictions alike).

Text that is no label maps to :data:`INVALID`, which the metrics count as wrong; it is
never dropped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

INVALID = -1
"""The label of generated text that matches no label name."""

INVALID_FLOAT = -1.0
"""The value of regression output that is no number (outside STS-B's [0, 5])."""


def to_text(value: Any) -> str:
    """``bytes`` → ``str`` (UTF-8); ``str`` unchanged; numpy string scalars too."""
    if isinstance(value, np.ndarray) and value.shape == ():
        value = value.item()
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, str):
        return value
    raise TypeError(f"Expected text (str or bytes); got {type(value).__name__}: {value!r}.")


def class_label(
    output: Any,
    example: Mapping[str, Any] | None = None,
    is_target: bool = False,
    *,
    label_names: Sequence[str],
) -> int:
    """Index of ``output`` in ``label_names`` (surrounding whitespace ignored), else INVALID.

    Matching is exact otherwise: "Entailment" is not "entailment", because the model was
    trained to produce the label text as given.
    """
    del example
    text = to_text(output).strip()
    if text in label_names:
        return list(label_names).index(text)
    if is_target:
        raise ValueError(f"Target {text!r} is not one of the label names {list(label_names)}.")
    return INVALID


def float_label(
    output: Any, example: Mapping[str, Any] | None = None, is_target: bool = False
) -> float:
    """A regression value (STS-B).

    Targets: the example's original ``label`` when present (not its text, which was
    rounded to 0.2 for training), else the target text. Predictions: the generated text
    as a float, :data:`INVALID_FLOAT` when it is not a number.
    """
    if is_target and example is not None and "label" in example:
        return float(example["label"])
    text = to_text(output).strip()
    try:
        value = float(text)
    except ValueError:
        if is_target:
            raise ValueError(f"Target {text!r} is not a number.") from None
        return INVALID_FLOAT
    return value if np.isfinite(value) else INVALID_FLOAT


def qa_answers(
    output: Any,
    example: Mapping[str, Any] | None = None,
    is_target: bool = False,
    *,
    answers_key: str = "answers",
) -> str | list[str]:
    """Targets: the example's list of gold answers; predictions: the generated answer."""
    if not is_target:
        return to_text(output).strip()
    if example is None or answers_key not in example:
        raise ValueError(
            f"QA targets need the example's {answers_key!r} feature (all gold answers)."
        )
    answers = [to_text(a) for a in np.asarray(example[answers_key]).reshape(-1)]
    if not answers:
        raise ValueError("A QA example has no gold answers; it cannot be scored.")
    return answers


def multirc(
    output: Any,
    example: Mapping[str, Any] | None = None,
    is_target: bool = False,
    *,
    label_names: Sequence[str] = ("False", "True"),
) -> dict[str, Any]:
    """``{"group": the question key, "value": label}`` for MultiRC's per-question EM."""
    if example is None or "group" not in example:
        raise ValueError("MultiRC postprocessing needs the example's 'group' feature.")
    return {
        "group": to_text(example["group"]),
        "value": class_label(output, is_target=is_target, label_names=label_names),
    }
