"""Draw the combined results of ``benchmarks.run_all`` (``results.png``) and tabulate them.

``markdown(combined)`` gives the results table that ``run_all`` writes next to the JSON
and that ``benchmarks/README.md`` quotes; ``plot(combined, path)`` draws two panels: each
side-by-side ratio against its target, and the training throughputs (examples/s).

    python -m benchmarks.plot results.json --png benchmarks/results.png --md results.md
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from typing import Any

_OPS = {"<=": "≤", ">=": "≥", "~": "≈"}


def _fmt(value: float) -> str:
    if value == 0 or 0.01 <= abs(value) < 1e5:
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return f"{value:.3g}"


#: Peak columns of the table: backend_dtype -> header.
_PEAKS = {
    "jax_float32": "JAX f32",
    "jax_bfloat16": "JAX bf16",
    "torch_float32": "torch f32",
    "torch_bfloat16": "torch bf16",
}


def machine_line(machine: Mapping[str, Any]) -> str:
    """One sentence: CPU (key flags), cores, device, library versions."""
    flags = " ".join(machine.get("cpu_key_flags", [])) or "no AVX-512/AMX"
    libs = ", ".join(
        f"{k} {machine[k]}" for k in ("jax", "torch", "transformers", "peft") if machine.get(k)
    )
    return (
        f"{machine.get('cpu', '?')} (family/model {machine.get('cpu_family_model', '?')}; "
        f"{flags}), {machine.get('cores', '?')} cores, device `{machine.get('device', '?')}`; "
        f"{libs}"
    )


def markdown(combined: Mapping[str, Any]) -> str:
    """Markdown: where and how it ran, the matmul peaks, every ratio, every figure."""
    results = combined["results"]
    machine = next(iter(results.values()))["machine"] if results else {}
    lines = [
        f"Size `{combined['size']}`, {combined['reps']} alternating rounds per figure (medians); "
        f"{machine_line(machine)}; run {combined.get('started', '?')}, "
        f"{combined.get('total_wall_s', 0):.0f} s in all.",
        "",
        "Matmul peaks measured in each benchmark's process (GFLOP/s, "
        "`[n, n] @ [n, n]`; achieved rates below are fractions of these):",
        "",
        "| benchmark | n | " + " | ".join(_PEAKS.values()) + " | load (1 min) |",
        "|---|---|" + "---|" * len(_PEAKS) + "---|",
    ]
    for name, res in results.items():
        peaks = res.get("matmul_peaks_gflops", {})
        cells = [_fmt(peaks[k]) if k in peaks else "" for k in _PEAKS]
        load = res["machine"].get("load_avg_1m")
        load = "" if load is None else f"{load:.1f}"
        n = f"{peaks['n']:.0f}" if "n" in peaks else ""
        lines.append(f"| {name} | {n} | " + " | ".join(cells) + f" | {load} |")
    lines += [
        "",
        "| benchmark | ratio (side by side) | value | target | met |",
        "|---|---|---|---|---|",
    ]
    for name, res in results.items():
        for r in res["ratios"]:
            target = "" if r["target"] is None else f"{_OPS[r['op']]} {r['target']}"
            met = {None: "", True: "yes", False: "**no**"}[r["met"]]
            lines.append(f"| {name} | {r['name']} | {_fmt(r['value'])} | {target} | {met} |")
    lines += ["", "| benchmark | figure | value | load (1 min) |", "|---|---|---|---|"]
    for name, res in results.items():
        load = res["machine"].get("load_avg_1m")
        load = "" if load is None else f"{load:.1f}"
        for fig, value in res["figures"].items():
            lines.append(f"| {name} | {fig} | {_fmt(value)} | {load} |")
    return "\n".join(lines) + "\n"


def plot(combined: Mapping[str, Any], path: str) -> None:
    """Write a PNG: ratios vs targets (left), training examples/s (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ratios = [
        (f"{name}: {r['name'].split(' (')[0]}", r)
        for name, res in combined["results"].items()
        for r in res["ratios"]
        if r["target"] is not None
    ]
    throughput = {
        f"{name}: {fig.removesuffix('_ex_per_s')}": value
        for name, res in combined["results"].items()
        for fig, value in res["figures"].items()
        if fig.endswith("_ex_per_s") and name in ("peft", "limits", "routing", "distill")
    }
    fig, (ax1, ax2) = plt.subplots(
        1, 2, figsize=(14, max(4, 0.4 * max(len(ratios), len(throughput)) + 1.5))
    )
    labels = [label for label, _ in ratios]
    values = [r["value"] for _, r in ratios]
    colors = ["tab:green" if r["met"] else "tab:red" for _, r in ratios]
    ax1.barh(labels, values, color=colors)
    for i, (_, r) in enumerate(ratios):
        ax1.plot([r["target"]] * 2, [i - 0.4, i + 0.4], color="black", lw=2)
    ax1.invert_yaxis()
    ax1.set_title("side-by-side ratios (black: target; green: met)")
    ax2.barh(list(throughput), list(throughput.values()), color="tab:blue")
    ax2.invert_yaxis()
    ax2.set_xlabel("examples / s")
    ax2.set_title(f"training throughput, size {combined['size']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results", help="combined JSON written by benchmarks.run_all")
    p.add_argument("--png", default="benchmarks/results.png")
    p.add_argument("--md", default=None, help="also write the markdown table here")
    args = p.parse_args(argv)
    with open(args.results) as f:
        combined = json.load(f)
    plot(combined, args.png)
    table = markdown(combined)
    if args.md:
        with open(args.md, "w") as f:
            f.write(table)
    print(table)


if __name__ == "__main__":
    main()
