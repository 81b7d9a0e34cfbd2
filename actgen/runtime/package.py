"""A generated package's activations, imported when first used.

Importing one activation's module compiles its Triton kernels' sources and registers its
torch.library ops (a few milliseconds each: half a second for the whole built-in library), so
a generated package's `__init__` names its activations and `lazy_package` imports each
module on first use: `ops.silu`, `from ops import SiLU`, `getattr(ops, name)`.
"""
from __future__ import annotations

import importlib
import sys
import types


class LazyPackage(types.ModuleType):
    """A package whose attributes (an activation's functional, Module and Function) come from
    their modules when first asked for."""

    _lazy_names: dict[str, str]     # attribute -> its module, relative to the package

    def __getattr__(self, name: str):
        module = self.__dict__.get("_lazy_names", {}).get(name)
        if module is None:
            raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{self.__name__}.{module}"), name)
        super().__setattr__(name, value)
        return value

    def __setattr__(self, name: str, value) -> None:
        # the import system binds an imported submodule to its package's attribute of the
        # same name, which is the activation's functional (actgen.ops.silu): keep that
        if (isinstance(value, types.ModuleType) and value.__name__ == f"{self.__name__}.{name}"
                and self.__dict__.get("_lazy_names", {}).get(name) == name):
            value = getattr(value, name)
        super().__setattr__(name, value)

    def __dir__(self):
        return sorted(set(super().__dir__()) | set(self.__dict__.get("_lazy_names", {})))


def lazy_package(name: str, modules: dict[str, tuple[str, ...]]) -> None:
    """Make the package `name` import each of modules (module -> the names it defines) when
    one of its names is first used."""
    package = sys.modules[name]
    package.__class__ = LazyPackage
    package._lazy_names = {n: module for module, names in modules.items() for n in names}
