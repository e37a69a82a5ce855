"""SSS factors placed from the shared analysis on structures beyond plain channels (issue 18, item 3): the
groups of a grouped convolution, the channels of concatenated branches, and each residual branch of a
transformer layer (an ``nn.MultiheadAttention`` branch included; none inside ``nn.TransformerEncoderLayer``).
Each test forces factors to 0, finalizes, and checks that the smaller network gives the output of the network
with those factors at 0 (folded and removed exactly) and has fewer parameters."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import prunekit
from prunekit.errors import PrunekitError
from prunekit.methods.factors import (
    BlockScale,
    ChannelScale,
    GroupScale,
    ScaledAttention,
    factor_modules,
    fold_factors,
)
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
                                           ("view-transformer", "attn.out", "mlp.2"),
                                           ("mha-transformer", "attn", "mlp.2")])
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


def test_an_nn_multihead_attention_branch_gets_a_block_factor_on_its_output_that_folds_into_out_proj(tmp_path):
    net = corpus.build("mha-transformer")  # pre-norm blocks: x + attn(h, h, h)[0], then x + mlp(norm2(x))
    base = copy.deepcopy(net.model)
    sss = SparseStructureSelection()
    sss.prepare(net.model, net.inputs)
    model, x = net.model, net.inputs
    attn = {m.branch: m for _, m in factor_modules(model) if isinstance(m, BlockScale) and m.branch.endswith("attn")}
    assert sorted(attn) == ["blocks.0.attn", "blocks.1.attn"] and "blocks.0.attn" not in sss.skipped
    assert all(isinstance(b.attn, ScaledAttention) for b in model.blocks)
    with torch.no_grad():
        assert torch.allclose(model(x), base(x), atol=1e-5)  # factors at 1: the network as built
    model.train()
    model(x).square().sum().backward()  # the factor scales the attention output: it gets a gradient
    assert all(float(m.factor.grad.abs().sum()) > 0 for m in attn.values())
    model.eval()
    prunekit.save(model, tmp_path / "sss.safetensors", base=base)  # the wrapper is recorded: a resume is exact
    again = prunekit.load(tmp_path / "sss.safetensors", model=corpus.build("mha-transformer", seed=1).model)
    assert isinstance(again.blocks[1].attn, ScaledAttention)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _, m in factor_modules(model):
            m.factor.copy_(torch.rand(m.factor.shape, generator=gen) + 0.5)
        scaled = model(x)
        folded = copy.deepcopy(model)
        fold_factors(folded)
        assert type(folded.blocks[0].attn) is nn.MultiheadAttention and factor_modules(folded) == []
        assert torch.allclose(folded(x), scaled, atol=1e-5)


class _Encoder(nn.Module):
    """``nn.TransformerEncoder`` of pre-norm layers under a small classifier head."""

    def __init__(self, dim: int = 16) -> None:
        super().__init__()
        self.embed = nn.Linear(8, dim)
        layer = nn.TransformerEncoderLayer(dim, 2, 32, dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Sequential(nn.Linear(dim, 24), nn.ReLU(), nn.Linear(24, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(x)).mean(dim=1))


def test_nn_transformer_encoder_layers_get_no_factor_their_eval_fast_path_would_skip_it():
    torch.manual_seed(0)
    model, x = _Encoder().eval(), torch.randn(2, 5, 8)
    base = copy.deepcopy(model)
    sss = SparseStructureSelection()
    sss.prepare(model, x)  # in eval torch's fused kernel reads the layer's weights and calls none of its children
    assert [n for n, _ in factor_modules(model)] == ["head.0.1"]  # the head's hidden layer only
    assert "fused kernel" in sss.skipped["encoder.layers.0.self_attn"]
    assert "fused kernel" in sss.skipped["encoder.layers.1.linear1"]
    with torch.no_grad():
        assert torch.allclose(model(x), base(x), atol=1e-5)
    with pytest.raises(PrunekitError, match="TransformerEncoderLayer 'encoder.layers.0'.*fused kernel"):
        SparseStructureSelection(channels=False).prepare(copy.deepcopy(base), x)


class _WeightsBlock(corpus.MHABlock):
    """The corpus's pre-norm block calling its attention as users often do: ``attn(h, h, h)[0]``, which computes
    the (unread) attention weights too."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, h)[0]
        return x + self.mlp(self.norm2(x))


def test_an_attention_branch_computing_unread_attention_weights_gets_a_factor_and_a_zero_one_goes():
    torch.manual_seed(0)
    net = corpus.build("mha-transformer")
    model = corpus.TinyTransformer(_WeightsBlock, dim=16, heads=2).eval()
    net = corpus.Network("weights", model, net.inputs, "hand-written")
    sss = SparseStructureSelection(channels=False)
    sss.prepare(model, net.inputs)
    attn = {m.branch: m for _, m in factor_modules(model) if isinstance(m, BlockScale) and m.branch.endswith("attn")}
    assert sorted(attn) == ["blocks.0.attn", "blocks.1.attn"]
    with torch.no_grad():
        attn["blocks.1.attn"].factor.zero_()
    small, before, after = _finalize_exact(sss, net)
    assert isinstance(small.blocks[1].attn, ZeroBranch) and type(small.blocks[0].attn) is nn.MultiheadAttention
    assert before - after == 4 * 16 * 16 + 4 * 16 + 2 * 16 + 4  # the attention's weights and biases, its norm,
    #                                                             the four block factors (folded)
