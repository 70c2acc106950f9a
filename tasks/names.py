"""The names importing ``mpt_jax.tasks`` registers, kept in ``registered_names.txt``.

``mpt-jax`` checks a command's task or mixture name against that file before it imports
seqio and TensorFlow (``runner.preflight.task_name_errors``), so a misspelled name stops in
a fraction of a second instead of after TensorFlow's start-up. The file must equal what
registration produces; after adding or renaming a shipped task, rewrite it::

    python -m mpt_jax.tasks.names           # rewrites tasks/registered_names.txt
    python -m mpt_jax.tasks.names --check   # exit status 1 and the difference if stale

(``tests/test_task_names.py`` runs the check.)
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import seqio

import mpt_jax.tasks  # noqa: F401  (registers the shipped tasks)
from mpt_jax.runner.preflight import TASK_NAMES_FILE

PATH = os.path.join(os.path.dirname(__file__), TASK_NAMES_FILE)
HEADER = (
    "# The seqio tasks and mixtures importing mpt_jax.tasks registers, one per line.\n"
    "# Written by `python -m mpt_jax.tasks.names`; read by mpt-jax's preflight.\n"
)


def registered() -> list[str]:
    """Every task and mixture name in seqio's registries, sorted. In a fresh process this
    is what the shipped modules register."""
    return sorted({*seqio.TaskRegistry.names(), *seqio.MixtureRegistry.names()})


def written(path: str = PATH) -> list[str]:
    """The names in ``path`` (comments skipped)."""
    with open(path) as f:
        return [n for line in f if (n := line.strip()) and not n.startswith("#")]


def difference(names: Sequence[str], listed: Sequence[str]) -> tuple[list[str], list[str]]:
    """(registered but not listed, listed but not registered), each sorted."""
    return sorted(set(names) - set(listed)), sorted(set(listed) - set(names))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args(argv)
    names = registered()
    if not args.check:
        with open(PATH, "w") as f:
            f.write(HEADER + "".join(f"{n}\n" for n in names))
        print(f"{PATH}: {len(names)} names")
        return 0
    missing, stale = difference(names, written() if os.path.isfile(PATH) else [])
    if missing or stale:
        print(
            f"{PATH} is out of date: registered but not listed {missing[:20]} "
            f"({len(missing)}), listed but not registered {stale[:20]} ({len(stale)}); "
            "rewrite it with python -m mpt_jax.tasks.names",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
