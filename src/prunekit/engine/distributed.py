"""Running under ``torchrun``: process-group setup from the environment and small rank helpers.

``torchrun --nproc_per_node=N ...`` (or any launcher that sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR`` and ``MASTER_PORT``) starts one process per device; :func:`init_from_env` joins them into one
``torch.distributed`` process group (NCCL on CUDA, with this process's GPU chosen from ``LOCAL_RANK``;
gloo on the CPU). Without those variables it does nothing, so the same program runs as one process. The
other helpers answer sensibly whether or not a process group exists (rank 0 of a world of 1).

:func:`check_same` is the cheap guard the methods use at decision time: the ranks compare a checksum of a
mask / keep list / factor vector and all stop with one clear error when they disagree, instead of training
different networks or hanging in a collective with mismatched shapes.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence

import torch
import torch.distributed as dist

from prunekit.errors import PrunekitError


def launched() -> bool:
    """True when a launcher (torchrun) has set ``RANK`` and ``WORLD_SIZE`` for this process."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def is_initialized() -> bool:
    """True when a ``torch.distributed`` process group is up in this process."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's global rank (0 without a process group)."""
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    """Number of processes in the group (1 without a process group)."""
    return dist.get_world_size() if is_initialized() else 1


def local_rank() -> int:
    """This process's rank on its node (``LOCAL_RANK``; 0 when not launched)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    """True on the process that logs and writes files (global rank 0)."""
    return rank() == 0


def device() -> torch.device:
    """The device this process should train on: ``cuda:LOCAL_RANK`` when CUDA is present, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank() % torch.cuda.device_count())
    return torch.device("cpu")


def init_from_env(backend: str | None = None, *, timeout_s: float = 1800.0) -> bool:
    """Join the process group described by torchrun's environment variables; a no-op when not launched.

    ``backend`` defaults to ``nccl`` when CUDA is available (after ``torch.cuda.set_device(LOCAL_RANK)``)
    and ``gloo`` otherwise. Returns True when this process is part of a group of more than one process.
    Calling it again, or after the caller initialised the group itself, changes nothing.
    """
    if is_initialized():
        return world_size() > 1
    if not launched():
        return False
    if not dist.is_available():
        raise PrunekitError("launched by torchrun (RANK/WORLD_SIZE are set) but this torch build has no "
                            "torch.distributed")
    try:
        size, me = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"])
    except ValueError as exc:
        raise PrunekitError(f"bad torchrun environment ({exc}); expected integer RANK and WORLD_SIZE") from None
    if size <= 1:
        return False
    missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise PrunekitError(f"launched with WORLD_SIZE={size} but {', '.join(missing)} not set; start the "
                            "processes with torchrun (it sets them) or export them yourself")
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(device())
    dist.init_process_group(backend, init_method="env://", rank=me, world_size=size,
                            timeout=datetime.timedelta(seconds=timeout_s))
    return True


def barrier() -> None:
    """Wait until every process got here (a no-op in a single process)."""
    if world_size() > 1:
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


def shutdown(wait: bool = True) -> None:
    """Leave the process group if one is up; safe to call always.

    ``wait=True`` meets the other ranks at a last barrier first (a clean end); after an error pass
    ``wait=False``: the other ranks may never get there, and the launcher stops them when this one exits.
    """
    if is_initialized():
        if wait:
            barrier()
        dist.destroy_process_group()


def _comm_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """``t`` summed over all processes (in place when it is on the communication device); ``t`` itself alone."""
    if world_size() == 1:
        return t
    dev = _comm_device()
    buf = t if t.device == dev else t.to(dev)
    dist.all_reduce(buf)
    if buf is not t:
        t.copy_(buf.to(t.device))
    return t


def any_rank(flag: bool | torch.Tensor) -> bool:
    """True when ``flag`` is true on at least one process (every process gets the same answer)."""
    t = torch.as_tensor(flag).detach().reshape(()).to(torch.float32)
    if world_size() == 1:
        return bool(t)
    t = t.to(_comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t)


def checksum(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Two float64 numbers that summarise ``tensors`` (their sum and a position-weighted sum, plus sizes)."""
    parts = [t.detach().reshape(-1).to(torch.float64) for t in tensors]
    if not parts:
        return torch.zeros(3, dtype=torch.float64)
    flat = torch.cat([p.cpu() for p in parts])
    pos = torch.arange(1, flat.numel() + 1, dtype=torch.float64)
    return torch.stack([flat.sum(), (flat * pos).sum(), torch.tensor(float(flat.numel()), dtype=torch.float64)])


def check_same(tensors: torch.Tensor | Sequence[torch.Tensor], what: str) -> None:
    """Raise :class:`PrunekitError` on every process when ``tensors`` differ between processes.

    Compares a checksum (one small all-reduce), so masks, kept-channel lists or factors that must be the
    same on every rank are verified at the moment a decision is taken. A no-op in a single process.
    """
    if world_size() == 1:
        return
    ts = [tensors] if isinstance(tensors, torch.Tensor) else list(tensors)
    c = checksum(ts).to(_comm_device())
    both = torch.cat([c, -c])
    dist.all_reduce(both, op=dist.ReduceOp.MAX)
    hi, lo = both[:3], -both[3:]
    if not torch.equal(hi, lo):
        raise PrunekitError(f"distributed: {what} differ between ranks (rank {rank()} of {world_size()}); every "
                            "rank must decide from the same synchronised values (same seed, same data shards, "
                            "DistributedDataParallel around the model)")


__all__ = ["all_reduce_sum", "any_rank", "barrier", "check_same", "checksum", "device", "init_from_env",
           "is_initialized", "is_main", "launched", "local_rank", "rank", "shutdown", "world_size"]
