"""Only prompt parameters train: a T5X ``MultiOptimizer`` over the prompt subtree.

T5X optimizes ``params`` with ``model.optimizer_def``. Wrapping the optimizer in a
``MultiOptimizer`` with :func:`prompt_traversal` gives optimizer state (and updates) to
the matched parameters only; every other parameter keeps ``None`` state and never
changes. A parameter is matched when one of its path components *equals* a name in
``scopes`` (default ``("prompt",)``, the generator's submodule name) — component
equality, not a regular expression over the joined path, so the shared prompt
(``prompt/shared``), the task factors and every composition's parameters are all
matched, and the distillation teachers (``teacher_prompt/...``) are not. (A pattern
such as ``.*/shared_prompt/.*`` needs a component *inside* the path and silently
misses a top-level one; here :func:`matched_paths` lets a test list what is trained.)

gin (see ``configs/runs/prompt_tuning.gin``)::

    from t5x import adafactor
    from t5x import optimizers
    from mpt_jax.t5x_ext import optim

    OPTIMIZER = @optimizers.MultiOptimizer()
    optimizers.MultiOptimizer.traversals_and_optimizers = (
        (@optim.prompt_traversal(), @adafactor.Adafactor()),)
    adafactor.Adafactor.logical_factor_rules = @optim.logical_factor_rules()
    # which parameters train is one binding:
    optim.prompt_traversal.frozen = ("shared",)        # e.g. freeze P in target adaptation
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import gin
from flax import traverse_util
from t5x import adafactor

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
