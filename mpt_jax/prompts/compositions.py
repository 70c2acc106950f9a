"""Compositions: how a shared prompt and a task part combine, as pure functions and objects.

Two layers, one idea each:

- **pure functions** (``hadamard``, ``add``, ``concat``, ``weighted``, ``gated``,
  ``attention``, …): array math without parameters, each tested against its formula;
- **composition objects** (``Hadamard()``, ``Add()``, ``Concat()``, ``Weighted()``,
  ``Gated()``, ``Attention(pool_size=…)``): small frozen dataclasses that a generator of
  :mod:`mpt_jax.prompts.generators` is given (gin: ``@compositions.Gated()``). Each owns
  its combine function, its own parameters (with logical axis names), the prompt length
  it produces and the initialisers that start the task part well. They are hashable,
  comparable and describe themselves with :meth:`Composition.record`.

The functions' shared signature is ``fn(shared, task, *extra) -> prompt`` where

- ``shared``: float ``[batch, Ls, embed]`` (or ``[Ls, embed]``, broadcast over batch),
- ``task``:   float ``[batch, Lt, embed]``,
- the result: float ``[batch, L', embed]``; ``L' = Ls = Lt`` except for :func:`concat`
  (``L' = Ls + Lt``).

Written out (``k`` is the example's task)::

    hadamard:  P_k = S * T_k                              (MPT: T_k = U_k V_k)
    add:       P_k = S + T_k
    concat:    P_k = [S ; T_k]                            (along the length axis)
    weighted:  P_k = (1 - w_k) S + w_k T_k                (w_k in [0, 1], one per task)
    gated:     g   = sigmoid(S·a + T_k·b + c)             (one gate per position)
               P_k = g * S + (1 - g) * T_k
    attention: a   = softmax(keys · q / temperature)      (ATTEMPT, Asai et al. 2022)
               P   = T_k + sum_j a_j pool_j + a_own T_k   (pool of source prompts + T_k)

Adding a composition is one module plus its test: subclass :class:`Composition` and
decorate it with :func:`register` (an example: :mod:`mpt_jax.prompts.dept`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, NamedTuple

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np

from mpt_jax.prompts import initializers as inits

Array = jax.Array
Initializer = inits.Initializer


def _batched(shared: Array, task: Array) -> Array:
    """Broadcasts ``shared`` ``[Ls, D]`` or ``[B, Ls, D]`` to ``[B, Ls, D]``."""
    if shared.ndim == task.ndim - 1:
        shared = shared[None]
    return jnp.broadcast_to(shared, (task.shape[0],) + shared.shape[1:])


def hadamard(shared: Array, task: Array) -> Array:
    """MPT's composition ``S * T_k`` (elementwise).

    Args:
      shared: ``[batch, L, embed]`` or ``[L, embed]``.
      task: ``[batch, L, embed]``; for MPT ``T_k = U_k V_k``.

    Returns:
      ``[batch, L, embed]``.
    """
    return shared * task


def add(shared: Array, task: Array) -> Array:
    """``S + T_k``. Shapes as :func:`hadamard`."""
    return shared + task


def concat(shared: Array, task: Array) -> Array:
    """``[S ; T_k]`` along the length axis.

    Args:
      shared: ``[batch, Ls, embed]`` or ``[Ls, embed]``.
      task: ``[batch, Lt, embed]``.

    Returns:
      ``[batch, Ls + Lt, embed]`` (shared positions first).
    """
    return jnp.concatenate([_batched(shared, task), task], axis=-2)


def weighted(shared: Array, task: Array, weight: Array) -> Array:
    """Convex mixture ``(1 - w) S + w T_k``.

    Args:
      shared: ``[batch, L, embed]`` or ``[L, embed]``.
      task: ``[batch, L, embed]``.
      weight: ``[batch]`` mixing weights (the example's task weight), normally in [0, 1].

    Returns:
      ``[batch, L, embed]``.
    """
    w = weight[:, None, None]
    return (1.0 - w) * shared + w * task


def gate_values(shared: Array, task: Array, kernel: Array, bias: Array) -> Array:
    """Per-position gate ``g = sigmoid(S·a + T_k·b + c)``.

    Args:
      shared: ``[batch, L, embed]`` or ``[L, embed]``.
      task: ``[batch, L, embed]``.
      kernel: ``[2, embed]``: row 0 is ``a`` (reads the shared prompt), row 1 ``b``.
      bias: ``[]`` scalar ``c``.

    Returns:
      ``[batch, L, 1]`` gates in (0, 1).
    """
    logits = _batched(shared, task) @ kernel[0] + task @ kernel[1] + bias
    return jax.nn.sigmoid(logits)[..., None]


def gated(shared: Array, task: Array, kernel: Array, bias: Array) -> Array:
    """Gated mixture ``g * S + (1 - g) * T_k`` with ``g`` from :func:`gate_values`.

    The gate parameters are the same for every task, so one compiled step serves
    every task (the task only enters through ``T_k``).

    Returns:
      ``[batch, L, embed]``.
    """
    g = gate_values(shared, task, kernel, bias)
    return g * shared + (1.0 - g) * task


def masked_max_pool(x: Array, mask: Array | None = None) -> Array:
    """Max over the length axis, ignoring masked-out positions.

    Args:
      x: ``[..., length, embed]``.
      mask: ``[..., length]`` (1/True = real position) or ``None`` (all positions).

    Returns:
      ``[..., embed]``. A row with no valid position gives zeros (not ``-inf``).
    """
    if mask is None:
        return jnp.max(x, axis=-2)
    valid = mask.astype(bool)[..., None]
    pooled = jnp.max(jnp.where(valid, x, -jnp.inf), axis=-2)
    return jnp.where(jnp.any(valid, axis=-2), pooled, 0.0)


def attention_weights(query: Array, keys: Array, temperature: float | Array) -> Array:
    """Softmax attention weights over a pool of prompts.

    Args:
      query: ``[batch, embed]`` (ATTEMPT: projected max-pooled input).
      keys: ``[batch, pool, embed]`` or ``[pool, embed]`` (max-pooled prompts).
      temperature: positive scalar; larger is flatter.

    Returns:
      ``[batch, pool]`` weights summing to 1 over ``pool``.
    """
    if keys.ndim == 2:
        scores = jnp.einsum("bd,kd->bk", query, keys)
    else:
        scores = jnp.einsum("bd,bkd->bk", query, keys)
    return jax.nn.softmax(scores / temperature, axis=-1)


def attention(pool: Array, task: Array, weights: Array) -> Array:
    """ATTEMPT's instance prompt ``T_k + sum_j a_j pool_j + a_own T_k``.

    The attention runs over the pool of source prompts followed by the example's
    own task prompt, and the result is added to the task prompt.

    Args:
      pool: ``[pool, L, embed]`` source prompts (the same for every example).
      task: ``[batch, L, embed]`` the example's task prompt ``T_k``.
      weights: ``[batch, pool + 1]`` from :func:`attention_weights`; the last
        column weighs ``T_k`` itself.

    Returns:
      ``[batch, L, embed]``.
    """
    mixed = jnp.einsum("bk,kld->bld", weights[:, :-1], pool)
    return task + mixed + weights[:, -1, None, None] * task


def low_rank(cols: Array, rows: Array) -> Array:
    """Task matrices ``W = U V`` from their factors.

    Args:
      cols: ``[..., L, rank]`` (``U``).
      rows: ``[..., rank, embed]`` (``V``).

    Returns:
      ``[..., L, embed]``.
    """
    return jnp.matmul(cols, rows)


# --- composition objects ----------------------------------------------------------------
#
# A generator holds a base prompt ``S`` and a table of parts ``T_k`` (one per task, or per
# group); the composition object it is given says how they combine.


def check_positive(owner: str, **values: int | None) -> None:
    """Raises ``ValueError`` naming ``owner`` and the value if one is not a positive int."""
    for name, value in values.items():
        if value is not None and (not isinstance(value, int | np.integer) or value < 1):
            raise ValueError(f"{owner}: {name} must be a positive integer, got {value!r}")


def param(module: nn.Module, name: str, init: Initializer, shape, axes, dtype) -> Array:
    """Parameter ``name`` of ``module`` with logical axis names ``axes`` (one per dimension)."""
    return module.param(name, nn.with_logical_partitioning(init, axes), tuple(shape), dtype)


class PartInits(NamedTuple):
    """Initialisers of a part table: ``full`` for ``[num, L, embed]`` tables, ``cols``
    ``[num, L, rank]`` and ``rows`` ``[num, rank, embed]`` for low-rank factors."""

    full: Initializer
    cols: Initializer
    rows: Initializer


class Inputs(NamedTuple):
    """The example inputs a composition may read: ``embedded`` ``[batch, S, embed]`` and
    ``mask`` ``[batch, S]`` (1 = real token); either may be ``None``."""

    embedded: Array | None = None
    mask: Array | None = None


@dataclasses.dataclass(frozen=True)
class Site:
    """Where a composition runs: the generator that owns the parameters, and the level.

    Attributes:
      module: the generator, inside its ``nn.compact`` call; parameters are made on it.
      level: ``"task"`` or ``"group"``, the prefix of per-part parameters (``task_weights``).
      axis: logical axis name of the part table (``"tasks"`` or ``"groups"``).
      num: number of parts (``T`` or ``G``).
      scope: prefix of the composition's part-independent parameters: ``""`` in a
        generator with one composition (``gate_kernel``), ``"task_"`` / ``"group_"`` in
        one with two (``group_gate_kernel``).
      base_init: the generator's initialiser of its base prompt.
      dtype: parameter dtype.
    """

    module: nn.Module
    level: str
    axis: str
    num: int
    scope: str
    base_init: Initializer
    dtype: Any

    def param(self, name: str, init: Initializer, shape, axes) -> Array:
        """A parameter of the generator (see :func:`param`)."""
        return param(self.module, name, init, shape, axes, self.dtype)


@dataclasses.dataclass(frozen=True)
class Composition:
    """How a base prompt ``S`` and an example's part ``T_k`` combine (abstract).

    A subclass sets ``name`` (its word in errors and in older gin files), declares its
    settings as fields, implements :meth:`__call__` and, where the defaults do not fit,
    :meth:`prompt_length`, :meth:`check_lengths` and :meth:`part_inits`.

    Class attributes:
      name: registry name, e.g. ``"hadamard"``.
      uses_base: ``False`` when the composition brings its own base (``attention``'s
        pool), so the generator makes no ``shared`` parameter.
    """

    name: ClassVar[str] = ""
    uses_base: ClassVar[bool] = True

    def __call__(self, site: Site, base: Array | None, part: Array, ids: Array, inputs: Inputs):
        """The prompt ``[batch, prompt_length, embed]``, or a ``(prompt, input_delta)``
        pair whose ``input_delta`` ``[batch, S, embed]`` is added to the embedded inputs.

        Args:
          site: where to make this composition's own parameters.
          base: ``[Lb, embed]`` or ``[batch, Lb, embed]`` (``None`` if not ``uses_base``).
          part: ``[batch, Lp, embed]``, each example's part.
          ids: ``[batch]`` int32 part ids (rows of ``site``'s table).
          inputs: the example inputs.
        """
        raise NotImplementedError

    def prompt_length(self, base_length: int, part_length: int) -> int:
        """Length of the combined prompt."""
        del part_length
        return base_length

    def check_lengths(self, base_length: int, part_length: int) -> None:
        """Raises ``ValueError`` unless the composition can combine these lengths."""
        if base_length != part_length:
            raise ValueError(
                f"composition {self.name!r} needs equal lengths, got shared length "
                f"{base_length} and task length {part_length} (only 'concat' allows them "
                "to differ)"
            )

    def part_inits(self, rank: int | None) -> PartInits:
        """Initialisers that start the part well: here a prompt in its own right,
        ``uniform(0.5)`` (low rank: ``U ~ N(0, 1/r)``, ``V ~ uniform(0.5)``, whose product
        has the variance of ``uniform(0.5)``)."""
        scale = 1.0 / float(np.sqrt(rank or 1))
        return PartInits(inits.uniform(0.5), inits.normal(scale), inits.uniform(0.5))

    def record(self) -> dict[str, Any]:
        """``{"class": ClassName, field: value, ...}``: a stable, JSON-ready description."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {"class": type(self).__name__, **fields}


_REGISTRY: dict[str, type[Composition]] = {}


def register(cls: type[Composition]) -> type[Composition]:
    """Class decorator: makes a :class:`Composition` known by its ``name`` (for strings)
    and to gin as ``compositions.<ClassName>``."""
    if not (isinstance(cls, type) and issubclass(cls, Composition)) or not cls.name:
        raise TypeError(f"register expects a Composition subclass with a name, got {cls!r}")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"composition name {cls.name!r} is taken by {_REGISTRY[cls.name]}")
    _REGISTRY[cls.name] = cls
    return gin.configurable(cls, module="compositions")


def known() -> tuple[str, ...]:
    """The names of the registered compositions."""
    return tuple(_REGISTRY)


def resolve(composition: Composition | str) -> Composition:
    """The composition object for an object or a registered name (``"gated"``).

    Raises:
      ValueError: an unknown name (the error lists the known ones), or a name whose
        composition has required settings (bind the object instead).
    """
    if isinstance(composition, Composition):
        return composition
    if not isinstance(composition, str) or composition not in _REGISTRY:
        raise ValueError(f"unknown composition {composition!r}; expected one of {known()}")
    cls = _REGISTRY[composition]
    try:
        return cls()
    except TypeError:
        required = [
            f.name
            for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ]
        raise ValueError(
            f"composition {composition!r} has required settings {required}; bind the object, "
            f"e.g. @compositions.{cls.__name__}() with compositions.{cls.__name__}.{required[0]} "
            "in gin"
        ) from None


@register
@dataclasses.dataclass(frozen=True)
class Hadamard(Composition):
    """MPT's ``P_k = S * T_k`` (:func:`hadamard`). The part starts ≈ 1 (full:
    ``1 + N(0, 0.01)``; low rank: ``U V ≈ 1``), so the prompt starts at ``S``."""

    name: ClassVar[str] = "hadamard"

    def part_inits(self, rank: int | None) -> PartInits:
        del rank
        return PartInits(
            inits.constant(1.0, 1e-2), inits.ones_factor_cols(), inits.ones_factor_rows()
        )

    def __call__(self, site, base, part, ids, inputs):
        return hadamard(base, part)


@register
@dataclasses.dataclass(frozen=True)
class Add(Composition):
    """``P_k = S + T_k`` (:func:`add`). The part starts at 0 (low rank: ``U ~ N(0, 1/r)``,
    ``V = 0``, so ``V`` receives gradient at once), so the prompt starts at ``S``."""

    name: ClassVar[str] = "add"

    def part_inits(self, rank: int | None) -> PartInits:
        scale = 1.0 / float(np.sqrt(rank or 1))
        return PartInits(inits.constant(0.0), inits.normal(scale), inits.constant(0.0))

    def __call__(self, site, base, part, ids, inputs):
        return add(base, part)


@register
@dataclasses.dataclass(frozen=True)
class Concat(Composition):
    """``P_k = [S ; T_k]`` (:func:`concat`): length ``Ls + Lt``, the only composition
    whose parts may differ in length."""

    name: ClassVar[str] = "concat"

    def prompt_length(self, base_length: int, part_length: int) -> int:
        return base_length + part_length

    def check_lengths(self, base_length: int, part_length: int) -> None:
        del base_length, part_length

    def __call__(self, site, base, part, ids, inputs):
        return concat(base, part)


@register
@dataclasses.dataclass(frozen=True)
class Weighted(Composition):
    """``P_k = (1 - w_k) S + w_k T_k`` (:func:`weighted`), ``w_k = sigmoid(logit_k)``.

    Parameter ``{level}_weights`` ``[num]`` (axis ``tasks`` / ``groups``): the logits,
    starting at 0 (``w = 0.5``).
    """

    name: ClassVar[str] = "weighted"

    def __call__(self, site, base, part, ids, inputs):
        logits = site.param(f"{site.level}_weights", inits.constant(0.0), (site.num,), (site.axis,))
        return weighted(base, part, jax.nn.sigmoid(logits[ids]))


@register
@dataclasses.dataclass(frozen=True)
class Gated(Composition):
    """``P_k = g S + (1 - g) T_k`` with a per-position gate ``g = sigmoid(S·a + T_k·b + c)``
    (:func:`gated`).

    Parameters ``{scope}gate_kernel`` ``[2, embed]`` (axes ``gate, embed``) and
    ``{scope}gate_bias`` ``[]``, shared by all parts, starting at 0 (``g = 0.5``).
    """

    name: ClassVar[str] = "gated"

    def __call__(self, site, base, part, ids, inputs):
        dim = part.shape[-1]
        zero = inits.constant(0.0)
        kernel = site.param(f"{site.scope}gate_kernel", zero, (2, dim), ("gate", "embed"))
        bias = site.param(f"{site.scope}gate_bias", zero, (), ())
        return gated(base, part, kernel, bias)


@register
@dataclasses.dataclass(frozen=True)
class Attention(Composition):
    """ATTEMPT (Asai et al. 2022): an input-adaptive mixture of a pool of source prompts.

    The base is a pool ``source_prompts`` ``[pool_size, L, embed]`` (axes ``pool, prompt,
    embed``; drawn with the generator's base initialiser; there is no ``shared``). The
    query is the max-pool of the example's embedded input over its real positions,
    projected by ``attn_down`` (embed → ``hidden``), SiLU, ``attn_up`` (→ embed) and a
    layer norm ``attn_norm``; the keys are the max-pooled pool prompts and the example's
    part; softmax with ``temperature`` (``None``: ``sqrt(embed)``) over the pool plus
    ``T_k``; the mixture is added to ``T_k`` (:func:`attention`). ATTEMPT keeps the pool
    frozen: leave ``source_prompts`` out of the trainable set to do so.

    gin::

        prompts.ComposedPrompt.composition = @compositions.Attention()
        compositions.Attention.pool_size = 6

    Attributes:
      pool_size: number of source prompts.
      hidden: width of the query projection.
      temperature: softmax temperature; ``None`` means ``sqrt(embed)``.
    """

    name: ClassVar[str] = "attention"
    uses_base: ClassVar[bool] = False

    pool_size: int
    hidden: int = 64
    temperature: float | None = None

    def __post_init__(self):
        check_positive("Attention", pool_size=self.pool_size, hidden=self.hidden)
        if self.temperature is not None and not self.temperature > 0:
            raise ValueError(f"Attention: temperature must be positive, got {self.temperature}")

    def __call__(self, site, base, part, ids, inputs):
        if inputs.embedded is None:
            raise ValueError(
                "the attention composition reads the input: embedded_inputs must be given"
            )
        batch, length, dim = part.shape
        dtype = site.dtype
        pool = site.param(
            "source_prompts", site.base_init, (self.pool_size, length, dim),
            ("pool", "prompt", "embed"),
        )  # fmt: skip
        x = masked_max_pool(inputs.embedded.astype(dtype), inputs.mask)  # [B, D]
        dense = nn.initializers.lecun_normal()
        zeros = nn.initializers.zeros_init()
        h = nn.Dense(
            self.hidden, name="attn_down", param_dtype=dtype, parent=site.module,
            kernel_init=nn.with_logical_partitioning(dense, ("embed", "hidden")),
            bias_init=nn.with_logical_partitioning(zeros, ("hidden",)),
        )(x)  # fmt: skip
        h = nn.Dense(
            dim, name="attn_up", param_dtype=dtype, parent=site.module,
            kernel_init=nn.with_logical_partitioning(dense, ("hidden", "embed")),
            bias_init=nn.with_logical_partitioning(zeros, ("embed",)),
        )(nn.silu(h))  # fmt: skip
        query = nn.LayerNorm(
            name="attn_norm", param_dtype=dtype, parent=site.module,
            scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ("embed",)),
            bias_init=nn.with_logical_partitioning(zeros, ("embed",)),
        )(h)  # fmt: skip
        keys = jnp.concatenate(
            [
                jnp.broadcast_to(masked_max_pool(pool), (batch, self.pool_size, dim)),
                masked_max_pool(part)[:, None],
            ],
            axis=1,
        )  # [B, pool + 1, D]
        temperature = self.temperature or float(np.sqrt(dim))
        return attention(pool, part, attention_weights(query, keys, temperature))


#: Names of the built-in compositions (``known()`` also lists those registered later).
COMPOSITIONS = known()
