"""DePT (Shi & Lipani, ICLR 2024): a shorter prompt plus a low-rank offset on the inputs.

Decomposed prompt tuning spends part of a prompt's parameter budget on a low-rank
update of the input embeddings instead of on prompt positions:

    prompt   = S                      [m, embed]   (m shorter than plain prompt tuning's L)
    inputs' = inputs + A B            A [s, r], B [r, embed], s = the maximum input length

As a composition of :class:`~mpt_jax.prompts.generators.ComposedPrompt`, the base ``S``
is ``shared`` and the task part ``T_k = U_k V_k`` (``task_length = s``,
``task_rank = r``) is the offset, so the generator returns
``GeneratorOutput(prompt, input_delta)`` and the model adds ``input_delta`` to the
embedded inputs. With ``num_tasks = 1`` this is DePT; with more tasks the prompt is
shared and each task has its own offset. DePT trains the prompt and the offset with
different learning rates: give ``shared`` and ``task_cols``/``task_rows`` their own
optimizers (``optax.multi_transform``).

This module is the whole composition: it shows that adding one takes a subclass of
:class:`~mpt_jax.prompts.compositions.Composition` and :func:`register`, and nothing in
the generators or the model.

gin::

    import mpt_jax.prompts.dept

    PromptedT5.prompt = @prompts.ComposedPrompt()
    prompts.ComposedPrompt.composition = @compositions.DePT()
    prompts.ComposedPrompt.length = 60          # m
    prompts.ComposedPrompt.task_length = 256    # s: the encoder's maximum input length
    prompts.ComposedPrompt.task_rank = 60       # r
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp

from mpt_jax.prompts import compositions as comp
from mpt_jax.prompts.generators import GeneratorOutput

Array = jax.Array


def input_offset(part: Array, length: int, mask: Array | None = None) -> Array:
    """The offset of the first ``length`` input positions, zero at padding.

    Args:
      part: ``[batch, s, embed]`` each example's offset table ``U_k V_k``.
      length: the input length ``S`` (at most ``s``).
      mask: ``[batch, S]`` (1 = real token) or ``None`` (every position is real).

    Returns:
      ``[batch, S, embed]``: ``part[:, :S] * mask[..., None]``.

    Raises:
      ValueError: ``S > s`` (the offset does not cover the input).
    """
    if length > part.shape[1]:
        raise ValueError(
            f"DePT's offset covers {part.shape[1]} input positions but the inputs have "
            f"{length}; set ComposedPrompt.task_length to the maximum input length"
        )
    delta = part[:, :length]
    if mask is not None:
        delta = delta * mask[..., None].astype(delta.dtype)
    return delta


@comp.register
@dataclasses.dataclass(frozen=True)
class DePT(comp.Composition):
    """The prompt is the base ``S``; the part ``T_k`` ``[s, embed]`` is added to the
    embedded inputs (:func:`input_offset`). The part starts at 0 (``U ~ N(0, 1/r)``,
    ``V = 0``), so training starts from prompt tuning with the shorter prompt."""

    name: ClassVar[str] = "dept"

    def check_lengths(self, base_length: int, part_length: int) -> None:
        del base_length, part_length  # the part's length is the inputs', not the prompt's

    def part_inits(self, rank: int | None) -> comp.PartInits:
        return comp.Add().part_inits(rank)

    def __call__(self, site, base, part, ids, inputs):
        if inputs.embedded is None:
            raise ValueError(
                "the DePT composition offsets the input: embedded_inputs must be given"
            )
        batch = part.shape[0]
        prompt = jnp.broadcast_to(base, (batch,) + base.shape[-2:])
        return GeneratorOutput(prompt, input_offset(part, inputs.embedded.shape[1], inputs.mask))
