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
  (:func:`mpt_jax.backbone.hf_import.load_hf_checkpoint`);
- a T5X ``checkpoint_<step>`` directory, legacy (msgpack + tensorstore) or Orbax: its
  ``target`` parameters (:func:`mpt_jax.backbone.load_t5x_checkpoint`, no T5X needed);
- any other directory: an orbax checkpoint of the tree (``StandardCheckpointer``).

Every loaded tree is checked against the shapes the configuration implies; a missing,
extra or mis-shaped parameter is an error naming its path.

gin::

    load_backbone.config = @get_config()
    get_config.name = "base"
    load_backbone.checkpoint = "/models/t5_1_1_base.msgpack"
"""

from __future__ import annotations

import os
from typing import Any

import flax.linen as nn
import flax.serialization
import gin
import jax
import jax.numpy as jnp
import numpy as np

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


def _read(checkpoint: str, config: T5Config) -> PyTree:
    hf_dir = _hf_dir(checkpoint)
    if hf_dir is not None:
        from mpt_jax.backbone import hf_import

        return hf_import.load_hf_checkpoint(hf_dir, config)
    if not os.path.exists(checkpoint):
        raise FileNotFoundError(f"backbone checkpoint {checkpoint!r} does not exist")
    if checkpoint.endswith(".msgpack"):
        with open(checkpoint, "rb") as f:
            tree = flax.serialization.msgpack_restore(f.read())
        return tree.get("params", tree)
    if checkpoint.endswith(".safetensors"):
        from safetensors.numpy import load_file

        flat = load_file(checkpoint)
        if _is_hf_state(flat):
            from mpt_jax.backbone import hf_import

            return hf_import.convert_hf_state_dict(flat, config)
        return _unflatten(flat)
    if t5x_checkpoint.is_t5x_checkpoint(checkpoint):
        return t5x_checkpoint.load_t5x_checkpoint(checkpoint)
    if os.path.isdir(checkpoint):
        import orbax.checkpoint as ocp

        tree = ocp.StandardCheckpointer().restore(os.path.abspath(checkpoint))
        return tree.get("params", tree)
    raise ValueError(
        f"cannot tell the format of backbone checkpoint {checkpoint!r}: expected a .msgpack or "
        ".safetensors file, an orbax directory, or a Hugging Face directory ('hf:<dir>')"
    )


@gin.configurable
def load_backbone(
    config: T5Config | None = None, checkpoint: str | None = None
) -> tuple[T5Config, PyTree, str]:
    """``(config, backbone_params, reference)``; see the module docstring for sources.

    Args:
      config: the backbone's configuration (default: read from a Hugging Face
        checkpoint's ``config.json``; otherwise ``get_config("tiny")``, for tests).
      checkpoint: where the parameters come from (None = random, seed 0).
    """
    hf_dir = _hf_dir(checkpoint)
    if config is None and hf_dir is not None:
        from mpt_jax.backbone import hf_import

        config = hf_import.config_from_hf(hf_dir)
    config = get_config("tiny") if config is None else config
    if checkpoint is None or checkpoint == "random" or checkpoint.startswith("random:"):
        seed = int(checkpoint.split(":", 1)[1]) if checkpoint and ":" in checkpoint else 0
        return config, random_backbone(config, seed), f"random:{seed}"
    params = _read(checkpoint, config)
    params = jax.tree.map(np.asarray, params)
    if "prompt" in params:
        params = {k: v for k, v in params.items() if k != "prompt"}
    check_backbone(params, config, checkpoint)
    return config, params, os.path.abspath(checkpoint.removeprefix("hf:"))
