"""Same seed and configuration give bitwise-identical prompts after N steps; another seed
(prompt initialisation + dropout) or another data seed gives other prompts.

The run is the real training loop on the tiny prompted T5 with dropout on
(``tests/_kill_worker.py``); all runs share one compiled step. Bitwise equality across
*processes* is shown by ``tests/test_kill_resume.py`` (subprocess runs vs. an in-process
reference).
"""

import _kill_worker as worker
import numpy as np
import pytest

NUM_STEPS = 6


@pytest.fixture(scope="module")
def runs():
    def final(seed, data_seed):
        result = worker.run(None, num_steps=NUM_STEPS, seed=seed, data_seed=data_seed)
        assert int(result.state.step) == NUM_STEPS and not result.skipped_steps
        return worker.flat({"params": result.state.params, "opt_state": result.state.opt_state})

    return {
        "a": final(0, 0),
        "a_again": final(0, 0),
        "other_seed": final(1, 0),
        "other_data": final(0, 1),
    }


def test_same_seed_and_configuration_give_identical_prompts(runs):
    a, again = runs["a"], runs["a_again"]
    assert sorted(a) == sorted(again)
    for key in a:
        np.testing.assert_array_equal(a[key], again[key], err_msg=key)
    # The prompt moved away from its initialisation, so this compares trained values.
    init = worker.initial_prompt(0)["shared"]
    assert np.abs(a["['params']['shared']"] - init).max() > 1e-3


@pytest.mark.parametrize("other", ["other_seed", "other_data"])
def test_another_seed_gives_another_prompt(runs, other):
    for name in ("shared", "task_cols", "task_rows"):
        key = f"['params']['{name}']"
        assert np.abs(runs["a"][key] - runs[other][key]).max() > 1e-6, (other, name)


def test_data_order_is_a_function_of_position_and_seed():
    """``batches(start)`` yields what ``batches(0)`` yields from ``start`` on (what resume
    relies on), covers every example once per epoch, and depends on the data seed."""
    per_epoch = len(worker._pool()["task_ids"]) // worker.BATCH
    it = worker.batches(0)(0)
    first = [next(it) for _ in range(2 * per_epoch + 1)]
    resumed = worker.batches(0)(per_epoch - 1)
    for i in range(per_epoch - 1, 2 * per_epoch + 1):
        b = next(resumed)
        for name in first[i]:
            np.testing.assert_array_equal(b[name], first[i][name])
    pool = worker._pool()["encoder_input_tokens"]
    epoch = np.concatenate([b["encoder_input_tokens"] for b in first[:per_epoch]])
    assert sorted(map(tuple, epoch.tolist())) == sorted(map(tuple, pool.tolist()))
    other = next(worker.batches(1)(0))["encoder_input_tokens"]
    assert not np.array_equal(other, first[0]["encoder_input_tokens"])


def test_runner_data_order_is_fixed_by_the_data_seed_and_resumable():
    """The runner's seqio pipeline (mixture sampling, shuffle, repeat, batch, skip): a
    restart at position 3 reads batch 3 of the uninterrupted order; another data seed
    reads another order."""
    import mpt_jax.tasks  # noqa: F401  (registers the mpt tasks)
    from mpt_jax.data.task_ids import TaskIndex
    from mpt_jax.runner.data import train_batches

    mixture, lengths = "mpt_embedded_source", {"inputs": 16, "targets": 4}
    index = TaskIndex.from_mixture(mixture)

    def read(seed, start, n):
        it = train_batches(mixture, lengths, 4, index, seed=seed)(start)
        return [next(it) for _ in range(n)]

    first = read(0, 0, 5)
    for got, want in zip(read(0, 3, 2), first[3:], strict=True):
        for name in want:
            np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    other = read(1, 0, 1)[0]
    assert not np.array_equal(other["encoder_input_tokens"], first[0]["encoder_input_tokens"])
    assert len({int(i) for b in first for i in b["task_ids"]}) > 1  # a real mixture
