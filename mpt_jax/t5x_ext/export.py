"""Prompts out of a T5X checkpoint: ``.npy`` files and Hugging Face PEFT adapters.

A T5X checkpoint holds the whole train state (``target/...`` parameters and the
optimizer's ``state/...``). This module reads only the prompt subtree
(``target/prompt``; ``target/encoder/prompt`` for the Flaxformer architecture) —
partially, so exporting from an XXL run does not read the backbone — and writes it with
:mod:`mpt_jax.prompts.io`:

- ``.npy``: one file per parameter (``shared.npy``, ``task_cols.npy``, …), readable by
  ``prompts.from_npy`` and :func:`mpt_jax.prompts.io.load_npy`;
- PEFT: ``adapter_model.safetensors`` + ``adapter_config.json`` of
  ``MultitaskPromptTuningConfig`` (MPT prompts only);
- the token embedding table ``[vocab, embed]`` as one ``.npy``, for the
  ``from_sampled_vocab`` / ``from_text`` / ``from_class_labels`` initialisers.

Both T5X formats are read: the current Orbax one (``checkpoint_N/state``) and the
legacy tensorstore + msgpack one of the public T5 1.1 checkpoints. Command line::

    python -m mpt_jax.t5x_ext.export --checkpoint=<model_dir>/checkpoint_1060000 \\
        --npy_dir=<dir> [--peft_dir=<dir>] [--scope=prompt] [--embedding_npy=<file>]
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

import numpy as np

from mpt_jax.backbone.t5x_checkpoint import load_t5x_checkpoint
from mpt_jax.prompts import io as prompt_io

MPT_NAMES = frozenset(prompt_io.PEFT_NAMES)


def read_params(checkpoint: str, scope: str = "prompt") -> dict[str, Any]:
    """The numpy subtree ``target/<scope>`` of a T5X checkpoint (stored dtypes kept).

    Args:
      checkpoint: a ``checkpoint_<step>`` directory (Orbax or legacy format).
      scope: ``/``-joined parameter path, e.g. ``prompt``, ``encoder/prompt``,
        ``teacher_prompt`` or ``token_embedder`` ("" for every parameter).

    Returns:
      The nested dict of numpy arrays under that scope (read with
      :func:`mpt_jax.backbone.load_t5x_checkpoint`: only that subtree is loaded).
    """
    return load_t5x_checkpoint(checkpoint, scope, dtype=None)


def export_prompt(
    checkpoint: str,
    npy_dir: str | None = None,
    peft_dir: str | None = None,
    scope: str = "prompt",
    overwrite: bool = False,
    base_model_name_or_path: str | None = None,
) -> dict[str, Any]:
    """Writes the checkpoint's prompt as ``.npy`` files and/or a PEFT adapter.

    Args:
      checkpoint: a T5X ``checkpoint_<step>`` directory.
      npy_dir: where to write one ``.npy`` per prompt parameter (None: skip).
      peft_dir: where to write the PEFT adapter (None: skip); only for MPT prompts
        (``shared``, ``task_cols``, ``task_rows``).
      scope: the prompt's parameter path.
      overwrite: replace ``.npy`` files already in ``npy_dir``.
      base_model_name_or_path: recorded in the PEFT config.

    Returns:
      The prompt tree that was written.
    """
    tree = read_params(checkpoint, scope)
    if npy_dir is not None:
        prompt_io.save_npy(tree, npy_dir, overwrite=overwrite)
    if peft_dir is not None:
        if set(tree) != MPT_NAMES:
            raise ValueError(
                f"PEFT export needs an MPT prompt with parameters {sorted(MPT_NAMES)}; "
                f"{scope!r} holds {sorted(tree)}. Use the .npy export instead."
            )
        prompt_io.export_peft(tree, peft_dir, base_model_name_or_path=base_model_name_or_path)
    return tree


def export_embedding(checkpoint: str, path: str) -> np.ndarray:
    """Writes the token embedding table ``[vocab, embed]`` to ``path`` (``.npy``)."""
    table = read_params(checkpoint, "token_embedder")["embedding"]
    np.save(path, table)
    return table


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True, help="T5X checkpoint_<step> directory")
    parser.add_argument("--npy_dir", help="write one .npy per prompt parameter here")
    parser.add_argument("--peft_dir", help="write a PEFT MultitaskPromptTuning adapter here")
    parser.add_argument("--scope", default="prompt", help="prompt parameter path")
    parser.add_argument("--embedding_npy", help="write the token embedding table here")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    if not (args.npy_dir or args.peft_dir or args.embedding_npy):
        parser.error("nothing to do: give --npy_dir, --peft_dir and/or --embedding_npy")
    if args.npy_dir or args.peft_dir:
        tree = export_prompt(
            args.checkpoint, args.npy_dir, args.peft_dir, args.scope, overwrite=args.overwrite
        )
        shapes = {k: tuple(v.shape) for k, v in prompt_io.flatten(tree).items()}
        print(f"exported {args.scope} {shapes} from {args.checkpoint}")
    if args.embedding_npy:
        table = export_embedding(args.checkpoint, args.embedding_npy)
        print(f"wrote token embeddings {table.shape} to {args.embedding_npy}")


if __name__ == "__main__":
    main()
