"""SGHT's peers: L1-norm filter pruning (Li et al.), soft filter pruning (He et al.), Torch-Pruning's magnitude
pruner -- exact selections, matched budgets, schedules, both loops, resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from prunekit import data as pdata
from prunekit import methods, metrics, models
from prunekit.engine import Callback, LoopState, OptimConfig, Trainer, TrainerConfig
from prunekit.errors import PrunekitError
from prunekit.methods import budget
from prunekit.methods.peers.l1_filter import L1FilterPruning
from prunekit.methods.peers.sfp import SoftFilterPruning
from prunekit.methods.peers.tp_magnitude import TPMagnitude
from tests.helpers import Kill, resnet20

torch.set_num_threads(1)
SHAPE = (3, 8, 8)


def example() -> torch.Tensor:
    return torch.zeros(1, *SHAPE)


@pytest.fixture(scope="module")
def train_data() -> pdata.Dataset:
    return pdata.load("synthetic", "train", n=64, shape=SHAPE, num_classes=4)


def norms(w: torch.Tensor, p: int = 2) -> torch.Tensor:
    return w.detach().reshape(w.shape[0], -1).norm(p=p, dim=1)


def cfg(**kw) -> TrainerConfig:
    return TrainerConfig(device="cpu", quiet=True, batch_size=16, **kw)


# ------------------------------------------------------------------------------------------ l1-filter
def test_l1_filter_removes_the_smallest_l1_filters_and_leaves_residual_groups_alone() -> None:
    model = resnet20()
    mods = dict(model.named_modules())
    conv = mods["layer1.0.branch.conv1"]
    with torch.no_grad():  # L1 and L2 rankings disagree: spread-out vs peaked filters
        conv.weight.abs_()
        conv.weight[:8] = conv.weight[:8] * 0 + 0.05
        conv.weight[8:, :, 0, 0] = 0.3
    want = norms(conv.weight, 1).argsort(descending=True)[:8].sort().values
    kept_weights = conv.weight.detach()[want].clone()
    m = L1FilterPruning(keep_ratio=0.5)
    m.prune(model, example())
    assert torch.equal(mods["layer1.0.branch.conv1"].weight, kept_weights)
    widths = {n: x.out_channels for n, x in model.named_modules() if isinstance(x, nn.Conv2d)}
    assert widths["conv1"] == 16 and widths["layer1.0.branch.conv2"] == 16  # coupled: Li et al. skip them
    assert widths["layer2.1.branch.conv1"] == 16 and widths["layer3.2.branch.conv1"] == 32


def test_l1_filter_stages_split_the_epoch_budget() -> None:
    assert [(s.name, s.epochs) for s in L1FilterPruning(dense_fraction=0.5).stages(10)] == \
        [("dense", 5), ("finetune", 5)]
    assert [(s.name, s.epochs, s.lr) for s in L1FilterPruning(dense_fraction=0.0, finetune_lr=0.01).stages(4)] \
        == [("finetune", 4, 0.01)]


@pytest.mark.parametrize("cls", [L1FilterPruning, TPMagnitude, SoftFilterPruning])
def test_macs_budget_is_matched_within_one_percent(cls: type) -> None:
    model = resnet20()
    dense = metrics.count(model, example()).macs
    method = cls(macs_budget=0.4, coupled=True)
    if cls is SoftFilterPruning:
        method.bind(model, example())
    res = method.finalize(model, example())
    got = metrics.count(res.model, example()).macs / dense
    assert abs(got - 0.4) <= 0.004, got
    if cls is not SoftFilterPruning:
        assert res.report["keep"] == (res.report.get("target_keep") or res.report["keep"])


def test_l1_filter_in_the_trainer_prunes_at_the_finetune_stage(train_data: pdata.Dataset) -> None:
    method = L1FilterPruning(keep_ratio=0.5)
    seen: list[int] = []

    class Width(Callback):
        def on_epoch_start(self, trainer) -> None:
            seen.append(dict(trainer.raw_model.named_modules())["layer1.0.branch.conv1"].out_channels)

    t = Trainer(resnet20(), train_data, optim=OptimConfig(lr=0.05), callbacks=[method, Width()],
                config=cfg(max_steps_per_epoch=2))
    t.fit(method.stages(4))
    assert seen == [16, 16, 8, 8]
    res = method.finalize(t.raw_model, example())
    assert res.report["keep"]["layer1.0.branch.conv1"] == 8


# ------------------------------------------------------------------------------------------ sfp
def _probe(layer: str, log: list[tuple[str, int]]) -> Callback:
    class Probe(Callback):
        def on_train_batch_start(self, trainer, batch) -> None:
            w = dict(trainer.raw_model.named_modules())[layer].weight
            log.append(("start", int((norms(w) > 0).sum())))

        def on_epoch_end(self, trainer, metrics) -> None:  # listed first: runs before SFP's own selection
            w = dict(trainer.raw_model.named_modules())[layer].weight
            log.append(("end", int((norms(w) > 0).sum())))

    return Probe()


def test_sfp_zeroes_every_epoch_and_zeroed_filters_keep_training(train_data: pdata.Dataset) -> None:
    # from scratch every BN shift is 0, so a channel zeroed before training outputs relu(0) = 0 and gets no
    # gradient; SFP's regrowth needs a trained shift, so the first selection here follows one epoch
    method = SoftFilterPruning(keep_ratio=0.5, mask_at_start=False)
    log: list[tuple[str, int]] = []
    layer = "layer1.0.branch.conv1"
    t = Trainer(resnet20(), train_data, optim=OptimConfig(lr=0.05), callbacks=[_probe(layer, log), method],
                config=cfg(max_steps_per_epoch=2))
    t.fit(method.stages(3))
    # dense first epoch; masked after every epoch; in between, zeroed filters grow back ("soft")
    assert log[:3] == [("start", 16), ("start", 16), ("end", 16)]
    assert log[3] == ("start", 8) and log[6] == ("start", 8)
    assert log[5][1] > 8 and log[8][1] > 8
    assert method.selections == 3
    res = method.finalize(t.raw_model, example())
    assert dict(res.model.named_modules())[layer].out_channels == 8
    assert res.report["selections"] == 4


def test_sfp_with_zeroed_bn_shift_removes_exactly(train_data: pdata.Dataset) -> None:
    method = SoftFilterPruning(keep_ratio=0.5, zero_shift=True)
    t = Trainer(resnet20(), train_data, optim=OptimConfig(lr=0.05), callbacks=[method],
                config=cfg(max_steps_per_epoch=2))
    t.fit(method.stages(2))
    model = t.raw_model
    model.eval()
    xb = torch.randn(5, *SHAPE)
    with torch.no_grad():
        before = model(xb)
    res = method.finalize(model, example())
    with torch.no_grad():
        assert (res.model(xb) - before).abs().max().item() <= 1e-5
    assert dict(res.model.named_modules())["layer1.0.branch.conv1"].out_channels == 8


def test_sfp_in_a_users_own_loop() -> None:
    model = resnet20()
    method = SoftFilterPruning(keep_ratio=0.5, coupled=False)
    method.bind(model, example())
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    state = LoopState(model, [opt])
    method.on_fit_start(state)
    for epoch in range(2):
        state.epoch = epoch
        nn.functional.cross_entropy(model(torch.randn(8, *SHAPE)), torch.arange(8) % 4).backward()
        opt.step()
        opt.zero_grad()
        method.on_epoch_end(state, {})
    res = method.finalize(model, example())
    assert res.report["selections"] == 4
    assert dict(res.model.named_modules())["conv1"].out_channels == 16


# ------------------------------------------------------------------------------------------ tp-magnitude
def test_tp_magnitude_keep_ratio_and_classifier_untouched() -> None:
    model = resnet20()
    res = TPMagnitude(keep_ratio=0.5).finalize(model, example())
    mods = dict(res.model.named_modules())
    assert mods["fc"].out_features == 4
    assert mods["layer1.0.branch.conv1"].out_channels == 8 and mods["conv1"].out_channels == 8
    assert res.report["keep"] == res.report["target_keep"]


def test_tp_magnitude_keeps_whole_original_filters() -> None:
    # Torch-Pruning scores a channel by its whole group (filter, BN scale, next layer's input slice), so the
    # kept set is its own; what must hold is that surviving filters are original rows, in order
    model = resnet20()
    old = dict(model.named_modules())["layer2.1.branch.conv1"].weight.detach().clone()
    TPMagnitude(keep_ratio=0.5, coupled=False).prune(model, example())
    new = dict(model.named_modules())["layer2.1.branch.conv1"].weight.detach()
    assert new.shape == (16, 32, 3, 3)  # coupled=False: its input (a residual group) keeps every channel
    match = (new[:, None] == old[None, :]).flatten(2).all(2)  # [new row, old row]
    assert bool((match.sum(1) == 1).all())
    rows = match.float().argmax(1).tolist()
    assert len(rows) == 16 and rows == sorted(rows)


# ------------------------------------------------------------------------------------------ resume
@pytest.mark.parametrize(("name", "kill"), [("l1-filter", 5), ("sfp", 3)])
def test_resume_is_bit_identical(train_data: pdata.Dataset, tmp_path: Path, name: str, kill: int) -> None:
    def run(out: Path, at: int | None, resume: bool = False) -> Trainer:
        method = methods.get(name)({"keep_ratio": 0.5})
        t = Trainer(resnet20(), train_data, optim=OptimConfig(lr=0.05), callbacks=[method, Kill(at)],
                    config=cfg(max_steps_per_epoch=2, checkpoint_every_steps=1), out_dir=out)
        t.fit(method.stages(4), resume=resume)
        return t

    ref = run(tmp_path / "a", None)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b", kill)
    got = run(tmp_path / "b", None, resume=True)
    a, b = ref.raw_model.state_dict(), got.raw_model.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# ------------------------------------------------------------------------------------------ options
@pytest.mark.parametrize(("name", "kw"), [
    ("l1-filter", {"keep_ratio": 0}), ("l1-filter", {"dense_fraction": 1.5}), ("l1-filter", {"norm": "linf"}),
    ("l1-filter", {"finetune_lr": -1}), ("sfp", {"update_every": 0}), ("sfp", {"macs_budget": 3}),
    ("tp-magnitude", {"layer_keep": {"conv1": 1.5}}), ("tp-magnitude", {"dense_fraction": -0.1}),
    ("sfp", {"coupled": 1}), ("l1-filter", {"min_keep": 0}),
])
def test_bad_options_give_one_clear_line(name: str, kw: dict) -> None:
    with pytest.raises(PrunekitError) as err:
        methods.get(name)(kw)
    assert "\n" not in str(err.value) and len(str(err.value)) < 300


def test_registry_names() -> None:
    assert methods.get("l1-filter") is L1FilterPruning
    assert methods.get("sfp") is SoftFilterPruning
    assert methods.get("tp-magnitude") is TPMagnitude


def test_budget_helper_frozen_groups_and_errors() -> None:
    model = resnet20()
    groups = budget.filter_groups(model, example())
    cost = budget.CostModel.build(model, example(), groups)
    keep = budget.solve_keep(cost, 0.5, "macs", frozen=[0])
    assert keep[0] == groups[0].size
    assert abs(cost.macs(keep) / cost.dense_macs - 0.5) <= 0.005
    with pytest.raises(PrunekitError, match="macs_budget"):
        budget.solve_keep(cost, 1.5)
    with pytest.raises(PrunekitError, match="budget kind"):
        budget.solve_keep(cost, 0.5, "flops")


@pytest.mark.parametrize("name", ["sght", "l1-filter", "sfp", "tp-magnitude", "random-filter"])
def test_round_to_gives_hardware_friendly_widths_at_the_budget(name):
    """round_to=8: every thinned width is a multiple of 8 (or untouched), and the MACs budget still holds."""
    from prunekit.methods import budget as _budget

    x = torch.zeros(1, 3, 32, 32)
    model = models.create("resnet56")
    dense_widths = {n: m.out_channels for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)}
    base = metrics.count(model, x).macs
    method = methods.get(name)(macs_budget=0.37, round_to=8, coupled=True)
    groups = _budget.filter_groups(model, x, include_linear=True, coupled=True)
    cost = _budget.CostModel.build(model, x, groups)
    c = method.config
    keep = _budget.resolve_keep(groups, cost, macs_budget=0.37, tol=c.budget_tol, min_keep=c.min_keep,
                                round_to=c.round_to)
    assert all(k % 8 == 0 or k == g.size for k, g in zip(keep, groups, strict=True))
    assert cost.macs(keep) / base == pytest.approx(0.37, abs=0.01)
    if name in ("l1-filter", "random-filter"):  # the one-shot peers prune for real: check the network itself
        method.prune(model, x)
        widths = {n: m.out_channels for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)}
        assert all(w % 8 == 0 or w == dense_widths[n] for n, w in widths.items())
        assert metrics.count(model, x).macs / base == pytest.approx(0.37, abs=0.01)


def test_round_to_that_cannot_reach_the_budget_says_so():
    from prunekit.methods import budget as _budget

    x = torch.zeros(1, 3, 32, 32)
    model = models.create("resnet56")
    groups = _budget.filter_groups(model, x, include_linear=True, coupled=True)
    cost = _budget.CostModel.build(model, x, groups)
    with pytest.raises(PrunekitError, match="round_to=16"):
        _budget.resolve_keep(groups, cost, macs_budget=0.37, round_to=16)
    with pytest.raises(PrunekitError, match="round_to must be an integer >= 1"):
        methods.get("l1-filter")(round_to=0)
