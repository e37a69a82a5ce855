"""Every command README.md shows runs as written (sized down with ``--set`` / ``--smoke``), in README order.

The blocks are read from README.md at test time, so a command added there is run here too. A command that
cannot run on a CPU in seconds is listed in ``NOT_HERE`` with the reason; anything else that fails, fails.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BIN = Path(sys.executable).parent

SMALL = ["--set", "train.epochs=1", "--set", "data.subset=256", "--set", "data.test_subset=128", "--quiet"]
"""Appended to `prunekit train/prune`: one epoch on 256 images (later --set wins over the README's own)."""

NOT_HERE = {
    "make test": "this test runs inside `make test`",
    "make demo": "tests/test_demo.py runs `prunekit demo`, which is all `make demo` adds to the install",
    "torchrun": "multi-process / multi-node training on a full dataset (tests/engine/test_distributed*.py run it "
                "on 2 gloo ranks)",
    "python benchmarks/": "benchmarks are timed runs, not tests",
    ".venv/bin/python benchmarks/": "benchmarks are timed runs, not tests",
}


def blocks(lang: str) -> list[str]:
    """The fenced code blocks of README.md in language ``lang``, in order."""
    return re.findall(rf"^```{lang}\n(.*?)^```", README.read_text(), flags=re.M | re.S)


def shell_commands() -> list[str]:
    """Every command line of README's bash blocks, continuation lines joined, comments dropped."""
    out = []
    for block in blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip()
            if line and not line.startswith("#"):
                out.append(line)
    return out


def sized(argv: list[str]) -> list[str]:
    """The README command with the size overrides a test can afford (semantics unchanged)."""
    if argv[:1] == ["prunekit"] and argv[1:2] in (["train"], ["prune"]):
        return argv + SMALL
    if argv[:2] == ["prunekit", "compare"]:
        argv = argv if "--smoke" in argv else [*argv, "--smoke"]
        if "cifar" in argv[2]:  # a GPU-sized grid: its smoke run times 26 ResNet-56 variants (minutes of CPU)
            argv = [*argv, "--only", "dense,sght"]
    return argv


def test_readme_has_commands() -> None:
    cmds = shell_commands()
    assert any(c.startswith("prunekit prune") for c in cmds) and any(c.startswith("prunekit export") for c in cmds)


@pytest.mark.slow
def test_every_readme_command_runs(tmp_path: Path) -> None:
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "OMP_NUM_THREADS": "1"}
    ran = 0
    for cmd in shell_commands():
        if any(cmd.startswith(prefix) for prefix in NOT_HERE):
            continue
        argv = sized(shlex.split(cmd))
        if any("*" in a for a in argv):  # the README's globs, as a shell would expand them
            argv = [x for a in argv for x in (sorted(str(p.relative_to(tmp_path)) for p in tmp_path.glob(a))
                                               if "*" in a else [a])]
        proc = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"README command failed: {cmd}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
        assert "Traceback" not in proc.stderr, cmd
        ran += 1
    assert ran >= 10


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(blocks("python"))))
def test_every_readme_python_block_runs(index: int, tmp_path: Path) -> None:
    """The library snippets run as written, on 512 training images and one epoch."""
    code = blocks("python")[index]
    code = re.sub(r"epochs=\d+", "epochs=1", code)
    code = re.sub(r'data\.load\(("\w+"), "train"\)', r'data.load(\1, "train").sample(512)', code)
    code = re.sub(r'data\.load\(("\w+"), "test"\)', r'data.load(\1, "test").sample(256)', code)
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, f"README python block {index} failed:\n{code}\n{proc.stderr[-3000:]}"
