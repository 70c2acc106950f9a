"""``mpt-jax demo``: MPT's whole pipeline on the embedded benchmark, in minutes on a CPU.

Nothing is downloaded. The backbone is the small T5 the package ships
(``mpt_jax/assets/embedded_t5``, pretrained by ``scripts/pretrain_embedded_backbone.py``
on instructed members of the benchmark's task family, never on a benchmark task); the
data come from :mod:`mpt_jax.data.synthetic` (6 source tasks, 4 held-out target tasks
of the set-comparison family, no instruction in the input). Only prompts train.

Stages, built on the training core (objectives, ``train_step_fn``, ``make_optimizer``,
``per_task``) and the prompt library (generators, ``source_init``, ``accounting``):

1. **Teachers**: one vanilla prompt per source task — a ``TaskPrompts`` table with the
   ``per_task`` optimizer, which equals separate runs. In the same compiled step, a
   second table whose examples all carry task id 0 trains *SPoT's source prompt*: its
   row 0 is one prompt trained on the whole source mixture.
2. **Source training** on the same mixture: *MPT* (``MultitaskPrompt``, ``P ∘ U_k V_k``)
   with distillation from the teachers (``L_task + λ (τ² KL + MSE)``); *MPT w/o
   distillation* is the same run with ``λ = 0``, so both share one compiled step (the
   distillation weight is a per-run value); *other compositions* (default ``add``,
   ``P + U_k V_k``) follow MPT's recipe with another way to combine the two parts.
3. **Few-shot target adaptation**: every target task, ``k`` ∈ ``shots``, every seed (a
   seed draws the k-shot sample, the batch order and fresh random inits), every method:
   *prompt tuning* (random ``SinglePrompt``), *SPoT init* (SPoT's source prompt), the MPT
   variants (shared prompt + the average of the source task matrices, rank r —
   ``source_init.init_from_source(method="average")``). All runs of a generator are
   ``vmap``-ed into one compiled step; every run of a (task, k, seed) sees the same
   batches whatever its method.

Scores are exact-match accuracy (%) on each target task's test split after the last
step, without checkpoint selection. Exact match under teacher forcing equals exact match
of greedy decoding (greedy emits the target iff each teacher-forced argmax is the target
token), so one forward pass scores a batch. Evaluation materialises every run's prompt
``[L, D]`` and scores all of them with one compiled program. Parameters per task are
:func:`mpt_jax.prompts.accounting.count_parameters` of the target generator.

The run prints a table (methods × target tasks × shots) and writes ``results.json``,
``table.txt`` and ``learning_curves.png`` to ``out_dir``. gin (every argument of
:func:`main` binds)::

    mpt_jax.runner.demo.main.seeds = (0, 1, 2, 3)
    mpt_jax.runner.demo.main.compositions = ()       # MPT variants and baselines only
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
import time
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax

from mpt_jax import assets
from mpt_jax.data import synthetic
from mpt_jax.model import PromptedT5
from mpt_jax.prompts import ComposedPrompt, MultitaskPrompt, SinglePrompt, TaskPrompts
from mpt_jax.prompts.accounting import count_parameters
from mpt_jax.prompts.source_init import init_from_source
from mpt_jax.training.objectives import distillation_loss_fn, task_loss_fn
from mpt_jax.training.optimizers import learning_rate_schedule, make_optimizer, per_task
from mpt_jax.training.state import TrainState
from mpt_jax.training.step import train_step_fn

PyTree = Any
INPUT_LENGTH = 12  # at most 10 symbols + EOS, rounded up
TARGET_LENGTH = 4  # "yes" + EOS

VANILLA, SPOT, MPT_NO_KD, MPT = "prompt tuning", "SPoT init", "MPT w/o distillation", "MPT"
#: Compositions that may be added as methods. They must keep the prompt length, ignore the
#: input (so prompts can be materialised for scoring) and hold only ``shared``,
#: ``task_cols``, ``task_rows`` (what ``init_from_source`` builds a target from); ``weighted``
#: and ``gated`` carry further parameters that the source initialiser does not map yet.
EXTRA_COMPOSITIONS = ("add",)

#: What ``quick=True`` sets (a smoke run of every stage; its numbers mean little).
QUICK = dict(
    teacher_steps=20,
    source_steps=20,
    target_steps=10,
    shots=(16,),
    seeds=(0,),
    test_size=32,
    eval_points=2,
    source_train_size=128,
)


def composition_name(composition: str) -> str:
    """The table row of an extra composition."""
    return f"MPT recipe, {composition}"


# -- metrics --------------------------------------------------------------------------------------


def exact_match(model: PromptedT5, params: PyTree, batch: dict) -> jax.Array:
    """``[batch]`` float: 1 where every target token is the argmax under teacher forcing.

    This is exact match of greedy decoding: greedy decoding reproduces the target iff
    the argmax at every target position (EOS included) is the target token.
    """
    logits = model.apply(
        {"params": params},
        batch["encoder_input_tokens"],
        batch["decoder_input_tokens"],
        batch["decoder_target_tokens"],
        batch["task_ids"],
        enable_dropout=False,
    )
    right = jnp.argmax(logits, -1) == batch["decoder_target_tokens"]
    right = right | (batch["decoder_loss_weights"] == 0)
    return jnp.all(right, axis=-1).astype(jnp.float32)


@functools.cache
def _scorer(model: PromptedT5):
    """``score(table [R, T, L, D], backbone, batch [R, N, ...]) -> accuracy (%) [R]``.

    ``model`` has a ``TaskPrompts`` generator: each run's materialised prompts are its
    table, so every method is scored by this one compiled program.
    """

    def one(table, backbone, batch):
        params = {**backbone, "prompt": {"task_prompts": table}}
        return 100.0 * jnp.mean(exact_match(model, params, batch))

    return jax.jit(jax.vmap(one, in_axes=(0, None, 0)))


# -- a group of independent prompt runs, one compiled step ----------------------------------------


def _stack(trees: Sequence[PyTree]) -> PyTree:
    """Trees → one tree with a new leading run axis."""
    return jax.tree.map(lambda *xs: jnp.stack([jnp.asarray(x) for x in xs]), *trees)


def _concat(trees: Sequence[PyTree]) -> PyTree:
    """Trees with a leading run axis → one tree, runs concatenated (first tree first)."""
    return jax.tree.map(lambda *xs: np.concatenate([np.asarray(x) for x in xs]), *trees)


@dataclasses.dataclass(eq=False)
class RunGroup:
    """``R`` independent runs of one generator: prompt trees and optimizer states stacked on
    axis 0, stepped together by :func:`mpt_jax.training.step.train_step_fn` under ``vmap``.

    Attributes:
      model: the prompted model (its ``prompt`` is the generator).
      tx: the optimizer of one run.
      teacher: a ``PromptedT5`` with the teachers' ``TaskPrompts`` to distill from, or
        None (task loss). With a teacher, each run has its own distillation weight ``λ``
        (``λ = 0`` is the task loss exactly).
    """

    model: PromptedT5
    tx: optax.GradientTransformation
    teacher: PromptedT5 | None = None

    @functools.cached_property
    def _step(self):
        if self.teacher is None:
            plain = train_step_fn(task_loss_fn(self.model), self.tx)

            def step(state, frozen, batch, rng, weight):
                del weight
                return plain(state, frozen, batch, rng)
        else:

            def step(state, frozen, batch, rng, weight):
                loss = distillation_loss_fn(self.model, self.teacher, distill_weight=weight)
                return train_step_fn(loss, self.tx)(state, frozen, batch, rng)

        return jax.jit(jax.vmap(step, in_axes=(0, None, 0, 0, 0)), donate_argnums=(0,))

    def start(self, params: PyTree, rng: jax.Array, weights: Sequence[float] | None = None):
        """Sets the runs' initial prompt trees ``[R, ...]`` (and distillation weights)."""
        self.runs = int(jax.tree.leaves(params)[0].shape[0])
        self.state = jax.vmap(lambda p: TrainState.create(p, self.tx))(params)
        self.rngs = jax.random.split(rng, self.runs)
        self.weights = jnp.asarray(np.zeros(self.runs) if weights is None else weights,
                                   jnp.float32)  # fmt: skip

    def advance(self, frozen: PyTree, batch: dict) -> dict:
        """One step of every run on ``batch`` ``[R, B, ...]``; returns the metrics ``[R]``."""
        self.state, metrics = self._step(self.state, frozen, batch, self.rngs, self.weights)
        if np.any(np.asarray(metrics["nonfinite"])):
            loss = np.asarray(metrics["loss"])
            raise FloatingPointError(
                f"non-finite loss or gradient at step {int(self.state.step[0]) - 1} "
                f"(losses per run {loss})"
            )
        return metrics

    @property
    def params(self) -> PyTree:
        return self.state.params

    def prompts(self, num_tasks: int) -> jax.Array:
        """Each run's prompt for task ids ``0 … num_tasks-1``: ``[R, num_tasks, L, D]``."""
        ids = jnp.arange(num_tasks, dtype=jnp.int32)
        apply = lambda p: self.model.prompt.apply({"params": p}, ids)
        return jax.vmap(apply)(self.params)


# -- data -----------------------------------------------------------------------------------------


def _encode(examples: list[dict[str, str]], task_ids: int | np.ndarray) -> dict[str, np.ndarray]:
    return synthetic.to_batch(
        examples,
        np.broadcast_to(np.asarray(task_ids, np.int32), (len(examples),)),
        input_length=INPUT_LENGTH,
        target_length=TARGET_LENGTH,
    )


def _source_batch(pools: list[dict[str, np.ndarray]], per_task: int, seed: int, step: int):
    """``per_task`` examples of every source task (ids 0…T-1), drawn for ``step``."""
    rng = np.random.default_rng((seed, step))
    index = [rng.integers(0, len(p["task_ids"]), per_task) for p in pools]
    return {k: np.concatenate([p[k][i] for p, i in zip(pools, index, strict=True)])
            for k in pools[0]}  # fmt: skip


def _with_runs(batch: dict[str, np.ndarray], runs: int) -> dict[str, np.ndarray]:
    return {k: np.broadcast_to(v, (runs,) + v.shape) for k, v in batch.items()}


@dataclasses.dataclass(frozen=True)
class TargetRun:
    """One few-shot adaptation: target task index, examples ``k``, seed."""

    task: int
    shots: int
    seed: int


def _target_batches(data: list[dict[str, np.ndarray]], batch_size: int, step: int):
    """``[R, batch_size, ...]``: run ``r``'s batch for ``step`` from its own k-shot set.

    ``k <= batch_size``: all k examples, reshuffled, tiled to ``batch_size``;
    ``k > batch_size``: ``batch_size`` of them without replacement.
    """
    rows = []
    for r, d in enumerate(data):
        k = len(d["task_ids"])
        order = np.random.default_rng((r, step)).permutation(k)
        index = np.resize(order, batch_size) if k <= batch_size else order[:batch_size]
        rows.append({key: v[index] for key, v in d.items()})
    return {key: np.stack([row[key] for row in rows]) for key in rows[0]}


# -- output ---------------------------------------------------------------------------------------


def format_table(results: dict, params: dict[str, int], shots: Sequence[int], tasks) -> str:
    """The printed table: one row per method, per-task means and the average per ``k``."""
    head = f"{'method':<24}{'params/task':>12}"
    for k in shots:
        head += " |" + "".join(f"{t.name:>9}" for t in tasks) + f"{f'{k}-shot avg':>15}"
    lines = [head, "-" * len(head)]
    for m, by_shots in results.items():
        line = f"{m:<24}{params[m]:>12,d}"
        for k in shots:
            r = by_shots[str(k)]
            line += " |" + "".join(f"{v:>9.1f}" for v in r["per_task_mean"])
            cell = f"{r['mean']:.1f} ± {r['std_over_seeds']:.1f}"
            line += f"{cell:>15}"
        lines.append(line)
    return "\n".join(lines)


def plot_curves(curves: dict, shots: Sequence[int], path: pathlib.Path) -> None:
    """Learning curves (mean test accuracy over target tasks and seeds), one panel per k."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(shots), figsize=(5.5 * len(shots), 4), squeeze=False)
    for ax, k in zip(axes[0], shots, strict=True):
        for m, by_shots in curves.items():
            steps, acc = by_shots[str(k)]
            ax.plot(steps, acc, marker="o", markersize=3, label=m)
        ax.set_title(f"{k}-shot target adaptation")
        ax.set_xlabel("training step")
        ax.set_ylabel("test exact match (%), mean over tasks and seeds")
        ax.axhline(50.0, color="grey", linewidth=0.8, linestyle=":")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- the run --------------------------------------------------------------------------------------


@gin.configurable
def main(
    quick: bool = False,
    out_dir: str = "mpt_demo",
    *,
    benchmark_seed: int = 0,
    seed: int = 0,
    prompt_length: int = 8,
    rank: int = 1,
    compositions: Sequence[str] = ("add",),
    teacher_steps: int = 900,
    source_steps: int = 600,
    target_steps: int = 100,
    shots: Sequence[int] = (16, 32),
    seeds: Sequence[int] = (0, 1, 2),
    source_train_size: int = 1024,
    source_batch_per_task: int = 8,
    target_batch_size: int = 16,
    test_size: int = 128,
    eval_points: int = 10,
    learning_rate: float = 0.3,
    schedule: str = "linear_decay",
    distill_weight: float = 0.9,
    backbone: str | None = None,
    verbose: bool = True,
) -> dict:
    """Runs the demo; returns (and saves) the results.

    Args:
      quick: a smoke run of every stage in seconds (sets the arguments in :data:`QUICK`).
      out_dir: where ``results.json``, ``table.txt`` and ``learning_curves.png`` go.
      benchmark_seed: fixes the tasks and their examples.
      seed: fixes the source stages' random inits and batches.
      prompt_length: ``L`` of every prompt.
      rank: ``r`` of the task factors ``U_k [L, r]``, ``V_k [r, D]``.
      compositions: extra methods: ``ComposedPrompt`` with these compositions (from
        :data:`EXTRA_COMPOSITIONS`), trained with MPT's recipe (rank-r task part,
        distillation, average init).
      teacher_steps / source_steps / target_steps: optimizer steps of each stage.
      shots: examples per target task (even; each ≤ or a multiple of the batch size).
      seeds: target-adaptation seeds.
      source_train_size: training examples per source task.
      source_batch_per_task: examples of each source task in a source batch.
      target_batch_size: batch size of target adaptation.
      test_size: test examples per task.
      eval_points: evaluations during target training (besides step 0).
      learning_rate: of every stage (Adafactor with prompt tuning's other defaults).
      schedule: ``"linear_decay"`` (to 0 at each stage's last step, so the last step —
        where scores are read — is not a noisy one) or ``"constant"`` (prompt tuning's);
        the same for every stage and method.
      distill_weight: MPT's ``λ`` (the training core's default, recalled from the paper).
      backbone: path prefix of a backbone saved by ``assets.save_backbone`` (default:
        the shipped one).
      verbose: print progress and the table.

    Returns:
      ``{"table", "results": {method: {k: {...}}}, "params_per_task", "curves",
      "source", "tasks", "seconds", "backbone", "settings"}`` (also in ``results.json``).
    """
    if quick:
        teacher_steps, source_steps = QUICK["teacher_steps"], QUICK["source_steps"]
        target_steps, shots, seeds = QUICK["target_steps"], QUICK["shots"], QUICK["seeds"]
        test_size, eval_points = QUICK["test_size"], QUICK["eval_points"]
        source_train_size = QUICK["source_train_size"]
    shots, seeds, compositions = tuple(shots), tuple(seeds), tuple(compositions)
    for k in shots:
        if k < 2 or k % 2 or (k > target_batch_size and k % target_batch_size):
            raise ValueError(
                f"shots must be even and either <= target_batch_size ({target_batch_size}) "
                f"or a multiple of it; got {k}."
            )
    for c in compositions:
        if c not in EXTRA_COMPOSITIONS:
            raise ValueError(f"compositions must be among {EXTRA_COMPOSITIONS}; got {c!r}.")
    if not seeds:
        raise ValueError("seeds must name at least one seed.")
    for name, value in (
        ("teacher_steps", teacher_steps),
        ("source_steps", source_steps),
        ("target_steps", target_steps),
        ("eval_points", eval_points),
    ):
        if value < 1:
            raise ValueError(f"{name} must be >= 1; got {value}.")  # fmt: skip

    start = time.time()
    log = print if verbose else (lambda *a, **k: None)
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config, backbone_params, backbone_info = assets.load_backbone(
        assets.EMBEDDED_BACKBONE if backbone is None else pathlib.Path(backbone)
    )
    frozen = {"backbone": backbone_params}
    bench = synthetic.EmbeddedBenchmark(seed=benchmark_seed)
    sources, targets = bench.source_tasks, bench.target_tasks
    num_sources, dim = len(sources), config.emb_dim
    if schedule not in ("constant", "linear_decay"):
        raise ValueError(f"schedule must be 'constant' or 'linear_decay'; got {schedule!r}.")

    def optimizer(steps: int) -> optax.GradientTransformation:
        rate = learning_rate_schedule(learning_rate, kind=schedule, total_steps=steps)
        return make_optimizer(learning_rate=learning_rate, schedule=rate)

    keys = iter(jax.random.split(jax.random.PRNGKey(seed), 16))
    backbone_size = sum(int(np.size(x)) for x in jax.tree.leaves(backbone_params))
    log(
        f"[demo] frozen backbone {config.name}: {backbone_size:,} parameters; {num_sources} "
        f"source and {len(targets)} held-out target tasks; prompt length {prompt_length}, "
        f"rank {rank}{'; quick mode' if quick else ''}"
    )

    def fresh(generator: nn.Module, rng: jax.Array) -> PyTree:
        ids, embedded = jnp.zeros((1,), jnp.int32), jnp.zeros((1, 1, dim), jnp.float32)
        return nn.meta.unbox(generator.init(rng, ids, embedded)["params"])

    def replicate(tree: PyTree, n: int) -> PyTree:
        return jax.tree.map(lambda x: jnp.broadcast_to(jnp.asarray(x), (n,) + x.shape), tree)

    # ---- 1. teachers and SPoT's source prompt -----------------------------------------------
    t0 = time.time()
    pools = [_encode(bench.examples(t, "train", source_train_size), i)
             for i, t in enumerate(sources)]  # fmt: skip
    table_gen = TaskPrompts(num_tasks=num_sources, length=prompt_length, embed_dim=dim)
    teachers = RunGroup(PromptedT5(config, table_gen), per_task(optimizer(teacher_steps)))
    teachers.start(_stack([fresh(table_gen, next(keys)), fresh(table_gen, next(keys))]),
                   next(keys))  # fmt: skip
    for i in range(teacher_steps):
        batch = _with_runs(_source_batch(pools, source_batch_per_task, seed, i), 2)
        batch = {**batch, "task_ids": batch["task_ids"] * np.array([[1], [0]], np.int32)}
        teachers.advance(frozen, batch)
    teacher_table = jax.tree.map(lambda x: x[0], teachers.params)
    spot_source = {"shared": teachers.params["task_prompts"][1, 0]}
    log(f"[demo] teachers + SPoT source prompt: {teacher_steps} steps ({time.time() - t0:.0f} s)")

    # ---- 2. source training: MPT (λ = 0.9 and λ = 0) and the other compositions -------------
    t0 = time.time()
    teacher_model = PromptedT5(config, table_gen)
    distill_frozen = {**frozen, "teacher_prompt": teacher_table}
    mpt_gen = MultitaskPrompt(num_tasks=num_sources, length=prompt_length, embed_dim=dim,
                              num_ranks=rank)  # fmt: skip
    student_tx = optimizer(source_steps)
    students = {"mpt": RunGroup(PromptedT5(config, mpt_gen), student_tx, teacher_model)}
    students["mpt"].start(_stack([fresh(mpt_gen, next(keys))] * 2), next(keys),
                          weights=(distill_weight, 0.0))  # fmt: skip
    for c in compositions:
        gen = ComposedPrompt(num_tasks=num_sources, length=prompt_length, embed_dim=dim,
                             composition=c, task_rank=rank)  # fmt: skip
        students[c] = RunGroup(PromptedT5(config, gen), student_tx, teacher_model)
        students[c].start(replicate(fresh(gen, next(keys)), 1), next(keys),
                          weights=(distill_weight,))  # fmt: skip
    for i in range(source_steps):
        batch = _source_batch(pools, source_batch_per_task, seed + 1, i)
        for group in students.values():
            group.advance(distill_frozen, _with_runs(batch, group.runs))
    mpt_sources = {MPT: jax.tree.map(lambda x: x[0], students["mpt"].params),
                   MPT_NO_KD: jax.tree.map(lambda x: x[1], students["mpt"].params)}  # fmt: skip
    log(f"[demo] MPT source training (with and without distillation"
        f"{', ' + ', '.join(compositions) if compositions else ''}): {source_steps} steps "
        f"({time.time() - t0:.0f} s)")  # fmt: skip

    # Source-task accuracy of every source prompt (one compiled scorer).
    source_tables = {
        "teachers": teachers.prompts(num_sources)[0],
        SPOT: jnp.broadcast_to(spot_source["shared"], (num_sources, prompt_length, dim)),
        MPT: students["mpt"].prompts(num_sources)[0],
        MPT_NO_KD: students["mpt"].prompts(num_sources)[1],
        **{composition_name(c): students[c].prompts(num_sources)[0] for c in compositions},
    }
    source_test = _encode(
        [e for t in sources for e in bench.examples(t, "test", test_size)],
        np.repeat(np.arange(num_sources), test_size),
    )
    scorer = _scorer(PromptedT5(config, table_gen))
    acc = scorer(jnp.stack(list(source_tables.values())), backbone_params,
                 _with_runs(source_test, len(source_tables)))  # fmt: skip
    source_report = {m: float(a) for m, a in zip(source_tables, np.asarray(acc), strict=True)}
    log("[demo] source-task test accuracy: "
        + ", ".join(f"{m} {a:.1f}%" for m, a in source_report.items()))  # fmt: skip

    # ---- 3. few-shot target adaptation ------------------------------------------------------
    t0 = time.time()
    runs = [TargetRun(j, k, s) for k in shots for s in seeds for j in range(len(targets))]
    data = [_encode(bench.few_shot(targets[r.task], r.shots, seed=r.seed), 0) for r in runs]
    test = [_encode(bench.examples(t, "test", test_size), 0) for t in targets]
    n = len(runs)
    single = SinglePrompt(length=prompt_length, embed_dim=dim)
    one_mpt = MultitaskPrompt(num_tasks=1, length=prompt_length, embed_dim=dim, num_ranks=rank)
    average = lambda source: init_from_source(source, "average", num_target_tasks=1, rank=rank)
    vanilla_init = _stack([fresh(single, jax.random.fold_in(jax.random.PRNGKey(r.seed), r.task))
                           for r in runs])  # fmt: skip
    # Methods that share a generator share a group (and its compiled step): method-major.
    groups = {
        "single": (single, [(VANILLA, vanilla_init), (SPOT, replicate(spot_source, n))]),
        "mpt": (one_mpt, [(MPT_NO_KD, replicate(average(mpt_sources[MPT_NO_KD]), n)),
                          (MPT, replicate(average(mpt_sources[MPT]), n))]),
    }  # fmt: skip
    for c in compositions:
        gen = ComposedPrompt(num_tasks=1, length=prompt_length, embed_dim=dim, composition=c,
                             task_rank=rank)  # fmt: skip
        source = jax.tree.map(lambda x: x[0], students[c].params)
        groups[c] = (gen, [(composition_name(c), replicate(average(source), n))])
    order = [VANILLA, SPOT, MPT_NO_KD, MPT] + [composition_name(c) for c in compositions]
    params_per_task, target_groups = {}, {}
    for name, (gen, methods) in groups.items():
        for m, _ in methods:
            params_per_task[m] = int(count_parameters(gen).per_task)
        group = RunGroup(PromptedT5(config, gen), optimizer(target_steps))
        group.start(_concat([p for _, p in methods]), next(keys))
        target_groups[name] = (group, [m for m, _ in methods])

    eval_at = sorted({0, target_steps} | {
        round(target_steps * p / eval_points) for p in range(1, eval_points + 1)})  # fmt: skip
    total_runs = n * len(order)
    test_batch = {k: np.stack([test[r.task][k] for _ in order for r in runs]) for k in test[0]}
    target_scorer = _scorer(PromptedT5(config, TaskPrompts(1, prompt_length, dim)))
    curve_steps, curve_acc = [], []
    for i in range(target_steps + 1):
        if i in eval_at:
            tables = {}
            for group, methods in target_groups.values():
                p = group.prompts(1)
                for j, m in enumerate(methods):
                    tables[m] = p[j * n : (j + 1) * n]
            stacked = jnp.concatenate([tables[m] for m in order])
            assert stacked.shape[0] == total_runs
            curve_steps.append(i)
            curve_acc.append(np.asarray(target_scorer(stacked, backbone_params, test_batch)))
        if i == target_steps:
            break
        batch = _target_batches(data, target_batch_size, i)
        for group, methods in target_groups.values():
            group.advance(frozen, _concat([batch] * len(methods)))
    log(f"[demo] target adaptation: {len(order)} methods x {n} runs, {target_steps} steps "
        f"({time.time() - t0:.0f} s)")  # fmt: skip

    # ---- results ------------------------------------------------------------------------------
    results, curves = {}, {}
    for mi, m in enumerate(order):
        results[m], curves[m] = {}, {}
        for k in shots:
            idx = [mi * n + r for r in range(n) if runs[r].shots == k]
            grid = np.array(
                [
                    [
                        curve_acc[-1][mi * n + r]
                        for r in range(n)
                        if runs[r].shots == k and runs[r].seed == s
                    ]
                    for s in seeds
                ]  # fmt: skip
            )  # [seeds, tasks]
            results[m][str(k)] = {
                "per_task_mean": grid.mean(0).tolist(),
                "mean": float(grid.mean()),
                "std_over_seeds": float(grid.mean(1).std()),
                "per_seed_per_task": grid.tolist(),
            }
            curves[m][str(k)] = (curve_steps, [float(np.mean(a[idx])) for a in curve_acc])
    seconds = time.time() - start
    table = format_table(results, params_per_task, shots, targets)
    text = (
        f"Held-out target tasks of the embedded benchmark: exact match (%) on {test_size} test "
        f"examples per task after {target_steps} steps, mean over seeds {seeds} (± std over "
        f"seeds of the task average); chance is 50%.\n{table}\n"
        f"(source-task accuracy: "
        + ", ".join(f"{m} {a:.1f}%" for m, a in source_report.items())
        + f"; total {seconds:.0f} s)"
    )
    log("\n" + text)
    plot_curves(curves, shots, out / "learning_curves.png")
    (out / "table.txt").write_text(text + "\n")
    report = {
        "table": text,
        "results": results,
        "params_per_task": params_per_task,
        "curves": curves,
        "source": source_report,
        "tasks": {t.name: {"set_a": t.set_a, "set_b": t.set_b} for t in bench.tasks},
        "seconds": seconds,
        "backbone": {k: v for k, v in backbone_info.items() if k != "history"},
        "settings": dict(
            quick=quick,
            prompt_length=prompt_length,
            rank=rank,
            shots=list(shots),
            seeds=list(seeds),
            teacher_steps=teacher_steps,
            source_steps=source_steps,
            target_steps=target_steps,
            learning_rate=learning_rate,
            schedule=schedule,
            test_size=test_size,
            compositions=list(compositions),
            distill_weight=distill_weight,
        ),  # fmt: skip
    }
    (out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    log(f"[demo] wrote {out / 'table.txt'}, {out / 'results.json'}, "
        f"{out / 'learning_curves.png'}")  # fmt: skip
    return report
