"""SGHT / AHSG-HT (Yang et al. 2019): exact k per group after every step, BN shift zero, residual groups as one,
MACs budget within 1%, hybrid batches, momentum rows, heavy-ball step, exact mid-epoch resume, exact removal."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from prunekit import data as pdata
from prunekit import experiment, io, methods, metrics, models
from prunekit.config import load_config
from prunekit.engine import Callback, LoopState, OptimConfig, Trainer, TrainerConfig
from prunekit.errors import PrunekitError
from prunekit.methods import budget
from prunekit.methods.filters import FilterThreshold
from prunekit.methods.optim import AHSGHT
from prunekit.methods.sght import SGHT, HybridBatchSchedule
from tests.helpers import Kill, resnet20

torch.set_num_threads(1)
SHAPE = (3, 8, 8)
ROOT = Path(__file__).resolve().parents[2]


def example() -> torch.Tensor:
    return torch.zeros(1, *SHAPE)


@pytest.fixture(scope="module")
def train_data() -> pdata.Dataset:
    return pdata.load("synthetic", "train", n=96, shape=SHAPE, num_classes=4)


def randomise_bn(model: nn.Module) -> None:
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data = torch.rand(m.num_features, generator=g) + 0.5
            m.bias.data = torch.randn(m.num_features, generator=g)
            m.running_mean = torch.randn(m.num_features, generator=g)
            m.running_var = torch.rand(m.num_features, generator=g) + 0.5


def filter_norms(w: torch.Tensor) -> torch.Tensor:
    return w.detach().reshape(w.shape[0], -1).norm(dim=1)


def check_invariants(model: nn.Module, method: SGHT, keep: list[int]) -> None:
    """Exactly k non-zero filters in every producing layer, the same channels across a coupled group, and
    BN shift / running mean zero on every zeroed channel."""
    mods = dict(model.named_modules())
    for g, k in zip(method.groups, keep, strict=True):
        alive = None
        for name in g.layers:
            nz = filter_norms(mods[name].weight) > 0
            assert int(nz.sum()) == k, (name, int(nz.sum()), k)
            ch = nz[list(g.index[name])]  # in group numbering
            alive = ch if alive is None else alive
            assert torch.equal(ch, alive), f"{name} disagrees with its residual group"
        assert alive is not None
        for name in g.norms:
            bn = mods[name]
            dead = ~alive[torch.as_tensor(g.index[name]).argsort()]
            assert bool((bn.bias.detach()[dead] == 0).all()), name
            assert bool((bn.running_mean[dead] == 0).all()), name


# ------------------------------------------------------------------------------------------ batches
def test_hybrid_batch_schedule_values() -> None:
    s = HybridBatchSchedule(64, 4, 128)
    assert s.sizes(20) == [64 + 4 * i for i in range(17)] + [128, 128, 128]
    assert HybridBatchSchedule(32, 0, 32).sizes(3) == [32, 32, 32]
    assert SGHT().batch_size_schedule(None) == HybridBatchSchedule(64, 4, 128)
    assert SGHT(hybrid_batch=False).batch_size_schedule(None) is None


class Spy(Callback):
    def __init__(self, method: SGHT | None = None) -> None:
        self.sizes: list[tuple[int, int]] = []
        self.method = method
        self.checked = 0

    def on_train_batch_start(self, trainer, batch) -> None:
        self.sizes.append((trainer.epoch, batch[0].shape[0]))

    def on_after_optimizer_step(self, trainer) -> None:
        if self.method is not None:
            check_invariants(trainer.raw_model, self.method, self.method.keep_at(trainer.epoch))
            self.checked += 1


@pytest.mark.parametrize("hybrid", [True, False])
def test_trainer_uses_the_batch_schedule_restarting_each_epoch(train_data: pdata.Dataset, hybrid: bool) -> None:
    method = SGHT(keep_ratio=0.5, hybrid_batch=hybrid, batch_start=8, batch_step=4, batch_max=20)
    spy = Spy()
    Trainer(resnet20(), train_data, optim=OptimConfig(lr=0.02), callbacks=[method, spy],
            config=TrainerConfig(device="cpu", quiet=True, batch_size=32)).fit(method.stages(2))
    if hybrid:  # 8 + 12 + 16 + 20 + 20 + 20 = 96 samples
        assert spy.sizes == [(e, b) for e in (0, 1) for b in (8, 12, 16, 20, 20, 20)]
    else:
        assert spy.sizes == [(e, 32) for e in (0, 1) for _ in range(3)]


# ------------------------------------------------------------------------------------------ optimizer
def test_ahsght_with_nu_zero_is_torch_sgd() -> None:
    torch.manual_seed(0)
    a = nn.Linear(5, 3)
    b = nn.Linear(5, 3)
    b.load_state_dict(a.state_dict())
    oa = AHSGHT(a.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True, nu=0.0)
    ob = torch.optim.SGD(b.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)
    for i in range(4):
        x = torch.randn(7, 5, generator=torch.Generator().manual_seed(i))
        for m, o in ((a, oa), (b, ob)):
            o.zero_grad()
            m(x).square().sum().backward()
            o.step()
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)


def test_ahsght_heavy_ball_uses_the_previous_iterate() -> None:
    w = nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = AHSGHT([w], lr=0.5, momentum=0.0, weight_decay=0.0, nesterov=False, nu=0.25)
    grads = [torch.tensor([1.0, 1.0]), torch.tensor([-2.0, 0.5]), torch.tensor([0.0, 4.0])]
    hist = [w.detach().clone()]
    for g in grads:
        w.grad = g.clone()
        opt.step()
        hist.append(w.detach().clone())
    # w1 = w0 - lr g0 (no history); w_{t+1} = w_t - lr g_t + nu (w_t - w_{t-1})
    exp = [torch.tensor([1.0, -2.0])]
    exp.append(exp[0] - 0.5 * grads[0])
    for t in (1, 2):
        exp.append(exp[t] - 0.5 * grads[t] + 0.25 * (exp[t] - exp[t - 1]))
    for got, want in zip(hist, exp, strict=True):
        torch.testing.assert_close(got, want)
    assert torch.equal(opt.state[w]["prev"], hist[2])
    # the authors' code records w_prev just before the step: its term is zero, i.e. plain SGD
    assert not torch.allclose(hist[3], hist[2] - 0.5 * grads[2])


def test_ahsght_optimizer_state_round_trips() -> None:
    w = nn.Parameter(torch.ones(3))
    opt = AHSGHT([w], lr=0.1, nu=0.1)
    for _ in range(2):
        w.grad = torch.ones(3)
        opt.step()
    opt2 = AHSGHT([w], lr=0.1, nu=0.1)
    opt2.load_state_dict(opt.state_dict())
    assert torch.equal(opt2.state[w]["prev"], opt.state[w]["prev"])
    assert torch.equal(opt2.state[w]["momentum_buffer"], opt.state[w]["momentum_buffer"])


# ------------------------------------------------------------------------------------------ H_k
def test_threshold_keeps_exactly_k_and_zeroes_bn_shift_in_the_trainer(train_data: pdata.Dataset) -> None:
    method = SGHT(keep_ratio=0.6, batch_start=16, batch_step=8, batch_max=32)
    spy = Spy(method)
    Trainer(resnet20(), train_data, optim=OptimConfig(lr=0.05), callbacks=[method, spy],
            config=TrainerConfig(device="cpu", quiet=True)).fit(method.stages(2))
    assert spy.checked == 2 * 3
    # floor(0.6 * width), as the authors' int(HTrate * out_channels): 16 -> 9, 32 -> 19, 64 -> 38
    expected = {16: 9, 32: 19, 64: 38}
    for g, k in zip(method.groups, method.target_keep, strict=True):
        assert k == expected[g.size] == math.floor(0.6 * g.size)
    assert any(len(g.layers) > 1 for g in method.groups), "resnet20 has residual groups"
    assert all("fc" not in g.layers for g in method.groups), "the classifier is never thresholded"


def test_residual_group_is_scored_by_its_joint_norm_and_kept_as_one() -> None:
    model = resnet20()
    x = example()
    groups = budget.filter_groups(model, x)
    gi = next(i for i, g in enumerate(groups) if len(g.layers) > 1)
    g = groups[gi]
    mods = dict(model.named_modules())
    # make per-layer and joint rankings disagree: channel c of layer j gets a norm depending on (c, j)
    torch.manual_seed(3)
    for j, name in enumerate(g.layers):
        w = mods[name].weight
        scale = torch.rand(w.shape[0]) ** (j + 1) * 3
        w.data = w.data / filter_norms(w).view(-1, 1, 1, 1) * scale.view(-1, 1, 1, 1)
    joint = torch.zeros(g.size)
    per_layer = []
    for name in g.layers:
        n = filter_norms(mods[name].weight)[list(g.index[name])]
        joint += n.square()
        per_layer.append(set(n.argsort(descending=True)[:5].tolist()))
    joint = joint.sqrt()
    keep = [gg.size for gg in groups]
    keep[gi] = 5
    h = FilterThreshold(model, groups, keep)
    mask = h()
    offset = sum(gg.size for gg in groups[:gi])
    kept = set(torch.nonzero(mask[offset:offset + g.size]).flatten().tolist())
    assert kept == set(joint.argsort(descending=True)[:5].tolist())
    assert any(kept != s for s in per_layer), "the test must separate joint from per-layer scoring"
    for name in g.layers:
        alive = filter_norms(mods[name].weight)[list(g.index[name])] > 0
        assert set(torch.nonzero(alive).flatten().tolist()) == kept


def test_l1_norm_and_ties_keep_exactly_k() -> None:
    model = nn.Sequential(nn.Conv2d(2, 6, 1, bias=True), nn.ReLU(), nn.Conv2d(6, 3, 1), nn.Flatten(),
                          nn.Linear(27, 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 1.0], [2.0, 0.0], [0.0, 0.5], [1.5, 0.0], [1.0, 1.0], [0, 0]])
                              .view(6, 2, 1, 1))
    groups = budget.filter_groups(model, torch.zeros(1, 2, 3, 3))
    assert [g.name for g in groups][:1] == ["0"]
    h = FilterThreshold(model, groups, [3] + [g.size for g in groups[1:]], norm="l1")
    mask = h()
    # L1 norms 2, 2, .5, 1.5, 2, 0: three tie at 2 -> exactly those, lower index first
    assert mask[:6].tolist() == [True, True, False, False, True, False]
    assert model[0].bias[[2, 3, 5]].abs().sum() == 0
    assert int((filter_norms(model[0].weight) > 0).sum()) == 3


def test_zeroed_filters_can_come_back() -> None:
    model = resnet20()
    groups = budget.filter_groups(model, example())
    h = FilterThreshold(model, groups, [g.size // 2 for g in groups])
    off, g0 = groups[0].size, groups[1]  # the second group, a single conv
    first = h()[off:off + g0.size]
    layer = dict(model.named_modules())[g0.layers[0]]
    dead = int(torch.nonzero(~first).flatten()[0])
    with torch.no_grad():
        layer.weight[dead] = 100.0  # what a gradient step may do to a zeroed filter
    second = h()[off:off + g0.size]
    assert bool(second[dead]) and not bool(first[dead])
    assert int(second.sum()) == g0.size // 2


@pytest.mark.parametrize("reset", [True, False])
def test_momentum_rows_of_zeroed_filters(reset: bool) -> None:
    model = resnet20()
    method = SGHT(keep_ratio=0.5, reset_momentum=reset, nu=0.0)
    method.bind(model, example())
    opt = AHSGHT(model.parameters(), lr=0.01, nu=0.0)
    state = LoopState(model, [opt])
    x = torch.randn(8, *SHAPE)
    y = torch.arange(8) % 4
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    method.on_after_optimizer_step(state)
    mods = dict(model.named_modules())
    g = method.groups[1]
    conv, bn = mods[g.layers[0]], mods[g.norms[0]]
    dead = filter_norms(conv.weight) == 0
    buf = opt.state[conv.weight]["momentum_buffer"]
    bbuf = opt.state[bn.bias]["momentum_buffer"]
    if reset:
        assert float(filter_norms(buf)[dead].abs().sum()) == 0.0 and float(bbuf[dead].abs().sum()) == 0.0
        assert float(filter_norms(buf)[~dead].min()) > 0
    else:
        assert float(filter_norms(buf)[dead].min()) > 0


def test_zeroed_channels_get_exactly_zero_gradient_so_reset_momentum_makes_zeroing_final(
        train_data: pdata.Dataset) -> None:
    """BN shift 0 -> the channel outputs relu(0) = 0 and ReLU passes no gradient: with the momentum rows
    reset (and nu = 0) nothing can move a zeroed filter, so the selection of the first step is final."""
    model = resnet20()
    method = SGHT(keep_ratio=0.5, reset_momentum=True, nu=0.0, batch_start=16, batch_step=0)
    masks: list[torch.Tensor] = []

    class Grad(Callback):
        def on_before_optimizer_step(self, trainer) -> None:
            if method.threshold is None:
                return
            for name, p in trainer.raw_model.named_parameters():
                if p.dim() == 4 and p.grad is not None:
                    dead = filter_norms(p) == 0
                    assert float(p.grad[dead].abs().sum()) == 0.0, name

        def on_train_batch_end(self, trainer) -> None:
            masks.append(method.comebacks.last_mask.clone())

    Trainer(model, train_data, optim=OptimConfig(lr=0.1), callbacks=[method, Grad()],
            config=TrainerConfig(device="cpu", quiet=True)).fit(method.stages(2))
    assert len(masks) == 12
    assert all(torch.equal(m, masks[0]) for m in masks)
    assert method.revived == 0


# ------------------------------------------------------------------------------------------ budgets
@pytest.mark.parametrize(("name", "kind", "frac"), [("resnet20", "macs", 0.37), ("resnet20", "params", 0.5),
                                                    ("lenet5", "macs", 0.2)])
def test_budget_is_met_within_one_percent_after_real_removal(name: str, kind: str, frac: float) -> None:
    torch.manual_seed(0)
    model = models.create(name) if name == "lenet5" else models.create(name, num_classes=4)
    x = models.example_input(model) if name == "lenet5" else example()
    dense = metrics.count(model, x)
    method = SGHT(**{f"{kind}_budget": frac})
    method.bind(model, x)
    res = method.finalize(model, x)
    after = metrics.count(res.model, x)
    got = (after.macs / dense.macs) if kind == "macs" else (after.params / dense.params)
    assert abs(got - frac) <= 0.01 * frac, (got, frac)
    assert res.report["macs_after"] == after.macs


def test_budget_below_the_floor_is_an_error() -> None:
    model = models.create("lenet5")
    with pytest.raises(PrunekitError, match="below what the model can reach"):
        SGHT(macs_budget=0.001).bind(model, models.example_input(model))


def test_ramp_lowers_k_linearly_from_full_width() -> None:
    method = SGHT(keep_ratio=0.5, ramp_epochs=4)
    method.bind(resnet20(), example())
    sizes = [g.size for g in method.groups]
    assert method.keep_at(0) == [round(s - s / 2 * 0.25) for s in sizes]
    assert method.keep_at(3) == method.target_keep == method.keep_at(10)
    assert SGHT(keep_ratio=0.5).keep_at(0) == []  # unbound: no groups yet


# ------------------------------------------------------------------------------------------ removal
def test_removing_zero_filters_leaves_outputs_unchanged(train_data: pdata.Dataset) -> None:
    model = resnet20()
    randomise_bn(model)
    method = SGHT(keep_ratio=0.5, batch_start=16, batch_step=0)
    Trainer(model, train_data, optim=OptimConfig(lr=0.05), callbacks=[method],
            config=TrainerConfig(device="cpu", quiet=True, max_steps_per_epoch=3)).fit(method.stages(1))
    model.eval()
    xb = torch.randn(6, *SHAPE)
    with torch.no_grad():
        before = model(xb)
    dense = metrics.count(model, example())
    res = method.finalize(model, example())
    with torch.no_grad():
        after = res.model(xb)
    assert (before - after).abs().max().item() <= 1e-5
    assert metrics.count(res.model, example()).params < dense.params
    for g, k in zip(method.groups, method.target_keep, strict=True):
        assert dict(res.model.named_modules())[g.name].out_channels == k


def test_bn_shift_left_alone_during_training_is_zeroed_at_removal() -> None:
    model = resnet20()
    randomise_bn(model)
    method = SGHT(keep_ratio=0.5, zero_shift=False)
    method.bind(model, example())
    opt = AHSGHT(model.parameters(), lr=0.01)
    nn.functional.cross_entropy(model(torch.randn(8, *SHAPE)), torch.arange(8) % 4).backward()
    opt.step()
    method.on_after_optimizer_step(LoopState(model, [opt]))
    mods = dict(model.named_modules())
    g = method.groups[1]
    dead = filter_norms(mods[g.layers[0]].weight) == 0
    assert int(dead.sum()) == g.size - method.target_keep[1]
    assert float(mods[g.norms[0]].bias.detach()[dead].abs().min()) > 0  # shift untouched while training
    res = method.finalize(model, example())
    assert dict(res.model.named_modules())[g.layers[0]].out_channels == method.target_keep[1]


# ------------------------------------------------------------------------------------------ loops
def test_works_in_a_users_own_loop() -> None:
    model = resnet20()
    method = SGHT(keep_ratio=0.5)
    method.bind(model, example())
    opt = AHSGHT(model.parameters(), lr=0.05, nu=0.1)
    state = LoopState(model, [opt])
    sched = method.batch_size_schedule(state)
    assert sched is not None and sched(0) == 64
    method.on_fit_start(state)
    g = torch.Generator().manual_seed(0)
    for epoch in range(2):
        state.epoch = epoch
        method.on_epoch_start(state)
        for _ in range(2):
            x = torch.randn(8, *SHAPE, generator=g)
            y = torch.randint(0, 4, (8,), generator=g)
            nn.functional.cross_entropy(state.model(x), y).backward()
            method.on_before_optimizer_step(state)
            opt.step()
            opt.zero_grad()
            method.on_after_optimizer_step(state)
            check_invariants(model, method, method.target_keep)
            state.step += 1
    out = method.finalize(state.model, example())
    assert out.report["params_after"] < out.report["params_before"]


def test_threshold_inside_optimizer_step() -> None:
    model = resnet20()
    groups = budget.filter_groups(model, example())
    keep = [g.size // 4 for g in groups]
    h = FilterThreshold(model, groups, keep)
    opt = AHSGHT(model.parameters(), lr=0.05, threshold=h)
    nn.functional.cross_entropy(model(torch.randn(4, *SHAPE)), torch.arange(4)).backward()
    opt.step()
    assert h.nonzero_filters() == [[k] * len(g.layers) for g, k in zip(groups, keep, strict=True)]


def test_own_loop_without_example_inputs_is_told_what_to_do() -> None:
    model = resnet20()
    with pytest.raises(PrunekitError, match="bind"):
        SGHT().on_after_optimizer_step(LoopState(model))


def test_finetune_stage_trains_the_compact_network(train_data: pdata.Dataset) -> None:
    method = SGHT(keep_ratio=0.5, finetune_epochs=1, batch_start=16, batch_step=0)
    stages = method.stages(2)
    assert [(s.name, s.epochs, s.lr) for s in stages] == [("sght", 1, None), ("finetune", 1, 0.01)]
    t = Trainer(resnet20(), train_data, optim=OptimConfig(lr=0.05), callbacks=[method],
                config=TrainerConfig(device="cpu", quiet=True, max_steps_per_epoch=2, batch_size=16))
    t.fit(stages)
    widths = {n: m.out_channels for n, m in t.raw_model.named_modules() if isinstance(m, nn.Conv2d)}
    assert widths["layer1.0.branch.conv1"] == 8
    assert type(t.optimizers[0]) is torch.optim.SGD
    before = metrics.count(t.raw_model, example()).params
    res = method.finalize(t.raw_model, example())
    assert res.report["params_after"] == before  # nothing left to remove, nothing re-thresholded


# ------------------------------------------------------------------------------------------ resume
def test_resume_mid_epoch_is_bit_identical(train_data: pdata.Dataset, tmp_path: Path) -> None:
    kw = {"keep_ratio": 0.5, "batch_start": 8, "batch_step": 4, "batch_max": 16, "nu": 0.1}
    cfg = TrainerConfig(device="cpu", quiet=True, max_steps_per_epoch=4, checkpoint_every_steps=1)
    opt = OptimConfig(lr=0.05, milestones=[1], gamma=0.2)

    def run(out: Path, kill: int | None, resume: bool = False) -> Trainer:
        method = SGHT(**kw)
        t = Trainer(resnet20(), train_data, optim=opt, config=cfg, callbacks=[method, Kill(kill)], out_dir=out)
        t.fit(method.stages(2), resume=resume)
        return t

    ref = run(tmp_path / "a", None)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b", 6)  # in the middle of the second epoch
    resumed = run(tmp_path / "b", None, resume=True)
    a, b = ref.raw_model.state_dict(), resumed.raw_model.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    sa, sb = ref.optimizers[0].state_dict()["state"], resumed.optimizers[0].state_dict()["state"]
    for i in sa:
        assert torch.equal(sa[i]["prev"], sb[i]["prev"])


# ------------------------------------------------------------------------------------------ options
@pytest.mark.parametrize("kw", [
    {"keep_ratio": 0.0}, {"keep_ratio": 1.5}, {"macs_budget": 0.5, "params_budget": 0.5}, {"macs_budget": 2},
    {"norm": "l3"}, {"nu": 1.0}, {"nu": -0.1}, {"batch_start": 0}, {"batch_start": 64, "batch_max": 32},
    {"ramp_epochs": -1}, {"layer_keep": {"conv1": 2.0}}, {"layer_keep": ["conv1"]}, {"budget_tol": 0},
    {"finetune_lr": 0}, {"reset_momentum": "yes"}, {"bogus": 1},
])
def test_bad_hyperparameters_give_one_clear_line(kw: dict) -> None:
    with pytest.raises(PrunekitError) as err:
        methods.get("sght")(kw)
    assert "\n" not in str(err.value) and len(str(err.value)) < 400


def test_finetune_longer_than_budget_is_an_error() -> None:
    with pytest.raises(PrunekitError, match="finetune_epochs"):
        SGHT(finetune_epochs=5).stages(5)


def test_unknown_layer_in_layer_keep_is_an_error() -> None:
    with pytest.raises(PrunekitError, match="no prunable filter group"):
        SGHT(layer_keep={"nope": 0.5}).bind(resnet20(), example())


def test_lenet_recipe_end_to_end_saves_a_compact_model_that_reloads_plain(tmp_path: Path) -> None:
    cfg = load_config(ROOT / "configs" / "sght" / "lenet5_mnist_cpu.yaml",
                      ["train.epochs=1", "train.max_steps_per_epoch=3", "train.device=cpu", "train.quiet=true"])
    train = pdata.load("synthetic", "train", n=400, shape=(1, 28, 28), num_classes=10)
    test = pdata.load("synthetic", "test", n=64, shape=(1, 28, 28), num_classes=10)
    res = experiment.run(cfg, out=tmp_path, data=(train, test), latency=False)
    dense = metrics.count(models.create("lenet5"), torch.zeros(1, 1, 28, 28)).macs
    assert abs(res.figures["macs"] / dense - 0.1) <= 0.001
    loaded = io.load(tmp_path / "model.safetensors")
    assert type(loaded) is type(res.model)
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x), res.model.eval()(x))


def test_registry_and_recipes() -> None:
    assert methods.get("sght") is SGHT
    recipes = sorted((ROOT / "configs" / "sght").glob("*.yaml"))
    assert len(recipes) >= 4
    for p in recipes:
        cfg = load_config(p)
        assert cfg["method"]["name"] == "sght"
