"""Our MPT training step against Hugging Face PEFT's, on the same weights, side by side.

Both sides train the same model from the same point: our random T5 1.1 of the
workload's size and our random MPT prompt (100 tokens, 4 tasks, rank 1), copied into
``transformers.T5ForConditionalGeneration`` built as T5 1.1 (untied output layer) and
wrapped by PEFT's ``MultitaskPromptTuningConfig`` (:mod:`benchmarks.hf_peer`); AdamW
(lr 1e-3) on the prompt only; the same batch of token ids and task ids.

Before any timing both models run the batch without dropout in float32; the bench
refuses to time unless the losses and every logit agree within 1e-4
(``same_start_*`` figures: both losses and the largest logit difference).

Then, alternating in one process (rotating rounds, medians), each precision at both
dropout rates (T5 1.1's 0.1 and 0; the two implement dropout differently, ours on
attention value rows, HF's on the attention weights):

- ``float32``: our step with ``dtype="float32"`` vs PEFT in float32;
- ``bfloat16``: our mixed precision (bfloat16 matmul operands, float32 parameters,
  accumulation, norms and softmax) vs PEFT under ``torch.autocast(dtype=bfloat16)``.

Each side's achieved GFLOP/s is XLA's flop count of our compiled step over the
side's median time, and its fraction of its own backend's matmul peak in that dtype
(``common.matmul_peaks``, measured in the same process). With ``alone`` (the
default), each side is also timed alone in a fresh process at dropout 0.1
(``*_alone_ex_per_s``): torch's step is sensitive to sharing the cores.

Torch uses as many threads as there are cores, as XLA's CPU client does by default; on
a GPU both sides run there.

    python -m benchmarks.bench_peft --size mini --reps 10 --json peft.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from typing import Any

import numpy as np

from benchmarks import common, hf_peer

#: Dropout rates both sides are timed at (T5 1.1 fine-tuning's, and none).
DROPOUTS = (0.1, 0.0)


def tag(dtype: str, dropout: float) -> str:
    """The figure-name part of one configuration, e.g. ``float32_dropout0.1``."""
    return f"{dtype}_dropout{dropout:g}"


class PeftStepper:
    """One PEFT training step (forward, backward, AdamW) per call, synchronised."""

    def __init__(self, model, batch: dict[str, np.ndarray], dtype: str):
        import torch

        self.model, self.dtype = model, dtype
        self.device = next(model.parameters()).device.type
        self.tensors = hf_peer.torch_batch(batch, self.device)
        self.opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
        self.loss = float("nan")

    def __call__(self) -> None:
        import torch

        with torch.autocast(self.device, dtype=torch.bfloat16, enabled=self.dtype == "bfloat16"):
            loss = self.model(**self.tensors).loss
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.loss = float(loss.detach())  # host read: waits for the step

    @property
    def trainable_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad)


def torch_device() -> str:
    """``cuda`` when torch sees a GPU, else ``cpu``.

    On a GPU, torch's float32 matmuls are allowed TF32 as JAX's default precision
    allows it, so float32 compares like with like (the same-start check turns it off).
    """
    import torch

    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        return "cuda"
    return "cpu"


def set_torch_threads(threads: int | None) -> int:
    import torch

    torch.set_num_threads(threads or os.cpu_count() or 1)
    return torch.get_num_threads()


def peft_stepper(w: common.Workload, params, batch, device: str) -> PeftStepper:
    """PEFT's step on a model holding ``params`` at ``w``'s dtype and dropout."""
    return PeftStepper(hf_peer.peft_from_ours(w.config, params, w, device=device), batch, w.dtype)


def alone(side: str, size: str, dtype: str, *, reps: int, warmup: int) -> dict[str, float]:
    """One side's step timed with nothing else built in this process (dropout 0.1)."""
    w = common.workload(size, dtype)
    batch = common.make_batch(w)
    if side == "ours":
        fn = common.prompt_train_stepper(w, "mpt", batch=batch)
    elif side == "peft":
        set_torch_threads(None)
        _, params = common.init_model(w, "mpt")
        fn = peft_stepper(w, params, batch, torch_device())
    else:
        raise ValueError(f"side must be 'ours' or 'peft', got {side!r}")
    t = common.alternate({side: fn}, reps=reps, warmup=warmup)[side]
    return {"ex_per_s": w.batch / t.median, "median_s": t.median, "loss": fn.loss}


def alone_in_fresh_process(side: str, size: str, dtype: str, *, reps: int, warmup: int):
    """:func:`alone` in a fresh Python process (its figures as a dict)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cmd = [sys.executable, "-m", "benchmarks.bench_peft", "--alone", side, "--size", size,
           "--dtypes", dtype, "--reps", str(reps), "--warmup", str(warmup)]  # fmt: skip
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(
    size: str = "mini",
    *,
    reps: int = 10,
    warmup: int = 2,
    dtypes: tuple[str, ...] = common.DTYPES,
    dropouts: tuple[float, ...] = DROPOUTS,
    threads: int | None = None,
    alone_reps: int | None = None,
) -> dict[str, Any]:
    """Same-start check, then examples/s of both sides per dtype and dropout, and ratios.

    Args:
      size: workload size.
      reps: alternating rounds.
      warmup: untimed steps per candidate.
      dtypes: precisions to compare (``float32``, ``bfloat16``).
      dropouts: dropout rates to compare at.
      threads: torch threads (default: all cores).
      alone_reps: rounds of each side alone in a fresh process (default ``reps``;
        0 skips them).

    Raises:
      RuntimeError: the two models do not start at the same loss and logits.
    """
    torch_threads = set_torch_threads(threads)
    device = torch_device()
    base = common.workload(size, "float32")
    batch = common.make_batch(base)
    model, params = common.init_model(base, "mpt")
    peaks = common.matmul_peaks()

    # The same start: same weights, same batch, no dropout, float32.
    check_w = base.replace(dropout_rate=0.0)
    check_peft = peft_stepper(check_w, params, batch, device)
    start = hf_peer.same_start(model, params, check_peft.model, batch)
    hf_peer.check_same_start(start)
    figures: dict[str, float] = {f"same_start_{k}": v for k, v in start.items()}

    candidates: dict[str, Any] = {}
    flops: dict[str, float] = {}
    for dtype in dtypes:
        for dropout in dropouts:
            w = base.replace(dtype=dtype, dropout_rate=dropout)
            ours = common.prompt_train_stepper(w, "mpt", batch=batch)
            flops[tag(dtype, dropout)] = common.flops_of(ours.compile())
            reuse = (dtype, dropout) == ("float32", 0.0)
            peft = PeftStepper(check_peft.model, batch, dtype) if reuse else None
            candidates[f"ours_{tag(dtype, dropout)}"] = ours
            candidates[f"peft_{tag(dtype, dropout)}"] = peft or peft_stepper(
                w, params, batch, device
            )
    timings = common.alternate(candidates, reps=reps, warmup=warmup)

    ratios = []
    for dtype in dtypes:
        for dropout in dropouts:
            t = tag(dtype, dropout)
            for side, backend in (("ours", "jax"), ("peft", "torch")):
                name = f"{side}_{t}"
                seconds = timings[name].median
                gflops, frac = common.achieved(flops[t], seconds, peaks[f"{backend}_{dtype}"])
                figures[f"{name}_ex_per_s"] = base.batch / seconds
                figures[f"{name}_loss"] = candidates[name].loss
                figures[f"{name}_gflops"] = gflops
                figures[f"{name}_frac_of_{backend}_peak"] = frac
            ratios.append(common.ratio(
                f"speedup_vs_peft_{t} (ours ex/s / PEFT ex/s)",
                common.paired_ratio(timings[f"peft_{t}"], timings[f"ours_{t}"]), 1.0, ">=",
            ))  # fmt: skip
            figures[f"gflop_per_step_{t}"] = flops[t] / 1e9
    figures["trainable_params_ours"] = float(common.tree_bytes(params["prompt"]) // 4)
    figures["trainable_params_peft"] = float(check_peft.trainable_params)

    alone_reps = reps if alone_reps is None else alone_reps
    if alone_reps:
        for dtype in dtypes:
            got = {
                side: alone_in_fresh_process(side, size, dtype, reps=alone_reps, warmup=warmup)
                for side in ("ours", "peft")
            }
            t = tag(dtype, base.dropout_rate)
            for side in got:
                figures[f"{side}_{t}_alone_ex_per_s"] = got[side]["ex_per_s"]
            ratios.append(common.ratio(
                f"speedup_vs_peft_{t}_alone (each in a fresh process)",
                got["ours"]["ex_per_s"] / got["peft"]["ex_per_s"], 1.0, ">=",
            ))  # fmt: skip
    return common.result(
        "peft", base, figures, ratios, timings=timings, torch_threads=torch_threads,
        torch_device=device, dropouts=list(dropouts), peaks=peaks,
    )  # fmt: skip


def main(argv=None) -> dict[str, Any]:
    p = common.arg_parser(__doc__.splitlines()[0])
    p.add_argument("--dtypes", default="float32,bfloat16", help="comma-separated precisions")
    p.add_argument("--dropouts", default="0.1,0", help="comma-separated dropout rates")
    p.add_argument("--alone-reps", type=int, default=None, help="rounds alone (0: skip)")
    p.add_argument("--alone", choices=("ours", "peft"), default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    dtypes = tuple(args.dtypes.split(","))
    if args.alone:
        got = alone(args.alone, args.size, dtypes[0], reps=args.reps, warmup=args.warmup)
        print(json.dumps(got))
        return got
    res = run(
        args.size, reps=args.reps, warmup=args.warmup, dtypes=dtypes,
        dropouts=tuple(float(x) for x in args.dropouts.split(",")),
        alone_reps=args.alone_reps,
    )  # fmt: skip
    return common.finish(res, args.json)


if __name__ == "__main__":
    main()
