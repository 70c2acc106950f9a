"""Few-shot subsets: exact counts, same seed → same subset, independent of reading order."""

import gin
import numpy as np
import pytest
import seqio
import tensorflow as tf

from mpt_jax.tasks.few_shot import FewShotSource, select_few_shot

NUM_PER_CLASS = {0: 12, 1: 9, 2: 20}


def _records(order=None):
    labels = np.concatenate([np.full(n, c) for c, n in NUM_PER_CLASS.items()]).astype(np.int64)
    texts = np.array([f"example {i}" for i in range(len(labels))])
    if order is not None:
        labels, texts = labels[order], texts[order]
    return {"sentence": texts, "label": labels}


def _dataset(order=None):
    return tf.data.Dataset.from_tensor_slices(_records(order))


def _chosen_texts(records, positions):
    return sorted(records["sentence"][positions].tolist())


@pytest.fixture(scope="module")
def selections():
    """Positions for k = 4 under seeds 0, 0 (again), 1, and seed 0 on a permuted order."""
    permutation = np.random.default_rng(7).permutation(sum(NUM_PER_CLASS.values()))
    return {
        "seed0": select_few_shot(_dataset(), 4, seed=0, label_key="label"),
        "seed0_again": select_few_shot(_dataset(), 4, seed=0, label_key="label"),
        "seed1": select_few_shot(_dataset(), 4, seed=1, label_key="label"),
        "permuted": (
            permutation,
            select_few_shot(_dataset(permutation), 4, seed=0, label_key="label"),
        ),
    }


def test_counts_are_exact_per_class(selections):
    labels = _records()["label"][selections["seed0"]]
    assert {c: int((labels == c).sum()) for c in NUM_PER_CLASS} == {0: 4, 1: 4, 2: 4}
    assert len(np.unique(selections["seed0"])) == 12


def test_same_seed_same_subset_other_seed_other_subset(selections):
    np.testing.assert_array_equal(selections["seed0"], selections["seed0_again"])
    assert not np.array_equal(selections["seed0"], selections["seed1"])
    permutation, positions = selections["permuted"]
    assert _chosen_texts(_records(permutation), positions) == _chosen_texts(
        _records(), selections["seed0"]
    )


def test_per_task_selection_and_errors():
    positions = select_few_shot(_dataset(), 16, seed=3, label_key=None)
    assert len(positions) == 16
    with pytest.raises(
        ValueError,
        match="16-shot needs 16 training examples per class; class 0 has 12, class 1 has 9.",
    ):
        select_few_shot(_dataset(), 16, seed=0, label_key="label")
    with pytest.raises(ValueError, match="positive number"):
        select_few_shot(_dataset(), 0, seed=0, label_key="label")


def test_few_shot_source_cuts_train_only():
    def dataset_fn(split, shuffle_files, seed=None):
        del shuffle_files, seed
        return _dataset() if split == "train" else _dataset().take(5)

    base = seqio.FunctionDataSource(dataset_fn, splits=["train", "validation"])
    source = FewShotSource(base, 4, label_key="label", num_classes=3)
    train = list(source.get_dataset("train", shuffle=False).as_numpy_iterator())
    assert sorted(ex["sentence"].decode() for ex in train) == _chosen_texts(
        _records(), select_few_shot(_dataset(), 4, seed=0, label_key="label")
    )
    assert len(list(source.get_dataset("validation", shuffle=False))) == 5
    assert source.num_input_examples("train") == 12
    gin.bind_parameter("few_shot_seed.seed", 1)
    try:
        np.testing.assert_array_equal(
            source.selected_positions(),
            select_few_shot(_dataset(), 4, seed=1, label_key="label"),
        )
    finally:
        gin.clear_config()
