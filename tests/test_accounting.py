"""Parameter accounting against the MPT paper's figures and hand counts."""

import pytest

from mpt_jax.prompts import (
    ComposedPrompt,
    HierarchicalPrompt,
    MultitaskPrompt,
    SinglePrompt,
    TaskPrompts,
    compositions,
)
from mpt_jax.prompts.accounting import ParameterCount, count_parameters

L, D = 100, 768
T5_BASE_V1_0 = 222_903_552  # T5 1.0 base (shared input/output embeddings)


def test_paper_figure_77668_per_task_and_0_035_percent_of_t5_base():
    count = count_parameters(MultitaskPrompt(num_tasks=1, length=L, embed_dim=D, num_ranks=1))
    assert count.shared == L * D
    assert count.task_specific == L + D
    assert count.per_task == 77_668 == (L * D) + (L + D)
    assert round(100 * count.fraction_of(T5_BASE_V1_0), 3) == 0.035


def test_multitask_target_shares_the_prompt_over_eight_glue_tasks():
    count = count_parameters(MultitaskPrompt(num_tasks=8, length=L, embed_dim=D))
    assert count.total == L * D + 8 * (L + D)
    assert count.per_task == pytest.approx(10_468)  # the paper's "10.5K"


def test_counts_of_other_generators_by_hand():
    assert count_parameters(SinglePrompt(length=10, embed_dim=8)) == ParameterCount(80, 0, 0, 1, 0)
    assert count_parameters(TaskPrompts(num_tasks=3, length=10, embed_dim=8)) == ParameterCount(
        0, 80, 0, 3, 0
    )
    rank2 = MultitaskPrompt(num_tasks=4, length=10, embed_dim=8, num_ranks=2)
    assert count_parameters(rank2) == ParameterCount(80, 2 * (10 + 8), 0, 4, 0)
    weighted = ComposedPrompt(num_tasks=3, length=10, embed_dim=8, composition="weighted")
    assert count_parameters(weighted) == ParameterCount(80, 80 + 1, 0, 3, 0)
    gated = ComposedPrompt(num_tasks=3, length=10, embed_dim=8, composition="gated", task_rank=1)
    assert count_parameters(gated) == ParameterCount(80 + 2 * 8 + 1, 18, 0, 3, 0)
    attention = ComposedPrompt(
        num_tasks=2, length=10, embed_dim=8,
        composition=compositions.Attention(pool_size=3, hidden=4),
    )  # fmt: skip
    down, up, norm = 8 * 4 + 4, 4 * 8 + 8, 2 * 8
    assert count_parameters(attention) == ParameterCount(3 * 80 + down + up + norm, 80, 0, 2, 0)
    concat = ComposedPrompt(
        num_tasks=2, length=10, embed_dim=8, composition="concat", task_length=5
    )
    assert count_parameters(concat) == ParameterCount(80, 40, 0, 2, 0)
    hier = HierarchicalPrompt(task_groups=(0, 0, 1), length=10, embed_dim=8)
    count = count_parameters(hier)
    assert count == ParameterCount(80, 18, 18, 3, 2)
    assert count.total == 80 + 3 * 18 + 2 * 18
    with pytest.raises(ValueError, match="backbone_params must be positive, got 0"):
        count.fraction_of(0)
