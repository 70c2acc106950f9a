"""T5X model classes for prompted encoder-decoders: ``task_ids`` reach the prompt everywhere.

T5X's ``EncoderDecoderModel`` hands its module only the standard features
(``encoder_input_tokens``, ``decoder_input_tokens``, ``decoder_target_tokens``, segment
ids, positions). A prompted module (``mpt_jax.model.PromptedT5``, or the Flaxformer
encoder of :mod:`mpt_jax.t5x_ext.flaxformer_encoder`) also needs the batch's
``task_ids [batch]`` wherever it computes the prompt: in ``__call__`` (loss, evaluation,
``score_batch``) and in ``encode`` (decoding: ``predict_batch_with_aux`` encodes once and
then calls ``decode`` per step, which needs no task ids).

:class:`PromptedEncoderDecoderModel` does this without copying any T5X method body: each
entry point runs T5X's own implementation on a shallow view of the model whose
``module`` is a :class:`TaskIdsBinding` — the same Flax module with the batch's
``task_ids`` passed to every method whose signature takes ``task_ids``. It also

- uses :class:`mpt_jax.data.PromptEncDecFeatureConverter` (keeps ``task_ids``, refuses
  packing) as its feature converter;
- turns the generators' boxed logical axis names (``nn.with_logical_partitioning``) into
  the ``params_axes`` collection that T5X's partitioner and Adafactor read.

:class:`PromptDistillationModel` is MPT's source training: the student prompt is trained
with ``L_task + λ (τ² KL(teacher_τ ‖ student_τ) + MSE(h_teacher, h_student))`` against
per-task teacher prompts held frozen in the parameter subtree ``teacher_prompt``
(restored from the teachers' checkpoint, never matched by the prompt optimizer). The
formula is :func:`mpt_jax.training.losses.distillation_loss`.

gin (``configs/models/mpt.gin``)::

    from mpt_jax.t5x_ext import models
    MODEL = @models.PromptedEncoderDecoderModel()
    models.PromptedEncoderDecoderModel.module = %ARCHITECTURE
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import flax
import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
from flax import traverse_util
from flax.linen import partitioning as flax_partitioning
from t5x import metrics as metrics_lib
from t5x import models as t5x_models

from mpt_jax.data.feature_converter import PromptEncDecFeatureConverter
from mpt_jax.training import losses
from mpt_jax.training.objectives import Distillation

Array = jax.Array
PyTree = Any

TASK_IDS = "task_ids"
TEACHER_SCOPE = "teacher_prompt"


def _takes_task_ids(fn: Callable[..., Any]) -> bool:
    try:
        return TASK_IDS in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


class TaskIdsBinding:
    """A prompted Flax module as T5X sees it, with one batch's ``task_ids`` bound.

    ``init`` and ``apply`` add ``task_ids=`` to the call when the method being run
    (``__call__`` when ``method`` is None) has a ``task_ids`` parameter and the caller did
    not pass one; everything else (``encode``, ``decode``, attributes) is the module's.
    This is not a Flax module and owns no parameters: the parameter tree is unchanged.

    Args:
      module: the prompted module (e.g. ``PromptedT5``).
      task_ids: ``[batch]`` int32 task of each example.
    """

    def __init__(self, module: nn.Module, task_ids: Array):
        self._module = module
        self._task_ids = task_ids

    @property
    def module(self) -> nn.Module:
        return self._module

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "_module":  # copy/pickle protocol, early access
            raise AttributeError(name)
        return getattr(self._module, name)

    def _bind(self, method: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        if isinstance(method, str):
            fn = getattr(self._module, method)
        else:
            fn = method if method is not None else self._module.__call__
        if TASK_IDS not in kwargs and _takes_task_ids(fn):
            kwargs = {**kwargs, TASK_IDS: self._task_ids}
        return kwargs

    def init(self, rngs: Any, *args: Any, method: Any = None, **kwargs: Any) -> Any:
        return self._module.init(rngs, *args, method=method, **self._bind(method, kwargs))

    def apply(self, variables: Any, *args: Any, method: Any = None, **kwargs: Any) -> Any:
        return self._module.apply(variables, *args, method=method, **self._bind(method, kwargs))


def params_axes_from_boxes(variables: Mapping[str, Any]) -> dict[str, Any]:
    """Unboxes ``nn.Partitioned`` parameters and records their names in ``params_axes``.

    T5X reads logical axis names from the legacy ``params_axes`` collection
    (``{name}_axes: AxisMetadata(names)``) that Flaxformer writes with
    ``param_with_axes``; mpt_jax's modules box parameters with
    ``nn.with_logical_partitioning`` instead. Both may appear in one tree (a Flaxformer
    backbone with an mpt_jax prompt); existing ``params_axes`` entries are kept.

    Raises:
      ValueError: naming the parameters that end up without axis names.
    """
    variables = flax.core.unfreeze(variables)
    params = variables.get("params", {})
    axes = variables.get("params_axes", {})
    missing: list[str] = []

    def visit(tree: dict[str, Any], axes_tree: dict[str, Any], path: str) -> None:
        for key in list(tree):
            value = tree[key]
            if isinstance(value, nn.Partitioned):
                axes_tree[f"{key}_axes"] = flax_partitioning.AxisMetadata(names=tuple(value.names))
                tree[key] = value.value
            elif isinstance(value, Mapping):
                tree[key] = dict(value)
                axes_tree[key] = dict(axes_tree.get(key, {}))
                visit(tree[key], axes_tree[key], f"{path}{key}/")
            elif f"{key}_axes" not in axes_tree:
                missing.append(path + key)

    visit(params, axes, "")
    if missing:
        raise ValueError(
            f"Parameters without logical axis names: {sorted(missing)}. Box them with "
            "nn.with_logical_partitioning (or Flaxformer's param_with_axes)."
        )
    variables["params"] = params
    variables["params_axes"] = axes
    return variables


def _is_flag(leaf: Any, ndim: int) -> bool:
    return getattr(leaf, "dtype", None) == jnp.bool_ and leaf.ndim == ndim


def batch_cache_flags(cache: PyTree, batch_size: int) -> PyTree:
    """Gives boolean scalar cache flags a ``[batch]`` axis (T5X's beam search needs one).

    T5X's decoders expand and gather every cache leaf along a leading batch axis, except
    ``cache_index`` and a few named ones. A module may keep a boolean scalar flag in its
    cache (mpt_jax's backbone marks whether the encoder keys/values are cached); such a
    flag is the same for every example, so it travels as ``[batch]`` copies through T5X's
    decoding and is read back with :func:`unbatch_cache_flags`.
    """
    flat = traverse_util.flatten_dict(flax.core.unfreeze(cache))
    flat = {k: jnp.broadcast_to(v, (batch_size,)) if _is_flag(v, 0) else v for k, v in flat.items()}
    return traverse_util.unflatten_dict(flat)


def unbatch_cache_flags(cache: PyTree) -> PyTree:
    """Inverse of :func:`batch_cache_flags`: ``[batch]`` boolean flags back to scalars."""
    flat = traverse_util.flatten_dict(flax.core.unfreeze(cache))
    flat = {k: v[0] if _is_flag(v, 1) else v for k, v in flat.items()}
    return traverse_util.unflatten_dict(flat)


@gin.configurable(module="mpt_jax.t5x_ext.models")
class PromptedEncoderDecoderModel(t5x_models.EncoderDecoderModel):
    """``EncoderDecoderModel`` whose module takes the batch's ``task_ids [batch]``.

    Constructor arguments are T5X's (``module``, ``input_vocabulary``,
    ``output_vocabulary``, ``optimizer_def``, ``decode_fn``, ``label_smoothing``,
    ``z_loss``, ``loss_normalizing_factor``, …). The loss, metrics, scoring and decoding
    are T5X's own; only how the module is called differs. Batches must carry
    ``task_ids`` (the feature converter keeps it).
    """

    FEATURE_CONVERTER_CLS = PromptEncDecFeatureConverter

    def with_task_ids(self, task_ids: Array) -> PromptedEncoderDecoderModel:
        """A shallow copy whose ``module`` is ``TaskIdsBinding(self.module, task_ids)``."""
        view = copy.copy(self)
        module = self.module.module if isinstance(self.module, TaskIdsBinding) else self.module
        view.module = TaskIdsBinding(module, task_ids)
        return view

    def _view(self, batch: Mapping[str, Array]) -> PromptedEncoderDecoderModel:
        if TASK_IDS not in batch:
            if getattr(self.module, "prompt", True) is None:
                return self  # a module without a prompt (the bare backbone) needs no ids
            raise KeyError(
                f"The batch has no '{TASK_IDS}' feature (features: {sorted(batch)}). Use "
                "mpt_jax.data.PromptEncDecFeatureConverter (this model's default feature "
                "converter) and tasks that add task ids (mpt_jax.data.task_ids.add_task_ids)."
            )
        return self.with_task_ids(batch[TASK_IDS])

    def get_initial_variables(
        self,
        rng: Array,
        input_shapes: Mapping[str, Any],
        input_types: Mapping[str, Any] | None = None,
    ) -> flax.core.FrozenDict:
        """T5X's initialisation with ``task_ids`` zeros, and ``params_axes`` from boxes."""
        batch_size = input_shapes["encoder_input_tokens"][0]
        task_ids = jnp.zeros(tuple(input_shapes.get(TASK_IDS, (batch_size,))), jnp.int32)
        variables = super(PromptedEncoderDecoderModel, self.with_task_ids(task_ids))
        variables = variables.get_initial_variables(rng, input_shapes, input_types)
        return flax.core.freeze(params_axes_from_boxes(variables))

    def _compute_logits(
        self,
        params: PyTree,
        batch: Mapping[str, Array],
        dropout_rng: Array | None = None,
        mutable: Any = False,
        other_variables: PyTree | None = None,
    ) -> Any:
        """T5X's forward pass (loss, eval, ``score_batch``) with ``task_ids`` routed."""
        view = super(PromptedEncoderDecoderModel, self._view(batch))
        return view._compute_logits(params, batch, dropout_rng, mutable, other_variables)

    def _compute_kv_cache(
        self,
        params: PyTree,
        encoded_inputs: Array,
        encoder_input_tokens: Array,
        decoder_input_tokens: Array,
        prefill_decoder_prompt: bool = False,
    ) -> tuple[PyTree, Array | None]:
        """T5X's cache initialisation, with scalar cache flags given a batch axis."""
        cache, initial_index = super()._compute_kv_cache(
            params,
            encoded_inputs,
            encoder_input_tokens,
            decoder_input_tokens,
            prefill_decoder_prompt,
        )
        return batch_cache_flags(cache, encoder_input_tokens.shape[0]), initial_index

    def _compute_logits_from_slice(
        self,
        decoding_state: Any,
        params: PyTree,
        encoded_inputs: Array,
        raw_inputs: Array,
        max_decode_length: int,
    ) -> tuple[Array, PyTree]:
        """T5X's one-step decoder call; the module sees its cache flags as scalars."""
        state = decoding_state.replace(cache=unbatch_cache_flags(decoding_state.cache))
        logits, cache = super()._compute_logits_from_slice(
            state, params, encoded_inputs, raw_inputs, max_decode_length
        )
        return logits, batch_cache_flags(cache, raw_inputs.shape[0])

    def predict_batch_with_aux(
        self,
        params: PyTree,
        batch: Mapping[str, Array],
        rng: Array | None = None,
        decoder_params: dict[str, Any] | None = None,
        return_all_decodes: bool | None = None,
        num_decodes: int | None = None,
        prompt_with_targets: bool = False,
    ) -> tuple[Array, Mapping[str, Array]]:
        """T5X's decoding; the prompt of each example follows its ``task_ids``."""
        view = super(PromptedEncoderDecoderModel, self._view(batch))
        return view.predict_batch_with_aux(
            params,
            batch,
            rng=rng,
            decoder_params=decoder_params,
            return_all_decodes=return_all_decodes,
            num_decodes=num_decodes,
            prompt_with_targets=prompt_with_targets,
        )


@gin.configurable(module="mpt_jax.t5x_ext.models")
class PromptDistillationModel(PromptedEncoderDecoderModel):
    """MPT source training: task loss plus distillation from frozen per-task teachers.

    The parameter tree is the student module's (backbone + ``prompt/...``) plus
    ``teacher_prompt/...``: the parameters of ``teacher_prompt`` (a generator, normally
    ``prompts.TaskPrompts`` with one prompt per source task), computed on the same frozen
    backbone. Restore the teachers from their run with
    ``RestoreCheckpointConfig.assignment_map`` (``configs/runs/source.gin``); the prompt
    optimizer (:func:`mpt_jax.t5x_ext.optim.prompt_traversal`) never matches them.

    The objective is :func:`mpt_jax.training.losses.distillation_loss`:
    ``L_task + λ · (τ² · KL + MSE)`` as token means (so T5X's ``loss_normalizing_factor``
    and ``label_smoothing`` do not apply and must be unset), with λ, τ and the hidden
    states compared taken from :class:`mpt_jax.training.objectives.Distillation`, the
    recipe the runner uses too (one definition; bind ``Distillation.weight = 0.5``).
    Evaluation reports ``distill/task_loss``, ``distill/kl`` and ``distill/mse``; scoring
    and decoding use the student only.

    Args:
      module: the student, a ``PromptedT5`` (needs a ``prompt`` field and
        ``forward_with_hidden``).
      *args: ``EncoderDecoderModel``'s positional arguments (vocabularies, optimizer).
      teacher_prompt: the teachers' generator (keyword); the teacher is ``module`` with
        this generator as its prompt.
      recipe: λ, τ and hidden states; default the gin-bound ``Distillation()``.
      **kwargs: the remaining ``EncoderDecoderModel`` arguments.
    """

    def __init__(
        self,
        module: nn.Module,
        *args: Any,
        teacher_prompt: nn.Module,
        recipe: Distillation | None = None,
        **kwargs: Any,
    ):
        for name in ("prompt", "forward_with_hidden"):
            if not hasattr(module, name):
                raise TypeError(
                    f"PromptDistillationModel needs a student module with `{name}` (e.g. "
                    f"mpt_jax.model.PromptedT5); got {type(module).__name__}."
                )
        recipe = Distillation() if recipe is None else recipe  # validates λ, τ, hidden states
        super().__init__(module, *args, **kwargs)
        if self._label_smoothing:
            raise ValueError(
                f"label_smoothing={self._label_smoothing} is not supported by the "
                "distillation objective; set it to 0."
            )
        if self._loss_normalizing_factor is not None:
            raise ValueError(
                "The distillation objective is a token mean; unset loss_normalizing_factor "
                f"(got {self._loss_normalizing_factor!r})."
            )
        self.teacher = module.clone(prompt=teacher_prompt)
        self.recipe = recipe

    def get_initial_variables(
        self,
        rng: Array,
        input_shapes: Mapping[str, Any],
        input_types: Mapping[str, Any] | None = None,
    ) -> flax.core.FrozenDict:
        """The student's variables plus the teachers' prompt under ``teacher_prompt``."""
        student = flax.core.unfreeze(super().get_initial_variables(rng, input_shapes, input_types))
        teacher_view = copy.copy(self)
        teacher_view.module = self.teacher
        teacher = flax.core.unfreeze(
            PromptedEncoderDecoderModel.get_initial_variables(
                teacher_view, jax.random.fold_in(rng, 1), input_shapes, input_types
            )
        )
        student["params"][TEACHER_SCOPE] = teacher["params"]["prompt"]
        student["params_axes"][TEACHER_SCOPE] = teacher["params_axes"]["prompt"]
        return flax.core.freeze(student)

    def _split(self, params: PyTree) -> tuple[dict[str, Any], dict[str, Any]]:
        params = dict(params)
        if TEACHER_SCOPE not in params:
            raise KeyError(
                f"params have no '{TEACHER_SCOPE}' subtree (top level: {sorted(params)}); "
                "restore the teachers as in configs/runs/source.gin."
            )
        teacher_prompt = params.pop(TEACHER_SCOPE)
        teacher = jax.lax.stop_gradient({**params, "prompt": teacher_prompt})
        return params, teacher

    def loss_fn(
        self, params: PyTree, batch: Mapping[str, Array], dropout_rng: Array | None
    ) -> tuple[Array, Mapping[str, Any]]:
        """``L_task + λ (τ² KL + MSE)`` on the batch; gradients reach the student only."""
        student_params, teacher_params = self._split(params)
        inputs = (
            batch["encoder_input_tokens"],
            batch["decoder_input_tokens"],
            batch["decoder_target_tokens"],
        )
        if TASK_IDS not in batch:
            self._view(batch)  # raises the explanatory KeyError
        rngs = {"dropout": dropout_rng} if dropout_rng is not None else None
        s_logits, s_hidden = self.module.apply(
            {"params": student_params},
            *inputs,
            batch[TASK_IDS],
            enable_dropout=rngs is not None,
            rngs=rngs,
            method="forward_with_hidden",
        )
        t_logits, t_hidden = self.teacher.apply(
            {"params": teacher_params},
            *inputs,
            batch[TASK_IDS],
            enable_dropout=False,
            method="forward_with_hidden",
        )
        loss, parts = losses.distillation_loss(
            s_logits,
            t_logits,
            s_hidden,
            t_hidden,
            batch,
            distill_weight=self.recipe.weight,
            temperature=self.recipe.temperature,
            hidden_states=self.recipe.hidden_states,
            z_loss=self._z_loss,
        )
        weights = batch["decoder_loss_weights"]
        metrics = dict(
            self._compute_metrics(
                logits=s_logits,
                targets=batch["decoder_target_tokens"],
                mask=weights,
                loss=loss,
                z_loss=parts["z_loss"],
                segment_ids={
                    "encoder_input_tokens": batch["encoder_input_tokens"] != 0,
                    "decoder_target_tokens": batch["decoder_target_tokens"] != 0,
                },
            )
        )
        # T5X's per-token views assume a summed loss; this objective is already a mean.
        metrics.pop("loss_per_nonpadding_target_token", None)
        metrics.pop("loss_per_all_target_tokens", None)
        for name in ("task_loss", "kl", "mse"):
            metrics[f"distill/{name}"] = metrics_lib.AveragePerStep(total=parts[name])
        return loss, metrics
