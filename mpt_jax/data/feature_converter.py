"""The seqio feature converter for prompted encoder-decoder models: T5X features + task ids.

``PromptEncDecFeatureConverter`` turns task examples ``{"inputs": [S'], "targets": [T'],
"task_ids": [1] or []}`` into the batch contract of ``docs/ARCHITECTURE.md``::

    encoder_input_tokens   int32 [S]   inputs, zero-padded to S
    decoder_target_tokens  int32 [T]   targets, zero-padded to T
    decoder_input_tokens   int32 [T]   targets shifted right, starting with bos_id (0)
    decoder_loss_weights   int32 [T]   1 at non-padding target positions
    task_ids               int32 []    the example's task id (batched: [B])

Task feature lengths may name ``task_ids`` (seqio's evaluator measures every output
feature, so it passes ``"task_ids": 1``) or leave it out (T5X's ``DatasetConfig``).

It speaks seqio's ``FeatureConverter`` protocol, so T5X (``DatasetConfig``,
``SeqIOEvaluator``) and our own runner use it unchanged.

Packing is refused: a prompt is prepended to each encoder sequence, and a packed row holds
several examples (possibly of different tasks) that would share one prompt.

Length policy (never silent). One gin binding, ``length_policy.truncation``, sets it for
this converter and for the mpt tasks' own length check. An input longer than its maximum
length is
  - ``"error"`` (default): an ``InvalidArgumentError`` when the example is read, naming
    the feature, its length and the maximum;
  - ``"truncate"``: cut to the maximum (like seqio's own trimming: the tail, EOS
    included, is dropped); every cut is counted in :class:`TruncationCounts`, and a
    warning with the running count is logged at the 1st, 10th, 100th, … cut.

Note that ``seqio.get_dataset`` / ``Task.get_dataset`` trim output features *before* the
converter sees them when ``trim_output_features=True`` (their default). The mpt tasks
apply :func:`enforce_max_lengths` as their last preprocessor, so the policy holds there
too. For any task, the runner reads training and inference data with
``trim_output_features=False`` (this converter decides), and evaluation, whose
``seqio.Evaluator`` always trims, first runs :func:`check_task_lengths` over the
untrimmed examples it will evaluate. So ``train``, ``eval`` and ``infer`` meet one policy
whatever the task's preprocessors.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping

import gin
import seqio
import tensorflow as tf

from mpt_jax.data.task_ids import KEY_BASE, TaskIndex, ids_from_keys

TRUNCATION_POLICIES = ("error", "truncate")


@gin.configurable
def length_policy(truncation: str = "error") -> str:
    """How over-long examples are handled: ``"error"`` (default) or ``"truncate"``.

    gin: ``length_policy.truncation = 'truncate'``.
    """
    if truncation not in TRUNCATION_POLICIES:
        raise ValueError(
            f"length_policy.truncation must be one of {TRUNCATION_POLICIES}; got {truncation!r}."
        )
    return truncation


_LOG_AT = tf.constant([10**k for k in range(15)], dtype=tf.int64)


class TruncationCounts:
    """Counts of examples cut by the ``"truncate"`` policy, per feature.

    The counters are ``tf.Variable`` s updated inside ``tf.data`` maps, so they count the
    examples actually read (an example read twice is counted twice).
    """

    def __init__(self) -> None:
        self._variables: dict[str, tf.Variable] = {}

    def variable(self, feature: str) -> tf.Variable:
        if feature not in self._variables:
            self._variables[feature] = tf.Variable(
                0, dtype=tf.int64, trainable=False, name=f"truncated_{feature}"
            )
        return self._variables[feature]

    def as_dict(self) -> dict[str, int]:
        """``{feature: number of examples truncated so far}``."""
        return {k: int(v.numpy()) for k, v in self._variables.items()}

    def __repr__(self) -> str:
        return f"TruncationCounts({self.as_dict()})"


def enforce_max_lengths(
    dataset: tf.data.Dataset,
    max_lengths: Mapping[str, int],
    *,
    truncation: str = "error",
    counts: TruncationCounts | None = None,
    label: str = "",
) -> tf.data.Dataset:
    """Applies the length policy to the rank-1 features named in ``max_lengths``.

    Args:
      dataset: examples; features not in ``max_lengths`` pass unchanged.
      max_lengths: ``{feature: maximum length}``.
      truncation: ``"error"`` or ``"truncate"`` (see the module docstring).
      counts: where ``"truncate"`` counts its cuts (a fresh one if ``None``).
      label: words naming the data (e.g. the task), put into messages.

    Returns:
      The dataset with the checks (``"error"``) or cuts (``"truncate"``) attached.
    """
    if truncation not in TRUNCATION_POLICIES:
        raise ValueError(f"truncation must be one of {TRUNCATION_POLICIES}; got {truncation!r}.")
    for feature, length in max_lengths.items():
        if not isinstance(length, int) or length < 1:
            raise ValueError(f"Maximum length of {feature!r} must be a positive int; got {length}.")
    where = f" of {label}" if label else ""
    counts = TruncationCounts() if counts is None else counts
    variables = (
        {f: counts.variable(f) for f in max_lengths if f in dataset.element_spec}
        if truncation == "truncate"
        else {}
    )

    def _apply(example):
        out = dict(example)
        for feature, max_length in max_lengths.items():
            if feature not in example:
                continue
            value = example[feature]
            if truncation == "error":
                length = tf.shape(value, out_type=tf.int64)[0]
                check = tf.debugging.Assert(
                    length <= max_length,
                    [
                        f"Feature {feature}{where} is longer than its maximum length "
                        f"{max_length}; length:",
                        length,
                        "Raise the sequence length, or set truncation=truncate to cut "
                        "such examples with a logged count.",
                    ],
                )
                with tf.control_dependencies([check]):
                    out[feature] = tf.identity(value)
            else:
                out[feature] = _truncate(value, max_length, variables[feature], feature, where)
        return out

    return dataset.map(_apply, num_parallel_calls=tf.data.AUTOTUNE)


def _truncate(
    value: tf.Tensor, max_length: int, counter: tf.Variable, feature: str, where: str
) -> tf.Tensor:
    """``value[:max_length]``, counting (and at 1, 10, 100, … logging) each real cut."""
    length = tf.shape(value, out_type=tf.int64)[0]

    def _count_and_log():
        total = counter.assign_add(1)
        logged = tf.cond(
            tf.reduce_any(tf.equal(total, _LOG_AT)),
            lambda: _log_truncation(feature, where, length, max_length, total),
            lambda: tf.constant(False),
        )
        with tf.control_dependencies([logged]):
            return tf.identity(total)

    counted = tf.cond(length > max_length, _count_and_log, lambda: tf.constant(0, tf.int64))
    with tf.control_dependencies([counted]):
        return tf.identity(value[:max_length])


def _log_truncation(feature, where, length, max_length, total):
    op = tf.print(
        f"mpt_jax: truncated '{feature}'{where} from length",
        length,
        f"to {max_length}; examples truncated so far:",
        total,
        # stderr, not tf.compat.v1.logging.warning: that is TensorFlow's C++ log, which
        # mpt-jax silences below ERROR (TF_CPP_MIN_LOG_LEVEL=2) with its start-up noise
        output_stream=sys.stderr,
    )
    with tf.control_dependencies([op]):
        return tf.constant(True)


def check_task_lengths(
    mixture_or_task_name: str,
    task_feature_lengths: Mapping[str, int],
    *,
    split: str,
    num_examples: int | None = None,
    truncation: str | None = None,
) -> dict[str, dict[str, int]]:
    """Applies the length policy to the untrimmed examples of every task of a mixture.

    For readers that trim before this converter sees the data (``seqio.Evaluator`` calls
    ``Task.get_dataset`` with its default ``trim_output_features=True``): reads each task's
    ``split`` (its first ``num_examples``) untrimmed through :func:`enforce_max_lengths`.

    Args:
      mixture_or_task_name: a registered seqio task or mixture.
      task_feature_lengths: ``{"inputs": S, "targets": T}``.
      split: the split to read.
      num_examples: read only the first ``num_examples`` of each task (None: all).
      truncation: ``"error"`` / ``"truncate"``; None reads :func:`length_policy`.

    Returns:
      ``{task: {feature: examples that were (or, when trimmed later, will be) cut}}``;
      all zeros under ``"error"``.

    Raises:
      tf.errors.InvalidArgumentError: under ``"error"``, at the first over-long example,
        naming the feature, the task, its length and the maximum.
    """
    truncation = length_policy() if truncation is None else truncation
    provider = seqio.get_mixture_or_task(mixture_or_task_name)
    tasks = provider.tasks if isinstance(provider, seqio.Mixture) else [provider]
    lengths = {k: v for k, v in task_feature_lengths.items()
               if k in PromptEncDecFeatureConverter.TASK_FEATURES}  # fmt: skip
    report = {}
    for task in tasks:
        ds = task.get_dataset(dict(task_feature_lengths), split=split, shuffle=False,
                              num_epochs=1, trim_output_features=False)  # fmt: skip
        if num_examples is not None:
            ds = ds.take(num_examples)
        counts = TruncationCounts()
        ds = enforce_max_lengths(ds, lengths, truncation=truncation, counts=counts,
                                 label=task.name)  # fmt: skip
        for _ in ds.as_numpy_iterator():
            pass
        report[task.name] = {k: counts.as_dict().get(k, 0) for k in lengths}
    return report


@gin.configurable
class PromptEncDecFeatureConverter(seqio.FeatureConverter):
    """``seqio.EncDecFeatureConverter`` for prompted models: keeps ``task_ids``, never packs.

    Args:
      pack: must be False; True raises (prompts cannot be packed).
      use_custom_packing_ops: accepted for T5X's call signature; packing is never used.
      apply_length_check: seqio's own output-length validation.
      bos_id: the first decoder input token (T5: 0).
      passthrough_features: extra features copied unchanged (seqio's meaning).
      truncation: ``"error"`` or ``"truncate"``; ``None`` (default) reads
        :func:`length_policy` (see the module docstring).
      task_index: the run's task-id mapping: ``task_ids`` arrive as task keys
        (``task_ids.add_task_ids``) and leave as this mapping's ids. ``None``: the
        examples carry ids already, and a task key among them is an error.

    Example::

      converter = PromptEncDecFeatureConverter(task_index=TaskIndex(("rte", "mnli")))
      ds = converter(task_ds, {"inputs": 256, "targets": 16})
      # ds elements: encoder_input_tokens [256], ..., task_ids []
    """

    TASK_FEATURES = {
        "inputs": seqio.FeatureConverter.FeatureSpec(dtype=tf.int32),
        "targets": seqio.FeatureConverter.FeatureSpec(dtype=tf.int32),
    }
    MODEL_FEATURES = {
        "encoder_input_tokens": seqio.FeatureConverter.FeatureSpec(dtype=tf.int32),
        "decoder_target_tokens": seqio.FeatureConverter.FeatureSpec(dtype=tf.int32),
        "decoder_input_tokens": seqio.FeatureConverter.FeatureSpec(dtype=tf.int32),
        "decoder_loss_weights": seqio.FeatureConverter.FeatureSpec(dtype=tf.int32),
        "task_ids": seqio.FeatureConverter.FeatureSpec(dtype=tf.int32, rank=0),
    }
    # Packing is refused in __init__, so no packing features exist.
    PACKING_FEATURE_DTYPES = None
    # ``get_model_feature_lengths`` reports this for the scalar ``task_ids`` (seqio skips
    # length checks of rank-0 features); see :func:`model_input_shapes` for array shapes.
    TASK_IDS_LENGTH = 1

    def __init__(
        self,
        pack: bool = False,
        use_custom_packing_ops: bool = False,
        apply_length_check: bool = True,
        bos_id: int = 0,
        passthrough_features: Mapping[str, seqio.FeatureConverter.FeatureSpec] | None = None,
        truncation: str | None = None,
        task_index: TaskIndex | None = None,
    ):
        if pack:
            raise ValueError(
                "PromptEncDecFeatureConverter got pack=True, but prompts cannot be packed: "
                "the prompt is prepended to every encoder sequence and a packed row would "
                "mix examples (and tasks) under one prompt. Set pack=False (in T5X: "
                "`train/utils.DatasetConfig.pack = False`)."
            )
        if truncation is None:
            truncation = length_policy()
        elif truncation not in TRUNCATION_POLICIES:
            raise ValueError(
                f"truncation must be one of {TRUNCATION_POLICIES}; got {truncation!r}."
            )
        self._truncation = truncation
        self._task_index = task_index
        self._truncation_counts = TruncationCounts()
        super().__init__(
            pack=False,
            use_custom_packing_ops=use_custom_packing_ops,
            apply_length_check=apply_length_check,
            bos_id=bos_id,
            passthrough_features=passthrough_features,
        )

    @property
    def truncation(self) -> str:
        return self._truncation

    @property
    def truncation_counts(self) -> TruncationCounts:
        """Examples cut so far under ``truncation="truncate"``, per feature."""
        return self._truncation_counts

    def __call__(
        self, ds: tf.data.Dataset, task_feature_lengths: Mapping[str, int]
    ) -> tf.data.Dataset:
        """Applies the length policy, then seqio's validated conversion."""
        if "task_ids" not in ds.element_spec:
            raise ValueError(
                "The dataset has no 'task_ids' feature (features: "
                f"{sorted(ds.element_spec)}). Add mpt_jax.data.task_ids.add_task_ids to the "
                "task's preprocessors."
            )
        spec = ds.element_spec["task_ids"]
        if spec.dtype != tf.int32 or spec.shape.rank not in (0, 1):
            raise ValueError(
                f"'task_ids' must be int32 of shape [] or [1] per example; got "
                f"{spec.dtype.name} of shape {spec.shape}."
            )
        task_feature_lengths = dict(task_feature_lengths)
        ids_length = task_feature_lengths.pop("task_ids", 1)
        if ids_length != 1:
            raise ValueError(
                f"The length of 'task_ids' must be 1; got {ids_length} (one id per example)."
            )
        if spec.shape.rank == 1:
            ds = ds.map(_scalar_task_ids, num_parallel_calls=tf.data.AUTOTUNE)
        ds = ds.map(_task_ids_mapper(self._task_index), num_parallel_calls=tf.data.AUTOTUNE)
        lengths = {k: v for k, v in task_feature_lengths.items() if k in self.TASK_FEATURES}
        ds = enforce_max_lengths(
            ds, lengths, truncation=self._truncation, counts=self._truncation_counts
        )
        return super().__call__(ds, task_feature_lengths)

    def _convert_example(self, features: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        converted = {
            "encoder_input_tokens": features["inputs"],
            "decoder_target_tokens": features["targets"],
            "decoder_input_tokens": seqio.utils.make_autoregressive_inputs(
                features["targets"], bos_id=self.bos_id
            ),
            "decoder_loss_weights": seqio.feature_converters.non_padding_position(
                features["targets"]
            ),
            "task_ids": features["task_ids"],
        }
        converted.update({k: features[k] for k in self._passthrough_features})
        return converted

    def _convert_features(
        self, ds: tf.data.Dataset, task_feature_lengths: Mapping[str, int]
    ) -> tf.data.Dataset:
        ds = seqio.utils.trim_and_pad_dataset(ds, task_feature_lengths)
        return ds.map(self._convert_example, num_parallel_calls=tf.data.AUTOTUNE)

    def get_model_feature_lengths(self, task_feature_lengths: Mapping[str, int]) -> dict[str, int]:
        encoder_length = task_feature_lengths["inputs"]
        decoder_length = task_feature_lengths["targets"]
        lengths = {
            "encoder_input_tokens": encoder_length,
            "decoder_target_tokens": decoder_length,
            "decoder_input_tokens": decoder_length,
            "decoder_loss_weights": decoder_length,
            "task_ids": self.TASK_IDS_LENGTH,
        }
        for k in self._passthrough_features:
            lengths[k] = task_feature_lengths[k]
        return lengths


def _task_ids_mapper(index: TaskIndex | None):
    """Task keys to the run's ids (with a mapping), or a check that no key slipped through."""
    if index is not None:
        lookup = ids_from_keys(index)
        return lambda example: {**example, "task_ids": lookup(example["task_ids"])}

    def check(example):
        ids = example["task_ids"]
        is_id = tf.debugging.assert_less(
            ids, KEY_BASE,
            message="task_ids hold task keys (from add_task_ids): give the feature converter "
            "the run's mapping, PromptEncDecFeatureConverter(task_index=...) (gin: "
            "PromptEncDecFeatureConverter.task_index = @task_ids.task_index())",
        )  # fmt: skip
        with tf.control_dependencies([is_id]):
            return {**example, "task_ids": tf.identity(ids)}

    return check


def _scalar_task_ids(example):
    """``task_ids [1] -> []``; an example with another number of ids fails loudly."""
    ids = example["task_ids"]
    check = tf.debugging.assert_equal(
        tf.size(ids), 1, message="Each example must carry exactly one task id."
    )
    with tf.control_dependencies([check]):
        return {**example, "task_ids": tf.reshape(ids, [])}


def model_input_shapes(
    task_feature_lengths: Mapping[str, int], batch_size: int
) -> dict[str, tuple[int, ...]]:
    """Array shapes of a batch (for model initialisation): ``[B, length]``, ``task_ids [B]``."""
    lengths = PromptEncDecFeatureConverter().get_model_feature_lengths(task_feature_lengths)
    return {
        k: (batch_size,) if k == "task_ids" else (batch_size, length)
        for k, length in lengths.items()
    }
