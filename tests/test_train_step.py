"""The prompt-only train step: exactly the prompt parameters change, and every one of them.

The model here is a small stand-in that follows ``PromptedT5``'s protocol (same call
signature, ``forward_with_hidden``, backbone parameters next to a ``prompt`` subtree),
so the step is pinned independently of the backbone's size; the end-to-end runs in
tests/test_loop.py and tests/test_cli.py drive the real prompted T5.
"""

import os
import subprocess
import sys
import textwrap

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mpt_jax.prompts.generators import MultitaskPrompt, TaskPrompts
from mpt_jax.training import (
    Adafactor,
    Distillation,
    PromptRecipe,
    TrainState,
    distillation_loss_fn,
    make_eval_step,
    make_optimizer,
    make_train_step,
    split_params,
    task_loss_fn,
)
from mpt_jax.training import mesh as mesh_lib

VOCAB, EMBED, LENGTH, TASKS = 13, 8, 3, 2


class StandInPromptedModel(nn.Module):
    """Embeds, prepends the prompt's pooled signal, predicts each target token."""

    prompt: nn.Module

    def setup(self):
        self.token_embedder = nn.Embed(VOCAB, EMBED)
        self.mix = nn.Dense(EMBED, name="mix")
        self.logits_dense = nn.Dense(VOCAB, name="logits_dense")
        self.dropout = nn.Dropout(0.1)

    def forward_with_hidden(
        self,
        encoder_input_tokens,
        decoder_input_tokens,
        decoder_target_tokens,
        task_ids,
        *,
        enable_dropout=True,
    ):
        del decoder_target_tokens
        mask = (encoder_input_tokens > 0).astype(jnp.float32)
        x = self.token_embedder(encoder_input_tokens)  # [B, S, D]
        p = self.prompt(task_ids, x, mask)  # [B, L, D]
        enc = jnp.tanh(self.mix(x + p.mean(1, keepdims=True)))  # [B, S, D]
        pooled = ((enc * mask[..., None]).sum(1) + p.sum(1)) / (mask.sum(1, keepdims=True) + 3)
        dec = self.token_embedder(decoder_input_tokens) + pooled[:, None]
        dec = self.dropout(dec, deterministic=not enable_dropout)
        return self.logits_dense(dec), {"encoder": enc, "decoder": dec}

    def __call__(self, *args, enable_dropout=True, **kwargs):
        return self.forward_with_hidden(*args, enable_dropout=enable_dropout, **kwargs)[0]


def make_batch(seed=0, batch=4):
    rng = np.random.default_rng(seed)
    enc = rng.integers(2, VOCAB, size=(batch, 5)).astype(np.int32)
    enc[:, -1] = 0
    tgt = rng.integers(2, VOCAB, size=(batch, 3)).astype(np.int32)
    dec_in = np.concatenate([np.zeros((batch, 1), np.int32), tgt[:, :-1]], 1)
    return {
        "encoder_input_tokens": enc,
        "decoder_input_tokens": dec_in,
        "decoder_target_tokens": tgt,
        "decoder_loss_weights": np.ones_like(tgt, np.float32),
        "task_ids": (np.arange(batch) % TASKS).astype(np.int32),
    }


@pytest.fixture(scope="module")
def setup():
    model = StandInPromptedModel(MultitaskPrompt(num_tasks=TASKS, length=LENGTH, embed_dim=EMBED))
    batch = make_batch()
    inputs = {k: v for k, v in batch.items() if k != "decoder_loss_weights"}
    params = nn.unbox(model.init(jax.random.key(0), **inputs, enable_dropout=False)["params"])
    prompt, backbone = split_params(params)
    tx = make_optimizer()
    step = make_train_step(task_loss_fn(model), tx)
    return model, batch, prompt, backbone, tx, step


def test_step_changes_every_prompt_parameter_and_nothing_else(setup):
    model, batch, prompt, backbone, tx, step = setup
    assert set(prompt) == {"shared", "task_cols", "task_rows"}
    before_prompt = jax.tree.map(np.array, prompt)
    before_backbone = jax.tree.map(np.array, backbone)
    state = TrainState.create(jax.tree.map(jnp.array, prompt), tx)
    # The optimizer state covers the prompt tree only: no leaf has a backbone shape.
    backbone_shapes = {x.shape for x in jax.tree.leaves(backbone)}
    assert not any(
        x.shape in backbone_shapes and x.size > 1 for x in jax.tree.leaves(state.opt_state)
    )
    frozen = {"backbone": backbone}
    state, metrics = step(state, frozen, batch, jax.random.key(1))
    assert int(state.step) == 1 and int(metrics["nonfinite"]) == 0
    for name in ("shared", "task_cols", "task_rows"):
        new, old = np.asarray(state.params[name]), before_prompt[name]
        changed = new != old
        assert changed.all(), f"{name}: {np.size(changed) - changed.sum()} entries unchanged"
    jax.tree.map(np.testing.assert_array_equal, frozen["backbone"], before_backbone)
    assert set(jax.tree.leaves(jax.tree.map(lambda _: 1, state.params))) == {1}
    assert jax.tree.structure(state.params) == jax.tree.structure(before_prompt)


@pytest.mark.parametrize("scaled", [False, True])
def test_first_adafactor_step_matches_formula(setup, scaled):
    """Prompt tuning's Adafactor (factoring off, decay 0.8, parameter scaling off):
    Δθ = -(lr·sign g + wd·θ); with parameter scaling on, -(lr·max(rms θ, 1e-3)·sign g + wd·θ)."""
    model, batch, prompt, backbone, _, step = setup
    tx = make_optimizer(PromptRecipe(optimizer=Adafactor(multiply_by_parameter_scale=scaled)))
    loss_fn = task_loss_fn(model)
    grads = jax.grad(lambda p: loss_fn(p, {"backbone": backbone}, batch, None)[0])(prompt)
    state = TrainState.create(jax.tree.map(jnp.array, prompt), tx)
    new = state.apply_gradients(grads, tx)
    for name in prompt:
        theta, g = np.asarray(prompt[name], np.float64), np.asarray(grads[name], np.float64)
        rms = max(np.sqrt(np.mean(theta**2)), 1e-3) if scaled else 1.0
        want = theta - (0.3 * rms * np.sign(g) + 1e-5 * theta)
        np.testing.assert_allclose(new.params[name], want, rtol=1e-5, atol=1e-7)


def test_nonfinite_loss_leaves_prompt_and_optimizer_unchanged(setup):
    model, batch, prompt, backbone, tx, _ = setup
    base = task_loss_fn(model)

    def poisoned(p, frozen, b, rng):
        loss, metrics = base(p, frozen, b, rng)
        return loss * b["scale"], metrics

    step = make_train_step(poisoned, tx, donate=False)
    state = TrainState.create(jax.tree.map(jnp.array, prompt), tx)
    bad = {**batch, "scale": np.full((4,), np.nan, np.float32)[:1].reshape(())}
    new, metrics = step(state, {"backbone": backbone}, bad, jax.random.key(0))
    assert int(metrics["nonfinite"]) == 1
    assert int(new.step) == 1
    jax.tree.map(np.testing.assert_array_equal, new.params, state.params)
    jax.tree.map(np.testing.assert_array_equal, new.opt_state, state.opt_state)


def test_eval_step_is_deterministic_and_token_weighted(setup):
    model, batch, prompt, backbone, _, _ = setup
    eval_step = make_eval_step(task_loss_fn(model))
    a = eval_step(prompt, {"backbone": backbone}, batch)
    b = eval_step(prompt, {"backbone": backbone}, batch)
    assert float(a["loss"]) == float(b["loss"])
    assert float(a["num_tokens"]) == batch["decoder_loss_weights"].sum()


def test_distillation_from_identical_teacher_is_the_task_loss(setup):
    """Teacher prompt k = student prompt of task k ⇒ KL = MSE = 0 and L = L_task."""
    model, batch, prompt, backbone, _, _ = setup
    student_prompt = model.prompt
    per_task = jax.vmap(lambda t: student_prompt.apply({"params": prompt}, t[None], None)[0])(
        jnp.arange(TASKS)
    )  # [T, L, D]
    teacher = StandInPromptedModel(TaskPrompts(num_tasks=TASKS, length=LENGTH, embed_dim=EMBED))
    recipe = Distillation(hidden_states="both")
    loss_fn = distillation_loss_fn(model, teacher, recipe)
    frozen = {"backbone": backbone, "teacher_prompt": {"task_prompts": per_task}}
    loss, metrics = loss_fn(prompt, frozen, batch, None)
    task_loss, _ = task_loss_fn(model)(prompt, {"backbone": backbone}, batch, None)
    np.testing.assert_allclose(metrics["kl"], 0.0, atol=1e-6)
    np.testing.assert_allclose(metrics["mse"], 0.0, atol=1e-10)
    np.testing.assert_allclose(loss, task_loss, rtol=1e-6)
    # A different teacher adds λ·(KL + MSE) and its gradient never reaches the teacher.
    shifted = {"task_prompts": per_task + 0.3}
    frozen = {"backbone": backbone, "teacher_prompt": shifted}
    loss2, m2 = loss_fn(prompt, frozen, batch, None)
    want = m2["task_loss"] + recipe.weight * (m2["kl"] + m2["mse"])
    np.testing.assert_allclose(loss2, want, rtol=1e-6)
    assert float(m2["kl"]) > 0 and float(m2["mse"]) > 0
    g = jax.grad(lambda f: loss_fn(prompt, f, batch, None)[0])(frozen)
    np.testing.assert_array_equal(g["teacher_prompt"]["task_prompts"], 0.0)


def test_batch_that_does_not_divide_over_devices_is_refused():
    mesh = mesh_lib.data_mesh(jax.devices() * 1)
    if mesh.shape["data"] == 1:
        fake = type("M", (), {"shape": {"data": 3}})()
        with pytest.raises(ValueError, match="multiple of 3"):
            mesh_lib.shard_batch({"x": np.zeros((4, 2))}, fake)


TWO_DEVICE_SCRIPT = textwrap.dedent(
    """
    import jax, jax.numpy as jnp, numpy as np, flax.linen as nn
    import tests.test_train_step as t
    from mpt_jax.training import TrainState, make_optimizer, make_train_step, task_loss_fn
    from mpt_jax.training import mesh as mesh_lib
    from mpt_jax.training.state import split_params
    assert len(jax.devices()) == 2, jax.devices()
    model = t.StandInPromptedModel(t.MultitaskPrompt(num_tasks=2, length=3, embed_dim=8))
    batch = t.make_batch()
    inputs = {k: v for k, v in batch.items() if k != "decoder_loss_weights"}
    params = nn.unbox(model.init(jax.random.key(0), **inputs, enable_dropout=False)["params"])
    prompt, backbone = split_params(params)
    tx = make_optimizer()
    out = {}
    for n in (1, 2):
        mesh = mesh_lib.data_mesh(jax.devices()[:n])
        step = make_train_step(task_loss_fn(model), tx, mesh=mesh)
        state = mesh_lib.replicate(TrainState.create(jax.tree.map(jnp.copy, prompt), tx), mesh)
        frozen = mesh_lib.replicate({"backbone": backbone}, mesh)
        for i in range(2):
            state, m = step(state, frozen, mesh_lib.shard_batch(t.make_batch(i), mesh),
                            jax.random.key(3))
        if n == 2:
            assert len(m["loss"].sharding.device_set) == 2
        out[n] = np.asarray(state.params["shared"])
    np.testing.assert_allclose(out[1], out[2], rtol=1e-5, atol=1e-6)
    print("OK", float(np.abs(out[2]).sum()))
    """
)


def test_data_parallel_over_two_devices_matches_one_device():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run(
        [sys.executable, "-c", TWO_DEVICE_SCRIPT], cwd=root, env=env,
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "OK" in result.stdout


def test_every_prompt_parameter_of_the_prompted_t5_trains():
    """On the real (tiny) prompted T5: the shared prompt and every task factor move (the
    shared prompt is the one prompt-tuning's multitask regex silently left untrained)."""
    from mpt_jax.backbone import get_config
    from mpt_jax.model import PromptedT5

    config = get_config("tiny")
    model = PromptedT5(config, MultitaskPrompt(num_tasks=TASKS, length=LENGTH, embed_dim=32))
    batch = make_batch()
    inputs = {k: v for k, v in batch.items() if k != "decoder_loss_weights"}
    params = nn.unbox(model.init(jax.random.key(0), **inputs, enable_dropout=False)["params"])
    prompt_params, backbone = split_params(params)
    before = jax.tree.map(np.array, prompt_params)
    tx = make_optimizer()
    state = TrainState.create(jax.tree.map(jnp.array, prompt_params), tx)
    state, metrics = make_train_step(task_loss_fn(model), tx)(
        state, {"backbone": backbone}, batch, jax.random.key(0)
    )
    assert int(metrics["nonfinite"]) == 0
    assert jax.tree.structure(state.params) == jax.tree.structure(before)
    for path, new in jax.tree_util.tree_leaves_with_path(state.params):
        old = before
        for k in path:
            old = old[k.key]
        unchanged = np.asarray(new) == old
        assert not unchanged.any(), f"{jax.tree_util.keystr(path)}: {unchanged.sum()} unchanged"
