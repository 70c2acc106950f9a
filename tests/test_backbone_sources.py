"""Where a backbone's configuration and vocabulary come from: the checkpoint's own files
(a Hugging Face folder's config.json and spiece.model, the embedded asset's JSON) win
over the ``BACKBONE`` name; a task vocabulary that disagrees with the model is refused."""

import json
import os
import shutil

import gin
import pytest
import seqio

from mpt_jax import assets
from mpt_jax.backbone import T5Config
from mpt_jax.runner import backbone_loading
from mpt_jax.tasks.vocab import TASK_VOCABULARY

SPM = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data",
                   "prompt_tuning_test_data", "t5_vocab")  # fmt: skip


@pytest.fixture(autouse=True)
def _fresh():
    gin.clear_config()
    TASK_VOCABULARY.reset()
    yield
    gin.clear_config()
    TASK_VOCABULARY.reset()


def test_embedded_backbone_takes_its_config_from_the_asset_json():
    meta = json.loads(assets.EMBEDDED_BACKBONE.with_suffix(".json").read_text())
    config, params, ref = backbone_loading.load_backbone(None, "embedded", "t5_1_1_base")
    assert config == T5Config(**meta["config"])  # not t5_1_1_base
    assert ref == "embedded"
    assert params["token_embedder"]["embedding"].shape == (config.vocab_size, config.emb_dim)
    assert isinstance(TASK_VOCABULARY.resolved, seqio.ByteVocabulary)  # adopted: nothing bound


def test_embedded_gin_and_smoke_gin_parse_and_point_at_the_asset():
    from mpt_jax import cli

    cli.configure(["runner/teacher.gin", "runner/smoke.gin"], ["MODEL_DIR = '/tmp/x'"],
                  cli.search_paths([]))  # fmt: skip
    assert gin.query_parameter("load_backbone.checkpoint") is not None
    assert cli._query("load_backbone.checkpoint") == "embedded"
    assert cli._query("train.mixture_or_task_name") == "mpt_embedded_source"
    assert cli._query("output_vocabulary.kind") == "byte"


def _hf_folder(path, vocab_size):
    transformers = pytest.importorskip("transformers")
    hf_config = transformers.T5Config(
        vocab_size=vocab_size, d_model=8, d_kv=4, d_ff=16, num_layers=1, num_decoder_layers=1,
        num_heads=2, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
    )  # fmt: skip
    transformers.T5ForConditionalGeneration(hf_config).save_pretrained(
        str(path), safe_serialization=True
    )
    return str(path)


def test_hf_folder_config_wins_over_the_backbone_binding(tmp_path):
    folder = _hf_folder(tmp_path, vocab_size=64)
    gin.parse_config("load_backbone.config_name = 't5_1_1_base'")  # base.gin's BACKBONE
    config, params, _ = backbone_loading.load_backbone(checkpoint=f"hf:{folder}")
    assert (config.vocab_size, config.emb_dim) == (64, 8)
    assert backbone_loading.backbone_vocabulary(f"hf:{folder}") is None  # no spiece.model


def test_hf_folder_tokenizer_is_used_and_a_byte_task_is_refused(tmp_path):
    if not os.path.isfile(SPM):
        pytest.skip(f"T5's sentencepiece model is not at {SPM} (../shared/data from the repo)")
    folder = _hf_folder(tmp_path, vocab_size=32128)
    shutil.copy(SPM, os.path.join(folder, "spiece.model"))
    checkpoint = f"hf:{folder}"
    shipped = backbone_loading.backbone_vocabulary(checkpoint)
    assert isinstance(shipped, seqio.SentencePieceVocabulary) and shipped.vocab_size == 32100
    config = backbone_loading.backbone_config(None, checkpoint, "tiny")
    task = seqio.get_mixture_or_task("mpt_embedded_source_0")  # a byte-vocabulary task
    with pytest.raises(ValueError) as err:
        backbone_loading.check_task_vocabularies([task], checkpoint, config)
    message = str(err.value)
    assert "task 'mpt_embedded_source_0'" in message and "ByteVocabulary (259 ids)" in message
    assert "vocab_size 32128" in message and folder in message
    # the project's tasks adopt the folder's tokenizer when gin binds none
    assert TASK_VOCABULARY.resolved.vocab_size == 32100
    assert TASK_VOCABULARY.encode("hello") == shipped.encode("hello")


@pytest.mark.parametrize("bound", [True, False])
def test_project_tasks_fit_the_embedded_backbone(bound):
    """The project's lazy task vocabulary is compared by what it resolves to: bytes, bound
    in gin (runner/embedded.gin) or adopted from the checkpoint."""
    import mpt_jax.tasks  # noqa: F401

    if bound:
        gin.parse_config("import mpt_jax.tasks.vocab\noutput_vocabulary.kind = 'byte'")
    config = backbone_loading.backbone_config(None, "embedded")
    task = seqio.get_mixture_or_task("mpt_glue_rte")  # holds TASK_VOCABULARY
    backbone_loading.check_task_vocabularies([task], "embedded", config)  # no error
    assert isinstance(TASK_VOCABULARY.resolved, seqio.ByteVocabulary)
