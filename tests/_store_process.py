"""A process of its own for tests/test_core_variant_store.py, run without Triton's
interpreter (real kernels, compiled ahead of time for sm_90; no GPU needed).

    python tests/_store_process.py record DIR          compile CASES, record them in the store
    python tests/_store_process.py load DIR [STORE...] load them back (in a fresh process)

DIR holds Triton's cache (DIR/triton) and actgen's (DIR/actgen, the store).  Prints JSON.
"""
import hashlib
import importlib
import json
import os
import sys
import time
from pathlib import Path

DIR = Path(sys.argv[2])
os.environ.pop("TRITON_INTERPRET", None)
os.environ["TRITON_CACHE_DIR"] = str(DIR / "triton")
os.environ["ACTGEN_CACHE_DIR"] = str(DIR / "actgen")

import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from actgen import aot  # noqa: E402
from actgen.runtime import variant_store  # noqa: E402
from actgen.runtime.triton_lang import FP_FUSION  # noqa: E402

H100 = GPUTarget("cuda", 90, 32)
# op, kernel, pointer dtype, params: variants as the JIT would compile them
CASES = {"silu-forward-fp32": ("silu", "forward", "fp32", ()),
         "prelu-backward-bf16": ("prelu", "backward", "bf16", ("weight",)),
         "rrelu-forward-fp16": ("rrelu", "forward", "fp16", ())}
KEY = (0, 0, 4, (4, 256, 0, tl.float32, False), torch.float32, True, 33)   # as variants.variant_key has it


def kernel(case):
    op, which, _, _ = CASES[case]
    return getattr(importlib.import_module(f"actgen.ops.{op}"), f"_{which}_kernel")


def source(case) -> ASTSource:
    op, which, dtype, params = CASES[case]
    return aot.kernel_source(kernel(case), dtype, (4, 256, 0), params, training=True)


def facts(compiled) -> dict:
    src = compiled.src
    return {"src_hash": src.hash(), "signature": repr(src.signature), "constants": repr(src.constants),
            "attrs": repr(src.attrs), "binary_sha256": hashlib.sha256(compiled.kernel).hexdigest(),
            "elf": compiled.kernel[:4] == b"\x7fELF", "metadata": repr(compiled.metadata),
            "packed_metadata": repr(compiled.packed_metadata), "name": compiled.name, "hash": compiled.hash,
            "files": sorted(Path(p).suffix for p in compiled.metadata_group.values())}


def record() -> dict:
    out = {}
    for case in CASES:
        compiled = triton.compile(source(case), target=H100, options={"num_warps": 4, **FP_FUSION})
        out[case] = {"recorded": variant_store.STORE.record(kernel(case), KEY, H100, compiled),
                     "entry": variant_store.entry_name(kernel(case), KEY, H100), **facts(compiled)}
    return out


def load(stores) -> dict:
    out = {}
    for case in CASES:
        k = kernel(case)
        t = time.perf_counter()
        loaded = variant_store.STORE.load(k, KEY, H100)
        seconds = time.perf_counter() - t
        # Triton's own cache hit for the same source: what the store must give back
        reference = triton.compile(source(case), target=H100, options={"num_warps": 4, **FP_FUSION})
        out[case] = {"loaded": None if loaded is None else facts(loaded), "triton": facts(reference),
                     "load_s": seconds}
    k = kernel("silu-forward-fp32")
    entry = variant_store.entry_name(k, KEY, H100)
    out["stores"] = {}
    for d in stores:
        store = variant_store.VariantStore(Path(d))
        out["stores"][d] = {"loaded": store.load(k, KEY, H100) is not None, "entry_left": (Path(d) / entry).exists()}
    return out


if __name__ == "__main__":
    mode = sys.argv[1]
    result = record() if mode == "record" else load(sys.argv[3:])
    print("STORE_PROCESS " + json.dumps(result))
