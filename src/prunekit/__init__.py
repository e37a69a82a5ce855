"""prunekit: turn big deep networks into skinny ones.

Four published pruning methods (IHT, Network Trimming, SSS, SGHT) as plug-ins for any PyTorch training
loop, structural surgery that really removes channels and blocks, and honest metrics.

``load``, ``save`` and ``export`` are imported on first use: ``import prunekit`` (and so the ``prunekit``
command's start) does not import torch, so a Ctrl-C in the first second reaches the command's own handler.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prunekit.errors import PrunekitError

if TYPE_CHECKING:
    from prunekit.exporting import export
    from prunekit.io import load, save

__version__ = "0.1.0"
__all__ = ["PrunekitError", "__version__", "export", "load", "save"]


def __getattr__(name: str) -> Any:
    if name in ("load", "save"):
        from prunekit import io

        return getattr(io, name)
    if name == "export":
        from prunekit.exporting import export

        return export
    raise AttributeError(f"module 'prunekit' has no attribute {name!r}")
