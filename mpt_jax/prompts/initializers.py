"""Prompt initialisers: closures ``(rng, shape, dtype=float32) -> array``.

Each public function here returns an initialiser in the style of
``jax.nn.initializers`` and google-research/prompt-tuning, so a generator takes it
as a field and gin binds it::

    MultitaskPrompt.shared_init = @prompts.uniform()
    prompts.uniform.scale = 0.5

Shapes: prompt initialisers fill ``[..., length, embed]``; the leading axes (tasks,
groups, pool) are filled independently (random ones) or by repetition (the
deterministic ones: text, class labels), as each docstring says.

Embedding tables (``embeddings``) are ``[vocab, embed]`` numpy arrays or a path to
a ``.npy`` file holding one (gin-friendly); the caller takes them from the frozen
backbone, e.g. ``params["token_embedder"]["embedding"]``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import gin
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
Initializer = Callable[..., Array]


def _table(embeddings: np.ndarray | str | os.PathLike) -> np.ndarray:
    """Returns an embedding table ``[vocab, embed]`` from an array or a ``.npy`` path."""
    if isinstance(embeddings, str | os.PathLike):
        path = os.fspath(embeddings)
        if not os.path.exists(path):
            raise FileNotFoundError(f"embedding table file {path!r} does not exist")
        embeddings = np.load(path)
    table = np.asarray(embeddings)
    if table.ndim != 2:
        raise ValueError(f"embedding table must be [vocab, embed], got shape {table.shape}")
    return table


def _check_embed(name: str, shape: Sequence[int], embed: int) -> None:
    if len(shape) < 2 or shape[-1] != embed:
        raise ValueError(
            f"{name}: cannot fill shape {tuple(shape)} from embeddings of size {embed}; "
            f"the last axis must be {embed}"
        )


@gin.register(module="prompts")
def uniform(scale: float = 0.5) -> Initializer:
    """Uniform in ``[-scale, scale)`` (prompt-tuning's default, scale 0.5)."""

    def init(rng: Array, shape: Sequence[int], dtype=jnp.float32) -> Array:
        return jax.random.uniform(rng, shape, dtype, minval=-scale, maxval=scale)

    return init


@gin.register(module="prompts")
def normal(stddev: float = 0.02) -> Initializer:
    """Normal with mean 0 and standard deviation ``stddev`` (PEFT's factor init, 0.02)."""

    def init(rng: Array, shape: Sequence[int], dtype=jnp.float32) -> Array:
        return stddev * jax.random.normal(rng, shape, dtype)

    return init


@gin.register(module="prompts")
def constant(value: float = 0.0, noise: float = 0.0) -> Initializer:
    """Every entry ``value``, plus ``noise`` times a standard normal when ``noise > 0``.

    E.g. ``constant(1.0, 1e-2)`` for a full-rank Hadamard task part that starts
    near 1, ``constant(0.0)`` for an additive task part or mixing-weight logits.
    """

    def init(rng: Array, shape: Sequence[int], dtype=jnp.float32) -> Array:
        base = jnp.full(shape, value, jnp.float32)
        if noise:
            base = base + noise * jax.random.normal(rng, shape, jnp.float32)
        return base.astype(dtype)

    return init


@gin.register(module="prompts")
def ones_factor_cols(perturbation: float = 1e-2) -> Initializer:
    """Column factors ``U`` ``[..., L, r]`` of a task matrix that starts ``U V ≈ 1``.

    Pair with :func:`ones_factor_rows` (same ``perturbation``). Entries are
    ``1 + eps * a`` where ``a`` is standard normal centred over the rank axis, so
    for rank ``r > 1`` the components differ (the symmetry between them is broken)
    while their first-order contributions to ``U V`` cancel:
    ``U V = 1 + eps^2 * mean_j(a_j b_j)``. For rank 1 there is nothing to break and
    the factor is exactly 1.
    """

    def init(rng: Array, shape: Sequence[int], dtype=jnp.float32) -> Array:
        a = jax.random.normal(rng, shape, jnp.float32)
        a = a - jnp.mean(a, axis=-1, keepdims=True)
        return (1.0 + perturbation * a).astype(dtype)

    return init


@gin.register(module="prompts")
def ones_factor_rows(perturbation: float = 1e-2) -> Initializer:
    """Row factors ``V`` ``[..., r, D]`` with ``U V ≈ 1``; see :func:`ones_factor_cols`.

    Entries are ``(1 + eps * b) / r`` with ``b`` standard normal centred over the
    rank axis, so the ``r`` components sum to 1.
    """

    def init(rng: Array, shape: Sequence[int], dtype=jnp.float32) -> Array:
        rank = shape[-2]
        b = jax.random.normal(rng, shape, jnp.float32)
        b = b - jnp.mean(b, axis=-2, keepdims=True)
        return ((1.0 + perturbation * b) / rank).astype(dtype)

    return init


@gin.register(module="prompts")
def from_sampled_vocab(embeddings: np.ndarray | str, num_ids: int | None = None) -> Initializer:
    """Each prompt position is the embedding of a token id drawn uniformly at random.

    Args:
      embeddings: table ``[vocab, embed]`` (or a ``.npy`` path).
      num_ids: draw from the first ``num_ids`` ids only (e.g. the 5,000 most common
        SentencePiece pieces, as in Lester et al. 2021); ``None`` = whole table.

    gin::

        MultitaskPrompt.shared_init = @prompts.from_sampled_vocab()
        prompts.from_sampled_vocab.embeddings = "/path/embedding.npy"
        prompts.from_sampled_vocab.num_ids = 5000
    """
    table = _table(embeddings)
    vocab = table.shape[0] if num_ids is None else num_ids
    if not 1 <= vocab <= table.shape[0]:
        raise ValueError(f"num_ids={num_ids} out of range [1, {table.shape[0]}]")

    def init(rng: Array, shape: Sequence[int], dtype=jnp.float32) -> Array:
        _check_embed("from_sampled_vocab", shape, table.shape[1])
        ids = jax.random.randint(rng, tuple(shape[:-1]), 0, vocab)
        return jnp.asarray(table, dtype)[ids]

    return init


def _fit_length(rows: np.ndarray, length: int, what: str, if_short: str, if_long: str):
    """Repeats/crops ``rows`` ``[n, D]`` to ``[length, D]`` by the explicit rules."""
    n = rows.shape[0]
    if n < length:
        if if_short == "error":
            raise ValueError(f"{what} gives {n} positions but the prompt has length {length}")
        if if_short != "repeat":
            raise ValueError(f"if_short must be 'repeat' or 'error', got {if_short!r}")
        rows = np.concatenate([rows] * (-(-length // n)), axis=0)
    elif n > length:
        if if_long == "error":
            raise ValueError(
                f"{what} gives {n} positions but the prompt has length {length}; "
                "pass if_long='crop' to keep the first positions"
            )
        if if_long != "crop":
            raise ValueError(f"if_long must be 'crop' or 'error', got {if_long!r}")
    return rows[:length]


@gin.register(module="prompts")
def from_text(
    embeddings: np.ndarray | str,
    token_ids: Sequence[int],
    if_short: str = "repeat",
    if_long: str = "error",
) -> Initializer:
    """The prompt is the embedded text ``token_ids``, fitted to the prompt length.

    Args:
      embeddings: table ``[vocab, embed]`` (or a ``.npy`` path).
      token_ids: the text's token ids (tokenise it with the backbone's vocabulary).
      if_short: ``"repeat"`` (cycle the text until the length is filled, as PEFT's
        TEXT init does) or ``"error"``.
      if_long: ``"error"`` (default: never crop silently) or ``"crop"`` (keep the
        first ``length`` tokens).

    Leading axes of the shape (tasks, …) all get the same text prompt.
    """
    table = _table(embeddings)
    ids = np.asarray(token_ids, np.int64)
    if ids.ndim != 1 or ids.size == 0:
        raise ValueError(f"token_ids must be a non-empty list of ids, got {token_ids!r}")
    bad = ids[(ids < 0) | (ids >= table.shape[0])]
    if bad.size:
        raise ValueError(f"token id {int(bad[0])} out of range [0, {table.shape[0]})")

    def init(rng: Array, shape: Sequence[int], dtype=jnp.float32) -> Array:
        del rng
        _check_embed("from_text", shape, table.shape[1])
        rows = _fit_length(table[ids], shape[-2], "the text", if_short, if_long)
        return jnp.broadcast_to(jnp.asarray(rows, dtype), tuple(shape))

    return init


@gin.register(module="prompts")
def from_class_labels(
    embeddings: np.ndarray | str,
    label_token_ids: Sequence[Sequence[int]],
    rest_init: Initializer | None = None,
) -> Initializer:
    """The first positions are the class labels' embeddings (each label's tokens averaged).

    Position ``i < num_labels`` holds the mean embedding of label ``i``'s tokens
    (e.g. ``"entailment"`` → several pieces → one vector); the remaining positions
    come from ``rest_init`` (default ``uniform(0.5)``). More labels than positions
    is an error.

    Args:
      embeddings: table ``[vocab, embed]`` (or a ``.npy`` path).
      label_token_ids: one list of token ids per label.
      rest_init: initialiser for the positions after the labels.
    """
    table = _table(embeddings)
    vectors = []
    for i, label in enumerate(label_token_ids):
        ids = np.asarray(label, np.int64)
        if ids.ndim != 1 or ids.size == 0:
            raise ValueError(f"label {i} has no token ids: {label!r}")
        bad = ids[(ids < 0) | (ids >= table.shape[0])]
        if bad.size:
            raise ValueError(
                f"label {i}: token id {int(bad[0])} out of range [0, {table.shape[0]})"
            )
        vectors.append(table[ids].mean(axis=0))
    labels = np.stack(vectors) if vectors else np.zeros((0, table.shape[1]), table.dtype)
    rest = uniform(0.5) if rest_init is None else rest_init

    def init(rng: Array, shape: Sequence[int], dtype=jnp.float32) -> Array:
        _check_embed("from_class_labels", shape, table.shape[1])
        length, n = shape[-2], labels.shape[0]
        if n > length:
            raise ValueError(f"{n} class labels do not fit in a prompt of length {length}")
        filled = rest(rng, tuple(shape), dtype)
        head = jnp.broadcast_to(jnp.asarray(labels, dtype), tuple(shape[:-2]) + labels.shape)
        return filled.at[..., :n, :].set(head)

    return init


@gin.register(module="prompts")
def from_npy(path: str | os.PathLike) -> Initializer:
    """The array stored in the ``.npy`` file ``path``; its shape must equal the parameter's."""
    path = os.fspath(path)

    def init(rng: Array, shape: Sequence[int], dtype=jnp.float32) -> Array:
        del rng
        if not os.path.exists(path):
            raise FileNotFoundError(f"prompt file {path!r} does not exist")
        array = np.load(path)
        if tuple(array.shape) != tuple(shape):
            raise ValueError(
                f"prompt file {path!r} holds shape {tuple(array.shape)} but the parameter "
                f"has shape {tuple(shape)}"
            )
        return jnp.asarray(array, dtype)

    return init
