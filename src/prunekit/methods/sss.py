"""Data-Driven Sparse Structure Selection (SSS; Huang & Wang, ECCV 2018) with scaling factors and APG.

Algorithm (paper section 3, authors' MXNet code)::

    insert a scaling factor lambda (init 1) after each structure: a channel / neuron, a group of a grouped
        convolution, a residual block (multiplies the branch output before the shortcut addition)
    minimise  loss(W, lambda) + wd/2 * ||W||^2 + sum_types gamma_type * ||lambda_type||_1
        W:      Nesterov momentum SGD with weight decay                      (configure_optimizers)
        lambda: the modified stochastic APG (soft-thresholding prox, momentum), no weight decay  (optim.APG)
    remove the structures whose factor is exactly 0; the rest of the factors fold into the layer before

Any network (``prepare(model, example_inputs)``, or at bind with the loop's example inputs): the shared
analysis places them (:func:`~prunekit.methods.factors.analysis_sites`: channels before any activation with
f(0) = 0, every graph-found residual block, attention heads with ``groups``); the structures left without
one are in the report's ``skipped``. Zoo networks, ``prepare(model)``: what :func:`insert_factors` puts where:

* block factor (:class:`BlockScale`, one scalar) appended at the end of every
  :class:`~prunekit.models.common.ResidualBlock`'s ``branch``, i.e. after its last BN, before the
  addition (verified placement); in torchvision's BasicBlock / Bottleneck it wraps ``bn2`` / ``bn3``;
* channel factor (:class:`ChannelScale`) after the BN of each conv / linear layer (after the layer itself
  when it has no BN, e.g. LeNet-5), where that output reaches, through ReLU / pooling / dropout / flatten
  only, nothing but other conv / linear layers: then a zero factor removes exactly one channel and its
  consumers' input weights. So the stem of a ResNet and every layer feeding a residual sum gets none
  (those channels are tied to the shortcut; SSS handles them with block factors), nor does the classifier;
* group factor (:class:`GroupScale`, one per group) after the BN of a grouped, non-depthwise convolution
  (ResNeXt), with ``groups=True``.

The placement of channel factors is unverified in the paper (its VGG/CIFAR runs); ours is "after the BN
that feeds a ReLU", extended to BN-free layers and restricted to channels that can be removed on their own.

Choices of ours: factors are real modules (wrapping the layer as ``Sequential(layer, scale)``; block
factors are a ``branch`` child named ``block_scale``), registered with :func:`prunekit.io.register_module`
so checkpoints of a zoo model describe them and resume is exact. For a user's own (non-zoo) model, call
:meth:`SparseStructureSelection.prepare` on it *before* building the Trainer so that a resumed run finds
the same modules (``prepare`` is idempotent). ``finalize`` first folds every factor into the layer before
it (BN weight and bias, or the conv / linear weight and bias), which turns a zero factor into a channel
that outputs exactly zero, then removes zero blocks and zero channels with :mod:`prunekit.surgery`, so the
result has no scale modules and the same outputs.

Where we follow the paper exactly: factors start at 1, get no weight decay, are updated by APG (the authors'
eq. 10-12, see :mod:`prunekit.methods.optim`) with the weights' learning rate and momentum, are kept
non-negative (``nonnegative``, as the authors' code), one gamma per structure type. Where we chose: a zero
block whose shortcut is a projection (first block of a stage) cannot simply vanish; it becomes
``Sequential(shortcut, act)``, which is what it computes once its branch is 0 (its convs are gone);
channel factors sit inside residual blocks as well as in plain nets (the paper uses block factors alone
for ResNet, and channel factors for VGG): set ``channels: false`` for the paper's ResNet setting.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from prunekit.engine.distributed import check_same
from prunekit.engine.stages import Stage
from prunekit.errors import PrunekitError
from prunekit.methods.api import FinalizeResult, MethodConfig, PruningMethod, TrainingLoop
from prunekit.methods.factors import (
    NORM_LAYERS,
    BlockScale,
    ChannelScale,
    GroupScale,
    Site,
    analysis_sites,
    channel_plan,
    factor_modules,
    factor_parameters,
    find_sites,
    fold_factors,
    insert_factors,
    insert_sites,
    is_block,
    remove_blocks,
    zero_structures,
)
from prunekit.methods.optim import APG

# ---------------------------------------------------------------------------------------------------------
# the method


@dataclass
class SSSConfig(MethodConfig):
    """SSS hyperparameters. The paper's ImageNet ResNet-50 run: block factors, gamma 0.01, lr 0.1,
    momentum 0.9, wd 1e-4, batch 128 (set those in the recipe's ``optim`` / ``train`` sections)."""

    channels: bool = True  # factors on channels / neurons
    blocks: bool = True  # factors on residual blocks
    groups: bool = False  # factors on groups of grouped convolutions (ResNeXt)
    gamma_channel: float = 0.01  # L1 weight of each factor type
    gamma_block: float = 0.01
    gamma_group: float = 0.01
    nonnegative: bool = True  # clip factors at 0 after each APG step (authors' code)
    remove: bool = True  # finalize removes zero structures (False: fold only)

    def validate(self) -> None:
        for key in ("channels", "blocks", "groups", "nonnegative", "remove"):
            if not isinstance(getattr(self, key), bool):
                raise PrunekitError(f"method 'sss': {key} must be true or false, got {getattr(self, key)!r}")
        for key in ("gamma_channel", "gamma_block", "gamma_group"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v < float("inf"):
                raise PrunekitError(f"method 'sss': {key} must be a number >= 0, got {v!r}")
        if not (self.channels or self.blocks or self.groups):
            raise PrunekitError("method 'sss': enable at least one of channels, blocks, groups")


class SparseStructureSelection(PruningMethod):
    """SSS as a plug-in: ``prepare`` inserts factors, ``configure_optimizers`` gives [SGD(W), APG(lambda)],
    ``finalize`` folds factors and removes the structures whose factor is zero.

    A user's own loop drives it with the sequence of calls every method shares (README.md, "Library"):
    ``LoopState.begin_stage`` asks it for its two optimizers.
    """

    name = "sss"
    starts_from_scratch = True  # the paper trains the factors jointly with the network from a random init
    Config = SSSConfig

    def __init__(self, config: Any = None, **overrides: Any) -> None:
        super().__init__(config, **overrides)
        self.skipped: dict[str, str] = {}

    def prepare(self, model: nn.Module, example_inputs: Any = None) -> nn.Module:
        """Insert the scaling factors (idempotent). A zoo network (prunekit's blocks, torchvision's): where
        :func:`~prunekit.methods.factors.insert_factors` puts them (the paper's placement, projection blocks
        included). Any other network, given ``example_inputs`` (every loop passes them): where the shared
        analysis says (:meth:`bind`). Without example inputs a ``torch.fx`` trace places them, and a network
        where that finds nothing (HF models) gets them at bind, when the loop first asks for the optimizers."""
        c = self.config
        if factor_modules(model):
            return model
        if example_inputs is not None and not _zoo(model):
            return self.bind(model, example_inputs)
        insert_factors(model, channels=c.channels, blocks=c.blocks, groups=c.groups)  # zoo blocks, torch.fx
        if not factor_modules(model) and example_inputs is not None:
            return self.bind(model, example_inputs)
        if not factor_modules(model) and sum(isinstance(m, nn.Linear | nn.modules.conv._ConvNd)
                                             for m in model.modules()) < 2:
            raise PrunekitError("sss: the model has no structure to put a scaling factor on (no residual "
                                "block, no prunable conv / linear layer)")
        return model

    def bind(self, model: nn.Module, example_inputs: Any) -> nn.Module:
        """Place the factors from the shared analysis unless the model holds some; refuse in one line when no
        structure can carry one. ``self.skipped``: structure -> why it got none (also in the report)."""
        c = self.config
        if not factor_modules(model):
            sites, self.skipped = analysis_sites(model, example_inputs, channels=c.channels, blocks=c.blocks,
                                                 heads=c.groups)
            insert_sites(model, sites)
            if not sites:
                first = next(iter(self.skipped.items()), None)
                why = f"; e.g. {first[0]!r}: {first[1]}" if first else ""
                raise PrunekitError(f"sss: no structure of {type(model).__name__} can carry a scaling factor{why}")
        return model

    def stages(self, epochs: int) -> list[Stage]:
        return [Stage("sparse", epochs, kind="sparse")]

    def configure_optimizers(self, trainer: TrainingLoop, lr: float) -> list[torch.optim.Optimizer]:
        """[Nesterov SGD with weight decay over the weights, APG over the factors (one group per kind)]."""
        model = trainer.raw_model
        o = trainer.optim_cfg
        if not factor_modules(model) and trainer.example_inputs is not None:
            self.bind(model, trainer.example_inputs)  # a network prepare() left to the analysis
        factors = factor_parameters(model)
        ids = {id(p) for ps in factors.values() for p in ps}
        if not ids:
            raise PrunekitError("sss: the model holds no scaling factors; call prepare(model) first")
        weights = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
        sgd = torch.optim.SGD(weights, lr=lr, momentum=o.momentum, nesterov=bool(o.nesterov and o.momentum > 0),
                              weight_decay=o.weight_decay)
        gamma = {"channel": self.config.gamma_channel, "block": self.config.gamma_block,
                 "group": self.config.gamma_group}
        groups = [{"params": ps, "gamma": gamma[k], "kind": k} for k, ps in factors.items() if ps]
        return [sgd, APG(groups, lr=lr, momentum=o.momentum, nonnegative=self.config.nonnegative)]

    def factor_summary(self, model: nn.Module) -> dict[str, Any]:
        """Number of factors and of zeros per kind (cheap; for logs)."""
        out: dict[str, Any] = {}
        for kind, ps in factor_parameters(model).items():
            if ps:
                out[kind] = {"factors": sum(p.numel() for p in ps),
                             "zero": int(sum((p == 0).sum().item() for p in ps))}
        return out

    def on_epoch_end(self, trainer: TrainingLoop, metrics: dict[str, float]) -> None:
        model = trainer.raw_model
        # under DDP the factors' gradients are all-reduced like the weights', so APG keeps them identical
        check_same([p for ps in factor_parameters(model).values() for p in ps], "SSS scaling factors")
        for kind, s in self.factor_summary(model).items():
            metrics[f"sss_zero_{kind}"] = s["zero"]

    def finalize(self, model: nn.Module, example_inputs: torch.Tensor) -> FinalizeResult:
        """Fold the factors, remove zero blocks and channels, report widths and depth per stage."""
        from prunekit import metrics, surgery

        model = getattr(model, "module", model)
        was_training = model.training
        model.eval()
        zero_blocks, zeros, summary = zero_structures(model)
        all_blocks = [n for n, m in model.named_modules() if is_block(m)]
        fold_factors(model)
        before = metrics.count(model, example_inputs)
        widths_before = _widths(model, summary)
        removed_blocks: list[str] = []
        channel_report: Any = None
        if self.config.remove:
            if zero_blocks:
                remove_blocks(model, zero_blocks, example_inputs if not _zoo(model) else None)
                removed_blocks = list(zero_blocks)
            plan = channel_plan(model, zeros, summary, example_inputs)
            if plan:
                # clamp: a layer whose factors are all 0 keeps one channel (which outputs 0)
                channel_report = surgery.remove_channels(model, plan, example_inputs, min_channels=1,
                                                         clamp=True)
        after = metrics.count(model, example_inputs)
        model.train(was_training)
        widths = [{"layer": k, "kind": v["kind"], "before": widths_before.get(k),
                   "after": _width_of(model, k), "factors": v["factors"], "zero_factors": v["zero"]}
                  for k, v in summary.items() if v["kind"] != "block"]
        report = {
            "method": self.name,
            "params": {"before": before.params, "after": after.params},
            "macs": {"before": before.macs, "after": after.macs},
            "blocks_removed": removed_blocks,
            "block_factors": {k: v["factor"] for k, v in summary.items() if v["kind"] == "block"},
            "depth_per_stage": _depth_per_stage(all_blocks, removed_blocks),
            "width_per_layer": widths,
            "channel_surgery": _jsonable(channel_report),
            "skipped": dict(self.skipped),  # structures that got no factor, and why
        }
        return FinalizeResult(model, sparse=False, report=report)


def _zoo(model: nn.Module) -> bool:
    """A prunekit zoo network, or one holding blocks of the zoo / torchvision kinds."""
    return type(model).__module__.startswith("prunekit.models") or any(is_block(m) for m in model.modules())


def _widths(model: nn.Module, summary: dict[str, dict[str, Any]]) -> dict[str, int | None]:
    return {k: _width_of(model, k) for k, v in summary.items() if v["kind"] != "block"}


def _width_of(model: nn.Module, name: str) -> int | None:
    try:
        m = model.get_submodule(name)
    except AttributeError:
        return None
    if isinstance(m, NORM_LAYERS):
        return m.num_features
    if isinstance(m, nn.Linear):
        return m.out_features
    if isinstance(m, nn.modules.conv._ConvNd):
        return m.out_channels
    return None


def _depth_per_stage(blocks: list[str], removed: list[str]) -> dict[str, dict[str, int]]:
    """Blocks kept per stage (the container holding the blocks, e.g. ``layer2``)."""
    out: dict[str, dict[str, int]] = OrderedDict()
    for b in blocks:
        stage = b.rpartition(".")[0] or "<root>"
        s = out.setdefault(stage, {"blocks": 0, "kept": 0})
        s["blocks"] += 1
        s["kept"] += b not in removed
    return dict(out)


def _jsonable(x: Any) -> Any:
    if x is None or isinstance(x, bool | int | float | str):
        return x
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if hasattr(x, "to_dict"):
        return _jsonable(x.to_dict())
    if hasattr(x, "__dataclass_fields__"):
        import dataclasses

        return _jsonable(dataclasses.asdict(x))
    return str(x)


__all__ = ["BlockScale", "ChannelScale", "GroupScale", "SSSConfig", "Site", "SparseStructureSelection",
           "factor_modules", "factor_parameters", "find_sites", "fold_factors", "insert_factors"]
