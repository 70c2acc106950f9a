"""Losses against their formulas written out in numpy on hand-made examples."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mpt_jax.training import losses


def _log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


@pytest.fixture(scope="module")
def example():
    rng = np.random.default_rng(0)
    batch, length, vocab, embed, inputs = 2, 3, 5, 4, 4
    return {
        "student": rng.normal(size=(batch, length, vocab)).astype(np.float32),
        "teacher": rng.normal(size=(batch, length, vocab)).astype(np.float32),
        "targets": np.array([[1, 2, 0], [4, 3, 1]], np.int32),
        "weights": np.array([[1, 1, 0], [1, 1, 1]], np.float32),
        "enc_tokens": np.array([[5, 6, 0, 0], [7, 8, 9, 1]], np.int32),
        "s_enc": rng.normal(size=(batch, inputs, embed)).astype(np.float32),
        "t_enc": rng.normal(size=(batch, inputs, embed)).astype(np.float32),
        "s_dec": rng.normal(size=(batch, length, embed)).astype(np.float32),
        "t_dec": rng.normal(size=(batch, length, embed)).astype(np.float32),
    }


def _np_ce(logits, targets, weights, z=0.0):
    logz = np.log(np.exp(logits).sum(-1))
    tgt = np.take_along_axis(logits, targets[..., None], -1)[..., 0]
    return ((logz - tgt + z * logz**2) * weights).sum(), weights.sum()


def test_cross_entropy_matches_numpy(example):
    e = example
    for z in (0.0, 1e-2):
        got, z_sum, w = losses.cross_entropy_with_logits(
            e["student"], e["targets"], e["weights"], z_loss=z
        )
        want, w_want = _np_ce(e["student"], e["targets"], e["weights"], z)
        np.testing.assert_allclose(got, want, rtol=1e-5)
        np.testing.assert_allclose(w, w_want)
        logz = np.log(np.exp(e["student"]).sum(-1))
        np.testing.assert_allclose(z_sum, (z * logz**2 * e["weights"]).sum(), rtol=1e-5, atol=1e-7)


def test_cross_entropy_hand_value():
    # Two equal logits: CE = log 2 for the one weighted token.
    logits = jnp.zeros((1, 2, 2))
    got, _, w = losses.cross_entropy_with_logits(
        logits, jnp.array([[0, 1]]), jnp.array([[1.0, 0.0]])
    )
    np.testing.assert_allclose(got, np.log(2.0), rtol=1e-6)
    assert float(w) == 1.0


@pytest.mark.parametrize("tau", [1.0, 2.0])
def test_kl_matches_numpy(example, tau):
    e = example
    got, _ = losses.kl_divergence_with_temperature(
        e["teacher"], e["student"], e["weights"], temperature=tau
    )
    lp, lq = _log_softmax(e["teacher"] / tau), _log_softmax(e["student"] / tau)
    want = ((np.exp(lp) * (lp - lq)).sum(-1) * e["weights"]).sum()
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_kl_is_zero_for_equal_distributions(example):
    got, _ = losses.kl_divergence_with_temperature(
        example["student"], example["student"], example["weights"]
    )
    np.testing.assert_allclose(got, 0.0, atol=1e-6)


def test_kl_gradient_does_not_reach_teacher(example):
    e = example
    g = jax.grad(lambda t: losses.kl_divergence_with_temperature(t, e["student"], e["weights"])[0])(
        e["teacher"]
    )
    np.testing.assert_array_equal(g, 0.0)


@pytest.mark.parametrize("hidden", ["encoder", "decoder", "both", "none"])
def test_distillation_loss_matches_formula(example, hidden):
    e = example
    lam, tau = 0.9, 2.0
    batch = {
        "decoder_target_tokens": e["targets"],
        "decoder_loss_weights": e["weights"],
        "encoder_input_tokens": e["enc_tokens"],
    }
    loss, metrics = losses.distillation_loss(
        e["student"],
        e["teacher"],
        {"encoder": e["s_enc"], "decoder": e["s_dec"]},
        {"encoder": e["t_enc"], "decoder": e["t_dec"]},
        batch,
        distill_weight=lam,
        temperature=tau,
        hidden_states=hidden,
    )
    w = e["weights"]
    ce, wsum = _np_ce(e["student"], e["targets"], w)
    l_task = ce / wsum
    lp, lq = _log_softmax(e["teacher"] / tau), _log_softmax(e["student"] / tau)
    kl = ((np.exp(lp) * (lp - lq)).sum(-1) * w).sum() / wsum
    enc_mask = (e["enc_tokens"] > 0).astype(np.float32)[..., None]
    mse_enc = (((e["s_enc"] - e["t_enc"]) ** 2) * enc_mask).sum() / (enc_mask.sum() * 4)
    dec_mask = w[..., None]
    mse_dec = (((e["s_dec"] - e["t_dec"]) ** 2) * dec_mask).sum() / (dec_mask.sum() * 4)
    mse = {"encoder": mse_enc, "decoder": mse_dec, "both": mse_enc + mse_dec, "none": 0.0}[hidden]
    want = l_task + lam * (tau**2 * kl + mse)
    np.testing.assert_allclose(loss, want, rtol=1e-5)
    np.testing.assert_allclose(metrics["kl"], kl, rtol=1e-5)
    np.testing.assert_allclose(metrics["mse"], mse, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(metrics["task_loss"], l_task, rtol=1e-5)


def test_distillation_rejects_unknown_hidden_choice(example):
    with pytest.raises(ValueError, match="'logits'"):
        losses.distillation_loss(
            example["student"], example["teacher"], {}, {}, {
                "decoder_target_tokens": example["targets"],
                "decoder_loss_weights": example["weights"],
            }, distill_weight=0.5, temperature=1.0, hidden_states="logits",
        )  # fmt: skip


def test_temperature_must_be_positive(example):
    with pytest.raises(ValueError, match="-1"):
        losses.kl_divergence_with_temperature(
            example["teacher"], example["student"], example["weights"], temperature=-1.0
        )
