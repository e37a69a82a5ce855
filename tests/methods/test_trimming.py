"""Network Trimming (Hu et al. 2016): APoZ collection, selection rules, trimming, bookkeeping, resume."""

from __future__ import annotations

import copy
import itertools
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prunekit import data, metrics, models
from prunekit.config import load_config
from prunekit.engine import Callback, LoopState, OptimConfig, Trainer, TrainerConfig, evaluate
from prunekit.errors import PrunekitError
from prunekit.methods import get
from prunekit.methods.apoz import APoZCollector, activation_points, channel_counts, collect_apoz
from prunekit.methods.trimming import NetworkTrimming, TrimmingConfig, select_channels
from tests.helpers import Kill, gloo_group, synthetic, tiny_lenet

torch.set_num_threads(1)
CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "trimming"


def _cfg(**kw):
    base = dict(batch_size=16, eval_batch_size=48, device="cpu", max_steps_per_epoch=3, quiet=True)
    base.update(kw)
    return TrainerConfig(**base)


def _optim():
    return OptimConfig(lr=0.02, momentum=0.9, weight_decay=5e-4, schedule="constant")


# ----------------------------------------------------------------------------------------- APoZ itself


def test_apoz_of_known_activations_equals_hand_count():
    # x: [N=2, C=3, 2, 2]; after the ReLU channel 0 is never zero, channel 1 is zero at 3 of 8 positions,
    # channel 2 at all 8 (0 and negatives both become 0)
    x = torch.ones(2, 3, 2, 2)
    x[0, 1, 0, 0] = -1.0
    x[1, 1, 1, 1] = 0.0
    x[1, 1, 0, 1] = -3.0
    x[:, 2] = torch.tensor([[0.0, -1.0], [-2.0, 0.0]])
    model = nn.Sequential(nn.Identity(), nn.ReLU())
    got = collect_apoz(model, [x], progress=False)
    assert list(got) == ["1"]
    assert got["1"].tolist() == [0.0, 3 / 8, 1.0]
    # measured before the ReLU (at a non-ReLU module), non-positive values count: same numbers
    assert collect_apoz(model, [x], ["0"], progress=False)["0"].tolist() == [0.0, 3 / 8, 1.0]
    # a fully connected layer: [N, C], M = 1
    fc = torch.tensor([[1.0, 0.0], [2.0, -1.0], [-1.0, 3.0], [4.0, 5.0]])
    assert collect_apoz(nn.Sequential(nn.ReLU()), [(fc, None)], progress=False)["0"].tolist() == [0.25, 0.5]


def test_streaming_equals_all_at_once_and_eval_mode_is_used():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 5, 3), nn.BatchNorm2d(5), nn.ReLU(), nn.Flatten(), nn.Linear(5 * 36, 7),
                          nn.ReLU(), nn.Linear(7, 3))
    model[1].running_mean.normal_()  # eval-mode BN: the running statistics decide the zeros
    before = copy.deepcopy(model.state_dict())
    x = torch.randn(37, 2, 8, 8)
    whole = collect_apoz(model, [x], progress=False)
    parts = collect_apoz(model, [x[:5], x[5:6], x[6:30], x[30:]], progress=False)
    assert set(whole) == {"2", "5"}
    assert model.training  # the mode is given back
    threaded = collect_apoz(model, [x[:20], x[20:]], progress=False, threads=2)  # counting on 2 threads
    assert torch.get_num_threads() == 1  # given back
    for k in whole:
        assert torch.equal(whole[k], parts[k])  # exact integer counts: bit-identical
        assert torch.equal(whole[k], threaded[k])
    # hand check of one channel with plain tensor ops
    model.eval()
    with torch.no_grad():
        act = model[2](model[1](model[0](x)))
    assert whole["2"][3].item() == (act[:, 3] == 0).sum().item() / (37 * 36)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])  # BN statistics untouched


@pytest.mark.parametrize("shape", [(3, 5, 24, 24), (2, 3, 7, 7), (1, 2, 64, 64), (600, 2, 4, 4), (510, 8), (4, 6),
                                   (2, 3, 3), (0, 4, 8, 8)])
def test_packed_channel_counts_are_exact(shape):
    # byte-packed counting: batches of more than 255 images, rows not a multiple of 8 bytes, fc outputs
    g = torch.Generator().manual_seed(1)
    b = torch.rand(shape, generator=g) < 0.37
    ref = b.sum(dim=[0, *range(2, b.dim())], dtype=torch.int64) if b.dim() > 2 else b.sum(0, dtype=torch.int64)
    assert torch.equal(channel_counts(b), ref)
    if b.dim() == 4:  # channels_last: the plain path, same numbers
        assert torch.equal(channel_counts(b.contiguous(memory_format=torch.channels_last)), ref)
    full = torch.ones(shape, dtype=torch.bool)  # every byte lane at its maximum
    assert channel_counts(full).tolist() == [full.numel() // shape[1]] * shape[1]


def test_collector_pools_points_and_rejects_reused_modules():
    relu = nn.ReLU()
    shared = nn.Sequential(nn.Linear(3, 3), relu, nn.Linear(3, 3), relu)
    with pytest.raises(PrunekitError, match="ran 2 times in 1 forward passes"):
        collect_apoz(shared, [torch.randn(4, 3)], progress=False)
    with pytest.raises(PrunekitError, match="no such module"):
        collect_apoz(shared, [torch.randn(4, 3)], ["nope"], progress=False)
    with pytest.raises(PrunekitError, match="was the data empty"):
        collect_apoz(shared, iter([]), ["0"], progress=False)
    a = torch.tensor([[1.0, -1.0], [0.0, 2.0]])
    b = torch.tensor([[-1.0, -1.0], [-1.0, 5.0], [3.0, 3.0], [1.0, 1.0]])
    model = nn.Sequential(nn.ReLU(), nn.Identity(), nn.ReLU())
    # two points pooled under one key: zeros (1 + 2, 1 + 1) over 2 + 4 positions
    with APoZCollector(model, {"g": ["0", "2"]}) as col:
        model[0](a)
        model[2](b)
    assert col.result()["g"].tolist() == [3 / 6, 2 / 6]
    zeros, total = col.counts()["g"]
    assert zeros.tolist() == [3, 2] and total == 6


def test_activation_points_follow_bn_and_residual_sums():
    pts = activation_points(tiny_lenet(), torch.zeros(1, 1, 8, 8))
    assert pts == {"conv1": ["relu1"], "conv2": ["relu2"], "fc1": ["relu3"]}
    res = models.create("resnet20")
    pts = activation_points(res, torch.zeros(1, 3, 32, 32))
    assert pts["conv1"] == ["relu"]  # stem conv -> bn1 -> relu
    assert pts["layer1.0.branch.conv1"] == ["layer1.0.branch.relu1"]
    assert pts["layer2.1.branch.conv2"] == ["layer2.1.act"]  # the ReLU after the residual sum
    assert "fc" not in pts and "layer2.0.shortcut.conv" not in pts
    groups = NetworkTrimming().groups(res, torch.zeros(1, 3, 32, 32))
    stem = next(g for g in groups if g.name == "conv1")
    assert stem.points == ["relu", "layer1.0.act", "layer1.1.act", "layer1.2.act"]
    assert len(groups) == 12  # 9 inner convs + 3 residual stages; the classifier is not scorable


def test_torchvision_style_inplace_relus_and_dropout():
    # VGG as torchvision writes it: in-place ReLUs, Dropout after the fully connected ReLUs
    torch.manual_seed(0)
    model = nn.Sequential()
    model.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2))
    model.flatten = nn.Flatten()
    model.classifier = nn.Sequential(nn.Linear(8 * 16, 32), nn.ReLU(inplace=True), nn.Dropout(),
                                     nn.Linear(32, 32), nn.ReLU(inplace=True), nn.Dropout(), nn.Linear(32, 5))
    example = torch.zeros(1, 3, 8, 8)
    assert activation_points(model, example) == {"features.0": ["features.1"], "classifier.0": ["classifier.1"],
                                                 "classifier.3": ["classifier.4"]}
    x = torch.randn(40, 3, 8, 8)
    apoz = collect_apoz(model, [x], progress=False)
    model.eval()
    with torch.no_grad():
        h = model.classifier[1](model.classifier[0](model.flatten(model.features(x))))
    assert apoz["classifier.1"].tolist() == (h == 0).double().mean(0).tolist()
    out, rec = NetworkTrimming(rule="fraction", fraction=0.25, layers=["classifier.0"], progress=False).trim(
        model, [x], example)
    assert out.classifier[0].out_features == 24 and out.classifier[3].in_features == 24
    highest = apoz["classifier.1"].argsort(descending=True, stable=True)[:8]  # ties: lower index first
    assert rec["removed"]["classifier.0"] == sorted(highest.tolist())


# ----------------------------------------------------------------------------------------- selection


def test_selection_rules_by_hand():
    a = torch.tensor([0.1, 0.2, 0.3, 0.9, 0.95, 0.2])
    # by hand: mean 2.65 / 6 = 0.441667; population variance 0.722083 / 6 = 0.120347, std 0.346911
    idx, thr = select_channels(a, TrimmingConfig())
    assert thr == pytest.approx(0.441667 + 0.346911, abs=2e-6)
    assert idx == [3, 4]
    assert select_channels(a, TrimmingConfig(k=2.0))[0] == []
    assert select_channels(a, TrimmingConfig(rule="threshold", threshold=0.25))[0] == [2, 3, 4]
    assert select_channels(a, TrimmingConfig(rule="fraction", fraction=0.5))[0] == [2, 3, 4]
    assert select_channels(a, TrimmingConfig(rule="fraction", fraction=0.3))[0] == [3, 4]  # round(1.8) = 2
    # rails: the highest APoZ go first, and min_channels / max_fraction / round_to cap the count
    assert select_channels(a, TrimmingConfig(rule="threshold", threshold=0.0, min_channels=4))[0] == [3, 4]
    assert select_channels(a, TrimmingConfig(rule="threshold", threshold=0.0, max_fraction=0.5))[0] == [2, 3, 4]
    assert select_channels(a, TrimmingConfig(rule="threshold", threshold=0.25, round_to=4))[0] == [3, 4]
    assert select_channels(torch.full((8,), 0.5), TrimmingConfig())[0] == []  # std 0: nothing stands out


def test_paper_order_trims_the_layer_of_highest_mean_apoz():
    groups = NetworkTrimming().groups(tiny_lenet(), torch.zeros(1, 1, 8, 8))
    apoz = {"conv1": torch.tensor([0.1] * 19 + [0.9]), "conv2": torch.tensor([0.5] * 49 + [0.99]),
            "fc1": torch.tensor([0.2] * 499 + [0.95])}
    m = NetworkTrimming(order="highest_mean")
    assert m.plan(apoz, groups)[0] == {"conv2": [49]}
    assert NetworkTrimming(order="highest_mean", layers_per_iteration=2).plan(apoz, groups)[0] == {
        "conv2": [49], "fc1": [499]}
    assert NetworkTrimming(layers=["fc*"]).plan(apoz, groups)[0] == {"fc1": [499]}
    with pytest.raises(PrunekitError, match="matches no scorable layer"):
        NetworkTrimming(layers=["fc2"]).plan(apoz, groups)


def test_config_is_validated():
    assert get("trimming") is NetworkTrimming
    for bad, msg in [({"rule": "median"}, "rule must be one of"), ({"k": "1"}, "k must be a number"),
                     ({"threshold": 1.0}, "threshold must be"), ({"iterations": 0}, "iterations must be"),
                     ({"min_channels": 0}, "min_channels"), ({"layers": []}, "layers must be"),
                     ({"order": "random"}, "order must be"), ({"apoz_data": "test"}, "apoz_data must be"),
                     ({"evaluate_trims": 1}, "evaluate_trims must be true or false"),
                     ({"max_fraction": 0}, "max_fraction"), ({"wat": 1}, "no option 'wat'")]:
        with pytest.raises(PrunekitError, match=msg) as exc:
            NetworkTrimming(bad)
        assert "\n" not in str(exc.value)


def test_stages_split_the_budget():
    def shape(m, e):
        return [(s.name, s.epochs, s.kind) for s in m.stages(e)]

    assert shape(NetworkTrimming(iterations=2), 10) == [("train", 4, "train"), ("trim1", 3, "retrain"),
                                                        ("trim2", 3, "retrain")]
    assert shape(NetworkTrimming(iterations=2, initial_epochs=0), 6) == [("trim1", 3, "retrain"),
                                                                         ("trim2", 3, "retrain")]
    assert shape(NetworkTrimming(iterations=3, retrain_epochs=2), 10) == [
        ("train", 4, "train"), ("trim1", 2, "retrain"), ("trim2", 2, "retrain"), ("trim3", 2, "retrain")]
    stage = NetworkTrimming(iterations=1, retrain_lr=0.01).stages(4)[1]
    assert stage.lr == 0.01 and stage.info == {"iteration": 1}
    with pytest.raises(PrunekitError, match="exceeds the budget"):
        NetworkTrimming(initial_epochs=5).stages(3)


# ----------------------------------------------------------------------------------------- trimming


def _outputs(model, x):
    model.eval()
    with torch.no_grad():
        return model(x)


def test_dead_neuron_and_channel_are_removed_and_outputs_do_not_change():
    model = tiny_lenet(1)
    with torch.no_grad():
        for layer in (model.conv2, model.fc1):  # inputs are >= 0 (after ReLU), so these never output 0
            layer.weight.abs_()
            layer.bias.fill_(0.1)
        model.conv2.weight[7].zero_()
        model.conv2.bias[7] = -1.0  # relu2 channel 7 is always 0
        model.fc1.weight[123].zero_()
        model.fc1.bias[123] = -0.5  # relu3 neuron 123 is always 0
    train, _ = synthetic(96, 48)
    x = next(iter(data.iterate(train, 96, shuffle=False, augment=None)))[0]
    ref = _outputs(model, x)
    m = NetworkTrimming(rule="threshold", threshold=0.999, progress=False)
    batches = list(data.iterate(train, 32, shuffle=False, augment=None))
    out, rec = m.trim(model, batches, torch.zeros(1, 1, 8, 8))
    assert rec["removed"] == {"conv2": [7], "fc1": [123]}
    assert rec["apoz"]["conv2"][7] == 1.0 and rec["apoz"]["fc1"][123] == 1.0
    assert out.conv2.out_channels == 49 and out.fc1.in_features == 49 * 4 and out.fc1.out_features == 499
    torch.testing.assert_close(_outputs(out, x), ref, rtol=2e-5, atol=1e-5)  # only the summation order differs


def test_paper_rule_removes_only_the_dead_neuron():
    # a layer whose neurons are never zero except one: mean 1/6, std 0.373 -> threshold 0.54
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.cat([torch.eye(4), torch.ones(1, 4), torch.zeros(1, 4)]))
        model[0].bias.copy_(torch.tensor([0.1, 0.1, 0.1, 0.1, 0.1, -1.0]))
    x = torch.rand(20, 4)
    ref = _outputs(model, x)
    out, rec = NetworkTrimming(progress=False).trim(model, [x[:8], x[8:]], torch.zeros(1, 4))
    assert rec["thresholds"]["0"] == pytest.approx(1 / 6 + math.sqrt(5) / 6)
    assert rec["removed"] == {"0": [5]} and out[0].out_features == 5
    torch.testing.assert_close(_outputs(out, x), ref, rtol=0, atol=1e-6)


def test_residual_group_is_scored_as_one_and_removed_together():
    torch.manual_seed(0)
    model = models.create("resnet20")
    c = 5  # make channel 5 of the first stage zero everywhere: stem ReLU and every block's act
    with torch.no_grad():
        model.bn1.weight[c] = 0.0
        model.bn1.bias[c] = -1.0
        for blk in model.layer1:
            blk.branch.bn2.weight[c] = 0.0
            blk.branch.bn2.bias[c] = -1.0
        model.layer1[1].branch.bn2.bias[2] = -50.0  # zero at one act only: pooled APoZ stays well below 1
    x = torch.randn(6, 3, 32, 32)
    ref = _outputs(model, x)
    m = NetworkTrimming(rule="threshold", threshold=0.999, layers=["conv1"], progress=False)
    out, rec = m.trim(model, [x[:3], x[3:]], torch.zeros(1, 3, 32, 32))
    assert rec["groups"]["conv1"]["points"] == ["relu", "layer1.0.act", "layer1.1.act", "layer1.2.act"]
    assert rec["apoz"]["conv1"][c] == 1.0 and rec["apoz"]["conv1"][2] < 0.75
    assert rec["removed"] == {"conv1": [c]}
    widths = [out.conv1.out_channels] + [b.branch.conv2.out_channels for b in out.layer1]
    assert widths == [15, 15, 15, 15] and out.layer2[0].shortcut.conv.in_channels == 15
    torch.testing.assert_close(_outputs(out, x), ref, rtol=0, atol=1e-4)


def test_functional_relu_and_shared_relu_are_measured_where_they_read_and_a_sigmoid_is_refused():
    class Functional(nn.Module):
        def __init__(self, act):
            super().__init__()
            self.fc1, self.fc2, self.act = nn.Linear(4, 8), nn.Linear(8, 2), act

        def forward(self, x):
            return self.fc2(self.act(self.fc1(x)))

    torch.manual_seed(0)
    x = torch.randn(64, 4)
    model = Functional(F.relu)
    ref = (model.fc1(x) <= 0).double().mean(0)  # APoZ of the functional relu = share of non-positive inputs
    trim = NetworkTrimming(progress=False, rule="fraction", fraction=0.25)
    groups = trim.groups(model, x[:1])
    assert [(g.name, g.points, g.rule) for g in groups] == [("fc1", ["fc1@last"], "apoz")]  # channels: last dim
    torch.testing.assert_close(trim.measure(model, [x], groups)["fc1"], ref)
    pruned, rec = trim.trim(model, [x], x[:1])
    assert pruned.fc1.out_features == 6 and rec["removed"]["fc1"] == sorted(ref.argsort(descending=True,
                                                                                     stable=True)[:2].tolist())
    gelu = NetworkTrimming(progress=False).groups(Functional(nn.GELU()), x[:1])
    assert [(g.points, g.rule) for g in gelu] == [(["fc1@last"], "non-positive share (ours)")]
    with pytest.raises(PrunekitError, match=r"no channel group of Functional can be scored.*'fc1'.*sigmoid"):
        NetworkTrimming(progress=False).trim(Functional(torch.sigmoid), [x], x[:1])


# ----------------------------------------------------------------------------------------- schedule


def _check_bookkeeping(m, model, n_iter, example):
    recs = m.records
    assert [r["iteration"] for r in recs] == list(range(n_iter + 1))
    for prev, cur in itertools.pairwise(recs):
        for g, n in cur["removed"].items():
            assert cur["widths"][g] == prev["widths"][g] - n  # widths follow the removals
            assert len(cur["removed_channels"][g]) == n
        assert cur["params"] <= prev["params"]
        # APoZ of every scorable layer measured on the network before trim t; thresholds of the chosen ones
        assert set(cur["removed"]) <= set(prev["thresholds"]) <= set(prev["apoz"])
        for g, a in prev["apoz"].items():
            assert a.numel() == prev["widths"][g]
    final = recs[-1]
    assert final["params"] == metrics.count(model, example).params
    assert final["widths"] == {n: (getattr(mod, "out_channels", None) or mod.out_features)
                               for n, mod in model.named_modules() if isinstance(mod, nn.Conv2d | nn.Linear)}


class AfterTrim(Callback):
    """Runs after the method's on_stage_start: sees the freshly trimmed model."""

    def __init__(self):
        self.seen = []

    def on_stage_start(self, trainer, stage):
        if stage.kind == "retrain":
            ev = evaluate(trainer.raw_model, trainer.val_data, batch_size=48)
            self.seen.append((trainer.raw_model.fc1.out_features, ev["top1"]))


def test_trainer_runs_iterations_with_bookkeeping_and_report(tmp_path):
    train, test = synthetic(96, 48)
    m = NetworkTrimming(iterations=2, rule="fraction", fraction=0.2, layers=["conv2", "fc1"], progress=False)
    after = AfterTrim()
    trainer = Trainer(tiny_lenet(), train, test, optim=_optim(), config=_cfg(), callbacks=[m, after],
                      out_dir=tmp_path)
    trainer.fit(m.stages(3))
    assert after.seen == [(r["widths"]["fc1"], r["top1_trimmed"]) for r in m.records[1:]]
    assert m.records[-1]["next_removed"] == {"conv2": 6, "fc1": 64}  # what a third iteration would take
    model = trainer.raw_model
    _check_bookkeeping(m, model, 2, trainer.example_inputs)
    assert [r["widths"]["conv2"] for r in m.records] == [50, 40, 32]
    assert [r["widths"]["fc1"] for r in m.records] == [500, 400, 320]
    assert all(r["top1"] is not None for r in m.records)  # after training / each retrain
    assert all(r["top1_trimmed"] is not None for r in m.records[1:])
    assert m.records[-1]["apoz"]["fc1"].numel() == 320  # final network measured too
    res = m.finalize(model, trainer.example_inputs)
    rep = res.report
    assert res.model is model and not res.sparse
    assert [it["iteration"] for it in rep["iterations"]] == [0, 1, 2]
    assert sum(rep["iterations"][0]["apoz_hist"]["fc1"]) == 500
    lines = rep["table"].splitlines()
    assert len(lines) == 5 and "conv2" in lines[0] and "params" in lines[0]
    assert Path(rep["plot"]) == tmp_path / "trimming_apoz.png" and Path(rep["plot"]).stat().st_size > 5000
    other = tmp_path / "sub" / "a.png"
    assert m.plot(other) == other and other.exists()


def test_users_own_loop():
    train, _ = synthetic(96, 48)
    m = NetworkTrimming(iterations=2, rule="fraction", fraction=0.25, layers=["fc1"], progress=False,
                        apoz_data=train)
    state = LoopState(tiny_lenet())
    example = torch.zeros(1, 1, 8, 8)
    for stage in m.stages(3):
        m.on_stage_start(state, stage)
        opt = torch.optim.SGD(state.model.parameters(), lr=0.05, momentum=0.9)  # rebuilt: the model changed
        for _ in range(stage.epochs):
            for x, y in data.iterate(train, 32, shuffle=True, augment=None):
                F.cross_entropy(state.model(x), y).backward()
                opt.step()
                opt.zero_grad()
            m.on_epoch_end(state, {"val_top1": 50.0})
        m.on_stage_end(state, stage)
    assert state.model.fc1.out_features == 281  # 500 - round(125) = 375, 375 - round(93.75) = 281
    _check_bookkeeping(m, state.model, 2, example)
    assert m.finalize(state.model, example).report["iterations"][2]["top1"] == 50.0
    with pytest.raises(PrunekitError, match="pass apoz_data= to NetworkTrimming"):
        NetworkTrimming().on_stage_start(LoopState(tiny_lenet()), m.stages(3)[1])


@pytest.mark.parametrize("kill_at", [5, 7])  # 5: mid retrain stage 1 (after the trim); 7: mid stage 2
def test_resume_across_a_trim_is_exact(tmp_path, kill_at):
    train, test = synthetic(96, 48)
    stages = NetworkTrimming(iterations=2).stages(3)
    cfg = _cfg(checkpoint_every_steps=2)

    def method():
        return NetworkTrimming(iterations=2, rule="fraction", fraction=0.2, progress=False, final_apoz=False)

    ref_m = method()
    ref = Trainer(tiny_lenet(), train, test, optim=_optim(), config=cfg, callbacks=[ref_m, Kill(None)])
    ref.fit(stages)
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        Trainer(tiny_lenet(), train, test, optim=_optim(), config=cfg, callbacks=[method(), Kill(kill_at)],
                out_dir=run).fit(stages)
    torch.manual_seed(4321)
    res_m = method()
    resumed = Trainer(tiny_lenet(seed=7), train, test, optim=_optim(), config=cfg, callbacks=[res_m, Kill(None)],
                      out_dir=run)
    resumed.fit(stages, resume=True)
    a, b = ref.raw_model.state_dict(), resumed.raw_model.state_dict()
    assert list(a) == list(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert [r["widths"] for r in res_m.records] == [r["widths"] for r in ref_m.records]
    assert [r["top1"] for r in res_m.records] == [r["top1"] for r in ref_m.records]


def _ddp_worker(rank: int, world: int, init_file: str, out: str) -> None:
    with gloo_group(rank, world, init_file):
        train, test = synthetic(128, 48)
        shard = data.iterate(train, 16, shuffle=False, augment=None, rank=rank, world_size=world)
        apoz = collect_apoz(tiny_lenet(), shard, progress=False)  # counts summed over both ranks
        m = NetworkTrimming(iterations=1, rule="paper", progress=False)
        tr = Trainer(tiny_lenet(), train, test, optim=_optim(), config=_cfg(max_steps_per_epoch=2), callbacks=[m])
        tr.fit(m.stages(2))
        assert isinstance(tr.model, torch.nn.parallel.DistributedDataParallel)
        flat = torch.cat([p.detach().flatten() for p in tr.raw_model.parameters()])
        torch.save({"apoz": apoz, "flat": flat, "removed": m.records[1]["removed_channels"],
                    "widths": m.records[1]["widths"]}, f"{out}/rank{rank}.pt")


def test_ddp_counts_are_summed_and_ranks_trim_alike(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    train, _ = synthetic(128, 48)
    whole = collect_apoz(tiny_lenet(), data.iterate(train, 128, shuffle=False, augment=None), progress=False)
    for k in whole:  # each rank saw half the images; after the all-reduce both hold the whole-set APoZ
        assert torch.equal(r0["apoz"][k], whole[k]) and torch.equal(r1["apoz"][k], whole[k])
    assert r0["removed"] == r1["removed"] and any(r0["removed"].values())
    assert r0["widths"] == r1["widths"]
    assert torch.equal(r0["flat"], r1["flat"])


# ----------------------------------------------------------------------------------------- recipes


def test_every_recipe_loads():
    paths = sorted(CONFIGS.glob("*.yaml"))
    assert len(paths) >= 5
    for p in paths:
        cfg = load_config(p)
        assert cfg["method"]["name"] == "trimming", p
        NetworkTrimming({k: v for k, v in cfg["method"].items() if k != "name"}).stages(cfg["train"]["epochs"])
