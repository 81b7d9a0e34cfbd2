"""Where actgen keeps what it caches across processes: $ACTGEN_CACHE_DIR, default
$XDG_CACHE_HOME/actgen or ~/.cache/actgen (compiled formulas' modules, and an index of the
compiled kernel variants Triton keeps: actgen.runtime.variant_store)."""
from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    if os.environ.get("ACTGEN_CACHE_DIR"):
        return Path(os.environ["ACTGEN_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "actgen"
