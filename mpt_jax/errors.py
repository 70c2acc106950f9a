"""The error a gin-bound value outside its allowed range raises.

``mpt-jax`` prints a :class:`BindingError` as one line (``mpt-jax <command>: error:
<message>``, exit status 2) instead of a traceback: the message names the binding, the
value and what is allowed, so the traceback adds nothing. The preflight (before JAX and
TensorFlow) checks types; ranges and choices are checked where the value is used.
"""

from __future__ import annotations


class BindingError(ValueError):
    """A bound value of the right type that the configurable cannot take, e.g.
    ``train_loop.num_steps = 0`` or ``export_prompts.format = 'PEFT'``."""
