"""Files the package ships: the small T5 pretrained on the embedded benchmark's world.

``embedded_t5.msgpack`` holds the parameter tree (``flax.serialization``, T5X names) of
a tiny T5 1.1 over ``seqio.ByteVocabulary``; ``embedded_t5.json`` its ``T5Config`` and how
it was made (made by ``scripts/pretrain_embedded_backbone.py``; the JSON records the
command, the steps, the wall time and the final training metrics).

:func:`save_backbone` and :func:`read_backbone` write and read this format; a run loads
any backbone (this one as ``"embedded"``) with
:func:`mpt_jax.runner.backbone_loading.load_backbone`, which reads this format through
them.
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


def _existing(path: pathlib.Path) -> pathlib.Path:
    if not path.exists():
        raise FileNotFoundError(
            f"No backbone file at {str(path)!r}; make it with "
            "`python scripts/pretrain_embedded_backbone.py`."
        )
    return path


def read_backbone_info(path: pathlib.Path = EMBEDDED_BACKBONE) -> tuple[T5Config, dict]:
    """``(config, info)`` from ``path.json`` alone (no parameters read).

    Raises:
      FileNotFoundError: naming the missing file and the script that makes it.
    """
    meta = json.loads(_existing(pathlib.Path(path).with_suffix(".json")).read_text())
    return T5Config(**meta.pop("config")), meta


def read_backbone(path: pathlib.Path = EMBEDDED_BACKBONE) -> tuple[T5Config, Any, dict]:
    """Reads what :func:`save_backbone` wrote: ``(config, params, info)``.

    Raises:
      FileNotFoundError: naming the missing file and the script that makes it.
    """
    from flax import serialization

    path = pathlib.Path(path)
    weights = _existing(path.with_suffix(".msgpack"))
    config, info = read_backbone_info(path)
    return config, serialization.msgpack_restore(weights.read_bytes()), info
