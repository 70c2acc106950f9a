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

gin (see ``configs/runs/prompt_model.gin``)::

    from t5x import adafactor
    from mpt_jax.t5x_ext import optim

    OPTIMIZER = @optim.PlaceholderMultiOptimizer()
    optim.PlaceholderMultiOptimizer.traversals_and_optimizers = (
        (@optim.prompt_traversal(), @adafactor.Adafactor()),)
    adafactor.Adafactor.logical_factor_rules = @optim.logical_factor_rules()
    # which parameters train is one binding:
    optim.prompt_traversal.frozen = ("shared",)        # e.g. freeze P in target adaptation

Another optimizer goes in as a flag, ``--gin.OPTIMIZER=...``: runs/prompt_model.gin
binds ``OPTIMIZER`` after every ``--gin_file`` it is stacked with.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import flax
import gin
import jax.numpy as jnp
from flax import traverse_util
from t5x import adafactor, optimizers

from mpt_jax.t5x_ext.partitioning import PROMPT_AXES


def _components(path: str) -> list[str]:
    return [c for c in path.split("/") if c]


@gin.configurable(module="mpt_jax.t5x_ext.optim")
def prompt_traversal(
    scopes: Sequence[str] = ("prompt",), frozen: Sequence[str] = ()
) -> traverse_util.ModelParamTraversal:
    """A parameter traversal matching every parameter under a prompt scope.

    Args:
      scopes: submodule names whose parameters train (a path matches when one of its
        components equals one of these names).
      frozen: parameter or submodule names inside those scopes that stay frozen, e.g.
        ``("shared",)`` to train only the task factors, or ``("source_prompts",)`` to
        keep ATTEMPT's source pool fixed. Matched by component equality as well.

    Returns:
      A ``flax.traverse_util.ModelParamTraversal`` for ``optimizers.MultiOptimizer``.
    """
    scopes, frozen = tuple(scopes), tuple(frozen)
    if not scopes:
        raise ValueError("prompt_traversal needs at least one scope name, e.g. ('prompt',).")
    for name in scopes + frozen:
        if not name or "/" in name:
            raise ValueError(f"scope/frozen names are single path components; got {name!r}.")

    def is_trainable(path: str, _value: Any) -> bool:
        parts = _components(path)
        return any(p in scopes for p in parts) and not any(p in frozen for p in parts)

    return traverse_util.ModelParamTraversal(is_trainable)


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
