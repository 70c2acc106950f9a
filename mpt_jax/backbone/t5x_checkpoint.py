"""T5X checkpoints read without T5X: the parameter tree of a ``checkpoint_<step>`` folder.

T5X writes a checkpoint as a folder holding its whole train state: the parameters under
``target/`` and the optimizer's ``state/``. Two formats exist, and both are read here with
PyPI packages only (``flax.serialization`` for msgpack, ``tensorstore``, ``orbax``):

- **legacy** (T5X before Orbax; the public T5 1.1 checkpoints): a msgpack file named
  ``checkpoint`` holding ``{"version", "optimizer": {"target", "state"}}``, in which small
  arrays are stored inline and large ones as tensorstore specs
  (``{"driver": "zarr", "kvstore": {"path": "target.encoder.layers_0..."}}``) that point
  at zarr arrays in the same folder;
- **Orbax** (T5X's default since 2024): ``checkpoint_<step>/state/_METADATA`` and an
  OCDBT/zarr store, read partially (only the requested subtree is loaded).

The result is the nested dict of ``target/<scope>`` (T5X's parameter names:
``token_embedder/embedding`` [vocab, embed], ``encoder/layers_0/attention/query/kernel``
[embed, heads·head_dim], …) as numpy arrays cast to ``dtype`` (float32 by default;
bfloat16 checkpoints are widened). A bare tree without ``target`` (e.g. an Orbax save of
the parameters alone) is returned as it is.

Example::

    params = load_t5x_checkpoint("gs_copy/t5_1_1_base/checkpoint_1000000")
    prompt = load_t5x_checkpoint("runs/source/checkpoint_1060000", scope="prompt")
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import flax.serialization
import numpy as np

PyTree = Any

_LEGACY_FILE = "checkpoint"
_ORBAX_METADATA = "_METADATA"


def orbax_state_dir(path: str) -> str | None:
    """The folder holding Orbax's ``_METADATA`` (``<path>/state`` or ``<path>``), or None."""
    for candidate in (os.path.join(path, "state"), path):
        if os.path.isfile(os.path.join(candidate, _ORBAX_METADATA)):
            return candidate
    return None


def is_t5x_checkpoint(path: str) -> bool:
    """Whether ``path`` is laid out as a T5X checkpoint: a legacy ``checkpoint`` msgpack
    file, or Orbax's ``state/_METADATA`` (a bare Orbax folder is not recognised here)."""
    return os.path.isfile(os.path.join(path, _LEGACY_FILE)) or os.path.isfile(
        os.path.join(path, "state", _ORBAX_METADATA)
    )


def _subtree(tree: Any, path: Sequence[str], checkpoint: str) -> Any:
    node: Any = tree
    for i, key in enumerate(path):
        if not isinstance(node, Mapping) or key not in node:
            where = "/".join(path[:i]) or "<root>"
            known = sorted(node) if isinstance(node, Mapping) else []
            raise KeyError(
                f"T5X checkpoint {checkpoint!r} has no '{'/'.join(path)}' "
                f"(at {where!r} the keys are {known})."
            )
        node = node[key]
    return node


def _scope_path(tree: Mapping[str, Any], scope: str) -> list[str]:
    parts = [p for p in scope.split("/") if p]
    return ["target", *parts] if "target" in tree else parts


def _is_tensorstore_spec(value: Any) -> bool:
    return (
        isinstance(value, Mapping) and "driver" in value and ("kvstore" in value or "path" in value)
    )


def _read_tensorstore(spec: Mapping[str, Any], checkpoint: str) -> np.ndarray:
    """Reads one legacy array; its kvstore path is relative to the checkpoint folder."""
    import tensorstore as ts

    spec = dict(spec)
    kvstore = dict(spec.pop("kvstore", {}))
    relative = kvstore.get("path", spec.pop("path", None))
    if relative is None:
        raise ValueError(f"T5X checkpoint {checkpoint!r}: array spec without a path: {spec}")
    spec["kvstore"] = {"driver": "file", "path": os.path.join(checkpoint, relative)}
    return np.asarray(ts.open(spec, open=True, read=True).result().read().result())


def _read_legacy(checkpoint: str, scope: str) -> PyTree:
    with open(os.path.join(checkpoint, _LEGACY_FILE), "rb") as f:
        contents = flax.serialization.msgpack_restore(f.read())
    tree = contents.get("optimizer", contents)
    wanted = _subtree(tree, _scope_path(tree, scope), checkpoint)

    def read(node: Any) -> Any:
        if _is_tensorstore_spec(node):
            return _read_tensorstore(node, checkpoint)
        if isinstance(node, Mapping):
            return {k: read(v) for k, v in node.items()}
        return np.asarray(node)

    return read(wanted)


def _read_orbax(state_dir: str, scope: str, checkpoint: str) -> PyTree:
    import jax
    import orbax.checkpoint as ocp

    checkpointer = ocp.PyTreeCheckpointer()
    metadata = checkpointer.metadata(state_dir)
    tree = getattr(getattr(metadata, "item_metadata", metadata), "tree", metadata)
    path = _scope_path(tree, scope)
    wanted = _subtree(tree, path, checkpoint)
    item: Any = jax.tree.map(lambda m: np.zeros(m.shape, m.dtype), wanted)
    for key in reversed(path):
        item = {key: item}
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
    restored = checkpointer.restore(
        state_dir,
        args=ocp.args.PyTreeRestore(item=item, restore_args=restore_args, partial_restore=True),
    )
    return _subtree(restored, path, checkpoint)


def load_t5x_checkpoint(
    path: str, scope: str = "", dtype: np.dtype | str | None = np.float32
) -> PyTree:
    """The parameter tree ``target/<scope>`` of a T5X checkpoint, as numpy arrays.

    Args:
      path: a T5X ``checkpoint_<step>`` folder, legacy or Orbax format.
      scope: ``/``-joined path inside the parameters ("" = all of them), e.g.
        ``prompt``, ``encoder/prompt`` (Flaxformer) or ``token_embedder``; only that
        subtree is read.
      dtype: every array is cast to it (default float32; None keeps the stored dtype).

    Returns:
      Nested dicts of numpy arrays with T5X's parameter names, without the ``target``
      level.

    Raises:
      FileNotFoundError: ``path`` is not a T5X checkpoint folder.
      KeyError: ``scope`` is not in the checkpoint (the message lists the keys there).
    """
    checkpoint = os.path.abspath(path)
    if not os.path.isdir(checkpoint):
        raise FileNotFoundError(f"T5X checkpoint {path!r} does not exist (expected a folder).")
    if os.path.isfile(os.path.join(checkpoint, _LEGACY_FILE)):
        tree = _read_legacy(checkpoint, scope)
    elif (state_dir := orbax_state_dir(checkpoint)) is not None:
        tree = _read_orbax(state_dir, scope, checkpoint)
    else:
        raise FileNotFoundError(
            f"{path!r} is not a T5X checkpoint: no legacy msgpack 'checkpoint' file and no "
            f"Orbax '{_ORBAX_METADATA}' in it or in its 'state' folder."
        )
    if dtype is None:
        return _map(np.asarray, tree)
    return _map(lambda x: np.asarray(x, dtype=dtype), tree)


def _map(fn, tree: Any) -> Any:
    if isinstance(tree, Mapping):
        return {k: _map(fn, v) for k, v in tree.items()}
    return fn(tree)
