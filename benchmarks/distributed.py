"""DistributedDataParallel throughput: N processes against 1 process on the same global batch.

Each row trains the same model on the same synthetic data with the same global batch (``train.batch_size``
is global: every process gets batch / N samples per step) through the real entry point, i.e. processes
started with torchrun's environment variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
``MASTER_PORT``) that call :func:`prunekit.engine.distributed.init_from_env`. One warm-up epoch, then the
timed epoch(s); images/s = global images of the timed epochs / their training seconds (rank 0's clock; the
steps end with DDP's all-reduce, so every rank waits for the slowest). The rows alternate (1, N, 1, N, ...)
and the median of ``--repeats`` is reported, to limit the drift of a shared machine.

    .venv/bin/python benchmarks/distributed.py                       # CPU, gloo, 2 processes x 1 thread
    .venv/bin/python benchmarks/distributed.py --world 4 --threads 1 --batch 256
    .venv/bin/python benchmarks/distributed.py --device cuda         # one GPU per process, NCCL

On the CPU every process gets ``--threads`` torch threads, so N processes use N times the cores of the
single process: the ratio says how well DDP turns extra cores into images/s (the single process could use
N threads instead; ``--single-threads`` sets that). Results go to ``benchmarks/out/distributed.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

from prunekit import data, models
from prunekit.engine import OptimConfig, Trainer, TrainerConfig, distributed, seed_everything

OUT = Path(__file__).resolve().parents[1] / "benchmarks" / "out"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(rank: int, world: int, port: int, args: argparse.Namespace, threads: int, out: str) -> None:
    if world > 1:  # what torchrun sets for each process
        os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
                           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
        distributed.init_from_env(args.backend)
    torch.set_num_threads(threads)
    try:
        shape = (args.channels, args.size, args.size)
        n = args.batch * args.steps
        train = data.load("synthetic", "train", n=n, shape=shape, num_classes=10, seed=0)
        seed_everything(args.seed)
        kw = {"in_channels": args.channels} if args.model == "lenet5" else {}
        model = models.create(args.model, input_size=args.size, num_classes=10, **kw)
        device = "cuda" if args.device == "cuda" else "cpu"
        tr = Trainer(model, train, None, optim=OptimConfig(lr=0.01),
                     config=TrainerConfig(batch_size=args.batch, device=device, quiet=True, seed=args.seed))
        hist = tr.fit(1 + args.epochs)
        timed = hist[1:]
        secs = sum(h["seconds"] for h in timed)
        if distributed.is_main():
            Path(out).write_text(json.dumps({"images_per_s": args.batch * args.steps * len(timed) / secs,
                                             "seconds": secs, "steps": tr.step, "world": world,
                                             "device": str(tr.device)}))
    finally:
        distributed.shutdown()


def run(world: int, args: argparse.Namespace, threads: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "res.json")
        if world == 1 and args.backend is None:
            ctx = mp.get_context("spawn")  # a fresh process too, so both rows pay the same start-up
            p = ctx.Process(target=_worker, args=(0, 1, 0, args, threads, out))
            p.start()
            p.join()
            if p.exitcode:
                raise SystemExit(f"single-process row failed (exit {p.exitcode})")
        else:
            mp.spawn(_worker, args=(world, _free_port(), args, threads, out), nprocs=world, join=True)
        return json.loads(Path(out).read_text())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--world", type=int, default=2, help="processes of the distributed row")
    p.add_argument("--batch", type=int, default=128, help="global batch size (the same for both rows)")
    p.add_argument("--steps", type=int, default=40, help="steps per epoch")
    p.add_argument("--epochs", type=int, default=1, help="timed epochs (after one warm-up epoch)")
    p.add_argument("--repeats", type=int, default=3, help="alternating repetitions of the two rows")
    p.add_argument("--model", default="lenet5")
    p.add_argument("--size", type=int, default=28, help="input height = width")
    p.add_argument("--channels", type=int, default=1)
    p.add_argument("--threads", type=int, default=1, help="torch threads per distributed process")
    p.add_argument("--single-threads", type=int, default=None, help="threads of the 1-process row (default "
                   "--threads)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--backend", choices=("gloo", "nccl"), default=None, help="default: nccl on cuda, else gloo")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.device == "cuda" and torch.cuda.device_count() < args.world:
        raise SystemExit(f"--device cuda needs one GPU per process: {torch.cuda.device_count()} GPU(s) for "
                         f"--world {args.world} (NCCL cannot share a GPU between ranks; use --backend gloo)")
    if args.batch % args.world:
        raise SystemExit(f"--batch {args.batch} must split evenly over --world {args.world}")
    single_threads = args.single_threads or args.threads
    rows: dict[int, list[dict]] = {1: [], args.world: []}
    for _ in range(args.repeats):
        rows[1].append(run(1, args, single_threads))
        rows[args.world].append(run(args.world, args, args.threads))
    one = statistics.median(r["images_per_s"] for r in rows[1])
    many = statistics.median(r["images_per_s"] for r in rows[args.world])
    cmd = " ".join([".venv/bin/python", "benchmarks/distributed.py", *(argv if argv is not None else sys.argv[1:])])
    backend = args.backend or ("nccl" if args.device == "cuda" else "gloo")
    print(f"command: {cmd}")
    print(f"torch {torch.__version__}, seed {args.seed}, model {args.model} {args.channels}x{args.size}x{args.size}, "
          f"global batch {args.batch}, {args.steps} steps/epoch, {args.epochs} timed epoch(s), median of "
          f"{args.repeats}, device {rows[args.world][0]['device']}, backend {backend}")
    print(f"{'processes':>10} {'threads each':>13} {'batch each':>11} {'images/s':>10}")
    print(f"{1:>10} {single_threads:>13} {args.batch:>11} {one:>10.0f}")
    print(f"{args.world:>10} {args.threads:>13} {args.batch // args.world:>11} {many:>10.0f}")
    print(f"ratio {args.world} processes / 1 process: {many / one:.2f}x")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "distributed.json").write_text(json.dumps({
        "command": cmd, "torch": torch.__version__, "seed": args.seed, "args": vars(args),
        "single": rows[1], "distributed": rows[args.world], "images_per_s": {"1": one, str(args.world): many},
        "ratio": many / one, "time": time.strftime("%Y-%m-%d %H:%M:%S")}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
