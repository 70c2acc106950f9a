"""Convert a Hugging Face T5 checkpoint into the backbone's (T5X) parameter tree.

No torch is needed: weights are read with `safetensors.numpy`, or passed as a
state dict of numpy arrays.

Conventions, Hugging Face -> ours:
  * Linear weights are stored `[out, in]`; ours (T5X) `[in, out]`: transpose.
  * The relative position table is `[buckets, heads]` and lives in the first
    block of each stack; ours is `<stack>/relpos_bias/rel_embedding`
    `[heads, buckets]`: transpose.
  * Neither side scales queries by `1/sqrt(head_dim)` at run time (T5X folds
    it into the initialiser, Hugging Face into its own init), so `q` copies
    unchanged.
  * Tied output layer (T5 1.0): `lm_head` equals `shared`, and the decoder
    output is scaled by `d_model ** -0.5` first (our `logits_via_embedding`).
    Untied (T5 1.1, mT5, Flan-T5): `lm_head.weight` `[vocab, d]` becomes
    `decoder/logits_dense/kernel` `[d, vocab]`. A file saved with the output
    layer tied to `shared` (no `lm_head.weight`) uses `shared` for it.

Example::

    config = config_from_hf("/ckpt/flan-t5-small/config.json")
    params = load_hf_checkpoint("/ckpt/flan-t5-small", config)
    logits = T5(config).apply({"params": params}, enc, dec_in, dec_tgt, enable_dropout=False)
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mpt_jax.backbone.config import T5Config

# Keys that duplicate another key (tied embeddings) or that Hugging Face
# creates but never uses; they carry no information of their own.
_REDUNDANT_KEYS = (
    "encoder.embed_tokens.weight",
    "decoder.embed_tokens.weight",
    "decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight",
)

_HF_ACTIVATIONS = {
    # feed_forward_proj -> our mlp_activations
    "relu": ("relu",),
    "gelu": ("gelu_exact",),  # Hugging Face "gelu" is the exact erf GELU
    "gelu_new": ("gelu",),
    "silu": ("silu",),
    "gated-gelu": ("gelu", "linear"),  # Hugging Face maps it to gelu_new (tanh)
    "gated-gelu_new": ("gelu", "linear"),
    "gated-relu": ("relu", "linear"),
    "gated-silu": ("silu", "linear"),
}


def config_from_hf(hf_config: Mapping[str, Any] | Any | str | os.PathLike, **overrides: Any):
    """A `T5Config` from a Hugging Face T5 config (dict, `config.json` path, or config object).

    Args:
      hf_config: the Hugging Face configuration.
      **overrides: `T5Config` fields to set on top (e.g. `dtype="bfloat16"`).

    Returns:
      The equivalent `T5Config`.
    """
    if isinstance(hf_config, str | os.PathLike):
        path = Path(hf_config)
        if path.is_dir():
            path = path / "config.json"
        hf_config = json.loads(path.read_text())
    if not isinstance(hf_config, Mapping):
        hf_config = dict(hf_config.to_dict())
    # transformers >= 5 writes tie_word_embeddings=True for every T5 and records
    # T5 1.1's untied, unscaled output layer as scale_decoder_outputs=False.
    tied = hf_config.get("scale_decoder_outputs", hf_config.get("tie_word_embeddings", True))
    proj = hf_config.get("feed_forward_proj", "relu")
    if proj not in _HF_ACTIVATIONS:
        raise ValueError(
            f"Unsupported feed_forward_proj {proj!r}; supported: {sorted(_HF_ACTIVATIONS)}."
        )
    num_layers = hf_config.get("num_layers", 6)
    fields = dict(
        vocab_size=hf_config["vocab_size"],
        emb_dim=hf_config["d_model"],
        num_heads=hf_config["num_heads"],
        head_dim=hf_config["d_kv"],
        mlp_dim=hf_config["d_ff"],
        num_encoder_layers=num_layers,
        num_decoder_layers=hf_config.get("num_decoder_layers") or num_layers,
        mlp_activations=_HF_ACTIVATIONS[proj],
        logits_via_embedding=bool(tied),
        dropout_rate=float(hf_config.get("dropout_rate", 0.1)),
        relative_attention_num_buckets=hf_config.get("relative_attention_num_buckets", 32),
        relative_attention_max_distance=hf_config.get("relative_attention_max_distance", 128),
        layer_norm_epsilon=float(hf_config.get("layer_norm_epsilon", 1e-6)),
        name=str(hf_config.get("_name_or_path") or "hf_t5"),
    )
    fields.update(overrides)
    return T5Config(**fields)


class _Reader:
    """Pops keys from a state dict so that unused keys can be reported."""

    def __init__(self, state: Mapping[str, Any]):
        self.state = {k: np.asarray(v) for k, v in state.items()}
        self.used: set[str] = set()

    def take(self, key: str) -> np.ndarray:
        if key not in self.state:
            raise KeyError(f"Hugging Face checkpoint has no {key!r} (needed by the T5 config).")
        self.used.add(key)
        return self.state[key].astype(np.float32)

    def linear(self, key: str) -> dict[str, np.ndarray]:
        """`[out, in]` weight -> `{"kernel": [in, out]}`."""
        return {"kernel": np.ascontiguousarray(self.take(f"{key}.weight").T)}

    def scale(self, key: str) -> dict[str, np.ndarray]:
        return {"scale": self.take(f"{key}.weight")}

    def unused(self) -> list[str]:
        return sorted(set(self.state) - self.used - set(_REDUNDANT_KEYS))


def _attention(r: _Reader, prefix: str) -> dict[str, Any]:
    names = {"q": "query", "k": "key", "v": "value", "o": "out"}
    return {ours: r.linear(f"{prefix}.{hf}") for hf, ours in names.items()}


def _mlp(r: _Reader, prefix: str, config: T5Config) -> dict[str, Any]:
    if len(config.mlp_activations) == 1:
        tree = {"wi": r.linear(f"{prefix}.wi")}
    else:
        tree = {f"wi_{i}": r.linear(f"{prefix}.wi_{i}") for i in range(len(config.mlp_activations))}
    tree["wo"] = r.linear(f"{prefix}.wo")
    return tree


def _relpos(r: _Reader, stack: str, config: T5Config) -> dict[str, Any]:
    key = f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
    table = r.take(key)
    expected = (config.relative_attention_num_buckets, config.num_heads)
    if table.shape != expected:
        raise ValueError(f"{key} has shape {table.shape}; the config expects {expected}.")
    return {"rel_embedding": np.ascontiguousarray(table.T)}


def convert_hf_state_dict(state: Mapping[str, Any], config: T5Config) -> dict[str, Any]:
    """Hugging Face `T5ForConditionalGeneration` state dict -> our parameter tree.

    Args:
      state: parameter name -> array (numpy, or anything `np.asarray` accepts).
      config: the matching `T5Config` (see `config_from_hf`).

    Returns:
      Nested dict of float32 numpy arrays with T5X's names and shapes.

    Raises:
      KeyError: a parameter the config needs is missing.
      ValueError: a parameter has the wrong shape, or the checkpoint holds
        parameters this config would not use (wrong config).
    """
    r = _Reader(state)
    embedding = r.take("shared.weight")
    if embedding.shape != (config.vocab_size, config.emb_dim):
        raise ValueError(
            f"shared.weight has shape {embedding.shape}; the config expects "
            f"{(config.vocab_size, config.emb_dim)} ([vocab, emb_dim])."
        )
    encoder: dict[str, Any] = {"relpos_bias": _relpos(r, "encoder", config)}
    for i in range(config.num_encoder_layers):
        p = f"encoder.block.{i}.layer"
        encoder[f"layers_{i}"] = {
            "pre_attention_layer_norm": r.scale(f"{p}.0.layer_norm"),
            "attention": _attention(r, f"{p}.0.SelfAttention"),
            "pre_mlp_layer_norm": r.scale(f"{p}.1.layer_norm"),
            "mlp": _mlp(r, f"{p}.1.DenseReluDense", config),
        }
    encoder["encoder_norm"] = r.scale("encoder.final_layer_norm")

    decoder: dict[str, Any] = {"relpos_bias": _relpos(r, "decoder", config)}
    for i in range(config.num_decoder_layers):
        p = f"decoder.block.{i}.layer"
        decoder[f"layers_{i}"] = {
            "pre_self_attention_layer_norm": r.scale(f"{p}.0.layer_norm"),
            "self_attention": _attention(r, f"{p}.0.SelfAttention"),
            "pre_cross_attention_layer_norm": r.scale(f"{p}.1.layer_norm"),
            "encoder_decoder_attention": _attention(r, f"{p}.1.EncDecAttention"),
            "pre_mlp_layer_norm": r.scale(f"{p}.2.layer_norm"),
            "mlp": _mlp(r, f"{p}.2.DenseReluDense", config),
        }
    decoder["decoder_norm"] = r.scale("decoder.final_layer_norm")

    if config.logits_via_embedding:
        if "lm_head.weight" in r.state:
            head = r.take("lm_head.weight")
            if not np.array_equal(head, embedding):
                raise ValueError(
                    "The config ties the output layer to the embedding (logits_via_embedding="
                    "True) but lm_head.weight differs from shared.weight; use an untied config."
                )
    else:
        head = r.take("lm_head.weight") if "lm_head.weight" in r.state else embedding
        decoder["logits_dense"] = {"kernel": np.ascontiguousarray(head.T)}

    unused = r.unused()
    if unused:
        raise ValueError(
            f"{len(unused)} checkpoint parameters do not fit the config (e.g. more layers than "
            f"configured): {unused[:8]}{' …' if len(unused) > 8 else ''}"
        )
    return {"token_embedder": {"embedding": embedding}, "encoder": encoder, "decoder": decoder}


def read_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """All tensors of a `.safetensors` file, or of every `*.safetensors` shard in a directory."""
    from safetensors.numpy import load_file

    path = Path(path)
    files = sorted(path.glob("*.safetensors")) if path.is_dir() else [path]
    if not files or not all(f.is_file() for f in files):
        raise FileNotFoundError(f"No .safetensors file at {str(path)!r}.")
    state: dict[str, np.ndarray] = {}
    for f in files:
        state.update(load_file(str(f)))
    return state


def load_hf_checkpoint(path: str | os.PathLike, config: T5Config | None = None) -> dict[str, Any]:
    """Read a Hugging Face T5 safetensors checkpoint (file or directory) into our tree.

    Args:
      path: a `.safetensors` file, or a directory with shards (and `config.json`).
      config: the matching `T5Config`; read from `<dir>/config.json` when None.

    Returns:
      The parameter tree (nested dict of float32 numpy arrays).
    """
    if config is None:
        if not Path(path).is_dir():
            raise ValueError("Pass config= when loading a single .safetensors file.")
        config = config_from_hf(path)
    return convert_hf_state_dict(read_safetensors(path), config)
