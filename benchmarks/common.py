"""What every benchmark shares: the reference workload, our real steps, timing, reporting.

The reference workload (issue 8) is fixed so figures compare across machines and tools:
T5 1.1 ``mini`` or ``small`` (vocabulary 32128), batch 8, 128 encoder tokens plus a
100-token prompt, 16 target tokens, 4 tasks mixed in every batch, MPT rank 1, float32.
``tiny`` shrinks everything so the smoke test runs each code path in seconds.

Timing method (see ``benchmarks/README.md``):

- every candidate runs ``warmup`` untimed calls first (compilation, allocator warm-up);
- then ``reps`` rounds; in each round every candidate runs once (A B C, then B C A,
  C A B, …: the order rotates), so slow drifts of a shared machine hit all candidates
  alike and none always runs first;
- a candidate's figure is the **median** of its rounds; the spread (min, max) is kept;
- a ratio of two candidates is the median of their per-round quotients
  (:func:`paired_ratio`): both ran back to back in each round.

A candidate is a zero-argument callable that runs one step and waits for its result
(``jax.block_until_ready`` / a host read of the torch loss), so the clock sees the
whole step.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib.metadata
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mpt_jax import training
from mpt_jax.backbone import T5Config, get_config
from mpt_jax.model import PromptedT5
from mpt_jax.prompts import MultitaskPrompt, SinglePrompt, TaskPrompts

SIZES = ("tiny", "mini", "small")
DTYPES = ("float32", "bfloat16")
PROMPT_KINDS = ("mpt", "single", "teachers", "none")


@dataclasses.dataclass(frozen=True)
class Workload:
    """One benchmark workload.

    Attributes:
      size: backbone config name (``tiny``, ``mini``, ``small``).
      batch: examples per step.
      input_length: encoder tokens per example (no padding).
      prompt_length: prompt positions prepended to them.
      target_length: decoder tokens per example.
      num_tasks: tasks of the MPT prompt; a mixed batch cycles through them.
      rank: rank of MPT's task factors.
      dtype: ``float32`` or ``bfloat16`` (matmul operands; parameters stay float32).
      dropout_rate: the backbone's dropout in train steps (T5 1.1 fine-tuning: 0.1).
    """

    size: str
    batch: int = 8
    input_length: int = 128
    prompt_length: int = 100
    target_length: int = 16
    num_tasks: int = 4
    rank: int = 1
    dtype: str = "float32"
    dropout_rate: float = 0.1

    def __post_init__(self):
        if self.size not in SIZES:
            raise ValueError(f"size must be one of {SIZES}, got {self.size!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        for name in ("batch", "input_length", "prompt_length", "target_length", "num_tasks"):
            if getattr(self, name) < 1:
                raise ValueError(f"Workload.{name} must be >= 1, got {getattr(self, name)}")

    @property
    def config(self) -> T5Config:
        """The backbone config (T5 1.1 shapes) at this dtype and dropout."""
        return get_config(
            self.size, overrides={"dtype": self.dtype, "dropout_rate": self.dropout_rate}
        )

    def replace(self, **changes: Any) -> Workload:
        return dataclasses.replace(self, **changes)

    def describe(self) -> dict[str, Any]:
        cfg = self.config
        return {
            **dataclasses.asdict(self),
            "emb_dim": cfg.emb_dim,
            "mlp_dim": cfg.mlp_dim,
            "layers": [cfg.num_encoder_layers, cfg.num_decoder_layers],
            "heads": cfg.num_heads,
            "head_dim": cfg.head_dim,
            "vocab_size": cfg.vocab_size,
        }


def default_dtype() -> str:
    """``bfloat16`` on an accelerator (where it is the way models train), else ``float32``."""
    return "float32" if jax.default_backend() == "cpu" else "bfloat16"


def workload(size: str, dtype: str | None = None) -> Workload:
    """The reference workload at ``size``; ``tiny`` also shrinks batch and lengths.

    ``dtype`` defaults to :func:`default_dtype` (float32 on CPU, bfloat16 on a GPU).
    """
    dtype = dtype or default_dtype()
    if size == "tiny":
        return Workload(
            size, batch=4, input_length=16, prompt_length=4, target_length=4, dtype=dtype
        )
    return Workload(size, dtype=dtype)


def make_batch(
    w: Workload, *, seed: int = 0, task_ids: Sequence[int] | None = None
) -> dict[str, np.ndarray]:
    """A T5X-style batch of random tokens (no padding) with mixed task ids.

    Returns ``encoder_input_tokens [B, S]``, ``decoder_input_tokens [B, T]`` (targets
    shifted right, 0 first), ``decoder_target_tokens [B, T]``, ``decoder_loss_weights
    [B, T]`` and ``task_ids [B]`` (``0, 1, …, T-1, 0, …`` unless given).
    """
    vocab = w.config.vocab_size
    rng = np.random.default_rng(seed)
    enc = rng.integers(2, vocab, size=(w.batch, w.input_length), dtype=np.int32)
    tgt = rng.integers(2, vocab, size=(w.batch, w.target_length), dtype=np.int32)
    dec_in = np.concatenate([np.zeros((w.batch, 1), np.int32), tgt[:, :-1]], axis=1)
    if task_ids is None:
        ids = np.arange(w.batch, dtype=np.int32) % w.num_tasks
    else:
        ids = np.asarray(task_ids, dtype=np.int32)
        if ids.shape != (w.batch,) or ids.min() < 0 or ids.max() >= w.num_tasks:
            raise ValueError(
                f"task_ids must be {w.batch} ids in [0, {w.num_tasks}), got {ids.tolist()}"
            )
    return {
        "encoder_input_tokens": enc,
        "decoder_input_tokens": dec_in,
        "decoder_target_tokens": tgt,
        "decoder_loss_weights": np.ones_like(tgt, dtype=np.float32),
        "task_ids": ids,
    }


def make_generator(w: Workload, kind: str = "mpt"):
    """The prompt generator of ``kind`` (one of ``PROMPT_KINDS``).

    ``mpt``: MultitaskPrompt; ``single``: SinglePrompt (vanilla prompt tuning);
    ``teachers``: TaskPrompts (one full prompt per task); ``none``: no prompt.
    """
    d = w.config.emb_dim
    if kind == "mpt":
        return MultitaskPrompt(
            num_tasks=w.num_tasks, length=w.prompt_length, embed_dim=d, num_ranks=w.rank
        )
    if kind == "single":
        return SinglePrompt(length=w.prompt_length, embed_dim=d)
    if kind == "teachers":
        return TaskPrompts(num_tasks=w.num_tasks, length=w.prompt_length, embed_dim=d)
    if kind == "none":
        return None
    raise ValueError(f"prompt kind must be one of {PROMPT_KINDS}, got {kind!r}")


def init_model(w: Workload, kind: str = "mpt", *, seed: int = 0) -> tuple[PromptedT5, dict]:
    """``(PromptedT5, params)``: random backbone + prompt, params unboxed (plain arrays)."""
    model = PromptedT5(w.config, prompt=make_generator(w, kind))
    batch = make_batch(w)
    inputs = {k: batch[k] for k in ("encoder_input_tokens", "decoder_input_tokens")}
    init = jax.jit(lambda key: model.init(
        key, **inputs, decoder_target_tokens=batch["decoder_target_tokens"],
        task_ids=batch["task_ids"], enable_dropout=False,
    ))  # fmt: skip
    return model, nn.unbox(init(jax.random.key(seed))["params"])


def ours_loss_and_logits(
    model: PromptedT5, params: Mapping, batch: Mapping[str, np.ndarray], *, z_loss: float = 0.0
) -> tuple[float, np.ndarray]:
    """Our side of a same-start check: the per-token loss through our eval step
    (``training.make_eval_step`` over ``task_loss_fn``) and the logits ``[batch, targets,
    vocab]`` of ``PromptedT5`` without dropout, both with full float32 matmuls."""
    prompt, backbone = training.split_params(dict(params))
    with jax.default_matmul_precision("highest"):
        loss = training.make_eval_step(training.task_loss_fn(model, z_loss=z_loss))(
            prompt, {"backbone": backbone}, dict(batch)
        )["loss"]
        logits = jax.jit(
            lambda p: model.apply(
                {"params": p},
                batch["encoder_input_tokens"],
                batch["decoder_input_tokens"],
                batch["decoder_target_tokens"],
                batch["task_ids"],
                enable_dropout=False,
            )
        )(params)
    return float(loss), np.asarray(logits, np.float32)


def device_batch(batch: Mapping[str, np.ndarray]) -> dict[str, jax.Array]:
    """The batch moved to the default device once (so steps do not re-transfer it)."""
    return {k: jax.device_put(v) for k, v in batch.items()}


class JaxStepper:
    """A zero-argument callable running one of our jitted train steps and waiting for it.

    It threads the (donated) state from call to call, exactly as the training loop does.
    ``lowered()`` gives the step's ``jax.stages.Lowered`` for cost analysis.
    """

    def __init__(self, step_fn, state, frozen, batch, rng=None):
        self.step_fn, self.state, self.frozen = step_fn, state, frozen
        self.batch = device_batch(batch)
        self.rng = jax.random.key(1) if rng is None else rng
        self.metrics: dict | None = None

    def __call__(self) -> None:
        self.state, self.metrics = self.step_fn(self.state, self.frozen, self.batch, self.rng)
        jax.block_until_ready((self.state, self.metrics))

    def lowered(self):
        return self.step_fn.lower(self.state, self.frozen, self.batch, self.rng)

    def compile(self):
        """Compile once and run the compiled program from now on (no second compile)."""
        compiled = self.lowered().compile()
        self.step_fn = compiled
        return compiled

    @property
    def loss(self) -> float:
        return float(self.metrics["loss"]) if self.metrics else float("nan")


def prompt_train_stepper(
    w: Workload,
    kind: str = "mpt",
    *,
    optimizer: str = "adamw",
    batch: Mapping[str, np.ndarray] | None = None,
    seed: int = 0,
) -> JaxStepper:
    """Our prompt-only train step (the runner's: ``training.make_train_step``)."""
    model, params = init_model(w, kind, seed=seed)
    prompt, backbone = training.split_params(params)
    tx = make_tx(optimizer)
    state = training.TrainState.create(prompt, tx)
    step = training.make_train_step(training.task_loss_fn(model), tx)
    batch = make_batch(w) if batch is None else batch
    return JaxStepper(step, state, {"backbone": backbone}, batch)


def make_tx(optimizer: str):
    """Our optimizer factory: ``adamw`` (lr 1e-3, as PEFT examples use) or ``adafactor``."""
    if optimizer == "adamw":
        return training.PromptRecipe(optimizer=training.AdamW(), learning_rate=1e-3).build()
    if optimizer == "adafactor":
        return training.PromptRecipe().build()
    raise ValueError(f"optimizer must be 'adamw' or 'adafactor', got {optimizer!r}")


# --- timing -------------------------------------------------------------------------


@dataclasses.dataclass
class Timing:
    """Seconds per call of one candidate over the timed rounds."""

    seconds: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    def summary(self, examples: int | None = None) -> dict[str, float]:
        out = {
            "median_s": self.median,
            "min_s": min(self.seconds),
            "max_s": max(self.seconds),
            "reps": len(self.seconds),
        }
        if examples is not None:
            out["examples_per_s"] = examples / self.median
        return out


def alternate(
    candidates: Mapping[str, Callable[[], Any]], *, reps: int, warmup: int = 2
) -> dict[str, Timing]:
    """Time candidates side by side: warm-up, then ``reps`` rounds (the order rotates).

    Args:
      candidates: name -> zero-argument callable that runs one step to completion.
      reps: timed rounds (>= 1); each candidate runs once per round.
      warmup: untimed calls of each candidate before the first round (>= 1 recommended:
        the first call compiles).

    Returns:
      name -> :class:`Timing` (one duration per round).
    """
    if reps < 1:
        raise ValueError(f"reps must be >= 1, got {reps}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in candidates}
    names = list(candidates)
    for r in range(reps):
        # Rotate the order (A B C, B C A, C A B, …) so no candidate always runs first
        # after the previous round's last one.
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start = time.perf_counter()
            candidates[name]()
            times[name].append(time.perf_counter() - start)
    return {name: Timing(t) for name, t in times.items()}


def paired_ratio(a: Timing, b: Timing) -> float:
    """Median over rounds of ``a``'s time over ``b``'s time in the same round.

    Both ran back to back in every round, so a slow spell of a shared machine scales
    both sides of each quotient; the median of the per-round quotients is steadier than
    the quotient of the two medians.
    """
    if len(a.seconds) != len(b.seconds):
        raise ValueError(f"unpaired timings: {len(a.seconds)} vs {len(b.seconds)} rounds")
    return statistics.median(x / y for x, y in zip(a.seconds, b.seconds, strict=True))


def step_figures(
    w: Workload, timings: Mapping[str, Timing], candidates: Mapping[str, Any]
) -> dict[str, float]:
    """``<name>_ex_per_s`` (median) and ``<name>_loss`` (last step) of each candidate."""
    figures = {f"{k}_ex_per_s": w.batch / t.median for k, t in timings.items()}
    figures.update({f"{k}_loss": c.loss for k, c in candidates.items()})
    return figures


def _rate(n: int, seconds: float) -> float:
    return 2 * n**3 / seconds / 1e9


def _peak(make: Callable[[int], Callable[[], Any]], n_max: int, reps: int) -> tuple[float, int]:
    """``(GFLOP/s, n)`` of the largest ``[n, n]`` matmul (n ≤ ``n_max``) quick enough to time.

    ``n`` doubles from 256 while one product takes under 50 ms, so a slow kernel (e.g.
    bfloat16 on a CPU without native bfloat16) is timed at a size that finishes.
    """
    n = min(256, n_max)
    while True:
        fn = make(n)
        fn()  # compile / warm up
        start = time.perf_counter()
        fn()
        if n * 2 > n_max or time.perf_counter() - start > 0.05:
            break
        n *= 2
    timing = alternate({"mm": fn}, reps=reps, warmup=0)
    return _rate(n, timing["mm"].median), n


def _jax_matmul(dtype, out_dtype=None) -> Callable[[int], Callable[[], Any]]:
    def make(n: int):
        a = jax.random.normal(jax.random.key(0), (n, n), dtype)
        b = jax.random.normal(jax.random.key(1), (n, n), dtype)
        mm = jax.jit(lambda x, y: jnp.matmul(x, y, preferred_element_type=out_dtype))
        return lambda: jax.block_until_ready(mm(a, b))

    return make


def _torch_matmul(dtype: str) -> Callable[[int], Callable[[], Any]]:
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"

    def make(n: int):
        gen = torch.Generator(device="cpu").manual_seed(0)
        a, b = (torch.randn(n, n, generator=gen).to(device, getattr(torch, dtype)) for _ in "ab")

        def mm():
            c = a @ b
            if device == "cuda":
                torch.cuda.synchronize()
            return c

        return mm

    return make


def default_matmul_n() -> int:
    """Largest side of the peak-rate matmuls: 2048 on CPU, 8192 on an accelerator."""
    return 2048 if jax.default_backend() == "cpu" else 8192


@functools.cache
def matmul_peaks(n: int | None = None, reps: int = 5) -> dict[str, float]:
    """Each backend's dense matmul rate in both dtypes, measured now (GFLOP/s; cached).

    Keys: ``jax_float32``, ``jax_bfloat16`` (the faster of bfloat16 → float32, as our
    layers compute, and bfloat16 → bfloat16, both kept as ``jax_bfloat16_f32_out`` /
    ``jax_bfloat16_bf16_out``), ``torch_float32`` and ``torch_bfloat16`` (bfloat16 out,
    as autocast computes) when torch is installed; ``torch_threads``; ``n`` (the largest
    side tried) and ``n_<key>``, the side each rate was measured at (see :func:`_peak`).
    These are the limits each side's achieved GFLOP/s is set against
    (:func:`achieved`).
    """
    n = n or default_matmul_n()
    makers = {
        "jax_float32": _jax_matmul(jnp.float32),
        "jax_bfloat16_f32_out": _jax_matmul(jnp.bfloat16, jnp.float32),
        "jax_bfloat16_bf16_out": _jax_matmul(jnp.bfloat16),
    }
    try:
        import torch
    except ImportError:
        torch = None
    else:
        makers.update({f"torch_{dtype}": _torch_matmul(dtype) for dtype in DTYPES})
    peaks: dict[str, float] = {"n": float(n)}
    for key, make in makers.items():
        peaks[key], peaks[f"n_{key}"] = _peak(make, n, reps)
    peaks["jax_bfloat16"] = max(peaks["jax_bfloat16_f32_out"], peaks["jax_bfloat16_bf16_out"])
    if torch is not None:
        peaks["torch_threads"] = float(torch.get_num_threads())
    return peaks


def achieved(flops: float, seconds: float, peak_gflops: float) -> tuple[float, float]:
    """``(GFLOP/s, fraction of peak)`` of a step doing ``flops`` in ``seconds``."""
    gflops = flops / seconds / 1e9
    return gflops, gflops / peak_gflops


def flops_of(compiled) -> float:
    """XLA's flop count of a compiled program (``cost_analysis()``)."""
    cost = compiled.cost_analysis()
    if isinstance(cost, list | tuple):  # older jax: one dict per program
        cost = cost[0]
    if not cost or "flops" not in cost:
        raise RuntimeError(f"XLA cost analysis has no 'flops' entry: {cost!r}")
    return float(cost["flops"])


def tree_bytes(tree) -> int:
    """Total bytes of the arrays (or ShapeDtypeStructs) in ``tree``."""
    return int(sum(np.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree)))


# --- reporting ----------------------------------------------------------------------


#: CPU flags that decide a matmul's speed (the whole list is in ``cpu_flags``).
KEY_CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of ``/proc/cpuinfo`` (empty where there is none)."""
    info: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break  # the first processor's block ends here
                key, _, value = line.partition(":")
                info[key.strip()] = value.strip()
    except OSError:
        pass
    return info


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_info() -> dict[str, Any]:
    """Where the figures were taken: CPU model and flags, threads, load, devices, versions.

    Thread counts: ``cores`` (``os.cpu_count``), ``cores_usable`` (this process's
    affinity), ``torch_threads`` (when torch is imported), and the environment variables
    that change them (``XLA_FLAGS``, ``OMP_NUM_THREADS``).
    """
    info = _cpuinfo()
    flags = info.get("flags", "").split()
    device = jax.devices()[0]
    out: dict[str, Any] = {
        "cpu": info.get("model name", platform.processor()),
        "cpu_family_model": f"{info.get('cpu family', '?')}/{info.get('model', '?')}",
        "cpu_key_flags": [f for f in KEY_CPU_FLAGS if f in flags],
        "cpu_flags": flags,
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "load_avg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "env": {k: os.environ.get(k) for k in ("XLA_FLAGS", "OMP_NUM_THREADS", "JAX_PLATFORMS")},
        "jax_backend": jax.default_backend(),
        "jax_default_matmul_precision": jax.config.jax_default_matmul_precision,
        "jax_devices": [str(d) for d in jax.devices()],
        "device": f"{jax.default_backend()}: {getattr(device, 'device_kind', device.platform)}",
        "python": sys.version.split()[0],
    }
    for package in ("jax", "jaxlib", "flax", "torch", "transformers", "peft"):
        out[package] = _version(package)
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        out["torch_threads"] = torch.get_num_threads()
        out["torch_device"] = "cuda" if torch.cuda.is_available() else "cpu"
        out["torch_allow_tf32"] = bool(torch.backends.cuda.matmul.allow_tf32)
    return out


def ratio(name: str, value: float, target: float | None = None, op: str = "<=") -> dict:
    """A side-by-side ratio with its target (``op`` is ``<=`` or ``>=``; None = no target)."""
    if op not in ("<=", ">=", "~"):
        raise ValueError(f"op must be '<=', '>=' or '~', got {op!r}")
    met = None
    if target is not None:
        met = {
            "<=": value <= target,
            ">=": value >= target,
            "~": abs(value - target) <= 0.02 * target,
        }[op]
    return {"name": name, "value": value, "target": target, "op": op, "met": met}


def result(
    benchmark: str,
    w: Workload | None,
    figures: dict[str, float],
    ratios: list[dict],
    timings: Mapping[str, Timing] | None = None,
    peaks: Mapping[str, float] | None = None,
    **extra,
) -> dict[str, Any]:
    """The dict every benchmark returns (and writes with ``--json``).

    ``timings`` (from :func:`alternate`) are stored summarised, with examples/s at
    ``w.batch``. ``machine`` says where it ran; ``matmul_peaks_gflops`` holds each
    backend's matmul rates measured in this process (``peaks``, by default
    :func:`matmul_peaks` at its default size).
    """
    res = {
        "benchmark": benchmark,
        "workload": None if w is None else w.describe(),
        "machine": machine_info(),
        "matmul_peaks_gflops": dict(matmul_peaks() if peaks is None else peaks),
        "figures": figures,
        "ratios": ratios,
        **extra,
    }
    if timings is not None:
        batch = None if w is None else w.batch
        res["timings"] = {k: t.summary(batch) for k, t in timings.items()}
    return res


#: The peaks the tables show (backend_dtype).
PEAK_KEYS = ("jax_float32", "jax_bfloat16", "torch_float32", "torch_bfloat16")


def print_result(res: Mapping[str, Any]) -> None:
    """Human-readable lines: absolute figures, then ratios against their targets."""
    print(f"== {res['benchmark']} ==")
    m = res["machine"]
    print(
        f"   {m['cpu']} ({' '.join(m['cpu_key_flags'])}) | {m['cores']} cores | "
        f"load {m['load_avg_1m']} | {m['device']}"
    )
    peaks = res.get("matmul_peaks_gflops", {})
    print("   matmul peaks (GFLOP/s): " + ", ".join(
        f"{k} {v:.0f}" for k, v in peaks.items() if k in PEAK_KEYS
    ))  # fmt: skip
    for name, value in res["figures"].items():
        print(f"   {name:40s} {value:12.4g}")
    for r in res["ratios"]:
        verdict = "" if r["met"] is None else ("  ok" if r["met"] else "  MISSED")
        target = "" if r["target"] is None else f"(target {r['op']} {r['target']})"
        print(f"   {r['name']:40s} {r['value']:12.4g} {target}{verdict}")


def arg_parser(description: str, *, default_reps: int = 10) -> argparse.ArgumentParser:
    """The options every benchmark takes: ``--size``, ``--reps``, ``--warmup``, ``--json``."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--size", choices=SIZES, default="mini", help="backbone size (default mini)")
    p.add_argument("--reps", type=int, default=default_reps, help="timed rounds (medians)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls per candidate first")
    p.add_argument(
        "--dtype", choices=DTYPES, default=None,
        help="matmul dtype (default: float32 on CPU, bfloat16 on a GPU)",
    )  # fmt: skip
    p.add_argument("--json", default=None, help="write the result dict to this file")
    return p


def finish(res: dict[str, Any], json_path: str | None) -> dict[str, Any]:
    """Print the result and write it as JSON when asked; check every figure is finite."""
    print_result(res)
    bad = {k: v for k, v in res["figures"].items() if not math.isfinite(v)}
    if bad:
        raise RuntimeError(f"{res['benchmark']}: non-finite figures {bad}")
    if json_path:
        with open(json_path, "w") as f:
            json.dump(res, f, indent=2)
    return res
