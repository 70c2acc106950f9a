"""A compact T5 encoder-decoder whose parameter tree is T5X's.

Tree (T5 1.1; `E` = emb_dim, `J` = heads * head_dim, `M` = mlp_dim)::

    token_embedder/embedding                                  [vocab, E]
    encoder/relpos_bias/rel_embedding                         [heads, buckets]
    encoder/layers_{i}/pre_attention_layer_norm/scale         [E]
    encoder/layers_{i}/attention/{query,key,value}/kernel     [E, J]
    encoder/layers_{i}/attention/out/kernel                   [J, E]
    encoder/layers_{i}/pre_mlp_layer_norm/scale               [E]
    encoder/layers_{i}/mlp/{wi_0,wi_1}/kernel                 [E, M]   (T5 1.0: wi)
    encoder/layers_{i}/mlp/wo/kernel                          [M, E]
    encoder/encoder_norm/scale                                [E]
    decoder/relpos_bias/rel_embedding                         [heads, buckets]
    decoder/layers_{i}/{pre_self_attention_layer_norm, self_attention,
                        pre_cross_attention_layer_norm, encoder_decoder_attention,
                        pre_mlp_layer_norm, mlp}/...
    decoder/decoder_norm/scale                                [E]
    decoder/logits_dense/kernel                               [E, vocab] (untied only)

`T5` speaks T5X's module protocol (`__call__`, `encode`, `decode`); the lower
level `embed`, `encode_from_embeddings` and `decode_from_encoded` let a prompted
model inject prompt embeddings without a copy of this code.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from mpt_jax.backbone.config import T5Config
from mpt_jax.backbone.layers import (
    Dense,
    Embed,
    MlpBlock,
    MultiHeadAttention,
    RelativePositionBias,
    RmsNorm,
    attention_mask,
    causal_mask,
    mask_to_bias,
    segment_mask,
)

Array = jax.Array

_REMAT_POLICIES = {
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "full": jax.checkpoint_policies.nothing_saveable,
}


def _dropout(cfg: T5Config) -> nn.Dropout:
    # T5 shares the dropout pattern across the length axis.
    return nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))


class EncoderLayer(nn.Module):
    """Pre-norm self-attention + MLP, `[batch, length, embed] -> same`."""

    config: T5Config

    @nn.compact
    def __call__(self, x: Array, bias: Array, deterministic: bool) -> Array:
        cfg = self.config
        y = RmsNorm(cfg.layer_norm_epsilon, name="pre_attention_layer_norm")(x)
        y = MultiHeadAttention(
            cfg.num_heads, cfg.head_dim, cfg.dropout_rate, cfg.compute_dtype, name="attention"
        )(y, y, bias, deterministic=deterministic)
        x = x + _dropout(cfg)(y, deterministic=deterministic)
        y = RmsNorm(cfg.layer_norm_epsilon, name="pre_mlp_layer_norm")(x)
        y = MlpBlock(
            cfg.mlp_dim, cfg.mlp_activations, cfg.dropout_rate, cfg.compute_dtype, name="mlp"
        )(y, deterministic)
        return x + _dropout(cfg)(y, deterministic=deterministic)


class DecoderLayer(nn.Module):
    """Pre-norm causal self-attention, cross-attention and MLP."""

    config: T5Config

    @nn.compact
    def __call__(
        self,
        y: Array,
        encoded: Array,
        self_bias: Array | None,
        cross_bias: Array | None,
        deterministic: bool,
        decode: bool,
    ) -> Array:
        cfg = self.config
        dtype = cfg.compute_dtype
        z = RmsNorm(cfg.layer_norm_epsilon, name="pre_self_attention_layer_norm")(y)
        z = MultiHeadAttention(
            cfg.num_heads, cfg.head_dim, cfg.dropout_rate, dtype, name="self_attention"
        )(z, z, self_bias, decode=decode, deterministic=deterministic)
        y = y + _dropout(cfg)(z, deterministic=deterministic)
        z = RmsNorm(cfg.layer_norm_epsilon, name="pre_cross_attention_layer_norm")(y)
        z = MultiHeadAttention(
            cfg.num_heads,
            cfg.head_dim,
            cfg.dropout_rate,
            dtype,
            cross_attention=True,
            name="encoder_decoder_attention",
        )(z, encoded, cross_bias, decode=decode, deterministic=deterministic)
        y = y + _dropout(cfg)(z, deterministic=deterministic)
        z = RmsNorm(cfg.layer_norm_epsilon, name="pre_mlp_layer_norm")(y)
        z = MlpBlock(cfg.mlp_dim, cfg.mlp_activations, cfg.dropout_rate, dtype, name="mlp")(
            z, deterministic
        )
        return y + _dropout(cfg)(z, deterministic=deterministic)


def _maybe_remat(layer_cls: type[nn.Module], cfg: T5Config, static_argnums: tuple[int, ...]):
    if cfg.remat_policy == "none":
        return layer_cls
    return nn.remat(layer_cls, policy=_REMAT_POLICIES[cfg.remat_policy],
                    static_argnums=static_argnums)  # fmt: skip


class Encoder(nn.Module):
    """Encoder stack over embedded inputs `[batch, length, embed]`."""

    config: T5Config

    @nn.compact
    def __call__(self, embedded: Array, mask: Array, deterministic: bool) -> Array:
        """Encode.

        Args:
          embedded: `[batch, length, embed]` embedded inputs (prompt included).
          mask: `[batch, 1, length, length]` boolean self-attention mask.
          deterministic: disable dropout.

        Returns:
          `[batch, length, embed]` float32 (after the final norm and dropout).
        """
        cfg = self.config
        length = embedded.shape[1]
        relpos = RelativePositionBias(
            cfg.num_heads,
            cfg.relative_attention_num_buckets,
            cfg.relative_attention_max_distance,
            bidirectional=True,
            name="relpos_bias",
        )(length, length)
        bias = relpos + mask_to_bias(mask)  # [batch, heads, length, length]
        x = _dropout(cfg)(embedded.astype(jnp.float32), deterministic=deterministic)
        layer_cls = _maybe_remat(EncoderLayer, cfg, static_argnums=(3,))
        for i in range(cfg.num_encoder_layers):
            x = layer_cls(cfg, name=f"layers_{i}")(x, bias, deterministic)
        x = RmsNorm(cfg.layer_norm_epsilon, name="encoder_norm")(x)
        return _dropout(cfg)(x, deterministic=deterministic)


class Decoder(nn.Module):
    """Decoder stack with its output layer (tied or `logits_dense`)."""

    config: T5Config
    shared_embedding: nn.Module

    @nn.compact
    def __call__(
        self,
        encoded: Array,
        decoder_input_tokens: Array,
        self_mask: Array | None,
        cross_mask: Array,
        deterministic: bool,
        decode: bool = False,
        max_decode_length: int | None = None,
    ) -> tuple[Array, Array]:
        """Decode.

        Args:
          encoded: `[batch, enc_length, embed]` encoder outputs.
          decoder_input_tokens: `[batch, length]` (length 1 in a cached step).
          self_mask: `[batch|1, 1, length, length]` boolean, or None in cached
            decoding (the cache applies causality).
          cross_mask: `[batch, 1, length, enc_length]` boolean.
          deterministic: disable dropout.
          decode: use the autoregressive cache.
          max_decode_length: cache length; required to decode step by step.

        Returns:
          `(logits [batch, length, vocab], hidden [batch, length, embed])`, both
          float32; `hidden` is the final normalised decoder state.
        """
        cfg = self.config
        length = decoder_input_tokens.shape[1]
        bias_length = max_decode_length if decode and max_decode_length else length
        self_bias = RelativePositionBias(
            cfg.num_heads,
            cfg.relative_attention_num_buckets,
            cfg.relative_attention_max_distance,
            bidirectional=False,
            name="relpos_bias",
        )(bias_length, bias_length)
        if self_mask is not None:
            self_bias = self_bias + mask_to_bias(self_mask)
        cross_bias = mask_to_bias(cross_mask)

        y = self.shared_embedding(decoder_input_tokens)
        y = _dropout(cfg)(y, deterministic=deterministic)
        static = (5, 6)
        layer_cls = DecoderLayer if decode else _maybe_remat(DecoderLayer, cfg, static)
        for i in range(cfg.num_decoder_layers):
            y = layer_cls(cfg, name=f"layers_{i}")(
                y, encoded, self_bias, cross_bias, deterministic, decode
            )
        y = RmsNorm(cfg.layer_norm_epsilon, name="decoder_norm")(y)
        hidden = _dropout(cfg)(y, deterministic=deterministic)

        if cfg.logits_via_embedding:
            # T5 1.0: rescale before the tied output layer.
            logits = self.shared_embedding.attend(hidden * cfg.emb_dim**-0.5)
        else:
            logits = Dense(cfg.vocab_size, ("embed", "vocab"), cfg.compute_dtype,
                           name="logits_dense")(hidden)  # fmt: skip
        return logits, hidden


class T5(nn.Module):
    """T5 encoder-decoder (plain backbone) with T5X's module protocol."""

    config: T5Config

    def setup(self):
        cfg = self.config
        self.token_embedder = Embed(
            cfg.vocab_size, cfg.emb_dim, one_hot=cfg.one_hot_embedding, dtype=cfg.compute_dtype
        )
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg, shared_embedding=self.token_embedder)

    # -- building blocks -----------------------------------------------------

    def embed(self, tokens: Array) -> Array:
        """`[batch, length]` token ids -> `[batch, length, embed]` float32."""
        return self.token_embedder(tokens)

    def encode_from_embeddings(
        self,
        embedded: Array,
        mask: Array,
        segment_ids: Array | None = None,
        *,
        enable_dropout: bool = True,
    ) -> Array:
        """Encode already-embedded inputs (a prompt may be part of them).

        Args:
          embedded: `[batch, length, embed]`.
          mask: `[batch, length]`, 1/True for real (or prompt) positions.
          segment_ids: `[batch, length]` packing segments, or None.
          enable_dropout: apply dropout.

        Returns:
          `[batch, length, embed]` float32, zero at masked positions (as T5X).
        """
        self_mask = attention_mask(mask, mask)
        if segment_ids is not None:
            self_mask = jnp.logical_and(self_mask, segment_mask(segment_ids, segment_ids))
        encoded = self.encoder(embedded, self_mask, deterministic=not enable_dropout)
        return encoded * (mask > 0)[..., None].astype(encoded.dtype)

    def decode_from_encoded(
        self,
        encoded: Array,
        encoder_mask: Array,
        decoder_input_tokens: Array,
        decoder_target_tokens: Array | None,
        encoder_segment_ids: Array | None = None,
        decoder_segment_ids: Array | None = None,
        *,
        enable_dropout: bool = True,
        decode: bool = False,
        max_decode_length: int | None = None,
    ) -> tuple[Array, Array]:
        """Decoder logits and final hidden states given the encoder's key mask.

        Args:
          encoded: `[batch, enc_length, embed]`.
          encoder_mask: `[batch, enc_length]` valid encoder positions.
          decoder_input_tokens: `[batch, length]`.
          decoder_target_tokens: `[batch, length]`; its padding (0) masks query
            rows and keys as in T5X. Ignored when `decode=True`.
          encoder_segment_ids, decoder_segment_ids: packing segments or None.
          enable_dropout: apply dropout.
          decode: cached autoregressive decoding.
          max_decode_length: cache length for `decode=True`.

        Returns:
          `(logits [batch, length, vocab], hidden [batch, length, embed])`.
        """
        if decode:
            if encoder_segment_ids is not None or decoder_segment_ids is not None:
                raise ValueError("Packed (segmented) inputs cannot be decoded with a cache.")
            query_valid = jnp.ones(decoder_input_tokens.shape, dtype=bool)
            self_mask = None
        else:
            if decoder_target_tokens is None:
                raise ValueError("decoder_target_tokens is required when decode=False.")
            query_valid = decoder_target_tokens > 0
            length = decoder_target_tokens.shape[1]
            self_mask = jnp.logical_and(
                causal_mask(length), attention_mask(query_valid, query_valid)
            )
            if decoder_segment_ids is not None:
                seg = segment_mask(decoder_segment_ids, decoder_segment_ids)
                self_mask = jnp.logical_and(self_mask, seg)
        cross_mask = attention_mask(query_valid, encoder_mask)
        if encoder_segment_ids is not None:
            if decoder_segment_ids is None:
                raise ValueError("encoder_segment_ids given without decoder_segment_ids.")
            seg = segment_mask(decoder_segment_ids, encoder_segment_ids)
            cross_mask = jnp.logical_and(cross_mask, seg)
        return self.decoder(
            encoded,
            decoder_input_tokens,
            self_mask,
            cross_mask,
            deterministic=not enable_dropout,
            decode=decode,
            max_decode_length=max_decode_length,
        )

    # -- T5X module protocol ---------------------------------------------------

    def encode(
        self,
        encoder_input_tokens: Array,
        encoder_segment_ids: Array | None = None,
        *,
        enable_dropout: bool = True,
    ) -> Array:
        """`[batch, length]` tokens -> `[batch, length, embed]` encodings."""
        return self.encode_from_embeddings(
            self.embed(encoder_input_tokens),
            encoder_input_tokens > 0,
            encoder_segment_ids,
            enable_dropout=enable_dropout,
        )

    def decode(
        self,
        encoded: Array,
        encoder_input_tokens: Array,
        decoder_input_tokens: Array,
        decoder_target_tokens: Array,
        encoder_segment_ids: Array | None = None,
        decoder_segment_ids: Array | None = None,
        decoder_positions: Array | None = None,
        *,
        enable_dropout: bool = True,
        decode: bool = False,
        max_decode_length: int | None = None,
    ) -> Array:
        """Decoder logits `[batch, length, vocab]`.

        `encoder_input_tokens` are used for the padding mask only.
        `decoder_positions` is accepted for protocol compatibility; relative
        position biases depend on position differences only, which packing
        preserves within a segment, so it does not change the result.
        """
        del decoder_positions
        logits, _ = self.decode_from_encoded(
            encoded,
            encoder_input_tokens > 0,
            decoder_input_tokens,
            decoder_target_tokens,
            encoder_segment_ids,
            decoder_segment_ids,
            enable_dropout=enable_dropout,
            decode=decode,
            max_decode_length=max_decode_length,
        )
        return logits

    def __call__(
        self,
        encoder_input_tokens: Array,
        decoder_input_tokens: Array,
        decoder_target_tokens: Array,
        encoder_segment_ids: Array | None = None,
        decoder_segment_ids: Array | None = None,
        encoder_positions: Array | None = None,
        decoder_positions: Array | None = None,
        *,
        enable_dropout: bool = True,
        decode: bool = False,
        max_decode_length: int | None = None,
    ) -> Array:
        """Full forward pass: logits `[batch, target_length, vocab]`."""
        del encoder_positions  # relative positions: see `decode`.
        encoded = self.encode(
            encoder_input_tokens, encoder_segment_ids, enable_dropout=enable_dropout
        )
        return self.decode(
            encoded,
            encoder_input_tokens,
            decoder_input_tokens,
            decoder_target_tokens,
            encoder_segment_ids,
            decoder_segment_ids,
            decoder_positions,
            enable_dropout=enable_dropout,
            decode=decode,
            max_decode_length=max_decode_length,
        )
