"""A prunekit method in a PyTorch Lightning run: :class:`PrunekitCallback`, a ``lightning.pytorch.Callback``.

The recipe (README.md, "In Lightning and HF Trainer")::

    pk = PrunekitCallback(methods.get("sght")(keep_ratio=0.5), attr="net")   # the network is module.net
    trainer = lightning.pytorch.Trainer(max_epochs=10, callbacks=[pk])
    trainer.fit(module, loader)                                             # module.training_step: your loss
    small = pk.result.model                                                 # == module.net, finalized

What it does, hook by hook (the README's own-loop calls):

================================  ==============================================================================
Lightning                         prunekit
================================  ==============================================================================
``setup("fit")``                  ``method.prepare(net, example_inputs)`` (SSS inserts its scaling factors) when
                                  the callback was given ``example_inputs=``, before Lightning builds any optimizer
``on_train_start``                ``method.prepare(net, example_inputs)`` (idempotent; example inputs from the
                                  first training batch unless given); the method's optimizer(s) replace what
                                  ``configure_optimizers`` returned, and its lr schedulers:
                                  ``trainer.strategy.optimizers = [MethodOptimizer]`` (the method's own, e.g.
                                  SSS's SGD + APG, SGHT's AHSGHT; else prunekit's momentum SGD, from ``optim``);
                                  the base lr is ``lr=``, else the first group's lr of what
                                  ``configure_optimizers`` returned; ``method.stages(max_epochs)``; ``on_fit_start``
``on_train_epoch_start``          stage boundaries (``on_stage_end`` / ``begin_stage``: fresh optimizers at the
                                  stage's lr, ``on_stage_start``), then ``on_epoch_start``
``on_train_batch_start``          ``on_train_batch_start(state, (x, y))``
optimizer step                    ``MethodOptimizer.step``: closure (forward, backward), ``on_before_optimizer_step``,
                                  the inner steps, ``on_after_optimizer_step``, ``on_train_batch_end``
``on_train_epoch_end``            ``on_epoch_end(state, trainer.callback_metrics)``
``on_train_end``                  ``on_stage_end``, ``on_fit_end``, ``finalize`` -> :attr:`PrunekitCallback.result`
================================  ==============================================================================

A smaller model: Network Trimming removes channels between stages and SGHT (fine-tune stage) / SSS (finalize)
at the end, all in place, so ``module.<attr>`` is the same object with fewer parameters; the adapter then
refills the optimizer with the new parameters. A method that hands back a new object is put in
``module.<attr>`` (with ``attr=None`` the LightningModule itself is the network and must stay the same object).
Within a stage the lr follows ``optim.schedule`` (default here: constant). One process only; resuming from a
Lightning checkpoint is not supported (prunekit's Trainer resumes).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from prunekit.engine.stages import OptimConfig
from prunekit.errors import PrunekitError
from prunekit.integrations import require
from prunekit.integrations.driver import AdapterResults, Driver, refuse_processes, split_batch
from prunekit.methods.api import PruningMethod

pl = require("lightning.pytorch", "lightning", "lightning")


class PrunekitCallback(pl.Callback, AdapterResults):  # type: ignore[name-defined]  # pl is a module object bound at run time
    """Drive a prunekit method from a Lightning ``Trainer.fit`` (module docstring for the exact mapping).

    ``attr``: the LightningModule attribute holding the network (None: the LightningModule itself).
    ``epochs``: the schedule's budget (default ``trainer.max_epochs``). ``lr`` / ``optim``: the base learning
    rate and the momentum SGD settings. ``example_inputs``: one input of batch size 1 (default: the first
    training batch's first sample). ``finalize``: run ``method.finalize`` at train end (:attr:`result`).
    """

    not_started = "the prunekit callback was not started (on_train_start did not run)"

    def __init__(self, method: PruningMethod, *, attr: str | None = "model", epochs: int | None = None,
                 lr: float | None = None, optim: OptimConfig | None = None,
                 example_inputs: torch.Tensor | None = None, finalize: bool = True,
                 input_key: str = "pixel_values") -> None:
        super().__init__()
        self.method, self.attr, self.epochs, self.lr = method, attr, epochs, lr
        self.optim = optim or OptimConfig(schedule="constant")
        self.example_inputs, self.finalize_at_end, self.input_key = example_inputs, finalize, input_key
        self.driver: Driver | None = None
        self._module: Any = None

    @property
    def state_key(self) -> str:
        return f"prunekit:{self.method.name}"

    # -- the network inside the LightningModule -------------------------------------------------------------
    def network(self, pl_module: Any) -> nn.Module:
        if self.attr is None:
            return pl_module
        net = getattr(pl_module, self.attr, None)
        if not isinstance(net, nn.Module):
            children = ", ".join(n for n, _ in pl_module.named_children()) or "none"
            raise PrunekitError(f"the LightningModule has no network at attribute {self.attr!r} (its child modules: "
                                f"{children}); pass attr= to PrunekitCallback")
        return net

    def _swap(self, model: nn.Module) -> None:
        if self.attr is None:
            raise PrunekitError(f"method {self.method.name!r} replaced the network by a new object, which cannot "
                                "take the LightningModule's place; hold the network in an attribute (attr=)")
        setattr(self._module, self.attr, model)

    # -- hooks -----------------------------------------------------------------------------------------------
    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage != "fit":
            return
        self._module = pl_module
        if self.example_inputs is None:
            return  # prepared at on_train_start, on the first training batch
        net = self.network(pl_module)
        prepared = self.method.prepare(net, self.example_inputs)
        if prepared is not net:
            self._swap(prepared)

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        refuse_processes(trainer.world_size, "Lightning")
        self._module = pl_module
        epochs = self.epochs if self.epochs is not None else trainer.max_epochs
        if epochs is None or epochs < 1:
            raise PrunekitError("the prunekit callback needs an epoch budget: set Trainer(max_epochs=...) or "
                                "PrunekitCallback(epochs=...)")
        lr = self.lr
        if lr is None:
            groups = [g for o in trainer.optimizers for g in getattr(o, "param_groups", [])]
            lr = groups[0]["lr"] if groups else self.optim.lr
        d = self.driver = Driver(self.method, self.network(pl_module), swap=self._swap, optim=self.optim,
                                 finalize=self.finalize_at_end, input_key=self.input_key)
        trainer.strategy.optimizers = [d.optimizer]
        trainer.strategy.lr_scheduler_configs = []
        steps = max(int(trainer.num_training_batches) // max(int(trainer.accumulate_grad_batches), 1), 1)
        d.start(int(epochs), float(lr), trainer.train_dataloader, self.example_inputs, steps)

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self._driver().epoch_start()

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self._driver().batch_start(split_batch(batch, self.input_key))

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        metrics: dict[str, Any] = {}
        for k, v in trainer.callback_metrics.items():
            metrics[k] = float(v) if isinstance(v, torch.Tensor) and v.numel() == 1 else v
        self._driver().epoch_end(metrics)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self._driver().finish()


__all__ = ["PrunekitCallback"]
