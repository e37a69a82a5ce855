"""The declared method contract (prunekit.methods.api): configs validated always, declared capabilities,
the TrainingLoop protocol, named checkpoint state."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from prunekit import methods
from prunekit.engine import LoopState, OptimConfig, Trainer, TrainerConfig, load_checkpoint, save_checkpoint
from prunekit.engine import seed_everything as seed
from prunekit.errors import PrunekitError
from prunekit.methods.api import FinalizeResult, MethodConfig, PruningMethod, TrainingLoop
from prunekit.methods.iht import IHT, IHTConfig
from prunekit.methods.sght import SGHT, SGHTConfig
from prunekit.methods.sss import SparseStructureSelection, SSSConfig
from prunekit.methods.trimming import NetworkTrimming, TrimmingConfig
from tests import helpers
from tests.helpers import one_line, synthetic, tiny_lenet


def _bnnet():
    seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))


@pytest.mark.parametrize("cls,bad", [
    (SGHT, SGHTConfig(nu=2.0, keep_ratio=7)),
    (SGHT, SGHTConfig(keep_ratio=7)),
    (IHT, IHTConfig(keep=1.5)),
    (SparseStructureSelection, SSSConfig(gamma_block=-1.0)),
    (NetworkTrimming, TrimmingConfig(iterations=-2)),
])
def test_a_config_object_is_validated_like_a_mapping(cls, bad):
    with pytest.raises(PrunekitError) as obj:
        cls(bad)
    with pytest.raises(PrunekitError) as mapping:
        cls({f: getattr(bad, f) for f in cls.config_keys()})
    assert str(obj.value) == str(mapping.value)
    assert "\n" not in str(obj.value)


def test_a_config_of_another_method_or_an_unknown_override_is_refused():
    with pytest.raises(PrunekitError, match="SGHTConfig"):
        SGHT(IHTConfig())
    with pytest.raises(PrunekitError, match="no option 'nope'"):
        SGHT(SGHTConfig(), nope=1)
    with pytest.raises(PrunekitError, match="keep_ratio"):
        SGHT(SGHTConfig(), keep_ratio=3.0)  # an override is validated too
    assert SGHT(SGHTConfig(), keep_ratio=0.5).config.keep_ratio == 0.5


def test_every_method_declares_its_capabilities():
    for name in methods.names():
        cls = methods.get(name)
        assert issubclass(cls, PruningMethod)
        assert isinstance(cls.starts_from_scratch, bool) and cls.from_scratch == cls.starts_from_scratch
        assert isinstance(cls.ends_sparse, bool)
        assert set(cls.budget_knobs) <= {"macs", "params", "latency"}
        assert all(k in cls.config_keys() for k in cls.budget_knobs.values()), name
        assert all(k in cls.config_keys() for k in cls.from_trained_options), name
        method = cls()
        assert all(k in cls.config_keys() for k in cls.default_options(8)), name
        assert method.state_key == name
    assert methods.get("sght").starts_from_scratch and not methods.get("iht").starts_from_scratch
    assert methods.get("iht").ends_sparse and not methods.get("dsd").ends_sparse
    assert methods.get("sght").budget_knobs == {"macs": "macs_budget", "params": "params_budget",
                                                "latency": "latency"}
    for name in ("sght", "l1-filter", "sfp", "tp-magnitude", "random-filter"):  # every filter method (#20)
        assert methods.get(name).budget_knobs["latency"] == "latency", name
    assert methods.get("iht").from_trained_options == {"warmup_epochs": 0}


def test_target_options_come_from_the_method():
    net = tiny_lenet()
    assert SGHT.target_options("macs", 0.3, net, {}) == {"macs_budget": 0.3}
    keep = IHT.target_options("params", 0.5, net, {})["keep"]
    assert 0 < keep < 0.5  # biases and BN stay dense, so the thresholded layers keep less than half
    with pytest.raises(PrunekitError, match="no macs budget"):
        IHT.target_options("macs", 0.5, net, {})
    with pytest.raises(PrunekitError, match="unreachable"):
        IHT.target_options("params", 1e-6, net, {})


def test_trainer_and_loop_state_are_training_loops():
    train, test = synthetic()
    assert isinstance(Trainer(tiny_lenet(), train, test, config=TrainerConfig(quiet=True)), TrainingLoop)
    assert isinstance(LoopState(tiny_lenet()), TrainingLoop)


def test_finalize_and_prune_return_one_type():
    x = torch.zeros(1, 1, 8, 8)
    for name in ("l1-filter", "tp-magnitude", "random-filter", "slimming", "tp-bnscale"):
        method = methods.get(name)()
        net = method.prepare(_bnnet())
        out = method.prune(net, x)
        assert isinstance(out, FinalizeResult) and isinstance(out.model, torch.nn.Module), name
    for name in methods.names():
        method = methods.get(name)()
        net = method.prepare(_bnnet())
        if name == "trimming":
            continue  # needs data to measure APoZ
        assert isinstance(method.finalize(net, x), FinalizeResult), name


class Counter(PruningMethod[MethodConfig]):
    """A toy callback-method whose state counts steps."""

    name = "counter"

    def __init__(self) -> None:
        super().__init__()
        self.steps = 0

    def on_after_optimizer_step(self, trainer: TrainingLoop) -> None:
        self.steps += 1

    def state_dict(self) -> dict:
        return {"steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.steps = int(state["steps"])


def test_checkpoint_state_is_named_per_callback_and_old_lists_still_resume(tmp_path):
    train, test = synthetic()
    cfg = TrainerConfig(batch_size=32, quiet=True)
    tr = Trainer(tiny_lenet(), train, test, optim=OptimConfig(lr=0.01), config=cfg, callbacks=[Counter()],
                 out_dir=tmp_path)
    tr.fit(1)
    st = load_checkpoint(tmp_path / "checkpoint.safetensors")
    assert st["callback_state"] == {"counter": {"steps": 3}} and "callbacks" not in st
    # another callback set is refused, naming what the checkpoint holds
    with pytest.raises(PrunekitError, match="holds counter"):
        Trainer(tiny_lenet(), train, test, config=cfg, callbacks=[SGHT()], out_dir=tmp_path).fit(1, resume=True)
    # a checkpoint of before named state (a positional list) resumes as before
    st["callbacks"] = [st.pop("callback_state")["counter"]]
    save_checkpoint(tmp_path / "checkpoint.safetensors", st)
    again = Counter()
    Trainer(tiny_lenet(), train, test, optim=OptimConfig(lr=0.01), config=cfg, callbacks=[again],
            out_dir=tmp_path).fit(1, resume=True)
    assert again.steps == 3


# ------------------------------------------------------------------------------------------- own loop
README = Path(__file__).resolve().parents[2] / "README.md"
CONSTRUCTOR = 'method = methods.get("sght")(keep_ratio=0.5)'
EPOCHS = "method.stages(epochs=10)"
PAPER_METHODS = {**helpers.PAPER_METHODS,  # the own loop runs stages(4): one retraining epoch
                 "trimming": {**helpers.PAPER_METHODS["trimming"], "retrain_epochs": 1}}


def own_loop_snippet() -> str:
    """The calls of the README's own-loop block, verbatim (the lines after its data-and-network setup)."""
    text = README.read_text()
    block = text.split("<!-- own-loop -->\n```python\n", 1)[1].split("```", 1)[0]
    imports = block.split("\n\n", 1)[0]
    calls = block.split("# ---- the same calls for every method ----\n", 1)[1]
    assert calls.startswith(CONSTRUCTOR) and EPOCHS in calls
    return imports + "\n" + calls


@pytest.mark.parametrize("name", sorted(PAPER_METHODS))
def test_each_paper_method_runs_through_the_readme_own_loop_snippet(name):
    train, _ = synthetic(64)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(train.images.float() / 255, train.labels), batch_size=32)
    model = tiny_lenet()
    dense = sum(p.numel() for p in model.parameters())
    code = own_loop_snippet().replace(CONSTRUCTOR, f"method = methods.get({name!r})(**{PAPER_METHODS[name]!r})")
    code = code.replace(EPOCHS, "method.stages(epochs=4)")
    scope = {"model": model, "loader": loader}
    exec(compile(code, str(README), "exec"), scope)  # the README's calls, unchanged but for the method
    method, pruned, state = scope["method"], scope["pruned"], scope["state"]
    assert state.step == sum(s.epochs for s in method.stages(4)) * 2
    out = pruned(torch.zeros(3, 1, 8, 8))
    assert out.shape == (3, 4) and torch.isfinite(out).all()
    params = sum(p.numel() for p in pruned.parameters())
    if method.ends_sparse:  # IHT: the same shapes, half of the thresholded weights exactly zero
        nonzero = sum(int((p != 0).sum()) for p in pruned.parameters())
        assert params == dense and nonzero < 0.6 * dense
    else:
        assert params < dense, name


# ------------------------------------------------------------------------------------ unreachable targets
UNREACHABLE = [
    (["method.name=iht", "method.target=1000000x"],
     "iht: keep=1e-06 (target 1e+06x) is unreachable: it leaves layer 'conv1'"),
    (["method.name=iht", "method.keep=1e-7", "method.scope=global"],
     "the 4 pooled layers (130500 weights) less than one weight"),
    (["method.name=slimming", "method.target_macs=1e-9"], "slimming: target_macs=1e-09 is unreachable"),
]


@pytest.mark.parametrize("sets,message", UNREACHABLE, ids=[" ".join(s) for s, _ in UNREACHABLE])
def test_unreachable_targets_stop_before_training_in_one_line(tmp_path, monkeypatch, capsys, sets, message):
    from prunekit import cli

    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: {name: lenet5}\ndata: {name: digits}\ntrain: {epochs: 6, batch_size: 64, device: cpu}\n")
    monkeypatch.setattr(Trainer, "_run_epoch", lambda self: pytest.fail("training started"))
    out = tmp_path / "run"
    args = ["prune", str(cfg), "--out", str(out), "--quiet"]
    for s in sets:
        args += ["--set", s]
    one_line(capsys, cli.main(args), message)
    assert not (out / "checkpoint.safetensors").exists()


def test_unreachable_targets_are_refused_in_a_users_loop_too():
    """No on_fit_start (a loop that skips it): the threshold / the prune refuses instead of clamping."""
    with pytest.raises(PrunekitError, match="unreachable"):
        IHT(target="1000000x").threshold(tiny_lenet())
    net = _bnnet()
    method = methods.get("slimming")(target_macs=1e-9)
    with pytest.raises(PrunekitError, match="unreachable"):
        method.prune(method.prepare(net), torch.zeros(1, 1, 8, 8))
    small = methods.get("slimming")(target_macs=0.5)
    assert small.prune(small.prepare(_bnnet()), torch.zeros(1, 1, 8, 8)).report["macs"]["after"] > 0
