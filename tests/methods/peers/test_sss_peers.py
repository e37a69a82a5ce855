"""SSS's peers: Network Slimming (L1 on BN scales + global threshold) and Torch-Pruning's BN-scale pruner."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prunekit import data as pdata
from prunekit import io, methods, metrics, models
from prunekit.engine import LoopState, OptimConfig, Trainer, TrainerConfig, seed_everything
from prunekit.errors import PrunekitError
from prunekit.methods.peers.slimming import NetworkSlimming, global_plan, scale_layers
from prunekit.methods.peers.tp_bnscale import TPBNScale, output_layers
from prunekit.methods.sss import ChannelScale, factor_modules
from tests.helpers import Kill, synthetic

torch.set_num_threads(1)


class BNNet(nn.Module):
    """Two conv-BN-ReLU layers (16 and 8 channels) and a classifier: 24 prunable channels."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.conv2, self.bn2 = nn.Conv2d(16, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
        return self.fc(x.mean((2, 3)))


def bnnet(seed: int = 0) -> BNNet:
    torch.manual_seed(seed)
    return BNNet()


EX = torch.zeros(1, 1, 8, 8)


# ------------------------------------------------------------------------------------- slimming


def test_slimming_adds_the_l1_subgradient_to_every_bn_scale():
    net = bnnet()
    with torch.no_grad():
        net.bn1.weight.copy_(torch.linspace(-1, 1, 16))
    sl = NetworkSlimming(sparsity=0.01)
    sl.prepare(net)
    state = LoopState(net)
    F.cross_entropy(net(torch.randn(4, 1, 8, 8)), torch.tensor([0, 1, 2, 3])).backward()
    g1, g2 = net.bn1.weight.grad.clone(), net.bn2.weight.grad.clone()
    sl.on_before_optimizer_step(state)
    assert torch.equal(net.bn1.weight.grad, g1 + 0.01 * torch.sign(net.bn1.weight.detach()))
    assert torch.equal(net.bn2.weight.grad, g2 + 0.01)


def test_global_threshold_removes_the_smallest_scales_network_wide():
    net = bnnet()
    with torch.no_grad():
        net.bn1.weight.copy_(torch.arange(1, 17, dtype=torch.float32) / 100)  # 0.01 .. 0.16
        net.bn2.weight.copy_(torch.tensor([0.5, 0.001, 0.6, 0.7, 0.8, 0.9, 0.002, 1.0]))
    assert set(scale_layers(net)) == {"conv1", "conv2"}
    assert global_plan(net, 4) == {"conv2": [1, 6], "conv1": [0, 1]}
    plan = global_plan(net, 30)  # more than there is: every layer keeps one channel (its largest)
    assert sorted(plan["conv1"]) == list(range(15)) and sorted(plan["conv2"]) == [0, 1, 2, 3, 4, 5, 6]
    sl = NetworkSlimming(prune_ratio=0.25)  # 6 of 24
    out = sl.prune(net, EX).model
    assert (out.conv1.out_channels, out.conv2.out_channels, out.conv2.in_channels) == (12, 6, 12)
    assert sl.report["removed_channels"] == 6


def test_slimming_target_macs_is_met_from_below():
    net = bnnet()
    with torch.no_grad():
        for bn in (net.bn1, net.bn2):
            bn.weight.uniform_(0.1, 1.0)
    base = metrics.count(net, EX).macs
    sl = NetworkSlimming(target_macs=0.4)
    out = sl.prune(copy.deepcopy(net), EX).model
    got = metrics.count(out, EX).macs
    assert got <= 0.4 * base
    # one channel fewer removed would exceed the target
    k = sl.report["removed_channels"]
    trial = copy.deepcopy(net)
    NetworkSlimming.remove_smallest(trial, k - 1, EX)
    assert metrics.count(trial, EX).macs > 0.4 * base


def test_slimming_gives_bn_free_layers_a_channel_scale_and_folds_it():
    net = models.create("lenet5", in_channels=1, num_classes=4, input_size=8)
    sl = NetworkSlimming(prune_ratio=0.5)
    sl.prepare(net)
    assert [n for n, _ in factor_modules(net)] == ["conv1.1", "conv2.1", "fc1.1"]
    assert all(isinstance(m, ChannelScale) for _, m in factor_modules(net))
    out = sl.prune(net, EX).model
    assert factor_modules(out) == []
    assert out.conv1.out_channels + out.conv2.out_channels + out.fc1.out_features == (20 + 50 + 500) - 285


def test_slimming_in_the_trainer_prunes_then_finetunes_and_resumes_exactly(tmp_path):
    train, test = synthetic(64)
    cfg = TrainerConfig(batch_size=16, device="cpu", quiet=True, checkpoint_every_steps=1)

    def run(out, kill=-1, resume=False, seed=0):
        seed_everything(seed)
        net = models.create("lenet5", in_channels=1, num_classes=4, input_size=8)
        sl = NetworkSlimming(prune_ratio=0.5, finetune_epochs=1)
        tr = Trainer(net, train, test, optim=OptimConfig(lr=0.02), config=cfg, callbacks=[sl, Kill.after(kill)],
                     out_dir=out)
        tr.fit(sl.stages(1), resume=resume)
        return tr, sl

    ref, sl = run(tmp_path / "ref")
    assert sl.pruned and ref.raw_model.fc1.out_features < 500
    assert [h["stage"] for h in ref.history] == ["sparse", "finetune"]
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "run", kill=6)  # during fine-tuning, after the surgery
    resumed, sl2 = run(tmp_path / "run", resume=True, seed=5)
    assert sl2.pruned and sl2.report == sl.report
    a, b = ref.raw_model.state_dict(), resumed.raw_model.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    final = sl2.finalize(resumed.raw_model, EX)
    assert final.model is resumed.raw_model
    io.load(io.save(final.model, tmp_path / "m.safetensors"))


@pytest.mark.parametrize("bad", [{"sparsity": -1}, {"prune_ratio": 1.0}, {"target_macs": 0},
                                 {"finetune_epochs": 1.5}])
def test_slimming_rejects_bad_options(bad):
    with pytest.raises(PrunekitError, match="method 'slimming'"):
        NetworkSlimming(**bad)


# ------------------------------------------------------------------------------------ tp-bnscale


def test_output_layer_is_found_by_tracing():
    net = bnnet()
    assert output_layers(net, EX) == [net.fc]


def test_tp_bnscale_regularizes_in_a_users_loop_and_prunes_to_a_macs_target():
    net = bnnet()
    tp = TPBNScale(reg=0.01, target_macs=0.5)
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    state = LoopState(net, [opt])
    train, _ = synthetic(64)
    before_mode = net.training
    for x, y in pdata.iterate(train, 16, shuffle=True, seed=0, epoch=0):
        tp.on_train_batch_start(state, (x, y))
        F.cross_entropy(net(x), y).backward()
        g = net.bn1.weight.grad.clone()
        tp.on_before_optimizer_step(state)
        assert torch.allclose(net.bn1.weight.grad, g + 0.01 * torch.sign(net.bn1.weight.detach()))
        opt.step()
        opt.zero_grad()
    assert net.training == before_mode  # Torch-Pruning traces in eval mode; our mode is restored
    base = metrics.count(net, EX).macs
    out = tp.finalize(net, EX).model
    got = metrics.count(out, EX).macs
    assert got <= 0.5 * base and got > 0.2 * base
    assert out.fc.out_features == 4
    assert tp.report["macs"] == {"before": base, "after": got}


def test_tp_bnscale_in_the_trainer_with_finetune_and_on_a_zoo_resnet():
    train = pdata.load("synthetic", "train", n=32, shape=(3, 32, 32), num_classes=10, seed=0)
    seed_everything(0)
    tp = TPBNScale(pruning_ratio=0.3, finetune_epochs=1)
    tr = Trainer(models.create("resnet20"), train, None, optim=OptimConfig(lr=0.02),
                 config=TrainerConfig(batch_size=16, device="cpu", quiet=True), callbacks=[tp])
    tr.fit(tp.stages(1))
    assert tp.pruned and [h["stage"] for h in tr.history] == ["sparse", "finetune"]
    assert tp.report["macs"]["after"] < tp.report["macs"]["before"]
    assert tr.raw_model.fc.out_features == 10


def test_tp_bnscale_needs_bn_and_valid_options():
    with pytest.raises(PrunekitError, match="no BatchNorm"):
        TPBNScale().prune(models.create("lenet5", in_channels=1, num_classes=4, input_size=8), EX)
    with pytest.raises(PrunekitError, match="method 'tp-bnscale'"):
        TPBNScale(pruning_ratio=1.5)
    assert methods.get("tp-bnscale") is TPBNScale and methods.get("slimming") is NetworkSlimming
