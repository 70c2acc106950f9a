"""The demo's batches and their scoring: numpy batches at fixed lengths, and one compiled
scorer of exact match and rank classification for many prompts at once.

``encode`` turns examples of :mod:`mpt_jax.data.synthetic` into the model's batch at the
demo's lengths; ``draw``, ``concat`` and ``stack_batches`` make training batches from
them (one ``[N, ...]`` set per run, stacked ``[R, N, ...]`` for a vmapped group).
``scorer(config, length)`` returns ``score(prompts [U, L, D], backbone, data [G, N, ...],
which [U]) -> (em [U], rc [U])``; ``prompts_of`` reads every run's prompts off a
trained group for it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mpt_jax.data import synthetic
from mpt_jax.decoding import shift_right
from mpt_jax.model import PromptedT5
from mpt_jax.prompts import SinglePrompt

PyTree = Any
INPUT_LENGTH = 12  # at most 10 symbols + EOS, rounded up
TARGET_LENGTH = 4  # "yes" + EOS


# -- batches ----------------------------------------------------------------------------------


def encode(examples: list[dict[str, str]], task_ids) -> dict[str, np.ndarray]:
    """``to_batch`` at the demo's lengths; ``task_ids`` an int or one per example.

    Returns ``encoder_input_tokens [N, INPUT_LENGTH]``, ``decoder_*`` ``[N, TARGET_LENGTH]``
    and ``task_ids [N]`` for ``N = len(examples)``.
    """
    ids = np.broadcast_to(np.asarray(task_ids, np.int32), (len(examples),))
    return synthetic.to_batch(examples, ids, input_length=INPUT_LENGTH, target_length=TARGET_LENGTH)


def draw(data: dict[str, np.ndarray], size: int, rng: np.random.Generator) -> dict:
    """``size`` rows of ``data`` (``[N, ...]`` each): all of them reshuffled and tiled when
    there are at most ``size`` (a k-shot set), else ``size`` of them without replacement."""
    n = len(data["task_ids"])
    order = rng.permutation(n)
    index = np.resize(order, size) if n <= size else order[:size]
    return {k: v[index] for k, v in data.items()}


def concat(batches: Sequence[dict]) -> dict:
    """Batches ``[N_i, ...]`` joined along the example axis: ``[sum N_i, ...]``."""
    return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


def stack_batches(batches: Sequence[dict]) -> dict:
    """``G`` batches of one shape ``[N, ...]`` stacked on a new leading axis: ``[G, N, ...]``."""
    return {k: np.stack([b[k] for b in batches]) for k in batches[0]}


# -- scoring ----------------------------------------------------------------------------------


def prompts_of(generator: nn.Module, params: PyTree, num_tasks: int) -> jax.Array:
    """Every run's prompt for task ids ``0 … num_tasks-1``: ``[R, num_tasks, L, D]`` from a
    group's params ``[R, ...]``."""
    ids = jnp.arange(num_tasks, dtype=jnp.int32)
    return jax.vmap(lambda p: generator.apply({"params": p}, ids))(params)


@functools.cache
def scorer(config, length: int) -> Callable:
    """``score(prompts [U, L, D], backbone, data [G, N, ...], which [U]) -> (em, rc) [U]``:
    exact match and rank-classification accuracy (%) of unit ``u``'s prompt on data set
    ``which[u]``, one compiled program for every method.

    One pass scores both: the encoder runs once, the decoder once per label word under
    teacher forcing. Rank classification picks the label with the higher log-likelihood;
    exact match asks that the gold label's every token (EOS included) be the argmax,
    which is exactly when greedy decoding emits it.
    """
    model = PromptedT5(config, SinglePrompt(length=length, embed_dim=config.emb_dim))
    labels = jnp.asarray(
        np.stack(
            [
                encode([{"inputs": "", "targets": w}], 0)["decoder_target_tokens"][0]
                for w in synthetic.LABELS
            ]
        )
    )

    def one(prompt, backbone, data):
        params = {**backbone, "prompt": {"shared": prompt}}
        tokens = data["encoder_input_tokens"]  # [N, S]
        n, c = tokens.shape[0], labels.shape[0]
        encoded = model.apply(
            {"params": params},
            tokens,
            jnp.zeros((n,), jnp.int32),
            enable_dropout=False,
            method=PromptedT5.encode,
        )
        targets = jnp.tile(labels, (n, 1))  # [N · C, T], example-major
        logits = model.apply(
            {"params": params},
            jnp.repeat(encoded, c, 0),
            jnp.repeat(tokens, c, 0),
            shift_right(targets),
            targets,
            enable_dropout=False,
            method=PromptedT5.decode,
        )
        logp = jax.nn.log_softmax(logits.astype(jnp.float32), -1)
        token_ll = jnp.take_along_axis(logp, targets[..., None], -1)[..., 0] * (targets > 0)
        ll = token_ll.sum(-1).reshape(n, c)
        hit = jnp.all((jnp.argmax(logp, -1) == targets) | (targets == 0), -1).reshape(n, c)
        gold = jnp.argmax(jnp.all(data["decoder_target_tokens"][:, None] == labels, -1), -1)
        em = jnp.take_along_axis(hit, gold[:, None], -1)[:, 0]
        return 100 * jnp.mean(em), 100 * jnp.mean(jnp.argmax(ll, -1) == gold)

    @jax.jit
    def score(prompts, backbone, data, which):
        return jax.vmap(one, in_axes=(0, None, 0))(
            prompts, backbone, jax.tree.map(lambda x: x[which], data)
        )

    return score
