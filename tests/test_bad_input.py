"""Mistakes in a configuration or a data set stop a run at once with an error that names
the bad value — through the entry points a run uses (the runner's data, the training
loop, the jobs, ``mpt-jax``'s gin parsing), not only the unit under them.

No case here compiles a model: every error is raised before the first step runs.
"""

import functools
import os

import _kill_worker as worker
import gin
import numpy as np
import pytest
import seqio
import tensorflow as tf

import mpt_jax.tasks  # noqa: F401  (registers the mpt tasks)
from mpt_jax import cli
from mpt_jax.data.task_ids import (
    TASK_IDS_FEATURE,
    TaskIndex,
    TaskIndexError,
    add_task_ids,
)
from mpt_jax.prompts.generators import ComposedPrompt
from mpt_jax.runner import data as data_lib
from mpt_jax.runner import jobs
from mpt_jax.runner.backbone_loading import load_backbone
from mpt_jax.tasks import preprocessors as task_preprocessors
from mpt_jax.tasks import vocab
from mpt_jax.training import TrainState
from mpt_jax.training.checkpoints import CHECKPOINT_SUBDIR, Checkpointer, CheckpointError
from mpt_jax.training.loop import train_loop

SOURCE = "mpt_embedded_source"
TASK_0 = "mpt_embedded_source_0"
LENGTHS = {"inputs": 16, "targets": 4}
EMPTY_TASK = "mpt_test_bad_input_empty"
LONG_TASK = "mpt_test_bad_input_long"


@pytest.fixture(autouse=True)
def _clean_gin():
    gin.clear_config()
    yield
    gin.clear_config()


def _loop(batches, *, model_dir=None, prompt=None, task_names=worker.TASKS, num_steps=3):
    _, loss_fn, tx, frozen = worker.model_and_objective()
    return train_loop(
        loss_fn, tx, worker.initial_prompt(0) if prompt is None else prompt, frozen, batches,
        task_names=task_names, model_dir=model_dir, num_steps=num_steps,
    )  # fmt: skip


# -- task names and ids -----------------------------------------------------------------------


def test_mixture_task_missing_from_the_mapping_is_named():
    """A run whose task-id mapping lacks one of the mixture's tasks: the dataset build
    names that task and lists the mapping."""
    index = TaskIndex((TASK_0,))
    with pytest.raises(TaskIndexError, match=r"'mpt_embedded_source_1' is not in the task-id"):
        data_lib.converted_dataset(SOURCE, LENGTHS, index)


def test_unknown_mixture_name_is_named():
    with pytest.raises(ValueError, match="mpt_embedded_sourse"):
        TaskIndex.from_mixture("mpt_embedded_sourse")


def test_task_id_out_of_range_stops_training_before_the_step():
    """Inside the jitted step the gather would clamp id 5 to the last task and silently
    train its prompt; the loop refuses the host batch instead."""

    def batches(start):
        batch = dict(next(worker.batches(0)(start)))
        batch["task_ids"] = np.array([0, 1, 5, 1], np.int32)
        yield batch

    with pytest.raises(ValueError, match=r"step 1 holds task id 5, out of range \[0, 2\)"):
        _loop(batches)


# -- lengths ------------------------------------------------------------------------------------


def test_inputs_longer_than_the_maximum_are_an_error_by_default():
    """The prompt takes ``prompt_length`` encoder positions on top of ``inputs``; an input
    that does not fit its own maximum is refused, naming the feature, length and maximum."""
    batches = data_lib.train_batches(TASK_0, {"inputs": 4, "targets": 4}, 2, TaskIndex((TASK_0,)))
    with pytest.raises(tf.errors.InvalidArgumentError, match="inputs.*maximum length 4"):
        next(batches(0))


def test_truncation_is_explicit_counted_and_logged(capfd):
    gin.bind_parameter("length_policy.truncation", "truncate")
    task_preprocessors.TRUNCATION_COUNTS.pop(TASK_0, None)  # a fresh count
    batches = data_lib.train_batches(TASK_0, {"inputs": 4, "targets": 4}, 2, TaskIndex((TASK_0,)))
    batch = next(batches(0))
    assert batch["encoder_input_tokens"].shape == (2, 4)
    assert (batch["encoder_input_tokens"] != 0).all()  # cut to 4 tokens, EOS dropped
    counts = task_preprocessors.TRUNCATION_COUNTS[TASK_0].as_dict()
    assert counts["inputs"] >= 2, counts  # both examples of the batch were cut, and counted
    # The first cut is logged (tf.print to the warning log), naming task, feature, lengths.
    err = capfd.readouterr().err
    assert f"truncated 'inputs' of {TASK_0} from length" in err, err[-2000:]
    assert "to 4; examples truncated so far: 1" in err


def test_composition_whose_lengths_do_not_fit_is_named():
    with pytest.raises(ValueError, match=r"needs equal lengths.*5.*task length 2"):
        ComposedPrompt(num_tasks=2, length=5, embed_dim=8, task_length=2, composition="add")


# -- empty and missing data ----------------------------------------------------------------


def _register_plain_task(name, texts):
    """A user's own seqio task: byte vocabulary, task ids, and *no* mpt length policy."""
    if name in seqio.TaskRegistry.names():
        return

    def examples(split, shuffle_files, seed=None):
        ds = tf.data.Dataset.from_tensor_slices({"inputs": texts or [""], "targets": ["x"]})
        return ds.take(len(texts))

    byte = seqio.Feature(seqio.ByteVocabulary())
    seqio.TaskRegistry.add(
        name,
        source=seqio.FunctionDataSource(examples, splits=("train",)),
        output_features={"inputs": byte, "targets": byte, "task_ids": TASK_IDS_FEATURE},
        preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos,
                       functools.partial(add_task_ids, task_name=name)],
    )  # fmt: skip


def test_over_long_inputs_of_a_task_without_the_mpt_policy_are_an_error_too():
    """seqio's own trimming is off in the runner, so the converter's policy decides."""
    _register_plain_task(LONG_TASK, ["abcdefghij"])
    batches = data_lib.train_batches(LONG_TASK, LENGTHS | {"inputs": 6}, 1, TaskIndex((LONG_TASK,)))
    with pytest.raises(tf.errors.InvalidArgumentError, match="inputs is longer than its maximum"):
        next(batches(0))


def test_empty_data_set_stops_the_run_naming_the_position():
    _register_plain_task(EMPTY_TASK, [])
    index = TaskIndex((EMPTY_TASK, "unused"))
    batches = data_lib.train_batches(EMPTY_TASK, LENGTHS, 2, index)
    with pytest.raises(ValueError, match=r"ran out after 0 batches, before step 1 of 3"):
        _loop(batches, task_names=index.names)


def test_missing_checkpoint_is_named(tmp_path):
    missing = str(tmp_path / "no_run")
    with pytest.raises(CheckpointError, match=r"no checkpoint in .*no_run"):
        jobs.export_prompts(model_dir=missing, output_dir=str(tmp_path / "out"))


def test_missing_backbone_file_is_named(tmp_path):
    path = str(tmp_path / "t5_base.msgpack")
    with pytest.raises(FileNotFoundError, match="t5_base.msgpack"):
        load_backbone(worker.model_and_objective()[0].config, path)


def test_missing_vocabulary_file_is_named(tmp_path):
    path = str(tmp_path / "spiece.model")
    with pytest.raises(Exception, match="spiece.model") as info:
        vocab.t5_vocabulary(sentencepiece_model_path=path).encode("hello")
    assert isinstance(info.value, (FileNotFoundError, tf.errors.NotFoundError, OSError))


def test_missing_data_file_is_named(tmp_path):
    pattern = str(tmp_path / "newsqa_dev.jsonl")
    gin.bind_parameter("task_data_files.files", {"mpt_mrqa_newsqa": {"validation": pattern}})
    source = seqio.get_mixture_or_task("mpt_mrqa_newsqa").source
    with pytest.raises(FileNotFoundError, match=r"newsqa_dev.jsonl.*'mpt_mrqa_newsqa'"):
        source.get_dataset("validation")


# -- checkpoints that do not fit the configuration ------------------------------------------


@pytest.fixture
def saved_run(tmp_path):
    """A run directory with one checkpoint of the worker's 2-task, length-3 MPT prompt."""
    _, _, tx, _ = worker.model_and_objective()
    ckpt = Checkpointer(os.path.join(tmp_path, CHECKPOINT_SUBDIR))
    state = TrainState.create(worker.initial_prompt(0), tx)
    assert ckpt.save(state, data_position=0, task_names=worker.TASKS, backbone="random:0")
    ckpt.close()
    return str(tmp_path)


def test_resuming_a_prompt_of_another_shape_names_both_shapes(saved_run):
    prompt = worker.initial_prompt(0)
    longer = {
        k: np.concatenate([v, v[..., :2, :]], axis=-2) if k != "task_rows" else v
        for k, v in prompt.items()
    }  # fmt: skip  (prompt length 3 -> 5)
    with pytest.raises(CheckpointError, match=r"does not fit.*\(3, 32\).*\(5, 32\)"):
        _loop(worker.batches(0), model_dir=saved_run, prompt=longer)


def test_resuming_with_another_task_mapping_names_both(saved_run):
    with pytest.raises(TaskIndexError, match=r"saved: \['source_0', 'source_1'\].*'source_2'"):
        _loop(worker.batches(0), model_dir=saved_run, task_names=(*worker.TASKS, "source_2"))


# -- gin -----------------------------------------------------------------------------------------


def test_binding_of_an_unknown_configurable_is_named(capsys):
    status = cli.main(["train", "--gin_file=runner/prompt_tuning.gin",
                       "--gin.train_lop.num_steps=3"])  # fmt: skip
    assert status == 2
    assert "train_lop" in capsys.readouterr().err


def test_binding_of_an_unknown_parameter_is_named(capsys):
    status = cli.main(["train", "--gin_file=runner/prompt_tuning.gin",
                       "--gin_bindings=train_loop.checkpoint_evry = 10"])  # fmt: skip
    assert status == 2
    err = capsys.readouterr().err
    assert "checkpoint_evry" in err and "train_loop" in err


def test_binding_of_a_misspelled_macro_is_named(capsys):
    """gin alone would define a new, unread macro and train on a random backbone."""
    status = cli.main(["train", "--gin_file=runner/prompt_tuning.gin",
                       "--gin.BACKBONE_CHECKPONT='/models/t5'"])  # fmt: skip
    assert status == 2
    assert "macro 'BACKBONE_CHECKPONT'" in capsys.readouterr().err
    # Macros the files define are accepted.
    cli.configure(["runner/prompt_tuning.gin"], ["BACKBONE_CHECKPOINT = '/models/t5'"],
                  cli.search_paths([]))  # fmt: skip
    assert gin.query_parameter("%BACKBONE_CHECKPOINT") == "/models/t5"


def test_task_id_minus_one_stops_training_before_the_step():
    """-1 would be clamped to id 0 inside the jitted step; the loop refuses it."""

    def batches(start):
        batch = dict(next(worker.batches(0)(start)))
        batch["task_ids"] = np.array([0, -1, 1, 1], np.int32)
        yield batch

    with pytest.raises(ValueError, match=r"step 1 holds task id -1, out of range \[0, 2\)"):
        _loop(batches)


# -- one length policy for train, eval and infer ------------------------------------------------

SPLIT_TASK = "mpt_test_bad_input_long_splits"


def _register_long_task_with_splits():
    """A user's task (no mpt length policy) whose only example is 'abcdefghij' + EOS."""
    if SPLIT_TASK in seqio.TaskRegistry.names():
        return

    def examples(split, shuffle_files, seed=None):
        return tf.data.Dataset.from_tensor_slices({"inputs": ["abcdefghij"], "targets": ["x"]})

    byte = seqio.Feature(seqio.ByteVocabulary())
    seqio.TaskRegistry.add(
        SPLIT_TASK,
        source=seqio.FunctionDataSource(examples, splits=("train", "validation", "test")),
        output_features={"inputs": byte, "targets": byte, "task_ids": TASK_IDS_FEATURE},
        preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos,
                       functools.partial(add_task_ids, task_name=SPLIT_TASK)],
    )  # fmt: skip


def test_eval_refuses_over_long_inputs_of_a_user_task_like_train():
    """seqio.Evaluator trims silently ('abcdefghij'+EOS became 'abcdef'); the policy reads
    the untrimmed examples first, so evaluation stops as training does."""
    from mpt_jax.runner.evaluation import make_evaluate

    _register_long_task_with_splits()
    index = TaskIndex((SPLIT_TASK,))
    refused = rf"inputs of {SPLIT_TASK} is longer than its maximum length 6"
    with pytest.raises(tf.errors.InvalidArgumentError, match=refused):
        make_evaluate(None, None, SPLIT_TASK, LENGTHS | {"inputs": 6}, index)


def test_eval_truncation_is_explicit_and_counted(capfd):
    from mpt_jax.data.feature_converter import check_task_lengths

    _register_long_task_with_splits()
    gin.bind_parameter("length_policy.truncation", "truncate")
    counts = check_task_lengths(SPLIT_TASK, LENGTHS | {"inputs": 6}, split="validation")
    assert counts == {SPLIT_TASK: {"inputs": 1, "targets": 0}}
    assert f"truncated 'inputs' of {SPLIT_TASK} from length 11 to 6" in capfd.readouterr().err


def test_infer_refuses_over_long_inputs_of_a_user_task_like_train(tmp_path):
    from mpt_jax.runner import stages

    _register_long_task_with_splits()
    gin.bind_parameter("prompts.SinglePrompt.length", 2)
    config, _, _ = load_backbone()
    ckpt = Checkpointer(os.path.join(tmp_path, CHECKPOINT_SUBDIR))
    prompt = {"shared": np.zeros((2, config.emb_dim), np.float32)}
    _, _, tx, _ = worker.model_and_objective()
    ckpt.save(TrainState.create(prompt, tx), data_position=0, task_names=[SPLIT_TASK],
              backbone="random:0")  # fmt: skip
    ckpt.close()
    out = tmp_path / "predictions.jsonl"
    refused = r"Feature inputs is longer than its maximum length 6; length:.*11"
    with pytest.raises(tf.errors.InvalidArgumentError, match=refused):
        jobs.infer(model_dir=str(tmp_path), mixture_or_task_name=SPLIT_TASK,
                   task_feature_lengths=LENGTHS | {"inputs": 6}, stage=stages.prompt_tuning,
                   output_file=str(out))  # fmt: skip
    assert not out.exists()


def test_infer_input_file_messages_name_file_and_line(tmp_path):
    import seqio

    from mpt_jax.data.task_ids import TaskIndex
    from mpt_jax.runner.evaluation import InputFileError, encode_inputs, read_input_file

    index = TaskIndex(("t",))
    path = tmp_path / "new.jsonl"
    path.write_text('{"inputs": "a"}\n\n{"inputs": "b"}\n{"inputs": "' + "x" * 40 + '"}\n')
    records = read_input_file(str(path), index)
    assert [r["where"] for r in records] == [f"{path}:1", f"{path}:3", f"{path}:4"]
    vocabulary = seqio.ByteVocabulary()
    with pytest.raises(InputFileError, match=rf"{path}:4: the input of task 't' has 41 tokens > 8"):
        encode_inputs(records, index, 8, lambda task: vocabulary, truncate=False)
    path.write_text('{"text": "a"}\n')
    with pytest.raises(InputFileError, match=r":1: expected .* got fields \['text'\] \(the input"):
        read_input_file(str(path), index)
