"""A scaling factor after a BatchNorm runs fused into the BN's affine (``ScaledSequential``): the same outputs,
gradients and running statistics as the BN followed by the multiply, and the same checkpoints and finalize."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from prunekit import io, models
from prunekit.methods.factors import (
    BlockScale,
    ChannelScale,
    GroupScale,
    Scale,
    ScaledSequential,
    factor_modules,
    fold_factors,
    insert_factors,
)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).detach().norm() / b.detach().norm().clamp_min(1e-30))


def _pair(scale: Scale, **bn: object) -> tuple[nn.Sequential, nn.Sequential]:
    """The fused container and its unfused twin (plain Sequential, same values), factors random with zeros."""
    gen = torch.Generator().manual_seed(0)
    norm = nn.BatchNorm2d(8, **bn)  # type: ignore[arg-type]
    with torch.no_grad():
        if norm.affine:
            norm.weight.copy_(torch.rand(8, generator=gen) + 0.5)
            norm.bias.copy_(torch.randn(8, generator=gen))
        scale.factor.copy_(torch.rand(scale.factor.shape, generator=gen))
        scale.factor[::3] = 0
    fused = ScaledSequential(norm, scale)
    return fused, nn.Sequential(copy.deepcopy(norm), copy.deepcopy(scale))


@pytest.mark.parametrize("scale, bn", [
    (ChannelScale(8), {}),
    (GroupScale(8, 4), {}),
    (BlockScale(), {}),
    (ChannelScale(8), {"momentum": None}),
    (BlockScale(), {"affine": False}),
    (ChannelScale(8), {"track_running_stats": False}),
])
def test_fused_equals_bn_then_multiply(scale: Scale, bn: dict[str, object]) -> None:
    fused, plain = _pair(scale, **bn)
    x = torch.randn(4, 8, 5, 5, generator=torch.Generator().manual_seed(1)) * 3 + 1
    for mode in ("train", "train", "eval"):  # twice in train: the running statistics feed the second step
        fused.train(mode == "train")
        plain.train(mode == "train")
        xs = [x.clone().requires_grad_(True) for _ in range(2)]
        ys = [fused(xs[0]), plain(xs[1])]
        assert _rel(ys[0], ys[1]) < 1e-6
        zero = fused[1].per_channel(8) == 0
        assert zero.any() and not ys[0][:, zero].any()  # a zero factor: exact zeros
        g = torch.randn(ys[0].shape, generator=torch.Generator().manual_seed(2))
        (ys[0] * g).sum().backward()
        (ys[1] * g).sum().backward()
        assert _rel(xs[0].grad, xs[1].grad) < 1e-6
        for (name, a), b in zip(fused.named_parameters(), plain.parameters(), strict=True):
            assert _rel(a.grad, b.grad) < 1e-6, name  # gamma, beta, lambda
        for (name, a), b in zip(fused.named_buffers(), plain.buffers(), strict=True):
            assert torch.equal(a, b), name  # running mean / var, num_batches_tracked: bit for bit
        fused.zero_grad()
        plain.zero_grad()
    assert list(fused.state_dict()) == list(plain.state_dict())


def test_observed_bn_runs_unfused() -> None:
    """A hook on the BN sees the BN's own output, as without fusing."""
    fused, plain = _pair(ChannelScale(8))
    seen: list[torch.Tensor] = []
    fused[0].register_forward_hook(lambda m, i, o: seen.append(o))
    x = torch.randn(2, 8, 3, 3)
    y = fused(x)
    assert len(seen) == 1 and torch.equal(y, plain(x)) and torch.equal(seen[0] * fused[1].factor.view(1, -1, 1, 1), y)


def test_zoo_resnet_fused_exact_block_zero_save_load_and_fold(tmp_path: Path) -> None:
    """Zoo placement: every factor after a BN is fused (the residual branch too); a zero block factor still zeroes
    its branch; save / load keeps the fused modules and the outputs; folding leaves the network as built."""
    torch.manual_seed(0)
    net = models.create("resnet20", num_classes=3)
    built = copy.deepcopy(net)
    insert_factors(net)
    assert factor_modules(net)
    for _, m in factor_modules(net):
        with torch.no_grad():
            m.factor.uniform_(0.5, 1.5)
    fused_pairs = [m for m in net.modules() if isinstance(m, ScaledSequential)]
    assert len(fused_pairs) == len(factor_modules(net))
    block = next(m for m in net.modules() if isinstance(getattr(m, "branch", None), ScaledSequential))
    with torch.no_grad():
        block.branch.block_scale.factor.zero_()
    net.eval()
    x = torch.randn(2, 3, 16, 16)
    inner = torch.randn(2, block.branch[0].in_channels, 8, 8)
    with torch.no_grad():
        assert torch.equal(block.branch(inner), torch.zeros_like(block.branch(inner)))
        ref = net(x)
    path = io.save(net, tmp_path / "sss.safetensors")
    back = io.load(path)
    assert sum(isinstance(m, ScaledSequential) for m in back.modules()) == len(fused_pairs)
    assert list(back.state_dict()) == list(net.state_dict())
    with torch.no_grad():
        assert torch.equal(back.eval()(x), ref)
    fold_factors(net)
    assert not any(isinstance(m, ScaledSequential | Scale) for m in net.modules())
    assert [type(m) for m in net.modules()] == [type(m) for m in built.modules()]
    with torch.no_grad():
        torch.testing.assert_close(net(x), ref, rtol=1e-5, atol=1e-5)
