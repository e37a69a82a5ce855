"""DistributedDataParallel on CPU (gloo, 2 processes): same decisions and weights on every rank; torchrun launch."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from prunekit import data, models
from prunekit.engine import Callback, Stage, Trainer, TrainerConfig, distributed, seed_everything
from prunekit.errors import PrunekitError
from tests.helpers import gloo_group


class ShrinkOnce(Callback):
    """Replaces the model at the second stage, as structured methods do; DDP must be rebuilt around it."""

    def on_stage_start(self, t, stage):
        if stage.name == "after":
            seed_everything(5)
            t.replace_model(models.create("lenet5", in_channels=1, input_size=8, num_classes=4))


def _worker(rank: int, world: int, init_file: str, out: str) -> None:
    with gloo_group(rank, world, init_file):
        _ddp_run(rank, out)
        _nan_run(rank, out)


def _ddp_run(rank: int, out: str) -> None:
    """Two stages under DDP, the model replaced between them; the rank's weights saved. A function of its own,
    so the DDP wrapper is gone before the process group is destroyed."""
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


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not built")
def test_ddp_two_ranks_agree(tmp_path):
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert torch.equal(r0["flat"], r1["flat"])
    assert r0["steps"] == r1["steps"] == 2 * (128 // 16)  # batch_size is global: 8 steps per epoch
    assert r0["val"] == r1["val"]
    # a non-finite loss on rank 1 only stops every rank with the same error (no rank left hanging) and no
    # checkpoint is written after it
    msgs = [(tmp_path / f"nan{r}.txt").read_text() for r in (0, 1)]
    assert all("loss became" in m for m in msgs), msgs
    assert not (tmp_path / "nanrun" / "checkpoint.safetensors").exists()


def _nan_on_rank1(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    loss = torch.nn.functional.cross_entropy(out, y)
    bad = dist.get_rank() == 1 and _nan_on_rank1.calls == 7  # the last step: rank 0 never sees a NaN itself
    _nan_on_rank1.calls += 1
    return loss * float("nan") if bad else loss


def _nan_run(rank: int, out: str) -> None:
    train = data.load("synthetic", "train", n=128, shape=(1, 8, 8), num_classes=4, seed=0)
    seed_everything(0)
    _nan_on_rank1.calls = 0
    tr = Trainer(models.create("lenet-300-100", input_size=8, num_classes=4), train, None,
                 config=TrainerConfig(batch_size=16, device="cpu", quiet=True), loss_fn=_nan_on_rank1,
                 out_dir=os.path.join(out, "nanrun"))
    try:
        tr.fit(1)
        msg = "finished"
    except PrunekitError as exc:
        msg = str(exc)
    with open(os.path.join(out, f"nan{rank}.txt"), "w") as fh:
        fh.write(msg)


def test_init_from_env_without_launcher_is_a_noop(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)
    assert distributed.init_from_env() is False
    assert not distributed.is_initialized()
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
    distributed.barrier()
    distributed.check_same(torch.ones(3), "anything")  # one process: nothing to compare
    distributed.shutdown()


def test_init_from_env_needs_the_rendezvous_address(monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(PrunekitError, match="MASTER_ADDR"):
        distributed.init_from_env()


TORCHRUN_SCRIPT = '''
import json, os, sys
import torch
from prunekit import data, models
from prunekit.engine import Trainer, TrainerConfig, distributed, seed_everything
torch.set_num_threads(1)
assert distributed.init_from_env() is True
train = data.load("synthetic", "train", n=96, shape=(1, 8, 8), num_classes=4, seed=0)
seed_everything(0)
tr = Trainer(models.create("lenet-300-100", input_size=8, num_classes=4), train, None,
             config=TrainerConfig(batch_size=16, device="cpu", quiet=True), out_dir=sys.argv[1])
tr.fit(1)
flat = torch.cat([p.detach().flatten() for p in tr.raw_model.parameters()])
json.dump({"rank": distributed.rank(), "world": distributed.world_size(), "local": distributed.local_rank(),
           "ddp": type(tr.model).__name__, "steps": tr.step, "sum": flat.double().sum().item()},
          open(os.path.join(sys.argv[1], f"r{distributed.rank()}.json"), "w"))
distributed.shutdown()
'''


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not built")
def test_runs_unchanged_under_torchrun(tmp_path):
    """``torchrun --standalone --nproc_per_node=2`` + init_from_env: one DDP group, one checkpoint writer."""
    script = tmp_path / "train.py"
    script.write_text(TORCHRUN_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(script), str(tmp_path)], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = [json.loads((tmp_path / f"r{i}.json").read_text()) for i in (0, 1)]
    assert [x["rank"] for x in r] == [0, 1] and [x["local"] for x in r] == [0, 1]
    assert all(x["world"] == 2 and x["ddp"] == "DistributedDataParallel" and x["steps"] == 96 // 16 for x in r)
    assert r[0]["sum"] == r[1]["sum"]
    assert (tmp_path / "checkpoint.safetensors").exists() and (tmp_path / "log.jsonl").exists()
