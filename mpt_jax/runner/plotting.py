"""Learning curves of a run folder as a PNG (``mpt-jax plot MODEL_DIR``).

Reads ``<model_dir>/metrics.jsonl`` (``{"step", "kind": "train" | "eval", name: value}``
per line) and draws one panel per quantity: the training losses (``loss``, and
``task_loss``, ``kl``, ``mse`` or per-task losses when the run logged them) against the
step, then each evaluation metric. Needs matplotlib (a dependency of the package); draws
with the non-interactive ``Agg`` backend, so it works without a display.
"""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict


def read_curves(model_dir: str) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """``{kind: {name: [(step, value), ...]}}`` from ``metrics.jsonl``.

    Raises:
      FileNotFoundError: naming the file when the folder holds no metrics.
    """
    path = os.path.join(model_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{path!r} does not exist: MODEL_DIR must be the folder of an `mpt-jax train` run"
        )
    curves: dict[str, dict[str, list[tuple[int, float]]]] = defaultdict(lambda: defaultdict(list))
    with open(path) as f:
        for line in f:
            if not line.strip():
                continue
            record = json.loads(line)
            kind, step = record.get("kind", "train"), int(record["step"])
            for name, value in record.items():
                if name in ("kind", "step") or not isinstance(value, int | float):
                    continue
                if math.isfinite(value):
                    curves[kind][name].append((step, float(value)))
    return {kind: dict(by_name) for kind, by_name in curves.items()}


_LOSS_WORDS = ("loss", "kl", "mse")


def plot_learning_curves(model_dir: str, output: str | None = None) -> str:
    """Draws the curves of ``model_dir`` to ``output`` (default
    ``<model_dir>/learning_curves.png``); returns the path written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = read_curves(model_dir)
    train = curves.get("train", {})
    losses = {n: v for n, v in train.items() if any(w in n for w in _LOSS_WORDS)}
    panels: list[tuple[str, dict[str, list[tuple[int, float]]]]] = []
    if losses:
        panels.append(("training loss", losses))
    for name, values in sorted(curves.get("eval", {}).items()):
        panels.append((f"eval {name}", {name: values}))
    if not panels:
        raise ValueError(f"{model_dir}/metrics.jsonl holds no loss or eval metric to plot")
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.2 * rows), squeeze=False)
    for ax, (title, series) in zip(axes.flat, panels, strict=False):
        for name, values in sorted(series.items()):
            steps, ys = zip(*values, strict=True)
            ax.plot(steps, ys, marker="o" if len(steps) < 30 else None, label=name)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if len(series) > 1:
            ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.suptitle(os.path.basename(os.path.abspath(model_dir)))
    fig.tight_layout()
    output = output or os.path.join(model_dir, "learning_curves.png")
    fig.savefig(output, dpi=100)
    plt.close(fig)
    return output
