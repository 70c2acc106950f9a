"""The stages of MPT and its baselines, each a gin-configurable function ``stage(ctx) -> Stage``.

A stage says *what* trains and *how it starts*; the ``train`` job (``mpt_jax.runner.jobs``)
does the rest (data, backbone, loop, evaluation) the same way for every stage::

    train.stage = @stages.source        # the function itself, not a call
    stages.source.teacher_dir = "runs/teachers"
    distillation_loss_fn.distill_weight = 0.9

Stages:

- :func:`teacher` — one vanilla prompt per source task, all trained together as one
  ``TaskPrompts`` table on the multitask mixture. This equals separate runs, one per
  task: each example's prompt is its own task's row, so the loss of an example reaches
  no other row, and the optimizer runs per task (:func:`~mpt_jax.training.optimizers.
  per_task`: Adafactor's parameter-scaled steps and update clipping use each row's own
  RMS). What remains shared is the batch (each step normalises the loss by the batch's
  target tokens) and the mixture's sampling of tasks into batches.
- :func:`source` — the MPT student (``MultitaskPrompt``, or any generator a gin binding
  picks, e.g. a ``ComposedPrompt``) trained with ``L_task + λ (τ² KL + MSE)`` against the
  frozen teachers of :func:`teacher`; ``distill=False`` trains with the task loss alone.
- :func:`target` — a target prompt started from a source checkpoint with an initialiser
  of :mod:`mpt_jax.prompts.source_init` (``exact``/``average``/``shared_only``) or fresh;
  one target task or several at once.
- Baselines: :func:`prompt_tuning` (vanilla prompt tuning from a random or a sampled
  vocabulary start), :func:`spot` (a single prompt started from a source prompt), and
  :func:`generator` (any generator — each composition strategy, the hierarchical
  prompt — from its own initialiser, with the task loss).

Generators get ``num_tasks`` and ``embed_dim`` from the run (the task-id mapping and the
backbone); everything else about them (``length``, ranks, inits, composition) comes from
their own gin bindings, e.g. ``prompts.MultitaskPrompt.length = 100``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax

from mpt_jax.backbone import T5Config
from mpt_jax.data.task_ids import TaskIndex, TaskIndexError, check_compatible
from mpt_jax.model import PromptedT5
from mpt_jax.prompts import initializers as inits
from mpt_jax.prompts import source_init
from mpt_jax.prompts.generators import MultitaskPrompt, SinglePrompt, TaskPrompts
from mpt_jax.training import identity
from mpt_jax.training.checkpoints import Checkpointer, checkpoint_dir
from mpt_jax.training.objectives import LossFn, distillation_loss_fn, task_loss_fn
from mpt_jax.training.optimizers import per_task

PyTree = Any


@dataclasses.dataclass(frozen=True)
class StageContext:
    """What a stage may read about the run.

    Attributes:
      task_names: the run's task-id mapping, id order.
      config: the backbone configuration.
      backbone: the frozen backbone parameters (for vocabulary-based inits).
      seed: the run's seed for random prompt initialisation.
    """

    task_names: tuple[str, ...]
    config: T5Config
    backbone: PyTree
    seed: int = 0

    @property
    def num_tasks(self) -> int:
        return len(self.task_names)


@dataclasses.dataclass
class Stage:
    """What a stage trains.

    Attributes:
      name: the stage's name (stored in checkpoints).
      prompt: the trained generator (the model's ``prompt`` submodule).
      init_params: returns the initial prompt tree (numpy leaves).
      objective: ``objective(model) -> (loss_fn, extra_frozen)``; ``extra_frozen`` joins
        ``frozen`` next to ``"backbone"`` (the teachers' prompts for distillation).
      wrap_optimizer: applied to the run's optimizer (``per_task`` for teachers).
      meta: JSON-able facts stored with each checkpoint.
    """

    name: str
    prompt: nn.Module
    init_params: Callable[[], PyTree]
    objective: Callable[[PromptedT5], tuple[LossFn, dict[str, PyTree]]]
    wrap_optimizer: Callable[[optax.GradientTransformation], optax.GradientTransformation] = (
        lambda tx: tx
    )
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)


# -- helpers ---------------------------------------------------------------------------


def build_generator(prompt_class: Callable[..., nn.Module], ctx: StageContext, **kwargs):
    """``prompt_class(num_tasks=T, embed_dim=D, **kwargs)``, then checks that its task count
    matches the run's mapping. ``num_tasks`` / ``embed_dim`` are passed when the class has
    such a field; every key of ``kwargs`` must be a field (an error names it otherwise)."""
    fields = {f.name for f in dataclasses.fields(_class_of(prompt_class))}
    unknown = sorted(set(kwargs) - fields)
    if unknown:
        raise TypeError(f"{prompt_class!r} has no field(s) {unknown}; its fields: {sorted(fields)}")
    given = {"num_tasks": ctx.num_tasks, "embed_dim": ctx.config.emb_dim}
    given = {k: v for k, v in given.items() if k in fields}
    generator = prompt_class(**given, **kwargs)
    tasks = getattr(generator, "num_tasks", None)
    if tasks is None and hasattr(generator, "task_groups"):
        tasks = len(generator.task_groups)
    if tasks is not None and tasks != ctx.num_tasks:
        raise ValueError(
            f"{type(generator).__name__} has {tasks} tasks but the run's task-id mapping has "
            f"{ctx.num_tasks}: {list(ctx.task_names)}"
        )
    return generator


def _class_of(prompt_class) -> type:
    if not (isinstance(prompt_class, type) and dataclasses.is_dataclass(prompt_class)):
        raise TypeError(
            f"prompt_class must be a prompt generator class (e.g. @prompts.MultitaskPrompt, "
            f"without parentheses in gin), got {prompt_class!r}"
        )
    return prompt_class


def init_prompt(generator: nn.Module, embed_dim: int, seed: int) -> PyTree:
    """The generator's own initial parameters (numpy leaves)."""
    task_ids = jnp.zeros((1,), jnp.int32)
    embedded = jnp.zeros((1, 1, embed_dim), jnp.float32)
    variables = generator.init(jax.random.key(seed), task_ids, embedded, jnp.ones((1, 1)))
    return jax.tree.map(np.asarray, nn.unbox(variables["params"]))


def _task_objective(model: PromptedT5):
    return task_loss_fn(model), {}


def load_source(source_dir: str) -> tuple[PyTree, TaskIndex, dict]:
    """``(prompt_params, task_index, meta)`` of the latest checkpoint of a run directory
    (or of a checkpoint folder)."""
    ckpt = Checkpointer(checkpoint_dir(source_dir))
    try:
        meta = ckpt.restore_meta()
        params = ckpt.restore_params()
    finally:
        ckpt.close()
    return params, TaskIndex(tuple(meta["task_names"])), meta


def _ids(names: Sequence[str], index: TaskIndex, what: str) -> list[int]:
    missing = [n for n in names if n not in index]
    if missing:
        raise TaskIndexError(
            f"{what}: task(s) {missing} are not in the source's task-id mapping {list(index.names)}"
        )
    return [index.id(n) for n in names]


def _require_mpt(params: Mapping[str, Any], source_dir: str) -> None:
    want = {"shared", "task_cols", "task_rows"}
    if set(params) != want:
        raise ValueError(
            f"the source checkpoint {source_dir!r} holds prompt parameters {sorted(params)}, "
            f"not an MPT prompt {sorted(want)}"
        )


# -- stages ----------------------------------------------------------------------------


@gin.configurable(module="stages", denylist=["ctx"])
def teacher(ctx: StageContext, prompt_class: Callable[..., nn.Module] = TaskPrompts) -> Stage:
    """One vanilla prompt per task (``TaskPrompts``), trained independently per task."""
    prompt = build_generator(prompt_class, ctx)
    return Stage(
        name="teacher",
        prompt=prompt,
        init_params=lambda: init_prompt(prompt, ctx.config.emb_dim, ctx.seed),
        objective=_task_objective,
        wrap_optimizer=per_task,
        meta={"stage": "teacher"},
    )


@gin.configurable(module="stages", denylist=["ctx"])
def source(
    ctx: StageContext,
    teacher_dir: str | None = None,
    prompt_class: Callable[..., nn.Module] = MultitaskPrompt,
    distill: bool = True,
) -> Stage:
    """MPT source training: the student distilled from the per-task teachers.

    Args:
      teacher_dir: the :func:`teacher` run (its latest checkpoint); its task-id mapping
        must equal this run's.
      prompt_class: the student generator (MPT's ``MultitaskPrompt`` by default; a
        ``ComposedPrompt`` for the composition ablations).
      distill: False trains the student with the task loss alone (an ablation).

    The loss's λ, τ and hidden states are bindings of
    :func:`mpt_jax.training.objectives.distillation_loss_fn` (defaults λ = 0.9 — recalled
    from the paper, not verified —, τ = 1, encoder hidden states).
    """
    prompt = build_generator(prompt_class, ctx)
    if not distill:
        objective = _task_objective
        meta = {"stage": "source", "distill": False}
    else:
        if teacher_dir is None:
            raise ValueError("stages.source needs teacher_dir (or distill = False)")
        teacher_params, teacher_index, teacher_meta = load_source(teacher_dir)
        identity.check_source(teacher_meta, backbone=ctx.backbone, what=f"teachers {teacher_dir!r}")
        check_compatible(
            teacher_index, TaskIndex(ctx.task_names), context=f"teachers from {teacher_dir}"
        )
        if set(teacher_params) != {"task_prompts"}:
            raise ValueError(
                f"{teacher_dir!r} is not a teacher run: its prompt holds {sorted(teacher_params)}"
                ", expected ['task_prompts'] (TaskPrompts)"
            )
        table = np.asarray(teacher_params["task_prompts"])
        teacher_prompt = TaskPrompts(
            num_tasks=table.shape[0], length=table.shape[1], embed_dim=table.shape[2]
        )

        def objective(model: PromptedT5):
            teacher_model = PromptedT5(model.config, teacher_prompt)
            return distillation_loss_fn(model, teacher_model), {
                "teacher_prompt": {"task_prompts": table}
            }

        meta = {"stage": "source", "distill": True, "teacher_dir": teacher_dir}
    return Stage(
        name="source",
        prompt=prompt,
        init_params=lambda: init_prompt(prompt, ctx.config.emb_dim, ctx.seed),
        objective=objective,
        meta=meta,
    )


TARGET_INITS = ("fresh", *source_init.METHODS)


@gin.configurable(module="stages", denylist=["ctx"])
def target(
    ctx: StageContext,
    source_dir: str | None = None,
    init: str = "average",
    source_task: str | None = None,
    source_tasks: Sequence[str] | None = None,
) -> Stage:
    """MPT target adaptation from a source checkpoint (``MultitaskPrompt``, T = target tasks).

    Args:
      source_dir: the :func:`source` run.
      init: ``"average"`` (the average of the source task matrices ``U_k V_k`` brought back
        to rank r), ``"exact"``, ``"shared_only"`` or ``"fresh"`` (no source).
      source_task: for ``exact``: the source task (by name) every target task starts
        from. When None, each target task starts from the source task of the same name,
        and a target task the source does not know is an error.
      source_tasks: for ``average``: the source tasks (by name) to average (None: all).
    """
    if init not in TARGET_INITS:
        raise ValueError(f"stages.target.init must be one of {TARGET_INITS}, got {init!r}")
    prompt = build_generator(MultitaskPrompt, ctx)

    def init_params():
        fresh = init_prompt(prompt, ctx.config.emb_dim, ctx.seed)
        if init == "fresh":
            return fresh
        if source_dir is None:
            raise ValueError(f"stages.target.init = {init!r} needs stages.target.source_dir")
        params, index, meta = load_source(source_dir)
        _require_mpt(params, source_dir)
        identity.check_source(meta, backbone=ctx.backbone, what=f"source {source_dir!r}", mpt=True)
        common = dict(template=fresh, seed=ctx.seed)
        if init == "shared_only":
            return source_init.init_from_source(params, "shared_only", **common)
        if init == "average":
            ids = None if source_tasks is None else _ids(source_tasks, index, "source_tasks")
            return source_init.init_from_source(params, "average", source_tasks=ids, **common)
        if source_task is not None:
            (k,) = _ids([source_task], index, "source_task")
            return source_init.init_from_source(params, "exact", source_task=k, **common)
        ids = _ids(ctx.task_names, index, "exact init by task name (set source_task)")
        one = {k: v[:1] if k != "shared" else v for k, v in fresh.items()}
        rows = [source_init.init_from_source(params, "exact", source_task=k, template=one)
                for k in ids]  # fmt: skip
        return {
            "shared": rows[0]["shared"],
            "task_cols": np.concatenate([r["task_cols"] for r in rows]),
            "task_rows": np.concatenate([r["task_rows"] for r in rows]),
        }

    meta = {"stage": "target", "init": init, "source_dir": source_dir,
            "source_task": source_task, "source_tasks": list(source_tasks or [])}  # fmt: skip
    return Stage("target", prompt, init_params, _task_objective, meta=meta)


PROMPT_TUNING_INITS = ("random", "vocab")


@gin.configurable(module="stages", denylist=["ctx"])
def prompt_tuning(
    ctx: StageContext,
    init: str = "random",
    num_vocab_ids: int | None = 5000,
    one_per_task: bool = False,
) -> Stage:
    """Vanilla prompt tuning (Lester et al. 2021): one ``SinglePrompt`` (or one prompt per
    task with ``one_per_task``), started from ``SinglePrompt``'s own initialiser (``"random"``)
    or from embeddings of token ids sampled from the first ``num_vocab_ids`` rows of the
    backbone's embedding table (``"vocab"``, as the paper does with the 5,000 most
    frequent pieces; None samples the whole table)."""
    if init not in PROMPT_TUNING_INITS:
        raise ValueError(f"prompt_tuning.init must be one of {PROMPT_TUNING_INITS}, got {init!r}")
    kwargs = {}
    if init == "vocab":
        table = np.asarray(ctx.backbone["token_embedder"]["embedding"])
        ids = None if num_vocab_ids is None else min(num_vocab_ids, table.shape[0])
        init_field = "task_init" if one_per_task else "shared_init"
        kwargs[init_field] = inits.from_sampled_vocab(table, ids)
    prompt = build_generator(TaskPrompts if one_per_task else SinglePrompt, ctx, **kwargs)
    return Stage(
        name="prompt_tuning",
        prompt=prompt,
        init_params=lambda: init_prompt(prompt, ctx.config.emb_dim, ctx.seed),
        objective=_task_objective,
        meta={"stage": "prompt_tuning", "init": init},
    )


def source_prompt(params: Mapping[str, Any], index: TaskIndex, task: str | None) -> np.ndarray:
    """One ``[L, D]`` prompt read from a source run's prompt tree.

    - ``SinglePrompt`` (``shared``): the prompt itself (``task`` must be None);
    - ``TaskPrompts`` (``task_prompts``): the named task's prompt, or the mean over tasks;
    - ``MultitaskPrompt``: the named task's ``P ∘ (U_k V_k)``, or the shared ``P``.
    """
    keys = set(params)
    if keys == {"shared"}:
        if task is not None:
            raise ValueError(f"the source is a single prompt; it has no task {task!r}")
        return np.asarray(params["shared"])
    if keys == {"task_prompts"}:
        table = np.asarray(params["task_prompts"])
        return table.mean(0) if task is None else table[_ids([task], index, "spot")[0]]
    if keys == {"shared", "task_cols", "task_rows"}:
        shared = np.asarray(params["shared"])
        if task is None:
            return shared
        (k,) = _ids([task], index, "spot")
        return shared * (np.asarray(params["task_cols"])[k] @ np.asarray(params["task_rows"])[k])
    raise ValueError(f"cannot read a source prompt from parameters {sorted(keys)}")


@gin.configurable(module="stages", denylist=["ctx"])
def spot(ctx: StageContext, source_dir: str = gin.REQUIRED, source_task: str | None = None):
    """SPoT (Vu et al. 2022): a ``SinglePrompt`` started from a source prompt (see
    :func:`source_prompt` for what is read from each kind of source run)."""
    params, index, meta = load_source(source_dir)
    mpt = set(params) == {"shared", "task_cols", "task_rows"}
    identity.check_source(meta, backbone=ctx.backbone, what=f"source {source_dir!r}", mpt=mpt)
    start = source_prompt(params, index, source_task)
    prompt = build_generator(SinglePrompt, ctx, length=start.shape[0])

    def init_params():
        fresh = init_prompt(prompt, ctx.config.emb_dim, ctx.seed)
        if fresh["shared"].shape != start.shape:
            raise ValueError(
                f"source prompt {start.shape} does not fit the target prompt "
                f"{fresh['shared'].shape}"
            )
        return {"shared": start.astype(fresh["shared"].dtype)}

    meta = {"stage": "spot", "source_dir": source_dir, "source_task": source_task}
    return Stage("spot", prompt, init_params, _task_objective, meta=meta)


@gin.configurable(module="stages", denylist=["ctx"])
def generator(ctx: StageContext, prompt_class: Callable[..., nn.Module] = gin.REQUIRED):
    """Any generator from its own initialiser with the task loss (composition ablations,
    the hierarchical prompt)::

        train.stage = @stages.generator
        stages.generator.prompt_class = @prompts.ComposedPrompt
        prompts.ComposedPrompt.composition = "gated"
    """
    prompt = build_generator(prompt_class, ctx)
    return Stage(
        name="generator",
        prompt=prompt,
        init_params=lambda: init_prompt(prompt, ctx.config.emb_dim, ctx.seed),
        objective=_task_objective,
        meta={"stage": "generator", "prompt_class": type(prompt).__name__},
    )
