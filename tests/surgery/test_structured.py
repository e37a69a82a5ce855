"""Channel removal (prunekit.surgery.structured): plans resolved on coupled groups and removed exactly (zeroed
channels leave the outputs unchanged on the test models, the zoo and torchvision), hand-checked counts, plan
validation with min_channels / clamp / round_to, zero-channel and grouped-conv plans, removal verified against
masking on every call (the model restored when it differs), and attention heads removed whole."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from prunekit.errors import PrunekitError
from prunekit.surgery import (
    channel_groups,
    conv_group_plan,
    removable_blocks,
    remove_blocks,
    remove_channels,
    zero_channel_plan,
)
from tests.surgery.nets import (
    TEST_MODELS,
    X16,
    ZOO,
    GroupedNet,
    TinyResNet,
    TinyVGG,
    assert_plain,
    prune_zeroed,
    randomise,
    widths,
    zero_channels,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one intra-op thread is as fast


# ---------------------------------------------------------------------------------------------------------
# the invariant on the test models


@pytest.mark.parametrize("name", list(TEST_MODELS))
def test_removing_zeroed_channels_keeps_outputs(name: str) -> None:
    torch.manual_seed(0)
    model = randomise(TEST_MODELS[name]())
    x = torch.randn(*X16)
    before = sum(p.numel() for p in model.parameters())
    diff, report = prune_zeroed(model, x)
    assert diff <= 1e-5
    assert report.params_before == before
    assert report.params_after == sum(p.numel() for p in model.parameters()) < before
    assert channel_groups(model, x)  # the pruned model can be analysed (and pruned) again
    diff2, _ = prune_zeroed(model, x, frac=0.3, seed=1)
    assert diff2 <= 1e-5


def test_flatten_into_first_linear() -> None:
    model = randomise(TinyVGG())
    x = torch.randn(*X16)
    groups = {g.name: g for g in channel_groups(model, x)}
    assert set(groups) == {"features.0", "features.4", "classifier.0"}
    zero_channels(model, groups["features.4"], [1, 5, 6])
    with torch.no_grad():
        y0 = model(x)
    report = remove_channels(model, {"features.4": [1, 5, 6]}, x)
    assert model.classifier[0].in_features == (12 - 3) * 16
    assert report.layers["classifier.0"].in_before == 192 and report.layers["classifier.0"].in_after == 144
    assert model.features[5].num_features == 9
    with torch.no_grad():
        assert float((model(x) - y0).abs().max()) <= 1e-5


def test_residual_coupling_is_reported() -> None:
    model = randomise(TinyResNet())
    x = torch.randn(*X16)
    report = remove_channels(model, {"layer1.1.branch.3": [0, 3]}, x)
    assert report.removed == {"stem.0": [0, 3]}
    assert set(report.coupled["layer1.1.branch.3"]) == {"stem.0", "layer1.0.branch.3"}
    for conv in ("stem.0", "layer1.0.branch.3", "layer1.1.branch.3"):
        assert model.get_submodule(conv).out_channels == 6
    for conv in ("layer1.0.branch.0", "layer1.1.branch.0", "layer2.0.branch.0", "layer2.0.shortcut.0"):
        assert model.get_submodule(conv).in_channels == 6
    assert report.layers["layer2.0.shortcut.0"].in_before == 8
    assert "stem.0" in report.summary()
    assert report.to_dict()["removed"] == {"stem.0": [0, 3]}


def test_two_entries_on_one_group_are_merged() -> None:
    model = TinyResNet()
    x = torch.randn(*X16)
    report = remove_channels(model, {"stem.0": [1], "layer1.0.branch.3": [2, 1], "layer1.0.branch.4": [7]}, x)
    assert report.removed == {"stem.0": [1, 2, 7]}
    assert model.stem[0].out_channels == 5


def test_grouped_conv_needs_balanced_or_whole_groups() -> None:
    model = randomise(GroupedNet())
    x = torch.randn(*X16)
    groups = {g.name: g for g in channel_groups(model, x)}
    assert groups["reduce.0"].chunks == 4 and groups["grouped.0"].chunks == 4
    state = copy.deepcopy(model.state_dict())
    with pytest.raises(PrunekitError, match=r"grouped conv 'grouped.0' \(groups=4\)"):
        remove_channels(model, {"reduce.0": [0, 1]}, x)  # two inputs of conv group 0 only
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())  # untouched
    remove_channels(model, {"reduce.0": [0, 4, 8, 12]}, x)  # one input from each group
    assert model.grouped[0].in_channels == 12 and model.grouped[0].groups == 4
    assert_plain(model)


def test_grouped_conv_whole_group_removal_is_exact() -> None:
    model = randomise(GroupedNet())
    x = torch.randn(*X16)
    plan = conv_group_plan(model, x, "grouped.0", [1, 3])
    assert plan == {"grouped.0": [3, 4, 5, 9, 10, 11], "reduce.0": [4, 5, 6, 7, 12, 13, 14, 15]}
    gs = {g.name: g for g in channel_groups(model, x)}
    zero_channels(model, gs["grouped.0"], plan["grouped.0"])
    with torch.no_grad():
        y0 = model(x)
    remove_channels(model, plan, x)
    conv = model.grouped[0]
    assert (conv.in_channels, conv.out_channels, conv.groups) == (8, 6, 2)
    assert_plain(model)
    with torch.no_grad():
        assert float((model(x) - y0).abs().max()) <= 1e-5
    with pytest.raises(PrunekitError, match="not a grouped"):
        conv_group_plan(model, x, "expand.0", [0])


# ---------------------------------------------------------------------------------------------------------
# counts


def conv_linear_macs(model: nn.Module, x: torch.Tensor) -> int:
    total = 0

    def hook(m: nn.Module, _inp: object, out: torch.Tensor) -> None:
        nonlocal total
        if isinstance(m, nn.Conv2d):
            total += out[0].numel() * (m.in_channels // m.groups) * math.prod(m.kernel_size)
        else:
            total += m.in_features * m.out_features

    hs = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    with torch.no_grad():
        model(x[:1])
    for h in hs:
        h.remove()
    return total


def test_param_and_mac_counts_match_hand_computation() -> None:
    model = TinyVGG()
    x = torch.randn(1, 3, 16, 16)
    remove_channels(model, {"features.0": [0, 1, 2], "features.4": list(range(8)), "classifier.0": [0, 1]}, x)
    c1, c2, h = 5, 4, 18  # widths left: conv1 8-3, conv2 12-8, hidden 20-2
    params = (3 * 9 * c1 + c1) + 2 * c1 + (c1 * 9 * c2 + c2) + 2 * c2 + (c2 * 16 * h + h) + (h * 5 + 5)
    macs = 16 * 16 * c1 * 3 * 9 + 8 * 8 * c2 * c1 * 9 + c2 * 16 * h + h * 5
    assert sum(p.numel() for p in model.parameters()) == params
    assert conv_linear_macs(model, x) == macs


# ---------------------------------------------------------------------------------------------------------
# validation, min_channels, clamp, round_to


def test_bad_plans_are_rejected_and_leave_the_model_alone() -> None:
    model = TinyResNet()
    x = torch.randn(*X16)
    before = widths(model)
    cases = [
        ({"nope": [0]}, "no layer 'nope'"),
        ({"stem.0": [8]}, "out of range"),
        ({"stem.0": [-1]}, "out of range"),
        ({"stem.0": [0.5]}, "not an integer"),
        ({"stem.0": [True]}, "not an integer"),
        ({"stem.0": "01"}, "sequence of channel indices"),
        ({"fc": [0]}, "outputs of the model"),
        ({"stem.2": [0]}, "no removable output channels"),
        ({"stem.0": list(range(8))}, r"'stem.0' would leave 0 \(min_channels=3\)"),
        ({"layer1.0.branch.3": list(range(6))}, r"'layer1.0.branch.3' \(coupled group of 'stem.0'\)"),
        ([("stem.0", [0])], "must map layer names"),
    ]
    for plan, msg in cases:
        with pytest.raises(PrunekitError, match=msg):
            remove_channels(model, plan, x, min_channels=3)  # type: ignore[arg-type]
        assert widths(model) == before
    with pytest.raises(PrunekitError, match="min_channels"):
        remove_channels(model, {"stem.0": [0]}, x, min_channels=0)


def test_clamp_and_round_to() -> None:
    model = TinyResNet()
    x = torch.randn(*X16)
    report = remove_channels(model, {"stem.0": [7, 6, 5, 4, 3, 2, 1, 0]}, x, min_channels=2, clamp=True)
    assert report.removed == {"stem.0": [2, 3, 4, 5, 6, 7]}  # the last-listed (0, 1) are kept
    assert "clamped" in report.adjusted["stem.0"]
    assert model.stem[0].out_channels == 2
    report = remove_channels(model, {"layer2.0.branch.0": list(range(11))}, x, round_to=4)
    assert model.layer2[0].branch[0].out_channels == 8  # 5 left -> rounded up to 8
    assert report.removed == {"layer2.0.branch.0": list(range(8))}
    assert "round_to=4" in report.adjusted["layer2.0.branch.0"]


def test_surgery_keeps_requires_grad_and_training_mode() -> None:
    model = TinyResNet().train()
    model.stem[0].weight.requires_grad_(False)
    remove_channels(model, {"stem.0": [1]}, torch.randn(*X16))
    assert model.training and not model.stem[0].weight.requires_grad
    assert model.layer1[0].branch[0].weight.requires_grad


def test_empty_plan_is_a_no_op() -> None:
    model = TinyResNet()
    report = remove_channels(model, {"stem.0": []}, torch.randn(*X16))
    assert report.removed == {} and report.params_after == report.params_before


# ---------------------------------------------------------------------------------------------------------
# zero-channel plans


def test_zero_channel_plan_finds_exactly_the_dead_channels() -> None:
    model = randomise(TinyResNet())
    x = torch.randn(*X16)
    groups = {g.name: g for g in channel_groups(model, x)}
    assert zero_channel_plan(model, x) == {}
    zero_channels(model, groups["stem.0"], [2, 5])
    zero_channels(model, groups["layer1.0.branch.0"], [4])
    # weights zero but BN running mean makes a constant: not exact to remove, unless asked to ignore it
    with torch.no_grad():
        model.layer2[1].branch[3].weight[3] = 0
        model.layer2[1].branch[4].bias[3] = 0
    plan = zero_channel_plan(model, x)
    assert plan == {"stem.0": [2, 5], "layer1.0.branch.0": [4]}
    # a residual channel is only dead when every producer of the sum is zero
    with torch.no_grad():
        model.layer1[1].branch[3].weight[2, 0, 0, 0] = 0.1
        model.layer1[1].branch[4].weight[2] = 1.0
    assert zero_channel_plan(model, x) == {"stem.0": [5], "layer1.0.branch.0": [4]}
    # a BN with scale and shift 0 kills its channel whatever the conv does (slimming / SSS)
    with torch.no_grad():
        model.layer1[1].branch[4].weight[2] = 0
        model.layer1[1].branch[4].bias[2] = 0
    assert zero_channel_plan(model, x)["stem.0"] == [2, 5]
    with torch.no_grad():
        model.layer2[1].branch[4].running_mean[3] = 0
    assert zero_channel_plan(model, x, layers=["layer2.1.branch.0"]) == {}
    plan = zero_channel_plan(model, x)
    with torch.no_grad():
        y0 = model(x)
    remove_channels(model, plan, x)
    with torch.no_grad():
        assert float((model(x) - y0).abs().max()) <= 1e-5


def test_zero_channel_plan_running_stats_switch() -> None:
    model = randomise(TinyVGG())
    x = torch.randn(*X16)
    with torch.no_grad():
        model.features[0].weight[3] = 0
        model.features[0].bias[3] = 0
        model.features[1].bias[3] = 0  # BN shift 0, but running_mean != 0
    assert zero_channel_plan(model, x) == {}
    assert zero_channel_plan(model, x, running_stats=False) == {"features.0": [3]}
    assert zero_channel_plan(model, x, atol=1.0) != {}


# ---------------------------------------------------------------------------------------------------------
# the zoo: the invariant


ZOO_NAMES = ZOO.names() if ZOO is not None else []


def zoo_input(model: nn.Module, batch: int = 2) -> torch.Tensor:
    c, h, w = model.input_shape
    return torch.randn(batch, c, min(h, 64), min(w, 64))


@pytest.mark.skipif(ZOO is None, reason="prunekit.models not available")
@pytest.mark.parametrize("name", ZOO_NAMES)
def test_zoo_removing_zeroed_channels_keeps_outputs(name: str) -> None:
    torch.manual_seed(0)
    model = randomise(ZOO.create(name))
    x = zoo_input(model)
    diff, report = prune_zeroed(model, x)
    assert diff <= 1e-5, name
    assert report.params_after < report.params_before
    blocks = removable_blocks(model)
    if blocks:
        with torch.no_grad():
            last_bn = model.get_submodule(blocks[-1]).branch[-1]
            last_bn.weight.zero_()
            last_bn.bias.zero_()
            y0 = model(x)
        remove_blocks(model, blocks[-1:])
        with torch.no_grad():
            assert float((model(x) - y0).abs().max()) <= 1e-5


# ---------------------------------------------------------------------------------------------------------
# torchvision (when installed)


@pytest.mark.parametrize("arch", ["resnet18", "vgg11_bn", "mobilenet_v2"])
def test_torchvision_models(arch: str) -> None:
    tv = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = randomise(getattr(tv.models, arch)(num_classes=10))
    x = torch.randn(2, 3, 64, 64)
    diff, report = prune_zeroed(model, x, frac=0.3)
    assert diff <= 1e-5
    assert report.params_after < report.params_before
    if arch == "resnet18":
        assert "layer1.0" in removable_blocks(model)
        with torch.no_grad():
            model.layer1[1].bn2.weight.zero_()
            model.layer1[1].bn2.bias.zero_()
            y0 = model(x)
        remove_blocks(model, ["layer1.1"])
        with torch.no_grad():
            assert float((model(x) - y0).abs().max()) <= 1e-5
        with pytest.raises(PrunekitError, match="projection shortcut"):
            remove_blocks(model, ["layer2.0"])


class Scale(nn.Module):
    """A bare per-channel parameter, as a scaling-factor method inserts it."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.rand(c) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale.view(1, -1, 1, 1)


def test_bare_per_channel_parameters_shrink_too() -> None:
    model = randomise(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), Scale(8), nn.ReLU(),
                                    nn.Conv2d(8, 4, 3)))
    x = torch.randn(*X16)
    (g,) = channel_groups(model, x)
    assert g.layers == ("0",) and set(g.norms) == {"1", "2.scale"} and g.consumers == ("4",)
    zero_channels(model, g, [1, 4])
    assert zero_channel_plan(model, x) == {"0": [1, 4]}
    with torch.no_grad():
        y0 = model(x)
    report = remove_channels(model, {"0": [1, 4]}, x)
    assert tuple(model[2].scale.shape) == (6,) and report.layers["2.scale"].out_after == 6
    with torch.no_grad():
        assert float((model(x) - y0).abs().max()) <= 1e-5


def test_zero_plan_skips_group_norm() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.GroupNorm(2, 8), nn.ReLU(), nn.Conv2d(8, 4, 3))
    x = torch.randn(*X16)
    with torch.no_grad():
        model[0].weight[0] = 0
        model[0].bias[0] = 0
        model[1].bias[0] = 0
    assert zero_channel_plan(model, x) == {}
    with pytest.raises(PrunekitError, match="GroupNorm '1' has 2 groups"):
        remove_channels(model, {"0": [0]}, x)
    remove_channels(model, {"0": [0, 1]}, x)
    assert model[1].num_channels == 6 and model[1].weight.shape == (6,)


# ---------------------------------------------------------------------------------------------------------
# removal equals masking (checked on every call)


class Shuffle(nn.Module):
    """Channel shuffle (ShuffleNet): regroups channels by a reshape the dependency graph maps one to one."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        return x.view(b, 2, c // 2, h, w).transpose(1, 2).reshape(b, c, h, w)


def test_removal_is_verified_against_masking() -> None:
    model = randomise(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                    nn.Conv2d(8, 6, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3)))
    x = torch.randn(*X16)
    masked = copy.deepcopy(model)
    with torch.no_grad():  # live channels: the pruned model equals the one reading zeros there
        masked[3].weight[:, [1, 5]] = 0
        y_masked = masked(x)
    report = remove_channels(model, {"0": [1, 5]}, x)
    assert report.verified and report.max_diff <= 1e-5 and not report.approximate
    with torch.no_grad():
        assert float((model(x) - y_masked).abs().max()) <= 1e-5


def test_wrong_surgery_is_caught_and_the_model_restored() -> None:
    model = randomise(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), Shuffle(), nn.ReLU(),
                                    nn.Conv2d(8, 4, 3)))
    x = torch.randn(*X16)
    before = widths(model)
    with torch.no_grad():
        y0 = model(x)
    with pytest.raises(PrunekitError, match=r"group '0' does not equal masking them: .*model was restored") as e:
        remove_channels(model, {"0": [1]}, x)
    assert "\n" not in str(e.value)
    assert widths(model) == before
    with torch.no_grad():
        assert torch.equal(model(x), y0)


def test_layer_norm_groups_are_checked_against_norms_on_the_kept_channels() -> None:
    model = nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8), nn.GELU(), nn.Linear(8, 3)).eval()
    x = torch.randn(4, 6)
    report = remove_channels(model, {"0": [0, 3]}, x)
    assert report.verified and "LayerNorm '1'" in report.approximate["0"]
    assert model[1].normalized_shape == (6,)


def test_model_outputs_of_any_structure_are_compared() -> None:
    from prunekit.surgery.structured import compare_outputs

    a = {"logits": torch.ones(2, 3), "hidden": (torch.zeros(2), torch.arange(3))}
    assert compare_outputs(a, {"logits": torch.ones(2, 3) + 1e-7, "hidden": (torch.zeros(2), torch.arange(3))})[1] == ""
    assert "logits" in compare_outputs(a, {"logits": torch.ones(2, 3) * 1.01, "hidden": a["hidden"]})[1]
    assert "shape" in compare_outputs(a, {"logits": torch.ones(2, 2), "hidden": a["hidden"]})[1]


# ---------------------------------------------------------------------------------------------------------
# attention heads


def _dead(model: nn.Module, layers: list[str], rows: list[int]) -> None:
    with torch.no_grad():
        for n in layers:
            m = model.get_submodule(n)
            m.weight[rows] = 0
            if m.bias is not None:
                m.bias[rows] = 0


def test_hf_vit_heads_are_never_regrouped() -> None:
    """Dead q/k/v channels inside heads used to be removed and silently regroup the heads (outputs changed)."""
    from prunekit.testing import corpus

    net = corpus.build("hf-vit")
    attn = "vit.layers.0.attention"
    qkv = [f"{attn}.{p}_proj" for p in "qkv"]
    (g,) = [g for g in channel_groups(net.model, net.inputs) if g.name == qkv[0]]
    assert (g.heads, g.head_dim) == (4, 8)
    _dead(net.model, qkv, [3, 12])
    with torch.no_grad():
        y0 = corpus.logits(net.model(net.inputs))
    with pytest.raises(PrunekitError, match=r"attention heads of 8 channels.*whole heads only"):
        remove_channels(net.model, {qkv[0]: [3, 12]}, net.inputs)
    _dead(net.model, qkv, list(range(8, 16)))  # head 1 entirely
    with torch.no_grad():
        y1 = corpus.logits(net.model(net.inputs))
    report = remove_channels(net.model, {qkv[0]: list(range(8, 16))}, net.inputs)
    assert report.verified
    a = net.model.get_submodule(attn)
    assert a.num_attention_heads == 3 and a.q_proj.out_features == 24 and a.o_proj.in_features == 24
    with torch.no_grad():
        y2 = corpus.logits(net.model(net.inputs))
    assert float((y2 - y1).abs().max()) <= 1e-5 * float(y1.abs().max()) + 1e-6
    assert not torch.equal(y0, y1)


def test_torch_multihead_attention_loses_whole_heads() -> None:
    from prunekit.testing import corpus

    net = corpus.build("mha-transformer")
    (g,) = [g for g in channel_groups(net.model, net.inputs) if g.name == "patches.proj"]
    assert (g.heads, g.head_dim) == (4, 8)
    with pytest.raises(PrunekitError, match="whole heads"):
        remove_channels(net.model, {"patches.proj": [0]}, net.inputs)
    report = remove_channels(net.model, {"patches.proj": list(range(16, 24))}, net.inputs)
    assert report.verified
    mha = net.model.blocks[0].attn
    assert (mha.embed_dim, mha.num_heads, mha.head_dim) == (24, 3, 8)
    assert mha.in_proj_weight.shape == (72, 24) and mha.out_proj.weight.shape == (24, 24)


def test_zero_plan_lists_whole_dead_heads_only() -> None:
    from prunekit.testing import corpus

    net = corpus.build("hf-vit")
    qkv = [f"vit.layers.0.attention.{p}_proj" for p in "qkv"]
    _dead(net.model, qkv, [3, *range(16, 24)])
    plan = zero_channel_plan(net.model, net.inputs)
    assert plan[qkv[0]] == list(range(16, 24))
    with torch.no_grad():
        y0 = corpus.logits(net.model(net.inputs))
    remove_channels(net.model, {qkv[0]: plan[qkv[0]]}, net.inputs)
    with torch.no_grad():
        assert float((corpus.logits(net.model(net.inputs)) - y0).abs().max()) <= 1e-5


def test_custom_modules_computing_over_channels_are_checked_on_the_kept_channels() -> None:
    """ConvNeXt-V2's GRN divides each channel by the mean response over all channels: removal cannot equal
    masking; the check recomputes GRN on the kept channels and the report says so."""
    from prunekit.testing import corpus

    net = corpus.build("hf-convnextv2")
    layer = "convnextv2.encoder.stages.0.layers.0"
    report = remove_channels(net.model, {f"{layer}.pwconv1": list(range(0, 64, 2))}, net.inputs)
    assert report.verified and "ConvNextV2GRN" in report.approximate[f"{layer}.pwconv1"]
    assert net.model.get_submodule(f"{layer}.grn").weight.shape[-1] == 32
