"""SSS (Huang & Wang 2018): the APG optimizer, factor insertion, folding, removal, training and resume."""

from __future__ import annotations

import copy
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prunekit import data as pdata
from prunekit import io, methods, models
from prunekit.config import load_config
from prunekit.engine import LoopState, OptimConfig, Stage, Trainer, TrainerConfig, seed_everything
from prunekit.errors import PrunekitError
from prunekit.methods.optim import APG, apg_update, soft_threshold
from prunekit.methods.sss import (
    BlockScale,
    ChannelScale,
    GroupScale,
    SparseStructureSelection,
    factor_modules,
    factor_parameters,
    find_sites,
    fold_factors,
    insert_factors,
)
from prunekit.models.common import ResidualBlock
from tests.helpers import Kill, synthetic, tiny_lenet

torch.set_num_threads(1)
RECIPES = sorted((Path(__file__).resolve().parents[2] / "configs" / "sss").glob("*.yaml"))


def _param(values, grad):
    p = nn.Parameter(torch.tensor(values, dtype=torch.float32))
    p.grad = torch.tensor(grad, dtype=torch.float32)
    return p


# ------------------------------------------------------------------------------------------------ APG


def test_prox_step_is_soft_thresholding_on_a_hand_computed_example():
    # momentum 0: lambda <- S_{lr*gamma}(lambda - lr*g); lr = 0.5, gamma = 0.25 -> threshold 0.125
    # lambda - lr*g = [0.75, -0.5, -0.5, -0.0625, 0.125]
    # soft-threshold -> [0.625, -0.375, -0.375, 0, 0] (dyadic numbers: exact in float32)
    for nonneg, want in ((False, [0.625, -0.375, -0.375, 0.0, 0.0]), (True, [0.625, 0.0, 0.0, 0.0, 0.0])):
        p = _param([1.0, 0.5, -0.5, 0.0625, 0.25], [0.5, 2.0, 0.0, 0.25, 0.25])
        APG([p], lr=0.5, momentum=0.0, gamma=0.25, nonnegative=nonneg).step()
        assert p.detach().tolist() == want
    x = torch.randn(1000)
    assert torch.equal(soft_threshold(x, 0.3), torch.sign(x) * torch.clamp(x.abs() - 0.3, min=0))


def test_apg_with_momentum_matches_two_hand_computed_steps():
    # mu = 0.5, lr = 0.5, gamma = 0.25 (threshold 0.125), lambda0 = 1, grad 0.5 both steps, v0 = 0
    # step 1: z = S(1 - 0.25) = 0.625; v = 0.625 - 1 + 0 = -0.375; lambda = 0.625 + 0.5 * -0.375 = 0.4375
    # step 2: v = -0.1875; z = S(0.4375 - 0.25) = 0.0625; v = 0.0625 - 0.4375 - 0.1875 = -0.5625;
    #         lambda = 0.0625 + 0.5 * -0.5625 = -0.21875, clipped to 0 by the non-negative option
    for nonneg, last in ((False, -0.21875), (True, 0.0)):
        p = _param([1.0], [0.5])
        opt = APG([p], lr=0.5, momentum=0.5, gamma=0.25, nonnegative=nonneg)
        opt.step()
        assert p.item() == 0.4375 and opt.state[p]["momentum_buffer"].item() == -0.375
        opt.step()
        assert p.item() == last and opt.state[p]["momentum_buffer"].item() == -0.5625


def test_apg_with_gamma_zero_is_nesterov_momentum():
    """gamma = 0: the prox is the identity and APG is Nesterov momentum in Sutskever's velocity form,
    v <- mu*v - lr*g; p <- p - lr*g + mu*v (v starts at 0); torch's SGD(nesterov) is the same update
    with the buffer kept unscaled by lr, so the two agree exactly in exact arithmetic at constant lr."""
    torch.manual_seed(0)
    shapes = [(7,), (3, 4), (1,)]
    init = [torch.randn(s) for s in shapes]
    grads = [[torch.randn(s) for s in shapes] for _ in range(6)]
    lrs = [0.1, 0.1, 0.05, 0.05, 0.2, 0.01]
    mu = 0.9
    # hand-rolled reference, varying lr
    ref = [t.clone() for t in init]
    vel = [torch.zeros_like(t) for t in init]
    for lr, gs in zip(lrs, grads, strict=True):
        for p, v, g in zip(ref, vel, gs, strict=True):
            v.mul_(mu).sub_(lr * g)
            p.sub_(lr * g).add_(mu * v)
    for flat in (True, False):
        ps = [nn.Parameter(t.clone()) for t in init]
        opt = APG(ps, lr=lrs[0], momentum=mu, gamma=0.0, nonnegative=False, flat=flat)
        for lr, gs in zip(lrs, grads, strict=True):
            for p, g in zip(ps, gs, strict=True):
                p.grad = g.clone()
            opt.param_groups[0]["lr"] = lr
            opt.step()
        for p, r in zip(ps, ref, strict=True):
            torch.testing.assert_close(p.detach(), r, rtol=1e-6, atol=1e-6)
    # against torch's Nesterov SGD at constant lr
    a = [nn.Parameter(t.clone()) for t in init]
    b = [nn.Parameter(t.clone()) for t in init]
    apg = APG(a, lr=0.1, momentum=mu, gamma=0.0, nonnegative=False)
    sgd = torch.optim.SGD(b, lr=0.1, momentum=mu, nesterov=True)
    for gs in grads:
        for p, q, g in zip(a, b, gs, strict=True):
            p.grad, q.grad = g.clone(), g.clone()
        apg.step()
        sgd.step()
    for p, q in zip(a, b, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-6)
    assert not torch.equal(a[0].detach(), init[0])


def test_apg_flat_path_equals_per_tensor_path_and_skips_missing_grads():
    torch.manual_seed(1)
    init = [torch.rand(5) + 0.5, torch.rand(3, 2), torch.rand(1)]
    runs = []
    for flat in (True, False):
        ps = [nn.Parameter(t.clone()) for t in init]
        opt = APG([{"params": ps[:2], "gamma": 0.5}, {"params": ps[2:], "gamma": 2.0}], lr=0.1, flat=flat)
        g = torch.Generator().manual_seed(0)
        for step in range(5):
            for i, p in enumerate(ps):
                p.grad = None if (i == 1 and step == 2) else torch.randn(p.shape, generator=g)
            opt.step()
        runs.append([p.detach().clone() for p in ps])
    for a, b in zip(*runs, strict=True):
        assert torch.equal(a, b)
    assert any((t == 0).any() for t in runs[0])  # soft-thresholding produced exact zeros


def test_apg_state_dict_round_trip_continues_exactly():
    torch.manual_seed(2)
    grads = [torch.randn(4) for _ in range(6)]
    p = nn.Parameter(torch.ones(4))
    opt = APG([p], lr=0.1, gamma=0.3)
    for g in grads:
        p.grad = g.clone()
        opt.step()
    q = nn.Parameter(torch.ones(4))
    opt2 = APG([q], lr=0.1, gamma=0.3)
    for g in grads[:3]:
        q.grad = g.clone()
        opt2.step()
    saved = copy.deepcopy(opt2.state_dict())
    r = nn.Parameter(q.detach().clone())
    opt3 = APG([r], lr=0.5, gamma=0.0)
    opt3.load_state_dict(saved)
    for g in grads[3:]:
        r.grad = g.clone()
        opt3.step()
    assert torch.equal(r, p)


@pytest.mark.parametrize("kw", [{"lr": 0.0}, {"momentum": 1.0}, {"gamma": -0.1}, {"lr": True}])
def test_apg_rejects_bad_hyperparameters(kw):
    with pytest.raises(PrunekitError, match="APG: "):
        APG([nn.Parameter(torch.ones(2))], **{"lr": 0.1, **kw})


def test_apg_update_function_is_in_place():
    lam, g, v = torch.tensor([1.0]), torch.tensor([0.5]), torch.zeros(1)
    with torch.no_grad():
        apg_update(lam, g, v, lr=0.5, momentum=0.5, gamma=0.25, nonnegative=True)
    assert lam.item() == 0.4375 and v.item() == -0.375


# -------------------------------------------------------------------------------------- placement


def test_factor_sites_on_zoo_models():
    lenet = models.create("lenet5")
    sites = insert_factors(lenet)
    assert [(s.kind, s.target, s.channels) for s in sites] == [
        ("channel", "conv1", 20), ("channel", "conv2", 50), ("channel", "fc1", 500)]  # not the classifier
    assert isinstance(lenet.conv1, nn.Sequential) and isinstance(lenet.conv1[1], ChannelScale)

    net = models.create("resnet20")
    sites = insert_factors(net)
    kinds = [s.kind for s in sites]
    assert kinds.count("block") == 9 and kinds.count("channel") == 9
    # channel factors only after each block's first BN: not the stem (tied to the shortcut), not bn2
    assert {s.target for s in sites if s.kind == "channel"} == {
        f"layer{i}.{j}.branch.bn1" for i in (1, 2, 3) for j in range(3)}
    assert isinstance(net.layer2[0].branch[-1], BlockScale)
    assert list(net.layer2[0].branch._modules)[-1] == "block_scale"
    assert insert_factors(net) == []  # idempotent
    assert len(factor_modules(net)) == 18
    assert find_sites(models.create("resnet20"), channels=False) == [s for s in sites if s.kind == "block"]


def test_factors_start_at_one_and_leave_outputs_unchanged():
    seed_everything(0)
    net = models.create("resnet20").eval()
    x = torch.randn(2, 3, 32, 32)
    y0 = net(x)
    insert_factors(net)
    assert torch.equal(net(x), y0)
    assert all(torch.equal(m.factor, torch.ones_like(m.factor)) for _, m in factor_modules(net))


class Untraceable(nn.Module):
    """Data-dependent control flow defeats torch.fx: the Sequential-only scan must be used."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(OrderedDict([("conv", nn.Conv2d(1, 4, 3)), ("bn", nn.BatchNorm2d(4)),
                                               ("relu", nn.ReLU()), ("conv2", nn.Conv2d(4, 4, 3))]))
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            x = x * 2
        return self.fc(self.body(x).mean((2, 3)))


def test_untraceable_model_uses_the_sequential_scan():
    sites = find_sites(Untraceable())
    assert [(s.kind, s.target, s.layer) for s in sites] == [("channel", "body.bn", "body.conv")]


# ----------------------------------------------------------------------------------- fold / remove


def _randomise(model: nn.Module, seed: int = 0) -> None:
    """Non-trivial BN statistics and affine parameters so that folding is really tested."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.2)
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)


@pytest.mark.parametrize("name", ["lenet5", "resnet20"])
def test_folding_factors_leaves_outputs_unchanged(name):
    seed_everything(0)
    net = models.create(name)
    _randomise(net)
    insert_factors(net)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for _, m in factor_modules(net):
            m.factor.copy_(torch.rand(m.factor.shape, generator=g) * 1.5 + 0.1)
    net.eval()
    x = torch.randn(4, *net.input_shape)
    y0 = net(x)
    n = len(factor_modules(net))
    assert fold_factors(net) == n
    assert factor_modules(net) == []
    assert not any(isinstance(m, nn.Sequential) and len(m) == 2 and isinstance(m[0], nn.BatchNorm2d)
                   for m in net.modules())
    assert (net(x) - y0).abs().max().item() <= 1e-5
    # the folded model is the plain zoo architecture again
    assert {k: v.shape for k, v in net.state_dict().items()} == \
        {k: v.shape for k, v in models.create(name).state_dict().items()}


def test_zero_factors_are_removed_and_outputs_unchanged(tmp_path):
    seed_everything(0)
    net = models.create("resnet20")
    _randomise(net)
    insert_factors(net)
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for _, m in factor_modules(net):
            m.factor.copy_(torch.rand(m.factor.shape, generator=g) + 0.2)
        net.layer1[1].branch.block_scale.factor.zero_()  # identity shortcut: block becomes its ReLU
        net.layer2[0].branch.block_scale.factor.zero_()  # projection: block becomes shortcut + ReLU
        net.layer3[2].branch.bn1[1].factor[[0, 5, 9]] = 0.0  # three channels of a kept block
        net.layer1[1].branch.bn1[1].factor[2] = 0.0  # inside a removed block: goes with it
        net.layer2[1].branch.bn1[1].factor.zero_()  # every channel: one (zero) channel is kept
    net.eval()
    x = torch.randn(3, 3, 32, 32)
    y0 = net(x)
    res = SparseStructureSelection().finalize(net, x[:1])
    out = res.model
    assert (out(x) - y0).abs().max().item() <= 1e-5
    assert factor_modules(out) == []
    assert isinstance(out.layer1[1], nn.ReLU)
    assert isinstance(out.layer2[0], nn.Sequential) and list(out.layer2[0]._modules) == ["shortcut", "act"]
    assert out.layer3[2].branch.conv1.out_channels == 61 and out.layer3[2].branch.conv2.in_channels == 61
    assert out.layer2[1].branch.conv1.out_channels == 1
    rep = res.report
    assert rep["depth_per_stage"] == {"layer1": {"blocks": 3, "kept": 2}, "layer2": {"blocks": 3, "kept": 2},
                                      "layer3": {"blocks": 3, "kept": 3}}
    assert sorted(rep["blocks_removed"]) == ["layer1.1", "layer2.0"]
    w = {r["layer"]: r for r in rep["width_per_layer"]}
    assert w["layer3.2.branch.bn1"]["before"] == 64 and w["layer3.2.branch.bn1"]["after"] == 61
    assert w["layer1.1.branch.bn1"]["after"] is None
    assert rep["macs"]["after"] < rep["macs"]["before"] and rep["params"]["after"] < rep["params"]["before"]
    # the exported model saves and reloads as plain layers
    path = io.save(out, tmp_path / "m.safetensors")
    back = io.load(path)
    assert torch.equal(back(x), out(x))


def test_remove_false_only_folds():
    net = models.create("resnet20")
    insert_factors(net)
    with torch.no_grad():
        net.layer1[0].branch.block_scale.factor.zero_()
    res = SparseStructureSelection(remove=False).finalize(net, torch.zeros(1, 3, 32, 32))
    assert factor_modules(res.model) == [] and res.report["blocks_removed"] == []
    assert res.report["macs"]["after"] == res.report["macs"]["before"]
    assert torch.equal(res.model.layer1[0].branch.bn2.weight, torch.zeros(16))


class GroupedBlock(nn.Module):
    """A ResNeXt-style bottleneck: 1x1 -> grouped 3x3 (4 groups) -> 1x1, in a residual block."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        branch = nn.Sequential(OrderedDict([
            ("conv1", nn.Conv2d(16, 8, 1, bias=False)), ("bn1", nn.BatchNorm2d(8)), ("relu1", nn.ReLU()),
            ("conv2", nn.Conv2d(8, 8, 3, padding=1, groups=4, bias=False)), ("bn2", nn.BatchNorm2d(8)),
            ("relu2", nn.ReLU()),
            ("conv3", nn.Conv2d(8, 16, 1, bias=False)), ("bn3", nn.BatchNorm2d(16))]))
        self.block = ResidualBlock(branch, nn.Identity())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.block(self.stem(x))).flatten(1))


def test_group_factors_on_a_grouped_conv_block():
    torch.manual_seed(0)
    net = GroupedBlock()
    _randomise(net)
    sites = insert_factors(net, channels=True, blocks=True, groups=True)
    # no channel factor on bn1: its channels feed a grouped conv, so one alone cannot be removed
    assert [(s.kind, s.target) for s in sites] == [("block", "block"), ("group", "block.branch.bn2")]
    gs = net.block.branch.bn2[1]
    assert isinstance(gs, GroupScale) and gs.factor.shape == (4,)
    with torch.no_grad():
        gs.factor.copy_(torch.tensor([0.7, 0.0, 1.3, 0.9]))  # group 1 (channels 2, 3) off
    net.eval()
    x = torch.randn(2, 3, 8, 8)
    y0 = net(x)
    # the group factor multiplies whole groups of channels
    h = net.block.branch[:4](net.stem(x))
    assert torch.equal(gs(h)[:, 2:4], torch.zeros_like(h[:, 2:4]))
    res = SparseStructureSelection(groups=True).finalize(net, x[:1])
    conv2 = res.model.block.branch.conv2
    assert (conv2.groups, conv2.in_channels, conv2.out_channels) == (3, 6, 6)
    assert res.model.block.branch.conv1.out_channels == 6 and res.model.block.branch.conv3.in_channels == 6
    assert (res.model(x) - y0).abs().max().item() <= 1e-5


class TVBottleneck(nn.Module):
    """torchvision's Bottleneck, reproduced (torchvision is not a dependency): same children and forward."""

    def __init__(self, cin: int, width: int, cout: int, stride: int = 1, groups: int = 1) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3, self.bn3 = nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class TVNet(nn.Module):
    def __init__(self, groups: int = 1) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.layer1 = nn.Sequential(TVBottleneck(16, 8, 16, groups=groups),
                                    TVBottleneck(16, 8, 32, stride=2, groups=groups),
                                    TVBottleneck(32, 8, 32, groups=groups))
        self.fc = nn.Linear(32, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.layer1(self.stem(x)).mean((2, 3)))


@pytest.mark.parametrize("groups", [1, 4])
def test_torchvision_style_blocks(groups):
    torch.manual_seed(0)
    net = TVNet(groups)
    _randomise(net)
    sites = insert_factors(net, groups=True)
    blocks = [s.target for s in sites if s.kind == "block"]
    assert blocks == ["layer1.0.bn3", "layer1.1.bn3", "layer1.2.bn3"]
    if groups == 1:
        assert [s.target for s in sites if s.kind == "channel"] == [
            f"layer1.{i}.bn{j}" for i in range(3) for j in (1, 2)]
    else:
        assert [s.target for s in sites if s.kind == "group"] == [f"layer1.{i}.bn2" for i in range(3)]
    with torch.no_grad():
        for _, m in factor_modules(net):
            m.factor.uniform_(0.5, 1.5)
        net.layer1[0].bn3[1].factor.zero_()  # identity shortcut
        net.layer1[1].bn3[1].factor.zero_()  # downsample
        net.layer1[2].bn2[1].factor[0] = 0.0  # a channel (groups=1) or the first group (groups=4)
    net.eval()
    x = torch.randn(2, 3, 8, 8)
    y0 = net(x)
    res = SparseStructureSelection(groups=True).finalize(net, x[:1])
    assert (res.model(x) - y0).abs().max().item() <= 1e-5
    assert isinstance(res.model.layer1[0], nn.ReLU) and isinstance(res.model.layer1[1], nn.Sequential)
    assert res.report["depth_per_stage"] == {"layer1": {"blocks": 3, "kept": 1}}
    assert res.model.layer1[2].conv2.out_channels == (7 if groups == 1 else 6)
    assert factor_modules(res.model) == []


# ------------------------------------------------------------------------------------------ training


def test_optimizers_split_weights_and_factors():
    sss = SparseStructureSelection(gamma_channel=0.02, gamma_block=0.03)
    net = sss.prepare(models.create("resnet20"))
    sgd, apg = sss.configure_optimizers(LoopState(net), lr=0.1)
    factor_ids = {id(p) for ps in factor_parameters(net).values() for p in ps}
    sgd_ids = {id(p) for g in sgd.param_groups for p in g["params"]}
    assert sgd_ids.isdisjoint(factor_ids) and sgd_ids | factor_ids == {id(p) for p in net.parameters()}
    assert sgd.param_groups[0]["nesterov"] and sgd.param_groups[0]["weight_decay"] == OptimConfig().weight_decay
    assert isinstance(apg, APG)
    assert {g["kind"]: g["gamma"] for g in apg.param_groups} == {"channel": 0.02, "block": 0.03}
    assert {id(p) for g in apg.param_groups for p in g["params"]} == factor_ids
    with pytest.raises(PrunekitError, match="prepare"):
        sss.configure_optimizers(LoopState(models.create("resnet20")), lr=0.1)


def test_trainer_drives_factors_to_exact_zeros_and_finalize_shrinks():
    train, test = synthetic()
    sss = SparseStructureSelection(gamma_channel=2.0)
    tr = Trainer(tiny_lenet(), train, test, optim=OptimConfig(lr=0.05, schedule="constant"),
                 config=TrainerConfig(batch_size=32, device="cpu", quiet=True), callbacks=[sss])
    tr.fit(sss.stages(2))
    assert isinstance(tr.optimizers[1], APG)
    zeros = sum(int((p == 0).sum()) for p in factor_parameters(tr.raw_model)["channel"])
    assert zeros > 0 and tr.history[-1]["sss_zero_channel"] == zeros
    assert all((p >= 0).all() for p in factor_parameters(tr.raw_model)["channel"])
    x = torch.randn(5, 1, 8, 8)
    tr.raw_model.eval()
    y0 = tr.raw_model(x)
    widths = [m.factor.numel() - int((m.factor == 0).sum()) for _, m in factor_modules(tr.raw_model)]
    res = sss.finalize(tr.raw_model, tr.example_inputs)
    assert [res.model.conv1.out_channels, res.model.conv2.out_channels, res.model.fc1.out_features] == \
        [max(w, 1) for w in widths]
    assert (res.model(x) - y0).abs().max().item() <= 1e-5


def test_works_in_a_users_own_loop():
    train, _ = synthetic()
    model = tiny_lenet()
    sss = SparseStructureSelection(gamma_channel=2.0)
    model = sss.prepare(model)
    state = LoopState(model)
    state.optimizers = sss.configure_optimizers(state, lr=0.05)
    before = copy.deepcopy(model.state_dict())
    for epoch in range(2):
        for x, y in pdata.iterate(train, 32, shuffle=True, seed=0, epoch=epoch):
            F.cross_entropy(state.model(x), y).backward()
            sss.on_before_optimizer_step(state)
            for opt in state.optimizers:
                opt.step()
                opt.zero_grad()
            state.step += 1
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert sum(int((m.factor == 0).sum()) for _, m in factor_modules(model)) > 0
    res = sss.finalize(model, torch.zeros(1, 1, 8, 8))
    assert factor_modules(res.model) == [] and res.report["macs"]["after"] < res.report["macs"]["before"]


@pytest.mark.parametrize("make", ["zoo", "own"])
def test_resume_is_exact(tmp_path, make):
    """Zoo model: the checkpoint describes the inserted factor modules. Own model: prepare it first."""
    train, test = synthetic(64)
    stages = [Stage("sparse", 2, kind="sparse")]
    cfg = TrainerConfig(batch_size=16, device="cpu", quiet=True, checkpoint_every_steps=1)
    optim = OptimConfig(lr=0.05, schedule="cosine")

    def model(seed=0):
        if make == "zoo":
            return tiny_lenet(seed)
        torch.manual_seed(seed)
        return SparseStructureSelection(gamma_channel=0.5).prepare(Untraceable())

    def run(out, kill=None, resume=False, seed=0):
        cbs = [SparseStructureSelection(gamma_channel=0.5), Kill.after(kill)]
        t = Trainer(model(seed), train, test, optim=optim, config=cfg, callbacks=cbs, out_dir=out)
        t.fit(stages, resume=resume)
        return t

    ref = run(tmp_path / "ref")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "run", kill=5)
    torch.manual_seed(99)
    resumed = run(tmp_path / "run", resume=True, seed=7)
    a, b = ref.raw_model.state_dict(), resumed.raw_model.state_dict()
    assert list(a) == list(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert len(factor_modules(resumed.raw_model)) == len(factor_modules(ref.raw_model)) > 0


# ------------------------------------------------------------------------------------ config, recipes


@pytest.mark.parametrize("bad", [{"gamma_block": -1}, {"gamma_channel": "x"}, {"channels": 1},
                                 {"channels": False, "blocks": False}])
def test_bad_hyperparameters_are_rejected(bad):
    with pytest.raises(PrunekitError, match="method 'sss'"):
        SparseStructureSelection(**bad)
    with pytest.raises(PrunekitError, match="no option"):
        SparseStructureSelection(gama=0.1)


def test_registry_and_model_without_structures():
    assert methods.get("sss") is SparseStructureSelection
    with pytest.raises(PrunekitError, match="no structure"):
        SparseStructureSelection().prepare(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)))


@pytest.mark.parametrize("path", RECIPES, ids=[p.name for p in RECIPES])
def test_recipes_validate(path):
    cfg = load_config(path)
    assert cfg["method"]["name"] == "sss"


def test_recipe_folder_is_not_empty():
    assert len(RECIPES) >= 4
