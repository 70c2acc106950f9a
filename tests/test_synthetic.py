"""The embedded benchmark: rules, balance, determinism, held-out pretraining, seqio parity."""

import numpy as np
import pytest

from mpt_jax.data import synthetic
from mpt_jax.data.synthetic import EmbeddedBenchmark, SymbolWorld


@pytest.fixture(scope="module")
def bench():
    return EmbeddedBenchmark()


def _reference_label(set_a: str, set_b: str, text: str) -> str:
    a = sum(ch in set_a for ch in text)
    b = sum(ch in set_b for ch in text)
    assert a != b
    return "yes" if a > b else "no"


def test_tasks_are_distinct_family_members(bench):
    tasks = bench.tasks
    assert [t.name for t in tasks] == [f"source_{i}" for i in range(6)] + [
        f"target_{j}" for j in range(4)
    ]
    assert len({t.key for t in tasks}) == len(tasks)
    for t in tasks:
        assert len(t.set_a) == len(t.set_b) == 2 and not set(t.set_a) & set(t.set_b)
        assert set(t.set_a + t.set_b) <= set("abcdefghijkl")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tasks_share_the_anchor_and_targets_count_unseen_symbols(seed):
    bench = EmbeddedBenchmark(seed=seed)
    anchors = {t.set_a for t in bench.tasks}
    assert len(anchors) == 1  # every task counts the same A for "yes"
    source_b = set("".join(t.set_b for t in bench.source_tasks))
    target_b = set("".join(t.set_b for t in bench.target_tasks))
    assert not source_b & target_b  # a target's B symbols are never a source's B
    assert not (source_b | target_b) & set(anchors.pop())
    # and the targets' symbols do occur in source inputs, as filler
    seen = set("".join(e["inputs"] for e in bench.examples("source_0", "train", 64)))
    assert target_b <= seen


def test_no_shared_anchor_is_the_unrelated_pairs_control():
    bench = EmbeddedBenchmark(shared_anchor=False)
    assert len({t.set_a for t in bench.tasks}) > 1
    assert len({t.key for t in bench.tasks}) == 10
    with pytest.raises(ValueError, match="too small"):
        EmbeddedBenchmark(num_source=20, world=SymbolWorld(alphabet_size=8))


def test_examples_follow_rule_and_are_balanced(bench):
    world = bench.world
    for task in bench.tasks:
        examples = bench.examples(task, "train", 32)
        labels = [e["targets"] for e in examples]
        for k in (2, 16, 32):
            assert labels[:k].count("yes") == k // 2
        for e in examples:
            assert e["targets"] == _reference_label(task.set_a, task.set_b, e["inputs"])
            assert world.min_length <= len(e["inputs"]) <= world.max_length
            a = sum(ch in task.set_a for ch in e["inputs"])
            b = sum(ch in task.set_b for ch in e["inputs"])
            assert 1 <= abs(a - b) <= world.max_margin


def test_determinism_prefixes_and_split_independence(bench):
    a = bench.examples("target_1", "train", 32)
    assert a == EmbeddedBenchmark().examples("target_1", "train", 32)
    assert bench.examples("target_1", "train", 16) == a[:16]
    assert bench.examples("target_1", "test", 32) != a
    assert EmbeddedBenchmark(seed=1).tasks != bench.tasks
    shots = {s: bench.few_shot("target_1", 32, seed=s) for s in (0, 1)}
    assert shots[0][:16] == bench.few_shot("target_1", 16, seed=0)
    assert shots[0] != shots[1] and shots[0] != a
    assert [e["targets"] for e in shots[1][:16]].count("yes") == 8


def test_pretraining_never_shows_a_benchmark_task(bench):
    examples = synthetic.pretraining_examples(bench, 3000, seed=0)
    held = {t.key for t in synthetic.held_out_tasks(bench, synthetic.HELD_OUT_SEEDS)}
    assert {t.key for t in EmbeddedBenchmark(seed=2).tasks} <= held
    kinds = {"compare": 0, "filter": 0, "copy": 0}
    for e in examples:
        x, y = e["inputs"], e["targets"]
        if synthetic.COMPARE_SEP in x:
            kinds["compare"] += 1
            sets, text = x.split(":")
            a, b = sets.split(synthetic.COMPARE_SEP)
            assert frozenset({frozenset(a), frozenset(b)}) not in held
            assert y == _reference_label(a, b, text)
        elif x.startswith(synthetic.COPY_PREFIX):
            kinds["copy"] += 1
            assert y == x[1:]
        else:
            kinds["filter"] += 1
            chosen, text = x.split(synthetic.FILTER_SEP)
            assert y == ("".join(c for c in text if c in chosen) or synthetic.EMPTY)
    fractions = np.array(list(kinds.values())) / len(examples)
    np.testing.assert_allclose(fractions, [0.6, 0.25, 0.15], atol=0.04)


def test_bad_arguments_name_the_value():
    with pytest.raises(ValueError, match="alphabet_size must be in"):
        SymbolWorld(alphabet_size=40)
    with pytest.raises(ValueError, match="split must be one of"):
        EmbeddedBenchmark().examples("source_0", "dev", 4)
    with pytest.raises(ValueError, match="needs 12 tokens"):
        synthetic.to_batch(
            [{"inputs": "a" * 11, "targets": "no"}], [0], input_length=8, target_length=4
        )


def test_to_batch_encodes_like_byte_vocabulary():
    seqio = pytest.importorskip("seqio")
    vocab = seqio.ByteVocabulary()
    assert vocab.vocab_size == synthetic.BYTE_VOCAB_SIZE
    assert synthetic.encode_text("ab>cd:kk yes") == list(vocab.encode("ab>cd:kk yes"))
    batch = synthetic.to_batch(
        [{"inputs": "abc", "targets": "yes"}, {"inputs": "ab", "targets": "no"}],
        [3, 0],
        input_length=5,
        target_length=4,
    )
    np.testing.assert_array_equal(
        batch["encoder_input_tokens"], [[100, 101, 102, 1, 0], [100, 101, 1, 0, 0]]
    )
    np.testing.assert_array_equal(
        batch["decoder_target_tokens"], [[124, 104, 118, 1], [113, 114, 1, 0]]
    )
    np.testing.assert_array_equal(
        batch["decoder_input_tokens"], [[0, 124, 104, 118], [0, 113, 114, 1]]
    )
    np.testing.assert_array_equal(batch["decoder_loss_weights"], [[1, 1, 1, 1], [1, 1, 1, 0]])
    np.testing.assert_array_equal(batch["task_ids"], [3, 0])
    assert synthetic.decode_ids(batch["decoder_target_tokens"][1]) == "no"


def test_seqio_tasks_give_the_same_batches(bench):
    seqio = pytest.importorskip("seqio")
    import mpt_jax.tasks.embedded as embedded
    from mpt_jax.data.feature_converter import PromptEncDecFeatureConverter
    from mpt_jax.data.task_ids import TaskIndex

    names = [f"mpt_embedded_target_{j}_16shot" for j in range(4)]
    mixture = seqio.get_mixture_or_task("mpt_embedded_source")
    assert [t.name for t in mixture.tasks] == [f"mpt_embedded_source_{i}" for i in range(6)]
    lengths = {"inputs": 16, "targets": 4}
    ds = seqio.get_dataset(
        names[2],
        lengths,
        dataset_split="train",
        shuffle=False,
        feature_converter=PromptEncDecFeatureConverter(task_index=TaskIndex(tuple(names))),
    )
    got = list(ds.as_numpy_iterator())
    assert len(got) == 16
    expected = synthetic.to_batch(
        bench.few_shot("target_2", 16, seed=0), [2] * 16, input_length=16, target_length=4
    )
    for key, value in expected.items():
        np.testing.assert_array_equal(np.stack([g[key] for g in got]), value, err_msg=key)
    assert embedded.accuracy(["yes", "no"], ["yes", "yes"]) == {"accuracy": 50.0}
