"""Against prompt tuning on T5X: our step beside google-research/prompt-tuning's, side by side.

T5X, Flaxformer and prompt-tuning are not on PyPI, so this benchmark runs only where they
are installed (it prints why and exits 0 otherwise; nothing of theirs ships with
mpt_jax). It builds prompt-tuning's T5 1.1 prompt model from its gin files
(``t5_1_1_prompt.gin`` with its Flaxformer architecture file: Flaxformer's T5 1.1 with
``PromptEncoder``, a 100-token prompt, T5X's ``MultiOptimizer`` training only the
prompt; see :func:`t5x_config`), sized like the reference workload, and times T5X's own
partitioned train step (``t5x.trainer.Trainer``) against ours, alternating in one process:

- ``t5x_prompt``: prompt tuning on T5X, Adafactor as its config sets it, z-loss 1e-4,
  float32 activations, dropout 0.1;
- ``ours_prompt``: our vanilla prompt-tuning step (``SinglePrompt``), Adafactor;
- ``ours_mpt``: our MPT step (4 tasks mixed per batch, rank 1), AdamW — the workload of
  the other benchmarks.

Same batch (8 × 128 encoder tokens + the prompt, 16 targets), random frozen backbones.

    python -m benchmarks.bench_t5x --size mini --reps 10 --json t5x.json

T5X's reported loss is a sum over target tokens (``loss_normalizing_factor=None``), ours a
mean; the work per step is the same.

The gin files are looked up in the installed ``prompt_tuning`` and ``flaxformer``
packages; ``airio``/``jestimator`` (imported by T5X, not on its train path) must be
importable too.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from typing import Any

import jax
import numpy as np

from benchmarks import common

#: Packages this benchmark needs besides ours.
REQUIRED = ("t5x", "flaxformer", "prompt_tuning", "gin")


def missing_packages() -> list[str]:
    """The packages of ``REQUIRED`` that cannot be imported here."""
    return [name for name in REQUIRED if importlib.util.find_spec(name) is None]


def t5x_config(w: common.Workload) -> str:
    """gin text: prompt-tuning's T5 1.1 prompt model, sized like our workload.

    It is ``prompt_tuning/configs/models/t5_1_1_prompt.gin`` (its Flaxformer architecture
    file is included as is) with two substitutions: that file imports
    ``prompt_tuning.train.utils``, which needs the removed ``flax.optim``, only for its
    regex parameter filter and checkpointer, so the prompt-only traversal is ours
    (``mpt_jax.t5x_ext.optim.prompt_traversal``, matching the same ``prompt`` scope);
    and the vocabulary is a pass-through one (no sentencepiece file on the train path).
    """
    cfg = w.config
    return f"""
from __gin__ import dynamic_registration
import seqio
from flax import linen
from t5x import adafactor
from t5x import models
from t5x import optimizers as optim
from prompt_tuning import prompts
from prompt_tuning.train import optim as pt_optim
from prompt_tuning.train import prompts as train_prompts
from mpt_jax.t5x_ext import optim as mpt_optim

ARCHITECTURE = %gin.REQUIRED
include 'prompt_tuning/configs/architectures/prompt_encoder_t5_1_1_flaxformer.gin'

NUM_HEADS = {cfg.num_heads}
NUM_ENCODER_LAYERS = {cfg.num_encoder_layers}
NUM_DECODER_LAYERS = {cfg.num_decoder_layers}
HEAD_DIM = {cfg.head_dim}
EMBED_DIM = {cfg.emb_dim}
MLP_DIM = {cfg.mlp_dim}
NUM_EMBEDDINGS = {cfg.vocab_size}
DROPOUT_RATE = {cfg.dropout_rate}
ACTIVATION_DTYPE = 'float32'
PROMPT_LENGTH = {w.prompt_length}

PROMPT = @train_prompts.Prompt
train_prompts.Prompt.prompt = @prompts.Prompt()
prompts.Prompt:
  length = %PROMPT_LENGTH
  prompt_init = @prompt_init/linen.initializers.uniform()
  dtype = %ACTIVATION_DTYPE
prompt_init/linen.initializers.uniform.scale = 0.5

adafactor.Adafactor:
  decay_rate = 0.8
  step_offset = 0
  multiply_by_parameter_scale = False
  weight_decay_rate = 0.00001
  logical_factor_rules = @pt_optim.standard_logical_factor_rules()
OPTIMIZER = @optim.MultiOptimizer()
optim.MultiOptimizer.traversals_and_optimizers = \
    ((@mpt_optim.prompt_traversal(), @adafactor.Adafactor()),)

VOCABULARY = @seqio.PassThroughVocabulary()
seqio.PassThroughVocabulary.size = {cfg.vocab_size}
MODEL = @models.EncoderDecoderModel()
models.EncoderDecoderModel:
  module = %ARCHITECTURE
  input_vocabulary = %VOCABULARY
  output_vocabulary = %VOCABULARY
  optimizer_def = %OPTIMIZER
  z_loss = 0.0001
  label_smoothing = 0.0
  loss_normalizing_factor = None
"""


def build_t5x_model(w: common.Workload):
    """prompt-tuning's ``MODEL`` (a ``t5x.models.EncoderDecoderModel``) at ``w``'s size."""
    import flaxformer
    import gin
    import prompt_tuning

    gin.clear_config()
    for package in (prompt_tuning, flaxformer):
        gin.add_config_file_search_path(os.path.dirname(os.path.dirname(package.__file__)))

    @gin.configurable("bench_t5x_model")
    def model_of(model=gin.REQUIRED):
        return model

    gin.parse_config(t5x_config(w))
    # A separate parse: within a file using dynamic registration every name must be
    # imported, and this one is registered here (as T5X's `train.model` is by T5X).
    gin.parse_config("bench_t5x_model.model = %MODEL")
    return model_of()


class T5XStepper:
    """T5X's partitioned train step (``Trainer._partitioned_train_step``), one call = one step."""

    def __init__(self, model, batch: dict[str, np.ndarray]):
        from t5x import partitioning, trainer, utils

        self.batch = common.device_batch(batch)
        partitioner = partitioning.PjitPartitioner(num_partitions=1)
        initializer = utils.TrainStateInitializer(
            optimizer_def=model.optimizer_def,
            init_fn=model.get_initial_variables,
            input_shapes={k: v.shape for k, v in batch.items()},
            input_types={k: v.dtype for k, v in batch.items()},
            partitioner=partitioner,
        )
        self.trainer = trainer.Trainer(
            model=model,
            train_state=initializer.from_scratch(jax.random.PRNGKey(0)),
            partitioner=partitioner,
            eval_names=[],
            summary_dir=None,
            train_state_axes=initializer.train_state_axes,
            rng=jax.random.PRNGKey(1),
            learning_rate_fn=lambda step: 1e-3,
            num_microbatches=None,
        )
        self.state = self.trainer.train_state
        self.metrics = None

    @property
    def trainable_params(self) -> int:
        flat = jax.tree_util.tree_flatten_with_path(self.state.params)[0]
        return sum(
            int(np.prod(x.shape)) for path, x in flat if "prompt" in jax.tree_util.keystr(path)
        )

    def __call__(self) -> None:
        self.state, self.metrics = self.trainer._partitioned_train_step(self.state, self.batch)
        jax.block_until_ready(self.state)

    @property
    def loss(self) -> float:
        loss = self.metrics["loss"] if self.metrics else None
        return float(loss.compute() if hasattr(loss, "compute") else loss)


def run(size: str = "mini", *, reps: int = 10, warmup: int = 2) -> dict[str, Any]:
    """Examples/s of T5X prompt tuning, our prompt tuning and our MPT, side by side."""
    w = common.workload(size)
    batch = common.make_batch(w)
    t5x_batch = {k: v for k, v in batch.items() if k != "task_ids"}
    candidates = {
        "t5x_prompt": T5XStepper(build_t5x_model(w), t5x_batch),
        "ours_prompt": common.prompt_train_stepper(w, "single", optimizer="adafactor", batch=batch),
        "ours_mpt": common.prompt_train_stepper(w, "mpt", batch=batch),
    }
    timings = common.alternate(candidates, reps=reps, warmup=warmup)
    figures = common.step_figures(w, timings, candidates)
    figures["t5x_prompt_trainable_params"] = candidates["t5x_prompt"].trainable_params
    t = timings
    ratios = [
        common.ratio("ours_prompt_over_t5x_prompt (speed)",
                     common.paired_ratio(t["t5x_prompt"], t["ours_prompt"]), 1.0, ">="),
        common.ratio("ours_mpt_over_t5x_prompt (speed)",
                     common.paired_ratio(t["t5x_prompt"], t["ours_mpt"]), 1.0, ">="),
    ]  # fmt: skip
    return common.result("t5x", w, figures, ratios, timings=timings)


def main(argv=None) -> dict[str, Any] | None:
    args = common.arg_parser(__doc__.splitlines()[0]).parse_args(argv)
    missing = missing_packages()
    if missing:
        print(f"bench_t5x: skipped, not installed here: {', '.join(missing)}", file=sys.stderr)
        return None
    return common.finish(run(args.size, reps=args.reps, warmup=args.warmup), args.json)


if __name__ == "__main__":
    main()
