"""benchmarks/bench_t5x's same start (skipped without T5X, Flaxformer and prompt-tuning).

prompt-tuning's T5 1.1 prompt model, built from its own gin files, holding our random
backbone and prompt, gives our logits and per-token loss on the batch; a model that
does not (another prompt) is refused before any timing.
"""

from __future__ import annotations

import numpy as np
import pytest

for _name in ("t5x.trainer", "flaxformer", "prompt_tuning"):
    pytest.importorskip(_name, reason=f"{_name} is not installed (not on PyPI)")

from benchmarks import bench_t5x, common  # noqa: E402


@pytest.fixture(scope="module")
def sides():
    w = common.workload("tiny", "float32")
    batch = common.make_batch(w)
    t5x_batch = {k: v for k, v in batch.items() if k != "task_ids"}
    model, params = common.init_model(w, "single")
    t5x_model = bench_t5x.build_t5x_model(w)
    template = bench_t5x.t5x_param_template(t5x_model, t5x_batch)
    return w, batch, model, params, t5x_model, template


def test_t5x_model_holding_our_weights_starts_at_our_loss(sides):
    w, batch, model, params, t5x_model, template = sides
    t5x_params = bench_t5x.t5x_params_from_ours(template, params)
    np.testing.assert_array_equal(
        t5x_params["encoder"]["prompt"]["prompt"]["prompt"], params["prompt"]["shared"]
    )
    stepper = bench_t5x.T5XStepper(t5x_model, {k: v for k, v in batch.items() if k != "task_ids"},
                                   params=t5x_params)  # fmt: skip
    start = bench_t5x.same_start(model, params, t5x_model, stepper.state.params, batch)
    bench_t5x.check_same_start(start)
    assert start["ours_loss"] > 0.5 * np.log(w.config.vocab_size)  # a random start
    stepper()  # T5X's train step runs on the copied state
    assert np.isfinite(stepper.loss)


def test_a_different_prompt_is_refused_before_timing(sides):
    _, batch, model, params, t5x_model, template = sides
    other = {**params, "prompt": {"shared": params["prompt"]["shared"] + 1.0}}
    t5x_params = bench_t5x.t5x_params_from_ours(template, other)
    start = bench_t5x.same_start(model, params, t5x_model, t5x_params, batch)
    with pytest.raises(RuntimeError, match="refusing to time"):
        bench_t5x.check_same_start(start)
    with pytest.raises(ValueError, match="differ"):
        bench_t5x.t5x_params_from_ours(template, {**params, "extra": {"w": np.zeros(2)}})
