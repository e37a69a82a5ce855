"""Channel groups (prunekit.surgery.graph): the coupled groups read from the dependency graph (residual sums,
concatenation, depthwise convs follow their producer), traced without running the user's hooks or changing
the model's mode, and attention groups whose head count is unknown refused unless the user declares it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prunekit.errors import PrunekitError
from prunekit.surgery import channel_groups, remove_channels
from tests.surgery.nets import X16, CatNet, DepthwiseNet, TinyResNet, assert_plain, randomise, zero_channels

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one intra-op thread is as fast


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
# coupling through concatenation, addition and depthwise convolutions


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


# ---------------------------------------------------------------------------------------------------------
# attention heads


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
