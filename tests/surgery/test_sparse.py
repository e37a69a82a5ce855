"""Sparse model files: save_sparse / load_sparse round trips (bit-exact, small), zoo models reloaded from the
file alone, corrupt files rejected, and prunekit.load reading them too."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from prunekit.errors import PrunekitError
from prunekit.surgery import MaskSet, load_sparse, save_sparse
from prunekit.surgery.sparse import decode_file, ideal_bytes
from tests.surgery.nets import X, net

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one intra-op thread is as fast


# ---------------------------------------------------------------------------------------------------------
# sparse files


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.view({4: torch.int32, 8: torch.int64, 2: torch.int16, 1: torch.uint8}[t.element_size()])


def sparse_net(density: float, seed: int = 0) -> nn.Module:
    model = net(seed)
    model(X)  # BN statistics as after training
    MaskSet.from_topk(model, density).apply_()
    return model.eval()


@pytest.mark.parametrize("density", [0.5, 0.1, 0.01])
def test_sparse_round_trip_is_bit_exact_and_small(tmp_path: Path, density: float) -> None:
    model = sparse_net(density)
    with torch.no_grad():
        model[6].bias[0] = -0.0  # a negative zero and a NaN survive as values
        model[6].bias[1] = float("nan")
    path = save_sparse(model, tmp_path / "m.safetensors", extra={"note": "x"})
    back = load_sparse(path, model=net(seed=9))
    for k, v in model.state_dict().items():
        assert torch.equal(bits(back.state_dict()[k]), bits(v)), k
    size = path.stat().st_size
    dense = sum(v.numel() * v.element_size() for v in model.state_dict().values())
    ideal = sum(ideal_bytes(v) for v in model.state_dict().values())
    assert size < 1.2 * ideal + 4096  # header: entries, architecture, safetensors index
    if density <= 0.1:
        assert size < 0.3 * dense
    _, doc = decode_file(path)
    encs = {e["key"]: e["enc"] for e in doc["entries"]}
    assert encs["4.weight"] == ("bitmap" if density > 0.05 else "index")
    assert encs["1.running_mean"] == "dense"


def test_all_zero_and_empty_tensors_round_trip(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))  # BN bias, running mean, batch count: all 0
    with torch.no_grad():
        model[0].weight.zero_()
    path = save_sparse(model, tmp_path / "z.safetensors")
    back = load_sparse(path, model=nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)))
    assert all(torch.equal(back.state_dict()[k], v) for k, v in model.state_dict().items())


def test_zoo_model_reloads_from_the_sparse_file_alone(tmp_path: Path) -> None:
    models = pytest.importorskip("prunekit.models")
    from prunekit.surgery import remove_channels

    model = models.create("lenet5").eval()
    x = torch.randn(2, *model.input_shape)
    remove_channels(model, {"conv1": [0, 1]} if hasattr(model, "conv1") else {}, x)
    MaskSet.from_topk(model, 0.2).apply_()
    path = save_sparse(model, tmp_path / "lenet.safetensors")
    back = load_sparse(path)
    assert {k: v.shape for k, v in back.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    with torch.no_grad():
        assert torch.equal(back(x), model(x))


# --------------------------------------------------------------------------------------------- corruption


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata()
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    return tensors, json.loads(meta["prunekit"])


def _write(path: Path, tensors: dict[str, torch.Tensor], doc: dict) -> Path:
    save_file(tensors, str(path), metadata={"prunekit": json.dumps(doc)})
    return path


def _entry(doc: dict, key: str) -> dict:
    return next(e for e in doc["entries"] if e["key"] == key)


def test_corrupt_sparse_files_are_rejected(tmp_path: Path) -> None:
    good = save_sparse(sparse_net(0.3), tmp_path / "good.safetensors")
    idx = save_sparse(sparse_net(0.01), tmp_path / "idx.safetensors")
    cases = []

    t, d = _read(good)
    _entry(d, "4.weight")["shape"] = [16, 289]
    cases.append(("forged shape", t, d, "need"))

    t, d = _read(good)
    b = t["bitmap"].clone()
    b[0] ^= 1  # flip one occupancy bit
    t["bitmap"] = b
    cases.append(("popcount", t, d, "set bits but"))

    t, d = _read(good)
    _entry(d, "0.weight")["nnz"] += 1
    cases.append(("nnz", t, d, "need|set bits"))

    t, d = _read(idx)
    key = next(e["key"] for e in d["entries"] if e["enc"] == "index" and e["nnz"] > 1)
    name = f"index/{_entry(d, key)['index_dtype']}"
    i = t[name].clone()
    i[0] = 10_000
    t[name] = i
    cases.append(("index range", t, d, "out of range or not strictly increasing"))

    t, d = _read(good)
    _entry(d, "0.weight")["dtype"] = "complex64"
    cases.append(("dtype", t, d, "unknown dtype"))

    t, d = _read(good)
    d["entries"].append({"key": "huge", "dtype": "float32", "shape": [2**30, 64], "enc": "index", "nnz": 0,
                         "index_dtype": "int64"})
    cases.append(("bomb", t, d, "unexpected|max_expand"))

    t, d = _read(good)
    d["entries"].append(dict(d["entries"][0]))
    cases.append(("duplicate", t, d, "twice"))

    t, d = _read(good)
    t["extra"] = torch.zeros(3)
    cases.append(("extra tensor", t, d, "unexpected tensor"))

    t, d = _read(good)
    d["format"] = "prunekit-model/1"
    cases.append(("format", t, d, "not a prunekit sparse"))

    t, d = _read(good)
    _entry(d, "0.weight")["enc"] = "rle"
    cases.append(("encoding", t, d, "unknown encoding"))

    t, d = _read(good)
    _entry(d, "0.weight")["shape"] = [-1, 3]
    cases.append(("negative", t, d, "bad shape"))

    for what, tensors, doc, msg in cases:
        path = _write(tmp_path / f"{what}.safetensors", tensors, doc)
        with pytest.raises(PrunekitError, match=msg):
            load_sparse(path, model=net())
    # a valid file that does not fit the model, and a truncated file
    with pytest.raises(PrunekitError, match="weights do not fit|shape"):
        load_sparse(good, model=nn.Sequential(nn.Conv2d(3, 8, 3)))
    raw = good.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(PrunekitError, match="not a valid safetensors"):
        load_sparse(tmp_path / "cut.safetensors", model=net())
    with pytest.raises(PrunekitError, match="no architecture"):
        load_sparse(good)


def test_padding_bits_must_be_zero(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Linear(3, 3, bias=False))  # 9 weights -> 2 bitmap bytes, 7 padding bits
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 0, 0], [0, 0, 0], [0, 0, 0]]))
    path = save_sparse(model, tmp_path / "p.safetensors")
    t, d = _read(path)
    if _entry(d, "0.weight")["enc"] != "bitmap":
        pytest.skip("encoder chose another layout")
    b = t["bitmap"].clone()
    b[-1] |= np.uint8(0x80).item()
    t["bitmap"] = b
    with pytest.raises(PrunekitError, match="padding"):
        load_sparse(_write(tmp_path / "q.safetensors", t, d), model=nn.Sequential(nn.Linear(3, 3, bias=False)))


def test_file_size_tracks_the_ideal() -> None:
    w = torch.randn(256, 256)
    w[torch.rand_like(w) > 0.1] = 0
    nnz = int((w != 0).sum())
    assert ideal_bytes(w) == nnz * 4 + min(math.ceil(w.numel() / 8), nnz * 4)


def test_prunekit_load_reads_sparse_files_too(tmp_path: Path) -> None:
    """``prunekit.load`` is the one entry point: a sparse file loads as the dense network it encodes."""
    import prunekit
    from prunekit import models

    torch.manual_seed(0)
    model = models.create("lenet5")
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(torch.rand_like(p) < 0.3)
    save_sparse(model, tmp_path / "m.safetensors")
    loaded = prunekit.load(tmp_path / "m.safetensors")
    ref = load_sparse(tmp_path / "m.safetensors")
    for (n, a), (_, b), (_, c) in zip(loaded.state_dict().items(), ref.state_dict().items(),
                                      model.state_dict().items(), strict=True):
        assert torch.equal(a, b) and torch.equal(a, c), n
