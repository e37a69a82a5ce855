"""Issue 18: a HF ResNet and a HF ViT (``transformers`` models built from configs, returning a ``ModelOutput``)
each trained and pruned by every paper method in the built-in Trainer, unwrapped: the delivered network is
smaller (params and MACs; IHT: sparse at its budget), its output equals the trained network's just before
``finalize`` (removal equals masking) and it still trains and evaluates."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

from prunekit import data, methods, metrics
from prunekit.engine import OptimConfig, Trainer, TrainerConfig, evaluate, seed_everything
from prunekit.testing import corpus

pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_thread")

NETS = ["hf-resnet-basic", "hf-vit"]
OPTIONS: dict[str, dict[str, Any]] = {
    **corpus.METHOD_OPTIONS,  # a few steps each (SSS's gammas are large so that factors reach 0 within them)
    "trimming": {**corpus.METHOD_OPTIONS["trimming"], "apoz_samples": 16},
}


@pytest.fixture(scope="module")
def splits() -> tuple[data.Dataset, data.Dataset]:
    shape = (3, corpus.IMAGE, corpus.IMAGE)
    return (data.load("synthetic", "train", n=32, shape=shape, num_classes=corpus.NUM_CLASSES, seed=0),
            data.load("synthetic", "test", n=16, shape=shape, num_classes=corpus.NUM_CLASSES, seed=0))


@pytest.mark.parametrize("net_name", NETS)
@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_every_method_trains_and_prunes_a_hf_model_in_the_trainer(name: str, net_name: str, splits) -> None:
    train, test = splits
    net = corpus.build(net_name)
    model = copy.deepcopy(net.model).train()
    dense = metrics.count(model, net.inputs)
    seed_everything(0)
    method = methods.get(name)(OPTIONS[name])
    tr = Trainer(model, train, test, optim=OptimConfig(lr=0.01),
                 config=TrainerConfig(batch_size=16, quiet=True, max_steps_per_epoch=1), callbacks=[method])
    hist = tr.fit(method.stages(4))
    assert all(torch.isfinite(torch.tensor(h["train_loss"])) for h in hist)
    trained = tr.raw_model.eval()
    masked = copy.deepcopy(trained)  # the network as trained: zero factors / thresholded filters still in place
    result = method.finalize(trained, tr.example_inputs)
    small = result.model.eval()
    assert isinstance(small, type(net.model))  # the user's own class, no wrapper
    with torch.no_grad():
        y0, y1 = corpus.logits(masked(net.inputs)), corpus.logits(small(net.inputs))
    assert (y1 - y0).abs().max() <= 1e-4 * max(float(y0.abs().max()), 1.0), name  # removal equals masking
    after = metrics.count(small, net.inputs)
    if result.sparse:  # IHT: the same shapes, the budget's share of the thresholded weights exactly zero
        assert method.ends_sparse and after.params == dense.params
        assert after.nonzero_params < 0.7 * dense.params
    else:
        assert after.params < dense.params and after.macs < dense.macs, (dense, after)
    ev = evaluate(small, test)  # the delivered network evaluates and trains on
    assert 0.0 <= ev["top1"] <= 100.0
    loss = torch.nn.functional.cross_entropy(corpus.logits(small.train()(net.inputs)), torch.tensor([0, 1]))
    loss.backward()
    assert all(p.grad is not None for p in small.parameters() if p.requires_grad)
