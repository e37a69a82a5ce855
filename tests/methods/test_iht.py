"""IHT (Jin et al. 2016): exact top-k masks, frozen weights stay 0, phase schedule, resume, recipes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prunekit import data as pdata
from prunekit import methods
from prunekit.config import load_config
from prunekit.engine import Callback, LoopState, OptimConfig, Stage, Trainer, TrainerConfig, load_checkpoint
from prunekit.errors import PrunekitError
from prunekit.methods.iht import IHT, hard_threshold_masks, keep_count, parse_target, topk_mask
from tests.helpers import Kill, hooked_step

torch.set_num_threads(1)
RECIPES = sorted((Path(__file__).resolve().parents[2] / "configs" / "iht").glob("*.yaml"))
SHAPE = (1, 8, 8)


class Tiny(nn.Module):
    """Conv + BN + two linears: 72 + 8 + 1024 + 40 thresholded weights, biases and BN left alone."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(8 * 4 * 4, 8)
        self.fc2 = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.bn(self.conv(x))))
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


def tiny(seed: int = 0) -> Tiny:
    torch.manual_seed(seed)
    return Tiny()


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {"conv": model.conv.weight, "fc1": model.fc1.weight, "fc2": model.fc2.weight}


def nonzeros(model: nn.Module) -> dict[str, int]:
    return {n: int(torch.count_nonzero(w)) for n, w in weights(model).items()}


def expected_k(model: nn.Module, keep: float) -> dict[str, int]:
    return {n: keep_count(keep, w.numel()) for n, w in weights(model).items()}


@pytest.fixture(scope="module")
def train_data() -> pdata.Dataset:
    return pdata.load("synthetic", "train", n=64, shape=SHAPE, num_classes=5)


def make_trainer(model: nn.Module, train: pdata.Dataset, callbacks: list, out_dir: Path | None = None,
                 every: int = 0) -> Trainer:
    return Trainer(model, train, None, optim=OptimConfig(lr=0.05, schedule="constant", weight_decay=1e-3),
                   config=TrainerConfig(batch_size=16, device="cpu", amp="off", channels_last="off", quiet=True,
                                        seed=3, checkpoint_every_steps=every),
                   callbacks=callbacks, out_dir=out_dir)


# ----------------------------------------------------------------------------------------- O_k, exact k


def test_topk_mask_keeps_exactly_k_even_with_ties() -> None:
    w = torch.ones(4, 5)  # every weight ties at the threshold
    for k in (0, 1, 7, 20):
        assert int(topk_mask(w, k).sum()) == k
    w = torch.tensor([[0.1, -3.0, 2.0], [-0.5, 0.0, 1.0]])
    assert topk_mask(w, 2).tolist() == [[False, True, True], [False, False, False]]


def test_keep_count_and_targets() -> None:
    assert [keep_count(0.5, n) for n in (1, 3, 72, 1024)] == [1, 2, 36, 512]  # half up, at least 1
    assert keep_count(0.25, 3) == 1 and keep_count(0.01, 10) == 1
    assert parse_target("2x") == 0.5 and parse_target("4x") == 0.25 and parse_target(8) == 0.125
    assert IHT(target="4x").keep == 0.25 and IHT().keep == 0.5 and IHT(keep=0.3).keep == 0.3


@pytest.mark.parametrize("target", ["2x", "4x"])
def test_threshold_keeps_exactly_k_per_layer(target: str) -> None:
    model = tiny()
    m = IHT(target=target)
    m.threshold(model)
    k = expected_k(model, m.keep)
    assert {n: int(mask.sum()) for n, mask in m.masks.items()} == k
    assert nonzeros(model) == k  # random init: no weight was 0 before
    # the kept ones are the largest: every kept |w| >= every dropped |w| in each layer
    for name, w in weights(model).items():
        kept = w[m.masks[name]].abs()
        assert kept.min() > 0
    assert int(torch.count_nonzero(model.conv.bias)) == 8 and torch.all(model.bn.weight == 1)  # untouched


def test_layer_overrides_exclude_and_global_scope() -> None:
    model = tiny()
    m = IHT(keep=0.25, layer_keep={"fc2": 0.5}, exclude=["conv"])
    m.threshold(model)
    assert set(m.masks) == {"fc1", "fc2"}
    assert nonzeros(model) == {"conv": 72, "fc1": 256, "fc2": 20}

    model = tiny()
    with torch.no_grad():
        model.fc1.weight.mul_(0.01)  # globally, the small fc1 weights lose out to the others
    g = IHT(keep=0.25, scope="global")
    g.threshold(model)
    nz = nonzeros(model)
    assert sum(nz.values()) == keep_count(0.25, 72 + 1024 + 40)
    assert nz["fc1"] < 256 and nz["conv"] > 18  # differs from per-layer k

    masks = hard_threshold_masks(weights(tiny()), 0.25, "global", {"fc2": 0.5})
    assert int(masks["fc2"].sum()) == 20
    assert int(masks["conv"].sum()) + int(masks["fc1"].sum()) == keep_count(0.25, 72 + 1024)


def test_bad_layer_names_are_errors() -> None:
    with pytest.raises(PrunekitError, match="matches no Conv/Linear"):
        IHT(layers=["fc9"]).threshold(tiny())
    with pytest.raises(PrunekitError, match="not a thresholded layer"):
        IHT(layer_keep={"bn": 0.5}).threshold(tiny())


# ------------------------------------------------------------------------ frozen weights stay exactly 0


def _sgd(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.05)


@pytest.mark.parametrize("hooks", ["both", "before-only", "after-only"])
@pytest.mark.parametrize("optim", ["sgd", "adamw"])
def test_frozen_weights_stay_zero_with_momentum_and_weight_decay(hooks: str, optim: str) -> None:
    torch.manual_seed(1)
    x, y = torch.randn(16, *SHAPE), torch.randint(0, 5, (16,))
    model = tiny()
    opt = _sgd(model) if optim == "sgd" else torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.05)
    m = IHT(keep=0.25, reset_momentum=False)  # keep the dense phase's momentum: the hard case
    state = LoopState(model, [opt])
    for _ in range(3):  # dense steps build up momentum on every weight
        hooked_step(model, opt, x, y)
    m.enter_phase(state, Stage("sparse1", 1, kind="sparse", reset_optimizer=False), 1)
    frozen = {n: ~mask for n, mask in m.masks.items()}
    for name, w in weights(model).items():  # the optimizer state of frozen weights was zeroed as well
        for v in opt.state[w].values():
            if isinstance(v, torch.Tensor) and v.shape == w.shape:
                assert torch.all(v[frozen[name]] == 0)
    for _ in range(5):
        hooked_step(model, opt, x, y, m, state, before=hooks != "after-only", after=hooks != "before-only")
        for name, w in weights(model).items():
            assert torch.all(w[frozen[name]] == 0), name
    assert nonzeros(model) == expected_k(model, 0.25)
    # the test can fail: one step without the method moves the frozen weights off zero
    hooked_step(model, opt, x, y)
    assert any(bool(torch.any(w[frozen[n]] != 0)) for n, w in weights(model).items())


def test_phase_two_reactivates_frozen_connections_from_zero() -> None:
    torch.manual_seed(2)
    x, y = torch.randn(16, *SHAPE), torch.randint(0, 5, (16,))
    model = tiny()
    opt = _sgd(model)
    m = IHT(keep=0.25)
    state = LoopState(model, [opt])
    m.enter_phase(state, Stage("sparse1", 1, kind="sparse"), 1)
    frozen = ~m.masks["fc1"]
    hooked_step(model, opt, x, y, m, state)
    m.enter_phase(state, Stage("dense1", 1, kind="dense"), 2)
    assert m.masks is None and not opt.state  # masks dropped, momentum reset (AC/DC)
    assert torch.all(model.fc1.weight[frozen] == 0)  # they restart from exactly zero ...
    hooked_step(model, opt, x, y, m, state)
    assert int(torch.count_nonzero(model.fc1.weight[frozen])) > 0  # ... and train again


# ----------------------------------------------------------------------------------------- schedule


def _plan(m: IHT, epochs: int) -> list[tuple[str, str, int]]:
    return [(s.name, s.kind, s.epochs) for s in m.stages(epochs)]


def test_stages_follow_the_paper_schedule_and_spend_the_budget() -> None:
    assert _plan(IHT(), 10) == [("warmup", "dense", 5), ("sparse1", "sparse", 1), ("dense1", "dense", 1),
                                ("sparse2", "sparse", 1), ("dense2", "dense", 1), ("final", "sparse", 1)]
    assert _plan(IHT(cycles=1, warmup_epochs=0), 9) == [("sparse1", "sparse", 3), ("dense1", "dense", 3),
                                                        ("final", "sparse", 3)]
    assert _plan(IHT(cycles=3, sparse_epochs=2, dense_epochs=1, final_epochs=4), 20) == [
        ("warmup", "dense", 7), ("sparse1", "sparse", 2), ("dense1", "dense", 1), ("sparse2", "sparse", 2),
        ("dense2", "dense", 1), ("sparse3", "sparse", 2), ("dense3", "dense", 1), ("final", "sparse", 4)]
    assert _plan(IHT(cycles=0), 4) == [("warmup", "dense", 2), ("final", "sparse", 2)]
    for epochs in range(6, 40):
        for c in (1, 2, 3):
            if epochs >= 2 * c + 2:
                st = IHT(cycles=c).stages(epochs)
                assert sum(s.epochs for s in st) == epochs
                assert st[-1].kind == "sparse" and all(s.reset_optimizer for s in st)
    st = IHT(sparse_lr=0.01, dense_lr=0.1, warmup_lr=0.2, schedule="cosine").stages(10)
    assert [s.lr for s in st] == [0.2, 0.01, 0.1, 0.01, 0.1, 0.01]
    assert {s.schedule for s in st} == {"cosine"}


@pytest.mark.parametrize("kw,epochs", [({}, 5), ({"warmup_epochs": 3, "sparse_epochs": 2, "dense_epochs": 2,
                                                  "final_epochs": 2}, 20), ({"sparse_epochs": 6}, 10)])
def test_budget_that_cannot_hold_the_schedule_is_an_error(kw: dict, epochs: int) -> None:
    with pytest.raises(PrunekitError, match="cannot hold"):
        IHT(**kw).stages(epochs)


@pytest.mark.parametrize("kw", [{"keep": 0}, {"keep": 1.5}, {"target": "3"}, {"target": "0.5x"},
                                {"target": "2x", "keep": 0.3}, {"scope": "net"}, {"cycles": -1},
                                {"sparse_epochs": 0}, {"layer_keep": {"fc1": 2}}, {"layers": "fc1"},
                                {"sparse_lr": -1}, {"sparse_lr": 0.1, "reset_momentum": False},
                                {"schedule": "linear"}, {"no_such_option": 1}])
def test_bad_hyperparameters_give_one_clear_line(kw: dict) -> None:
    with pytest.raises(PrunekitError) as err:
        methods.get("iht")(kw)
    assert "\n" not in str(err.value) and len(str(err.value)) < 300


class Recorder(Callback):
    """Per epoch: the stage, non-zeros per layer; per stage start: whether the optimizer state is fresh."""

    def __init__(self) -> None:
        self.epochs: list[tuple[str, dict[str, int], float]] = []
        self.fresh: list[bool] = []

    def on_stage_start(self, trainer, stage: Stage) -> None:
        self.fresh.append(all(not opt.state for opt in trainer.optimizers))

    def on_epoch_end(self, trainer, metrics: dict) -> None:
        self.epochs.append((trainer.stage.name, nonzeros(trainer.raw_model), metrics["lr"]))


def test_phase_switching_in_the_trainer(train_data: pdata.Dataset) -> None:
    model = tiny()
    m = IHT(target="4x", sparse_lr=0.01, dense_lr=0.05)
    rec = Recorder()
    make_trainer(model, train_data, [m, rec]).fit(m.stages(7))
    full = {"conv": 72, "fc1": 1024, "fc2": 40}
    k = expected_k(model, 0.25)
    assert [e[0] for e in rec.epochs] == ["warmup", "warmup", "sparse1", "dense1", "sparse2", "dense2", "final"]
    by_stage = {name: (nz, lr) for name, nz, lr in rec.epochs}
    assert by_stage["warmup"][0] == full
    for name in ("sparse1", "sparse2", "final"):
        assert by_stage[name] == (k, 0.01)
    for name in ("dense1", "dense2"):  # phase II: the re-activated weights moved off zero again
        assert all(by_stage[name][0][n] > k[n] for n in k) and by_stage[name][1] == 0.05
    assert rec.fresh == [True] * 6  # momentum reset at every phase switch
    res = m.finalize(model, torch.zeros(1, *SHAPE))
    assert res.sparse and not res.report["thresholded_at_finalize"]
    for name, w in weights(model).items():  # +0.0, not -0.0: the sparse file stores none of them
        assert not torch.signbit(w[~m.masks[name]]).any()
    assert {n: v["nonzero"] for n, v in res.report["layers"].items()} == k
    assert res.report["thresholded_nonzero"] == sum(k.values()) and res.report["thresholded_params"] == 1136
    assert res.report["params"] == sum(p.numel() for p in model.parameters())
    assert res.report["nonzero_params"] == sum(int(torch.count_nonzero(p)) for p in model.parameters())


def test_works_in_a_users_own_loop() -> None:
    torch.manual_seed(4)
    xs, ys = torch.randn(4, 16, *SHAPE), torch.randint(0, 5, (4, 16))
    model = tiny()
    opt = _sgd(model)
    m = methods.get("iht")({"target": "2x", "cycles": 1})
    plan = m.stages(4)  # warmup 1, sparse 1, dense 1, final 1
    assert [s.name for s in plan] == ["warmup", "sparse1", "dense1", "final"]
    state = LoopState(model, [opt])
    m.on_fit_start(state)
    seen = []
    for epoch in range(4):
        state.epoch = epoch
        m.on_epoch_start(state)
        seen.append(not opt.state)  # reset at each phase switch
        for x, y in zip(xs, ys, strict=True):
            hooked_step(model, opt, x, y, m, state)
            state.step += 1
        seen.append(nonzeros(model))
    k = expected_k(model, 0.5)
    full = {"conv": 72, "fc1": 1024, "fc2": 40}
    assert seen[0::2] == [True] * 4
    assert seen[1] == full and seen[3] == k and seen[7] == k
    assert all(seen[5][n] > k[n] for n in k)
    assert m.finalize(model, xs[0][:1]).report["thresholded_nonzero"] == sum(k.values())


def test_user_loop_without_a_plan_is_told_what_to_do() -> None:
    with pytest.raises(PrunekitError, match="stages"):
        IHT().on_epoch_start(LoopState(tiny()))


def test_finalize_in_a_dense_phase_thresholds_to_the_budget() -> None:
    model = tiny()
    res = IHT(target="2x").finalize(model, torch.zeros(1, *SHAPE))
    assert res.report["thresholded_at_finalize"] and nonzeros(model) == expected_k(model, 0.5)


# ------------------------------------------------------------------------------------------ resume


@pytest.mark.parametrize("kill_at,stage", [(15, "dense1"), (19, "sparse2")])  # mid phase II / mid phase I
def test_resume_mid_cycle_is_bit_identical(train_data: pdata.Dataset, tmp_path: Path, kill_at: int,
                                           stage: str) -> None:
    # 4 steps per epoch; schedule warmup 2, sparse1 1, dense1 1, sparse2 1, dense2 1, final 1 (epochs)
    m = IHT(target="4x")
    ref_model = tiny()
    make_trainer(ref_model, train_data, [m, Kill(None)], tmp_path / "ref", every=3).fit(m.stages(7))

    first = IHT(target="4x")
    with pytest.raises(KeyboardInterrupt):
        make_trainer(tiny(), train_data, [first, Kill(kill_at)], tmp_path / "run", every=3).fit(first.stages(7))
    pos = load_checkpoint(tmp_path / "run" / "checkpoint.safetensors")
    assert pos["stages"][pos["position"]["stage_index"]]["name"] == stage
    assert 0 < pos["position"]["batch_in_epoch"] < 4  # the checkpoint is in the middle of an epoch
    fresh = IHT(target="4x")
    t = make_trainer(tiny(seed=99), train_data, [fresh, Kill(None)], tmp_path / "run", every=3)
    t.fit(fresh.stages(7), resume=True)
    got, want = t.raw_model.state_dict(), ref_model.state_dict()
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert all(torch.equal(fresh.masks[n], m.masks[n]) for n in m.masks)


# ------------------------------------------------------------------------------------- registry, recipes


def test_registry_names() -> None:
    assert methods.get("iht") is IHT
    assert "iht" in methods.names()


def test_recipes_exist_and_validate() -> None:
    names = {p.name for p in RECIPES}
    assert {"lenet5_mnist_cpu.yaml", "nin_cifar10_sdnn2x.yaml", "nin_cifar100_sdnn2x.yaml",
            "alexnet_imagenet_sdnn2x.yaml"} <= names
    for path in RECIPES:
        cfg = load_config(path)
        opts = {k: v for k, v in cfg["method"].items() if k != "name"}
        method = methods.get(cfg["method"]["name"])(opts)
        stages = method.stages(cfg["train"]["epochs"])
        assert sum(s.epochs for s in stages) == cfg["train"]["epochs"], path.name


def test_final_model_saves_sparse_and_reloads_bit_for_bit(tmp_path: Path) -> None:
    from prunekit import io, surgery

    model = tiny()
    model(torch.randn(4, *SHAPE))  # as after training: no all-zero tensor left (BN beta, batch count);
    with torch.no_grad():  # save_sparse cannot yet round-trip an all-zero tensor (reported to surgery)
        model.bn.bias.normal_()
    res = IHT(target="4x").finalize(model, torch.zeros(1, *SHAPE))
    sparse = surgery.save_sparse(res.model, tmp_path / "sparse.safetensors")
    dense = io.save(res.model, tmp_path / "dense.safetensors")
    back = surgery.load_sparse(sparse, model=tiny(seed=5))
    assert all(torch.equal(back.state_dict()[k], v) for k, v in res.model.state_dict().items())
    assert sparse.stat().st_size < 0.6 * dense.stat().st_size  # a quarter of the weights + bitmap, not all
