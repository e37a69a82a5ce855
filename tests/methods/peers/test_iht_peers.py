"""IHT's peers: one-shot magnitude pruning + fine-tune, and Dense-Sparse-Dense (ends dense)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prunekit import data as pdata
from prunekit import methods
from prunekit.engine import Callback, LoopState, OptimConfig, Stage, Trainer, TrainerConfig
from prunekit.errors import PrunekitError
from prunekit.methods.iht import keep_count
from prunekit.methods.peers.dsd import DenseSparseDense
from prunekit.methods.peers.magnitude import OneShotMagnitude
from tests.helpers import Kill, hooked_step

torch.set_num_threads(1)
SHAPE = (1, 8, 8)


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 5))


def nonzeros(model: nn.Module) -> dict[str, int]:
    return {"1": int(torch.count_nonzero(model[1].weight)), "3": int(torch.count_nonzero(model[3].weight))}


@pytest.fixture(scope="module")
def train_data() -> pdata.Dataset:
    return pdata.load("synthetic", "train", n=64, shape=SHAPE, num_classes=5)


class Recorder(Callback):
    def __init__(self) -> None:
        self.rows: list[tuple[str, dict[str, int], float]] = []

    def on_epoch_end(self, trainer, metrics: dict) -> None:
        self.rows.append((trainer.stage.name, nonzeros(trainer.raw_model), trainer.optimizers[0].param_groups[0]["lr"]))


def fit(model: nn.Module, train: pdata.Dataset, method, epochs: int) -> Recorder:
    rec = Recorder()
    Trainer(model, train, None, optim=OptimConfig(lr=0.05, schedule="constant"),
            config=TrainerConfig(batch_size=16, device="cpu", amp="off", channels_last="off", quiet=True),
            callbacks=[method, rec]).fit(method.stages(epochs))
    return rec


def test_registry() -> None:
    assert methods.get("magnitude") is OneShotMagnitude and methods.get("dsd") is DenseSparseDense


def test_magnitude_schedule_spends_the_same_budget() -> None:
    m = OneShotMagnitude(target="2x")
    assert [(s.name, s.kind, s.epochs) for s in m.stages(11)] == [("dense", "dense", 5), ("sparse", "sparse", 6)]
    assert [s.epochs for s in OneShotMagnitude(sparse_epochs=3).stages(10)] == [7, 3]
    assert [s.epochs for s in OneShotMagnitude(dense_epochs=0).stages(4)] == [4]  # pretrained: prune at once
    with pytest.raises(PrunekitError, match="add up"):
        OneShotMagnitude(dense_epochs=4, sparse_epochs=4).stages(10)


def test_magnitude_prunes_once_and_ends_with_exactly_k(train_data: pdata.Dataset) -> None:
    model = mlp()
    m = methods.get("magnitude")({"target": "4x"})
    rec = fit(model, train_data, m, 4)
    k = {"1": keep_count(0.25, 64 * 32), "3": keep_count(0.25, 32 * 5)}
    assert [r[0] for r in rec.rows] == ["dense", "dense", "sparse", "sparse"]
    assert rec.rows[1][1] == {"1": 2048, "3": 160} and rec.rows[2][1] == k and rec.rows[3][1] == k
    res = m.finalize(model, torch.zeros(1, *SHAPE))
    assert res.sparse and res.report["thresholded_nonzero"] == sum(k.values())


def test_dsd_schedule_and_lower_redense_lr(train_data: pdata.Dataset) -> None:
    m = DenseSparseDense(keep=0.5)
    assert [(s.name, s.kind, s.epochs) for s in m.stages(7)] == [
        ("dense", "dense", 3), ("sparse", "sparse", 2), ("redense", "dense", 2)]
    assert [s.epochs for s in DenseSparseDense(sparse_epochs=1).stages(7)] == [3, 1, 3]
    with pytest.raises(PrunekitError, match="cannot hold"):
        DenseSparseDense().stages(2)
    model = mlp()
    rec = fit(model, train_data, m, 7)
    k = {"1": 1024, "3": 80}
    assert [r[2] for r in rec.rows] == pytest.approx([0.05] * 5 + [0.005] * 2)  # re-dense at 1/10 lr
    assert [r[1] for r in rec.rows[3:5]] == [k, k]
    assert all(rec.rows[-1][1][n] > k[n] for n in k)  # re-dense: pruned connections grew back from zero
    res = m.finalize(model, torch.zeros(1, *SHAPE))
    assert not res.sparse  # DSD delivers a dense network, and says so
    assert res.report["thresholded_nonzero"] == sum(nonzeros(model).values()) > sum(k.values())
    assert res.report["nonzero_params"] == sum(int(torch.count_nonzero(p)) for p in model.parameters())


def test_dsd_absolute_redense_lr_wins(train_data: pdata.Dataset) -> None:
    rec = fit(mlp(), train_data, DenseSparseDense(redense_lr=0.02), 3)
    assert [r[2] for r in rec.rows] == pytest.approx([0.05, 0.05, 0.02])


def test_peers_in_a_users_own_loop() -> None:
    torch.manual_seed(0)
    x, y = torch.randn(16, *SHAPE), torch.randint(0, 5, (16,))
    for cls, expect in ((OneShotMagnitude, [2048, 1024, 1024]), (DenseSparseDense, [2048, 1024, None])):
        model = mlp()
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
        m = cls(keep=0.5)
        m.stages(3)
        state = LoopState(model, [opt])
        got = []
        for epoch in range(3):
            state.epoch = epoch
            m.on_epoch_start(state)
            for _ in range(3):
                hooked_step(model, opt, x, y, m, state)
            got.append(nonzeros(model)["1"])
        assert got[:2] == expect[:2]
        if expect[2] is None:
            assert got[2] > 1024
        else:
            assert got[2] == expect[2]


@pytest.mark.parametrize("cls,kw", [(OneShotMagnitude, {"keep": 2}), (OneShotMagnitude, {"sparse_epochs": 0}),
                                    (DenseSparseDense, {"redense_lr_scale": 0}),
                                    (DenseSparseDense, {"dense_epochs": 0}),
                                    (DenseSparseDense, {"dense_lr": 0.1, "reset_momentum": False})])
def test_peer_bad_hyperparameters(cls, kw: dict) -> None:
    with pytest.raises(PrunekitError) as err:
        cls(kw)
    assert "\n" not in str(err.value)


def test_dsd_sparse_phase_freezes_weights() -> None:
    model = mlp()
    m = DenseSparseDense(keep=0.25)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.1)
    state = LoopState(model, [opt])
    m.on_stage_start(state, Stage("sparse", 1, kind="sparse"))
    x, y = torch.randn(8, *SHAPE), torch.randint(0, 5, (8,))
    for _ in range(3):
        hooked_step(model, opt, x, y, m, state)
    assert nonzeros(model) == {"1": 512, "3": 40}


def test_dsd_resume_mid_redense_is_bit_identical(train_data: pdata.Dataset, tmp_path) -> None:
    def run(model: nn.Module, method, kill: int | None, out, resume: bool = False) -> Trainer:
        t = Trainer(model, train_data, None, optim=OptimConfig(lr=0.05, schedule="cosine"),
                    config=TrainerConfig(batch_size=16, device="cpu", amp="off", channels_last="off", quiet=True,
                                         checkpoint_every_steps=3),
                    callbacks=[method, Kill(kill)], out_dir=out)
        t.fit(method.stages(5), resume=resume)  # dense 2, sparse 2 (4 steps each), redense 1: steps 16-19
        return t

    ref = run(mlp(), DenseSparseDense(keep=0.25), None, tmp_path / "ref")
    with pytest.raises(KeyboardInterrupt):
        run(mlp(), DenseSparseDense(keep=0.25), 19, tmp_path / "run")  # last checkpoint: step 18, in redense
    again = run(mlp(seed=7), DenseSparseDense(keep=0.25), None, tmp_path / "run", resume=True)
    assert again.optimizers[0].param_groups[0]["lr"] == ref.optimizers[0].param_groups[0]["lr"] < 0.005
    want = ref.raw_model.state_dict()
    assert all(torch.equal(again.raw_model.state_dict()[k], v) for k, v in want.items())
