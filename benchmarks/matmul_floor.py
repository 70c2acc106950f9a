"""The matmul floor of a step: its own matmuls, each timed alone at its own shape.

A step's GFLOP/s set against a large square matmul's rate mixes two gaps: the step's
matmuls have smaller, thinner shapes than ``[2048, 2048] @ [2048, 2048]`` (so they run
slower even alone), and the step does other work (softmax, norms, GELU, dropout,
transposes, the optimizer). This module separates them:

- :func:`dots_of` walks the step's jaxpr (sub-jaxprs included: the backward pass, the
  custom-VJP attention, remat) and collects every ``dot_general`` with its operand
  shapes, dtypes and dimension numbers, counting repeats;
- :func:`floor` times each distinct one alone (jit, rotating rounds, medians) and sums
  ``count × time``: the step's time if it did nothing but its matmuls, each at the rate
  this machine gives that shape.

``flops / floor_s`` is the **shape-limited peak**: the most a step built of these
matmuls could reach. ``step_s / floor_s`` is what everything else costs.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np

from benchmarks import common


@dataclasses.dataclass(frozen=True)
class Dot:
    """One ``dot_general`` of a jaxpr: operand shapes/dtypes and dimension numbers."""

    lhs: tuple[int, ...]
    rhs: tuple[int, ...]
    lhs_dtype: str
    rhs_dtype: str
    dimension_numbers: tuple
    out_dtype: str

    @property
    def flops(self) -> float:
        """``2 × batch × M × N × K``."""
        (lc, rc), (lb, _) = self.dimension_numbers
        k = np.prod([self.lhs[i] for i in lc])
        b = np.prod([self.lhs[i] for i in lb])
        m = np.prod([d for i, d in enumerate(self.lhs) if i not in lc and i not in lb])
        rb = self.dimension_numbers[1][1]
        n = np.prod([d for i, d in enumerate(self.rhs) if i not in rc and i not in rb])
        return float(2 * b * m * n * k)

    def fn(self) -> Callable[[], Any]:
        """A zero-argument callable running this matmul alone (jitted, synchronised)."""
        lhs = jnp.ones(self.lhs, self.lhs_dtype)
        rhs = jnp.ones(self.rhs, self.rhs_dtype)
        dot = jax.jit(
            lambda a, b: jax.lax.dot_general(
                a, b, self.dimension_numbers, preferred_element_type=self.out_dtype
            )
        )
        return lambda: jax.block_until_ready(dot(lhs, rhs))


def dots_of(fn: Callable, *args) -> collections.Counter[Dot]:
    """Every ``dot_general`` that ``fn(*args)`` runs, with how often it runs.

    A ``scan`` body's dots are counted once per iteration (its ``length``).
    """
    counter: collections.Counter[Dot] = collections.Counter()

    def walk(jaxpr, times: int) -> None:
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "dot_general":
                lhs, rhs = (v.aval for v in eqn.invars)
                dot = Dot(
                    tuple(lhs.shape), tuple(rhs.shape), str(lhs.dtype), str(rhs.dtype),
                    eqn.params["dimension_numbers"], str(eqn.outvars[0].aval.dtype),
                )  # fmt: skip
                counter[dot] += times
            inner = times * eqn.params.get("length", 1) if eqn.primitive.name == "scan" else times
            for sub in jax.extend.core.jaxprs_in_params(eqn.params):
                walk(sub, inner)

    walk(jax.make_jaxpr(fn)(*args).jaxpr, 1)
    return counter


def floor(dots: collections.Counter[Dot], *, reps: int = 5) -> dict[str, float]:
    """Time each distinct matmul alone; ``floor_s`` = Σ count × median seconds.

    Returns:
      ``floor_s``, ``matmul_gflop`` (Σ count × flops / 1e9), ``shape_limited_gflops``
      (``matmul_gflop / floor_s``), ``distinct`` and ``count`` (number of matmuls).
    """
    candidates = {str(i): d.fn() for i, d in enumerate(dots)}
    timings = common.alternate(candidates, reps=reps, warmup=1)
    seconds = sum(dots[d] * timings[str(i)].median for i, d in enumerate(dots))
    flops = sum(n * d.flops for d, n in dots.items())
    return {
        "floor_s": seconds,
        "matmul_gflop": flops / 1e9,
        "shape_limited_gflops": flops / seconds / 1e9,
        "distinct": float(len(dots)),
        "count": float(sum(dots.values())),
    }
