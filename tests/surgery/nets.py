"""Small test networks and helpers of the surgery tests: residual, VGG-like, concat, depthwise and grouped
nets, the small net of the unstructured-sparsity tests, and the zero-then-remove check every structural change
must pass."""

from __future__ import annotations

import torch
from torch import nn

from prunekit.surgery import ChannelGroup, channel_groups, remove_channels

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


def net(seed: int = 0) -> nn.Module:
    """conv-bn-relu and two linear layers on 8x8 inputs: the unstructured-sparsity net (masks, sparse files)."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(),
                         nn.Linear(8 * 6 * 6, 16), nn.ReLU(), nn.Linear(16, 4))


X = torch.randn(4, 3, 8, 8)
"""An input batch for :func:`net`."""


TEST_MODELS = {"tiny_resnet": TinyResNet, "tiny_vgg": TinyVGG, "catnet": CatNet, "depthwise": DepthwiseNet,
               "grouped": GroupedNet}
X16 = (2, 3, 16, 16)


def _zoo():
    try:
        from prunekit import models
        return models
    except Exception:  # the zoo is being written by someone else
        return None


ZOO = _zoo()
"""prunekit.models, or None where it cannot be imported (the zoo tests then skip)."""


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
