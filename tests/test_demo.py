"""The default run in quick mode: every method row, sane scores, the plot, parameter formulas."""

import json
import math

import jax
import numpy as np
import pytest

from mpt_jax import assets
from mpt_jax.data import synthetic
from mpt_jax.decoding import greedy_decode
from mpt_jax.model import PromptedT5
from mpt_jax.prompts import SinglePrompt
from mpt_jax.runner import demo

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    return out, demo.main(quick=True, out_dir=str(out), verbose=False)


def test_every_method_has_a_row_with_finite_scores(report):
    out, rep = report
    methods = [demo.VANILLA, demo.SPOT, demo.MPT_NO_KD, demo.MPT, demo.composition_name("add")]
    assert list(rep["results"]) == methods
    first_column = [line[:24].rstrip() for line in rep["table"].splitlines()]
    for m in methods:
        assert first_column.count(m) == 1, m
        for k, r in rep["results"][m].items():
            scores = np.array(r["per_seed_per_task"])
            assert scores.shape == (len(rep["settings"]["seeds"]), 4), (m, k)
            assert np.all(np.isfinite(scores)) and np.all((scores >= 0) & (scores <= 100))
            # a score is a fraction of the test examples
            np.testing.assert_allclose(scores * rep["settings"]["test_size"] / 100,
                                       np.round(scores * rep["settings"]["test_size"] / 100),
                                       atol=1e-3)  # fmt: skip
            assert math.isclose(r["mean"], float(scores.mean()), rel_tol=1e-6)
    for m, acc in rep["source"].items():
        assert 0.0 <= acc <= 100.0, m
    assert json.loads((out / "results.json").read_text())["results"] == rep["results"]
    assert (out / "table.txt").read_text().startswith("Held-out target tasks")


def test_plot_is_a_png(report):
    out, rep = report
    path = out / "learning_curves.png"
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    for by_shots in rep["curves"].values():
        steps, acc = by_shots["16"]
        assert steps == [0, 5, 10] and len(acc) == len(steps)


def test_parameter_counts_follow_the_formulas(report):
    _, rep = report
    length, rank = rep["settings"]["prompt_length"], rep["settings"]["rank"]
    dim = assets.embedded_backbone_config().emb_dim
    single = length * dim  # vanilla prompt tuning and SPoT: P [L, D]
    low_rank = length * dim + rank * (length + dim)  # P [L, D] + U [L, r] + V [r, D]
    assert rep["params_per_task"] == {
        demo.VANILLA: single,
        demo.SPOT: single,
        demo.MPT_NO_KD: low_rank,
        demo.MPT: low_rank,
        demo.composition_name("add"): low_rank,
    }
    assert single == 512 and low_rank == 584


def test_exact_match_equals_greedy_decoding():
    config, backbone, _ = assets.load_backbone()
    bench = synthetic.EmbeddedBenchmark()
    examples = bench.examples("target_0", "test", 8)
    batch = synthetic.to_batch(examples, np.zeros(8, np.int32), input_length=12, target_length=4)
    model = PromptedT5(config, SinglePrompt(length=4, embed_dim=config.emb_dim))
    prompt = {"shared": jax.random.uniform(jax.random.PRNGKey(0), (4, config.emb_dim)) - 0.5}
    params = {**backbone, "prompt": prompt}
    tokens, _ = greedy_decode(
        model, params, batch["encoder_input_tokens"], batch["task_ids"], max_decode_length=4
    )
    decoded = np.asarray(tokens)
    # Rows 0-3 ask for what greedy decoding emits, rows 4-7 for something else.
    targets = decoded.copy()
    targets[4:, 0] = np.where(decoded[4:, 0] == 3 + ord("y"), 3 + ord("n"), 3 + ord("y"))
    probe = {
        **batch,
        "decoder_target_tokens": targets,
        "decoder_input_tokens": np.pad(targets[:, :-1], ((0, 0), (1, 0))),
        "decoder_loss_weights": (targets > 0).astype(np.int32),
    }
    got = np.asarray(jax.jit(lambda p, b: demo.exact_match(model, p, b))(params, probe))
    np.testing.assert_array_equal(got, [1, 1, 1, 1, 0, 0, 0, 0])


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="compositions must be among"):
        demo.main(compositions=("attention",), verbose=False)
    with pytest.raises(ValueError, match="shots must be even"):
        demo.main(shots=(15,), verbose=False)


def _assert_rule(task, batch, rows):
    for r in rows:
        text = synthetic.decode_ids(batch["encoder_input_tokens"][r])
        assert synthetic.decode_ids(batch["decoder_target_tokens"][r]) == task.label(text)


def test_batches_keep_inputs_and_targets_paired():
    bench = synthetic.EmbeddedBenchmark()
    sources = bench.tasks[:3]
    pools = [demo._encode(bench.examples(t, "train", 64), i) for i, t in enumerate(sources)]
    batch = demo._source_batch(pools, 5, seed=0, step=7)
    assert batch["task_ids"].tolist() == [0] * 5 + [1] * 5 + [2] * 5
    for i, task in enumerate(sources):
        _assert_rule(task, batch, range(5 * i, 5 * i + 5))
    data = [demo._encode(bench.few_shot(t, 16, seed=1), 0) for t in bench.target_tasks]
    runs = demo._target_batches(data, batch_size=8, step=3)
    assert runs["encoder_input_tokens"].shape == (4, 8, demo.INPUT_LENGTH)
    for r, task in enumerate(bench.target_tasks):
        _assert_rule(task, {k: v[r] for k, v in runs.items()}, range(8))


def test_demo_gin_file_states_the_defaults():
    import inspect
    import pathlib

    import gin

    import mpt_jax.configs

    # The installed gin files (a checkout and an installed package both have them here).
    path = pathlib.Path(mpt_jax.configs.CONFIG_DIR) / "runner" / "demo.gin"
    defaults = inspect.signature(demo.main).parameters
    with gin.unlock_config():
        gin.parse_config_file(str(path))
    try:
        bound = 0
        for name, param in defaults.items():
            if name in ("backbone", "verbose"):
                continue
            value = gin.query_parameter(f"mpt_jax.runner.demo.main.{name}")
            assert value == param.default, name
            bound += 1
        assert bound == len(defaults) - 2
    finally:
        gin.clear_config()
