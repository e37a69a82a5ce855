"""Reliability faults of issue #19, each with a real fault: device nodes and FIFOs at the output path, temp
files of a process killed with -9, real SIGINT, a real full file system, forged checkpoints and reports,
hostile names and model files. ``PRUNEKIT_SLOW_TESTS=1`` runs the longer signal loop."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from prunekit import cli, io, models, surgery
from prunekit.atomic import atomic_path, write_text
from prunekit.errors import PrunekitError
from tests.helpers import one_line, subprocess_env

REPO = Path(__file__).resolve().parents[2]
SLOW = bool(os.environ.get("PRUNEKIT_SLOW_TESTS"))
TRAIN_YAML = "model: {name: lenet5}\ndata: {name: digits}\ntrain: {epochs: 1, batch_size: 64, device: cpu}\n"


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    return io.save(models.create("lenet5", input_size=8), tmp_path / "m.safetensors")


# ------------------------------------------------------------------- 1. never replace a device node or FIFO


def _nodes(folder: Path) -> list[Path]:
    """A FIFO, and (as root) twins of /dev/null and /dev/full made with mknod, plus a symlink to one."""
    folder.mkdir()
    fifo = folder / "fifo"
    os.mkfifo(fifo)
    out = [fifo]
    try:
        for name, minor in (("null", 3), ("full", 7)):
            os.mknod(folder / name, 0o666 | stat.S_IFCHR, os.makedev(1, minor))
            out.append(folder / name)
    except PermissionError:
        pass  # not root: the FIFO still shows the refusal
    link = folder / "link"
    link.symlink_to(out[-1])
    return [*out, link]


@pytest.mark.parametrize("to", ["dense", "sparse", "onnx"])
def test_export_never_replaces_a_device_node_or_fifo(tmp_path: Path, model_file: Path, to: str,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    for node in _nodes(tmp_path / f"nodes-{to}"):
        kind = stat.S_IFMT(os.stat(node).st_mode)
        err = one_line(capsys, cli.main(["export", str(model_file), "--to", to, "--out", str(node)]))
        assert str(node) in err and "not a regular file" in err, err
        assert stat.S_IFMT(os.stat(node).st_mode) == kind  # still the node, not a regular file
        assert not [p.name for p in node.parent.iterdir() if p.name.endswith(".tmp")]


def test_atomic_writer_refuses_nodes_and_folders_but_replaces_files(tmp_path: Path) -> None:
    for node in [*_nodes(tmp_path / "nodes"), tmp_path / "nodes"]:
        with pytest.raises(PrunekitError, match="not a regular file"):
            write_text(node, "x")
    f = tmp_path / "f.txt"
    f.write_text("old")
    write_text(f, "new")
    assert f.read_text() == "new"


# ------------------------------------------------------- 6. temp files of kill -9, target names, long names


def _killed_mid_write(target: Path, tmp: Path) -> Path:
    """A real process that dies by SIGKILL inside the atomic writer; returns the temp file it left."""
    code = ("import os, signal, sys\nfrom prunekit.atomic import atomic_path\n"
            "with atomic_path(sys.argv[1]) as tmp:\n    tmp.write_text('half')\n"
            "    os.kill(os.getpid(), signal.SIGKILL)\n")
    before = set(target.parent.iterdir()) if target.parent.exists() else set()
    res = subprocess.run([sys.executable, "-c", code, str(target)], env=subprocess_env(tmp), timeout=60)
    assert res.returncode == -signal.SIGKILL
    left = [p for p in set(target.parent.iterdir()) - before if p.name.endswith(".tmp")]
    assert len(left) == 1, left
    return left[0]


def test_temp_files_of_a_killed_run_are_swept_on_resume(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "t.yaml"
    cfg.write_text(TRAIN_YAML)
    out = tmp_path / "run"
    assert cli.main(["train", str(cfg), "--out", str(out), "--quiet", "--set", "train.max_steps_per_epoch=2"]) == 0
    left = [_killed_mid_write(out / "log.jsonl", tmp_path), _killed_mid_write(out / "model.safetensors", tmp_path)]
    legacy = out / ".report.json.k3j9x_a1.tmp"  # the pid-less name of prunekit 0.1.0
    legacy.write_text("half")
    keep = out / "notes.tmp"  # not prunekit's pattern: never touched
    keep.write_text("mine")
    live = out / f".log.jsonl.{os.getpid()}-abcdefgh.tmp"  # a live writer's file: kept
    live.write_text("busy")
    assert all(p.exists() for p in left)
    assert cli.main(["train", str(cfg), "--out", str(out), "--quiet", "--resume",
                     "--set", "train.max_steps_per_epoch=2"]) == 0
    capsys.readouterr()
    assert not any(p.exists() for p in [*left, legacy])
    assert keep.read_text() == "mine" and live.exists()


def test_rewriting_a_target_sweeps_its_own_stale_temp_files(tmp_path: Path) -> None:
    from prunekit.atomic import sweep_stale

    target = tmp_path / "out" / "a.txt"
    target.parent.mkdir()
    stale = _killed_mid_write(target, tmp_path)
    other = _killed_mid_write(tmp_path / "out" / "b.txt", tmp_path)
    write_text(target, "done")
    assert target.read_text() == "done" and not stale.exists() and other.exists()
    assert sweep_stale(tmp_path / "out") == [other] and not other.exists()


def test_a_245_character_file_name_works(tmp_path: Path) -> None:
    model = models.create("lenet5", input_size=8)
    name = "m" * (245 - len(".safetensors")) + ".safetensors"
    assert len(name) == 245
    for save in (io.save, surgery.save_sparse):
        path = tmp_path / save.__name__ / name
        save(model, path)
        assert path.is_file() and not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    assert io.load(tmp_path / "save" / name).fc1.weight.shape == model.fc1.weight.shape


def test_write_errors_name_the_target_not_the_temp_file(tmp_path: Path, model_file: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    too_long = tmp_path / ("x" * 300 + ".safetensors")  # ENAMETOOLONG from the real file system
    err = one_line(capsys, cli.main(["export", str(model_file), "--to", "dense", "--out", str(too_long)]))
    assert str(too_long) in err and ".tmp" not in err, err
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(PrunekitError) as e, atomic_path(blocker / "under" / "x"):
        pass
    assert str(blocker / "under" / "x") in str(e.value) and ".tmp" not in str(e.value)


# ------------------------------------------------------------------ 19. strings from outside are escaped

FORGED = "x\n\x1b[2K\rprunekit: error: \x1b[32mall good\u202e"


def _assert_escaped(err: str) -> None:
    assert len(err.strip().splitlines()) == 1, err
    assert not any(c in err.strip() for c in "\x1b\r\u202e"), repr(err)


def test_hostile_sparse_entry_key_cannot_forge_lines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A sparse file whose entry key holds a newline, a carriage return, ANSI and bidi codes."""
    src = surgery.save_sparse(models.create("lenet5", input_size=8), tmp_path / "s.safetensors")
    tensors, doc = io.read_safetensors(src)
    doc["entries"][0].update(key=FORGED, dtype="nosuch")  # the error starts with the key: "<key>: unknown dtype"
    bad = tmp_path / "bad.safetensors"
    io.write_safetensors(bad, tensors, doc)
    for argv in (["info", str(bad)], ["export", str(bad), "--to", "dense", "--out", str(tmp_path / "o")]):
        code = cli.main(argv)
        err = capsys.readouterr().err
        assert code == 2, err
        _assert_escaped(err)
        assert err.startswith("prunekit: error:") and "\\x1b" in err, err


def test_hostile_path_names_cannot_forge_lines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / f"{FORGED}.safetensors"
    assert cli.main(["info", str(missing)]) == 2
    _assert_escaped(capsys.readouterr().err)
    cfg = tmp_path / f"{FORGED}.yaml"
    cfg.write_text("model: {name: nosuch}\n")
    assert cli.main(["train", str(cfg)]) == 2
    _assert_escaped(capsys.readouterr().err)
    with pytest.raises(SystemExit) as e:  # argparse's own errors go through the same printer
        cli.main(["info", "lenet5", "--input-shape", "1,2", "--nosuch" + FORGED])
    assert e.value.code == 2
    _assert_escaped(capsys.readouterr().err)


def test_one_place_prints_the_error_line() -> None:
    """``prunekit: error:`` is written by cli.fail only; every other module raises PrunekitError."""
    pkg = Path(cli.__file__).parent
    hits = [(str(p.relative_to(pkg)), line) for p in pkg.rglob("*.py")
            for line in p.read_text().splitlines() if "prunekit: error:" in line and "print(" in line]
    assert hits == [("cli.py", '    print(f"prunekit: error: {escape(str(message))}", file=sys.stderr)')], hits


# ------------------------------------------------------------------------- 18. Ctrl-C in the first second

# The console script's body (setuptools writes the same two lines), after a marker that says the interpreter
# itself has started: the signal then lands in prunekit's own start-up (imports, parsing) or in main(). Only
# the first ~50 ms (Python's own start and importing argparse for prunekit.cli) are not covered.
_CONSOLE = ("import sys; sys.stderr.write('go\\n'); sys.stderr.flush()\n"
            "from prunekit.cli import main\nsys.exit(main())\n")


def _as_in_a_terminal() -> None:
    """Ctrl-C reaches a command run in a terminal; a test runner started in the background (``cmd &``) would
    hand its children SIGINT ignored, so restore the default as a shell's foreground job has it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("delay", [0.25, 0.5, 0.8, 1.5] + ([0.1 + 0.05 * i for i in range(40)] if SLOW else []))
def test_ctrl_c_in_the_first_second_is_one_line(tmp_path: Path, delay: float) -> None:
    cfg = tmp_path / "t.yaml"
    cfg.write_text(TRAIN_YAML.replace("epochs: 1,", "epochs: 1000,"))  # still running whenever the signal lands
    proc = subprocess.Popen([sys.executable, "-c", _CONSOLE, "train", str(cfg), "--out", str(tmp_path / "run"),
                             "--quiet"], env=subprocess_env(tmp_path), stderr=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, preexec_fn=_as_in_a_terminal)
    assert proc.stderr is not None
    assert proc.stderr.readline() == "go\n"
    import time

    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert proc.returncode == 130, err
    assert err.strip() == "prunekit: interrupted; rerun with --resume to continue from the last checkpoint", err


# -------------------------------------------------------------------------- 22. hints that point somewhere


def test_the_download_hint_is_a_real_option(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The not-found message's CLI hint is an option the CLI and the config accept."""
    import re
    import shlex

    from prunekit import config
    from prunekit.data import loaders

    monkeypatch.delenv("PRUNEKIT_DATA", raising=False)  # no MNIST anywhere: the not-found message
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(loaders, "repo_root", lambda: None)
    monkeypatch.setattr(loaders, "SYSTEM_DIRS", {})

    empty = tmp_path / "empty"
    empty.mkdir()
    cfg = tmp_path / "m.yaml"
    cfg.write_text("model: {name: lenet5}\ndata: {name: mnist}\ntrain: {epochs: 1}\n")
    err = one_line(capsys, cli.main(["train", str(cfg), "--data-dir", str(empty), "--out", str(tmp_path / "r")]))
    m = re.search(r"\(CLI: ([^)]*)\)", err)
    assert m, err
    hint = shlex.split(m.group(1))
    args = cli.build_parser().parse_args(["train", str(cfg), *hint])
    assert config.load_config(str(cfg), args.overrides)["data"]["download"] is True


def _config_commands() -> list[tuple[Path, list[str]]]:
    import re
    import shlex

    out = []
    for f in sorted((REPO / "configs").rglob("*.yaml")):
        for line in f.read_text().splitlines():
            if not line.startswith("#"):
                break
            m = re.search(r"\bprunekit ([a-z]+ configs/.*)", line)
            if m:
                text = re.sub(r"<[^>]*>", "X", m.group(1).split("  (")[0].split(" (")[0])
                out.append((f, shlex.split(text)))
    return out


def test_config_headers_name_real_commands() -> None:
    """Every ``prunekit ...`` command in a config's header parses, and names a config file that exists."""
    cmds = _config_commands()
    assert len(cmds) >= 20
    parser = cli.build_parser()
    for f, argv in cmds:
        try:
            args = parser.parse_args(argv)
        except SystemExit:
            pytest.fail(f"{f.relative_to(REPO)}: header command does not parse: prunekit {' '.join(argv)}")
        assert (REPO / args.config).is_file(), (f, argv)


def test_demo_with_an_unknown_method_fails_before_training(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    err = one_line(capsys, cli.main(["demo", "--methods", "sght,nosuch", "--out", str(out), "--epochs", "1"]))
    assert "nosuch" in err, err
    assert not out.exists()


def test_info_on_a_device_or_folder_says_what_it_is(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for path, kind in (("/dev/zero", "a character device"), (str(tmp_path), "a folder")):
        err = one_line(capsys, cli.main(["info", path]))
        assert f"{path}: is {kind}" in err and "no such file" not in err, err
        err = one_line(capsys, cli.main(["eval", path, "--data", "digits"]))
        assert kind in err, err


# ------------------------------------------------------------- 17. hostile report.json and results.csv


def _run_folder(root: Path, name: str, figures: object) -> Path:
    import json

    d = root / name
    d.mkdir(parents=True)
    (d / "report.json").write_text(json.dumps({"figures": figures}))  # json writes inf/NaN as Infinity/NaN
    return d


HOSTILE_VALUES = ["12", float("inf"), float("nan"), -float("inf"), [1], {"a": 1}, True, 10**400, "x\n\x1b[31m"]


@pytest.mark.parametrize("key", ["macs", "top1", "params", "nonzero_params", "file_bytes", "method"])
def test_report_of_hostile_report_json_warns_and_never_crashes(tmp_path: Path, key: str,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    good = {"method": "dense", "params": 1000, "nonzero_params": 1000, "macs": 5000, "top1": 97.5,
            "file_bytes": 4000, "latency_ms_b1": 0.5}
    ref = _run_folder(tmp_path, "ref", good)
    for i, value in enumerate(HOSTILE_VALUES):
        if key == "method" and value == "12":
            continue  # a fine name
        bad = _run_folder(tmp_path, f"bad{i}", {**good, "method": "sght", key: value})
        code = cli.main(["report", str(ref), str(bad), "--out", str(tmp_path / f"o{i}")])
        out, err = capsys.readouterr()
        assert code == 0, err
        assert err.count("\n") == 1 and err.startswith(f"prunekit: warning: {bad / 'report.json'}: figures.{key}"), err
        assert "\x1b" not in out + err
        assert (tmp_path / f"o{i}" / "plot.png").is_file()
    for doc in ("[1, 2]", '{"figures": "ab"}', '{"figures": [[1, 2]]}', "[" * 100_000):
        d = tmp_path / f"doc{len(doc)}{doc[:3]}"
        d.mkdir()
        (d / "report.json").write_text(doc)
        assert "not a prunekit report" in one_line(capsys, cli.main(["report", str(d)]))


def _compare_folder(tmp_path: Path) -> Path:
    from prunekit import compare

    rows = []
    for seed in (0, 1):
        for label, method, macs in (("dense", "dense", 5000), ("sght@macs=0.5", "sght", 2500)):
            rows.append({"run": f"runs/{label}/seed{seed}", "label": label, "method": method, "seed": seed,
                         "start": "dense", "target_kind": None if method == "dense" else "macs",
                         "target": None if method == "dense" else 0.5, "matched": method != "dense",
                         "train_epochs": 2, "params": 1000, "nonzero_params": 1000 - 500 * (method != "dense"),
                         "macs": macs, "params_frac": 1.0, "nonzero_frac": 1.0, "macs_frac": macs / 5000,
                         "top1": 97.0 + seed, "top5": 99.0, "test_loss": 0.1, "latency_ms_b1": 0.5,
                         "latency_batch": 64, "latency_ms_batch": 5.0, "file_bytes": 4000, "sparse_file": False,
                         "train_seconds": 1.0})
    d = tmp_path / "cmp"
    d.mkdir()
    compare.write_results(rows, d)
    return d


def test_report_of_hostile_results_csv_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Every column, and the required ones empty: a real compare folder's results.csv, one cell at a time."""
    import csv

    from prunekit import compare

    d = _compare_folder(tmp_path)
    assert cli.main(["report", str(d)]) == 0  # the genuine file reports
    capsys.readouterr()
    text = (d / "results.csv").read_text()
    header = next(csv.reader([text.splitlines()[0]]))
    values = ["abc", "inf", "-inf", "nan", "1e400", "", "x\x1b[31m", "9" * 400] if SLOW else ["abc", "inf", ""]
    columns = header if SLOW else ["seed", "macs", "top1", "nonzero_params", "macs_frac", "matched"]
    for col in columns:
        for value in values:
            rows = list(csv.DictReader(text.splitlines()))
            rows[1][col] = value
            with open(d / "results.csv", "w", newline="") as fh:
                w = csv.DictWriter(fh, fieldnames=header, lineterminator="\n")
                w.writeheader()
                w.writerows(rows)
            code = cli.main(["report", str(d)])
            err = capsys.readouterr().err
            assert code in (0, 2), (col, value, err)
            if code == 2:
                assert len(err.strip().splitlines()) == 1 and err.startswith("prunekit: error:"), (col, value, err)
                assert "\x1b" not in err
            else:
                required = ("label", "method", "seed", "macs", "top1", "nonzero_params")
                numeric = compare.INT_COLUMNS | compare.FLOAT_COLUMNS | compare.BOOL_COLUMNS
                assert (value == "" and col not in required) or (value and value.isprintable() and col not in numeric
                                                                 and len(value) < 1000), (col, value)
    assert set(compare.CSV_COLUMNS) == set(header)


# ------------------------------------------------------------------ 14. forged checkpoints on --resume


def _forge(kind: str, s: dict) -> None:
    o = s["optimizers"][0]
    g = o["param_groups"][0]
    buf = o["state"][0]["momentum_buffer"]
    if kind == "momentum 'x'":
        g["momentum"] = "x"
    elif kind == "nesterov 'x'":
        g["nesterov"] = "x"
    elif kind == "lr 1e308":
        g["lr"] = 1e308
    elif kind == "base_lrs 1e308":
        s["base_lrs"] = [[1e308] * len(b) for b in s["base_lrs"]]
    elif kind == "momentum buffer of the wrong shape":
        o["state"][0]["momentum_buffer"] = torch.zeros(3)
    elif kind == "momentum buffer of integers":
        o["state"][0]["momentum_buffer"] = buf.to(torch.int64)
    elif kind == "momentum buffer of inf":
        o["state"][0]["momentum_buffer"] = torch.full_like(buf, float("inf"))
    elif kind == "state of a parameter no group holds":
        o["state"][99] = {"momentum_buffer": buf.clone()}


FORGERIES = ["momentum 'x'", "nesterov 'x'", "lr 1e308", "base_lrs 1e308", "momentum buffer of the wrong shape",
             "momentum buffer of integers", "momentum buffer of inf", "state of a parameter no group holds"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A real 2-epoch CLI run whose checkpoint is then set back to the end of epoch 1 (so --resume trains)."""
    from prunekit.engine import load_checkpoint

    root = tmp_path_factory.mktemp("ckpt")
    cfg = root / "t.yaml"
    cfg.write_text(TRAIN_YAML.replace("epochs: 1", "epochs: 2"))
    out = root / "run"
    assert cli.main(["train", str(cfg), "--out", str(out), "--quiet", "--set", "train.max_steps_per_epoch=2"]) == 0
    st = load_checkpoint(out / "checkpoint.safetensors")
    st["position"].update(stage_index=0, stage_epoch=1, epoch=1, step=2, batch_in_epoch=0)
    st["history"] = st["history"][:1]
    return cfg, st


@pytest.mark.parametrize("kind", FORGERIES)
def test_forged_checkpoint_is_one_line_on_resume(tmp_path: Path, kind: str, finished_run: tuple[Path, dict],
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    import copy
    import shutil

    from prunekit.engine import save_checkpoint

    cfg, good = finished_run
    out = tmp_path / "run"
    shutil.copytree(cfg.parent / "run", out)
    state = copy.deepcopy(good)
    _forge(kind, state)
    save_checkpoint(out / "checkpoint.safetensors", state)
    capsys.readouterr()
    err = one_line(capsys, cli.main(["train", str(cfg), "--out", str(out), "--quiet", "--resume",
                                      "--set", "train.max_steps_per_epoch=2"]))
    assert "checkpoint" in err and "malformed" in err, err


def test_unforged_checkpoint_resumes(tmp_path: Path, finished_run: tuple[Path, dict],
                                     capsys: pytest.CaptureFixture[str]) -> None:
    """The baseline of the forgeries above: the same checkpoint, untouched, resumes and trains epoch 2."""
    import shutil

    from prunekit.engine import load_checkpoint, save_checkpoint

    cfg, good = finished_run
    out = tmp_path / "run"
    shutil.copytree(cfg.parent / "run", out)
    save_checkpoint(out / "checkpoint.safetensors", good)
    assert cli.main(["train", str(cfg), "--out", str(out), "--quiet", "--resume",
                     "--set", "train.max_steps_per_epoch=2"]) == 0
    assert load_checkpoint(out / "checkpoint.safetensors")["position"]["step"] == 4


@pytest.mark.parametrize("kwargs", [{"input_size": 28, "num_classes": 10}, {"input_size": 8, "num_classes": 3}])
def test_checkpoint_architecture_that_does_not_fit_the_data(tmp_path: Path, kwargs: dict) -> None:
    """A forged architecture (weights and optimizer consistent with it) for 28x28 inputs or 3 classes, checked
    against 8x8 digits with 10 classes on the meta device: one line, nothing computed."""
    from prunekit.engine import load_checkpoint, save_checkpoint
    from prunekit.engine.checkpoint import check_fits_data

    forged = models.create("lenet5", **kwargs)
    state = {"position": {"stage_index": 0, "stage_epoch": 0, "epoch": 0, "step": 0, "batch_in_epoch": 0},
             "stages": [{"name": "train", "epochs": 1}], "architecture": io.architecture(forged),
             "model": dict(forged.state_dict()), "optimizers": [], "rng": {"torch": torch.get_rng_state()}}
    save_checkpoint(tmp_path / "c.safetensors", state)
    st = load_checkpoint(tmp_path / "c.safetensors")
    model = io.build_from_architecture(st["architecture"], device="meta")
    with pytest.raises(PrunekitError, match="the checkpoint's network") as e:
        check_fits_data(tmp_path / "c.safetensors", model, (1, 8, 8), 10)
    assert "\n" not in str(e.value)
    check_fits_data(tmp_path / "c.safetensors", models.create("lenet5", input_size=8), (1, 8, 8), 10)


def test_resume_with_an_architecture_that_does_not_fit_is_one_line(
        tmp_path: Path, finished_run: tuple[Path, dict], capsys: pytest.CaptureFixture[str]) -> None:
    """Through the CLI: the Trainer checks a restored network against the run's data before training."""
    import copy
    import shutil

    from prunekit.engine import save_checkpoint

    cfg, good = finished_run
    out = tmp_path / "run"
    shutil.copytree(cfg.parent / "run", out)
    forged = models.create("lenet5", input_size=28)  # weights consistent with it, data is 8x8 digits
    state = copy.deepcopy(good)
    state.update(architecture=io.architecture(forged), model=dict(forged.state_dict()))
    for opt in state["optimizers"]:  # no momentum yet (buffers shaped like the old weights would be refused)
        opt["state"] = {}
    save_checkpoint(out / "checkpoint.safetensors", state)
    capsys.readouterr()
    err = one_line(capsys, cli.main(["train", str(cfg), "--out", str(out), "--quiet", "--resume",
                                      "--set", "train.max_steps_per_epoch=2"]))
    assert "the checkpoint's network does not take this run's (1, 8, 8) inputs" in err, err


# ------------------------------------------------------------- 7. bounded work from a hostile model file


@pytest.fixture(scope="module")
def padded_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A valid 1.1 MB ResNet-20 file whose first convolution pads by 1500: 368 GMACs and a 147 M-value
    activation per 32x32 image."""
    m = models.create("resnet20")
    m.conv1.padding = (1500, 1500)
    return io.save(m, tmp_path_factory.mktemp("pad") / "padded.safetensors")


def test_hostile_padding_is_refused_before_anything_runs(tmp_path: Path, padded_model: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """info in a real process with a 60 s budget, eval and export in this one: each is refused from the
    architecture on the meta device, before any arithmetic."""
    res = subprocess.run([sys.executable, "-m", "prunekit.cli", "info", str(padded_model)],
                         env=subprocess_env(tmp_path), capture_output=True, text=True, timeout=60)
    err = res.stderr.strip()
    assert res.returncode == 2 and len(err.splitlines()) == 1, err
    assert "367,905,706,208 MACs per sample" in err and "--max-macs" in err, err
    onnx = tmp_path / "m.onnx"
    for argv in (["eval", str(padded_model), "--data", "synthetic"],
                 ["export", str(padded_model), "--to", "onnx", "--out", str(onnx)]):
        err = one_line(capsys, cli.main(argv))
        assert "367,905,706,208 MACs per sample" in err, err
    assert not onnx.exists()


def test_the_limit_can_be_raised_or_lowered(padded_model: Path, capsys: pytest.CaptureFixture[str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from prunekit.metrics.counting import check_bounds

    b = check_bounds(io.load(padded_model), (3, 32, 32), max_macs=1e12, max_activation=2e8)
    assert b is not None and b.macs == 367_905_706_208 and b.largest_activation == 16 * 3030 * 3030
    with pytest.raises(PrunekitError, match="'conv1' outputs 146,894,400 values"):
        check_bounds(io.load(padded_model), (3, 32, 32), max_macs=1e12)
    assert "more than the limit of 100,000" in one_line(capsys, cli.main(["info", "lenet5", "--max-macs", "1e5"]))
    monkeypatch.setenv("PRUNEKIT_MAX_MACS", "1e5")
    assert "PRUNEKIT_MAX_MACS" in one_line(capsys, cli.main(["info", "lenet5"]))
    assert cli.main(["info", "lenet5", "--max-macs", "1e7"]) == 0  # the flag overrides the environment
    monkeypatch.setenv("PRUNEKIT_MAX_MACS", "lots")
    assert "PRUNEKIT_MAX_MACS='lots'" in one_line(capsys, cli.main(["info", "lenet5"]))


@pytest.mark.parametrize("name", ["lenet5", "resnet20", "vgg16", "nin"])
def test_bounds_count_what_count_counts(name: str) -> None:
    """The meta-device MACs are the real forward pass's MACs (metrics.count), for zoo networks."""
    from prunekit import metrics
    from prunekit.metrics.counting import check_bounds

    m = models.create(name)
    b = check_bounds(m, tuple(m.input_shape))
    assert b is not None and b.macs == metrics.count(m, torch.zeros((1, *m.input_shape))).macs


@pytest.mark.parametrize("argv", [["--batch", "100000"], ["--rounds", "1000000"], ["--max-macs", "1000"]])
def test_bench_is_bounded_before_it_runs(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    err = one_line(capsys, cli.main(["bench", "resnet20", "--runtime", "eager", *argv]))
    assert "bounded" in err or "more than the limit" in err, err


def test_tables_and_warnings_escape_text_from_files(capsys: pytest.CaptureFixture[str]) -> None:
    """Layer names and warning texts can come from a model file: they cannot forge lines or colours either."""
    import warnings

    from prunekit.metrics import format_table

    table = format_table([{"layer": "conv\nprunekit: error: forged\x1b[31m", "params": 3}])
    assert len(table.splitlines()) == 3 and "\x1b" not in table and "\\n" in table
    cli.show_warning(UserWarning("bad\nline\x1b[0m"), UserWarning, "f.py", 1)
    err = capsys.readouterr().err
    assert err == "prunekit: warning: bad\\nline\\x1b[0m\n"
    cli.show_warning(UserWarning("prunekit: a library warning"), UserWarning, "f.py", 1)
    assert capsys.readouterr().err == "prunekit: warning: a library warning\n"  # its prefix said once
    assert cli.main(["info", "lenet5"]) == 0  # the command installs it for every warning
    assert warnings.showwarning is cli.show_warning
