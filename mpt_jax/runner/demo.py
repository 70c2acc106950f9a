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

This module is the pipeline (:func:`train_sources`, :func:`target_groups`,
:func:`adapt_targets`) and :func:`main`, which composes it; the batches and the scorer
are :mod:`mpt_jax.runner.demo_data`, the table, plot, statistics and ``results.json``
:mod:`mpt_jax.runner.demo_report`.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
import time
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np

from mpt_jax import assets
from mpt_jax.data import synthetic
from mpt_jax.runner import demo_report, stages
from mpt_jax.runner.demo_data import concat, draw, encode, prompts_of, scorer, stack_batches
from mpt_jax.runner.demo_report import mpt_task_prompts, rms
from mpt_jax.runner.stages import SourcePrompt, Stage, StageContext
from mpt_jax.training import optimizers
from mpt_jax.training.objectives import Distillation
from mpt_jax.training.optimizers import PromptRecipe
from mpt_jax.training.run_group import RunGroup

PyTree = Any

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


# -- sources ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Sources:
    """What source training leaves, per benchmark seed ``b`` (leading axis)."""

    teachers: np.ndarray  # [B, T, L, D]
    spot: np.ndarray  # [B, L, D]
    mpt: PyTree  # MultitaskPrompt params [B, ...] (λ > 0)
    mpt_no_kd: PyTree  # [B, ...] (λ = 0)

    def task_prompts(self) -> dict[str, np.ndarray]:
        """Each source prompt's prompt for every source task, by name: ``[B, T, L, D]``
        (SPoT's one prompt repeated per task)."""
        return {
            "teachers": self.teachers,
            SPOT: np.broadcast_to(self.spot[:, None], self.teachers.shape),
            MPT: mpt_task_prompts(self.mpt),
            MPT_NO_KD: mpt_task_prompts(self.mpt_no_kd),
        }

    def prompt_rms(self, rank: int) -> list[dict]:
        """:func:`demo_report.source_rms` of every source prompt, per benchmark."""
        single, mpt = {SPOT: self.spot}, {MPT: self.mpt, MPT_NO_KD: self.mpt_no_kd}
        return demo_report.source_rms(self.teachers, single, mpt, rank)


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


# -- target groups ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Unit:
    """One few-shot adaptation problem: benchmark seed index, target task, k, few-shot seed."""

    bench: int
    task: int
    shots: int
    seed: int


def target_units(num_benches: int, num_targets: int, shots, seeds) -> list[Unit]:
    """Every (benchmark, target task, k, few-shot seed), in that nesting order."""
    return [
        Unit(b, j, k, s)
        for b in range(num_benches)
        for j in range(num_targets)
        for k in shots
        for s in seeds
    ]


def multi_units(units: list[Unit]) -> list[Unit]:
    """One unit per (bench, k, seed): the multi-target runs (task -1 = all targets)."""
    return sorted(
        {Unit(u.bench, -1, u.shots, u.seed) for u in units},
        key=lambda u: (u.bench, u.shots, u.seed),
    )


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


def at_rms(stage: Stage, rho: float) -> Stage:
    """``stage`` with its single prompt scaled to RMS ``rho`` (scale without content)."""
    shared = stage.params["shared"]
    return dataclasses.replace(stage, params={"shared": shared * rho / rms(shared)})


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


# -- target adaptation ------------------------------------------------------------------------


def target_data(benches, units: list[Unit], test_size: int, validation_size: int):
    """The targets' data, every example with task id 0.

    Returns:
      ``(shots, eval_sets)``: ``shots[u]`` unit ``u``'s k-shot set ``{feature: [k, ...]}``;
      ``eval_sets[split]`` (``"test"``, ``"validation"``) every (benchmark, target task)'s
      examples stacked ``{feature: [B · T, N, ...]}``, row ``b · T + j`` for task ``j`` of
      benchmark ``b``, ``N`` = ``test_size`` or ``validation_size``.
    """
    targets = benches[0].target_tasks
    shots = {
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
    return shots, eval_sets


@dataclasses.dataclass
class TargetRuns:
    """One target group's runs over the rate grid, in training: run ``r`` is ``rows[r] =
    (method, rate, unit)`` (rate-major, then method, then unit), its updates scaled by
    ``scale[r]`` (rate / the recipe's rate); ``state`` holds params ``[R, ...]``."""

    generator: nn.Module
    multi: bool
    group: RunGroup
    state: Any
    rows: list[tuple[str, float, Unit]]
    scale: jax.Array  # [R]
    rngs: jax.Array  # [R] dropout keys


def start_target_runs(
    g: TargetGroup, units: list[Unit], learning_rates: Sequence[float], seed: int
) -> TargetRuns:
    """``g``'s runs repeated once per rate of ``learning_rates`` (same starts), initialised."""
    run_units = multi_units(units) if g.multi else units
    rows = [(m, lr, u) for lr in learning_rates for m in g.methods for u in run_units]
    group, params, _ = stages.run_group(g.runs)
    params = jax.tree.map(lambda x: jnp.concatenate([x] * len(learning_rates)), params)
    scale = jnp.asarray([lr / g.recipe.learning_rate for _, lr, _ in rows], jnp.float32)
    rngs = jax.random.split(jax.random.key(seed + 1), len(rows))
    return TargetRuns(g.prompt, g.multi, group, group.init(params), rows, scale, rngs)


def target_batch(
    shots: dict, u: Unit, multi: bool, step: int, *, num_targets: int, batch_size: int, seed: int
) -> dict:
    """Run ``u``'s batch at ``step``: ``batch_size`` rows of its k-shot set ``shots[u]``
    (``[N, ...]``, ``N = batch_size``); a multi-target run gets every target's, ids
    ``0 … T-1`` (``[T · N, ...]``). Every method of a (task, k, seed) draws the same rows."""

    def one(u: Unit) -> dict:
        rng = np.random.default_rng((seed, u.bench, u.task, u.shots, u.seed, step))
        return draw(shots[u], batch_size, rng)

    if not multi:
        return one(u)
    parts = [one(dataclasses.replace(u, task=j)) for j in range(num_targets)]
    return concat([{**p, "task_ids": np.full_like(p["task_ids"], j)} for j, p in enumerate(parts)])


def evaluate_targets(trained: list[TargetRuns], score, backbone, data: dict, num_targets: int):
    """Scores every (method, rate, unit) prompt on ``data`` (an ``eval_sets`` split of
    :func:`target_data`); a multi-target run gives one score per task.

    Returns:
      ``(keys, em [U], rc [U], rms [U])``: ``keys[i]`` the ``(method, rate, Unit)`` of
      score ``i``, then exact match, rank classification and the prompt's RMS.
    """
    keys, prompts = [], []
    for t in trained:
        p = prompts_of(t.generator, t.state.params, num_targets if t.multi else 1)
        for r, (m, lr, u) in enumerate(t.rows):
            for j in range(num_targets) if t.multi else [u.task]:
                keys.append((m, lr, dataclasses.replace(u, task=j)))
                prompts.append(p[r, j if t.multi else 0])
    which = np.asarray([u.bench * num_targets + u.task for _, _, u in keys])
    prompts = jnp.stack(prompts)
    em, rc = score(prompts, backbone, data, which)
    norms = np.sqrt(np.mean(np.square(np.asarray(prompts)), axis=(1, 2)))
    return keys, np.asarray(em), np.asarray(rc), norms


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
    num_targets = len(benches[0].target_tasks)
    units = target_units(len(benches), num_targets, shots, seeds)
    shots_data, eval_sets = target_data(benches, units, test_size, validation_size)
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
    batching = dict(num_targets=num_targets, batch_size=batch_size, seed=seed)
    trained = [start_target_runs(g, units, learning_rates, seed) for g in groups]
    evaluate = lambda split: evaluate_targets(
        trained, score, backbone, eval_sets[split], num_targets
    )
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
            batch = stack_batches(
                [target_batch(shots_data, u, t.multi, i, **batching) for _, _, u in t.rows]
            )
            t.state, _ = t.group.step(t.state, frozen, {}, batch, t.rngs, t.scale)
    return history, evaluate("validation"), groups, sum(len(t.rows) for t in trained)


# -- the run ----------------------------------------------------------------------------------


def check_settings(grids: dict[str, tuple], counts: dict[str, int]) -> None:
    """Refuses an empty grid (``grids``: name → values, ``shots`` among them), an odd or
    too small ``k`` and a count below 1 (``counts``: name → value), naming ``demo.main``'s
    argument and the value."""
    for name, values in grids.items():
        if not values:
            raise ValueError(f"demo.main.{name} must name at least one value.")
    if any(k < 2 or k % 2 for k in grids["shots"]):
        raise ValueError(f"demo.main.shots must be even numbers >= 2; got {grids['shots']}.")
    for name, value in counts.items():
        if value < 1:
            raise ValueError(f"demo.main.{name} must be >= 1; got {value}.")


def load_benchmarks(backbone: str | None, benchmark_seeds: Sequence[int]):
    """The backbone (``assets.read_backbone``: the shipped one when None) and one
    :class:`synthetic.EmbeddedBenchmark` per seed; the shipped backbone refuses seeds whose
    tasks it trained on.

    Returns:
      ``(config, params, info, benches)``.
    """
    config, params, info = assets.read_backbone(
        assets.EMBEDDED_BACKBONE if backbone is None else pathlib.Path(backbone)
    )
    held = info.get("benchmark", {}).get("held_out_seeds", [0])
    if backbone is None and not set(benchmark_seeds) <= set(held):
        raise ValueError(
            f"demo.main.benchmark_seeds {benchmark_seeds}: the shipped backbone holds out the "
            f"tasks of benchmark seeds {held} only."
        )
    return config, params, info, [synthetic.EmbeddedBenchmark(seed=b) for b in benchmark_seeds]


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
    check_settings(
        dict(
            shots=shots, seeds=seeds, learning_rates=learning_rates, benchmark_seeds=benchmark_seeds
        ),
        dict(
            teacher_steps=teacher_steps,
            source_steps=source_steps,
            target_steps=target_steps,
            eval_points=eval_points,
        ),
    )
    start, seconds = time.time(), {}
    log = print if verbose else (lambda *a, **k: None)
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config, backbone_params, info, benches = load_benchmarks(backbone, benchmark_seeds)
    log(
        f"[demo] backbone {config.name}; {len(benches)} benchmark(s) of "
        f"{benches[0].num_source} source and {len(benches[0].target_tasks)} target tasks; k "
        f"{shots}, seeds {seeds}, learning rates {learning_rates}{'; quick' if quick else ''}"
    )
    recipe = PromptRecipe() if recipe is None else recipe
    mpt_recipe = optimizers.mpt_recipe(recipe) if mpt_recipe is None else mpt_recipe
    distillation = Distillation() if distillation is None else distillation
    teacher_recipe = recipe if teacher_recipe is None else teacher_recipe

    # ---- 1-2. teachers, SPoT's prompt, MPT with and without distillation --------------------
    t0 = time.time()
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
    tables = sources.task_prompts()
    source_scores = demo_report.source_accuracy(score, backbone_params, benches, tables, test_size)
    log(
        f"[demo] source stages {seconds['sources']:.0f} s; source-task test exact match: "
        + ", ".join(f"{m} {a:.1f}" for m, a in source_scores.items())
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
        prompt_length=prompt_length,
        rank=rank,
        shots=shots,
        seeds=seeds,
        learning_rates=learning_rates,
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
    seconds["total"] = time.time() - start
    report = demo_report.results(
        history,
        validation,
        groups,
        benches=benches,
        benchmark_seeds=benchmark_seeds,
        shots=shots,
        seeds=seeds,
        learning_rates=learning_rates,
        target_steps=target_steps,
        source_scores=source_scores,
        prompt_rms={
            "token_embedding": rms(backbone_params["token_embedder"]["embedding"]),
            "source": sources.prompt_rms(rank),
        },
        seconds=seconds,
        backbone_info=info,
        settings=dict(
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
    )
    log("\n" + report["table"])
    paths = demo_report.write(out, report, shots)
    log(f"[demo] wrote {', '.join(str(p) for p in paths)}")
    return report
