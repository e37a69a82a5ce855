"""The comparison controls: random filter pruning and torch.nn.utils.prune's global magnitude pruning."""

from __future__ import annotations

import pytest
import torch

from prunekit import data, metrics, models
from prunekit.engine import Trainer, TrainerConfig, seed_everything
from prunekit.errors import PrunekitError
from prunekit.methods import get
from prunekit.methods.iht import hard_threshold_masks, prunable_layers

X = torch.zeros(1, 3, 32, 32)


def _kept_channels(model):
    return {n: m.weight.shape[0] for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)}


def test_random_filter_meets_the_macs_budget_and_the_seed_fixes_the_draw():
    base = metrics.count(models.create("resnet20"), X).macs
    picks = []
    for seed in (0, 0, 1):
        seed_everything(3)
        m = models.create("resnet20")
        method = get("random-filter")(macs_budget=0.4, seed=seed)
        method.prune(m, X)
        assert metrics.count(m, X).macs / base == pytest.approx(0.4, abs=0.01)
        picks.append([n.weight.detach().flatten()[:50].clone() for n in m.modules() if isinstance(n, torch.nn.Conv2d)])
    same = all(torch.equal(a, b) for a, b in zip(picks[0], picks[1], strict=True))
    differ = any(a.shape != b.shape or not torch.equal(a, b) for a, b in zip(picks[0], picks[2], strict=True))
    assert same and differ


def test_random_filter_is_not_the_norm_choice():
    seed_everything(0)
    a = models.create("resnet20")
    b = models.create("resnet20")
    b.load_state_dict(a.state_dict())
    get("random-filter")(keep_ratio=0.5, coupled=False, seed=0).prune(a, X)
    get("l1-filter")(keep_ratio=0.5).prune(b, X)
    assert _kept_channels(a) == _kept_channels(b)  # same widths: only which filters differs
    assert any(not torch.equal(pa, pb) for pa, pb in zip(a.parameters(), b.parameters(), strict=True))


def test_random_filter_rejects_a_bad_seed():
    with pytest.raises(PrunekitError, match="seed must be an integer"):
        get("random-filter")(seed=-1)


def test_torch_global_equals_one_global_topk_and_keeps_parameters_in_place():
    seed_everything(0)
    m = models.create("lenet5")
    ref = {n: l.weight.detach().clone() for n, l in prunable_layers(m).items()}
    opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    before = [(n, id(p)) for n, p in m.named_parameters()]
    method = get("torch-global")(keep=0.1)
    method.threshold(m, [opt])
    assert before == [(n, id(p)) for n, p in m.named_parameters()]  # same objects, same order: optimizer intact
    assert not any(n.endswith(("_orig", "_mask")) for n, _ in m.named_parameters())
    assert not any(n.endswith("_mask") for n, _ in m.named_buffers())
    expected = hard_threshold_masks(ref, 0.1, "global")
    total = sum(w.numel() for w in ref.values())
    kept = 0
    for name, layer in prunable_layers(m).items():
        assert torch.equal(layer.weight != 0, expected[name])
        kept += int((layer.weight != 0).sum())
    assert kept == int(0.1 * total + 0.5)
    per_layer = [float((layer.weight != 0).float().mean()) for layer in prunable_layers(m).values()]
    assert max(per_layer) - min(per_layer) > 0.2  # global ranking: densities differ across layers


def test_torch_global_trains_with_frozen_zeros_and_ends_sparse(tmp_path):
    train = data.load("synthetic", "train", n=96, shape=(1, 28, 28), num_classes=10, seed=0)
    test = data.load("synthetic", "test", n=32, shape=(1, 28, 28), num_classes=10, seed=0)
    seed_everything(0)
    model = models.create("lenet5")
    method = get("torch-global")(keep=0.2)
    tr = Trainer(model, train, test, config=TrainerConfig(batch_size=32, device="cpu", quiet=True),
                 callbacks=[method], out_dir=tmp_path)
    tr.fit(method.stages(2))
    res = method.finalize(tr.raw_model, tr.example_inputs)
    assert res.sparse
    layers = prunable_layers(res.model)
    kept = sum(int((m.weight != 0).sum()) for m in layers.values())
    assert kept == int(0.2 * sum(m.weight.numel() for m in layers.values()) + 0.5)


def test_torch_global_refuses_per_layer_options():
    with pytest.raises(PrunekitError, match="global"):
        get("torch-global")(scope="layer")
