"""The embedded benchmark: a small symbol world whose tasks share latent content.

Nothing is downloaded: every example is generated from a seed. The world has an
alphabet of ``alphabet_size`` symbols (the letters ``a, b, c, …``); an input is a string
of ``min_length…max_length`` symbols, e.g. ``"cabdda"``. Every benchmark task is a member
of one parametrised family, **set comparison**:

    task (A, B): answer "yes" if the input holds more symbols of set A than of set B,
                 "no" if it holds more of B (ties never occur).

A task is fixed by its two disjoint symbol sets (``set_size`` symbols each). The default
design (``shared_anchor=True``) gives the tasks content to share, as MPT assumes:

- every task, source and target, counts the **same anchor set A** for "yes";
- each source task counts its own B, drawn from a *source pool* of symbols;
- each held-out target task counts a B drawn from a disjoint *target pool*: its B
  symbols are never a B of any source (they appear in source inputs only as filler).

So a prompt learned on the sources knows half of each target (read the input, count A,
compare, answer with the two label words); what a target must still learn is its own
B, a new combination of the shared rule with unseen symbols. That part is what MPT's
low-rank task factor is for. ``shared_anchor=False`` is the control without shared
content: every task is an unrelated random pair of sets.

The benchmark tasks carry **no instruction**: the input is the bare symbol string and
the prompt is the only thing that tells the backbone which sets to compare.

Pretraining (:func:`pretraining_examples`) teaches a small backbone to read and write
symbols with *textual instructions* on other members of the family, never on a
benchmark task (neither a source nor a target, in either order of the sets, for every
benchmark seed in ``held_out_seeds``):

- ``compare``: ``"ab>cd:cabdda"`` → ``"yes"`` (the instruction spells the sets);
- ``filter``:  ``"ab/cabdda"`` → ``"abda"`` (the symbols of the set, in order;
  ``"-"`` when there are none);
- ``copy``:    ``"=cabdda"`` → ``"cabdda"``.

A prompt for a benchmark task can thus learn to act as the missing instruction.

Text is encoded like ``seqio.ByteVocabulary`` (UTF-8 byte ``b`` → id ``b + 3``; 0 is
padding, 1 is EOS), without importing TensorFlow (:func:`encode_text`,
:func:`to_batch`), so the default run stays light; ``tasks/embedded.py`` registers the
same examples as seqio tasks with the real ``ByteVocabulary``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import math
import string
from collections.abc import Sequence

import gin
import numpy as np

#: Ids of ``seqio.ByteVocabulary``: pad 0, EOS 1, UNK 2, then byte ``b`` → ``b + 3``.
PAD_ID, EOS_ID, UNK_ID, BYTE_OFFSET = 0, 1, 2, 3
#: ``seqio.ByteVocabulary().vocab_size``.
BYTE_VOCAB_SIZE = 256 + BYTE_OFFSET

#: The label words of every set-comparison task (A wins, B wins).
LABELS = ("yes", "no")
#: Separators of the pretraining instructions.
COMPARE_SEP, FILTER_SEP, COPY_PREFIX, EMPTY = ">", "/", "=", "-"
#: Splits of a task's examples; each draws from its own random stream.
SPLITS = ("train", "validation", "test")
#: Benchmark seeds whose tasks the shipped backbone's pretraining held out.
HELD_OUT_SEEDS = (0, 1, 2)
#: Pretraining objectives (see the module docstring).
PRETRAINING_OBJECTIVES = ("compare", "filter", "copy")


# -- text ↔ ids (ByteVocabulary-compatible) ---------------------------------------------------


def encode_text(text: str) -> list[int]:
    """``seqio.ByteVocabulary().encode(text)``: UTF-8 bytes shifted by 3, no EOS."""
    return [b + BYTE_OFFSET for b in text.encode("utf-8")]


def decode_ids(ids: Sequence[int]) -> str:
    """Inverse of :func:`encode_text`; stops at the first EOS, skips padding."""
    out = bytearray()
    for i in ids:
        i = int(i)
        if i == EOS_ID:
            break
        if i >= BYTE_OFFSET:
            out.append(i - BYTE_OFFSET)
    return out.decode("utf-8", errors="replace")


# -- the task family ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CompareTask:
    """One member of the set-comparison family.

    Attributes:
      name: the task name (also its seqio name suffix).
      set_a: the symbols counted for "yes" (a string of distinct symbols).
      set_b: the symbols counted for "no", disjoint from ``set_a``.
    """

    name: str
    set_a: str
    set_b: str

    def __post_init__(self) -> None:
        if not self.set_a or not self.set_b:
            raise ValueError(f"Task {self.name!r} needs two non-empty sets; got {self!r}.")
        if len(set(self.set_a)) != len(self.set_a) or len(set(self.set_b)) != len(self.set_b):
            raise ValueError(f"Task {self.name!r} has a repeated symbol in a set: {self!r}.")
        if set(self.set_a) & set(self.set_b):
            raise ValueError(f"Task {self.name!r} needs disjoint sets; got {self!r}.")

    def label(self, text: str) -> str:
        """The answer for ``text``: ``"yes"`` when A outnumbers B, ``"no"`` when B does.

        Raises:
          ValueError: on a tie (the generator never produces one).
        """
        count_a = sum(text.count(s) for s in self.set_a)
        count_b = sum(text.count(s) for s in self.set_b)
        if count_a == count_b:
            raise ValueError(
                f"Task {self.name!r}: {text!r} has {count_a} symbols of both sets (a tie)."
            )
        return LABELS[0] if count_a > count_b else LABELS[1]

    @property
    def instruction(self) -> str:
        """The textual instruction of this task (used only for *other* family members)."""
        return f"{self.set_a}{COMPARE_SEP}{self.set_b}:"

    @property
    def key(self) -> frozenset[frozenset[str]]:
        """The unordered pair of sets; (A, B) and (B, A) are the same rule up to labels."""
        return frozenset({frozenset(self.set_a), frozenset(self.set_b)})


@gin.configurable
@dataclasses.dataclass(frozen=True)
class SymbolWorld:
    """The world's size and its input distribution.

    Attributes:
      alphabet_size: number of symbols (the first letters of the alphabet), 4…26.
      set_size: symbols in each set of a comparison task (``2 · set_size`` ≤ alphabet).
      min_length / max_length: the input length range (symbols).
      max_margin: largest ``|count_A − count_B|``; small margins make the task need
        counting rather than spotting one symbol.
    """

    alphabet_size: int = 12
    set_size: int = 2
    min_length: int = 6
    max_length: int = 10
    max_margin: int = 3

    def __post_init__(self) -> None:
        if not 4 <= self.alphabet_size <= 26:
            raise ValueError(f"alphabet_size must be in [4, 26]; got {self.alphabet_size}.")
        if not 1 <= self.set_size or 2 * self.set_size > self.alphabet_size:
            raise ValueError(
                f"set_size must be in [1, {self.alphabet_size // 2}] for alphabet_size "
                f"{self.alphabet_size}; got {self.set_size}."
            )
        if not 1 <= self.min_length <= self.max_length:
            raise ValueError(
                f"Need 1 <= min_length <= max_length; got {self.min_length}, {self.max_length}."
            )
        if self.max_margin < 1:
            raise ValueError(f"max_margin must be >= 1; got {self.max_margin}.")

    @property
    def alphabet(self) -> str:
        return string.ascii_lowercase[: self.alphabet_size]

    @property
    def max_input_chars(self) -> int:
        """Longest pretraining input: compare instruction (2 sets + 2 separators) + symbols."""
        return 2 * self.set_size + 2 + self.max_length

    def sample_input(self, task: CompareTask, label: str, rng: np.random.Generator) -> str:
        """An input string whose answer under ``task`` is ``label``.

        The length is uniform in ``[min_length, max_length]``; the margin
        ``|count_A − count_B|`` is uniform among the feasible values in ``[1, max_margin]``
        and the smaller count uniform among the feasible ones; the remaining positions take
        symbols outside both sets; everything is then shuffled.
        """
        if label not in LABELS:
            raise ValueError(f"label must be one of {LABELS}; got {label!r}.")
        length = int(rng.integers(self.min_length, self.max_length + 1))
        margin = int(rng.integers(1, min(self.max_margin, length) + 1))
        low = int(rng.integers(0, (length - margin) // 2 + 1))
        high = low + margin
        count_a, count_b = (high, low) if label == LABELS[0] else (low, high)
        others = [s for s in self.alphabet if s not in task.set_a and s not in task.set_b]
        rest = length - count_a - count_b
        if rest and not others:
            raise ValueError(f"Task {task.name!r} uses every symbol; no filler is left.")
        symbols = (
            list(rng.choice(list(task.set_a), size=count_a))
            + list(rng.choice(list(task.set_b), size=count_b))
            + (list(rng.choice(others, size=rest)) if rest else [])
        )
        rng.shuffle(symbols)
        return "".join(symbols)


def _stream(*parts: object) -> np.random.Generator:
    """A random stream fixed by ``parts`` (stable across Python runs, unlike ``hash``)."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


@gin.configurable
@dataclasses.dataclass(frozen=True)
class EmbeddedBenchmark:
    """Source and held-out target tasks of the set-comparison family, fixed by ``seed``.

    Attributes:
      seed: fixes the tasks and every example.
      num_source: number of source tasks.
      num_target: number of held-out target tasks.
      shared_anchor: the design (module docstring): every task counts one anchor set A
        against its own B, targets' B from symbols no source counts (True); or every
        task an unrelated random pair of sets (False, the no-shared-content control).
      world: the symbol world.
    """

    seed: int = 0
    num_source: int = 6
    num_target: int = 4
    shared_anchor: bool = True
    world: SymbolWorld = SymbolWorld()

    def __post_init__(self) -> None:
        if self.num_source < 1 or self.num_target < 1:
            raise ValueError(
                f"num_source and num_target must be >= 1; got {self.num_source}, {self.num_target}."
            )
        if self.shared_anchor:
            self._pools()  # raises when the world is too small
            return
        available = len(self._all_pairs())
        if self.num_source + self.num_target > available:
            raise ValueError(
                f"The world has {available} distinct set pairs; asked for "
                f"{self.num_source} + {self.num_target} tasks."
            )

    def _all_pairs(self) -> list[tuple[str, str]]:
        """Every unordered pair of disjoint sets, each once, in a fixed order."""
        world = self.world
        sets = ["".join(c) for c in itertools.combinations(world.alphabet, world.set_size)]
        return [(a, b) for a, b in itertools.combinations(sets, 2) if not set(a) & set(b)]

    def _pools(self) -> tuple[str, str, str]:
        """``(anchor, source_pool, target_pool)`` of the shared-anchor design.

        The alphabet, shuffled by ``seed``, is cut into the anchor (``set_size`` symbols),
        the target pool (the fewest symbols with ``num_target`` distinct B sets) and the
        source pool (the rest), which must leave at least one filler symbol.
        """
        size = self.world.set_size
        symbols = "".join(_stream("anchor", self.seed, self.world).permutation(
            list(self.world.alphabet)))  # fmt: skip
        n_target = size
        while math.comb(n_target, size) < self.num_target:
            n_target += 1
        anchor, target = symbols[:size], symbols[size : size + n_target]
        source = symbols[size + n_target :]
        if math.comb(len(source), size) < self.num_source or len(source) <= size:
            raise ValueError(
                f"alphabet_size {self.world.alphabet_size} is too small for {self.num_source} "
                f"source and {self.num_target} target tasks with set_size {size} and a shared "
                f"anchor: the source pool {source!r} has too few sets of {size} (and needs a "
                f"filler symbol)."
            )
        return anchor, "".join(sorted(source)), "".join(sorted(target))

    @property
    def tasks(self) -> tuple[CompareTask, ...]:
        """Sources first (``source_0 …``), then targets (``target_0 …``)."""
        if self.shared_anchor:
            anchor, source_pool, target_pool = self._pools()
            rng = _stream("tasks", self.seed, self.world, "anchor")
            tasks = []
            for kind, pool, num in (("source", source_pool, self.num_source),
                                    ("target", target_pool, self.num_target)):  # fmt: skip
                sets = ["".join(c) for c in itertools.combinations(pool, self.world.set_size)]
                for k, index in enumerate(rng.permutation(len(sets))[:num]):
                    tasks.append(CompareTask(f"{kind}_{k}", "".join(sorted(anchor)), sets[index]))
            return tuple(tasks)
        pairs = self._all_pairs()
        rng = _stream("tasks", self.seed, self.world)
        order = rng.permutation(len(pairs))[: self.num_source + self.num_target]
        tasks = []
        for i, index in enumerate(order):
            a, b = pairs[index]
            if rng.random() < 0.5:
                a, b = b, a
            kind, k = ("source", i) if i < self.num_source else ("target", i - self.num_source)
            tasks.append(CompareTask(f"{kind}_{k}", a, b))
        return tuple(tasks)

    @property
    def source_tasks(self) -> tuple[CompareTask, ...]:
        return self.tasks[: self.num_source]

    @property
    def target_tasks(self) -> tuple[CompareTask, ...]:
        return self.tasks[self.num_source :]

    def task(self, name: str) -> CompareTask:
        for t in self.tasks:
            if t.name == name:
                return t
        raise KeyError(f"No task {name!r}; known: {[t.name for t in self.tasks]}.")

    def examples(self, task: CompareTask | str, split: str, num: int) -> list[dict[str, str]]:
        """``num`` examples ``{"inputs", "targets"}`` of ``task``'s ``split``.

        Labels alternate ``yes, no`` in shuffled pairs, so any prefix of even length
        ``k`` holds exactly ``k/2`` of each, and ``examples(t, s, 16)`` is a prefix of
        ``examples(t, s, 32)``.
        """
        task = self.task(task) if isinstance(task, str) else task
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}; got {split!r}.")
        return self._draw(task, num, _stream("examples", self.seed, self.world, task, split))

    def few_shot(self, task: CompareTask | str, k: int, seed: int) -> list[dict[str, str]]:
        """A balanced ``k``-shot training set (``k/2`` per label) for few-shot seed ``seed``.

        Drawn from the training distribution with a stream of its own per ``seed``; the
        16-shot set of a seed is a prefix of its 32-shot set.
        """
        task = self.task(task) if isinstance(task, str) else task
        if k < 2 or k % 2:
            raise ValueError(f"k must be an even number >= 2 (balanced labels); got {k}.")
        return self._draw(task, k, _stream("few_shot", self.seed, self.world, task, seed))

    def _draw(self, task: CompareTask, num: int, rng: np.random.Generator) -> list[dict]:
        if num < 0:
            raise ValueError(f"num must be >= 0; got {num}.")
        out = []
        for i in range(num):
            if i % 2 == 0:
                pair = [LABELS[0], LABELS[1]]
                rng.shuffle(pair)
            label = pair[i % 2]
            out.append({"inputs": self.world.sample_input(task, label, rng), "targets": label})
        return out


# -- pretraining mixture ------------------------------------------------------------------------


def _filter_example(world: SymbolWorld, rng: np.random.Generator) -> dict[str, str]:
    size = int(rng.integers(1, world.set_size + 1))
    chosen = "".join(rng.choice(list(world.alphabet), size=size, replace=False))
    length = int(rng.integers(world.min_length, world.max_length + 1))
    text = "".join(rng.choice(list(world.alphabet), size=length))
    kept = "".join(s for s in text if s in chosen) or EMPTY
    return {"inputs": f"{chosen}{FILTER_SEP}{text}", "targets": kept}


def _copy_example(world: SymbolWorld, rng: np.random.Generator) -> dict[str, str]:
    length = int(rng.integers(world.min_length, world.max_length + 1))
    text = "".join(rng.choice(list(world.alphabet), size=length))
    return {"inputs": f"{COPY_PREFIX}{text}", "targets": text}


def _compare_example(
    benchmark: EmbeddedBenchmark, held_out: set, rng: np.random.Generator
) -> dict[str, str]:
    world = benchmark.world
    while True:
        symbols = rng.choice(list(world.alphabet), size=2 * world.set_size, replace=False)
        task = CompareTask(
            "pretrain",
            "".join(sorted(symbols[: world.set_size])),
            "".join(sorted(symbols[world.set_size :])),
        )
        if task.key not in held_out:
            break
    label = LABELS[int(rng.integers(0, 2))]
    return {"inputs": task.instruction + world.sample_input(task, label, rng), "targets": label}


def held_out_tasks(
    benchmark: EmbeddedBenchmark, seeds: Sequence[int] = ()
) -> tuple[CompareTask, ...]:
    """The tasks of ``benchmark`` and of ``benchmark`` with each seed in ``seeds``."""
    tasks = list(benchmark.tasks)
    for s in seeds:
        tasks += dataclasses.replace(benchmark, seed=int(s)).tasks
    return tuple(tasks)


@gin.configurable
def pretraining_examples(
    benchmark: EmbeddedBenchmark,
    num: int,
    *,
    seed: int = 0,
    weights: Sequence[float] = (0.6, 0.25, 0.15),
    held_out_seeds: Sequence[int] = HELD_OUT_SEEDS,
) -> list[dict[str, str]]:
    """The backbone's pretraining mixture: instructed members of the family, no benchmark task.

    Args:
      benchmark: whose source and target tasks are held out (both orders of their sets).
      num: number of examples.
      held_out_seeds: the tasks of ``benchmark`` with each of these seeds are held out too,
        so the backbone serves those benchmark seeds as well.
      seed: the stream (independent of the benchmark's seed).
      weights: mixing weights of ``PRETRAINING_OBJECTIVES`` (compare, filter, copy).

    Returns:
      ``num`` examples ``{"inputs", "targets"}`` (see the module docstring for formats).
    """
    if len(weights) != len(PRETRAINING_OBJECTIVES) or min(weights) < 0 or sum(weights) <= 0:
        raise ValueError(
            f"weights must be {len(PRETRAINING_OBJECTIVES)} non-negative numbers for "
            f"{PRETRAINING_OBJECTIVES} with a positive sum; got {tuple(weights)}."
        )
    held_out = {t.key for t in held_out_tasks(benchmark, held_out_seeds)}
    rng = _stream("pretrain", seed, benchmark.seed, benchmark.world)
    probs = np.asarray(weights, np.float64) / np.sum(weights)
    kinds = rng.choice(len(PRETRAINING_OBJECTIVES), size=num, p=probs)
    makers = (
        lambda: _compare_example(benchmark, held_out, rng),
        lambda: _filter_example(benchmark.world, rng),
        lambda: _copy_example(benchmark.world, rng),
    )
    return [makers[k]() for k in kinds]


# -- batches -------------------------------------------------------------------------------------


def to_batch(
    examples: Sequence[dict[str, str]],
    task_ids: Sequence[int] | np.ndarray,
    *,
    input_length: int,
    target_length: int,
) -> dict[str, np.ndarray]:
    """Encodes examples into the batch contract of ``docs/ARCHITECTURE.md`` (numpy, no TF).

    The same arrays as seqio with ``ByteVocabulary`` (EOS appended) followed by
    ``mpt_jax.data.feature_converter.PromptEncDecFeatureConverter``.

    Args:
      examples: ``{"inputs": str, "targets": str}`` each.
      task_ids: one int per example.
      input_length / target_length: padded lengths ``S`` and ``T`` (EOS included).

    Returns:
      ``encoder_input_tokens [B, S]``, ``decoder_input_tokens [B, T]``,
      ``decoder_target_tokens [B, T]``, ``decoder_loss_weights [B, T]`` and
      ``task_ids [B]``, all int32.

    Raises:
      ValueError: when an encoded example (with EOS) is longer than its length, naming it.
    """
    task_ids = np.asarray(task_ids, np.int32)
    if task_ids.shape != (len(examples),):
        raise ValueError(f"Need one task id per example; got {task_ids.shape} for {len(examples)}.")
    batch = len(examples)
    enc = np.zeros((batch, input_length), np.int32)
    tgt = np.zeros((batch, target_length), np.int32)
    for row, ex in enumerate(examples):
        fields = (("inputs", enc, input_length), ("targets", tgt, target_length))
        for feature, out, length in fields:
            ids = encode_text(ex[feature]) + [EOS_ID]
            if len(ids) > length:
                raise ValueError(
                    f"Example {row} {feature} {ex[feature]!r} needs {len(ids)} tokens with EOS; "
                    f"the {feature} length is {length}."
                )
            out[row, : len(ids)] = ids
    dec_in = np.zeros_like(tgt)
    dec_in[:, 1:] = tgt[:, :-1]
    return {
        "encoder_input_tokens": enc,
        "decoder_input_tokens": dec_in,
        "decoder_target_tokens": tgt,
        "decoder_loss_weights": (tgt > 0).astype(np.int32),
        "task_ids": task_ids,
    }
