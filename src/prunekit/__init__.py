"""prunekit: turn big deep networks into skinny ones.

Four published pruning methods (IHT, Network Trimming, SSS, SGHT) as plug-ins for any PyTorch training
loop, structural surgery that really removes channels and blocks, and honest metrics.
"""

from prunekit.errors import PrunekitError
from prunekit.export import export
from prunekit.io import load, save

__version__ = "0.1.0"
__all__ = ["PrunekitError", "__version__", "export", "load", "save"]
