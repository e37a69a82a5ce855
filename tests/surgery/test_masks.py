"""Unstructured sparsity masks: MaskSet's exact top-k per layer and global, its one rounding rule, masks kept
through momentum and weight decay, its state dict, and refusing a model changed by surgery."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prunekit.errors import PrunekitError
from prunekit.surgery import MaskSet, keep_count, topk_mask
from tests.surgery.nets import X, net

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one intra-op thread is as fast


def test_from_topk_keeps_exactly_k_per_layer() -> None:
    model = net()
    with torch.no_grad():
        model[4].weight[:, :100] = 0.5  # many ties at the threshold
    ms = MaskSet.from_topk(model, 0.25)
    assert ms.layers == ["0", "4", "6"]
    for name, n in (("0", 216), ("4", 4608), ("6", 64)):
        assert int(ms.mask(name).sum()) == round(0.25 * n)
        w = model.get_submodule(name).weight.detach().abs()
        kept, dropped = w[ms.mask(name)], w[~ms.mask(name)]
        assert kept.min() >= dropped.max()
    counts = MaskSet.from_topk(model, {"0": 10, "6": 0.5})
    assert counts.layers == ["0", "6"] and int(counts.mask("0").sum()) == 10 and int(counts.mask("6").sum()) == 32
    sp = counts.sparsity()
    assert sp["kept"] == {"0": 10, "6": 32}
    assert sp["layers"]["6"] == pytest.approx(0.5)
    assert sp["global"] == pytest.approx(1 - 42 / 280)


def test_one_rounding_rule_for_every_topk() -> None:
    """A keep fraction rounds half up (not Python's half-to-even) in MaskSet, IHT and torch-global alike."""
    assert [keep_count(0.5, n) for n in (1, 3, 5, 7)] == [1, 2, 3, 4]  # round(2.5) would give 2
    assert keep_count(0.01, 10) == 1 and keep_count(1.0, 10) == 10  # never empty, never more than n
    model = nn.Sequential(nn.Linear(5, 2), nn.Linear(2, 1))  # 10 and 2 weights
    ms = MaskSet.from_topk(model, 0.25)
    assert ms.sparsity()["kept"] == {"0": 3, "1": 1}  # 2.5 -> 3, 0.5 -> 1
    assert int(MaskSet.from_topk(model, 0.25, scope="global").sparsity()["global"] * 12 + 0.5) == 9  # keeps 3
    w = torch.tensor([[0.1, -3.0, 2.0], [-0.5, 0.0, 1.0]])
    assert topk_mask(w, 2).tolist() == [[False, True, True], [False, False, False]]  # by |w|, shaped like w
    assert int(topk_mask(w, 99).sum()) == 6 and int(topk_mask(w, 0).sum()) == 0


def test_global_scope_uses_one_threshold() -> None:
    model = net()
    ms = MaskSet.from_topk(model, 500, scope="global")
    total = sum(int(ms.mask(n).sum()) for n in ms.layers)
    assert total == 500
    kept = torch.cat([model.get_submodule(n).weight.detach().abs()[ms.mask(n)] for n in ms.layers])
    dropped = torch.cat([model.get_submodule(n).weight.detach().abs()[~ms.mask(n)] for n in ms.layers])
    assert kept.min() >= dropped.max()


def test_bad_arguments() -> None:
    model = net()
    for kwargs, msg in [({"keep": 1.5}, r"\(0, 1\]"), ({"keep": True}, "fraction"), ({"keep": 10_000}, "cannot keep"),
                        ({"keep": 0.5, "scope": "block"}, "scope"), ({"keep": 0.5, "layers": ["2"]}, "no layer"),
                        ({"keep": {"0": 0.5}, "scope": "global"}, "scope='layer'")]:
        with pytest.raises(PrunekitError, match=msg):
            MaskSet.from_topk(model, **kwargs)
    with pytest.raises(PrunekitError, match="shape"):
        MaskSet(model, {"0": torch.ones(3, dtype=torch.bool)})
    with pytest.raises(PrunekitError, match="bool"):
        MaskSet(model, {"0": torch.ones(8, 3, 3, 3)})


def test_masks_survive_momentum_and_weight_decay() -> None:
    model = net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)
    # dense steps first, so the momentum buffers of the weights about to be masked are not zero
    for _ in range(2):
        opt.zero_grad()
        model(X).square().mean().backward()
        opt.step()
    ms = MaskSet.from_topk(model, 0.3)
    ms.apply_()
    for _ in range(5):
        opt.zero_grad()
        model(X).square().mean().backward()
        opt.step()
        ms.apply_()
        for n in ms.layers:
            w = model.get_submodule(n).weight
            assert int((w[~ms.mask(n)] != 0).sum()) == 0
            assert int((w != 0).sum()) == int(ms.mask(n).sum())  # kept weights stay alive
    # grads and momentum of frozen weights can be zeroed too
    opt.zero_grad()
    model(X).square().mean().backward()
    ms.mask_grads_()
    ms.mask_optimizer_state_(opt)
    for n in ms.layers:
        w = model.get_submodule(n).weight
        assert int((w.grad[~ms.mask(n)] != 0).sum()) == 0
        assert int((opt.state[w]["momentum_buffer"][~ms.mask(n)] != 0).sum()) == 0
    before = {n: model.get_submodule(n).weight.detach().clone() for n in ms.layers}
    opt.step()
    for n in ms.layers:  # with masked grads and momentum, the step alone keeps the zeros
        w = model.get_submodule(n).weight
        assert torch.equal(w[~ms.mask(n)], before[n][~ms.mask(n)])


def test_mask_state_dict_round_trip_and_device_follow() -> None:
    model = net()
    ms = MaskSet.from_topk(model, 0.5)
    state = ms.state_dict()
    assert all(v.dtype == torch.bool and v.device.type == "cpu" for v in state.values())
    other = MaskSet.from_topk(model, 0.1)
    other.load_state_dict(state)
    assert all(torch.equal(other.mask(n), state[n]) for n in state)
    with pytest.raises(PrunekitError):
        other.load_state_dict({"0": torch.ones(2, dtype=torch.bool)})
    bad = dict(state)
    bad["nope"] = state["0"]
    with pytest.raises(PrunekitError, match="no layer 'nope'"):
        other.load_state_dict(bad)


def test_mask_refuses_a_model_changed_by_surgery() -> None:
    from prunekit.surgery import remove_channels

    model = net()
    ms = MaskSet.from_topk(model, 0.5)
    remove_channels(model, {"0": [0]}, X)
    with pytest.raises(PrunekitError, match="was the model pruned"):
        ms.apply_()
