"""Run safety (#19.2, 3, 4, 15, 16, 20): one run per output folder, resume only the same experiment, every
check before the first write, model and data checked against each other, devices the machine has, no run
that trains 0 steps or measures 0 images. Real processes and signals, real files, no mocks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from prunekit import config, data, experiment, io, models
from prunekit.cli import main
from prunekit.errors import PrunekitError

ROOT = Path(__file__).resolve().parents[2]
MNIST = ROOT.parent.parent / "shared" / "datasets" / "mnist"
if not MNIST.is_dir():
    MNIST = Path("/work/shared/datasets/mnist")
TINY = "model: {name: lenet5}\ndata: {name: digits}\ntrain: {epochs: 1, batch_size: 64, device: cpu, " \
       "max_steps_per_epoch: 2, eval_every: 1000, quiet: true}\noptim: {lr: 0.05}\n"


def _cfg(tmp_path: Path, text: str = TINY) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def _cli(*argv: str, cwd: Path | None = None, wait: bool = True) -> subprocess.CompletedProcess | subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "prunekit.cli", *argv]
    if not wait:
        return subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=300)


def _wait_for(path: Path, proc: subprocess.Popen, limit_s: float = 120.0) -> None:
    """Wait until ``path`` exists (the other run has got going); not a timed assertion, a generous guard."""
    t0 = time.monotonic()
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() - t0 < limit_s, f"{path} never appeared"
        time.sleep(0.05)


# ------------------------------------------------------------------------------------------------ #19.2
def test_two_real_runs_in_one_folder_second_is_refused_naming_the_holder(tmp_path):
    cfg = _cfg(tmp_path)
    out = tmp_path / "run"
    first = _cli("train", str(cfg), "--out", str(out), "--set", "train.epochs=100000", "--set",
                 "train.max_steps_per_epoch=0", wait=False)
    try:
        _wait_for(out / "config.yaml", first)  # written under the lock
        os.kill(first.pid, signal.SIGSTOP)  # hold it there (the lock stays held) without using the CPU
        before = (out / "config.yaml").read_bytes()
        second = _cli("prune", str(cfg), "--out", str(out), "--set", "method.name=iht", "--set", "seed=5",
                      "--set", "train.epochs=6")
        assert second.returncode == 2, second.stderr
        assert second.stderr.count("\n") == 1, second.stderr
        assert f"in use by another run (pid {first.pid} on " in second.stderr
        assert "train" in second.stderr and "wait for it to finish or choose another --out" in second.stderr
        assert (out / "config.yaml").read_bytes() == before  # the refused run wrote nothing
        # the holder is killed: the kernel drops its lock, the lock file it left is stale and taken over
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=60)
        assert str(first.pid) in (out / experiment.LOCK_NAME).read_text()
        third = _cli("train", str(cfg), "--out", str(out))
        assert third.returncode == 0, third.stderr
        assert (out / experiment.LOCK_NAME).read_text() == ""  # released at the end
    finally:
        if first.poll() is None:
            os.kill(first.pid, signal.SIGKILL)
            first.wait(timeout=60)


def test_lock_is_released_on_an_error_and_held_against_a_second_holder(tmp_path):
    out = tmp_path / "run"
    with experiment.RunLock(out):
        other = subprocess.run([sys.executable, "-c", "import sys; from prunekit.experiment import RunLock; "
                                "RunLock(sys.argv[1]).acquire()", str(out)], capture_output=True, text=True,
                               env={**os.environ, "PYTHONPATH": str(ROOT / "src")}, timeout=120)
        assert other.returncode != 0 and f"pid {os.getpid()}" in other.stderr
    with pytest.raises(RuntimeError), experiment.RunLock(out):
        raise RuntimeError("boom")
    experiment.RunLock(out).acquire().release()  # free again


# ------------------------------------------------------------------------------------------- #19.3, 4
def test_resume_refuses_any_config_change_and_writes_nothing(tmp_path):
    cfg = _cfg(tmp_path)
    out = tmp_path / "run"
    assert main(["train", str(cfg), "--out", str(out)]) == 0
    saved = (out / "config.yaml").read_bytes()
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    for change in (["optim.lr=0.01"], ["optim.weight_decay=0.001"], ["model.name=lenet-300-100"], ["seed=1"],
                   ["train.batch_size=32"], ["data.subset=500"], ["data.name=mnist"]):
        args = ["train", str(cfg), "--out", str(out), "--resume"]
        for c in change:
            args += ["--set", c]
        r = _cli(*args)
        key = change[0].split("=")[0]
        assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
        assert f"cannot resume with a changed config: {key} (" in r.stderr, r.stderr
        assert (out / "config.yaml").read_bytes() == saved
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name != experiment.LOCK_NAME} == \
        {k: v for k, v in stamps.items() if k != experiment.LOCK_NAME}
    # what does not change the experiment passes: output verbosity, evaluation batch, where the data are
    assert main(["train", str(cfg), "--out", str(out), "--resume", "--set", "train.quiet=false",
                 "--set", "train.eval_batch_size=100"]) == 0


def test_resume_allow_change_is_explicit_and_limited(tmp_path, capsys):
    cfg = _cfg(tmp_path)
    out = tmp_path / "run"
    assert main(["train", str(cfg), "--out", str(out)]) == 0
    assert main(["train", str(cfg), "--out", str(out), "--resume", "--set", "train.device=auto"]) == 2
    assert "--allow-change train.device" in capsys.readouterr().err
    assert main(["train", str(cfg), "--out", str(out), "--resume", "--set", "train.device=auto",
                 "--allow-change", "train.device"]) == 0
    assert config.load_config(out / "config.yaml")["train"]["device"] == "auto"
    assert main(["train", str(cfg), "--out", str(out), "--resume", "--set", "optim.lr=0.2",
                 "--allow-change", "optim.lr"]) == 2
    assert "only train.amp, train.channels_last, train.device may be allowed" in capsys.readouterr().err


def test_a_start_that_fails_on_missing_data_leaves_no_folder(tmp_path):
    empty = tmp_path / "nodata"
    empty.mkdir()
    out = tmp_path / "run"
    r = _cli("train", str(_cfg(tmp_path)), "--out", str(out), "--set", "data.name=mnist", "--data-dir", str(empty))
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert not out.exists()


# ------------------------------------------------------------------------------------------- #19.15
@pytest.mark.parametrize("override, message", [
    ("model.kwargs.num_classes=5", "model 'lenet5' has 5 outputs but dataset 'digits' has 10 classes"),
    ("model.kwargs.input_size=28", "model 'lenet5' does not take 'digits' images of shape (1, 8, 8)"),
    ("model.kwargs.in_channels=3", "model 'lenet5' does not take 'digits' images of shape (1, 8, 8)"),
])
def test_model_and_data_that_do_not_match_are_refused_before_training(tmp_path, capsys, override, message):
    out = tmp_path / "run"
    assert main(["train", str(_cfg(tmp_path)), "--out", str(out), "--set", override]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not out.exists()


def test_a_dataset_with_more_classes_than_the_model_is_refused(tmp_path):
    cfg = config.load_config(_cfg(tmp_path))
    train = data.load("synthetic", "train", n=128, shape=(1, 8, 8), num_classes=20)
    test = data.load("synthetic", "test", n=32, shape=(1, 8, 8), num_classes=20)
    net = models.create("lenet5", in_channels=1, input_size=8, num_classes=10)
    with pytest.raises(PrunekitError, match="has 10 outputs but dataset .* has 20 classes"):
        experiment.run(cfg, out=tmp_path / "run", model=net, data=(train, test), latency=False)
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(not MNIST.is_dir(), reason="needs the shared MNIST files")
def test_eval_of_an_8x8_model_on_mnist_is_one_line(tmp_path):
    path = tmp_path / "m8.safetensors"
    io.save(models.create("lenet5", in_channels=1, input_size=8, num_classes=10), path)
    r = _cli("eval", str(path), "--data", "mnist", "--data-dir", str(MNIST))
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "does not take 'mnist' images of shape (1, 28, 28)" in r.stderr


# ------------------------------------------------------------------------------------------- #19.16
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
def test_cuda_on_a_cpu_only_machine_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    for dev in ("cuda", "cuda:1"):
        assert main(["train", str(_cfg(tmp_path)), "--out", str(out), "--set", f"train.device={dev}"]) == 2
        err = capsys.readouterr().err
        assert f"train.device={dev}: this machine has no CUDA device" in err and err.count("\n") == 1, err
    assert main(["train", str(_cfg(tmp_path)), "--out", str(out), "--set", "train.device=meta"]) == 2
    assert "train.device must be auto, cpu, cuda or cuda:N" in capsys.readouterr().err
    assert not out.exists()


# ------------------------------------------------------------------------------------------- #19.20
def test_zero_steps_per_epoch_and_empty_evaluation_are_refused(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", str(_cfg(tmp_path)), "--out", str(out), "--set", "data.subset=1"]) == 2
    assert "data.subset=1 is smaller than one batch" in capsys.readouterr().err
    assert main(["train", str(_cfg(tmp_path)), "--out", str(out), "--set", "train.batch_size=4096"]) == 2
    assert "fewer than one batch (train.batch_size=4096): every epoch would train 0 steps" in capsys.readouterr().err
    assert not out.exists()
    cfg = config.load_config(_cfg(tmp_path))
    train = data.load("synthetic", "train", n=128, shape=(1, 8, 8), num_classes=10)
    empty = data.load("synthetic", "test", n=32, shape=(1, 8, 8), num_classes=10).subset(0)
    with pytest.raises(PrunekitError, match="the evaluation split has no images"):
        experiment.run(cfg, out=out, data=(train, empty), latency=False)
    assert not out.exists()
