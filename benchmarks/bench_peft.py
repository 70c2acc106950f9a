"""Our MPT training step against Hugging Face PEFT's, side by side in one process.

Both sides train the same thing: a randomly initialised, frozen T5 1.1 of the workload's
size, a 100-token MPT prompt (4 tasks, rank 1) on the encoder input only, AdamW
(lr 1e-3) on the prompt parameters only, dropout 0.1 in train mode, the same batch of
token ids and task ids. PEFT's model is ``transformers.T5ForConditionalGeneration`` built
offline from a ``T5Config`` (no hub), wrapped by ``get_peft_model`` with
``MultitaskPromptTuningConfig(num_virtual_tokens=100, num_tasks=4, num_ranks=1,
num_transformer_submodules=1, task_type="SEQ_2_SEQ_LM")``.

Two precisions, each compared at equal precision:

- ``float32``: our step with ``dtype="float32"`` vs PEFT in float32;
- ``bfloat16``: our mixed precision (bfloat16 matmul operands, float32 parameters,
  accumulation, norms and softmax) vs PEFT under ``torch.autocast(dtype=bfloat16)``.

The four steps alternate (ours, PEFT, ours, PEFT, …) and each figure is a median.
Torch uses as many threads as there are cores, as XLA's CPU client does by default.

    python -m benchmarks.bench_peft --size mini --reps 10 --json peft.json
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from benchmarks import common


def build_peft(w: common.Workload, batch: dict[str, np.ndarray], *, seed: int = 0):
    """PEFT's MPT model, its AdamW and the batch as torch tensors, on GPU when present."""
    import torch
    from peft import MultitaskPromptTuningConfig, get_peft_model
    from transformers import T5Config, T5ForConditionalGeneration

    cfg = w.config
    hf_config = T5Config(
        vocab_size=cfg.vocab_size,
        d_model=cfg.emb_dim,
        d_kv=cfg.head_dim,
        d_ff=cfg.mlp_dim,
        num_layers=cfg.num_encoder_layers,
        num_decoder_layers=cfg.num_decoder_layers,
        num_heads=cfg.num_heads,
        relative_attention_num_buckets=cfg.relative_attention_num_buckets,
        relative_attention_max_distance=cfg.relative_attention_max_distance,
        dropout_rate=cfg.dropout_rate,
        layer_norm_epsilon=cfg.layer_norm_epsilon,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    torch.manual_seed(seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    base = T5ForConditionalGeneration(hf_config)
    peft_config = MultitaskPromptTuningConfig(
        num_virtual_tokens=w.prompt_length,
        num_tasks=w.num_tasks,
        num_ranks=w.rank,
        num_transformer_submodules=1,
        task_type="SEQ_2_SEQ_LM",
    )
    model = get_peft_model(base, peft_config).to(device)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-3)
    tensors = {
        "input_ids": torch.as_tensor(batch["encoder_input_tokens"], dtype=torch.long),
        "attention_mask": torch.as_tensor(batch["encoder_input_tokens"] > 0, dtype=torch.long),
        "labels": torch.as_tensor(batch["decoder_target_tokens"], dtype=torch.long),
        "task_ids": torch.as_tensor(batch["task_ids"], dtype=torch.long),
    }
    tensors = {k: v.to(device) for k, v in tensors.items()}
    return model, opt, tensors, device


class PeftStepper:
    """One PEFT training step (forward, backward, AdamW) per call, synchronised."""

    def __init__(self, model, opt, tensors, device: str, dtype: str):
        self.model, self.opt, self.tensors, self.device = model, opt, tensors, device
        self.dtype = dtype
        self.last_loss = float("nan")

    def __call__(self) -> None:
        import torch

        with torch.autocast(self.device, dtype=torch.bfloat16, enabled=self.dtype == "bfloat16"):
            loss = self.model(**self.tensors).loss
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.last_loss = float(loss.detach())  # host read: waits for the step

    @property
    def trainable_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad)


def run(
    size: str = "mini",
    *,
    reps: int = 10,
    warmup: int = 2,
    dtypes: tuple[str, ...] = common.DTYPES,
    threads: int | None = None,
) -> dict[str, Any]:
    """Examples/s of our step and PEFT's at each dtype, and ours / PEFT's.

    Args:
      size: workload size.
      reps: alternating rounds.
      warmup: untimed steps per candidate.
      dtypes: precisions to compare (``float32``, ``bfloat16``).
      threads: torch threads (default: all cores).
    """
    import torch

    torch.set_num_threads(threads or os.cpu_count() or 1)
    base = common.workload(size)
    batch = common.make_batch(base)
    candidates: dict[str, Any] = {}
    ours_trainable = None
    for dtype in dtypes:
        w = base.replace(dtype=dtype)
        ours = common.prompt_train_stepper(w, "mpt", batch=batch)
        ours_trainable = common.tree_bytes(ours.state.params) // 4
        peft = PeftStepper(*build_peft(w, batch), dtype=dtype)
        candidates[f"ours_{dtype}"] = ours
        candidates[f"peft_{dtype}"] = peft
    timings = common.alternate(candidates, reps=reps, warmup=warmup)

    figures: dict[str, float] = {}
    ratios = []
    for dtype in dtypes:
        ours_t, peft_t = timings[f"ours_{dtype}"], timings[f"peft_{dtype}"]
        figures[f"ours_{dtype}_ex_per_s"] = base.batch / ours_t.median
        figures[f"peft_{dtype}_ex_per_s"] = base.batch / peft_t.median
        figures[f"ours_{dtype}_loss"] = candidates[f"ours_{dtype}"].loss
        figures[f"peft_{dtype}_loss"] = candidates[f"peft_{dtype}"].last_loss
        ratios.append(
            common.ratio(
                f"speedup_vs_peft_{dtype} (ours ex/s / PEFT ex/s)",
                common.paired_ratio(peft_t, ours_t),
                1.0,
                ">=",
            )
        )
    figures["trainable_params_ours"] = float(ours_trainable)
    figures["trainable_params_peft"] = float(candidates[f"peft_{dtypes[0]}"].trainable_params)
    return common.result(
        "peft",
        base,
        figures,
        ratios,
        timings=timings,
        torch_threads=torch.get_num_threads(),
    )


def main(argv=None) -> dict[str, Any]:
    p = common.arg_parser(__doc__.splitlines()[0])
    p.add_argument("--dtypes", default="float32,bfloat16", help="comma-separated precisions")
    args = p.parse_args(argv)
    res = run(args.size, reps=args.reps, warmup=args.warmup, dtypes=tuple(args.dtypes.split(",")))
    return common.finish(res, args.json)


if __name__ == "__main__":
    main()
