"""Registered names, TFDS sources, wiring, and one end-to-end read from jsonl files."""

import importlib
import json

import gin
import numpy as np
import pytest
import seqio
import tensorflow as tf

import mpt_jax.tasks
from mpt_jax.data.feature_converter import PromptEncDecFeatureConverter
from mpt_jax.data.task_ids import TaskIndex, task_index, task_key
from mpt_jax.tasks import data_sources, metrics, source
from mpt_jax.tasks.vocab import TASK_VOCABULARY

TARGETS = [
    *(f"mpt_glue_{t}" for t in ("mnli", "qqp", "qnli", "sst2", "stsb", "mrpc", "rte", "cola")),
    *(f"mpt_superglue_{t}" for t in ("multirc", "boolq", "wic", "wsc", "cb")),
    *(f"mpt_mrqa_{t}" for t in ("nq", "hotpotqa", "searchqa", "newsqa")),
    *(f"mpt_{t}" for t in ("winogrande", "yelp_polarity", "scitail", "paws")),
]
SOURCES = [
    "mpt_glue_mnli",
    "mpt_glue_qnli",
    "mpt_glue_qqp",
    "mpt_glue_sst2",
    "mpt_squad",
    "mpt_superglue_record",
]


def test_every_benchmark_task_and_variant_is_registered_once():
    importlib.reload(mpt_jax.tasks)  # registering again is a no-op, not an error
    names = set(seqio.TaskRegistry.names())
    for name in TARGETS + SOURCES:
        assert name in names
        for k in (4, 16, 32):
            assert f"{name}_{k}shot" in names
    assert TaskIndex.from_mixture("mpt_source_mixture").names == tuple(SOURCES)
    # seqio orders a mixture's tasks by name; that order is the task-id order.
    assert TaskIndex.from_mixture("mpt_glue_mixture").names[:3] == (
        "mpt_glue_cola",
        "mpt_glue_mnli",
        "mpt_glue_mrpc",
    )
    assert TaskIndex.from_mixture("mpt_glue_mixture").num_tasks == 8
    assert TaskIndex.from_mixture("mpt_superglue_mixture").num_tasks == 5


@pytest.mark.parametrize(
    "task, tfds_name, tfds_validation, heldout",
    [
        (
            "mpt_glue_rte",
            "glue/rte:2.0.0",
            "validation",
            ("train", "validation[:50%]", "validation[50%:]"),
        ),
        (
            "mpt_glue_mnli",
            "glue/mnli:2.0.0",
            "validation_matched",
            ("train[1000:]", "train[:1000]", "validation_matched"),
        ),
        (
            "mpt_superglue_boolq",
            "super_glue/boolq:1.0.2",
            "validation",
            ("train", "validation[:50%]", "validation[50%:]"),
        ),
        (
            "mpt_superglue_wsc",
            "super_glue/wsc.fixed:1.0.2",
            "validation",
            ("train", "validation[:50%]", "validation[50%:]"),
        ),
        (
            "mpt_squad",
            "squad/v1.1:3.0.0",
            "validation",
            ("train[1000:]", "train[:1000]", "validation"),
        ),
        (
            "mpt_winogrande",
            "winogrande:1.2.0",
            "validation",
            ("train_xl[1000:]", "train_xl[:1000]", "validation"),
        ),
        (
            "mpt_yelp_polarity",
            "yelp_polarity_reviews:0.2.0",
            "test",
            ("train[1000:]", "train[:1000]", "test"),
        ),
        ("mpt_paws", "paws_wiki/labeled_final_raw:1.1.0", "validation", None),
        ("mpt_mrqa_nq", None, None, None),
    ],
)
def test_tfds_sources_and_split_protocols(task, tfds_name, tfds_validation, heldout):
    import tensorflow_datasets as tfds

    src = seqio.get_mixture_or_task(task).source
    assert src.tfds_name == tfds_name
    if tfds_name is None:
        return
    assert src.tfds_split_map()["validation"] == tfds_validation
    if heldout is not None:
        gin.bind_parameter("split_protocol.name", "heldout")
        try:
            mapping = src.tfds_split_map()
        finally:
            gin.clear_config()
        assert (mapping["train"], mapping["validation"], mapping["test"]) == heldout
        for spec in heldout:  # valid TFDS split-slicing syntax
            tfds.core.ReadInstruction.from_spec(spec)


def test_metrics_are_wired_as_the_paper_reports():
    def fns(name):
        return [getattr(f, "func", f) for f in seqio.get_mixture_or_task(name).predict_metric_fns]

    assert metrics.matthews_corrcoef in fns("mpt_glue_cola")
    assert fns("mpt_glue_stsb") == [metrics.pearson_spearman]
    assert metrics.binary_f1 in fns("mpt_glue_mrpc") and metrics.accuracy in fns("mpt_glue_mrpc")
    assert metrics.macro_f1 in fns("mpt_superglue_cb")
    assert fns("mpt_superglue_multirc") == [metrics.multirc_f1a_em]
    assert fns("mpt_superglue_record") == [metrics.squad] == fns("mpt_mrqa_hotpotqa")


def test_missing_data_is_an_error_never_a_download(tmp_path):
    with pytest.raises(ValueError, match=r"bind task_data_files.files = \{'mpt_mrqa_newsqa'"):
        seqio.get_mixture_or_task("mpt_mrqa_newsqa").source.get_dataset("validation")
    gin.bind_parameter("tfds_data_dir.data_dir", str(tmp_path))
    try:
        source = seqio.get_mixture_or_task("mpt_superglue_cb_16shot").source
        with pytest.raises(FileNotFoundError, match="'super_glue/cb:1.0.2'.*not prepared"):
            source.get_dataset("train")
    finally:
        gin.clear_config()
    assert list(tmp_path.iterdir()) == []  # nothing was downloaded or prepared


def test_jsonl_reader_gzip_and_missing_fields(tmp_path):
    import gzip

    signature = seqio.get_mixture_or_task("mpt_glue_rte").source._output_signature
    good = {"sentence1": "a", "sentence2": "b", "label": 1, "idx": 0, "extra": "ignored"}
    path = tmp_path / "rte.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.write(json.dumps(good) + "\n\n" + json.dumps({"sentence1": "a", "label": 0}) + "\n")
    records = data_sources.records_from_jsonl([str(path)], data_sources.identity_parser, signature)
    assert next(records) == {"sentence1": "a", "sentence2": "b", "label": 1, "idx": 0}
    with pytest.raises(ValueError, match=r"rte.jsonl.gz:3: the record has no field 'sentence2'"):
        next(records)


RTE_LINES = [
    {"sentence1": "A man sleeps.", "sentence2": "A person rests.", "label": 0, "idx": 0},
    {"sentence1": "Rain falls.", "sentence2": "It is dry.", "label": 1, "idx": 1},
]
MRQA_LINES = [
    {"header": {"dataset": "NaturalQuestions", "split": "dev"}},
    {
        "context": "Ada wrote the first program.",
        "qas": [
            {"qid": "q1", "question": "Who wrote it?", "answers": ["Ada", "Ada Lovelace"]},
            {"qid": "q2", "question": "What was written?", "answers": ["the first program"]},
        ],
    },
]


@pytest.fixture
def file_bound(tmp_path):
    root = tmp_path
    (root / "rte.jsonl").write_text("\n".join(json.dumps(r) for r in RTE_LINES))
    (root / "nq.jsonl").write_text("\n".join(json.dumps(r) for r in MRQA_LINES))
    files = {
        "mpt_glue_rte": {"train": str(root / "rte.jsonl"), "validation": str(root / "rte.jsonl")},
        "mpt_mrqa_nq": {"train": str(root / "nq.jsonl"), "validation": str(root / "nq.jsonl")},
    }
    gin.clear_config()
    gin.bind_parameter("task_data_files.files", files)
    gin.bind_parameter("output_vocabulary.kind", "byte")
    TASK_VOCABULARY.reset()
    yield
    gin.clear_config()
    TASK_VOCABULARY.reset()


def test_end_to_end_from_jsonl_files(file_bound):
    lengths = {"inputs": 96, "targets": 24}
    index = TaskIndex(("mpt_glue_rte", "mpt_mrqa_nq"))
    rte = seqio.get_mixture_or_task("mpt_glue_rte")
    nq = seqio.get_mixture_or_task("mpt_mrqa_nq")
    rte_examples = list(
        rte.get_dataset(lengths, split="validation", shuffle=False).as_numpy_iterator()
    )
    nq_examples = list(
        nq.get_dataset(lengths, split="validation", shuffle=False).as_numpy_iterator()
    )
    converted = list(
        PromptEncDecFeatureConverter(task_index=index)(
            nq.get_dataset(lengths, split="validation", shuffle=False), lengths
        ).as_numpy_iterator()
    )
    vocab = seqio.ByteVocabulary()
    assert vocab.decode(rte_examples[0]["inputs"].tolist()) == (
        "rte sentence1: A man sleeps. sentence2: A person rests."
    )
    assert rte_examples[0]["inputs"][-1] == 1  # EOS
    assert [vocab.decode(ex["targets"].tolist()) for ex in rte_examples] == [
        "entailment",
        "not_entailment",
    ]
    assert [ex["task_ids"].tolist() for ex in rte_examples] == [[task_key("mpt_glue_rte")]] * 2
    assert len(nq_examples) == 2  # one record per question; the header line is skipped
    assert nq_examples[0]["inputs_pretokenized"] == (
        b"question: Who wrote it? context: Ada wrote the first program."
    )
    assert [ex["task_ids"].tolist() for ex in nq_examples] == [[task_key("mpt_mrqa_nq")]] * 2
    assert converted[1]["task_ids"] == 1
    assert converted[1]["encoder_input_tokens"].shape == (96,)
    np.testing.assert_array_equal(
        converted[1]["decoder_target_tokens"][:18], vocab.encode("the first program") + [1]
    )

    # Evaluation: the task's postprocessor and metrics on these examples.
    targets = [nq.postprocess_fn(b"", example=ex, is_target=True) for ex in nq_examples]
    generated = [b"Ada", b"a program"]
    predictions = [
        nq.postprocess_fn(p, example=ex) for p, ex in zip(generated, nq_examples, strict=True)
    ]
    got = metrics.squad(targets, predictions)
    assert got["em"] == pytest.approx(50.0)
    # "a program" -> [program] vs [first, program]: P = 1, R = 1/2, F1 = 2/3.
    assert got["f1"] == pytest.approx(100 * (1 + 2 / 3) / 2)

    # Mixing rates count the bound files' records.
    assert source.examples_proportional_rate(rte) == 2.0
    assert source.examples_proportional_rate(nq, maximum=1) == 1.0


def test_mixture_keeps_task_ids(file_bound):
    name = "test_mpt_rte_nq_mixture"
    seqio.MixtureRegistry.add(name, [("mpt_glue_rte", 1.0), ("mpt_mrqa_nq", 1.0)])
    try:
        ds = seqio.get_mixture_or_task(name).get_dataset(
            {"inputs": 96, "targets": 24}, split="validation", shuffle=False, num_epochs=1
        )
        ids = [ex["task_ids"].tolist() for ex in ds.as_numpy_iterator()]
    finally:
        seqio.MixtureRegistry.remove(name)
    keys = {(task_key("mpt_glue_rte"),), (task_key("mpt_mrqa_nq"),)}
    assert ids and set(map(tuple, ids)) <= keys


def test_vocabulary_follows_gin():
    gin.clear_config()
    TASK_VOCABULARY.reset()
    gin.bind_parameter("t5_vocabulary.sentencepiece_model_path", "/models/spiece.model")
    try:
        resolved = TASK_VOCABULARY.resolved
        assert isinstance(resolved, seqio.SentencePieceVocabulary)
        assert resolved.sentencepiece_model_file == "/models/spiece.model"
        assert resolved.extra_ids == 100
        # T5X compares task and model vocabularies with the task's on the left.
        model_vocabulary = seqio.SentencePieceVocabulary("/models/spiece.model", extra_ids=100)
        assert not TASK_VOCABULARY != model_vocabulary
        TASK_VOCABULARY.reset()
        gin.bind_parameter("output_vocabulary.vocabulary", seqio.ByteVocabulary())
        assert TASK_VOCABULARY == seqio.ByteVocabulary()
        TASK_VOCABULARY.reset()
        gin.bind_parameter("output_vocabulary.vocabulary", None)
        gin.bind_parameter("output_vocabulary.kind", "bpe")
        with pytest.raises(ValueError, match=r"one of \('t5', 'byte'\); got 'bpe'"):
            _ = TASK_VOCABULARY.resolved
    finally:
        gin.clear_config()
        TASK_VOCABULARY.reset()


def test_too_long_example_is_an_error_in_the_task(file_bound):
    import tensorflow as tf

    ds = seqio.get_mixture_or_task("mpt_glue_rte").get_dataset(
        {"inputs": 16, "targets": 24}, split="validation", shuffle=False
    )
    with pytest.raises(tf.errors.InvalidArgumentError, match="inputs of mpt_glue_rte"):
        list(ds.as_numpy_iterator())


def test_seqio_evaluator_scores_a_task(file_bound):
    """T5X's evaluation path: seqio.Evaluator + our converter + the task's metrics."""
    gin.bind_parameter("task_index.task_names", ["mpt_glue_rte"])
    evaluator = seqio.Evaluator(
        mixture_or_task_name="mpt_glue_rte",
        feature_converter=PromptEncDecFeatureConverter(task_index=task_index()),
        eval_split="validation",
        sequence_length=None,  # measured, task_ids included (length 1)
    )
    vocab = seqio.ByteVocabulary()
    seen_ids = []

    def predict_fn(ds):
        outputs = []
        for index, batch in ds.as_numpy_iterator():
            seen_ids.append(int(batch["task_ids"]))
            outputs.append((index, vocab.encode("entailment")))
        return outputs

    def score_fn(ds):
        return [(index, 0.0) for index, _ in ds.as_numpy_iterator()]

    results, _ = evaluator.evaluate(compute_metrics=True, predict_fn=predict_fn, score_fn=score_fn)
    assert results.result() == {"mpt_glue_rte": {"accuracy": 50.0}}
    assert seen_ids == [0, 0]


def _record_like(signature):
    """One hand-made record matching a source's output signature (label 0)."""
    if isinstance(signature, dict):
        return {k: _record_like(v) for k, v in signature.items()}
    if signature.dtype == tf.string:
        return ["some text"] if signature.shape.rank == 1 else "some text"
    return np.zeros((), signature.dtype.as_numpy_dtype)


def test_every_formatter_accepts_its_source_records_and_targets_round_trip():
    checked = []
    for name in sorted(set(TARGETS + SOURCES)):
        task = seqio.get_mixture_or_task(name)
        record = _record_like(task.source._output_signature)
        ds = tf.data.Dataset.from_tensors(record)
        (example,) = task.preprocessors[0](ds).as_numpy_iterator()
        assert b"some text" in example["inputs"], name
        target = task.postprocess_fn(example["targets"], example=example, is_target=True)
        if "answers" in example:  # QA: every gold answer
            assert target == ["some text"], name
        elif name == "mpt_glue_stsb":
            assert target == 0.0
        elif name == "mpt_superglue_multirc":
            assert target == {"group": "p0-q0", "value": 0}
        else:  # classification: label 0 comes back as class 0
            assert target == 0, name
        checked.append(name)
    assert len(checked) == 23  # 21 targets + SQuAD + ReCoRD (the other sources are GLUE)


def _tfds_mismatches(signature, features, path=""):
    """Fields of our record signature that the TFDS features lack or type differently."""
    wrong = []
    for key, spec in signature.items():
        if key not in features:
            wrong.append(f"{path}{key}: missing")
        elif isinstance(spec, dict):
            wrong += _tfds_mismatches(spec, features[key], f"{path}{key}.")
        elif tf.as_dtype(features[key].tf_dtype) != spec.dtype:
            wrong.append(f"{path}{key}: {features[key].tf_dtype} vs {spec.dtype}")
    return wrong


def test_record_schemas_match_the_tfds_features(tmp_path):
    """jsonl records and TFDS records feed the same formatter, so their fields must agree."""
    import tensorflow_datasets as tfds

    for name in sorted(set(TARGETS + SOURCES)):
        src = seqio.get_mixture_or_task(name).source
        if src.tfds_name is None:
            continue
        features = tfds.builder(src.tfds_name, data_dir=str(tmp_path)).info.features
        signature = dict(src._output_signature)
        if name == "mpt_squad":  # TFDS nests answers under "text"; the formatter takes both
            assert features["answers"]["text"].tf_dtype == tf.string
            del signature["answers"]
        assert _tfds_mismatches(signature, features) == [], name
    assert list(tmp_path.iterdir()) == []  # reading builder metadata prepared nothing
