"""A prunekit method in a Hugging Face ``transformers.Trainer`` run: :class:`PrunekitTrainerCallback`.

The recipe (README.md, "In Lightning and HF Trainer")::

    pk = PrunekitTrainerCallback(methods.get("sght")(keep_ratio=0.5))
    trainer = transformers.Trainer(model=model, args=args, train_dataset=ds, callbacks=[pk],
                                   optimizers=pk.optimizers(model))   # prepares the model, the method's optimizer
    trainer.train()
    small = pk.result.model                                         # == trainer.model, finalized

``pk.optimizers(model)`` returns ``(MethodOptimizer, scheduler)`` for the Trainer's ``optimizers=`` argument:
one optimizer holding the method's own (SSS's SGD + APG, SGHT's AHSGHT; else prunekit's momentum SGD, from
``optim``) and a scheduler that leaves the learning rate to the method's stages. The callback refuses (one
line) to start without it, because the HF Trainer cannot be given another optimizer once training started.
``args.learning_rate`` is the base lr (``lr=`` wins); HF's scheduler type, weight decay and optimizer options
are not used. ``method.prepare(model, example_inputs)`` (in place: SSS inserts its scaling factors, placed by
running the network) runs in ``pk.optimizers(model)`` when the callback was given ``example_inputs=``, else at
``on_train_begin`` on the first training batch; the optimizer is filled then, before the first step.

Hooks, as in the README's own-loop block:

==============================  ==============================================================================
HF Trainer                      prunekit
==============================  ==============================================================================
``on_train_begin``              ``method.prepare(model, example_inputs)`` (idempotent),
                                ``method.stages(num_train_epochs)``, ``on_fit_start``
``on_epoch_begin``              stage boundaries (``on_stage_end`` / ``begin_stage``: fresh optimizers at the
                                stage's lr, ``on_stage_start``), then ``on_epoch_start``
``on_step_begin``               ``on_train_batch_start(state, (example_inputs, None))``: HF does not show callbacks
                                the batch (the paper methods do not read it once example inputs are known)
``optimizer.step()``            ``MethodOptimizer.step``: ``on_before_optimizer_step`` (after HF's gradient
                                clipping), the inner steps, ``on_after_optimizer_step``, ``on_train_batch_end``
``on_epoch_end``                ``on_epoch_end(state, {})``
``on_train_end``                ``on_stage_end``, ``on_fit_end``, ``finalize`` -> :attr:`PrunekitTrainerCallback.result`
==============================  ==============================================================================

A smaller model: Network Trimming removes channels between stages, SGHT (fine-tune stage) and SSS
(finalize) at the end, all in place, so ``trainer.model`` is the same object with fewer parameters; the
adapter then refills the optimizer with the new parameters. A method that hands back a new object during
training is refused in one line (the HF loop keeps the old one); at finalize it is only in
:attr:`result`. Inputs are read from the batches under ``input_key`` (default: the model's
``main_input_name``, e.g. ``pixel_values``). One process only; resuming from a HF checkpoint is not
supported (prunekit's Trainer resumes).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from prunekit.engine.stages import OptimConfig
from prunekit.errors import PrunekitError
from prunekit.integrations import require
from prunekit.integrations.driver import AdapterResults, Driver, MethodOptimizer, refuse_processes
from prunekit.methods.api import PruningMethod

transformers = require("transformers", "transformers", "hf")
require("accelerate", "accelerate", "hf")  # transformers.Trainer needs it; say so at import, not at train


class FollowStages:
    """The HF Trainer's scheduler slot: changes nothing (the driver sets each step's lr from the method's
    stages) and reports the current learning rates to HF's logs."""

    def __init__(self, optimizer: MethodOptimizer) -> None:
        self.optimizer = optimizer

    def step(self, *args: Any, **kwargs: Any) -> None:
        """No-op: the lr was set for this step already."""

    def get_last_lr(self) -> list[float]:
        return [float(g["lr"]) for g in self.optimizer.param_groups] or [0.0]

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Nothing to restore."""


class PrunekitTrainerCallback(transformers.TrainerCallback, AdapterResults):  # type: ignore[name-defined]  # transformers is bound at run time
    """Drive a prunekit method from ``transformers.Trainer.train`` (module docstring for the exact mapping).

    ``epochs``: the schedule's budget (default: the Trainer's number of epochs). ``lr`` / ``optim``: the base
    learning rate (default ``args.learning_rate``) and the momentum SGD settings. ``example_inputs``: one
    input of batch size 1 (default: the first training batch's first sample). ``finalize``: run
    ``method.finalize`` at train end (:attr:`result`).
    """

    not_started = "the prunekit callback has no optimizer: pass optimizers=pk.optimizers(model) to transformers.Trainer"

    def __init__(self, method: PruningMethod, *, epochs: int | None = None, lr: float | None = None,
                 optim: OptimConfig | None = None, example_inputs: torch.Tensor | None = None,
                 finalize: bool = True, input_key: str | None = None) -> None:
        self.method, self.epochs, self.lr = method, epochs, lr
        self.optim = optim or OptimConfig(schedule="constant")
        self.example_inputs, self.finalize_at_end, self.input_key = example_inputs, finalize, input_key
        self.driver: Driver | None = None
        self.model: nn.Module | None = None

    def optimizers(self, model: nn.Module) -> tuple[MethodOptimizer, FollowStages]:
        """The Trainer's ``optimizers=`` pair; with ``example_inputs`` the model is prepared for the method (in
        place) and the optimizer filled now, else both wait for the first training batch (``on_train_begin``)."""
        prepared = self.method.prepare(model, self.example_inputs) if self.example_inputs is not None else model
        if prepared is not model:
            raise PrunekitError(f"method {self.method.name!r} prepared a new model object; give that one to the "
                                "HF Trainer: model = method.prepare(model) before building it")
        key = self.input_key or getattr(model, "main_input_name", None) or "pixel_values"
        self.model = model
        self.driver = Driver(self.method, model, swap=self._swap, optim=self.optim, finalize=self.finalize_at_end,
                             input_key=key)
        opt = self.driver.optimizer
        if self.example_inputs is not None:
            self.driver.build_now(self.lr if self.lr is not None else self.optim.lr)
        return opt, FollowStages(opt)

    def _swap(self, model: nn.Module) -> None:
        if self.driver is not None and self.driver.finished:
            return  # finalize handed a new object: it is the result (trainer.model stays the trained one)
        raise PrunekitError(f"method {self.method.name!r} replaced the model by a new object during training; the HF "
                            "Trainer's loop keeps the old one (the prunekit methods' surgery works in place)")

    # -- hooks -----------------------------------------------------------------------------------------------
    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        d = self.driver
        opt = kwargs.get("optimizer")
        if d is None or (opt is not d.optimizer and getattr(opt, "optimizer", None) is not d.optimizer):
            raise PrunekitError("the HF Trainer is not stepping the prunekit method's optimizer: build it with "
                                "transformers.Trainer(..., callbacks=[pk], optimizers=pk.optimizers(model))")
        if kwargs.get("model") is not None and kwargs["model"] is not self.model:
            raise PrunekitError("the HF Trainer trains another model than the one given to pk.optimizers(model)")
        refuse_processes(int(args.world_size), "HF Trainer")
        epochs = self.epochs if self.epochs is not None else int(state.num_train_epochs)
        lr = self.lr if self.lr is not None else float(args.learning_rate)
        steps = math.ceil(state.max_steps / max(int(state.num_train_epochs), 1))
        d.start(epochs, lr, kwargs.get("train_dataloader"), self.example_inputs, steps)

    def on_epoch_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._driver().epoch_start()

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        d = self._driver()
        d.batch_start((d.loop.example_inputs, None))  # type: ignore[arg-type]

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._driver().epoch_end({})

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._driver().finish()


__all__ = ["FollowStages", "PrunekitTrainerCallback"]
