"""A training run SIGKILLed mid-step and mid-checkpoint-write resumes from its last
complete checkpoint and ends with exactly the prompt of an uninterrupted run.

Three subprocesses of ``tests/_kill_worker.py`` share one run directory:

1. a fresh run is killed while step 5 is in flight (checkpoints: 3);
2. the restart resumes at step 3, redoes 4, 5, … and is killed while orbax writes step
   9's checkpoint (its items are written, the rename into place has not happened);
3. the second restart resumes at step 6 (9 was never complete) and runs to step 12.

The uninterrupted reference run (same seeds) runs in this process while the first worker
starts. Prompt and optimizer state must be bitwise equal.
"""

import os
import shlex
import signal
import subprocess
import sys
import time

import _kill_worker as worker
import numpy as np
import pytest

from mpt_jax.training.checkpoints import CHECKPOINT_SUBDIR, Checkpointer
from mpt_jax.training.summaries import read_metrics

NUM_STEPS, EVERY = 12, 3
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "_kill_worker.py")
TIMEOUT_S = 300  # a loaded 2-core machine; a healthy worker needs well under a minute


def _start(model_dir, events, *extra):
    cmd = [sys.executable, WORKER, model_dir, "--num-steps", str(NUM_STEPS),
           "--checkpoint-every", str(EVERY), "--events", events, *extra]  # fmt: skip
    log = open(events + ".log", "a")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(events), stdout=log, stderr=subprocess.STDOUT)
    return proc, log


def _env(events):
    # The workers share a persistent compilation cache: only the first one compiles (a
    # restarted pod with a cache on disk does the same).
    return {**os.environ, "JAX_COMPILATION_CACHE_DIR": os.path.join(os.path.dirname(events), "jax"),
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
            "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}  # fmt: skip


def _kill_when_signalled(proc, signal_file, log):
    """Waits for the worker to announce that it is parked, then SIGKILLs it."""
    deadline = time.monotonic() + TIMEOUT_S
    while not os.path.exists(signal_file):
        if proc.poll() is not None:
            log.close()
            raise AssertionError(f"worker exited ({proc.returncode}) before the kill point:\n"
                                 + open(log.name).read()[-3000:])  # fmt: skip
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("worker did not reach the kill point in time")
        time.sleep(0.05)
    what = open(signal_file).read()
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    log.close()
    os.remove(signal_file)
    return what


def _events(path):
    with open(path) as f:
        lines = [line.split() for line in f.read().splitlines()]
    os.remove(path)
    return ([int(n) for kind, n in lines if kind == "step"],
            [int(n) for kind, n in lines if kind == "saved"])  # fmt: skip


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("kill")
    model_dir, events, sig = str(tmp / "run"), str(tmp / "events"), str(tmp / "signal")
    ckpt_dir = os.path.join(model_dir, CHECKPOINT_SUBDIR)
    record, procs = {}, []

    def start(*extra):
        proc, log = _start(model_dir, events, *extra)
        procs.append(proc)
        return proc, log

    def listing():
        ckpt = Checkpointer(ckpt_dir)
        try:
            return ckpt.all_steps(), sorted(os.listdir(ckpt_dir))
        finally:
            ckpt.close()

    try:
        # 1. killed mid-step 5; the reference run is computed meanwhile.
        proc, log = start("--block-after-step", "5", "--signal", sig)
        record["reference"] = worker.run(None, num_steps=NUM_STEPS, checkpoint_every=EVERY)
        record["kill_1"] = _kill_when_signalled(proc, sig, log)
        record["events_1"] = _events(events)
        record["after_1"] = listing()

        # 2. restarted, killed inside the write of checkpoint 9.
        proc, log = start("--block-in-checkpoint", "9", "--signal", sig)
        record["kill_2"] = _kill_when_signalled(proc, sig, log)
        record["events_2"] = _events(events)
        record["after_2"] = listing()

        # 3. restarted, runs to the end.
        out = str(tmp / "final.npz")
        proc, log = start("--out", out)
        assert proc.wait(timeout=TIMEOUT_S) == 0, open(log.name).read()[-3000:]
        log.close()
        record["events_3"] = _events(events)
        record["final"] = dict(np.load(out))
    finally:
        for proc in procs:  # never leave a parked worker behind when something failed
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    record["ckpt_dir"], record["model_dir"] = ckpt_dir, model_dir
    return record


@pytest.fixture(scope="module")
def signalled(runs, tmp_path_factory):
    """A run stopped by SIGINT while step 4 is in flight (checkpoint period 3), then the
    printed resume command run to the end."""
    tmp = tmp_path_factory.mktemp("signal")
    model_dir, events, sig = str(tmp / "run"), str(tmp / "events"), str(tmp / "signal")
    proc, log = _start(model_dir, events, "--pause-after-step", "4", "--signal", sig)
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while not os.path.exists(sig):
            assert proc.poll() is None, open(log.name).read()[-3000:]
            assert time.monotonic() < deadline, "worker did not reach step 4 in time"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGINT)
        time.sleep(0.5)  # the handler runs between two of the worker's sleeps
        os.remove(sig)
        returncode = proc.wait(timeout=TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    output = open(log.name).read()
    first = _events(events)
    ckpt = Checkpointer(os.path.join(model_dir, CHECKPOINT_SUBDIR))
    steps = ckpt.all_steps()
    ckpt.close()
    command = output.split("Resume with the same command:\n")[-1].splitlines()[0].strip()
    out = str(tmp / "final.npz")
    resumed = subprocess.run(shlex.split(command) + ["--out", out], cwd=ROOT, env=_env(events),
                             timeout=TIMEOUT_S, capture_output=True, text=True)  # fmt: skip
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    return {"returncode": returncode, "output": output, "events": first, "steps": steps,
            "command": command, "final": dict(np.load(out)),
            "resumed": _events(events)}  # fmt: skip


def test_sigint_saves_the_step_in_flight_and_prints_how_to_resume(signalled):
    assert signalled["returncode"] == 128 + signal.SIGINT
    assert signalled["events"] == ([1, 2, 3, 4], [3, 4])  # 4 saved because of the signal
    assert signalled["steps"] == [3, 4]
    assert "stopped by SIGINT after step 4 of 12" in signalled["output"]
    assert (
        "_kill_worker.py" in signalled["command"] and "--pause-after-step" in signalled["command"]
    )


def test_the_printed_command_resumes_after_the_saved_step_and_matches(signalled, runs):
    assert signalled["resumed"][0] == list(range(5, NUM_STEPS + 1))  # nothing redone
    reference = runs["reference"]
    want = worker.flat({"params": reference.state.params,
                        "opt_state": reference.state.opt_state})  # fmt: skip
    for key in want:
        np.testing.assert_array_equal(signalled["final"][key], want[key], err_msg=key)


def test_kill_mid_step_loses_only_the_steps_since_the_checkpoint(runs):
    assert runs["kill_1"] == "in step 5"
    assert runs["events_1"] == ([1, 2, 3, 4, 5], [3])
    steps, listing = runs["after_1"]
    assert steps == [3]
    assert [n for n in listing if n[0].isdigit()] == ["3"]


def test_kill_mid_checkpoint_write_leaves_the_previous_checkpoint_latest(runs):
    assert runs["kill_2"] == "writing checkpoint 9"
    # The restart resumed after checkpoint 3: its first step is 4.
    assert runs["events_2"] == ([4, 5, 6, 7, 8, 9], [6])
    steps, listing = runs["after_2"]
    assert steps == [3, 6]
    partial = [n for n in listing if n.startswith("9")]
    assert partial and all("tmp" in n for n in partial), listing  # written, never renamed


def test_restart_resumes_from_the_last_complete_checkpoint_and_matches(runs):
    assert runs["events_3"] == ([7, 8, 9, 10, 11, 12], [9, 12])
    ckpt = Checkpointer(runs["ckpt_dir"])
    assert ckpt.all_steps() == [3, 6, 9, 12]
    assert ckpt.restore_meta()["data_position"] == NUM_STEPS
    ckpt.close()
    reference = runs["reference"]
    assert int(reference.state.step) == NUM_STEPS
    want = worker.flat({"params": reference.state.params,
                        "opt_state": reference.state.opt_state})  # fmt: skip
    got = runs["final"]
    assert sorted(got) == sorted(want)
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    # metrics.jsonl stays readable; redone steps are recorded again, and the later record
    # of every step has the uninterrupted run's loss.
    records = read_metrics(runs["model_dir"], "train")
    assert sorted({r["step"] for r in records}) == list(range(1, NUM_STEPS + 1))
    latest = {r["step"]: r["loss"] for r in records}
    assert latest == {r["step"]: r["loss"] for r in reference.train}
    # The prompt did train (so equality is not two untouched initialisations).
    init = worker.initial_prompt(0)["shared"]
    assert np.abs(want["['params']['shared']"] - init).max() > 1e-3
