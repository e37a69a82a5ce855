"""Structural history (prunekit.surgery.history): every successful removal is recorded (and a refused one is
not), and a pruned zoo network saved with its history reloads to the same outputs, fine-tunes and can be
pruned again."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from prunekit.errors import PrunekitError
from prunekit.surgery import removable_blocks, remove_blocks, remove_channels
from tests.surgery.nets import X16, ZOO, TinyResNet, prune_zeroed, randomise, widths

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one intra-op thread is as fast


# ---------------------------------------------------------------------------------------------------------
# the record of each change


def test_every_successful_change_is_recorded() -> None:
    from prunekit.surgery.history import history

    model = randomise(TinyResNet())
    x = torch.randn(*X16)
    remove_channels(model, {"stem.0": [0, 2]}, x)
    (op,) = history(model)
    assert op["op"] == "channels" and op["input_shapes"] == [list(X16)]
    assert list(op["removed"].values()) == [[0, 2]]
    with pytest.raises(PrunekitError):
        remove_channels(model, {"stem.0": [99]}, x)
    assert len(history(model)) == 1


# ---------------------------------------------------------------------------------------------------------
# save / reload / fine-tune a pruned zoo network


@pytest.mark.skipif(ZOO is None, reason="prunekit.models not available")
def test_pruned_zoo_model_saves_reloads_and_fine_tunes(tmp_path: Path) -> None:
    from prunekit import io

    torch.manual_seed(0)
    model = randomise(ZOO.create("resnet20"))
    x = torch.randn(4, 3, 32, 32)
    prune_zeroed(model, x, frac=0.5)
    remove_blocks(model, removable_blocks(model)[1:2])
    model.eval()
    with torch.no_grad():
        y = model(x)
    path = io.save(model, tmp_path / "pruned.safetensors")
    back = io.load(path)
    assert widths(back) == widths(model)
    with torch.no_grad():
        assert torch.equal(back(x), y)
    # fine-tune the reloaded, pruned model with a freshly built optimizer
    back.train()
    opt = torch.optim.SGD(back.parameters(), lr=0.05, momentum=0.9)
    target = torch.randint(0, 10, (4,))
    losses = []
    for _ in range(5):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(back(x), target)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    # and it can be pruned again after the reload
    diff, _ = prune_zeroed(back.eval(), x, frac=0.3, seed=3)
    assert diff <= 1e-5
