"""Training core: losses, the prompt-only train step, optimizers, checkpoints, the loop.

- ``losses``: token cross-entropy (loss weights, z-loss), KL at a temperature, hidden MSE,
  MPT's distillation objective.
- ``objectives``: those losses bound to a prompted model, as
  ``loss_fn(prompt_params, frozen, batch, rng) -> (loss, metrics)``.
- ``state``: ``TrainState`` (step, prompt params, optimizer state); ``split_params``.
- ``optimizers``: the prompt recipe (prompt tuning's Adafactor) as an optax transform.
- ``step``: jitted train/eval steps, gradients for the prompt tree only, non-finite guard.
- ``mesh``: data parallelism over local devices.
- ``checkpoints``: orbax checkpoints of the prompt tree, optimizer state and run metadata.
- ``loop``: the training loop (eval, summaries, resume).
"""

from mpt_jax.training.losses import (
    cross_entropy_with_logits,
    distillation_loss,
    hidden_mse,
    kl_divergence_with_temperature,
)
from mpt_jax.training.objectives import Distillation, distillation_loss_fn, task_loss_fn
from mpt_jax.training.optimizers import (
    Adafactor,
    AdamW,
    PromptRecipe,
    learning_rate_schedule,
    make_optimizer,
)
from mpt_jax.training.state import TrainState, merge_params, split_params
from mpt_jax.training.step import make_eval_step, make_train_step, train_step_fn

__all__ = [
    "Adafactor",
    "AdamW",
    "Distillation",
    "PromptRecipe",
    "TrainState",
    "cross_entropy_with_logits",
    "distillation_loss",
    "distillation_loss_fn",
    "hidden_mse",
    "kl_divergence_with_temperature",
    "learning_rate_schedule",
    "make_eval_step",
    "make_optimizer",
    "make_train_step",
    "merge_params",
    "split_params",
    "task_loss_fn",
    "train_step_fn",
]
