"""Model zoo: every model builds and runs; parameter and MAC counts match the papers; residual protocol."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import prunekit
from prunekit import io, metrics, models
from prunekit.errors import PrunekitError
from prunekit.models.common import ResidualBlock

# Exact counts at each model's default input shape and class count; MACs = conv + linear, per sample.
PARAMS = {
    "lenet-300-100": 266_610, "lenet5": 431_080, "nin": 966_986, "vgg16": 14_724_042, "vgg19": 20_035_018,
    "resnet20": 272_474, "resnet32": 466_906, "resnet44": 661_338, "resnet56": 855_770,
    "resnet110": 1_730_714, "resnet18": 11_689_512, "resnet50": 25_557_032, "alexnet": 61_100_840,
}
MACS = {
    "lenet-300-100": 266_200, "lenet5": 2_293_000, "nin": 222_486_528, "vgg16": 313_201_664,
    "vgg19": 398_136_320, "resnet20": 40_813_184, "resnet32": 69_124_736, "resnet44": 97_436_288,
    "resnet56": 125_747_840, "resnet110": 253_149_824, "resnet18": 1_814_073_344,
    "resnet50": 4_089_184_256, "alexnet": 714_188_480,
}
CIFAR_RESNETS = ["resnet20", "resnet32", "resnet44", "resnet56", "resnet110"]
RESNETS = [*CIFAR_RESNETS, "resnet18", "resnet50"]
# The 2 projection shortcuts ("option B") of the CIFAR ResNets; the paper's option A has none.
PROJ_PARAMS, PROJ_MACS = 16 * 32 + 2 * 32 + 32 * 64 + 2 * 64, 16 * 32 * 16 * 16 + 32 * 64 * 8 * 8


def meta_counts(name: str, **kwargs: object) -> metrics.Counts:
    with torch.device("meta"):
        model = models.create(name, **kwargs)
    return metrics.count(model, torch.zeros(1, *model.input_shape))


def test_registry_lists_every_family() -> None:
    assert set(PARAMS) <= set(models.names())  # other tests may register toy models of their own
    assert models.names() == sorted(models.names())


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_exact_param_and_mac_counts(name: str) -> None:
    c = meta_counts(name)
    assert c.params == PARAMS[name]
    assert c.macs_of("Conv2d", "Linear") == MACS[name]
    assert c.macs > c.macs_of("Conv2d", "Linear") or name == "lenet-300-100"  # pools / BN counted too
    assert f"{PARAMS[name]:,}" in models.describe(name)  # the docstring states the pinned count


# Published figures, each with half a unit of its last printed digit as tolerance.
PUBLISHED_PARAMS = {
    # He et al. 2016, table 6 (option A shortcuts: ours minus the two projections)
    "resnet20": (0.27e6, 0.005e6, -PROJ_PARAMS), "resnet32": (0.46e6, 0.005e6, -PROJ_PARAMS),
    "resnet44": (0.66e6, 0.005e6, -PROJ_PARAMS), "resnet56": (0.85e6, 0.005e6, -PROJ_PARAMS),
    "resnet110": (1.7e6, 0.05e6, -PROJ_PARAMS),
    "nin": (0.97e6, 0.005e6, 0),  # IHT paper / Lin et al.: ~0.97M
    "vgg16": (1.5e7, 0.05e7, 512 * 512 + 512),  # Li et al. 2017 (their classifier has one more 512x512 fc)
    "vgg19": (20.04e6, 0.005e6, 0),  # Network Slimming, table 1
    "resnet18": (11.69e6, 0.005e6, 0), "resnet50": (25.56e6, 0.005e6, 0),  # torchvision
    "alexnet": (61.1e6, 0.05e6, 0),
}
PUBLISHED_MACS = {  # conv + linear
    "resnet18": 1.82e9, "resnet50": 4.09e9, "resnet56": 125e6, "vgg16": 313e6, "alexnet": 0.714e9,
}


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMS))
def test_params_match_published_figures(name: str) -> None:
    value, half_unit, adjust = PUBLISHED_PARAMS[name]
    assert abs(PARAMS[name] + adjust - value) <= half_unit


@pytest.mark.parametrize("name", sorted(PUBLISHED_MACS))
def test_macs_match_published_figures(name: str) -> None:
    assert MACS[name] == pytest.approx(PUBLISHED_MACS[name], rel=0.01)


def test_cifar_resnet_option_a_equivalents_match_paper_macs() -> None:
    # ResNet-56 with option A shortcuts is the widely quoted 125.49M MACs, ResNet-20 40.55M
    assert MACS["resnet56"] - PROJ_MACS == 125_485_696
    assert MACS["resnet20"] - PROJ_MACS == 40_551_040


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_every_model_builds_and_runs(name: str) -> None:
    torch.manual_seed(0)
    model = models.create(name).eval()
    c, h, w = model.input_shape
    if h == 224:  # ImageNet models run at a reduced resolution to keep the suite fast
        h = w = 64
    with torch.no_grad():
        out = model(torch.randn(2, c, h, w))
    assert out.shape == (2, 1000 if model.input_shape[1] == 224 else 10)
    assert torch.isfinite(out).all()
    assert io.factory_of(model) == {"name": name, "kwargs": {}}
    # every layer is of a type prunekit.io can describe
    for mod_name, m in model.named_modules():
        if mod_name:
            assert io.module_spec(m) is not None, mod_name


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_num_classes_and_in_channels_on_meta(name: str) -> None:
    with torch.device("meta"):
        model = models.create(name, num_classes=7, in_channels=2)
    assert all(p.is_meta for p in model.parameters())
    assert io.factory_of(model) == {"name": name, "kwargs": {"num_classes": 7, "in_channels": 2}}
    assert model.input_shape[0] == 2
    out = model(torch.zeros(3, *model.input_shape, device="meta"))
    assert out.shape == (3, 7)


def test_example_input() -> None:
    model = models.create("lenet5", input_size=8)
    assert models.example_input(model, 4).shape == (4, 1, 8, 8)


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(PrunekitError, match="unknown model 'resnet57'.*resnet56"):
        models.create("resnet57")


def test_bad_arguments_raise_prunekit_error() -> None:
    with pytest.raises(PrunekitError, match="no argument.*depth.*valid arguments: num_classes"):
        models.create("resnet20", depth=3)
    with pytest.raises(PrunekitError, match="JSON"):
        models.create("resnet20", num_classes=object())
    with pytest.raises(PrunekitError, match="num_classes must be an integer"):
        models.create("resnet20", num_classes=0)
    with pytest.raises(PrunekitError, match="input_size"):
        models.create("lenet5", input_size=10, padding=0)


def test_register_rejects_duplicates() -> None:
    with pytest.raises(ValueError, match="already registered"):
        models.register("resnet20")(lambda: nn.Linear(1, 1))


def test_lenet5_is_caffe_lenet() -> None:
    model = models.create("lenet5")
    names = [n for n, _ in model.named_children()]
    assert names == ["conv1", "relu1", "pool1", "conv2", "relu2", "pool2", "flatten", "fc1", "relu3", "fc2"]
    assert (model.conv1.out_channels, model.conv2.out_channels, model.fc1.out_features) == (20, 50, 500)
    assert model.conv1.padding == (0, 0) and model.fc1.in_features == 800
    assert isinstance(model.relu1, nn.ReLU) and isinstance(model.relu2, nn.ReLU)
    plain = models.create("lenet5", conv_relu=False)
    assert isinstance(plain.relu1, nn.Identity) and isinstance(plain.relu2, nn.Identity)
    assert sum(p.numel() for p in plain.parameters()) == 431_080
    # relu1 sees conv1's output: forward hooks can measure APoZ
    seen = {}
    model.relu1.register_forward_hook(lambda m, i, o: seen.setdefault("relu1", o))
    model(torch.randn(1, 1, 28, 28))
    assert seen["relu1"].shape == (1, 20, 24, 24) and (seen["relu1"] >= 0).all()


def test_lenet5_pads_small_inputs() -> None:
    model = models.create("lenet5", input_size=8)
    assert model.conv1.padding == (2, 2) and model.conv2.padding == (2, 2)
    assert model.fc1.in_features == 50 * 2 * 2
    assert model(torch.randn(3, 1, 8, 8)).shape == (3, 10)
    assert metrics.count(model, torch.zeros(1, 1, 8, 8)).params == 131_080


def test_lenet_300_100_input_size() -> None:
    model = models.create("lenet-300-100", input_size=8)
    assert model.fc1.in_features == 64
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)


def test_init_follows_papers() -> None:
    torch.manual_seed(0)
    model = models.create("resnet56")
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)
    w = model.layer3[0].branch.conv1.weight  # 64 x 32 x 3 x 3, Kaiming normal fan_out: std sqrt(2 / 576)
    assert w.std().item() == pytest.approx((2 / (64 * 9)) ** 0.5, rel=0.1)


def _blocks(model: nn.Module) -> list[ResidualBlock]:
    return [m for m in model.modules() if isinstance(m, ResidualBlock)]


@pytest.mark.parametrize("name", RESNETS)
def test_residual_block_protocol(name: str) -> None:
    with torch.device("meta"):
        model = models.create(name)
    expected = {"resnet18": 8, "resnet50": 16}.get(name, (int(name[6:]) - 2) // 2)
    blocks = _blocks(model)
    assert len(blocks) == expected
    for stage in ("layer1", "layer2", "layer3"):
        assert isinstance(getattr(model, stage), nn.Sequential)
    assert isinstance(model.conv1, nn.Conv2d) and isinstance(model.bn1, nn.BatchNorm2d)
    assert isinstance(model.fc, nn.Linear)
    for b in blocks:
        assert type(b) is ResidualBlock
        assert [n for n, _ in b.named_children()] == ["branch", "shortcut", "act"]
        assert type(b.branch) is nn.Sequential and isinstance(b.branch[-1], nn.BatchNorm2d)
        assert type(b.act) is nn.ReLU and not b.act.inplace
        for m in b.branch:
            assert type(m) in (nn.Conv2d, nn.BatchNorm2d, nn.ReLU)
            assert not getattr(m, "inplace", False)
        if isinstance(b.shortcut, nn.Identity):
            assert b.branch[0].in_channels == b.branch[-1].num_features
        else:
            conv, bn = b.shortcut
            assert type(conv) is nn.Conv2d and conv.kernel_size == (1, 1) and type(bn) is nn.BatchNorm2d
            assert conv.stride == b.branch[0].stride or conv.stride == b.branch[3].stride


def test_residual_block_forward_is_act_of_sum() -> None:
    torch.manual_seed(0)
    model = models.create("resnet20").eval()
    for b in (model.layer1[0], model.layer2[0]):  # identity and projection shortcut
        x = torch.randn(2, b.branch[0].in_channels, 16, 16)
        with torch.no_grad():
            assert torch.equal(b(x), torch.relu(b.branch(x) + b.shortcut(x)))


def test_residual_block_spec_round_trip() -> None:
    block = models.create("resnet20").layer2[0]
    shell = ResidualBlock.from_config({})
    assert [n for n, _ in shell.named_children()] == ["branch", "shortcut", "act"]
    spec = io.module_spec(block)
    rebuilt = io.build_module(spec)
    assert type(rebuilt) is ResidualBlock and io.module_spec(rebuilt) == spec
    with pytest.raises(PrunekitError):
        ResidualBlock.from_config({"x": 1})


def test_save_load_thinned_resnet(tmp_path) -> None:
    torch.manual_seed(0)
    model = models.create("resnet20", num_classes=5).eval()
    # thin layer1.1's inner conv from 16 to 8 channels, as channel pruning would
    br = model.layer1[1].branch
    keep = torch.arange(8)
    conv1 = nn.Conv2d(16, 8, 3, padding=1, bias=False)
    conv1.weight.data = br.conv1.weight.data[keep].clone()
    bn1 = nn.BatchNorm2d(8).eval()
    for attr in ("weight", "bias", "running_mean", "running_var"):
        getattr(bn1, attr).data = getattr(br.bn1, attr).data[keep].clone()
    conv2 = nn.Conv2d(8, 16, 3, padding=1, bias=False)
    conv2.weight.data = br.conv2.weight.data[:, keep].clone()
    br.conv1, br.bn1, br.conv2 = conv1, bn1, conv2
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = model(x)
    path = prunekit.save(model, tmp_path / "m.safetensors")
    loaded = prunekit.load(path)
    with torch.no_grad():
        assert torch.equal(loaded(x), want)
    assert loaded.layer1[1].branch.conv1.out_channels == 8
    assert metrics.count(loaded, x).params == metrics.count(model, x).params


def test_torchvision_names() -> None:
    pytest.importorskip("torchvision")
    model = models.create("torchvision:resnet18", num_classes=10)
    assert io.factory_of(model) == {"name": "torchvision:resnet18", "kwargs": {"num_classes": 10}}
    assert sum(p.numel() for p in model.parameters()) == 11_689_512 - 512 * 990 - 990
    with pytest.raises(PrunekitError):
        models.create("torchvision:nonexistent")


def test_torchvision_missing_is_a_clear_error() -> None:
    try:
        import torchvision  # noqa: F401
    except Exception:
        with pytest.raises(PrunekitError, match="needs torchvision"):
            models.create("torchvision:resnet18")
    else:
        pytest.skip("torchvision imports here")


def test_vgg16_imagenet_counts_and_torchvision_layer_names():
    import torch

    from prunekit import metrics, models

    with torch.device("meta"):
        m = models.create("vgg16-imagenet")
    assert sum(p.numel() for p in m.parameters()) == 138_357_544
    c = metrics.count(m, torch.zeros(1, 3, 224, 224, device="meta"))
    assert c.macs_of("Conv2d", "Linear") == 15_470_264_320
    assert isinstance(m.features[28], torch.nn.Conv2d) and m.classifier[0].out_features == 4096
    assert m.classifier[3].in_features == 4096 and m.input_shape == (3, 224, 224)
