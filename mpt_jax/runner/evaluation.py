"""Evaluation with the seqio tasks' own metrics: decode or score, postprocess, measure.

``make_evaluate(model, backbone, name, lengths, index)`` returns
``evaluate(prompt_params, step) -> {"<task>/<metric>": value}`` for the training loop
and the ``eval`` job. It wraps ``seqio.Evaluator`` (T5X's path): tasks with
prediction metrics are decoded greedily (:func:`mpt_jax.decoding.greedy_decode`, or beam
search with ``beam_size > 1``), tasks with score metrics (rank classification) are scored
with :func:`mpt_jax.decoding.score`. Batches are padded to a fixed size so one program
is compiled; the padding rows' outputs are dropped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import gin
import jax
import numpy as np

from mpt_jax import decoding
from mpt_jax.data.task_ids import TaskIndex, check_covers
from mpt_jax.model import PromptedT5
from mpt_jax.training.state import merge_params

PyTree = Any
FEATURES = ("encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens",
            "decoder_loss_weights", "task_ids")  # fmt: skip


def padded_batches(ds, batch_size: int) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray], int]]:
    """``(indices, batch, n_real)`` from an enumerated seqio eval dataset; the last batch is
    padded to ``batch_size`` by repeating its first row."""
    for indices, features in ds.batch(batch_size).as_numpy_iterator():
        n = len(indices)
        batch = {k: features[k] for k in FEATURES if k in features}
        if n < batch_size:
            batch = {k: np.concatenate([v, np.repeat(v[:1], batch_size - n, 0)])
                     for k, v in batch.items()}  # fmt: skip
        yield indices, batch, n


def flatten_metrics(all_metrics: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    """``{task: {metric: value}}`` (values may be ``seqio.metrics.Scalar``) → flat floats."""
    flat = {}
    for task, metrics in all_metrics.items():
        for name, value in metrics.items():
            value = getattr(value, "value", value)
            if np.ndim(value) == 0:
                flat[f"{task}/{name}"] = float(value)
    return flat


@gin.configurable(denylist=["model", "backbone", "mixture_or_task_name", "task_feature_lengths",
                            "index"])  # fmt: skip
def make_evaluate(
    model: PromptedT5,
    backbone: PyTree,
    mixture_or_task_name: str,
    task_feature_lengths: Mapping[str, int],
    index: TaskIndex,
    *,
    split: str = "validation",
    batch_size: int = 32,
    num_examples: int | None = None,
    beam_size: int = 1,
) -> Callable[[PyTree, int], dict[str, float]]:
    """An ``evaluate(prompt_params, step)`` over the tasks of ``mixture_or_task_name``.

    Args:
      model: the prompted model (its ``prompt`` matches ``prompt_params``).
      backbone: the frozen backbone tree.
      mixture_or_task_name: the seqio task or mixture to evaluate.
      task_feature_lengths: ``{"inputs": S, "targets": T}``; ``T`` bounds decoding.
      index: the run's task-id mapping.
      split: the evaluation split.
      batch_size: examples per compiled batch.
      num_examples: evaluate the first ``num_examples`` of each task (None: all).
      beam_size: 1 = greedy decoding.
    """
    import seqio

    import mpt_jax.tasks  # noqa: F401
    from mpt_jax.data.feature_converter import PromptEncDecFeatureConverter

    if batch_size < 1 or beam_size < 1:
        raise ValueError(f"batch_size and beam_size must be >= 1, got {batch_size}, {beam_size}")
    check_covers(index, mixture_or_task_name)
    evaluator = seqio.Evaluator(
        mixture_or_task_name,
        feature_converter=PromptEncDecFeatureConverter(task_index=index),
        eval_split=split,
        sequence_length=dict(task_feature_lengths),
        num_examples=num_examples,
        use_memory_cache=True,
        async_compute_metrics=False,
    )
    max_decode_length = int(task_feature_lengths["targets"])

    def evaluate(prompt_params: PyTree, step: int) -> dict[str, float]:
        params = merge_params(jax.device_get(prompt_params), backbone)

        def predict_fn(ds):
            out = []
            for indices, batch, n in padded_batches(ds, batch_size):
                enc, ids = batch["encoder_input_tokens"], batch["task_ids"]
                if beam_size == 1:
                    tokens, _ = decoding.greedy_decode(
                        model, params, enc, ids, max_decode_length=max_decode_length
                    )
                else:
                    beams, scores = decoding.beam_search(
                        model, params, enc, ids, beam_size=beam_size,
                        max_decode_length=max_decode_length,
                    )  # fmt: skip
                    best = np.argmax(np.asarray(scores), axis=1)
                    tokens = np.asarray(beams)[np.arange(len(best)), best]
                tokens = np.asarray(tokens)
                out.extend((int(i), tokens[j].tolist()) for j, i in enumerate(indices[:n]))
            return out

        def score_fn(ds):
            out = []
            for indices, batch, n in padded_batches(ds, batch_size):
                scores = np.asarray(decoding.score(model, params, batch))
                out.extend((int(i), float(scores[j])) for j, i in enumerate(indices[:n]))
            return out

        future, _ = evaluator.evaluate(
            compute_metrics=True, step=step, predict_fn=predict_fn, score_fn=score_fn
        )
        return flatten_metrics(future.result())

    return evaluate
