"""The prompt optimizer: one recipe, built as an optax transform.

:class:`PromptRecipe` is the single definition of how prompts train, for every stage
of the runner, the demo and the T5X runs (``mpt_jax.t5x_ext.optim.recipe_optimizer``
builds T5X's optimizer from it; ``tests/test_gin_configs.py`` checks what they build).
Its defaults are prompt tuning's (Lester et al. 2021; google-research/prompt-tuning
``configs/models/t5_1_1_prompt.gin``): Adafactor with a constant learning rate of 0.3,
second-moment decay exponent 0.8, weight decay 1e-5, ``multiply_by_parameter_scale``
off, no factoring, update clipping at RMS 1. With parameter scaling off, the first step
is ``Δθ = -(lr · sign(g) + wd · θ)`` (optax adds the decay after the learning-rate
scaling, as T5X's Adafactor does, so the decay does not scale with the rate).

The recipe is a frozen dataclass that gin binds::

    PromptRecipe.learning_rate = 0.1                            # every parameter
    PromptRecipe.learning_rates = {"task_cols": 0.03, "task_rows": 0.03}   # by name
    PromptRecipe.optimizer = @AdamW()
    PromptRecipe.schedule = @learning_rate_schedule
    learning_rate_schedule.warmup_steps = 100

Parameters whose leading axis indexes tasks (``TaskPrompts.task_prompts``,
``MultitaskPrompt.task_cols`` / ``task_rows``; see :func:`task_axis_params`) are
optimised row by row (:func:`per_task`), and a row whose gradient is exactly zero in a
step (its task is absent from the batch) keeps its value and optimizer state
(:func:`skip_without_gradient`): no weight decay, no moment decay, no step count. A
table of per-task prompts trained on a mixture therefore equals separate runs, one per
task, each on the steps where its task appears.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection, Mapping
from typing import Any

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import optax

from mpt_jax.errors import BindingError
from mpt_jax.prompts.generators import MultitaskPrompt

PyTree = Any
SCHEDULES = ("constant", "linear_decay", "rsqrt")
#: Logical axis names that index tasks (or task groups) along a parameter's first axis.
TASK_AXES = ("tasks", "groups")


@gin.configurable(denylist=["base_learning_rate"])
def learning_rate_schedule(
    base_learning_rate: float,
    *,
    kind: str = "constant",
    warmup_steps: int = 0,
    total_steps: int | None = None,
) -> optax.Schedule:
    """A learning-rate schedule: linear warm-up, then ``kind``.

    Bind it as ``PromptRecipe.schedule = @learning_rate_schedule`` (a reference, not a
    call: the recipe calls it with each parameter group's rate).

    Args:
      base_learning_rate: the rate after warm-up.
      kind: ``"constant"`` (prompt tuning's choice), ``"linear_decay"`` (to 0 at
        ``total_steps``) or ``"rsqrt"`` (``base · sqrt(warmup / step)`` after warm-up).
      warmup_steps: steps of linear warm-up from 0 (0 = none).
      total_steps: required by ``"linear_decay"``.
    """
    if kind not in SCHEDULES:
        raise BindingError(f"learning_rate_schedule.kind must be one of {SCHEDULES}, got {kind!r}")
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    if kind == "constant":
        after = optax.constant_schedule(base_learning_rate)
    elif kind == "linear_decay":
        if total_steps is None or total_steps <= warmup_steps:
            raise ValueError(
                f"linear_decay needs total_steps > warmup_steps ({warmup_steps}), got {total_steps}"
            )
        after = optax.linear_schedule(base_learning_rate, 0.0, total_steps - warmup_steps)
    else:
        offset = max(warmup_steps, 1)
        after = lambda step: base_learning_rate * (offset / (step + offset)) ** 0.5
    if warmup_steps == 0:
        return after
    warmup = optax.linear_schedule(0.0, base_learning_rate, warmup_steps)
    return optax.join_schedules([warmup, after], [warmup_steps])


# -- optimizers: what one parameter group's update rule is --------------------------------


@gin.configurable
@dataclasses.dataclass(frozen=True)
class Adafactor:
    """Adafactor (Shazeer & Stern 2018) as prompt tuning configures it.

    Attributes:
      decay_rate: exponent of the second-moment decay ``β2_t = 1 - t^-decay_rate`` (0.8).
      weight_decay: decoupled weight decay per step, ``θ ← θ - wd · θ`` (not scaled by
        the learning rate; 0 disables it).
      multiply_by_parameter_scale: scale steps by the parameter's RMS (T5X's default;
        off in prompt tuning's recipe: with it on, a prompt's norm compounds).
      factored: factor the second moment (off: prompts are small).
      clipping_threshold: clip each update to this RMS (None: no clipping).
    """

    decay_rate: float = 0.8
    weight_decay: float = 1e-5
    multiply_by_parameter_scale: bool = False
    factored: bool = False
    clipping_threshold: float | None = 1.0

    def transform(self, learning_rate: float | optax.Schedule) -> optax.GradientTransformation:
        """The optax transform at ``learning_rate`` (a number or a schedule of the step)."""
        return optax.adafactor(
            learning_rate=learning_rate,
            decay_rate=self.decay_rate,
            multiply_by_parameter_scale=self.multiply_by_parameter_scale,
            clipping_threshold=self.clipping_threshold,
            weight_decay_rate=self.weight_decay or None,
            factored=self.factored,
        )


@gin.configurable
@dataclasses.dataclass(frozen=True)
class AdamW:
    """AdamW (Loshchilov & Hutter 2019); pair it with a rate like 1e-3, not 0.3.

    Attributes:
      b1, b2, eps: the moments' decay rates and the denominator's epsilon.
      weight_decay: decoupled weight decay, scaled by the learning rate (optax's AdamW).
    """

    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = Adafactor.weight_decay

    def transform(self, learning_rate: float | optax.Schedule) -> optax.GradientTransformation:
        """The optax transform at ``learning_rate`` (a number or a schedule of the step)."""
        return optax.adamw(
            learning_rate, b1=self.b1, b2=self.b2, eps=self.eps, weight_decay=self.weight_decay
        )


# -- transforms: rows along a task axis ------------------------------------------------


def skip_without_gradient(inner: optax.GradientTransformation) -> optax.GradientTransformation:
    """``inner``, except that a step whose gradient is exactly zero everywhere does nothing.

    Such a step returns zero updates and ``inner``'s state unchanged: no weight decay,
    no decay of moments, no step count. Under :func:`per_task` this holds per row: a
    task absent from the batch sends no gradient to its row, and the row stays put.
    """

    def init(params):
        return inner.init(params)

    def update(updates, state, params=None):
        new_updates, new_state = inner.update(updates, state, params)
        leaves = jax.tree.leaves(updates)
        if not leaves:
            return new_updates, new_state
        moved = jnp.any(jnp.stack([jnp.any(g != 0) for g in leaves]))
        new_updates = jax.tree.map(lambda u: jnp.where(moved, u, jnp.zeros_like(u)), new_updates)
        new_state = jax.tree.map(lambda new, old: jnp.where(moved, new, old), new_state, state)
        return new_updates, new_state

    return optax.GradientTransformation(init, update)


def per_task(tx: optax.GradientTransformation) -> optax.GradientTransformation:
    """Run ``tx`` independently for each slice along the leading (task) axis.

    Every leaf of the parameter tree must have the task axis first (``TaskPrompts``:
    ``task_prompts [T, L, D]``). ``tx.init`` and ``tx.update`` are ``vmap``-ed over that
    axis, so whole-parameter statistics (Adafactor's parameter-scaled step and its
    update clipping, both RMS over a parameter) and the step count are per task:
    training a table of T prompts with ``per_task(tx)`` equals training T separate
    prompts with ``tx``.
    """

    def init(params):
        return jax.vmap(tx.init)(params)

    def update(updates, state, params=None):
        if params is None:
            return jax.vmap(lambda u, s: tx.update(u, s))(updates, state)
        return jax.vmap(tx.update)(updates, state, params)

    return optax.GradientTransformation(init, update)


def task_axis_params(generator: nn.Module, embed_dim: int) -> tuple[str, ...]:
    """Paths (``"task_cols"``, ``"sub/task_prompts"``) of ``generator``'s parameters whose
    first logical axis is one of :data:`TASK_AXES`: the parameters with one row per task
    (or task group), which :meth:`PromptRecipe.build` optimises row by row."""
    task_ids = jnp.zeros((1,), jnp.int32)
    embedded = jnp.zeros((1, 1, embed_dim), jnp.float32)
    shapes = jax.eval_shape(
        lambda: generator.init(jax.random.key(0), task_ids, embedded, jnp.ones((1, 1)))
    )
    is_box = lambda x: isinstance(x, nn.LogicallyPartitioned)
    found = []
    for path, leaf in jax.tree_util.tree_leaves_with_path(shapes["params"], is_leaf=is_box):
        if is_box(leaf) and leaf.names and leaf.names[0] in TASK_AXES:
            found.append(_path_name(path))
    return tuple(found)


def _path_name(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


# -- the recipe ------------------------------------------------------------------------


@gin.configurable
@dataclasses.dataclass(frozen=True)
class PromptRecipe:
    """How prompt parameters train: optimizer, learning rates, schedule, clipping.

    Attributes:
      optimizer: :class:`Adafactor` or :class:`AdamW`; None: ``Adafactor()`` as gin
        binds it (prompt tuning's by default).
      learning_rate: the rate of every parameter not named in ``learning_rates`` (0.3).
      learning_rates: rates by parameter name (the last component of its path, e.g.
        ``"shared"``, ``"task_cols"``) or full path (``"sub/task_rows"``); for MPT's
        two-rate recipes, ``{"task_cols": 0.03, "task_rows": 0.03}``. A name that no
        parameter has is an error when the optimizer is initialised.
      schedule: ``schedule(rate) -> optax.Schedule``, applied to each group's rate
        (None: constant; gin: ``@learning_rate_schedule``).
      max_grad_norm: clip the global gradient norm first (None: no clipping).
    """

    optimizer: Adafactor | AdamW | None = None
    learning_rate: float = 0.3
    learning_rates: Mapping[str, float] = dataclasses.field(default_factory=dict)
    schedule: Callable[[float], optax.Schedule] | None = None
    max_grad_norm: float | None = None

    def __post_init__(self):
        if self.optimizer is None:
            object.__setattr__(self, "optimizer", Adafactor())
        rates = dict(self.learning_rates)
        for name, rate in {"learning_rate": self.learning_rate, **rates}.items():
            if not rate > 0:
                raise ValueError(f"PromptRecipe learning rate of {name!r} must be > 0, got {rate}")
        # a tuple of pairs keeps the recipe hashable (a dict is not)
        object.__setattr__(self, "learning_rates", tuple(sorted(rates.items())))

    def rate_key(self, path: str) -> str | None:
        """The ``learning_rates`` entry that sets the rate of the parameter at ``path``
        (``"a/b/name"``): the full path, else its last component; None: the parameter
        trains at ``learning_rate``. (The T5X runs group parameters by it.)"""
        rates = dict(self.learning_rates)
        if path in rates:
            return path
        short = path.rsplit("/", 1)[-1]
        return short if short in rates else None

    def rate(self, path: str) -> float:
        """The learning rate of the parameter at ``path`` (``"a/b/name"``)."""
        key = self.rate_key(path)
        return self.learning_rate if key is None else dict(self.learning_rates)[key]

    def _lr(self, rate: float) -> float | optax.Schedule:
        return rate if self.schedule is None else self.schedule(rate)

    def rates_at(self, step: int) -> dict[str, float]:
        """The learning rates that training step ``step`` applies, for logging.

        ``step`` is 1-based like the training loop's steps (optax's schedules see the
        update count ``step - 1``). Returns ``{"learning_rate": rate}`` for the parameters
        not named in ``learning_rates``, plus ``"learning_rate/<name>"`` for each name
        there whose rate differs from ``learning_rate``. A task-axis row that got no
        gradient in some steps has counted fewer updates (:func:`skip_without_gradient`),
        so under a warm-up or decay its own rate lags the one given here.
        """

        def at(rate: float) -> float:
            lr = self._lr(rate)
            return float(lr(max(step - 1, 0)) if callable(lr) else lr)

        rates = {"learning_rate": at(self.learning_rate)}
        for name, rate in self.learning_rates:
            if rate != self.learning_rate:
                rates[f"learning_rate/{name}"] = at(rate)
        return rates

    def build(self, task_axis: Collection[str] = ()) -> optax.GradientTransformation:
        """The optax transform of a prompt tree.

        Args:
          task_axis: paths of the parameters with one row per task along their first
            axis (:func:`task_axis_params`); each row is optimised on its own and does
            not move in a step that sends it no gradient (:func:`skip_without_gradient`).
        """
        task_axis = tuple(task_axis)
        rates = dict(self.learning_rates)
        groups = {f"rate:{k}": self._lr(v) for k, v in rates.items()}
        groups["rate:"] = self._lr(self.learning_rate)
        transforms = {k: self.optimizer.transform(lr) for k, lr in groups.items()}
        for path in task_axis:
            row = self.optimizer.transform(self._lr(self.rate(path)))
            transforms[f"rows:{path}"] = per_task(skip_without_gradient(row))

        def labels(params):
            paths = {}

            def label(path, _):
                name = _path_name(path)
                paths[name] = True
                if name in task_axis:
                    return f"rows:{name}"
                if name in rates:
                    return f"rate:{name}"
                short = name.rsplit("/", 1)[-1]
                return f"rate:{short}" if short in rates else "rate:"

            tree = jax.tree_util.tree_map_with_path(label, params)
            names = set(paths) | {p.rsplit("/", 1)[-1] for p in paths}
            unknown = sorted((set(rates) | set(task_axis)) - names)
            if unknown:
                raise ValueError(
                    f"PromptRecipe.learning_rates / task_axis name {unknown}, but the prompt's "
                    f"parameters are {sorted(paths)}"
                )
            return tree

        tx = optax.multi_transform(transforms, labels)
        if self.max_grad_norm is not None:
            tx = optax.chain(optax.clip_by_global_norm(self.max_grad_norm), tx)
        return tx


#: The rates of MPT's task factors ``U`` (``task_cols``) and ``V`` (``task_rows``) in the MPT
#: stages of the runner and the demo (source and target training); every other parameter
#: keeps the recipe's rate. ``U V`` multiplies ``P``, so at prompt tuning's 0.3 the task
#: prompts grow to RMS 15-61 (and an own-task source run past RMS 10 in 300 steps) and MPT
#: w/o distillation fits its sources to 70.2%; at 0.03, 98.2% (README, "The default run").
#: Change it with ``mpt_recipe.factor_rates``; a recipe that names the factors wins.
MPT_FACTOR_RATES = {"task_cols": 0.03, "task_rows": 0.03}


@gin.configurable(denylist=["recipe"])
def mpt_recipe(
    recipe: PromptRecipe | None = None,
    *,
    factor_rates: Mapping[str, float] = MPT_FACTOR_RATES,
) -> PromptRecipe:
    """The recipe of MPT's prompts: ``recipe`` with the task factors at ``factor_rates``.

    A rate that ``recipe.learning_rates`` already names is kept, so the result is
    ``recipe`` when it names both factors (and applying this twice changes nothing).

    Args:
      recipe: None = the gin-bound :class:`PromptRecipe`.
      factor_rates: rates by parameter name (:data:`MPT_FACTOR_RATES`); gin:
        ``mpt_recipe.factor_rates = {}`` trains the factors at the recipe's rate.
    """
    recipe = PromptRecipe() if recipe is None else recipe
    rates = {**dict(factor_rates), **dict(recipe.learning_rates)}
    return dataclasses.replace(recipe, learning_rates=rates)


def prompt_recipe(prompt: nn.Module, recipe: PromptRecipe | None = None) -> PromptRecipe:
    """The recipe that trains ``prompt``: ``recipe`` (None = the gin-bound
    :class:`PromptRecipe`), with :func:`mpt_recipe`'s factor rates when ``prompt`` is a
    ``MultitaskPrompt`` (MPT's source and target prompts). The T5X runs
    (``mpt_jax.t5x_ext.optim.recipe_optimizer``) pick their recipe with it."""
    recipe = PromptRecipe() if recipe is None else recipe
    return mpt_recipe(recipe) if isinstance(prompt, MultitaskPrompt) else recipe


def make_optimizer(
    recipe: PromptRecipe | None = None, *, task_axis: Collection[str] = ()
) -> optax.GradientTransformation:
    """``recipe.build(task_axis)``; ``recipe`` defaults to the gin-bound :class:`PromptRecipe`."""
    return (PromptRecipe() if recipe is None else recipe).build(task_axis)
