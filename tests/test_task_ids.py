"""Task-id mapping: ids, JSON round trip, compatibility check, the task_ids preprocessor."""

import gin
import pytest
import tensorflow as tf

from mpt_jax.data.feature_converter import PromptEncDecFeatureConverter
from mpt_jax.data.task_ids import (
    KEY_BASE,
    TaskIndex,
    TaskIndexError,
    add_task_ids,
    check_compatible,
    task_index,
    task_key,
)

SOURCE = ("mpt_glue_mnli", "mpt_glue_qnli", "mpt_glue_qqp", "mpt_glue_sst2")


def test_ids_follow_order_and_round_trip(tmp_path):
    index = TaskIndex(SOURCE)
    assert [index.id(n) for n in SOURCE] == [0, 1, 2, 3]
    assert index.name(2) == "mpt_glue_qqp"
    assert index.num_tasks == 4 and "mpt_glue_qnli" in index
    path = tmp_path / "task_ids.json"
    index.save(path)
    assert TaskIndex.load(path) == index
    assert TaskIndex.from_json(index.to_json()).as_dict() == {n: i for i, n in enumerate(SOURCE)}


def test_unknown_name_and_bad_id_are_named():
    index = TaskIndex(SOURCE)
    with pytest.raises(TaskIndexError, match=r"'mpt_glue_rte'.*mpt_glue_mnli.*mpt_glue_sst2"):
        index.id("mpt_glue_rte")
    with pytest.raises(TaskIndexError, match=r"Task id 4 is out of range \[0, 3\]"):
        index.name(4)
    with pytest.raises(TaskIndexError, match=r"\['a'\] repeat"):
        TaskIndex(("a", "b", "a"))
    with pytest.raises(TaskIndexError, match="at least one"):
        TaskIndex(())
    with pytest.raises(FileNotFoundError, match="nowhere.json"):
        TaskIndex.load("/nonexistent/nowhere.json")


def test_check_compatible_names_both_mappings():
    check_compatible(TaskIndex(SOURCE), TaskIndex(SOURCE))
    swapped = TaskIndex(("mpt_glue_qnli", "mpt_glue_mnli", "mpt_glue_qqp", "mpt_glue_sst2"))
    with pytest.raises(TaskIndexError) as err:
        check_compatible(TaskIndex(SOURCE), swapped, context="resuming /ckpt")
    message = str(err.value)
    assert message.startswith("resuming /ckpt: ")
    assert str(list(SOURCE)) in message and str(list(swapped.names)) in message
    assert "'mpt_glue_mnli': saved id 0, current id 1" in message
    with pytest.raises(TaskIndexError, match="'mpt_glue_rte': saved id None, current id 4"):
        check_compatible(TaskIndex(SOURCE), TaskIndex((*SOURCE, "mpt_glue_rte")))


def test_task_keys_are_stable_fingerprints_outside_the_id_range():
    # sha256 of the name: the same in every process and run (unlike Python's hash)
    assert task_key("mpt_glue_qqp") == task_key("mpt_glue_qqp")
    keys = {task_key(name) for name in SOURCE}
    assert len(keys) == len(SOURCE)
    assert all(KEY_BASE <= k < 2 * KEY_BASE for k in keys)


def _converted(ds, converter):
    return [int(ex["task_ids"]) for ex in converter(ds, {"inputs": 2, "targets": 2})]


def test_the_converter_maps_task_keys_with_the_mapping_it_is_given():
    """No global: the preprocessor writes the task's key, the run's converter its id."""
    rows = {"inputs": [[1, 2], [3, 4]], "targets": [[5, 1], [6, 1]]}
    ds = tf.data.Dataset.from_tensor_slices(rows)
    qqp = add_task_ids(ds, task_name="mpt_glue_qqp")
    assert [ex["task_ids"].tolist() for ex in qqp.as_numpy_iterator()] == [
        [task_key("mpt_glue_qqp")]
    ] * 2
    assert qqp.element_spec["task_ids"].dtype == tf.int32
    converted = PromptEncDecFeatureConverter(task_index=TaskIndex(SOURCE))
    assert _converted(qqp, converted) == [2, 2]
    other = PromptEncDecFeatureConverter(task_index=TaskIndex(("mpt_glue_qqp",)))
    assert _converted(qqp, other) == [0, 0]  # another run, another id, same task
    rte = add_task_ids(ds, task_name="mpt_glue_rte")
    with pytest.raises(
        tf.errors.InvalidArgumentError, match="not in the task-id mapping of the run"
    ):
        _converted(rte, converted)
    with pytest.raises(tf.errors.InvalidArgumentError, match="give the feature converter"):
        _converted(qqp, PromptEncDecFeatureConverter())  # keys but no mapping
    ids = ds.map(lambda ex: {**ex, "task_ids": tf.constant([1], tf.int32)})
    assert _converted(ids, PromptEncDecFeatureConverter()) == [1, 1]  # ids pass unchanged


def test_task_index_from_gin():
    with gin.unlock_config():
        gin.parse_config("task_index.task_names = ['x', 'mpt_glue_qqp']")
    try:
        assert task_index().id("mpt_glue_qqp") == 1
    finally:
        gin.clear_config()
    with pytest.raises(TaskIndexError, match="exactly one of task_index.task_names"):
        task_index()
