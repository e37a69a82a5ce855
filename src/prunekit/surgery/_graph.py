"""Transitional alias of :mod:`prunekit.surgery.graph` (its earlier, private name) for the two modules that
still import it under that name (``methods/analysis.py``, ``methods/factors.py``); remove it once they import
``prunekit.surgery.graph``."""

from prunekit.surgery.graph import analyse, build_graph, forward_fn

__all__ = ["analyse", "build_graph", "forward_fn"]
