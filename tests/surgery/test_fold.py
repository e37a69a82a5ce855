"""Folding BatchNorm into the preceding convolution: same outputs, no BN left, still a plain savable module."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from prunekit import io, metrics, models
from prunekit.cli import main
from prunekit.errors import PrunekitError
from prunekit.surgery import channel_groups, deployed, fold_batchnorm, remove_channels


def _random_bn(model: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g))
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.randn(m.num_features, generator=g))
            m.bias.data.copy_(torch.randn(m.num_features, generator=g))
    return model.eval()


@pytest.mark.parametrize("name", ["resnet20", "vgg16", "resnet18"])
def test_folding_keeps_outputs_and_removes_every_bn(name, tmp_path):
    torch.manual_seed(0)
    model = _random_bn(models.create(name))
    x = torch.randn(2, *model.input_shape)
    with torch.no_grad():
        ref = model(x)
    folded = copy.deepcopy(model)
    pairs = fold_batchnorm(folded)
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert len(pairs) == n_bn and not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    with torch.no_grad():
        assert torch.allclose(folded(x), ref, atol=1e-4, rtol=1e-4)
    before, after = metrics.count(model, x[:1]), metrics.count(folded, x[:1])
    assert after.macs < before.macs  # the BN passes are gone
    io.save(folded, tmp_path / "f.safetensors")  # still a plain module: saves, reloads, same outputs
    with torch.no_grad():
        assert torch.allclose(io.load(tmp_path / "f.safetensors").eval()(x), ref, atol=1e-4, rtol=1e-4)


def test_folding_a_pruned_network():
    torch.manual_seed(0)
    model = _random_bn(models.create("resnet20"))
    x = torch.randn(2, 3, 32, 32)
    groups = channel_groups(model, x[:1])
    plan = {g.name: list(range(g.size // 2)) for g in groups if g.size > 1 and "fc" not in g.name}
    remove_channels(model, plan, x[:1])
    with torch.no_grad():
        ref = model(x)
        d = deployed(copy.deepcopy(model))
        assert torch.allclose(d(x.to(memory_format=torch.channels_last)), ref, atol=1e-4, rtol=1e-4)


class _Shared(nn.Module):
    """A conv whose output feeds a BN and a second branch: folding would change the second branch."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + y


class _Dynamic(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return self.conv(x) if x.sum() > 0 else x


def test_a_conv_with_two_consumers_is_left_alone():
    m = _random_bn(_Shared())
    x = torch.randn(2, 3, 8, 8)
    ref = m(x)
    assert fold_batchnorm(m) == []
    assert torch.equal(m(x), ref)


def test_training_mode_and_untraceable_models_are_refused():
    with pytest.raises(PrunekitError, match="eval"):
        fold_batchnorm(models.create("resnet20").train())
    with pytest.raises(PrunekitError, match="cannot be traced"):
        fold_batchnorm(_Dynamic().eval())


def test_cli_export_fold_bn(tmp_path, capsys):
    src = tmp_path / "m.safetensors"
    io.save(_random_bn(models.create("resnet20")), src)
    out = tmp_path / "folded.safetensors"
    assert main(["export", str(src), "--to", "dense", "--fold-bn", "--out", str(out)]) == 0
    assert "folded 21 BatchNorm" in capsys.readouterr().out  # 19 convs + 2 projection shortcuts
    assert not any(isinstance(m, nn.BatchNorm2d) for m in io.load(out).modules())
