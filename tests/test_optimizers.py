"""The prompt recipe: its values against prompt tuning's T5X gin, learning rates by parameter
name, rows along a task axis (per task, and still when their task is absent)."""

from __future__ import annotations

import ast
import os
import re

import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mpt_jax.prompts.generators import HierarchicalPrompt, MultitaskPrompt, TaskPrompts
from mpt_jax.training.optimizers import (
    Adafactor,
    AdamW,
    PromptRecipe,
    make_optimizer,
    per_task,
    skip_without_gradient,
    task_axis_params,
)

CONFIGS = os.path.join(os.path.dirname(__file__), os.pardir, "configs")
L, D = 4, 8


def gin_bindings(path: str) -> dict[str, object]:
    """``{"scope.name.param": value, "MACRO": value}`` of a gin file, read as text (T5X is
    not installed here): ``a.b.c = v`` lines and ``a.b:`` blocks of indented ``c = v``."""
    out, block = {}, None
    with open(path) as f:
        for raw in f:
            line = raw.split("#", 1)[0].rstrip()
            if not line.strip() or line.lstrip().startswith(("from ", "import ", "include ")):
                continue
            if re.fullmatch(r"[\w./]+:", line):
                block = line[:-1]
                continue
            if not line.startswith((" ", "\t")):
                block = None
            if "=" not in line or line.rstrip().endswith("\\"):
                continue
            key, value = (part.strip() for part in line.split("=", 1))
            key = f"{block}.{key}" if block and raw[:1] in " \t" else key
            try:
                out[key] = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                out[key] = value
    return out


def test_recipe_equals_prompt_tunings_t5x_gin():
    """The recipe's defaults are what configs/runs/*.gin bind for T5X (prompt tuning's
    configs/models/t5_1_1_prompt.gin): Adafactor, constant lr 0.3, decay 0.8, weight decay
    1e-5, no parameter scaling, no factoring, update clipping 1 (T5X's default, unbound);
    and the T5X source run restates no λ, τ, hidden states (they are :class:`Distillation`'s)."""
    model = gin_bindings(os.path.join(CONFIGS, "runs", "prompt_model.gin"))
    finetune = gin_bindings(os.path.join(CONFIGS, "runs", "prompt_finetune.gin"))
    recipe, ada = PromptRecipe(), Adafactor()
    assert recipe.optimizer == ada and not recipe.learning_rates and recipe.schedule is None
    assert model["adafactor.Adafactor.decay_rate"] == ada.decay_rate
    assert model["adafactor.Adafactor.weight_decay_rate"] == ada.weight_decay
    assert model["adafactor.Adafactor.multiply_by_parameter_scale"] is False
    assert ada.multiply_by_parameter_scale is False
    assert model["adafactor.Adafactor.factored"] == ada.factored
    assert model.get("adafactor.Adafactor.step_offset", 0) == 0  # optax's decay_offset
    assert model.get("adafactor.Adafactor.clipping_threshold", 1.0) == ada.clipping_threshold
    assert model.get("adafactor.Adafactor.beta1") is None  # no momentum, as optax's default
    assert finetune["utils.create_learning_rate_scheduler.factors"] == "constant"
    assert finetune["utils.create_learning_rate_scheduler.base_learning_rate"] == (
        recipe.learning_rate
    )
    # The T5X source run takes λ, τ, hidden states from Distillation itself (restates none).
    source = gin_bindings(os.path.join(CONFIGS, "runs", "source.gin"))
    pattern = re.compile(r"distill_weight|temperature|hidden_states", re.IGNORECASE)
    restated = [k for k in source if pattern.search(k)]
    assert not restated, f"runs/source.gin restates {restated}"


def test_runner_gin_files_restate_no_recipe_value():
    """The train job's gin files (configs/runner/*.gin) leave the optimizer and λ to the
    recipe (one definition)."""
    runner = os.path.join(CONFIGS, "runner")
    for name in sorted(os.listdir(runner)):
        if name == "demo.gin":  # binds the demo's own arguments, not the train job's
            continue
        keys = gin_bindings(os.path.join(runner, name))
        restated = [k for k in keys if re.search(r"make_optimizer|Adafactor|distill_weight", k)]
        assert not restated, f"{name} restates {restated}"


def _mpt_tree(rng, tasks=3):
    return {
        "shared": jnp.asarray(rng.normal(size=(L, D)), jnp.float32),
        "task_cols": jnp.asarray(rng.normal(size=(tasks, L, 1)), jnp.float32),
        "task_rows": jnp.asarray(rng.normal(size=(tasks, 1, D)), jnp.float32),
    }


def test_first_step_follows_prompt_tunings_formula_per_learning_rate_group():
    """Δθ = -(lr_group · sign g + wd · θ) on the first step (β2_1 = 0, so v = g²)."""
    rng = np.random.default_rng(0)
    params, grads = _mpt_tree(rng), _mpt_tree(rng)
    recipe = PromptRecipe(learning_rates={"task_cols": 0.1, "task_rows": 0.03})
    tx = recipe.build(("task_cols", "task_rows"))
    updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
    for name, lr in (("shared", 0.3), ("task_cols", 0.1), ("task_rows", 0.03)):
        assert recipe.rate(name) == lr
        theta, g = np.asarray(params[name], np.float64), np.asarray(grads[name], np.float64)
        want = -(lr * np.sign(g) + 1e-5 * theta)
        np.testing.assert_allclose(updates[name], want, rtol=1e-5, atol=1e-8)


def test_learning_rates_bind_in_gin_and_unknown_names_are_errors():
    # Module-qualified: with T5X imported in the same process, `Adafactor` alone is
    # ambiguous (t5x.adafactor.Adafactor).
    try:
        with gin.unlock_config():
            gin.parse_config(
                "PromptRecipe.learning_rates = {'task_cols': 0.1}\n"
                "training.optimizers.Adafactor.decay_rate = 0.5"
            )
        recipe = PromptRecipe()
        assert recipe.rate("task_cols") == 0.1 and recipe.rate("shared") == 0.3
        assert recipe.optimizer.decay_rate == 0.5
        hash(recipe)  # hashable: a jit cache key
    finally:
        gin.clear_config()
    tx = PromptRecipe(learning_rates={"task_colz": 0.1}).build()
    with pytest.raises(ValueError, match="task_colz.*shared"):
        tx.init(_mpt_tree(np.random.default_rng(0)))
    with pytest.raises(ValueError, match="'shared'.*-1"):
        PromptRecipe(learning_rates={"shared": -1.0})


def test_a_schedule_applies_to_each_groups_rate():
    recipe = PromptRecipe(
        optimizer=AdamW(weight_decay=0.0),
        learning_rate=1e-2,
        learning_rates={"task_cols": 1e-3},
        schedule=lambda rate: optax.linear_schedule(rate, 0.0, 10),
    )
    params = _mpt_tree(np.random.default_rng(0))
    tx = recipe.build()
    state = tx.init(params)
    grads = jax.tree.map(jnp.ones_like, params)
    for _ in range(5):
        updates, state = tx.update(grads, state, params)
    # AdamW with a constant gradient: the step is the rate (bias-corrected moments 1, 1).
    np.testing.assert_allclose(updates["shared"], -1e-2 * 0.6, rtol=1e-4)
    np.testing.assert_allclose(updates["task_cols"], -1e-3 * 0.6, rtol=1e-4)


def test_task_axis_params_read_the_logical_axes():
    assert task_axis_params(MultitaskPrompt(num_tasks=2, length=L, embed_dim=D), D) == (
        "task_cols",
        "task_rows",
    )
    assert task_axis_params(TaskPrompts(num_tasks=2, length=L, embed_dim=D), D) == ("task_prompts",)
    hier = HierarchicalPrompt(task_groups=(0, 0, 1), length=L, embed_dim=D)
    assert set(task_axis_params(hier, D)) == {"group_cols", "group_rows", "task_cols", "task_rows"}


def test_per_task_optimizer_equals_separate_optimizers():
    rng = np.random.default_rng(1)
    table = jnp.asarray(rng.normal(size=(3, L, D)), jnp.float32)
    grads = [jnp.asarray(rng.normal(size=(3, L, D)), jnp.float32) for _ in range(2)]
    tx = make_optimizer(PromptRecipe(optimizer=Adafactor(multiply_by_parameter_scale=True)))
    wrapped = per_task(tx)
    state, params = wrapped.init(table), table
    for g in grads:
        updates, state = wrapped.update(g, state, params)
        params = optax.apply_updates(params, updates)
    for k in range(3):
        s, p = tx.init(table[k]), table[k]
        for g in grads:
            u, s = tx.update(g[k], s, p)
            p = optax.apply_updates(p, u)
        np.testing.assert_allclose(params[k], p, rtol=1e-6, atol=1e-7)
    # The whole-table optimizer differs (its parameter scale is the table's RMS).
    u_all, _ = tx.update(grads[0], tx.init(table), table)
    u_sep, _ = wrapped.update(grads[0], wrapped.init(table), table)
    assert not np.allclose(u_all, u_sep)


@pytest.mark.parametrize("optimizer", [Adafactor(), AdamW()], ids=["adafactor", "adamw"])
def test_a_row_without_gradient_is_bit_unchanged_after_200_steps(optimizer):
    """Task 1 is absent from every batch: its rows of task_cols / task_rows and their
    optimizer state stay bit-identical (no weight decay, no moment decay) over 200 steps,
    while the other rows and the shared prompt move."""
    rng = np.random.default_rng(2)
    params = _mpt_tree(rng)
    tx = PromptRecipe(optimizer=optimizer).build(("task_cols", "task_rows"))
    state = tx.init(params)
    start_params, start_state = jax.tree.map(np.asarray, (params, state))

    @jax.jit
    def step(params, state, key):
        grads = jax.tree.map(lambda p: jax.random.normal(key, p.shape), params)
        grads["task_cols"] = grads["task_cols"].at[1].set(0.0)
        grads["task_rows"] = grads["task_rows"].at[1].set(0.0)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    for i in range(200):
        params, state = step(params, state, jax.random.key(i))
    for name in ("task_cols", "task_rows"):
        np.testing.assert_array_equal(params[name][1], start_params[name][1])
        assert not np.any(np.asarray(params[name][0]) == start_params[name][0])
    assert not np.any(np.asarray(params["shared"]) == start_params["shared"])
    for name in ("task_cols", "task_rows"):
        new = jax.tree.leaves(state.inner_states[f"rows:{name}"])
        old = jax.tree.leaves(start_state.inner_states[f"rows:{name}"])
        assert new and len(new) == len(old)
        for a, b in zip(new, old, strict=True):
            np.testing.assert_array_equal(np.asarray(a)[1], b[1])


def test_skip_without_gradient_is_the_inner_transform_otherwise():
    inner = Adafactor().transform(0.3)
    tx = skip_without_gradient(inner)
    p, g = jnp.ones((3,)), jnp.asarray([0.0, 2.0, -1.0])
    u_tx, s_tx = tx.update(g, tx.init(p), p)
    u_in, s_in = inner.update(g, inner.init(p), p)
    np.testing.assert_array_equal(u_tx, u_in)
    jax.tree.map(np.testing.assert_array_equal, s_tx, s_in)
    u0, s0 = tx.update(jnp.zeros(3), s_tx, p)
    np.testing.assert_array_equal(u0, 0.0)
    jax.tree.map(np.testing.assert_array_equal, s0, s_tx)


def test_mpt_recipe_adds_the_factor_rates_unless_the_recipe_names_them():
    from mpt_jax.training.optimizers import MPT_FACTOR_RATES, mpt_recipe

    plain = PromptRecipe(learning_rate=0.1)
    got = mpt_recipe(plain)
    assert dict(got.learning_rates) == MPT_FACTOR_RATES and got.learning_rate == 0.1
    assert mpt_recipe(got) == got  # idempotent
    named = PromptRecipe(learning_rates={"task_rows": 0.2})
    assert dict(mpt_recipe(named).learning_rates) == {"task_cols": 0.03, "task_rows": 0.2}
    assert mpt_recipe(plain, factor_rates={}) == plain
