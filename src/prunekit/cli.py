"""The ``prunekit`` command: train | prune | compare | eval | info | export | report | bench | demo | schema.

Bad input of any kind exits with code 2 and one line on stderr that says what is wrong and how to fix it.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from prunekit.errors import PrunekitError, escape


def show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                 file: Any = None, line: str | None = None) -> None:
    """``warnings.showwarning`` for the command: one escaped ``prunekit: warning:`` line per warning (a
    library warning's own ``prunekit:`` prefix, there for library users, is not repeated)."""
    text = str(message)
    print(f"prunekit: warning: {escape(text.removeprefix('prunekit: '))}", file=sys.stderr)


def fail(message: object) -> int:
    """Print the one ``prunekit: error:`` line (the only place that prints it) and return exit code 2."""
    print(f"prunekit: error: {escape(str(message))}", file=sys.stderr)
    return 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit 2 (argparse prints usage too)
        sys.exit(fail(f"{message} (see: {self.prog} --help)"))


def _add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="experiment YAML (see configs/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set optim.lr=0.05 (repeatable)")
    p.add_argument("--out", help="output folder (default: the config's out, else runs/<config name>)")
    p.add_argument("--resume", action="store_true", help="continue from the output folder's checkpoint (the config "
                   "must be the saved one)")
    p.add_argument("--allow-change", dest="allow_change", action="append", default=[], metavar="KEY",
                   help="on --resume, accept a changed train.device, train.amp or train.channels_last (repeatable)")
    p.add_argument("--data-dir", help="where the dataset files are (sets data.root)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--model", dest="factory", default=None, metavar="PACKAGE.MODULE:FACTORY",
                   help="train your own network instead of the config's model.name: FACTORY() builds it (any "
                        "nn.Module, e.g. a HF transformers classifier); the module is imported, i.e. its code runs, "
                        "only when you pass this (the current folder is searched first). Pass the same on --resume "
                        "and to eval / export with the saved file")


def _add_max_macs(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-macs", type=float, default=None, metavar="N",
                   help="refuse a network costing more MACs per sample (default 2e10, or $PRUNEKIT_MAX_MACS); "
                        "checked on the meta device before anything runs")


def _check_bounds(model: Any, shape: tuple[int, ...], args: argparse.Namespace) -> None:
    """Refuse a model whose cost per sample (MACs, largest layer output) is beyond the limits, before it runs."""
    from prunekit.metrics.counting import check_bounds

    check_bounds(model, shape, max_macs=args.max_macs, what=args.model)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="prunekit", description="Turn big deep networks into skinny ones.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    p = sub.add_parser("train", help="train a dense network from a config (the method is ignored)")
    _add_run_args(p)
    p = sub.add_parser("prune", help="run a pruning method from a config")
    _add_run_args(p)
    p = sub.add_parser("eval", help="accuracy of a saved model on a dataset")
    p.add_argument("model", help="a prunekit model file (.safetensors)")
    p.add_argument("--data", required=True, help="dataset name (digits, mnist, cifar10, ...)")
    p.add_argument("--data-dir", help="where the dataset files are")
    p.add_argument("--split", default="test", choices=["train", "test"])
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--model", dest="factory", default=None, metavar="PACKAGE.MODULE:FACTORY",
                   help="the file is your own network, saved by prunekit train / prune --model: FACTORY() builds a "
                        "fresh instance it is loaded into (imported only when you pass this)")
    _add_max_macs(p)
    p = sub.add_parser("info", help="per-layer table of a zoo model or a saved model")
    p.add_argument("model", help="a zoo name (e.g. resnet56) or a prunekit model file")
    p.add_argument("--input-shape", default=None, help="C,H,W (default: the model's usual input)")
    _add_max_macs(p)
    p = sub.add_parser("export", help="export a saved model (onnx, or a sparse file that stores only non-zeros)")
    p.add_argument("model", help="a prunekit model file, or a zoo name")
    p.add_argument("--to", choices=["onnx", "sparse", "dense"], required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--input-shape", default=None,
                   help="C,H,W for ONNX tracing (default: the zoo model's, or the shape it was pruned with)")
    p.add_argument("--model", dest="factory", default=None, metavar="PACKAGE.MODULE:FACTORY",
                   help="your own network: FACTORY() builds a fresh instance that the file (saved with base=) is "
                        "loaded into; the module is imported only when you pass this (the current folder is "
                        "searched first)")
    p.add_argument("--fold-bn", action="store_true",
                   help="fold every BatchNorm that follows a conv into that conv first (the deployed form)")
    _add_max_macs(p)
    p = sub.add_parser("compare", help="run every listed method and peer at the same budgets, over seeds: "
                                       "results.csv, summary.md and plots")
    p.add_argument("config", help="comparison YAML (see configs/compare/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key, e.g. --set seeds=[0] or --set base.train.batch_size=64 (repeatable)")
    p.add_argument("--out", help="output folder (default: the config's out)")
    p.add_argument("--only", default=None, help="comma-separated subset of the config's methods")
    p.add_argument("--smoke", action="store_true",
                   help="a few steps per run on small subsets: checks a (GPU-sized) grid end to end on a CPU")
    p.add_argument("--data-dir", help="where the dataset files are (sets base.data.root)")
    p.add_argument("--progress", action="store_true", help="show per-epoch progress bars")
    p = sub.add_parser("report", help="compare finished runs (a table and a plot), or rebuild a compare folder")
    p.add_argument("runs", nargs="+", help="run folders holding report.json, or one prunekit compare folder")
    p.add_argument("--out", help="folder for report.md and plot.png")
    p = sub.add_parser("bench", help="latency of a model in each runtime (eager, deployed, onnxruntime, cuda), "
                                     "side by side, optionally against its dense network")
    p.add_argument("model", help="a zoo name (e.g. resnet56) or a prunekit model file")
    p.add_argument("--runtime", default="eager,deployed,onnxruntime",
                   help="comma-separated: eager, deployed, onnxruntime, cuda (default: the three CPU ones)")
    p.add_argument("--batch", default="1,64", help="comma-separated batch sizes (default 1,64)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads for every runtime (default 1)")
    p.add_argument("--rounds", type=int, default=10, help="interleaved timing rounds (median over them)")
    p.add_argument("--against", default=None, metavar="DENSE_MODEL",
                   help="the dense network (zoo name or file): adds speed-up and speed-up / MACs reduction")
    p.add_argument("--input-shape", default=None, help="C,H,W (default: the model's usual input)")
    p.add_argument("--clock", default="auto", choices=["auto", "wall", "thread"],
                   help="wall clock, or the thread's CPU time (one thread: immune to other processes); "
                        "auto = thread for --threads 1 on the CPU")
    _add_max_macs(p)
    p = sub.add_parser("demo", help="train LeNet-5 on the embedded digits and prune it with every method")
    p.add_argument("--epochs", type=int, default=None, help="epochs per run (default: the demo's)")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--methods", default=None, help="comma-separated subset of methods")
    p.add_argument("--quiet", action="store_true")
    p = sub.add_parser("schema", help="print the JSON Schema of a config (for editors: completion and checks)")
    p.add_argument("kind", nargs="?", default="experiment", choices=["experiment", "compare"])
    return parser


def _shape(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise PrunekitError(f"--input-shape {text!r}: expected C,H,W such as 3,32,32") from None
    if len(shape) not in (1, 3) or any(v <= 0 or v > 4096 for v in shape):
        raise PrunekitError(f"--input-shape {text!r}: expected C,H,W with positive sizes")
    return shape


def _load_any(spec: str) -> Any:
    """A model file (dense or sparse), or a zoo name."""
    import stat

    from prunekit import io, models
    from prunekit.atomic import file_kind

    try:
        mode = Path(spec).stat().st_mode
    except OSError:
        mode = None
    if mode is not None and not stat.S_ISREG(mode):
        raise PrunekitError(f"{spec}: is {file_kind(mode)}, not a model file; pass a prunekit model file "
                            "(.safetensors) or a zoo name")
    if Path(spec).suffix == ".safetensors" or mode is not None:
        return io.load(spec)
    return models.create(spec)


def _default_shape(model: Any) -> tuple[int, ...]:
    """The usual input of a zoo model (recorded on the model as ``input_shape``)."""
    shape = getattr(model, "input_shape", None)
    if shape is None:
        raise PrunekitError("this model does not record its input shape; pass --input-shape C,H,W")
    return tuple(shape)


def cmd_run(args: argparse.Namespace, prune: bool) -> int:
    from prunekit import config, experiment, reports
    from prunekit.engine import distributed

    overrides = list(args.overrides)
    if args.data_dir:
        overrides.append(f"data.root={args.data_dir}")
    if args.quiet:
        overrides.append("train.quiet=true")
    cfg = config.load_config(args.config, overrides)
    if not prune:
        cfg["method"] = {"name": "none"}
    elif cfg["method"]["name"] == "none":
        raise PrunekitError(f"{args.config}: no method.name; choose one, e.g. --set method.name=sght")
    out = args.out or cfg.get("out") or f"runs/{Path(args.config).stem}"
    model = None
    if args.factory is not None:  # the user's code, imported on request only; built under the run's seed
        from prunekit.engine import seed_everything

        seed_everything(cfg["seed"])
        model = _user_network(args.factory)
    res = experiment.run(cfg, out=out, resume=args.resume, allow_change=args.allow_change, model=model,
                         model_label=args.factory)
    if distributed.is_main():
        print(reports.table([dict(res.figures)], [*reports.COLUMNS, "train_seconds"]))
        print(f"saved: {Path(out) / 'model.safetensors'}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from prunekit import data, engine

    if args.factory is not None:
        from prunekit import io

        model = io.load(args.model, model=_user_network(args.factory))
    else:
        model = _load_any(args.model)
    ds = data.load(args.data, args.split, root=args.data_dir)
    _check_bounds(model, tuple(ds.images.shape[1:]), args)
    from prunekit.experiment import check_data, check_model_data

    check_data(None, ds)
    check_model_data(model, ds, args.model)
    res = engine.evaluate(model, ds, batch_size=args.batch_size, device=engine.pick_device("auto"))
    print(f"{args.model}: {args.data}/{args.split}: top-1 {res['top1']:.2f}%  top-5 {res['top5']:.2f}%  "
          f"loss {res['loss']:.4f}  ({len(ds)} images)")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    import torch

    from prunekit import metrics

    model = _load_any(args.model).eval()
    shape = _shape(args.input_shape) or _default_shape(model)
    _check_bounds(model, shape, args)
    x = torch.zeros((1, *shape))
    rows = metrics.layer_table(model, x)
    print(metrics.format_table(rows))
    c = metrics.count(model, x)
    print(f"total: {c.params:,} params ({c.nonzero_params:,} non-zero), {c.macs:,} MACs per image at {shape}")
    return 0


def _user_network(spec: str) -> Any:
    """``package.module:factory`` -> a fresh instance of the user's network (their code, imported on request)."""
    import importlib
    import re

    from torch import nn

    m = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*):([A-Za-z_][A-Za-z0-9_]*)", spec)
    if m is None:
        raise PrunekitError(f"--model {ascii(spec)[:200]}: expected package.module:factory, e.g. mynets:build")
    mod_name, attr = m.groups()
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))  # like python -m: the user's own folder
    try:
        mod = importlib.import_module(mod_name)
    except BaseException as exc:  # the user's module may fail in any way (SyntaxError, SystemExit, ...)
        if isinstance(exc, KeyboardInterrupt):
            raise
        first = str(exc).splitlines()[0][:200] if str(exc) else ""
        raise PrunekitError(f"--model {spec}: cannot import {mod_name} ({type(exc).__name__}: "
                            f"{ascii(first)[1:-1]})") from None
    factory = getattr(mod, attr, None)
    if not callable(factory):
        raise PrunekitError(f"--model {spec}: {mod_name} has no callable {attr!r}")
    try:
        net = factory()
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):
            raise
        first = str(exc).splitlines()[0][:200] if str(exc) else ""
        raise PrunekitError(f"--model {spec}: {attr}() failed ({type(exc).__name__}: {ascii(first)[1:-1]})"
                            ) from None
    if not isinstance(net, nn.Module):
        raise PrunekitError(f"--model {spec}: {attr}() returned {type(net).__name__}, not a torch nn.Module")
    return net


def _export_shape(model: Any, text: str | None) -> tuple[int, ...]:
    """--input-shape, else the zoo model's input shape, else the shape its last recorded surgery used."""
    from prunekit.surgery import history

    shape = _shape(text)
    if shape is not None:
        return shape
    if getattr(model, "input_shape", None) is not None:
        return _default_shape(model)
    for op in reversed(history.history(model)):
        shapes = op.get("input_shapes") if isinstance(op, dict) else None
        if shapes and len(shapes) == 1 and len(shapes[0]) >= 2:
            return tuple(shapes[0][1:])
    raise PrunekitError("this model does not record its input shape; pass --input-shape C,H,W")


def cmd_export(args: argparse.Namespace) -> int:
    import torch

    import prunekit
    from prunekit import io, surgery

    base = None
    if args.factory is not None:
        model = io.load(args.model, model=_user_network(args.factory)).eval()
        base = _user_network(args.factory) if args.to != "onnx" else None  # the file records changes since
    else:
        model = _load_any(args.model).eval()
    shape = _export_shape(model, args.input_shape) if args.to == "onnx" else \
        _shape(args.input_shape) or getattr(model, "input_shape", None)
    if shape is not None:
        _check_bounds(model, tuple(shape), args)
    if args.fold_bn:
        pairs = surgery.fold_batchnorm(model)
        print(f"folded {len(pairs)} BatchNorm layer(s) into their convolutions")
    x = None
    if args.to == "onnx":
        assert shape is not None
        x = torch.randn((1, *shape), generator=torch.Generator().manual_seed(0))
    res = prunekit.export(model, x, args.out, format=args.to, base=base)
    note = f" (matches torch under onnxruntime: max abs diff {res.max_abs_diff:.2g})" \
        if res.max_abs_diff is not None else ""
    print(f"wrote {args.out}{note}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from prunekit import compare

    overrides = list(args.overrides)
    if args.data_dir:
        overrides.append(f"base.data.root={args.data_dir}")
    cfg = compare.load(args.config, overrides)
    only = [m.strip() for m in args.only.split(",") if m.strip()] if args.only else ()
    results = compare.run(cfg, out=args.out, only=only, smoke=args.smoke, quiet=not args.progress)
    if results:  # rank 0 (the other ranks of a torchrun launch return nothing)
        compare.print_summary(results, Path(args.out or cfg["out"] or f"runs/compare/{cfg['name']}"))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from prunekit import reports

    if len(args.runs) == 1 and (Path(args.runs[0]) / "results.csv").is_file():  # a compare folder
        from prunekit import compare

        reports.check_results_csv(Path(args.runs[0]) / "results.csv", compare.INT_COLUMNS, compare.FLOAT_COLUMNS)
        written = compare.report(args.runs[0])
        print(compare.markdown(compare.summarize(compare.read_results(args.runs[0]))))
        print("wrote " + ", ".join(str(p) for p in written))
        return 0
    rows = reports.read_runs(args.runs)
    text = reports.table(rows, markdown=True, ratios_to=0)
    print(text)
    if args.out:
        from prunekit.atomic import write_text

        out = Path(args.out)
        write_text(out / "report.md", text + "\n")
        reports.plot(rows, out / "plot.png")
        print(f"wrote {out / 'report.md'} and {out / 'plot.png'}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    import torch

    from prunekit import metrics
    from prunekit.metrics import runtime
    from prunekit.metrics.counting import check_bounds

    runtimes = runtime.check_runtimes(args.runtime.split(","))
    try:
        batches = [int(b) for b in args.batch.split(",") if b.strip()]
    except ValueError:
        raise PrunekitError(f"--batch {args.batch!r}: expected comma-separated integers such as 1,64") from None
    if not batches or min(batches) < 1 or args.threads < 1 or args.rounds < 1:
        raise PrunekitError("--batch, --threads and --rounds must be positive")
    if max(batches) > 4096 or args.threads > 1024 or args.rounds > 1000 or len(batches) > 16:
        raise PrunekitError("bench is bounded: at most 16 batch sizes of at most 4096, 1024 threads, 1000 rounds")
    model = _load_any(args.model).eval()
    shape = _shape(args.input_shape) or _default_shape(model)
    _check_bounds(model, shape, args)  # per sample, before anything runs; a batch multiplies it
    x = torch.randn((1, *shape))
    named = {args.model: model}
    macs_ratio = None
    if args.against:
        dense = _load_any(args.against).eval()
        check_bounds(dense, shape, max_macs=args.max_macs, what=args.against)
        named = {args.against: dense, **named}
        macs_ratio = metrics.count(dense, x).macs / max(1, metrics.count(model, x).macs)
    rows = runtime.measure(named, x, runtimes=runtimes, batches=batches, threads=args.threads, rounds=args.rounds,
                           clock=args.clock)
    table = runtime.side_by_side(rows, model=args.model, dense=args.against, macs_ratio=macs_ratio)
    print(metrics.format_table(table))
    clocks = ", ".join(sorted({f"{r['runtime']}: {r['clock']}" for r in rows}))
    print(f"median of {args.rounds} interleaved rounds, {args.threads} thread(s), input {shape}; clock {clocks}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from prunekit import demo

    methods = args.methods.split(",") if args.methods else None
    demo.main(epochs=args.epochs, out=args.out, methods=methods, quiet=args.quiet)
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    import json

    if args.kind == "compare":
        from prunekit.compare.config import schema
    else:
        from prunekit.config import schema
    print(json.dumps(schema(), indent=1))
    return 0


# What each command imports (torch, numpy, matplotlib through these): imported up front, see below.
_COMMON = ("torch", "prunekit.io", "prunekit.engine", "prunekit.errors")
_MODULES: dict[str, tuple[str, ...]] = {
    "train": (*_COMMON, "prunekit.config", "prunekit.experiment", "prunekit.reports"),
    "prune": (*_COMMON, "prunekit.config", "prunekit.experiment", "prunekit.reports"),
    "compare": (*_COMMON, "prunekit.compare"),
    "eval": (*_COMMON, "prunekit.data", "prunekit.models", "prunekit.metrics"),
    "info": (*_COMMON, "prunekit.models", "prunekit.metrics"),
    "export": (*_COMMON, "prunekit.models", "prunekit.metrics", "prunekit.surgery", "prunekit.exporting"),
    "bench": (*_COMMON, "prunekit.models", "prunekit.metrics"),
    "report": ("prunekit.reports",),
    "demo": (*_COMMON, "prunekit.demo"),
}


def _import_deferring_ctrl_c(modules: Sequence[str]) -> None:
    """Import ``modules`` with Ctrl-C held back until they are complete, then act on it (KeyboardInterrupt).

    A KeyboardInterrupt in the middle of a third-party import can leave a half-initialised module behind
    (``numpy has no attribute 'lib'`` later) or be swallowed by a library's ``except`` around an optional
    import, so the interrupt would be lost or turn into a traceback. Off the main thread nothing is deferred.
    """
    import importlib
    import signal

    pending: list[int] = []
    try:
        previous = signal.signal(signal.SIGINT, lambda signum, frame: pending.append(signum))
    except ValueError:  # not the main thread: signals are not ours to handle
        previous = None
    try:
        for name in modules:
            importlib.import_module(name)
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    if pending:
        raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``prunekit`` command.

    Everything, the heavy imports included, runs under one handler: bad input is one escaped line and exit 2,
    Ctrl-C at any moment (even while torch is still being imported) is one line and exit 130.
    """
    warnings.showwarning = show_warning  # a warning's text may come from a file: one escaped line
    command: str | None = None
    shutdown: Any = None
    finished = False
    try:
        args = build_parser().parse_args(argv)
        command = args.command
        _import_deferring_ctrl_c(_MODULES.get(command, ()))
        from prunekit.engine import distributed

        shutdown = distributed.shutdown
        if args.command in ("train", "prune", "compare"):
            distributed.init_from_env()  # under torchrun: join the process group (a no-op otherwise)
        if args.command in ("train", "prune"):
            rc = cmd_run(args, prune=args.command == "prune")
        else:
            handler = {"compare": cmd_compare, "eval": cmd_eval, "info": cmd_info, "export": cmd_export,
                       "report": cmd_report, "demo": cmd_demo, "schema": cmd_schema, "bench": cmd_bench}[args.command]
            rc = handler(args)
        finished = True
        return rc
    except PrunekitError as exc:
        return fail(exc)
    except KeyboardInterrupt:
        hint = "; rerun with --resume to continue from the last checkpoint" if command in ("train", "prune") else ""
        print(f"prunekit: interrupted{hint}", file=sys.stderr)
        return 130
    except OSError as exc:  # disk full, permission denied: the user's environment, not a bug
        where = f"{exc.filename}: " if exc.filename else ""
        return fail(f"{where}{exc.strerror or exc}")
    finally:
        if shutdown is not None:
            shutdown(wait=finished)  # under torchrun: leave the group; a no-op in one process


if __name__ == "__main__":
    sys.exit(main())
