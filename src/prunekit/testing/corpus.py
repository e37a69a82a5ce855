"""A corpus of real networks nobody here wrote, built from configuration objects (random weights, no download).

It is the test bed of every capability: surgery, save/reload, export and every method run on each entry
(``tests/`` and ``benchmarks/corpus.py``). HF ``transformers`` models are built from their ``*Config``
classes at a small size; the hand-written ones cover patterns users write themselves: residual blocks with
arbitrary child names, pre-activation blocks, blocks without a post-sum activation, a DenseNet-style
concatenation, squeeze-excitation, depthwise-separable convolutions, an MLP, and attention both through
``nn.MultiheadAttention`` and through ``view(b, n, heads, head_dim)``.

>>> from prunekit.testing import corpus
>>> net = corpus.build("preact")
>>> tuple(net.model(net.inputs).shape)
(2, 10)
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

NUM_CLASSES = 10
IMAGE = 32


@dataclass
class Network:
    """One corpus entry: the model, an example input batch and where the model comes from."""

    name: str
    model: nn.Module
    inputs: torch.Tensor
    source: str
    """``"transformers"`` or ``"hand-written"``."""


# ---------------------------------------------------------------------------------------------------------
# hand-written networks


class MyResUnit(nn.Module):
    """A residual unit whose children are named nothing like torchvision's (``body``, ``gate``)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(),
                                  nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c))
        self.gate = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gate(self.body(x) + x)


class PreActBlock(nn.Module):
    """Pre-activation residual block (He et al. 2016), children named like torchvision's on purpose."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(c), nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(c), nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.relu(self.bn1(x)))
        out = self.conv2(self.relu(self.bn2(out)))
        return out + x


class NoActBlock(nn.Module):
    """Inverted-residual style block: nothing after the sum."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.expand = nn.Conv2d(c, 2 * c, 1)
        self.act = nn.SiLU()
        self.project = nn.Conv2d(2 * c, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.project(self.act(self.expand(x)))


class _Stem(nn.Sequential):
    def __init__(self, c: int) -> None:
        super().__init__(nn.Conv2d(3, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU())


class _Head(nn.Sequential):
    def __init__(self, c: int) -> None:
        super().__init__(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, NUM_CLASSES))


def residual_net(block: Callable[[int], nn.Module], c: int = 16) -> nn.Module:
    return nn.Sequential(_Stem(c), block(c), block(c), nn.Conv2d(c, 2 * c, 3, stride=2, padding=1),
                         nn.ReLU(), block(2 * c), _Head(2 * c))


class DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(cin)
        self.conv = nn.Conv2d(cin, growth, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.conv(F.relu(self.norm(x)))], dim=1)


class TinyDenseNet(nn.Module):
    """DenseNet-style: every layer's output is concatenated to its input; a transition conv after."""

    def __init__(self, c: int = 16, growth: int = 8) -> None:
        super().__init__()
        self.stem = _Stem(c)
        self.dense = nn.Sequential(DenseLayer(c, growth), DenseLayer(c + growth, growth))
        self.transition = nn.Sequential(nn.BatchNorm2d(c + 2 * growth), nn.ReLU(),
                                        nn.Conv2d(c + 2 * growth, c, 1))
        self.head = _Head(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.transition(self.dense(self.stem(x))))


class SqueezeExcite(nn.Module):
    def __init__(self, c: int, r: int = 4) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(c, c // r, 1)
        self.expand = nn.Conv2d(c // r, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.adaptive_avg_pool2d(x, 1)
        return x * torch.sigmoid(self.expand(F.relu(self.reduce(s))))


class SENet(nn.Module):
    def __init__(self, c: int = 16) -> None:
        super().__init__()
        self.stem = _Stem(c)
        self.conv = nn.Sequential(nn.Conv2d(c, 2 * c, 3, padding=1), nn.BatchNorm2d(2 * c), nn.ReLU())
        self.se = SqueezeExcite(2 * c)
        self.head = _Head(2 * c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.se(self.conv(self.stem(x))))


def depthwise_separable(c: int = 16) -> nn.Module:
    def ds(cin: int, cout: int) -> nn.Module:
        return nn.Sequential(nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False), nn.BatchNorm2d(cin),
                             nn.ReLU6(), nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU6())

    return nn.Sequential(_Stem(c), ds(c, 2 * c), ds(2 * c, 2 * c), _Head(2 * c))


def mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * IMAGE * IMAGE, 64), nn.ReLU(), nn.Linear(64, 32), nn.GELU(),
                         nn.Linear(32, NUM_CLASSES))


class _Patches(nn.Module):
    def __init__(self, dim: int, patch: int = 8) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class MHABlock(nn.Module):
    """Pre-norm transformer block around ``nn.MultiheadAttention``."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class HeadsAttention(nn.Module):
    """Self-attention written by hand: q/k/v projections reshaped with ``view(b, n, heads, head_dim)``."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.num_heads, self.head_dim = heads, dim // heads
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = (p(x).view(b, n, self.num_heads, self.head_dim).transpose(1, 2) for p in (self.q, self.k, self.v))
        a = torch.softmax(q @ k.transpose(-1, -2) / self.head_dim**0.5, dim=-1)
        return self.out((a @ v).transpose(1, 2).reshape(b, n, self.num_heads * self.head_dim))


class ViewBlock(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = HeadsAttention(dim, heads)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TinyTransformer(nn.Module):
    def __init__(self, block: type[nn.Module], dim: int = 32, heads: int = 4, depth: int = 2) -> None:
        super().__init__()
        self.patches = _Patches(dim)
        self.blocks = nn.Sequential(*[block(dim, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(self.blocks(self.patches(x))).mean(dim=1))


# ---------------------------------------------------------------------------------------------------------
# HF transformers networks (configs only, random weights)


def _hf(kind: str) -> nn.Module:
    import transformers as t

    common: dict[str, Any] = {"num_labels": NUM_CLASSES}
    if kind == "hf-resnet-basic":
        return t.ResNetForImageClassification(t.ResNetConfig(
            embedding_size=16, hidden_sizes=[16, 32], depths=[2, 1], layer_type="basic", **common))
    if kind == "hf-resnet-bottleneck":
        return t.ResNetForImageClassification(t.ResNetConfig(
            embedding_size=16, hidden_sizes=[32, 64], depths=[2, 1], layer_type="bottleneck", **common))
    if kind == "hf-convnext":
        return t.ConvNextForImageClassification(t.ConvNextConfig(
            hidden_sizes=[16, 32], depths=[2, 1], num_stages=2, patch_size=2, **common))
    if kind == "hf-convnextv2":
        return t.ConvNextV2ForImageClassification(t.ConvNextV2Config(
            hidden_sizes=[16, 32], depths=[2, 1], num_stages=2, patch_size=2, **common))
    if kind == "hf-mobilenetv2":
        return t.MobileNetV2ForImageClassification(t.MobileNetV2Config(
            image_size=IMAGE, depth_multiplier=0.25, finegrained_output=False, **common))
    if kind == "hf-efficientnet":
        return t.EfficientNetForImageClassification(t.EfficientNetConfig(
            image_size=IMAGE, width_coefficient=0.25, depth_coefficient=0.25, hidden_dim=320, **common))
    if kind == "hf-regnet":
        return t.RegNetForImageClassification(t.RegNetConfig(
            embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], groups_width=8, **common))
    if kind == "hf-vit":
        return t.ViTForImageClassification(t.ViTConfig(
            image_size=IMAGE, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=64, **common))
    if kind == "hf-swin":
        return t.SwinForImageClassification(t.SwinConfig(
            image_size=IMAGE, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 4], window_size=4,
            **common))
    if kind == "hf-mobilevit":
        return t.MobileViTForImageClassification(t.MobileViTConfig(
            image_size=IMAGE, hidden_sizes=[16, 24, 32], neck_hidden_sizes=[8, 8, 16, 16, 24, 24, 48],
            num_attention_heads=2, **common))
    raise KeyError(kind)


HF = ["hf-resnet-basic", "hf-resnet-bottleneck", "hf-convnext", "hf-convnextv2", "hf-mobilenetv2",
      "hf-efficientnet", "hf-regnet", "hf-vit", "hf-swin", "hf-mobilevit"]

HAND: dict[str, Callable[[], nn.Module]] = {
    "my-res-unit": lambda: residual_net(MyResUnit),
    "preact": lambda: residual_net(PreActBlock),
    "no-post-act": lambda: residual_net(NoActBlock),
    "densenet": TinyDenseNet,
    "squeeze-excite": SENet,
    "depthwise-separable": depthwise_separable,
    "mlp": mlp,
    "mha-transformer": lambda: TinyTransformer(MHABlock),
    "view-transformer": lambda: TinyTransformer(ViewBlock),
}

NAMES = HF + list(HAND)
"""Every corpus entry, HF networks first."""


def build(name: str, seed: int = 0, batch: int = 2) -> Network:
    """Build corpus entry ``name`` in eval mode with seeded random weights and a seeded input batch.

    BatchNorm running statistics are randomised too, and parameters initialised to a constant (norm scales,
    zero biases, ConvNeXt layer-scales, GRN) get seeded noise, so no layer is an identity on the example inputs.
    """
    gen = torch.manual_seed(seed)
    if name in HAND:
        model, source = HAND[name](), "hand-written"
    elif name in HF:
        model, source = _hf(name), "transformers"
    else:
        raise KeyError(f"no corpus network {name!r}; choose from {NAMES}")
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                m.running_mean.normal_(0, 0.1, generator=gen)
                if m.running_var is not None:
                    m.running_var.uniform_(0.5, 1.5, generator=gen)
        for p in model.parameters():  # constant inits (norm scales, zero biases, GRN, layer-scale) are no-ops
            if p.numel() > 1 and bool((p == p.flatten()[0]).all()):
                p.add_(torch.randn(p.shape, generator=gen) * 0.1)
    inputs = torch.randn(batch, 3, IMAGE, IMAGE, generator=gen)
    return Network(name, model.eval(), inputs, source)


def logits(output: Any) -> torch.Tensor:
    """The class scores of any corpus model's output (a tensor, or a HF ``ModelOutput`` with ``logits``)."""
    return output if isinstance(output, torch.Tensor) else output.logits


# ---------------------------------------------------------------------------------------------------------
# surgery capabilities checked on every entry (tests/surgery/test_corpus.py, benchmarks/corpus.py)


@dataclass
class Outcome:
    """What one capability did on one network: how many units (groups / blocks) went, which were refused."""

    done: int = 0
    total: int = 0
    refused: dict[str, str] = field(default_factory=dict)
    """Unit -> the one-line :class:`~prunekit.errors.PrunekitError` message that refused it."""
    max_diff: float = 0.0
    """Largest output difference against the reference (unchanged network / masked network)."""
    note: str = ""

    def cell(self) -> str:
        """A matrix cell: ``done/total`` (``-`` when the network has no such unit)."""
        if not self.total:
            return "-" + (f" {self.note}" if self.note else "")
        return f"{self.done}/{self.total}" + (f" {self.note}" if self.note else "")


def renormalised(model: nn.Module, g: Any) -> bool:
    """Whether a LayerNorm / GroupNorm of group ``g`` computes over its channels (removal is not masking)."""
    return any(isinstance(model.get_submodule(n), nn.LayerNorm | nn.GroupNorm)
               for n in g.norms if n in dict(model.named_modules()))


def pick(g: Any, frac: float) -> list[int]:
    """Channels of group ``g`` to remove: whole heads of an attention group, the same share of every chunk of
    a grouped convolution, else every other channel up to ``frac`` of them."""
    if g.head_dim:
        heads = max(1, int(g.heads * frac)) if g.heads > 1 else 0
        return [h * g.head_dim + j for h in range(heads) for j in range(g.head_dim)]
    per = g.size // g.chunks
    k = min(per - 1, max(1, int(per * frac)))
    return [c * per + i for c in range(g.chunks) for i in range(0, per, max(1, per // k))[:k]] if k > 0 else []


@torch.no_grad()
def kill(model: nn.Module, g: Any, channels: list[int]) -> None:
    """Make ``channels`` of group ``g`` dead: their filters, biases and norm scales / shifts set to 0."""
    mods = dict(model.named_modules())
    for name in (*g.layers, *g.norms):
        m = mods.get(name)
        if m is None:  # a bare per-channel parameter: it multiplies, leave it
            continue
        rows = [i for i in g.layer_indices(name, channels) if i >= 0]
        if isinstance(m, nn.MultiheadAttention):
            m = m.out_proj
        w = getattr(m, "weight", None)
        if isinstance(w, torch.Tensor):
            if isinstance(m, nn.modules.conv._ConvNd) and m.transposed:
                w[:, rows] = 0
            else:
                w[rows] = 0
        b = getattr(m, "bias", None)
        if isinstance(b, torch.Tensor):
            b[rows] = 0


def _remove(model: nn.Module, inputs: Any, plan: dict[str, list[int]], refused: dict[str, str]) -> Any:
    """remove_channels with the whole plan; a refused group is noted and the rest retried."""
    from prunekit.errors import PrunekitError
    from prunekit.surgery import remove_channels

    plan = {k: v for k, v in plan.items() if v}
    while plan:
        try:
            return remove_channels(model, plan, inputs)
        except PrunekitError as exc:
            msg = str(exc)
            culprit = next((k for k in plan if repr(k) in msg), None)
            if culprit is None:  # the message names a member: find the group alone
                for k in plan:
                    try:
                        remove_channels(copy.deepcopy(model), {k: plan[k]}, inputs)
                    except PrunekitError:
                        culprit = k
                        break
            culprit = culprit or next(iter(plan))
            refused[culprit] = msg
            del plan[culprit]
    return None


def remove_dead_channels(net: Network, frac: float = 0.25) -> Outcome:
    """Kill some channels of every prunable group whose removal is exact by nature (no LayerNorm / GroupNorm /
    GRN-like module computing over them), remove them all in one call, and compare the output with the
    unpruned network's. Groups the surgery reports as renormalised are set aside and counted apart."""
    from prunekit.surgery import channel_groups

    groups = channel_groups(net.model, net.inputs)
    renorm = {g.name for g in groups if renormalised(net.model, g)}
    while True:
        model = copy.deepcopy(net.model)
        exact = [g for g in groups if g.name not in renorm]
        plan = {g.name: pick(g, frac) for g in exact}
        for g in exact:
            kill(model, g, plan[g.name])
        with torch.no_grad():
            y0 = logits(model(net.inputs))
        refused: dict[str, str] = {}
        out = Outcome(total=len(exact), refused=refused)
        report = _remove(model, net.inputs, plan, refused)
        if report is not None and report.approximate:
            renorm |= set(report.approximate)
            continue
        break
    if report is not None:
        with torch.no_grad():
            out.max_diff = float((logits(model(net.inputs)) - y0).abs().max())
        out.done = len(report.removed)
    if renorm:
        out.note = f"(+{len(renorm)} renormalised)"
    return out


def remove_live_channels(net: Network, frac: float = 0.5) -> Outcome:
    """Remove ``frac`` of the channels of every prunable group (live weights) in one call; each removal is
    verified by the surgery itself against the masked network."""
    from prunekit.surgery import channel_groups

    model = copy.deepcopy(net.model)
    groups = channel_groups(model, net.inputs)
    refused: dict[str, str] = {}
    out = Outcome(total=len(groups), refused=refused)
    report = _remove(model, net.inputs, {g.name: pick(g, frac) for g in groups}, refused)
    if report is not None:
        assert report.verified
        out.done, out.max_diff = len(report.removed), report.max_diff
        if report.approximate:
            out.note = f"({len(report.approximate)} renormalised)"
    return out


def kill_branches(model: nn.Module, ends: Sequence[str]) -> None:
    """Make residual branches output 0 for good: zero the parameters of the modules ending them (or, for a
    module without parameters, its output)."""
    with torch.no_grad():
        for end in ends:
            m = model.get_submodule(end)
            ps = list(m.parameters())
            for p in ps:
                p.zero_()
            if not ps:
                m.register_forward_hook(lambda mod, a, y: torch.zeros_like(y))


def remove_dead_blocks(net: Network) -> Outcome:
    """Zero the branch of every residual block found in the graph, remove them all, compare the output."""
    from prunekit.errors import PrunekitError
    from prunekit.surgery import block_analysis, remove_blocks

    model = copy.deepcopy(net.model)
    infos = {n: i for n, i in block_analysis(model, net.inputs).items() if i.removable}
    out = Outcome(total=len(infos))
    if not infos:
        return out
    kill_branches(model, [end for info in infos.values() for end in info.branch_ends])
    with torch.no_grad():
        y0 = logits(model(net.inputs))
    try:
        remove_blocks(model, list(infos), net.inputs)
    except PrunekitError as exc:
        out.refused = {"blocks": str(exc)}
        return out
    with torch.no_grad():
        out.max_diff = float((logits(model(net.inputs)) - y0).abs().max())
    out.done = len(infos)
    return out


CAPABILITIES: dict[str, Callable[[Network], Outcome]] = {
    "dead channels": remove_dead_channels,
    "live channels": remove_live_channels,
    "dead blocks": remove_dead_blocks,
}
"""Capability name -> check on one corpus network (the columns of the corpus matrix)."""


# ---------------------------------------------------------------------------------------------------------
# every paper method on every entry (tests/methods/test_corpus.py, benchmarks/corpus.py)

METHOD_OPTIONS: dict[str, dict[str, Any]] = {
    "iht": {"target": "2x", "cycles": 1, "warmup_epochs": 1, "sparse_epochs": 1, "dense_epochs": 1,
            "final_epochs": 1},
    "sght": {"keep_ratio": 0.5, "hybrid_batch": False},
    "sss": {"gamma_channel": 20.0, "gamma_block": 20.0, "groups": True, "gamma_group": 20.0},
    "trimming": {"iterations": 1, "initial_epochs": 1, "retrain_epochs": 1, "rule": "fraction", "fraction": 0.25,
                 "progress": False},
}
"""Tiny settings: a few steps each (SSS's gammas are large so that factors reach 0 within them)."""


def run_method(name: str, net: Network, epochs: int = 4, lr: float = 0.01, progress: dict[str, int] | None = None
               ) -> tuple[Any, nn.Module]:
    """Drive method ``name`` through the declared contract (README's own loop: ``prepare``, ``LoopState``,
    ``on_fit_start``, its ``stages``, hooks around each step, ``finalize``) on a copy of ``net`` with random
    labels, one batch per epoch; return the :class:`~prunekit.methods.api.FinalizeResult` and the network
    as it was just before ``finalize`` (for the exactness check). ``progress["steps"]`` counts the optimizer
    steps taken (0 when the method refused before training: at bind time)."""
    import torch.nn.functional as F

    from prunekit import methods
    from prunekit.engine import LoopState

    torch.manual_seed(0)
    x = net.inputs
    batches = [(x, torch.randint(0, NUM_CLASSES, (x.shape[0],)))]
    method = methods.get(name)(**METHOD_OPTIONS[name])
    state = LoopState(method.prepare(copy.deepcopy(net.model).train(), x), callbacks=[method], example_inputs=x,
                      train_data=batches, lr=lr)
    method.on_fit_start(state)
    for i, stage in enumerate(method.stages(epochs=epochs)):
        state.begin_stage(i, stage)
        for _ in range(stage.epochs):
            method.on_epoch_start(state)
            for xb, yb in batches:
                method.on_train_batch_start(state, (xb, yb))
                F.cross_entropy(logits(state.model(xb)), yb).backward()
                method.on_before_optimizer_step(state)
                for opt in state.optimizers:
                    opt.step()
                method.on_after_optimizer_step(state)
                for opt in state.optimizers:
                    opt.zero_grad()
                state.step += 1
                if progress is not None:
                    progress["steps"] = state.step
            method.on_epoch_end(state, {})
            state.epoch += 1
        method.on_stage_end(state, stage)
    method.on_fit_end(state)
    model = state.raw_model.eval()
    before = copy.deepcopy(model)
    return method.finalize(model, x), before


def method_check(name: str) -> Callable[[Network], Outcome]:
    """A capability: method ``name`` delivers a smaller (IHT: sparse) network whose output equals the trained
    network's just before ``finalize`` (removal equals masking), or refuses in one line."""

    def check(net: Network) -> Outcome:
        from prunekit.errors import PrunekitError

        out = Outcome(total=1, refused={})
        progress = {"steps": 0}
        try:
            result, before = run_method(name, net, progress=progress)
        except PrunekitError as exc:
            out.refused = {name: str(exc)}
            out.note = f"refused after {progress['steps']} steps" if progress["steps"] else "refused at bind"
            return out
        dense = sum(p.numel() for p in net.model.parameters())
        params = sum(p.numel() for p in result.model.parameters())
        nonzero = sum(int((p != 0).sum()) for p in result.model.parameters())
        with torch.no_grad():
            y0, y1 = logits(before(net.inputs)), logits(result.model(net.inputs))
        out.max_diff = float((y1 - y0).abs().max()) / max(float(y0.abs().max()), 1e-12)
        kept = (nonzero if result.sparse else params) / dense
        out.done = int(kept < 1.0 and out.max_diff <= 1e-4)
        out.note = f"{kept:.2f}x {'nonzero' if result.sparse else 'params'}"
        return out

    return check


METHODS: dict[str, Callable[[Network], Outcome]] = {m: method_check(m) for m in METHOD_OPTIONS}
"""Method name -> check on one corpus network (the method columns of the corpus matrix)."""
