"""The ``mpt-jax`` jobs: thin gin-configured functions over the library.

- :func:`train` — one stage (``train.stage = @stages.teacher`` / ``source`` / ``target`` /
  ``prompt_tuning`` / ``spot`` / ``generator``) on a seqio task or mixture, with the frozen
  backbone of :func:`~mpt_jax.runner.backbone_loading.load_backbone`, the stage's prompt,
  objective and optimizer (:mod:`mpt_jax.runner.stages`) and the loop of
  :func:`~mpt_jax.training.loop.train_loop` (``train_loop.num_steps`` etc.).
- :func:`evaluate` — the seqio metrics of a run's checkpoint on a task or mixture.
- :func:`infer` — greedy predictions of a run's checkpoint, as JSON lines.
- :func:`export_prompts` — a run's prompt as ``.npy`` files or a Hugging Face PEFT
  adapter.

A run directory holds ``checkpoints/`` (orbax), ``task_index.json`` (the task-id
mapping), ``config.gin`` (the operative gin configuration), ``metrics.jsonl`` and
``tensorboard/``. ``eval``/``infer`` read the mapping from the checkpoint and rebuild the
prompt generator from the same gin files the run was trained with.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import gin

from mpt_jax.data.task_ids import TaskIndex
from mpt_jax.errors import BindingError
from mpt_jax.runner import data as data_lib
from mpt_jax.runner.backbone_loading import load_backbone
from mpt_jax.runner.evaluation import make_evaluate
from mpt_jax.runner.stages import Stage, StageContext
from mpt_jax.training import identity
from mpt_jax.training.checkpoints import CHECKPOINT_SUBDIR, Checkpointer, checkpoint_dir
from mpt_jax.training.loop import LoopResult, train_loop
from mpt_jax.training.state import merge_params

PyTree = Any
StageFn = Callable[[StageContext], Stage]
log = logging.getLogger(__name__)


def _index(mixture_or_task_name: str, task_names: Sequence[str] | None) -> TaskIndex:
    import mpt_jax.tasks  # noqa: F401  (registers the project's seqio tasks)

    if task_names is not None:
        return TaskIndex(tuple(task_names))
    return TaskIndex.from_mixture(mixture_or_task_name)


def _saved_index(model_dir: str) -> TaskIndex:
    ckpt = Checkpointer(checkpoint_dir(model_dir))
    try:
        return TaskIndex(tuple(ckpt.restore_meta()["task_names"]))
    finally:
        ckpt.close()


def _restore_prompt(
    model_dir: str, step: int | None, current: dict[str, Any] | None = None, context: str = ""
) -> tuple[PyTree, int]:
    """The prompt at ``step`` (default: the latest); with ``current`` (this job's
    :func:`~mpt_jax.training.identity.run_identity`), the checkpoint's record must match."""
    ckpt = Checkpointer(checkpoint_dir(model_dir))
    try:
        meta = ckpt.restore_meta(step)
        if current is not None:
            identity.check_identity(
                identity.saved_identity(meta), current,
                context=f"{context} {model_dir} (step {meta['step']})",
            )  # fmt: skip
        return ckpt.restore_params(meta["step"]), int(meta["step"])
    finally:
        ckpt.close()


def _identity(st: Stage, backbone, reference, config, index, mixture) -> dict[str, Any]:
    return identity.run_identity(
        generator=st.prompt, backbone=backbone, backbone_reference=reference,
        backbone_config=config, vocabulary=identity.task_vocabularies(mixture),
        task_names=index.names,
    )  # fmt: skip


def _check_resume_identity(model_dir: str, current: dict[str, Any]) -> None:
    """Before anything is written: a run directory with checkpoints is resumed only by the
    generator, backbone, vocabulary and task mapping that made them."""
    if os.path.isdir(os.path.join(model_dir, CHECKPOINT_SUBDIR)):
        ckpt = Checkpointer(os.path.join(model_dir, CHECKPOINT_SUBDIR))
        try:
            if ckpt.latest_step() is not None:
                meta = ckpt.restore_meta()
                context = f"resuming {model_dir} (step {meta['step']})"
                identity.check_identity(identity.saved_identity(meta), current, context=context)
        finally:
            ckpt.close()


def _setup(stage: StageFn, index: TaskIndex, seed: int):
    config, backbone, reference = load_backbone()
    ctx = StageContext(task_names=index.names, config=config, backbone=backbone, seed=seed)
    st = stage(ctx)
    return config, backbone, reference, st, st.model


@gin.configurable
def train(
    model_dir: str = gin.REQUIRED,
    mixture_or_task_name: str = gin.REQUIRED,
    task_feature_lengths: Mapping[str, int] = gin.REQUIRED,
    stage: StageFn = gin.REQUIRED,
    *,
    batch_size: int = 32,
    task_names: Sequence[str] | None = None,
    seed: int = 0,
    data_seed: int = 0,
    eval_mixture_or_task_name: str | None = None,
) -> LoopResult:
    """Train one stage's prompt.

    Args:
      model_dir: the run directory (resumed when it holds checkpoints).
      mixture_or_task_name: the seqio training task or mixture.
      task_feature_lengths: ``{"inputs": S, "targets": T}``.
      stage: a stage function of :mod:`mpt_jax.runner.stages` (``@stages.source``).
      batch_size: examples per step (a multiple of the local device count).
      task_names: the task-id mapping (default: the mixture's task order).
      seed: seed of prompt initialisation and dropout.
      data_seed: seed of the data order.
      eval_mixture_or_task_name: evaluated with seqio metrics every
        ``actions.Evaluate.every`` steps and at the end (``make_evaluate.*`` bindings).
    """
    index = _index(mixture_or_task_name, task_names)
    config, backbone, reference, st, model = _setup(stage, index, seed)
    record = _identity(st, backbone, reference, config, index, mixture_or_task_name)
    _check_resume_identity(model_dir, record)
    index_path = os.path.join(model_dir, "task_index.json")
    if os.path.exists(index_path):
        from mpt_jax.data.task_ids import check_compatible

        check_compatible(TaskIndex.load(index_path), index, context=f"run {model_dir}")

    def write_run_files() -> None:  # once the first step ran: a failed start leaves nothing
        os.makedirs(model_dir, exist_ok=True)
        if not os.path.exists(index_path):
            index.save(index_path)
        with open(os.path.join(model_dir, "config.gin"), "w") as f:
            f.write(gin.config_str())

    evaluate = None
    if eval_mixture_or_task_name is not None:
        evaluate = make_evaluate(
            model, backbone, eval_mixture_or_task_name, task_feature_lengths, index
        )
    batches = data_lib.train_batches(
        mixture_or_task_name, task_feature_lengths, batch_size, index, seed=data_seed
    )
    result = train_loop(
        st.loss_fn,
        st.optimizer,
        st.params,
        {"backbone": backbone, **st.frozen},
        batches,
        task_names=index.names,
        model_dir=model_dir,
        backbone=reference,
        seed=seed,
        evaluate=evaluate,
        generator=st.prompt,
        extra_meta={**st.meta, "mixture_or_task_name": mixture_or_task_name, "identity": record},
        on_started=write_run_files,
        rates_at=None if st.recipe is None else st.recipe.rates_at,
    )
    with open(os.path.join(model_dir, "operative_config.gin"), "w") as f:
        f.write(gin.operative_config_str())
    return result


@gin.configurable
def evaluate(
    model_dir: str = gin.REQUIRED,
    mixture_or_task_name: str = gin.REQUIRED,
    task_feature_lengths: Mapping[str, int] = gin.REQUIRED,
    stage: StageFn = gin.REQUIRED,
    *,
    step: int | None = None,
    output_file: str | None = None,
) -> dict[str, float]:
    """The seqio metrics of ``model_dir``'s checkpoint (latest, or ``step``).

    The metrics are returned, printed as JSON, and appended to ``output_file`` (default
    ``<model_dir>/eval_results.jsonl``) as ``{"step", "mixture_or_task_name", "split",
    "num_examples", metrics}`` (``num_examples`` None: the whole split).
    """
    index = _saved_index(model_dir)
    config, backbone, reference, st, model = _setup(stage, index, 0)
    record = _identity(st, backbone, reference, config, index, mixture_or_task_name)
    params, step = _restore_prompt(model_dir, step, record, "evaluating")
    evaluate = make_evaluate(model, backbone, mixture_or_task_name, task_feature_lengths, index)
    metrics = evaluate(params, step)
    output_file = output_file or os.path.join(model_dir, "eval_results.jsonl")
    record = {
        "step": step,
        "mixture_or_task_name": mixture_or_task_name,
        "split": evaluate.split,
        "num_examples": evaluate.num_examples,
        **metrics,
    }
    with open(output_file, "a") as f:
        f.write(json.dumps(record) + "\n")
    print(json.dumps(record, indent=1))
    return metrics


@gin.configurable
def infer(
    model_dir: str = gin.REQUIRED,
    mixture_or_task_name: str = gin.REQUIRED,
    task_feature_lengths: Mapping[str, int] = gin.REQUIRED,
    stage: StageFn = gin.REQUIRED,
    *,
    split: str = "test",
    step: int | None = None,
    output_file: str | None = None,
    batch_size: int = 32,
    num_examples: int | None = None,
    input_file: str | None = None,
) -> list[dict[str, Any]]:
    """Predictions for every example of ``split``, written as JSON lines
    ``{"task", "inputs", "prediction", "targets"}`` to ``output_file`` (default
    ``<model_dir>/predictions_<split>.jsonl``): greedy decoding, or for a rank-scored task
    the best label, one line per input with every label's log-likelihood in ``"scores"``
    (:func:`~mpt_jax.runner.evaluation.predict_split`). With ``input_file`` (a jsonl of
    ``{"inputs", "task"}``), its lines are predicted instead (greedily; no ``targets``;
    default output ``<model_dir>/predictions_<file name>``)."""
    import seqio

    from mpt_jax.runner.evaluation import predict_split

    index = _saved_index(model_dir)
    config, backbone, reference, st, model = _setup(stage, index, 0)
    # A file of new inputs is tokenized with the run's own tasks' vocabulary; MIXTURE is then
    # only a placeholder the command fills in.
    vocabulary_of = mixture_or_task_name if input_file is None else index.names[0]
    record = _identity(st, backbone, reference, config, index, vocabulary_of)
    prompt, step = _restore_prompt(model_dir, step, record, "inferring with")
    params = merge_params(prompt, backbone)
    if input_file is not None:
        from mpt_jax.runner.evaluation import predict_input_file

        records = predict_input_file(model, params, index, input_file, task_feature_lengths,
                                     batch_size)  # fmt: skip
        split, tasks = os.path.basename(input_file).removesuffix(".jsonl"), []
    else:
        provider = seqio.get_mixture_or_task(mixture_or_task_name)
        tasks = provider.tasks if isinstance(provider, seqio.Mixture) else [provider]
        records = []
    for task in tasks:
        records += predict_split(model, params, task, split, task_feature_lengths, index,
                                 batch_size=batch_size, num_examples=num_examples)  # fmt: skip
    output_file = output_file or os.path.join(model_dir, f"predictions_{split}.jsonl")
    with open(output_file, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    log.info("wrote %d predictions of step %d to %s", len(records), step, output_file)
    return records


EXPORT_FORMATS = ("npy", "peft")


@gin.configurable
def export_prompts(
    model_dir: str = gin.REQUIRED,
    output_dir: str = gin.REQUIRED,
    *,
    format: str = "npy",
    step: int | None = None,
    overwrite: bool = False,
    base_model_name_or_path: str | None = None,
) -> list[str]:
    """Write the prompt of ``model_dir``'s checkpoint to ``output_dir``.

    ``format="npy"``: one ``.npy`` per parameter (:func:`mpt_jax.prompts.io.save_npy`);
    ``"peft"``: a Hugging Face PEFT multitask-prompt-tuning adapter (MPT prompts only).
    The task-id mapping is copied next to it as ``task_index.json``. Returns the files.
    """
    from mpt_jax.prompts import io as prompt_io

    if format not in EXPORT_FORMATS:
        raise BindingError(f"export_prompts.format must be one of {EXPORT_FORMATS}, got {format!r}")
    params, step = _restore_prompt(model_dir, step)
    index = _saved_index(model_dir)
    if format == "peft":
        ckpt = Checkpointer(checkpoint_dir(model_dir))
        try:
            meta = ckpt.restore_meta(step)
        finally:
            ckpt.close()
        identity.require_mpt(meta, what=f"the checkpoint {model_dir} (step {step})",
                             reading="PEFT's multitask prompt tuning format")  # fmt: skip
    if format == "npy":
        written = prompt_io.save_npy(params, output_dir, overwrite=overwrite)
    else:
        prompt_io.export_peft(params, output_dir, base_model_name_or_path=base_model_name_or_path)
        written = [os.path.join(output_dir, prompt_io.PEFT_WEIGHTS),
                   os.path.join(output_dir, prompt_io.PEFT_CONFIG)]  # fmt: skip
    index_path = os.path.join(output_dir, "task_index.json")
    if os.path.exists(index_path):
        os.remove(index_path)
    index.save(index_path)
    print(f"exported the prompt of step {step} ({format}) to {output_dir}")
    return sorted([*written, index_path])
