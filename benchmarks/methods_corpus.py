"""Every paper method on every corpus network (issue 18): the method columns of the corpus matrix.

One process, one thread, fixed seeds (``prunekit.testing.corpus``: 10 HF ``transformers`` models built from
configs and 9 hand-written patterns, random weights, no download). Each method runs through the declared
contract (README's own loop, ``corpus.run_method``: a few steps on one random batch, tiny settings in
``corpus.METHOD_OPTIONS``), then ``finalize``. A cell is ``0.28x params`` (the delivered network has 0.28x
the parameters, IHT: ``0.51x nonzero`` of a sparse one, and its output equals the trained network's just
before finalize) or ``refused`` with the one-line message below the table. The settings are smoke-test
settings, not accuracy settings: the ratios show that each method shrank the network, not what it would
reach when trained.

    .venv/bin/python benchmarks/methods_corpus.py                  # the matrix (about a minute)
    .venv/bin/python benchmarks/methods_corpus.py --methods sght   # one column

Also written to ``benchmarks/out/methods_corpus.json``. The columns come from ``corpus.METHODS`` (a dict
``method -> check(net) -> Outcome``), which the surgery corpus benchmark can add beside its own columns.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from prunekit.testing import corpus


def cell(out: corpus.Outcome) -> str:
    if out.refused:
        return "refused"
    return out.note if out.done else f"not exact ({out.max_diff:.2g})"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--methods", default=",".join(corpus.METHODS), help="comma-separated methods")
    ap.add_argument("--networks", default=",".join(corpus.NAMES), help="comma-separated corpus networks")
    args = ap.parse_args(argv)
    methods = [m for m in args.methods.split(",") if m]
    names = [n for n in args.networks.split(",") if n]
    torch.set_num_threads(1)
    import transformers

    print(f"prunekit methods on the corpus: torch {torch.__version__}, transformers {transformers.__version__}, "
          "1 thread, seed 0")
    rows, refusals, delivered = [], [], dict.fromkeys(methods, 0)
    t0 = time.perf_counter()
    for name in names:
        row = {"network": name}
        for m in methods:
            out = corpus.METHODS[m](corpus.build(name))
            row[m] = cell(out)
            delivered[m] += bool(out.done)
            for msg in (out.refused or {}).values():
                refusals.append(f"{m} on {name} ({out.note}): {msg}")
        rows.append(row)
        print(f"  {name}: " + " | ".join(f"{m}: {row[m]}" for m in methods), flush=True)
    print()
    print("| network | " + " | ".join(methods) + " |")
    print("|---|" + "---|" * len(methods))
    for row in rows:
        print(f"| {row['network']} | " + " | ".join(row[m] for m in methods) + " |")
    print("| **delivered** | " + " | ".join(f"**{delivered[m]} / {len(names)}**" for m in methods) + " |")
    print()
    for line in refusals:
        print(f"- {line}")
    print(f"\n({time.perf_counter() - t0:.0f} s)")
    out_dir = Path(__file__).resolve().parent / "out"
    out_dir.mkdir(exist_ok=True)
    (out_dir / "methods_corpus.json").write_text(json.dumps({"rows": rows, "refusals": refusals,
                                                             "delivered": delivered}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
