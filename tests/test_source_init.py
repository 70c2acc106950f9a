"""Rescaling a prompt started from a source (prompts.Rescale) against its formula."""

from __future__ import annotations

import numpy as np
import pytest

from mpt_jax.prompts.source_init import Rescale, prompt_rms

L, D, T, R = 4, 6, 3, 2


def _mpt(rng, scale=1.0):
    return {
        "shared": (scale * rng.normal(size=(L, D))).astype(np.float32),
        "task_cols": rng.normal(size=(T, L, R)).astype(np.float32),
        "task_rows": rng.normal(size=(T, R, D)).astype(np.float32),
    }


def _composed(p):
    return np.stack([p["shared"] * (p["task_cols"][k] @ p["task_rows"][k]) for k in range(T)])


def test_prompt_rms_is_the_rms_of_the_prompts_a_tree_makes():
    rng = np.random.default_rng(0)
    p = _mpt(rng)
    np.testing.assert_allclose(prompt_rms(p), np.sqrt(np.mean(_composed(p) ** 2)), rtol=1e-6)
    np.testing.assert_allclose(prompt_rms({"shared": p["shared"]}),
                               np.sqrt(np.mean(p["shared"] ** 2)), rtol=1e-6)  # fmt: skip
    with pytest.raises(ValueError, match="source_prompts"):
        prompt_rms({"source_prompts": p["shared"]})


@pytest.mark.parametrize("match", ["fresh", "embeddings"])
def test_rescale_scales_shared_so_the_prompts_rms_is_the_reference(match):
    rng = np.random.default_rng(1)
    start, fresh = _mpt(rng, scale=40.0), _mpt(rng, scale=0.3)
    embeddings = rng.normal(scale=2.0, size=(50, D))
    got = Rescale(match)(start, fresh=fresh, embeddings=embeddings)
    rho = {
        "fresh": np.sqrt(np.mean(_composed(fresh).astype(np.float64) ** 2)),
        "embeddings": np.sqrt(np.mean(embeddings**2)),
    }[match]
    c = rho / np.sqrt(np.mean(_composed(start).astype(np.float64) ** 2))
    np.testing.assert_allclose(got["shared"], c * start["shared"], rtol=1e-5)
    np.testing.assert_allclose(prompt_rms(got), rho, rtol=1e-5)
    np.testing.assert_array_equal(got["task_cols"], start["task_cols"])
    np.testing.assert_array_equal(got["task_rows"], start["task_rows"])
    assert got["shared"].dtype == np.float32


def test_rescale_off_keeps_the_source_and_unknown_choices_are_named():
    rng = np.random.default_rng(2)
    start = _mpt(rng, scale=40.0)
    got = Rescale()(start, fresh=_mpt(rng), embeddings=np.ones((3, D)))
    for k in start:
        np.testing.assert_array_equal(got[k], start[k])
    with pytest.raises(ValueError, match="'tokens'"):
        Rescale("tokens")
