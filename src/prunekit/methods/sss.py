"""Data-Driven Sparse Structure Selection (SSS; Huang & Wang, ECCV 2018) with scaling factors and APG.

Algorithm (paper section 3, authors' MXNet code)::

    insert a scaling factor lambda (init 1) after each structure: a channel / neuron, a group of a grouped
        convolution, a residual block (multiplies the branch output before the shortcut addition)
    minimise  loss(W, lambda) + wd/2 * ||W||^2 + sum_types gamma_type * ||lambda_type||_1
        W:      Nesterov momentum SGD with weight decay                      (configure_optimizers)
        lambda: the modified stochastic APG (soft-thresholding prox, momentum), no weight decay  (optim.APG)
    remove the structures whose factor is exactly 0; the rest of the factors fold into the layer before

Where we follow the paper (verified in the authors' code): factors start at 1, get no weight decay, are
updated by APG (eq. 10-12, :mod:`prunekit.methods.optim`) with the weights' learning rate and momentum, are
kept non-negative (``nonnegative``), one gamma per structure type; a block factor multiplies the output of a
residual branch (after its last BN) before the addition; a group factor multiplies one group of a grouped
convolution's output after its BN (ResNeXt).

Where we chose (the paper does not say, or covers only ResNet / ResNeXt / VGG):

* *Where factors go in any network*: ``prepare(model, example_inputs)`` places them from the shared
  analysis (:func:`~prunekit.methods.factors.analysis_sites`, the surgery's graph, no ``torch.fx``): a
  channel factor after the output (BN, else the layer) of every conv / linear group an element-wise
  activation with f(0) = 0 follows (ReLU, GELU, SiLU, ...), so a zero stays zero where it is read (the
  paper's VGG placement, "after each channel's BN", is unverified); a block factor on every graph-found
  residual block; with ``groups``, the paper's groups (conv groups) and, as ours, one factor per attention
  head on the value projection (a zero silences the head). Each placement is checked on a copy (fold and
  removal exact) before training; structures left without a factor are in the report's ``skipped``.
* *A layer with two residual sums* (a transformer layer: ``x + attn(ln(x))``, then ``+ mlp(ln(.))``): one
  block factor per branch, after the layer producing it; a zero removes that branch
  (:func:`prunekit.surgery.remove_branches`), all of them the whole layer. An ``nn.MultiheadAttention`` branch's
  factor scales its output tuple's first element (:class:`~prunekit.methods.factors.ScaledAttention`) and folds
  into ``out_proj``; none goes inside ``nn.TransformerEncoderLayer`` (its eval fast path skips child modules).
* *Concatenated branches* (DenseNet): a factor after every BN reading the concatenation (before its
  activation); a channel goes when its factor is 0 at every reader, through the concat mapping (a factor
  at the producer would not do: each reader BN adds its shift to a 0).
* *Zoo networks* (prunekit's, torchvision-style blocks) keep :func:`~prunekit.methods.factors.insert_factors`:
  a block factor on every block, a projection-shortcut block included (a zero one becomes
  ``Sequential(shortcut, act)``, what it computes once its branch is 0), and channel factors only where a
  channel reaches nothing but other conv / linear layers; without example inputs, other networks use a
  ``torch.fx`` trace, or the analysis at bind with the loop's example inputs.
* Channel factors sit inside residual blocks too (the paper uses block factors alone for ResNet): set
  ``channels: false`` for the paper's ResNet setting. Factors are real modules (``Sequential(layer, scale)``),
  registered for checkpoints, so a resumed run is exact; a factor right after a BatchNorm is computed inside
  it (:class:`~prunekit.methods.factors.ScaledSequential`: ``batch_norm(x, gamma * lambda, beta * lambda)``,
  the same function up to rounding, without an activation-sized multiply per factor). ``finalize`` folds
  every factor into the layer before it (a zero factor becomes a channel that outputs 0), then removes zero
  blocks, branches and channels with :mod:`prunekit.surgery` (verified against masking): same outputs, no
  scale modules left.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from prunekit.engine.distributed import check_same
from prunekit.engine.stages import Stage
from prunekit.errors import PrunekitError
from prunekit.methods.api import FinalizeResult, MethodConfig, PruningMethod, TrainingLoop
from prunekit.methods.factors import (
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
    is_zoo,
    remove_zero_blocks,
    structure_report,
    width_of,
    zero_structures,
)
from prunekit.methods.optim import APG


@dataclass
class SSSConfig(MethodConfig):
    """SSS hyperparameters. The paper's ImageNet ResNet-50 run: block factors, gamma 0.01, lr 0.1,
    momentum 0.9, wd 1e-4, batch 128 (set those in the recipe's ``optim`` / ``train`` sections)."""

    channels: bool = True  # factors on channels / neurons
    blocks: bool = True  # factors on residual blocks (each branch of a sum with several)
    groups: bool = False  # factors on groups: of grouped convolutions (ResNeXt), attention heads
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
        """Insert the scaling factors lambda = 1 (idempotent): a zoo network where
        :func:`~prunekit.methods.factors.insert_factors` puts them, any other one given ``example_inputs``
        (every loop passes them) where the shared analysis says (:meth:`bind`); without example inputs a
        ``torch.fx`` trace places them, else the loop's bind does when it first asks for the optimizers."""
        c = self.config
        if factor_modules(model):
            return model
        if example_inputs is not None and not is_zoo(model):
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
        """[Nesterov SGD with weight decay over W, APG over lambda (one group per kind: its gamma)]."""
        model = trainer.raw_model
        o = trainer.optim_cfg
        if not factor_modules(model) and trainer.example_inputs is not None:
            self.bind(model, trainer.example_inputs)  # a network prepare() left to the analysis
        factors = factor_parameters(model)
        ids = {id(p) for ps in factors.values() for p in ps}
        if not ids:
            raise PrunekitError("sss: the model holds no scaling factors; call prepare(model, example_inputs) first")
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
        """Fold lambda into the layers, remove the structures whose lambda is 0 (blocks, branches, groups,
        channels, heads), report widths and depth per stage."""
        from prunekit import metrics, surgery

        model = getattr(model, "module", model)
        was_training = model.training
        model.eval()
        zero_blocks, zeros, summary = zero_structures(model)  # the structures with lambda == 0
        all_blocks = [n for n, m in model.named_modules() if is_block(m)]
        fold_factors(model)  # W <- lambda * W: the same function, no scale modules left
        before = metrics.count(model, example_inputs)
        widths_before = {k: width_of(model, k) for k, v in summary.items() if v["kind"] != "block"}
        blocks: list[str] = []
        branches: list[str] = []
        channel_report: Any = None
        if self.config.remove:
            blocks, branches = remove_zero_blocks(model, zero_blocks, summary, example_inputs, zoo=is_zoo(model))
            plan = channel_plan(model, zeros, summary, example_inputs)
            if plan:  # clamp: a layer whose factors are all 0 keeps one channel (which outputs 0)
                channel_report = surgery.remove_channels(model, plan, example_inputs, min_channels=1, clamp=True)
        after = metrics.count(model, example_inputs)
        model.train(was_training)
        report = {"method": self.name, "params": {"before": before.params, "after": after.params},
                  "macs": {"before": before.macs, "after": after.macs},
                  **structure_report(model, summary, widths_before, all_blocks, blocks, branches, channel_report),
                  "skipped": dict(self.skipped)}  # structures that got no factor, and why
        return FinalizeResult(model, sparse=False, report=report)


__all__ = ["BlockScale", "ChannelScale", "GroupScale", "SSSConfig", "Site", "SparseStructureSelection",
           "factor_modules", "factor_parameters", "find_sites", "fold_factors", "insert_factors"]
