"""The README's "Your own tasks" walk-through, run verbatim at tiny size: its Python block
writes the jsonl files, its gin block declares the tasks, and each `mpt-jax` line of its
bash block runs through ``cli.main`` with ``runner/tiny.gin`` in place of
``runner/embedded.gin`` (4 steps on a random backbone)."""

import json
import os
import re
import shlex
import subprocess
import sys

import gin
import numpy as np
import pytest
import seqio

from mpt_jax import cli
from mpt_jax.tasks import files

README = os.path.join(os.path.dirname(__file__), "..", "README.md")


def _section() -> str:
    text = open(README).read()
    return text.split("## Your own tasks", 1)[1].split("\n## ", 1)[0]


def _blocks(section: str) -> list[tuple[str, str]]:
    return re.findall(r"```(\w*)\n(.*?)```", section, flags=re.S)


def _commands(bash: str) -> list[list[str]]:
    joined = bash.replace("\\\n", " ")
    env, out = {}, []
    for line in joined.splitlines():
        line = line.strip()
        if not line:
            continue
        name, eq, value = line.partition("=")
        if eq and name.isidentifier() and not line.startswith("mpt-jax"):
            env[name] = shlex.split(value)[0]
            continue
        for key, value in env.items():
            line = line.replace(f"${key}", value)
        argv = shlex.split(line)
        assert argv[0] == "mpt-jax", line
        out.append([a.replace("runner/embedded.gin", "runner/tiny.gin") for a in argv[1:]])
    return out


@pytest.fixture(scope="module")
def walkthrough(tmp_path_factory):
    root = tmp_path_factory.mktemp("own")
    old = os.getcwd()
    os.chdir(root)
    try:
        blocks = _blocks(_section())
        python = next(b for lang, b in blocks if lang == "python")
        gin_text = next(b for lang, b in blocks if lang == "")
        bash = next(b for lang, b in blocks if lang == "bash")
        exec(compile(python, "README.md", "exec"), {})
        (root / "my_tasks.gin").write_text(gin_text)
        statuses = [(argv[0], cli.main(argv)) for argv in _commands(bash)]
        yield root, statuses
    finally:
        os.chdir(old)


def test_every_command_of_the_walkthrough_succeeds(walkthrough):
    root, statuses = walkthrough
    assert [s for _, s in statuses] == [0] * len(statuses), statuses
    assert [j for j, _ in statuses] == ["train", "train", "train", "eval", "infer",
                                        "export-prompts", "plot"]  # fmt: skip


def test_own_tasks_are_seqio_tasks_with_task_ids(walkthrough):
    root, _ = walkthrough
    task = seqio.get_mixture_or_task("src_a")
    assert "task_ids" in task.output_features
    assert [t.name for t in seqio.get_mixture_or_task("my_sources").tasks] == ["src_a", "src_b"]
    teachers = json.loads((root / "runs/teachers/task_index.json").read_text())
    assert teachers["task_names"] == ["src_a", "src_b"]
    # the first training example is the file's first line, in the mapped fields
    first = json.loads(open(root / "data/src_a/train.jsonl").readline())
    spec = {"train": str(root / "data/src_a/train.jsonl"), "inputs": "text",
            "targets": "answer", "labels": ["no", "yes"]}  # fmt: skip
    example = next(files.examples(files.FileTask.from_mapping("x", spec), "train"))
    assert example["inputs"] == first["text"] and example["targets"] == first["answer"]
    assert example["label"] == ["no", "yes"].index(first["answer"])


def test_rank_scored_target_evaluates_and_infers_on_new_inputs(walkthrough):
    root, _ = walkthrough
    record = json.loads((root / "runs/tgt/eval_results.jsonl").read_text().splitlines()[-1])
    assert 0.0 <= record["tgt/accuracy"] <= 100.0 and record["step"] == 4
    new = [json.loads(line) for line in open(root / "data/new.jsonl")]
    predictions = [json.loads(line) for line in open(root / "runs/tgt/predictions_new.jsonl")]
    assert [p["inputs"] for p in predictions] == [n["inputs"] for n in new]
    assert {p["task"] for p in predictions} == {"tgt"}
    from mpt_jax.prompts import io as prompt_io

    peft, config = prompt_io.import_peft(str(root / "tgt_adapter"))
    assert config["num_tasks"] == 1 and peft["shared"].shape[0] == 4  # tiny.gin: 4 tokens
    assert (root / "runs/tgt/learning_curves.png").stat().st_size > 1000


def _infer_command() -> list[str]:
    """The walk-through's ``mpt-jax infer`` argv (tiny backbone), without ``mpt-jax``."""
    bash = next(b for lang, b in _blocks(_section()) if lang == "bash")
    return next(argv for argv in _commands(bash) if argv[0] == "infer")


def test_infer_on_a_rank_scored_split_gives_one_row_per_input(walkthrough):
    """``tgt`` is rank-scored: its validation split holds one row per (input, label), but
    infer writes one row per input with the best label and every label's score, and on
    the inputs eval scored its accuracy is eval's ``tgt/accuracy`` at the same step."""
    root, _ = walkthrough
    argv = [a for a in _infer_command() if "input_file" not in a]
    argv += ["--gin.MIXTURE='tgt'", "--gin.infer.split='validation'"]
    assert cli.main(argv) == 0
    rows = [json.loads(line) for line in open(root / "runs/tgt/predictions_validation.jsonl")]
    gold = [json.loads(line) for line in open(root / "data/tgt/validation.jsonl")]
    assert len(rows) == len(gold) == 64
    assert [r["inputs"] for r in rows] == [g["text"] for g in gold]
    assert [r["targets"] for r in rows] == [g["answer"] for g in gold]
    for r in rows:
        assert list(r["scores"]) == ["no", "yes"] and r["task"] == "tgt"
        assert all(s < 0 for s in r["scores"].values())  # log-likelihoods
        assert r["prediction"] == max(r["scores"], key=r["scores"].get)
    # eval scored the first make_evaluate.num_examples rows (tiny.gin: 8 = 4 inputs × 2 labels)
    inputs = gin.query_parameter("make_evaluate.num_examples") // 2
    accuracy = 100 * np.mean([r["prediction"] == r["targets"] for r in rows[:inputs]])
    evaluated = json.loads((root / "runs/tgt/eval_results.jsonl").read_text().splitlines()[-1])
    assert accuracy == pytest.approx(evaluated["tgt/accuracy"])


def test_the_readme_infer_command_runs_as_its_own_process(walkthrough):
    """The walk-through's infer line, verbatim but for the tiny backbone, as a user runs it:
    a fresh ``python -m mpt_jax.cli`` process (the in-process run above did not catch its
    crash, 'No Task or Mixture found with name data/new.jsonl'). Same checkpoint, same
    greedy decoding: the same predictions as in-process."""
    root, _ = walkthrough
    path = root / "runs/tgt/predictions_new.jsonl"
    in_process = [json.loads(line) for line in open(path)]
    path.unlink()
    result = subprocess.run([sys.executable, "-m", "mpt_jax.cli", *_infer_command()], cwd=root,
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in open(path)]
    new = [json.loads(line) for line in open(root / "data/new.jsonl")]
    assert len(rows) == len(new) == 8
    assert all(list(r) == ["task", "inputs", "prediction"] for r in rows)
    assert [r["inputs"] for r in rows] == [n["inputs"] for n in new]
    assert rows == in_process
    assert "Traceback" not in result.stderr and "ERROR" not in result.stderr


def test_a_refusal_at_run_time_is_one_message_not_a_traceback(walkthrough, capsys):
    """A bad task in the file of new inputs is found once the job runs (after TensorFlow
    and the backbone): one message naming the file, the line and the run's tasks, exit
    status 2; ``--traceback`` raises it instead."""
    from mpt_jax.runner.evaluation import InputFileError

    root, _ = walkthrough
    (root / "data/bad.jsonl").write_text('{"inputs": "x"}\n{"inputs": "y", "task": "tgtt"}\n')
    argv = [a if "input_file" not in a else "--gin.infer.input_file='data/bad.jsonl'"
            for a in _infer_command()]  # fmt: skip
    capsys.readouterr()
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert ("mpt-jax infer: error: data/bad.jsonl:2: task 'tgtt' is not one of the run's "
            "tasks ['tgt']\n") in err  # fmt: skip
    assert "Traceback" not in err
    with pytest.raises(InputFileError, match="data/bad.jsonl:2: task 'tgtt'"):
        cli.main([*argv, "--traceback"])
    assert "--traceback" in cli.command_help("infer")


def test_rank_accuracy_formula():
    # two examples, two labels each: example 0 ranks its correct label first, 1 does not
    targets = [(0, 1), (0, 0), (1, 0), (1, 1)]
    assert files.rank_accuracy(targets, [-1.0, -2.0, -0.5, -3.0]) == {"accuracy": 50.0}
    assert files.rank_accuracy(targets, [-1.0, -2.0, -5.0, -3.0]) == {"accuracy": 100.0}


def test_file_task_mistakes_name_the_task_and_key(tmp_path):
    with pytest.raises(ValueError, match=r"unknown key 'input'; did you mean 'inputs'"):
        files.FileTask.from_mapping("t", {"train": "a.jsonl", "input": "text"})
    with pytest.raises(ValueError, match=r"metric 'acuracy' is not a shipped metric; did you"):
        files.FileTask.from_mapping("t", {"train": "a.jsonl", "labels": ["a"], "metric": "acuracy"})
    with pytest.raises(ValueError, match="compares class labels; give 'labels'"):
        files.FileTask.from_mapping("t", {"train": "a.jsonl", "metric": "accuracy"})
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "x", "answer": "maybe"}\n')
    labels = {"labels": ["no", "yes"]}
    task = files.FileTask.from_mapping(
        "t", {"train": str(bad), "inputs": "text", "targets": "answer", **labels}
    )
    with pytest.raises(ValueError, match=rf"{bad}:1: target 'maybe' is neither a label name"):
        list(files.examples(task, "train"))
    tsv = tmp_path / "t.tsv"
    tsv.write_text("title\tbody\tlabel\nA\tB\t1\n")
    task = files.FileTask.from_mapping(
        "t", {"train": str(tsv), "inputs": ["title", "body"], "targets": "label", **labels}
    )
    assert list(files.examples(task, "train")) == [
        {"inputs": "title: A body: B", "targets": "yes", "label": 1}
    ]
    assert np.isclose(files._squad(["The cat"], ["cat"])["em"], 100.0)


def test_file_contents_are_checked_when_registered(tmp_path):
    # labels as one string would be split into characters
    with pytest.raises(ValueError, match=r"\['labels'\] = 'no,yes': give a list of label names"):
        files.FileTask.from_mapping("t", {"train": "a.jsonl", "labels": "no,yes"})
    # a byte-order mark (Excel's TSV, a Windows editor's jsonl) is not part of a field name
    labels = {"inputs": "text", "targets": "answer", "labels": ["no", "yes"]}
    tsv, jsonl = tmp_path / "bom.tsv", tmp_path / "bom.jsonl"
    tsv.write_text("\ufefftext\tanswer\nA\tyes\n", encoding="utf-8")
    jsonl.write_text('\ufeff{"text": "A", "answer": "yes"}\n', encoding="utf-8")
    for path in (tsv, jsonl):
        task = files.FileTask.from_mapping("t", {"train": str(path), **labels})
        assert list(files.examples(task, "train"))[0]["inputs"] == "A"
    # a bad record anywhere in a file stops the registration, naming file:line
    bad = tmp_path / "bad.jsonl"
    good = '{"text": "x", "answer": "no"}\n'
    bad.write_text(good * 50 + '{"text": "x"}\n' + good)
    task = files.FileTask.from_mapping("own_bad_record", {"train": str(bad), **labels})
    with pytest.raises(files.FileTaskError, match=rf"{bad}:51: the record has no field 'answer'"):
        files.register_file_task(task)
    for name, text, message in (
        ("null.jsonl", '{"text": null, "answer": "no"}\n', ":1: field 'text' is null; expected"),
        ("list.jsonl", '{"text": ["a"], "answer": "no"}\n', ":1: field 'text' is \\[\"a\"\\]"),
        ("extra.tsv", "text\tanswer\nA\tyes\tz\n", ":2: the row has 3 tab-separated field"),
        ("short.tsv", "text\tanswer\nA\tyes\n\nB\n", ":4: the row has 1 tab-separated field"),
    ):
        (tmp_path / name).write_text(text)
        task = files.FileTask.from_mapping("t", {"train": str(tmp_path / name), **labels})
        with pytest.raises(files.FileTaskError, match=f"{name}{message}"):
            list(files.examples(task, "train"))
    for bad_labels, message in (([], "the list is empty"), (["no", "no"], "\\['no'\\] repeated")):
        with pytest.raises(ValueError, match=f"give distinct label names \\({message}"):
            files.FileTask.from_mapping("t", {"train": "a.jsonl", "labels": bad_labels})
    headerless = tmp_path / "nohdr.tsv"
    headerless.write_text("A\tyes\nB\tno\n")
    task = files.FileTask.from_mapping("own_headerless", {"train": str(headerless), **labels})
    with pytest.raises(files.FileTaskError, match="a TSV file's first line names its fields"):
        files.register_file_task(task)
