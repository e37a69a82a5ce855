"""Residual blocks (prunekit.surgery.blocks): found in the graph whatever their names, removed exactly where
the branch is dead, verified against zeroing the branch, and refused where the shortcut changes the shape."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from prunekit.errors import PrunekitError
from prunekit.surgery import removable_blocks, remove_blocks
from tests.surgery.nets import X16, TinyResNet, prune_zeroed, randomise, widths

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one intra-op thread is as fast


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
# residual blocks found in the graph


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
    corpus.kill_branches(net.model, info[blocks[-1]].branch_ends)
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
