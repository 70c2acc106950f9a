"""Frozen means frozen: gradients reach the prompt only, and the step skips backbone work."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mpt_jax.backbone import get_config
from mpt_jax.model import PromptedT5
from mpt_jax.prompts import MultitaskPrompt

CFG = get_config("tiny", {"dropout_rate": 0.0})
MODEL = PromptedT5(CFG, prompt=MultitaskPrompt(num_tasks=2, length=4, embed_dim=32, num_ranks=2))
BATCH = {
    "encoder_input_tokens": np.array([[5, 6, 7, 8, 1, 0], [9, 10, 1, 0, 0, 0]], np.int32),
    "decoder_input_tokens": np.array([[0, 11, 12], [0, 13, 1]], np.int32),
    "decoder_target_tokens": np.array([[11, 12, 1], [13, 1, 0]], np.int32),
    "task_ids": np.array([0, 1], np.int32),
}


def loss(prompt_params, frozen_params, batch):
    """Token-level cross-entropy of the prompted model (mean over target tokens)."""
    params = {**frozen_params, "prompt": prompt_params}
    logits = MODEL.apply(
        {"params": params},
        batch["encoder_input_tokens"],
        batch["decoder_input_tokens"],
        batch["decoder_target_tokens"],
        batch["task_ids"],
        enable_dropout=False,
    )
    targets = batch["decoder_target_tokens"]
    ll = jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None], -1)[..., 0]
    weights = (targets > 0).astype(jnp.float32)
    return -jnp.sum(ll * weights) / jnp.sum(weights)


@pytest.fixture(scope="module")
def split_params():
    variables = jax.jit(
        lambda key: MODEL.init(
            key,
            BATCH["encoder_input_tokens"],
            BATCH["decoder_input_tokens"],
            BATCH["decoder_target_tokens"],
            BATCH["task_ids"],
            enable_dropout=False,
        )
    )(jax.random.PRNGKey(0))
    params = nn.unbox(variables["params"])
    prompt = params.pop("prompt")
    return prompt, params


def test_gradient_has_only_the_prompt_tree(split_params):
    prompt, frozen = split_params
    grads = jax.jit(jax.grad(loss))(prompt, frozen, BATCH)
    assert jax.tree_util.tree_structure(grads) == jax.tree_util.tree_structure(prompt)
    assert set(grads) == {"shared", "task_cols", "task_rows"}
    # Every prompt part learns (none is silently left out) ...
    for name, g in grads.items():
        assert np.abs(np.asarray(g)).max() > 0, name
    # ... and the values are the loss's derivative: central finite difference.
    eps = 1e-2
    bump = np.zeros(prompt["shared"].shape, np.float32)
    bump[1, 3] = eps
    up = {**prompt, "shared": prompt["shared"] + bump}
    down = {**prompt, "shared": prompt["shared"] - bump}
    jit_loss = jax.jit(loss)
    fd = (jit_loss(up, frozen, BATCH) - jit_loss(down, frozen, BATCH)) / (2 * eps)
    np.testing.assert_allclose(grads["shared"][1, 3], fd, rtol=2e-2, atol=1e-4)
    # The task rows of a task absent from a batch get no gradient.
    only_task0 = {**BATCH, "task_ids": np.array([0, 0], np.int32)}
    g0 = jax.jit(jax.grad(loss))(prompt, frozen, only_task0)
    np.testing.assert_array_equal(g0["task_rows"][1], 0.0)


def _flops(fn, *args) -> float:
    cost = jax.jit(fn).lower(*args).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    return float(cost["flops"])


def test_prompt_only_step_does_less_work_than_full_fine_tuning(split_params):
    prompt, frozen = split_params
    prompt_only = _flops(jax.grad(loss), prompt, frozen, BATCH)
    full = _flops(jax.grad(loss, argnums=(0, 1)), prompt, frozen, BATCH)
    forward = _flops(loss, prompt, frozen, BATCH)
    print(f"XLA flops: forward {forward:.3e}, prompt-only grad {prompt_only:.3e}, "
          f"full grad {full:.3e} (ratio {prompt_only / full:.2f})")  # fmt: skip
    assert forward < prompt_only < 0.85 * full
