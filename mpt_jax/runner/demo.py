"""``mpt-jax demo``: MPT's pipeline on the embedded benchmark, in minutes on a CPU.

Nothing is downloaded. The backbone is the small T5 the package ships
(``mpt_jax/assets/embedded_t5``, pretrained by ``scripts/pretrain_embedded_backbone.py``
on instructed members of the benchmark's task family, never on a benchmark task); the
data come from :mod:`mpt_jax.data.synthetic` (6 source and 4 held-out target tasks that
count one shared anchor set against their own set; the targets' sets are never a
source's). Only prompts train. Each stage is the runner's stage function
(:mod:`mpt_jax.runner.stages`: the same generators, objectives, initialisers and
optimizers), called once per run and trained as one :class:`~mpt_jax.training.run_group.
RunGroup` (all runs of a stage in one ``vmap``-ed step, :func:`stages.run_group`):

1. **Teachers and SPoT's source prompt**: one prompt per source task (a ``TaskPrompts``
   table optimised row by row) and, beside it, one prompt on the whole source mixture.
2. **Source training**: MPT's ``P ∘ U_k V_k`` on the mixture with distillation from the
   teachers (``L_task + λ (τ² KL + MSE)``), and the same with ``λ = 0``.
3. **Few-shot target adaptation**, for every benchmark seed × target task × ``k`` ×
   few-shot seed × learning rate of the grid × method: prompt tuning (fresh prompt);
   prompt tuning started at the SPoT prompt's RMS (a control: scale without content);
   SPoT (the mixture prompt); MPT from scratch (no source); MPT without distillation and
   MPT (shared prompt + the average of the source task matrices, rank r); multi-target
   MPT (one MPT prompt for all targets, trained on their union, the paper's MPT^{t+m}).
   Every method of a (task, k, seed) sees the same batches.

Each method's learning rate is picked from ``learning_rates`` by exact match on the
targets' validation split (mean over tasks, k and seeds); the table reports the test
split at that rate: exact match (= greedy decoding; teacher-forced argmax) and rank
classification (the label with the higher log-likelihood), at step 0 and after training.
``results.json`` also holds learning curves, each method's validation scores per rate,
source-task accuracies and the RMS of every source and target prompt beside the
token embeddings'. gin binds every argument of :func:`main` (``configs/runner/demo.gin``).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
import time
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np

from mpt_jax import assets
from mpt_jax.data import synthetic
from mpt_jax.decoding import shift_right
from mpt_jax.model import PromptedT5
from mpt_jax.prompts import SinglePrompt
from mpt_jax.prompts.accounting import count_parameters
from mpt_jax.prompts.source_init import init_from_source
from mpt_jax.runner import stages
from mpt_jax.runner.stages import SourcePrompt, Stage, StageContext
from mpt_jax.training import optimizers
from mpt_jax.training.objectives import Distillation
from mpt_jax.training.optimizers import PromptRecipe

PyTree = Any
INPUT_LENGTH = 12  # at most 10 symbols + EOS, rounded up
TARGET_LENGTH = 4  # "yes" + EOS

PT, PT_RMS, SPOT = "prompt tuning", "prompt tuning at SPoT's RMS", "SPoT"
MPT_SCRATCH, MPT_NO_KD, MPT, MPT_MULTI = (
    "MPT from scratch",
    "MPT w/o distillation",
    "MPT",
    "MPT multi-target",
)
METHODS = (PT, PT_RMS, SPOT, MPT_SCRATCH, MPT_NO_KD, MPT, MPT_MULTI)

#: The rates of MPT's task factors ``U``, ``V`` (defined once, for the runner's MPT stages
#: too, in :data:`mpt_jax.training.optimizers.MPT_FACTOR_RATES`).
MPT_FACTOR_RATES = optimizers.MPT_FACTOR_RATES

#: What ``quick=True`` sets (a smoke run of every stage; its numbers mean little).
QUICK = dict(
    teacher_steps=10,
    source_steps=10,
    target_steps=6,
    shots=(16,),
    seeds=(0,),
    learning_rates=(0.3, 0.1),
    test_size=16,
    validation_size=16,  # = test_size: one compiled scorer for both
    eval_points=2,
    source_train_size=64,
)


# -- helpers ----------------------------------------------------------------------------------


def rms(x) -> float:
    """Root mean square ``sqrt(mean(x²))`` of an array."""
    return float(np.sqrt(np.mean(np.square(np.asarray(x, np.float64)))))


def prompts_of(generator: nn.Module, params: PyTree, num_tasks: int) -> jax.Array:
    """Every run's prompt for task ids ``0 … num_tasks-1``: ``[R, num_tasks, L, D]``."""
    ids = jnp.arange(num_tasks, dtype=jnp.int32)
    return jax.vmap(lambda p: generator.apply({"params": p}, ids))(params)


# -- data -------------------------------------------------------------------------------------


def encode(examples: list[dict[str, str]], task_ids) -> dict[str, np.ndarray]:
    """``to_batch`` at the demo's lengths; ``task_ids`` an int or one per example."""
    ids = np.broadcast_to(np.asarray(task_ids, np.int32), (len(examples),))
    return synthetic.to_batch(examples, ids, input_length=INPUT_LENGTH, target_length=TARGET_LENGTH)


def draw(data: dict[str, np.ndarray], size: int, rng: np.random.Generator) -> dict:
    """``size`` rows of ``data``: all of them reshuffled and tiled when there are at most
    ``size`` (a k-shot set), else ``size`` of them without replacement."""
    n = len(data["task_ids"])
    order = rng.permutation(n)
    index = np.resize(order, size) if n <= size else order[:size]
    return {k: v[index] for k, v in data.items()}


def concat(batches: Sequence[dict]) -> dict:
    return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


def stack_batches(batches: Sequence[dict]) -> dict:
    return {k: np.stack([b[k] for b in batches]) for k in batches[0]}


# -- scoring ----------------------------------------------------------------------------------


@functools.cache
def scorer(config, length: int) -> Callable:
    """``score(prompts [U, L, D], backbone, data [G, N, ...], which [U]) -> (em, rc) [U]``:
    exact match and rank-classification accuracy (%) of unit ``u``'s prompt on data set
    ``which[u]``, one compiled program for every method.

    One pass scores both: the encoder runs once, the decoder once per label word under
    teacher forcing. Rank classification picks the label with the higher log-likelihood;
    exact match asks that the gold label's every token (EOS included) be the argmax,
    which is exactly when greedy decoding emits it.
    """
    model = PromptedT5(config, SinglePrompt(length=length, embed_dim=config.emb_dim))
    labels = jnp.asarray(
        np.stack(
            [
                encode([{"inputs": "", "targets": w}], 0)["decoder_target_tokens"][0]
                for w in synthetic.LABELS
            ]
        )
    )

    def one(prompt, backbone, data):
        params = {**backbone, "prompt": {"shared": prompt}}
        tokens = data["encoder_input_tokens"]  # [N, S]
        n, c = tokens.shape[0], labels.shape[0]
        encoded = model.apply(
            {"params": params},
            tokens,
            jnp.zeros((n,), jnp.int32),
            enable_dropout=False,
            method=PromptedT5.encode,
        )
        targets = jnp.tile(labels, (n, 1))  # [N · C, T], example-major
        logits = model.apply(
            {"params": params},
            jnp.repeat(encoded, c, 0),
            jnp.repeat(tokens, c, 0),
            shift_right(targets),
            targets,
            enable_dropout=False,
            method=PromptedT5.decode,
        )
        logp = jax.nn.log_softmax(logits.astype(jnp.float32), -1)
        token_ll = jnp.take_along_axis(logp, targets[..., None], -1)[..., 0] * (targets > 0)
        ll = token_ll.sum(-1).reshape(n, c)
        hit = jnp.all((jnp.argmax(logp, -1) == targets) | (targets == 0), -1).reshape(n, c)
        gold = jnp.argmax(jnp.all(data["decoder_target_tokens"][:, None] == labels, -1), -1)
        em = jnp.take_along_axis(hit, gold[:, None], -1)[:, 0]
        return 100 * jnp.mean(em), 100 * jnp.mean(jnp.argmax(ll, -1) == gold)

    @jax.jit
    def score(prompts, backbone, data, which):
        return jax.vmap(one, in_axes=(0, None, 0))(
            prompts, backbone, jax.tree.map(lambda x: x[which], data)
        )

    return score


# -- stages -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Sources:
    """What source training leaves, per benchmark seed ``b`` (leading axis)."""

    teachers: np.ndarray  # [B, T, L, D]
    spot: np.ndarray  # [B, L, D]
    mpt: PyTree  # MultitaskPrompt params [B, ...] (λ > 0)
    mpt_no_kd: PyTree  # [B, ...] (λ = 0)


def train_sources(
    backbone,
    config,
    benches,
    recipe: PromptRecipe,
    mpt_recipe: PromptRecipe,
    distillation: Distillation,
    *,
    prompt_length,
    rank,
    teacher_steps,
    source_steps,
    train_size,
    batch_per_task,
    seed,
) -> Sources:
    """:func:`stages.teacher` for the teachers and SPoT's mixture prompt (one group), then
    :func:`stages.source` with and without teachers (two groups). All benchmark seeds train
    together: run ``b`` of a group (``2b``, ``2b + 1`` in the first) belongs to benchmark ``b``."""
    frozen, n = {"backbone": backbone}, len(benches)
    names = tuple(t.name for t in benches[0].source_tasks)
    ctx = lambda key: StageContext(names, config, backbone, key)
    pools = [
        [
            encode(bench.examples(t, "train", train_size), i)
            for i, t in enumerate(bench.source_tasks)
        ]
        for bench in benches
    ]
    keys = iter(jax.random.split(jax.random.key(seed), 8))

    def batches(step: int, salt: int, copies: int) -> dict:
        rng = np.random.default_rng((seed, salt, step))
        per_bench = [concat([draw(p, batch_per_task, rng) for p in pool]) for pool in pools]
        return stack_batches([b for b in per_bench for _ in range(copies)])

    # Teachers (run 2b) and SPoT's mixture prompt (run 2b + 1: every example is task 0, so
    # only row 0 of its table trains; the other rows get no gradient and stay put).
    teachers, params, _ = stages.run_group(
        [
            stages.teacher(ctx(k), prompt_fields={"length": prompt_length}, recipe=recipe)
            for k in jax.random.split(next(keys), 2 * n)
        ]
    )
    state = teachers.init(params)
    rngs, spot_ids = jax.random.split(next(keys), 2 * n), np.tile([[1], [0]], (n, 1))
    for i in range(teacher_steps):
        batch = batches(i, 0, 2)
        state, _ = teachers.step(
            state, frozen, {}, {**batch, "task_ids": batch["task_ids"] * spot_ids}, rngs
        )
    tables = np.asarray(state.params["task_prompts"])

    # MPT (λ from ``distillation``, each benchmark's teachers) and MPT w/o distillation (the
    # task loss), same start.
    start = ctx(next(keys))
    student = functools.partial(
        stages.source,
        start,
        prompt_fields={"length": prompt_length, "num_ranks": rank},
        distillation=distillation,
        recipe=mpt_recipe,
    )
    groups = [
        stages.run_group([student(SourcePrompt({"task_prompts": t}, names)) for t in tables[0::2]]),
        stages.run_group([student(None)] * n),
    ]
    states = [g.init(p) for g, p, _ in groups]
    rngs = jax.random.split(next(keys), n)
    for i in range(source_steps):
        batch = batches(i, 1, 1)
        states = [
            g.step(st, frozen, per_run, batch, rngs)[0]
            for (g, _, per_run), st in zip(groups, states, strict=True)
        ]
    mpt, no_kd = (jax.tree.map(np.asarray, st.params) for st in states)
    return Sources(tables[0::2], tables[1::2, 0], mpt, no_kd)


@dataclasses.dataclass(frozen=True)
class Unit:
    """One few-shot adaptation problem: benchmark seed index, target task, k, few-shot seed."""

    bench: int
    task: int
    shots: int
    seed: int


@dataclasses.dataclass(frozen=True)
class TargetGroup:
    """Target runs of one generator, trained as one group: ``runs`` are method-major, then
    one per unit (per (bench, k, seed) when ``multi``: one prompt for every target task)."""

    methods: list[str]
    runs: list[Stage]
    multi: bool
    recipe: PromptRecipe

    @property
    def prompt(self) -> nn.Module:
        return self.runs[0].prompt


def target_groups(
    config,
    backbone,
    benches,
    sources: Sources,
    units: list[Unit],
    recipe: PromptRecipe,
    mpt_recipe: PromptRecipe,
    *,
    prompt_length,
    rank,
    seed,
) -> list[TargetGroup]:
    """The target stages of every method and unit: :func:`stages.prompt_tuning` (fresh, and
    rescaled to SPoT's RMS), :func:`stages.spot`, :func:`stages.target` (fresh, and the
    ``average`` of each source MPT prompt, one target task or all)."""
    targets = tuple(t.name for t in benches[0].target_tasks)
    sources_of = tuple(t.name for t in benches[0].source_tasks)
    key = lambda u: jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), u.seed), u.task)
    ctx = lambda u: StageContext((targets[u.task],), config, backbone, key(u))
    single, mpt = {"length": prompt_length}, {"length": prompt_length, "num_ranks": rank}
    pt = [stages.prompt_tuning(ctx(u), prompt_fields=single, recipe=recipe) for u in units]
    pt_rms = [at_rms(st, rms(sources.spot[u.bench])) for st, u in zip(pt, units, strict=True)]
    spot_of = lambda u: SourcePrompt({"shared": sources.spot[u.bench]}, ("mixture",))
    spot = [stages.spot(ctx(u), spot_of(u), prompt_fields=single, recipe=recipe) for u in units]
    target = functools.partial(stages.target, prompt_fields=mpt, recipe=mpt_recipe)
    source = lambda tree, b: SourcePrompt(jax.tree.map(lambda x: x[b], tree), sources_of)
    scratch = [target(ctx(u), init="fresh") for u in units]
    no_kd = [target(ctx(u), source(sources.mpt_no_kd, u.bench)) for u in units]
    mpt_runs = [target(ctx(u), source(sources.mpt, u.bench)) for u in units]
    every = StageContext(targets, config, backbone, seed)
    multi = [target(every, source(sources.mpt, u.bench)) for u in multi_units(units)]
    return [
        TargetGroup([PT, PT_RMS, SPOT], pt + pt_rms + spot, False, recipe),
        TargetGroup([MPT_SCRATCH, MPT_NO_KD, MPT], scratch + no_kd + mpt_runs, False, mpt_recipe),
        TargetGroup([MPT_MULTI], multi, True, mpt_recipe),
    ]


def at_rms(stage: Stage, rho: float) -> Stage:
    """``stage`` with its single prompt scaled to RMS ``rho`` (scale without content)."""
    shared = stage.params["shared"]
    return dataclasses.replace(stage, params={"shared": shared * rho / rms(shared)})


def multi_units(units: list[Unit]) -> list[Unit]:
    """One unit per (bench, k, seed): the multi-target runs (task -1 = all targets)."""
    return sorted(
        {Unit(u.bench, -1, u.shots, u.seed) for u in units},
        key=lambda u: (u.bench, u.shots, u.seed),
    )


def adapt_targets(
    config,
    backbone,
    benches,
    sources: Sources,
    recipe: PromptRecipe,
    mpt_recipe: PromptRecipe,
    score,
    *,
    shots,
    seeds,
    learning_rates,
    prompt_length,
    rank,
    target_steps,
    batch_size,
    test_size,
    validation_size,
    eval_points,
    seed,
):
    """Trains every (method, rate, benchmark, task, k, seed) run, its group's runs in one step.

    Returns:
      ``(history, validation, groups, runs)``: ``history`` lists ``(step, keys, em, rc,
      rms)`` test evaluations, ``keys`` the ``(method, rate, Unit)`` of each score;
      ``validation`` the same after the last step on the validation split; ``groups``
      :func:`target_groups`; ``runs`` the number of runs.
    """
    targets = benches[0].target_tasks
    units = [
        Unit(b, j, k, s)
        for b in range(len(benches))
        for j in range(len(targets))
        for k in shots
        for s in seeds
    ]
    shots_data = {
        u: encode(benches[u.bench].few_shot(targets[u.task].name, u.shots, u.seed), 0)
        for u in units
    }
    eval_sets = {
        split: stack_batches(
            [
                encode(bench.examples(t, split, n), 0)
                for bench in benches
                for t in bench.target_tasks
            ]
        )
        for split, n in (("test", test_size), ("validation", validation_size))
    }
    groups = target_groups(
        config,
        backbone,
        benches,
        sources,
        units,
        recipe,
        mpt_recipe,
        prompt_length=prompt_length,
        rank=rank,
        seed=seed,
    )
    frozen = {"backbone": backbone}
    trained = []  # [generator, multi, group, state, rows [(method, lr, unit)], scale, rngs]
    for g in groups:
        run_units = multi_units(units) if g.multi else units
        rows = [(m, lr, u) for lr in learning_rates for m in g.methods for u in run_units]
        runs, params, _ = stages.run_group(g.runs)
        params = jax.tree.map(lambda x: jnp.concatenate([x] * len(learning_rates)), params)
        scale = jnp.asarray([lr / g.recipe.learning_rate for _, lr, _ in rows], jnp.float32)
        rngs = jax.random.split(jax.random.key(seed + 1), len(rows))
        trained.append([g.prompt, g.multi, runs, runs.init(params), rows, scale, rngs])

    def unit_batch(u: Unit, step: int) -> dict:
        rng = np.random.default_rng((seed, u.bench, u.task, u.shots, u.seed, step))
        return draw(shots_data[u], batch_size, rng)

    def batch_of(u: Unit, multi: bool, step: int) -> dict:
        """Run ``u``'s batch; a multi-target run gets every target's, ids 0 … T-1."""
        if not multi:
            return unit_batch(u, step)
        parts = [unit_batch(dataclasses.replace(u, task=j), step) for j in range(len(targets))]
        return concat(
            [{**p, "task_ids": np.full_like(p["task_ids"], j)} for j, p in enumerate(parts)]
        )

    def evaluate(split: str) -> tuple[list, np.ndarray, np.ndarray, np.ndarray]:
        """Scores every (method, lr, unit) prompt; a multi-target run gives one per task."""
        keys, prompts = [], []
        for gen, multi, _, state, rows, _, _ in trained:
            p = prompts_of(gen, state.params, len(targets) if multi else 1)
            for r, (m, lr, u) in enumerate(rows):
                for j in range(len(targets)) if multi else [u.task]:
                    keys.append((m, lr, dataclasses.replace(u, task=j)))
                    prompts.append(p[r, j if multi else 0])
        which = np.asarray([u.bench * len(targets) + u.task for _, _, u in keys])
        prompts = jnp.stack(prompts)
        em, rc = score(prompts, backbone, eval_sets[split], which)
        norms = np.sqrt(np.mean(np.square(np.asarray(prompts)), axis=(1, 2)))
        return keys, np.asarray(em), np.asarray(rc), norms

    eval_at = {0, target_steps} | {
        round(target_steps * p / eval_points) for p in range(1, eval_points + 1)
    }
    history = []
    for i in range(target_steps + 1):
        if i in eval_at:
            history.append((i, *evaluate("test")))
        if i == target_steps:
            break
        for t in trained:
            _, multi, runs, state, rows, scale, rngs = t
            batch = stack_batches([batch_of(u, multi, i) for _, _, u in rows])
            t[3], _ = runs.step(state, frozen, {}, batch, rngs, scale)
    return history, evaluate("validation"), groups, sum(len(t[4]) for t in trained)


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


# -- the run ----------------------------------------------------------------------------------


@gin.configurable
def main(
    quick: bool = False,
    out_dir: str = "mpt_demo",
    *,
    benchmark_seeds: Sequence[int] = (0,),
    seeds: Sequence[int] = (0, 1, 2),
    shots: Sequence[int] = (16,),
    learning_rates: Sequence[float] = (0.3, 0.1),
    recipe: PromptRecipe | None = None,
    teacher_recipe: PromptRecipe | None = None,
    mpt_recipe: PromptRecipe | None = None,
    distillation: Distillation | None = None,
    prompt_length: int = 8,
    rank: int = 1,
    teacher_steps: int = 600,
    source_steps: int = 600,
    target_steps: int = 100,
    source_train_size: int = 1024,
    source_batch_per_task: int = 8,
    target_batch_size: int = 16,
    test_size: int = 128,
    validation_size: int = 64,
    eval_points: int = 5,
    seed: int = 0,
    backbone: str | None = None,
    verbose: bool = True,
) -> dict:
    """Runs the demo; returns (and writes to ``out_dir``) the results.

    Args:
      quick: a smoke run of every stage in seconds (:data:`QUICK` replaces its settings).
      out_dir: where ``results.json``, ``table.txt`` and ``learning_curves.png`` go.
      benchmark_seeds: benchmarks (task sets) to run, each with its own sources;
        seeds in ``synthetic.HELD_OUT_SEEDS`` (the backbone never saw their tasks).
      seeds: few-shot seeds (a seed draws the k-shot sample, the batch order, fresh inits).
      shots: examples per target task ``k`` (even).
      learning_rates: the target-adaptation grid each method picks its rate from on
        validation data (one value: no selection); a rate scales the recipe's updates
        by ``rate / recipe.learning_rate``.
      recipe: the optimizer of every stage (None: the gin-bound ``PromptRecipe()``,
        prompt tuning's Adafactor at 0.3).
      teacher_recipe: the recipe of the teachers and of SPoT's mixture prompt, the source
        stage's vanilla prompts (None: ``recipe``).
      mpt_recipe: the recipe of the MPT prompts' stages, sources and targets (None:
        ``recipe``); as in the runner, the task factors ``U``, ``V`` train at
        :data:`~mpt_jax.training.optimizers.MPT_FACTOR_RATES` unless it names them
        (:func:`~mpt_jax.training.optimizers.mpt_recipe`; a target rate scales every rate
        alike).
      distillation: MPT's λ and τ (None: the gin-bound ``Distillation()``).
      prompt_length / rank: ``L`` of every prompt; ``r`` of the task factors.
      teacher_steps / source_steps / target_steps: optimizer steps of each stage.
      source_train_size / source_batch_per_task: source training examples per task, and
        per task in a batch.
      target_batch_size: per target task in a batch.
      test_size / validation_size: test and validation examples per target task.
      eval_points: test evaluations during target training, besides step 0.
      seed: the source stages' inits and batches.
      backbone: a backbone saved by ``assets.save_backbone`` (default: the shipped one).
      verbose: print progress and the table.
    """
    if quick:
        (
            teacher_steps,
            source_steps,
            target_steps,
            shots,
            seeds,
            learning_rates,
            test_size,
            validation_size,
            eval_points,
            source_train_size,
        ) = QUICK.values()
    shots, seeds, benchmark_seeds = tuple(shots), tuple(seeds), tuple(benchmark_seeds)
    learning_rates = tuple(float(r) for r in learning_rates)
    for name, values in (
        ("shots", shots),
        ("seeds", seeds),
        ("learning_rates", learning_rates),
        ("benchmark_seeds", benchmark_seeds),
    ):
        if not values:
            raise ValueError(f"demo.main.{name} must name at least one value.")
    if any(k < 2 or k % 2 for k in shots):
        raise ValueError(f"demo.main.shots must be even numbers >= 2; got {shots}.")
    for name, value in (
        ("teacher_steps", teacher_steps),
        ("source_steps", source_steps),
        ("target_steps", target_steps),
        ("eval_points", eval_points),
    ):
        if value < 1:
            raise ValueError(f"demo.main.{name} must be >= 1; got {value}.")
    start, seconds = time.time(), {}
    log = print if verbose else (lambda *a, **k: None)
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config, backbone_params, info = assets.read_backbone(
        assets.EMBEDDED_BACKBONE if backbone is None else pathlib.Path(backbone)
    )
    held = info.get("benchmark", {}).get("held_out_seeds", [0])
    if backbone is None and not set(benchmark_seeds) <= set(held):
        raise ValueError(
            f"demo.main.benchmark_seeds {benchmark_seeds}: the shipped backbone holds out the "
            f"tasks of benchmark seeds {held} only."
        )
    benches = [synthetic.EmbeddedBenchmark(seed=b) for b in benchmark_seeds]
    targets = benches[0].target_tasks
    log(
        f"[demo] backbone {config.name}; {len(benches)} benchmark(s) of "
        f"{benches[0].num_source} source and {len(targets)} target tasks; k {shots}, seeds "
        f"{seeds}, learning rates {learning_rates}{'; quick' if quick else ''}"
    )

    # ---- 1-2. teachers, SPoT's prompt, MPT with and without distillation --------------------
    t0 = time.time()
    recipe = PromptRecipe() if recipe is None else recipe
    mpt_recipe = optimizers.mpt_recipe(recipe) if mpt_recipe is None else mpt_recipe
    distillation = Distillation() if distillation is None else distillation
    teacher_recipe = recipe if teacher_recipe is None else teacher_recipe
    sources = train_sources(
        backbone_params,
        config,
        benches,
        teacher_recipe,
        mpt_recipe,
        distillation,
        prompt_length=prompt_length,
        rank=rank,
        teacher_steps=teacher_steps,
        source_steps=source_steps,
        train_size=source_train_size,
        batch_per_task=source_batch_per_task,
        seed=seed,
    )
    seconds["sources"] = time.time() - t0
    score = scorer(config, prompt_length)
    source_report = source_accuracy(score, backbone_params, benches, sources, test_size)
    log(
        f"[demo] source stages {seconds['sources']:.0f} s; source-task test exact match: "
        + ", ".join(f"{m} {a:.1f}" for m, a in source_report.items())
    )

    # ---- 3. few-shot target adaptation -------------------------------------------------------
    t0 = time.time()
    history, validation, groups, runs = adapt_targets(
        config,
        backbone_params,
        benches,
        sources,
        recipe,
        mpt_recipe,
        score,
        shots=shots,
        seeds=seeds,
        learning_rates=learning_rates,
        prompt_length=prompt_length,
        rank=rank,
        target_steps=target_steps,
        batch_size=target_batch_size,
        test_size=test_size,
        validation_size=validation_size,
        eval_points=eval_points,
        seed=seed,
    )
    seconds["targets"] = time.time() - t0
    log(
        f"[demo] target adaptation: {runs} runs x {target_steps} steps ({seconds['targets']:.0f} s)"
    )

    # ---- results ----------------------------------------------------------------------------
    report_methods, curves, target_rms = summarise(
        history, validation, groups, shots, seeds, len(benches), learning_rates
    )
    table = format_table(report_methods, shots)
    seconds["total"] = time.time() - start
    text = (
        f"Held-out target tasks of the embedded benchmark (seeds {benchmark_seeds}): test "
        f"accuracy (%) after {target_steps} steps, mean over {len(targets)} tasks x "
        f"few-shot seeds {seeds} (± std over seeds); EM exact match, RC rank "
        f"classification; lr picked on validation EM from {learning_rates}; chance 50%.\n"
        f"{table}\n(source-task exact match: "
        + ", ".join(f"{m} {a:.1f}" for m, a in source_report.items())
        + f"; total {seconds['total']:.0f} s)"
    )
    log("\n" + text)
    plot_curves(curves, shots, out / "learning_curves.png")
    (out / "table.txt").write_text(text + "\n")
    report = {
        "table": text,
        "methods": report_methods,
        "curves": curves,
        "source_accuracy": source_report,
        "rms": {
            "token_embedding": rms(backbone_params["token_embedder"]["embedding"]),
            "source": source_rms(sources, rank),
            "target": target_rms,
        },
        "tasks": {
            f"{b}/{t.name}": {"set_a": t.set_a, "set_b": t.set_b}
            for b, bench in zip(benchmark_seeds, benches, strict=True)
            for t in bench.tasks
        },
        "seconds": seconds,
        "backbone": {k: v for k, v in info.items() if k != "history"},
        "settings": dict(
            quick=quick,
            benchmark_seeds=list(benchmark_seeds),
            seeds=list(seeds),
            shots=list(shots),
            learning_rates=list(learning_rates),
            recipe=repr(recipe),
            teacher_recipe=repr(teacher_recipe),
            mpt_recipe=repr(mpt_recipe),
            distillation=repr(distillation),
            prompt_length=prompt_length,
            rank=rank,
            teacher_steps=teacher_steps,
            source_steps=source_steps,
            target_steps=target_steps,
            test_size=test_size,
            validation_size=validation_size,
            target_batch_size=target_batch_size,
        ),
    }
    (out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    log(f"[demo] wrote {out / 'table.txt'}, {out / 'results.json'}, {out / 'learning_curves.png'}")
    return report


def source_accuracy(score, backbone, benches, sources: Sources, test_size: int) -> dict:
    """Test exact match on the source tasks of every source prompt (mean over benchmarks)."""
    tables = {
        "teachers": sources.teachers,
        SPOT: np.broadcast_to(sources.spot[:, None], sources.teachers.shape),
        MPT: mpt_task_prompts(sources.mpt),
        MPT_NO_KD: mpt_task_prompts(sources.mpt_no_kd),
    }
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


def mpt_task_prompts(params: PyTree) -> np.ndarray:
    """``P ∘ (U_k V_k)`` of every source task: ``[B, T, L, D]`` from params ``[B, ...]``."""
    p = {k: np.asarray(v) for k, v in params.items()}
    return p["shared"][:, None] * np.einsum("btlr,btrd->btld", p["task_cols"], p["task_rows"])


def source_rms(sources: Sources, rank: int) -> dict:
    """RMS of every source prompt (per benchmark), and of the target prompts they start."""
    out = []
    for b in range(sources.spot.shape[0]):
        pick = lambda tree, b=b: jax.tree.map(lambda x: x[b], tree)
        row = {"teachers": [rms(t) for t in sources.teachers[b]], SPOT: rms(sources.spot[b])}
        for name, params in ((MPT, sources.mpt), (MPT_NO_KD, sources.mpt_no_kd)):
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


def summarise(history, validation, groups, shots, seeds, num_benches, learning_rates):
    """Per method: the rate with the best validation EM, and at that rate the test scores
    (step 0 and final, mean and std over (benchmark, seed)), curves and prompt RMS."""
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
