"""Checkpoints and resume (prunekit.engine.checkpoint): a run killed mid-epoch, at an epoch boundary or in a later
stage resumes to bit-identical weights and callback state, a checkpoint made with another schedule is refused,
and a user's own network thinned by structural pruning mid-run resumes onto a fresh instance and saves / loads
with it as base."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prunekit import data, io
from prunekit.engine import Callback, OptimConfig, Stage, Trainer, TrainerConfig, seed_everything
from prunekit.errors import PrunekitError
from tests.engine.helpers import Counter
from tests.helpers import Kill, synthetic, tiny_lenet


@pytest.mark.parametrize("kill_at", [4, 6, 13])  # mid-epoch, at an epoch boundary, in the second stage
def test_resume_is_exact(tmp_path, kill_at):
    train, test = synthetic(192, 64)
    stages = [Stage("a", 2), Stage("b", 1, lr=0.02)]
    cfg = TrainerConfig(batch_size=32, device="cpu", quiet=True, checkpoint_every_steps=1)
    optim = OptimConfig(lr=0.05, schedule="cosine")
    ref_cb = Counter()
    ref = Trainer(tiny_lenet(), train, test, optim=optim, config=cfg, callbacks=[ref_cb], out_dir=tmp_path / "ref")
    ref.fit(stages)

    run = tmp_path / "run"
    killed = Trainer(tiny_lenet(), train, test, optim=optim, config=cfg, callbacks=[Counter(), Kill.after(kill_at)],
                     out_dir=run)
    with pytest.raises(KeyboardInterrupt):
        killed.fit(stages)
    torch.manual_seed(1234)  # the resumed run must not depend on the global RNG state it starts with
    cb = Counter()
    resumed = Trainer(tiny_lenet(seed=99), train, test, optim=optim, config=cfg, callbacks=[cb, Kill(None)],
                      out_dir=run)
    resumed.fit(stages, resume=True)
    for (k, a), b in zip(ref.raw_model.state_dict().items(), resumed.raw_model.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    assert cb.n == ref_cb.n == 3 * (len(train) // 32)
    assert torch.equal(cb.buf, ref_cb.buf)
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]


def test_resume_with_other_schedule_is_refused(tmp_path):
    train, test = synthetic(192, 64)
    cfg = TrainerConfig(batch_size=32, device="cpu", quiet=True)
    Trainer(tiny_lenet(), train, test, config=cfg, out_dir=tmp_path).fit(1)
    with pytest.raises(PrunekitError, match="different schedule"):
        Trainer(tiny_lenet(), train, test, config=cfg, out_dir=tmp_path).fit(2, resume=True)


class _UserNet(nn.Module):
    """A user's own network (not in the zoo): a structured method thins it in the middle of the run."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.conv2(x))
        return self.head(x.mean((2, 3)))


class _ThinAtStage2(Callback):
    def on_stage_start(self, t, stage):
        if stage.name == "thin":
            from prunekit.surgery import remove_channels

            remove_channels(t.raw_model, {"conv1": [0, 2, 5]}, t.example_inputs)
            t.replace_model(t.raw_model)


def test_user_network_resumes_across_structural_pruning(tmp_path):
    """No zoo factory: the checkpoint records the thinned layers relative to the user's network."""
    train = data.load("synthetic", "train", n=64, shape=(1, 8, 8), num_classes=4, seed=0)
    cfg = TrainerConfig(batch_size=16, device="cpu", quiet=True, checkpoint_every_steps=3)
    stages = [Stage("dense", 1), Stage("thin", 2)]

    def fresh():
        seed_everything(0)
        return _UserNet()

    full = Trainer(fresh(), train, config=cfg, callbacks=[_ThinAtStage2()], out_dir=tmp_path / "full")
    full.fit(stages)
    assert full.raw_model.conv1.out_channels == 5
    # killed in the thinned stage (step 7 of 12: the last checkpoint holds the thinned network)
    killed = Trainer(fresh(), train, config=cfg, callbacks=[_ThinAtStage2(), Kill.after(7)], out_dir=tmp_path / "k")
    with pytest.raises(KeyboardInterrupt):
        killed.fit(stages)
    # a new process: a fresh instance of the user's network, resumed from the mid-run checkpoint
    again = Trainer(fresh(), train, config=cfg, callbacks=[_ThinAtStage2(), Kill(None)], out_dir=tmp_path / "k")
    again.fit(stages, resume=True)
    assert again.raw_model.conv1.out_channels == 5
    for (n, a), (_, b) in zip(full.raw_model.state_dict().items(), again.raw_model.state_dict().items(),
                              strict=True):
        assert torch.equal(a, b), n
    # the deliverable saves with the user's network as base and loads onto a fresh instance
    io.save(again.raw_model, tmp_path / "user.safetensors", base=_UserNet())
    back = io.load(tmp_path / "user.safetensors", model=_UserNet())
    assert back.conv1.out_channels == 5 and back.bn1.num_features == 5 and back.conv2.in_channels == 5
    with pytest.raises(PrunekitError, match="fresh instance"):
        io.load(tmp_path / "user.safetensors")
