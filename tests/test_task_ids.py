"""Task-id mapping: ids, JSON round trip, compatibility check, the task_ids preprocessor."""

import gin
import pytest
import tensorflow as tf

from mpt_jax.data.task_ids import (
    TaskIndex,
    TaskIndexError,
    active_task_index,
    add_task_ids,
    check_compatible,
    use_task_index,
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


def test_add_task_ids_uses_active_index_and_gin():
    ds = tf.data.Dataset.from_tensor_slices({"inputs": [[1, 2], [3, 4]]})
    with pytest.raises(TaskIndexError, match="No task-id mapping is active"):
        add_task_ids(ds, task_name="mpt_glue_qqp")
    with use_task_index(TaskIndex(SOURCE)):
        out = list(add_task_ids(ds, task_name="mpt_glue_qqp").as_numpy_iterator())
        with pytest.raises(TaskIndexError, match="'mpt_glue_rte' is not in"):
            add_task_ids(ds, task_name="mpt_glue_rte")
    assert [ex["task_ids"].tolist() for ex in out] == [[2], [2]]
    assert out[0]["task_ids"].dtype == "int32"
    with gin.unlock_config():
        gin.parse_config("active_task_index.task_names = ['x', 'mpt_glue_qqp']")
    try:
        assert active_task_index().id("mpt_glue_qqp") == 1
    finally:
        gin.clear_config()
