"""The stages of MPT and its baselines: the single description of the method.

A stage is a pure function of parameters held in memory,
``stage(ctx, [source trees], *, choices, recipe) -> Stage``, giving everything that
differs between stages: the prompted model (its prompt generator), the initial prompt
tree, the objective (loss function and the extra frozen trees it reads) and the
optimizer (:class:`~mpt_jax.training.optimizers.PromptRecipe`). Whoever trains (the
runner's ``train`` job, the demo, a notebook) feeds these to a loop::

    ctx = StageContext(task_names=("rte", "boolq"), config=config, backbone=backbone)
    teachers = stages.teacher(ctx)
    ...  # train teachers.params with teachers.loss_fn / .optimizer, giving `table`
    student = stages.source(ctx, SourcePrompt({"task_prompts": table}, ctx.task_names))

Folders are read by :func:`load_source`, a separate step that the runner's gin files
wire in (``stages.source.teachers = @teachers/stages.load_source()``).

Stages:

- :func:`teacher` — one vanilla prompt per source task, all trained together as one
  ``TaskPrompts`` table on the multitask mixture. This equals separate runs, one per
  task, each on the steps where its task is in the batch: an example's loss reaches
  only its own task's row, each row has its own optimizer (Adafactor's statistics and
  step count per row), and a row that receives no gradient in a step keeps its value
  and optimizer state (see :mod:`mpt_jax.training.optimizers`). What remains shared
  is the batch's loss normalisation (Adafactor's update does not depend on the
  gradient's scale, up to its ε = 1e-30) and the mixture's sampling of tasks.
- :func:`source` — the MPT student (``MultitaskPrompt``, or any generator, e.g. a
  ``ComposedPrompt``) trained with ``L_task + λ (τ² KL + MSE)`` against frozen teachers
  (:class:`~mpt_jax.training.objectives.Distillation` holds λ and τ); without teachers,
  with the task loss alone (the ablation).
- :func:`target` — a target ``MultitaskPrompt`` started from a source MPT prompt
  (``exact``/``average``/``shared_only`` of :mod:`mpt_jax.prompts.source_init`) or fresh;
  one target task or several at once.
- Baselines: :func:`prompt_tuning` (vanilla prompt tuning from a random or a sampled
  vocabulary start), :func:`spot` (a single prompt started from a source prompt), and
  :func:`generator` (any generator from its own initialiser, with the task loss).

A prompt started from a source (:func:`target`, :func:`spot`) can be rescaled to the RMS
of a fresh prompt or of the token embeddings (:class:`~mpt_jax.prompts.source_init.
Rescale`). Generators get ``num_tasks`` and ``embed_dim`` from the run; everything else
(``length``, ranks, inits, composition) from ``prompt_fields`` when the caller passes them
(the demo: ``prompt_fields={"length": 8, "num_ranks": 1}``), else from their own gin
bindings (the runner: ``prompts.MultitaskPrompt.length = 100``).

The MPT stages (:func:`source` with a ``MultitaskPrompt``, :func:`target`) train the task
factors ``U``, ``V`` at :data:`~mpt_jax.training.optimizers.MPT_FACTOR_RATES` unless the
recipe names them (:func:`~mpt_jax.training.optimizers.mpt_recipe`, gin:
``mpt_recipe.factor_rates``).

Runs that differ only in their start (seeds, sources) share a stage's model, objective and
optimizer; :func:`run_group` stacks them for :class:`~mpt_jax.training.run_group.RunGroup`,
which trains them in one ``vmap``-ed step (the demo).
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
from mpt_jax.errors import BindingError
from mpt_jax.model import PromptedT5
from mpt_jax.prompts import initializers as inits
from mpt_jax.prompts import source_init
from mpt_jax.prompts.generators import MultitaskPrompt, SinglePrompt, TaskPrompts
from mpt_jax.training import identity
from mpt_jax.training.checkpoints import Checkpointer, checkpoint_dir
from mpt_jax.training.objectives import Distillation, LossFn, distillation_loss_fn, task_loss_fn
from mpt_jax.training.optimizers import PromptRecipe, prompt_recipe, task_axis_params
from mpt_jax.training.run_group import RunGroup, stack

PyTree = Any
Seed = int | jax.Array  # an int seed, or a PRNG key (jax.random.key)
MPT_PARAMS = frozenset({"shared", "task_cols", "task_rows"})


@dataclasses.dataclass(frozen=True)
class StageContext:
    """What a stage may read about the run.

    Attributes:
      task_names: the run's task-id mapping, id order.
      config: the backbone configuration.
      backbone: the frozen backbone parameters (for vocabulary-based inits and the
        embedding RMS).
      seed: the run's seed for random prompt initialisation: an int, or a PRNG key
        (``jax.random.key``; the demo folds its own).
    """

    task_names: tuple[str, ...]
    config: T5Config
    backbone: PyTree
    seed: Seed = 0

    @property
    def num_tasks(self) -> int:
        return len(self.task_names)


@dataclasses.dataclass(frozen=True)
class SourcePrompt:
    """A trained prompt tree from an earlier stage, held in memory.

    Attributes:
      params: the prompt tree (``{"task_prompts"}`` of teachers, MPT's ``{"shared",
        "task_cols", "task_rows"}``, a ``{"shared"}`` single prompt).
      task_names: the task-id mapping it was trained with (id order).
      meta: what its checkpoint recorded (empty for trees made in memory).
      origin: where it was read from (recorded in the new run's checkpoints).
    """

    params: PyTree
    task_names: tuple[str, ...]
    meta: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    origin: str | None = None

    @property
    def index(self) -> TaskIndex:
        return TaskIndex(tuple(self.task_names))


@dataclasses.dataclass(frozen=True)
class Stage:
    """What a stage trains and how.

    Attributes:
      name: the stage's name (stored in checkpoints).
      model: the ``PromptedT5`` of the backbone and this stage's prompt generator.
      params: the initial prompt tree (numpy leaves).
      loss_fn: ``loss_fn(prompt_params, frozen, batch, rng) -> (loss, metrics)``.
      frozen: extra frozen trees that join ``frozen`` next to ``"backbone"`` (the
        teachers' prompts for distillation).
      optimizer: the optax transform of the prompt tree (rows along a task axis
        optimised per task, see :meth:`PromptRecipe.build`).
      meta: JSON-able facts stored with each checkpoint.
      recipe: the :class:`PromptRecipe` ``optimizer`` was built from (the training loop
        logs its learning rates, :meth:`PromptRecipe.rates_at`); None when unknown.
    """

    name: str
    model: PromptedT5
    params: PyTree
    loss_fn: LossFn
    optimizer: optax.GradientTransformation
    frozen: Mapping[str, PyTree] = dataclasses.field(default_factory=dict)
    meta: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    recipe: PromptRecipe | None = None

    @property
    def prompt(self) -> nn.Module:
        """The prompt generator (``model.prompt``)."""
        return self.model.prompt


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
        raise BindingError(
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


def init_prompt(generator: nn.Module, embed_dim: int, seed: Seed) -> PyTree:
    """The generator's own initial parameters (numpy leaves); ``seed`` an int or a key."""
    key = seed if isinstance(seed, jax.Array) else jax.random.key(seed)
    task_ids = jnp.zeros((1,), jnp.int32)
    embedded = jnp.zeros((1, 1, embed_dim), jnp.float32)
    variables = generator.init(key, task_ids, embedded, jnp.ones((1, 1)))
    return jax.tree.map(np.asarray, nn.unbox(variables["params"]))


def run_group(runs: Sequence[Stage]) -> tuple[RunGroup, PyTree, PyTree]:
    """Runs of one stage that differ only in their start, as one vmapped group.

    Args:
      runs: ``R`` stages of one model, objective and optimizer (e.g. one stage function
        called per seed or per source); their ``params`` and ``frozen`` may differ.

    Returns:
      ``(group, params [R, ...], per_run frozen [R, ...])``: a :class:`RunGroup` of the
      first run's objective and optimizer, and the runs' initial prompts and frozen trees
      (each run's teachers) stacked for :meth:`RunGroup.init` and :meth:`RunGroup.step`.

    Raises:
      ValueError: when the runs' models differ (one group compiles one model).
    """
    first = runs[0]
    for r in runs[1:]:
        if r.model != first.model or set(r.frozen) != set(first.frozen):
            raise ValueError(
                f"runs of one group must share the stage's model and frozen trees; "
                f"{first.name!r} has {first.prompt}, a run has {r.prompt}"
            )
    group = RunGroup(first.loss_fn, first.optimizer)
    return group, stack([r.params for r in runs]), stack([dict(r.frozen) for r in runs])


def _stage(
    name: str,
    ctx: StageContext,
    prompt: nn.Module,
    params: PyTree,
    recipe: PromptRecipe | None,
    meta: Mapping[str, Any],
    loss_fn: Callable[[PromptedT5], LossFn] = task_loss_fn,
    frozen: Mapping[str, PyTree] | None = None,
) -> Stage:
    """The stage's model, objective and optimizer around ``prompt`` and ``params``; an MPT
    prompt's factors train at :func:`mpt_recipe`'s rates."""
    recipe = prompt_recipe(prompt, recipe)
    model = PromptedT5(ctx.config, prompt)
    optimizer = recipe.build(task_axis_params(prompt, ctx.config.emb_dim))
    return Stage(name, model, params, loss_fn(model), optimizer, dict(frozen or {}),
                 {"stage": name, **meta}, recipe)  # fmt: skip


def _ids(names: Sequence[str], index: TaskIndex, what: str) -> list[int]:
    missing = [n for n in names if n not in index]
    if missing:
        raise TaskIndexError(
            f"{what}: task(s) {missing} are not in the source's task-id mapping {list(index.names)}"
        )
    return [index.id(n) for n in names]


def _where(source: SourcePrompt) -> str:
    return repr(source.origin) if source.origin else "the source prompt"


def _check_source_identity(source: SourcePrompt, ctx: StageContext, mpt: bool = False) -> None:
    """A source read from a checkpoint must come from this backbone (and, with ``mpt``, from
    an MPT generator): :func:`mpt_jax.training.identity.check_source`. Trees made in memory
    carry no record and are the caller's responsibility."""
    if source.meta:
        identity.check_source(source.meta, backbone=ctx.backbone, what=_where(source), mpt=mpt)


@gin.configurable(module="stages")
def load_source(model_dir: str = gin.REQUIRED) -> SourcePrompt:
    """The prompt of the latest checkpoint of a run directory (or of a checkpoint folder),
    with its task-id mapping and checkpoint metadata. The runner's gin files use it to
    feed a stage, e.g.::

        stages.target.source = @source/stages.load_source()
        source/stages.load_source.model_dir = %SOURCE_DIR
    """
    ckpt = Checkpointer(checkpoint_dir(model_dir))
    try:
        meta = ckpt.restore_meta()
        params = ckpt.restore_params()
    finally:
        ckpt.close()
    return SourcePrompt(params, tuple(meta["task_names"]), meta=meta, origin=model_dir)


# -- stages ----------------------------------------------------------------------------


@gin.configurable(module="stages", denylist=["ctx"])
def teacher(
    ctx: StageContext,
    *,
    prompt_class: Callable[..., nn.Module] = TaskPrompts,
    prompt_fields: Mapping[str, Any] | None = None,
    recipe: PromptRecipe | None = None,
) -> Stage:
    """One vanilla prompt per task (``TaskPrompts`` ``[T, L, D]``), trained independently
    per task (see the module doc); ``prompt_fields``: the generator's fields (None: its gin
    bindings); ``recipe``: None = the gin-bound ``PromptRecipe()``."""
    prompt = build_generator(prompt_class, ctx, **(prompt_fields or {}))
    return _stage("teacher", ctx, prompt, init_prompt(prompt, ctx.config.emb_dim, ctx.seed),
                  recipe, {})  # fmt: skip


@gin.configurable(module="stages", denylist=["ctx"])
def source(
    ctx: StageContext,
    teachers: SourcePrompt | None = None,
    *,
    prompt_class: Callable[..., nn.Module] = MultitaskPrompt,
    prompt_fields: Mapping[str, Any] | None = None,
    distillation: Distillation | None = None,
    recipe: PromptRecipe | None = None,
) -> Stage:
    """MPT source training: the student distilled from the per-task teachers.

    Args:
      teachers: the :func:`teacher` stage's trained table ``{"task_prompts": [T, L, D]}``
        with the same task-id mapping as ``ctx``; None trains the student with the task
        loss alone (the ablation "MPT without distillation").
      prompt_class: the student generator (MPT's ``MultitaskPrompt`` by default; a
        ``ComposedPrompt`` for the composition ablations).
      prompt_fields: the student's fields besides ``num_tasks`` / ``embed_dim`` (e.g.
        ``{"length": 8, "num_ranks": 1}``); None: its gin bindings.
      distillation: λ, τ and the hidden states compared; None = the gin-bound
        ``Distillation()``.
      recipe: the optimizer; None = the gin-bound ``PromptRecipe()``. A ``MultitaskPrompt``'s
        factors train at :func:`~mpt_jax.training.optimizers.mpt_recipe`'s rates.
    """
    prompt = build_generator(prompt_class, ctx, **(prompt_fields or {}))
    params = init_prompt(prompt, ctx.config.emb_dim, ctx.seed)
    if teachers is None:
        return _stage("source", ctx, prompt, params, recipe, {"distill": False})
    _check_source_identity(teachers, ctx)
    check_compatible(teachers.index, TaskIndex(ctx.task_names),
                     context=f"teachers from {_where(teachers)}")  # fmt: skip
    if set(teachers.params) != {"task_prompts"}:
        raise BindingError(
            f"{_where(teachers)} is not a teacher run: its prompt holds "
            f"{sorted(teachers.params)}, expected ['task_prompts'] (TaskPrompts; TEACHER_DIR "
            "is the MODEL_DIR of a runner/teacher.gin run)"
        )
    table = np.asarray(teachers.params["task_prompts"])
    teacher_prompt = TaskPrompts(num_tasks=table.shape[0], length=table.shape[1],
                                 embed_dim=table.shape[2])  # fmt: skip
    distillation = Distillation() if distillation is None else distillation

    def loss_fn(model: PromptedT5) -> LossFn:
        return distillation_loss_fn(model, PromptedT5(model.config, teacher_prompt), distillation)

    meta = {"distill": True, "teacher_dir": teachers.origin,
            "distillation": dataclasses.asdict(distillation)}  # fmt: skip
    return _stage("source", ctx, prompt, params, recipe, meta, loss_fn,
                  {"teacher_prompt": {"task_prompts": table}})  # fmt: skip


TARGET_INITS = ("fresh", *source_init.METHODS)


@gin.configurable(module="stages", denylist=["ctx"])
def target(
    ctx: StageContext,
    source: SourcePrompt | None = None,
    *,
    init: str = "average",
    source_task: str | None = None,
    source_tasks: Sequence[str] | None = None,
    rescale: source_init.Rescale | None = None,
    prompt_fields: Mapping[str, Any] | None = None,
    recipe: PromptRecipe | None = None,
) -> Stage:
    """MPT target adaptation (``MultitaskPrompt``, T = the target tasks).

    Args:
      source: the :func:`source` stage's MPT prompt (ignored by ``init="fresh"``).
      init: ``"average"`` (the average of the source task matrices ``U_k V_k`` brought
        back to rank r), ``"exact"``, ``"shared_only"`` or ``"fresh"`` (no source).
      source_task: for ``exact``: the source task (by name) every target task starts
        from. When None, each target task starts from the source task of the same name,
        and a target task the source does not know is an error.
      source_tasks: for ``average``: the source tasks (by name) to average (None: all).
      rescale: the RMS the started prompt is brought to (None: the gin-bound
        ``prompts.Rescale()``, off by default).
      prompt_fields: the ``MultitaskPrompt``'s fields besides ``num_tasks`` / ``embed_dim``
        (e.g. ``{"length": 8, "num_ranks": 1}``); None: its gin bindings.
      recipe: the optimizer; None = the gin-bound ``PromptRecipe()``; the factors train at
        :func:`~mpt_jax.training.optimizers.mpt_recipe`'s rates.
    """
    if init not in TARGET_INITS:
        raise BindingError(f"stages.target.init must be one of {TARGET_INITS}, got {init!r}")
    prompt = build_generator(MultitaskPrompt, ctx, **(prompt_fields or {}))
    fresh = init_prompt(prompt, ctx.config.emb_dim, ctx.seed)
    meta = {"init": init, "source_dir": None if source is None else source.origin,
            "source_task": source_task, "source_tasks": list(source_tasks or [])}  # fmt: skip
    if init == "fresh":
        return _stage("target", ctx, prompt, fresh, recipe, meta)
    if source is None:
        raise BindingError(f"stages.target.init = {init!r} needs a source (stages.target.source)")
    if set(source.params) != MPT_PARAMS:
        raise BindingError(
            f"{_where(source)} holds prompt parameters {sorted(source.params)}, "
            f"not an MPT prompt {sorted(MPT_PARAMS)} (SOURCE_DIR is the MODEL_DIR of a "
            "runner/source.gin run)"
        )
    _check_source_identity(source, ctx, mpt=True)
    params, index = source.params, source.index
    common = dict(template=fresh, seed=ctx.seed)
    if init == "shared_only":
        start = source_init.init_from_source(params, "shared_only", **common)
    elif init == "average":
        ids = None if source_tasks is None else _ids(source_tasks, index, "source_tasks")
        start = source_init.init_from_source(params, "average", source_tasks=ids, **common)
    elif source_task is not None:
        (k,) = _ids([source_task], index, "source_task")
        start = source_init.init_from_source(params, "exact", source_task=k, **common)
    else:
        ids = _ids(ctx.task_names, index, "exact init by task name (set source_task)")
        one = {k: v[:1] if k != "shared" else v for k, v in fresh.items()}
        rows = [source_init.init_from_source(params, "exact", source_task=k, template=one)
                for k in ids]  # fmt: skip
        start = {
            "shared": rows[0]["shared"],
            "task_cols": np.concatenate([r["task_cols"] for r in rows]),
            "task_rows": np.concatenate([r["task_rows"] for r in rows]),
        }
    rescale = source_init.Rescale() if rescale is None else rescale
    start = rescale(start, fresh=fresh, embeddings=_embeddings(ctx))
    return _stage("target", ctx, prompt, start, recipe, {**meta, "rescale": rescale.match})


def _embeddings(ctx: StageContext) -> np.ndarray:
    return np.asarray(ctx.backbone["token_embedder"]["embedding"])


PROMPT_TUNING_INITS = ("random", "vocab")


@gin.configurable(module="stages", denylist=["ctx"])
def prompt_tuning(
    ctx: StageContext,
    *,
    init: str = "random",
    num_vocab_ids: int | None = 5000,
    one_per_task: bool = False,
    prompt_fields: Mapping[str, Any] | None = None,
    recipe: PromptRecipe | None = None,
) -> Stage:
    """Vanilla prompt tuning (Lester et al. 2021): one ``SinglePrompt`` (or one prompt per
    task with ``one_per_task``), started from ``SinglePrompt``'s own initialiser (``"random"``)
    or from embeddings of token ids sampled from the first ``num_vocab_ids`` rows of the
    backbone's embedding table (``"vocab"``, as the paper does with the 5,000 most
    frequent pieces; None samples the whole table). ``prompt_fields``: the generator's
    fields (e.g. ``{"length": 8}``; None: its gin bindings)."""
    if init not in PROMPT_TUNING_INITS:
        raise BindingError(f"prompt_tuning.init must be one of {PROMPT_TUNING_INITS}, got {init!r}")
    kwargs = dict(prompt_fields or {})
    if init == "vocab":
        table = _embeddings(ctx)
        ids = None if num_vocab_ids is None else min(num_vocab_ids, table.shape[0])
        init_field = "task_init" if one_per_task else "shared_init"
        kwargs[init_field] = inits.from_sampled_vocab(table, ids)
    prompt = build_generator(TaskPrompts if one_per_task else SinglePrompt, ctx, **kwargs)
    return _stage("prompt_tuning", ctx, prompt, init_prompt(prompt, ctx.config.emb_dim, ctx.seed),
                  recipe, {"init": init})  # fmt: skip


def source_prompt(params: Mapping[str, Any], index: TaskIndex, task: str | None) -> np.ndarray:
    """One ``[L, D]`` prompt read from a source run's prompt tree.

    - ``SinglePrompt`` (``shared``): the prompt itself (``task`` must be None);
    - ``TaskPrompts`` (``task_prompts``): the named task's prompt, or the mean over tasks;
    - ``MultitaskPrompt``: the named task's ``P ∘ (U_k V_k)``, or the shared ``P``.
    """
    keys = set(params)
    if keys == {"shared"}:
        if task is not None:
            raise BindingError(f"the source is a single prompt; it has no task {task!r}")
        return np.asarray(params["shared"])
    if keys == {"task_prompts"}:
        table = np.asarray(params["task_prompts"])
        return table.mean(0) if task is None else table[_ids([task], index, "spot")[0]]
    if keys == MPT_PARAMS:
        shared = np.asarray(params["shared"])
        if task is None:
            return shared
        (k,) = _ids([task], index, "spot")
        return shared * (np.asarray(params["task_cols"])[k] @ np.asarray(params["task_rows"])[k])
    raise BindingError(f"cannot read a source prompt from parameters {sorted(keys)}")


@gin.configurable(module="stages", denylist=["ctx"])
def spot(
    ctx: StageContext,
    source: SourcePrompt = gin.REQUIRED,
    *,
    source_task: str | None = None,
    rescale: source_init.Rescale | None = None,
    prompt_fields: Mapping[str, Any] | None = None,
    recipe: PromptRecipe | None = None,
) -> Stage:
    """SPoT (Vu et al. 2022): a ``SinglePrompt`` started from a source prompt (see
    :func:`source_prompt` for what is read from each kind of source), rescaled by
    ``rescale`` (None: the gin-bound ``prompts.Rescale()``). The prompt's length is the
    source's; ``prompt_fields`` give its other fields (None: its gin bindings)."""
    _check_source_identity(source, ctx, mpt=set(source.params) == MPT_PARAMS)
    start = source_prompt(source.params, source.index, source_task)
    fields = {**(prompt_fields or {}), "length": start.shape[0]}
    prompt = build_generator(SinglePrompt, ctx, **fields)
    fresh = init_prompt(prompt, ctx.config.emb_dim, ctx.seed)
    if fresh["shared"].shape != start.shape:
        raise BindingError(
            f"source prompt {start.shape} does not fit the target prompt {fresh['shared'].shape}"
        )
    rescale = source_init.Rescale() if rescale is None else rescale
    params = rescale({"shared": start.astype(fresh["shared"].dtype)}, fresh=fresh,
                     embeddings=_embeddings(ctx))  # fmt: skip
    meta = {"source_dir": source.origin, "source_task": source_task, "rescale": rescale.match}
    return _stage("spot", ctx, prompt, params, recipe, meta)


@gin.configurable(module="stages", denylist=["ctx"])
def generator(
    ctx: StageContext,
    prompt_class: Callable[..., nn.Module] = gin.REQUIRED,
    *,
    prompt_fields: Mapping[str, Any] | None = None,
    recipe: PromptRecipe | None = None,
) -> Stage:
    """Any generator from its own initialiser with the task loss (composition ablations,
    the hierarchical prompt)::

        train.stage = @stages.generator
        stages.generator.prompt_class = @prompts.ComposedPrompt
        prompts.ComposedPrompt.composition = "gated"

    ``prompt_fields``: the generator's fields (None: its gin bindings).
    """
    prompt = build_generator(prompt_class, ctx, **(prompt_fields or {}))
    return _stage("generator", ctx, prompt, init_prompt(prompt, ctx.config.emb_dim, ctx.seed),
                  recipe, {"prompt_class": type(prompt).__name__})  # fmt: skip
