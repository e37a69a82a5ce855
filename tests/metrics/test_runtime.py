"""Runtimes (eager, deployed, ONNX Runtime): same outputs as PyTorch, table shape, clear errors. No timing
assertions: speed lives in benchmarks/latency.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from prunekit import cli, io, models
from prunekit.metrics import runtime
from prunekit.surgery import channel_groups, deployed, remove_channels
from tests.helpers import one_line


def _half_lenet5() -> torch.nn.Module:
    """LeNet-5 with half of every prunable group's channels removed (channel_groups never lists the
    classifier)."""
    model = models.create("lenet5").eval()
    x = torch.randn(1, 1, 28, 28)
    remove_channels(model, {g.name: list(range(g.size // 2)) for g in channel_groups(model, x)}, x)
    return model


def _half_resnet20() -> torch.nn.Module:
    torch.manual_seed(0)
    model = models.create("resnet20").eval()
    for m in model.modules():  # non-trivial BN statistics, so folding is really exercised
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
    x = torch.randn(1, 3, 32, 32)
    plan = {g.name: list(range(g.size // 2)) for g in channel_groups(model, x) if "fc" not in g.name}
    remove_channels(model, plan, x)
    return model


@pytest.mark.parametrize("name", ["lenet5", "resnet20-half"])
def test_every_cpu_runtime_gives_the_torch_outputs(name: str) -> None:
    model = _half_resnet20() if name == "resnet20-half" else models.create("lenet5").eval()
    shape = model.input_shape
    x = torch.randn(3, *shape)
    with torch.no_grad():
        ref = model(x).numpy()
    for rt in ("eager", "deployed", "onnxruntime"):
        out = runtime.prepare(model, rt, x, threads=1).forward()
        assert out.shape == ref.shape
        np.testing.assert_allclose(out, ref, rtol=1e-3, atol=1e-3 * float(np.abs(ref).max()))
    with torch.no_grad():  # prepare works on a copy: the model itself is untouched
        np.testing.assert_array_equal(model(x).numpy(), ref)


def test_deployed_picks_a_memory_format_and_keeps_outputs() -> None:
    model = _half_resnet20()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        d = deployed(model, x, threads=1, rounds=1)
        assert d.memory_format in ("contiguous", "channels_last")
        xin = x.contiguous(memory_format=torch.channels_last) if d.memory_format == "channels_last" else x
        assert torch.allclose(d(xin), ref, atol=1e-4, rtol=1e-4)
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in d.modules())


def test_measure_rows_cover_every_model_runtime_and_batch() -> None:
    nets = {"a": models.create("lenet5"), "b": _half_lenet5()}
    rows = runtime.measure(nets, torch.randn(1, 1, 28, 28), runtimes=["eager", "onnxruntime"], batches=[1, 4],
                           threads=1, rounds=2, repeats=1, warmup=1)
    assert {(r["model"], r["runtime"], r["batch"]) for r in rows} == {
        (m, rt, b) for m in nets for rt in ("eager", "onnxruntime") for b in (1, 4)}
    assert all(r["samples"] == 2 and r["median_ms"] > 0 and r["threads"] == 1 for r in rows)
    table = runtime.side_by_side(rows, model="b", dense="a", macs_ratio=2.0)
    assert [t["model"] for t in table] == ["a", "b", "speed-up", "speed-up / MACs reduction (2.00x)"] * 2
    assert set(table[0]) == {"model", "batch", "eager ms", "onnxruntime ms"}


def test_bench_command_prints_a_side_by_side_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    small = tmp_path / "small.safetensors"
    io.save(_half_lenet5(), small)
    code = cli.main(["bench", str(small), "--against", "lenet5", "--batch", "1,2", "--rounds", "1",
                     "--runtime", "eager,deployed,onnxruntime"])
    out = capsys.readouterr().out
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["model", "batch", "eager", "ms", "deployed", "ms", "onnxruntime", "ms"]
    assert sum(line.startswith("speed-up /") for line in lines) == 2
    assert sum(line.startswith("lenet5 ") for line in lines) == 2


def test_bench_bad_input_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    for argv, words in ((["bench", "lenet5", "--runtime", "tvm"], "unknown runtime"),
                        (["bench", "lenet5", "--batch", "x"], "--batch"),
                        (["bench", "lenet5", "--runtime", "cuda"], "cuda")):
        if "cuda" in argv and torch.cuda.is_available():
            continue
        one_line(capsys, cli.main(argv), words)


def test_missing_onnxruntime_names_the_extra() -> None:
    """A real process in which onnxruntime cannot be imported: one line naming the extra, exit 2."""
    code = ("import sys; sys.modules['onnxruntime'] = None; from prunekit.cli import main; "
            "sys.exit(main(['bench', 'lenet5', '--runtime', 'eager,onnxruntime', '--rounds', '1']))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        "prunekit: error: runtime onnxruntime needs the onnxruntime package: pip install prunekit[onnx]"]
