"""Property-based fuzzing of every reader of untrusted input: any malformed input is a PrunekitError.

Never another exception type, never a hang (each call runs under an alarm), never a large allocation from a
header that lies about its size (peak memory is checked).
"""

from __future__ import annotations

import contextlib
import gzip
import io as io_module
import json
import resource
import signal
import struct
import tarfile
import tempfile
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir
from PIL import Image

from prunekit import config, io, models, surgery
from prunekit.data import formats, loaders
from prunekit.engine import load_checkpoint, save_checkpoint
from prunekit.errors import PrunekitError
from tests.helpers import one_line

set_hypothesis_home_dir(tempfile.mkdtemp(prefix="pk-hypothesis-"))  # keep the checkout clean
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow],
                derandomize=True, database=None)
FEW = settings(FUZZ, max_examples=25)

_MAX_GROWTH_KIB = 300 * 1024  # peak RSS growth allowed over a whole fuzz test


@contextlib.contextmanager
def _time_limit(seconds: float) -> Iterator[None]:
    """Fail (TimeoutError) instead of hanging."""
    def on_alarm(signum: int, frame: Any) -> None:
        raise TimeoutError(f"reader did not finish within {seconds} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _only_prunekit_errors(fn: Callable[[], Any], seconds: float = 10.0) -> Any:
    """Run ``fn``: it may succeed or raise PrunekitError (one line); anything else fails the test."""
    with _time_limit(seconds):
        try:
            return fn()
        except PrunekitError as exc:
            assert "\n" not in str(exc), str(exc)
            return exc


def _with_peak(fn: Callable[[], Any]) -> tuple[Any, int]:
    """``_only_prunekit_errors(fn)`` and the peak of Python allocations (bytes, tracemalloc) while it ran."""
    tracemalloc.start()
    try:
        res = _only_prunekit_errors(fn)
        return res, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.fixture(autouse=True)
def _bounded_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("PRUNEKIT_CACHE", str(tmp_path / "cache"))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    yield
    grew = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grew < _MAX_GROWTH_KIB, f"peak memory grew by {grew // 1024} MiB"


def _file(data: bytes, name: str = "f") -> Path:
    d = Path(tempfile.mkdtemp(prefix="pk-fuzz-"))
    p = d / name
    p.write_bytes(data)
    return p


def _mutate(base: bytes) -> st.SearchStrategy[bytes]:
    """Byte strings near ``base``: truncations, flipped bytes, inserted and appended junk."""
    @st.composite
    def strat(draw: st.DrawFn) -> bytes:
        data = bytearray(base)
        for _ in range(draw(st.integers(1, 4))):
            op = draw(st.sampled_from(["cut", "flip", "insert", "append", "overwrite"]))
            if op == "cut":
                data = data[: draw(st.integers(0, len(data)))]
            elif op == "flip" and data:
                i = draw(st.integers(0, len(data) - 1))
                data[i] = draw(st.integers(0, 255))
            elif op == "insert":
                i = draw(st.integers(0, len(data)))
                data[i:i] = draw(st.binary(max_size=16))
            elif op == "append":
                data += draw(st.binary(max_size=64))
            elif op == "overwrite" and len(data) >= 8:
                i = draw(st.integers(0, min(len(data), 64) - 8))
                data[i:i + 8] = struct.pack("<Q", draw(st.sampled_from([0, 1, 2**31, 2**32 - 1, 2**60, 2**64 - 1])))
        return bytes(data)
    return strat()


# ------------------------------------------------------------------------------------------------- IDX


def _idx(dims: tuple[int, ...], magic: int, payload: bytes | None = None) -> bytes:
    body = payload if payload is not None else bytes(int(np.prod(dims)))
    return struct.pack(">I", magic) + struct.pack(f">{len(dims)}I", *dims) + body


_IDX_IMAGES = _idx((3, 4, 4), formats.IDX_IMAGES_MAGIC)
_IDX_LABELS = _idx((3,), formats.IDX_LABELS_MAGIC, b"\x01\x02\x09")


@FUZZ
@given(data=st.one_of(_mutate(_IDX_IMAGES), _mutate(gzip.compress(_IDX_IMAGES)), st.binary(max_size=80)),
       labels=st.one_of(st.just(_IDX_LABELS), _mutate(_IDX_LABELS)))
def test_idx_files(data: bytes, labels: bytes) -> None:
    img, lab = _file(data, "images"), _file(labels, "labels")
    res = _only_prunekit_errors(lambda: formats.read_idx_pair(img, lab, 10))
    if not isinstance(res, PrunekitError):
        assert res["images"].shape[0] == res["labels"].shape[0]
        assert res["labels"].max(initial=0) < 10


@FEW
@given(n=st.sampled_from([10**9, 2**32 - 1, 60000]), hw=st.sampled_from([(28, 28), (8192, 8192), (1, 1)]),
       gz=st.booleans())
def test_idx_header_that_lies_about_its_size(n: int, hw: tuple[int, int], gz: bool) -> None:
    raw = _idx((n, *hw), formats.IDX_IMAGES_MAGIC, b"\0" * 100)
    p = _file(gzip.compress(raw) if gz else raw)
    res = _only_prunekit_errors(lambda: formats.read_idx(p, formats.IDX_IMAGES_MAGIC), seconds=5)
    assert isinstance(res, PrunekitError)
    assert "truncated" in str(res) or "implausible" in str(res) or "more than" in str(res)


def test_idx_gzip_bomb_is_not_inflated_beyond_the_header() -> None:
    """64 MiB of zeros compressed to 64 KiB behind a header announcing 10 images: refused after reading
    at most what the header announces (the whole bomb is never inflated)."""
    header = _idx((10, 28, 28), formats.IDX_IMAGES_MAGIC, b"")
    bomb = gzip.compress(header + bytes(64 << 20), compresslevel=9)
    p = _file(bomb)
    res, peak = _with_peak(lambda: formats.read_idx(p, formats.IDX_IMAGES_MAGIC))
    assert isinstance(res, PrunekitError) and "unexpected bytes" in str(res)
    assert peak < 4 << 20, f"{peak >> 20} MiB allocated"


@FEW
@given(n=st.sampled_from([10**9, 2**32 - 1]), gz=st.booleans())
def test_idx_lying_header_allocates_nothing_large(n: int, gz: bool) -> None:
    raw = _idx((n, 28, 28), formats.IDX_IMAGES_MAGIC, b"\0" * 1000)
    p = _file(gzip.compress(raw) if gz else raw)
    res, peak = _with_peak(lambda: formats.read_idx(p, formats.IDX_IMAGES_MAGIC))
    assert isinstance(res, PrunekitError)
    assert peak < 4 << 20, f"{peak >> 20} MiB allocated"


# ------------------------------------------------------------------------------------------ CIFAR binary

_CIFAR_REC = 1 + 3072


@FUZZ
@given(records=st.integers(0, 3), tail=st.binary(max_size=40), labels=st.lists(st.integers(0, 255), max_size=3),
       label_bytes=st.sampled_from([1, 2]))
def test_cifar_binary(records: int, tail: bytes, labels: list[int], label_bytes: int) -> None:
    rec = label_bytes + 3072
    data = bytearray(bytes(rec * records) + tail)
    for i, lab in enumerate(labels[:records]):
        data[i * rec] = lab
    p = _file(bytes(data))
    limits = (10,) if label_bytes == 1 else (20, 100)
    res = _only_prunekit_errors(lambda: formats.read_cifar_bin(p, label_bytes, label_bytes - 1, limits))
    if not isinstance(res, PrunekitError):
        assert res["images"].shape[1:] == (3, 32, 32)
        assert len(data) % rec == 0 and len(data) > 0


# ---------------------------------------------------------------------------------------- images & folders


def _png(size: tuple[int, int] = (4, 4), mode: str = "RGB") -> bytes:
    buf = io_module.BytesIO()
    Image.new(mode, size, 128).save(buf, format="PNG")
    return buf.getvalue()


def _jpeg() -> bytes:
    buf = io_module.BytesIO()
    Image.new("RGB", (8, 8), (10, 200, 30)).save(buf, format="JPEG")
    return buf.getvalue()


def _bmp() -> bytes:
    buf = io_module.BytesIO()
    Image.new("L", (4, 4), 3).save(buf, format="BMP")
    return buf.getvalue()


@FUZZ
@given(data=st.one_of(_mutate(_png()), _mutate(_jpeg()), _mutate(_bmp()), st.binary(max_size=64)),
       mode=st.sampled_from(["RGB", "L"]), size=st.sampled_from([None, (4, 4)]))
def test_image_decoding(data: bytes, mode: str, size: tuple[int, int] | None) -> None:
    res = _only_prunekit_errors(lambda: formats.decode_image(data, "x.png", mode, size))
    if not isinstance(res, PrunekitError):
        assert res.dtype == np.uint8 and res.ndim in (2, 3)


def _tar(members: list[tuple[str, bytes]]) -> bytes:
    buf = io_module.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io_module.BytesIO(data))
    return buf.getvalue()


_ARCHIVE = _tar([("cifar/train/cat/0.png", _png()), ("cifar/train/dog/1.png", _png()),
                 ("cifar/test/cat/2.png", _png())])


@FUZZ
@given(data=st.one_of(_mutate(_ARCHIVE), _mutate(gzip.compress(_ARCHIVE))))
def test_image_archives(data: bytes) -> None:
    p = _file(data, "cifar10-jpg.tar")
    res = _only_prunekit_errors(lambda: formats.decode_split_archive(p, ("train", "test")))
    if not isinstance(res, PrunekitError):
        for split in res.values():
            assert split["images"].shape[0] == split["labels"].shape[0]


@FEW
@given(files=st.lists(st.tuples(st.sampled_from(["a", "b", ".hidden"]), st.sampled_from(["x.png", "y.jpg", "z.bmp"]),
                                st.one_of(_mutate(_png()), st.just(_png((4, 4))), st.just(_png((5, 3), "L")))),
                      min_size=0, max_size=4),
       split=st.sampled_from(["train", "test"]))
def test_image_folders(files: list[tuple[str, str, bytes]], split: str) -> None:
    root = Path(tempfile.mkdtemp(prefix="pk-folder-"))
    for cls, name, data in files:
        (root / cls).mkdir(exist_ok=True)
        (root / cls / name).write_bytes(data)
    cache = root.parent / (root.name + "-cache")
    res = _only_prunekit_errors(lambda: loaders.load("imagefolder", split, root=root, cache_dir=cache))
    if not isinstance(res, PrunekitError):
        assert len(res) == res.labels.shape[0] > 0
        # the decoded cache is a file too: damage it and load again
        for npz in cache.glob("*.npz"):
            npz.write_bytes(npz.read_bytes()[: len(npz.read_bytes()) // 2])
        again = _only_prunekit_errors(lambda: loaders.load("imagefolder", split, root=root, cache_dir=cache))
        assert not isinstance(again, PrunekitError) and torch.equal(again.images, res.images)


# ----------------------------------------------------------------------------------------------- config

_yaml_scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**20, 10**20), st.floats(allow_nan=True),
                          st.text(max_size=10))
_yaml_values = st.recursive(_yaml_scalars, lambda c: st.one_of(st.lists(c, max_size=3),
                                                               st.dictionaries(st.text(max_size=8), c, max_size=3)),
                            max_leaves=8)
_KEYS = ["seed", "out", "pretrained", "model", "data", "train", "optim", "method", "model.name", "model.kwargs",
         "data.name", "data.subset", "train.epochs", "train.batch_size", "train.eval_batch_size",
         "train.checkpoint_every_steps", "train.max_steps_per_epoch", "train.eval_every", "train.device",
         "optim.lr", "optim.momentum", "optim.weight_decay", "optim.gamma", "optim.milestones",
         "optim.warmup_epochs", "optim.schedule", "method.name", "method.keep", "method.target",
         "method.cycles", "method.keep_ratio", "nope", "train.nope", "a.b.c"]


@FUZZ
@given(doc=st.dictionaries(st.sampled_from(["seed", "model", "data", "train", "optim", "method", "x"]),
                           _yaml_values, max_size=4),
       overrides=st.lists(st.tuples(st.sampled_from(_KEYS), st.one_of(st.text(max_size=12),
                                    _yaml_scalars.map(lambda v: json.dumps(v) if v == v else ".nan"))),
                          max_size=3))
def test_config_parser(doc: dict, overrides: list[tuple[str, str]]) -> None:
    import yaml

    p = _file(yaml.safe_dump(doc).encode(), "c.yaml")
    res = _only_prunekit_errors(lambda: config.load_config(p, [f"{k}={v}" for k, v in overrides]))
    if not isinstance(res, PrunekitError):
        config.validate(res)  # what load_config returns passes validation again


@FUZZ
@given(text=st.one_of(st.text(max_size=60), st.binary(max_size=60).map(lambda b: b.decode("latin-1")),
                      st.sampled_from(["train: {epochs: [", "&a [*a]", "!!python/object:os.system {}",
                                       "train: !!python/name:os.system", "a: *b", "- 1\n- 2", "'x", "?"])),
       raw=st.booleans())
def test_config_text(text: str, raw: bool) -> None:
    p = _file(text.encode("utf-8", "surrogatepass") if not raw else text.encode("latin-1", "replace"), "c.yaml")
    _only_prunekit_errors(lambda: config.load_config(p))
    _only_prunekit_errors(lambda: config.load_config(None, [text]))


# ------------------------------------------------------------------------------------ model files (bytes)


def _model_bytes(kind: str) -> bytes:
    net = models.create("lenet5", input_size=8)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            p.mul_((torch.rand_like(p) > 0.7).float())  # sparse enough for bitmap and index encodings
    d = Path(tempfile.mkdtemp(prefix="pk-model-"))
    if kind == "dense":
        io.save(net, d / "m.safetensors")
    elif kind == "sparse":
        surgery.save_sparse(net, d / "m.safetensors")
    else:
        save_checkpoint(d / "m.safetensors", {"position": {"stage_index": 0, "stage_epoch": 0, "epoch": 0, "step": 3,
                                                           "batch_in_epoch": 1},
                                              "stages": [], "model": dict(net.state_dict()), "optimizers": [],
                                              "rng": {"torch": torch.get_rng_state()}, "history": []})
    return (d / "m.safetensors").read_bytes()


_DENSE, _SPARSE, _CKPT = _model_bytes("dense"), _model_bytes("sparse"), _model_bytes("ckpt")
_READERS: list[Callable[[Path], Any]] = [io.load, surgery.load_sparse, load_checkpoint]


def _mutate_header(base: bytes) -> st.SearchStrategy[bytes]:
    """Mutations aimed at the safetensors header (the first few hundred bytes) and the JSON inside it."""
    n = struct.unpack("<Q", base[:8])[0]
    header = base[8:8 + n]

    @st.composite
    def strat(draw: st.DrawFn) -> bytes:
        h = bytearray(header)
        for _ in range(draw(st.integers(1, 3))):
            i = draw(st.integers(0, len(h) - 1))
            h[i] = draw(st.sampled_from(list(b'0123456789"{}[],:-.eE \\nulltrue')))
        length = draw(st.sampled_from([len(h), len(h) - 1, len(h) + 1, 2**60]))
        return struct.pack("<Q", length) + bytes(h) + base[8 + n:]
    return strat()


@FUZZ
@given(data=st.one_of(_mutate(_DENSE), _mutate(_SPARSE), _mutate(_CKPT),
                      _mutate_header(_DENSE), _mutate_header(_SPARSE), _mutate_header(_CKPT)))
def test_model_file_bytes(data: bytes) -> None:
    p = _file(data, "m.safetensors")
    for reader in _READERS:
        _only_prunekit_errors(lambda reader=reader: reader(p))


# ---------------------------------------------------------------------------- model files (structured JSON)

_json = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**63), st.floats(), st.text(max_size=8)),
                     lambda c: st.one_of(st.lists(c, max_size=4), st.dictionaries(st.text(max_size=8), c, max_size=4)),
                     max_leaves=12)
_LENET = dict(models.create("lenet5", input_size=8).state_dict())
_LAYERS = ["conv1", "conv2", "fc1", "fc2", "pool1", "relu1", "flatten", "fc2.x", ""]
_TYPES = ["Conv2d", "Linear", "ReLU", "Sequential", "BatchNorm2d", "Identity", "Flatten", "MaxPool2d",
          "LayerNorm", "GroupNorm", "AdaptiveAvgPool2d", "Dropout", "ScaleFactor", "os.system"]
_spec = st.recursive(
    st.fixed_dictionaries({"type": st.sampled_from(_TYPES)},
                          optional={"config": st.dictionaries(st.sampled_from(
                              ["in_features", "out_features", "in_channels", "out_channels", "kernel_size",
                               "num_features", "bias", "padding", "groups", "normalized_shape", "num_groups",
                               "num_channels", "p", "output_size", "stride"]),
                              st.one_of(st.integers(-3, 600), st.sampled_from([2**31, 2**40, 0.5, "same"]),
                                        st.lists(st.integers(-1, 9), max_size=3), st.booleans()), max_size=4)}),
    lambda c: st.fixed_dictionaries({"type": st.just("Sequential"),
                                     "children": st.dictionaries(st.sampled_from(["0", "1", "a", "__x"]), c,
                                                                 max_size=2)}),
    max_leaves=4)
_arch = st.one_of(_json, st.fixed_dictionaries({
    "factory": st.one_of(_json, st.fixed_dictionaries({
        "name": st.sampled_from(["lenet5", "resnet20", "nope", "torchvision:x"]),
        "kwargs": st.one_of(st.just({"input_size": 8}), st.dictionaries(
            st.sampled_from(["input_size", "num_classes", "in_channels", "x"]),
            st.one_of(st.integers(-2, 2**33), st.text(max_size=3)), max_size=2))})),
    "overrides": st.one_of(_json, st.dictionaries(st.sampled_from(_LAYERS), _spec, max_size=3))}))


def _write(meta: dict, tensors: dict[str, torch.Tensor]) -> Path:
    d = Path(tempfile.mkdtemp(prefix="pk-struct-"))
    io.write_safetensors(d / "m.safetensors", tensors, meta)
    return d / "m.safetensors"


@FUZZ
@given(arch=_arch)
def test_architecture_records(arch: Any) -> None:
    p = _write({"format": io.FORMAT, "architecture": arch, "extra": {}}, _LENET)
    res = _only_prunekit_errors(lambda: io.load(p))
    if not isinstance(res, PrunekitError):
        assert isinstance(res, torch.nn.Module)


_entry = st.fixed_dictionaries(
    {"key": st.sampled_from([*_LENET, "x", ""]),
     "dtype": st.sampled_from(["float32", "int64", "bool", "complex64"]),
     "shape": st.one_of(st.lists(st.integers(-1, 40), max_size=4), st.just([2**39, 2**39]), _json),
     "enc": st.sampled_from(["dense", "bitmap", "index", "rle"]),
     "nnz": st.one_of(st.integers(-1, 200), st.just(2**62), st.booleans())},
    optional={"index_dtype": st.sampled_from(["int16", "int32", "int64", "uint8"])})


@FUZZ
@given(entries=st.one_of(st.lists(_entry, max_size=4), _json),
       blobs=st.dictionaries(st.sampled_from(["values/float32", "values/int64", "bitmap", "index/int16", "extra"]),
                             st.integers(0, 64), max_size=3),
       fill=st.sampled_from([0, 1, 255]))
def test_sparse_entry_tables(entries: Any, blobs: dict[str, int], fill: int) -> None:
    dtypes = {"values/float32": torch.float32, "values/int64": torch.int64, "bitmap": torch.uint8,
              "index/int16": torch.int16, "extra": torch.float32}
    tensors = {k: torch.full((n,), fill, dtype=dtypes[k]) for k, n in blobs.items()}
    p = _write({"format": surgery.sparse.FORMAT, "architecture": {"factory": {"name": "lenet5", "kwargs": {}}},
                "entries": entries, "extra": {}}, tensors)
    _only_prunekit_errors(lambda: surgery.load_sparse(p))
    _only_prunekit_errors(lambda: surgery.load_sparse(p, model=models.create("lenet5")))


@FUZZ
@given(state=_json, position=st.one_of(_json, st.fixed_dictionaries(
    {k: st.one_of(st.integers(-1, 5), st.just("1"), st.just(2.5)) for k in
     ("stage_index", "stage_epoch", "epoch", "step", "batch_in_epoch")})),
       rng=st.one_of(_json, st.just({"torch": {"__tensor__": "s/w"}}), st.just({"__items__": [[1, 2], [[1], 3]]}),
                     st.just({"__float__": "__import__('os')"}), st.just({"__tuple__": 5})))
def test_checkpoint_documents(state: Any, position: Any, rng: Any) -> None:
    from prunekit import data
    from prunekit.engine import Trainer, TrainerConfig

    doc = {"position": position, "stages": [{"name": "train", "epochs": 1}], "model": {}, "rng": rng,
           "extra": state}
    p = _write({"format": "prunekit-checkpoint/1", "state": doc}, {"s/w": torch.zeros(3)})
    _only_prunekit_errors(lambda: load_checkpoint(p))
    q = _write({"format": "prunekit-checkpoint/1", "state": state}, {"s/w": torch.zeros(3)})
    _only_prunekit_errors(lambda: load_checkpoint(q))
    # and a resume from it: refused with one line, never a crash half-way through the restore
    train = data.load("synthetic", "train", n=4, shape=(1, 8, 8), num_classes=2)
    tr = Trainer(models.create("lenet5", num_classes=2, input_size=8), train,
                 config=TrainerConfig(batch_size=2, device="cpu", quiet=True))
    res = _only_prunekit_errors(lambda: tr.fit(1, resume=p))
    assert isinstance(res, PrunekitError)


def test_fuzz_inputs_include_valid_files() -> None:
    """The seeds are valid files, so mutations start from realistic inputs (and the readers accept them)."""
    for data, reader in ((_DENSE, io.load), (_SPARSE, surgery.load_sparse), (_CKPT, load_checkpoint)):
        assert not isinstance(reader(_file(data, "m.safetensors")), PrunekitError)
    assert formats.read_idx_pair(_file(_IDX_IMAGES), _file(_IDX_LABELS), 10)["images"].shape == (3, 1, 4, 4)


# ------------------------------------------------------------------------------------- out-of-range configs

OUT_OF_RANGE = [
    (["train.epochs=-1"], "train.epochs must be an integer in [0, "),
    (["train.epochs=2.5"], "train.epochs must be an integer in [0, "),
    (["train.batch_size=0"], "train.batch_size must be an integer in [1, "),
    (["train.checkpoint_every_steps=-3"], "train.checkpoint_every_steps must be an integer in [0, "),
    (["train.eval_every=0"], "train.eval_every must be an integer in [1, "),
    (["train.amp=maybe"], "train.amp must be one of auto, on, off"),
    (["train.device=gpu7"], "train.device must be auto, cpu, cuda or cuda:N"),
    (["optim.lr=-0.1"], "optim.lr must be a number in (0, 10]"),
    (["optim.lr=0"], "optim.lr must be a number in (0, 10]"),
    (["optim.lr=.nan"], "optim.lr must be a number in (0, 10]"),
    (["optim.lr=.inf"], "optim.lr must be a number in (0, 10]"),
    (["optim.momentum=1.0"], "optim.momentum must be a number in [0, 1)"),
    (["optim.weight_decay=-1e-4"], "optim.weight_decay must be a number in [0, 1]"),
    (["optim.gamma=0"], "optim.gamma must be a number in (0, 1]"),
    (["optim.warmup_epochs=-1"], "optim.warmup_epochs must be a number in [0, 100000]"),
    (["optim.milestones=[5, 2]"], "optim.milestones must be increasing"),
    (["optim.milestones=[-1]"], "optim.milestones must be a list of epochs (integers >= 0)"),
    (["optim.schedule=linear"], "optim.schedule must be one of constant, step, cosine, onecycle"),
    (["seed=-1"], "seed must be an integer in [0, 2**63)"),
    (["data.subset=-5"], "data.subset must be an integer in [0, "),
    (["train=null"], "'train' is None, not a section"),
    (["model=3"], "model must be a mapping"),
    (["method.name=iht", "method.keep=1.5"], "keep must be a fraction in (0, 1]"),
    (["method.name=iht", "method.keep=-0.2"], "keep must be a fraction in (0, 1]"),
    (["method.name=iht", "method.keep=[1]"], "an option has a value of the wrong type"),
    (["method.name=sght", "method.keep_ratio=0"], "keep_ratio must be in (0, 1]"),
    (["method.name=sght", "method.keep_ratio=1.01"], "keep_ratio must be in (0, 1]"),
    (["method.name=iht", "method.layers=[conv9]"], "method.layers: 'conv9' matches no layer of lenet5"),
    (["method.name=iht", "method.layer_keep={fc9: 0.5}"], "method.layer_keep: 'fc9' matches no layer"),
    (["method.name=trimming", "method.layers=[nope*]"], "method.layers: 'nope*' matches no layer"),
    (["method.name=sght", "method.macs_budget=0.0001"], "below what the model can reach"),
    (["method.name=slimming", "method.prune_ratio=1.5"], "prune_ratio must be in"),
]


@pytest.mark.parametrize("sets,message", OUT_OF_RANGE, ids=[" ".join(s) for s, _ in OUT_OF_RANGE])
def test_out_of_range_configs_are_rejected_before_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str], sets: list[str],
                                                           message: str) -> None:
    from prunekit import cli
    from prunekit.engine import Trainer

    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: {name: lenet5}\ndata: {name: digits}\ntrain: {epochs: 2, batch_size: 64, device: cpu}\n")
    monkeypatch.setattr(Trainer, "_run_epoch", lambda self: pytest.fail("training started"))
    out = tmp_path / "run"
    args = ["prune" if any(s.startswith("method.") for s in sets) else "train", str(cfg), "--out", str(out),
            "--quiet"]
    for s in sets:
        args += ["--set", s]
    one_line(capsys, cli.main(args), message)
    assert not (out / "checkpoint.safetensors").exists() and not (out / "log.jsonl").exists()


# ------------------------------------------------------------------------------ damaged trainer checkpoints


def _damage(kind: str, s: dict) -> None:
    if kind == "optimizer without param_groups":
        s["optimizers"] = [{}]
    elif kind == "optimizer params not ints":
        s["optimizers"][0]["param_groups"][0]["params"] = ["a"]
    elif kind == "position beyond its stage":
        s["position"].update(stage_index=0, stage_epoch=5)
    elif kind == "position beyond the schedule":
        s["position"].update(stage_index=7)
    elif kind == "negative step":
        s["position"]["step"] = -1
    elif kind == "base lrs do not match":
        s["base_lrs"] = [[0.1, 0.2, 0.3]]
    elif kind == "rng state wrong size":
        s["rng"]["torch"] = torch.zeros(7, dtype=torch.uint8)
    elif kind == "weights of another shape":
        s["model"]["fc2.weight"] = torch.zeros(3)
    elif kind == "weights missing":
        del s["model"]["fc2.weight"]
    elif kind == "unknown stage field":
        s["stages"] = [{"name": "train", "epochs": 1, "zzz": 1}]
    elif kind == "other schedule":
        s["stages"] = [{"name": "train", "epochs": 3}]


DAMAGE = ["optimizer without param_groups", "optimizer params not ints", "position beyond its stage",
          "position beyond the schedule", "negative step", "base lrs do not match", "rng state wrong size",
          "weights of another shape", "weights missing", "unknown stage field", "other schedule"]


@pytest.fixture(scope="module")
def _good_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Any]:
    from prunekit import data
    from prunekit.engine import Trainer, TrainerConfig

    train = data.load("synthetic", "train", n=8, shape=(1, 8, 8), num_classes=2)
    d = tmp_path_factory.mktemp("good")
    Trainer(models.create("lenet5", num_classes=2, input_size=8), train,
            config=TrainerConfig(batch_size=4, device="cpu", quiet=True), out_dir=d).fit(1)
    return load_checkpoint(d / "checkpoint.safetensors"), train


@pytest.mark.parametrize("kind", DAMAGE)
def test_damaged_trainer_checkpoints_are_refused_on_resume(tmp_path: Path, kind: str,
                                                          _good_checkpoint: tuple[dict, Any]) -> None:
    import copy

    from prunekit.engine import Trainer, TrainerConfig

    good, train = _good_checkpoint
    state = copy.deepcopy(good)
    _damage(kind, state)
    p = tmp_path / "checkpoint.safetensors"
    save_checkpoint(p, state)
    tr = Trainer(models.create("lenet5", num_classes=2, input_size=8), train,
                 config=TrainerConfig(batch_size=4, device="cpu", quiet=True), out_dir=tmp_path)
    res = _only_prunekit_errors(lambda: tr.fit(1, resume=True))
    assert isinstance(res, PrunekitError), f"{kind}: accepted"


def test_good_checkpoint_resumes(tmp_path: Path, _good_checkpoint: tuple[dict, Any]) -> None:
    """The damage test's baseline: the undamaged checkpoint resumes (a finished run: nothing to train)."""
    from prunekit.engine import Trainer, TrainerConfig

    good, train = _good_checkpoint
    save_checkpoint(tmp_path / "checkpoint.safetensors", good)
    tr = Trainer(models.create("lenet5", num_classes=2, input_size=8), train,
                 config=TrainerConfig(batch_size=4, device="cpu", quiet=True), out_dir=tmp_path)
    tr.fit(1, resume=True)
    assert tr.step == good["position"]["step"]


# ------------------------------------------------------------------------------------------ decode cache


def _npy(shape: tuple[int, ...], dtype: str, payload: bytes) -> bytes:
    buf = io_module.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buf.getvalue() + payload


@FEW
@given(shape=st.sampled_from([(10**6, 10**5), (2**40,), (3, 1, 4, 4)]), dtype=st.sampled_from(["|u1", "<f8", "|O"]),
       payload=st.binary(max_size=64), key_ok=st.booleans())
def test_cache_entries_that_lie_are_a_miss(shape: tuple[int, ...], dtype: str, payload: bytes, key_ok: bool) -> None:
    """A damaged or forged cache entry is ignored (None: rebuilt from the source), never a crash or a huge
    allocation from the sizes its headers announce."""
    import zipfile

    from prunekit.data import cache

    p = Path(tempfile.mkdtemp(prefix="pk-cache-")) / "e.npz"
    with zipfile.ZipFile(p, "w") as zf:
        zf.writestr("images.npy", _npy(shape, dtype, payload))
        zf.writestr("__cache_key__.npy", _npy((), "<U1", "k".encode("utf-32-le")) if key_ok else b"junk")
    res, peak = _with_peak(lambda: cache.lookup(p, "k"))
    honest = int(np.prod(shape)) * np.dtype(dtype).itemsize <= len(payload) and dtype != "|O"
    assert res is None or (honest and key_ok and isinstance(res, dict))
    assert peak < 4 << 20, f"{peak >> 20} MiB allocated"
