"""Prompt generators: Flax modules ``(task_ids, embedded_inputs, input_mask) -> prompt``.

The protocol (docs/ARCHITECTURE.md)::

    prompt = generator(task_ids, embedded_inputs, input_mask=None)
    # task_ids:        int32 [batch]           one batch may mix tasks; may be traced
    # embedded_inputs: float [batch, S, embed] the backbone's embedded encoder tokens
    #                  (only the attention composition reads it; the others accept None)
    # input_mask:      [batch, S] or None      1 = real token
    # returns          [batch, prompt_length, embed], in embedded_inputs' dtype
    #                  (or ``dtype`` when set)

``prompt_length`` is a static property of every generator.

Task ids. Under ``jit`` the ids are tracers and cannot be checked (an out-of-range
id would be clamped by the gather), so the generators call :func:`check_task_ids`
whenever the ids are concrete (eager calls, ``init``) and the runner checks the
ids at the data boundary with the same helper.

Parameter names are checkpoint names; they carry logical axis names for T5X's
partitioner: ``prompt`` (prompt positions), ``embed``, ``tasks``, ``groups``,
``rank``, ``pool`` (source prompts of the attention composition), ``hidden``
(its projection width) and ``gate`` (the two inputs of a gate).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

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


def _param(module: nn.Module, name: str, init: Initializer, shape, axes, dtype) -> Array:
    """A parameter with logical axis names ``axes`` (one per dimension of ``shape``)."""
    return module.param(name, nn.with_logical_partitioning(init, axes), tuple(shape), dtype)


def _check_positive(owner: str, **values: int | None) -> None:
    for name, value in values.items():
        if value is not None and (not isinstance(value, int | np.integer) or value < 1):
            raise ValueError(f"{owner}: {name} must be a positive integer, got {value!r}")


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
        _check_positive("SinglePrompt", length=self.length, embed_dim=self.embed_dim)
        super().__post_init__()

    @property
    def prompt_length(self) -> int:
        return self.length

    @nn.compact
    def __call__(self, task_ids, embedded_inputs=None, input_mask=None) -> Array:
        """Returns ``[batch, length, embed]``: ``shared`` repeated over the batch."""
        del input_mask
        task_ids = _prepare(task_ids, embedded_inputs, self.embed_dim, None)
        shared = _param(
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
        _check_positive(
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
        table = _param(
            self, "task_prompts", self.task_init, (self.num_tasks, self.length, self.embed_dim),
            ("tasks", "prompt", "embed"), self.param_dtype,
        )  # fmt: skip
        return table[task_ids].astype(_out_dtype(self.dtype, embedded_inputs, self.param_dtype))


@gin.configurable(module="prompts")
class MultitaskPrompt(nn.Module):
    """Multitask prompt tuning (MPT, Wang et al. 2023): ``P_k = P ∘ (U_k V_k)``.

    Parameters (checkpoint names, as Hugging Face PEFT's ``prompt_embeddings``,
    ``prefix_task_cols``, ``prefix_task_rows``):

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
        _check_positive(
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
        del input_mask
        task_ids = _prepare(task_ids, embedded_inputs, self.embed_dim, self.num_tasks)
        t, length, dim, r = self.num_tasks, self.length, self.embed_dim, self.num_ranks
        shared = _param(
            self, "shared", self.shared_init, (length, dim), ("prompt", "embed"), self.param_dtype
        )
        cols = _param(
            self, "task_cols", self.cols_init, (t, length, r), ("tasks", "prompt", "rank"),
            self.param_dtype,
        )  # fmt: skip
        rows = _param(
            self, "task_rows", self.rows_init, (t, r, dim), ("tasks", "rank", "embed"),
            self.param_dtype,
        )  # fmt: skip
        task = comp.low_rank(cols[task_ids], rows[task_ids])
        prompt = comp.hadamard(shared, task)
        return prompt.astype(_out_dtype(self.dtype, embedded_inputs, self.param_dtype))


# --- composed prompts -------------------------------------------------------------------


def default_part_inits(composition: str, rank: int | None):
    """Initialisers ``(full, cols, rows)`` of a task part that start ``composition`` well.

    - ``hadamard``: the part starts ≈ 1 (full: ``1 + N(0, 0.01)``; low rank:
      ``U V ≈ 1``), so the prompt starts at the shared prompt, as MPT.
    - ``add``: the part starts at 0 (low rank: ``U ~ N(0, 1/r)``, ``V = 0``, so
      ``V`` receives gradient at once), so the prompt starts at the shared prompt.
    - otherwise (``concat``, ``weighted``, ``gated``, ``attention``): the part is a
      prompt in its own right, ``uniform(0.5)`` (low rank: ``U ~ N(0, 1/r)``,
      ``V ~ uniform(0.5)``, whose product has the variance of ``uniform(0.5)``).
    """
    scale = 1.0 / float(np.sqrt(rank or 1))
    if composition == "hadamard":
        return inits.constant(1.0, 1e-2), inits.ones_factor_cols(), inits.ones_factor_rows()
    if composition == "add":
        return inits.constant(0.0), inits.normal(scale), inits.constant(0.0)
    return inits.uniform(0.5), inits.normal(scale), inits.uniform(0.5)


def _task_part(
    module: nn.Module,
    prefix: str,
    axis: str,
    ids: Array,
    shape: tuple[int, int, int],
    rank: int | None,
    part_inits: tuple[Initializer, Initializer, Initializer],
    dtype: Dtype,
) -> Array:
    """Selects each example's part ``[batch, length, embed]`` from a table of ``num`` parts.

    ``rank=None`` makes a full table ``{prefix}_prompts`` ``[num, length, embed]``;
    an int makes low-rank factors ``{prefix}_cols`` ``[num, length, rank]`` and
    ``{prefix}_rows`` ``[num, rank, embed]`` whose product is the part.
    """
    num, length, embed = shape
    full_init, cols_init, rows_init = part_inits
    if rank is None:
        table = _param(
            module, f"{prefix}_prompts", full_init, shape, (axis, "prompt", "embed"), dtype
        )
        return table[ids]
    cols = _param(
        module, f"{prefix}_cols", cols_init, (num, length, rank), (axis, "prompt", "rank"), dtype
    )
    rows = _param(
        module, f"{prefix}_rows", rows_init, (num, rank, embed), (axis, "rank", "embed"), dtype
    )
    return comp.low_rank(cols[ids], rows[ids])


def _combine(
    module: nn.Module,
    composition: str,
    base: Array,
    part: Array,
    ids: Array,
    num: int,
    weights_name: str,
    axis: str,
    gate_prefix: str,
    dtype: Dtype,
) -> Array:
    """Combines ``base`` ``[(batch,) Lb, D]`` with ``part`` ``[batch, Lp, D]``.

    ``weighted`` creates ``{weights_name}`` ``[num]`` (axis ``axis``): mixing-weight
    logits, ``w = sigmoid(logit)``, starting at 0 (``w = 0.5``). ``gated`` creates
    ``{gate_prefix}_kernel`` ``[2, D]`` (axes ``gate, embed``) and
    ``{gate_prefix}_bias`` ``[]``, shared by all tasks, starting at 0 (``g = 0.5``).
    """
    if composition == "hadamard":
        return comp.hadamard(base, part)
    if composition == "add":
        return comp.add(base, part)
    if composition == "concat":
        return comp.concat(base, part)
    if composition == "weighted":
        logits = _param(module, weights_name, inits.constant(0.0), (num,), (axis,), dtype)
        return comp.weighted(base, part, jax.nn.sigmoid(logits[ids]))
    if composition == "gated":
        dim = part.shape[-1]
        kernel = _param(
            module, f"{gate_prefix}_kernel", inits.constant(0.0), (2, dim), ("gate", "embed"),
            dtype,
        )  # fmt: skip
        bias = _param(module, f"{gate_prefix}_bias", inits.constant(0.0), (), (), dtype)
        return comp.gated(base, part, kernel, bias)
    raise ValueError(f"composition {composition!r} cannot be used here")


@gin.configurable(module="prompts")
class ComposedPrompt(nn.Module):
    """A shared part ``S`` and a task part ``T_k`` combined by a named composition.

    ``composition`` is one of :data:`compositions.COMPOSITIONS`:

    - ``hadamard``: ``S * T_k`` (MPT when ``task_rank`` is an int);
    - ``add``: ``S + T_k``;
    - ``concat``: ``[S ; T_k]``, length ``length + task_length``;
    - ``weighted``: ``(1 - w_k) S + w_k T_k`` with ``w_k = sigmoid(task_weights[k])``;
    - ``gated``: ``g S + (1 - g) T_k`` with a per-position gate
      ``g = sigmoid(S·a + T_k·b + c)``; ``gate_kernel`` ``[2, D]``, ``gate_bias`` ``[]``
      are shared by all tasks;
    - ``attention`` (ATTEMPT, Asai et al. 2022): input-adaptive. The shared part is
      a pool ``source_prompts`` ``[pool_size, L, D]`` (there is no ``shared``). The
      query is the max-pool of the example's embedded input over valid positions,
      projected by ``attn_down`` (D→``attention_hidden``), SiLU, ``attn_up``
      (→D) and a layer norm ``attn_norm``; the keys are the max-pooled source
      prompts and the task's own prompt; softmax with ``temperature`` (default
      ``sqrt(D)``) over the pool plus ``T_k``; the mixture is added to ``T_k``.
      (ATTEMPT keeps the source prompts frozen: leave ``source_prompts`` out of the
      trainable set in the runner to do so.)

    Task part: ``task_rank=None`` gives full prompts ``task_prompts`` ``[T, Lt, D]``;
    an int ``r`` gives ``task_cols`` ``[T, Lt, r]`` and ``task_rows`` ``[T, r, D]``.
    Default initialisers start each composition sensibly
    (:func:`default_part_inits`: ``hadamard`` part ≈ 1, ``add`` part ≈ 0).

    gin::

        PromptedT5.prompt = @prompts.ComposedPrompt()
        prompts.ComposedPrompt.composition = "add"
        prompts.ComposedPrompt.num_tasks = 6
        prompts.ComposedPrompt.length = 100
        prompts.ComposedPrompt.embed_dim = 768
        prompts.ComposedPrompt.task_rank = 1

    Attributes:
      num_tasks: ``T``.
      length: shared length ``Ls`` (for ``attention``, the pool prompts' length).
      embed_dim: ``D``.
      composition: the composition's name.
      task_length: ``Lt``; ``None`` means ``length``. Only ``concat`` allows it to
        differ from ``length``.
      task_rank: ``None`` (full task prompts) or the rank of ``U_k V_k``.
      shared_init: initialiser of ``shared`` (and of ``source_prompts``).
      task_init, task_cols_init, task_rows_init: override the defaults above.
      pool_size: number of source prompts (``attention`` only).
      attention_hidden: width of the query projection (``attention`` only).
      temperature: softmax temperature (``attention`` only); ``None`` = ``sqrt(D)``.
    """

    num_tasks: int
    length: int
    embed_dim: int
    composition: str = "hadamard"
    task_length: int | None = None
    task_rank: int | None = None
    shared_init: Initializer = inits.uniform(0.5)
    task_init: Initializer | None = None
    task_cols_init: Initializer | None = None
    task_rows_init: Initializer | None = None
    pool_size: int = 0
    attention_hidden: int = 64
    temperature: float | None = None
    param_dtype: Dtype = jnp.float32
    dtype: Dtype | None = None

    def __post_init__(self):
        comp.check_composition(self.composition)
        _check_positive(
            "ComposedPrompt", num_tasks=self.num_tasks, length=self.length,
            embed_dim=self.embed_dim, task_length=self.task_length, task_rank=self.task_rank,
        )  # fmt: skip
        comp.check_lengths(self.composition, self.length, self._task_length)
        if self.composition == "attention":
            _check_positive(
                "ComposedPrompt(attention)", pool_size=self.pool_size,
                attention_hidden=self.attention_hidden,
            )  # fmt: skip
            if self.temperature is not None and not self.temperature > 0:
                raise ValueError(f"temperature must be positive, got {self.temperature}")
        elif self.pool_size:
            raise ValueError(
                f"pool_size={self.pool_size} is only used by the 'attention' composition, "
                f"not {self.composition!r}"
            )
        super().__post_init__()

    @property
    def _task_length(self) -> int:
        return self.length if self.task_length is None else self.task_length

    @property
    def prompt_length(self) -> int:
        if self.composition == "concat":
            return self.length + self._task_length
        return self.length

    def _part_inits(self):
        full, cols, rows = default_part_inits(self.composition, self.task_rank)
        return (
            self.task_init or full,
            self.task_cols_init or cols,
            self.task_rows_init or rows,
        )

    @nn.compact
    def __call__(self, task_ids, embedded_inputs=None, input_mask=None) -> Array:
        """Returns ``[batch, prompt_length, embed]``."""
        task_ids = _prepare(task_ids, embedded_inputs, self.embed_dim, self.num_tasks)
        dim, dtype = self.embed_dim, self.param_dtype
        task = _task_part(
            self, "task", "tasks", task_ids, (self.num_tasks, self._task_length, dim),
            self.task_rank, self._part_inits(), dtype,
        )  # fmt: skip
        if self.composition == "attention":
            prompt = self._attend(task, embedded_inputs, input_mask)
        else:
            shared = _param(
                self, "shared", self.shared_init, (self.length, dim), ("prompt", "embed"), dtype
            )
            prompt = _combine(
                self, self.composition, shared, task, task_ids, self.num_tasks,
                "task_weights", "tasks", "gate", dtype,
            )  # fmt: skip
        return prompt.astype(_out_dtype(self.dtype, embedded_inputs, dtype))

    def _attend(self, task: Array, embedded_inputs: Array | None, input_mask) -> Array:
        """ATTEMPT's input-adaptive mixture; ``task`` ``[batch, L, D]``."""
        check_embedded_inputs(embedded_inputs, self.embed_dim, task.shape[0], required=True)
        dim, dtype = self.embed_dim, self.param_dtype
        pool = _param(
            self, "source_prompts", self.shared_init, (self.pool_size, self.length, dim),
            ("pool", "prompt", "embed"), dtype,
        )  # fmt: skip
        x = comp.masked_max_pool(embedded_inputs.astype(dtype), input_mask)  # [B, D]
        dense = nn.initializers.lecun_normal()
        zeros = nn.initializers.zeros_init()
        h = nn.Dense(
            self.attention_hidden, name="attn_down", param_dtype=dtype,
            kernel_init=nn.with_logical_partitioning(dense, ("embed", "hidden")),
            bias_init=nn.with_logical_partitioning(zeros, ("hidden",)),
        )(x)  # fmt: skip
        h = nn.Dense(
            dim, name="attn_up", param_dtype=dtype,
            kernel_init=nn.with_logical_partitioning(dense, ("hidden", "embed")),
            bias_init=nn.with_logical_partitioning(zeros, ("embed",)),
        )(nn.silu(h))  # fmt: skip
        query = nn.LayerNorm(
            name="attn_norm", param_dtype=dtype,
            scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ("embed",)),
            bias_init=nn.with_logical_partitioning(zeros, ("embed",)),
        )(h)  # fmt: skip
        keys = jnp.concatenate(
            [
                jnp.broadcast_to(comp.masked_max_pool(pool), (task.shape[0], self.pool_size, dim)),
                comp.masked_max_pool(task)[:, None],
            ],
            axis=1,
        )  # [B, pool + 1, D]
        temperature = self.temperature or float(np.sqrt(dim))
        weights = comp.attention_weights(query, keys, temperature)
        return comp.attention(pool, task, weights)


# --- hierarchical prompts ---------------------------------------------------------------

LEVEL_COMPOSITIONS = ("hadamard", "add", "concat", "weighted", "gated")


@gin.configurable(module="prompts")
class HierarchicalPrompt(nn.Module):
    """Shared → group → task: ``P_k = (S ⊙_g G_{g(k)}) ⊙_t T_k``.

    A static map ``task_groups`` (task k → group ``task_groups[k]``) routes each
    example; ``⊙_g`` / ``⊙_t`` are the compositions at the group and task levels
    (any of ``hadamard``, ``add``, ``concat``, ``weighted``, ``gated``).

    Parameters: ``shared`` ``[L, D]``; the group parts ``group_cols``
    ``[G, Lg, rg]`` and ``group_rows`` ``[G, rg, D]`` (axes ``groups, …``), or
    ``group_prompts`` ``[G, Lg, D]`` when ``group_rank=None``; the task parts
    ``task_cols``/``task_rows`` or ``task_prompts`` likewise (axes ``tasks, …``);
    ``group_weights`` [G] / ``task_weights`` [T] for ``weighted`` levels and
    ``group_gate_kernel``/``group_gate_bias``, ``task_gate_kernel``/``task_gate_bias``
    for ``gated`` levels. Defaults give MPT with a group level (both levels
    ``hadamard``, rank 1, starting at ``S``).

    gin::

        PromptedT5.prompt = @prompts.HierarchicalPrompt()
        prompts.HierarchicalPrompt.task_groups = (0, 0, 1, 1, 1)   # 5 tasks, 2 groups
        prompts.HierarchicalPrompt.length = 100
        prompts.HierarchicalPrompt.embed_dim = 768
        prompts.HierarchicalPrompt.group_composition = "hadamard"
        prompts.HierarchicalPrompt.task_composition = "add"

    Attributes:
      task_groups: group id of each task; ``num_tasks = len(task_groups)``.
      length: shared length ``L``.
      embed_dim: ``D``.
      num_groups: ``G``; ``None`` means ``max(task_groups) + 1``. Every group must
        hold a task (an empty group would be parameters that never train).
      group_composition, task_composition: the composition at each level.
      group_rank, task_rank: rank of each level's part (``None`` = full).
      group_length, task_length: part lengths (``None`` = the length of what they
        are combined with; only ``concat`` allows another length).
    """

    task_groups: Sequence[int]
    length: int
    embed_dim: int
    num_groups: int | None = None
    group_composition: str = "hadamard"
    task_composition: str = "hadamard"
    group_rank: int | None = 1
    task_rank: int | None = 1
    group_length: int | None = None
    task_length: int | None = None
    shared_init: Initializer = inits.uniform(0.5)
    param_dtype: Dtype = jnp.float32
    dtype: Dtype | None = None

    def __post_init__(self):
        object.__setattr__(self, "task_groups", tuple(int(g) for g in self.task_groups))
        _check_positive(
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
        for level, name in (("group", self.group_composition), ("task", self.task_composition)):
            if name not in LEVEL_COMPOSITIONS:
                raise ValueError(f"{level}_composition {name!r} is not one of {LEVEL_COMPOSITIONS}")
        comp.check_lengths(self.group_composition, self.length, self._group_length)
        comp.check_lengths(self.task_composition, self._mid_length, self._task_length)
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
        if self.group_composition == "concat":
            return self.length + self._group_length
        return self.length

    @property
    def _task_length(self) -> int:
        return self._mid_length if self.task_length is None else self.task_length

    @property
    def prompt_length(self) -> int:
        if self.task_composition == "concat":
            return self._mid_length + self._task_length
        return self._mid_length

    @nn.compact
    def __call__(self, task_ids, embedded_inputs=None, input_mask=None) -> Array:
        """Returns ``[batch, prompt_length, embed]``."""
        del input_mask
        task_ids = _prepare(task_ids, embedded_inputs, self.embed_dim, self.num_tasks)
        dim, dtype, g = self.embed_dim, self.param_dtype, self._num_groups
        group_ids = jnp.asarray(self.task_groups, jnp.int32)[task_ids]
        shared = _param(
            self, "shared", self.shared_init, (self.length, dim), ("prompt", "embed"), dtype
        )
        group = _task_part(
            self, "group", "groups", group_ids, (g, self._group_length, dim), self.group_rank,
            default_part_inits(self.group_composition, self.group_rank), dtype,
        )  # fmt: skip
        mid = _combine(
            self, self.group_composition, shared, group, group_ids, g, "group_weights",
            "groups", "group_gate", dtype,
        )  # fmt: skip
        task = _task_part(
            self, "task", "tasks", task_ids, (self.num_tasks, self._task_length, dim),
            self.task_rank, default_part_inits(self.task_composition, self.task_rank), dtype,
        )  # fmt: skip
        prompt = _combine(
            self, self.task_composition, mid, task, task_ids, self.num_tasks, "task_weights",
            "tasks", "task_gate", dtype,
        )  # fmt: skip
        return prompt.astype(_out_dtype(self.dtype, embedded_inputs, dtype))
