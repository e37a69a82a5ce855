"""prunekit.export and ``prunekit export --model``: a user's pruned network to ONNX / dense / sparse files, and
one clear line (exit 2) for a bad network spec or a missing optional package (blocked for real)."""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

import prunekit
from prunekit import cli, io
from prunekit.errors import PrunekitError
from prunekit.surgery import remove_channels

SRC = str(Path(prunekit.__file__).resolve().parents[1])
X = torch.randn(2, 3, 8, 8)

USER_MODULE = '''
import torch
from torch import nn


class Gate(nn.Module):  # a module type no registry knows
    def __init__(self, c):
        super().__init__()
        self.g = nn.Parameter(torch.linspace(0.5, 1.5, c))

    def forward(self, x):
        return x * self.g.view(1, -1, 1, 1)


def build():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), Gate(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 4)).eval()


not_callable = 3


def broken():
    raise RuntimeError("no GPU here")


def not_a_module():
    return "model"
'''


@pytest.fixture
def user_pkg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder holding the user's network module (``usernet_<n>``), made the current folder."""
    name = f"usernet_{abs(hash(str(tmp_path))) % 10**8}"
    (tmp_path / f"{name}.py").write_text(USER_MODULE)
    (tmp_path / "syntaxbad.py").write_text("def (:\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path / name


def _pruned(mod_name: str) -> tuple[nn.Module, nn.Module]:
    import importlib

    build = importlib.import_module(mod_name).build
    net, base = build(), build()
    remove_channels(net, {"0": [1, 4, 6]}, X)
    return net, base


def _run(args: list[str], cwd: Path, block: str | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m prunekit.cli ARGS`` in a fresh process; ``block``: a package whose import fails for real."""
    path = [SRC]
    if block is not None:
        blocker = cwd / "_blocked"
        blocker.mkdir(exist_ok=True)
        (blocker / f"{block}.py").write_text(f'raise ImportError("No module named {block!r} (blocked)")\n')
        path.insert(0, str(blocker))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "prunekit.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def test_library_export_by_suffix(user_pkg: Path) -> None:
    net, base = _pruned(user_pkg.name)
    out = net(X)
    res = prunekit.export(net, X, user_pkg.parent / "m.onnx")
    assert res.format == "onnx" and res.max_abs_diff is not None and res.max_abs_diff < 1e-4
    import onnxruntime as ort

    sess = ort.InferenceSession(str(res.path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input": X[:1].numpy()})[0]  # dynamic batch
    torch.testing.assert_close(torch.from_numpy(got), out[:1].detach(), atol=1e-4, rtol=1e-4)
    for name, fmt in (("m.safetensors", "dense"), ("m.sparse.safetensors", "sparse")):
        res = prunekit.export(net, None, user_pkg.parent / name, base=base)
        assert res.format == fmt
        import importlib

        back = prunekit.load(res.path, model=importlib.import_module(user_pkg.name).build())
        torch.testing.assert_close(back(X), out, rtol=0, atol=0)
    with pytest.raises(PrunekitError, match="cannot tell the export format"):
        prunekit.export(net, X, user_pkg.parent / "m.bin")
    with pytest.raises(PrunekitError, match="unknown export format"):
        prunekit.export(net, X, user_pkg.parent / "m.onnx", format="tflite")


def test_unexportable_layer_is_named_and_nothing_is_written(tmp_path: Path) -> None:
    class FFT(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.fft.fft(x).real

    net = nn.Sequential(nn.Linear(3, 3), FFT())
    with pytest.raises(PrunekitError, match=r"layer '1' \(FFT\).*fft") as info:
        prunekit.export(net, torch.randn(2, 3), tmp_path / "f.onnx")
    assert "\n" not in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_cli_exports_a_user_network_given_by_factory(user_pkg: Path) -> None:
    net, base = _pruned(user_pkg.name)
    io.save(net, user_pkg.parent / "pruned.safetensors", base=base)
    for to, out in (("onnx", "p.onnx"), ("dense", "p.safetensors"), ("sparse", "p.sparse.safetensors")):
        # the input shape comes from the recorded surgery: no --input-shape needed
        rc = cli.main(["export", "pruned.safetensors", "--model", f"{user_pkg.name}:build", "--to", to,
                       "--out", out])
        assert rc == 0 and (user_pkg.parent / out).is_file()
    import importlib

    back = prunekit.load(user_pkg.parent / "p.sparse.safetensors", model=importlib.import_module(user_pkg.name).build())
    torch.testing.assert_close(back(X), net(X), rtol=0, atol=0)


@pytest.mark.parametrize("spec,match", [
    ("nocolon", "expected package.module:factory"),
    ("a b:c", "expected package.module:factory"),
    ("no_such_module_xyz:build", "cannot import no_such_module_xyz"),
    ("syntaxbad:build", "cannot import syntaxbad .SyntaxError"),
    ("{mod}:missing", "has no callable 'missing'"),
    ("{mod}:not_callable", "has no callable"),
    ("{mod}:broken", r"broken\(\) failed .RuntimeError: no GPU here"),
    ("{mod}:not_a_module", "not a torch nn.Module"),
    ("{mod}:build", "weights do not fit|no such file"),
])
def test_bad_network_spec_is_one_line(user_pkg: Path, capsys: pytest.CaptureFixture[str], spec: str,
                                      match: str) -> None:
    other = nn.Sequential(nn.Linear(2, 2))
    io.save(other, user_pkg.parent / "other.safetensors")
    rc = cli.main(["export", "other.safetensors", "--model", spec.format(mod=user_pkg.name), "--to", "onnx",
                   "--out", "o.onnx", "--input-shape", "3,8,8"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and err.startswith("prunekit: error:"), err
    assert re.search(match, err), err
    assert not (user_pkg.parent / "o.onnx").exists()


def test_missing_onnx_is_one_line_naming_the_extra(tmp_path: Path) -> None:
    """A real missing package: an ``onnx`` module on the path whose import fails, in a fresh process."""
    res = _run(["export", "lenet5", "--to", "onnx", "--out", "l.onnx"], tmp_path, block="onnx")
    assert res.returncode == 2, res.stderr
    assert res.stderr.count("\n") == 1 and res.stderr.startswith("prunekit: error:"), res.stderr
    assert "pip install prunekit[onnx]" in res.stderr and "'onnx'" in res.stderr
    assert not (tmp_path / "l.onnx").exists()


def test_without_onnxruntime_the_export_still_works_unchecked(tmp_path: Path) -> None:
    res = _run(["export", "lenet5", "--to", "onnx", "--out", "l.onnx"], tmp_path, block="onnxruntime")
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "l.onnx").is_file() and "onnxruntime" not in res.stdout
    code = textwrap.dedent("""
        import torch, prunekit
        prunekit.export(torch.nn.Linear(3, 2), torch.zeros(1, 3), "c.onnx", check=True)
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "_blocked"), SRC])}
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode != 0 and "pip install prunekit[onnx]" in r.stderr and "'onnxruntime'" in r.stderr
    assert not (tmp_path / "c.onnx").exists()


def test_export_keeps_the_models_mode(tmp_path: Path) -> None:
    net = nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.5))
    net.train()
    prunekit.export(net, torch.randn(2, 3), tmp_path / "d.onnx")
    assert net.training and net[1].training
    assert copy.deepcopy(net).training
