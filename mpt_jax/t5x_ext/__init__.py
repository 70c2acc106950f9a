"""Optional T5X / Flaxformer integration: run MPT with ``python -m t5x.train`` and gin.

T5X and Flaxformer are not on PyPI, so nothing else in ``mpt_jax`` imports this
package; it is imported by gin files (``from mpt_jax.t5x_ext import models``) when they
are installed. Install them next to mpt_jax::

    git clone https://github.com/google-research/t5x && pip install -e ./t5x
    git clone https://github.com/google/flaxformer && pip install -e ./flaxformer

Modules (each a single concern):

- :mod:`~mpt_jax.t5x_ext.models`: T5X ``EncoderDecoderModel`` subclasses that route the
  batch's ``task_ids`` into loss, evaluation, scoring and decoding, and the
  distillation model of MPT's source training;
- :mod:`~mpt_jax.t5x_ext.optim`: optimizer settings under which only prompt parameters
  train and have optimizer state;
- :mod:`~mpt_jax.t5x_ext.partitioning`: logical-axis rules for the prompt axes;
- :mod:`~mpt_jax.t5x_ext.target_init`: initialisers that start a target prompt from an
  exported source prompt (source task k, average of the source tasks, shared only);
- :mod:`~mpt_jax.t5x_ext.export`: prompts from a T5X checkpoint to ``.npy`` / PEFT;
- :mod:`~mpt_jax.t5x_ext.flaxformer_encoder`: Flaxformer's T5 with the prompt injected
  (needs Flaxformer).
"""

from __future__ import annotations

import importlib.util

_INSTALL = {
    "t5x": "pip install git+https://github.com/google-research/t5x",
    "flaxformer": "pip install git+https://github.com/google/flaxformer",
}


def require(*packages: str) -> None:
    """Raises ``ImportError`` naming what to install when one of ``packages`` is missing."""
    missing = [p for p in packages if importlib.util.find_spec(p) is None]
    if missing:
        how = "; ".join(f"{p}: `{_INSTALL.get(p, f'pip install {p}')}`" for p in missing)
        raise ImportError(
            f"mpt_jax.t5x_ext needs {', '.join(missing)}, which is not installed (T5X and "
            f"Flaxformer are not on PyPI). Install it from its repository ({how}). The rest "
            "of mpt_jax (and `mpt-jax` runs) works without it."
        )


require("t5x")
