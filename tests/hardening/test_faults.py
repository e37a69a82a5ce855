"""Faults: kill -9 at random moments, NaN/inf, disk full and unwritable output folders.

The kill test drives the real command line in subprocesses; the disk-full tests write to a real small file
system (a tmpfs or loop mount; skipped where the machine allows neither). ``PRUNEKIT_SLOW_TESTS=1`` enables a
longer kill loop.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from prunekit import cli, data, io, models, surgery
from prunekit.engine import Callback, Trainer, TrainerConfig, load_checkpoint
from prunekit.errors import PrunekitError
from tests.helpers import one_line, subprocess_env

REPO = Path(__file__).resolve().parents[2]
PRUNE_YAML = "model: {name: lenet5}\ndata: {name: digits}\ntrain: {epochs: 4, batch_size: 64}\n" \
             "method: {name: iht, cycles: 1}\n"
PRUNE_SETS = ["--set", "train.device=cpu", "--set", "train.checkpoint_every_steps=2",
              "--set", "train.max_steps_per_epoch=6", "--set", "optim.lr=0.05", "--quiet"]
TRAIN_YAML = "model: {name: lenet5}\ndata: {name: digits}\ntrain: {epochs: 2, batch_size: 64, device: cpu}\n"


def _cmd(cfg: Path, out: Path, resume: bool) -> list[str]:
    return [sys.executable, "-m", "prunekit.cli", "prune", str(cfg), "--out", str(out),
            *(["--resume"] if resume else []), *PRUNE_SETS]


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    return io.read_safetensors(path)[0]


def _assert_complete_files_load(out: Path) -> int:
    """Every file a killed run left behind is complete: the checkpoint (and model, if any) load."""
    step = -1
    ckpt = out / "checkpoint.safetensors"
    if ckpt.exists():
        st = load_checkpoint(ckpt)
        assert all(bool(torch.isfinite(t).all()) for t in st["model"].values())
        step = st["position"]["step"]
    model = out / "model.safetensors"
    if model.exists():
        surgery.load_sparse(model)  # IHT delivers a sparse file
    return step


def _kill_resume(tmp_path: Path, kills: int, seed: int) -> None:
    cfg = tmp_path / "prune.yaml"
    cfg.write_text(PRUNE_YAML)
    env = subprocess_env(tmp_path)
    ref, out = tmp_path / "ref", tmp_path / "killed"
    # the uninterrupted reference runs on the other core meanwhile
    ref_proc = subprocess.Popen(_cmd(cfg, ref, False), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True)
    rng = random.Random(seed)
    steps, landed = [], 0
    for i in range(kills):
        proc = subprocess.Popen(_cmd(cfg, out, i > 0), env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        # kill at a random moment after a random number of checkpoint writes: mid-epoch, mid-write, during
        # the IHT phase switches, or (late draws) while the pruned model is being finalised and written
        wait_writes, extra = rng.randint(1, 3), rng.uniform(0.0, 0.2)
        seen, last_ino = 0, None
        deadline = time.monotonic() + 120
        while proc.poll() is None and seen < wait_writes and time.monotonic() < deadline:
            try:
                ino = (out / "checkpoint.safetensors").stat().st_ino
            except FileNotFoundError:
                ino = None
            if ino is not None and ino != last_ino:
                seen, last_ino = seen + 1, ino
            time.sleep(0.002)
        time.sleep(extra)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            landed += 1
        proc.wait(timeout=60)
        err = proc.stderr.read() if proc.stderr else ""
        assert proc.returncode in (0, -signal.SIGKILL), err
        steps.append(_assert_complete_files_load(out))
    assert landed >= 1, "no kill landed while the run was alive"
    assert steps == sorted(steps), f"a resumed run went backwards: {steps}"
    res = subprocess.run(_cmd(cfg, out, True), env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    _, ref_err = ref_proc.communicate(timeout=300)
    assert ref_proc.returncode == 0, ref_err
    ref_steps = load_checkpoint(ref / "checkpoint.safetensors")["position"]["step"]
    assert load_checkpoint(out / "checkpoint.safetensors")["position"]["step"] == ref_steps
    want, got = _tensors(ref / "model.safetensors"), _tensors(out / "model.safetensors")
    assert sorted(want) == sorted(got)
    for k in want:
        assert want[k].dtype == got[k].dtype and torch.equal(want[k], got[k]), k


def test_kill_9_and_resume_gives_the_uninterrupted_weights(tmp_path: Path) -> None:
    _kill_resume(tmp_path, kills=3, seed=0)


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("PRUNEKIT_SLOW_TESTS"), reason="set PRUNEKIT_SLOW_TESTS=1 for the long loop")
def test_kill_9_many_times(tmp_path: Path) -> None:
    _kill_resume(tmp_path, kills=12, seed=1)


# ----------------------------------------------------------------------------------------------- NaN / inf


def test_nan_loss_through_the_cli_keeps_the_last_good_checkpoint(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """lr 10 with weight decay 1 (each step scales the weights by -9) reached by a linear warm-up: the first
    steps are fine and checkpointed, then the loss is NaN. (lr is bounded by the config at 10.)"""
    cfg = tmp_path / "t.yaml"
    cfg.write_text(TRAIN_YAML)
    out = tmp_path / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        code = cli.main(["train", str(cfg), "--out", str(out), "--quiet", "--set", "train.checkpoint_every_steps=1",
                         "--set", "optim.lr=10", "--set", "optim.weight_decay=1", "--set", "optim.warmup_epochs=1",
                         "--set", "optim.schedule=constant"])
    finally:
        torch.set_num_threads(threads)
    err = one_line(capsys, code)
    m = re.search(r"(?:loss|weights) became .* at epoch \d+ step (\d+)", err)
    assert m, err
    assert "intact" in err, err
    st = load_checkpoint(out / "checkpoint.safetensors")
    assert st["position"]["step"] == int(m.group(1)) > 0  # the last good step, not the bad one
    assert all(bool(torch.isfinite(t).all()) for t in st["model"].values())
    assert not (out / "model.safetensors").exists()


class _PoisonWeights(Callback):
    """After the optimizer step number ``at``, put a NaN/inf in a weight (as a diverging update would)."""

    def __init__(self, at: int, value: float, out: Path) -> None:
        self.at, self.value, self.out = at, value, out
        self.snapshot: bytes | None = None

    def on_after_optimizer_step(self, trainer: Trainer) -> None:
        if trainer.step + 1 == self.at:
            self.snapshot = (self.out / "checkpoint.safetensors").read_bytes()
            with torch.no_grad():
                next(trainer.raw_model.parameters()).view(-1)[0] = self.value


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nonfinite_weights_are_never_checkpointed(tmp_path: Path, value: float) -> None:
    train = data.load("synthetic", "train", n=32, shape=(1, 8, 8), num_classes=2)
    poison = _PoisonWeights(at=5, value=value, out=tmp_path)
    tr = Trainer(models.create("lenet5", num_classes=2, input_size=8), train,
                 config=TrainerConfig(batch_size=4, device="cpu", quiet=True, checkpoint_every_steps=1),
                 callbacks=[poison], out_dir=tmp_path)
    with pytest.raises(PrunekitError, match=r"NaN/inf .* at epoch 0 step 5.*intact") as e:
        tr.fit(1)
    assert "\n" not in str(e.value)
    assert poison.snapshot is not None
    assert (tmp_path / "checkpoint.safetensors").read_bytes() == poison.snapshot  # the good one, untouched
    assert load_checkpoint(tmp_path / "checkpoint.safetensors")["position"]["step"] == 4


# ------------------------------------------------------------------------------------ disk full, read-only


def _train_args(cfg: Path, out: Path, *extra: str) -> list[str]:
    return ["train", str(cfg), "--out", str(out), "--quiet", "--set", "train.checkpoint_every_steps=5", *extra]


@contextlib.contextmanager
def _small_file_system(folder: Path, size_kb: int) -> Iterator[Path]:
    """A real file system of ``size_kb`` kB mounted at ``folder``: a tmpfs, else a loop-mounted ext4 image;
    the test is skipped (saying why) where this machine allows neither (not root, no CAP_SYS_ADMIN)."""
    folder.mkdir(parents=True, exist_ok=True)
    tried = []
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(folder)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        tried.append(f"tmpfs: {res.stderr.strip() or res.returncode}")
        image = folder.parent / f"{folder.name}.img"
        with open(image, "wb") as fh:
            fh.truncate(max(size_kb, 512) * 1024)
        mk = subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", str(image)], capture_output=True, text=True)
        res = subprocess.run(["mount", "-o", "loop", str(image), str(folder)], capture_output=True, text=True) \
            if mk.returncode == 0 else mk
        if res.returncode != 0:
            tried.append(f"loop image: {res.stderr.strip() or res.returncode}")
            pytest.skip("cannot mount a small file system here (" + "; ".join(tried) + ")")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def _fill(folder: Path, leave: int) -> None:
    """Fill the file system of ``folder`` with a real file, leaving about ``leave`` bytes free."""
    st = os.statvfs(folder)
    free = st.f_bavail * st.f_frsize
    with open(folder / "ballast", "wb") as fh:
        with contextlib.suppress(OSError):
            fh.write(b"\0" * max(0, free - leave))


def test_disk_full_is_one_line_and_keeps_the_last_checkpoint(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """A real 1.6 MB file system: the first checkpoint (1.06 MB) fits, the second cannot (old one plus the new
    temporary file): the run stops at once with one line naming the checkpoint, the first checkpoint is still
    on disk and loads, and no temporary file is left."""
    cfg = tmp_path / "t.yaml"
    cfg.write_text(TRAIN_YAML)
    with _small_file_system(tmp_path / "small", 1600) as out:
        err = one_line(capsys, cli.main(_train_args(cfg, out)))
        assert "No space left on device" in err and str(out / "checkpoint.safetensors") in err, err
        assert "intact" in err and ".tmp" not in err, err
        assert load_checkpoint(out / "checkpoint.safetensors")["position"]["step"] == 5
        assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
        assert not (out / "model.safetensors").exists()


@pytest.mark.parametrize("to", ["dense", "sparse", "onnx"])
def test_export_to_a_full_disk_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], to: str) -> None:
    """A real full file system under a model, sparse or ONNX export: one line naming the target, the file
    that was there before intact, no temporary file left."""
    model = io.save(models.create("lenet5", input_size=8), tmp_path / "m.safetensors")
    with _small_file_system(tmp_path / "small", 256) as folder:
        target = folder / "out.bin"
        target.write_bytes(b"old")
        _fill(folder, 16 * 1024)
        err = one_line(capsys, cli.main(["export", str(model), "--to", to, "--out", str(target)]))
        assert "No space left on device" in err and f"{target}: cannot write" in err and ".tmp" not in err, err
        assert target.read_bytes() == b"old"
        assert not [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_unwritable_output_folder_fails_before_any_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """A read-only file system (EROFS, simulated so it works as root too): one line naming the file, before
    any data are loaded or any step is trained."""
    import tempfile

    cfg = tmp_path / "t.yaml"
    cfg.write_text(TRAIN_YAML)
    out = tmp_path / "run"
    real = tempfile.mkstemp

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    monkeypatch.setattr(data, "load", lambda *a, **k: pytest.fail("data were loaded before the output was checked"))
    err = one_line(capsys, cli.main(_train_args(cfg, out)))
    assert "read-only" in err.lower() and str(out / "config.yaml") in err, err
    monkeypatch.setattr(tempfile, "mkstemp", real)


def _blocks_writes(folder: Path) -> bool:
    """Whether chmod 0o555 really makes ``folder`` unwritable here (not as root)."""
    probe = folder / ".probe"
    try:
        probe.write_bytes(b"")
    except PermissionError:
        return True
    probe.unlink()
    return False


def test_read_only_folder_keeps_the_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "t.yaml"
    cfg.write_text(TRAIN_YAML)
    out = tmp_path / "run"
    out.mkdir()
    out.chmod(0o555)
    try:
        if not _blocks_writes(out):
            pytest.skip("running as root (or on a file system without permissions): chmod does not block writes")
        out.chmod(0o755)
        assert cli.main(_train_args(cfg, out, "--set", "train.epochs=1")) == 0
        capsys.readouterr()
        before = {p.name: p.read_bytes() for p in out.iterdir()}
        out.chmod(0o555)
        err = one_line(capsys, cli.main(_train_args(cfg, out, "--resume")))
        assert str(out) in err and ("not writable" in err or "Permission denied" in err), err
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    finally:
        out.chmod(0o755)


def test_atomic_writes_keep_usual_permissions(tmp_path: Path) -> None:
    """Files written atomically get 0o666 less the umask, not the temporary file's private 0o600."""
    path = io.save(models.create("lenet5", input_size=8), tmp_path / "m.safetensors")
    mask = os.umask(0o022)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask
