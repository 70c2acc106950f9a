"""Each benchmark's code path runs once at the tiny size and reports sane figures.

No timing is asserted (the machine is shared); the tests pin what does not depend on
the clock: PEFT's model starts at our loss and logits on our weights (and the check
catches a tied output layer), every result records the machine and each backend's
matmul peaks, achieved rates are the flop counts over the times and fractions of
those peaks, every figure is finite and positive, parameter and optimizer-state counts
match their formulas, XLA's flop counts order as forward < prompt step < full step,
and the table/plot writers accept the collected results.
"""

import math
import os
import sys

import jax
import numpy as np
import pytest

# benchmarks/ lives beside the package, not inside it: import it from the checkout.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import (  # noqa: E402
    bench_compile,
    bench_decode,
    bench_distill,
    bench_limits,
    bench_memory,
    bench_peft,
    bench_routing,
    common,
    hf_peer,
    plot,
    run_all,
)

W = common.workload("tiny")
D = common.get_config("tiny").emb_dim
# MPT's trainable numbers: shared [L, D] + task_cols [T, L, r] + task_rows [T, r, D].
MPT_PARAMS = W.prompt_length * D + W.num_tasks * W.prompt_length * W.rank + W.num_tasks * W.rank * D


def check_result(res, benchmark):
    assert res["benchmark"] == benchmark
    assert res["figures"], "no figures reported"
    for name, value in res["figures"].items():
        # Differences may be exactly 0; everything else is a positive amount.
        ok = value >= 0 if name.endswith("_diff") else value > 0
        assert math.isfinite(value) and ok, f"{benchmark}: {name} = {value}"
    for r in res["ratios"]:
        assert math.isfinite(r["value"]) and r["value"] > 0, f"{benchmark}: {r}"
        assert r["met"] is None or isinstance(r["met"], bool)
    # Every result says where it ran and what the machine's matmuls reach there.
    machine = res["machine"]
    assert machine["jax"] == jax.__version__ and machine["device"].startswith("cpu")
    assert machine["cores"] >= 1 and machine["cpu"]
    if os.path.exists("/proc/cpuinfo"):
        assert machine["cpu_flags"], "CPU flags not recorded"
        assert set(machine["cpu_key_flags"]) <= set(machine["cpu_flags"])
    peaks = res["matmul_peaks_gflops"]
    for key in ("jax_float32", "jax_bfloat16", "torch_float32", "torch_bfloat16"):
        assert math.isfinite(peaks[key]) and peaks[key] > 0, (benchmark, key, peaks)
    assert peaks["jax_bfloat16"] == max(
        peaks["jax_bfloat16_f32_out"], peaks["jax_bfloat16_bf16_out"]
    )


@pytest.fixture(scope="module")
def results():
    return {}


def test_peft(results):
    res = bench_peft.run("tiny", reps=1, warmup=1, alone_reps=0)
    check_result(res, "peft")
    f = res["figures"]
    # Both sides start at the same loss and logits on the same weights, and that loss
    # is T5 1.1's (≈ ln vocab: logits std ≈ 1), not a tied head's (std ≈ sqrt(d)).
    assert f["same_start_abs_loss_diff"] <= hf_peer.TOLERANCE
    assert f["same_start_max_abs_logit_diff"] <= hf_peer.TOLERANCE
    assert f["same_start_abs_loss_diff"] == abs(
        f["same_start_ours_loss"] - f["same_start_peft_loss"]
    )
    vocab = W.config.vocab_size
    assert abs(f["same_start_ours_loss"] - math.log(vocab)) < 1.5
    assert 0.3 < f["same_start_logit_std"] < 3.0
    assert f["trainable_params_ours"] == MPT_PARAMS
    assert f["trainable_params_peft"] == MPT_PARAMS
    tags = [f"{d}_dropout{p}" for d in ("float32", "bfloat16") for p in ("0.1", "0")]
    assert [r["name"].split(" ")[0] for r in res["ratios"]] == [
        f"speedup_vs_peft_{t}" for t in tags
    ]
    peaks = res["matmul_peaks_gflops"]
    for t in tags:
        dtype = t.split("_")[0]
        for side, backend in (("ours", "jax"), ("peft", "torch")):
            # Achieved = our step's XLA flops over the side's median time; the fraction
            # is of the side's own backend's peak in that dtype.
            gflops = f[f"gflop_per_step_{t}"] / res["timings"][f"{side}_{t}"]["median_s"]
            np.testing.assert_allclose(f[f"{side}_{t}_gflops"], gflops, rtol=1e-9)
            np.testing.assert_allclose(
                f[f"{side}_{t}_frac_of_{backend}_peak"],
                gflops / peaks[f"{backend}_{dtype}"],
                rtol=1e-9,
            )
    # Dropout 0 does less work than dropout 0.1 (no random draws).
    assert f["gflop_per_step_float32_dropout0"] <= f["gflop_per_step_float32_dropout0.1"]
    results["peft"] = res


def test_same_start_check_catches_a_tied_output_layer():
    """The bug of issue 17: transformers 5 ties lm_head to shared; the check refuses it."""
    import torch

    model, params = common.init_model(W, "mpt")
    batch = common.make_batch(W)
    peft_model = hf_peer.peft_from_ours(W.config, params, W)
    ok = hf_peer.same_start(model, params, peft_model, batch)
    hf_peer.check_same_start(ok)
    base = peft_model.get_base_model()
    base.lm_head.weight = torch.nn.Parameter(base.shared.weight.detach().clone())
    bad = hf_peer.same_start(model, params, peft_model, batch)
    assert bad["abs_loss_diff"] > 100 * hf_peer.TOLERANCE
    with pytest.raises(RuntimeError, match="same loss"):
        hf_peer.check_same_start(bad)


def test_hf_state_dict_inverts_the_converter():
    _, params = common.init_model(W, "mpt")
    backbone = {k: v for k, v in params.items() if k != "prompt"}
    sd = hf_peer.hf_state_dict(backbone, W.config)  # checks the round trip itself
    # [out, in] weights: the transpose of our [in, out] kernels.
    np.testing.assert_array_equal(
        sd["decoder.block.0.layer.1.EncDecAttention.k.weight"],
        np.asarray(backbone["decoder"]["layers_0"]["encoder_decoder_attention"]["key"]["kernel"]).T,
    )
    assert sd["lm_head.weight"].shape == (W.config.vocab_size, W.config.emb_dim)


def test_peft_alone_in_its_process():
    for side in ("ours", "peft"):
        got = bench_peft.main(["--alone", side, "--size", "tiny", "--reps", "1", "--warmup", "1"])
        assert got["ex_per_s"] > 0 and math.isfinite(got["loss"])


def test_gpu_defaults(monkeypatch):
    """On a GPU the workload trains in bfloat16 and the peak matmul is larger."""
    assert common.default_dtype() == "float32" and common.workload("tiny").dtype == "float32"
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert common.default_dtype() == "bfloat16"
    assert common.workload("mini").dtype == "bfloat16"
    assert common.workload("mini", "float32").dtype == "float32"
    assert common.default_matmul_n() == 8192


def test_limits(results):
    res = bench_limits.run("tiny", reps=1, warmup=1, matmul_n=128)
    check_result(res, "limits")
    f = res["figures"]
    # The prompt step adds a backward pass without weight gradients: more work than a
    # forward, less than a full fine-tuning step.
    assert f["forward_gflop_per_step"] < f["train_gflop_per_step"] < f["full_gflop_per_step"]
    peak = res["matmul_peaks_gflops"]["jax_float32"]
    assert res["matmul_peaks_gflops"]["n"] == 128 and f["matmul_peak_jax_float32_gflops"] == peak
    for name in ("train", "forward", "full"):
        np.testing.assert_allclose(
            f[f"{name}_gflops_achieved"],
            f[f"{name}_gflop_per_step"] / res["timings"][name]["median_s"],
            rtol=1e-9,
        )
        np.testing.assert_allclose(
            f[f"{name}_frac_of_jax_peak"], f[f"{name}_gflops_achieved"] / peak
        )
    (frac,) = [r for r in res["ratios"] if r["name"] == "train_gflops_over_matmul_peak"]
    assert frac["value"] == f["train_frac_of_jax_peak"] and frac["target"] == 0.75
    # The matmul floor counts the step's dots from its jaxpr: most of XLA's flops (the
    # rest is elementwise work), never more.
    assert 0.5 * f["train_gflop_per_step"] < f["train_matmul_gflop"] <= f["train_gflop_per_step"]
    (over,) = [r for r in res["ratios"] if r["name"].startswith("train_over_matmul_floor")]
    np.testing.assert_allclose(
        over["value"], res["timings"]["train"]["median_s"] / f["train_matmul_floor_s"]
    )
    results["limits"] = res


def test_routing(results):
    res = bench_routing.run("tiny", reps=1, warmup=1)
    check_result(res, "routing")
    assert len(res["ratios"]) == 3
    # Identical twins compute identical losses: the control runs the same step.
    f = res["figures"]
    assert f["mpt_mixed_twin_loss"] == f["mpt_mixed_loss"]
    results["routing"] = res


def test_distill(results):
    res = bench_distill.run("tiny", reps=1, warmup=1)
    check_result(res, "distill")
    results["distill"] = res


def test_decode(results):
    res = bench_decode.run("tiny", reps=1, warmup=1)
    check_result(res, "decode")
    f = res["figures"]
    np.testing.assert_allclose(
        f["with_prompt_tokens_per_s"], f["with_prompt_ex_per_s"] * W.target_length
    )
    results["decode"] = res


def test_compile(results):
    res = bench_compile.run(("tiny",), reps=1)
    check_result(res, "compile")
    f = res["figures"]
    for prefix in ("tiny", "tiny_cold_rbg", "tiny_warm"):
        np.testing.assert_allclose(
            f[f"{prefix}_total_compile_s"],
            f[f"{prefix}_trace_lower_s"] + f[f"{prefix}_xla_compile_s"],
        )
    # The warm mode ran with a cache that was switched off again afterwards.
    assert not jax.config.jax_compilation_cache_dir
    # Issue 17's targets for `small`: 5 s cold (every cold mode), 1 s from the warm cache.
    assert bench_compile.small_target_s("warm") == 1.0
    assert {bench_compile.small_target_s(m) for m in bench_compile.MODES if m != "warm"} == {5.0}
    results["compile"] = res


def test_memory(results):
    res = bench_memory.run("tiny", modes=("train", "forward"))
    check_result(res, "memory")
    f = res["figures"]
    assert f["prompt_param_bytes"] == 4 * MPT_PARAMS
    # AdamW keeps two float32 moments per parameter (plus a step count per leaf group).
    assert 2 * f["prompt_param_bytes"] <= f["adamw_state_bytes_prompt"]
    assert f["adamw_state_bytes_prompt"] <= 2 * f["prompt_param_bytes"] + 64
    assert 2 * f["model_param_bytes"] <= f["adamw_state_bytes_full"]
    results["memory"] = res


def test_table_and_plot(results, tmp_path):
    assert results, "run the benchmark tests of this module first"
    combined = {"size": "tiny", "reps": 1, "started": "now", "total_wall_s": 1.0}
    combined["results"] = results
    table = plot.markdown(combined)
    n_ratios = sum(len(r["ratios"]) for r in results.values())
    n_figures = sum(len(r["figures"]) for r in results.values())
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line]
    # One peaks row per benchmark, one row per ratio and figure, three header rows.
    assert len(rows) == len(results) + n_ratios + n_figures + 3
    assert "JAX f32" in table and next(iter(results.values()))["machine"]["cpu"] in table
    png = tmp_path / "results.png"
    plot.plot(combined, str(png))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_run_all_commands():
    cmd = run_all._command("compile", "mini", 10, 2, "out.json")
    assert cmd[-4:] == ["--sizes", "mini,small", "--reps", "3"]
    cmd = run_all._command("peft", "tiny", 1, 1, "out.json")
    assert cmd[cmd.index("--size") + 1] == "tiny" and cmd[cmd.index("--reps") + 1] == "1"
    cmd = run_all._command("limits_small", "mini", 10, 2, "out.json")
    assert "benchmarks.bench_limits" in cmd and cmd[cmd.index("--size") + 1] == "small"
    assert cmd[cmd.index("--reps") + 1] == "6"


def test_paired_ratio_is_the_median_of_per_round_quotients():
    a = common.Timing([2.0, 4.0, 9.0])
    b = common.Timing([1.0, 1.0, 3.0])
    assert common.paired_ratio(a, b) == 3.0  # quotients 2, 4, 3
    with pytest.raises(ValueError, match="3 vs 2"):
        common.paired_ratio(a, common.Timing([1.0, 1.0]))
    with pytest.raises(ValueError, match="unknown benchmarks"):
        run_all.run_all("tiny", reps=1, warmup=1, only=("nope",))


def test_t5x_benchmark_skips_cleanly_without_t5x(capsys):
    """T5X is not on PyPI: here the benchmark says what is missing and writes nothing."""
    from benchmarks import bench_t5x

    missing = bench_t5x.missing_packages()
    if not missing:
        pytest.skip("T5X, Flaxformer and prompt-tuning are installed here")
    assert bench_t5x.main(["--size", "tiny"]) is None
    assert "skipped, not installed here: " + ", ".join(missing) in capsys.readouterr().err
    text = bench_t5x.t5x_config(common.workload("mini"))
    for binding in ("EMBED_DIM = 256", "NUM_ENCODER_LAYERS = 4", "PROMPT_LENGTH = 100",
                    "seqio.PassThroughVocabulary.size = 32128"):  # fmt: skip
        assert binding in text


def test_matmul_floor_counts_each_dot_and_its_flops():
    import jax.numpy as jnp

    from benchmarks import matmul_floor

    w = jnp.ones((4, 5))

    def f(x, y):
        scanned, _ = jax.lax.scan(lambda c, _: (c @ jnp.ones((4, 4)), None), x, None, length=3)
        return jnp.einsum("bmk,bkn->bmn", y, y.swapaxes(1, 2)), scanned @ w

    dots = matmul_floor.dots_of(f, jnp.ones((2, 4)), jnp.ones((6, 3, 4)))
    by_shape = {(d.lhs, d.rhs): (n, d.flops) for d, n in dots.items()}
    assert by_shape[((2, 4), (4, 4))] == (3, 2 * 2 * 4 * 4)  # the scan body, 3 times
    assert by_shape[((2, 4), (4, 5))] == (1, 2 * 2 * 5 * 4)
    (batched,) = [v for (lhs, _), v in by_shape.items() if lhs == (6, 3, 4)]
    assert batched == (1, 2 * 6 * 3 * 3 * 4)  # batch 6, [3, 4] @ [4, 3]
    got = matmul_floor.floor(dots, reps=1)
    assert got["count"] == 5 and got["distinct"] == 3
    assert got["matmul_gflop"] == (3 * 64 + 80 + 432) / 1e9 and got["floor_s"] > 0
