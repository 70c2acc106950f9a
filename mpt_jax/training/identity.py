"""What made a checkpoint, recorded with it and compared on every reuse.

A prompt checkpoint is only meaningful together with the things that produced it: two
generators can hold parameters of the same names and shapes (``shared``, ``task_cols``,
``task_rows``) and mean different prompts (MPT's ``shared ∘ (U_k V_k)`` against the
``add`` composition's ``shared + U_k V_k``), and a prompt trained on one backbone is noise
on another. So every checkpoint the ``train`` job writes carries, under
``meta["extra"]["identity"]``, the record of :func:`run_identity`::

    {"generator":  {"class": "ComposedPrompt", "composition": "add", "length": 100, ...},
     "backbone":   {"reference": "/models/t5.msgpack", "config": "t5_1_1_base",
                    "sha256": "…"},          # the frozen tree's bytes, hashed once
     "vocabulary": {"inputs": {"kind": "SentencePieceVocabulary", "size": 32100,
                               "sha256": "…"}, "targets": {...}},
     "task_names": ["rte", "mnli"],
     "version":    "0.1.0"}

The generator's record is generic (:func:`describe`): its class name and its dataclass
fields, nested dataclass objects (a composition object) as class name plus fields,
initialiser callables left out (they do not change what a trained prompt means).

Who compares (see docs/RELIABILITY.md): resuming a run, ``eval`` and ``infer``
(:func:`check_identity`: generator, backbone, vocabulary and task mapping must equal the
checkpoint's), a target or SPoT run reading a source (:func:`check_source`: the source's
backbone, and that an MPT-named tree really is MPT's composition), and
``export-prompts --format peft`` (:func:`require_mpt`). A difference is an
:class:`IdentityError` naming both sides; ``check_identity.allow = ["backbone"]`` (any of
:data:`PARTS`) lets an intended change through with a logged warning. A change of library
version is always allowed and logged.

Checkpoints written before these records existed have no ``identity``: they are read with
a warning saying that nothing but parameter names and shapes could be checked.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import gin
import jax
import numpy as np

from mpt_jax.training.checkpoints import CheckpointError
from mpt_jax.version import __version__

PyTree = Any
log = logging.getLogger(__name__)

#: The parts of a record that must agree on reuse (and that ``check_identity.allow`` names).
PARTS = ("generator", "backbone", "vocabulary", "task_names")
#: Key of the record in a checkpoint's ``meta["extra"]``.
META_KEY = "identity"
_SKIP = object()  # a field left out of a record (an initialiser)
_NOT_RECORDED = (
    "{what} was written before checkpoints recorded what made them (no 'identity' in its "
    "meta): only its parameter names and shapes were checked, not its generator, backbone "
    "or vocabulary. Train or resume it once with this version to record them."
)


class IdentityError(CheckpointError):
    """A checkpoint reused with a generator, backbone, vocabulary or task mapping other than
    the one that made it, or exported in a format that cannot represent its prompt."""


# -- records ---------------------------------------------------------------------------


def describe(value: Any) -> Any:
    """A JSON-able record of ``value``: dataclasses (Flax modules, frozen composition
    objects, configs) as ``{"class": name, field: record, ...}`` without Flax's ``parent``
    and ``name``; dtypes by name; callables (initialisers) left out."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        record: dict[str, Any] = {"class": type(value).__name__}
        for field in dataclasses.fields(value):
            if field.name in ("parent", "name") or not field.init:
                continue
            item = describe(getattr(value, field.name))
            if item is not _SKIP:
                record[field.name] = item
        return record
    if isinstance(value, Mapping):
        items = {str(k): describe(v) for k, v in value.items()}
        return {k: v for k, v in items.items() if v is not _SKIP}
    if isinstance(value, list | tuple):
        return [v for v in map(describe, value) if v is not _SKIP]
    try:
        return np.dtype(value).name  # jnp.float32, np.dtype("bfloat16"), ...
    except TypeError:
        pass
    if callable(value):
        return _SKIP
    return type(value).__name__


def generator_record(generator: Any) -> dict[str, Any]:
    """The prompt generator's record (see :func:`describe`)."""
    return describe(generator)


_HASHES: dict[int, tuple[PyTree, str]] = {}


def tree_sha256(tree: PyTree) -> str:
    """SHA-256 of a parameter tree: every leaf's path, dtype, shape and bytes, in path order.

    Computed once per tree object (the backbone is frozen; a job hashes it once even when
    several checks ask)."""
    cached = _HASHES.get(id(tree))
    if cached is not None and cached[0] is tree:
        return cached[1]
    digest = hashlib.sha256()
    leaves = sorted(
        (jax.tree_util.keystr(path), leaf)
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
    )
    for path, leaf in leaves:
        array = np.ascontiguousarray(np.asarray(leaf))
        digest.update(f"{path}|{array.dtype.str}|{array.shape}".encode())
        digest.update(array.view(np.uint8).reshape(-1).data)
    if len(_HASHES) >= 4:
        _HASHES.pop(next(iter(_HASHES)))
    _HASHES[id(tree)] = (tree, digest.hexdigest())
    return _HASHES[id(tree)][1]


def backbone_record(params: PyTree, reference: str, config: Any = None) -> dict[str, Any]:
    """``{"reference", "config", "sha256"}`` of the frozen backbone; only ``sha256`` is
    compared (the same weights under another path are the same backbone)."""
    name = getattr(config, "name", None)
    return {"reference": reference, "config": name, "sha256": tree_sha256(params)}


def vocabulary_record(vocabulary: Any) -> dict[str, Any]:
    """``{"kind", "size"}`` of a seqio vocabulary, plus ``sha256`` of the model file of a
    SentencePiece vocabulary."""
    record: dict[str, Any] = {
        "kind": type(vocabulary).__name__,
        "size": int(vocabulary.vocab_size),
    }
    path = getattr(vocabulary, "sentencepiece_model_file", None)
    if path:
        import tensorflow as tf

        with tf.io.gfile.GFile(path, "rb") as f:
            record["sha256"] = hashlib.sha256(f.read()).hexdigest()
    return record


def task_vocabularies(mixture_or_task_name: str) -> dict[str, Any]:
    """The vocabulary records of a seqio task's (or a mixture's first task's) ``inputs`` and
    ``targets``."""
    import seqio

    import mpt_jax.tasks  # noqa: F401  (registers the project's seqio tasks)

    provider = seqio.get_mixture_or_task(mixture_or_task_name)
    task = provider.tasks[0] if isinstance(provider, seqio.Mixture) else provider
    features = task.output_features
    return {k: vocabulary_record(features[k].vocabulary) for k in ("inputs", "targets")
            if k in features}  # fmt: skip


def run_identity(
    *,
    generator: Any,
    backbone: PyTree,
    backbone_reference: str,
    backbone_config: Any = None,
    vocabulary: Mapping[str, Any] | None,
    task_names: Sequence[str],
) -> dict[str, Any]:
    """The record a checkpoint carries (see the module docstring)."""
    return {
        "generator": generator_record(generator),
        "backbone": backbone_record(backbone, backbone_reference, backbone_config),
        "vocabulary": None if vocabulary is None else dict(vocabulary),
        "task_names": list(task_names),
        "version": __version__,
    }


def saved_identity(meta: Mapping[str, Any]) -> dict[str, Any] | None:
    """The record in a checkpoint's meta, or None for a checkpoint written before records."""
    return (meta.get("extra") or {}).get(META_KEY)


# -- comparisons -----------------------------------------------------------------------


def _flat(record: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(record, Mapping):
        out: dict[str, Any] = {}
        for k, v in record.items():
            out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
        return out or {prefix: {}}
    return {prefix: record}


def differences(saved: Any, current: Any, part: str) -> list[str]:
    """``"part.field: saved X, this run Y"`` for each differing field (backbone: sha256)."""
    if part == "backbone":
        if (saved or {}).get("sha256") == (current or {}).get("sha256"):
            return []
        return [f"backbone: saved {_short_backbone(saved)}, this run {_short_backbone(current)}"]
    a, b = _flat(saved, part), _flat(current, part)
    return [f"{k}: saved {a.get(k, '<absent>')!r}, this run {b.get(k, '<absent>')!r}"
            for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]  # fmt: skip


def _short_backbone(record: Mapping[str, Any] | None) -> str:
    if not record:
        return "<none>"
    digest = f"sha256 {str(record.get('sha256'))[:12]}…"
    if record.get("reference") is None:
        return f"an unnamed backbone ({digest})"
    return f"{record.get('reference')!r} (config {record.get('config')!r}, {digest})"


@gin.configurable(denylist=["saved", "current", "context"])
def check_identity(
    saved: Mapping[str, Any] | None,
    current: Mapping[str, Any],
    *,
    context: str,
    parts: Sequence[str] = PARTS,
    allow: Sequence[str] = (),
) -> None:
    """Raises :class:`IdentityError` when ``current`` differs from ``saved`` in ``parts``.

    Args:
      saved: the checkpoint's record (None: an old checkpoint, warned about).
      current: this run's record (:func:`run_identity`).
      context: what is being done, for messages (``"resuming runs/x"``).
      parts: which parts to compare (a subset of :data:`PARTS`).
      allow: parts whose difference is intended: logged as a warning, not refused.
        gin: ``check_identity.allow = ["backbone"]``.

    Raises:
      IdentityError: naming each differing field with both values, and the binding that
        allows the change.
    """
    unknown = sorted(set(allow) - set(PARTS))
    if unknown:
        raise ValueError(f"check_identity.allow names unknown parts {unknown}; parts: {PARTS}")
    if saved is None:
        log.warning(_NOT_RECORDED.format(what=f"{context}: the checkpoint"))
        return
    refused = []
    for part in parts:
        diff = differences(saved.get(part), current.get(part), part)
        if not diff:
            continue
        if part in allow:
            log.warning("%s: allowed change (check_identity.allow) of %s", context, "; ".join(diff))
        else:
            refused.append((part, diff))
    if saved.get("version") != current.get("version"):
        log.info("%s: written by mpt_jax %s, read by %s", context, saved.get("version"),
                 current.get("version"))  # fmt: skip
    if refused:
        lines = "\n  ".join(d for _, ds in refused for d in ds)
        names = [p for p, _ in refused]
        other_class = any(d.startswith("generator.class:") for _, ds in refused for d in ds)
        way_out = (
            f"if the change is intended, bind check_identity.allow = {names!r} (the "
            "change is then logged)"
        )
        if other_class:  # e.g. the source stage pointed at a teacher run's MODEL_DIR
            way_out += (
                "; that reads the saved parameters only if both generators have the same "
                "names and shapes. To start a stage from an earlier run, give that run as "
                "TEACHER_DIR / SOURCE_DIR and a new MODEL_DIR"
            )
        raise IdentityError(
            f"{context}: the checkpoint was made by another "
            f"{' and '.join(names)} than this run's:\n  {lines}\n"
            f"Use the configuration it was made with; {way_out}."
        )


def represents_mpt(generator: Mapping[str, Any]) -> bool:
    """True when a generator record means MPT's ``shared ∘ (task_cols[k] @ task_rows[k])``:
    a ``MultitaskPrompt``, or a ``ComposedPrompt`` with the hadamard composition and a
    low-rank task part of the shared length. The one place that knows which generators
    PEFT's MPT format and the source initialisers may read."""
    cls = generator.get("class")
    if cls == "MultitaskPrompt":
        return True
    composition = generator.get("composition")
    name = composition.get("class", "") if isinstance(composition, Mapping) else composition
    return (
        cls == "ComposedPrompt"
        and str(name).lower() == "hadamard"
        and generator.get("task_rank") is not None
        and generator.get("task_length") in (None, generator.get("length"))
    )


def _generator_words(generator: Mapping[str, Any]) -> str:
    """``Class(field=value, ...)``; nested records (composition objects) alike."""

    def words(value: Any) -> str:
        return (
            _generator_words(value)
            if isinstance(value, Mapping) and "class" in value
            else repr(value)
        )

    fields = ", ".join(f"{k}={words(v)}" for k, v in generator.items() if k != "class")
    return f"{generator.get('class')}({fields})"


def require_mpt(meta: Mapping[str, Any], *, what: str, reading: str) -> None:
    """Raises :class:`IdentityError` unless the checkpoint's generator means MPT's prompt.

    Args:
      meta: the checkpoint's meta.
      what: the checkpoint, for messages.
      reading: who reads it as MPT (``"PEFT's MPT adapter format"``).
    """
    saved = saved_identity(meta)
    if saved is None:
        log.warning(_NOT_RECORDED.format(what=what))
        return
    generator = saved.get("generator") or {}
    if not represents_mpt(generator):
        raise IdentityError(
            f"{what} holds a prompt of {_generator_words(generator)}, which is not MPT's "
            f"shared ∘ (task_cols[k] @ task_rows[k]); {reading} would read its parameters "
            "as MPT's and compute another prompt."
        )


def check_source(
    meta: Mapping[str, Any], *, backbone: PyTree, what: str, mpt: bool = False
) -> None:
    """Checks a source checkpoint read to start another run: it was trained on the same
    backbone (``check_identity.allow = ["backbone"]`` lets a change through, logged), and,
    with ``mpt``, its generator is MPT's (:func:`require_mpt`)."""
    saved = saved_identity(meta)
    if saved is None:
        log.warning(_NOT_RECORDED.format(what=what))
        return
    if mpt:
        require_mpt(meta, what=what, reading="initialising from it as an MPT source")
    current = {
        "backbone": {"sha256": tree_sha256(backbone), "reference": None, "config": None},
        "version": __version__,
    }
    check_identity(saved, current, context=f"reading {what}", parts=("backbone",))
