"""Every paper method on every corpus network (issue 18): a few steps on random data through the declared
contract (README's own loop), then finalize. Each either delivers a smaller network (IHT: a sparse one)
whose output equals the trained network's just before finalize (removal equals masking, also verified by
the surgery inside), or refuses in one PrunekitError line, at bind time, naming the layer."""

from __future__ import annotations

import pytest

from prunekit.testing import corpus

# the networks each method refuses, and why (a refusal counts as a failure; issue 18's targets in TARGET)
REFUSED = {
    "iht": set(),
    # ConvNeXt-V2: every group is under a LayerNorm or a GRN (both compute over the channels)
    "sght": {"hf-convnextv2"},
    # ConvNeXt-V2: as for SGHT; the pwconv1 groups' GELU reads them, but the GRN after it renormalises
    "trimming": {"hf-convnextv2"},
    "sss": set(),
}
TARGET = {"iht": 0, "sght": 2, "sss": 4, "trimming": 3}  # at most this many failures per method


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("method", sorted(corpus.METHODS))
def test_every_method_on_every_corpus_network(method: str) -> None:
    check = corpus.METHODS[method]
    failed = {}
    for name in corpus.NAMES:
        out = check(corpus.build(name))  # a raw KeyError / shape error / a refusal after training fails here
        for msg in (out.refused or {}).values():
            assert "\n" not in msg and "'" in msg, (name, msg)  # one line, a quoted layer / group name
            assert out.note == "refused at bind", (name, out.note, msg)  # no group fails after training
            failed[name] = msg
        if not out.refused:
            assert out.done == 1, (name, out.note, out.max_diff)  # smaller (IHT: sparse) and exact
    assert set(failed) == REFUSED[method], failed
    assert len(failed) <= TARGET[method]


def test_the_analysis_describes_groups_and_says_why_a_method_skips_one() -> None:
    from prunekit.methods import analysis, budget

    net = corpus.build("hf-convnextv2")
    an = analysis.analyse(net.model, net.inputs)
    pw = an.groups[1]
    assert pw.activation == "gelu" and pw.params[0].endswith("grn.weight") and not pw.renormalising
    assert an.groups[0].renormalising and an.groups[0].depthwise  # the residual stream: LayerNorms, dwconvs
    assert len(an.blocks) == 3
    groups = budget.filter_groups(net.model, net.inputs)
    assert not groups and len(groups.skipped) == 5
    assert "normalises over these channels" in groups.skipped[an.groups[0].name]
    assert "not masking" in groups.skipped[pw.name] or "does not equal masking" in groups.skipped[pw.name]


def test_hard_threshold_keeps_whole_heads_and_zeroes_bare_per_channel_parameters() -> None:
    from prunekit.methods import budget
    from prunekit.methods.filters import FilterThreshold

    net = corpus.build("view-transformer")
    groups = budget.filter_groups(net.model, net.inputs)
    attn = next(g for g in groups if g.head_dim)
    keep = budget.whole_heads(groups, [g.size // 2 - 1 for g in groups])
    assert keep[groups.index(attn)] == attn.size // 2 - attn.head_dim  # 15 channels -> one head of 8
    FilterThreshold(net.model, groups, keep)()
    per_head = (net.model.get_submodule(attn.name).weight.abs().sum(1) != 0).view(attn.heads, attn.head_dim)
    assert int(per_head.any(1).sum()) == 1 and bool((per_head.all(1) == per_head.any(1)).all())  # whole heads

    # a group holding a bare per-channel parameter (ConvNeXt's layer-scale): zeroed with its channel
    net = corpus.build("hf-convnext")
    from prunekit.surgery import channel_groups

    stream = channel_groups(net.model, net.inputs)[0]
    scale = next(n for n in stream.norms if n.endswith("layer_scale_parameter"))
    h = FilterThreshold(net.model, [stream], [stream.size - 3])
    h()
    assert int((net.model.get_parameter(scale) == 0).sum()) == 3


def test_sss_places_factors_on_heads_blocks_and_activated_channels_from_the_analysis() -> None:
    from prunekit.methods import factors

    net = corpus.build("hf-vit")
    sites, skipped = factors.analysis_sites(net.model, net.inputs, heads=True)
    assert sorted({s.kind for s in sites}) == ["block", "channel", "head"]
    assert all(s.layer.endswith("v_proj") for s in sites if s.kind == "head")
    assert all(s.layer.endswith("fc1") and s.last for s in sites if s.kind == "channel")  # GELU after fc1
    # two residual sums in one layer: a block factor per branch, after its output projection
    assert [s.layer.rpartition("layers.0.")[2] for s in sites if s.kind == "block" and s.block == "vit.layers.0"] \
        == ["attention.o_proj", "mlp.fc2"]
    assert "vit.layers.0" not in skipped
    net = corpus.build("hf-mobilenetv2")
    sites, _ = factors.analysis_sites(net.model, net.inputs)
    kinds = [s.kind for s in sites]
    assert kinds.count("block") == 10 and kinds.count("channel") >= 16
    expand = next(s for s in sites if s.kind == "channel" and "expand" not in s.layer and "conv_3x3" in s.layer)
    assert expand.target.endswith("conv_3x3.normalization")  # after the depthwise conv, where channels leave
