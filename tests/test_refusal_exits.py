"""A run refused by its data exits with its message and status 2; one that truncates says
so (issue 14).

An error raised inside TensorFlow's input pipeline (an over-long input, refused by a
seqio preprocessor) left the iterator's destructor waiting for its workers at interpreter
shutdown: the command printed its message and never exited. ``mpt-jax`` (and ``python -m
mpt_jax.cli``) now leaves with ``os._exit`` after an error; each case runs in its own
process with a time limit, as a user runs it."""

import json
import os
import subprocess
import sys

import pytest


def _run(tmp_path, train_lines, *extra, timeout=240):
    os.makedirs(tmp_path / "data", exist_ok=True)
    with open(tmp_path / "data" / "train.jsonl", "w") as f:
        f.writelines(line + "\n" for line in train_lines)
    with open(tmp_path / "tasks.gin", "w") as f:
        f.write("file_tasks.tasks = {'own': {'train': 'data/train.jsonl', 'inputs': 'text', "
                "'targets': 'answer', 'labels': ['no', 'yes']}}\n")  # fmt: skip
    argv = ["train", "--gin_file=runner/teacher.gin", "--gin_file=runner/tiny.gin",
            "--gin_file=tasks.gin", f"--gin.MODEL_DIR='{tmp_path / 'run'}'",
            "--gin.MIXTURE='own'", "--gin.train_loop.num_steps=2", *extra]  # fmt: skip
    try:
        result = subprocess.run([sys.executable, "-m", "mpt_jax.cli", *argv], cwd=tmp_path,
                                capture_output=True, text=True, timeout=timeout)  # fmt: skip
    except subprocess.TimeoutExpired:
        pytest.fail(f"mpt-jax did not exit within {timeout} s (the shutdown deadlock)")
    return result.returncode, result.stderr


def _record(text, answer="yes"):
    return json.dumps({"text": text, "answer": answer})


def test_overlong_input_refused_in_the_pipeline_exits(tmp_path):
    lines = [_record("short one"), _record("x " * 400), *[_record("short") for _ in range(8)]]
    status, err = _run(tmp_path, lines)
    assert status == 2, err[-3000:]
    assert "an example of task own has inputs of" in err
    assert "length_policy.truncation" in err


def test_bad_record_refused_before_training_names_file_and_line(tmp_path):
    lines = [_record("a"), _record("b", answer="maybe"), _record("c")]
    status, err = _run(tmp_path, lines)
    assert status == 2, err[-3000:]
    assert "mpt-jax train: error: data/train.jsonl:2: target 'maybe' is neither a label" in err
    assert "training steps" not in err and "Traceback" not in err


def test_traceback_flag_still_exits(tmp_path):
    lines = [_record("short one"), _record("x " * 400), *[_record("short") for _ in range(8)]]
    status, err = _run(tmp_path, lines, "--traceback")
    assert status == 1 and "Traceback" in err, err[-3000:]


def test_truncation_is_logged_by_the_command(tmp_path):
    # TensorFlow's C++ log is silenced below ERROR by mpt-jax; the count goes to stderr
    status, err = _run(tmp_path, [_record("x " * 40)] * 10,
                       "--gin.length_policy.truncation='truncate'")  # fmt: skip
    assert status == 0, err[-3000:]
    assert "mpt_jax: truncated 'inputs' of own from length 81 to 16" in err
