"""Untrusted model files: pickles are refused everywhere, architecture JSON is validated, never evaluated."""

from __future__ import annotations

import io as io_module
import json
import os
import pickle
import resource
import shutil
import struct
from pathlib import Path

import pytest
import torch

from prunekit import cli, io, models, surgery
from prunekit.engine import Trainer, TrainerConfig, load_checkpoint
from prunekit.errors import PrunekitError
from tests.helpers import one_line


class _Payload:
    """Unpickling this object calls ``open(marker, "w")``: it creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _malicious_files(folder: Path, marker: Path) -> list[Path]:
    """torch.save files (zip and legacy pickle) carrying the payload, also under model-file names."""
    folder.mkdir(parents=True, exist_ok=True)
    obj = {"state_dict": {"fc.weight": torch.zeros(2, 2)}, "hook": _Payload(marker)}
    zip_pt = folder / "evil.pt"
    torch.save(obj, zip_pt)
    legacy = folder / "evil_legacy.pth"
    torch.save(obj, legacy, _use_new_zipfile_serialization=False)
    raw = folder / "evil_raw.pkl"
    raw.write_bytes(pickle.dumps(obj, protocol=4))
    out = [zip_pt, legacy, raw]
    for src in (zip_pt, legacy, raw):
        for suffix in (".safetensors", ".bin"):
            dst = folder / f"{src.stem}{suffix}"
            shutil.copyfile(src, dst)
            out.append(dst)
    return out


@pytest.fixture
def evil(tmp_path: Path) -> tuple[list[Path], Path]:
    marker = tmp_path / "marker" / "PWNED"
    marker.parent.mkdir()
    return _malicious_files(tmp_path / "files", marker), marker


def test_the_payload_is_real(tmp_path: Path) -> None:
    """Loading the files with pickle really runs the payload: the refusals below are not vacuous."""
    marker = tmp_path / "PWNED"
    files = _malicious_files(tmp_path / "f", marker)
    for f in files:
        marker.unlink(missing_ok=True)
        data = f.read_bytes()
        if data.startswith(b"PK"):
            torch.load(io_module.BytesIO(data), weights_only=False)
        else:
            pickle.loads(data) if "raw" in f.stem else torch.load(io_module.BytesIO(data), weights_only=False)
        assert marker.exists(), f


def test_library_readers_refuse_pickles(evil: tuple[list[Path], Path]) -> None:
    files, marker = evil
    for f in files:
        for reader in (io.load, surgery.load_sparse, load_checkpoint):
            with pytest.raises(PrunekitError) as e:
                reader(f)
            msg = str(e.value)
            assert str(f) in msg and "\n" not in msg
            if f.read_bytes()[:2] in (b"PK", b"\x80\x02", b"\x80\x04"):
                assert "pickle" in msg, msg
        with pytest.raises(PrunekitError):
            io.read_safetensors(f)
    assert not marker.exists()


def test_trainer_resume_refuses_a_pickled_checkpoint(evil: tuple[list[Path], Path], tmp_path: Path) -> None:
    files, marker = evil
    from prunekit import data

    train = data.load("synthetic", "train", n=8, shape=(1, 8, 8), num_classes=2)
    out = tmp_path / "run"
    out.mkdir()
    for f in files:
        shutil.copyfile(f, out / "checkpoint.safetensors")
        tr = Trainer(models.create("lenet5", num_classes=2, input_size=8), train,
                     config=TrainerConfig(batch_size=4, device="cpu", quiet=True), out_dir=out)
        with pytest.raises(PrunekitError, match="pickle|not a valid safetensors"):
            tr.fit(1, resume=True)
        with pytest.raises(PrunekitError):
            tr.fit(1, resume=f)
        assert (out / "checkpoint.safetensors").read_bytes() == f.read_bytes()  # not overwritten either
    assert not marker.exists()


def test_cli_entry_points_refuse_pickles(evil: tuple[list[Path], Path], tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    files, marker = evil
    for f in files:
        one_line(capsys, cli.main(["eval", str(f), "--data", "digits"]))
        one_line(capsys, cli.main(["info", str(f)]))
        for to in ("dense", "sparse", "onnx"):
            target = tmp_path / f"out-{to}"
            one_line(capsys, cli.main(["export", str(f), "--to", to, "--out", str(target)]))
            assert not target.exists()
    # prune --resume with the pickle as the run's checkpoint
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: {name: lenet5}\ndata: {name: digits}\ntrain: {epochs: 1, device: cpu}\n")
    out = tmp_path / "run"
    out.mkdir()
    shutil.copyfile(files[0], out / "checkpoint.safetensors")
    err = one_line(capsys, cli.main(["train", str(cfg), "--out", str(out), "--resume", "--quiet"]))
    assert "pickle" in err
    # a pickle given as the pretrained model of a run
    err = one_line(capsys, cli.main(["train", str(cfg), "--out", str(tmp_path / "run2"), "--quiet",
                                      "--set", f"pretrained={files[1]}"]))
    assert not marker.exists()


# ------------------------------------------------------------------------------------------ hostile JSON


def _lenet_file(tmp_path: Path, arch: object, name: str = "m.safetensors", tensors: dict | None = None) -> Path:
    """A well-formed safetensors file with real LeNet-5 weights and the given architecture record."""
    net = models.create("lenet5", input_size=8)
    t = dict(net.state_dict()) if tensors is None else tensors
    p = tmp_path / name
    io.write_safetensors(p, t, {"format": io.FORMAT, "architecture": arch, "extra": {}})
    return p


def _arch(overrides: dict, name: str = "lenet5", kwargs: dict | None = None) -> dict:
    return {"factory": {"name": name, "kwargs": {"input_size": 8} if kwargs is None else kwargs},
            "overrides": overrides}


def test_genuine_file_loads(tmp_path: Path) -> None:
    net = models.create("lenet5", input_size=8)
    back = io.load(io.save(net, tmp_path / "ok.safetensors"))
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), back.state_dict().values(), strict=True))


HOSTILE = {
    "dotted import path": {"fc2": {"type": "os.system", "config": {}}},
    "builtins": {"fc2": {"type": "builtins.eval", "config": {}}},
    "qualified torch class": {"fc2": {"type": "torch.nn.modules.linear.Linear", "config": {}}},
    "unknown class": {"fc2": {"type": "Transformer", "config": {}}},
    "subprocess": {"fc2": {"type": "subprocess.Popen", "config": {"args": ["touch", "x"]}}},
    "dunder child name": {"fc2": {"type": "Sequential", "children": {"__class__": {"type": "ReLU"}}}},
    "dotted child name": {"fc2": {"type": "Sequential", "children": {"a.b": {"type": "ReLU"}}}},
    "dunder layer": {"__dict__": {"type": "ReLU", "config": {}}},
    "attribute layer": {"forward": {"type": "ReLU", "config": {}}},
    "path-like layer": {"../../etc": {"type": "ReLU", "config": {}}},
    "empty layer name": {"": {"type": "ReLU", "config": {}}},
    "missing parent": {"nothere.fc": {"type": "ReLU", "config": {}}},
    "huge linear": {"fc2": {"type": "Linear", "config": {"in_features": 2**31, "out_features": 2**31}}},
    "huge conv": {"conv1": {"type": "Conv2d", "config": {"in_channels": 2**31, "out_channels": 2**31,
                                                          "kernel_size": [2**31, 2**31]}}},
    "out-of-range int": {"fc2": {"type": "Linear", "config": {"in_features": 10**30, "out_features": 2}}},
    "negative size": {"fc2": {"type": "Linear", "config": {"in_features": -5, "out_features": 2}}},
    "zero groups": {"conv1": {"type": "Conv2d", "config": {"in_channels": 1, "out_channels": 20, "kernel_size": 5,
                                                            "groups": 0}}},
    "bad padding mode": {"conv1": {"type": "Conv2d", "config": {"in_channels": 1, "out_channels": 20,
                                                                 "kernel_size": 5, "padding_mode": "exec"}}},
    "wrong kwarg": {"fc2": {"type": "Linear", "config": {"__init__": 1}}},
    "nested dict value": {"fc2": {"type": "Linear", "config": {"in_features": {"a": 1}, "out_features": 2}}},
    "sequential with config": {"fc2": {"type": "Sequential", "config": {"x": 1}}},
    "spec is a list": {"fc2": ["Linear"]},
    "extra spec field": {"fc2": {"type": "ReLU", "config": {}, "code": "import os"}},
    "weights do not fit": {"fc2": {"type": "Linear", "config": {"in_features": 500, "out_features": 3}}},
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_overrides_are_refused(tmp_path: Path, case: str) -> None:
    p = _lenet_file(tmp_path, _arch(HOSTILE[case]))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(PrunekitError) as e:
        io.load(p)
    assert "\n" not in str(e.value)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200 * 1024  # KiB: no huge allocation


@pytest.mark.parametrize("factory", [
    {"name": "os.system", "kwargs": {}},
    {"name": "torchvision:../../x", "kwargs": {}},
    {"name": "lenet5", "kwargs": {"input_size": 0}},
    {"name": "lenet5", "kwargs": {"num_classes": -1}},
    {"name": "lenet5", "kwargs": {"input_size": "8; rm -rf /"}},
    {"name": "lenet5", "kwargs": {"__class__": 1}},
    {"name": "lenet5", "kwargs": {"num_classes": 2**31, "input_size": 8}},
    {"name": "lenet5", "kwargs": [1, 2]},
    {"name": ["lenet5"], "kwargs": {}},
])
def test_hostile_factories_are_refused(tmp_path: Path, factory: dict) -> None:
    p = _lenet_file(tmp_path, {"factory": factory, "overrides": {}})
    with pytest.raises(PrunekitError):
        io.load(p)


def test_deeply_nested_and_oversized_json(tmp_path: Path) -> None:
    spec: dict = {"type": "ReLU", "config": {}}
    for _ in range(200):  # deeper than the limit, shallow enough for the JSON encoder
        spec = {"type": "Sequential", "children": {"0": spec}}
    with pytest.raises(PrunekitError, match="nested"):
        io.load(_lenet_file(tmp_path, _arch({"fc2": spec}), "deep.safetensors"))
    # nesting far beyond Python's recursion limit, written by hand
    deep = "[" * 100_000 + "]" * 100_000
    p = tmp_path / "deeper.safetensors"
    _raw_safetensors(p, {"prunekit": '{"format": "prunekit-model/1", "architecture": ' + deep + "}"})
    with pytest.raises(PrunekitError, match="JSON"):
        io.load(p)
    with pytest.raises(PrunekitError):
        load_checkpoint(p)
    # a flat record with very many modules
    many = {f"fc2.m{i}": {"type": "ReLU", "config": {}} for i in range(100_001)}
    with pytest.raises(PrunekitError, match="overrides|modules"):
        io.load(_lenet_file(tmp_path, _arch(many), "many.safetensors"))


def _raw_safetensors(path: Path, metadata: dict[str, str], header_len: int | None = None) -> None:
    header = json.dumps({"__metadata__": metadata}).encode()
    n = len(header) if header_len is None else header_len
    path.write_bytes(struct.pack("<Q", n) + header)


def test_lying_safetensors_header(tmp_path: Path) -> None:
    p = tmp_path / "liar.safetensors"
    _raw_safetensors(p, {"prunekit": "{}"}, header_len=2**60)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for reader in (io.load, surgery.load_sparse, load_checkpoint):
        with pytest.raises(PrunekitError, match="not a valid safetensors"):
            reader(p)
    # a tensor whose offsets point past the end of the file
    header = json.dumps({"w": {"dtype": "F32", "shape": [2**20, 2**20], "data_offsets": [0, 2**42]}}).encode()
    p.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 16)
    with pytest.raises(PrunekitError, match="not a valid safetensors"):
        io.load(p)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200 * 1024


def test_nothing_from_the_file_is_executed(tmp_path: Path) -> None:
    """Strings that would be code anywhere they were evaluated stay inert values."""
    marker = tmp_path / "EXEC"
    code = f"__import__('pathlib').Path({str(marker)!r}).touch()"
    cases = [
        _arch({"fc2": {"type": code, "config": {}}}),
        _arch({code: {"type": "ReLU", "config": {}}}),
        {"factory": {"name": code, "kwargs": {}}, "overrides": {}},
        _arch({"fc2": {"type": "Linear", "config": {"in_features": code, "out_features": 10}}}),
    ]
    for i, arch in enumerate(cases):
        with pytest.raises(PrunekitError):
            io.load(_lenet_file(tmp_path, arch, f"c{i}.safetensors"))
    assert not marker.exists()
    assert not os.path.exists("EXEC")
