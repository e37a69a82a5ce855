"""The command line: happy paths on tiny runs, and every kind of bad input -> exit 2 with one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from prunekit import cli, io, models
from tests.helpers import one_line

TINY = ["--set", "data.name=digits", "--set", "train.epochs=1", "--set", "train.batch_size=64",
        "--set", "train.device=cpu", "--set", "optim.lr=0.05", "--quiet"]


@pytest.fixture
def recipe(tmp_path):
    p = tmp_path / "tiny.yaml"
    p.write_text("model: {name: lenet5}\ndata: {name: digits}\ntrain: {epochs: 1}\n")
    return p


def test_train_writes_model_report_and_resumes(tmp_path, recipe, capsys):
    out = tmp_path / "run"
    assert cli.main(["train", str(recipe), "--out", str(out), *TINY]) == 0
    text = capsys.readouterr().out
    assert "top-1 %" in text and f"saved: {out / 'model.safetensors'}" in text
    rep = json.loads((out / "report.json").read_text())
    assert rep["figures"]["params"] == sum(p.numel() for p in io.load(out / "model.safetensors").parameters())
    assert (out / "checkpoint.safetensors").exists() and (out / "log.jsonl").exists()
    # resuming a finished run trains nothing more and gives the same model
    before = io.load(out / "model.safetensors").state_dict()
    assert cli.main(["train", str(recipe), "--out", str(out), "--resume", *TINY]) == 0
    after = io.load(out / "model.safetensors").state_dict()
    assert all((before[k] == after[k]).all() for k in before)


def test_info_table(capsys):
    assert cli.main(["info", "lenet5"]) == 0
    out = capsys.readouterr().out
    assert "conv1" in out and "431,080 params" in out


def test_eval_and_export(tmp_path, capsys):
    path = io.save(models.create("lenet5", input_size=8), tmp_path / "m.safetensors")
    assert cli.main(["eval", str(path), "--data", "digits"]) == 0
    assert "top-1" in capsys.readouterr().out
    onnx_path = tmp_path / "m.onnx"
    assert cli.main(["export", str(path), "--to", "onnx", "--out", str(onnx_path), "--input-shape", "1,8,8"]) == 0
    onnx = pytest.importorskip("onnx")
    onnx.checker.check_model(onnx.load(str(onnx_path)))


def test_missing_config(tmp_path, capsys):
    one_line(capsys, cli.main(["train", str(tmp_path / "nope.yaml")]), "nope.yaml", "not found")


def test_bad_yaml(tmp_path, capsys):
    p = tmp_path / "bad.yaml"
    p.write_text("train: {epochs: [\n")
    one_line(capsys, cli.main(["train", str(p)]), "bad.yaml", "YAML")


def test_unknown_key_lists_valid_ones(recipe, capsys):
    one_line(capsys, cli.main(["train", str(recipe), "--set", "optim.lrr=1"]), "lrr", "valid keys")


def test_wrong_dataset_name(recipe, tmp_path, capsys):
    code = cli.main(["train", str(recipe), "--set", "data.name=imagenet42", "--out", str(tmp_path / "o")])
    one_line(capsys, code, "imagenet42")
    assert not (tmp_path / "o" / "model.safetensors").exists()


def test_corrupt_checkpoint(tmp_path, capsys):
    p = tmp_path / "m.safetensors"
    p.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}......")
    one_line(capsys, cli.main(["eval", str(p), "--data", "digits"]), "m.safetensors")


def test_corrupt_resume_checkpoint(tmp_path, recipe, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint.safetensors").write_bytes(b"junk")
    code = cli.main(["train", str(recipe), "--out", str(out), "--resume", *TINY])
    one_line(capsys, code, "checkpoint.safetensors")


def test_prune_without_method(recipe, capsys):
    one_line(capsys, cli.main(["prune", str(recipe)]), "method")


def test_bad_input_shape(capsys):
    one_line(capsys, cli.main(["info", "lenet5", "--input-shape", "a,b"]), "C,H,W")


def test_unknown_command_and_option_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["fly"])
    assert e.value.code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_console_script_gives_no_traceback(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text(":\n  - : [")
    res = subprocess.run([sys.executable, "-m", "prunekit.cli", "prune", str(p)], capture_output=True, text=True,
                         cwd=Path(__file__).parent)
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    assert res.stderr.count("\n") == 1
