"""Identity checked on every reuse (issue 15, item 1): a checkpoint records what made it,
and resume, eval, target/SPoT initialisation and export refuse a mismatch, naming both sides.

Two tiny runs through ``mpt-jax`` with the shipped gin files: an MPT source
(``runner/source.gin``) and the ``add`` composition of ``runner/composed.gin`` (rank 1:
parameters ``shared``, ``task_cols``, ``task_rows`` of MPT's shapes), both without
distillation. Every refusal happens before a model is compiled.
"""

import functools
import logging
import os

import gin
import jax.numpy as jnp
import numpy as np
import pytest
import seqio
import tensorflow as tf

from mpt_jax import cli
from mpt_jax.data.task_ids import TASK_IDS_FEATURE, add_task_ids
from mpt_jax.prompts.generators import ComposedPrompt, MultitaskPrompt
from mpt_jax.training import TrainState, identity, make_optimizer
from mpt_jax.training.checkpoints import CHECKPOINT_SUBDIR, Checkpointer
from mpt_jax.training.identity import IdentityError

TASKS = ("identity_first_letter", "identity_last_letter")
MIX = "identity_mix"


def _dataset_fn(split, shuffle_files=False, seed=None, *, task):
    rng = np.random.default_rng(0)
    words = ["".join(rng.choice(list("abcdef"), size=4)) for _ in range(16)]
    pick = (lambda w: w[0]) if task == TASKS[0] else (lambda w: w[-1])
    return tf.data.Dataset.from_tensor_slices(
        {"inputs": np.array(words, object), "targets": np.array([pick(w) for w in words], object)}
    )


def _register():
    if TASKS[0] in seqio.TaskRegistry.names():
        return
    byte = seqio.Feature(seqio.ByteVocabulary(), add_eos=True)
    for name in TASKS:
        seqio.TaskRegistry.add(
            name,
            source=seqio.FunctionDataSource(
                functools.partial(_dataset_fn, task=name), splits=("train", "validation")
            ),
            output_features={"inputs": byte, "targets": byte, "task_ids": TASK_IDS_FEATURE},
            preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim,
                           functools.partial(add_task_ids, task_name=name)],
        )  # fmt: skip
    seqio.MixtureRegistry.add(MIX, [(n, 1.0) for n in TASKS])


def _run(job, *gin_files, **bindings):
    argv = [job, "--traceback"] + [f"--gin_file={f}" for f in gin_files]  # refusals raise
    argv += [f"--gin.{k}={v}" for k, v in bindings.items()]
    try:
        return cli.main(argv)
    finally:
        gin.clear_config()  # the bindings of one job must not reach the next test


NO_DISTILL = {"stages.source.teachers": "None", "MIXTURE": repr(MIX),
              "train_loop.num_steps": 2}  # fmt: skip


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """``{"mpt": run dir, "add": run dir}``, two steps each."""
    _register()
    root = tmp_path_factory.mktemp("identity")
    dirs = {"mpt": str(root / "mpt"), "add": str(root / "add")}
    assert _run("train", "runner/source.gin", "runner/tiny.gin", MODEL_DIR=repr(dirs["mpt"]),
                **NO_DISTILL) == 0  # fmt: skip
    assert _run("train", "runner/composed.gin", "runner/tiny.gin", MODEL_DIR=repr(dirs["add"]),
                **NO_DISTILL) == 0  # fmt: skip
    return dirs


def _meta(run_dir):
    ckpt = Checkpointer(os.path.join(run_dir, CHECKPOINT_SUBDIR))
    try:
        return ckpt.restore_meta()
    finally:
        ckpt.close()


def _unchanged(run_dir):
    """What a refused reuse must leave as it was: config.gin's bytes and the latest step."""
    with open(os.path.join(run_dir, "config.gin")) as f:
        return f.read(), _meta(run_dir)["step"]


# -- what a checkpoint records ----------------------------------------------------------------


def test_checkpoint_records_generator_backbone_vocabulary_mapping_version(runs):
    record = identity.saved_identity(_meta(runs["add"]))
    assert record["generator"] == {
        "class": "ComposedPrompt",
        "num_tasks": 2,
        "length": 4,
        "embed_dim": 32,
        "composition": {"class": "Add"},
        "task_length": None,
        "task_rank": 1,
        "task_init": None,
        "task_cols_init": None,
        "task_rows_init": None,
        "param_dtype": "float32",
        "dtype": None,
    }  # fmt: skip  (shared_init, a callable, is left out)
    assert record["backbone"]["reference"] == "random:0"
    assert record["backbone"]["config"] == "tiny"
    assert len(record["backbone"]["sha256"]) == 64
    byte = {"kind": "ByteVocabulary", "size": 259}
    assert record["vocabulary"] == {"inputs": byte, "targets": byte}
    assert record["task_names"] == list(TASKS)
    assert record["version"] == mpt_jax_version()
    mpt = identity.saved_identity(_meta(runs["mpt"]))
    assert mpt["generator"]["class"] == "MultitaskPrompt"
    assert mpt["backbone"]["sha256"] == record["backbone"]["sha256"]  # same random:0 backbone


def mpt_jax_version():
    from mpt_jax.version import __version__

    return __version__


def test_backbone_hash_is_of_the_bytes_and_computed_once():
    tree = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": {"c": np.ones(2, np.int32)}}
    same = {"b": {"c": np.ones(2, np.int32)}, "a": np.arange(6, dtype=np.float32).reshape(2, 3)}
    assert identity.tree_sha256(tree) == identity.tree_sha256(same)
    other = {"a": tree["a"].copy(), "b": {"c": np.ones(2, np.int32)}}
    other["a"][1, 2] += 1e-6
    assert identity.tree_sha256(other) != identity.tree_sha256(tree)
    reshaped = {"a": tree["a"].reshape(3, 2), "b": tree["b"]}
    assert identity.tree_sha256(reshaped) != identity.tree_sha256(tree)
    tree["a"][0, 0] = 99.0  # the backbone is frozen: a tree object is hashed once
    assert identity.tree_sha256(tree) == identity.tree_sha256(same)


def test_sentencepiece_vocabulary_records_the_model_files_hash(tmp_path):
    import hashlib

    path = tmp_path / "spiece.model"
    path.write_bytes(b"not really a model, but bytes to hash")

    class Vocabulary:  # seqio.SentencePieceVocabulary's two attributes read here
        sentencepiece_model_file = str(path)
        vocab_size = 32100

    record = identity.vocabulary_record(Vocabulary())
    assert record == {"kind": "Vocabulary", "size": 32100,
                      "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}  # fmt: skip


def test_which_generators_mean_mpt():
    def rec(g):
        return identity.generator_record(g)

    assert identity.represents_mpt(rec(MultitaskPrompt(num_tasks=2, length=4, embed_dim=8)))
    hadamard = ComposedPrompt(num_tasks=2, length=4, embed_dim=8, composition="hadamard",
                              task_rank=1)  # fmt: skip
    assert identity.represents_mpt(rec(hadamard))
    for composition in ("add", "concat", "weighted", "gated"):
        g = ComposedPrompt(num_tasks=2, length=4, embed_dim=8, composition=composition,
                           task_rank=1)  # fmt: skip
        assert not identity.represents_mpt(rec(g)), composition
    full = ComposedPrompt(num_tasks=2, length=4, embed_dim=8, composition="hadamard")
    assert not identity.represents_mpt(rec(full))  # task_prompts, not U V
    # A composition given as an object is recorded by its class name and fields.
    assert identity.represents_mpt({"class": "ComposedPrompt", "composition": {"class": "Hadamard"},
                                    "task_rank": 1, "length": 4, "task_length": None})  # fmt: skip


# -- export --------------------------------------------------------------------------------------


def test_export_of_an_add_composition_as_peft_mpt_is_refused(runs, tmp_path):
    out = tmp_path / "peft"
    refused = (
        r"ComposedPrompt\(.*composition=Add\(\).*is not MPT's shared ∘ "
        r"\(task_cols\[k\] @ task_rows\[k\]\); PEFT's multitask"
    )
    bindings = {"export_prompts.output_dir": repr(str(out)), "export_prompts.format": "'peft'"}
    with pytest.raises(IdentityError, match=refused):
        _run("export-prompts", "runner/composed.gin", MODEL_DIR=repr(runs["add"]), **bindings)
    assert not out.exists()
    # .npy files represent any prompt; MPT's own run exports as PEFT.
    assert _run("export-prompts", "runner/composed.gin", MODEL_DIR=repr(runs["add"]),
                **{"export_prompts.output_dir": repr(str(tmp_path / "npy"))}) == 0  # fmt: skip
    assert _run("export-prompts", "runner/source.gin", MODEL_DIR=repr(runs["mpt"]),
                **{"export_prompts.output_dir": repr(str(tmp_path / "mpt")),
                   "export_prompts.format": "'peft'"}) == 0  # fmt: skip


def test_checkpoint_without_a_record_is_exported_with_a_warning(tmp_path, caplog):
    """Checkpoints written before records: warn (naming what could not be checked), go on."""
    prompt = MultitaskPrompt(num_tasks=1, length=2, embed_dim=4)
    params = prompt.init(jax_key(), jnp.zeros((1,), jnp.int32))["params"]
    params = {k: np.asarray(v.unbox() if hasattr(v, "unbox") else v) for k, v in params.items()}
    ckpt = Checkpointer(tmp_path / "old" / CHECKPOINT_SUBDIR)
    ckpt.save(TrainState.create(params, make_optimizer()), data_position=0, task_names=["t"],
              backbone="random:0")  # fmt: skip
    ckpt.close()
    from mpt_jax.runner import jobs

    with caplog.at_level(logging.WARNING, logger="mpt_jax.training.identity"):
        jobs.export_prompts(model_dir=str(tmp_path / "old"), output_dir=str(tmp_path / "o"),
                            format="peft")  # fmt: skip
    assert "written before checkpoints recorded what made them" in caplog.text
    assert os.path.exists(tmp_path / "o" / "adapter_model.safetensors")


def jax_key():
    import jax

    return jax.random.key(0)


# -- a source read by another run ---------------------------------------------------------------


def test_add_composition_as_target_source_is_refused(runs, tmp_path):
    target = str(tmp_path / "target")
    with pytest.raises(IdentityError, match=r"add.* holds a prompt of ComposedPrompt\(.*"
                       r"composition=Add\(\).*initialising from it as an MPT source"):  # fmt: skip
        _run("train", "runner/target.gin", "runner/tiny.gin", MODEL_DIR=repr(target),
             SOURCE_DIR=repr(runs["add"]), MIXTURE=repr(TASKS[1]))  # fmt: skip
    assert not os.path.isdir(os.path.join(target, CHECKPOINT_SUBDIR))


def test_add_composition_as_spot_source_is_refused(runs, tmp_path):
    with pytest.raises(IdentityError, match=r"composition=Add\(\)"):
        _run("train", "runner/spot.gin", "runner/tiny.gin", MODEL_DIR=repr(str(tmp_path / "s")),
             SOURCE_DIR=repr(runs["add"]), MIXTURE=repr(TASKS[1]),
             **{"stages.spot.source_task": repr(TASKS[1])})  # fmt: skip


def test_target_source_from_another_backbone_is_refused(runs, tmp_path):
    refused = r"backbone: saved 'random:0'.*this run an unnamed backbone"
    with pytest.raises(IdentityError, match=refused):
        _run("train", "runner/target.gin", "runner/tiny.gin", MODEL_DIR=repr(str(tmp_path / "t")),
             SOURCE_DIR=repr(runs["mpt"]), MIXTURE=repr(TASKS[1]),
             BACKBONE_CHECKPOINT="'random:1'")  # fmt: skip


# -- resume and evaluation -----------------------------------------------------------------------


@pytest.mark.parametrize("composition", ["add", "concat"])
def test_resuming_an_mpt_source_with_another_composition_is_refused(runs, composition):
    before = _unchanged(runs["mpt"])
    refused = (
        r"(?s)resuming .*mpt \(step 2\): the checkpoint was made by another generator.*"
        r"generator.class: saved 'MultitaskPrompt', this run 'ComposedPrompt'.*"
        r"generator.composition.class: saved '<absent>', this run '"
        + composition.capitalize()
        + r"'.*"
        r"check_identity.allow = \['generator'\]"
    )
    with pytest.raises(IdentityError, match=refused):
        _run("train", "runner/composed.gin", "runner/tiny.gin", MODEL_DIR=repr(runs["mpt"]),
             **{**NO_DISTILL, "train_loop.num_steps": 4,
                "prompts.ComposedPrompt.composition": repr(composition)})  # fmt: skip
    assert _unchanged(runs["mpt"]) == before


def test_resuming_on_another_backbone_is_refused(runs):
    before = _unchanged(runs["mpt"])
    with pytest.raises(IdentityError, match=r"backbone: saved 'random:0' \(config 'tiny', sha256 "
                       r"\w+…\), this run 'random:1'"):  # fmt: skip
        _run(
            "train",
            "runner/source.gin",
            "runner/tiny.gin",
            MODEL_DIR=repr(runs["mpt"]),
            BACKBONE_CHECKPOINT="'random:1'",
            **{**NO_DISTILL, "train_loop.num_steps": 4},
        )
    assert _unchanged(runs["mpt"]) == before


def test_resuming_with_another_prompt_length_names_the_field(runs):
    before = _unchanged(runs["mpt"])
    with pytest.raises(IdentityError, match=r"generator.length: saved 4, this run 6"):
        _run(
            "train",
            "runner/source.gin",
            "runner/tiny.gin",
            MODEL_DIR=repr(runs["mpt"]),
            PROMPT_LENGTH=6,
            **{**NO_DISTILL, "train_loop.num_steps": 4},
        )
    assert _unchanged(runs["mpt"]) == before


def test_evaluating_with_another_generator_is_refused(runs):
    with pytest.raises(IdentityError, match=r"(?s)evaluating .*mpt \(step 2\).*generator.class: "
                       r"saved 'MultitaskPrompt', this run 'ComposedPrompt'"):  # fmt: skip
        _run(
            "eval",
            "runner/composed.gin",
            "runner/tiny.gin",
            MODEL_DIR=repr(runs["mpt"]),
            **NO_DISTILL,
        )
    with pytest.raises(IdentityError, match=r"(?s)inferring with .*add \(step 2\).*composition"
                       r"\.class: saved 'Add', this run 'Hadamard'"):  # fmt: skip
        _run(
            "infer",
            "runner/composed.gin",
            "runner/tiny.gin",
            MODEL_DIR=repr(runs["add"]),
            **{**NO_DISTILL, "prompts.ComposedPrompt.composition": "'hadamard'"},
        )


def test_an_allowed_change_is_logged_not_refused(caplog):
    saved = {"generator": {"class": "A", "length": 4}, "backbone": {"sha256": "x"},
             "vocabulary": None, "task_names": ["t"], "version": "0"}  # fmt: skip
    current = {**saved, "backbone": {"sha256": "y", "reference": "b", "config": "c"}}
    with pytest.raises(IdentityError, match=r"check_identity.allow = \['backbone'\]"):
        identity.check_identity(saved, current, context="resuming r")
    with caplog.at_level(logging.WARNING, logger="mpt_jax.training.identity"):
        identity.check_identity(saved, current, context="resuming r", allow=["backbone"])
    assert "allowed change (check_identity.allow) of backbone: saved" in caplog.text
    with pytest.raises(ValueError, match=r"unknown parts \['backbones'\]"):
        identity.check_identity(saved, current, context="r", allow=["backbones"])
