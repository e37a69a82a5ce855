"""The training engine: schedules, hooks, learning, NaN guard, and exact resume."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prunekit import data, io
from prunekit.engine import (
    Callback,
    LoopState,
    OptimConfig,
    Stage,
    Trainer,
    TrainerConfig,
    evaluate,
    lr_factor,
    seed_everything,
)
from prunekit.errors import PrunekitError
from tests.helpers import Kill, synthetic, tiny_lenet


def test_lr_schedules():
    assert lr_factor("constant", 3.5, 3, 10, None, 0.1) == 1.0
    assert lr_factor("step", 0.0, 0, 10, [3, 6], 0.1) == 1.0
    assert lr_factor("step", 3.0, 3, 10, [3, 6], 0.1) == pytest.approx(0.1)
    assert lr_factor("step", 9.9, 9, 10, [3, 6], 0.2) == pytest.approx(0.04)
    assert lr_factor("cosine", 0.0, 0, 10, None, 0.1) == pytest.approx(1.0)
    assert lr_factor("cosine", 5.0, 5, 10, None, 0.1) == pytest.approx(0.5)
    assert lr_factor("onecycle", 3.0, 3, 10, None, 0.1) == pytest.approx(1.0)
    assert lr_factor("step", 0.5, 0, 10, [5], 0.1, warmup=1.0) == pytest.approx(0.501)
    with pytest.raises(ValueError):
        lr_factor("nope", 0, 0, 1, None, 0.1)


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


class Counter(Callback):
    """A callback with state, to check it is restored on resume."""

    def __init__(self):
        self.n = 0
        self.buf = torch.zeros(3)

    def on_after_optimizer_step(self, t):
        self.n += 1
        self.buf += 1

    def state_dict(self):
        return {"n": self.n, "buf": self.buf.clone()}

    def load_state_dict(self, s):
        self.n, self.buf = s["n"], s["buf"].clone()


@pytest.mark.parametrize("kill_at", [4, 6, 13])  # mid-epoch, at an epoch boundary, in the second stage
def test_resume_is_exact(tmp_path, kill_at):
    train, test = synthetic(192, 64)
    stages = [Stage("a", 2), Stage("b", 1, lr=0.02)]
    cfg = TrainerConfig(batch_size=32, device="cpu", quiet=True, checkpoint_every_steps=1)
    optim = OptimConfig(lr=0.05, schedule="cosine")
    ref_cb = Counter()
    ref = Trainer(tiny_lenet(), train, test, optim=optim, config=cfg, callbacks=[ref_cb], out_dir=tmp_path / "ref")
    ref.fit(stages)

    run = tmp_path / "run"
    killed = Trainer(tiny_lenet(), train, test, optim=optim, config=cfg, callbacks=[Counter(), Kill.after(kill_at)],
                     out_dir=run)
    with pytest.raises(KeyboardInterrupt):
        killed.fit(stages)
    torch.manual_seed(1234)  # the resumed run must not depend on the global RNG state it starts with
    cb = Counter()
    resumed = Trainer(tiny_lenet(seed=99), train, test, optim=optim, config=cfg, callbacks=[cb, Kill(None)],
                      out_dir=run)
    resumed.fit(stages, resume=True)
    for (k, a), b in zip(ref.raw_model.state_dict().items(), resumed.raw_model.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    assert cb.n == ref_cb.n == 3 * (len(train) // 32)
    assert torch.equal(cb.buf, ref_cb.buf)
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]


def test_resume_with_other_schedule_is_refused(tmp_path):
    train, test = synthetic(192, 64)
    cfg = TrainerConfig(batch_size=32, device="cpu", quiet=True)
    Trainer(tiny_lenet(), train, test, config=cfg, out_dir=tmp_path).fit(1)
    with pytest.raises(PrunekitError, match="different schedule"):
        Trainer(tiny_lenet(), train, test, config=cfg, out_dir=tmp_path).fit(2, resume=True)


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


def test_callback_works_in_a_users_own_loop():
    train, _ = synthetic(192, 64)
    model = tiny_lenet()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    state = LoopState(model, [opt])
    cb = Counter()
    for x, y in data.iterate(train, 32, shuffle=True, seed=0, epoch=0):
        nn.functional.cross_entropy(state.model(x), y).backward()
        opt.step()
        opt.zero_grad()
        cb.on_after_optimizer_step(state)
        state.step += 1
    assert cb.n == state.step == len(train) // 32


def test_stage_lr_applies_without_rebuilding_the_optimizer():
    train, test = synthetic(192, 64)
    rec = Recorder()
    tr = Trainer(tiny_lenet(), train, test, optim=OptimConfig(lr=0.05, schedule="constant"),
                 config=TrainerConfig(batch_size=32, device="cpu", quiet=True), callbacks=[rec])
    tr.fit([Stage("a", 1), Stage("b", 1, lr=0.01, reset_optimizer=False)])
    steps = len(train) // 32
    assert rec.lrs[0] == pytest.approx(0.05) and rec.lrs[steps] == pytest.approx(0.01)
    assert len(tr.optimizers[0].state) > 0  # momentum carried over


def test_default_step_milestones_never_hit_epoch_zero():
    assert lr_factor("step", 0.5, 0, 1, None, 0.1) == 1.0
    assert lr_factor("step", 1.0, 1, 2, None, 0.1) == pytest.approx(0.1)  # milestones [1, 2]
    assert lr_factor("step", 5.0, 5, 10, None, 0.1) == pytest.approx(0.1)


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


class _UserNet(nn.Module):
    """A user's own network (not in the zoo): a structured method thins it in the middle of the run."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.conv2(x))
        return self.head(x.mean((2, 3)))


class _ThinAtStage2(Callback):
    def on_stage_start(self, t, stage):
        if stage.name == "thin":
            from prunekit.surgery import remove_channels

            remove_channels(t.raw_model, {"conv1": [0, 2, 5]}, t.example_inputs)
            t.replace_model(t.raw_model)


def test_user_network_resumes_across_structural_pruning(tmp_path):
    """No zoo factory: the checkpoint records the thinned layers relative to the user's network."""
    train = data.load("synthetic", "train", n=64, shape=(1, 8, 8), num_classes=4, seed=0)
    cfg = TrainerConfig(batch_size=16, device="cpu", quiet=True, checkpoint_every_steps=3)
    stages = [Stage("dense", 1), Stage("thin", 2)]

    def fresh():
        seed_everything(0)
        return _UserNet()

    full = Trainer(fresh(), train, config=cfg, callbacks=[_ThinAtStage2()], out_dir=tmp_path / "full")
    full.fit(stages)
    assert full.raw_model.conv1.out_channels == 5
    # killed in the thinned stage (step 7 of 12: the last checkpoint holds the thinned network)
    killed = Trainer(fresh(), train, config=cfg, callbacks=[_ThinAtStage2(), Kill.after(7)], out_dir=tmp_path / "k")
    with pytest.raises(KeyboardInterrupt):
        killed.fit(stages)
    # a new process: a fresh instance of the user's network, resumed from the mid-run checkpoint
    again = Trainer(fresh(), train, config=cfg, callbacks=[_ThinAtStage2(), Kill(None)], out_dir=tmp_path / "k")
    again.fit(stages, resume=True)
    assert again.raw_model.conv1.out_channels == 5
    for (n, a), (_, b) in zip(full.raw_model.state_dict().items(), again.raw_model.state_dict().items(),
                              strict=True):
        assert torch.equal(a, b), n
    # the deliverable saves with the user's network as base and loads onto a fresh instance
    io.save(again.raw_model, tmp_path / "user.safetensors", base=_UserNet())
    back = io.load(tmp_path / "user.safetensors", model=_UserNet())
    assert back.conv1.out_channels == 5 and back.bn1.num_features == 5 and back.conv2.in_channels == 5
    with pytest.raises(PrunekitError, match="fresh instance"):
        io.load(tmp_path / "user.safetensors")


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
