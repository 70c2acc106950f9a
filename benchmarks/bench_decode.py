"""Decoding throughput with and without a 100-token prompt.

Our greedy decoder (``mpt_jax.decoding.greedy_decode``: encode once, then one cached
decoder step per token inside ``lax.while_loop``) on the same backbone and inputs, once
with the MPT prompt prepended to the encoder input and once without a prompt. EOS is
made unreachable (``eos_id=-1``) so both generate exactly ``target_length`` tokens per
example and the comparison does not depend on when a random model stops. Alternating,
medians. The prompt lengthens the encoder input (128 -> 228 tokens) and every cross-
attention; the ratio shows what that costs per generated token.

    python -m benchmarks.bench_decode --size mini --reps 10 --json decode.json
"""

from __future__ import annotations

from typing import Any

import jax

from benchmarks import common
from mpt_jax.decoding import greedy_decode


class DecodeStepper:
    """One greedy decode of the whole batch per call, synchronised."""

    def __init__(self, model, params, batch, max_decode_length: int):
        self.model, self.params, self.max_len = model, params, max_decode_length
        self.tokens = jax.device_put(batch["encoder_input_tokens"])
        self.task_ids = jax.device_put(batch["task_ids"]) if model.prompt is not None else None
        self.log_probs = None

    def __call__(self) -> None:
        out, self.log_probs = greedy_decode(
            self.model, self.params, self.tokens, self.task_ids,
            max_decode_length=self.max_len, eos_id=-1,
        )  # fmt: skip
        jax.block_until_ready(out)


def run(
    size: str = "mini", *, reps: int = 10, warmup: int = 2, dtype: str | None = None
) -> dict[str, Any]:
    """Generated tokens/s with and without the prompt, and their ratio."""
    w = common.workload(size, dtype)
    batch = common.make_batch(w)
    prompted, params = common.init_model(w, "mpt")
    plain = prompted.clone(prompt=None)
    backbone = {k: v for k, v in params.items() if k != "prompt"}
    candidates = {
        "with_prompt": DecodeStepper(prompted, params, batch, w.target_length),
        "without_prompt": DecodeStepper(plain, backbone, batch, w.target_length),
    }
    timings = common.alternate(candidates, reps=reps, warmup=warmup)
    tokens = w.batch * w.target_length
    figures = {f"{k}_tokens_per_s": tokens / t.median for k, t in timings.items()}
    figures.update({f"{k}_ex_per_s": w.batch / t.median for k, t in timings.items()})
    ratios = [
        common.ratio(
            "with_over_without_prompt (time)",
            common.paired_ratio(timings["with_prompt"], timings["without_prompt"]),
        )
    ]
    return common.result("decode", w, figures, ratios, timings=timings)


def main(argv=None) -> dict[str, Any]:
    args = common.arg_parser(__doc__.splitlines()[0]).parse_args(argv)
    res = run(args.size, reps=args.reps, warmup=args.warmup, dtype=args.dtype)
    return common.finish(res, args.json)


if __name__ == "__main__":
    main()
