"""Files the package ships: the small T5 pretrained on the embedded benchmark's world.

``embedded_t5.msgpack`` holds the parameter tree (``flax.serialization``, T5X names) of
a tiny T5 1.1 over ``seqio.ByteVocabulary``; ``embedded_t5.json`` its ``T5Config`` and how
it was made (made by ``scripts/pretrain_embedded_backbone.py``; the JSON records the
command, the steps, the wall time and the final training metrics).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any

from mpt_jax.backbone.config import T5Config
from mpt_jax.data.synthetic import BYTE_VOCAB_SIZE

ASSETS_DIR = pathlib.Path(__file__).parent
EMBEDDED_BACKBONE = ASSETS_DIR / "embedded_t5"


def embedded_backbone_config(**overrides: Any) -> T5Config:
    """The shipped backbone's shape: T5 1.1, width 64, 2 + 2 layers, byte vocabulary."""
    fields = dict(
        name="embedded_t5",
        vocab_size=BYTE_VOCAB_SIZE,
        emb_dim=64,
        num_heads=4,
        head_dim=16,
        mlp_dim=128,
        num_encoder_layers=2,
        num_decoder_layers=2,
        dropout_rate=0.0,
    )
    fields.update(overrides)
    return T5Config(**fields)


def save_backbone(path: pathlib.Path, config: T5Config, params: Any, info: dict) -> None:
    """Writes ``path.msgpack`` (parameters) and ``path.json`` (config + ``info``)."""
    from flax import serialization

    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".msgpack").write_bytes(serialization.to_bytes(params))
    meta = {"config": dataclasses.asdict(config), **info}
    path.with_suffix(".json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")


def load_backbone(path: pathlib.Path = EMBEDDED_BACKBONE) -> tuple[T5Config, Any, dict]:
    """Reads what :func:`save_backbone` wrote: ``(config, params, info)``.

    Raises:
      FileNotFoundError: naming the missing file and the script that makes it.
    """
    from flax import serialization

    path = pathlib.Path(path)
    weights, meta_path = path.with_suffix(".msgpack"), path.with_suffix(".json")
    for f in (weights, meta_path):
        if not f.exists():
            raise FileNotFoundError(
                f"No backbone file at {str(f)!r}; make it with "
                "`python scripts/pretrain_embedded_backbone.py`."
            )
    meta = json.loads(meta_path.read_text())
    config = T5Config(**meta.pop("config"))
    params = serialization.msgpack_restore(weights.read_bytes())
    return config, params, meta
