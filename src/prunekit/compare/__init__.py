"""The comparison harness: every method and its peers on one model and dataset, at the same budget.

``prunekit compare CONFIG`` answers "which method, at what size, costs me how much accuracy and buys how much
speed?" with one grid run:

* per seed, one dense network is trained (``dense_epochs``) and saved: the shared starting point;
* every method that starts from a trained network (IHT, Network Trimming, L1-filter, ...) starts from that
  file and trains ``budget_epochs`` more; every method its paper trains from scratch (SSS, SGHT, SFP,
  Network Slimming) trains ``dense_epochs + budget_epochs`` from the seed's initialisation; the ``dense``
  row keeps training the dense network for ``budget_epochs``. Every row gets the same total training;
* each target (``{macs: 0.25}`` = keep a quarter of the dense MACs, ``{params: 0.1}`` = a tenth of the
  parameters, counted as non-zeros for unstructured methods) is translated into each method's own knob
  (SGHT's ``macs_budget``, IHT's ``keep``, Slimming's ``target_macs``, ...). A method that has no such knob
  (Network Trimming's APoZ rule, SSS's penalty) runs at its own settings, or at each point of a ``sweep``, and
  its rows are marked unmatched; every row records the MACs and parameters it actually reached;
* latency is measured at the end for every final model, interleaved round-robin in one process (batch 1 and
  ``latency_batch``), so that machine load affects every row alike.

Outputs (``out``): ``runs/<row>-<hash>/seed<k>/`` (each a normal prunekit run folder), ``results.csv`` and
``results.jsonl`` (one line per run), ``summary.md`` (mean and spread over seeds) and plots (PNG and SVG):
accuracy vs MACs and vs parameters with the Pareto front, latency vs MACs, and per-layer kept weights.
A run is identified by a hash of its full config: finished runs are never repeated, a killed run resumes
from its checkpoint, and a changed setting starts a new run. ``prunekit report OUT`` rebuilds the summary
and plots from ``results.csv``.

Config schema (YAML; unknown keys are rejected)::

    name: mnist-lenet5
    out: runs/compare/mnist-lenet5
    seeds: [0, 1]
    base: {model: ..., data: ..., train: ..., optim: ...}   # a prunekit experiment config (no method)
    dense_epochs: 4
    budget_epochs: 4
    targets: [{macs: 0.3}, {params: 0.1}]
    methods:                      # name: the method's own options, plus these reserved keys:
      dense: {}
      sght: {}                    #   kinds: [macs]       which target kinds to run (default: all it supports)
      sss: {sweep: {gamma_channel: [0.01, 0.03]}}   # one row per value (per target, for a method with a knob)
      trimming: {start: dense}    #   start: auto | dense | scratch
    latency: true
    latency_batch: 64
    latency_rounds: 15
    latency_deployed: true        # time the deployed form (BN folded into convs, channels_last), every row alike
    tolerance: 0.05               # a row is "matched" when it is within 5% (relative) of its target
"""

from __future__ import annotations

from prunekit.compare.config import DEFAULTS, KINDS, CompareConfig, load, schema, validate
from prunekit.compare.grid import Row, plan
from prunekit.compare.results import (
    BOOL_COLUMNS,
    CSV_COLUMNS,
    FLOAT_COLUMNS,
    INT_COLUMNS,
    print_summary,
    read_results,
    report,
    summarize,
    write_results,
)
from prunekit.compare.runner import load_model, run
from prunekit.reports.compare import markdown, pareto

__all__ = [
    "BOOL_COLUMNS",
    "CSV_COLUMNS",
    "DEFAULTS",
    "FLOAT_COLUMNS",
    "INT_COLUMNS",
    "KINDS",
    "CompareConfig",
    "Row",
    "load",
    "load_model",
    "markdown",
    "pareto",
    "plan",
    "print_summary",
    "read_results",
    "report",
    "run",
    "schema",
    "summarize",
    "validate",
    "write_results",
]
