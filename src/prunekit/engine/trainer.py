"""The training engine: stages of epochs, SGD with schedules, evaluation, checkpoints and exact resume.

Methods plug in as callbacks (see :mod:`prunekit.engine.callbacks`); the Trainer calls their declared
members: ``prepare`` before training, ``configure_optimizers`` for the optimizers, ``batch_size_schedule``
for the batch sizes, and the hooks. It is a :class:`~prunekit.engine.callbacks.TrainingLoop`.

With ``torch.distributed`` initialised (``torchrun`` + :func:`prunekit.engine.distributed.init_from_env`)
the model is wrapped in DistributedDataParallel and ``batch_size`` stays the **global** batch: every step the
ranks share exactly the batch one process would take (``data.iterate(split="batch")``), so a run on N
processes computes what one process computes, up to float rounding, with the same learning rate. The
training loss and evaluation are all-reduced, BatchNorm buffers are taken from rank 0 at the end of every
epoch, only rank 0 logs, draws progress bars and writes checkpoints (the others wait for it), and
``replace_model`` re-wraps the smaller model after surgery. BatchNorm normalises each rank's part of the
batch with that part's statistics (DistributedDataParallel's default; SyncBatchNorm needs CUDA).
"""

from __future__ import annotations

import copy
import json
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from prunekit import data as pdata
from prunekit import io
from prunekit.atomic import write_text
from prunekit.data.pipeline import batch_size_fn
from prunekit.engine import distributed as pdist
from prunekit.engine.callbacks import BatchSize, Callback, build_optimizers
from prunekit.engine.checkpoint import check_fits_data, load_checkpoint, save_checkpoint
from prunekit.engine.stages import OptimConfig, Stage, lr_factor
from prunekit.errors import PrunekitError
from prunekit.metrics.evaluation import OutputTransform, forward_logits, topk_correct


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) for a reproducible run."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def pick_device(device: str | torch.device | None = "auto") -> torch.device:
    """``auto`` means CUDA when present (this process's GPU under torchrun), else CPU."""
    if device in (None, "auto"):
        return pdist.device()
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None and torch.cuda.is_available():
        dev = torch.device("cuda", torch.cuda.current_device())  # DDP needs the index
    return dev


@torch.no_grad()
def evaluate(model: nn.Module, dataset: pdata.Dataset, *, batch_size: int = 512,
             device: str | torch.device = "cpu", topk: Sequence[int] = (1, 5),
             rank: int = 0, world_size: int = 1, amp: bool = False, input_key: str | None = "auto",
             output_transform: OutputTransform | None = None) -> dict[str, float]:
    """Loss and top-k accuracy (percent) of ``model`` on ``dataset`` in eval mode.

    The model may return a HF ``ModelOutput``, a dict or a tuple, and take its input by keyword
    (:func:`prunekit.metrics.evaluation.forward_logits`).

    Under torch.distributed each rank evaluates its part of every batch (``batch_size`` is global) and the
    sums are all-reduced: every sample is counted exactly once, as in one process.
    """
    was_training = model.training
    model.eval()
    device = torch.device(device)
    sums = torch.zeros(2 + len(topk), dtype=torch.float64, device=device)
    for x, y in pdata.iterate(dataset, batch_size, shuffle=False, augment=None, device=device,
                              rank=rank, world_size=world_size, split="batch"):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            out = forward_logits(model, x, input_key=input_key, output_transform=output_transform)
        out = out.float()
        sums[0] += F.cross_entropy(out, y, reduction="sum")
        sums[1] += y.numel()
        sums[2:] += topk_correct(out, y, topk)
    if world_size > 1:
        pdist.all_reduce_sum(sums)
    model.train(was_training)
    n = max(sums[1].item(), 1.0)
    res = {"loss": sums[0].item() / n}
    for i, k in enumerate(topk):
        res[f"top{k}"] = 100.0 * sums[2 + i].item() / n
    return res


@dataclass
class TrainerConfig:
    """Engine settings that are not the optimizer's. ``batch_size`` is global (split across processes)."""

    batch_size: int = 128
    eval_batch_size: int = 512
    device: str = "auto"
    seed: int = 0
    amp: str = "auto"  # bf16 autocast: "auto" = on CUDA only
    channels_last: str = "auto"
    checkpoint_every_steps: int = 0  # 0: at the end of every epoch only
    eval_every: int = 1
    quiet: bool = False
    max_steps_per_epoch: int = 0  # 0: the whole epoch (a cap keeps smoke runs short)


_FINITE_CHECK_EVERY = 32  # steps between NaN checks on an accelerator (each check is a host sync)


class Trainer:
    """Runs ``stages`` of training on ``model`` with ``callbacks`` (pruning methods) plugged in.

    ``input_key`` / ``output_transform``: how the model takes its input and where its logits are; by default
    the Hugging Face convention is picked automatically (keyword ``main_input_name`` when the model has one,
    ``.logits`` of a ``ModelOutput``, ``["logits"]`` of a dict, the first element of a tuple), so a HF
    classifier trains unwrapped.
    """

    def __init__(self, model: nn.Module, train_data: pdata.Dataset, val_data: pdata.Dataset | None = None,
                 *, optim: OptimConfig | None = None, config: TrainerConfig | None = None,
                 callbacks: Sequence[Callback] = (), out_dir: str | Path | None = None,
                 loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                 input_key: str | None = "auto", output_transform: OutputTransform | None = None) -> None:
        self.optim_cfg = optim or OptimConfig()
        self.cfg = config or TrainerConfig()
        self.callbacks = list(callbacks)
        self.train_data, self.val_data = train_data, val_data
        self.out_dir = Path(out_dir) if out_dir else None
        self.loss_fn = loss_fn or F.cross_entropy
        # a HF model (or any returning a ModelOutput / dict / tuple, or taking keyword inputs) trains unwrapped
        self.input_key, self.output_transform = input_key, output_transform
        self.device = pick_device(self.cfg.device)
        on_cuda = self.device.type == "cuda"
        self.amp = on_cuda if self.cfg.amp == "auto" else self.cfg.amp in ("on", "true", "bf16", True)
        self.channels_last = on_cuda if self.cfg.channels_last == "auto" else self.cfg.channels_last == "on"
        self.world_size = pdist.world_size()
        self.rank = pdist.rank()
        # on one CPU process a per-step NaN check is free; on an accelerator, or across processes (where the
        # verdict must be all-reduced so that no rank stops alone), it is batched (see _FINITE_CHECK_EVERY)
        self.nan_check_each_step = self.device.type == "cpu" and self.world_size == 1
        # position
        self.stages: list[Stage] = []
        self.stage: Stage | None = None
        self.stage_index = 0
        self.stage_epoch = 0
        self.epoch = 0
        self.step = 0
        self.batch_in_epoch = 0
        self.loss: torch.Tensor | None = None
        self.history: list[dict[str, Any]] = []
        self.optimizers: list[torch.optim.Optimizer] = []
        self._base_lrs: list[list[float]] = []
        self._built_lr = 0.0
        self.model: nn.Module = model
        # a user's own network has no zoo factory: keep its structure (on the meta device, no memory) so that
        # a checkpoint taken after structural pruning records the changed modules and resume rebuilds them
        raw = getattr(model, "module", model)
        self._structure_base: nn.Module | None = None
        if io.factory_of(raw) is None:
            try:
                self._structure_base = copy.deepcopy(raw).to("meta")
            except Exception:  # a module that cannot be deep-copied: resume then needs unchanged shapes
                self._structure_base = None
        self._set_model(model)

    # ------------------------------------------------------------------ model and optimizers
    @property
    def raw_model(self) -> nn.Module:
        """The model without its DistributedDataParallel wrapper."""
        return getattr(self.model, "module", self.model)

    @property
    def is_main(self) -> bool:
        """True on the process that logs and writes files (rank 0)."""
        return self.rank == 0

    @property
    def eval_batch_size(self) -> int:
        """Batch size of evaluation passes (global across processes)."""
        return self.cfg.eval_batch_size

    @property
    def example_inputs(self) -> torch.Tensor:
        """One normalised batch-of-one input on the device (for surgery tracing and MAC counts)."""
        return torch.zeros((1, *self.train_data.input_shape), device=self.device)

    def _set_model(self, model: nn.Module) -> None:
        model = getattr(model, "module", model).to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # stubs lack it
        if self.world_size > 1:
            model = nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.model = model

    def replace_model(self, model: nn.Module) -> None:
        """Swap in a new (pruned) model: moves it, re-wraps DDP, rebuilds the optimizers (fresh state,
        since parameter shapes changed) and tells the callbacks."""
        self._set_model(model)
        self.build_optimizers()
        for cb in self.callbacks:
            cb.on_model_changed(self)

    def build_optimizers(self) -> None:
        """Ask the callbacks for optimizers (first answer wins), else momentum SGD over all parameters."""
        stage = self.stage
        lr = stage.lr if stage and stage.lr is not None else self.optim_cfg.lr
        self.optimizers = build_optimizers(self.callbacks, self, lr)
        self._base_lrs = [[g["lr"] for g in opt.param_groups] for opt in self.optimizers]
        self._built_lr = lr

    def _rescale_base_lrs(self, lr: float) -> None:
        """Change the base learning rate without rebuilding: every group keeps its ratio to the run's lr."""
        f = lr / self._built_lr if self._built_lr else 1.0
        self._base_lrs = [[b * f for b in base] for base in self._base_lrs]
        self._built_lr = lr

    def _set_lr(self, progress: float) -> float:
        st = self.stage
        assert st is not None
        o = self.optim_cfg
        f = lr_factor(st.schedule or o.schedule, progress, int(progress), st.epochs,
                      st.milestones if st.milestones is not None else o.milestones,
                      st.gamma if st.gamma is not None else o.gamma, o.warmup_epochs)
        for opt, base in zip(self.optimizers, self._base_lrs, strict=True):
            for g, b in zip(opt.param_groups, base, strict=True):
                g["lr"] = b * f
        return f

    def _batch_size(self) -> BatchSize:
        for cb in self.callbacks:
            bs = cb.batch_size_schedule(self)
            if bs is not None:
                return bs
        return self.cfg.batch_size

    # ------------------------------------------------------------------ the loop
    def fit(self, stages: Sequence[Stage] | int, resume: bool | str | Path = False) -> list[dict[str, Any]]:
        """Train through ``stages`` (an int means one plain stage of that many epochs).

        ``resume=True`` continues from ``out_dir/checkpoint.safetensors`` when it exists (or from the
        given path), ending with the same weights as an uninterrupted run.
        """
        self.stages = [Stage("train", stages)] if isinstance(stages, int) else list(stages)
        if not self.stages:
            raise PrunekitError("nothing to train: no stages")
        ckpt = self._checkpoint_path(resume)
        if ckpt is not None:
            self._restore(ckpt)
        else:
            model = self.raw_model
            for cb in self.callbacks:
                prepared = cb.prepare(model, self.example_inputs)
                model = model if prepared is None else prepared  # a prepare that works in place may return None
            self._set_model(model)
            self.stage_index, self.stage_epoch, self.batch_in_epoch = 0, 0, 0
            self.stage = self.stages[0]
            self.build_optimizers()
            for cb in self.callbacks:
                cb.on_fit_start(self)
        while self.stage_index < len(self.stages):
            self.stage = self.stages[self.stage_index]
            if self.stage_epoch == 0 and self.batch_in_epoch == 0:
                if self.stage.reset_optimizer or not self.optimizers:
                    self.build_optimizers()
                elif self.stage.lr is not None:  # keep the optimizer state, move to the stage's lr
                    self._rescale_base_lrs(self.stage.lr)
                for cb in self.callbacks:
                    cb.on_stage_start(self, self.stage)
            while self.stage_epoch < self.stage.epochs:
                self._run_epoch()
                self.stage_epoch += 1
                self.epoch += 1
                self.batch_in_epoch = 0
                self._save()
            for cb in self.callbacks:
                cb.on_stage_end(self, self.stage)
            self.stage_index += 1
            self.stage_epoch = 0
            self._save()
        for cb in self.callbacks:
            cb.on_fit_end(self)
        return self.history

    def _run_epoch(self) -> None:
        stage = self.stage
        assert stage is not None
        bs = self._batch_size()
        size_of = batch_size_fn(bs)
        n_batches = pdata.num_batches(self.train_data, bs, drop_last=True, rank=self.rank,
                                      world_size=self.world_size, split="batch")
        if self.cfg.max_steps_per_epoch:
            n_batches = min(n_batches, self.cfg.max_steps_per_epoch)
        if self.batch_in_epoch == 0:
            for cb in self.callbacks:
                cb.on_epoch_start(self)
        self.model.train()
        t0 = time.perf_counter()
        loss_sum = torch.zeros((), device=self.device)
        sync_each_step = self.nan_check_each_step
        nonfinite = torch.zeros((), dtype=torch.bool, device=self.device)
        seen = 0
        batches = pdata.iterate(self.train_data, bs, shuffle=True, seed=self.cfg.seed, epoch=self.epoch,
                                device=self.device, start_batch=self.batch_in_epoch, drop_last=True,
                                rank=self.rank, world_size=self.world_size, split="batch")
        bar = None
        if self.is_main and not self.cfg.quiet and sys.stderr.isatty():
            from tqdm import tqdm

            bar = tqdm(total=n_batches, initial=self.batch_in_epoch, leave=False,
                       desc=f"{stage.name} {self.stage_epoch + 1}/{stage.epochs}")
        for x, y in batches:
            if self.batch_in_epoch >= n_batches:
                break
            self._set_lr(self.stage_epoch + self.batch_in_epoch / max(n_batches, 1))
            scale = self._loss_scale(size_of(self.batch_in_epoch), y.numel())
            if self.channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            for cb in self.callbacks:
                cb.on_train_batch_start(self, (x, y))
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                out = forward_logits(self.model, x, input_key=self.input_key,
                                     output_transform=self.output_transform)
            loss = self.loss_fn(out.float(), y)
            if scale != 1.0:  # uneven split of the global batch: DDP's mean of rank means is the global mean
                loss = loss * scale
            if sync_each_step:
                self._check_finite(~torch.isfinite(loss), loss)
            else:  # on an accelerator, checking every step would stall the queue: accumulate, check below
                nonfinite |= ~torch.isfinite(loss.detach())
            self.loss = loss
            loss.backward()
            for cb in self.callbacks:
                cb.on_before_optimizer_step(self)
            for opt in self.optimizers:
                opt.step()
            for cb in self.callbacks:
                cb.on_after_optimizer_step(self)
            for opt in self.optimizers:
                opt.zero_grad(set_to_none=True)
            for cb in self.callbacks:
                cb.on_train_batch_end(self)
            loss_sum += loss.detach() * (y.numel() / scale)
            seen += y.numel()
            self.step += 1
            self.batch_in_epoch += 1
            if bar is not None:
                bar.update(1)
            every = self.cfg.checkpoint_every_steps
            save_now = bool(every and self.step % every == 0 and self.batch_in_epoch < n_batches)
            if not sync_each_step and (save_now or self.step % _FINITE_CHECK_EVERY == 0):
                self._check_finite(nonfinite, loss)
            if save_now:
                self._save()
        if bar is not None:
            bar.close()
        if not sync_each_step:
            self._check_finite(nonfinite, self.loss)  # before the end-of-epoch checkpoint
        if self.world_size > 1:
            totals = pdist.all_reduce_sum(torch.stack([loss_sum.double(), torch.tensor(float(seen)).double()
                                                       .to(loss_sum.device)]))
            loss_sum, seen = totals[0], int(totals[1].item())
            self._sync_buffers()
        metrics: dict[str, Any] = {"epoch": self.epoch + 1, "stage": stage.name,
                                   "stage_epoch": self.stage_epoch + 1, "step": self.step,
                                   "train_loss": (loss_sum.item() / seen) if seen else None,
                                   "lr": self.optimizers[0].param_groups[0]["lr"] if self.optimizers else None,
                                   "seconds": round(time.perf_counter() - t0, 3)}
        last = self.stage_epoch + 1 == stage.epochs
        if self.val_data is not None and (last or (self.stage_epoch + 1) % max(self.cfg.eval_every, 1) == 0):
            ev = evaluate(self.raw_model, self.val_data, batch_size=self.cfg.eval_batch_size,
                          device=self.device, rank=self.rank, world_size=self.world_size, amp=self.amp,
                          input_key=self.input_key, output_transform=self.output_transform)
            metrics.update({"val_loss": ev["loss"], "val_top1": ev["top1"], "val_top5": ev["top5"]})
        for cb in self.callbacks:
            cb.on_epoch_end(self, metrics)
        self.history.append(metrics)
        if self.is_main and self.out_dir is not None:
            write_text(self.out_dir / "log.jsonl", "".join(json.dumps(h) + "\n" for h in self.history))

    def _loss_scale(self, global_size: int, local_size: int) -> float:
        """Factor that makes DDP's average of per-rank mean losses the mean over the global batch."""
        if self.world_size == 1:
            return 1.0
        if global_size < self.world_size:
            raise PrunekitError(f"batch of {global_size} at step {self.step} is smaller than the "
                                f"{self.world_size} processes; train.batch_size is global: raise it")
        return local_size * self.world_size / global_size

    @torch.no_grad()
    def _sync_buffers(self) -> None:
        """Give every rank rank 0's buffers (BN running statistics diverge by the last step's own update)."""
        for b in self.raw_model.buffers():
            torch.distributed.broadcast(b, 0)

    def _check_finite(self, nonfinite: torch.Tensor, loss: torch.Tensor | None) -> None:
        """Stop with one clear line when a loss was NaN/inf; no checkpoint is written after it.

        Across processes the verdict is all-reduced, so every rank stops at the same step.
        """
        if pdist.any_rank(nonfinite) if self.world_size > 1 else bool(nonfinite):
            value = loss.item() if loss is not None else float("nan")
            raise PrunekitError(
                f"loss became {value} at epoch {self.epoch} step {self.step}: lower the learning "
                "rate (optim.lr) or check the data; the last checkpoint is intact")

    # ------------------------------------------------------------------ checkpoints
    def _checkpoint_path(self, resume: bool | str | Path) -> Path | None:
        if not resume:
            return None
        if resume is True:
            if self.out_dir is None:
                raise PrunekitError("resume needs an output folder (out_dir) holding checkpoint.safetensors")
            p = self.out_dir / "checkpoint.safetensors"
        else:
            p = Path(resume)
        pdist.barrier()  # rank 0 may still be writing it: every rank reads the same, finished file
        found = p.exists()
        if self.world_size > 1 and pdist.any_rank(not found) and pdist.any_rank(found):
            raise PrunekitError(f"{p}: the checkpoint exists on some ranks only; out_dir must be on a file "
                                "system every node sees")
        if not found and resume is not True:
            raise PrunekitError(f"{p}: no such checkpoint to resume from")
        return p if found else None

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue this run exactly."""
        model = self.raw_model
        rng: dict[str, Any] = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {
            "position": {"stage_index": self.stage_index, "stage_epoch": self.stage_epoch,
                         "epoch": self.epoch, "step": self.step, "batch_in_epoch": self.batch_in_epoch},
            "stages": [asdict(s) for s in self.stages],
            "architecture": io.architecture(model, base=self._structure_base),
            "model": dict(model.state_dict()),
            "optimizers": [opt.state_dict() for opt in self.optimizers],
            "base_lrs": self._base_lrs,
            "built_lr": self._built_lr,
            "callback_state": {key: cb.state_dict() for key, cb in self._callback_keys().items()},
            "rng": rng,
            "history": self.history,
        }

    def _callback_keys(self) -> dict[str, Callback]:
        """Each callback under its ``state_key`` (a second callback of the same key gets ``key#2``, ...)."""
        out: dict[str, Callback] = {}
        for cb in self.callbacks:
            key, n = cb.state_key, 1
            while key in out:
                n += 1
                key = f"{cb.state_key}#{n}"
            out[key] = cb
        return out

    def _callback_states(self, path: Path, st: dict[str, Any]) -> list[tuple[Callback, dict[str, Any]]]:
        """Pair every callback with its saved state: by name, or by position in an older checkpoint."""
        named = st.get("callback_state")
        if named is None:  # checkpoints before named state: a positional list
            states = st.get("callbacks", [])
            if len(states) != len(self.callbacks):
                raise PrunekitError(f"{path}: checkpoint was made with other methods/callbacks")
            return list(zip(self.callbacks, states, strict=True))
        keys = self._callback_keys()
        if not isinstance(named, dict) or not all(isinstance(v, dict) for v in named.values()):
            raise PrunekitError(f"{path}: checkpoint is malformed (callback states)")
        if set(named) != set(keys):
            raise PrunekitError(f"{path}: checkpoint was made with other methods/callbacks (it holds "
                                f"{', '.join(sorted(named)) or 'none'}; this run has {', '.join(keys) or 'none'})")
        return [(cb, named[key]) for key, cb in keys.items()]

    def _save(self) -> None:
        """Rank 0 writes the checkpoint (atomically); the others wait until it is complete."""
        if self.out_dir is None:
            return
        if self.is_main:
            save_checkpoint(self.out_dir / "checkpoint.safetensors", self.state_dict())
        pdist.barrier()

    def _restore(self, path: Path) -> None:
        st = load_checkpoint(path)
        try:
            pos = st["position"]
            saved_stages = [Stage(**s) for s in st["stages"]]
        except (KeyError, TypeError) as exc:
            raise PrunekitError(f"{path}: checkpoint is malformed ({exc})") from None
        if [asdict(s) for s in saved_stages] != [asdict(s) for s in self.stages]:
            raise PrunekitError(f"{path}: the checkpoint was made with a different schedule; resume with the "
                                "same config or start a new output folder")
        arch = st.get("architecture")
        if arch is not None:
            base = copy.deepcopy(self._structure_base) if self._structure_base is not None else None
            model = io.build_from_architecture(arch, device="meta", base=base)
            io.load_state(model, st["model"], str(path), assign=True)
            if arch.get("factory"):
                io.remember_factory(model, arch["factory"])
            data = self.train_data
            check_fits_data(path, model, tuple(data.input_shape), data.num_classes,
                            forward=lambda m, x: forward_logits(m, x, input_key=self.input_key,
                                                                output_transform=self.output_transform))
        else:
            model = self.raw_model
            io.load_state(model, st["model"], str(path))
        self.stage_index, self.stage_epoch = int(pos["stage_index"]), int(pos["stage_epoch"])
        self.epoch, self.step, self.batch_in_epoch = int(pos["epoch"]), int(pos["step"]), int(pos["batch_in_epoch"])
        self.history = list(st.get("history", []))
        self.stage = self.stages[min(self.stage_index, len(self.stages) - 1)]
        self._set_model(model)
        cb_states = self._callback_states(path, st)
        try:  # the checkpoint's structure was checked on reading; its contents must also fit this run
            for cb, s in cb_states:
                cb.load_state_dict(s)
            for cb in self.callbacks:
                cb.on_model_changed(self)
            self.build_optimizers()
            opt_states = st.get("optimizers", [])
            if len(opt_states) != len(self.optimizers):
                raise PrunekitError(f"{path}: checkpoint holds {len(opt_states)} optimizers, the run has "
                                    f"{len(self.optimizers)}")
            for opt, s in zip(self.optimizers, opt_states, strict=True):
                opt.load_state_dict(s)
            self._base_lrs = [list(b) for b in st.get("base_lrs", self._base_lrs)]
            self._built_lr = float(st.get("built_lr", self._built_lr))
            torch.set_rng_state(st["rng"]["torch"])
            if "cuda" in st["rng"] and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(st["rng"]["cuda"])
        except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as exc:
            raise PrunekitError(f"{path}: checkpoint state does not fit this run ({str(exc).splitlines()[0]})"
                                ) from None


__all__ = ["OptimConfig", "Trainer", "TrainerConfig", "evaluate", "pick_device", "seed_everything"]
