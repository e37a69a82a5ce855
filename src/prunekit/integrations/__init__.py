"""prunekit methods in the training loops people already use: PyTorch Lightning and the Hugging Face Trainer.

Each adapter is a thin file over the declared method contract (:mod:`prunekit.methods.api`): it drives the
method through the same sequence of calls as the README's own-loop block, with a
:class:`~prunekit.engine.LoopState` standing for the framework's loop.

* :mod:`prunekit.integrations.lightning` -- ``PrunekitCallback``, a ``lightning.pytorch.Callback``
  (``pip install 'prunekit[lightning]'``);
* :mod:`prunekit.integrations.hf` -- ``PrunekitTrainerCallback``, a ``transformers.TrainerCallback``
  (``pip install 'prunekit[hf]'``).

Neither framework is imported by ``import prunekit`` or by this package; importing an adapter without its
framework installed raises one :class:`~prunekit.errors.PrunekitError` line naming the package to install.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from prunekit.errors import PrunekitError


def require(module: str, package: str, extra: str) -> ModuleType:
    """Import ``module`` or refuse in one line naming the package (and prunekit extra) that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise PrunekitError(f"{module} is not installed (needed by prunekit.integrations.{extra}): pip install "
                            f"'prunekit[{extra}]' (or pip install {package}); import error: {exc}") from None


__all__ = ["require"]
