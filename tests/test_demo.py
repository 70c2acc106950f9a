"""The default run in quick mode: every method's row, results.json, RMS figures, the scorer."""

import json
import math

import jax
import numpy as np
import pytest

from mpt_jax import assets
from mpt_jax.data import synthetic
from mpt_jax.decoding import greedy_decode, rank_classification
from mpt_jax.model import PromptedT5
from mpt_jax.prompts import SinglePrompt
from mpt_jax.runner import demo, demo_data
from mpt_jax.training.optimizers import PromptRecipe

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    return out, demo.main(quick=True, out_dir=str(out), verbose=False)


def test_every_method_has_a_row_and_results_json(report):
    out, rep = report
    assert list(rep["methods"]) == list(demo.METHODS)
    first_column = [line[:28].rstrip() for line in rep["table"].splitlines()]
    for m in demo.METHODS:
        assert first_column.count(m) == 1, m
    saved = json.loads((out / "results.json").read_text())
    assert set(saved) >= {"table", "methods", "curves", "rms", "source_accuracy", "settings"}
    assert saved["methods"] == rep["methods"]
    assert (out / "table.txt").read_text().startswith("Held-out target tasks")
    assert (out / "learning_curves.png").read_bytes()[:8] == PNG_SIGNATURE
    # the MPT stages' default: the recipe with the task factors at MPT_FACTOR_RATES
    mpt_recipe = PromptRecipe(learning_rates={"task_cols": 0.03, "task_rows": 0.03})
    assert demo.MPT_FACTOR_RATES == {"task_cols": 0.03, "task_rows": 0.03}
    assert rep["settings"]["mpt_recipe"] == repr(mpt_recipe)
    grid = rep["settings"]["learning_rates"]
    tests = rep["settings"]["test_size"]
    for m, r in rep["methods"].items():
        assert r["learning_rate"] in grid
        assert set(r["validation_exact_match"]) == {str(g) for g in grid}  # JSON keys
        # the chosen rate is the best on validation
        assert r["validation_exact_match"][str(r["learning_rate"])] == max(
            r["validation_exact_match"].values()
        )
        s = r["shots"]["16"]
        for key in ("exact_match", "rank_classification", "step0_rank_classification"):
            assert 0.0 <= s[key] <= 100.0, (m, key)
        for v in s["per_task_exact_match"]:  # a score is a fraction of the test examples
            assert math.isclose(v * tests / 100, round(v * tests / 100), abs_tol=1e-3)
        assert math.isclose(np.mean(s["per_task_exact_match"]), s["exact_match"], rel_tol=1e-6)
        curve = rep["curves"][m]["16"]
        assert curve["steps"] == [0, 3, 6]
        assert curve["exact_match"][-1] == pytest.approx(s["exact_match"])
        assert curve["rank_classification"][0] == pytest.approx(s["step0_rank_classification"])


def test_prompt_rms_is_recorded_and_follows_the_inits(report):
    _, rep = report
    _, backbone, _ = assets.read_backbone()
    table = np.asarray(backbone["token_embedder"]["embedding"], np.float64)
    rms = rep["rms"]
    assert rms["token_embedding"] == pytest.approx(np.sqrt(np.mean(table**2)), rel=1e-6)
    (source,) = rms["source"]  # one benchmark
    assert len(source["teachers"]) == 6 and len(source[demo.MPT]["task_prompts"]) == 6
    target = rms["target"]
    # a fresh prompt is uniform(-0.5, 0.5): RMS 0.5 / sqrt(3)
    assert target[demo.PT]["step0"] == pytest.approx(0.5 / np.sqrt(3), rel=0.05)
    # the control starts a fresh prompt at SPoT's RMS, SPoT at its source prompt
    assert target[demo.PT_RMS]["step0"] == pytest.approx(source[demo.SPOT], rel=1e-4)
    assert target[demo.SPOT]["step0"] == pytest.approx(source[demo.SPOT], rel=1e-4)
    assert target[demo.MPT]["step0"] == pytest.approx(source[demo.MPT]["target_start"], rel=1e-4)
    for m in demo.METHODS:
        assert np.isfinite(target[m]["final"]) and target[m]["final"] > 0


def test_parameter_counts_follow_the_formulas(report):
    _, rep = report
    length, rank = rep["settings"]["prompt_length"], rep["settings"]["rank"]
    dim = assets.embedded_backbone_config().emb_dim
    single = length * dim  # P [L, D]
    low_rank = length * dim + rank * (length + dim)  # P + U [L, r] + V [r, D]
    multi = (length * dim + 4 * rank * (length + dim)) / 4  # one P for 4 targets
    got = {m: r["params_per_task"] for m, r in rep["methods"].items()}
    assert got == {
        demo.PT: single,
        demo.PT_RMS: single,
        demo.SPOT: single,
        demo.MPT_SCRATCH: low_rank,
        demo.MPT_NO_KD: low_rank,
        demo.MPT: low_rank,
        demo.MPT_MULTI: int(multi),
    }


def test_scorer_equals_greedy_decoding_and_rank_classification():
    config, backbone, _ = assets.read_backbone()
    bench = synthetic.EmbeddedBenchmark()
    data = [demo_data.encode(bench.examples(t, "test", 16), 0) for t in bench.target_tasks[:2]]
    prompts = jax.random.normal(jax.random.key(0), (3, 8, config.emb_dim))
    which = np.array([0, 1, 1])
    em, rc = demo_data.scorer(config, 8)(prompts, backbone, demo_data.stack_batches(data), which)
    model = PromptedT5(config, SinglePrompt(length=8, embed_dim=config.emb_dim))
    labels = np.stack(
        [
            demo_data.encode([{"inputs": "", "targets": w}], 0)["decoder_target_tokens"][0]
            for w in synthetic.LABELS
        ]
    )
    for u in range(3):
        d = data[which[u]]
        params = {**backbone, "prompt": {"shared": prompts[u]}}
        gold = [synthetic.decode_ids(t) for t in d["decoder_target_tokens"]]
        tokens, _ = greedy_decode(
            model,
            params,
            d["encoder_input_tokens"],
            d["task_ids"],
            max_decode_length=demo_data.TARGET_LENGTH,
        )
        decoded = [synthetic.decode_ids(t) for t in np.asarray(tokens)]
        ll = rank_classification(model, params, d["encoder_input_tokens"], d["task_ids"], labels)
        ranked = [synthetic.LABELS[i] for i in np.argmax(np.asarray(ll), -1)]
        assert float(em[u]) == pytest.approx(100 * np.mean(np.equal(decoded, gold)))
        assert float(rc[u]) == pytest.approx(100 * np.mean(np.equal(ranked, gold)))


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="shots must be even"):
        demo.main(shots=(15,), verbose=False)
    with pytest.raises(ValueError, match="holds out the tasks of benchmark seeds"):
        demo.main(benchmark_seeds=(7,), verbose=False)


def test_batches_keep_inputs_and_targets_paired():
    bench = synthetic.EmbeddedBenchmark()
    few = demo_data.encode(bench.few_shot("target_1", 4, seed=0), 0)
    rng = np.random.default_rng(0)
    batch = demo_data.draw(few, 16, rng)  # 4 examples tiled to 16, each 4 times
    texts = [synthetic.decode_ids(t) for t in batch["encoder_input_tokens"]]
    assert sorted(set(texts)) == sorted(e["inputs"] for e in bench.few_shot("target_1", 4, 0))
    assert all(texts.count(t) == 4 for t in set(texts))
    task = bench.task("target_1")
    for text, target in zip(texts, batch["decoder_target_tokens"], strict=True):
        assert synthetic.decode_ids(target) == task.label(text)


def test_demo_gin_file_states_the_defaults():
    import inspect
    import pathlib

    import gin

    import mpt_jax.configs

    path = pathlib.Path(mpt_jax.configs.CONFIG_DIR) / "runner" / "demo.gin"
    defaults = inspect.signature(demo.main).parameters
    # objects with their own bindings
    skipped = ("backbone", "verbose", "recipe", "mpt_recipe", "distillation")
    with gin.unlock_config():
        gin.parse_config_file(str(path))
    try:
        bound = 0
        for name, param in defaults.items():
            if name in skipped:
                continue
            value = gin.query_parameter(f"mpt_jax.runner.demo.main.{name}")
            assert value == param.default, name
            bound += 1
        assert bound == len(defaults) - len(skipped)
    finally:
        gin.clear_config()
