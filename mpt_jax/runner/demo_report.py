"""The demo's results: scores of the source prompts, per-method summaries, the table,
the learning-curve plot, the RMS figures and ``results.json``.

Nothing here trains. :func:`summarise` turns the target evaluations of
:func:`mpt_jax.runner.demo.adapt_targets` into each method's entry (rate picked on
validation, test scores at that rate); :func:`results` assembles the record that
:func:`write` saves as ``results.json``, ``table.txt`` and ``learning_curves.png``.
Every function takes the methods' names from its arguments (the keys of a mapping,
a group's ``methods``), so the demo alone defines them.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mpt_jax.prompts.accounting import count_parameters
from mpt_jax.prompts.source_init import init_from_source
from mpt_jax.runner.demo_data import encode, stack_batches

PyTree = Any


# -- prompt statistics ------------------------------------------------------------------------


def rms(x) -> float:
    """Root mean square ``sqrt(mean(x²))`` of an array."""
    return float(np.sqrt(np.mean(np.square(np.asarray(x, np.float64)))))


def mpt_task_prompts(params: PyTree) -> np.ndarray:
    """``P ∘ (U_k V_k)`` of every source task: ``[B, T, L, D]`` from params ``[B, ...]``."""
    p = {k: np.asarray(v) for k, v in params.items()}
    return p["shared"][:, None] * np.einsum("btlr,btrd->btld", p["task_cols"], p["task_rows"])


def source_rms(
    teachers: np.ndarray,
    single: Mapping[str, np.ndarray],
    mpt: Mapping[str, PyTree],
    rank: int,
) -> list[dict]:
    """RMS of every source prompt (per benchmark), and of the target prompts they start.

    Args:
      teachers: the teachers' prompts ``[B, T, L, D]``.
      single: name → one prompt per benchmark ``[B, L, D]`` (SPoT's).
      mpt: name → MPT params ``[B, ...]``.
      rank: ``r`` of the target prompts the MPT sources start (their ``average``).

    Returns:
      per benchmark ``{"teachers": [T], name: rms, name: {"shared", "task_prompts" [T],
      "target_start"}}``, in that order.
    """
    out = []
    for b in range(teachers.shape[0]):
        pick = lambda tree, b=b: jax.tree.map(lambda x: x[b], tree)
        row = {"teachers": [rms(t) for t in teachers[b]]}
        row.update({name: rms(prompt[b]) for name, prompt in single.items()})
        for name, params in mpt.items():
            p = pick(params)
            start = init_from_source(p, "average", num_target_tasks=1, rank=rank)
            row[name] = {
                "shared": rms(p["shared"]),
                "task_prompts": [rms(t) for t in mpt_task_prompts(params)[b]],
                "target_start": rms(
                    start["shared"] * (start["task_cols"][0] @ start["task_rows"][0])
                ),
            }
        out.append(row)
    return out


def source_accuracy(
    score: Callable, backbone: PyTree, benches, tables: Mapping[str, np.ndarray], test_size: int
) -> dict[str, float]:
    """Test exact match on the source tasks of every table of source prompts ``[B, T, L, D]``
    (name → mean over benchmarks and tasks), scored by ``score``
    (:func:`~mpt_jax.runner.demo_data.scorer`) on ``test_size`` examples per task."""
    data = stack_batches(
        [
            encode(bench.examples(t, "test", test_size), 0)
            for bench in benches
            for t in bench.source_tasks
        ]
    )
    out = {}
    for name, table in tables.items():
        flat = jnp.asarray(table.reshape((-1,) + table.shape[2:]))  # [B · T, L, D]
        em, _ = score(flat, backbone, data, np.arange(flat.shape[0]))
        out[name] = float(np.mean(em))
    return out


# -- target adaptation ------------------------------------------------------------------------


def summarise(history, validation, groups, shots, seeds, num_benches, learning_rates):
    """Per method: the rate with the best validation EM, and at that rate the test scores
    (step 0 and final, mean and std over (benchmark, seed)), curves and prompt RMS.

    Args:
      history: ``(step, keys, em, rc, rms)`` test evaluations; ``keys[i]`` is the
        ``(method, rate, Unit)`` of score ``i`` (:func:`mpt_jax.runner.demo.adapt_targets`).
      validation: the same ``(keys, em, rc, rms)`` after the last step, validation split.
      groups: the target groups (their ``methods`` give the order, their ``prompt`` the
        parameter count).

    Returns:
      ``(methods, curves, target_rms)``, each keyed by method: ``methods`` the entry of
      ``results.json`` (rate, scores per k), ``curves`` per k the scores at each
      evaluated step, ``target_rms`` the prompts' RMS at step 0 and at the end.
    """
    methods = [m for g in groups for m in g.methods]
    params_per_task = {
        m: int(count_parameters(g.prompt).per_task) for g in groups for m in g.methods
    }

    def select(keys, values, m, lr, k=None):
        return np.asarray(
            [
                v
                for (mm, ll, u), v in zip(keys, values, strict=True)
                if mm == m and ll == lr and (k is None or u.shots == k)
            ]
        )

    v_keys, v_em = validation[0], validation[1]
    report, curves, target_rms = {}, {}, {}
    for m in methods:
        by_lr = {lr: float(select(v_keys, v_em, m, lr).mean()) for lr in learning_rates}
        lr = max(by_lr, key=by_lr.get)
        (_, keys, em0, rc0, norm0), (_, _, em, rc, norm) = history[0], history[-1]
        entry = {
            "learning_rate": lr,
            "validation_exact_match": {str(r): v for r, v in by_lr.items()},
            "params_per_task": params_per_task[m],
            "step0_exact_match": float(select(keys, em0, m, lr).mean()),
            "step0_rank_classification": float(select(keys, rc0, m, lr).mean()),
            "shots": {},
        }
        curves[m] = {}
        for k in shots:
            units = [u for (mm, ll, u) in keys if mm == m and ll == lr and u.shots == k]
            e, r = select(keys, em, m, lr, k), select(keys, rc, m, lr, k)
            groups_of = [(u.bench, u.seed) for u in units]
            per_seed = [
                np.mean([x for x, g in zip(e, groups_of, strict=True) if g == s])
                for s in sorted(set(groups_of))
            ]
            entry["shots"][str(k)] = {
                "exact_match": float(e.mean()),
                "exact_match_std": float(np.std(per_seed)),
                "rank_classification": float(r.mean()),
                "step0_exact_match": float(select(keys, em0, m, lr, k).mean()),
                "step0_rank_classification": float(select(keys, rc0, m, lr, k).mean()),
                "per_task_exact_match": [
                    float(np.mean([x for x, u in zip(e, units, strict=True) if u.task == j]))
                    for j in sorted({u.task for u in units})
                ],
            }
            curves[m][str(k)] = {
                "steps": [h[0] for h in history],
                "exact_match": [float(select(h[1], h[2], m, lr, k).mean()) for h in history],
                "rank_classification": [
                    float(select(h[1], h[3], m, lr, k).mean()) for h in history
                ],
            }
        target_rms[m] = {
            "step0": float(select(keys, norm0, m, lr).mean()),
            "final": float(select(keys, norm, m, lr).mean()),
        }
        report[m] = entry
    return report, curves, target_rms


# -- output -----------------------------------------------------------------------------------


def format_table(methods: dict, shots: Sequence[int]) -> str:
    """One row per method: chosen rate, parameters, step-0 rank classification, and per k
    the test exact match (± std over seeds) and rank classification after training."""
    head = f"{'method':<28}{'lr':>6}{'params':>8}{'step-0 RC':>11}"
    for k in shots:
        head += f" | {f'{k}-shot EM':>15}{'RC':>6}"
    lines = [head, "-" * len(head)]
    for m, r in methods.items():
        line = f"{m:<28}{r['learning_rate']:>6g}{r['params_per_task']:>8,d}"
        line += f"{r['step0_rank_classification']:>11.1f}"
        for k in shots:
            s = r["shots"][str(k)]
            em = f"{s['exact_match']:.1f} ± {s['exact_match_std']:.1f}"
            line += f" | {em:>15}{s['rank_classification']:>6.1f}"
        lines.append(line)
    return "\n".join(lines)


def plot_curves(curves: dict, shots: Sequence[int], path: pathlib.Path) -> None:
    """Test exact match (solid) and rank classification (dotted) against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(shots), figsize=(5.5 * len(shots), 4), squeeze=False)
    for ax, k in zip(axes[0], shots, strict=True):
        for i, (m, by_k) in enumerate(curves.items()):
            c = by_k[str(k)]
            ax.plot(c["steps"], c["exact_match"], color=f"C{i}", marker="o", markersize=3, label=m)
            ax.plot(c["steps"], c["rank_classification"], color=f"C{i}", linestyle=":")
        ax.set_title(f"{k}-shot target adaptation (dotted: rank classification)")
        ax.set_xlabel("training step")
        ax.set_ylabel("test accuracy (%), mean over tasks and seeds")
        ax.axhline(50.0, color="grey", linewidth=0.8, linestyle=":")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def results(
    history,
    validation,
    groups,
    *,
    benches,
    benchmark_seeds: Sequence[int],
    shots: Sequence[int],
    seeds: Sequence[int],
    learning_rates: Sequence[float],
    target_steps: int,
    source_scores: dict[str, float],
    prompt_rms: dict,
    seconds: dict[str, float],
    backbone_info: Mapping[str, Any],
    settings: dict,
) -> dict:
    """The record ``results.json`` holds: the table (with its caption), each method's
    entry and curves (:func:`summarise`), the source prompts' accuracy
    (``source_scores``, :func:`source_accuracy`), the RMS figures (``prompt_rms``: the
    token embeddings' and :func:`source_rms`; the target prompts' added), every task's
    symbol sets, the stages' seconds, the backbone's facts (its training history left
    out) and the settings."""
    methods, curves, target_rms = summarise(
        history, validation, groups, shots, seeds, len(benches), learning_rates
    )
    text = (
        f"Held-out target tasks of the embedded benchmark (seeds {benchmark_seeds}): test "
        f"accuracy (%) after {target_steps} steps, mean over {len(benches[0].target_tasks)} "
        f"tasks x few-shot seeds {seeds} (± std over seeds); EM exact match, RC rank "
        f"classification; lr picked on validation EM from {learning_rates}; chance 50%.\n"
        f"{format_table(methods, shots)}\n(source-task exact match: "
        + ", ".join(f"{m} {a:.1f}" for m, a in source_scores.items())
        + f"; total {seconds['total']:.0f} s)"
    )
    return {
        "table": text,
        "methods": methods,
        "curves": curves,
        "source_accuracy": source_scores,
        "rms": {**prompt_rms, "target": target_rms},
        "tasks": {
            f"{b}/{t.name}": {"set_a": t.set_a, "set_b": t.set_b}
            for b, bench in zip(benchmark_seeds, benches, strict=True)
            for t in bench.tasks
        },
        "seconds": seconds,
        "backbone": {k: v for k, v in backbone_info.items() if k != "history"},
        "settings": settings,
    }


def write(out: pathlib.Path, report: dict, shots: Sequence[int]) -> list[pathlib.Path]:
    """Saves ``learning_curves.png``, ``table.txt`` and ``results.json`` of ``report``
    (:func:`results`) in ``out``; returns their paths."""
    paths = [out / "table.txt", out / "results.json", out / "learning_curves.png"]
    plot_curves(report["curves"], shots, paths[2])
    paths[0].write_text(report["table"] + "\n")
    paths[1].write_text(json.dumps(report, indent=2) + "\n")
    return paths
