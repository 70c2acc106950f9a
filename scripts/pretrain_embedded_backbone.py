"""Pretrains the small T5 that ``mpt-jax demo`` ships, on the embedded benchmark's world.

The backbone learns to read and write the world's symbols from the *instructed*
pretraining mixture of :func:`mpt_jax.data.synthetic.pretraining_examples` (compare two
symbol sets spelled in the input, filter a set, copy). Every benchmark task — source and
held-out target, in either order of its sets, of every benchmark seed in
``synthetic.HELD_OUT_SEEDS`` — is excluded from it, so prompt tuning on
the benchmark later has to find each task's "instruction" itself.

Every weight trains (:mod:`mpt_jax.training.full_finetune`), AdamW with linear warm-up
and linear decay, batch 64, on freshly generated examples (no epoch repeats). The result
is written to ``mpt_jax/assets/embedded_t5.{msgpack,json}``; the JSON records the
command, wall time and final metrics. Deterministic for a given ``--seed`` on one
machine (XLA's CPU reductions may differ in the last bits across machines).

Usage (the shipped file was made with the defaults)::

    python scripts/pretrain_embedded_backbone.py    # 3000 steps: 347 s measured on 2 shared
                                                    # CPU cores (99.7% on held-out pairs)
    python scripts/pretrain_embedded_backbone.py --steps 200 --out /tmp/bb   # smoke run
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

import flax.linen as nn
import jax
import numpy as np
import optax

from mpt_jax.assets import EMBEDDED_BACKBONE, embedded_backbone_config, save_backbone
from mpt_jax.backbone import T5
from mpt_jax.data import synthetic
from mpt_jax.training.full_finetune import full_loss_fn, make_full_finetune_step
from mpt_jax.training.state import TrainState

INPUT_LENGTH = 18  # compare instruction (6 chars) + 10 symbols + EOS, rounded up
TARGET_LENGTH = 12  # copy/filter output (10 symbols) + EOS, rounded up


def _parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--learning_rate", type=float, default=3e-3)
    p.add_argument("--warmup_steps", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval_every", type=int, default=250)
    p.add_argument("--out", type=pathlib.Path, default=EMBEDDED_BACKBONE)
    return p.parse_args(argv)


def _held_out_eval(bench: synthetic.EmbeddedBenchmark) -> list[dict[str, str]]:
    """Instructed examples of the *benchmark* tasks: never trained on, only measured.

    How well the backbone follows a spelled-out instruction for a held-out set pair tells
    whether it learned the family rather than memorised pretraining pairs.
    """
    out = []
    for task in bench.tasks:
        for ex in bench.examples(task, "validation", 32):
            out.append({"inputs": task.instruction + ex["inputs"], "targets": ex["targets"]})
    return out


def main(argv: list[str] | None = None) -> dict:
    args = _parse(sys.argv[1:] if argv is None else argv)
    start = time.time()
    bench = synthetic.EmbeddedBenchmark()
    config = embedded_backbone_config()
    model = T5(config)

    examples = synthetic.pretraining_examples(
        bench, args.steps * args.batch_size, seed=args.seed, held_out_seeds=synthetic.HELD_OUT_SEEDS
    )
    data = synthetic.to_batch(
        examples,
        np.zeros(len(examples), np.int32),
        input_length=INPUT_LENGTH,
        target_length=TARGET_LENGTH,
    )
    del data["task_ids"]  # the plain backbone has no prompt
    held = _held_out_eval(bench)
    held_batch = synthetic.to_batch(
        held, np.zeros(len(held), np.int32), input_length=INPUT_LENGTH, target_length=TARGET_LENGTH
    )
    del held_batch["task_ids"]

    rng = jax.random.PRNGKey(args.seed)
    init_rng, dropout_rng = jax.random.split(rng)
    first = {k: data[k][:2] for k in ("encoder_input_tokens", "decoder_input_tokens",
                                      "decoder_target_tokens")}  # fmt: skip
    params = nn.unbox(model.init(init_rng, **first, enable_dropout=False)["params"])
    warmup = min(args.warmup_steps, args.steps // 10)
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, args.learning_rate, warmup, args.steps, end_value=args.learning_rate * 0.05
    )
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=1e-4))
    state = TrainState.create(params, tx)
    step = make_full_finetune_step(model, tx)
    evaluate = jax.jit(lambda p, b: full_loss_fn(model)(p, {}, b, None)[1])

    def sequence_accuracy(p, batch) -> float:
        """Exact match under teacher forcing = exact match of greedy decoding."""
        logits = jax.jit(lambda p, b: model.apply({"params": p}, **b, enable_dropout=False))(
            p,
            {
                k: batch[k]
                for k in ("encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens")
            },  # fmt: skip
        )
        hits = (np.asarray(logits).argmax(-1) == batch["decoder_target_tokens"]) | (
            batch["decoder_loss_weights"] == 0
        )
        return float(100.0 * hits.all(-1).mean())

    history = []
    for i in range(args.steps):
        sl = slice(i * args.batch_size, (i + 1) * args.batch_size)
        state, metrics = step(state, {}, {k: v[sl] for k, v in data.items()}, dropout_rng)
        if (i + 1) % args.eval_every == 0 or i + 1 == args.steps:
            m = {k: float(v) for k, v in evaluate(state.params, held_batch).items()}
            row = {
                "step": i + 1,
                "train_loss": float(metrics["loss"]),
                "train_token_accuracy": float(metrics["accuracy"]),
                "held_out_instructed_accuracy": sequence_accuracy(state.params, held_batch),
                "held_out_instructed_loss": m["loss"],
                "seconds": round(time.time() - start, 1),
            }
            history.append(row)
            print(row, flush=True)
    seconds = time.time() - start
    info = {
        "command": "python scripts/pretrain_embedded_backbone.py "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "steps": args.steps,
        "batch_size": args.batch_size,
        "learning_rate": args.learning_rate,
        "seed": args.seed,
        "wall_seconds": round(seconds, 1),
        "jax_version": jax.__version__,
        "input_length": INPUT_LENGTH,
        "target_length": TARGET_LENGTH,
        "history": history,
        "benchmark": {
            "seed": bench.seed,
            "num_source": bench.num_source,
            "num_target": bench.num_target,
            "shared_anchor": bench.shared_anchor,
            "held_out_seeds": list(synthetic.HELD_OUT_SEEDS),
        },  # fmt: skip
    }
    save_backbone(args.out, config, jax.device_get(state.params), info)
    print(f"wrote {args.out}.msgpack/.json in {seconds:.0f} s", flush=True)
    return info


if __name__ == "__main__":
    main()
