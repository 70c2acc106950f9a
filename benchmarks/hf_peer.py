"""Hugging Face PEFT's MPT model built as T5 1.1 from *our* weights, and the same-loss check.

A fair peer has the same model and the same starting point. ``peft_from_ours`` builds
``transformers.T5ForConditionalGeneration`` as T5 1.1 (gated GELU, an output layer of
its own: transformers 5 ties ``lm_head`` to ``shared`` even with
``tie_word_embeddings=False``, so ``lm_head`` gets its own ``Parameter``, as
``tests/test_hf_parity.py`` does), loads our random backbone into it, wraps it with
PEFT's ``MultitaskPromptTuningConfig`` and copies our MPT prompt into PEFT's prompt
encoder. :func:`hf_state_dict` is the inverse of the project's tested converter
(``mpt_jax.backbone.hf_import.convert_hf_state_dict``) and is checked against it on
every call: converting its output back must give our tree bit for bit.

:func:`same_start` then runs both models without dropout on one batch and returns the
loss of each and the largest logit difference; ``bench_peft`` refuses to time unless
they agree within :data:`TOLERANCE`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from benchmarks import common
from mpt_jax import training
from mpt_jax.backbone import T5Config
from mpt_jax.backbone.hf_import import config_from_hf, convert_hf_state_dict

#: Largest |loss difference| and |logit difference| (float32) accepted before timing.
TOLERANCE = 1e-4

_ATTENTION = {"q": "query", "k": "key", "v": "value", "o": "out"}


def hf_config_of(config: T5Config):
    """The ``transformers.T5Config`` of our T5 1.1 ``config`` (checked by converting back)."""
    from transformers import T5Config as HFConfig

    if config.logits_via_embedding or config.mlp_activations != ("gelu", "linear"):
        raise ValueError(
            "hf_peer builds T5 1.1 (gated GELU, untied output layer); got "
            f"mlp_activations={config.mlp_activations}, "
            f"logits_via_embedding={config.logits_via_embedding}"
        )
    hf = HFConfig(
        vocab_size=config.vocab_size,
        d_model=config.emb_dim,
        d_kv=config.head_dim,
        d_ff=config.mlp_dim,
        num_layers=config.num_encoder_layers,
        num_decoder_layers=config.num_decoder_layers,
        num_heads=config.num_heads,
        relative_attention_num_buckets=config.relative_attention_num_buckets,
        relative_attention_max_distance=config.relative_attention_max_distance,
        dropout_rate=config.dropout_rate,
        layer_norm_epsilon=config.layer_norm_epsilon,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    back = config_from_hf(hf, dtype=config.dtype, name=config.name)
    if back.replace(remat_policy=config.remat_policy) != config:
        raise AssertionError(f"HF config does not convert back: {back} != {config}")
    return hf


def hf_state_dict(backbone: Mapping[str, Any], config: T5Config) -> dict[str, np.ndarray]:
    """Our backbone tree -> a Hugging Face T5 1.1 state dict (``[out, in]`` weights).

    The inverse of ``convert_hf_state_dict``; raises if converting the result back does
    not give ``backbone`` exactly.
    """
    bb = jax.tree.map(np.asarray, dict(backbone))
    sd: dict[str, np.ndarray] = {"shared.weight": bb["token_embedder"]["embedding"]}

    def put_attention(prefix: str, tree) -> None:
        for hf, ours in _ATTENTION.items():
            sd[f"{prefix}.{hf}.weight"] = tree[ours]["kernel"].T

    def put_mlp(prefix: str, tree) -> None:
        for name, dense in tree.items():
            sd[f"{prefix}.{name}.weight"] = dense["kernel"].T

    for stack in ("encoder", "decoder"):
        rel = bb[stack]["relpos_bias"]["rel_embedding"].T
        sd[f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"] = rel
    for i in range(config.num_encoder_layers):
        layer, p = bb["encoder"][f"layers_{i}"], f"encoder.block.{i}.layer"
        sd[f"{p}.0.layer_norm.weight"] = layer["pre_attention_layer_norm"]["scale"]
        put_attention(f"{p}.0.SelfAttention", layer["attention"])
        sd[f"{p}.1.layer_norm.weight"] = layer["pre_mlp_layer_norm"]["scale"]
        put_mlp(f"{p}.1.DenseReluDense", layer["mlp"])
    sd["encoder.final_layer_norm.weight"] = bb["encoder"]["encoder_norm"]["scale"]
    for i in range(config.num_decoder_layers):
        layer, p = bb["decoder"][f"layers_{i}"], f"decoder.block.{i}.layer"
        sd[f"{p}.0.layer_norm.weight"] = layer["pre_self_attention_layer_norm"]["scale"]
        put_attention(f"{p}.0.SelfAttention", layer["self_attention"])
        sd[f"{p}.1.layer_norm.weight"] = layer["pre_cross_attention_layer_norm"]["scale"]
        put_attention(f"{p}.1.EncDecAttention", layer["encoder_decoder_attention"])
        sd[f"{p}.2.layer_norm.weight"] = layer["pre_mlp_layer_norm"]["scale"]
        put_mlp(f"{p}.2.DenseReluDense", layer["mlp"])
    sd["decoder.final_layer_norm.weight"] = bb["decoder"]["decoder_norm"]["scale"]
    sd["lm_head.weight"] = bb["decoder"]["logits_dense"]["kernel"].T
    sd = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in sd.items()}

    back = convert_hf_state_dict(sd, config)
    jax.tree.map(np.testing.assert_array_equal, back, bb)  # same keys, same values
    return sd


def peft_from_ours(config: T5Config, params: Mapping[str, Any], w, *, device: str = "cpu"):
    """PEFT's MPT model holding our backbone and our MPT prompt, in train mode.

    Args:
      config: our backbone config (T5 1.1; its ``dropout_rate`` is the HF model's).
      params: a ``PromptedT5`` tree with a ``MultitaskPrompt`` under ``"prompt"``.
      w: the workload (prompt length, tasks, rank).
      device: torch device.

    Returns:
      The ``PeftModel`` (only the prompt requires gradients).
    """
    import torch
    from peft import MultitaskPromptTuningConfig, get_peft_model
    from transformers import T5ForConditionalGeneration

    prompt, backbone = training.split_params(dict(params))
    sd = {k: torch.from_numpy(v.copy()) for k, v in hf_state_dict(backbone, config).items()}
    try:  # every weight is loaded below: skip HF's random init (seconds at `small`)
        from transformers.initialization import no_init_weights
    except ImportError:  # transformers < 5
        from transformers.modeling_utils import no_init_weights
    with no_init_weights():
        base = T5ForConditionalGeneration(hf_config_of(config))
    # transformers >= 5 ties lm_head to `shared` in memory; give it its own weights
    # (the project's way, tests/test_hf_parity.py).
    base.lm_head.weight = torch.nn.Parameter(sd["lm_head.weight"].clone())
    for name in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight"):
        sd[name] = sd["shared.weight"]  # tied to `shared` in HF's state dict
    missing, unexpected = base.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise ValueError(f"HF state dict mismatch: missing {missing}, unexpected {unexpected}")
    if base.lm_head.weight.data_ptr() == base.shared.weight.data_ptr():
        raise AssertionError("lm_head is still tied to shared")
    peft_config = MultitaskPromptTuningConfig(
        num_virtual_tokens=w.prompt_length,
        num_tasks=w.num_tasks,
        num_ranks=w.rank,
        num_transformer_submodules=1,
        task_type="SEQ_2_SEQ_LM",
    )
    model = get_peft_model(base, peft_config)
    encoder = model.prompt_encoder["default"]
    with torch.no_grad():
        encoder.embedding.weight.copy_(torch.from_numpy(np.array(prompt["shared"])))
        encoder.prefix_task_cols.copy_(torch.from_numpy(np.array(prompt["task_cols"])))
        encoder.prefix_task_rows.copy_(torch.from_numpy(np.array(prompt["task_rows"])))
    return model.to(device).train()


def torch_batch(batch: Mapping[str, np.ndarray], device: str = "cpu") -> dict[str, Any]:
    """Our batch as PEFT's keyword arguments (labels = our targets; HF shifts them right)."""
    import torch

    enc = batch["encoder_input_tokens"]
    tensors = {
        "input_ids": torch.as_tensor(enc, dtype=torch.long),
        "attention_mask": torch.as_tensor(enc > 0, dtype=torch.long),
        "labels": torch.as_tensor(batch["decoder_target_tokens"], dtype=torch.long),
        "task_ids": torch.as_tensor(batch["task_ids"], dtype=torch.long),
    }
    return {k: v.to(device) for k, v in tensors.items()}


def same_start(model, params, peft_model, batch: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Both sides' loss and logits without dropout on ``batch`` (float32 is compared).

    Ours runs through our eval step (``training.make_eval_step``) and ``PromptedT5``;
    PEFT's model in ``eval()`` mode (restored to train mode afterwards). Both use full
    float32 matmuls here (no TF32 on a GPU), whatever the timed steps use.

    Returns:
      ``ours_loss``, ``peft_loss``, ``abs_loss_diff``, ``max_abs_logit_diff``,
      ``logit_std`` (of PEFT's logits: a sane T5 1.1 start has std ≈ 1, not ≈ 16).
    """
    import torch

    ours_loss, ours_logits = common.ours_loss_and_logits(model, params, batch)
    device = next(peft_model.parameters()).device
    tf32 = torch.backends.cuda.matmul.allow_tf32
    peft_model.eval()
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.no_grad():
            out = peft_model(**torch_batch(batch, str(device)))
    finally:
        peft_model.train()
        torch.backends.cuda.matmul.allow_tf32 = tf32
    theirs = out.logits.float().cpu().numpy()
    ours_logits = np.asarray(ours_logits, dtype=np.float32)
    return {
        "ours_loss": float(ours_loss),
        "peft_loss": float(out.loss),
        "abs_loss_diff": abs(float(ours_loss) - float(out.loss)),
        "max_abs_logit_diff": float(np.abs(ours_logits - theirs).max()),
        "logit_std": float(theirs.std()),
    }


def check_same_start(check: Mapping[str, float], tolerance: float = TOLERANCE) -> None:
    """Raise unless both sides start at the same loss and logits (within ``tolerance``)."""
    if not (check["abs_loss_diff"] <= tolerance and check["max_abs_logit_diff"] <= tolerance):
        raise RuntimeError(
            "ours and PEFT do not start at the same loss on the same weights "
            f"(tolerance {tolerance}): {dict(check)}; refusing to time different models"
        )
