"""Plain helpers shared by the test modules: what a fixture cannot be (called with arguments, from a spawned
worker process, or as a class to subclass). Fixtures live in the conftest.py files."""

from __future__ import annotations

import contextlib
import os
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from prunekit import data, metrics, models
from prunekit.engine import Callback, LoopState, seed_everything
from prunekit.methods.iht import keep_count


@contextlib.contextmanager
def gloo_group(rank: int, world: int, init_file: str) -> Iterator[None]:
    """A spawned test worker's gloo process group (one thread per rank). On success every rank frees what the
    run left (a DDP wrapper's reducer must go before its group) and meets at a last barrier before the group is
    destroyed: a rank that left early would tear the connections down under a peer still finishing (the peer
    then aborts with SIGABRT on a loaded machine). After an error: destroyed at once."""
    import gc

    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        yield
        gc.collect()
        dist.barrier()
    finally:
        dist.destroy_process_group()


ROOT = Path(__file__).resolve().parents[1]


def run_benchmark(script: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """``python benchmarks/<script> ARGS`` as a real process from the checkout (its sources, one thread)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], capture_output=True,
                          text=True, env=env, timeout=timeout, cwd=ROOT)


#: each paper method's options for a run of a few epochs (IHT one cycle, Trimming one iteration, SSS channel
#: factors that reach 0 within them, SGHT at half the filters); a test changes what it needs with ``{**..., }``
PAPER_METHODS: dict[str, dict[str, object]] = {
    "iht": {"target": "2x", "cycles": 1, "warmup_epochs": 1, "sparse_epochs": 1, "dense_epochs": 1,
            "final_epochs": 1},
    "trimming": {"iterations": 1, "initial_epochs": 1, "retrain_epochs": 3, "rule": "fraction", "fraction": 0.25},
    "sss": {"gamma_channel": 2.0, "blocks": False},
    "sght": {"keep_ratio": 0.5},
}


def synthetic(n: int = 96, n_test: int = 32, *, shape: tuple[int, ...] = (1, 8, 8), num_classes: int = 4,
              seed: int = 0) -> tuple[data.Dataset, data.Dataset]:
    """The tiny synthetic train / test pair most training tests run on (test images from the same classes)."""
    train = data.load("synthetic", "train", n=n, shape=shape, num_classes=num_classes, seed=seed)
    test = data.load("synthetic", "test", n=n_test, shape=shape, num_classes=num_classes, seed=seed)
    return train, test


def tiny_lenet(seed: int = 0) -> nn.Module:
    """LeNet-5 for the 1x8x8, 4-class images of :func:`synthetic`, its weights drawn after ``seed_everything``."""
    seed_everything(seed)
    return models.create("lenet5", in_channels=1, num_classes=4, input_size=8)


def resnet20() -> nn.Module:
    """ResNet-20 for 4 classes (3-channel images of any size), its weights drawn after ``torch.manual_seed(0)``."""
    torch.manual_seed(0)
    return models.create("resnet20", num_classes=4)


class Kill(Callback):
    """A simulated kill: ``KeyboardInterrupt`` at the end of the batch whose 0-based global step is ``at``
    (``None``: never). ``Kill.after(n)`` kills once ``n`` optimizer steps are done."""

    def __init__(self, at: int | None) -> None:
        self.at = at

    @classmethod
    def after(cls, n: int | None) -> Kill:
        return cls(None if n is None else n - 1)

    def on_train_batch_end(self, trainer) -> None:
        if self.at is not None and trainer.step == self.at:
            raise KeyboardInterrupt("simulated kill")


def hooked_step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
                m: Callback | None = None, state: LoopState | None = None, before: bool = True,
                after: bool = True) -> None:
    """One optimizer step of a user's own loop around the method ``m``'s two step hooks (either left out)."""
    F.cross_entropy(model(x), y).backward()
    if m is not None and before:
        m.on_before_optimizer_step(state)
    opt.step()
    if m is not None and after:
        m.on_after_optimizer_step(state)
    opt.zero_grad()


def one_line(capsys: pytest.CaptureFixture[str], code: int, *needles: str) -> str:
    """The command failed with exit code 2 and exactly one ``prunekit: error:`` line on stderr (no traceback)
    that contains every one of ``needles``; that line."""
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("prunekit: error:") and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


ROOT = Path(__file__).resolve().parents[1]
"""The checkout these tests belong to."""


def subprocess_env(tmp: Path) -> dict[str, str]:
    """The environment of a child Python process: one thread, its own data cache under ``tmp``, and this
    checkout's sources first on the path."""
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PRUNEKIT_CACHE=str(tmp / "cache"),
               PYTHONPATH=str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", ""))
    return env


def idx_bytes(arr: np.ndarray, magic: int) -> bytes:
    """The bytes of an IDX file (the MNIST format): magic number, big-endian dimensions, then uint8 values."""
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in arr.shape)
    return header + np.ascontiguousarray(arr, dtype=np.uint8).tobytes()


def check_delivered(res, dense_net: nn.Module, example: torch.Tensor, *, ends_sparse: bool, name: str) -> None:
    """A method's delivered network (``res``: its finalize result) against the dense one: a sparse method keeps
    every shape with each thresholded layer at exactly its budget k (keep 0.5), a structured one has fewer
    parameters and MACs."""
    dense = sum(p.numel() for p in dense_net.parameters())
    c = metrics.count(res.model, example)
    assert c.params == sum(p.numel() for p in res.model.parameters())
    if ends_sparse:  # IHT: same shapes, each thresholded layer at exactly its budget k
        assert res.sparse and c.params == dense and c.nonzero_params < 0.6 * dense
        for m in res.model.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                assert int((m.weight != 0).sum()) == keep_count(0.5, m.weight.numel())
    else:
        assert c.params < dense and c.macs < metrics.count(dense_net, example).macs, name


TINY_RUN = {"model": {"name": "lenet5"}, "data": {"name": "digits", "subset": 240, "test_subset": 120},
            "train": {"batch_size": 32, "device": "cpu", "eval_every": 1000, "max_steps_per_epoch": 2},
            "optim": {"lr": 0.05, "schedule": "cosine"}}
"""The experiment a tiny comparison grid runs: LeNet-5 on 240 digits, two steps per epoch."""


def digits_lenet() -> nn.Module:
    """LeNet-5 for the 8x8 digits (10 classes), unseeded: the dense network ``compare.plan`` sizes a grid on."""
    return models.create("lenet5", in_channels=1, input_size=8, num_classes=10)


def write_yaml(path: Path, doc: dict) -> Path:
    """``doc`` written as a YAML file at ``path``; the path."""
    path.write_text(yaml.safe_dump(doc))
    return path
