"""Crashes and resume: a run killed at an arbitrary point (SIGKILL: no chance to clean up) and resumed
with --resume ends bitwise identical to an uninterrupted run with the same seed, weights and metrics.
SIGTERM and Ctrl-C save a checkpoint before exiting. Same seed and config give the same metrics."""

import json
import os
import signal
import subprocess
import sys

import pytest

from rto.trainers.checkpoints import list_checkpoints
from tests.reliability.reliability_helpers import (
    Zygote,
    assert_same_run,
    build_world,
    kill_at,
    pause_env,
    read_metrics,
    stage_args,
    wait_for_pause,
    without_timing,
)


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_tokenizer):
    return build_world(tmp_path_factory.mktemp("world"), tiny_tokenizer)


@pytest.fixture(scope="module")
def zygote(tmp_path_factory):
    z = Zygote(tmp_path_factory.mktemp("children"))
    yield z
    z.close()


@pytest.fixture(scope="module")
def reference(world, zygote, tmp_path_factory):
    """Uninterrupted runs, one per stage, computed on first use (two at a time: the children are
    single-threaded)."""
    root = tmp_path_factory.mktemp("reference")
    runs: dict = {}

    def get(stage: str):
        if stage not in runs:
            runs[stage] = root / stage
            zygote.run(stage_args(stage, world, root / stage))
        return runs[stage]

    return get


def _resume(zygote, world, stage, out):
    zygote.run(stage_args(stage, world, out, "--resume"))


def _complete(out):
    return [p.name for p in list_checkpoints(out)]


# point, step: where the child is killed; latest: the newest complete checkpoint it leaves behind
KILLS = {
    "sft": ("step", 3, "step-00000002"),  # after step 3: metrics.jsonl holds a line past the checkpoint
    "rm": ("micro", 4, "step-00000002"),  # mid-step: gradients of one micro-batch accumulated
    "dpo": ("checkpoint", 4, "step-00000002"),  # mid-way through writing checkpoint 4
}


@pytest.mark.parametrize("stage", ["sft", "rm", "dpo"])
def test_supervised_sigkill_then_resume_is_bitwise_identical(stage, world, zygote, reference, tmp_path):
    out = tmp_path / stage
    point, step, latest = KILLS[stage]
    child = kill_at(zygote, stage_args(stage, world, out), point, step)
    assert child.returncode() == -signal.SIGKILL
    assert _complete(out) == ["step-00000002"] and _complete(out)[-1] == latest
    if point == "checkpoint":  # the half-written checkpoint is a temporary folder, never a "complete" one
        assert (out / "checkpoints" / ".tmp-step-00000004").is_dir()
    if point == "step":
        assert [r["step"] for r in read_metrics(out)] == [1, 2, 3]
        with (out / "metrics.jsonl").open("a") as f:  # as if killed while writing step 4's line
            f.write('{"step": 4, "lo')
    _resume(zygote, world, stage, out)
    assert_same_run(reference(stage), out)
    assert not list((out / "checkpoints").glob(".tmp-*"))


@pytest.mark.parametrize("point, step", [("rollout", 3), ("checkpoint", 4)])
def test_ppo_sigkill_mid_rollout_or_checkpoint_write_then_resume(
    point, step, world, zygote, reference, tmp_path
):
    out = tmp_path / "ppo"
    dump = ("--dump-rollouts", "1")
    child = kill_at(zygote, stage_args("ppo", world, out, *dump), point, step)
    assert child.returncode() == -signal.SIGKILL
    assert _complete(out) == ["step-00000002"]
    if point == "checkpoint":
        assert (out / "checkpoints" / ".tmp-step-00000004").is_dir()
    zygote.run(stage_args("ppo", world, out, *dump, "--resume"))  # the previous checkpoint loads
    assert_same_run(reference("ppo"), out)
    assert (out / "critic" / "model.safetensors").is_file()
    # the rollout log holds every iteration once: records written after the checkpoint were redone
    records = [json.loads(x) for x in (out / "rollouts.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records] == [i for i in range(1, 6) for _ in range(4)]


def test_sigterm_saves_a_checkpoint_and_exits_143(world, zygote, reference, tmp_path):
    """The real command line in a fresh interpreter: `python -m rto.cli sft ...`, then SIGTERM."""
    out = tmp_path / "sft"
    marker = tmp_path / "paused"
    env = {**os.environ, **pause_env("step", 3, marker), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "rto.cli", *stage_args("sft", world, out)],
        env=env,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    child = _PopenChild(proc)
    wait_for_pause(child, marker)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "SIGTERM received" in err and "stopped by SIGTERM after step 3" in err and "--resume" in err
    assert _complete(out) == ["step-00000002", "step-00000003"]
    assert [r["step"] for r in read_metrics(out)] == [1, 2, 3]
    assert not (out / "model.safetensors").exists()  # the run is not finished: no final model yet
    _resume(zygote, world, "sft", out)
    assert_same_run(reference("sft"), out)


class _PopenChild:
    """wait_for_pause's view of a subprocess.Popen."""

    def __init__(self, proc):
        self.proc = proc

    def returncode(self):
        return self.proc.poll()

    def output(self):
        return ""


def test_ctrl_c_saves_a_checkpoint_and_exits_130(world, zygote, reference, tmp_path):
    out = tmp_path / "ppo"
    child = kill_at(zygote, stage_args("ppo", world, out), "rollout", 3, sig=signal.SIGINT)
    assert child.returncode() == 130, child.output()
    assert "stopped by SIGINT after step 3" in child.output()
    assert _complete(out)[-1] == "step-00000003"  # iteration 3 was finished, then saved
    assert [r["step"] for r in read_metrics(out)] == [1, 2, 3]
    _resume(zygote, world, "ppo", out)
    assert_same_run(reference("ppo"), out)


@pytest.mark.parametrize("stage", ["sft", "ppo"])
def test_same_seed_same_metrics_run_to_run(stage, world, zygote, reference, tmp_path):
    again = tmp_path / stage
    zygote.run(stage_args(stage, world, again))
    assert_same_run(reference(stage), again)
    first = without_timing(read_metrics(again))
    other_seed = tmp_path / "seed4"
    zygote.run(stage_args(stage, world, other_seed, "--seed", "4"))
    assert without_timing(read_metrics(other_seed)) != first  # the comparison can fail


def test_deterministic_kernels_option_changes_nothing_on_cpu(world, zygote, reference, tmp_path):
    """--deterministic (GPU kernels without atomics, fixed cuBLAS workspace) runs, and CPU bits agree."""
    out = tmp_path / "det"
    child = zygote.run(stage_args("sft", world, out, "--deterministic"))
    assert "Traceback" not in child.output()
    assert_same_run(reference("sft"), out)


def test_graceful_stop_flags_the_first_signal_and_aborts_on_the_second():
    from rto.trainers.signals import GracefulStop

    before = signal.getsignal(signal.SIGINT)
    stop = GracefulStop().install()
    try:
        os.kill(os.getpid(), signal.SIGINT)  # handled at the next bytecode: sets the flag, no exception
        for _ in range(100):
            if stop.signum:
                break
        assert stop.signum == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(1000):
                pass
    finally:
        stop.restore()
    assert signal.getsignal(signal.SIGINT) is before
