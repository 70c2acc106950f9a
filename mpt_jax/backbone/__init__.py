"""Frozen T5 backbone: configuration, Flax modules with T5X's tree, Hugging Face and T5X
checkpoint import."""

from mpt_jax.backbone.config import NAMED_CONFIGS, T5Config, get_config
from mpt_jax.backbone.hf_import import config_from_hf, convert_hf_state_dict, load_hf_checkpoint
from mpt_jax.backbone.t5 import T5
from mpt_jax.backbone.t5x_checkpoint import load_t5x_checkpoint

__all__ = [
    "NAMED_CONFIGS",
    "T5",
    "T5Config",
    "config_from_hf",
    "convert_hf_state_dict",
    "get_config",
    "load_hf_checkpoint",
    "load_t5x_checkpoint",
]
