"""Target-task MPT prompts initialised from a source MPT prompt.

After source training (one shared prompt ``P`` and factors ``U_k`` ``[L, r]``,
``V_k`` ``[r, D]`` for each source task k), a target prompt starts from:

- ``exact``: source task ``k``'s factors (copied when the ranks agree, else its
  matrix ``W_k = U_k V_k`` brought to the target rank);
- ``average``: the average of the source task matrices ``mean_k W_k``, brought to
  the target rank ``r`` by truncated SVD (the best rank-``r`` approximation).
  This is not ``mean(U) · mean(V)`` (what PEFT computes): the factors of
  different tasks are not aligned, so averaging them separately gives a
  matrix unrelated to any task's;
- ``shared_only``: ``P`` copied, fresh factors with ``U V ≈ 1`` (the task prompt
  starts at ``P``).

Every method gives factors for ``num_target_tasks ≥ 1`` target tasks (PEFT's
source-based inits require exactly one target task), all starting alike.

gin::

    target/prompts.init_from_source.method = "average"
    target/prompts.init_from_source.num_target_tasks = 8

A prompt started from a source can be brought to another scale by :class:`Rescale`
(``prompts.Rescale.match = "fresh"`` or ``"embeddings"``): source prompts trained with
parameter-scaled Adafactor grew to 4–300× a fresh prompt's RMS, and a prompt far
above the token embeddings' RMS trains badly whatever its content.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import gin
import jax
import numpy as np

from mpt_jax.prompts import initializers as inits

METHODS = ("exact", "average", "shared_only")
#: PEFT's ``prompt_tuning_init`` names, accepted as aliases of :data:`METHODS`.
PEFT_METHODS = {
    "EXACT_SOURCE_TASK": "exact",
    "AVERAGE_SOURCE_TASKS": "average",
    "ONLY_SOURCE_SHARED": "shared_only",
}


def truncated_factors(matrix: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """Factors ``U`` ``[L, rank]``, ``V`` ``[rank, D]`` of the best rank-``rank`` approximation.

    With the SVD ``matrix = sum_i s_i u_i v_iᵀ``, component ``i < rank`` is split
    evenly: ``U[:, i] = sqrt(s_i) u_i``, ``V[i] = sqrt(s_i) v_i``. A component whose
    singular value is (numerically) zero would leave both factors zero, and then
    neither ever receives a gradient; it gets ``U[:, i] = 0`` and
    ``V[i] = sqrt(s_0) v_i`` instead (the product is unchanged, ``U`` can learn).

    Args:
      matrix: ``[L, D]``.
      rank: ``1 ≤ rank ≤ min(L, D)``.
    """
    matrix = np.asarray(matrix, np.float64)
    length, dim = matrix.shape
    if not 1 <= rank <= min(length, dim):
        raise ValueError(f"rank {rank} out of range [1, {min(length, dim)}] for a {length}x{dim}")
    u, s, vt = np.linalg.svd(matrix, full_matrices=False)
    u, s, vt = u[:, :rank], s[:rank], vt[:rank]
    tol = max(length, dim) * np.finfo(np.float32).eps * max(s[0], 1e-30)
    alive = s > tol
    root = np.sqrt(s)
    cols = u * np.where(alive, root, 0.0)
    rows = vt * np.where(alive, root, np.sqrt(s[0]) if s[0] > 0 else 1.0)[:, None]
    return cols, rows


def _check_source(source: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    missing = sorted({"shared", "task_cols", "task_rows"} - set(source))
    if missing:
        raise ValueError(f"source prompt lacks {missing}; it has {sorted(source)}")
    names = ("shared", "task_cols", "task_rows")
    shared, cols, rows = (np.asarray(jax.device_get(source[k])) for k in names)
    if shared.ndim != 2 or cols.ndim != 3 or rows.ndim != 3:
        raise ValueError(
            f"source prompt shapes shared {shared.shape}, task_cols {cols.shape}, task_rows "
            f"{rows.shape} are not [L, D], [T, L, r], [T, r, D]"
        )
    (length, dim), (tasks, _, rank) = shared.shape, cols.shape
    if cols.shape != (tasks, length, rank) or rows.shape != (tasks, rank, dim):
        raise ValueError(
            f"source prompt shapes do not fit together: shared {shared.shape}, task_cols "
            f"{cols.shape}, task_rows {rows.shape}"
        )
    return shared, cols, rows


@gin.configurable(module="prompts")
def init_from_source(
    source: Mapping[str, Any],
    method: str = "average",
    num_target_tasks: int | None = None,
    rank: int | None = None,
    source_task: int = 0,
    source_tasks: Sequence[int] | None = None,
    template: Mapping[str, Any] | None = None,
    seed: int | jax.Array = 0,
    perturbation: float = 1e-2,
) -> dict[str, np.ndarray]:
    """Builds a target MPT prompt tree ``{shared, task_cols, task_rows}`` from a source one.

    Args:
      source: source MPT parameters ``shared`` ``[L, D]``, ``task_cols`` ``[Ts, L, rs]``,
        ``task_rows`` ``[Ts, rs, D]``.
      method: ``"exact"``, ``"average"`` or ``"shared_only"`` (see the module doc), or
        PEFT's names ``EXACT_SOURCE_TASK``, ``AVERAGE_SOURCE_TASKS``, ``ONLY_SOURCE_SHARED``.
      num_target_tasks: ``T`` of the target prompt; default 1 (or the template's).
      rank: target rank ``r``; default the source rank (or the template's).
      source_task: the source task ``k`` copied by ``exact``.
      source_tasks: the source tasks averaged by ``average`` (default all).
      template: the target MultitaskPrompt's parameters (e.g. from ``init`` or
        ``jax.eval_shape``); its ``shared`` shape must equal the source's, and
        ``T`` and ``r`` are read from it.
      seed: random seed (an int, or a PRNG key) of the fresh factors of ``shared_only``.
      perturbation: their symmetry-breaking scale (see ``ones_factor_cols``).

    Returns:
      numpy arrays ``shared`` ``[L, D]``, ``task_cols`` ``[T, L, r]``,
      ``task_rows`` ``[T, r, D]`` in the source's dtype; every target task starts
      with the same factors.
    """
    method = PEFT_METHODS.get(method, method)
    if method not in METHODS:
        raise ValueError(
            f"unknown method {method!r}; expected one of {METHODS} or {tuple(PEFT_METHODS)}"
        )
    shared, cols, rows = _check_source(source)
    num_source, length, source_rank = cols.shape
    dim = shared.shape[1]
    if template is not None:
        template = nn.unbox(template)
        want = tuple(template["shared"].shape)
        if want != shared.shape:
            raise ValueError(
                f"source shared prompt has shape {shared.shape} but the target needs {want}"
            )
        for name, value, got in (
            ("num_target_tasks", num_target_tasks, template["task_cols"].shape[0]),
            ("rank", rank, template["task_cols"].shape[2]),
        ):
            if value is not None and value != got:
                raise ValueError(f"{name}={value} but the template has {name}={got}")
        num_target_tasks, rank = template["task_cols"].shape[0], template["task_cols"].shape[2]
    num_target_tasks = 1 if num_target_tasks is None else num_target_tasks
    rank = source_rank if rank is None else rank
    if num_target_tasks < 1:
        raise ValueError(f"num_target_tasks must be at least 1, got {num_target_tasks}")
    if not 1 <= rank <= min(length, dim):
        raise ValueError(f"rank {rank} out of range [1, {min(length, dim)}]")

    if method == "shared_only":
        keys = jax.random.split(seed if isinstance(seed, jax.Array) else jax.random.key(seed))
        task_cols = np.asarray(
            inits.ones_factor_cols(perturbation)(keys[0], (num_target_tasks, length, rank))
        )
        task_rows = np.asarray(
            inits.ones_factor_rows(perturbation)(keys[1], (num_target_tasks, rank, dim))
        )
        return _tree(shared, task_cols, task_rows)

    if method == "exact":
        if not 0 <= source_task < num_source:
            raise ValueError(f"source_task {source_task} out of range [0, {num_source})")
        if rank == source_rank:
            u, v = cols[source_task], rows[source_task]
        else:
            u, v = truncated_factors(cols[source_task] @ rows[source_task], rank)
    else:  # average
        chosen = list(range(num_source)) if source_tasks is None else list(source_tasks)
        if not chosen:
            raise ValueError("source_tasks is empty: nothing to average")
        for k in chosen:
            if not 0 <= k < num_source:
                raise ValueError(f"source task {k} out of range [0, {num_source})")
        mean = np.mean([cols[k].astype(np.float64) @ rows[k] for k in chosen], axis=0)
        u, v = truncated_factors(mean, rank)
    task_cols = np.broadcast_to(u, (num_target_tasks, length, rank))
    task_rows = np.broadcast_to(v, (num_target_tasks, rank, dim))
    return _tree(shared, task_cols, task_rows)


def _tree(shared: np.ndarray, cols: np.ndarray, rows: np.ndarray) -> dict[str, np.ndarray]:
    dtype = shared.dtype
    return {
        "shared": np.array(shared, dtype),
        "task_cols": np.array(cols, dtype),
        "task_rows": np.array(rows, dtype),
    }


# -- rescaling -------------------------------------------------------------------------

RESCALE_MATCHES = ("off", "fresh", "embeddings")


def prompt_rms(params: Mapping[str, Any]) -> float:
    """RMS ``sqrt(mean(p²))`` of the prompt a tree makes, over every task's prompt.

    - MPT ``{shared [L, D], task_cols [T, L, r], task_rows [T, r, D]}``: of the
      composed prompts ``P ∘ (U_k V_k)`` ``[T, L, D]``;
    - a single prompt ``{shared [L, D]}``: of ``P``;
    - a table ``{task_prompts [T, L, D]}``: of the table.
    """
    keys = set(params)
    if keys == {"shared", "task_cols", "task_rows"}:
        shared, cols, rows = _check_source(params)
        prompt = shared.astype(np.float64) * np.einsum("tlr,trd->tld", cols, rows)
    elif keys == {"shared"}:
        prompt = np.asarray(params["shared"], np.float64)
    elif keys == {"task_prompts"}:
        prompt = np.asarray(params["task_prompts"], np.float64)
    else:
        raise ValueError(f"no prompt RMS for parameters {sorted(keys)}")
    return float(np.sqrt(np.mean(np.square(prompt))))


@gin.configurable(module="prompts")
@dataclasses.dataclass(frozen=True)
class Rescale:
    """Brings a prompt started from a source to a reference RMS.

    With ``ρ`` the reference and ``prompt_rms`` as in :func:`prompt_rms`, the started
    tree's ``shared`` is multiplied by ``c = ρ / prompt_rms(start)``; every prompt it
    makes (``P ∘ (U_k V_k)`` is linear in ``P``) is scaled by ``c`` and its RMS becomes
    ``ρ``, while the task factors and the prompt's direction are unchanged.

    Attributes:
      match: ``"off"`` (keep the source's scale), ``"fresh"`` (``ρ`` = the RMS of the
        prompt the generator's own initialiser makes) or ``"embeddings"`` (``ρ`` = the
        RMS of the backbone's token-embedding table, ``sqrt(mean(E²))`` over
        ``[vocab, embed]``).
    """

    match: str = "off"

    def __post_init__(self):
        if self.match not in RESCALE_MATCHES:
            raise ValueError(
                f"prompts.Rescale.match must be one of {RESCALE_MATCHES}, got {self.match!r}"
            )

    def reference(self, fresh: Mapping[str, Any], embeddings: np.ndarray) -> float | None:
        """``ρ`` (None when ``match == "off"``)."""
        if self.match == "fresh":
            return prompt_rms(fresh)
        if self.match == "embeddings":
            return float(np.sqrt(np.mean(np.square(np.asarray(embeddings, np.float64)))))
        return None

    def __call__(
        self, start: Mapping[str, Any], *, fresh: Mapping[str, Any], embeddings: np.ndarray
    ) -> dict[str, np.ndarray]:
        """``start`` with ``shared`` scaled so the prompt's RMS is the reference.

        Args:
          start: the started tree (MPT's or a single prompt's; it must have ``shared``).
          fresh: the generator's own initial tree (same structure).
          embeddings: the backbone's token embeddings ``[vocab, embed]``.
        """
        start = {k: np.asarray(v) for k, v in start.items()}
        rho = self.reference(fresh, embeddings)
        if rho is None:
            return start
        rms = prompt_rms(start)
        if not rms > 0:
            raise ValueError(f"cannot rescale a source prompt of RMS {rms} to {rho}")
        shared = start["shared"]
        return {**start, "shared": (shared * (rho / rms)).astype(shared.dtype)}
