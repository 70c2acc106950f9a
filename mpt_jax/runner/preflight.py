"""Checks of a command's gin configuration that run before JAX, TensorFlow or data start.

``mpt-jax`` parses its gin files and ``--gin.NAME=VALUE`` bindings twice: first here,
with gin's own parser but without importing a single configurable (no JAX, no
TensorFlow), then for real. This first pass stops a command in well under a second on
the mistakes that otherwise surface 15-60 s later as a bare ``TypeError``:

- a required macro that nothing sets (``MODEL_DIR = %gin.REQUIRED`` in ``base.gin``);
- a value whose type disagrees with the parameter's annotation
  (``train_loop.num_steps = 'twenty'``, ``train.batch_size = 2.5``,
  ``PromptRecipe.learning_rate = '0.3'``);
- a file or folder a binding names that does not exist (backbone checkpoint, teacher and
  source runs, a run to evaluate, a sentencepiece model, an own task's data files, an
  ``infer.input_file``);
- a task or mixture name that is neither shipped (``tasks/registered_names.txt``, what
  importing ``mpt_jax.tasks`` registers) nor an own task of ``file_tasks``, with the
  nearest names. With ``--task_module`` or a gin ``import`` of another package, names are
  checked after those modules are imported (TensorFlow's start-up, ~10 s).

Annotations are read from the source of the configurables (``ast``, nothing imported),
so a new ``@gin.configurable`` parameter is checked without being listed here. Every
message names the binding, where it was set, the value and what was expected.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import glob
import os
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from gin import config_parser

#: Packages whose ``@gin.configurable`` functions and classes are type-checked.
SOURCE_ROOTS = ("mpt_jax", "mpt_jax.tasks")


class PreflightError(ValueError):
    """One or more mistakes in a command's configuration (each on its own line)."""


# -- parsing without importing -------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Macro:
    """A ``%NAME`` reference inside a value."""

    name: str


@dataclasses.dataclass(frozen=True)
class Reference:
    """An ``@name`` / ``@name()`` reference inside a value (never type-checked)."""

    name: str
    evaluate: bool


class _Delegate(config_parser.ParserDelegate):
    def configurable_reference(self, scoped_configurable_name, evaluate):
        return Reference(scoped_configurable_name, evaluate)

    def macro(self, macro_name):
        return Macro(macro_name)


REQUIRED = Macro("gin.REQUIRED")


@dataclasses.dataclass(frozen=True)
class Binding:
    """One ``[scope/]selector.arg = value`` (``arg`` empty for a macro), and where."""

    scope: str
    selector: str
    arg: str
    value: Any
    where: str

    @property
    def name(self) -> str:
        base = f"{self.selector}.{self.arg}" if self.arg else self.selector
        return f"{self.scope}/{base}" if self.scope else base


@dataclasses.dataclass
class ParsedConfig:
    """The bindings of a stack of gin files and command-line bindings, later ones winning."""

    bindings: dict[tuple[str, str, str], Binding] = dataclasses.field(default_factory=dict)
    imports: list[str] = dataclasses.field(default_factory=list)

    def macro(self, name: str) -> Binding | None:
        return self.bindings.get(("", name, ""))

    def get(self, name: str) -> Binding | None:
        """The binding of ``selector.arg`` (any scope's last binding if no unscoped one)."""
        selector, _, arg = name.rpartition(".")
        found = self.bindings.get(("", selector, arg))
        if found is None:
            scoped = [b for k, b in self.bindings.items() if k[1:] == (selector, arg)]
            found = scoped[-1] if scoped else None
        return found

    def resolve(self, value: Any, _seen: frozenset[str] = frozenset()) -> Any:
        """``value`` with every ``%MACRO`` replaced by its value (``REQUIRED`` if unset)."""
        if isinstance(value, Macro):
            if value == REQUIRED or value.name in _seen:
                return value
            bound = self.macro(value.name)
            return value if bound is None else self.resolve(bound.value, _seen | {value.name})
        if isinstance(value, list | tuple):
            return type(value)(self.resolve(v, _seen) for v in value)
        if isinstance(value, dict):
            return {k: self.resolve(v, _seen) for k, v in value.items()}
        return value

    def value(self, name: str, default: Any = None) -> Any:
        binding = self.get(name)
        return default if binding is None else self.resolve(binding.value)


def resolve_file(name: str, paths: Sequence[str]) -> str | None:
    """``name`` itself when it is a file, else the first ``<path>/<name>`` that is; else None."""
    if os.path.isfile(name):
        return name
    for path in paths:
        candidate = os.path.join(path, name)
        if os.path.isfile(candidate):
            return candidate
    return None


def parse(
    gin_files: Sequence[str], bindings: Sequence[str], search_paths: Sequence[str]
) -> ParsedConfig:
    """Parses files (following ``include``) and then bindings, as gin would, importing
    nothing. A file that cannot be found is an error naming it and the folders searched."""
    config = ParsedConfig()

    def feed(text: str, where: str, origin: str | None, depth: int = 0) -> None:
        if depth > 20:
            raise PreflightError(f"gin includes nest deeper than 20 levels at {where}")
        for statement in config_parser.ConfigParser(text, _Delegate()):
            line = f"{where}:{statement.location.line_num}" if origin else where
            if isinstance(statement, config_parser.IncludeStatement):
                found = resolve_file(statement.filename, search_paths)
                if found is None and origin:
                    found = resolve_file(
                        os.path.join(os.path.dirname(origin), statement.filename), ()
                    )
                if found is None:
                    raise PreflightError(
                        f"{line}: included gin file {statement.filename!r} not found "
                        f"(searched ., {', '.join(search_paths)})"
                    )
                with open(found) as f:
                    feed(f.read(), statement.filename, found, depth + 1)
            elif isinstance(statement, config_parser.ImportStatement):
                config.imports.append(statement.module)
            elif isinstance(statement, config_parser.BindingStatement):
                key = (statement.scope, statement.selector, statement.arg_name)
                config.bindings.pop(key, None)  # re-insert: the last binding is the latest
                config.bindings[key] = Binding(*key, statement.value, line)

    for name in gin_files:
        found = resolve_file(name, search_paths)
        if found is None:
            raise PreflightError(
                f"gin file {name!r} not found (searched ., {', '.join(search_paths)})"
            )
        with open(found) as f:
            feed(f.read(), name, found)
    for text in bindings:
        flag = f"--gin.{text.replace(' = ', '=', 1)}"
        try:
            feed(text, flag, None)
        except SyntaxError as err:
            name, _, value = text.partition("=")
            name, value = name.strip(), value.strip()
            reason = str(err).splitlines()[0] if str(err).strip() else ""
            reason = re.sub(r"\s*\(line \d+\)", "", reason).strip().rstrip(".").lower()
            if not reason or reason.startswith("malformed node"):
                reason = "not a number, string, list or reference"  # ast's words name nothing
            raise SyntaxError(
                f"{flag}: gin cannot read {value!r} ({reason}); if it is a string, it needs "
                f"gin's quotes inside the shell's: --gin.{name}=\"'{value}'\""
            ) from None
    return config


# -- annotations of the configurables, read from source --------------------------------------


def _is_configurable(decorator: ast.expr) -> bool:
    target = decorator.func if isinstance(decorator, ast.Call) else decorator
    return isinstance(target, ast.Attribute) and target.attr == "configurable"


def _configurable_name(decorator: ast.expr, default: str) -> str:
    if isinstance(decorator, ast.Call) and decorator.args:
        first = decorator.args[0]
        if isinstance(first, ast.Constant) and isinstance(first.value, str):
            return first.value
    return default


def _parameters_of(node: ast.FunctionDef | ast.ClassDef) -> dict[str, ast.expr | None]:
    if isinstance(node, ast.FunctionDef):
        args = node.args
        every = [*args.posonlyargs, *args.args, *args.kwonlyargs]
        return {a.arg: a.annotation for a in every if a.arg not in ("self", "cls")}
    params: dict[str, ast.expr | None] = {}
    for item in node.body:
        if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
            params[item.target.id] = item.annotation
        elif isinstance(item, ast.FunctionDef) and item.name == "__init__":
            params.update(_parameters_of(item))
    return params


def _package_dirs() -> dict[str, str]:
    import importlib.util

    dirs = {}
    for package in SOURCE_ROOTS:
        if package == "mpt_jax":
            spec = importlib.util.find_spec(package)
            dirs[package] = os.path.dirname(spec.origin)
        else:  # mpt_jax.tasks may live outside mpt_jax/ (the ``tasks/`` folder)
            spec = importlib.util.find_spec(package)
            if spec is not None and spec.origin:
                dirs[package] = os.path.dirname(spec.origin)
    return dirs


@dataclasses.dataclass(frozen=True)
class Configurable:
    """What the source says about one ``@gin.configurable``."""

    module: str
    params: dict[str, ast.expr | None]
    closed: bool  # a function without ``**kwargs``: its parameter list is complete
    denylist: frozenset[str]


def _denylist(decorator: ast.expr) -> frozenset[str]:
    if isinstance(decorator, ast.Call):
        for keyword in decorator.keywords:
            if keyword.arg == "denylist" and isinstance(keyword.value, ast.List | ast.Tuple):
                return frozenset(e.value for e in keyword.value.elts if isinstance(e, ast.Constant))
    return frozenset()


@functools.cache
def configurable_parameters() -> dict[str, list[Configurable]]:
    """``{configurable name: [Configurable]}`` for every ``@gin.configurable`` in the
    package's source (several modules may share a name)."""
    found: dict[str, list[Configurable]] = {}
    seen_files: set[str] = set()
    for package, directory in _package_dirs().items():
        for path in sorted(glob.glob(os.path.join(directory, "**", "*.py"), recursive=True)):
            real = os.path.realpath(path)
            if real in seen_files or f"{os.sep}t5x_ext{os.sep}" in path:
                continue
            seen_files.add(real)
            rel = os.path.relpath(path, directory)[: -len(".py")].replace(os.sep, ".")
            module = package if rel == "__init__" else f"{package}.{rel.removesuffix('.__init__')}"
            with open(path, encoding="utf-8") as f:
                try:
                    tree = ast.parse(f.read())
                except SyntaxError:
                    continue
            for node in tree.body:
                if not isinstance(node, ast.FunctionDef | ast.ClassDef):
                    continue
                for decorator in node.decorator_list:
                    if _is_configurable(decorator):
                        name = _configurable_name(decorator, node.name)
                        closed = isinstance(node, ast.FunctionDef) and node.args.kwarg is None
                        found.setdefault(name, []).append(
                            Configurable(
                                module, _parameters_of(node), closed, _denylist(decorator)
                            )  # fmt: skip
                        )
    return found


def _candidates(selector: str) -> list[Configurable]:
    prefix, _, short = selector.rpartition(".")
    candidates = configurable_parameters().get(short, [])
    if prefix:
        narrowed = [c for c in candidates if c.module.endswith(prefix) or prefix.endswith(c.module)]
        candidates = narrowed or candidates
    return candidates


def _annotation_of(selector: str, arg: str) -> tuple[bool, ast.expr | None]:
    """``(known, annotation)`` for ``selector.arg``; unknown when no single definition."""
    candidates = [c for c in _candidates(selector) if arg in c.params]
    annotations = {ast.dump(c.params[arg]) if c.params[arg] is not None else None
                   for c in candidates}  # fmt: skip
    if len(annotations) != 1 or None in annotations:
        return False, None
    return True, candidates[0].params[arg]


def parameter_error(binding: Binding) -> str | None:
    """A message when ``binding`` names a parameter its configurable does not have, or one
    the job passes itself (the configurable's ``denylist``); None when fine or unknown."""
    candidates = _candidates(binding.selector)
    if not candidates:
        # A configurable of another library (seqio, T5X) is gin's to check; a near-miss of
        # one of ours is a typo worth naming now.
        import difflib

        short = binding.selector.rpartition(".")[2]
        close = difflib.get_close_matches(short, list(configurable_parameters()), n=3, cutoff=0.8)
        if close:
            return (
                f"{binding.name} (set at {binding.where}): no configurable named "
                f"{binding.selector!r}{suggest(short, close)}"
            )
        return None
    if len(candidates) != 1:
        return None
    (c,) = candidates
    if binding.arg in c.denylist:
        return (
            f"{binding.name} (set at {binding.where}): {binding.arg!r} is passed by the job "
            f"itself and cannot be bound in gin ({binding.selector}'s denylist)"
        )
    if c.closed and binding.arg not in c.params:
        return (
            f"{binding.name} (set at {binding.where}): {binding.selector} has no parameter "
            f"{binding.arg!r}{suggest(binding.arg, c.params)}"
        )
    return None


# -- type checks -----------------------------------------------------------------------------

_SCALARS: dict[str, tuple[type, ...]] = {
    "int": (int,),
    "float": (int, float),
    "bool": (bool,),
    "str": (str,),
    "bytes": (bytes,),
    "None": (type(None),),
}
_SEQUENCES = {"Sequence", "list", "tuple", "List", "Tuple", "Iterable", "Collection"}
_MAPPINGS = {"Mapping", "dict", "Dict", "MutableMapping"}
_CALLABLE_HINTS = ("Callable", "Schedule", "Fn", "Function")


def _union_members(node: ast.expr) -> list[ast.expr]:
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return _union_members(node.left) + _union_members(node.right)
    if isinstance(node, ast.Subscript) and _tail(node.value) in ("Optional", "Union"):
        inner = node.slice
        members = list(inner.elts) if isinstance(inner, ast.Tuple) else [inner]
        if _tail(node.value) == "Optional":
            members.append(ast.Constant(None))
        return [m for member in members for m in _union_members(member)]
    return [node]


def _tail(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Constant) and node.value is None:
        return "None"
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value  # a string annotation: its text
    return ""


def _accepts(member: ast.expr, value: Any) -> bool | None:
    """Whether one union member accepts a literal ``value``; None: cannot tell."""
    if isinstance(member, ast.Subscript):
        outer = _tail(member.value)
        if outer in _SEQUENCES:
            return isinstance(value, list | tuple)
        if outer in _MAPPINGS:
            return isinstance(value, dict)
        if outer == "Literal":
            options = member.slice.elts if isinstance(member.slice, ast.Tuple) else [member.slice]
            return any(isinstance(o, ast.Constant) and o.value == value for o in options)
        if outer in ("Callable", "type"):
            return False
        return None
    name = _tail(member)
    if name in _SCALARS:
        if name in ("int", "float") and isinstance(value, bool):
            return False
        return isinstance(value, _SCALARS[name])
    if name in _SEQUENCES:
        return isinstance(value, list | tuple)
    if name in _MAPPINGS:
        return isinstance(value, dict)
    if any(name.endswith(h) for h in _CALLABLE_HINTS):
        return False  # a literal is never a function or a schedule
    return None


def describe(annotation: ast.expr) -> str:
    return ast.unparse(annotation)


def type_error(binding: Binding, value: Any, annotation: ast.expr) -> str | None:
    """A message when the literal ``value`` cannot be of type ``annotation``, else None."""
    if isinstance(value, Macro | Reference):
        return None
    verdicts = [_accepts(m, value) for m in _union_members(annotation)]
    if any(v is None or v for v in verdicts):
        return None
    hint = ""
    if isinstance(value, str):
        try:
            number = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            number = None
        if isinstance(number, int | float) and not isinstance(number, bool):
            hint = f"; write the number without quotes ({binding.name}={value})"
        elif value in ("True", "False"):
            hint = f"; write {value} without quotes"
    elif isinstance(value, float) and value.is_integer():
        hint = f"; write {int(value)}"
    return (
        f"{binding.name} = {value!r} (set at {binding.where}): expected "
        f"{describe(annotation)}, got {type(value).__name__}{hint}"
    )


# -- the checks ------------------------------------------------------------------------------

#: Bindings whose value is a path that must exist before a job starts: name -> what it is.
PATH_BINDINGS = {
    "load_source.model_dir": "the earlier run a stage starts from (TEACHER_DIR, SOURCE_DIR)",
    "t5_vocabulary.sentencepiece_model_path": "the sentencepiece model",
    "infer.input_file": "the jsonl of inputs to infer on",
}
#: The run folder each job reads (must exist) — the train job creates its own.
READS_MODEL_DIR = {
    "eval": "evaluate.model_dir",
    "infer": "infer.model_dir",
    "export-prompts": "export_prompts.model_dir",
}
_REMOTE = ("gs://", "s3://", "http://", "https://", "/cns/")


def _check_path(name: str, what: str, value: Any, where: str) -> str | None:
    if not isinstance(value, str) or value.startswith(_REMOTE):
        return None
    if not glob.glob(value) and not os.path.exists(value):
        return f"{name} = {value!r} (set at {where}): {what} does not exist"
    return None


def _backbone_error(value: Any, where: str) -> str | None:
    if not isinstance(value, str) or value in ("random", "embedded") or value.startswith("random:"):
        return None
    path = value.removeprefix("hf:")
    if path.startswith(_REMOTE) or os.path.exists(path):
        return None
    return f"load_backbone.checkpoint = {value!r} (set at {where}): {path!r} does not exist"


_MACRO_EXAMPLES = {
    "MODEL_DIR": "runs/my_run",
    "MIXTURE": "my_task_or_mixture",
    "TEACHER_DIR": "runs/teachers",
    "SOURCE_DIR": "runs/source",
}


#: The job function each command calls; a binding of another command's function is not
#: read by this one (export-prompts needs no MIXTURE).
JOB_SELECTORS = {"train": "train", "eval": "evaluate", "infer": "infer",
                 "export-prompts": "export_prompts"}  # fmt: skip


def _references(value: Any) -> set[str]:
    """The scoped configurable names ``value`` refers to (``@scope/name`` → ``scope/name``)."""
    if isinstance(value, Reference):
        return {value.name}
    if isinstance(value, list | tuple):
        return set().union(*(_references(v) for v in value)) if value else set()
    if isinstance(value, dict):
        return set().union(*(_references(v) for v in value.values())) if value else set()
    return set()


def _referenced_scopes(config: ParsedConfig) -> set[str]:
    """``scope/selector`` of every scoped configurable some binding refers to."""
    found: set[str] = set()
    for b in config.bindings.values():
        found |= {r for r in _references(b.value) if "/" in r}
    return found


def _same_configurable(reference: str, binding: Binding) -> bool:
    """``@scope/name`` names ``binding``'s configurable (``name`` in full or its short form)."""
    scope, _, name = reference.rpartition("/")
    if scope != binding.scope:
        return False
    short = lambda n: n.rpartition(".")[2]
    return name == binding.selector or short(name) == short(binding.selector)


def _read_by(job: str | None, binding: Binding, config: ParsedConfig | None = None) -> bool:
    if binding.scope and config is not None:
        # ``teachers/stages.load_source.model_dir`` is read only if something still refers to
        # ``@teachers/stages.load_source`` (``stages.source.teachers = None`` drops it).
        if not any(_same_configurable(r, binding) for r in _referenced_scopes(config)):
            return False
    if job == "export-prompts":  # reads the checkpoint only: no stage, data or backbone
        return binding.selector.rpartition(".")[2] == "export_prompts"
    others = {s for j, s in JOB_SELECTORS.items() if j != job} if job in JOB_SELECTORS else ()
    return binding.selector.rpartition(".")[2] not in others


def _file_task_errors(tasks: Mapping[str, Any], where: str) -> list[str]:
    """Own tasks' files (``file_tasks.tasks``): each pattern matches a file, none is empty."""
    errors = []
    for name, spec in tasks.items():
        if not isinstance(spec, dict):
            continue
        for split in ("train", "validation", "test"):
            patterns = spec.get(split) or []
            for pattern in [patterns] if isinstance(patterns, str) else patterns:
                if not isinstance(pattern, str) or pattern.startswith(_REMOTE):
                    continue
                matched = sorted(glob.glob(pattern))
                key = f"file_tasks.tasks[{name!r}][{split!r}] (set at {where})"
                if not matched:
                    errors.append(f"{key}: no file matches {pattern!r}{relative_to_cwd(pattern)}")
                for path in matched:
                    if not path.endswith(".gz") and not _has_a_line(path):
                        errors.append(f"{key}: {path} holds no record (an empty file)")
    return errors


def relative_to_cwd(path: str) -> str:
    """``" (relative paths are read from <cwd>)"`` for a relative ``path``, else ``""``."""
    if os.path.isabs(path) or "://" in path:
        return ""
    return f" (relative paths are read from the folder mpt-jax runs in, {os.getcwd()})"


def _has_a_line(path: str) -> bool:
    with open(path, "rb") as f:
        return any(line.strip() for line in f)


def _macro_names(value: Any) -> set[str]:
    """The ``%MACRO`` names ``value`` uses directly (inside lists, tuples and dicts)."""
    if isinstance(value, Macro):
        return {value.name}
    if isinstance(value, list | tuple):
        return set().union(*map(_macro_names, value)) if value else set()
    if isinstance(value, dict):
        return set().union(*map(_macro_names, value.values())) if value else set()
    return set()


def required_macros(config: ParsedConfig, job: str | None = None) -> list[str]:
    """Messages for every macro still ``%gin.REQUIRED`` that a binding the ``job`` reads
    uses (the other commands' job functions excepted)."""
    used: set[str] = set()
    todo = [b.value for b in config.bindings.values() if b.arg and _read_by(job, b, config)]
    while todo:  # follow macros whose values name further macros
        for name in _macro_names(todo.pop()) - used:
            used.add(name)
            bound = config.macro(name)
            if bound is not None:
                todo.append(bound.value)
    messages = []
    for name in sorted(used):
        bound = config.macro(name)
        if bound is not None and bound.value == REQUIRED:
            example = _MACRO_EXAMPLES.get(name, "...")
            messages.append(
                f"the gin macro {name} is required (declared at {bound.where}) and not set: "
                f"add --gin.{name}=\"'{example}'\" (a string in quotes)"
            )
    return messages


def unread_macros(config: ParsedConfig) -> list[str]:
    """Messages for macros set on the command line that no binding reads (a misspelled
    ``--gin.BACKBONE_CHECKPONT=…`` would otherwise be a new macro, silently unused)."""
    read = {m for b in config.bindings.values() for m in _macro_names(b.value)}
    stage_missing = not read & set(_MACRO_EXAMPLES)  # runner/base.gin reads MODEL_DIR, MIXTURE
    return [
        f"macro {b.selector!r} (set at {b.where}) is read by no gin file{suggest(b.selector, read)}"
        + (STAGE_HINT if stage_missing and b.selector in _MACRO_EXAMPLES else "")
        for b in config.bindings.values()
        if not b.arg and not b.scope and b.where.startswith("--") and b.selector not in read
    ]


#: Added when a run's macros are read by no file: the stage gin file was left out.
STAGE_HINT = (
    "; no stage gin file reads it: add one, e.g. --gin_file=runner/teacher.gin (or "
    "source.gin, target.gin, prompt_tuning.gin, spot.gin; `mpt-jax train --help` lists them)"
)


def _with_origin(config: ParsedConfig, binding: Binding) -> Binding:
    """``binding`` whose ``where`` also names where its macro's value was given."""
    if isinstance(binding.value, Macro) and config.macro(binding.value.name):
        macro = config.macro(binding.value.name)
        return dataclasses.replace(
            binding, where=f"{binding.where} from {binding.value.name} at {macro.where}"
        )
    return binding


def check(
    config: ParsedConfig, job: str, extra: Iterable[str] = (), task_modules: Sequence[str] = ()
) -> None:
    """Raises :class:`PreflightError` listing every mistake found, one per line.

    Args:
      config: what :func:`parse` returned.
      job: the ``mpt-jax`` command (``train``, ``eval``, ...), for the folders it reads.
      extra: messages found by the caller, reported together with these.
      task_modules: the command's ``--task_module`` values; with any, task names are left
        to the check after import (:func:`check_mixture_names`).
    """
    errors = list(extra)
    errors += task_name_errors(config, job, task_modules)
    errors += unread_macros(config)
    errors += required_macros(config, job)
    for binding in config.bindings.values():
        if not binding.arg or not _read_by(job, binding, config):
            continue
        value = config.resolve(binding.value)
        if value == REQUIRED:
            continue  # reported as a required macro, or gin's own message
        binding = _with_origin(config, binding)
        message = parameter_error(binding)
        if message:
            errors.append(message)
            continue
        known, annotation = _annotation_of(binding.selector, binding.arg)
        if known and annotation is not None:
            message = type_error(binding, value, annotation)
            if message:
                errors.append(message)
                continue
        short = f"{binding.selector.rpartition('.')[2]}.{binding.arg}"
        full = f"{binding.selector}.{binding.arg}"
        what = PATH_BINDINGS.get(full) or PATH_BINDINGS.get(short)
        if what:
            message = _check_path(binding.name, what, value, binding.where)
            if message:
                errors.append(message)
        if short == "file_tasks.tasks" and isinstance(value, dict):
            errors += _file_task_errors(value, binding.where)
        if short == "load_backbone.checkpoint":
            message = _backbone_error(value, binding.where)
            if message:
                errors.append(message)
    reads = READS_MODEL_DIR.get(job)
    if reads:
        binding = config.get(reads)
        value = None if binding is None else config.resolve(binding.value)
        if isinstance(value, str) and not os.path.isdir(value):
            errors.append(
                f"{reads} = {value!r} (MODEL_DIR, set at {binding.where}): no such run folder; "
                "give the MODEL_DIR of a finished `mpt-jax train`"
            )
    if errors:
        raise PreflightError("\n".join(dict.fromkeys(errors)))


def suggest(name: str, known: Iterable[str], n: int = 5) -> str:
    """``"; did you mean 'a', 'b'?"`` with the nearest known names (difflib), or ``""``."""
    import difflib

    close = difflib.get_close_matches(name, list(known), n=n, cutoff=0.6)
    return f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""


# -- task and mixture names ------------------------------------------------------------------

#: The bindings that name the task or mixture each command reads.
MIXTURE_BINDINGS = {
    "train": ("train.mixture_or_task_name", "train.eval_mixture_or_task_name"),
    "eval": ("evaluate.mixture_or_task_name",),
    "infer": ("infer.mixture_or_task_name",),
}
#: In ``mpt_jax.tasks``' folder: the names importing ``mpt_jax.tasks`` registers, one per
#: line (``python -m mpt_jax.tasks.names`` writes it; ``tests/test_task_names.py`` checks it).
TASK_NAMES_FILE = "registered_names.txt"
_OWN_TASKS_HINT = " (own tasks: file_tasks.tasks in gin; your own seqio module: --task_module)"


def shipped_task_names() -> frozenset[str] | None:
    """The shipped tasks and mixtures, read from :data:`TASK_NAMES_FILE` without importing
    seqio or TensorFlow; None when the file is missing."""
    path = os.path.join(_package_dirs().get("mpt_jax.tasks", ""), TASK_NAMES_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return frozenset(n for line in f if (n := line.strip()) and not n.startswith("#"))


def unknown_task_message(
    binding: str, value: str, known: Iterable[str], where: str | None = None
) -> str:
    """The message for a task or mixture name that nothing registers, with where it was
    set (when known) and the nearest known names."""
    at = f" (set at {where})" if where else ""
    return (
        f"{binding} = {value!r}{at}: no seqio task or mixture of that name"
        f"{suggest(value, known)}{_OWN_TASKS_HINT}"
    )


def task_name_errors(config: ParsedConfig, job: str, task_modules: Sequence[str] = ()) -> list[str]:
    """Messages for task or mixture names (:data:`MIXTURE_BINDINGS`) that are neither
    shipped nor bound in ``file_tasks``. Empty when something this pass cannot read may
    register tasks: a ``--task_module``, or a gin ``import`` outside ``mpt_jax``. Names a
    Python caller registered before (seqio already imported) count as known."""
    if task_modules or any(m.partition(".")[0] != "mpt_jax" for m in config.imports):
        return []
    if job == "infer" and config.value("infer.input_file"):
        return []  # infer reads a file of inputs; MIXTURE is a placeholder there
    shipped = shipped_task_names()
    if shipped is None:
        return []
    known = set(shipped)
    if "seqio" in sys.modules:  # a Python caller may have registered its tasks already
        seqio = sys.modules["seqio"]
        known.update(seqio.TaskRegistry.names(), seqio.MixtureRegistry.names())
    for own in ("file_tasks.tasks", "file_tasks.mixtures"):
        value = config.value(own)
        if isinstance(value, dict):
            known.update(k for k in value if isinstance(k, str))
    errors = []
    for name in MIXTURE_BINDINGS.get(job, ()):
        binding = config.get(name)
        value = None if binding is None else config.resolve(binding.value)
        if not isinstance(value, str) or value in known:
            continue
        errors.append(unknown_task_message(name, value, known, _with_origin(config, binding).where))
    return errors


def check_mixture_names(names: Mapping[str, str | None]) -> None:
    """Raises ``PreflightError`` for a task or mixture name seqio does not know, with the
    nearest registered names. ``names`` maps the binding to its value. The check after
    import (TensorFlow started): :func:`task_name_errors` covers what it can before."""
    import seqio

    import mpt_jax.tasks  # noqa: F401  (registers the project's tasks)

    known = [*seqio.TaskRegistry.names(), *seqio.MixtureRegistry.names()]
    errors = [
        unknown_task_message(binding, value, known)
        for binding, value in names.items()
        if isinstance(value, str) and value not in known
    ]
    if errors:
        raise PreflightError("\n".join(errors))
