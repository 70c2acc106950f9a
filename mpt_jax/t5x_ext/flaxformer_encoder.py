"""Flaxformer's T5 with an mpt_jax prompt generator on the encoder input (needs Flaxformer).

For users whose T5X stacks build Flaxformer's ``t5_architecture.EncoderDecoder``. Two
subclasses, each overriding as little as possible and calling Flaxformer's own method
for the rest (no Flaxformer method body is copied, so upstream changes flow through):

- :class:`PromptedEncoder` overrides only ``embed_and_combine_inputs``: it embeds the
  tokens with Flaxformer's method and prepends the prompt ``[batch, L, embed]``;
- :class:`PromptedEncoderDecoder` overrides ``encode``/``decode``/``__call__`` to take
  ``task_ids`` (so :class:`mpt_jax.t5x_ext.models.PromptedEncoderDecoderModel` routes
  them) and to hand Flaxformer's methods an encoder token array ``[batch, L + S]``
  with ``L`` non-zero prompt slots in front. Flaxformer then builds every mask from it
  unchanged: the encoder self-attention mask, the encoder output mask and the decoder's
  cross-attention mask all see the ``L`` prompt positions as valid and the token
  padding as padding.

The slot array is internal to the module: its slots hold ``task_id + 1`` (non-zero, so
"valid") and :class:`PromptedEncoder` reads the task id back from them. It never
appears in data, never touches the vocabulary, and the token ids themselves are never
altered. Packing (segment ids) is refused, as everywhere in mpt_jax.

The prompt's parameters live at ``encoder/prompt/...``; the backbone's tree is
Flaxformer's. gin: ``configs/architectures/flaxformer_t5_prompt.gin``.
"""

from __future__ import annotations

from typing import Any

from mpt_jax.t5x_ext import require

require("flaxformer")

import flax.linen as nn  # noqa: E402
import gin  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flaxformer.architectures.t5 import t5_architecture  # noqa: E402

from mpt_jax.backbone.config import get_config  # noqa: E402
from mpt_jax.model import refuse_packing as _refuse_packing  # noqa: E402
from mpt_jax.prompts.generators import as_output  # noqa: E402

Array = jax.Array


@gin.configurable(module="mpt_jax.t5x_ext.flaxformer_encoder")
def t5_size(name: str, field: str, overrides: dict[str, Any] | None = None) -> Any:
    """One field of mpt_jax's named T5 config, for Flaxformer's size macros in gin.

    ``t5_size("base", "num_heads")`` is 12; the sizes then match ``models/sizes/*.gin``
    for both architectures.
    """
    return getattr(get_config(name, overrides), field)


@gin.configurable(module="mpt_jax.t5x_ext.flaxformer_encoder")
class PromptedEncoder(t5_architecture.Encoder):
    """Flaxformer's T5 encoder with ``prompt`` prepended to the embedded tokens.

    Attributes:
      prompt: an mpt_jax prompt generator (``prompts.MultitaskPrompt`` …) with a static
        ``prompt_length``.

    Its inputs are the slot array of :class:`PromptedEncoderDecoder`:
    ``[batch, L + S]`` with ``task_id + 1`` in the first ``L`` columns.
    """

    prompt: nn.Module | None = None

    def embed_and_combine_inputs(
        self,
        inputs: Array,
        inputs_positions: Array | None = None,
        *,
        segment_ids: Array | None = None,
        enable_dropout: bool = True,
    ) -> Array:
        """``[batch, L + S, embed]``: the prompt, then Flaxformer's embedded tokens."""
        if self.prompt is None:
            raise ValueError("PromptedEncoder.prompt is not set; bind a prompt generator.")
        length = self.prompt.prompt_length
        slots, tokens = inputs[:, :length], inputs[:, length:]
        embedded = super().embed_and_combine_inputs(
            tokens, inputs_positions, segment_ids=segment_ids, enable_dropout=enable_dropout
        )
        prompt, input_delta = as_output(self.prompt(slots[:, 0] - 1, embedded, tokens > 0))
        if input_delta is not None:  # a generator that changes the inputs too (DePT)
            embedded = embedded + input_delta.astype(embedded.dtype)
        return jnp.concatenate([prompt.astype(embedded.dtype), embedded], axis=1)


@gin.configurable(module="mpt_jax.t5x_ext.flaxformer_encoder")
class PromptedEncoderDecoder(t5_architecture.EncoderDecoder):
    """Flaxformer's ``EncoderDecoder`` whose encoder is a :class:`PromptedEncoder`.

    Speaks the same protocol as ``mpt_jax.model.PromptedT5``: ``encode`` and
    ``__call__`` take ``task_ids [batch]``; ``decode`` takes ``encoded
    [batch, L + S, embed]`` and the raw ``encoder_input_tokens [batch, S]``.
    """

    @property
    def prompt_length(self) -> int:
        return int(self.encoder.prompt.prompt_length)

    def _with_prompt_slots(self, tokens: Array, task_ids: Array | None = None) -> Array:
        """``[batch, L + S]``: ``L`` slots (``task_id + 1``, or 1) then ``tokens``."""
        batch = tokens.shape[0]
        if task_ids is None:
            fill = jnp.ones((batch,), tokens.dtype)
        else:
            fill = jnp.asarray(task_ids).astype(tokens.dtype).reshape((batch,)) + 1
        slots = jnp.broadcast_to(fill[:, None], (batch, self.prompt_length))
        return jnp.concatenate([slots, tokens], axis=1)

    def encode(
        self,
        encoder_input_tokens: Array,
        task_ids: Array | None = None,
        encoder_segment_ids: Array | None = None,
        encoder_positions: Array | None = None,
        *,
        enable_dropout: bool = True,
    ) -> Array:
        """``[batch, L + S, embed]`` encodings (zero at padded token positions)."""
        _refuse_packing(encoder_segment_ids)
        if task_ids is None:
            raise ValueError("task_ids [batch] are required by the prompted encoder.")
        return super().encode(
            self._with_prompt_slots(encoder_input_tokens, task_ids),
            None,
            encoder_positions,
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
        prefill: bool = False,
        prefill_lengths: Array | None = None,
    ) -> Array:
        """Flaxformer's decoder; the prompt positions of ``encoded`` are attended."""
        _refuse_packing(encoder_segment_ids, decoder_segment_ids)
        return super().decode(
            encoded,
            self._with_prompt_slots(encoder_input_tokens),
            decoder_input_tokens,
            decoder_target_tokens,
            None,
            None,
            decoder_positions,
            enable_dropout=enable_dropout,
            decode=decode,
            max_decode_length=max_decode_length,
            prefill=prefill,
            prefill_lengths=prefill_lengths,
        )

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
    ) -> Any:
        """Teacher-forced logits ``[batch, T, vocab]``: :meth:`encode` then :meth:`decode`."""
        encoded = self.encode(
            encoder_input_tokens,
            task_ids,
            encoder_segment_ids,
            encoder_positions,
            enable_dropout=enable_dropout,
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
