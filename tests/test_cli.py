"""``mpt-jax`` end to end on two in-memory seqio tasks and the tiny random backbone:
teacher → source (distillation) → target (average init, seqio eval) → eval → infer →
export-prompts, all through ``main([...])`` with the shipped gin files."""

import functools
import json
import os

import numpy as np
import pytest
import seqio
import tensorflow as tf

from mpt_jax import cli
from mpt_jax.data.task_ids import TASK_IDS_FEATURE, TaskIndex, add_task_ids
from mpt_jax.training.checkpoints import Checkpointer
from mpt_jax.training.summaries import read_metrics

VOCAB = seqio.ByteVocabulary()
TASKS = ("cli_first_letter", "cli_last_letter")


def _examples(task: str, split: str) -> list[dict[str, str]]:
    rng = np.random.default_rng({"train": 0, "validation": 1, "test": 2}[split])
    words = ["".join(rng.choice(list("abcdef"), size=4)) for _ in range(32)]
    pick = (lambda w: w[0]) if task == TASKS[0] else (lambda w: w[-1])
    return [{"inputs": w, "targets": pick(w)} for w in words]


def _dataset_fn(split, shuffle_files=False, seed=None, *, task):
    ex = _examples(task, split)
    return tf.data.Dataset.from_tensor_slices({
        "inputs": np.array([e["inputs"] for e in ex], dtype=object),
        "targets": np.array([e["targets"] for e in ex], dtype=object),
    })  # fmt: skip


def accuracy(targets, predictions):
    return {
        "accuracy": 100.0
        * float(np.mean([t == p for t, p in zip(targets, predictions, strict=True)]))
    }


def mean_log_likelihood(targets, scores):
    return {"mean_log_likelihood": float(np.mean(scores))}


def _register():
    if TASKS[0] in seqio.TaskRegistry.names():
        return
    for name in TASKS:
        seqio.TaskRegistry.add(
            name,
            source=seqio.FunctionDataSource(
                functools.partial(_dataset_fn, task=name), splits=("train", "validation", "test")
            ),
            output_features={
                "inputs": seqio.Feature(VOCAB, add_eos=True),
                "targets": seqio.Feature(VOCAB, add_eos=True),
                "task_ids": TASK_IDS_FEATURE,
            },
            preprocessors=[
                seqio.preprocessors.tokenize,
                seqio.preprocessors.append_eos_after_trim,
                functools.partial(add_task_ids, task_name=name),
            ],
            metric_fns=[accuracy, mean_log_likelihood],
        )
    seqio.MixtureRegistry.add("cli_mix", [(n, 1.0) for n in TASKS])


def _run(job, *gin_files, **bindings):
    argv = [job] + [f"--gin_file={f}" for f in gin_files]
    argv += [f"--gin.{k}={v}" for k, v in bindings.items()]
    return cli.main(argv)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    _register()
    root = tmp_path_factory.mktemp("runs")
    dirs = {k: str(root / k) for k in ("teacher", "source", "target")}
    common = {"MIXTURE": "'cli_mix'"}
    assert _run("train", "runner/teacher.gin", "runner/tiny.gin",
                MODEL_DIR=repr(dirs["teacher"]), **common) == 0  # fmt: skip
    assert _run("train", "runner/source.gin", "runner/tiny.gin", MODEL_DIR=repr(dirs["source"]),
                TEACHER_DIR=repr(dirs["teacher"]), **common) == 0  # fmt: skip
    assert _run("train", "runner/target.gin", "runner/tiny.gin", MODEL_DIR=repr(dirs["target"]),
                SOURCE_DIR=repr(dirs["source"]), MIXTURE=f"'{TASKS[1]}'",
                EVAL_MIXTURE=f"'{TASKS[1]}'") == 0  # fmt: skip
    return dirs


def _latest(directory):
    ckpt = Checkpointer(os.path.join(directory, "checkpoints"))
    try:
        return ckpt.restore_meta(), ckpt.restore_params()
    finally:
        ckpt.close()


def test_teacher_and_source_runs(runs):
    meta, params = _latest(runs["teacher"])
    assert meta["step"] == 4 and meta["task_names"] == list(TASKS)
    assert params["task_prompts"].shape == (2, 4, 32)
    assert meta["extra"]["stage"] == "teacher" and meta["backbone"] == "random:0"
    meta, params = _latest(runs["source"])
    assert set(params) == {"shared", "task_cols", "task_rows"}
    assert meta["extra"]["distill"] is True
    train = read_metrics(runs["source"], "train")
    assert [r["step"] for r in train] == [1, 2, 3, 4]
    assert all(r["kl"] > 0 and r["mse"] > 0 for r in train)
    # the job logs its recipe's rate (PromptRecipe's default, constant)
    assert all(r["learning_rate"] == pytest.approx(0.3) for r in train)
    for r in train:  # L = L_task + λ (τ² KL + MSE) with the shipped λ = 0.9, τ = 1
        assert r["loss"] == pytest.approx(r["task_loss"] + 0.9 * (r["kl"] + r["mse"]), rel=1e-5)
    saved = TaskIndex.load(os.path.join(runs["source"], "task_index.json"))
    assert saved.names == TASKS


def test_target_run_evaluates_with_seqio_metrics(runs):
    meta, params = _latest(runs["target"])
    assert meta["task_names"] == [TASKS[1]] and params["task_cols"].shape == (1, 4, 1)
    (record,) = read_metrics(runs["target"], "eval")
    assert record["step"] == 4
    assert 0.0 <= record[f"{TASKS[1]}/accuracy"] <= 100.0
    assert record[f"{TASKS[1]}/mean_log_likelihood"] < 0.0
    with open(os.path.join(runs["target"], "config.gin")) as f:
        assert "stages.target" in f.read()


def test_eval_infer_and_export_jobs(runs, tmp_path):
    d, common = runs["target"], dict(MIXTURE=f"'{TASKS[1]}'", SOURCE_DIR=repr(runs["source"]))
    assert _run("eval", "runner/target.gin", "runner/tiny.gin", MODEL_DIR=repr(d), **common) == 0
    with open(os.path.join(d, "eval_results.jsonl")) as f:
        evaluated = json.loads(f.readlines()[-1])
    (trained,) = read_metrics(d, "eval")
    assert evaluated["step"] == 4 and evaluated["split"] == "validation"
    assert evaluated[f"{TASKS[1]}/accuracy"] == trained[f"{TASKS[1]}/accuracy"]
    out = str(tmp_path / "predictions.jsonl")
    infer_bindings = {"infer.output_file": repr(out), "infer.num_examples": 5}
    assert _run("infer", "runner/target.gin", "runner/tiny.gin", MODEL_DIR=repr(d),
                **infer_bindings, **common) == 0  # fmt: skip
    with open(out) as f:
        preds = [json.loads(line) for line in f]
    assert len(preds) == 5 and preds[0]["inputs"] == _examples(TASKS[1], "test")[0]["inputs"]
    assert preds[0]["targets"] == _examples(TASKS[1], "test")[0]["targets"]
    hits = 100.0 * np.mean([p["prediction"] == p["targets"] for p in preds])
    assert 0.0 <= hits <= 100.0
    _, params = _latest(d)
    for fmt in ("npy", "peft"):
        target = str(tmp_path / fmt)
        assert _run("export-prompts", "runner/target.gin", MODEL_DIR=repr(d),
                    **{"export_prompts.output_dir": repr(target),
                       "export_prompts.format": repr(fmt)}) == 0  # fmt: skip
    np.testing.assert_array_equal(np.load(tmp_path / "npy" / "shared.npy"), params["shared"])
    from mpt_jax.prompts import io as prompt_io

    peft, config = prompt_io.import_peft(str(tmp_path / "peft"))
    np.testing.assert_array_equal(peft["task_rows"], params["task_rows"])
    assert config["num_tasks"] == 1
    # No stage file: the prompt comes from the checkpoint (runner/base.gin by default).
    bare = str(tmp_path / "bare")
    assert _run("export-prompts", MODEL_DIR=repr(d),
                **{"export_prompts.output_dir": repr(bare)}) == 0  # fmt: skip
    np.testing.assert_array_equal(np.load(tmp_path / "bare" / "shared.npy"), params["shared"])


def test_unknown_binding_is_an_error_that_names_it(capsys):
    status = _run("train", "runner/teacher.gin", **{"train.no_such_setting": 1})
    assert status == 2
    assert "no_such_setting" in capsys.readouterr().err
    assert _run("train", "runner/does_not_exist.gin") == 2
    assert "does_not_exist.gin" in capsys.readouterr().err
    # Arguments the train job passes itself are refused, not silently overridden.
    assert _run("train", "runner/teacher.gin", **{"train_loop.seed": 3}) == 2
    assert "seed" in capsys.readouterr().err


def test_demo_job_is_wired(capsys):
    assert cli.main(["demo", "--gin.mpt_jax.runner.demo.main.no_such_option=1"]) == 2
    assert "no_such_option" in capsys.readouterr().err


def test_seqio_training_batches_resume_at_the_same_position():
    """``train_batches(start)`` continues the fixed order: resuming at 3 gives batches 3, 4."""
    from mpt_jax.runner.data import train_batches

    _register()
    index = TaskIndex(TASKS)
    batches = train_batches("cli_mix", {"inputs": 8, "targets": 4}, 4, index, seed=3)
    it = batches(0)
    first = [next(it) for _ in range(5)]
    it = batches(3)
    resumed = [next(it) for _ in range(2)]
    for a, b in zip(first[3:], resumed, strict=True):
        assert set(a) == {"encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens",
                          "decoder_loss_weights", "task_ids"}  # fmt: skip
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
    ids = np.concatenate([b["task_ids"] for b in first])
    assert set(ids.tolist()) == {0, 1}  # both tasks, ids from the mapping
    assert not np.array_equal(first[0]["encoder_input_tokens"], first[1]["encoder_input_tokens"])


def test_console_script_help():
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "mpt_jax.cli", "--help"], capture_output=True,
                            text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    for job in cli.JOBS:
        assert job in result.stdout
    assert "--gin_file" in result.stdout and "--gin_search_paths" in result.stdout
