"""``mpt-jax``: the command line, configured the way T5X users expect.

::

    mpt-jax train --gin_file=runner/source.gin \
        --gin.train.model_dir="'runs/source'" --gin.train_loop.num_steps=1000
    mpt-jax eval --gin_file=runner/source.gin --gin.evaluate.model_dir="'runs/source'"
    mpt-jax export-prompts --gin.export_prompts.model_dir="'runs/source'" \
        --gin.export_prompts.output_dir="'prompts/'" --gin.export_prompts.format="'peft'"
    mpt-jax demo --gin.mpt_jax.runner.demo.main.quick=True
    mpt-jax plot runs/source                 # learning curves → runs/source/learning_curves.png

``mpt-jax COMMAND --help`` gives the command's purpose, gin files, required macros,
outputs and an example. Flags:

- ``--gin_file`` (repeatable): a gin file, resolved against ``--gin_search_paths`` and the
  installed ``mpt_jax.configs`` folder (so ``runner/teacher.gin`` works from anywhere);
- ``--gin.NAME=VALUE`` (repeatable): one binding ``NAME = VALUE`` (VALUE in gin syntax:
  strings in quotes);
- ``--gin_bindings`` (repeatable): a binding in ``NAME = VALUE`` form (T5X's other way);
- ``--gin_search_paths`` (repeatable, comma-separated lists allowed);
- ``--task_module`` (repeatable): a module name or a ``.py`` file imported before the gin
  files are parsed, so its seqio tasks exist (no gin ``import`` or ``PYTHONPATH`` needed);
- ``--verbose``: keep TensorFlow's and JAX's start-up lines (hidden by default);
- ``--traceback``: on a refusal (see below), raise it with Python's traceback instead of
  the one-line message;
- ``--compilation_cache_dir``: JAX's persistent compilation cache (default
  ``$MPT_JAX_COMPILATION_CACHE_DIR``, else ``~/.cache/mpt_jax/xla``; empty: off), so a
  later run of the same step loads it instead of compiling again.

Before JAX, TensorFlow or data start, :mod:`mpt_jax.runner.preflight` checks the stacked
gin files and bindings (required macros, value types against the configurables'
annotations, paths that must exist) in well under a second; then, after gin is configured
and own tasks (``file_tasks.tasks``) are registered, the job's task or mixture names (with
the nearest known names when misspelled). A binding of something that does not exist is
an error naming it (gin's message). Each of these exits with status 2 before any work
starts.

Refusals once the job runs (:func:`user_errors`: a checkpoint made by another generator,
backbone or vocabulary, a task mapping that does not fit, a bad line of
``infer.input_file``, a non-finite step, …) are printed as ``mpt-jax <command>: error:
<message>`` with status 2 (a non-finite step: 1); ``--traceback`` shows where they came
from. Other exceptions are bugs and keep their traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import importlib.util
import logging
import os
import re
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator, Sequence

# TensorFlow (seqio's data pipeline) prints INFO/WARNING lines about CUDA and oneDNN at
# import; keep the command's output readable unless the user asks for them.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import gin  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Command:
    """One ``mpt-jax`` command: the function it runs and its ``--help`` text."""

    job: tuple[str, str] | None  # (module, function) of a gin-configured job
    purpose: str
    gin_files: str = ""
    required: str = ""
    outputs: str = ""
    example: str = ""


_STAGES = (
    "runner/teacher.gin | runner/source.gin | runner/target.gin (MPT's three stages), "
    "runner/prompt_tuning.gin | runner/spot.gin | runner/composed.gin (baselines); then a "
    "backbone: runner/embedded.gin (the shipped pretrained one), runner/tiny.gin (random, "
    "smoke tests) or --gin.BACKBONE_CHECKPOINT=\"'hf:DIR'\" (a Hugging Face T5 folder)"
)
_RUN = "MODEL_DIR (the run folder), MIXTURE (a seqio task or mixture)"

COMMANDS: dict[str, Command] = {
    "train": Command(
        ("mpt_jax.runner.jobs", "train"),
        "Train one stage's prompt on a seqio task or mixture (resumes when MODEL_DIR holds "
        "checkpoints).",
        _STAGES,
        f"{_RUN}; source.gin also TEACHER_DIR, target.gin also SOURCE_DIR",
        "MODEL_DIR/checkpoints/, task_index.json, config.gin, metrics.jsonl, tensorboard/",
        "mpt-jax train --gin_file=runner/teacher.gin --gin_file=runner/embedded.gin \\\n"
        "    --gin.MODEL_DIR=\"'runs/teachers'\" --gin.MIXTURE=\"'mpt_embedded_source'\"",
    ),
    "eval": Command(
        ("mpt_jax.runner.jobs", "evaluate"),
        "Evaluate a trained run's checkpoint with the tasks' seqio metrics.",
        "the stage and backbone files the run was trained with",
        f"{_RUN} (the tasks to evaluate), and the stage's TEACHER_DIR / SOURCE_DIR",
        "MODEL_DIR/eval_results.jsonl (appended), the metrics printed as JSON",
        "mpt-jax eval --gin_file=runner/target.gin --gin_file=runner/embedded.gin \\\n"
        "    --gin.MODEL_DIR=\"'runs/target'\" --gin.SOURCE_DIR=\"'runs/source'\" \\\n"
        "    --gin.MIXTURE=\"'mpt_embedded_target_0'\"",
    ),
    "infer": Command(
        ("mpt_jax.runner.jobs", "infer"),
        "Greedy predictions of a trained run: on a task's split, or on a jsonl of new "
        'inputs (--gin.infer.input_file="\'new.jsonl\'", one {"inputs": ..., "task": ...} '
        'per line; "task" may be left out when the run has one task).',
        "the stage and backbone files the run was trained with",
        f"{_RUN} (MIXTURE is not needed with infer.input_file)",
        'MODEL_DIR/predictions_<split>.jsonl (a split: {"task", "inputs", "prediction", '
        "\"targets\"} per line; a rank-scored task's split: one line per input, each label's "
        'log-likelihood in "scores") or MODEL_DIR/predictions_<input file\'s stem>.jsonl (an '
        'input file: {"task", "inputs", "prediction"}); infer.output_file overrides either',
        "mpt-jax infer --gin_file=runner/target.gin --gin_file=runner/embedded.gin \\\n"
        "    --gin.MODEL_DIR=\"'runs/target'\" --gin.SOURCE_DIR=\"'runs/source'\" \\\n"
        "    --gin.infer.input_file=\"'new.jsonl'\"",
    ),
    "export-prompts": Command(
        ("mpt_jax.runner.jobs", "export_prompts"),
        "Write a run's prompt as .npy files or a Hugging Face PEFT adapter.",
        "none needed (runner/base.gin by default: the prompt is read from the checkpoint, "
        "whichever stage made it)",
        "MODEL_DIR, export_prompts.output_dir",
        "the prompt files and task_index.json in export_prompts.output_dir",
        "mpt-jax export-prompts --gin.MODEL_DIR=\"'runs/target'\" \\\n"
        "    --gin.export_prompts.output_dir=\"'adapter'\" --gin.export_prompts.format=\"'peft'\"",
    ),
    "demo": Command(
        ("mpt_jax.runner.demo", "main"),
        "MPT's whole pipeline on the shipped embedded benchmark and backbone (offline).",
        "none needed (runner/demo.gin is read by the demo itself)",
        "none",
        "mpt_demo/table.txt, results.json, learning_curves.png",
        "mpt-jax demo --gin.mpt_jax.runner.demo.main.quick=True",
    ),
    "plot": Command(
        None,
        "Draw a run's learning curves (losses, eval metrics) from MODEL_DIR/metrics.jsonl.",
        "none",
        "the run folder as argument: mpt-jax plot MODEL_DIR [--output FILE.png]",
        "MODEL_DIR/learning_curves.png (or --output)",
        "mpt-jax plot runs/teachers",
    ),
}
JOBS = {name: c.job for name, c in COMMANDS.items() if c.job is not None}

#: Modules whose gin configurables every job may bind.
CONFIGURABLE_MODULES = (
    "mpt_jax.backbone",
    "mpt_jax.model",
    "mpt_jax.prompts",
    "mpt_jax.prompts.source_init",
    "mpt_jax.data.task_ids",
    "mpt_jax.data.feature_converter",
    "mpt_jax.training",
    "mpt_jax.training.checkpoints",
    "mpt_jax.training.loop",
    "mpt_jax.runner.jobs",
    "mpt_jax.runner.stages",
    "mpt_jax.tasks",
)

_GIN_STYLE = """\
configuration:
  --gin_file=FILE            a gin file (repeatable; runner/*.gin is found from anywhere)
  --gin.NAME=VALUE           one binding, VALUE in gin syntax: strings in quotes,
                             e.g. --gin.MODEL_DIR="'runs/x'" --gin.train_loop.num_steps=500
  --gin_bindings='NAME = VALUE', --gin_search_paths=DIR[,DIR]
  --task_module=MODULE|FILE.py  import your own seqio tasks (repeatable; no PYTHONPATH)
  --compilation_cache_dir=DIR   JAX's persistent compilation cache ('' = off)
  --verbose                  show TensorFlow/JAX start-up messages
  --traceback                on an error, Python's traceback instead of one message"""


class UsageError(Exception):
    """A command line that cannot run (exit status 2)."""


class HelpRequested(Exception):
    """``--help``: the text is the message (exit status 0)."""


def command_help(name: str) -> str:
    """The ``mpt-jax <name> --help`` text."""
    c = COMMANDS[name]
    usage = "mpt-jax plot MODEL_DIR [--output FILE]" if name == "plot" else (
        f"mpt-jax {name} --gin_file=... [--gin.NAME=VALUE ...]"
    )  # fmt: skip
    parts = [
        f"usage: {usage}",
        "",
        c.purpose,
        "",
        f"gin files:       {c.gin_files}",
        f"required macros: {c.required}",
        f"outputs:         {c.outputs}",
        "",
        "example:",
        f"  {c.example}",
    ]
    if name != "plot":
        parts += ["", _GIN_STYLE]
    return "\n".join(parts)


def overview() -> str:
    width = max(map(len, COMMANDS))
    lines = [
        "usage: mpt-jax COMMAND [--gin_file=FILE ...] [--gin.NAME=VALUE ...]",
        "",
        __doc__.split("\n\n")[0].strip('"').replace("``", ""),
        "",
        "commands:",
        *(
            f"  {n:<{width}}  {c.purpose.split(':')[0].split(' (')[0].rstrip('.')}"
            for n, c in COMMANDS.items()
        ),  # fmt: skip
        "",
        "`mpt-jax COMMAND --help` shows the command's gin files, required macros, outputs "
        "and an example.",
        "",
        _GIN_STYLE,
    ]
    return "\n".join(lines)


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    """Splits ``--gin.NAME=VALUE`` flags off, parses the rest; returns (args, bindings).

    Raises:
      HelpRequested: for ``--help`` (the overview, or the command's own text).
      UsageError: for a malformed or unknown flag or command.
    """
    bindings, rest = [], []
    for arg in argv:
        if arg.startswith("--gin."):
            name, sep, value = arg[len("--gin.") :].partition("=")
            if not sep or not name:
                raise UsageError(f"expected --gin.NAME=VALUE, got {arg!r}")
            bindings.append(f"{name} = {value}")
        else:
            rest.append(arg)
    commands = [a for a in rest if not a.startswith("-")]
    if any(a in ("-h", "--help") for a in rest):
        if commands and commands[0] in COMMANDS:
            raise HelpRequested(command_help(commands[0]))
        raise HelpRequested(overview())
    if not commands:
        raise UsageError(f"give a command: {', '.join(COMMANDS)} (mpt-jax --help)")
    if commands[0] not in COMMANDS:
        from mpt_jax.runner.preflight import suggest

        raise UsageError(
            f"unknown command {commands[0]!r}{suggest(commands[0], COMMANDS)} "
            f"(commands: {', '.join(COMMANDS)})"
        )
    parser = _Parser(prog="mpt-jax", add_help=False)
    parser.add_argument("job", choices=list(COMMANDS))
    if commands[0] == "plot":
        parser.add_argument("model_dir")
        parser.add_argument("--output", default=None)
    parser.add_argument("--gin_file", action="append", default=[])
    parser.add_argument("--gin_bindings", action="append", default=[])
    parser.add_argument("--gin_search_paths", action="append", default=[])
    parser.add_argument("--task_module", action="append", default=[])
    parser.add_argument("--compilation_cache_dir", default=None)
    parser.add_argument("--verbose", action="store_true")
    parser.add_argument("--traceback", action="store_true")
    args = parser.parse_args(rest)
    return args, [*args.gin_bindings, *bindings]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse would exit; we return status 2 ourselves
        raise UsageError(f"{message} (mpt-jax --help)")


def search_paths(given: Sequence[str]) -> list[str]:
    """The folders gin files are resolved against: the given ones, then ``CONFIG_DIR``."""
    from mpt_jax.configs import CONFIG_DIR

    paths = [p for entry in given for p in entry.split(",") if p]
    return [*paths, CONFIG_DIR]


def resolve_gin_file(name: str, paths: Sequence[str]) -> str:
    """``name`` itself when it exists, else the first ``<path>/<name>``; else an error."""
    from mpt_jax.runner.preflight import resolve_file

    found = resolve_file(name, paths)
    if found is None:
        raise UsageError(f"gin file {name!r} not found (searched ., {', '.join(paths)})")
    return found


def import_task_modules(names: Sequence[str]) -> None:
    """Imports each ``--task_module``: a dotted module name, or a ``.py`` file (imported
    under its file name, no ``PYTHONPATH`` needed); its import registers seqio tasks."""
    for name in names:
        if name.endswith(".py") or os.path.sep in name:
            if not os.path.isfile(name):
                raise UsageError(f"--task_module {name!r}: no such file")
            module_name = os.path.splitext(os.path.basename(name))[0]
            spec = importlib.util.spec_from_file_location(module_name, name)
            module = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = module
            spec.loader.exec_module(module)
        else:
            try:
                importlib.import_module(name)
            except ModuleNotFoundError as e:
                raise UsageError(
                    f"--task_module {name!r}: {e} (give a module on sys.path, or the path of "
                    "its .py file)"
                ) from None


def configure(gin_files: Sequence[str], bindings: Sequence[str], paths: Sequence[str]) -> None:
    """Imports the configurable modules, then parses the files and bindings (strictly),
    replacing any configuration parsed before in this process."""
    gin.clear_config()
    for module in CONFIGURABLE_MODULES:
        importlib.import_module(module)
    for path in paths:
        gin.add_config_file_search_path(path)
    files = [resolve_gin_file(f, paths) for f in gin_files]
    gin.parse_config_files_and_bindings(files, None, finalize_config=False)
    check_macros_defined(bindings)
    gin.parse_config_files_and_bindings([], bindings, finalize_config=False)


def check_macros_defined(bindings: Sequence[str]) -> None:
    """Raises ``UsageError`` for a binding of a macro (``NAME = value``) that no gin file
    defines: gin would accept it as a new macro that nothing reads, so a misspelled
    ``--gin.BACKBONE_CHECKPONT`` would silently train on a random backbone."""
    for binding in bindings:
        name = binding.partition("=")[0].strip()
        if not name.isidentifier():
            continue  # a configurable's parameter (scope/name.param), or not a binding
        try:
            gin.query_parameter(f"%{name}")
        except ValueError:
            raise UsageError(
                f"the gin macro {name!r} (from {binding!r}) is not defined in any gin file; "
                "check its spelling (the files define macros as NAME = value)"
            ) from None


def _query(name: str):
    """The value bound to ``name`` with macros followed (``%MIXTURE`` → its value); None
    when unbound."""
    try:
        value = gin.query_parameter(name)
    except ValueError:
        return None
    for _ in range(20):
        selector = getattr(value, "scoped_selector", "")
        if not selector.endswith("gin.macro"):
            break
        value = gin.query_parameter(f"{selector.removesuffix('/gin.macro')}/macro.value")
    return value


def check_tasks(job: str) -> None:
    """After gin is configured and own tasks registered: the job's tasks exist (else the
    nearest names), and each declares and adds ``task_ids``."""
    import seqio

    from mpt_jax.runner import preflight

    if job == "infer" and _query("infer.input_file"):
        return
    names = {n: _query(n) for n in preflight.MIXTURE_BINDINGS.get(job, ())}
    preflight.check_mixture_names(names)
    every_task = {}
    for binding, value in names.items():
        if not isinstance(value, str):
            continue
        provider = seqio.get_mixture_or_task(value)
        tasks = provider.tasks if isinstance(provider, seqio.Mixture) else [provider]
        for task in tasks:
            every_task[task.name] = task
            declared = "task_ids" in task.output_features
            added = any("add_task_ids" in repr(p) for p in task.preprocessors)
            if not (declared and added):
                raise UsageError(
                    f"task {task.name!r} ({binding}) does not carry task ids: "
                    + ("" if added else "add functools.partial(mpt_jax.data.task_ids."
                       f"add_task_ids, task_name={task.name!r}) to its preprocessors (after "
                       "tokenize)")
                    + (" and " if not (added or declared) else "")
                    + ("" if declared else "declare 'task_ids': mpt_jax.data.task_ids."
                       "TASK_IDS_FEATURE in its output_features")
                    + " (or define it with file_tasks.tasks, which does both)"
                )  # fmt: skip
    if every_task:
        from mpt_jax.runner import backbone_loading as bl

        checkpoint = _query("load_backbone.checkpoint")
        config = bl.backbone_config(None, checkpoint, _query("load_backbone.config_name"))
        bl.check_task_vocabularies(every_task.values(), checkpoint, config)


_NOISE = re.compile(
    r"cudart_stub|cuda_platform|cuInit|cuda_dnn|cuda_fft|cuda_blas|computation_placer|"
    r"All log messages before absl::InitializeLog|oneDNN custom operations|TF-TRT|"
    r"Unable to register cu|This TensorFlow binary is optimized|rebuild TensorFlow|"
    r"AVX2 FMA|cpu_feature_guard|An NVIDIA GPU may be present|Falling back to cpu|"
    r"Unable to initialize backend 'cuda'|failed call to cuInit"
)


@contextlib.contextmanager
def quiet_startup(verbose: bool = False) -> Iterator[None]:
    """Hides TensorFlow's and JAX's C++ start-up lines (CUDA probing on a CPU machine,
    oneDNN notes) written to the process's stderr while the block runs; every other line
    is passed on. ``verbose`` passes everything."""
    if verbose:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            for line in capture.read().decode("utf-8", "replace").splitlines(keepends=True):
                if not _NOISE.search(line):
                    sys.stderr.write(line)
            sys.stderr.flush()


class _DropKnownNoise(logging.Filter):
    """Drops log lines that say nothing about the user's run: gin's ``ERROR Path not found:
    runner/base.gin`` (an ``include`` is first tried relative to the working folder, then
    found on the search path) and seqio's advice on caching, sequence lengths and metric
    loggers that does not apply to prompt tuning's small in-memory tasks."""

    PREFIXES = (
        "Path not found",
        "Using an uncached FunctionDataset",
        "Given sequence lengths are longer than necessary",
        "'logger_cls' is empty",
    )

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.PREFIXES)


def _plot(args: argparse.Namespace) -> int:
    from mpt_jax.runner.plotting import plot_learning_curves

    try:
        path = plot_learning_curves(args.model_dir, args.output)
    except (FileNotFoundError, ValueError) as e:
        print(f"mpt-jax plot: {e}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


def _friendly(e: BaseException) -> str | None:
    """A one-paragraph message for errors a user's input causes deep in the data pipeline."""
    text = str(e)
    match = re.search(r"Feature (\w+) of (\S+) is longer than its maximum length (\d+)", text)
    if match:
        feature, task, limit = match.groups()
        length = re.search(r"length:\]?\s*\[?(\d+)", text)
        return (
            f"an example of task {task} has {feature} of "
            f"{length.group(1) + ' tokens' if length else 'more tokens'} > {limit} "
            f"(TASK_FEATURE_LENGTHS['{'inputs' if feature == 'inputs' else 'targets'}']): raise "
            f"--gin.TASK_FEATURE_LENGTHS, or cut such examples with a logged count: "
            "--gin.length_policy.truncation=\"'truncate'\""
        )
    return None


def user_errors() -> dict[type[BaseException], int]:
    """The exceptions that refuse a user's configuration, files or checkpoints with a message
    naming the value (no traceback needed), with their exit status. Bare ``ValueError`` /
    ``TypeError`` are not among them: outside these classes they may be bugs."""
    from mpt_jax.data.task_ids import TaskIndexError
    from mpt_jax.errors import BindingError
    from mpt_jax.runner.evaluation import InputFileError
    from mpt_jax.runner.preflight import PreflightError
    from mpt_jax.tasks.files import FileTaskError
    from mpt_jax.training.actions import NonFiniteError
    from mpt_jax.training.checkpoints import CheckpointError  # IdentityError, unreadable ones

    refusals = (UsageError, PreflightError, TaskIndexError, CheckpointError, InputFileError,
                FileTaskError, BindingError)  # fmt: skip
    return {**dict.fromkeys(refusals, 2), NonFiniteError: 1}


def _refusal(job: str, e: BaseException) -> int | None:
    """Prints a known error as ``mpt-jax <job>: error: <message>`` (its further lines
    indented) and returns its exit status; None for any other exception."""
    if (message := _friendly(e)) is not None:
        print(f"mpt-jax {job}: error: {message}", file=sys.stderr)
        return 2
    status = next((s for cls, s in user_errors().items() if isinstance(e, cls)), None)
    if status is None:
        return None
    first, *rest = str(e).strip().splitlines() or [type(e).__name__]
    # gin appends "In call to configurable 'infer' (<function infer at 0x…>)": not the user's
    rest = [line for line in rest if not line.strip().startswith("In call to configurable")]
    print(f"mpt-jax {job}: error: {first}", file=sys.stderr)
    for line in rest:
        print(f"  {line.strip()}", file=sys.stderr)
    return status


def main(argv: Sequence[str] | None = None) -> int:
    """The ``mpt-jax`` entry point; returns the exit status."""
    started = time.perf_counter()
    argv = list(sys.argv[1:] if argv is None else argv)
    # Our progress at INFO; the libraries' (orbax, absl, seqio) only from WARNING up.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("mpt_jax").setLevel(logging.INFO)
    for logger in (logging.getLogger(), logging.getLogger("absl")):
        if not any(isinstance(f, _DropKnownNoise) for f in logger.filters):
            logger.addFilter(_DropKnownNoise())
    log = logging.getLogger("mpt_jax")
    try:
        args, bindings = parse_args(argv)
    except HelpRequested as e:
        print(e)
        return 0
    except UsageError as e:
        print(f"mpt-jax: {e}", file=sys.stderr)
        return 2
    if args.job == "plot":
        return _plot(args)
    if args.job == "export-prompts" and not args.gin_file:
        args.gin_file = ["runner/base.gin"]  # the prompt comes from the checkpoint, any stage
    from mpt_jax.runner import preflight

    paths = search_paths(args.gin_search_paths)
    try:  # the first pass: no JAX, no TensorFlow, no data (well under a second)
        parsed = preflight.parse(args.gin_file, bindings, paths)
        input_file = parsed.value("infer.input_file") if args.job == "infer" else None
        mixture = parsed.macro("MIXTURE")
        needs_mixture = args.job in ("train", "eval") or (args.job == "infer" and not input_file)
        if mixture is not None and mixture.value == preflight.REQUIRED and not needs_mixture:
            # gin still wants a value for the jobs' MIXTURE parameter, which this job ignores
            bindings = [*bindings, f"MIXTURE = {str(input_file or 'unused')!r}"]
            parsed = preflight.parse(args.gin_file, bindings, paths)
        preflight.check(parsed, args.job, task_modules=args.task_module)
    except SyntaxError as e:  # gin's parser: a value that is not gin syntax
        quoted = "needs gin's quotes" in str(e)
        hint = "" if quoted or "parse" not in str(e) else " (strings need quotes: 'like this')"
        print(f"mpt-jax {args.job}: gin syntax error: {e}{hint}", file=sys.stderr)
        return 2
    except preflight.PreflightError as e:
        print(f"mpt-jax {args.job}: the configuration cannot run:", file=sys.stderr)
        for line in str(e).splitlines():
            print(f"  {line}", file=sys.stderr)
        print(f"  (found in {time.perf_counter() - started:.2f} s; "
              f"mpt-jax {args.job} --help shows what it needs)", file=sys.stderr)  # fmt: skip
        return 2
    try:
        with quiet_startup(args.verbose):
            module_name, fn_name = JOBS[args.job]
            module = importlib.import_module(module_name)
            import_task_modules(args.task_module)
            configure(args.gin_file, bindings, paths)
            from mpt_jax.tasks.files import register_file_tasks

            register_file_tasks()
            check_tasks(args.job)
    except (UsageError, preflight.PreflightError) as e:
        print(f"mpt-jax: {e}", file=sys.stderr)
        return 2
    except (ValueError, KeyError, TypeError, SyntaxError, FileNotFoundError) as e:
        status = _refusal(args.job, e)  # an own task's file refused while registering
        if status is None:
            print(f"mpt-jax: gin configuration error: {e}", file=sys.stderr)  # how gin reports
        return 2
    from mpt_jax import compile_cache

    cache_dir = args.compilation_cache_dir
    cache = compile_cache.enable(compile_cache.default_dir() if cache_dir is None else cache_dir)
    log.info("compilation cache: %s", cache or "off")
    try:
        with quiet_startup(args.verbose):
            import jax

            jax.devices()  # the backend starts here, its CUDA probing hidden
        getattr(module, fn_name)()
    except Exception as e:
        status = None if args.traceback else _refusal(args.job, e)
        if status is None:
            raise
        return status
    return 0


def console_main() -> None:
    """The ``mpt-jax`` console script (and ``python -m mpt_jax.cli``): :func:`main`, then exit.

    A job stopped by an error leaves the process with ``os._exit`` (output flushed): a
    TensorFlow input pipeline interrupted by an exception (a record refused inside a
    seqio preprocessor, say) can deadlock in its iterator's destructor at interpreter
    shutdown (``MapAndBatchDatasetOp::Dataset::Iterator::~Iterator``, the main thread
    holding the GIL its workers wait for), so the refused run printed its message and
    never exited. A run that ends normally exits as usual.
    """
    try:
        status = main()
    except Exception:  # --traceback, or an error mpt-jax does not know: print it, then exit
        traceback.print_exc()
        status = 1
    if status != 0 and "tensorflow" in sys.modules:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    sys.exit(status)


if __name__ == "__main__":
    console_main()
