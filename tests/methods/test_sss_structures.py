"""SSS factors placed from the shared analysis on structures beyond plain channels (issue 18, item 3): the
groups of a grouped convolution, the channels of concatenated branches, and each residual branch of a
transformer layer. Each test forces factors to 0, finalizes, and checks that the smaller network gives the
output of the network with those factors at 0 (folded and removed exactly) and has fewer parameters."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import prunekit
from prunekit.methods.factors import BlockScale, ChannelScale, GroupScale, factor_modules
from prunekit.methods.sss import SparseStructureSelection
from prunekit.surgery import ZeroBranch
from prunekit.testing import corpus


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _finalize_exact(sss: SparseStructureSelection, net: corpus.Network) -> tuple[nn.Module, int, int]:
    """Finalize the zeroed network; assert its output is unchanged; (model, params before, params after)."""
    model = net.model.eval()
    with torch.no_grad():
        y0 = corpus.logits(model(net.inputs))
    before = _params(model)
    res = sss.finalize(model, net.inputs)
    with torch.no_grad():
        y1 = corpus.logits(res.model(net.inputs))
    assert factor_modules(res.model) == []
    assert float((y1 - y0).abs().max()) <= 1e-5 * max(float(y0.abs().max()), 1.0)
    return res.model, before, _params(res.model)


def test_a_zero_group_factor_removes_a_whole_group_of_a_grouped_conv_in_a_hf_regnet():
    net = corpus.build("hf-regnet")
    sss = SparseStructureSelection(groups=True)
    sss.prepare(net.model, net.inputs)
    groups = [m for _, m in factor_modules(net.model) if isinstance(m, GroupScale)]
    assert [(g.layer.rpartition("layers.0.")[2], g.groups) for g in groups] == [("layer.1.convolution", 2),
                                                                              ("layer.1.convolution", 4)]
    conv = net.model.get_submodule(groups[1].layer)
    with torch.no_grad():
        groups[1].factor[1] = 0
    _, before, after = _finalize_exact(sss, net)
    assert (conv.groups, conv.in_channels, conv.out_channels) == (3, 24, 24)  # one whole group of 8 gone
    assert after < before


def test_concatenated_branches_get_factors_after_each_reading_norm_and_lose_channels_read_as_zero():
    net = corpus.build("densenet")
    sss = SparseStructureSelection()
    sss.prepare(net.model, net.inputs)
    readers = {m.layer: m for _, m in factor_modules(net.model) if isinstance(m, ChannelScale) and m.reader}
    assert sorted(readers) == ["dense.0.norm", "dense.1.norm", "transition.0"]
    with torch.no_grad():  # channels 2, 5 of the first dense layer's branch: 16 + c in both norms reading it
        for norm in ("dense.1.norm", "transition.0"):
            readers[norm].factor[[18, 21]] = 0
        readers["transition.0"].factor[[0, 26]] = 0  # stem channel 0: read as 0 by one reader of three, stays;
    model, before, after = _finalize_exact(sss, net)   # the 2nd layer's channel 2: its only reader, goes
    assert model.dense[0].conv.out_channels == 6 and model.dense[1].conv.out_channels == 7
    assert model.dense[1].norm.num_features == 22 and model.transition[0].num_features == 29
    assert after < before


@pytest.mark.parametrize("name,attn,mlp", [("hf-vit", "attention.o_proj", "mlp.fc2"),
                                           ("view-transformer", "attn.out", "mlp.2")])
def test_each_residual_branch_of_a_pre_norm_transformer_layer_has_a_factor_and_a_zero_one_goes(name, attn, mlp,
                                                                                               tmp_path):
    net = corpus.build(name)
    base = copy.deepcopy(net.model)
    layers = "vit.layers" if name == "hf-vit" else "blocks"
    sss = SparseStructureSelection()
    sss.prepare(net.model, net.inputs)
    branch = {m.branch: m for _, m in factor_modules(net.model) if isinstance(m, BlockScale) and m.branch}
    assert sorted(branch) == sorted(f"{layers}.{i}.{b}" for i in (0, 1) for b in (attn, mlp))
    with torch.no_grad():  # layer 0 loses its attention branch; layer 1 both branches: the whole layer
        for b in (f"{layers}.0.{attn}", f"{layers}.1.{attn}", f"{layers}.1.{mlp}"):
            branch[b].factor.zero_()
    model, before, after = _finalize_exact(sss, net)
    layer0, layer1 = model.get_submodule(f"{layers}.0"), model.get_submodule(f"{layers}.1")
    assert isinstance(layer0.get_submodule(attn.split(".")[0]), ZeroBranch)  # attention gone, its norm too
    assert sum(isinstance(m, nn.Identity) for m in layer0.children()) == 1
    assert sum(isinstance(m, nn.LayerNorm) for m in layer0.children()) == 1  # the MLP branch's norm stays
    assert not any(True for _ in layer1.parameters())  # both branches at 0: the layer is gone
    assert after < before - 2 * 4 * 32 * 32
    prunekit.save(model, tmp_path / "small.safetensors", base=base)  # the removals replay on a fresh instance
    again = prunekit.load(tmp_path / "small.safetensors", model=corpus.build(name, seed=1).model)
    with torch.no_grad():
        assert torch.equal(corpus.logits(again(net.inputs)), corpus.logits(model(net.inputs)))
