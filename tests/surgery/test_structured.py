"""Structured surgery: channel groups, channel removal, block removal, zero plans, save/reload after surgery."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from prunekit.errors import PrunekitError
from prunekit.surgery import (
    ChannelGroup,
    channel_groups,
    conv_group_plan,
    removable_blocks,
    remove_blocks,
    remove_channels,
    zero_channel_plan,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These models are tiny: one intra-op thread is as fast and does not spin against other work."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ---------------------------------------------------------------------------------------------------------
# small test models


class Block(nn.Module):
    """The zoo's residual-block protocol: act(branch(x) + shortcut(x))."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.branch = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
            nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.branch(x) + self.shortcut(x))


class TinyResNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.layer1 = nn.Sequential(Block(8, 8), Block(8, 8))
        self.layer2 = nn.Sequential(Block(8, 16, 2), Block(16, 16))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.layer2(self.layer1(self.stem(x)))), 1))


class TinyVGG(nn.Module):
    """conv-bn-relu-pool x2, flatten of a 4x4 map into the first linear layer, a hidden linear layer."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 12, 3, padding=1), nn.BatchNorm2d(12), nn.ReLU(), nn.MaxPool2d(2))
        self.flatten = nn.Flatten()
        self.classifier = nn.Sequential(nn.Linear(12 * 4 * 4, 20), nn.ReLU(), nn.Linear(20, 5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.features(x)))


class CatNet(nn.Module):
    """Two branches concatenated, then added to a third conv (concat + residual coupling)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.ReLU())
        self.c = nn.Sequential(nn.Conv2d(3, 10, 3, padding=1), nn.BatchNorm2d(10))
        self.mix = nn.Sequential(nn.Conv2d(10, 7, 3, padding=1), nn.BatchNorm2d(7), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(7 + 10, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(torch.cat([self.a(x), self.b(x)], 1) + self.c(x))
        z = self.mix(y)
        pooled = self.head[1](self.head[0](torch.cat([z, y], 1)))
        return self.head[2](pooled)


class InvertedResidual(nn.Module):
    def __init__(self, c: int, expand: int) -> None:
        super().__init__()
        h = c * expand
        self.conv = nn.Sequential(
            nn.Conv2d(c, h, 1, bias=False), nn.BatchNorm2d(h), nn.ReLU6(),
            nn.Conv2d(h, h, 3, padding=1, groups=h, bias=False), nn.BatchNorm2d(h), nn.ReLU6(),
            nn.Conv2d(h, c, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x)


class DepthwiseNet(nn.Module):
    """MobileNet-v2 style: pointwise -> depthwise -> pointwise with a residual add."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU6())
        self.dw = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=True), nn.BatchNorm2d(8),
                                nn.ReLU6())
        self.blocks = nn.Sequential(InvertedResidual(8, 3), InvertedResidual(8, 2))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.dw(self.stem(x))))


class GroupedNet(nn.Module):
    """ResNeXt style: 1x1 -> grouped 3x3 (4 groups) -> 1x1."""

    def __init__(self) -> None:
        super().__init__()
        self.reduce = nn.Sequential(nn.Conv2d(3, 16, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.grouped = nn.Sequential(nn.Conv2d(16, 12, 3, padding=1, groups=4, bias=False), nn.BatchNorm2d(12),
                                     nn.ReLU())
        self.expand = nn.Sequential(nn.Conv2d(12, 8, 1), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.expand(self.grouped(self.reduce(x))))


TEST_MODELS = {"tiny_resnet": TinyResNet, "tiny_vgg": TinyVGG, "catnet": CatNet, "depthwise": DepthwiseNet,
               "grouped": GroupedNet}
X16 = (2, 3, 16, 16)


# ---------------------------------------------------------------------------------------------------------
# helpers


def randomise(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics / affine parameters (outputs stay O(1)), eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=g) * 0.4 - 0.2)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.75)
                m.weight.copy_(torch.rand(n, generator=g) * 0.5 + 0.5)
                m.bias.copy_(torch.rand(n, generator=g) * 0.2 - 0.1)
    return model.eval()


def choose(g: ChannelGroup, frac: float, gen: torch.Generator) -> list[int]:
    """Random channels of a group; balanced over its grouped-conv chunks."""
    if g.chunks > 1:
        per = g.size // g.chunks
        k = max(1, int(per * frac)) if per > 1 else 0
        out = []
        for c in range(g.chunks):
            out += [c * per + int(i) for i in torch.randperm(per, generator=gen)[:k]]
        return sorted(out)
    k = min(g.size - 1, max(1, int(g.size * frac)))
    return sorted(int(i) for i in torch.randperm(g.size, generator=gen)[:k])


def zero_channels(model: nn.Module, g: ChannelGroup, channels: list[int]) -> None:
    """Make group channels contribute nothing: producer filters / biases and norm scale / shift to 0."""
    with torch.no_grad():
        for name in (*g.layers, *g.norms):
            rows = [i for i in g.layer_indices(name, channels) if i >= 0]
            owner, _, leaf = name.rpartition(".")
            p = getattr(model.get_submodule(owner), leaf)
            if isinstance(p, nn.Parameter):  # a bare per-channel parameter: leave it, it multiplies
                continue
            m = model.get_submodule(name)
            w = m.weight
            if isinstance(m, nn.modules.conv._ConvNd) and m.transposed:
                w[:, rows] = 0
            else:
                w[rows] = 0
            if getattr(m, "bias", None) is not None:
                m.bias[rows] = 0


def assert_plain(model: nn.Module) -> None:
    """Every layer's config attributes agree with its tensors (what prunekit.io relies on)."""
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            assert m.in_channels % m.groups == 0 and m.out_channels % m.groups == 0, name
            assert tuple(m.weight.shape) == (m.out_channels, m.in_channels // m.groups, *m.kernel_size), name
            assert m.bias is None or tuple(m.bias.shape) == (m.out_channels,), name
        elif isinstance(m, nn.Linear):
            assert tuple(m.weight.shape) == (m.out_features, m.in_features), name
            assert m.bias is None or tuple(m.bias.shape) == (m.out_features,), name
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            for t in (m.weight, m.bias, m.running_mean, m.running_var):
                assert tuple(t.shape) == (m.num_features,), name


def prune_zeroed(model: nn.Module, x: torch.Tensor, frac: float = 0.4, seed: int = 0) -> tuple[float, object]:
    """Zero random channels of every prunable group, remove them; return (max |dy|, report)."""
    gen = torch.Generator().manual_seed(seed)
    plan = {}
    for g in channel_groups(model, x):
        idx = choose(g, frac, gen)
        if idx:
            zero_channels(model, g, idx)
            plan[g.name] = idx
    model.eval()
    with torch.no_grad():
        y0 = model(x)
    report = remove_channels(model, plan, x)
    with torch.no_grad():
        y1 = model(x)
    assert y0.shape == y1.shape
    assert_plain(model)
    return float((y0 - y1).abs().max()), report


def widths(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


# ---------------------------------------------------------------------------------------------------------
# channel groups


def test_groups_of_a_residual_network() -> None:
    model = TinyResNet()
    groups = {g.name: g for g in channel_groups(model, torch.randn(*X16))}
    stage1 = groups["stem.0"]
    assert stage1.size == 8
    assert set(stage1.layers) == {"stem.0", "layer1.0.branch.3", "layer1.1.branch.3"}
    assert stage1.layers[0] == "stem.0"
    assert set(stage1.norms) == {"stem.1", "layer1.0.branch.4", "layer1.1.branch.4"}
    assert {"layer1.0.branch.0", "layer1.1.branch.0", "layer2.0.branch.0", "layer2.0.shortcut.0"} <= set(
        stage1.consumers)
    stage2 = groups["layer2.0.branch.3"]
    assert set(stage2.layers) == {"layer2.0.branch.3", "layer2.0.shortcut.0", "layer2.1.branch.3"}
    assert "fc" in stage2.consumers
    assert all("fc" not in g.layers for g in groups.values())  # the classifier is never a group
    assert groups["layer1.0.branch.0"].layers == ("layer1.0.branch.0",)
    assert stage1.index["layer1.0.branch.3"] == tuple(range(8))
    assert len(groups) == 2 + 4  # two residual groups, one inner group per block
    only = channel_groups(model, torch.randn(*X16), layers=["layer1.1.branch.4"])
    assert [g.name for g in only] == ["stem.0"]
    with pytest.raises(PrunekitError, match="no layer 'nope'"):
        channel_groups(model, torch.randn(*X16), layers=["nope"])
    everything = channel_groups(model, torch.randn(*X16), include_unprunable=True)
    assert any(g.name == "fc" for g in everything)


def test_groups_keep_model_mode_and_hooks_silent() -> None:
    model = TinyResNet().train()
    calls = []
    model.stem.register_forward_hook(lambda *a: calls.append(1))
    channel_groups(model, torch.randn(*X16))
    assert model.training and all(m.training for m in model.modules())
    assert calls == []  # traced on a meta twin: the user's hooks did not fire


# ---------------------------------------------------------------------------------------------------------
# the invariant on the test models


@pytest.mark.parametrize("name", list(TEST_MODELS))
def test_removing_zeroed_channels_keeps_outputs(name: str) -> None:
    torch.manual_seed(0)
    model = randomise(TEST_MODELS[name]())
    x = torch.randn(*X16)
    before = sum(p.numel() for p in model.parameters())
    diff, report = prune_zeroed(model, x)
    assert diff <= 1e-5
    assert report.params_before == before
    assert report.params_after == sum(p.numel() for p in model.parameters()) < before
    assert channel_groups(model, x)  # the pruned model can be analysed (and pruned) again
    diff2, _ = prune_zeroed(model, x, frac=0.3, seed=1)
    assert diff2 <= 1e-5


def test_flatten_into_first_linear() -> None:
    model = randomise(TinyVGG())
    x = torch.randn(*X16)
    groups = {g.name: g for g in channel_groups(model, x)}
    assert set(groups) == {"features.0", "features.4", "classifier.0"}
    zero_channels(model, groups["features.4"], [1, 5, 6])
    with torch.no_grad():
        y0 = model(x)
    report = remove_channels(model, {"features.4": [1, 5, 6]}, x)
    assert model.classifier[0].in_features == (12 - 3) * 16
    assert report.layers["classifier.0"].in_before == 192 and report.layers["classifier.0"].in_after == 144
    assert model.features[5].num_features == 9
    with torch.no_grad():
        assert float((model(x) - y0).abs().max()) <= 1e-5


def test_residual_coupling_is_reported() -> None:
    model = randomise(TinyResNet())
    x = torch.randn(*X16)
    report = remove_channels(model, {"layer1.1.branch.3": [0, 3]}, x)
    assert report.removed == {"stem.0": [0, 3]}
    assert set(report.coupled["layer1.1.branch.3"]) == {"stem.0", "layer1.0.branch.3"}
    for conv in ("stem.0", "layer1.0.branch.3", "layer1.1.branch.3"):
        assert model.get_submodule(conv).out_channels == 6
    for conv in ("layer1.0.branch.0", "layer1.1.branch.0", "layer2.0.branch.0", "layer2.0.shortcut.0"):
        assert model.get_submodule(conv).in_channels == 6
    assert report.layers["layer2.0.shortcut.0"].in_before == 8
    assert "stem.0" in report.summary()
    assert report.to_dict()["removed"] == {"stem.0": [0, 3]}


def test_two_entries_on_one_group_are_merged() -> None:
    model = TinyResNet()
    x = torch.randn(*X16)
    report = remove_channels(model, {"stem.0": [1], "layer1.0.branch.3": [2, 1], "layer1.0.branch.4": [7]}, x)
    assert report.removed == {"stem.0": [1, 2, 7]}
    assert model.stem[0].out_channels == 5


def test_concat_and_add() -> None:
    model = randomise(CatNet())
    x = torch.randn(*X16)
    groups = channel_groups(model, x)
    # c is added to cat(a, b): a's 6 channels and b's 4 are tied to c's first 6 and last 4
    ga = next(g for g in groups if "a.0" in g.layers)
    gb = next(g for g in groups if "b.0" in g.layers)
    assert "c.0" in ga.layers and "c.0" in gb.layers
    pairs = {(ga.index["a.0"][i], ga.index["c.0"][i]) for i in range(ga.size) if ga.index["a.0"][i] >= 0}
    assert pairs == {(i, i) for i in range(6)}
    b2 = gb.index["b.0"].index(2)  # the group channel that is b's channel 2
    assert gb.index["c.0"][b2] == 8
    zero_channels(model, gb, [b2])
    with torch.no_grad():
        y0 = model(x)
    report = remove_channels(model, {"c.0": [8]}, x)  # c's channel 8 is b's channel 2
    assert report.removed == {gb.name: [b2]}
    assert model.b[0].out_channels == 3 and model.c[0].out_channels == 9 and model.mix[0].in_channels == 9
    assert model.head[2].in_features == 16
    with torch.no_grad():
        assert float((model(x) - y0).abs().max()) <= 1e-5


def test_depthwise_follows_its_producer() -> None:
    model = randomise(DepthwiseNet())
    x = torch.randn(*X16)
    groups = {g.name: g for g in channel_groups(model, x)}
    g = groups["blocks.0.conv.0"]
    assert set(g.layers) == {"blocks.0.conv.0", "blocks.0.conv.3"}
    remove_channels(model, {"blocks.0.conv.3": [0, 5, 23]}, x)
    dw = model.blocks[0].conv[3]
    assert dw.in_channels == dw.out_channels == dw.groups == 21
    assert model.blocks[0].conv[6].in_channels == 21
    assert_plain(model)


def test_grouped_conv_needs_balanced_or_whole_groups() -> None:
    model = randomise(GroupedNet())
    x = torch.randn(*X16)
    groups = {g.name: g for g in channel_groups(model, x)}
    assert groups["reduce.0"].chunks == 4 and groups["grouped.0"].chunks == 4
    state = copy.deepcopy(model.state_dict())
    with pytest.raises(PrunekitError, match=r"grouped conv 'grouped.0' \(groups=4\)"):
        remove_channels(model, {"reduce.0": [0, 1]}, x)  # two inputs of conv group 0 only
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())  # untouched
    remove_channels(model, {"reduce.0": [0, 4, 8, 12]}, x)  # one input from each group
    assert model.grouped[0].in_channels == 12 and model.grouped[0].groups == 4
    assert_plain(model)


def test_grouped_conv_whole_group_removal_is_exact() -> None:
    model = randomise(GroupedNet())
    x = torch.randn(*X16)
    plan = conv_group_plan(model, x, "grouped.0", [1, 3])
    assert plan == {"grouped.0": [3, 4, 5, 9, 10, 11], "reduce.0": [4, 5, 6, 7, 12, 13, 14, 15]}
    gs = {g.name: g for g in channel_groups(model, x)}
    zero_channels(model, gs["grouped.0"], plan["grouped.0"])
    with torch.no_grad():
        y0 = model(x)
    remove_channels(model, plan, x)
    conv = model.grouped[0]
    assert (conv.in_channels, conv.out_channels, conv.groups) == (8, 6, 2)
    assert_plain(model)
    with torch.no_grad():
        assert float((model(x) - y0).abs().max()) <= 1e-5
    with pytest.raises(PrunekitError, match="not a grouped"):
        conv_group_plan(model, x, "expand.0", [0])


# ---------------------------------------------------------------------------------------------------------
# counts


def conv_linear_macs(model: nn.Module, x: torch.Tensor) -> int:
    total = 0

    def hook(m: nn.Module, _inp: object, out: torch.Tensor) -> None:
        nonlocal total
        if isinstance(m, nn.Conv2d):
            total += out[0].numel() * (m.in_channels // m.groups) * math.prod(m.kernel_size)
        else:
            total += m.in_features * m.out_features

    hs = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    with torch.no_grad():
        model(x[:1])
    for h in hs:
        h.remove()
    return total


def test_param_and_mac_counts_match_hand_computation() -> None:
    model = TinyVGG()
    x = torch.randn(1, 3, 16, 16)
    remove_channels(model, {"features.0": [0, 1, 2], "features.4": list(range(8)), "classifier.0": [0, 1]}, x)
    c1, c2, h = 5, 4, 18  # widths left: conv1 8-3, conv2 12-8, hidden 20-2
    params = (3 * 9 * c1 + c1) + 2 * c1 + (c1 * 9 * c2 + c2) + 2 * c2 + (c2 * 16 * h + h) + (h * 5 + 5)
    macs = 16 * 16 * c1 * 3 * 9 + 8 * 8 * c2 * c1 * 9 + c2 * 16 * h + h * 5
    assert sum(p.numel() for p in model.parameters()) == params
    assert conv_linear_macs(model, x) == macs


# ---------------------------------------------------------------------------------------------------------
# validation, min_channels, clamp, round_to


def test_bad_plans_are_rejected_and_leave_the_model_alone() -> None:
    model = TinyResNet()
    x = torch.randn(*X16)
    before = widths(model)
    cases = [
        ({"nope": [0]}, "no layer 'nope'"),
        ({"stem.0": [8]}, "out of range"),
        ({"stem.0": [-1]}, "out of range"),
        ({"stem.0": [0.5]}, "not an integer"),
        ({"stem.0": [True]}, "not an integer"),
        ({"stem.0": "01"}, "sequence of channel indices"),
        ({"fc": [0]}, "outputs of the model"),
        ({"stem.2": [0]}, "no removable output channels"),
        ({"stem.0": list(range(8))}, r"'stem.0' would leave 0 \(min_channels=3\)"),
        ({"layer1.0.branch.3": list(range(6))}, r"'layer1.0.branch.3' \(coupled group of 'stem.0'\)"),
        ([("stem.0", [0])], "must map layer names"),
    ]
    for plan, msg in cases:
        with pytest.raises(PrunekitError, match=msg):
            remove_channels(model, plan, x, min_channels=3)  # type: ignore[arg-type]
        assert widths(model) == before
    with pytest.raises(PrunekitError, match="min_channels"):
        remove_channels(model, {"stem.0": [0]}, x, min_channels=0)


def test_clamp_and_round_to() -> None:
    model = TinyResNet()
    x = torch.randn(*X16)
    report = remove_channels(model, {"stem.0": [7, 6, 5, 4, 3, 2, 1, 0]}, x, min_channels=2, clamp=True)
    assert report.removed == {"stem.0": [2, 3, 4, 5, 6, 7]}  # the last-listed (0, 1) are kept
    assert "clamped" in report.adjusted["stem.0"]
    assert model.stem[0].out_channels == 2
    report = remove_channels(model, {"layer2.0.branch.0": list(range(11))}, x, round_to=4)
    assert model.layer2[0].branch[0].out_channels == 8  # 5 left -> rounded up to 8
    assert report.removed == {"layer2.0.branch.0": list(range(8))}
    assert "round_to=4" in report.adjusted["layer2.0.branch.0"]


def test_surgery_keeps_requires_grad_and_training_mode() -> None:
    model = TinyResNet().train()
    model.stem[0].weight.requires_grad_(False)
    remove_channels(model, {"stem.0": [1]}, torch.randn(*X16))
    assert model.training and not model.stem[0].weight.requires_grad
    assert model.layer1[0].branch[0].weight.requires_grad


def test_empty_plan_is_a_no_op() -> None:
    model = TinyResNet()
    report = remove_channels(model, {"stem.0": []}, torch.randn(*X16))
    assert report.removed == {} and report.params_after == report.params_before


# ---------------------------------------------------------------------------------------------------------
# zero-channel plans


def test_zero_channel_plan_finds_exactly_the_dead_channels() -> None:
    model = randomise(TinyResNet())
    x = torch.randn(*X16)
    groups = {g.name: g for g in channel_groups(model, x)}
    assert zero_channel_plan(model, x) == {}
    zero_channels(model, groups["stem.0"], [2, 5])
    zero_channels(model, groups["layer1.0.branch.0"], [4])
    # weights zero but BN running mean makes a constant: not exact to remove, unless asked to ignore it
    with torch.no_grad():
        model.layer2[1].branch[3].weight[3] = 0
        model.layer2[1].branch[4].bias[3] = 0
    plan = zero_channel_plan(model, x)
    assert plan == {"stem.0": [2, 5], "layer1.0.branch.0": [4]}
    # a residual channel is only dead when every producer of the sum is zero
    with torch.no_grad():
        model.layer1[1].branch[3].weight[2, 0, 0, 0] = 0.1
        model.layer1[1].branch[4].weight[2] = 1.0
    assert zero_channel_plan(model, x) == {"stem.0": [5], "layer1.0.branch.0": [4]}
    # a BN with scale and shift 0 kills its channel whatever the conv does (slimming / SSS)
    with torch.no_grad():
        model.layer1[1].branch[4].weight[2] = 0
        model.layer1[1].branch[4].bias[2] = 0
    assert zero_channel_plan(model, x)["stem.0"] == [2, 5]
    with torch.no_grad():
        model.layer2[1].branch[4].running_mean[3] = 0
    assert zero_channel_plan(model, x, layers=["layer2.1.branch.0"]) == {}
    plan = zero_channel_plan(model, x)
    with torch.no_grad():
        y0 = model(x)
    remove_channels(model, plan, x)
    with torch.no_grad():
        assert float((model(x) - y0).abs().max()) <= 1e-5


def test_zero_channel_plan_running_stats_switch() -> None:
    model = randomise(TinyVGG())
    x = torch.randn(*X16)
    with torch.no_grad():
        model.features[0].weight[3] = 0
        model.features[0].bias[3] = 0
        model.features[1].bias[3] = 0  # BN shift 0, but running_mean != 0
    assert zero_channel_plan(model, x) == {}
    assert zero_channel_plan(model, x, running_stats=False) == {"features.0": [3]}
    assert zero_channel_plan(model, x, atol=1.0) != {}


# ---------------------------------------------------------------------------------------------------------
# blocks


def test_remove_blocks_is_exact_and_refuses_projections() -> None:
    model = randomise(TinyResNet())
    x = torch.randn(*X16)
    assert removable_blocks(model, x) == ["layer1.0", "layer1.1", "layer2.1"]
    assert removable_blocks(model) == removable_blocks(model, x)  # old call: each block checked on its own
    with torch.no_grad():
        for name in ("layer1.1", "layer2.1"):
            bn = model.get_submodule(name).branch[4]
            bn.weight.zero_()
            bn.bias.zero_()
        y0 = model(x)
    before = widths(model)
    with pytest.raises(PrunekitError, match=r"'layer2.0' \(Block\) cannot be removed: its shortcut changes the shape"):
        remove_blocks(model, ["layer1.1", "layer2.0"], x)
    with pytest.raises(PrunekitError, match="not a residual block"):
        remove_blocks(model, ["stem"], x)
    with pytest.raises(PrunekitError, match="no module"):
        remove_blocks(model, ["layer9.0"], x)
    with pytest.raises(PrunekitError, match=r"'layer2.0' \(Block\) cannot be removed: its shortcut changes"):
        remove_blocks(model, ["layer2.0"])
    assert widths(model) == before
    report = remove_blocks(model, ["layer1.1", "layer2.1"], x)
    assert isinstance(model.layer1[1], nn.ReLU) and not model.layer1[1].inplace
    assert report.blocks == {"layer1.1": "ReLU", "layer2.1": "ReLU"} and report.verified
    assert report.params_after < report.params_before
    with torch.no_grad():
        assert float((model(x) - y0).abs().max()) <= 1e-5
    # the thinner, shallower model still traces and prunes
    diff, _ = prune_zeroed(model, x)
    assert diff <= 1e-5


class BasicBlockLike(nn.Module):
    """torchvision's BasicBlock attribute layout."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.relu = nn.ReLU(inplace=True)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.downsample = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu(out + x)


def test_remove_torchvision_style_block_and_train_after() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(inplace=True), BasicBlockLike(4), BasicBlockLike(4))
    remove_blocks(model, ["2"], torch.randn(2, 3, 8, 8), check=False)
    assert isinstance(model[2], nn.ReLU) and not model[2].inplace
    model(torch.randn(2, 3, 8, 8)).sum().backward()  # no in-place error in backward


# ---------------------------------------------------------------------------------------------------------
# the zoo: invariant, save / reload / fine-tune


def _zoo():
    try:
        from prunekit import models
        return models
    except Exception:  # the zoo is being written by someone else
        return None


ZOO = _zoo()
ZOO_NAMES = ZOO.names() if ZOO is not None else []


def zoo_input(model: nn.Module, batch: int = 2) -> torch.Tensor:
    c, h, w = model.input_shape
    return torch.randn(batch, c, min(h, 64), min(w, 64))


@pytest.mark.skipif(ZOO is None, reason="prunekit.models not available")
@pytest.mark.parametrize("name", ZOO_NAMES)
def test_zoo_removing_zeroed_channels_keeps_outputs(name: str) -> None:
    torch.manual_seed(0)
    model = randomise(ZOO.create(name))
    x = zoo_input(model)
    diff, report = prune_zeroed(model, x)
    assert diff <= 1e-5, name
    assert report.params_after < report.params_before
    blocks = removable_blocks(model)
    if blocks:
        with torch.no_grad():
            last_bn = model.get_submodule(blocks[-1]).branch[-1]
            last_bn.weight.zero_()
            last_bn.bias.zero_()
            y0 = model(x)
        remove_blocks(model, blocks[-1:])
        with torch.no_grad():
            assert float((model(x) - y0).abs().max()) <= 1e-5


@pytest.mark.skipif(ZOO is None, reason="prunekit.models not available")
def test_pruned_zoo_model_saves_reloads_and_fine_tunes(tmp_path: Path) -> None:
    from prunekit import io

    torch.manual_seed(0)
    model = randomise(ZOO.create("resnet20"))
    x = torch.randn(4, 3, 32, 32)
    prune_zeroed(model, x, frac=0.5)
    remove_blocks(model, removable_blocks(model)[1:2])
    model.eval()
    with torch.no_grad():
        y = model(x)
    path = io.save(model, tmp_path / "pruned.safetensors")
    back = io.load(path)
    assert widths(back) == widths(model)
    with torch.no_grad():
        assert torch.equal(back(x), y)
    # fine-tune the reloaded, pruned model with a freshly built optimizer
    back.train()
    opt = torch.optim.SGD(back.parameters(), lr=0.05, momentum=0.9)
    target = torch.randint(0, 10, (4,))
    losses = []
    for _ in range(5):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(back(x), target)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    # and it can be pruned again after the reload
    diff, _ = prune_zeroed(back.eval(), x, frac=0.3, seed=3)
    assert diff <= 1e-5


# ---------------------------------------------------------------------------------------------------------
# torchvision (when installed)


@pytest.mark.parametrize("arch", ["resnet18", "vgg11_bn", "mobilenet_v2"])
def test_torchvision_models(arch: str) -> None:
    tv = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = randomise(getattr(tv.models, arch)(num_classes=10))
    x = torch.randn(2, 3, 64, 64)
    diff, report = prune_zeroed(model, x, frac=0.3)
    assert diff <= 1e-5
    assert report.params_after < report.params_before
    if arch == "resnet18":
        assert "layer1.0" in removable_blocks(model)
        with torch.no_grad():
            model.layer1[1].bn2.weight.zero_()
            model.layer1[1].bn2.bias.zero_()
            y0 = model(x)
        remove_blocks(model, ["layer1.1"])
        with torch.no_grad():
            assert float((model(x) - y0).abs().max()) <= 1e-5
        with pytest.raises(PrunekitError, match="projection shortcut"):
            remove_blocks(model, ["layer2.0"])


class Scale(nn.Module):
    """A bare per-channel parameter, as a scaling-factor method inserts it."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.rand(c) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale.view(1, -1, 1, 1)


def test_bare_per_channel_parameters_shrink_too() -> None:
    model = randomise(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), Scale(8), nn.ReLU(),
                                    nn.Conv2d(8, 4, 3)))
    x = torch.randn(*X16)
    (g,) = channel_groups(model, x)
    assert g.layers == ("0",) and set(g.norms) == {"1", "2.scale"} and g.consumers == ("4",)
    zero_channels(model, g, [1, 4])
    assert zero_channel_plan(model, x) == {"0": [1, 4]}
    with torch.no_grad():
        y0 = model(x)
    report = remove_channels(model, {"0": [1, 4]}, x)
    assert tuple(model[2].scale.shape) == (6,) and report.layers["2.scale"].out_after == 6
    with torch.no_grad():
        assert float((model(x) - y0).abs().max()) <= 1e-5


def test_zero_plan_skips_group_norm() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.GroupNorm(2, 8), nn.ReLU(), nn.Conv2d(8, 4, 3))
    x = torch.randn(*X16)
    with torch.no_grad():
        model[0].weight[0] = 0
        model[0].bias[0] = 0
        model[1].bias[0] = 0
    assert zero_channel_plan(model, x) == {}
    with pytest.raises(PrunekitError, match="GroupNorm '1' has 2 groups"):
        remove_channels(model, {"0": [0]}, x)
    remove_channels(model, {"0": [0, 1]}, x)
    assert model[1].num_channels == 6 and model[1].weight.shape == (6,)


# ---------------------------------------------------------------------------------------------------------
# removal equals masking (checked on every call)


class Shuffle(nn.Module):
    """Channel shuffle (ShuffleNet): regroups channels by a reshape the dependency graph maps one to one."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        return x.view(b, 2, c // 2, h, w).transpose(1, 2).reshape(b, c, h, w)


def test_removal_is_verified_against_masking() -> None:
    model = randomise(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                    nn.Conv2d(8, 6, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3)))
    x = torch.randn(*X16)
    masked = copy.deepcopy(model)
    with torch.no_grad():  # live channels: the pruned model equals the one reading zeros there
        masked[3].weight[:, [1, 5]] = 0
        y_masked = masked(x)
    report = remove_channels(model, {"0": [1, 5]}, x)
    assert report.verified and report.max_diff <= 1e-5 and not report.approximate
    with torch.no_grad():
        assert float((model(x) - y_masked).abs().max()) <= 1e-5


def test_wrong_surgery_is_caught_and_the_model_restored() -> None:
    model = randomise(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), Shuffle(), nn.ReLU(),
                                    nn.Conv2d(8, 4, 3)))
    x = torch.randn(*X16)
    before = widths(model)
    with torch.no_grad():
        y0 = model(x)
    with pytest.raises(PrunekitError, match=r"group '0' does not equal masking them: .*model was restored") as e:
        remove_channels(model, {"0": [1]}, x)
    assert "\n" not in str(e.value)
    assert widths(model) == before
    with torch.no_grad():
        assert torch.equal(model(x), y0)


def test_layer_norm_groups_are_checked_against_norms_on_the_kept_channels() -> None:
    model = nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8), nn.GELU(), nn.Linear(8, 3)).eval()
    x = torch.randn(4, 6)
    report = remove_channels(model, {"0": [0, 3]}, x)
    assert report.verified and "LayerNorm '1'" in report.approximate["0"]
    assert model[1].normalized_shape == (6,)


def test_model_outputs_of_any_structure_are_compared() -> None:
    from prunekit.surgery.structured import compare_outputs

    a = {"logits": torch.ones(2, 3), "hidden": (torch.zeros(2), torch.arange(3))}
    assert compare_outputs(a, {"logits": torch.ones(2, 3) + 1e-7, "hidden": (torch.zeros(2), torch.arange(3))})[1] == ""
    assert "logits" in compare_outputs(a, {"logits": torch.ones(2, 3) * 1.01, "hidden": a["hidden"]})[1]
    assert "shape" in compare_outputs(a, {"logits": torch.ones(2, 2), "hidden": a["hidden"]})[1]


def test_every_successful_change_is_recorded() -> None:
    from prunekit.surgery.history import history

    model = randomise(TinyResNet())
    x = torch.randn(*X16)
    remove_channels(model, {"stem.0": [0, 2]}, x)
    (op,) = history(model)
    assert op["op"] == "channels" and op["input_shapes"] == [list(X16)]
    assert list(op["removed"].values()) == [[0, 2]]
    with pytest.raises(PrunekitError):
        remove_channels(model, {"stem.0": [99]}, x)
    assert len(history(model)) == 1


# ---------------------------------------------------------------------------------------------------------
# attention heads


def _dead(model: nn.Module, layers: list[str], rows: list[int]) -> None:
    with torch.no_grad():
        for n in layers:
            m = model.get_submodule(n)
            m.weight[rows] = 0
            if m.bias is not None:
                m.bias[rows] = 0


def test_hf_vit_heads_are_never_regrouped() -> None:
    """Dead q/k/v channels inside heads used to be removed and silently regroup the heads (outputs changed)."""
    from prunekit.testing import corpus

    net = corpus.build("hf-vit")
    attn = "vit.layers.0.attention"
    qkv = [f"{attn}.{p}_proj" for p in "qkv"]
    (g,) = [g for g in channel_groups(net.model, net.inputs) if g.name == qkv[0]]
    assert (g.heads, g.head_dim) == (4, 8)
    _dead(net.model, qkv, [3, 12])
    with torch.no_grad():
        y0 = corpus.logits(net.model(net.inputs))
    with pytest.raises(PrunekitError, match=r"attention heads of 8 channels.*whole heads only"):
        remove_channels(net.model, {qkv[0]: [3, 12]}, net.inputs)
    _dead(net.model, qkv, list(range(8, 16)))  # head 1 entirely
    with torch.no_grad():
        y1 = corpus.logits(net.model(net.inputs))
    report = remove_channels(net.model, {qkv[0]: list(range(8, 16))}, net.inputs)
    assert report.verified
    a = net.model.get_submodule(attn)
    assert a.num_attention_heads == 3 and a.q_proj.out_features == 24 and a.o_proj.in_features == 24
    with torch.no_grad():
        y2 = corpus.logits(net.model(net.inputs))
    assert float((y2 - y1).abs().max()) <= 1e-5 * float(y1.abs().max()) + 1e-6
    assert not torch.equal(y0, y1)


def test_torch_multihead_attention_loses_whole_heads() -> None:
    from prunekit.testing import corpus

    net = corpus.build("mha-transformer")
    (g,) = [g for g in channel_groups(net.model, net.inputs) if g.name == "patches.proj"]
    assert (g.heads, g.head_dim) == (4, 8)
    with pytest.raises(PrunekitError, match="whole heads"):
        remove_channels(net.model, {"patches.proj": [0]}, net.inputs)
    report = remove_channels(net.model, {"patches.proj": list(range(16, 24))}, net.inputs)
    assert report.verified
    mha = net.model.blocks[0].attn
    assert (mha.embed_dim, mha.num_heads, mha.head_dim) == (24, 3, 8)
    assert mha.in_proj_weight.shape == (72, 24) and mha.out_proj.weight.shape == (24, 24)


class NoHeadAttrs(nn.Module):
    """Attention reshaping with ``view(b, n, -1, 4)`` whose module holds no head-count attribute."""

    def __init__(self) -> None:
        super().__init__()
        self.q, self.k, self.v, self.o = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = (p(x).view(b, n, -1, 4).transpose(1, 2) for p in (self.q, self.k, self.v))
        a = torch.softmax(q @ k.transpose(-1, -2), dim=-1)
        return self.o((a @ v).transpose(1, 2).reshape(b, n, -1))


def test_heads_unknown_are_refused_or_declared_by_the_user() -> None:
    model = nn.Sequential(nn.Linear(5, 8), NoHeadAttrs()).eval()
    x = torch.randn(2, 3, 5)
    with pytest.raises(PrunekitError, match=r"attention heads .* unknown; pass num_heads=\{'1': heads\}"):
        remove_channels(model, {"1.q": [0, 1, 2, 3]}, x)
    report = remove_channels(model, {"1.q": [4, 5, 6, 7]}, x, num_heads={"1": 2})
    assert report.verified and model[1].q.out_features == 4
    assert channel_groups(model, x, num_heads={model[1]: 1})[1].heads == 1


# ---------------------------------------------------------------------------------------------------------
# residual blocks found in the graph


def _kill_branch(model: nn.Module, ends: list[str]) -> None:
    """Make a block's branch output 0: zero the parameters of the modules ending it (or their output)."""
    with torch.no_grad():
        for n in ends:
            m = model.get_submodule(n)
            ps = list(m.parameters())
            for p in ps:
                p.zero_()
            if not ps:
                m.register_forward_hook(lambda mod, a, out: torch.zeros_like(out))


@pytest.mark.parametrize(("name", "blocks", "replacement"), [
    ("my-res-unit", ["1", "2", "5"], nn.ReLU),
    ("preact", ["1", "2", "5"], nn.Identity),
    ("no-post-act", ["1", "2", "5"], nn.Identity),
    ("hf-resnet-basic", ["resnet.encoder.stages.0.layers.0", "resnet.encoder.stages.0.layers.1"], nn.ReLU),
])
def test_blocks_are_found_whatever_their_names(name: str, blocks: list[str], replacement: type) -> None:
    from prunekit.surgery import residual_blocks
    from prunekit.surgery.blocks import block_analysis
    from prunekit.testing import corpus

    net = corpus.build(name)
    assert residual_blocks(net.model, net.inputs) == blocks
    info = block_analysis(net.model, net.inputs)
    _kill_branch(net.model, info[blocks[-1]].branch_ends)
    with torch.no_grad():
        y0 = corpus.logits(net.model(net.inputs))
    report = remove_blocks(net.model, blocks[-1:], net.inputs)
    assert report.verified and type(net.model.get_submodule(blocks[-1])) is replacement
    with torch.no_grad():
        assert float((corpus.logits(net.model(net.inputs)) - y0).abs().max()) <= 1e-5


def test_pre_activation_block_named_like_torchvision_is_not_replaced_by_its_relu() -> None:
    from prunekit.testing import corpus

    net = corpus.build("preact")
    assert removable_blocks(net.model, net.inputs) == ["1", "2", "5"]
    old = copy.deepcopy(net.model)
    remove_blocks(old, ["5"])  # the old call: the block's own graph says there is nothing after the sum
    assert isinstance(old[5], nn.Identity)
    # its branch's last layer is also used after the block: the reference (branch zeroed) and the removal
    # differ, and the check says so instead of changing the outputs
    net.model[2] = nn.Sequential(net.model[1].conv2, net.model[2])
    with pytest.raises(PrunekitError, match=r"replacing block '1' does not equal zeroing its branch.*restored"):
        remove_blocks(net.model, ["1"], net.inputs)
    assert type(net.model[1]).__name__ == "PreActBlock"


def test_blocks_called_with_extra_arguments_become_skips_and_projections_are_refused() -> None:
    from prunekit.surgery.blocks import Skip
    from prunekit.testing import corpus

    net = corpus.build("hf-vit")
    with torch.no_grad():
        y0 = corpus.logits(net.model(net.inputs))
    report = remove_blocks(net.model, ["vit.layers.1"], net.inputs)
    assert isinstance(net.model.vit.layers[1], Skip) and report.verified
    with torch.no_grad():
        assert not torch.equal(corpus.logits(net.model(net.inputs)), y0)  # a live branch: output changes
    net = corpus.build("hf-resnet-bottleneck")
    with pytest.raises(PrunekitError, match=r"stages.0.layers.0' \(ResNetBottleNeckLayer\) cannot be removed: its "
                                            r"shortcut changes the shape"):
        remove_blocks(net.model, ["resnet.encoder.stages.0.layers.0"], net.inputs)


def test_zero_plan_lists_whole_dead_heads_only() -> None:
    from prunekit.testing import corpus

    net = corpus.build("hf-vit")
    qkv = [f"vit.layers.0.attention.{p}_proj" for p in "qkv"]
    _dead(net.model, qkv, [3, *range(16, 24)])
    plan = zero_channel_plan(net.model, net.inputs)
    assert plan[qkv[0]] == list(range(16, 24))
    with torch.no_grad():
        y0 = corpus.logits(net.model(net.inputs))
    remove_channels(net.model, {qkv[0]: plan[qkv[0]]}, net.inputs)
    with torch.no_grad():
        assert float((corpus.logits(net.model(net.inputs)) - y0).abs().max()) <= 1e-5


def test_custom_modules_computing_over_channels_are_checked_on_the_kept_channels() -> None:
    """ConvNeXt-V2's GRN divides each channel by the mean response over all channels: removal cannot equal
    masking; the check recomputes GRN on the kept channels and the report says so."""
    from prunekit.testing import corpus

    net = corpus.build("hf-convnextv2")
    layer = "convnextv2.encoder.stages.0.layers.0"
    report = remove_channels(net.model, {f"{layer}.pwconv1": list(range(0, 64, 2))}, net.inputs)
    assert report.verified and "ConvNextV2GRN" in report.approximate[f"{layer}.pwconv1"]
    assert net.model.get_submodule(f"{layer}.grn").weight.shape[-1] == 32
