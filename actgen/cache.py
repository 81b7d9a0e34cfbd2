"""Where actgen keeps what it caches across processes: $ACTGEN_CACHE_DIR, default
$XDG_CACHE_HOME/actgen or ~/.cache/actgen (compiled formulas' modules, and an index of the
compiled kernel variants Triton keeps: actgen.runtime.variant_store)."""
from __future__ import annotations

import importlib.abc
import importlib.util
import os
import re
import sys
from pathlib import Path


def cache_dir() -> Path:
    if os.environ.get("ACTGEN_CACHE_DIR"):
        return Path(os.environ["ACTGEN_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "actgen"


#: The name of a package actgen.compile built (see actgen.compiler).
COMPILED_PACKAGE = re.compile(r"actgen_[0-9a-f]{20}")


class CompiledPackages(importlib.abc.MetaPathFinder):
    """Finds the packages actgen.compile built, actgen_<key> in cache_dir(), by name: a class
    of one of them pickles (torch.save of a model) and loads again in a process that imported
    actgen, where the formula was compiled once."""

    def find_spec(self, fullname, path=None, target=None):
        if path is not None or not COMPILED_PACKAGE.fullmatch(fullname):
            return None
        init = cache_dir() / fullname / "__init__.py"
        if not init.is_file():      # (the last finder: the import fails here, with what to do)
            raise ModuleNotFoundError(
                f"No module named {fullname!r}: a formula actgen.compile built, not in the cache at {cache_dir()} "
                "(call actgen.compile with that formula in this process first, or set ACTGEN_CACHE_DIR to the "
                "cache it was built in)", name=fullname)
        return importlib.util.spec_from_file_location(fullname, init, submodule_search_locations=[str(init.parent)])


def find_compiled_packages() -> None:
    """Put a CompiledPackages on sys.meta_path (once)."""
    if not any(isinstance(f, CompiledPackages) for f in sys.meta_path):
        sys.meta_path.append(CompiledPackages())
