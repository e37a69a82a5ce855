"""download=True against a loopback HTTP server: verified files land atomically, corrupt ones are refused."""

from __future__ import annotations

import dataclasses
import functools
import gzip
import hashlib
import http.server
import io
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest

from prunekit import PrunekitError, data
from prunekit.data import releases
from tests.helpers import idx_bytes


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep test output clean
        pass


@pytest.fixture
def server(tmp_path):
    """Serve tmp_path/www on 127.0.0.1 (random port) from a thread; yields (folder, base URL)."""
    www = tmp_path / "www"
    www.mkdir()
    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(www))
    )
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield www, f"http://127.0.0.1:{httpd.server_address[1]}/"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


# the real ../shared/datasets must not be found (tests/data/conftest.py)
pytestmark = pytest.mark.usefixtures("isolated", "no_system_data")


def md5(b: bytes) -> str:
    return hashlib.md5(b).hexdigest()


def mnist_files(n_train=9, n_test=4) -> dict[str, bytes]:
    rng = np.random.default_rng(1)
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        out[f"{prefix}-images-idx3-ubyte.gz"] = gzip.compress(
            idx_bytes(rng.integers(0, 256, (n, 28, 28), np.uint8), 2051)
        )
        out[f"{prefix}-labels-idx1-ubyte.gz"] = gzip.compress(idx_bytes(rng.integers(0, 10, n, np.uint8), 2049))
    return out


def serve(www: Path, sub: str, files: dict[str, bytes]) -> None:
    (www / sub).mkdir(parents=True, exist_ok=True)
    for name, payload in files.items():
        (www / sub / name).write_bytes(payload)


def patch_release(
    monkeypatch, name: str, files: dict[str, bytes], bases=("http://127.0.0.1:9/none/",), algorithm="md5"
) -> None:
    """Point the release table at our generated files' checksums (and unreachable official URLs)."""
    table = {f: (algorithm, hashlib.new(algorithm, b).hexdigest()) for f, b in files.items()}
    release = dataclasses.replace(releases.RELEASES[name], bases=tuple(bases), files=table)
    monkeypatch.setitem(releases.RELEASES, name, release)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*")) if folder.exists() else []


def test_release_table_has_official_urls_and_checksums():
    for name in ("mnist", "fashion-mnist", "cifar10", "cifar100"):
        rel = releases.RELEASES[name]
        assert rel.bases and all(b.startswith(("http://", "https://")) for b in rel.bases)
        for algorithm, digest in rel.files.values():
            assert algorithm in ("md5", "sha256") and len(digest) == hashlib.new(algorithm).digest_size * 2
    assert releases.RELEASES["cifar10"].files == {
        "cifar-10-binary.tar.gz": ("md5", "c32a1d4ab5d03f1284b67883e8d87530")
    }


def test_mnist_download_with_mirror(tmp_path, server, monkeypatch):
    www, url = server
    files = mnist_files()
    serve(www, "mnist", files)
    patch_release(monkeypatch, "mnist", files)
    ds = data.load("mnist", "train", root=tmp_path / "data", download=True, mirror=url + "mnist")
    assert len(ds) == 9 and ds.input_shape == (1, 28, 28)
    dest = tmp_path / "data" / "mnist"
    assert leftovers(dest) == sorted(files)
    for name, payload in files.items():
        assert (dest / name).read_bytes() == payload
    # now present: no server needed
    assert len(data.load("mnist", "test", root=tmp_path / "data")) == 4


def test_download_via_env_mirror_and_official_fallback(tmp_path, server, monkeypatch):
    www, url = server
    files = mnist_files()
    serve(www, "fm", files)
    patch_release(
        monkeypatch, "fashion-mnist", files, bases=(url + "missing/", url + "fm/"), algorithm="sha256"
    )
    ds = data.load("fashion-mnist", "test", download=True)  # first official base 404s, second works
    assert len(ds) == 4 and (tmp_path / "data" / "fashion-mnist" / "t10k-images-idx3-ubyte.gz").is_file()
    (tmp_path / "other").mkdir()
    monkeypatch.chdir(tmp_path / "other")  # ./data/fashion-mnist from the first download is out of sight
    monkeypatch.setenv("PRUNEKIT_MIRROR", url + "fm/")
    monkeypatch.setenv("PRUNEKIT_DATA", str(tmp_path / "elsewhere"))
    assert len(data.load("fashion-mnist", "train", download=True)) == 9
    assert (tmp_path / "elsewhere" / "fashion-mnist" / "train-labels-idx1-ubyte.gz").is_file()


def test_corrupted_download_is_rejected_and_leaves_no_file(tmp_path, server, monkeypatch):
    www, url = server
    files = mnist_files()
    patch_release(monkeypatch, "mnist", files)
    bad = dict(files)
    bad["train-labels-idx1-ubyte.gz"] = files["train-labels-idx1-ubyte.gz"][:-3] + b"xyz"
    serve(www, "mnist", bad)
    dest = tmp_path / "data" / "mnist"
    with pytest.raises(PrunekitError) as e:
        data.load("mnist", "train", root=tmp_path / "data", download=True, mirror=url + "mnist/")
    msg = str(e.value)
    assert "\n" not in msg and "checksum mismatch" in msg and "train-labels-idx1-ubyte.gz" in msg
    assert "train-labels-idx1-ubyte.gz" not in leftovers(dest)
    assert not [n for n in leftovers(dest) if n.endswith(".tmp")]
    # a missing file on the server is a clear error too
    (www / "mnist" / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(PrunekitError, match="download failed"):
        data.load("mnist", "train", root=tmp_path / "data", download=True, mirror=url + "mnist/")


def tar_gz(members: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tf.addfile(info, io.BytesIO(payload))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tf.addfile(info)
    return buf.getvalue()


def cifar_batch(n: int, label_bytes: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, (n, label_bytes), np.uint8)
    return np.concatenate([labels, rng.integers(0, 256, (n, 3072), np.uint8)], axis=1).tobytes()


def test_cifar10_binary_download_extracts_only_the_release_folder(tmp_path, server, monkeypatch):
    www, url = server
    members = {f"cifar-10-batches-bin/data_batch_{i}.bin": cifar_batch(3, 1, i) for i in range(1, 6)}
    members["cifar-10-batches-bin/test_batch.bin"] = cifar_batch(2, 1, 9)
    members["cifar-10-batches-bin/batches.meta.txt"] = b"\n".join(b"k%d" % i for i in range(10))
    archive = {"cifar-10-binary.tar.gz": tar_gz(members)}
    serve(www, "", archive)
    patch_release(monkeypatch, "cifar10", archive)
    ds = data.load("cifar10", "train", root=tmp_path / "d", download=True, mirror=url)
    assert len(ds) == 15 and ds.classes[0] == "k0" and ds.augment == "crop_flip"
    dest = tmp_path / "d" / "cifar10"
    assert not (dest / "cifar-10-binary.tar.gz").exists()  # the archive is removed once extracted
    assert len(data.load("cifar10", "test", root=tmp_path / "d")) == 2


def test_cifar100_download_and_unsafe_archive(tmp_path, server, monkeypatch):
    www, url = server
    good = {
        "cifar-100-binary.tar.gz": tar_gz(
            {
                "cifar-100-binary/train.bin": cifar_batch(4, 2, 1),
                "cifar-100-binary/test.bin": cifar_batch(2, 2, 2),
            }
        )
    }
    serve(www, "ok", good)
    patch_release(monkeypatch, "cifar100", good)
    assert len(data.load("cifar100", "test", root=tmp_path / "a", download=True, mirror=url + "ok/")) == 2

    evil = {
        "cifar-100-binary.tar.gz": tar_gz(
            {"cifar-100-binary/train.bin": b"x" * 3074, "../../escape.bin": b"x"},
            links={"cifar-100-binary/test.bin": "/etc/passwd"},
        )
    }
    serve(www, "evil", evil)
    patch_release(monkeypatch, "cifar100", evil)  # checksum matches: the content is what is hostile
    with pytest.raises(PrunekitError, match="refusing the archive"):
        data.load("cifar100", "test", root=tmp_path / "b", download=True, mirror=url + "evil/")
    assert (
        not list(tmp_path.rglob("escape.bin"))
        and not (tmp_path / "b" / "cifar100" / "cifar-100-binary").exists()
    )


def test_bad_mirror_scheme_and_no_download_for_embedded(tmp_path):
    with pytest.raises(PrunekitError, match="mirror"):
        data.load("mnist", root=tmp_path, download=True, mirror="ftp://example.org/")
    assert len(data.load("digits", download=True)) > 1000  # embedded: download is a no-op
