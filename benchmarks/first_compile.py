"""A fresh process's first compile, with and without Triton's hash of itself taken early.

Each run is a fresh process with an empty Triton cache: it imports an op, waits as a
program would before its first call (building its model, starting CUDA: --gap seconds),
then compiles the op's forward and backward kernels for sm_90 ahead of time (no GPU
needed) and prints how long that took.  "early": the runtime's background thread
(actgen/runtime/compiler_key.py) took the hash during the wait; "late": the compile takes
it.  The thread starts on its own only where torch sees a GPU; here it is started by hand.

    python benchmarks/first_compile.py [--op silu] [--gap 0.6] [--runs 3]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile

_CHILD = """
import importlib, sys, time
mod = importlib.import_module("actgen.ops." + sys.argv[1])
from actgen import aot
from actgen.runtime import compiler_key
if sys.argv[2] == "early":
    compiler_key.start(needs_gpu=False)
time.sleep(float(sys.argv[3]))
t = time.perf_counter()
compiler_key.wait()
for k in (mod._forward_kernel, mod._backward_kernel):
    aot.compile_kernel(k, "fp32", 90, aot.LAYOUTS[0], tuple(mod._OP.param_names))
print(time.perf_counter() - t)
"""


def first_compile(op: str, when: str, gap: float) -> float:
    with tempfile.TemporaryDirectory(prefix="actgen-first-compile-") as tmp:
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        env.update(TRITON_CACHE_DIR=os.path.join(tmp, "triton"), ACTGEN_CACHE_DIR=os.path.join(tmp, "actgen"),
                   ACTGEN_WARM_COMPILER_KEY="0")
        out = subprocess.run([sys.executable, "-c", _CHILD, op, when, str(gap)], env=env, capture_output=True,
                             text=True, timeout=600, check=True)
        return float(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--op", default="silu")
    p.add_argument("--gap", type=float, default=0.6, help="seconds between the import and the first compile")
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args(argv)
    times = {"late": [], "early": []}
    for _ in range(args.runs):
        for when in times:
            times[when].append(first_compile(args.op, when, args.gap))
    for when, ts in times.items():
        print(f"{args.op}: first compile of its two kernels for sm_90, hash taken {when}: "
              f"median {statistics.median(ts):.3f} s ({', '.join(f'{t:.3f}' for t in ts)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
