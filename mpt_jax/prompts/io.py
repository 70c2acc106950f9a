"""Prompt IO: numpy files per parameter, and Hugging Face PEFT's MPT adapter layout.

``.npy`` layout. A prompt tree (``{"shared": [L, D], "task_cols": [T, L, r], ...}``,
nested dicts allowed, Flax ``Partitioned`` boxes unwrapped) is written as one file
per parameter, named by the parameter's path joined with :data:`SEP` (``"."``):
``shared.npy``, ``task_cols.npy``, ``attn_down.kernel.npy``. Loading against a
template (the tree a generator's ``init`` or ``jax.eval_shape`` gives) checks that
every parameter is there with the template's shape and dtype and that no file is
left over; errors name the parameter and both shapes.

PEFT layout (``peft.MultitaskPromptTuningConfig``, read and written WITHOUT
torch): a directory holding ``adapter_model.safetensors`` with exactly the keys
``prompt_embeddings`` (our ``shared``), ``prefix_task_cols`` (``task_cols``) and
``prefix_task_rows`` (``task_rows``), and ``adapter_config.json`` with
``peft_type = "MULTITASK_PROMPT_TUNING"``, ``num_virtual_tokens``, ``token_dim``,
``num_tasks``, ``num_ranks``, ``num_transformer_submodules = 1``. PEFT's default
for seq2seq models is ``num_transformer_submodules = 2`` (the prompt split across
encoder and decoder); mpt_jax prompts the encoder only, so such adapters are
refused with an error instead of dropping the decoder half.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from safetensors.numpy import load_file, save_file

from mpt_jax.prompts.generators import MultitaskPrompt

#: Separator joining a parameter's path into its file name (``attn_down.kernel.npy``).
SEP = "."
#: Our MPT parameter names → the keys PEFT writes in ``adapter_model.safetensors``.
PEFT_NAMES = {
    "shared": "prompt_embeddings",
    "task_cols": "prefix_task_cols",
    "task_rows": "prefix_task_rows",
}
PEFT_WEIGHTS = "adapter_model.safetensors"
PEFT_CONFIG = "adapter_config.json"
PEFT_TYPE = "MULTITASK_PROMPT_TUNING"


def flatten(tree: Mapping[str, Any]) -> dict[str, Any]:
    """``{"a": {"b": x}}`` → ``{"a.b": x}`` (boxes unwrapped; names must not contain ``SEP``)."""
    flat = {}

    def visit(node, prefix):
        for key, value in node.items():
            key = str(key)
            if SEP in key or os.sep in key:
                raise ValueError(f"parameter name {key!r} contains {SEP!r} or {os.sep!r}")
            name = f"{prefix}{SEP}{key}" if prefix else key
            if isinstance(value, Mapping):
                visit(value, name)
            else:
                flat[name] = value

    visit(nn.unbox(tree), "")
    return flat


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`flatten`."""
    tree: dict[str, Any] = {}
    for name, value in flat.items():
        *parents, leaf = name.split(SEP)
        node = tree
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value
    return tree


def check_against_template(
    tree: Mapping[str, Any], template: Mapping[str, Any], what: str = "prompt"
) -> None:
    """Raises ``ValueError`` naming the parameter if ``tree`` does not fit ``template``.

    ``template`` leaves may be arrays, ``jax.ShapeDtypeStruct`` or Flax boxes.
    Checks the set of parameters, each shape and each dtype.
    """
    have, want = flatten(tree), flatten(template)
    missing, extra = sorted(set(want) - set(have)), sorted(set(have) - set(want))
    if missing:
        raise ValueError(f"{what} lacks parameters {missing} (has {sorted(have)})")
    if extra:
        raise ValueError(f"{what} has parameters {extra} that the template lacks")
    for name, value in have.items():
        expected = want[name]
        if tuple(np.shape(value)) != tuple(expected.shape):
            raise ValueError(
                f"{what} parameter {name!r} has shape {tuple(np.shape(value))} but "
                f"{tuple(expected.shape)} is expected"
            )
        if np.dtype(value.dtype) != np.dtype(expected.dtype):
            raise ValueError(
                f"{what} parameter {name!r} has dtype {np.dtype(value.dtype)} but "
                f"{np.dtype(expected.dtype)} is expected"
            )


def save_npy(tree: Mapping[str, Any], directory: str, overwrite: bool = False) -> list[str]:
    """Writes each parameter of ``tree`` to ``directory/<path joined by SEP>.npy``.

    Args:
      tree: the prompt parameters (e.g. ``params["prompt"]``).
      directory: created if needed.
      overwrite: if the directory already holds ``.npy`` files they are an error
        (stale files would be loaded back), unless ``overwrite`` removes them first.

    Returns:
      The written paths, sorted.
    """
    os.makedirs(directory, exist_ok=True)
    old = sorted(glob.glob(os.path.join(directory, "*.npy")))
    if old and not overwrite:
        raise FileExistsError(
            f"{directory!r} already holds {len(old)} .npy files ({os.path.basename(old[0])}, "
            "...); pass overwrite=True to replace them"
        )
    for path in old:
        os.remove(path)
    paths = []
    for name, value in flatten(tree).items():
        path = os.path.join(directory, name + ".npy")
        np.save(path, np.asarray(jax.device_get(value)))
        paths.append(path)
    return sorted(paths)


def load_npy(directory: str, template: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Reads the ``.npy`` files written by :func:`save_npy` back into a tree.

    Args:
      directory: the directory :func:`save_npy` wrote.
      template: the expected tree; when given, every parameter must be present with
        the template's shape and dtype, and no other file may be present.

    Returns:
      The nested dict of numpy arrays.
    """
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"prompt directory {directory!r} does not exist")
    paths = sorted(glob.glob(os.path.join(directory, "*.npy")))
    if not paths:
        raise FileNotFoundError(f"prompt directory {directory!r} holds no .npy files")
    flat = {os.path.basename(p)[: -len(".npy")]: np.load(p) for p in paths}
    tree = unflatten(flat)
    if template is not None:
        check_against_template(tree, template, what=f"prompt in {directory!r}")
    return tree


# --- Hugging Face PEFT ------------------------------------------------------------------


def _mpt_shapes(params: Mapping[str, Any], what: str) -> tuple[int, int, int, int]:
    """Checks an MPT tree and returns ``(tasks, length, rank, embed)``."""
    names = set(params)
    if names != set(PEFT_NAMES):
        raise ValueError(
            f"{what} must hold exactly {sorted(PEFT_NAMES)} (a MultitaskPrompt), got "
            f"{sorted(names)}"
        )
    shared, cols, rows = (np.shape(params[k]) for k in ("shared", "task_cols", "task_rows"))
    if len(shared) != 2 or len(cols) != 3 or len(rows) != 3:
        raise ValueError(
            f"{what}: expected shared [L, D], task_cols [T, L, r], task_rows [T, r, D], got "
            f"shapes {shared}, {cols}, {rows}"
        )
    length, embed = shared
    tasks, _, rank = cols
    expected = {"task_cols": (tasks, length, rank), "task_rows": (tasks, rank, embed)}
    for name, shape in expected.items():
        if tuple(np.shape(params[name])) != shape:
            raise ValueError(
                f"{what}: {name} has shape {tuple(np.shape(params[name]))}, but shared "
                f"{shared} and task_cols {cols} need {shape}"
            )
    return tasks, length, rank, embed


def peft_config(
    num_tasks: int,
    num_virtual_tokens: int,
    num_ranks: int,
    token_dim: int,
    task_type: str = "SEQ_2_SEQ_LM",
    base_model_name_or_path: str | None = None,
) -> dict[str, Any]:
    """The ``adapter_config.json`` PEFT needs to load an MPT prompt on the encoder."""
    return {
        "peft_type": PEFT_TYPE,
        "task_type": task_type,
        "base_model_name_or_path": base_model_name_or_path,
        "inference_mode": True,
        "num_virtual_tokens": int(num_virtual_tokens),
        "token_dim": int(token_dim),
        "num_tasks": int(num_tasks),
        "num_ranks": int(num_ranks),
        "num_transformer_submodules": 1,
        "prompt_tuning_init": "RANDOM",
        "prompt_tuning_init_task": 0,
        "prompt_tuning_init_text": None,
        "prompt_tuning_init_state_dict_path": None,
        "tokenizer_name_or_path": None,
        "num_layers": None,
        "num_attention_heads": None,
    }


def export_peft(
    params: Mapping[str, Any],
    directory: str,
    task_type: str = "SEQ_2_SEQ_LM",
    base_model_name_or_path: str | None = None,
) -> dict[str, Any]:
    """Writes a MultitaskPrompt's parameters as a PEFT MPT adapter (no torch needed).

    Args:
      params: ``{"shared": [L, D], "task_cols": [T, L, r], "task_rows": [T, r, D]}``
        (the ``prompt`` subtree of the model's parameters).
      directory: created if needed; receives ``adapter_model.safetensors`` and
        ``adapter_config.json``.
      task_type: PEFT's task type (``SEQ_2_SEQ_LM`` for T5).
      base_model_name_or_path: recorded for ``PeftModel.from_pretrained``.

    Returns:
      The written adapter configuration.

    Load it with ``PeftModel.from_pretrained(t5_model, directory)``; PEFT's prompt
    encoder then returns ``shared * (task_cols[k] @ task_rows[k])`` like ours.
    """
    params = nn.unbox(params)
    tasks, length, rank, embed = _mpt_shapes(params, "exported prompt")
    tensors = {
        peft: np.ascontiguousarray(np.asarray(jax.device_get(params[ours]), np.float32))
        for ours, peft in PEFT_NAMES.items()
    }
    config = peft_config(tasks, length, rank, embed, task_type, base_model_name_or_path)
    os.makedirs(directory, exist_ok=True)
    weights = os.path.join(directory, PEFT_WEIGHTS)
    save_file(tensors, weights)
    umask = os.umask(0)  # safetensors writes 0600; give the file the mode open() would
    os.umask(umask)
    os.chmod(weights, 0o666 & ~umask)
    with open(os.path.join(directory, PEFT_CONFIG), "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
    return config


def import_peft(
    directory: str, template: Mapping[str, Any] | None = None
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Reads a PEFT MPT adapter into our parameter names (no torch needed).

    Args:
      directory: holds ``adapter_model.safetensors`` and ``adapter_config.json``.
      template: optional expected tree (e.g. from ``MultitaskPrompt.init``); a
        different task count, length, rank or embed size is an error naming the
        parameter and both shapes.

    Returns:
      ``(params, config)``: ``{"shared", "task_cols", "task_rows"}`` numpy arrays,
      and the adapter configuration as a dict.
    """
    config_path = os.path.join(directory, PEFT_CONFIG)
    weights_path = os.path.join(directory, PEFT_WEIGHTS)
    for path in (config_path, weights_path):
        if not os.path.exists(path):
            raise FileNotFoundError(f"PEFT adapter file {path!r} does not exist")
    with open(config_path) as f:
        config = json.load(f)
    if config.get("peft_type") != PEFT_TYPE:
        raise ValueError(
            f"{config_path}: peft_type is {config.get('peft_type')!r}, expected {PEFT_TYPE!r}"
        )
    submodules = config.get("num_transformer_submodules") or 1
    if submodules != 1:
        raise ValueError(
            f"{config_path}: num_transformer_submodules={submodules}: PEFT splits that prompt "
            "between encoder and decoder, but mpt_jax prompts the encoder only; train the "
            "adapter with num_transformer_submodules=1"
        )
    tensors = load_file(weights_path)
    expected_keys = set(PEFT_NAMES.values())
    if set(tensors) != expected_keys:
        raise ValueError(
            f"{weights_path}: expected exactly the keys {sorted(expected_keys)}, got "
            f"{sorted(tensors)}"
        )
    params = {ours: tensors[peft] for ours, peft in PEFT_NAMES.items()}
    tasks, length, rank, embed = _mpt_shapes(params, weights_path)
    for field, value in (
        ("num_tasks", tasks), ("num_virtual_tokens", length), ("num_ranks", rank),
        ("token_dim", embed),
    ):  # fmt: skip
        if field in config and config[field] is not None and config[field] != value:
            raise ValueError(
                f"{directory}: adapter_config.json says {field}={config[field]} but the "
                f"tensors have {field}={value}"
            )
    if template is not None:
        check_against_template(params, template, what=f"PEFT adapter {directory!r}")
    return params, config


def generator_from_peft_config(config: Mapping[str, Any], **kwargs: Any) -> MultitaskPrompt:
    """The :class:`MultitaskPrompt` matching a PEFT MPT ``adapter_config.json``.

    ``num_virtual_tokens`` → ``length``, ``token_dim`` → ``embed_dim``, ``num_tasks``,
    ``num_ranks``; ``kwargs`` (e.g. ``dtype``) are passed on.
    """
    submodules = config.get("num_transformer_submodules") or 1
    if submodules != 1:
        raise ValueError(
            f"num_transformer_submodules={submodules}: mpt_jax prompts the encoder only"
        )
    for field in ("num_tasks", "num_virtual_tokens", "token_dim"):
        if config.get(field) is None:
            raise ValueError(f"PEFT config lacks {field!r}")
    return MultitaskPrompt(
        num_tasks=int(config["num_tasks"]),
        length=int(config["num_virtual_tokens"]),
        embed_dim=int(config["token_dim"]),
        num_ranks=int(config.get("num_ranks") or 1),
        **kwargs,
    )
