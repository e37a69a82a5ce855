"""One experiment from a validated config: data, model, method, training, the deliverable, its figures.

Used by the CLI (``prunekit train`` / ``prunekit prune``), the demo and the benchmarks, so that every
number prunekit prints comes from this one path.
"""

from __future__ import annotations

import inspect
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunekit import data as pdata
from prunekit import io, metrics, models
from prunekit._atomic import write_text
from prunekit.config import dump, optim_config, trainer_config
from prunekit.engine import Stage, Trainer, distributed, evaluate, seed_everything
from prunekit.errors import PrunekitError
from prunekit.methods import FinalizeResult, PruningMethod
from prunekit.methods import get as get_method


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
        accepted = inspect.signature(models._registry._factory(name)).parameters
    except PrunekitError:
        accepted = {}
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


def run(cfg: dict[str, Any], *, out: str | Path | None = None, resume: bool = False,
        model: nn.Module | None = None, data: tuple[pdata.Dataset, pdata.Dataset] | None = None,
        latency: bool = True) -> Result:
    """Run the experiment ``cfg`` (see :mod:`prunekit.config`) and write its files under ``out``.

    ``model`` / ``data`` let a driver (demo, harness) reuse an already trained network or loaded data.

    Under ``torchrun`` every rank trains and finalizes (identically); rank 0 alone writes the files and
    measures, and the others return a Result with the same model and empty figures.
    """
    out_dir = Path(out or cfg.get("out") or "runs/last")
    main = distributed.is_main()
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_text(out_dir / "config.yaml", dump(cfg))
    seed_everything(cfg["seed"])
    if data is None:  # rank 0 first: a download or a cache write happens once
        if main:
            data = load_data(cfg)
        distributed.barrier()
        if not main:
            data = load_data(cfg)
    train, test = data
    if model is None:
        model = build_model(cfg, train)
    method = make_method(cfg)
    t = cfg["train"]
    tcfg = trainer_config(cfg)  # every TrainerConfig field, from the validated config
    optim = optim_config(cfg)
    stages = method.stages(t["epochs"]) if method is not None else [Stage("train", t["epochs"])]
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
        io.save(final, model_path)
    figs = measure(final, test, device=trainer.device, path=model_path, latency=latency,
                   eval_batch_size=t["eval_batch_size"])
    figs["train_seconds"] = round(train_seconds, 2)
    figs["method"] = "dense" if cfg["method"]["name"] == "none" else cfg["method"]["name"]
    figs["model"] = cfg["model"]["name"]
    figs["data"] = cfg["data"]["name"]
    figs["seed"] = cfg["seed"]
    write_text(out_dir / "report.json", json.dumps({"figures": figs, "method_report": _jsonable(result.report)},
                                                   indent=2))
    distributed.barrier()
    return Result(final, figs, history, result.report, result.sparse)


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
