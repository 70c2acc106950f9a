"""The frozen backbone of a run: its configuration and its parameters.

``load_backbone(config, checkpoint)`` returns the backbone's parameter tree (T5X's
names, no ``prompt`` subtree) and a short reference string that checkpoints record (the
backbone is never copied into a prompt checkpoint). Sources, chosen by ``checkpoint``:

- ``None`` or ``"random"`` / ``"random:<seed>"``: random initialisation (tests, smoke runs);
- a ``.msgpack`` file: ``flax.serialization`` bytes of the tree (or of ``{"params": tree}``);
- a ``.safetensors`` file: our tree flattened with ``/``-joined keys
  (``encoder/layers_0/attention/query/kernel``), or a Hugging Face T5 ``model.safetensors``
  (recognised by its ``shared.weight`` / ``encoder.block.0...`` keys) converted with
  :func:`mpt_jax.backbone.hf_import.convert_hf_state_dict`;
- ``"hf:<dir>"`` or a directory with ``config.json``: a Hugging Face T5 checkpoint
  (:func:`mpt_jax.backbone.hf_import.load_hf_checkpoint`); its configuration comes from
  the folder's ``config.json`` and the tasks' vocabulary from its ``spiece.model``;
- ``"embedded"``, or a ``.msgpack`` with a ``.json`` beside it holding ``"config"``: the
  shipped pretrained backbone (``mpt_jax/assets/embedded_t5``) or one saved like it; its
  configuration comes from the JSON, its vocabulary is bytes;
- a T5X ``checkpoint_<step>`` directory, legacy (msgpack + tensorstore) or Orbax: its
  ``target`` parameters (:func:`mpt_jax.backbone.load_t5x_checkpoint`, no T5X needed);
- any other directory: an orbax checkpoint of the tree (``StandardCheckpointer``).

Each source is a :class:`BackboneFormat` in :data:`FORMATS`, tried in order; a new
checkpoint format is one more entry (its ``matches``, ``read`` and, when the checkpoint
carries them, ``config`` and ``vocabulary``).

The configuration: an explicit ``config`` argument, else the checkpoint's own (a Hugging
Face ``config.json``, the embedded backbone's JSON), else ``get_config(config_name)``
(``BACKBONE`` in ``base.gin``). A ``BACKBONE`` binding never overrides a checkpoint's own
configuration.

Every loaded tree is checked against the shapes the configuration implies; a missing,
extra or mis-shaped parameter is an error naming its path. :func:`check_vocabulary`
refuses a task vocabulary whose size or pieces disagree with the model's.

gin::

    load_backbone.config_name = "t5_1_1_base"      # base.gin: %BACKBONE
    load_backbone.checkpoint = "/models/t5_1_1_base.msgpack"
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import flax.serialization
import gin
import jax
import jax.numpy as jnp
import numpy as np

from mpt_jax import assets
from mpt_jax.backbone import T5, T5Config, get_config, t5x_checkpoint

PyTree = Any


def _abstract_backbone(config: T5Config) -> PyTree:
    model = T5(config)
    tokens = jnp.ones((1, 2), jnp.int32)
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.key(0), tokens, tokens, tokens, enable_dropout=False)
    )
    return nn.unbox(shapes["params"])


def random_backbone(config: T5Config, seed: int = 0) -> PyTree:
    """A randomly initialised backbone tree (float32 numpy leaves)."""
    model = T5(config)
    tokens = jnp.ones((1, 2), jnp.int32)
    params = model.init(jax.random.key(seed), tokens, tokens, tokens, enable_dropout=False)
    return jax.tree.map(np.asarray, nn.unbox(params["params"]))


def _paths(tree: PyTree) -> dict[str, tuple[int, ...]]:
    return {
        "/".join(str(getattr(k, "key", k)) for k in path): tuple(np.shape(v))
        for path, v in jax.tree_util.tree_leaves_with_path(tree)
    }


def check_backbone(params: PyTree, config: T5Config, source: str) -> None:
    """Raises ``ValueError`` naming every missing, unexpected or mis-shaped parameter."""
    want, got = _paths(_abstract_backbone(config)), _paths(params)
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    wrong = sorted(f"{p}: {got[p]} (expected {want[p]})" for p in set(want) & set(got)
                   if want[p] != got[p])  # fmt: skip
    if missing or extra or wrong:
        parts = []
        if missing:
            parts.append(f"missing {missing[:5]}{' …' if len(missing) > 5 else ''}")
        if extra:
            parts.append(f"unexpected {extra[:5]}{' …' if len(extra) > 5 else ''}")
        if wrong:
            parts.append(f"mis-shaped {wrong[:5]}{' …' if len(wrong) > 5 else ''}")
        raise ValueError(
            f"backbone checkpoint {source!r} does not fit config {config.name!r}: "
            + "; ".join(parts)
        )


def _unflatten(flat: dict[str, np.ndarray]) -> PyTree:
    tree: dict[str, Any] = {}
    for key, value in flat.items():
        node = tree
        parts = key.split("/")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = np.asarray(value)
    return tree


def _is_hf_state(keys) -> bool:
    return any(k.startswith(("shared.weight", "encoder.block.", "decoder.block.")) for k in keys)


def _hf_dir(checkpoint: str | None) -> str | None:
    """The Hugging Face directory ``checkpoint`` names (``hf:<dir>`` or a folder with a
    ``config.json``), else None."""
    if checkpoint is None:
        return None
    if checkpoint.startswith("hf:"):
        return checkpoint.removeprefix("hf:")
    return checkpoint if os.path.isfile(os.path.join(checkpoint, "config.json")) else None


def _hf_read(checkpoint: str, config: T5Config) -> PyTree:
    from mpt_jax.backbone import hf_import

    return hf_import.load_hf_checkpoint(_hf_dir(checkpoint), config)


def _hf_config(checkpoint: str) -> T5Config:
    from mpt_jax.backbone import hf_import

    directory = _hf_dir(checkpoint)
    if not os.path.isfile(os.path.join(directory, "config.json")):
        raise FileNotFoundError(
            f"backbone checkpoint {checkpoint!r}: no config.json in {directory!r}"
        )
    return hf_import.config_from_hf(directory)


def _hf_vocabulary(checkpoint: str):
    path = os.path.join(_hf_dir(checkpoint), "spiece.model")
    if not os.path.isfile(path):
        return None
    import seqio

    return seqio.SentencePieceVocabulary(path, extra_ids=100)


def _embedded_path(checkpoint: str) -> str:
    return str(assets.EMBEDDED_BACKBONE) + ".msgpack" if checkpoint == "embedded" else checkpoint


def _is_embedded(checkpoint: str) -> bool:
    if checkpoint == "embedded":
        return True
    meta = checkpoint.removesuffix(".msgpack") + ".json"
    if not checkpoint.endswith(".msgpack") or not os.path.isfile(meta):
        return False
    with open(meta) as f:
        return "config" in json.load(f)


def _embedded_config(checkpoint: str) -> T5Config:
    return assets.read_backbone_info(pathlib.Path(_embedded_path(checkpoint)))[0]


def _embedded_read(checkpoint: str, config: T5Config) -> PyTree:
    del config  # the tree is checked against it by the caller
    return assets.read_backbone(pathlib.Path(_embedded_path(checkpoint)))[1]


def _embedded_vocabulary(checkpoint: str):
    import seqio

    config = _embedded_config(checkpoint)
    return (
        seqio.ByteVocabulary() if config.vocab_size == seqio.ByteVocabulary().vocab_size else None
    )


def _msgpack_read(checkpoint: str, config: T5Config) -> PyTree:
    with open(checkpoint, "rb") as f:
        tree = flax.serialization.msgpack_restore(f.read())
    return tree.get("params", tree)


def _t5x_read(checkpoint: str, config: T5Config) -> PyTree:
    del config  # the tree is checked against it by the caller
    return t5x_checkpoint.load_t5x_checkpoint(checkpoint)


def _safetensors_read(checkpoint: str, config: T5Config) -> PyTree:
    from safetensors.numpy import load_file

    flat = load_file(checkpoint)
    if _is_hf_state(flat):
        from mpt_jax.backbone import hf_import

        return hf_import.convert_hf_state_dict(flat, config)
    return _unflatten(flat)


def _orbax_read(checkpoint: str, config: T5Config) -> PyTree:
    import orbax.checkpoint as ocp

    tree = ocp.StandardCheckpointer().restore(os.path.abspath(checkpoint))
    return tree.get("params", tree)


@dataclasses.dataclass(frozen=True)
class BackboneFormat:
    """One kind of backbone checkpoint.

    Attributes:
      name: shown in errors.
      matches: ``checkpoint -> bool`` (cheap: names and small files only).
      read: ``(checkpoint, config) -> parameter tree``.
      config: ``checkpoint -> T5Config`` when the checkpoint carries its configuration.
      vocabulary: ``checkpoint -> seqio.Vocabulary | None`` when it carries a tokenizer.
    """

    name: str
    matches: Callable[[str], bool]
    read: Callable[[str, T5Config], PyTree]
    config: Callable[[str], T5Config] | None = None
    vocabulary: Callable[[str], Any] | None = None


#: The checkpoint formats, tried in order (the first that matches reads).
FORMATS: list[BackboneFormat] = [
    BackboneFormat(
        "huggingface", lambda c: _hf_dir(c) is not None, _hf_read, _hf_config, _hf_vocabulary
    ),  # fmt: skip
    BackboneFormat(
        "embedded", _is_embedded, _embedded_read, _embedded_config, _embedded_vocabulary
    ),  # fmt: skip
    BackboneFormat("msgpack", lambda c: c.endswith(".msgpack"), _msgpack_read),
    BackboneFormat("safetensors", lambda c: c.endswith(".safetensors"), _safetensors_read),
    BackboneFormat("t5x", t5x_checkpoint.is_t5x_checkpoint, _t5x_read),
    BackboneFormat("orbax", os.path.isdir, _orbax_read),
]


def _is_random(checkpoint: str | None) -> bool:
    return checkpoint is None or checkpoint == "random" or checkpoint.startswith("random:")


def checkpoint_format(checkpoint: str) -> BackboneFormat:
    """The :class:`BackboneFormat` of ``checkpoint``; an error when none fits."""
    for fmt in FORMATS:
        if fmt.matches(checkpoint):
            if fmt.name not in ("huggingface", "embedded") and not os.path.exists(checkpoint):
                break
            return fmt
    if not os.path.exists(checkpoint.removeprefix("hf:")):
        raise FileNotFoundError(f"backbone checkpoint {checkpoint!r} does not exist")
    raise ValueError(
        f"cannot tell the format of backbone checkpoint {checkpoint!r}: expected 'embedded', a "
        ".msgpack or .safetensors file, an orbax directory, or a Hugging Face directory "
        f"('hf:<dir>'); known formats: {[f.name for f in FORMATS]}"
    )


def _read(checkpoint: str, config: T5Config) -> PyTree:
    return checkpoint_format(checkpoint).read(checkpoint, config)


def backbone_config(
    config: T5Config | None, checkpoint: str | None, config_name: str | None = None
) -> T5Config:
    """The configuration :func:`load_backbone` uses (see the module docstring's order)."""
    if config is not None:
        return config
    if not _is_random(checkpoint):
        fmt = checkpoint_format(checkpoint)
        if fmt.config is not None:
            return fmt.config(checkpoint)
    return get_config(config_name or "tiny")


def backbone_vocabulary(checkpoint: str | None):
    """The vocabulary ``checkpoint`` ships (a Hugging Face folder's ``spiece.model``, the
    embedded backbone's bytes), or None."""
    if _is_random(checkpoint):
        return None
    fmt = checkpoint_format(checkpoint)
    return fmt.vocabulary(checkpoint) if fmt.vocabulary is not None else None


def _pieces(vocabulary) -> tuple[str, ...] | None:
    model = getattr(vocabulary, "tokenizer", None)
    if model is None:
        return None
    return tuple(model.id_to_piece(i) for i in range(model.get_piece_size()))


def describe_vocabulary(vocabulary) -> str:
    path = getattr(vocabulary, "sentencepiece_model_file", None) or getattr(
        vocabulary, "_sentencepiece_model_file", None
    )
    where = f" {path}" if path else ""
    return f"{type(vocabulary).__name__}{where} ({vocabulary.vocab_size} ids)"


def check_vocabulary(
    vocabulary, config: T5Config, *, where: str, backbone: str, model_vocabulary=None
) -> None:
    """Raises ``ValueError`` naming both sides when ``vocabulary`` (a task's) cannot be the
    model's: it has more ids than the embedding (``config.vocab_size``), fewer by more
    than the 128 ids of padding T5 checkpoints add, or other pieces than the vocabulary
    the checkpoint ships (``model_vocabulary``).

    Args:
      vocabulary: the task's ``seqio.Vocabulary``.
      config: the backbone's configuration.
      where: which task or binding the vocabulary is from (for the message).
      backbone: the checkpoint (for the message).
      model_vocabulary: the vocabulary the checkpoint ships, when it does.
    """
    vocabulary = getattr(vocabulary, "resolved", vocabulary)  # the project's lazy wrapper
    size = vocabulary.vocab_size
    if size > config.vocab_size or size < config.vocab_size - 128:
        raise ValueError(
            f"the vocabulary of {where}, {describe_vocabulary(vocabulary)}, does not fit the "
            f"backbone {backbone!r} ({config.name}, vocab_size {config.vocab_size}): bind the "
            "backbone's own vocabulary (output_vocabulary.kind = 'byte' for byte models, "
            "t5_vocabulary.sentencepiece_model_path for SentencePiece ones)"
        )
    if model_vocabulary is None or model_vocabulary == vocabulary:
        return
    ours, theirs = _pieces(vocabulary), _pieces(model_vocabulary)
    if type(vocabulary) is not type(model_vocabulary) or ours != theirs:
        differ = ""
        if ours is not None and theirs is not None:
            first = next(
                (i for i, (a, b) in enumerate(zip(ours, theirs, strict=False)) if a != b), None
            )
            if first is not None:
                differ = f"; id {first} is {ours[first]!r} vs {theirs[first]!r}"
        raise ValueError(
            f"the vocabulary of {where}, {describe_vocabulary(vocabulary)}, has other pieces "
            f"than the backbone {backbone!r}'s own, {describe_vocabulary(model_vocabulary)}"
            f"{differ}: use the backbone's (leave the vocabulary bindings unset)"
        )


def _needs_remote_file(vocabulary) -> bool:
    """An unresolved project vocabulary that would read a remote sentencepiece model."""
    from mpt_jax.tasks import vocab as vocab_lib

    if not isinstance(vocabulary, vocab_lib.ConfiguredVocabulary) or vocabulary._resolved:
        return False
    try:
        kind = gin.query_parameter("output_vocabulary.kind")
    except ValueError:
        kind = "t5"
    try:
        path = gin.query_parameter("t5_vocabulary.sentencepiece_model_path")
    except ValueError:
        path = vocab_lib.DEFAULT_T5_SPM_PATH
    return kind == "t5" and "://" in str(path)


def check_task_vocabularies(tasks, checkpoint: str | None, config: T5Config) -> None:
    """Before any data is read: each seqio task's vocabulary fits the backbone
    (:func:`check_vocabulary`); a backbone's own tokenizer is adopted first when gin binds
    no vocabulary. A vocabulary that would be read from a remote file is not opened here."""
    shipped = backbone_vocabulary(checkpoint)
    if shipped is not None:
        from mpt_jax.tasks.vocab import TASK_VOCABULARY

        TASK_VOCABULARY.adopt(shipped)
    backbone = checkpoint or f"random {config.name}"
    for task in tasks:
        for feature in ("inputs", "targets"):
            vocabulary = task.output_features[feature].vocabulary
            if _needs_remote_file(vocabulary):
                continue
            check_vocabulary(vocabulary, config, where=f"task {task.name!r} ({feature})",
                             backbone=backbone, model_vocabulary=shipped)  # fmt: skip


@gin.configurable
def load_backbone(
    config: T5Config | None = None,
    checkpoint: str | None = None,
    config_name: str | None = None,
) -> tuple[T5Config, PyTree, str]:
    """``(config, backbone_params, reference)``; see the module docstring for sources.

    Args:
      config: the backbone's configuration (default: the checkpoint's own, else
        ``get_config(config_name)``, else ``get_config("tiny")``, for tests).
      checkpoint: where the parameters come from (None = random, seed 0).
      config_name: a :func:`~mpt_jax.backbone.get_config` name, used when neither
        ``config`` nor the checkpoint gives one (``BACKBONE`` in ``base.gin``).
    """
    config = backbone_config(config, checkpoint, config_name)
    shipped = backbone_vocabulary(checkpoint)
    if shipped is not None:
        from mpt_jax.tasks.vocab import TASK_VOCABULARY

        TASK_VOCABULARY.adopt(shipped)
    if _is_random(checkpoint):
        seed = int(checkpoint.split(":", 1)[1]) if checkpoint and ":" in checkpoint else 0
        return config, random_backbone(config, seed), f"random:{seed}"
    params = _read(checkpoint, config)
    params = jax.tree.map(np.asarray, params)
    if "prompt" in params:
        params = {k: v for k, v in params.items() if k != "prompt"}
    check_backbone(params, config, checkpoint)
    reference = checkpoint if checkpoint == "embedded" else os.path.abspath(
        checkpoint.removeprefix("hf:")
    )  # fmt: skip
    return config, params, reference
