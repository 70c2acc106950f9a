"""``mpt-jax``: the command line, configured the way T5X users expect.

::

    mpt-jax train --gin_file=runner/source.gin \
        --gin.train.model_dir="'runs/source'" --gin.train_loop.num_steps=1000
    mpt-jax eval --gin_file=runner/source.gin --gin.evaluate.model_dir="'runs/source'"
    mpt-jax export-prompts --gin.export_prompts.model_dir="'runs/source'" \
        --gin.export_prompts.output_dir="'prompts/'" --gin.export_prompts.format="'peft'"
    mpt-jax demo --gin.mpt_jax.runner.demo.main.quick=True

Flags:

- ``--gin_file`` (repeatable): a gin file, resolved against ``--gin_search_paths`` and the
  installed ``mpt_jax.configs`` folder (so ``runner/teacher.gin`` works from anywhere);
- ``--gin.NAME=VALUE`` (repeatable): one binding ``NAME = VALUE`` (VALUE in gin syntax:
  strings in quotes);
- ``--gin_bindings`` (repeatable): a binding in ``NAME = VALUE`` form (T5X's other way);
- ``--gin_search_paths`` (repeatable, comma-separated lists allowed);
- ``--compilation_cache_dir``: JAX's persistent compilation cache (default
  ``$MPT_JAX_COMPILATION_CACHE_DIR``, else ``~/.cache/mpt_jax/xla``; empty: off), so a
  later run of the same step loads it instead of compiling again.

A binding of something that does not exist is an error naming it (gin's message), and
the command exits with status 2 before any work starts.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

# TensorFlow (seqio's data pipeline) prints INFO/WARNING lines about CUDA and oneDNN at
# import; keep the command's output readable unless the user asks for them.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import gin  # noqa: E402

JOBS = {
    "train": ("mpt_jax.runner.jobs", "train"),
    "eval": ("mpt_jax.runner.jobs", "evaluate"),
    "infer": ("mpt_jax.runner.jobs", "infer"),
    "export-prompts": ("mpt_jax.runner.jobs", "export_prompts"),
    "demo": ("mpt_jax.runner.demo", "main"),
}

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


class UsageError(Exception):
    """A command line that cannot run (exit status 2)."""


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    """Splits ``--gin.NAME=VALUE`` flags off, parses the rest; returns (args, bindings)."""
    bindings, rest = [], []
    for arg in argv:
        if arg.startswith("--gin."):
            name, sep, value = arg[len("--gin.") :].partition("=")
            if not sep or not name:
                raise UsageError(f"expected --gin.NAME=VALUE, got {arg!r}")
            bindings.append(f"{name} = {value}")
        else:
            rest.append(arg)
    parser = argparse.ArgumentParser(prog="mpt-jax", description=__doc__.split("\n\n")[0])
    parser.add_argument("job", choices=sorted(JOBS), help="what to run")
    parser.add_argument("--gin_file", action="append", default=[], help="a gin file (repeatable)")
    parser.add_argument(
        "--gin_bindings", action="append", default=[], help="a binding NAME = VALUE (repeatable)"
    )
    parser.add_argument(
        "--gin_search_paths", action="append", default=[], help="folders gin files are found in"
    )
    parser.add_argument(
        "--compilation_cache_dir",
        default=None,
        help="JAX's persistent compilation cache (default $MPT_JAX_COMPILATION_CACHE_DIR, "
        "else ~/.cache/mpt_jax/xla; empty: off)",
    )
    args = parser.parse_args(rest)
    return args, [*args.gin_bindings, *bindings]


def search_paths(given: Sequence[str]) -> list[str]:
    """The folders gin files are resolved against: the given ones, then ``CONFIG_DIR``."""
    from mpt_jax.configs import CONFIG_DIR

    paths = [p for entry in given for p in entry.split(",") if p]
    return [*paths, CONFIG_DIR]


def resolve_gin_file(name: str, paths: Sequence[str]) -> str:
    """``name`` itself when it exists, else the first ``<path>/<name>``; else an error."""
    if os.path.isfile(name):
        return name
    for path in paths:
        candidate = os.path.join(path, name)
        if os.path.isfile(candidate):
            return candidate
    raise UsageError(f"gin file {name!r} not found (searched ., {', '.join(paths)})")


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


def main(argv: Sequence[str] | None = None) -> int:
    """The ``mpt-jax`` entry point; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # Our progress at INFO; the libraries' (orbax, absl, seqio) only from WARNING up.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("mpt_jax").setLevel(logging.INFO)
    try:
        args, bindings = parse_args(argv)
        module_name, fn_name = JOBS[args.job]
        module = importlib.import_module(module_name)
        paths = search_paths(args.gin_search_paths)
        configure(args.gin_file, bindings, paths)
    except UsageError as e:
        print(f"mpt-jax: {e}", file=sys.stderr)
        return 2
    except (ValueError, KeyError, TypeError, SyntaxError) as e:  # how gin reports errors
        print(f"mpt-jax: gin configuration error: {e}", file=sys.stderr)
        return 2
    from mpt_jax import compile_cache

    cache_dir = args.compilation_cache_dir
    cache = compile_cache.enable(compile_cache.default_dir() if cache_dir is None else cache_dir)
    logging.getLogger("mpt_jax").info("compilation cache: %s", cache or "off")
    getattr(module, fn_name)()
    return 0


if __name__ == "__main__":
    sys.exit(main())
