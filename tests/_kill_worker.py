"""A tiny MPT prompt run, used in-process and as a subprocess that the tests kill.

It is the real training loop (:func:`mpt_jax.training.loop.train_loop`) on the tiny
prompted T5 with a two-task ``MultitaskPrompt``, dropout on, Adafactor, and examples of
the embedded benchmark in a seeded, shuffled, endless order (batch ``i`` is a pure
function of ``i`` and ``data_seed``, like the runner's seqio order). Nothing here imports
TensorFlow before a resume, so a worker starts in seconds.

As a script it runs one (possibly resumed) run and can stop itself at a chosen moment,
then announce it in ``--signal`` and wait there to be SIGKILLed::

    python tests/_kill_worker.py MODEL_DIR --num-steps 12 --checkpoint-every 3 \
        --events EVENTS [--block-after-step K | --block-in-checkpoint K] --signal FILE \
        [--out FINAL.npz]

- ``--block-after-step K``: step ``K`` has been dispatched (its update exists only in
  device memory, no checkpoint holds it): the process is killed mid-step.
- ``--block-in-checkpoint K``: orbax has written every item of step ``K``'s checkpoint
  into its temporary directory and is about to rename it into place: the process is
  killed mid-write.
- ``--pause-after-step K``: like ``--block-after-step``, but the worker goes on once the
  test removes ``--signal`` (after sending SIGINT/SIGTERM: the loop then saves step ``K``
  and exits with 128 + the signal).

The blocking is done by wrapping library functions *in this process only* (the loop's
compiled step and orbax's atomic rename); the library carries no test hooks.

``EVENTS`` receives one line per executed step (``step K``) and per completed
checkpoint (``saved K``); ``--out`` receives the final prompt and optimizer leaves.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import sys
import time

import flax.linen as nn
import jax
import numpy as np

from mpt_jax.backbone import get_config
from mpt_jax.data import synthetic
from mpt_jax.model import PromptedT5
from mpt_jax.prompts.generators import MultitaskPrompt
from mpt_jax.training import actions, make_optimizer, split_params, task_loss_fn
from mpt_jax.training import loop as loop_lib
from mpt_jax.training.checkpoints import Checkpointer

TASKS = ("source_0", "source_1")
BATCH, INPUT_LENGTH, TARGET_LENGTH, PROMPT_LENGTH = 4, 16, 4, 3
EXAMPLES_PER_TASK = 10  # 20 examples = 5 batches per epoch: a run crosses epochs


@functools.lru_cache(maxsize=1)
def model_and_objective():
    """The tiny prompted model, its task loss and the frozen random backbone (one per
    process, so every run in a process reuses one compiled step)."""
    config = dataclasses.replace(get_config("tiny"), vocab_size=synthetic.BYTE_VOCAB_SIZE)
    prompt = MultitaskPrompt(num_tasks=len(TASKS), length=PROMPT_LENGTH, embed_dim=config.emb_dim)
    model = PromptedT5(config, prompt)
    batch = _pool()
    inputs = {k: batch[k][:1] for k in ("encoder_input_tokens", "decoder_input_tokens",
                                        "decoder_target_tokens", "task_ids")}  # fmt: skip
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), **inputs, enable_dropout=False))
    _, backbone = split_params(nn.unbox(shapes["params"]))
    return model, task_loss_fn(model), make_optimizer(), {"backbone": _random_tree(backbone)}


def _random_tree(shapes) -> dict:
    """A fixed random frozen backbone of the given shapes (layer-norm scales 1, other
    weights N(0, 0.1²)), drawn with numpy: an eager ``model.init`` costs ~10 s of CPU in
    every worker process."""
    rng = np.random.default_rng(0)

    def leaf(path, shape):
        if jax.tree_util.keystr(path).endswith("['scale']"):
            return np.ones(shape.shape, np.float32)
        return (0.1 * rng.standard_normal(shape.shape)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(leaf, shapes)


def initial_prompt(seed: int):
    """MPT's initial prompt tree for ``seed`` (``shared`` random, ``U V`` ≈ 1)."""
    model = model_and_objective()[0]
    ids = np.zeros((1,), np.int32)
    embedded = np.zeros((1, 1, model.config.emb_dim), np.float32)
    variables = model.prompt.init(jax.random.key(seed), ids, embedded, np.ones((1, 1)))
    return jax.tree.map(np.asarray, nn.unbox(variables["params"]))


@functools.lru_cache(maxsize=1)
def _pool() -> dict[str, np.ndarray]:
    """Every training example, encoded: ``[N, S]`` / ``[N, T]`` arrays, task ids ``[N]``."""
    bench = synthetic.EmbeddedBenchmark()
    examples, ids = [], []
    for task_id, name in enumerate(TASKS):
        examples += bench.examples(name, "train", EXAMPLES_PER_TASK)
        ids += [task_id] * EXAMPLES_PER_TASK
    return synthetic.to_batch(examples, ids, input_length=INPUT_LENGTH, target_length=TARGET_LENGTH)


def batches(data_seed: int):
    """``batches(start)``: batch ``i`` takes the ``i``-th slice of a per-epoch permutation
    drawn from ``(data_seed, epoch)``; the same for any ``start``."""
    pool = _pool()
    n = len(pool["task_ids"])
    per_epoch = n // BATCH

    def from_position(start: int):
        i = start
        while True:
            epoch, k = divmod(i, per_epoch)
            order = np.random.default_rng([data_seed, epoch]).permutation(n)
            rows = order[k * BATCH : (k + 1) * BATCH]
            yield {name: value[rows] for name, value in pool.items()}
            i += 1

    return from_position


def run(model_dir: str | None, *, num_steps: int, checkpoint_every: int = 3, seed: int = 0,
        data_seed: int = 0) -> loop_lib.LoopResult:  # fmt: skip
    """One training run (resumed from ``model_dir``'s latest checkpoint when it has one)."""
    _, loss_fn, tx, frozen = model_and_objective()
    return loop_lib.train_loop(
        loss_fn, tx, initial_prompt(seed), frozen, batches(data_seed), task_names=TASKS,
        model_dir=model_dir, num_steps=num_steps, seed=seed, log_every=1, backbone="random:0",
        actions=[actions.NonFinite(), actions.Checkpoint(every=checkpoint_every, keep=None),
                 actions.Console(progress_bar=False), actions.StopOnSignal()],
    )  # fmt: skip


def flat(tree) -> dict[str, np.ndarray]:
    """``{key path: leaf}`` of a pytree, for saving and bitwise comparison."""
    return {jax.tree_util.keystr(k): np.asarray(v)
            for k, v in jax.tree_util.tree_leaves_with_path(tree)}  # fmt: skip


# -- the killable script --------------------------------------------------------------------


def _append(path: str, line: str) -> None:
    with open(path, "a") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())


def _announce_and_wait(signal_file: str, what: str) -> None:
    with open(signal_file + ".part", "w") as f:
        f.write(what)
    os.replace(signal_file + ".part", signal_file)
    while True:  # the test SIGKILLs us here
        time.sleep(60)


def _announce_and_pause(signal_file: str, what: str) -> None:
    with open(signal_file + ".part", "w") as f:
        f.write(what)
    os.replace(signal_file + ".part", signal_file)
    deadline = time.monotonic() + 300
    while os.path.exists(signal_file) and time.monotonic() < deadline:
        time.sleep(0.05)  # the signal handler runs here, between two sleeps


def _install_blocks(args) -> None:
    real_compiled = loop_lib._compiled_train_step

    def compiled(loss_fn, tx, mesh):
        step_fn = real_compiled(loss_fn, tx, mesh)

        def logged_step(state, frozen, batch, rng):
            step = int(state.step) + 1
            out = step_fn(state, frozen, batch, rng)  # dispatched, not yet read back
            _append(args.events, f"step {step}")
            if step == args.block_after_step:
                _announce_and_wait(args.signal, f"in step {step}")
            if step == args.pause_after_step:
                _announce_and_pause(args.signal, f"in step {step}")
            return out

        return logged_step

    loop_lib._compiled_train_step = compiled

    real_save = Checkpointer.save
    saving = {"step": None}

    def save(self, state, **kwargs):
        saving["step"] = int(state.step)
        saved = real_save(self, state, **kwargs)
        self.wait()
        if saved:
            _append(args.events, f"saved {int(state.step)}")
        return saved

    Checkpointer.save = save

    from orbax.checkpoint._src.path import atomicity

    real_finalize = atomicity.AtomicRenameTemporaryPath.finalize

    async def finalize(self, *a, **kw):
        if saving["step"] == args.block_in_checkpoint:
            _announce_and_wait(args.signal, f"writing checkpoint {saving['step']}")
        return await real_finalize(self, *a, **kw)

    atomicity.AtomicRenameTemporaryPath.finalize = finalize


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir")
    parser.add_argument("--num-steps", type=int, required=True)
    parser.add_argument("--checkpoint-every", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--events", required=True)
    parser.add_argument("--signal", default=None)
    parser.add_argument("--block-after-step", type=int, default=None)
    parser.add_argument("--block-in-checkpoint", type=int, default=None)
    parser.add_argument("--pause-after-step", type=int, default=None)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    _install_blocks(args)
    result = run(args.model_dir, num_steps=args.num_steps, checkpoint_every=args.checkpoint_every,
                 seed=args.seed, data_seed=args.data_seed)  # fmt: skip
    if args.out:
        np.savez(args.out, **flat({"params": result.state.params,
                                   "opt_state": result.state.opt_state}))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
