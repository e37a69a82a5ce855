"""Reliability faults of issue #19, each with a real fault: device nodes and FIFOs at the output path, temp
files of a process killed with -9, real SIGINT, a real full file system, forged checkpoints and reports,
hostile names and model files. ``PRUNEKIT_SLOW_TESTS=1`` runs the longer signal loop."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from prunekit import cli, io, models, surgery
from prunekit._atomic import atomic_path, write_text
from prunekit.errors import PrunekitError

REPO = Path(__file__).resolve().parents[1]
SLOW = bool(os.environ.get("PRUNEKIT_SLOW_TESTS"))
TRAIN_YAML = "model: {name: lenet5}\ndata: {name: digits}\ntrain: {epochs: 1, batch_size: 64, device: cpu}\n"


def _env(tmp: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PRUNEKIT_CACHE=str(tmp / "cache"),
               PYTHONPATH=str(REPO / "src") + os.pathsep + env.get("PYTHONPATH", ""))
    return env


def _one_line(capsys: pytest.CaptureFixture[str], code: int) -> str:
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("prunekit: error:"), err
    return err


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    return io.save(models.create("lenet5", input_size=8), tmp_path / "m.safetensors")


# ------------------------------------------------------------------- 1. never replace a device node or FIFO


def _nodes(folder: Path) -> list[Path]:
    """A FIFO, and (as root) twins of /dev/null and /dev/full made with mknod, plus a symlink to one."""
    folder.mkdir()
    fifo = folder / "fifo"
    os.mkfifo(fifo)
    out = [fifo]
    try:
        for name, minor in (("null", 3), ("full", 7)):
            os.mknod(folder / name, 0o666 | stat.S_IFCHR, os.makedev(1, minor))
            out.append(folder / name)
    except PermissionError:
        pass  # not root: the FIFO still shows the refusal
    link = folder / "link"
    link.symlink_to(out[-1])
    return [*out, link]


@pytest.mark.parametrize("to", ["dense", "sparse", "onnx"])
def test_export_never_replaces_a_device_node_or_fifo(tmp_path: Path, model_file: Path, to: str,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    for node in _nodes(tmp_path / f"nodes-{to}"):
        kind = stat.S_IFMT(os.stat(node).st_mode)
        err = _one_line(capsys, cli.main(["export", str(model_file), "--to", to, "--out", str(node)]))
        assert str(node) in err and "not a regular file" in err, err
        assert stat.S_IFMT(os.stat(node).st_mode) == kind  # still the node, not a regular file
        assert not [p.name for p in node.parent.iterdir() if p.name.endswith(".tmp")]


def test_atomic_writer_refuses_nodes_and_folders_but_replaces_files(tmp_path: Path) -> None:
    for node in [*_nodes(tmp_path / "nodes"), tmp_path / "nodes"]:
        with pytest.raises(PrunekitError, match="not a regular file"):
            write_text(node, "x")
    f = tmp_path / "f.txt"
    f.write_text("old")
    write_text(f, "new")
    assert f.read_text() == "new"


# ------------------------------------------------------- 6. temp files of kill -9, target names, long names


def _killed_mid_write(target: Path, tmp: Path) -> Path:
    """A real process that dies by SIGKILL inside the atomic writer; returns the temp file it left."""
    code = ("import os, signal, sys\nfrom prunekit._atomic import atomic_path\n"
            "with atomic_path(sys.argv[1]) as tmp:\n    tmp.write_text('half')\n"
            "    os.kill(os.getpid(), signal.SIGKILL)\n")
    before = set(target.parent.iterdir()) if target.parent.exists() else set()
    res = subprocess.run([sys.executable, "-c", code, str(target)], env=_env(tmp), timeout=60)
    assert res.returncode == -signal.SIGKILL
    left = [p for p in set(target.parent.iterdir()) - before if p.name.endswith(".tmp")]
    assert len(left) == 1, left
    return left[0]


def test_temp_files_of_a_killed_run_are_swept_on_resume(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "t.yaml"
    cfg.write_text(TRAIN_YAML)
    out = tmp_path / "run"
    assert cli.main(["train", str(cfg), "--out", str(out), "--quiet", "--set", "train.max_steps_per_epoch=2"]) == 0
    left = [_killed_mid_write(out / "log.jsonl", tmp_path), _killed_mid_write(out / "model.safetensors", tmp_path)]
    legacy = out / ".report.json.k3j9x_a1.tmp"  # the pid-less name of prunekit 0.1.0
    legacy.write_text("half")
    keep = out / "notes.tmp"  # not prunekit's pattern: never touched
    keep.write_text("mine")
    live = out / f".log.jsonl.{os.getpid()}-abcdefgh.tmp"  # a live writer's file: kept
    live.write_text("busy")
    assert all(p.exists() for p in left)
    assert cli.main(["train", str(cfg), "--out", str(out), "--quiet", "--resume",
                     "--set", "train.max_steps_per_epoch=2"]) == 0
    capsys.readouterr()
    assert not any(p.exists() for p in [*left, legacy])
    assert keep.read_text() == "mine" and live.exists()


def test_rewriting_a_target_sweeps_its_own_stale_temp_files(tmp_path: Path) -> None:
    from prunekit._atomic import sweep_stale

    target = tmp_path / "out" / "a.txt"
    target.parent.mkdir()
    stale = _killed_mid_write(target, tmp_path)
    other = _killed_mid_write(tmp_path / "out" / "b.txt", tmp_path)
    write_text(target, "done")
    assert target.read_text() == "done" and not stale.exists() and other.exists()
    assert sweep_stale(tmp_path / "out") == [other] and not other.exists()


def test_a_245_character_file_name_works(tmp_path: Path) -> None:
    model = models.create("lenet5", input_size=8)
    name = "m" * (245 - len(".safetensors")) + ".safetensors"
    assert len(name) == 245
    for save in (io.save, surgery.save_sparse):
        path = tmp_path / save.__name__ / name
        save(model, path)
        assert path.is_file() and not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    assert io.load(tmp_path / "save" / name).fc1.weight.shape == model.fc1.weight.shape


def test_write_errors_name_the_target_not_the_temp_file(tmp_path: Path, model_file: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    too_long = tmp_path / ("x" * 300 + ".safetensors")  # ENAMETOOLONG from the real file system
    err = _one_line(capsys, cli.main(["export", str(model_file), "--to", "dense", "--out", str(too_long)]))
    assert str(too_long) in err and ".tmp" not in err, err
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(PrunekitError) as e, atomic_path(blocker / "under" / "x"):
        pass
    assert str(blocker / "under" / "x") in str(e.value) and ".tmp" not in str(e.value)
