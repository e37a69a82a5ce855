"""Every pruning method under DistributedDataParallel (2 gloo processes on the CPU) against one process.

One spawn runs all four methods (iht, trimming, sss, sght) on both ranks; the same runs are repeated here in
one process. With ``train.batch_size`` global, 2 ranks x 16 samples per step must compute what 1 process x
32 computes: the same pruned architecture on both ranks and in one process, bit-identical weights on the two
ranks and weights within float rounding of the single-process run (data augmentation on, so the ranks'
crops/flips must be the single process's too). These models have no BatchNorm, whose batch statistics are
per rank under DDP (SyncBatchNorm needs CUDA), so a BN network cannot match one process exactly; for one
(SGHT on a ResNet-20: BN, residual groups, surgery mid-run) the ranks must still agree bit for bit, buffers
included.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from prunekit import data, io, methods, models
from prunekit.engine import Callback, OptimConfig, Stage, Trainer, TrainerConfig, distributed, seed_everything
from prunekit.errors import PrunekitError
from tests.helpers import gloo_group

GLOBAL_BATCH = 32
# method -> (options, epochs, model); small enough that each run is a few dozen CPU steps
CASES: dict[str, tuple[dict[str, Any], int, str]] = {
    "iht": ({"target": "2x", "cycles": 1, "warmup_epochs": 0}, 3, "lenet5"),
    "trimming": ({"iterations": 1, "initial_epochs": 1, "retrain_epochs": 1, "rule": "fraction",
                  "fraction": 0.25, "progress": False}, 2, "lenet5"),
    "sss": ({"gamma_channel": 0.6}, 2, "lenet5"),
    "sght": ({"keep_ratio": 0.5, "batch_start": 16, "batch_step": 8, "batch_max": 32, "finetune_epochs": 1,
              "finetune_lr": 0.02}, 3, "lenet5"),
}
# with BatchNorm: ranks must agree with each other (not with one process); method name after "bn-"
BN_CASES: dict[str, tuple[dict[str, Any], int, str]] = {
    "bn-sght": ({"keep_ratio": 0.5, "hybrid_batch": False, "finetune_epochs": 1, "finetune_lr": 0.02}, 2,
                "resnet20"),
}


def _data() -> tuple[data.Dataset, data.Dataset]:
    train = data.load("synthetic", "train", n=160, shape=(1, 8, 8), num_classes=4, seed=0)
    test = data.load("synthetic", "test", n=50, shape=(1, 8, 8), num_classes=4, seed=0)  # 50: uneven split
    return dataclasses.replace(train, augment="crop_flip"), test


def _model(name: str) -> torch.nn.Module:
    kw = {"in_channels": 1} if name.startswith("resnet") else {"input_size": 8}
    if name == "lenet5":
        kw["in_channels"] = 1
    return models.create(name, num_classes=4, **kw)


def run_method(name: str) -> dict[str, Any]:
    """Train and finalize ``name`` on the tiny task; architecture, weights and figures of the result."""
    opts, epochs, arch = CASES[name] if name in CASES else BN_CASES[name]
    train, test = _data()
    seed_everything(0)
    method = methods.get(name.removeprefix("bn-"))(**opts)
    tr = Trainer(_model(arch), train, test, optim=OptimConfig(lr=0.05),
                 config=TrainerConfig(batch_size=GLOBAL_BATCH, device="cpu", quiet=True), callbacks=[method])
    tr.fit(method.stages(epochs))
    result = method.finalize(tr.raw_model, tr.example_inputs)
    model = result.model
    return {"arch": io.architecture(model), "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
            "val": [h.get("val_top1") for h in tr.history], "loss": [h["train_loss"] for h in tr.history],
            "steps": tr.step}


class StopAt(Callback):
    """Simulates a kill: raises after the given global step (after its checkpoint)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: Any) -> None:
        if trainer.step == self.step:
            raise KeyboardInterrupt


def _resume_run(out: str, stop: int | None) -> torch.Tensor:
    train, test = _data()
    seed_everything(0)
    cfg = TrainerConfig(batch_size=GLOBAL_BATCH, device="cpu", quiet=True, checkpoint_every_steps=3)
    tr = Trainer(_model("lenet-300-100"), train, test, config=cfg, out_dir=out,
                 callbacks=[StopAt(stop if stop is not None else -1)])  # same callbacks in both runs
    tr.fit([Stage("a", 1), Stage("b", 1)], resume=stop is None)
    return torch.cat([p.detach().flatten() for p in tr.raw_model.parameters()])


def _worker(rank: int, world: int, init_file: str, out: str) -> None:
    with gloo_group(rank, world, init_file):
        results: dict[str, Any] = {name: run_method(name) for name in [*CASES, *BN_CASES]}
        # the decision-time check can fail: ranks holding different masks stop together with one error
        try:
            distributed.check_same(torch.tensor([True, rank == 0]), "test masks")
            results["check"] = "passed"
        except PrunekitError as exc:
            results["check"] = str(exc)
        # barrier-safe resume: killed after step 3 (checkpoint written by rank 0), resumed on every rank
        ckpt_dir = os.path.join(out, "ckpt")
        try:
            _resume_run(ckpt_dir, stop=4)
        except KeyboardInterrupt:
            pass
        results["resumed"] = _resume_run(ckpt_dir, stop=None)
        results["uninterrupted"] = _resume_run(os.path.join(out, "plain"), stop=None)
        torch.save(results, os.path.join(out, f"rank{rank}.pt"))


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("ddp_methods")
    mp.spawn(_worker, args=(2, str(tmp / "init"), str(tmp)), nprocs=2, join=True)
    return [torch.load(tmp / f"rank{r}.pt", weights_only=True) for r in (0, 1)]


def _single(fn: Callable[[], Any]) -> Any:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fn()
    finally:
        torch.set_num_threads(threads)


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not built")
@pytest.mark.parametrize("name", list(CASES))
def test_two_ranks_equal_one_process(ranks: list[dict[str, Any]], name: str) -> None:
    r0, r1 = ranks[0][name], ranks[1][name]
    one = _single(lambda: run_method(name))
    # (a) every rank ends with the same architecture and bit-identical weights and figures
    assert r0["arch"] == r1["arch"]
    assert r0["state"].keys() == r1["state"].keys()
    for k in r0["state"]:
        assert torch.equal(r0["state"][k], r1["state"][k]), k
    assert r0["val"] == r1["val"] and r0["loss"] == r1["loss"]
    # (b) 2 ranks x 16 == 1 process x 32: same pruned architecture, same number of steps, same weights
    assert r0["arch"] == one["arch"]
    assert r0["steps"] == one["steps"]
    if name == "iht":  # sparse: the same weights are zero (half of each layer's)
        zeros = {k: v == 0 for k, v in one["state"].items() if k.endswith("weight")}
        assert all(torch.equal(r0["state"][k] == 0, z) for k, z in zeros.items())
        assert 0.45 < sum(int(z.sum()) for z in zeros.values()) / sum(z.numel() for z in zeros.values()) < 0.55
    else:  # structured: channels / filters were removed
        assert one["arch"] != io.architecture(_model(CASES[name][2])), "the case must really prune"
    assert r0["state"].keys() == one["state"].keys()
    for k, v in one["state"].items():
        torch.testing.assert_close(r0["state"][k], v, atol=1e-5, rtol=1e-4, msg=k)
    assert r0["val"] == pytest.approx(one["val"], abs=1e-9)  # the whole test set, counted once
    assert r0["loss"] == pytest.approx(one["loss"], rel=1e-5)


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not built")
def test_disagreeing_ranks_stop_with_one_clear_error(ranks: list[dict[str, Any]]) -> None:
    for r in ranks:
        assert "test masks differ between ranks" in r["check"]


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not built")
def test_resume_on_two_ranks_is_exact(ranks: list[dict[str, Any]]) -> None:
    for r in ranks:
        assert torch.equal(r["resumed"], r["uninterrupted"])
    assert torch.equal(ranks[0]["resumed"], ranks[1]["resumed"])


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not built")
@pytest.mark.parametrize("name", list(BN_CASES))
def test_ranks_agree_with_batchnorm(ranks: list[dict[str, Any]], name: str) -> None:
    r0, r1 = ranks[0][name], ranks[1][name]
    assert r0["arch"] == r1["arch"]
    assert r0["arch"] != io.architecture(_model(BN_CASES[name][2]))  # filters were removed mid-run
    assert any("running_mean" in k for k in r0["state"])
    for k in r0["state"]:  # weights and BN running statistics
        assert torch.equal(r0["state"][k], r1["state"][k]), k
    assert r0["val"] == r1["val"]


@pytest.mark.parametrize("batch", [8, [3, 5, 7]])
def test_batch_split_gives_each_step_the_single_process_batch(batch: Any) -> None:
    """split="batch": per step the ranks' samples (augmented) are exactly the one-process batch, none lost."""
    train, _ = _data()
    kw = {"shuffle": True, "seed": 3, "epoch": 1, "drop_last": True, "split": "batch"}
    one = list(data.iterate(train, batch, **kw))
    parts = [list(data.iterate(train, batch, rank=r, world_size=3, **kw)) for r in range(3)]
    assert all(len(p) == len(one) == data.num_batches(train, batch, drop_last=True, world_size=3, split="batch")
               for p in parts)
    for i, (x, y) in enumerate(one):
        for r in range(3):  # rank r holds samples r, r + 3, ... of the batch, with the same crops and flips
            torch.testing.assert_close(parts[r][i][0], x[r::3], rtol=0, atol=0)
            assert torch.equal(parts[r][i][1], y[r::3])
    # without drop_last (evaluation) every sample is seen exactly once, also when n is not a multiple: 50 =
    # 3 x 16 + 2, so rank 2 has no part in the last batch and skips it
    _, test = _data()
    one = list(data.iterate(test, 16, shuffle=False))
    parts = [list(data.iterate(test, 16, shuffle=False, rank=r, world_size=3, split="batch")) for r in range(3)]
    assert [len(p) for p in parts] == [4, 4, 3]
    for i, (x, _) in enumerate(one):
        for r in range(3):
            if len(x[r::3]):
                assert torch.equal(parts[r][i][0], x[r::3])
    assert sum(len(y) for p in parts for _, y in p) == len(test) == 50
