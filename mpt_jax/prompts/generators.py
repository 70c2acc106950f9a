"""Prompt generators: Flax modules ``(task_ids, embedded_inputs, input_mask) -> prompt``.

The protocol (docs/ARCHITECTURE.md)::

    out = generator(task_ids, embedded_inputs, input_mask=None)
    # task_ids:        int32 [batch]           one batch may mix tasks; may be traced
    # embedded_inputs: float [batch, S, embed] the backbone's embedded encoder tokens
    #                  (only input-reading compositions need it; the others accept None)
    # input_mask:      [batch, S] or None      1 = real token
    # returns          the prompt [batch, prompt_length, embed], in embedded_inputs' dtype
    #                  (or ``dtype`` when set), or a GeneratorOutput(prompt, input_delta)
    #                  whose input_delta [batch, S, embed] is added to the embedded inputs

``prompt_length`` is a static property of every generator.

Task ids. Under ``jit`` the ids are tracers and cannot be checked (an out-of-range
id would be clamped by the gather), so the generators call :func:`check_task_ids`
whenever the ids are concrete (eager calls, ``init``) and the runner checks the
ids at the data boundary with the same helper.

Parameter names are checkpoint names; they carry logical axis names for T5X's
partitioner, listed once in :data:`LOGICAL_AXES`: ``prompt`` (prompt positions),
``embed``, ``tasks``, ``groups``, ``rank``, ``pool`` (source prompts of the attention
composition), ``hidden`` (its projection width) and ``gate`` (the two inputs of a gate).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np

from mpt_jax.prompts import compositions as comp
from mpt_jax.prompts import initializers as inits

Array = jax.Array
Initializer = inits.Initializer
Dtype = Any

#: Every logical axis name a prompt parameter may carry (the T5X layer's rules cover them).
LOGICAL_AXES = ("prompt", "embed", "tasks", "groups", "rank", "pool", "hidden", "gate")


class GeneratorOutput(NamedTuple):
    """What a generator returns when it changes the inputs as well (e.g. DePT).

    Attributes:
      prompt: ``[batch, prompt_length, embed]``, prepended to the embedded inputs.
      input_delta: ``[batch, S, embed]``, added to the embedded inputs.
    """

    prompt: Array
    input_delta: Array


def as_output(out: Array | GeneratorOutput) -> tuple[Array, Array | None]:
    """``(prompt, input_delta or None)`` of a generator's return value."""
    if isinstance(out, tuple):
        prompt, delta = out
        return prompt, delta
    return out, None


def check_task_ids(task_ids: Any, num_tasks: int) -> None:
    """Raises ``ValueError`` if a concrete task id is outside ``[0, num_tasks)``.

    Traced ids (inside ``jit``/``grad`` transforms of the ids) cannot be inspected
    and are let through; call this on the host where the batch is built.

    Args:
      task_ids: ``[batch]`` integer ids (numpy, jax array, list, or a tracer).
      num_tasks: number of tasks the generator has parameters for.
    """
    if isinstance(task_ids, jax.core.Tracer):
        return
    ids = np.asarray(task_ids)
    if ids.ndim != 1:
        raise ValueError(f"task_ids must have shape [batch], got shape {ids.shape}")
    if ids.size and not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"task_ids must be integers, got dtype {ids.dtype}")
    bad = ids[(ids < 0) | (ids >= num_tasks)]
    if bad.size:
        raise ValueError(f"task id {int(bad[0])} out of range [0, {num_tasks})")


def check_embedded_inputs(
    embedded_inputs: Array | None, embed_dim: int, batch: int, required: bool = False
) -> None:
    """Raises ``ValueError`` if ``embedded_inputs`` does not fit ``[batch, S, embed_dim]``."""
    if embedded_inputs is None:
        if required:
            raise ValueError("this generator reads the input: embedded_inputs must be given")
        return
    if embedded_inputs.ndim != 3:
        raise ValueError(
            f"embedded_inputs must be [batch, length, embed], got shape {embedded_inputs.shape}"
        )
    if embedded_inputs.shape[-1] != embed_dim:
        raise ValueError(
            f"embedded_inputs have embed size {embedded_inputs.shape[-1]} but the prompt "
            f"has embed_dim {embed_dim}"
        )
    if embedded_inputs.shape[0] != batch:
        raise ValueError(
            f"embedded_inputs have batch {embedded_inputs.shape[0]} but task_ids have batch {batch}"
        )


def _prepare(
    task_ids: Any, embedded_inputs: Array | None, embed_dim: int, num_tasks: int | None
) -> Array:
    """Checks the inputs and returns ``task_ids`` as an int32 ``[batch]`` array."""
    if num_tasks is not None:
        check_task_ids(task_ids, num_tasks)
    task_ids = jnp.asarray(task_ids, jnp.int32)
    if task_ids.ndim != 1:
        raise ValueError(f"task_ids must have shape [batch], got shape {task_ids.shape}")
    check_embedded_inputs(embedded_inputs, embed_dim, task_ids.shape[0])
    return task_ids


def _out_dtype(dtype: Dtype | None, embedded_inputs: Array | None, params_dtype: Dtype):
    if dtype is not None:
        return dtype
    return params_dtype if embedded_inputs is None else embedded_inputs.dtype


@gin.configurable(module="prompts")
class SinglePrompt(nn.Module):
    """Vanilla prompt tuning (Lester et al. 2021): one prompt for every example.

    Used for per-task teachers and baselines; the task id is ignored. Parameter
    ``shared`` ``[length, embed]`` (axes ``prompt, embed``), so a SPoT-style start
    is a copy of a source prompt's ``shared``.

    gin::

        PromptedT5.prompt = @prompts.SinglePrompt()
        prompts.SinglePrompt.length = 100
        prompts.SinglePrompt.embed_dim = 768
        prompts.SinglePrompt.shared_init = @prompts.uniform()

    Attributes:
      length: number of prompt positions ``L``.
      embed_dim: embedding size ``D``.
      shared_init: initialiser of ``shared`` (not ``init``: that name is
        ``nn.Module.init``).
    """

    length: int
    embed_dim: int
    shared_init: Initializer = inits.uniform(0.5)
    param_dtype: Dtype = jnp.float32
    dtype: Dtype | None = None

    def __post_init__(self):
        comp.check_positive("SinglePrompt", length=self.length, embed_dim=self.embed_dim)
        super().__post_init__()

    @property
    def prompt_length(self) -> int:
        return self.length

    @nn.compact
    def __call__(self, task_ids, embedded_inputs=None, input_mask=None) -> Array:
        """Returns ``[batch, length, embed]``: ``shared`` repeated over the batch."""
        del input_mask
        task_ids = _prepare(task_ids, embedded_inputs, self.embed_dim, None)
        shared = comp.param(
            self, "shared", self.shared_init, (self.length, self.embed_dim),
            ("prompt", "embed"), self.param_dtype,
        )  # fmt: skip
        prompt = jnp.broadcast_to(shared, (task_ids.shape[0],) + shared.shape)
        return prompt.astype(_out_dtype(self.dtype, embedded_inputs, self.param_dtype))


@gin.configurable(module="prompts")
class TaskPrompts(nn.Module):
    """One full prompt per task: ``prompt = task_prompts[task_id]``.

    Holds all per-task teacher prompts at once so one compiled step serves every
    teacher. Parameter ``task_prompts`` ``[tasks, length, embed]`` (axes
    ``tasks, prompt, embed``).

    gin::

        prompts.TaskPrompts.num_tasks = 6
        prompts.TaskPrompts.length = 100
        prompts.TaskPrompts.embed_dim = 768
    """

    num_tasks: int
    length: int
    embed_dim: int
    task_init: Initializer = inits.uniform(0.5)
    param_dtype: Dtype = jnp.float32
    dtype: Dtype | None = None

    def __post_init__(self):
        comp.check_positive(
            "TaskPrompts", num_tasks=self.num_tasks, length=self.length, embed_dim=self.embed_dim
        )
        super().__post_init__()

    @property
    def prompt_length(self) -> int:
        return self.length

    @nn.compact
    def __call__(self, task_ids, embedded_inputs=None, input_mask=None) -> Array:
        """Returns ``[batch, length, embed]``: each example's own task prompt."""
        del input_mask
        task_ids = _prepare(task_ids, embedded_inputs, self.embed_dim, self.num_tasks)
        table = comp.param(
            self, "task_prompts", self.task_init, (self.num_tasks, self.length, self.embed_dim),
            ("tasks", "prompt", "embed"), self.param_dtype,
        )  # fmt: skip
        return table[task_ids].astype(_out_dtype(self.dtype, embedded_inputs, self.param_dtype))


# --- a shared prompt and a task part, combined by a composition ---------------------------


def _part_table(site: comp.Site, ids: Array, length: int, embed: int, rank: int | None,
                part_inits: comp.PartInits) -> Array:  # fmt: skip
    """Each example's part ``[batch, length, embed]``, selected by ``ids`` from a table of
    ``site.num`` parts.

    ``rank=None`` makes a full table ``{level}_prompts`` ``[num, length, embed]``; an int
    makes low-rank factors ``{level}_cols`` ``[num, length, rank]`` and ``{level}_rows``
    ``[num, rank, embed]`` whose product is the part (axes ``{axis}, prompt, …``).
    """
    level, axis, num = site.level, site.axis, site.num
    if rank is None:
        table = site.param(
            f"{level}_prompts", part_inits.full, (num, length, embed), (axis, "prompt", "embed")
        )
        return table[ids]
    cols = site.param(
        f"{level}_cols", part_inits.cols, (num, length, rank), (axis, "prompt", "rank")
    )
    rows = site.param(f"{level}_rows", part_inits.rows, (num, rank, embed), (axis, "rank", "embed"))
    return comp.low_rank(cols[ids], rows[ids])


def _cast(out: Array | GeneratorOutput, dtype: Dtype) -> Array | GeneratorOutput:
    if isinstance(out, GeneratorOutput):
        return GeneratorOutput(out.prompt.astype(dtype), out.input_delta.astype(dtype))
    return out.astype(dtype)


def _shared_and_task_prompt(
    module: nn.Module,
    task_ids: Any,
    embedded_inputs: Array | None,
    input_mask: Array | None,
    composition: comp.Composition,
    task_length: int,
    task_rank: int | None,
    part_inits: comp.PartInits,
    task_part_first: bool,
) -> Array | GeneratorOutput:
    """The body of :class:`ComposedPrompt` and its presets: ``shared`` ``[L, D]`` (unless
    the composition brings its own base), the task part, and ``composition`` on them.

    ``module`` has ``num_tasks``, ``length``, ``embed_dim``, ``shared_init``,
    ``param_dtype`` and ``dtype``. ``task_part_first`` fixes the order in which ``init``
    draws the parameters (so seeds keep giving the values they gave before the generators
    shared this body): ComposedPrompt draws the task part first, MultitaskPrompt ``shared``.
    """
    task_ids = _prepare(task_ids, embedded_inputs, module.embed_dim, module.num_tasks)
    dim, dtype = module.embed_dim, module.param_dtype
    site = comp.Site(module, "task", "tasks", module.num_tasks, "", module.shared_init, dtype)

    def shared() -> Array | None:
        if not composition.uses_base:
            return None
        return site.param("shared", module.shared_init, (module.length, dim), ("prompt", "embed"))

    def task() -> Array:
        return _part_table(site, task_ids, task_length, dim, task_rank, part_inits)

    if task_part_first:
        task_part, shared_part = task(), shared()
    else:
        shared_part, task_part = shared(), task()
    out = composition(
        site, shared_part, task_part, task_ids, comp.Inputs(embedded_inputs, input_mask)
    )
    return _cast(out, _out_dtype(module.dtype, embedded_inputs, dtype))


@gin.configurable(module="prompts")
class ComposedPrompt(nn.Module):
    """A shared part ``S`` and a task part ``T_k`` combined by a composition object.

    ``composition`` is a :class:`~mpt_jax.prompts.compositions.Composition` (a registered
    name such as ``"add"`` is accepted too): ``Hadamard()`` (``S * T_k``; MPT when
    ``task_rank`` is an int), ``Add()``, ``Concat()`` (length ``length + task_length``),
    ``Weighted()``, ``Gated()``, ``Attention(pool_size=…)`` (ATTEMPT; input-adaptive, no
    ``shared``), or one registered elsewhere (:mod:`mpt_jax.prompts.dept`). The composition
    owns its parameters (``task_weights``, ``gate_kernel``, ``source_prompts``, …), the
    prompt length and the task part's default initialisers (``Hadamard``: part ≈ 1,
    ``Add``: part ≈ 0).

    Task part: ``task_rank=None`` gives full prompts ``task_prompts`` ``[T, Lt, D]``; an
    int ``r`` gives ``task_cols`` ``[T, Lt, r]`` and ``task_rows`` ``[T, r, D]``.

    gin::

        PromptedT5.prompt = @prompts.ComposedPrompt()
        prompts.ComposedPrompt.composition = @compositions.Add()
        prompts.ComposedPrompt.num_tasks = 6
        prompts.ComposedPrompt.length = 100
        prompts.ComposedPrompt.embed_dim = 768
        prompts.ComposedPrompt.task_rank = 1

    Attributes:
      num_tasks: ``T``.
      length: shared length ``Ls`` (for ``Attention``, the pool prompts' length).
      embed_dim: ``D``.
      composition: the composition object (or its registered name).
      task_length: ``Lt``; ``None`` means ``length``. The composition says which lengths
        it accepts (``Concat``: any).
      task_rank: ``None`` (full task prompts) or the rank of ``U_k V_k``.
      shared_init: initialiser of ``shared`` (and of ``Attention``'s pool).
      task_init, task_cols_init, task_rows_init: override the composition's defaults.
    """

    num_tasks: int
    length: int
    embed_dim: int
    composition: comp.Composition | str = comp.Hadamard()
    task_length: int | None = None
    task_rank: int | None = None
    shared_init: Initializer = inits.uniform(0.5)
    task_init: Initializer | None = None
    task_cols_init: Initializer | None = None
    task_rows_init: Initializer | None = None
    param_dtype: Dtype = jnp.float32
    dtype: Dtype | None = None

    def __post_init__(self):
        object.__setattr__(self, "composition", comp.resolve(self.composition))
        comp.check_positive(
            "ComposedPrompt", num_tasks=self.num_tasks, length=self.length,
            embed_dim=self.embed_dim, task_length=self.task_length, task_rank=self.task_rank,
        )  # fmt: skip
        self.composition.check_lengths(self.length, self._task_length)
        super().__post_init__()

    @property
    def _task_length(self) -> int:
        return self.length if self.task_length is None else self.task_length

    @property
    def prompt_length(self) -> int:
        return self.composition.prompt_length(self.length, self._task_length)

    @nn.compact
    def __call__(self, task_ids, embedded_inputs=None, input_mask=None):
        """Returns ``[batch, prompt_length, embed]`` (or a :class:`GeneratorOutput`)."""
        full, cols, rows = self.composition.part_inits(self.task_rank)
        part_inits = comp.PartInits(
            self.task_init or full, self.task_cols_init or cols, self.task_rows_init or rows
        )
        return _shared_and_task_prompt(
            self, task_ids, embedded_inputs, input_mask, self.composition, self._task_length,
            self.task_rank, part_inits, task_part_first=True,
        )  # fmt: skip


#: MultitaskPrompt's composition.
_MPT = comp.Hadamard()


@gin.configurable(module="prompts")
class MultitaskPrompt(nn.Module):
    """Multitask prompt tuning (MPT, Wang et al. 2023): ``P_k = P ∘ (U_k V_k)``.

    MPT's preset of :class:`ComposedPrompt`: the ``Hadamard`` composition with a rank
    ``num_ranks`` task part. Parameters (checkpoint names, as Hugging Face PEFT's
    ``prompt_embeddings``, ``prefix_task_cols``, ``prefix_task_rows``):

    - ``shared`` ``[L, D]`` (``prompt, embed``): the shared prompt ``P``;
    - ``task_cols`` ``[T, L, r]`` (``tasks, prompt, rank``): ``U_k``;
    - ``task_rows`` ``[T, r, D]`` (``tasks, rank, embed``): ``V_k``.

    A fresh prompt starts with ``U_k V_k ≈ 1`` (``ones_factor_cols/rows``), so every
    task prompt starts equal to the shared prompt; the rank components differ by a
    small perturbation whose first-order effect on ``U_k V_k`` cancels. (PEFT
    draws both factors from N(0, 0.02), which starts the prompt near zero; pass
    ``cols_init=rows_init=prompts.normal(0.02)`` to reproduce that.)

    PEFT's words are aliases: ``num_virtual_tokens`` = ``length``, ``rank`` =
    ``num_ranks``; ``num_tasks`` is the same.

    gin::

        PromptedT5.prompt = @prompts.MultitaskPrompt()
        prompts.MultitaskPrompt.num_tasks = 6
        prompts.MultitaskPrompt.length = 100
        prompts.MultitaskPrompt.embed_dim = 768
        prompts.MultitaskPrompt.num_ranks = 1
    """

    num_tasks: int
    length: int
    embed_dim: int
    num_ranks: int = 1
    shared_init: Initializer = inits.uniform(0.5)
    cols_init: Initializer = inits.ones_factor_cols(1e-2)
    rows_init: Initializer = inits.ones_factor_rows(1e-2)
    param_dtype: Dtype = jnp.float32
    dtype: Dtype | None = None

    def __post_init__(self):
        comp.check_positive(
            "MultitaskPrompt", num_tasks=self.num_tasks, length=self.length,
            embed_dim=self.embed_dim, num_ranks=self.num_ranks,
        )  # fmt: skip
        super().__post_init__()

    @property
    def prompt_length(self) -> int:
        return self.length

    @property
    def num_virtual_tokens(self) -> int:
        """PEFT's name for ``length``."""
        return self.length

    @property
    def rank(self) -> int:
        return self.num_ranks

    @nn.compact
    def __call__(self, task_ids, embedded_inputs=None, input_mask=None) -> Array:
        """Returns ``[batch, length, embed]``: ``shared * (U_k @ V_k)`` for each example."""
        part_inits = _MPT.part_inits(self.num_ranks)._replace(
            cols=self.cols_init, rows=self.rows_init
        )
        return _shared_and_task_prompt(
            self, task_ids, embedded_inputs, input_mask, _MPT, self.length,
            self.num_ranks, part_inits, task_part_first=False,
        )  # fmt: skip


# --- hierarchical prompts ---------------------------------------------------------------


@gin.configurable(module="prompts")
class HierarchicalPrompt(nn.Module):
    """Shared → group → task: ``P_k = (S ⊙_g G_{g(k)}) ⊙_t T_k``.

    A static map ``task_groups`` (task k → group ``task_groups[k]``) routes each
    example; ``⊙_g`` / ``⊙_t`` are composition objects (the same as
    :class:`ComposedPrompt`'s; any that combines with a base prompt, i.e. not
    ``Attention``). Only the task level may change the inputs (``DePT``).

    Parameters: ``shared`` ``[L, D]``; the group parts ``group_cols``
    ``[G, Lg, rg]`` and ``group_rows`` ``[G, rg, D]`` (axes ``groups, …``), or
    ``group_prompts`` ``[G, Lg, D]`` when ``group_rank=None``; the task parts
    ``task_cols``/``task_rows`` or ``task_prompts`` likewise (axes ``tasks, …``);
    each level's composition parameters with the level's prefix (``group_weights`` [G],
    ``task_gate_kernel``, …). Defaults give MPT with a group level (both levels
    ``Hadamard``, rank 1, starting at ``S``).

    gin::

        PromptedT5.prompt = @prompts.HierarchicalPrompt()
        prompts.HierarchicalPrompt.task_groups = (0, 0, 1, 1, 1)   # 5 tasks, 2 groups
        prompts.HierarchicalPrompt.length = 100
        prompts.HierarchicalPrompt.embed_dim = 768
        prompts.HierarchicalPrompt.group_composition = @compositions.Hadamard()
        prompts.HierarchicalPrompt.task_composition = @compositions.Add()

    Attributes:
      task_groups: group id of each task; ``num_tasks = len(task_groups)``.
      length: shared length ``L``.
      embed_dim: ``D``.
      num_groups: ``G``; ``None`` means ``max(task_groups) + 1``. Every group must
        hold a task (an empty group would be parameters that never train).
      group_composition, task_composition: the composition at each level (objects, or
        registered names).
      group_rank, task_rank: rank of each level's part (``None`` = full).
      group_length, task_length: part lengths (``None`` = the length of what they
        are combined with; the composition says which lengths it accepts).
    """

    task_groups: Sequence[int]
    length: int
    embed_dim: int
    num_groups: int | None = None
    group_composition: comp.Composition | str = comp.Hadamard()
    task_composition: comp.Composition | str = comp.Hadamard()
    group_rank: int | None = 1
    task_rank: int | None = 1
    group_length: int | None = None
    task_length: int | None = None
    shared_init: Initializer = inits.uniform(0.5)
    param_dtype: Dtype = jnp.float32
    dtype: Dtype | None = None

    def __post_init__(self):
        object.__setattr__(self, "task_groups", tuple(int(g) for g in self.task_groups))
        for level in ("group", "task"):
            composition = comp.resolve(getattr(self, f"{level}_composition"))
            if not composition.uses_base:
                raise ValueError(
                    f"{level}_composition {composition.name!r} cannot be a level: it brings "
                    "its own base prompt instead of combining with the one above it"
                )
            object.__setattr__(self, f"{level}_composition", composition)
        comp.check_positive(
            "HierarchicalPrompt", length=self.length, embed_dim=self.embed_dim,
            num_groups=self.num_groups, group_rank=self.group_rank, task_rank=self.task_rank,
            group_length=self.group_length, task_length=self.task_length,
        )  # fmt: skip
        if not self.task_groups:
            raise ValueError("task_groups must name the group of at least one task")
        num_groups = self._num_groups
        for task, group in enumerate(self.task_groups):
            if not 0 <= group < num_groups:
                raise ValueError(
                    f"task {task} has group id {group}, out of range [0, {num_groups})"
                )
        unused = sorted(set(range(num_groups)) - set(self.task_groups))
        if unused:
            raise ValueError(f"groups {unused} hold no task (num_groups={num_groups})")
        self.group_composition.check_lengths(self.length, self._group_length)
        self.task_composition.check_lengths(self._mid_length, self._task_length)
        super().__post_init__()

    @property
    def num_tasks(self) -> int:
        return len(self.task_groups)

    @property
    def _num_groups(self) -> int:
        return max(self.task_groups) + 1 if self.num_groups is None else self.num_groups

    @property
    def _group_length(self) -> int:
        return self.length if self.group_length is None else self.group_length

    @property
    def _mid_length(self) -> int:
        """Length after the group level."""
        return self.group_composition.prompt_length(self.length, self._group_length)

    @property
    def _task_length(self) -> int:
        return self._mid_length if self.task_length is None else self.task_length

    @property
    def prompt_length(self) -> int:
        return self.task_composition.prompt_length(self._mid_length, self._task_length)

    @nn.compact
    def __call__(self, task_ids, embedded_inputs=None, input_mask=None):
        """Returns ``[batch, prompt_length, embed]`` (or a :class:`GeneratorOutput`)."""
        task_ids = _prepare(task_ids, embedded_inputs, self.embed_dim, self.num_tasks)
        dim, dtype, g = self.embed_dim, self.param_dtype, self._num_groups
        inputs = comp.Inputs(embedded_inputs, input_mask)
        group_ids = jnp.asarray(self.task_groups, jnp.int32)[task_ids]
        groups = comp.Site(self, "group", "groups", g, "group_", self.shared_init, dtype)
        tasks = comp.Site(self, "task", "tasks", self.num_tasks, "task_", self.shared_init, dtype)
        shared = groups.param("shared", self.shared_init, (self.length, dim), ("prompt", "embed"))
        group = _part_table(
            groups, group_ids, self._group_length, dim, self.group_rank,
            self.group_composition.part_inits(self.group_rank),
        )  # fmt: skip
        mid = self.group_composition(groups, shared, group, group_ids, inputs)
        if isinstance(mid, GeneratorOutput):
            raise ValueError(
                f"group_composition {self.group_composition.name!r} changes the inputs; only "
                "the task level may"
            )
        task = _part_table(
            tasks, task_ids, self._task_length, dim, self.task_rank,
            self.task_composition.part_inits(self.task_rank),
        )  # fmt: skip
        out = self.task_composition(tasks, mid, task, task_ids, inputs)
        return _cast(out, _out_dtype(self.dtype, embedded_inputs, dtype))
