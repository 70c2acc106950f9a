"""``tasks/registered_names.txt`` equals what importing ``mpt_jax.tasks`` registers, so the
preflight's name check (before seqio and TensorFlow) agrees with seqio's registry."""

import subprocess
import sys

from mpt_jax.runner import preflight


def test_listed_names_equal_a_fresh_process_registry(tmp_path):
    # A fresh process: this one's registry may hold tasks other tests registered. Run from
    # an empty folder: `python -m` puts the working folder first on sys.path, and the
    # checkout's mpt_jax/ (without tasks/) would shadow an installed package.
    result = subprocess.run([sys.executable, "-m", "mpt_jax.tasks.names", "--check"],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "mpt_embedded_source" in preflight.shipped_task_names()
    assert "mpt_glue_rte_16shot" in preflight.shipped_task_names()


def test_difference_names_both_directions():
    from mpt_jax.tasks import names

    assert names.difference(["a", "b", "c"], ["b", "c", "d"]) == (["a"], ["d"])
    assert names.difference(["a"], ["a"]) == ([], [])
