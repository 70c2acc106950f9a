"""Every gin file of the T5X-style layout (configs/architectures, models, prompts, runs).

Files that need only mpt_jax are parsed *and built* here with mpt_jax alone: each
model file gives a ``PromptedT5`` whose prompt has the expected parameters, each size
file names the matching T5 config, each prompt-initialiser file gives the values its
initialiser promises. Files that need T5X (``runs/*``, the Flaxformer architecture)
are parsed with T5X's own run files and built into the T5X model when T5X is
installed, and skipped otherwise.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import sys

import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mpt_jax.configs
from mpt_jax.backbone import get_config

CONFIGS = list(mpt_jax.configs.__path__)[0]
OURS = ("architectures", "models", "prompts", "runs")
_EXTERNAL = re.compile(r"^\s*(?:from|import|include)\s+['\"]?(t5x|flaxformer|__main__)", re.M)
_INCLUDE = re.compile(r"^\s*include\s+['\"]([^'\"]+)['\"]", re.M)


def _all_files() -> list[str]:
    files = []
    for sub in OURS:
        for root, _, names in os.walk(os.path.join(CONFIGS, sub)):
            files += [
                os.path.relpath(os.path.join(root, n), CONFIGS) for n in names if n.endswith(".gin")
            ]
    return sorted(files)


def needs_t5x(name: str) -> bool:
    """Whether ``name`` (or a file it includes from configs/) imports T5X or Flaxformer."""
    with open(os.path.join(CONFIGS, name)) as f:
        text = f.read()
    if _EXTERNAL.search(text):
        return True
    return any(
        os.path.exists(os.path.join(CONFIGS, inc)) and needs_t5x(inc)
        for inc in _INCLUDE.findall(text)
    )


FILES = _all_files()
PURE = [f for f in FILES if not needs_t5x(f)]
WITH_T5X = [f for f in FILES if needs_t5x(f)]


@gin.configurable("capture")
def _capture(value=None):
    return value


@contextlib.contextmanager
def parsed(files, bindings, search_paths=()):
    """Parses ``files`` + ``bindings`` into a fresh gin config; restores it afterwards."""
    with gin.unlock_config():
        gin.clear_config()
        for path in (CONFIGS, *search_paths):
            gin.add_config_file_search_path(path)
        try:
            gin.parse_config_files_and_bindings(files, bindings, finalize_config=False)
            yield
        finally:
            gin.clear_config()


def build(macro: str, files, bindings, search_paths=()):
    """The value of gin macro ``macro`` after parsing ``files`` and ``bindings``."""
    with parsed(files, [*bindings, f"capture.value = %{macro}"], search_paths):
        return _capture()


def test_every_layout_file_is_classified():
    assert {"models/mpt.gin", "models/sizes/tiny.gin", "prompts/uniform.gin"} <= set(PURE)
    assert {"runs/source.gin", "architectures/flaxformer_t5_prompt.gin"} <= set(WITH_T5X)
    assert set(PURE) | set(WITH_T5X) == set(FILES)


MODEL_BINDINGS = ["NUM_TASKS = 3", "TASK_GROUPS = (0, 0, 1)", "PROMPT_LENGTH = 4"]
# Prompt parameters each model file must produce (name -> shape), tiny size (D = 32).
EXPECTED_PROMPT = {
    "models/mpt.gin": {"shared": (4, 32), "task_cols": (3, 4, 1), "task_rows": (3, 1, 32)},
    "models/single.gin": {"shared": (4, 32)},
    "models/teachers.gin": {"task_prompts": (3, 4, 32)},
    "models/composed.gin": {"shared": (4, 32), "task_cols": (3, 4, 1), "task_rows": (3, 1, 32)},
    "models/composed_hadamard.gin": {
        "shared": (4, 32),
        "task_cols": (3, 4, 1),
        "task_rows": (3, 1, 32),
    },  # fmt: skip
    "models/composed_add.gin": {"shared": (4, 32), "task_cols": (3, 4, 1), "task_rows": (3, 1, 32)},
    "models/composed_weighted.gin": {
        "shared": (4, 32),
        "task_cols": (3, 4, 1),
        "task_rows": (3, 1, 32),
        "task_weights": (3,),
    },  # fmt: skip
    "models/composed_gated.gin": {
        "shared": (4, 32),
        "task_cols": (3, 4, 1),
        "task_rows": (3, 1, 32),
        "gate_kernel": (2, 32),
        "gate_bias": (),
    },  # fmt: skip
    "models/composed_concat.gin": {
        "shared": (4, 32),
        "task_cols": (3, 50, 1),
        "task_rows": (3, 1, 32),
    },  # fmt: skip
    "models/hierarchical.gin": {
        "shared": (4, 32),
        "group_cols": (2, 4, 1),
        "group_rows": (2, 1, 32),
        "task_cols": (3, 4, 1),
        "task_rows": (3, 1, 32),
    },  # fmt: skip
}


def _prompt_shapes(module) -> dict[str, tuple[int, ...]]:
    tokens = jnp.ones((2, 6), jnp.int32)
    variables = jax.eval_shape(
        lambda: module.init(jax.random.PRNGKey(0), tokens, tokens, tokens, jnp.zeros(2, jnp.int32))
    )
    flat = jax.tree_util.tree_flatten_with_path(nn_unbox(variables["params"]["prompt"]))[0]
    return {"/".join(k.key for k in path): tuple(v.shape) for path, v in flat}


def nn_unbox(tree):
    import flax.linen as nn

    return nn.unbox(tree)


@pytest.mark.parametrize("name", [f for f in PURE if f.startswith("models/") and "sizes" not in f])
def test_model_file_builds_a_prompted_t5_with_the_expected_prompt(name):
    from mpt_jax.model import PromptedT5

    module = build("ARCHITECTURE", [name, "models/sizes/tiny.gin"], MODEL_BINDINGS)
    assert isinstance(module, PromptedT5)
    assert module.config == get_config("tiny")
    if name == "models/composed_attention.gin":
        shapes = _prompt_shapes(module)
        assert shapes["source_prompts"] == (6, 4, 32) and shapes["task_prompts"] == (3, 4, 32)
        assert "shared" not in shapes
        return
    assert _prompt_shapes(module) == EXPECTED_PROMPT[name]


@pytest.mark.parametrize("name", [f for f in PURE if f.startswith("models/sizes/")])
def test_size_file_names_a_t5_1_1_config_with_its_width(name):
    with parsed([name], ["capture.value = (%T5_SIZE, %EMBED_DIM)"]):
        size, width = _capture()
    assert os.path.basename(name) == f"{size}.gin"
    assert get_config(size).emb_dim == width


def test_ablations_are_single_bindings():
    module = build(
        "ARCHITECTURE",
        ["models/mpt.gin", "models/sizes/tiny.gin"],
        [*MODEL_BINDINGS, "PROMPT_RANK = 3", "PROMPT_LENGTH = 7"],
    )
    assert _prompt_shapes(module)["task_cols"] == (3, 7, 3)
    hier = build(
        "ARCHITECTURE",
        ["models/hierarchical.gin", "models/sizes/tiny.gin"],
        [*MODEL_BINDINGS, "TASK_COMPOSITION = 'add'", "TASK_RANK = None"],
    )
    assert hier.prompt.task_composition.name == "add"
    assert _prompt_shapes(hier)["task_prompts"] == (3, 4, 32)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gin")
    table = np.random.RandomState(0).normal(size=(get_config("tiny").vocab_size, 32))
    np.save(tmp / "table.npy", table.astype(np.float32))
    prompt = np.random.RandomState(1).normal(size=(4, 32)).astype(np.float32)
    np.save(tmp / "shared.npy", prompt)
    return {"table": table, "table_path": str(tmp / "table.npy"), "prompt": prompt,
            "prompt_path": str(tmp / "shared.npy")}  # fmt: skip


def _shared_after(prompt_file: str, extra, files) -> np.ndarray:
    module = build(
        "ARCHITECTURE",
        ["models/mpt.gin", "models/sizes/tiny.gin", prompt_file],
        [
            *MODEL_BINDINGS,
            f"EMBEDDING_TABLE = '{files['table_path']}'",
            f"PROMPT_FILE = '{files['prompt_path']}'",
            *extra,
        ],
    )
    params = module.prompt.init(jax.random.PRNGKey(0), jnp.zeros(2, jnp.int32), None)
    import flax.linen as nn

    return np.asarray(nn.unbox(params)["params"]["shared"])


@pytest.mark.parametrize("name", [f for f in PURE if f.startswith("prompts/")])
def test_prompt_initialiser_file_gives_its_values(name, files):
    table = files["table"].astype(np.float32)
    extra = ["PROMPT_TEXT_IDS = [5, 6, 7]", "CLASS_LABEL_IDS = [[5], [6, 7]]",
             "SAMPLED_VOCAB_IDS = 100"]  # fmt: skip
    shared = _shared_after(name, extra, files)
    assert shared.shape == (4, 32)
    if name == "prompts/uniform.gin":
        assert np.abs(shared).max() <= 0.5 and shared.std() > 0.1
    elif name == "prompts/normal.gin":
        assert 0.005 < shared.std() < 0.05
    elif name == "prompts/from_npy.gin":
        np.testing.assert_array_equal(shared, files["prompt"])
    elif name == "prompts/from_text.gin":
        np.testing.assert_allclose(shared, table[[5, 6, 7, 5]], rtol=1e-6)
    elif name == "prompts/from_class_labels.gin":
        np.testing.assert_allclose(shared[0], table[5], rtol=1e-6)
        np.testing.assert_allclose(shared[1], table[[6, 7]].mean(0), rtol=1e-6)
    elif name == "prompts/from_sampled_vocab.gin":
        rows = {tuple(np.round(r, 5)) for r in table[:100]}
        assert all(tuple(np.round(r, 5)) in rows for r in shared)
    elif name == "prompts/peft_factors.gin":
        module = build(
            "ARCHITECTURE", ["models/mpt.gin", "models/sizes/tiny.gin", name], MODEL_BINDINGS
        )
        import flax.linen as nn

        params = nn.unbox(module.prompt.init(jax.random.PRNGKey(0), jnp.zeros(2, jnp.int32)))
        cols = np.asarray(params["params"]["task_cols"])
        assert 0.005 < cols.std() < 0.05 and abs(cols.mean()) < 0.02  # PEFT: N(0, 0.02)
    else:
        pytest.fail(f"no value check for {name}; add one")


def test_t5x_ext_import_error_names_what_to_install(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *args: None if name == "t5x" else real(name, *args),
    )
    for mod in [m for m in sys.modules if m.startswith("mpt_jax.t5x_ext")]:
        monkeypatch.delitem(sys.modules, mod)
    with pytest.raises(ImportError, match="github.com/google-research/t5x"):
        importlib.import_module("mpt_jax.t5x_ext")


# --- files that need T5X ----------------------------------------------------------------

RUN_SCRIPT = {"runs/eval.gin": "t5x.eval", "runs/infer.gin": "t5x.infer"}
RUN_BINDINGS = [
    "NUM_TASKS = 6",
    "PROMPT_LENGTH = 4",
    "MIXTURE_OR_TASK_NAME = 'mpt_embedded_source'",
    "MODEL_DIR = '/tmp/unused'",
    "TRAIN_STEPS = 10",
    "INITIAL_CHECKPOINT_PATH = '/tmp/unused'",
    "TEACHER_CHECKPOINT = '/tmp/unused'",
    "SOURCE_CHECKPOINT = '/tmp/unused'",
    "CHECKPOINT_PATH = '/tmp/unused'",
    "EVAL_OUTPUT_DIR = '/tmp/unused'",
    "INFER_OUTPUT_DIR = '/tmp/unused'",
]


def _t5x_search_paths():
    t5x = pytest.importorskip("t5x.train", reason="T5X is not installed (not on PyPI)")
    paths = [os.path.dirname(os.path.dirname(t5x.__file__))]
    with contextlib.suppress(ImportError):
        import flaxformer

        paths.append(os.path.dirname(os.path.dirname(flaxformer.__file__)))
    return paths


@contextlib.contextmanager
def as_main(script: str):
    """T5X's run files ``import __main__``; make it the script that would run them."""
    module = importlib.import_module(script)
    saved = sys.modules["__main__"]
    sys.modules["__main__"] = module
    try:
        yield
    finally:
        sys.modules["__main__"] = saved


def _stack(run: str) -> list[str]:
    return ["models/mpt.gin", "models/sizes/tiny.gin", run, "runs/embedded.gin"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Prompts as mpt_jax.t5x_ext.export writes them: teachers and a source MPT prompt."""
    from mpt_jax.prompts import io as prompt_io

    tmp = tmp_path_factory.mktemp("exported")
    rng = np.random.RandomState(4)
    teachers = rng.normal(size=(6, 4, 32)).astype(np.float32)
    prompt_io.save_npy({"task_prompts": teachers}, str(tmp / "teacher"))
    source = {
        "shared": rng.normal(size=(4, 32)).astype(np.float32),
        "task_cols": rng.normal(size=(3, 4, 2)).astype(np.float32),
        "task_rows": rng.normal(size=(3, 2, 32)).astype(np.float32),
    }
    prompt_io.save_npy(source, str(tmp / "source"))
    return {
        "teachers": teachers,
        "source": source,
        "bindings": [
            f"TEACHER_PROMPTS = '{tmp / 'teacher' / 'task_prompts.npy'}'",
            f"SOURCE_PROMPT_DIR = '{tmp / 'source'}'",
        ],
    }


@pytest.mark.parametrize("name", [f for f in WITH_T5X if f.startswith("runs/")])
def test_t5x_run_file_builds_the_t5x_model(name, exported):
    paths = _t5x_search_paths()
    from mpt_jax.t5x_ext import models

    if name == "runs/prompt_model.gin":
        stack = ["models/mpt.gin", "models/sizes/tiny.gin", name, "runs/embedded.gin"]
    else:
        stack = _stack(name)
    with as_main(RUN_SCRIPT.get(name, "t5x.train")):
        bindings = [*RUN_BINDINGS, *exported["bindings"]]
        if name == "runs/prompt_model.gin":
            bindings.append("DROPOUT_RATE = 0.0")  # a run file defines it
        if name == "runs/source.gin":  # λ as a user sets it: the runner's recipe binding
            bindings.append("Distillation.weight = 0.25")
        model = build("MODEL", stack, bindings, paths)
    expected = models.PromptDistillationModel if name == "runs/source.gin" else None
    assert isinstance(model, expected or models.PromptedEncoderDecoderModel)
    if name == "runs/source.gin":
        from mpt_jax.training.objectives import Distillation

        assert model.recipe == Distillation(weight=0.25)
    shapes = {"encoder_input_tokens": (2, 16), "decoder_input_tokens": (2, 4),
              "decoder_target_tokens": (2, 4), "task_ids": (2,)}  # fmt: skip
    variables = model.get_initial_variables(
        jax.random.PRNGKey(0), shapes, {k: jnp.int32 for k in shapes}
    )
    prompt = {k: np.asarray(v) for k, v in variables["params"]["prompt"].items()}
    assert {k: v.shape for k, v in prompt.items()} == {
        "shared": (4, 32), "task_cols": (6, 4, 1), "task_rows": (6, 1, 32)
    }  # fmt: skip
    if name == "runs/source.gin":  # the teachers are the exported ones
        teachers = np.asarray(variables["params"]["teacher_prompt"]["task_prompts"])
        np.testing.assert_array_equal(teachers, exported["teachers"])
    if name == "runs/target.gin":  # the source's shared prompt; 'average' task factors
        src = exported["source"]
        np.testing.assert_array_equal(prompt["shared"], src["shared"])
        mean = np.mean([src["task_cols"][k] @ src["task_rows"][k] for k in range(3)], axis=0)
        u, s, vt = np.linalg.svd(mean.astype(np.float64))
        np.testing.assert_allclose(
            prompt["task_cols"][5] @ prompt["task_rows"][5],
            s[0] * np.outer(u[:, 0], vt[0]),
            atol=1e-4,
        )


def test_restore_rules_take_the_backbone_and_no_prompt_from_the_checkpoint():
    paths = _t5x_search_paths()
    from t5x import state_utils

    with as_main("t5x.train"), parsed(_stack("runs/source.gin"), RUN_BINDINGS, paths):
        rules = gin.query_parameter("utils.RestoreCheckpointConfig.assignment_map")
        fallback = gin.query_parameter("utils.RestoreCheckpointConfig.fallback_to_scratch")
        checks = gin.query_parameter("utils.RestoreCheckpointConfig.state_transformation_fns")
    assert fallback is True
    # tests/test_t5x_resume.py restores with these rules through T5X's Orbax path.
    assert tuple(rules) == ((r".*prompt.*", None), (r"state/param_states/.*", None))
    assert len(checks) == 1 and "optim.check_optimizer_states" in str(checks[0])
    teacher_ckpt = {
        "target": {"encoder": {"w": 1.0}, "prompt": {"task_prompts": 2.0}},
        "state": {"step": 5, "param_states": {"encoder": {"w": None},
                                              "prompt": {"task_prompts": {"v": 3.0}}}},
    }  # fmt: skip
    student = {
        "target": {
            "encoder": {"w": 0.0},
            "prompt": {"shared": 0.0, "task_cols": 0.0, "task_rows": 0.0},
            "teacher_prompt": {"task_prompts": 0.0},
        },
        "state": {"step": 0, "param_states": {"encoder": {"w": 0.0},
                                              "prompt": {"shared": {"v": 0.0}}}},
    }  # fmt: skip
    out = traverse(state_utils.apply_assignment_map(teacher_ckpt, student, rules))
    assert out["target/encoder/w"] == 1.0 and out["state/step"] == 5
    for key in ("target/prompt/shared", "target/teacher_prompt/task_prompts",
                "state/param_states/prompt/shared/v", "state/param_states/encoder/w"):  # fmt: skip
        assert key not in out  # left to fallback_to_scratch: initialisers, fresh states


#: T5X's learning-rate schedule as t5x.train gets it (gin's, not the bare function).
SCHEDULER = "capture.value = @utils.create_learning_rate_scheduler()"


@pytest.mark.parametrize(
    "model, run",
    [("models/teachers.gin", "runs/teacher.gin"), ("models/mpt.gin", "runs/source.gin"),
     ("models/mpt.gin", "runs/target.gin")],
)  # fmt: skip
def test_t5x_runs_train_prompts_with_the_runners_recipe(model, run, exported):
    """The optimizer and base rate the T5X run files build are the runner's recipe:
    Adafactor's hyper-parameters from ``PromptRecipe().optimizer``, the scheduler's rate
    ``PromptRecipe().learning_rate``, and each parameter's effective rate (scheduler rate
    times its group's multiplier) ``recipe.rate(path)``, the recipe being the runner's for
    that prompt (``prompt_recipe``: an MPT prompt's factors at ``mpt_recipe``'s rates)."""
    paths = _t5x_search_paths()
    from t5x import adafactor

    from mpt_jax.t5x_ext import optim
    from mpt_jax.training.optimizers import PromptRecipe, mpt_recipe

    stack = [model, "models/sizes/tiny.gin", run, "runs/embedded.gin"]
    bindings = [*RUN_BINDINGS, *exported["bindings"], SCHEDULER]
    with as_main("t5x.train"), parsed(stack, bindings, paths):
        base = float(_capture()(0))  # the rate of T5X's first step
        optimizer = _capture_macro("OPTIMIZER")
    recipe = mpt_recipe(PromptRecipe()) if model == "models/mpt.gin" else PromptRecipe()
    assert base == pytest.approx(PromptRecipe().learning_rate)  # float32
    assert isinstance(optimizer, optim.PlaceholderMultiOptimizer)
    ada = recipe.optimizer
    for sub in optimizer.sub_optimizers:
        assert isinstance(sub, adafactor.Adafactor)
        hp = sub.hyper_params
        assert (hp.decay_rate, hp.step_offset, hp.weight_decay_rate, hp.clipping_threshold) == (
            ada.decay_rate, 0, ada.weight_decay, ada.clipping_threshold
        )  # fmt: skip
        assert (hp.factored, hp.multiply_by_parameter_scale) == (
            ada.factored, ada.multiply_by_parameter_scale
        )  # fmt: skip
        assert hp.beta1 is None and hp.global_norm_clip_threshold is None
    names = ("task_prompts",) if model == "models/teachers.gin" else (
        "shared", "task_cols", "task_rows"
    )  # fmt: skip
    tree = {"prompt": {n: 0 for n in names}, "encoder": {"w": 0}}
    rates = {}
    for traversal, sub in zip(optimizer.traversals, optimizer.sub_optimizers, strict=True):
        for path in optim.matched_paths(tree, traversal):
            assert path not in rates, f"{path} is in two groups"
            rates[path] = base * sub.learning_rate_multiplier
    assert rates == {f"prompt/{n}": pytest.approx(recipe.rate(n)) for n in names}
    if model == "models/mpt.gin":  # the factors at the lower rate, P at the recipe's
        assert rates["prompt/task_cols"] < rates["prompt/shared"]


def test_a_flag_rebinding_the_optimizer_wins():
    paths = _t5x_search_paths()
    from t5x import adafactor

    # A flag rebinding OPTIMIZER wins (flags are parsed after every --gin_file).
    with (
        as_main("t5x.train"),
        parsed(
            _stack("runs/teacher.gin"), [*RUN_BINDINGS, "OPTIMIZER = @adafactor.Adafactor()"], paths
        ),
    ):
        assert type(_capture_macro("OPTIMIZER")) is adafactor.Adafactor


def test_t5x_runs_take_the_recipe_as_the_runner_binds_it():
    paths = _t5x_search_paths()
    bindings = [*RUN_BINDINGS, "PromptRecipe.learning_rate = 0.1",
                "mpt_recipe.factor_rates = {'task_cols': 0.05, 'task_rows': 0.05}"]  # fmt: skip
    with as_main("t5x.train"), parsed(_stack("runs/teacher.gin"), [*bindings, SCHEDULER], paths):
        base = float(_capture()(0))
        optimizer = _capture_macro("OPTIMIZER")
    assert base == pytest.approx(0.1)
    multipliers = sorted(sub.learning_rate_multiplier for sub in optimizer.sub_optimizers)
    assert multipliers == pytest.approx([0.5, 0.5, 1.0])


def _capture_macro(macro: str):
    gin.bind_parameter("capture.value", gin.query_parameter(f"%{macro}"))
    value = _capture()
    return value


def traverse(tree):
    from flax import traverse_util

    return traverse_util.flatten_dict(tree, sep="/")


def test_flaxformer_architecture_file_builds_the_prompted_encoder_decoder():
    paths = _t5x_search_paths()
    pytest.importorskip("flaxformer", reason="Flaxformer is not installed")
    from mpt_jax.t5x_ext import flaxformer_encoder

    stack = ["models/mpt.gin", "models/sizes/base.gin", "architectures/flaxformer_t5_prompt.gin"]
    with parsed(stack, ["NUM_TASKS = 6", "capture.value = %ARCHITECTURE"], paths):
        module = _capture()
        # Factories read their gin bindings when called, so build the encoder in here.
        encoder = module.encoder_factory(shared_token_embedder=None)
    assert isinstance(module, flaxformer_encoder.PromptedEncoderDecoder)
    assert isinstance(encoder, flaxformer_encoder.PromptedEncoder)
    assert encoder.num_layers == get_config("base").num_encoder_layers
    assert encoder.prompt.num_tasks == 6 and encoder.prompt.embed_dim == 768
