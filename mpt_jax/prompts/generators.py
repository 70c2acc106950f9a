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
