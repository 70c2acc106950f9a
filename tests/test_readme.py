"""The README's set-up commands are the project's contract: CI runs the second one verbatim."""

import pathlib
import re

import numpy as np
from flax import linen as nn

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```(?:bash|sh)\n(.*?)```", text, flags=re.S)
    return [b.strip() for b in blocks]


def test_readme_opens_with_the_two_setup_commands():
    commands = _readme_commands()
    assert len(commands) >= 2, "README must open with two ```bash blocks (run, test)"
    run_cmd, test_cmd = commands[0], commands[1]
    assert "pip install ." in run_cmd and "mpt-jax demo" in run_cmd, run_cmd
    assert 'pip install ".[test]"' in test_cmd and "pytest" in test_cmd, test_cmd


def test_ci_runs_exactly_the_readme_test_command():
    test_cmd = _readme_commands()[1]
    ci_lines = [
        line.strip()
        for line in (ROOT / ".ci" / "run").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert test_cmd in ci_lines, f"{test_cmd!r} not found in .ci/run lines {ci_lines!r}"


def test_changelog_has_an_unreleased_section():
    assert "## [Unreleased]" in (ROOT / "CHANGELOG.md").read_text()


def test_readme_python_snippets_run(tmp_path, monkeypatch):
    """Every ```python block of the README runs as written (in a scratch folder: the
    own-tasks block writes data files); the library tour's prompt is MPT's formula."""
    text = (ROOT / "README.md").read_text()
    snippets = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert snippets, "the README shows no python snippet"
    monkeypatch.chdir(tmp_path)
    tours = []
    for snippet in snippets:
        namespace: dict = {}
        exec(compile(snippet, "README.md", "exec"), namespace)
        if "prompt" in namespace and "gen" in namespace:
            tours.append(namespace)
    assert len(tours) == 1, "the library tour (gen, params, prompt) is missing"
    prompt, params = tours[0]["prompt"], tours[0]["params"]["params"]
    # The snippet's prompt is MPT's formula: shared ∘ (U_k V_k) for each example's task.
    p = {k: np.asarray(v) for k, v in nn.unbox(params).items()}
    ids = np.array([0, 3, 1, 1])
    expected = p["shared"][None] * np.einsum(
        "blr,brd->bld", p["task_cols"][ids], p["task_rows"][ids]
    )
    np.testing.assert_allclose(prompt, expected, rtol=1e-5, atol=1e-6)
