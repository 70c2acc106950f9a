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


#: Prompt tuning's recipe as google-research/prompt-tuning binds it for T5X
#: (configs/models/t5_1_1_prompt.gin, configs/runs/prompt_finetune.gin); checked against
#: those files themselves where prompt_tuning is installed.
PROMPT_TUNING = {
    "adafactor.Adafactor.decay_rate": 0.8,
    "adafactor.Adafactor.step_offset": 0,
    "adafactor.Adafactor.multiply_by_parameter_scale": False,
    "adafactor.Adafactor.weight_decay_rate": 0.00001,
    "utils.create_learning_rate_scheduler.factors": "constant",
    "utils.create_learning_rate_scheduler.base_learning_rate": 0.3,
}


def test_recipe_equals_prompt_tunings_t5x_gin():
    """The recipe's defaults are prompt tuning's (Adafactor, constant lr 0.3, decay 0.8,
    weight decay 1e-5, no parameter scaling, update clipping 1 and no momentum: T5X's
    defaults, unbound there)."""
    recipe, ada = PromptRecipe(), Adafactor()
    assert recipe.optimizer == ada and not recipe.learning_rates and recipe.schedule is None
    ours = {
        "adafactor.Adafactor.decay_rate": ada.decay_rate,
        "adafactor.Adafactor.step_offset": 0,  # optax's decay_offset
        "adafactor.Adafactor.multiply_by_parameter_scale": ada.multiply_by_parameter_scale,
        "adafactor.Adafactor.weight_decay_rate": ada.weight_decay,
        "utils.create_learning_rate_scheduler.factors": "constant",
        "utils.create_learning_rate_scheduler.base_learning_rate": recipe.learning_rate,
    }
    assert ours == PROMPT_TUNING
    assert ada.clipping_threshold == 1.0 and not ada.factored
    try:
        import prompt_tuning
    except ImportError:
        return
    pt = os.path.join(os.path.dirname(prompt_tuning.__file__), "configs")
    theirs = {
        **gin_bindings(os.path.join(pt, "models", "t5_1_1_prompt.gin")),
        **gin_bindings(os.path.join(pt, "runs", "prompt_finetune.gin")),
    }
    assert {k: theirs[k] for k in PROMPT_TUNING} == PROMPT_TUNING


def test_t5x_gin_files_restate_no_recipe_value():
    """configs/runs/*.gin take the optimizer and the base rate from the recipe
    (optim.recipe_optimizer, optim.recipe_learning_rate; tests/test_gin_configs.py builds
    them), and the T5X source run restates no λ, τ, hidden states (Distillation's)."""
    runs = os.path.join(CONFIGS, "runs")
    for name in sorted(os.listdir(runs)):
        keys = gin_bindings(os.path.join(runs, name))
        restated = [
            k for k in keys
            if re.search(r"Adafactor|base_learning_rate|factor_rates", k)
            and not k.endswith("logical_factor_rules")  # which axes factor, not the recipe
        ]  # fmt: skip
        if name == "prompt_finetune.gin":
            assert keys.pop("utils.create_learning_rate_scheduler.base_learning_rate") == (
                "@optim.recipe_learning_rate()"
            )
            restated.remove("utils.create_learning_rate_scheduler.base_learning_rate")
        assert not restated, f"runs/{name} restates {restated}"
    model = gin_bindings(os.path.join(runs, "prompt_model.gin"))
    assert model["OPTIMIZER"] == "@optim.recipe_optimizer()"
    source = gin_bindings(os.path.join(runs, "source.gin"))
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


def test_prompt_recipe_gives_an_mpt_prompt_the_factor_rates():
    from mpt_jax.training.optimizers import mpt_recipe, prompt_recipe

    recipe = PromptRecipe(learning_rate=0.1)
    mpt = MultitaskPrompt(num_tasks=2, length=L, embed_dim=D)
    assert prompt_recipe(mpt, recipe) == mpt_recipe(recipe)
    assert prompt_recipe(TaskPrompts(num_tasks=2, length=L, embed_dim=D), recipe) == recipe
    assert prompt_recipe(None) == PromptRecipe()


# --- the recipe on T5X (mpt_jax.t5x_ext.optim.recipe_optimizer; skipped without T5X) ---


def _t5x_step(opt_def, params, grads, steps, base):
    """``steps`` T5X updates as its train step makes them (``learning_rate=`` the scheduler's)."""

    @jax.jit
    def step(params, state, lr):
        hyper = opt_def.update_hyper_params(learning_rate=lr)
        return opt_def.apply_gradient(hyper, params, state, grads)

    state = opt_def.init_state(params)
    for _ in range(steps):
        params, state = step(params, state, base)
    return params


@pytest.mark.parametrize("steps", [1, 3])
def test_t5x_recipe_optimizer_steps_as_the_recipe(steps):
    """T5X's optimizer from the recipe moves each prompt parameter as ``PromptRecipe.build``
    does: every step equal without a task axis; with the task axis (row by row, as the
    runner trains MPT) the first step (per-row and per-array update clipping differ
    later). The factors move at their lower rate, the backbone not at all."""
    pytest.importorskip("t5x.adafactor", reason="T5X is not installed (not on PyPI)")
    from mpt_jax.t5x_ext import optim
    from mpt_jax.training.optimizers import mpt_recipe

    rng = np.random.default_rng(3)
    prompt, prompt_grads = _mpt_tree(rng), _mpt_tree(rng)
    params = {"prompt": prompt, "encoder": {"w": jnp.ones((D, D))}}
    grads = {"prompt": prompt_grads, "encoder": {"w": jnp.ones((D, D))}}
    recipe = mpt_recipe(PromptRecipe())
    opt_def = optim.recipe_optimizer(recipe)
    base = optim.recipe_learning_rate(recipe)
    got = _t5x_step(opt_def, params, grads, steps, base)
    np.testing.assert_array_equal(got["encoder"]["w"], params["encoder"]["w"])
    task_axes = [()] + ([("task_cols", "task_rows")] if steps == 1 else [])
    for task_axis in task_axes:
        tx = recipe.build(task_axis)
        want, state = prompt, tx.init(prompt)
        for _ in range(steps):
            updates, state = tx.update(prompt_grads, state, want)
            want = optax.apply_updates(want, updates)
        for name in prompt:
            np.testing.assert_allclose(
                got["prompt"][name], want[name], rtol=1e-5, atol=1e-6, err_msg=name
            )
    if steps == 1:  # Δθ = -(lr · sign g + wd · θ): the factors at 0.03, P at 0.3
        for name, lr in (("shared", 0.3), ("task_cols", 0.03), ("task_rows", 0.03)):
            theta, g = np.asarray(prompt[name], np.float64), np.asarray(prompt_grads[name])
            want = theta - (lr * np.sign(g) + 1e-5 * theta)
            np.testing.assert_allclose(got["prompt"][name], want, rtol=1e-5, atol=1e-6)


def test_t5x_recipe_optimizer_refuses_what_t5x_cannot_honour():
    pytest.importorskip("t5x.adafactor", reason="T5X is not installed (not on PyPI)")
    from mpt_jax.t5x_ext import optim
    from mpt_jax.training.optimizers import learning_rate_schedule, mpt_recipe

    refused = {
        "PromptRecipe.optimizer = AdamW": PromptRecipe(optimizer=AdamW(), learning_rate=1e-3),
        "Adafactor.factored = True": PromptRecipe(optimizer=Adafactor(factored=True)),
        "PromptRecipe.schedule": PromptRecipe(schedule=learning_rate_schedule),
        "PromptRecipe.max_grad_norm = 1.0 with learning_rates": mpt_recipe(
            PromptRecipe(max_grad_norm=1.0)
        ),
    }
    for option, recipe in refused.items():
        with pytest.raises(ValueError, match=re.escape(f"cannot honour {option}")):
            optim.recipe_optimizer(recipe)
    with pytest.raises(ValueError, match="cannot honour PromptRecipe.schedule"):
        optim.recipe_learning_rate(PromptRecipe(schedule=learning_rate_schedule))
    # One group: the global norm over every trained parameter, as the runner clips it.
    (sub,) = optim.recipe_optimizer(PromptRecipe(max_grad_norm=2.0)).sub_optimizers
    assert sub.hyper_params.global_norm_clip_threshold == 2.0
    # A rate for a name no prompt parameter has is an error, as in the runner; a group
    # that is frozen is not.
    params = {"prompt": _mpt_tree(np.random.default_rng(0)), "encoder": {"w": jnp.ones(2)}}
    with pytest.raises(ValueError, match=r"task_colz.*prompt/shared"):
        optim.recipe_optimizer(PromptRecipe(learning_rates={"task_colz": 0.1})).init_state(params)
    frozen = optim.prompt_traversal(frozen=("shared",))
    state = optim.recipe_optimizer(mpt_recipe(PromptRecipe()), traversal=frozen).init_state(params)
    assert state.param_states["prompt"]["shared"] is optim.PLACEHOLDER
