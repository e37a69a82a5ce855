"""Safe model files: round trips, pruned architectures, and hostile files."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from torch import nn

from prunekit import io, models
from prunekit._atomic import atomic_path
from prunekit.errors import PrunekitError


def _outputs_equal(a: nn.Module, b: nn.Module, shape: tuple[int, ...]) -> None:
    x = torch.randn(2, *shape)
    a.eval()
    b.eval()
    torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)


@pytest.mark.parametrize("name,shape", [("lenet5", (1, 28, 28)), ("resnet20", (3, 32, 32)), ("vgg16", (3, 32, 32))])
def test_zoo_round_trip(tmp_path, name, shape):
    net = models.create(name)
    path = io.save(net, tmp_path / "m.safetensors")
    back = io.load(path)
    _outputs_equal(net, back, shape)
    assert io.factory_of(back) == {"name": name, "kwargs": {}}


def test_thinned_and_depth_pruned_model_reloads_without_code(tmp_path):
    net = models.create("resnet20")
    blk = net.layer1[0]
    blk.branch.conv1 = nn.Conv2d(16, 5, 3, padding=1, bias=False)
    blk.branch.bn1 = nn.BatchNorm2d(5)
    blk.branch.conv2 = nn.Conv2d(5, 16, 3, padding=1, bias=False)
    net.layer2[2] = nn.ReLU()  # a residual block replaced by its activation (depth pruning)
    arch = io.architecture(net)
    assert set(arch["overrides"]) == {"layer1.0.branch.conv1", "layer1.0.branch.bn1", "layer1.0.branch.conv2",
                                      "layer2.2"}
    back = io.load(io.save(net, tmp_path / "p.safetensors"))
    _outputs_equal(net, back, (3, 32, 32))
    assert sum(p.numel() for p in back.parameters()) == sum(p.numel() for p in net.parameters())


def test_user_model_loads_into_given_module(tmp_path):
    net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    path = io.save(net, tmp_path / "u.safetensors")
    with pytest.raises(PrunekitError, match="pass model="):
        io.load(path)
    other = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    _outputs_equal(net, io.load(path, model=other), (4,))


def test_unregistered_module_type_is_named(tmp_path):
    class Weird(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(3))

    net = models.create("lenet5")
    net.extra = Weird()
    with pytest.raises(PrunekitError, match="extra.*register_module"):
        io.save(net, tmp_path / "w.safetensors")
    assert not (tmp_path / "w.safetensors").exists()


def _forge(tmp_path, arch, tensors=None):
    path = tmp_path / "forged.safetensors"
    io.write_safetensors(path, tensors or {"x": torch.zeros(1)}, {"format": io.FORMAT, "architecture": arch})
    return path


def test_file_cannot_name_arbitrary_classes(tmp_path):
    arch = {"factory": {"name": "lenet5", "kwargs": {}},
            "overrides": {"fc1": {"type": "os.system", "config": {"command": "echo hi"}}}}
    with pytest.raises(PrunekitError, match="not allowed"):
        io.load(_forge(tmp_path, arch))


def test_huge_layer_in_forged_file_allocates_nothing_and_fails(tmp_path):
    arch = {"factory": {"name": "lenet5", "kwargs": {}},
            "overrides": {"fc1": {"type": "Linear", "config": {"in_features": 800, "out_features": 2**30,
                                                               "bias": True}}}}
    with pytest.raises(PrunekitError, match="weights do not fit|shape"):
        io.load(_forge(tmp_path, arch, dict(models.create("lenet5").state_dict())))


def test_unknown_factory_and_bad_kwargs(tmp_path):
    with pytest.raises(PrunekitError, match="unknown model"):
        io.load(_forge(tmp_path, {"factory": {"name": "nope", "kwargs": {}}, "overrides": {}}))
    with pytest.raises(PrunekitError):
        io.load(_forge(tmp_path, {"factory": {"name": "lenet5", "kwargs": {"evil": 1}}, "overrides": {}}))


def test_shape_mismatch_is_one_clear_error(tmp_path):
    sd = dict(models.create("lenet5").state_dict())
    sd["fc2.weight"] = torch.zeros(3, 3)
    arch = {"factory": {"name": "lenet5", "kwargs": {}}, "overrides": {}}
    with pytest.raises(PrunekitError, match="fc2.weight"):
        io.load(_forge(tmp_path, arch, sd))


@pytest.mark.parametrize("damage", ["truncate", "garbage", "huge_header", "empty"])
def test_damaged_files_are_rejected(tmp_path, damage):
    path = io.save(models.create("lenet5"), tmp_path / "m.safetensors")
    raw = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(raw[: len(raw) // 2])
    elif damage == "garbage":
        path.write_bytes(b"\x00garbage" * 100)
    elif damage == "huge_header":
        path.write_bytes(struct.pack("<Q", 2**62) + raw[8:])
    else:
        path.write_bytes(b"")
    with pytest.raises(PrunekitError, match="m.safetensors"):
        io.load(path)


def test_not_a_prunekit_file(tmp_path):
    from safetensors.torch import save_file

    p = tmp_path / "plain.safetensors"
    save_file({"a": torch.zeros(2)}, str(p))
    with pytest.raises(PrunekitError, match="not a prunekit"):
        io.load(p)


def test_nested_state_round_trip_keeps_int_keys_tuples_and_nonfinite():
    net = nn.Linear(3, 2)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    net(torch.randn(4, 3)).sum().backward()
    opt.step()
    state = {"opt": opt.state_dict(), "t": (1, 2.5), "inf": float("inf"), "none": None}
    tensors: dict[str, torch.Tensor] = {}
    doc = io.flatten_state(state, "s", tensors)
    json.dumps(doc)  # JSON-able
    back = io.unflatten_state(json.loads(json.dumps(doc)), tensors)
    assert back["t"] == (1, 2.5) and back["inf"] == float("inf") and back["none"] is None
    assert set(back["opt"]["state"]) == {0, 1}
    torch.testing.assert_close(back["opt"]["state"][0]["momentum_buffer"], opt.state[net.weight]["momentum_buffer"])


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    target = tmp_path / "f.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert list(tmp_path.iterdir()) == [target]
