"""RunGroup: R runs stepped under one vmap follow the trajectories of separate runs."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mpt_jax.training.optimizers import PromptRecipe
from mpt_jax.training.run_group import RunGroup, stack
from mpt_jax.training.state import TrainState
from mpt_jax.training.step import train_step_fn


def _loss_fn(params, frozen, batch, rng):
    """Least squares ``|x w + frozen.offset - y|²`` plus noise from the dropout key."""
    noise = 0.01 * jax.random.normal(rng, batch["y"].shape)
    pred = batch["x"] @ params["w"] + frozen["offset"] + noise
    loss = jnp.mean((pred - batch["y"]) ** 2)
    return loss, {"loss": loss}


def _data(seed, runs=3, steps=5):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(steps, runs, 8, 4)).astype(np.float32)
    y = rng.normal(size=(steps, runs, 8)).astype(np.float32)
    return x, y


def test_each_run_equals_a_separate_run():
    tx = PromptRecipe().build()
    x, y = _data(0)
    runs, steps = x.shape[1], x.shape[0]
    inits = [{"w": np.full((4,), 0.1 * r, np.float32)} for r in range(runs)]
    offsets = jnp.asarray([0.0, 1.0, -2.0])
    scales = jnp.asarray([1.0, 0.5, 2.0])
    rngs = jax.random.split(jax.random.key(0), runs)

    group = RunGroup(_loss_fn, tx)
    state = group.init(stack(inits))
    for i in range(steps):
        state, metrics = group.step(
            state, {}, {"offset": offsets}, {"x": x[i], "y": y[i]}, rngs, scales
        )
    assert metrics["loss"].shape == (runs,)

    for r in range(runs):
        # the reference: the plain step with the optimizer followed by the update scale
        ref_tx = optax.chain(tx, optax.scale(float(scales[r])))
        step = jax.jit(train_step_fn(_loss_fn, ref_tx))
        alone = TrainState.create(jax.tree.map(jnp.asarray, inits[r]), ref_tx)
        for i in range(steps):
            batch = {"x": x[i, r], "y": y[i, r]}
            alone, _ = step(alone, {"offset": offsets[r]}, batch, rngs[r])
        np.testing.assert_allclose(state.params["w"][r], alone.params["w"], rtol=1e-6, atol=1e-7)
    # the runs did move, and differently
    assert len({tuple(np.round(np.asarray(w), 5)) for w in state.params["w"]}) == runs


def test_scale_one_is_the_optimizer_exactly():
    tx = PromptRecipe().build()
    x, y = _data(1, runs=1, steps=3)
    group = RunGroup(_loss_fn, tx)
    state = group.init(stack([{"w": np.zeros(4, np.float32)}]))
    rngs = jax.random.split(jax.random.key(1), 1)
    alone = TrainState.create({"w": jnp.zeros(4)}, tx)
    step = jax.jit(train_step_fn(_loss_fn, tx))
    for i in range(3):
        state, _ = group.step(state, {"offset": 0.0}, {}, {"x": x[i], "y": y[i]}, rngs)
        alone, _ = step(alone, {"offset": 0.0}, {"x": x[i, 0], "y": y[i, 0]}, rngs[0])
    np.testing.assert_allclose(state.params["w"][0], alone.params["w"], rtol=1e-6, atol=1e-7)


def test_init_copies_shared_params_and_nonfinite_names_the_run():
    tx = PromptRecipe().build()
    shared = stack([{"w": np.zeros(4, np.float32)}] * 2)
    a, b = RunGroup(_loss_fn, tx), RunGroup(_loss_fn, tx)
    sa, sb = a.init(shared), b.init(shared)
    x, y = _data(2, runs=2, steps=1)
    rngs = jax.random.split(jax.random.key(2), 2)
    sa, _ = a.step(sa, {"offset": 0.0}, {}, {"x": x[0], "y": y[0]}, rngs)
    sb, _ = b.step(sb, {"offset": 0.0}, {}, {"x": x[0], "y": y[0]}, rngs)  # not deleted
    bad_y = y[0].copy()
    bad_y[1, 0] = np.nan
    with pytest.raises(FloatingPointError, match=r"in runs \[1\]"):
        a.step(sa, {"offset": 0.0}, {}, {"x": x[0], "y": bad_y}, rngs)
