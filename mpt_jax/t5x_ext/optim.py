"""Only prompt parameters train: a T5X ``MultiOptimizer`` over the prompt subtree.

T5X optimizes ``params`` with ``model.optimizer_def``. :class:`PlaceholderMultiOptimizer`
(T5X's ``MultiOptimizer`` with one change, below) with :func:`prompt_traversal` gives
optimizer state (and updates) to the matched parameters only; every other parameter
never changes. A parameter is matched when one of its path components *equals* a name in
``scopes`` (default ``("prompt",)``, the generator's submodule name) — component
equality, not a regular expression over the joined path, so the shared prompt
(``prompt/shared``), the task factors and every composition's parameters are all
matched, and the distillation teachers (``teacher_prompt/...``) are not. (A pattern
such as ``.*/shared_prompt/.*`` needs a component *inside* the path and silently
misses a top-level one; here :func:`matched_paths` lets a test list what is trained.)

Why not T5X's own ``MultiOptimizer``: it gives unmatched parameters ``None`` state.
Orbax (T5X's default checkpoint format) records such a leaf as ``None`` metadata and
writes no array, but T5X's restore turns every non-scalar metadata entry into an array
to read, so resuming any run (and starting a stage from a prompt run's checkpoint) fails
with ``NOT_FOUND: ... state.param_states.<frozen parameter>``. The subclass gives those
parameters a scalar placeholder (:data:`PLACEHOLDER`, float32 zero, never read) instead:
one number per frozen parameter array, written and restored like any other state.
:func:`check_optimizer_states` refuses a checkpoint written with ``None`` states and
says what to do with it (:data:`OLD_CHECKPOINT_ADVICE`).

How the prompt trains is the project's one recipe,
:class:`mpt_jax.training.optimizers.PromptRecipe` (prompt tuning's Adafactor, learning
rates by parameter name), which the runner trains with too: :func:`recipe_optimizer`
builds the T5X optimizer from it, one ``(traversal, ScaledAdafactor)`` pair per
learning-rate group, each T5X Adafactor with the recipe's hyper-parameters and a
multiplier of the scheduler's base rate, :func:`recipe_learning_rate`. An MPT prompt's task
factors train at ``mpt_recipe``'s rates, as in the runner. A recipe option T5X cannot
honour is an error that names it. gin (see ``configs/runs/prompt_model.gin`` and
``prompt_finetune.gin``)::

    from mpt_jax.t5x_ext import optim

    OPTIMIZER = @optim.recipe_optimizer()
    optim.recipe_optimizer.prompt = %PROMPT
    utils.create_learning_rate_scheduler.base_learning_rate = @optim.recipe_learning_rate()
    # which parameters train is one binding:
    optim.prompt_traversal.frozen = ("shared",)        # e.g. freeze P in target adaptation
    # the recipe binds as in the runner:
    PromptRecipe.learning_rate = 0.1

Another optimizer goes in as a flag, ``--gin.OPTIMIZER=...`` (e.g.
``@adafactor.Adafactor()``): runs/prompt_model.gin binds ``OPTIMIZER`` after every
``--gin_file`` it is stacked with.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import flax
import gin
import jax.numpy as jnp
from flax import traverse_util
from t5x import adafactor, optimizers

from mpt_jax.t5x_ext.partitioning import PROMPT_AXES
from mpt_jax.training import optimizers as recipes
from mpt_jax.training.optimizers import PromptRecipe, prompt_recipe


def _components(path: str) -> list[str]:
    return [c for c in path.split("/") if c]


class PromptTraversal(traverse_util.ModelParamTraversal):
    """The parameters under a prompt scope, less the frozen ones (see :func:`prompt_traversal`).

    A path matches when one of its components equals a name in ``scopes`` and none equals
    a name in ``frozen``; with ``where``, also only when ``where(relative path)`` holds,
    the relative path being the components after the first scope component (``"shared"``,
    ``"sub/task_rows"``: the paths :meth:`PromptRecipe.rate` takes).

    Attributes:
      scopes, frozen: as for :func:`prompt_traversal` (tuples).
      where: a predicate of the relative path, or None (every prompt parameter).
      group: what ``where`` selects, for messages (:func:`recipe_optimizer`: the
        ``PromptRecipe.learning_rates`` name, or ``""`` for the rest); a traversal with a
        ``group`` that matches no parameter is an error when the optimizer is initialised.
    """

    def __init__(
        self,
        scopes: Sequence[str] = ("prompt",),
        frozen: Sequence[str] = (),
        where: Callable[[str], bool] | None = None,
        group: str | None = None,
    ):
        self.scopes, self.frozen = tuple(scopes), tuple(frozen)
        if not self.scopes:
            raise ValueError("prompt_traversal needs at least one scope name, e.g. ('prompt',).")
        for name in self.scopes + self.frozen:
            if not name or "/" in name:
                raise ValueError(f"scope/frozen names are single path components; got {name!r}.")
        self.where, self.group = where, group
        super().__init__(self._matches)

    def relative(self, path: str) -> str | None:
        """``path`` below its first scope component (None: not under a prompt scope)."""
        parts = _components(path)
        for i, part in enumerate(parts):
            if part in self.scopes:
                return "/".join(parts[i + 1 :])
        return None

    def _matches(self, path: str, _value: Any) -> bool:
        relative = self.relative(path)
        if relative is None or any(p in self.frozen for p in _components(path)):
            return False
        return self.where is None or self.where(relative)

    def restrict(self, where: Callable[[str], bool], group: str) -> PromptTraversal:
        """This traversal, further restricted to relative paths where ``where`` holds."""
        return PromptTraversal(self.scopes, self.frozen, where, group)


@gin.configurable(module="mpt_jax.t5x_ext.optim")
def prompt_traversal(
    scopes: Sequence[str] = ("prompt",), frozen: Sequence[str] = ()
) -> PromptTraversal:
    """A parameter traversal matching every parameter under a prompt scope.

    Args:
      scopes: submodule names whose parameters train (a path matches when one of its
        components equals one of these names).
      frozen: parameter or submodule names inside those scopes that stay frozen, e.g.
        ``("shared",)`` to train only the task factors, or ``("source_prompts",)`` to
        keep ATTEMPT's source pool fixed. Matched by component equality as well.

    Returns:
      A :class:`PromptTraversal` (a ``flax.traverse_util.ModelParamTraversal``) for
      ``optimizers.MultiOptimizer``.
    """
    return PromptTraversal(scopes, frozen)


def matched_paths(
    params: Mapping[str, Any], traversal: traverse_util.ModelParamTraversal | None = None
) -> list[str]:
    """``a/b/c`` paths of the parameters that ``traversal`` (default: prompts) matches."""
    traversal = prompt_traversal() if traversal is None else traversal
    flat = traverse_util.flatten_dict(_unfreeze(params), sep="/")
    marked = traverse_util.unflatten_dict({tuple(k.split("/")): k for k in flat})
    return sorted(traversal.iterate(marked))


def _unfreeze(tree: Any) -> Any:
    if isinstance(tree, Mapping):
        return {k: _unfreeze(v) for k, v in tree.items()}
    return tree


#: The optimizer state of a parameter no traversal trains (a float32 zero; never read).
PLACEHOLDER = jnp.zeros((), jnp.float32)


def with_placeholders(params: Any, param_states: Any) -> Any:
    """``param_states`` with :data:`PLACEHOLDER` where a parameter's state is ``None``.

    Args:
      params: the parameter tree (nested dicts, frozen or not).
      param_states: ``MultiOptimizer`` state, the same tree with each parameter's
        optimizer state at its leaf (``None`` for parameters no traversal matched).

    Returns:
      The same state, frozen if ``param_states`` was; only parameter-level ``None``
      entries are replaced (a sub-optimizer's own ``None`` fields stay).
    """
    is_frozen = isinstance(param_states, flax.core.FrozenDict)
    states = flax.core.unfreeze(param_states)
    for path in traverse_util.flatten_dict(flax.core.unfreeze(params)):
        node = states
        for key in path[:-1]:
            node = node[key]
        if node[path[-1]] is None:
            node[path[-1]] = PLACEHOLDER
    return flax.core.freeze(states) if is_frozen else states


class PlaceholderMultiOptimizer(optimizers.MultiOptimizer):
    """T5X's ``MultiOptimizer``; parameters it does not train hold :data:`PLACEHOLDER`.

    T5X's class gives them ``None`` state, which its Orbax restore cannot read back (see
    the module docstring). Everything else — traversals, sub-optimizers, updates,
    factor rules — is T5X's. The placeholders' logical axes are ``None`` (replicated),
    as T5X's Adafactor gives its own ``[1]``-shaped placeholders.

    Args:
      traversals_and_optimizers: pairs ``(flax.traverse_util.Traversal, OptimizerDef)``
        as for ``t5x.optimizers.MultiOptimizer``.
    """

    def init_state(self, params):
        unknown = [
            t.group for t in self.traversals
            if getattr(t, "group", None)  # a learning_rates name ("" is the rest)
            and not matched_paths(params, PromptTraversal(t.scopes, (), t.where))
        ]  # fmt: skip
        if unknown:
            every = matched_paths(params, PromptTraversal(self.traversals[0].scopes))
            raise ValueError(
                f"PromptRecipe.learning_rates names {unknown}, but no prompt parameter has "
                f"that name or path; the prompt's parameters are {every}"
            )
        state = super().init_state(params)
        return state.replace(param_states=with_placeholders(params, state.param_states))

    def apply_gradient(self, hyper_params, params, state, grads):
        new_params, new_state = super().apply_gradient(hyper_params, params, state, grads)
        return new_params, new_state.replace(
            param_states=with_placeholders(params, new_state.param_states)
        )


#: What to do with a checkpoint whose frozen parameters have ``None`` optimizer state.
OLD_CHECKPOINT_ADVICE = (
    "Start a new run from it instead of resuming: --gin.MODEL_DIR=<new dir> "
    "--gin.INITIAL_CHECKPOINT_PATH=<that checkpoint_N> and "
    "--gin.utils.RestoreCheckpointConfig.assignment_map=\"((r'state/param_states/.*', None),)\" "
    "(parameters and step come back; the optimizer's moments start afresh). Starting a "
    "stage (runs/teacher|source|target.gin) from such a checkpoint needs nothing: those "
    "runs never restore optimizer states."
)


def _is_none_entry(value: Any) -> bool:
    """``None`` in a legacy checkpoint, or Orbax metadata recording a ``None`` leaf."""
    return value is None or getattr(value, "value_type", None) == "None"


@gin.configurable(module="mpt_jax.t5x_ext.optim")
def check_optimizer_states(
    ckpt_state: Mapping[str, Any], state: Mapping[str, Any], is_resuming: bool = False
) -> Mapping[str, Any]:
    """A T5X restore transformation: refuses checkpoints with ``None`` optimizer states.

    T5X passes the checkpoint's state dict (Orbax: its metadata tree) through every
    ``utils.RestoreCheckpointConfig.state_transformation_fns`` entry (after the
    ``assignment_map``) before reading it. A checkpoint written with T5X's own
    ``MultiOptimizer`` holds ``None`` for every frozen parameter, which T5X's Orbax
    restore then fails to read with a bare ``NOT_FOUND``; this names the cause and the
    way out (:data:`OLD_CHECKPOINT_ADVICE`) first. gin (``runs/prompt_model.gin``)::

        utils.RestoreCheckpointConfig.state_transformation_fns = \
            [@optim.check_optimizer_states]

    Args:
      ckpt_state: the checkpoint's state dict after the assignment map.
      state: the state dict of the run's train state (what will be restored into).
      is_resuming: set by T5X when the run resumes from its own ``MODEL_DIR``.

    Returns:
      ``ckpt_state`` unchanged.

    Raises:
      ValueError: naming the parameters whose state is ``None`` in the checkpoint but
        an array in the run (only those would be read).
    """
    del is_resuming  # the same either way
    flat_ckpt = traverse_util.flatten_dict(_unfreeze(ckpt_state), sep="/")
    flat_state = traverse_util.flatten_dict(_unfreeze(state), sep="/")
    missing = sorted(
        k for k, v in flat_ckpt.items()
        if _is_none_entry(v) and flat_state.get(k) is not None
    )  # fmt: skip
    if missing:
        raise ValueError(
            f"the checkpoint holds no optimizer state for {len(missing)} parameters "
            f"(e.g. {missing[:3]}): it was written with T5X's optimizers.MultiOptimizer, "
            "which gives frozen parameters None state, and T5X cannot restore those from "
            "Orbax checkpoints. " + OLD_CHECKPOINT_ADVICE
        )
    return ckpt_state


@gin.configurable(module="mpt_jax.t5x_ext.optim")
def logical_factor_rules(extra_unfactored: Iterable[str] = ()) -> Mapping[str, Any]:
    """T5X Adafactor's factor rules plus ``NONE`` (not factored) for every prompt axis.

    Adafactor looks every logical axis name up in its rules and fails on an unknown one;
    prompt parameters are small, so their second moments are kept in full.
    """
    rules = dict(adafactor.standard_logical_factor_rules())
    for name in tuple(PROMPT_AXES) + tuple(extra_unfactored):
        rules[name] = adafactor.FactorDim.NONE
    return rules


# -- the recipe: mpt_jax.training.optimizers.PromptRecipe as a T5X optimizer ------------


class ScaledAdafactor(adafactor.Adafactor):
    """T5X's ``Adafactor`` at ``learning_rate_multiplier`` times the rate T5X passes it.

    T5X passes one learning rate, the scheduler's, to every sub-optimizer of a
    ``MultiOptimizer`` (``Optimizer.apply_gradient(grads, learning_rate=...)`` replaces
    ``learning_rate`` in each one's hyper-parameters); a parameter group with its own rate
    multiplies it here, so the rate of the group is ``multiplier · scheduler rate`` at
    every step (under a warm-up or decay too). Everything else is T5X's Adafactor.
    """

    def __init__(self, *args, learning_rate_multiplier: float = 1.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.learning_rate_multiplier = float(learning_rate_multiplier)

    def apply_gradient(self, hyper_params, params, state, grads):
        if self.learning_rate_multiplier != 1.0:
            hyper_params = hyper_params.replace(
                learning_rate=hyper_params.learning_rate * self.learning_rate_multiplier
            )
        return super().apply_gradient(hyper_params, params, state, grads)

    def __eq__(self, other: Any) -> bool:
        return super().__eq__(other) and self.learning_rate_multiplier == getattr(
            other, "learning_rate_multiplier", 1.0
        )

    def __hash__(self) -> int:
        return id(self)


def _refuse(option: str, why: str) -> ValueError:
    return ValueError(
        f"the T5X runs cannot honour {option}: {why}. Change the recipe, or bind a T5X "
        "optimizer yourself with --gin.OPTIMIZER=... (see runs/prompt_model.gin)."
    )


def _check_recipe(recipe: PromptRecipe) -> None:
    """Raises for a recipe option T5X's Adafactor (as :func:`recipe_optimizer` builds it)
    cannot apply, naming the option."""
    if not isinstance(recipe.optimizer, recipes.Adafactor):
        raise _refuse(
            f"PromptRecipe.optimizer = {recipe.optimizer!r}",
            "recipe_optimizer builds T5X's Adafactor only",
        )
    if recipe.optimizer.factored:
        raise _refuse(
            "Adafactor.factored = True",
            "T5X's Adafactor factors by logical axis rules, which keep every prompt axis "
            "unfactored (optim.logical_factor_rules), so prompts would silently train "
            "unfactored",
        )
    if recipe.schedule is not None:
        raise _refuse(
            f"PromptRecipe.schedule = {recipe.schedule!r}",
            "T5X's runs take their schedule from utils.create_learning_rate_scheduler "
            "(runs/prompt_finetune.gin: factors = 'constant'); bind its factors / "
            "warmup_steps there and leave PromptRecipe.schedule unset",
        )


def _groups(recipe: PromptRecipe) -> list[tuple[str, float]]:
    """``(learning_rates name or "", rate)`` per parameter group, the rest first."""
    return [("", recipe.learning_rate), *recipe.learning_rates]


@gin.configurable(module="mpt_jax.t5x_ext.optim")
def recipe_optimizer(
    recipe: PromptRecipe | None = None,
    prompt: Any = None,
    traversal: PromptTraversal | None = None,
) -> PlaceholderMultiOptimizer:
    """The T5X optimizer of a prompt run: the project's :class:`PromptRecipe`, as T5X runs it.

    One ``(traversal, ScaledAdafactor)`` pair per learning-rate group of the recipe: the
    prompt parameters no ``learning_rates`` entry names, then one group per entry
    (:meth:`PromptRecipe.rate_key`: full path below the prompt scope, else last
    component). Each Adafactor's hyper-parameters are the recipe's :class:`Adafactor`
    (``decay_rate``, ``weight_decay``, ``multiply_by_parameter_scale``,
    ``clipping_threshold``; ``factored`` off), and each group's multiplier is its rate over
    ``recipe.learning_rate``, which is the scheduler's base rate
    (:func:`recipe_learning_rate`), so every parameter trains at ``recipe.rate(path)``.
    ``recipe.max_grad_norm`` becomes Adafactor's ``global_norm_clip_threshold`` (the norm
    over every trained parameter, as the runner's) when there is one group.

    Where T5X's Adafactor differs from the runner's optax transform by design (the first
    step is the same, ``Δθ = -(rate · sign g + wd · θ)`` where no gradient entry is 0;
    without a task axis every step is: ``tests/test_optimizers.py``):

    - the runner optimises a task-axis parameter (``task_cols``, ``task_prompts``, ...)
      row by row, so its update clipping is per task row, and a row whose task is absent
      from a batch keeps its value and state (no weight decay, no moment decay, no step
      count); here clipping is per parameter array and every row decays every step;
    - the second-moment decay ``1 - t^-0.8`` counts T5X's global step, which a stage
      inherits from the checkpoint it starts from (prompt tuning's T5X recipe too,
      ``step_offset = 0``), while the runner's count starts at each stage; at a late step
      the decay is near 1 from the start, and the update clipping keeps the step's RMS at
      the rate.

    Args:
      recipe: None = the gin-bound ``PromptRecipe()``, e.g.
        ``--gin.PromptRecipe.learning_rate=0.1``.
      prompt: the run's prompt module (gin: ``%PROMPT``); a ``MultitaskPrompt`` trains its
        task factors at :func:`~mpt_jax.training.optimizers.mpt_recipe`'s rates, as in the
        runner (:func:`~mpt_jax.training.optimizers.prompt_recipe`).
      traversal: which parameters train (None: the gin-bound :func:`prompt_traversal`).

    Raises:
      ValueError: naming a recipe option that T5X cannot honour (AdamW, ``factored``, a
        ``schedule``, ``max_grad_norm`` with several rate groups).
    """
    recipe = prompt_recipe(prompt, recipe)
    _check_recipe(recipe)
    traversal = prompt_traversal() if traversal is None else traversal
    groups = _groups(recipe)
    if recipe.max_grad_norm is not None and len(groups) > 1:
        raise _refuse(
            f"PromptRecipe.max_grad_norm = {recipe.max_grad_norm} with learning_rates "
            f"{dict(recipe.learning_rates)}",
            "T5X's Adafactor clips the norm of its own parameter group, not of all of them",
        )
    ada = recipe.optimizer
    pairs = []
    for name, rate in groups:
        where = functools.partial(lambda key, rel: recipe.rate_key(rel) == key, name or None)
        pairs.append((
            traversal.restrict(where, name),
            ScaledAdafactor(
                factored=False,
                decay_rate=ada.decay_rate,
                step_offset=0,
                multiply_by_parameter_scale=ada.multiply_by_parameter_scale,
                clipping_threshold=ada.clipping_threshold,
                weight_decay_rate=ada.weight_decay or None,
                global_norm_clip_threshold=recipe.max_grad_norm,
                logical_factor_rules=logical_factor_rules(),
                learning_rate_multiplier=rate / recipe.learning_rate,
            ),
        ))  # fmt: skip
    return PlaceholderMultiOptimizer(tuple(pairs))


@gin.configurable(module="mpt_jax.t5x_ext.optim")
def recipe_learning_rate(recipe: PromptRecipe | None = None) -> float:
    """The scheduler's base rate: ``recipe.learning_rate`` (gin, runs/prompt_finetune.gin:
    ``utils.create_learning_rate_scheduler.base_learning_rate = @optim.recipe_learning_rate()``).

    Raises ``ValueError`` for a recipe T5X cannot honour (see :func:`recipe_optimizer`).
    """
    recipe = PromptRecipe() if recipe is None else recipe
    _check_recipe(recipe)
    return recipe.learning_rate
