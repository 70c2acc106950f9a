"""Evaluation with the seqio tasks' own metrics: decode or score, postprocess, measure.

``make_evaluate(model, backbone, name, lengths, index)`` returns
``evaluate(prompt_params, step) -> {"<task>/<metric>": value}`` for the training loop
and the ``eval`` job. It wraps ``seqio.Evaluator`` (T5X's path): tasks with
prediction metrics are decoded greedily (:func:`mpt_jax.decoding.greedy_decode`, or beam
search with ``beam_size > 1``), tasks with score metrics (rank classification) are scored
with :func:`mpt_jax.decoding.score`. Batches are padded to a fixed size so one program
is compiled; the padding rows' outputs are dropped.

``predict_split(model, params, task, split, ...)`` gives ``mpt-jax infer``'s predictions on a
task's split: greedy decoding, or for a rank-scored task the label of highest likelihood
with every label's score (one row per input). ``read_input_file(path, index)`` and
``encode_inputs(records, ...)`` feed ``mpt-jax infer``
from a jsonl of new inputs (``{"inputs": text, "task": name}`` per line) instead of a
registered task's split.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import gin
import jax
import numpy as np

from mpt_jax import decoding
from mpt_jax.data.task_ids import TaskIndex, check_covers
from mpt_jax.errors import BindingError
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
    """An ``evaluate(prompt_params, step)`` over the tasks of ``mixture_or_task_name``
    (with attributes ``split`` and ``num_examples``, as bound).

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
    from mpt_jax.data.feature_converter import PromptEncDecFeatureConverter, check_task_lengths

    if batch_size < 1 or beam_size < 1:
        raise BindingError(
            f"make_evaluate.batch_size and .beam_size must be >= 1, got {batch_size}, {beam_size}"
        )
    check_covers(index, mixture_or_task_name)
    # seqio.Evaluator trims over-long examples silently: the length policy reads them first.
    check_task_lengths(
        mixture_or_task_name, task_feature_lengths, split=split, num_examples=num_examples
    )
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
            return score_rows(model, params, ds, batch_size)

        future, _ = evaluator.evaluate(
            compute_metrics=True, step=step, predict_fn=predict_fn, score_fn=score_fn
        )
        return flatten_metrics(future.result())

    evaluate.split, evaluate.num_examples = split, num_examples  # for the records of a job
    return evaluate


def score_rows(model: PromptedT5, params: PyTree, ds, batch_size: int) -> list[tuple[int, float]]:
    """``(index, log-likelihood of the row's target)`` for each row of an enumerated model
    dataset (:func:`mpt_jax.decoding.score`); what evaluation's rank classification ranks."""
    out = []
    for indices, batch, n in padded_batches(ds, batch_size):
        scores = np.asarray(decoding.score(model, params, batch))
        out.extend((int(i), float(scores[j])) for j, i in enumerate(indices[:n]))
    return out


#: Features of a rank-scored task's evaluation rows (one row per (input, label); see
#: :func:`mpt_jax.tasks.files.examples`): the input's index and whether the label is right.
RANK_FEATURES = ("rank_group", "rank_correct")


def predict_split(
    model: PromptedT5,
    params: PyTree,
    task,
    split: str,
    task_feature_lengths: Mapping[str, int],
    index: TaskIndex,
    *,
    batch_size: int = 32,
    num_examples: int | None = None,
) -> list[dict[str, Any]]:
    """Predictions for the examples of ``task``'s ``split`` (``mpt-jax infer``), one per input.

    A generating task: ``{"task", "inputs", "prediction", "targets"}`` with greedy decoding.
    A rank-scored task (rows carry :data:`RANK_FEATURES`, one per label): its rows are
    scored as evaluation scores them (:func:`score_rows`) and grouped by input, giving
    ``{"task", "inputs", "prediction", "targets", "scores"}``: the label of highest
    log-likelihood (the first on a tie, as ``rank_accuracy`` counts it), the gold label
    and ``{label: log-likelihood}`` (natural log, summed over the label's tokens).

    Args:
      params: prompt and backbone.
      task: a seqio task carrying ``task_ids``.
      num_examples: the first ``num_examples`` inputs (None: all).
    """
    from mpt_jax.data.feature_converter import PromptEncDecFeatureConverter

    vocab_in = task.output_features["inputs"].vocabulary
    vocab_out = task.output_features["targets"].vocabulary
    ds = task.get_dataset(task_feature_lengths, split=split, shuffle=False, num_epochs=1,
                          trim_output_features=False)  # fmt: skip
    rank = all(k in ds.element_spec for k in RANK_FEATURES)
    if num_examples is not None:
        ds = (ds.take_while(lambda ex: ex["rank_group"] < num_examples) if rank
              else ds.take(num_examples))  # fmt: skip
    converter = PromptEncDecFeatureConverter(passthrough_features={}, task_index=index)
    model_ds = converter(ds, task_feature_lengths).enumerate()
    if rank:
        return _rank_predictions(task.name, list(ds.as_numpy_iterator()),
                                 score_rows(model, params, model_ds, batch_size),
                                 vocab_in, vocab_out)  # fmt: skip
    records = []
    for _, batch, n in padded_batches(model_ds, batch_size):
        tokens, _ = decoding.greedy_decode(
            model, params, batch["encoder_input_tokens"], batch["task_ids"],
            max_decode_length=int(task_feature_lengths["targets"]),
        )  # fmt: skip
        tokens = np.asarray(tokens)
        for j in range(n):
            records.append({
                "task": task.name,
                "inputs": vocab_in.decode(batch["encoder_input_tokens"][j].tolist()),
                "prediction": vocab_out.decode(tokens[j].tolist()),
                "targets": vocab_out.decode(batch["decoder_target_tokens"][j].tolist()),
            })  # fmt: skip
    return records


def _text(row: Mapping[str, Any], feature: str, vocabulary) -> str:
    """A row's text: its ``<feature>_pretokenized`` copy, else its tokens decoded."""
    raw = row.get(f"{feature}_pretokenized")
    if raw is not None:
        return raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)
    return vocabulary.decode(np.asarray(row[feature]).tolist())


def _rank_predictions(task: str, rows, scores, vocab_in, vocab_out) -> list[dict[str, Any]]:
    """Rank classification of a rank-scored split: rows (one per input and label) and their
    ``(row index, score)`` → one prediction per input, in input order."""
    by_group: dict[int, dict[str, Any]] = {}
    for i, score in scores:
        row = rows[i]
        group = by_group.setdefault(int(row["rank_group"]), {
            "task": task, "inputs": _text(row, "inputs", vocab_in), "prediction": None,
            "targets": None, "scores": {},
        })  # fmt: skip
        label = _text(row, "targets", vocab_out)
        group["scores"][label] = score
        if int(row["rank_correct"]):
            group["targets"] = label
    for group in by_group.values():
        group["prediction"] = max(group["scores"], key=group["scores"].get)
    return [by_group[g] for g in sorted(by_group)]


class InputFileError(ValueError):
    """A jsonl of new inputs (``infer.input_file``) that cannot be predicted, naming the
    file and line."""


def read_input_file(path: str, index: TaskIndex) -> list[dict[str, str]]:
    """``[{"task", "inputs", "where"}]`` from a jsonl of new inputs (``where``: the
    ``file:line`` of each, for later messages); ``task`` may be left out when the run has
    one task. A bad line is an error naming the file and the line.

    Raises:
      FileNotFoundError: no such file. InputFileError: a line that is not an object with
      ``inputs``, names a task the run does not know, or a file with no line.
    """
    import os

    if not os.path.isfile(path):
        raise FileNotFoundError(f"infer.input_file {path!r} does not exist")
    records = []
    with open(path) as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise InputFileError(f"{where}: not a JSON line ({err})") from None
            if not isinstance(record, dict) or "inputs" not in record:
                got = f"fields {sorted(record)}" if isinstance(record, dict) else f"{record!r:.60}"
                raise InputFileError(
                    f'{where}: expected {{"inputs": ..., "task": ...}}, got {got} (the input '
                    'text is "inputs" whatever field names the task\'s own files use)'
                )
            task = record.get("task")
            if task is None:
                if index.num_tasks != 1:
                    raise InputFileError(
                        f'{where}: give "task" (the run has tasks {list(index.names)})'
                    )
                task = index.names[0]
            if task not in index:
                raise InputFileError(
                    f"{where}: task {task!r} is not one of the run's tasks {list(index.names)}"
                )
            records.append({"task": task, "inputs": str(record["inputs"]), "where": where})
    if not records:
        raise InputFileError(f"infer.input_file {path!r} holds no line")
    return records


def encode_inputs(
    records: Sequence[Mapping[str, str]],
    index: TaskIndex,
    input_length: int,
    vocabulary_of: Callable[[str], Any],
    *,
    truncate: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Token ids ``[N, input_length]`` (EOS appended, 0-padded) and task ids ``[N]``.

    Args:
      records: ``{"task", "inputs"}`` per example.
      index: the run's task-id mapping.
      input_length: ``TASK_FEATURE_LENGTHS["inputs"]``.
      vocabulary_of: task name → its inputs' ``seqio.Vocabulary``.
      truncate: cut over-long inputs (``length_policy.truncation = 'truncate'``);
        otherwise an over-long input is an error naming it.
    """
    tokens = np.zeros((len(records), input_length), np.int32)
    ids = np.zeros((len(records),), np.int32)
    for i, record in enumerate(records):
        vocabulary = vocabulary_of(record["task"])
        encoded = [*vocabulary.encode(record["inputs"]), vocabulary.eos_id]
        if len(encoded) > input_length and not truncate:
            raise InputFileError(
                f"{record.get('where', f'input {i + 1}')}: the input of task "
                f"{record['task']!r} has {len(encoded)} tokens > "
                f"{input_length} (TASK_FEATURE_LENGTHS['inputs']): raise it, or bind "
                "length_policy.truncation = 'truncate'"
            )
        encoded = encoded[:input_length]
        tokens[i, : len(encoded)] = encoded
        ids[i] = index.id(record["task"])
    return tokens, ids


def predict_input_file(
    model: PromptedT5,
    params: PyTree,
    index: TaskIndex,
    input_file: str,
    task_feature_lengths: Mapping[str, int],
    batch_size: int,
) -> list[dict[str, str]]:
    """Greedy predictions ``{"task", "inputs", "prediction"}`` for the lines of a jsonl of
    new inputs (``mpt-jax infer`` with ``infer.input_file``); ``params`` holds prompt and
    backbone. Batches are padded to ``batch_size`` so one program is compiled."""
    import seqio

    from mpt_jax.data.feature_converter import length_policy
    from mpt_jax.tasks.vocab import TASK_VOCABULARY

    def vocabulary_of(task: str):
        if task in seqio.TaskRegistry.names():
            return seqio.get_mixture_or_task(task).output_features["inputs"].vocabulary
        return TASK_VOCABULARY

    lines = read_input_file(input_file, index)
    tokens, ids = encode_inputs(
        lines, index, int(task_feature_lengths["inputs"]), vocabulary_of,
        truncate=length_policy() == "truncate",
    )  # fmt: skip
    records = []
    for start in range(0, len(lines), batch_size):
        n = min(batch_size, len(lines) - start)
        enc = np.zeros((batch_size, tokens.shape[1]), np.int32)
        task_ids = np.zeros((batch_size,), np.int32)
        enc[:n], task_ids[:n] = tokens[start : start + n], ids[start : start + n]
        enc[n:], task_ids[n:] = enc[0], task_ids[0]  # padding rows, dropped
        max_length = int(task_feature_lengths["targets"])
        out, _ = decoding.greedy_decode(model, params, enc, task_ids, max_decode_length=max_length)
        out = np.asarray(out)
        for j in range(n):
            line = lines[start + j]
            text = vocabulary_of(line["task"]).decode(out[j].tolist())
            records.append({"task": line["task"], "inputs": line["inputs"], "prediction": text})
    return records
