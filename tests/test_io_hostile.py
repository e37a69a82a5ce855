"""Hostile model files are refused before they cost anything (issue #19, items 8, 9 and 13).

Memory is measured for real (peak RSS of a fresh process, ``resource.getrusage``), and the CLI is run as a
real process: one ``prunekit: error:`` line, exit 2.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import prunekit
from prunekit import io, models
from prunekit.surgery.sparse import FORMAT as SPARSE

SRC = str(Path(prunekit.__file__).resolve().parents[1])
ENV = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}


def _peak_growth_mb(tmp_path: Path, body: str) -> tuple[int, str]:
    """Run ``body`` in a fresh process after torch is imported; return (peak RSS growth in MB, its stdout)."""
    code = textwrap.dedent("""
        import resource, sys
        import torch
        from torch import nn
        import prunekit
        from prunekit.errors import PrunekitError
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
        {body}
        except PrunekitError as exc:
            print("refused:", exc)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print("growth_kb", after - before)
    """).format(body=textwrap.indent(textwrap.dedent(body), "    "))
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=ENV, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    growth = int(res.stdout.split("growth_kb")[-1])
    return growth // 1024, res.stdout


def test_hostile_override_in_a_user_network_file_allocates_nothing(tmp_path: Path) -> None:
    """#19.8: a ~500-byte file describing a 30000 x 30000 layer (3.6 GB) of a user's network."""
    arch = {"factory": None, "overrides": {"0": {"type": "Linear", "config": {
        "in_features": 30000, "out_features": 30000, "bias": True}}}}
    path = tmp_path / "bomb.safetensors"
    io.write_safetensors(path, {"0.weight": torch.zeros(1), "0.bias": torch.zeros(1)},
                         {"format": io.FORMAT, "architecture": arch})
    assert path.stat().st_size < 600
    growth, out = _peak_growth_mb(tmp_path, """
        prunekit.load("bomb.safetensors", model=nn.Sequential(nn.Linear(4, 4)))
    """)
    assert "refused:" in out and "0.weight" in out, out
    assert growth < 100, f"peak RSS grew by {growth} MB"


def test_sparse_file_is_checked_against_the_network_before_decoding(tmp_path: Path) -> None:
    """#19.9: a 2 MB sparse file whose entries claim a 2 GB tensor (within the 1024x expansion bound)."""
    stored = 2**19  # float32 values: 2 MB
    entries = [
        {"key": "0.weight", "dtype": "float32", "shape": [2**29 - stored], "enc": "index", "nnz": 1,
         "index_dtype": "int32"},
        {"key": "0.bias", "dtype": "float32", "shape": [stored - 1], "enc": "dense", "nnz": stored - 1},
    ]
    path = tmp_path / "sparse-bomb.safetensors"
    io.write_safetensors(path, {"values/float32": torch.ones(stored), "index/int32": torch.zeros(1, dtype=torch.int32)},
                         {"format": SPARSE, "architecture": None, "entries": entries})
    assert 2_000_000 < path.stat().st_size < 2_200_000
    growth, out = _peak_growth_mb(tmp_path, """
        prunekit.load("sparse-bomb.safetensors", model=nn.Sequential(nn.Linear(4, 4)))
    """)
    assert "refused:" in out and "0.weight" in out and "architecture needs (4, 4)" in out, out
    assert growth < 100, f"peak RSS grew by {growth} MB"


def test_decode_file_alone_still_bounds_expansion(tmp_path: Path) -> None:
    from prunekit.errors import PrunekitError
    from prunekit.surgery.sparse import decode_file

    entries = [{"key": "w", "dtype": "float32", "shape": [2**30], "enc": "index", "nnz": 0, "index_dtype": "int32"}]
    path = tmp_path / "x.safetensors"
    io.write_safetensors(path, {}, {"format": SPARSE, "architecture": None, "entries": entries})
    with pytest.raises(PrunekitError, match="max_expand"):
        decode_file(path)


def _lenet_file(tmp_path: Path, name: str, overrides: dict, state: dict[str, torch.Tensor]) -> Path:
    path = tmp_path / f"{name}.safetensors"
    io.write_safetensors(path, state, {"format": io.FORMAT, "architecture": {
        "factory": {"name": "lenet5", "kwargs": {}}, "overrides": overrides}})
    return path


def test_layers_that_do_not_chain_are_refused_at_load_by_every_command(tmp_path: Path) -> None:
    """#19.13: each tensor fits its layer, but the layers do not chain (fc1 reads 700 features, conv2 gives
    800), or a weight-free layer cannot run (a 50x50 pool on a 8x8 map): `info`, `eval` and `export` each
    print one line and exit 2 (the shape pass on the meta device at load)."""
    state = dict(models.create("lenet5").state_dict())
    state["fc1.weight"] = torch.zeros(500, 700)
    chain = _lenet_file(tmp_path, "chain", {"fc1": {"type": "Linear", "config": {
        "in_features": 700, "out_features": 500, "bias": True}}}, state)
    pool = _lenet_file(tmp_path, "pool", {"pool2": {"type": "MaxPool2d", "config": {"kernel_size": 50}}},
                       dict(models.create("lenet5").state_dict()))
    runs = []
    for f, layer in ((chain, "fc1"), (pool, "pool2")):
        for cmd in (["info", str(f)], ["eval", str(f), "--data", "digits"],
                    ["export", str(f), "--to", "onnx", "--out", str(tmp_path / "o.onnx")]):
            p = subprocess.Popen([sys.executable, "-m", "prunekit.cli", *cmd], cwd=tmp_path, env=ENV,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            runs.append((p, cmd, layer))
    for p, cmd, layer in runs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 2, (cmd, err)
        assert err.count("\n") == 1 and err.startswith("prunekit: error:"), (cmd, err)
        assert f"layer '{layer}'" in err and "does not run" in err, (cmd, err)
    assert not (tmp_path / "o.onnx").exists()


def test_user_network_record_that_does_not_chain_is_refused(tmp_path: Path) -> None:
    """The same shape pass for a user's network: its record is replayed on a meta twin, then run."""
    from torch import nn

    from prunekit.errors import PrunekitError

    def build() -> nn.Module:
        return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 4))

    net, base = build(), build()
    from prunekit.surgery import remove_channels

    remove_channels(net, {"0": [0, 1]}, torch.randn(2, 3, 8, 8))
    path = io.save(net, tmp_path / "u.safetensors", base=base)
    tensors, doc = io.read_safetensors(path)
    arch = doc["architecture"]
    arch["overrides"] = {"3": {"type": "Linear", "config": {"in_features": 7 * 6 * 6, "out_features": 4,
                                                            "bias": True}}}
    tensors["3.weight"] = torch.zeros(4, 7 * 6 * 6)
    io.write_safetensors(path, tensors, {"format": io.FORMAT, "architecture": arch})
    fresh = build()
    with pytest.raises(PrunekitError, match=r"layer '3' \(Linear\) fails"):
        io.load(path, model=fresh)
    assert fresh[0].out_channels == 8  # untouched: the check ran on a meta twin
    json.dumps(arch)
