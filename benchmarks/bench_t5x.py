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

Same batch (8 × 128 encoder tokens + the prompt, 16 targets), the same start: T5X's model
holds our random backbone and our random prompt (:func:`t5x_params_from_ours`; the
Flaxformer T5 1.1 tree has our parameter names), and the bench refuses to time unless
both sides give the same logits and per-token loss on the batch without dropout, in
float32, within :data:`TOLERANCE` (``same_start_*`` figures; :func:`same_start`).

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

import flax
import jax
import numpy as np
from flax import traverse_util

from benchmarks import common
from mpt_jax import training

#: Largest |per-token loss difference| and |logit difference| (float32) accepted.
TOLERANCE = 1e-4
#: prompt-tuning's z-loss (``t5_1_1_prompt.gin``); the same-start loss includes it.
Z_LOSS = 1e-4

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
  z_loss = {Z_LOSS}
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


def t5x_params_from_ours(t5x_params: Any, ours: Any) -> dict[str, Any]:
    """T5X's parameter tree with every value taken from our ``PromptedT5`` tree.

    prompt-tuning's Flaxformer T5 1.1 names its backbone parameters as ours do
    (``encoder/layers_0/attention/query/kernel``, ...; checked leaf by leaf, names and
    shapes); its prompt is the one leaf whose path has a ``prompt`` component
    (``encoder/prompt/prompt/prompt [length, embed]``), filled with our
    ``SinglePrompt``'s ``prompt/shared``.

    Raises:
      ValueError: naming the parameters that have no counterpart or another shape.

    ``t5x_params`` may hold ``jax.ShapeDtypeStruct`` leaves (only shapes and dtypes
    are read).
    """
    theirs = traverse_util.flatten_dict(dict(t5x_params), sep="/")
    prompt, backbone = training.split_params(dict(ours))
    mine = traverse_util.flatten_dict(dict(backbone), sep="/")
    (our_prompt,) = jax.tree.leaves(prompt)  # a SinglePrompt: one [length, embed] array
    out, problems = {}, []
    for name, value in theirs.items():
        source = our_prompt if "prompt" in name.split("/") else mine.pop(name, None)
        if source is None or source.shape != value.shape:
            got = None if source is None else source.shape
            problems.append(f"{name}: T5X {value.shape}, ours {got}")
            continue
        out[name] = np.asarray(source, dtype=value.dtype)
    problems += [f"{name}: only ours" for name in mine]
    if problems:
        raise ValueError(f"T5X's tree and ours differ: {problems}")
    return traverse_util.unflatten_dict(out, sep="/")


class T5XStepper:
    """T5X's partitioned train step (``Trainer._partitioned_train_step``), one call = one step.

    ``params`` (a tree of T5X's shape, e.g. from :func:`t5x_params_from_ours`) replaces
    the parameters of T5X's freshly initialised train state; the optimizer state is
    initialised from them.
    """

    def __init__(self, model, batch: dict[str, np.ndarray], params: Any = None):
        from t5x import partitioning, trainer, utils

        self.model = model
        self.batch = common.device_batch(batch)
        partitioner = partitioning.PjitPartitioner(num_partitions=1)
        initializer = utils.TrainStateInitializer(
            optimizer_def=model.optimizer_def,
            init_fn=model.get_initial_variables,
            input_shapes={k: v.shape for k, v in batch.items()},
            input_types={k: v.dtype for k, v in batch.items()},
            partitioner=partitioner,
        )
        state = initializer.from_scratch(jax.random.PRNGKey(0))
        if params is not None:  # the same tree type as T5X's (a FrozenDict), on device
            params = jax.device_put(params)
            if isinstance(state.params, flax.core.FrozenDict):
                params = flax.core.freeze(params)
            state = state.replace_params(params)
        self.trainer = trainer.Trainer(
            model=model,
            train_state=state,
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


def t5x_param_template(t5x_model, t5x_batch) -> Any:
    """The shapes of ``t5x_model``'s parameter tree for ``t5x_batch`` (``jax.eval_shape`` of
    its initial variables: nothing is allocated), which :func:`t5x_params_from_ours` fills."""
    return jax.eval_shape(
        lambda: t5x_model.get_initial_variables(
            jax.random.PRNGKey(0),
            {k: v.shape for k, v in t5x_batch.items()},
            {k: v.dtype for k, v in t5x_batch.items()},
        )
    )["params"]


def same_start(model, params, t5x_model, t5x_params, batch) -> dict[str, float]:
    """Both sides on ``batch`` without dropout, full float32 matmuls.

    Ours: ``PromptedT5`` through our loss (``training.task_loss_fn`` with T5X's z-loss,
    a per-token mean); T5X: its model's ``loss_fn`` (a sum over target tokens, divided
    here by ``Σ decoder_loss_weights``) and ``_compute_logits``.

    Returns:
      ``ours_loss``, ``t5x_loss`` (per token), ``abs_loss_diff``, ``max_abs_logit_diff``.
    """
    ours_loss, ours_logits = common.ours_loss_and_logits(model, params, batch, z_loss=Z_LOSS)
    t5x_batch = {k: v for k, v in batch.items() if k != "task_ids"}
    with jax.default_matmul_precision("highest"):
        t5x_loss, _ = jax.jit(lambda p: t5x_model.loss_fn(p, t5x_batch, None))(t5x_params)
        t5x_logits = jax.jit(lambda p: t5x_model._compute_logits(p, t5x_batch))(t5x_params)
    t5x_loss = float(t5x_loss) / float(np.sum(batch["decoder_loss_weights"]))
    return {
        "ours_loss": ours_loss,
        "t5x_loss": t5x_loss,
        "abs_loss_diff": abs(ours_loss - t5x_loss),
        "max_abs_logit_diff": float(np.abs(ours_logits - np.asarray(t5x_logits, np.float32)).max()),
    }


def check_same_start(check: dict[str, float], tolerance: float = TOLERANCE) -> None:
    """Raise unless both sides start at the same loss and logits (within ``tolerance``)."""
    if not (check["abs_loss_diff"] <= tolerance and check["max_abs_logit_diff"] <= tolerance):
        raise RuntimeError(
            "ours and T5X do not start at the same loss on the same weights "
            f"(tolerance {tolerance}): {check}; refusing to time different models"
        )


def run(size: str = "mini", *, reps: int = 10, warmup: int = 2) -> dict[str, Any]:
    """Examples/s of T5X prompt tuning, our prompt tuning and our MPT, side by side.

    Raises:
      RuntimeError: T5X's model and ours do not start at the same loss and logits.
    """
    w = common.workload(size, "float32")  # prompt-tuning's config is float32
    batch = common.make_batch(w)
    t5x_batch = {k: v for k, v in batch.items() if k != "task_ids"}
    model, params = common.init_model(w, "single")  # ours_prompt's start (same seed)
    t5x_model = build_t5x_model(w)
    template = t5x_param_template(t5x_model, t5x_batch)
    t5x = T5XStepper(t5x_model, t5x_batch, params=t5x_params_from_ours(template, params))
    start = same_start(model, params, t5x_model, t5x.state.params, batch)
    check_same_start(start)
    candidates = {
        "t5x_prompt": t5x,
        "ours_prompt": common.prompt_train_stepper(w, "single", optimizer="adafactor", batch=batch),
        "ours_mpt": common.prompt_train_stepper(w, "mpt", batch=batch),
    }
    timings = common.alternate(candidates, reps=reps, warmup=warmup)
    figures = {f"same_start_{k}": v for k, v in start.items()}
    figures.update(common.step_figures(w, timings, candidates))
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
