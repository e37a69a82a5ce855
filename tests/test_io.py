"""Safe model files: round trips, pruned architectures, and hostile files."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from torch import nn

from prunekit import io, models
from prunekit.atomic import atomic_path
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


# ---------------------------------------------------------------------------------------------------------
# a user's own network: the structural history is replayed on a fresh instance (no registration)


class _Scale(nn.Module):
    """A per-channel scale no registry knows about."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.s = nn.Parameter(torch.linspace(0.5, 1.5, c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.s.view(1, -1, 1, 1)


class _Unit(nn.Module):
    """A residual unit in prunekit's block protocol, of a class nobody registered."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.branch = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), _Scale(c))
        self.shortcut = nn.Identity()
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.branch(x) + self.shortcut(x))


class _UserNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), _Scale(8), nn.ReLU())
        self.mid = nn.Sequential(nn.Conv2d(8, 12, 3, padding=1), nn.ReLU())
        self.units = nn.Sequential(_Unit(12), _Unit(12))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.units(self.mid(self.stem(x))))


X8 = torch.randn(2, 3, 8, 8)


def _pruned_user_net(seed: int = 0) -> tuple[nn.Module, nn.Module]:
    import copy

    from prunekit.surgery import remove_blocks, remove_channels

    torch.manual_seed(seed)
    net = _UserNet().eval()
    base = copy.deepcopy(net)
    remove_channels(net, {"stem.0": [1, 5], "mid.0": [0, 3, 7]}, X8)
    remove_blocks(net, ["units.1"])
    remove_channels(net, {"stem.0": [0]}, X8)  # a second call, in the new numbering
    return net, base


def test_pruned_user_network_reloads_by_replay_without_registration(tmp_path):
    net, base = _pruned_user_net()
    path = io.save(net, tmp_path / "u.safetensors", base=base)
    doc = io.read_safetensors(path)[1]
    arch = doc["architecture"]
    assert arch["factory"] is None and arch["overrides"] == {}
    assert [op["op"] for op in arch["history"]] == ["channels", "blocks", "channels"]
    torch.manual_seed(7)  # other random weights: everything must come from the file
    fresh = _UserNet()
    back = io.load(path, model=fresh)
    assert back is fresh and isinstance(back.units[1], nn.ReLU)
    assert back.stem[0].out_channels == 5 and back.stem[2].s.shape == (5,) and back.mid[0].out_channels == 9
    with torch.no_grad():
        torch.testing.assert_close(back(X8), net.eval()(X8), rtol=0, atol=0)
    # saved again relative to a fresh base, the reloaded network gives the same record
    again = io.save(back, tmp_path / "again.safetensors", base=_UserNet())
    assert io.read_safetensors(again)[1]["architecture"] == arch


def test_base_that_is_not_an_earlier_state_is_refused(tmp_path):
    net, _ = _pruned_user_net()
    other, _ = _pruned_user_net()
    from prunekit.surgery import remove_channels

    remove_channels(other, {"stem.0": [2]}, X8)
    with pytest.raises(PrunekitError, match="not an earlier state"):
        io.save(net, tmp_path / "x.safetensors", base=other)


def test_old_override_records_still_load(tmp_path):
    """Files written before the structural history (factory None + overrides only) keep loading."""
    net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    thin = nn.Sequential(nn.Linear(4, 2), nn.ReLU(), nn.Linear(2, 2))
    arch = {"factory": None, "overrides": {"0": io.module_spec(thin[0]), "2": io.module_spec(thin[2])}}
    path = tmp_path / "old.safetensors"
    io.write_safetensors(path, dict(thin.state_dict()), {"format": io.FORMAT, "architecture": arch})
    back = io.load(path, model=net)
    x = torch.randn(3, 4)
    torch.testing.assert_close(back(x), thin(x), rtol=0, atol=0)


_OK = {"op": "channels", "removed": {"stem.0": [1]}, "input_shapes": [[2, 3, 8, 8]]}


@pytest.mark.parametrize("ops,match", [
    ("nope", "list"),
    ([{"op": "exec", "code": "x"}], "not a structural operation"),
    ([{**_OK, "extra": 1}], "unexpected fields"),
    ([{**_OK, "removed": {"nosuch": [0]}}], "no layer 'nosuch'"),
    ([{**_OK, "removed": {"stem.0": [8]}}], "out of range"),
    ([{**_OK, "removed": {"stem.0": [-1]}}], "out of range"),
    ([{**_OK, "removed": {"stem.0": [True]}}], "integers"),
    ([{**_OK, "removed": {"stem.0": [1.0]}}], "integers"),
    ([{**_OK, "removed": {"stem.0": [1, 1]}}], "twice"),
    ([{**_OK, "removed": {"stem.0": list(range(8))}}], "removes all 8"),
    ([{**_OK, "removed": {"stem.1": [0]}, "input_shapes": [[2, 3, 8, 8]]}], "cannot be replayed|instead of"),
    ([{**_OK, "input_shapes": [[2**20, 3, 2**20, 8]]}], "bound|bad input shape"),
    ([{**_OK, "input_shapes": [[2, 3, 0, 8]]}], "bad input shape"),
    ([{**_OK, "input_shapes": [[2, 5, 8, 8]]}], "cannot be replayed"),
    ([{"op": "blocks", "names": ["units.5"], "input_shapes": []}], "no block"),
    ([{"op": "blocks", "names": ["mid"], "input_shapes": []}], "not a residual block"),
    ([_OK] * 20_000, "at most"),
    ([{**_OK, "num_heads": {"nosuch": 2}}], "num_heads names no module"),
    ([{**_OK, "num_heads": {"stem.0": 0}}], "num_heads"),
    ([{**_OK, "num_heads": [1]}], "num_heads must map"),
    ([{**_OK, "input_shapes": {"x y": [2, 3, 8, 8]}}], "keyword inputs"),
    ([{**_OK, "input_shapes": []}], "not tensors"),
])
def test_hostile_history_is_refused_in_one_line_and_changes_nothing(tmp_path, ops, match):
    arch = {"factory": None, "overrides": {}, "history": ops}
    path = tmp_path / "h.safetensors"
    io.write_safetensors(path, dict(_UserNet().state_dict()), {"format": io.FORMAT, "architecture": arch})
    fresh = _UserNet()
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    with pytest.raises(PrunekitError, match=match) as info:
        io.load(path, model=fresh)
    assert "\n" not in str(info.value)
    after = fresh.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_network_that_cannot_be_copied_loads_plain_files_and_refuses_records_in_one_line(tmp_path):
    import threading

    def build() -> nn.Module:
        net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
        net.lock = threading.Lock()  # deepcopy cannot copy it
        return net

    net = build()
    back = io.load(io.save(net, tmp_path / "plain.safetensors"), model=build())
    torch.testing.assert_close(back(X8), net(X8), rtol=0, atol=0)
    from prunekit.surgery import remove_channels

    base = build()
    remove_channels(net, {"0": [1]}, X8)
    with pytest.raises(PrunekitError, match="cannot copy the base network"):
        io.save(net, tmp_path / "pruned.safetensors", base=base)


def test_keyword_inputs_are_replayed_too(tmp_path):
    import copy

    from prunekit.surgery import remove_channels

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 6 * 6, 2))

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            return self.body(image)

    net = Net().eval()
    base = copy.deepcopy(net)
    remove_channels(net, {"body.0": [0, 2]}, {"image": X8})
    arch = io.architecture(net, base=base)
    assert arch["history"][0]["input_shapes"] == {"image": [2, 3, 8, 8]} and arch["overrides"] == {}
    back = io.load(io.save(net, tmp_path / "d.safetensors", base=base), model=Net())
    torch.testing.assert_close(back(X8), net(X8), rtol=0, atol=0)


def test_history_that_cannot_be_replayed_falls_back_to_overrides(tmp_path):
    """Token ids are not random floats: the replay fails at save time, and plain-layer changes are saved as
    overrides instead (checked by the reload)."""
    import copy

    from prunekit.surgery import remove_channels

    net = nn.Sequential(nn.Embedding(20, 8), nn.Flatten(), nn.Linear(8 * 5, 6), nn.ReLU(), nn.Linear(6, 2)).eval()
    base = copy.deepcopy(net)
    tokens = torch.randint(0, 20, (2, 5))
    remove_channels(net, {"2": [1, 4]}, tokens)
    arch = io.architecture(net, base=base)
    assert arch["history"] == [] and set(arch["overrides"]) == {"2", "4"}
    fresh = nn.Sequential(nn.Embedding(20, 8), nn.Flatten(), nn.Linear(8 * 5, 6), nn.ReLU(), nn.Linear(6, 2))
    back = io.load(io.save(net, tmp_path / "t.safetensors", base=base), model=fresh)
    torch.testing.assert_close(back(tokens), net(tokens), rtol=0, atol=0)


class _Attn(nn.Module):
    """Self-attention whose head count lives under a name no library knows (``self.h``)."""

    def __init__(self, dim: int = 16, h: int = 4) -> None:
        super().__init__()
        self.h, self.hd = h, dim // h
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = (p(x).view(b, n, -1, self.hd).transpose(1, 2) for p in (self.q, self.k, self.v))
        a = torch.softmax(q @ k.transpose(-1, -2) / self.hd**0.5, dim=-1)
        return self.o((a @ v).transpose(1, 2).reshape(b, n, -1))


def test_user_declared_head_counts_are_replayed(tmp_path):
    import copy

    from prunekit.surgery import channel_groups, remove_channels

    torch.manual_seed(0)
    net = nn.Sequential(_Attn(), nn.Flatten(), nn.Linear(16 * 5, 3)).eval()
    base = copy.deepcopy(net)
    x = torch.randn(2, 5, 16)
    heads = {"0": 4}
    qkv = next(g for g in channel_groups(net, x, num_heads=heads) if "0.v" in g.layers)
    assert qkv.heads == 4
    remove_channels(net, {qkv.name: list(range(4, 8))}, x, num_heads=heads)  # head 1 of q, k, v
    arch = io.architecture(net, base=base)
    assert arch["history"][0]["num_heads"] == {"0": 4}
    back = io.load(io.save(net, tmp_path / "a.safetensors", base=base), model=nn.Sequential(
        _Attn(), nn.Flatten(), nn.Linear(16 * 5, 3)))
    assert back[0].v.out_features == 12
    with torch.no_grad():
        torch.testing.assert_close(back(x), net(x), rtol=0, atol=0)
