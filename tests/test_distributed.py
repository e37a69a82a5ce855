"""DistributedDataParallel on CPU (gloo, 2 processes): same decisions and weights on every rank."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from prunekit import data, models
from prunekit.engine import Callback, Stage, Trainer, TrainerConfig, seed_everything


class ShrinkOnce(Callback):
    """Replaces the model at the second stage, as structured methods do; DDP must be rebuilt around it."""

    def on_stage_start(self, t, stage):
        if stage.name == "after":
            seed_everything(5)
            t.replace_model(models.create("lenet5", in_channels=1, input_size=8, num_classes=4))


def _worker(rank: int, world: int, init_file: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        train = data.load("synthetic", "train", n=128, shape=(1, 8, 8), num_classes=4, seed=0)
        test = data.load("synthetic", "test", n=64, shape=(1, 8, 8), num_classes=4, seed=0)
        seed_everything(0)
        model = models.create("lenet-300-100", input_size=8, num_classes=4)
        tr = Trainer(model, train, test, config=TrainerConfig(batch_size=16, device="cpu", quiet=True),
                     callbacks=[ShrinkOnce()])
        tr.fit([Stage("before", 1), Stage("after", 1)])
        assert isinstance(tr.model, torch.nn.parallel.DistributedDataParallel)
        flat = torch.cat([p.detach().flatten() for p in tr.raw_model.parameters()])
        torch.save({"flat": flat, "steps": tr.step, "val": tr.history[-1]["val_top1"]},
                    os.path.join(out, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not built")
def test_ddp_two_ranks_agree(tmp_path):
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert torch.equal(r0["flat"], r1["flat"])
    assert r0["steps"] == r1["steps"] == 2 * (128 // 2 // 16)
    assert r0["val"] == r1["val"]
