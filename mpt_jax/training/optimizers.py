"""Optimizers for the prompt tree (optax), configured the way prompt tuning does.

The defaults follow google-research/prompt-tuning's ``prompt_finetune.gin``: Adafactor
with a constant learning rate of 0.3, second-moment decay 0.8, no factoring (prompt
matrices are small and their axes are not the "embed × mlp" kind factoring was built
for), parameter-scaled steps, update clipping at RMS 1, and weight decay 1e-5. optax adds
the decay after the learning-rate scaling, so each step subtracts ``wd · θ`` independent
of the rate, as T5X's Adafactor does. The first Adafactor step is therefore
``Δθ = -(lr · max(rms(θ), 1e-3) · sign(g) + wd · θ)`` (tests/test_train_step.py checks it).

Everything is gin-configurable::

    make_optimizer.name = "adamw"
    make_optimizer.learning_rate = 1e-3
    learning_rate_schedule.warmup_steps = 100
"""

from __future__ import annotations

import gin
import jax
import optax

OPTIMIZERS = ("adafactor", "adamw")
SCHEDULES = ("constant", "linear_decay", "rsqrt")


@gin.configurable(denylist=["base_learning_rate"])
def learning_rate_schedule(
    base_learning_rate: float,
    *,
    kind: str = "constant",
    warmup_steps: int = 0,
    total_steps: int | None = None,
) -> optax.Schedule:
    """A learning-rate schedule: linear warm-up, then ``kind``.

    Args:
      base_learning_rate: the rate after warm-up (``make_optimizer.learning_rate`` in gin).
      kind: ``"constant"`` (prompt tuning's choice), ``"linear_decay"`` (to 0 at
        ``total_steps``) or ``"rsqrt"`` (``base · sqrt(warmup / step)`` after warm-up).
      warmup_steps: steps of linear warm-up from 0 (0 = none).
      total_steps: required by ``"linear_decay"``.
    """
    if kind not in SCHEDULES:
        raise ValueError(f"learning_rate_schedule.kind must be one of {SCHEDULES}, got {kind!r}")
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    if kind == "constant":
        after = optax.constant_schedule(base_learning_rate)
    elif kind == "linear_decay":
        if total_steps is None or total_steps <= warmup_steps:
            raise ValueError(
                f"linear_decay needs total_steps > warmup_steps ({warmup_steps}), got {total_steps}"
            )
        after = optax.linear_schedule(base_learning_rate, 0.0, total_steps - warmup_steps)
    else:
        offset = max(warmup_steps, 1)
        after = lambda step: base_learning_rate * (offset / (step + offset)) ** 0.5
    if warmup_steps == 0:
        return after
    warmup = optax.linear_schedule(0.0, base_learning_rate, warmup_steps)
    return optax.join_schedules([warmup, after], [warmup_steps])


@gin.configurable
def make_optimizer(
    name: str = "adafactor",
    learning_rate: float = 0.3,
    *,
    decay_rate: float = 0.8,
    weight_decay: float = 1e-5,
    factored: bool = False,
    multiply_by_parameter_scale: bool = True,
    clipping_threshold: float | None = 1.0,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    max_grad_norm: float | None = None,
    schedule: optax.Schedule | None = None,
) -> optax.GradientTransformation:
    """The optimizer of the prompt tree.

    Args:
      name: ``"adafactor"`` (default, prompt tuning's) or ``"adamw"``.
      learning_rate: the base rate (0.3, prompt tuning's constant rate; for AdamW
        something like 1e-3 is a better start).
      decay_rate: Adafactor's second-moment decay exponent (0.8).
      weight_decay: decoupled weight decay (1e-5; 0 disables it).
      factored: factor Adafactor's second moment (off for prompts).
      multiply_by_parameter_scale: Adafactor's relative step size (T5X's default).
      clipping_threshold: Adafactor's update clipping (1.0; None disables it).
      b1, b2, eps: AdamW's moments.
      max_grad_norm: clip the global gradient norm first (None = no clipping).
      schedule: a learning-rate schedule; by default ``learning_rate_schedule(learning_rate)``
        (constant unless gin says otherwise).
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"make_optimizer.name must be one of {OPTIMIZERS}, got {name!r}")
    if learning_rate <= 0:
        raise ValueError(f"learning_rate must be > 0, got {learning_rate}")
    lr = schedule if schedule is not None else learning_rate_schedule(learning_rate)
    if name == "adafactor":
        tx = optax.adafactor(
            learning_rate=lr,
            decay_rate=decay_rate,
            multiply_by_parameter_scale=multiply_by_parameter_scale,
            clipping_threshold=clipping_threshold,
            weight_decay_rate=weight_decay or None,
            factored=factored,
        )
    else:
        tx = optax.adamw(lr, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)
    if max_grad_norm is not None:
        tx = optax.chain(optax.clip_by_global_norm(max_grad_norm), tx)
    return tx


def per_task(tx: optax.GradientTransformation) -> optax.GradientTransformation:
    """Run ``tx`` independently for each slice along the leading (task) axis.

    Every leaf of the parameter tree must have the task axis first (``TaskPrompts``:
    ``task_prompts [T, L, D]``). ``tx.init`` and ``tx.update`` are ``vmap``-ed over that
    axis, so whole-parameter statistics (Adafactor's parameter-scaled step and its
    update clipping, both RMS over a parameter) are taken per task: training a table of
    T prompts with ``per_task(tx)`` equals training T separate prompts with ``tx``.
    """

    def init(params):
        return jax.vmap(tx.init)(params)

    def update(updates, state, params=None):
        if params is None:
            return jax.vmap(lambda u, s: tx.update(u, s))(updates, state)
        return jax.vmap(tx.update)(updates, state, params)

    return optax.GradientTransformation(init, update)
