"""The Lightning adapter (prunekit.integrations.lightning) with the real lightning package: every paper method
through ``Trainer.fit`` on a tiny CNN, a smaller (or sparse) network delivered, its finalize exact."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prunekit import methods
from prunekit.engine import seed_everything as seed
from prunekit.errors import PrunekitError
from prunekit.integrations import require
from prunekit.methods.optim import AHSGHT, APG
from tests import helpers
from tests.helpers import check_delivered

pl = pytest.importorskip("lightning.pytorch")
from prunekit.integrations.lightning import PrunekitCallback  # noqa: E402

PAPER_METHODS = {**helpers.PAPER_METHODS,  # SGHT with its fine-tune stage: the network shrinks mid-run
                 "sght": {**helpers.PAPER_METHODS["sght"], "finetune_epochs": 1}}
EPOCHS = 4
X0 = torch.zeros(1, 1, 8, 8)


class Classifier(pl.LightningModule):
    """A user's LightningModule: the network in ``self.net``, the loss in ``training_step``."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                 nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self.net(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.05)  # replaced by the method's; its lr is the base lr


def _loader() -> torch.utils.data.DataLoader:
    g = torch.Generator().manual_seed(0)
    ds = torch.utils.data.TensorDataset(torch.randn(32, 1, 8, 8, generator=g), torch.randint(0, 4, (32,), generator=g))
    return torch.utils.data.DataLoader(ds, batch_size=16)


def _fit(method: methods.PruningMethod, epochs: int = EPOCHS, **kw) -> tuple[Classifier, PrunekitCallback, object]:
    seed(0)
    module = Classifier()
    pk = PrunekitCallback(method, attr="net", **kw)
    trainer = pl.Trainer(accelerator="cpu", max_epochs=epochs, enable_progress_bar=False, logger=False,
                         enable_checkpointing=False, enable_model_summary=False, callbacks=[pk])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's hints about workers and logging
        trainer.fit(module, _loader())
    return module, pk, trainer


@pytest.mark.parametrize("name", sorted(PAPER_METHODS))
def test_every_paper_method_delivers_through_lightning(name):
    seed(0)
    dense_net = Classifier().net
    method = methods.get(name)(**PAPER_METHODS[name])
    module, pk, trainer = _fit(method)
    res = pk.result
    d = pk.driver
    assert d.loop.step == EPOCHS * 2 and d.loop.epoch == EPOCHS  # every step went through the method's hooks
    assert trainer.optimizers[0] is d.optimizer                  # the method's optimizer was the one stepped
    kinds = [type(o) for o in d.optimizer.optimizers]
    assert kinds == {"sss": [torch.optim.SGD, APG], "sght": [torch.optim.SGD]}.get(name, [torch.optim.SGD])
    assert res.model is module.net                                 # delivered in place, in the LightningModule
    assert res.report["adapter"]["finalize_max_abs_diff"] < 1e-5   # finalize is exact: same outputs
    assert res.report["adapter"]["not_run"] == []
    out = res.model(torch.zeros(3, 1, 8, 8))
    assert out.shape == (3, 4) and torch.isfinite(out).all()
    check_delivered(res, dense_net, X0, ends_sparse=method.ends_sparse, name=name)


def test_sght_installs_ahsght_then_the_smaller_network_trains_with_a_rebuilt_optimizer():
    module, pk, _ = _fit(methods.get("sght")(keep_ratio=0.5, finetune_epochs=1))
    d = pk.driver
    # the fine-tune stage removed the zero filters (a smaller network) and refilled the optimizer with its
    # parameters, so the framework stepped exactly the new ones
    assert {id(p) for g in d.optimizer.param_groups for p in g["params"]} == {id(p) for p in module.net.parameters()}
    assert module.net[0].out_channels == 4 and module.net[3].out_channels == 8
    _, pk2, _ = _fit(methods.get("sght")(keep_ratio=0.5), epochs=2)
    assert [type(o) for o in pk2.driver.optimizer.optimizers] == [AHSGHT]


def test_trimming_removes_channels_between_stages_and_the_optimizer_follows():
    method = methods.get("trimming")(iterations=2, initial_epochs=1, retrain_epochs=1, rule="fraction", fraction=0.25)
    module, pk, _ = _fit(method, epochs=3)
    assert [r["iteration"] for r in method.records] == [0, 1, 2]
    assert module.net[0].out_channels < 8 and module.net[3].out_channels < 16
    assert {id(p) for g in pk.driver.optimizer.param_groups for p in g["params"]} == \
        {id(p) for p in module.net.parameters()}
    assert [g["lr"] for g in pk.driver.optimizer.param_groups] == [0.05]  # the base lr of configure_optimizers


def test_stages_without_epochs_left_run_at_train_end():
    """Trim without retraining: stages of 0 epochs after the last epoch still trim, before finalize."""
    method = methods.get("trimming")(iterations=2, initial_epochs=2, retrain_epochs=0, rule="fraction", fraction=0.25)
    module, pk, _ = _fit(method, epochs=2)
    assert [r["iteration"] for r in method.records] == [0, 1, 2]
    assert pk.result.report["adapter"]["not_run"] == []
    assert module.net[0].out_channels == 4  # 8 -> 6 -> 4 (a quarter of each layer, rounded half up, per trim)


def test_a_short_run_says_which_stages_it_did_not_run():
    method = methods.get("iht")(**PAPER_METHODS["iht"])
    with pytest.warns(UserWarning, match="not run: dense1"):
        _, pk, _ = _short(method)
    assert pk.result.report["adapter"]["not_run"] == ["dense1 (1 epochs)", "final (1 epochs)"]
    assert pk.result.sparse  # IHT meets its budget anyway: finalize thresholds once more


def _short(method: methods.PruningMethod) -> tuple[Classifier, PrunekitCallback, object]:
    """A run whose trainer stops after 2 of the 4 epochs the method planned for."""
    seed(0)
    module = Classifier()
    pk = PrunekitCallback(method, attr="net", epochs=4)
    trainer = pl.Trainer(accelerator="cpu", max_epochs=2, enable_progress_bar=False, logger=False,
                         enable_checkpointing=False, enable_model_summary=False, callbacks=[pk])
    trainer.fit(module, _loader())
    return module, pk, trainer


def test_a_wrong_attribute_and_a_missing_package_are_one_line_errors():
    seed(0)
    pk = PrunekitCallback(methods.get("sght")(keep_ratio=0.5), attr="backbone")
    trainer = pl.Trainer(accelerator="cpu", max_epochs=1, enable_progress_bar=False, logger=False,
                         enable_checkpointing=False, enable_model_summary=False, callbacks=[pk])
    with pytest.raises(PrunekitError, match="no network at attribute 'backbone'.*net"):
        trainer.fit(Classifier(), _loader())
    with pytest.raises(PrunekitError, match=r"pip install 'prunekit\[lightning\]'") as err:
        require("lightning_not_installed_here", "lightning", "lightning")
    assert "\n" not in str(err.value)


def test_a_new_network_object_takes_the_lightning_modules_attribute_and_is_trained(replacing):
    method = replacing
    module, pk, trainer = _fit(method, epochs=2)
    assert module.net is method.new and pk.result.model is method.new
    assert {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]} == \
        {id(p) for p in method.new.parameters()}
    assert all(not torch.equal(a, b) for a, b in zip(method.snapshot, method.new.parameters(), strict=True))


def test_sss_through_lightning_on_a_hf_resnet_places_its_factors_on_the_first_batch():
    """A HF model torch.fx cannot trace: SSS's factors are placed by running it on the first training batch."""
    transformers = pytest.importorskip("transformers")

    class HFClassifier(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            seed(0)
            self.net = transformers.ResNetForImageClassification(transformers.ResNetConfig(
                num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic",
                num_labels=3))

        def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
            return self.net(pixel_values=batch[0], labels=batch[1]).loss

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.05)

    g = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(32, 3, 16, 16, generator=g),
                                          torch.randint(0, 3, (32,), generator=g))
    module = HFClassifier()
    dense = sum(p.numel() for p in module.net.parameters())
    pk = PrunekitCallback(methods.get("sss")(gamma_channel=2.0, gamma_block=2.0), attr="net")
    trainer = pl.Trainer(accelerator="cpu", max_epochs=EPOCHS, enable_progress_bar=False, logger=False,
                         enable_checkpointing=False, enable_model_summary=False, callbacks=[pk])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=16))
    res = pk.result
    assert [type(o) for o in pk.driver.optimizer.optimizers] == [torch.optim.SGD, APG]
    assert res.model is module.net and res.report["adapter"]["finalize_max_abs_diff"] < 1e-5
    assert sum(p.numel() for p in res.model.parameters()) < dense
