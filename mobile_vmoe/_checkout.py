"""``mobile_vmoe.converters`` in a source checkout.

The repository keeps the converters at the top level (converters/), and the wheel installs them as
mobile_vmoe/converters (pyproject.toml's sources remapping), so that the package claims no generic
top-level name. In a checkout that folder does not exist under mobile_vmoe/: this finder resolves
exactly the name ``mobile_vmoe.converters`` to the checkout's converters/ folder; its submodules
then load from there as from any package. Installed from a wheel, the finder is never added.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
CHECKOUT_CONVERTERS = PACKAGE.parent / "converters"
NAME = "mobile_vmoe.converters"


class _ConvertersFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname != NAME:
            return None
        return importlib.util.spec_from_file_location(NAME, CHECKOUT_CONVERTERS / "__init__.py",
                                                      submodule_search_locations=[str(CHECKOUT_CONVERTERS)])


def install_converters_finder() -> None:
    """Add the finder when running from a checkout (converters/ beside mobile_vmoe/, not inside)."""
    if (PACKAGE / "converters").is_dir() or not (CHECKOUT_CONVERTERS / "__init__.py").is_file():
        return
    if not any(isinstance(f, _ConvertersFinder) for f in sys.meta_path):
        sys.meta_path.append(_ConvertersFinder())
