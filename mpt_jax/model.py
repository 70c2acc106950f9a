"""`PromptedT5`: the frozen T5 backbone with a prompt generator on the encoder input.

The prompt `[batch, L, embed]` is prepended to the embedded encoder tokens
`[batch, S, embed]`; the encoder self-attention mask and the decoder's
encoder-attention mask are extended by `L` always-valid positions (token
padding stays masked). The parameter tree is the backbone's T5X tree plus the
generator's subtree `prompt/...`.

A generator may also change the embedded inputs: when it returns
`GeneratorOutput(prompt, input_delta)` (DePT's low-rank offset, for instance),
`input_delta [batch, S, embed]` is added to the embedded tokens before the prompt is
prepended. The model knows no generator by name.

The module speaks T5X's `EncoderDecoderModel` protocol (`__call__`, `encode`,
`decode`) with an extra `task_ids [batch]` argument wherever the prompt is
computed. gin::

    PromptedT5.config = @get_config()
    get_config.name = "t5_1_1_base"
    PromptedT5.prompt = @prompts.MultitaskPrompt()
"""

from __future__ import annotations

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp

from mpt_jax.backbone.t5 import T5
from mpt_jax.prompts.generators import as_output

Array = jax.Array


def refuse_packing(*segment_ids: Array | None) -> None:
    """Raises ``ValueError`` if any segment ids are given: a packed row holds several
    examples but a prompt is one per row. (Used by every prompted encoder.)"""
    if any(s is not None for s in segment_ids):
        raise ValueError(
            "Packed inputs (segment ids) are not supported with a prompt: a packed row "
            "holds several examples but gets a single prompt. Disable packing (pack=False "
            "in the feature converter, or in T5X's DatasetConfig)."
        )


@gin.configurable
class PromptedT5(T5):
    """T5 with a prompt generator (`prompt`, may be None for the plain backbone).

    Attributes:
      config: the backbone's `T5Config`.
      prompt: a generator `(task_ids [batch], embedded [batch, S, embed],
        input_mask [batch, S]) -> prompt [batch, L, embed]` (or
        `GeneratorOutput(prompt, input_delta [batch, S, embed])`) with a static
        `prompt_length`, or None (then `task_ids` are ignored).
    """

    prompt: nn.Module | None = None

    @property
    def prompt_length(self) -> int:
        """Number of prompt positions `L` prepended to the encoder input (0 without a prompt)."""
        return 0 if self.prompt is None else int(self.prompt.prompt_length)

    def _refuse_packing(self, *segment_ids: Array | None) -> None:
        if self.prompt is not None:
            refuse_packing(*segment_ids)

    def _encoder_mask(self, encoder_input_tokens: Array) -> Array:
        """`[batch, L + S]` validity mask: prompt positions, then token padding."""
        token_mask = encoder_input_tokens > 0
        if self.prompt is None:
            return token_mask
        prompt_mask = jnp.ones((token_mask.shape[0], self.prompt_length), dtype=bool)
        return jnp.concatenate([prompt_mask, token_mask], axis=1)

    def encode(
        self,
        encoder_input_tokens: Array,
        task_ids: Array | None = None,
        encoder_segment_ids: Array | None = None,
        *,
        enable_dropout: bool = True,
    ) -> Array:
        """Encode prompt + tokens.

        Args:
          encoder_input_tokens: `[batch, S]` int, 0 = padding.
          task_ids: `[batch]` int32 task of each example (required with a prompt).
          encoder_segment_ids: packing segments; refused with a prompt.
          enable_dropout: apply dropout.

        Returns:
          `[batch, L + S, embed]` encodings, zero at padded token positions.
        """
        self._refuse_packing(encoder_segment_ids)
        embedded = self.embed(encoder_input_tokens)
        if self.prompt is not None:
            if task_ids is None:
                raise ValueError("task_ids [batch] are required when the model has a prompt.")
            prompt, input_delta = as_output(
                self.prompt(task_ids, embedded, encoder_input_tokens > 0)
            )
            expected = (embedded.shape[0], self.prompt_length, embedded.shape[2])
            if prompt.shape != expected:
                raise ValueError(
                    f"The prompt generator returned shape {prompt.shape}; expected {expected} "
                    "([batch, prompt_length, embed])."
                )
            if input_delta is not None:
                if input_delta.shape != embedded.shape:
                    raise ValueError(
                        f"The prompt generator returned an input_delta of shape "
                        f"{input_delta.shape}; expected the embedded inputs' {embedded.shape}."
                    )
                embedded = embedded + input_delta.astype(embedded.dtype)
            embedded = jnp.concatenate([prompt.astype(embedded.dtype), embedded], axis=1)
        return self.encode_from_embeddings(
            embedded,
            self._encoder_mask(encoder_input_tokens),
            encoder_segment_ids,
            enable_dropout=enable_dropout,
        )

    def _decode_with_hidden(
        self,
        encoded: Array,
        encoder_input_tokens: Array,
        decoder_input_tokens: Array,
        decoder_target_tokens: Array | None,
        encoder_segment_ids: Array | None,
        decoder_segment_ids: Array | None,
        *,
        enable_dropout: bool,
        decode: bool,
        max_decode_length: int | None,
    ) -> tuple[Array, Array]:
        self._refuse_packing(encoder_segment_ids, decoder_segment_ids)
        encoder_mask = self._encoder_mask(encoder_input_tokens)
        if encoded.shape[1] != encoder_mask.shape[1]:
            raise ValueError(
                f"encoded has length {encoded.shape[1]} but prompt_length {self.prompt_length} "
                f"+ encoder_input_tokens length {encoder_input_tokens.shape[1]} = "
                f"{encoder_mask.shape[1]}; pass the output of PromptedT5.encode."
            )
        return self.decode_from_encoded(
            encoded,
            encoder_mask,
            decoder_input_tokens,
            decoder_target_tokens,
            encoder_segment_ids,
            decoder_segment_ids,
            enable_dropout=enable_dropout,
            decode=decode,
            max_decode_length=max_decode_length,
        )

    def decode(
        self,
        encoded: Array,
        encoder_input_tokens: Array,
        decoder_input_tokens: Array,
        decoder_target_tokens: Array | None,
        encoder_segment_ids: Array | None = None,
        decoder_segment_ids: Array | None = None,
        decoder_positions: Array | None = None,
        *,
        enable_dropout: bool = True,
        decode: bool = False,
        max_decode_length: int | None = None,
    ) -> Array:
        """Decoder logits `[batch, T, vocab]` given `encoded` `[batch, L + S, embed]`.

        `encoder_input_tokens` `[batch, S]` give the padding mask; the `L`
        prompt positions are always attended. With `decode=True` the decoder
        runs one position per call against the key/value cache (create it with
        a first call on full-length `[batch, max_decode_length]` inputs).
        `decoder_positions` does not change the result (relative positions).
        """
        del decoder_positions
        logits, _ = self._decode_with_hidden(
            encoded,
            encoder_input_tokens,
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
        task_ids: Array | None = None,
        encoder_segment_ids: Array | None = None,
        decoder_segment_ids: Array | None = None,
        encoder_positions: Array | None = None,
        decoder_positions: Array | None = None,
        *,
        enable_dropout: bool = True,
        decode: bool = False,
        max_decode_length: int | None = None,
    ) -> Array:
        """Teacher-forced logits `[batch, T, vocab]`.

        Args:
          encoder_input_tokens: `[batch, S]`.
          decoder_input_tokens: `[batch, T]` (targets shifted right, 0 first).
          decoder_target_tokens: `[batch, T]`; 0 = padding.
          task_ids: `[batch]` int32.
          encoder_segment_ids, decoder_segment_ids: packing; refused with a prompt.
          encoder_positions, decoder_positions: accepted for T5X's protocol;
            relative attention makes them unnecessary.
          enable_dropout: apply dropout.
          decode: create/use the autoregressive cache.
          max_decode_length: cache length when `decode=True`.
        """
        del encoder_positions, decoder_positions
        encoded = self.encode(
            encoder_input_tokens, task_ids, encoder_segment_ids, enable_dropout=enable_dropout
        )
        return self.decode(
            encoded,
            encoder_input_tokens,
            decoder_input_tokens,
            decoder_target_tokens,
            encoder_segment_ids,
            decoder_segment_ids,
            enable_dropout=enable_dropout,
            decode=decode,
            max_decode_length=max_decode_length,
        )

    def forward_with_hidden(
        self,
        encoder_input_tokens: Array,
        decoder_input_tokens: Array,
        decoder_target_tokens: Array,
        task_ids: Array | None = None,
        *,
        enable_dropout: bool = True,
    ) -> tuple[Array, dict[str, Array]]:
        """Logits and hidden states for distillation.

        Returns:
          `(logits [batch, T, vocab], {"encoder": [batch, S, embed],
          "decoder": [batch, T, embed]})`: the encoder output at the input token
          positions (prompt positions dropped, padding zero) and the final
          normalised decoder state.
        """
        encoded = self.encode(encoder_input_tokens, task_ids, enable_dropout=enable_dropout)
        logits, decoder_hidden = self._decode_with_hidden(
            encoded,
            encoder_input_tokens,
            decoder_input_tokens,
            decoder_target_tokens,
            None,
            None,
            enable_dropout=enable_dropout,
            decode=False,
            max_decode_length=None,
        )
        hidden = {"encoder": encoded[:, self.prompt_length :], "decoder": decoder_hidden}
        return logits, hidden
