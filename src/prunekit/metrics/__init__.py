"""Honest metrics: parameters (total, non-zero), MACs of the model as it is, per-layer tables, latency,
accuracy, file size and sparsity.

>>> import torch
>>> from prunekit import metrics, models
>>> m = models.create("lenet5")
>>> metrics.count(m, torch.zeros(1, 1, 28, 28)).params
431080

MACs are per sample; see :mod:`prunekit.metrics.counting` for what is counted.
"""

from prunekit.metrics.counting import Counts, count, layer_table, module_macs, sparsity
from prunekit.metrics.evaluation import accuracy, file_size, latency
from prunekit.metrics.table import format_table

__all__ = ["Counts", "accuracy", "count", "file_size", "format_table", "latency", "layer_table",
           "module_macs", "sparsity"]
