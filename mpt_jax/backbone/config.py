"""T5 hyperparameters and the named sizes of the public T5 checkpoints.

`T5Config` is a frozen (hashable) dataclass, so it can be a field of a Flax
module and a static argument of `jax.jit`. Field names follow T5X's minimal T5
(`emb_dim`, `num_heads`, `head_dim`, `mlp_dim`, ...).

Gin example::

    PromptedT5.config = @get_config()
    get_config.name = "t5_1_1_base"
    get_config.overrides = {"dropout_rate": 0.0, "dtype": "bfloat16"}
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import gin
import jax.numpy as jnp

#: Activation functions an MLP block may use, by name (T5X spelling).
ACTIVATIONS = ("relu", "gelu", "gelu_exact", "silu", "linear")
#: Rematerialisation policies for one encoder/decoder layer.
REMAT_POLICIES = ("none", "dots", "full")
#: Dtypes the matmul operands may take; parameters are always stored in float32.
DTYPES = ("float32", "bfloat16")


@gin.register
@dataclasses.dataclass(frozen=True)
class T5Config:
    """Hyperparameters of a T5 encoder-decoder.

    Attributes:
      vocab_size: number of rows of `token_embedder/embedding`.
      emb_dim: model width (Hugging Face `d_model`).
      num_heads: attention heads per layer.
      head_dim: width of one head (Hugging Face `d_kv`); `num_heads * head_dim`
        need not equal `emb_dim`.
      mlp_dim: hidden width of the MLP block (Hugging Face `d_ff`).
      num_encoder_layers: encoder depth.
      num_decoder_layers: decoder depth.
      mlp_activations: one activation per input projection; two or more give a
        gated MLP whose projections are named `wi_0`, `wi_1`, ... (T5 1.1:
        `("gelu", "linear")`), one gives a single projection `wi` (T5 1.0:
        `("relu",)`).
      logits_via_embedding: tie the output layer to the token embedding and
        scale the decoder output by `emb_dim ** -0.5` first (T5 1.0). When
        False the decoder owns `decoder/logits_dense/kernel` (T5 1.1).
      dropout_rate: dropout after embeddings, attention probabilities, MLP
        hidden units and every residual branch.
      relative_attention_num_buckets: buckets of the relative position bias.
      relative_attention_max_distance: distance beyond which buckets saturate.
      layer_norm_epsilon: epsilon of the RMS norm.
      dtype: dtype of the matmul operands, `"float32"` or `"bfloat16"`. In
        bfloat16 mode matmuls take bfloat16 inputs and accumulate and return
        float32; norms, softmax and the residual stream stay float32.
      remat_policy: per-layer rematerialisation: `"none"`, `"dots"` (save the
        matmul outputs, recompute the elementwise work) or `"full"` (save only
        the layer inputs).
      one_hot_embedding: embed by a one-hot matmul (fast on TPU) instead of a
        gather (fast on CPU/GPU). Numerically identical.
      name: label of the named size this config came from (informational).
    """

    vocab_size: int = 32128
    emb_dim: int = 512
    num_heads: int = 6
    head_dim: int = 64
    mlp_dim: int = 1024
    num_encoder_layers: int = 8
    num_decoder_layers: int = 8
    mlp_activations: tuple[str, ...] = ("gelu", "linear")
    logits_via_embedding: bool = False
    dropout_rate: float = 0.1
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    layer_norm_epsilon: float = 1e-6
    dtype: str = "float32"
    remat_policy: str = "none"
    one_hot_embedding: bool = False
    name: str = "custom"

    def __post_init__(self):
        positive = (
            "vocab_size",
            "emb_dim",
            "num_heads",
            "head_dim",
            "mlp_dim",
            "num_encoder_layers",
            "num_decoder_layers",
            "relative_attention_num_buckets",
            "relative_attention_max_distance",
        )
        for field in positive:
            value = getattr(self, field)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"T5Config.{field} must be a positive int, got {value!r}.")
        # Lists from gin or JSON become tuples so the config stays hashable.
        object.__setattr__(self, "mlp_activations", tuple(self.mlp_activations))
        if not self.mlp_activations:
            raise ValueError("T5Config.mlp_activations must name at least one activation.")
        for act in self.mlp_activations:
            if act not in ACTIVATIONS:
                raise ValueError(f"Unknown activation {act!r}; allowed: {ACTIVATIONS}.")
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ValueError(f"T5Config.dropout_rate must be in [0, 1), got {self.dropout_rate}.")
        if self.relative_attention_num_buckets < 4:
            raise ValueError(
                "T5Config.relative_attention_num_buckets must be >= 4, got "
                f"{self.relative_attention_num_buckets}."
            )
        if self.dtype not in DTYPES:
            raise ValueError(f"T5Config.dtype must be one of {DTYPES}, got {self.dtype!r}.")
        if self.remat_policy not in REMAT_POLICIES:
            raise ValueError(
                f"T5Config.remat_policy must be one of {REMAT_POLICIES}, got {self.remat_policy!r}."
            )

    @property
    def compute_dtype(self) -> jnp.dtype:
        """The jnp dtype of matmul operands."""
        return jnp.dtype(self.dtype)

    def replace(self, **changes: Any) -> T5Config:
        """A copy with `changes` applied (validated like a fresh config)."""
        return dataclasses.replace(self, **changes)


def _t5_1_1(name: str, **sizes: int) -> T5Config:
    return T5Config(name=name, mlp_activations=("gelu", "linear"), **sizes)


def _t5_1_0(name: str, **sizes: int) -> T5Config:
    return T5Config(name=name, mlp_activations=("relu",), logits_via_embedding=True, **sizes)


_T5_1_1_SIZES: dict[str, dict[str, int]] = {
    # Public T5 1.1 checkpoints (google/t5-v1_1-*); mT5 and Flan-T5 share them.
    "small": dict(emb_dim=512, num_heads=6, head_dim=64, mlp_dim=1024, num_encoder_layers=8,
                  num_decoder_layers=8),
    "base": dict(emb_dim=768, num_heads=12, head_dim=64, mlp_dim=2048, num_encoder_layers=12,
                 num_decoder_layers=12),
    "large": dict(emb_dim=1024, num_heads=16, head_dim=64, mlp_dim=2816, num_encoder_layers=24,
                  num_decoder_layers=24),
    "xl": dict(emb_dim=2048, num_heads=32, head_dim=64, mlp_dim=5120, num_encoder_layers=24,
               num_decoder_layers=24),
    "xxl": dict(emb_dim=4096, num_heads=64, head_dim=64, mlp_dim=10240, num_encoder_layers=24,
                num_decoder_layers=24),
}  # fmt: skip

_T5_1_0_SIZES: dict[str, dict[str, int]] = {
    # Original T5 (t5-small, t5-base, t5-large).
    "small": dict(emb_dim=512, num_heads=8, head_dim=64, mlp_dim=2048, num_encoder_layers=6,
                  num_decoder_layers=6),
    "base": dict(emb_dim=768, num_heads=12, head_dim=64, mlp_dim=3072, num_encoder_layers=12,
                 num_decoder_layers=12),
    "large": dict(emb_dim=1024, num_heads=16, head_dim=64, mlp_dim=4096, num_encoder_layers=24,
                  num_decoder_layers=24),
}  # fmt: skip

T5_VOCAB_SIZE = 32128
MT5_VOCAB_SIZE = 250112


def _named_configs() -> dict[str, T5Config]:
    configs = {
        # Test size: every code path, milliseconds per step.
        "tiny": _t5_1_1(
            "tiny",
            vocab_size=128,
            emb_dim=32,
            num_heads=4,
            head_dim=8,
            mlp_dim=64,
            num_encoder_layers=2,
            num_decoder_layers=2,
        ),
        "tiny_t5_1_0": _t5_1_0(
            "tiny_t5_1_0",
            vocab_size=128,
            emb_dim=32,
            num_heads=4,
            head_dim=8,
            mlp_dim=64,
            num_encoder_layers=2,
            num_decoder_layers=2,
        ),
        # Demo size: trains in minutes on two CPU cores, real vocabulary.
        "mini": _t5_1_1(
            "mini",
            vocab_size=T5_VOCAB_SIZE,
            emb_dim=256,
            num_heads=4,
            head_dim=64,
            mlp_dim=512,
            num_encoder_layers=4,
            num_decoder_layers=4,
        ),
    }
    for size, dims in _T5_1_1_SIZES.items():
        configs[size] = _t5_1_1(size, vocab_size=T5_VOCAB_SIZE, **dims)
        configs[f"t5_1_1_{size}"] = _t5_1_1(f"t5_1_1_{size}", vocab_size=T5_VOCAB_SIZE, **dims)
        configs[f"mt5_{size}"] = _t5_1_1(f"mt5_{size}", vocab_size=MT5_VOCAB_SIZE, **dims)
        configs[f"flan_t5_{size}"] = _t5_1_1(f"flan_t5_{size}", vocab_size=T5_VOCAB_SIZE, **dims)
    for size, dims in _T5_1_0_SIZES.items():
        configs[f"t5_1_0_{size}"] = _t5_1_0(f"t5_1_0_{size}", vocab_size=T5_VOCAB_SIZE, **dims)
    return configs


NAMED_CONFIGS: Mapping[str, T5Config] = _named_configs()


@gin.configurable
def get_config(name: str = "small", overrides: Mapping[str, Any] | None = None) -> T5Config:
    """The named configuration, optionally with some fields replaced.

    Args:
      name: `tiny`, `tiny_t5_1_0`, `mini`, `small` … `xxl` (T5 1.1, also as
        `t5_1_1_<size>`), `t5_1_0_{small,base,large}`, `mt5_<size>`,
        `flan_t5_<size>`.
      overrides: fields to replace, e.g. `{"dropout_rate": 0.0, "dtype": "bfloat16"}`.

    Returns:
      The `T5Config`.
    """
    if name not in NAMED_CONFIGS:
        raise ValueError(f"Unknown T5 config name {name!r}; known: {sorted(NAMED_CONFIGS)}.")
    config = NAMED_CONFIGS[name]
    if overrides:
        unknown = set(overrides) - {f.name for f in dataclasses.fields(T5Config)}
        if unknown:
            raise ValueError(f"Unknown T5Config fields in overrides: {sorted(unknown)}.")
        config = config.replace(**dict(overrides))
    return config
