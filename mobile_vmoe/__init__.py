"""mvmoe: Mobile Vision Mixture-of-Experts, trained and shipped to phones.

The public names below are imported on first use (PEP 562 module ``__getattr__``), so that
``import mobile_vmoe.errors`` or ``mvmoe --help`` does not pay for torch: ``mobile_vmoe.create_model``
imports the model code the first time it is read, ``from mobile_vmoe import create_model`` the same.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # what the lazy table below resolves to, for type checkers and the import-rules test
    from .config import ModelConfig, parse_overrides
    from .models import MobileVMoE, ModelOutput
    from .models.registry import create_model, dense_twin, get_config, list_models

__version__ = "0.1.0"

# public name -> the submodule that defines it (imported on first access)
LAZY = {
    "ModelConfig": ".config", "parse_overrides": ".config",
    "MobileVMoE": ".models", "ModelOutput": ".models",
    "create_model": ".models.registry", "dense_twin": ".models.registry", "get_config": ".models.registry",
    "list_models": ".models.registry",
}
__all__ = [*LAZY, "__version__"]


def __getattr__(name: str):
    module = LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # the next access is a plain global
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *LAZY})
