"""What both adapters share: one optimizer object a framework can step, and the driver that walks a method
through its stages from the framework's hooks (the README's own-loop sequence of calls, hook by hook).

The framework steps :class:`MethodOptimizer`; its ``step`` runs, in this order, the framework's closure
(forward + backward, Lightning), the method's ``on_before_optimizer_step`` (gradients ready), every optimizer
the method declared (or prunekit's momentum SGD), the method's ``on_after_optimizer_step`` and
``on_train_batch_end``. So the method's step hooks run exactly around the step whatever the framework calls
its own hooks (Lightning has none after the step), including under gradient accumulation.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import nn

from prunekit.engine.callbacks import LoopState
from prunekit.engine.stages import OptimConfig, Stage, lr_factor
from prunekit.errors import PrunekitError
from prunekit.methods.api import FinalizeResult, PruningMethod


def split_batch(batch: Any, input_key: str = "pixel_values") -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(inputs, labels)`` of a framework batch: an ``(x, y, ...)`` tuple / list, a dict (HF style: the
    model's input under ``input_key``, labels under ``labels`` / ``label``) or a bare tensor."""
    if isinstance(batch, Mapping):
        if input_key not in batch:
            raise PrunekitError(f"a batch dict has no {input_key!r} entry (it has {', '.join(map(str, batch))}); "
                                "pass input_key= to the prunekit callback")
        return batch[input_key], batch.get("labels", batch.get("label"))
    if isinstance(batch, tuple | list) and batch and isinstance(batch[0], torch.Tensor):
        return batch[0], batch[1] if len(batch) > 1 and isinstance(batch[1], torch.Tensor) else None
    if isinstance(batch, torch.Tensor):
        return batch, None
    raise PrunekitError(f"cannot find the inputs in a batch of type {type(batch).__name__}; give the callback "
                        "example_inputs= and batches of (x, y) tuples or dicts")


class XYBatches:
    """A framework's data loader seen as a re-iterable of ``(x, y)`` batches (what methods measure on, e.g.
    Network Trimming's APoZ)."""

    def __init__(self, loader: Any, input_key: str) -> None:
        self.loader, self.input_key = loader, input_key

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        for batch in self.loader:
            yield split_batch(batch, self.input_key)


class MethodOptimizer(torch.optim.Optimizer):
    """The method's optimizer(s) as the single ``torch.optim.Optimizer`` a framework steps.

    ``param_groups`` is every inner optimizer's groups (the same dicts); a stage change or a smaller model
    refills it in place (Lightning keeps a shallow copy of this object's attributes, so nothing is rebound).
    ``step`` also runs the method's step hooks (module docstring). ``state_dict`` holds the inner ones.
    """

    def __init__(self, driver: Driver) -> None:  # torch's __init__ wants parameters; the groups come later
        self.defaults: dict[str, Any] = {}
        self.param_groups: list[dict[str, Any]] = []
        self._inner: list[torch.optim.Optimizer] = []
        self._driver = driver
        for hooks in ("_optimizer_step_pre_hooks", "_optimizer_step_post_hooks", "_optimizer_state_dict_pre_hooks",
                      "_optimizer_state_dict_post_hooks", "_optimizer_load_state_dict_pre_hooks",
                      "_optimizer_load_state_dict_post_hooks"):
            setattr(self, hooks, {})

    @property
    def optimizers(self) -> list[torch.optim.Optimizer]:
        """The inner optimizers (the method's, e.g. SSS's [SGD, APG])."""
        return list(self._inner)

    def install(self, optimizers: list[torch.optim.Optimizer]) -> None:
        """Replace the inner optimizers (a new stage, or a model whose parameters changed), in place."""
        self._inner[:] = optimizers
        self.param_groups[:] = [g for o in optimizers for g in o.param_groups]

    @property  # type: ignore[override]
    def state(self) -> dict[Any, Any]:
        return {p: s for o in self._inner for p, s in o.state.items()}

    @state.setter
    def state(self, value: Any) -> None:
        """Ignored: the state lives in the inner optimizers."""

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        raise PrunekitError("the prunekit method owns this optimizer's parameter groups; add parameters to the "
                            "model before training instead")

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self._inner:
            o.zero_grad(set_to_none=set_to_none)

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._driver.before_step()
        for o in self._inner:
            o.step()
        self._driver.after_step()
        return loss

    def state_dict(self) -> dict[str, Any]:
        return {"inner": [o.state_dict() for o in self._inner]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        inner = state_dict.get("inner", [])
        if len(inner) != len(self._inner):
            raise PrunekitError(f"optimizer state holds {len(inner)} optimizers, the method has {len(self._inner)}")
        for o, s in zip(self._inner, inner, strict=True):
            o.load_state_dict(s)

    def __repr__(self) -> str:
        return f"MethodOptimizer({', '.join(type(o).__name__ for o in self._inner) or 'not built yet'})"


class AdapterLoop(LoopState):
    """The framework's loop as the method sees it (a :class:`~prunekit.methods.api.TrainingLoop`): a LoopState
    whose optimizers go into the framework's :class:`MethodOptimizer` and whose model replacement is passed on
    to the framework."""

    driver: Driver

    def build_optimizers(self) -> list[torch.optim.Optimizer]:
        opts = super().build_optimizers()
        self.driver.installed(opts)
        return opts

    def replace_model(self, model: nn.Module) -> None:
        if model is not self.model:
            self.driver.swap(model)
        super().replace_model(model)


class Driver:
    """Walks ``method`` through its stages from a framework's hooks; the adapters call one method per hook.

    ``swap(new_model)`` puts a different model object where the framework holds the network (the surgery
    of the four paper methods works in place, so it runs only for a method that builds a new object).
    """

    def __init__(self, method: PruningMethod, model: nn.Module, *, swap: Callable[[nn.Module], None],
                 optim: OptimConfig, finalize: bool, input_key: str) -> None:
        if not isinstance(method, PruningMethod):
            raise PrunekitError(f"the prunekit callback needs a prunekit method (methods.get(name)(...)), got "
                                f"{type(method).__name__}")
        self.method, self._swap, self.finalize_at_end, self.input_key = method, swap, finalize, input_key
        self.optimizer = MethodOptimizer(self)
        self.loop = AdapterLoop(model, callbacks=[method], optim_cfg=optim)
        self.loop.driver = self
        self.plan: list[Stage] = []
        self.skipped: list[str] = []
        self.steps_per_epoch = 0
        self.epoch_step = 0
        self.probe: torch.Tensor | None = None
        self.result: FinalizeResult | None = None
        self._base_lrs: list[float] = []
        self._started = False
        self.finished = False  # fit end passed: what finalize delivers goes to result only

    # -- the loop's callbacks into the framework --------------------------------------------------------
    def installed(self, optimizers: list[torch.optim.Optimizer]) -> None:
        self.optimizer.install(optimizers)
        self._base_lrs = [g["lr"] for g in self.optimizer.param_groups]

    def swap(self, model: nn.Module) -> None:
        self._swap(model)

    def build_now(self, lr: float) -> MethodOptimizer:
        """Fill the optimizer before the framework sees it (HF's ``optimizers=``); rebuilt at the first stage."""
        self.loop.lr = lr
        self.loop.build_optimizers()
        return self.optimizer

    # -- hooks --------------------------------------------------------------------------------------------
    def start(self, epochs: int, lr: float, data: Any, example_inputs: torch.Tensor | None,
              steps_per_epoch: int) -> None:
        """Fit start: the example inputs (given, else the first batch's first sample), ``method.prepare(model,
        example_inputs)``, the schedule for ``epochs``, the base ``lr``, the data methods measure on, and
        ``on_fit_start``."""
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise PrunekitError(f"the prunekit callback needs a whole number of epochs >= 1, got {epochs!r}; set the "
                                "trainer's epochs (or epochs= on the callback)")
        loop = self.loop
        loop.lr, loop.train_data = lr, XYBatches(data, self.input_key) if data is not None else None
        first = None
        if data is not None:
            first = split_batch(next(iter(data)), self.input_key)[0]
        if example_inputs is None:
            if first is None:
                raise PrunekitError("the prunekit callback found no training data to take example inputs from; "
                                    "pass example_inputs= (one input of batch size 1)")
            example_inputs = first[:1]
        dev = loop.device
        loop.example_inputs = example_inputs.detach().to(dev)
        prepared = self.method.prepare(loop.model, loop.example_inputs)  # idempotent: done already when the
        if prepared is not None and prepared is not loop.model:           # adapter had example inputs earlier
            self._swap(prepared)
            loop.model = prepared
        self.probe = (first[:8] if first is not None else example_inputs).detach().to(dev)
        self.steps_per_epoch = max(int(steps_per_epoch), 1)
        self.plan = list(self.method.stages(epochs))
        self._started = True
        self.method.on_fit_start(loop)

    def epoch_start(self) -> None:
        """Epoch start: end the finished stage and enter the next (zero-epoch stages too: a trim without
        retraining), then ``on_epoch_start``."""
        loop = self.loop
        while (loop.stage is None or loop.stage_epoch >= loop.stage.epochs) and self._next_index() < len(self.plan):
            self._advance()
        self.epoch_step = 0
        self.method.on_epoch_start(loop)

    def batch_start(self, batch: tuple[torch.Tensor, torch.Tensor | None]) -> None:
        self.method.on_train_batch_start(self.loop, batch)  # type: ignore[arg-type]

    def before_step(self) -> None:
        self._set_lr()
        self.method.on_before_optimizer_step(self.loop)

    def after_step(self) -> None:
        self.method.on_after_optimizer_step(self.loop)
        self.method.on_train_batch_end(self.loop)
        self.loop.step += 1
        self.epoch_step += 1

    def epoch_end(self, metrics: dict[str, Any]) -> None:
        self.method.on_epoch_end(self.loop, metrics)
        self.loop.epoch += 1
        self.loop.stage_epoch += 1

    def finish(self) -> FinalizeResult | None:
        """Fit end: close the stage, enter the stages of no epochs left (a final trim), ``on_fit_end``, then
        ``finalize`` (when asked). Stages with epochs the framework did not run are listed, with a warning."""
        if not self._started or self.finished:
            return self.result
        loop = self.loop
        while self._next_index() < len(self.plan):
            nxt = self.plan[self._next_index()]
            if nxt.epochs > 0 or (loop.stage is not None and loop.stage_epoch < loop.stage.epochs):
                break
            self._advance()
        if loop.stage is not None:
            self.method.on_stage_end(loop, loop.stage)
        missed = self.plan[self._next_index():]
        if loop.stage is not None and loop.stage_epoch < loop.stage.epochs:
            missed = [loop.stage, *missed]
        self.skipped = [f"{s.name} ({s.epochs} epochs)" for s in missed if s.epochs > 0]
        if self.skipped:
            warnings.warn(f"prunekit: the trainer stopped before the method's schedule ended; not run: "
                          f"{', '.join(self.skipped)}", stacklevel=2)
        self.method.on_fit_end(loop)
        self.finished = True
        return self.finalize() if self.finalize_at_end else None

    def finalize(self) -> FinalizeResult:
        """The method's deliverable from the trained network. ``report["adapter"]`` holds the largest
        difference between the outputs of the trained (masked) network and the delivered one on a batch of
        training inputs, in eval mode."""
        if self.result is not None:
            return self.result
        loop = self.loop
        model = loop.raw_model
        if loop.example_inputs is None:
            raise PrunekitError("nothing to finalize: the prunekit callback never saw the training start")
        before = self._logits(model)
        res = self.method.finalize(model, loop.example_inputs)
        if res.model is not model:
            self._swap(res.model)
            loop.model = res.model
        after = self._logits(res.model)
        diff = float((before - after).abs().max()) if before.shape == after.shape else math.inf
        res.report = {**res.report, "adapter": {"finalize_max_abs_diff": diff, "steps": loop.step,
                                                "epochs": loop.epoch, "not_run": list(self.skipped)}}
        self.result = res
        return res

    # -- internals ----------------------------------------------------------------------------------------
    def _next_index(self) -> int:
        return 0 if self.loop.stage is None else self.loop.stage_index + 1

    def _advance(self) -> None:
        loop = self.loop
        if loop.stage is not None:
            self.method.on_stage_end(loop, loop.stage)
        i = self._next_index()
        loop.begin_stage(i, self.plan[i])

    def _set_lr(self) -> None:
        """Each group at its base lr (the stage's, as built) times the stage's schedule factor at this step."""
        st, o = self.loop.stage, self.loop.optim_cfg
        if st is None:
            return
        progress = self.loop.stage_epoch + min(self.epoch_step / self.steps_per_epoch, 1.0)
        f = lr_factor(st.schedule or o.schedule, progress, int(progress), st.epochs,
                      st.milestones if st.milestones is not None else o.milestones,
                      st.gamma if st.gamma is not None else o.gamma, o.warmup_epochs)
        for g, base in zip(self.optimizer.param_groups, self._base_lrs, strict=True):
            g["lr"] = base * f

    @torch.no_grad()
    def _logits(self, model: nn.Module) -> torch.Tensor:
        from prunekit.metrics.evaluation import forward_logits

        assert self.probe is not None
        flags = {m: m.training for m in model.modules()}
        model.eval()
        try:
            return forward_logits(model, self.probe).detach().float().clone()
        finally:
            for m, t in flags.items():
                m.training = t


class AdapterResults:
    """What both framework adapters offer once training has run: :meth:`finalize` and :attr:`result`."""

    driver: Driver | None
    not_started = "the prunekit callback was not started"
    """The one-line error when the framework never started the callback (each adapter says how to fix it)."""

    def _driver(self) -> Driver:
        if self.driver is None:
            raise PrunekitError(self.not_started)
        return self.driver

    def finalize(self) -> FinalizeResult:
        """Finalize now (when ``finalize=False``, or to read the result early): the deliverable."""
        return self._driver().finalize()

    @property
    def result(self) -> FinalizeResult:
        """The finalized network (``.model``), whether it is sparse (``.sparse``) and the method's report."""
        d = self._driver()
        if d.result is None:
            raise PrunekitError("no result yet: training has not ended (or finalize=False: call finalize())")
        return d.result


def refuse_processes(world_size: int, framework: str) -> None:
    """The adapters drive one process (a smaller model would have to be re-wrapped on every rank)."""
    if world_size > 1:
        raise PrunekitError(f"the prunekit {framework} callback runs in one process (this run has {world_size}); "
                            "use prunekit's Trainer (torchrun) for distributed pruning")


__all__ = ["AdapterLoop", "Driver", "MethodOptimizer", "XYBatches", "refuse_processes", "split_batch"]
