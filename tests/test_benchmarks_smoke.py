"""Each benchmark's code path runs once at the tiny size and reports sane figures.

No timing is asserted (the machine is shared); the tests pin what does not depend on
the clock: every figure is finite and positive, parameter and optimizer-state counts
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
        assert math.isfinite(value) and value > 0, f"{benchmark}: {name} = {value}"
    for r in res["ratios"]:
        assert math.isfinite(r["value"]) and r["value"] > 0, f"{benchmark}: {r}"
        assert r["met"] is None or isinstance(r["met"], bool)


@pytest.fixture(scope="module")
def results():
    return {}


def test_peft(results):
    res = bench_peft.run("tiny", reps=1, warmup=1)
    check_result(res, "peft")
    assert res["figures"]["trainable_params_ours"] == MPT_PARAMS
    assert res["figures"]["trainable_params_peft"] == MPT_PARAMS
    assert {r["name"].split(" ")[0] for r in res["ratios"]} == {
        "speedup_vs_peft_float32",
        "speedup_vs_peft_bfloat16",
    }
    results["peft"] = res


def test_limits(results):
    res = bench_limits.run("tiny", reps=1, warmup=1, matmul_n=128)
    check_result(res, "limits")
    f = res["figures"]
    # The prompt step adds a backward pass without weight gradients: more work than a
    # forward, less than a full fine-tuning step.
    assert f["forward_gflop_per_step"] < f["train_gflop_per_step"] < f["full_gflop_per_step"]
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
    assert len(rows) == n_ratios + n_figures + 2  # two header rows
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
