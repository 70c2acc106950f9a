"""DePT: a composition in its own module; the prompt plus an offset on the embedded inputs."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mpt_jax.backbone import T5, get_config
from mpt_jax.model import PromptedT5
from mpt_jax.prompts import ComposedPrompt, GeneratorOutput, HierarchicalPrompt
from mpt_jax.prompts import compositions as comp
from mpt_jax.prompts.dept import DePT, input_offset

T, M, S, D, R = 2, 3, 6, 8, 2
IDS = np.array([1, 0, 1], np.int32)
RNG = np.random.default_rng(0)
X = RNG.normal(size=(len(IDS), 5, D)).astype(np.float32)
MASK = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])


def _dept(num_tasks=T, length=M, task_length=S, rank=R, embed=D):
    return ComposedPrompt(
        num_tasks=num_tasks, length=length, embed_dim=embed, composition=DePT(),
        task_length=task_length, task_rank=rank,
    )  # fmt: skip


def _random_params(module, x=X):
    shapes = jax.eval_shape(module.init, jax.random.key(0), IDS, x, MASK)
    return jax.tree.map(
        lambda s: RNG.normal(size=s.shape).astype(np.float32), nn.unbox(shapes)["params"]
    )


def test_dept_is_registered_hashable_and_recorded():
    assert comp.resolve("dept") == DePT() and "dept" in comp.known()
    assert hash(DePT()) == hash(DePT()) and DePT() != comp.Add()
    assert DePT().record() == {"class": "DePT"}


def test_generator_returns_the_prompt_and_the_offset_formula():
    module = _dept()
    assert module.prompt_length == M  # the offset adds no prompt position
    params = _random_params(module)
    assert set(params) == {"shared", "task_cols", "task_rows"}
    assert params["task_cols"].shape == (T, S, R) and params["task_rows"].shape == (T, R, D)
    out = module.apply({"params": params}, IDS, X, MASK)
    assert isinstance(out, GeneratorOutput)
    np.testing.assert_array_equal(out.prompt, np.broadcast_to(params["shared"], (3, M, D)))
    length = X.shape[1]
    for b, k in enumerate(IDS):
        offset = params["task_cols"][k] @ params["task_rows"][k]  # [S, D]
        expected = offset[:length] * MASK[b][:, None]
        np.testing.assert_allclose(out.input_delta[b], expected, rtol=1e-5, atol=1e-6)


def test_input_offset_refuses_inputs_longer_than_the_offset():
    with pytest.raises(ValueError, match="covers 6 input positions but the inputs have 7"):
        input_offset(jnp.zeros((1, 6, D)), 7)
    module = _dept()
    with pytest.raises(ValueError, match="embedded_inputs must be given"):
        module.init(jax.random.key(0), IDS, None)


def test_fresh_offset_is_zero():
    module = _dept()
    variables = module.init(jax.random.key(0), IDS, X, MASK)
    out = module.apply(variables, IDS, X, MASK)
    np.testing.assert_array_equal(out.input_delta, 0.0)


def test_only_the_task_level_of_a_hierarchy_may_offset_the_inputs():
    ok = HierarchicalPrompt(
        task_groups=(0, 1), length=M, embed_dim=D, task_composition=DePT(), task_length=S
    )
    out = ok.apply(ok.init(jax.random.key(0), IDS, X, MASK), IDS, X, MASK)
    assert out.prompt.shape == (3, M, D) and out.input_delta.shape == X.shape
    bad = HierarchicalPrompt(
        task_groups=(0, 1), length=M, embed_dim=D, group_composition=DePT(), group_length=S
    )
    with pytest.raises(ValueError, match="group_composition 'dept' changes the inputs"):
        bad.init(jax.random.key(0), IDS, X, MASK)


CFG = get_config("tiny", {"dropout_rate": 0.0})
ENC = np.array([[5, 6, 7, 8, 1, 0], [9, 10, 1, 0, 0, 0]], np.int32)
ENC_SHIFTED = np.array([[15, 16, 17, 18, 1, 0], [19, 20, 1, 0, 0, 0]], np.int32)
TGT = np.array([[11, 12, 1], [13, 1, 0]], np.int32)
DEC_IN = np.array([[0, 11, 12], [0, 13, 1]], np.int32)
TASKS = np.array([0, 1], np.int32)


def test_model_adds_the_offset_to_the_embedded_inputs():
    """An offset that turns each token's embedding into another token's gives T5 on the
    other tokens, with the prompt prepended, up to float rounding."""
    backbone = nn.unbox(
        T5(CFG).init(jax.random.key(0), ENC, DEC_IN, TGT, enable_dropout=False)["params"]
    )
    table = np.asarray(backbone["token_embedder"]["embedding"])
    prompt_tokens = np.array([20, 21, 22], np.int32)
    length = ENC.shape[1]
    # task k's offset (rank = input length: U_k = I, V_k = the rows) moves example k's tokens
    rows = np.stack([table[ENC_SHIFTED[k]] - table[ENC[k]] for k in range(2)])  # [2, S, D]
    cols = np.broadcast_to(np.eye(length, dtype=np.float32), (2, length, length))
    dim = table.shape[1]
    prompt = {"shared": table[prompt_tokens], "task_cols": cols, "task_rows": rows}
    model = PromptedT5(CFG, prompt=_dept(2, 3, length, length, dim))
    logits = model.apply(
        {"params": {**backbone, "prompt": prompt}}, ENC, DEC_IN, TGT, TASKS, enable_dropout=False
    )
    reference = T5(CFG).apply(
        {"params": backbone},
        np.concatenate([np.tile(prompt_tokens, (2, 1)), ENC_SHIFTED], axis=1),
        DEC_IN,
        TGT,
        enable_dropout=False,
    )
    valid = TGT > 0
    np.testing.assert_allclose(
        np.asarray(logits)[valid], np.asarray(reference)[valid], rtol=1e-4, atol=1e-4
    )
