"""One experiment from a validated config: data, model, method, training, the deliverable, its figures.

Used by the CLI (``prunekit train`` / ``prunekit prune``), the demo and the benchmarks, so that every
number prunekit prints comes from this one path.

Run safety: every check (config, device, data, model against data, method, schedule, a resume's config
against the saved one) passes before anything is written, so a refused run leaves no folder and changes no
file; the output folder is held under an exclusive lock (:class:`RunLock`) for the whole run, so two runs
never mix their files in one folder.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import json
import os
import socket
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunekit import config as pconfig
from prunekit import configio, io, metrics, models
from prunekit import data as pdata
from prunekit.atomic import write_text
from prunekit.config import dump, optim_config, trainer_config
from prunekit.engine import Stage, Trainer, distributed, evaluate, seed_everything
from prunekit.errors import PrunekitError
from prunekit.methods import FinalizeResult, PruningMethod
from prunekit.methods import get as get_method
from prunekit.metrics.evaluation import forward_logits, logits_of


@dataclass
class Result:
    """What an experiment delivers: the final model and its measured figures."""

    model: nn.Module
    figures: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    report: dict[str, Any] = field(default_factory=dict)
    sparse: bool = False


def load_data(cfg: dict[str, Any]) -> tuple[pdata.Dataset, pdata.Dataset]:
    """Train and test splits as the config's ``data`` section says."""
    d = cfg["data"]
    kw = {"root": d.get("root"), "download": bool(d.get("download"))}
    train = pdata.load(d["name"], "train", **kw)
    test = pdata.load(d["name"], "test", **kw)
    # seeded random subsets: dataset files are often sorted by class
    if d.get("subset"):
        train = train.sample(int(d["subset"]), seed=cfg["seed"])
    if d.get("test_subset"):
        test = test.sample(int(d["test_subset"]), seed=cfg["seed"])
    if d.get("augment") != "default":
        train.augment = d.get("augment")
    return train, test


def build_model(cfg: dict[str, Any], train: pdata.Dataset) -> nn.Module:
    """The config's model: a pretrained prunekit file, or a zoo model shaped for the data."""
    if cfg.get("pretrained"):
        return io.load(cfg["pretrained"])
    name, kwargs = cfg["model"]["name"], dict(cfg["model"].get("kwargs") or {})
    c, h, _ = train.input_shape
    fitted = {"num_classes": train.num_classes, "in_channels": c, "input_size": h}
    try:
        accepted = models.options(name)
    except PrunekitError:
        accepted = []
    for k, v in fitted.items():
        if k in accepted and k not in kwargs:
            kwargs[k] = v
    return models.create(name, **kwargs)


def make_method(cfg: dict[str, Any]) -> PruningMethod | None:
    """The config's method object, or None for plain training."""
    m = dict(cfg["method"])
    name = m.pop("name")
    if name == "none":
        return None
    return get_method(name)(m)


def measure(model: nn.Module, test: pdata.Dataset, *, device: torch.device, path: Path | None = None,
            latency: bool = True, eval_batch_size: int = 512) -> dict[str, Any]:
    """Parameters, non-zeros, MACs, accuracy, file size and CPU latency of ``model``."""
    model = model.eval()
    example = torch.zeros((1, *test.input_shape))
    cpu_model = model.to("cpu")
    counts = metrics.count(cpu_model, example)
    figs: dict[str, Any] = {"params": counts.params, "nonzero_params": counts.nonzero_params,
                            "macs": counts.macs}
    if latency:
        lat = metrics.latency(cpu_model, torch.zeros((1, *test.input_shape)), repeats=20, warmup=3, threads=1)
        figs["latency_ms_b1"] = lat["median_ms"]
    model.to(device)
    ev = evaluate(model, test, batch_size=eval_batch_size, device=device)
    figs.update({"top1": ev["top1"], "top5": ev["top5"], "test_loss": ev["loss"]})
    if path is not None and path.exists():
        figs["file_bytes"] = metrics.file_size(path)
    return figs


LOCK_NAME = ".prunekit.lock"


class RunLock:
    """An exclusive advisory lock on an output folder for the whole run (``fcntl.flock`` on ``.prunekit.lock``).

    The lock file holds the holder's pid, host, command and start time, so a second run is refused with one
    line naming the holder. The kernel drops the lock when its process ends in any way (exit, exception,
    kill -9), so a lock file left by a dead process is stale by construction: the next run takes it over.
    The file itself stays (removing it would let two runs lock two different files of the same name).
    """

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.fd: int | None = None
        self.stale: dict[str, Any] | None = None  # what a dead holder left, when the lock was taken over

    def acquire(self) -> RunLock:
        """Take the lock (creating the folder), or raise a PrunekitError naming the holder."""
        try:
            import fcntl
        except ImportError:  # no advisory locks on this platform: run unlocked
            return self
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0),
                     0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise PrunekitError(f"{self.folder}: in use by another run ({_describe_holder(holder)}); wait for it to "
                                "finish or choose another --out") from None
        except OSError:
            os.close(fd)
            raise
        previous = _read_holder(fd)
        self.stale = previous or None
        os.ftruncate(fd, 0)
        command = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:500]
        info = {"pid": os.getpid(), "host": socket.gethostname(), "command": command,
                "since": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")}
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        """Empty the lock file and let go (also happens when the process dies)."""
        if self.fd is None:
            return
        import fcntl

        fd, self.fd = self.fd, None
        try:
            os.ftruncate(fd, 0)
        except OSError:
            pass
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_holder(fd: int) -> dict[str, Any]:
    try:
        raw = os.pread(fd, 4096, 0)
        info = json.loads(raw.decode("utf-8", "replace")) if raw.strip() else {}
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def _describe_holder(info: dict[str, Any]) -> str:
    if not info:
        return "a process that is starting"
    parts = [f"pid {configio.short(info.get('pid'))} on {configio.short(info.get('host'))}"]
    if info.get("since"):
        parts.append(f"since {configio.short(info['since'])}")
    if info.get("command"):
        cmd = str(info["command"])
        parts.append(f"command {cmd[:120]!r}" if len(cmd) <= 120 else f"command {cmd[:117]!r}...")
    return ", ".join(parts)


#: keys a resume may change without asking: where files go and what is printed, not what is computed
SAFE_CHANGES = frozenset({"out", "train.quiet", "train.eval_every", "train.eval_batch_size",
                          "train.checkpoint_every_steps", "data.root", "data.download"})
#: keys a resume may change when asked explicitly (``--allow-change KEY``): the machine, not the experiment
ALLOWABLE_CHANGES = frozenset({"train.device", "train.amp", "train.channels_last"})


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict) and tree:
        out: dict[str, Any] = {}
        for k, v in tree.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: tree}


def config_changes(saved: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The dotted keys whose values differ between two configs (a key missing on one side differs)."""
    a, b = _flatten(saved), _flatten(new)
    return sorted(k for k in set(a) | set(b) if a.get(k, _MISSING) != b.get(k, _MISSING))


_MISSING = object()


def check_resume(out_dir: Path, cfg: dict[str, Any], allow_change: Iterable[str] = ()) -> None:
    """Refuse to resume ``out_dir`` with a config that differs from the one it was started with.

    The whole effective config is compared; :data:`SAFE_CHANGES` always pass, :data:`ALLOWABLE_CHANGES`
    pass when listed in ``allow_change``. Nothing is written.
    """
    allow = set(allow_change)
    bad = sorted(allow - ALLOWABLE_CHANGES)
    if bad:
        raise PrunekitError(f"--allow-change {', '.join(map(configio.short, bad))}: only "
                            f"{', '.join(sorted(ALLOWABLE_CHANGES))} may be allowed to change on resume")
    saved_path = out_dir / "config.yaml"
    if not saved_path.is_file():  # a new folder (or a bare checkpoint: the Trainer still checks its schedule)
        return
    saved = configio.read_yaml(saved_path)
    with contextlib.suppress(PrunekitError):
        saved = pconfig.normalize(saved)  # an older file: its defaults filled in as today's
    changed = [k for k in config_changes(saved, cfg)
               if k not in SAFE_CHANGES and k not in allow and k.split(".")[0] not in SAFE_CHANGES]
    if changed:
        shown = ", ".join(f"{k} ({configio.short(_flatten(saved).get(k))} -> {configio.short(_flatten(cfg).get(k))})"
                          for k in changed[:6])
        more = f" and {len(changed) - 6} more" if len(changed) > 6 else ""
        allowable = [k for k in changed if k in ALLOWABLE_CHANGES]
        hint = (f" (--allow-change {allowable[0]} accepts a change of machine)" if allowable and
                len(allowable) == len(changed) else "")
        raise PrunekitError(f"{out_dir}: cannot resume with a changed config: {shown}{more}; resume with the saved "
                            f"config ({saved_path}) or start a new output folder{hint}")


def check_writable(out_dir: Path) -> None:
    """Fail before any data are loaded when the output folder cannot be written (read-only, no permission).

    Probes the folder, or its nearest existing parent, with a temporary file that is removed at once, so a
    refused run leaves nothing behind. The error names the first file the run would write.
    """
    import tempfile

    probe = out_dir
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise PrunekitError(f"{probe}: not a folder; choose another --out")
    try:
        fd, name = tempfile.mkstemp(prefix=".prunekit-probe-", dir=probe)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, str(out_dir / "config.yaml")) from None
    os.close(fd)
    os.unlink(name)


def check_device(name: str) -> torch.device:
    """The device ``train.device`` names, refused in one line when this machine (or this torch) lacks it."""
    from prunekit.engine import pick_device

    if name != "auto":
        try:
            dev = torch.device(name)
        except (RuntimeError, ValueError, TypeError):
            raise PrunekitError(f"train.device={configio.short(name)}: not a device (auto, cpu, cuda, cuda:N)") \
                from None
        if dev.type == "cuda":
            if not torch.cuda.is_available():
                build = "a CPU-only build" if torch.version.cuda is None else "no visible GPU"
                raise PrunekitError(f"train.device={name}: this machine has no CUDA device (torch {torch.__version__}"
                                    f", {build}); use train.device=auto or cpu")
            if dev.index is not None and dev.index >= torch.cuda.device_count():
                raise PrunekitError(f"train.device={name}: only {torch.cuda.device_count()} CUDA device(s) here")
        elif dev.type == "mps":
            mps = getattr(torch.backends, "mps", None)
            if mps is None or not mps.is_available():
                raise PrunekitError(f"train.device={name}: this machine has no MPS device; use auto or cpu")
        elif dev.type != "cpu":
            raise PrunekitError(f"train.device={configio.short(name)}: cannot train there; use auto, cpu or cuda")
    return pick_device(name)


def check_data(train: pdata.Dataset | None, test: pdata.Dataset, cfg: dict[str, Any] | None = None) -> None:
    """Refuse data that would train 0 steps or evaluate 0 images (a result that means nothing)."""
    if len(test) == 0:
        raise PrunekitError(f"dataset {test.name!r}: the evaluation split has no images; nothing to measure")
    if train is None or cfg is None:
        return
    if len(train) == 0:
        raise PrunekitError(f"dataset {train.name!r}: the training split has no images")
    batch = cfg["train"]["batch_size"]
    if cfg["train"]["epochs"] > 0 and len(train) < batch:
        raise PrunekitError(f"dataset {train.name!r}: {len(train)} training images, fewer than one batch "
                            f"(train.batch_size={batch}): every epoch would train 0 steps; lower "
                            "train.batch_size or use more data (data.subset)")


def check_model_data(model: nn.Module, dataset: pdata.Dataset, what: str = "model") -> None:
    """One forward pass of a single input: the model must take the data's images and have an output per class.

    Catches a model built for other images (input_size, channels) or for fewer classes than the labels
    before any training (or evaluation) starts, instead of a shape traceback or an IndexError later.
    """
    shape = tuple(dataset.input_shape)
    try:
        param = next(model.parameters())
        device, dtype = param.device, (param.dtype if param.is_floating_point() else torch.float32)
    except StopIteration:
        device, dtype = torch.device("cpu"), torch.float32
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():  # a HF classifier: input by keyword, logits in a ModelOutput (as the Trainer)
            raw = forward_logits(model, torch.zeros((1, *shape), device=device, dtype=dtype),
                                 output_transform=lambda o: o)
    except (RuntimeError, ValueError, IndexError, TypeError) as exc:
        text = str(exc)[:2000].strip()
        first = text.splitlines()[0][:160] if text else type(exc).__name__
        first = first.encode("unicode_escape").decode("ascii")
        raise PrunekitError(f"{what} does not take {dataset.name!r} images of shape {shape} ({first}); build it "
                            "for this data (model.kwargs input_size, in_channels) or choose matching data") from None
    finally:
        model.train(was_training)
    try:
        out = logits_of(raw)
    except PrunekitError:
        out = raw
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != 1:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise PrunekitError(f"{what} gives {got} for one image; a classifier gives (1, classes)")
    outputs, classes = int(out.shape[1]), int(dataset.num_classes)
    top = int(dataset.labels.max()) + 1 if len(dataset) else 0
    if outputs < max(classes, top):
        raise PrunekitError(f"{what} has {outputs} outputs but dataset {dataset.name!r} has {max(classes, top)} "
                            "classes; build it with num_classes matching the data")


def run(cfg: dict[str, Any], *, out: str | Path | None = None, resume: bool = False,
        model: nn.Module | None = None, data: tuple[pdata.Dataset, pdata.Dataset] | None = None,
        latency: bool = True, allow_change: Iterable[str] = (), model_label: str | None = None) -> Result:
    """Run the experiment ``cfg`` (see :mod:`prunekit.config`) and write its files under ``out``.

    ``model`` / ``data`` let a driver (demo, harness) reuse an already trained network or loaded data. A
    ``model`` that is not from the zoo (a user's own network, a HF ``transformers`` classifier) is saved with
    its structure as given as ``base`` (:func:`prunekit.io.save`), so ``prunekit.load(path, model=fresh)``
    rebuilds the pruned one; ``model_label`` names it in the figures and messages (default: the config's
    ``model.name``).
    ``resume`` continues the folder's checkpoint when the config is the saved one (see :func:`check_resume`;
    ``allow_change`` lists keys of :data:`ALLOWABLE_CHANGES` that may differ).

    Every check passes before the first write, and the folder is locked for the whole run (see the module
    docstring). Under ``torchrun`` every rank trains and finalizes (identically); rank 0 alone locks, writes
    the files and measures, and the others return a Result with the same model and empty figures.
    """
    cfg = pconfig.normalize(cfg)  # a library caller's dict gets the CLI's checks too
    out_dir = Path(out or cfg.get("out") or "runs/last")
    main = distributed.is_main()
    check_device(cfg["train"]["device"])
    if main:
        if resume:  # early, read-only, for the clearest message; again under the lock below
            check_resume(out_dir, cfg, allow_change)
        check_writable(out_dir)
    seed_everything(cfg["seed"])
    if data is None:  # rank 0 first: a download or a cache write happens once
        if main:
            data = load_data(cfg)
        distributed.barrier()
        if not main:
            data = load_data(cfg)
    assert data is not None
    train, test = data
    check_data(train, test, cfg)
    if model is None:
        model = build_model(cfg, train)
    label = model_label or cfg["model"]["name"]
    check_model_data(model, train, f"model {label!r}" if not cfg.get("pretrained") or model_label
                     else f"{cfg['pretrained']}")
    method = make_method(cfg)
    t = cfg["train"]
    stages = method.stages(t["epochs"]) if method is not None else [Stage("train", t["epochs"])]
    with _locked(out_dir, main, resume, cfg, allow_change):
        return _run_locked(cfg, out_dir, main, resume, model, train, test, method, stages, latency, label)


@contextlib.contextmanager
def _locked(out_dir: Path, main: bool, resume: bool, cfg: dict[str, Any],
            allow_change: Iterable[str]) -> Iterator[None]:
    """Rank 0 locks the folder and checks a resume; every rank learns the verdict (no rank waits alone)."""
    lock = RunLock(out_dir)
    error: PrunekitError | None = None
    if main:
        try:
            lock.acquire()
            if resume:
                check_resume(out_dir, cfg, allow_change)
        except PrunekitError as exc:
            lock.release()
            error = exc
    if distributed.any_rank(error is not None):
        raise error or PrunekitError("rank 0 refused the run (see its message)")
    try:
        yield
    finally:
        lock.release()


def _run_locked(cfg: dict[str, Any], out_dir: Path, main: bool, resume: bool, model: nn.Module,
                train: pdata.Dataset, test: pdata.Dataset, method: PruningMethod | None, stages: list[Stage],
                latency: bool, label: str) -> Result:
    if main:
        write_text(out_dir / "config.yaml", dump(cfg))
    base = _structure(model)
    t = cfg["train"]
    tcfg = trainer_config(cfg)  # every TrainerConfig field, from the validated config
    optim = optim_config(cfg)
    trainer = Trainer(model, train, test, optim=optim, config=tcfg,
                      callbacks=[method] if method is not None else [], out_dir=out_dir)
    t0 = time.perf_counter()
    history = trainer.fit(stages, resume=resume) if sum(s.epochs for s in stages) > 0 else []
    train_seconds = time.perf_counter() - t0
    final = trainer.raw_model
    result = FinalizeResult(final)
    if method is not None:
        result = method.finalize(final, trainer.example_inputs)
    final = result.model
    if not main:
        distributed.barrier()  # wait for rank 0's files
        return Result(final, {}, history, result.report, result.sparse)
    model_path = out_dir / "model.safetensors"
    if result.sparse:
        from prunekit import surgery

        surgery.save_sparse(final, model_path)
    else:
        io.save(final, model_path, base=base if io.factory_of(final) is None else None)
    figs = measure(final, test, device=trainer.device, path=model_path, latency=latency,
                   eval_batch_size=t["eval_batch_size"])
    figs["train_seconds"] = round(train_seconds, 2)
    figs["method"] = "dense" if cfg["method"]["name"] == "none" else cfg["method"]["name"]
    figs["model"] = label
    figs["data"] = cfg["data"]["name"]
    figs["seed"] = cfg["seed"]
    write_text(out_dir / "report.json", json.dumps({"figures": figs, "method_report": _jsonable(result.report)},
                                                   indent=2))
    distributed.barrier()
    return Result(final, figs, history, result.report, result.sparse)


def _structure(model: nn.Module) -> nn.Module | None:
    """A user's network as given, on the meta device (no memory): the ``base`` its pruned file records changes
    against. None for a zoo network (its file names its factory) or one that cannot be copied."""
    raw = getattr(model, "module", model)
    if io.factory_of(raw) is not None:
        return None
    try:
        return copy.deepcopy(raw).to("meta")
    except Exception:  # a module that cannot be deep-copied: saved as before, loadable into an unchanged model
        return None


def _jsonable(obj: Any) -> Any:
    """Best-effort conversion of a method report to JSON (tensors become lists)."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    return str(obj)
