"""The HF Trainer adapter (prunekit.integrations.hf) with the real transformers package: every paper method
through ``transformers.Trainer.train`` on a tiny ``ResNetForImageClassification`` built from a config (no
download), a smaller (or sparse) network delivered, its finalize exact."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prunekit import methods
from prunekit.engine import seed_everything as seed
from prunekit.errors import PrunekitError
from prunekit.methods.optim import AHSGHT, APG
from tests.helpers import PAPER_METHODS, check_delivered

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")
from prunekit.integrations.hf import PrunekitTrainerCallback  # noqa: E402

EPOCHS = 4
X0 = torch.zeros(1, 3, 16, 16)


class Images(torch.utils.data.Dataset):
    """32 random images as HF image datasets give them: dicts of ``pixel_values`` and ``labels``."""

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        self.x, self.y = torch.randn(32, 3, 16, 16, generator=g), torch.randint(0, 3, (32,), generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"pixel_values": self.x[i], "labels": self.y[i]}


def hf_resnet() -> nn.Module:
    seed(0)
    return transformers.ResNetForImageClassification(transformers.ResNetConfig(
        num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic", num_labels=3))


class TinyCNN(nn.Module):
    """A hand-written HF-style classifier (keyword ``pixel_values``, loss from ``labels``, a dict out)."""

    main_input_name = "pixel_values"

    def __init__(self) -> None:
        super().__init__()
        seed(0)
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 3))

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        logits = self.body(pixel_values)
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = F.cross_entropy(logits, labels)
        return out


def _train(model: nn.Module, method: methods.PruningMethod, tmp_path, epochs: int = EPOCHS, **kw):
    pk = PrunekitTrainerCallback(method, **kw)
    args = transformers.TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[], num_train_epochs=epochs,
                                          per_device_train_batch_size=16, learning_rate=0.05, save_strategy="no",
                                          logging_strategy="no", disable_tqdm=True)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=Images(), callbacks=[pk],
                                   optimizers=pk.optimizers(model))
    trainer.train()
    return pk, trainer


def _check(name: str, make, tmp_path) -> None:
    dense_net = make()
    model = make()
    method = methods.get(name)(**PAPER_METHODS[name])
    pk, trainer = _train(model, method, tmp_path)
    res, d = pk.result, pk.driver
    assert d.loop.step == EPOCHS * 2 and d.loop.epoch == EPOCHS  # every step went through the method's hooks
    assert trainer.optimizer.optimizer is d.optimizer              # the Trainer stepped the method's optimizer
    kinds = [type(o) for o in d.optimizer.optimizers]
    assert kinds == {"sss": [torch.optim.SGD, APG], "sght": [AHSGHT]}.get(name, [torch.optim.SGD])
    assert {g["lr"] for g in d.optimizer.param_groups} == {0.05}    # args.learning_rate, the method's stages
    assert res.model is trainer.model is model                     # delivered in place, in the HF Trainer
    assert res.report["adapter"]["finalize_max_abs_diff"] < 1e-5   # finalize is exact: same outputs
    check_delivered(res, dense_net, X0, ends_sparse=method.ends_sparse, name=name)
    if name == "trimming":  # channels went between stages; the optimizer followed the smaller network
        assert {id(p) for g in d.optimizer.param_groups for p in g["params"]} == {id(p) for p in model.parameters()}


@pytest.mark.parametrize("name", sorted(PAPER_METHODS))
def test_every_paper_method_delivers_through_the_hf_trainer_on_a_hf_resnet(name, tmp_path):
    _check(name, hf_resnet, tmp_path)


@pytest.mark.parametrize("name", sorted(PAPER_METHODS))
def test_every_paper_method_delivers_through_the_hf_trainer_on_a_hand_written_model(name, tmp_path):
    _check(name, TinyCNN, tmp_path)


def test_the_trainer_must_step_the_methods_optimizer(tmp_path):
    model = hf_resnet()
    pk = PrunekitTrainerCallback(methods.get("sght")(keep_ratio=0.5))
    args = transformers.TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[], num_train_epochs=1,
                                          save_strategy="no", disable_tqdm=True)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=Images(), callbacks=[pk])
    with pytest.raises(PrunekitError, match=r"optimizers=pk.optimizers\(model\)") as err:
        trainer.train()
    assert "\n" not in str(err.value)


def test_a_new_network_object_during_training_is_refused_in_one_line(tmp_path, replacing):
    with pytest.raises(PrunekitError, match="replaced the model by a new object during training") as err:
        _train(TinyCNN(), replacing, tmp_path, epochs=2)
    assert "\n" not in str(err.value)


def test_sss_with_example_inputs_is_prepared_when_the_optimizers_are_made(tmp_path):
    """Given example inputs, pk.optimizers(model) places SSS's factors at once (a HF ResNet: by running it) and
    fills the optimizer before the HF Trainer sees it; the run then delivers a smaller network, exactly."""
    from prunekit.methods.factors import factor_modules

    model = hf_resnet()
    dense = sum(p.numel() for p in model.parameters())
    pk = PrunekitTrainerCallback(methods.get("sss")(**PAPER_METHODS["sss"]), example_inputs=X0)
    opt, sched = pk.optimizers(model)
    assert factor_modules(model) and [type(o) for o in opt.optimizers] == [torch.optim.SGD, APG]
    args = transformers.TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[], num_train_epochs=2,
                                          per_device_train_batch_size=16, learning_rate=0.05, save_strategy="no",
                                          logging_strategy="no", disable_tqdm=True)
    transformers.Trainer(model=model, args=args, train_dataset=Images(), callbacks=[pk],
                         optimizers=(opt, sched)).train()
    assert pk.result.report["adapter"]["finalize_max_abs_diff"] < 1e-5
    assert sum(p.numel() for p in pk.result.model.parameters()) < dense
