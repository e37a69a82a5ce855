"""The Trainer (prunekit.engine.trainer): learning and hooks in order, stage learning rates, NaN guard (per step
and batched), replacing the model mid-run, keyword inputs and dict / tuple outputs, Hugging Face classifiers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prunekit import data
from prunekit.engine import (
    Callback,
    OptimConfig,
    Stage,
    Trainer,
    TrainerConfig,
    evaluate,
    seed_everything,
)
from prunekit.errors import PrunekitError
from tests.helpers import synthetic, tiny_lenet


class Recorder(Callback):
    def __init__(self):
        self.events: list[str] = []
        self.lrs: list[float] = []

    def on_fit_start(self, t):
        self.events.append("fit_start")

    def on_stage_start(self, t, stage):
        self.events.append(f"stage_start:{stage.name}")

    def on_epoch_start(self, t):
        self.events.append("epoch_start")

    def on_before_optimizer_step(self, t):
        assert all(p.grad is not None for p in t.raw_model.parameters())

    def on_after_optimizer_step(self, t):
        self.lrs.append(t.optimizers[0].param_groups[0]["lr"])

    def on_epoch_end(self, t, metrics):
        self.events.append("epoch_end")

    def on_stage_end(self, t, stage):
        self.events.append(f"stage_end:{stage.name}")

    def on_fit_end(self, t):
        self.events.append("fit_end")


def test_trainer_learns_and_calls_hooks_in_order():
    train, test = synthetic(192, 64)
    rec = Recorder()
    tr = Trainer(tiny_lenet(), train, test, optim=OptimConfig(lr=0.05, schedule="step", milestones=[1]),
                 config=TrainerConfig(batch_size=32, device="cpu", quiet=True), callbacks=[rec])
    before = evaluate(tr.raw_model, test)["top1"]
    hist = tr.fit([Stage("a", 2), Stage("b", 1, lr=0.01, schedule="constant")])
    assert rec.events == ["fit_start", "stage_start:a", "epoch_start", "epoch_end", "epoch_start", "epoch_end",
                          "stage_end:a", "stage_start:b", "epoch_start", "epoch_end", "stage_end:b", "fit_end"]
    steps = len(train) // 32
    assert len(rec.lrs) == 3 * steps
    assert rec.lrs[0] == pytest.approx(0.05) and rec.lrs[steps] == pytest.approx(0.005)
    assert rec.lrs[-1] == pytest.approx(0.01)
    assert [h["stage"] for h in hist] == ["a", "a", "b"]
    assert hist[-1]["val_top1"] > max(before, 60.0)


def test_nan_loss_stops_with_clear_error():
    train, test = synthetic(192, 64)
    tr = Trainer(tiny_lenet(), train, test, optim=OptimConfig(lr=1e6, momentum=0.0),
                 config=TrainerConfig(batch_size=32, device="cpu", quiet=True))
    with pytest.raises(PrunekitError, match="loss became .* lower the learning rate"):
        tr.fit(50)


class Shrink(Callback):
    """Replaces the model mid-run with a narrower one, as structured pruning methods do."""

    def on_stage_start(self, t, stage):
        if stage.name == "b":
            new = nn.Sequential(nn.Flatten(), nn.Linear(64, 4))
            t.replace_model(new)


def test_replace_model_rebuilds_optimizer():
    train, test = synthetic(192, 64)
    tr = Trainer(tiny_lenet(), train, test, config=TrainerConfig(batch_size=32, device="cpu", quiet=True),
                 callbacks=[Shrink()])
    tr.fit([Stage("a", 1), Stage("b", 1)])
    params = {id(p) for p in tr.raw_model.parameters()}
    assert params == {id(p) for g in tr.optimizers[0].param_groups for p in g["params"]}
    assert isinstance(tr.raw_model, nn.Sequential)


def test_stage_lr_applies_without_rebuilding_the_optimizer():
    train, test = synthetic(192, 64)
    rec = Recorder()
    tr = Trainer(tiny_lenet(), train, test, optim=OptimConfig(lr=0.05, schedule="constant"),
                 config=TrainerConfig(batch_size=32, device="cpu", quiet=True), callbacks=[rec])
    tr.fit([Stage("a", 1), Stage("b", 1, lr=0.01, reset_optimizer=False)])
    steps = len(train) // 32
    assert rec.lrs[0] == pytest.approx(0.05) and rec.lrs[steps] == pytest.approx(0.01)
    assert len(tr.optimizers[0].state) > 0  # momentum carried over


def test_batched_nan_check_stops_before_any_nan_checkpoint(tmp_path):
    """The accelerator path (NaN checks batched to avoid a host sync per step), exercised on the CPU."""
    from prunekit.engine import load_checkpoint

    train, test = synthetic(192, 64)
    cfg = TrainerConfig(batch_size=32, device="cpu", quiet=True, checkpoint_every_steps=1)
    Trainer(tiny_lenet(), train, test, config=cfg, out_dir=tmp_path).fit(1)
    tr = Trainer(tiny_lenet(), train, test, optim=OptimConfig(lr=1e6, momentum=0.0), config=cfg, out_dir=tmp_path)
    tr.nan_check_each_step = False
    with pytest.raises(PrunekitError, match="loss became"):
        tr.fit(50)
    state = load_checkpoint(tmp_path / "checkpoint.safetensors")
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


class DictNet(nn.Module):
    """Takes its input by keyword and returns a dict (and a tuple with ``as_tuple``)."""

    main_input_name = "images"

    def __init__(self, as_tuple: bool = False):
        super().__init__()
        self.net, self.as_tuple = tiny_lenet(), as_tuple

    def forward(self, *, images):
        logits = self.net(images)
        return (logits, images.mean()) if self.as_tuple else {"logits": logits, "aux": images.mean()}


@pytest.mark.parametrize("as_tuple", [False, True])
def test_trainer_and_metrics_take_keyword_inputs_and_dict_or_tuple_outputs(as_tuple):
    from prunekit import metrics

    train, test = synthetic(192, 64)
    seed_everything(0)
    model = DictNet(as_tuple)
    tr = Trainer(model, train, test, optim=OptimConfig(lr=0.05), config=TrainerConfig(batch_size=32, quiet=True))
    hist = tr.fit(2)
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]
    plain = evaluate(model.net, test)  # the same network called plainly gives the same figures
    assert hist[-1]["val_top1"] == pytest.approx(plain["top1"])
    acc = metrics.accuracy(model, data.iterate(test, 16, shuffle=False, augment=None))
    assert acc["top1"] * 100 == pytest.approx(plain["top1"])
    picked = metrics.accuracy(model, data.iterate(test, 16, shuffle=False, augment=None),
                              output_transform=lambda out: out["logits"] if isinstance(out, dict) else out[0])
    assert picked == acc
    with pytest.raises(PrunekitError, match="without logits"):
        metrics.evaluation.logits_of(object())


HF_METHODS = {
    "sght": ({"keep_ratio": 0.5, "hybrid_batch": False}, 2),
    "iht": ({"target": "2x", "cycles": 1, "warmup_epochs": 1, "sparse_epochs": 1, "dense_epochs": 1,
             "final_epochs": 1}, 4),
    "trimming": ({"iterations": 1, "rule": "fraction", "fraction": 0.25, "apoz_samples": 32}, 2),
}


@pytest.mark.parametrize("name", sorted(HF_METHODS))
def test_a_hugging_face_classifier_trains_and_prunes_unwrapped(name):
    transformers = pytest.importorskip("transformers")
    from prunekit import methods, metrics

    train = data.load("synthetic", "train", n=96, shape=(1, 16, 16), num_classes=4, seed=0)
    test = data.load("synthetic", "test", n=32, shape=(1, 16, 16), num_classes=4, seed=0)
    seed_everything(0)
    cfg = transformers.ResNetConfig(num_channels=1, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
                                    layer_type="basic", num_labels=4)
    model = transformers.ResNetForImageClassification(cfg)  # returns an ImageClassifierOutput
    dense = sum(p.numel() for p in model.parameters())
    options, epochs = HF_METHODS[name]
    method = methods.get(name)(options)
    tr = Trainer(model, train, test, optim=OptimConfig(lr=0.05), config=TrainerConfig(batch_size=32, quiet=True),
                 callbacks=[method])
    hist = tr.fit(method.stages(epochs))
    small = method.finalize(tr.raw_model, tr.example_inputs).model
    assert isinstance(small, transformers.ResNetForImageClassification)
    if method.ends_sparse:  # IHT: same shapes, half of the thresholded weights exactly zero
        assert sum(int((p == 0).sum()) for p in small.parameters()) > 0.4 * dense
    else:
        assert sum(p.numel() for p in small.parameters()) < dense
    after = evaluate(small, test)
    assert after["top1"] == pytest.approx(hist[-1]["val_top1"])  # the delivered network is the one evaluated
    acc = metrics.accuracy(small, data.iterate(test, 16, shuffle=False, augment=None))
    assert acc["top1"] * 100 == pytest.approx(after["top1"])
