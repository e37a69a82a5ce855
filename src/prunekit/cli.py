"""The ``prunekit`` command: train | prune | compare | eval | info | export | report | demo.

Bad input of any kind exits with code 2 and one line on stderr that says what is wrong and how to fix it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from prunekit.errors import PrunekitError


def escape(text: str) -> str:
    """``text`` with every non-printable character (newline, carriage return, ANSI escape, bidi control) written
    as a Python escape such as ``\\n`` or ``\\x1b``, so a path or a string from a file cannot forge lines,
    colours or a fake ``prunekit:`` line in what the command prints."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape", "backslashreplace").decode("ascii")
                   for c in text)


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
    p.add_argument("--resume", action="store_true", help="continue from the output folder's checkpoint")
    p.add_argument("--data-dir", help="where the dataset files are (sets data.root)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


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
    _add_max_macs(p)
    p = sub.add_parser("info", help="per-layer table of a zoo model or a saved model")
    p.add_argument("model", help="a zoo name (e.g. resnet56) or a prunekit model file")
    p.add_argument("--input-shape", default=None, help="C,H,W (default: the model's usual input)")
    _add_max_macs(p)
    p = sub.add_parser("export", help="export a saved model (onnx, or a sparse file that stores only non-zeros)")
    p.add_argument("model")
    p.add_argument("--to", choices=["onnx", "sparse", "dense"], required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--input-shape", default=None, help="C,H,W for ONNX tracing")
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
    p = sub.add_parser("demo", help="train LeNet-5 on the embedded digits and prune it with every method")
    p.add_argument("--epochs", type=int, default=None, help="epochs per run (default: the demo's)")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--methods", default=None, help="comma-separated subset of methods")
    p.add_argument("--quiet", action="store_true")
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
    from prunekit._atomic import file_kind

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
    res = experiment.run(cfg, out=out, resume=args.resume)
    if distributed.is_main():
        print(reports.table([dict(res.figures)], [*reports.COLUMNS, "train_seconds"]))
        print(f"saved: {Path(out) / 'model.safetensors'}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from prunekit import data, engine

    model = _load_any(args.model)
    ds = data.load(args.data, args.split, root=args.data_dir)
    _check_bounds(model, tuple(ds.images.shape[1:]), args)
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


def cmd_export(args: argparse.Namespace) -> int:
    import torch

    from prunekit import io, surgery
    from prunekit._atomic import atomic_path

    model = _load_any(args.model).eval()
    shape = _shape(args.input_shape) or getattr(model, "input_shape", None)
    if shape is not None:
        _check_bounds(model, tuple(shape), args)
    if args.fold_bn:
        pairs = surgery.fold_batchnorm(model)
        print(f"folded {len(pairs)} BatchNorm layer(s) into their convolutions")
    if args.to == "sparse":
        surgery.save_sparse(model, args.out)
    elif args.to == "dense":
        io.save(model, args.out)
    else:
        shape = _shape(args.input_shape) or _default_shape(model)
        import warnings

        with atomic_path(args.out) as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter needs no onnxscript
            torch.onnx.export(model, (torch.zeros((1, *shape)),), str(tmp), dynamo=False,
                              input_names=["input"], output_names=["logits"],
                              dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    print(f"wrote {args.out}")
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

        reports.check_results_csv(Path(args.runs[0]) / "results.csv", compare._INT, compare._FLOAT)
        written = compare.report(args.runs[0])
        print(compare.markdown(compare.summarize(compare.read_results(args.runs[0]))))
        print("wrote " + ", ".join(str(p) for p in written))
        return 0
    rows = reports.read_runs(args.runs)
    text = reports.table(rows, markdown=True, ratios_to=0)
    print(text)
    if args.out:
        from prunekit._atomic import write_text

        out = Path(args.out)
        write_text(out / "report.md", text + "\n")
        reports.plot(rows, out / "plot.png")
        print(f"wrote {out / 'report.md'} and {out / 'plot.png'}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from prunekit import demo

    methods = args.methods.split(",") if args.methods else None
    demo.main(epochs=args.epochs, out=args.out, methods=methods, quiet=args.quiet)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``prunekit`` command.

    Everything, the heavy imports included, runs under one handler: bad input is one escaped line and exit 2,
    Ctrl-C at any moment (even while torch is still being imported) is one line and exit 130.
    """
    command: str | None = None
    shutdown: Any = None
    finished = False
    try:
        args = build_parser().parse_args(argv)
        command = args.command
        from prunekit.engine import distributed

        shutdown = distributed.shutdown
        if args.command in ("train", "prune", "compare"):
            distributed.init_from_env()  # under torchrun: join the process group (a no-op otherwise)
        if args.command in ("train", "prune"):
            rc = cmd_run(args, prune=args.command == "prune")
        else:
            handler = {"compare": cmd_compare, "eval": cmd_eval, "info": cmd_info, "export": cmd_export,
                       "report": cmd_report, "demo": cmd_demo}[args.command]
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
