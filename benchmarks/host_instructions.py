"""Host work per call, counted in CPU instructions: exact where wall-clock time is noisy.

A generated op's host time on a GPU is its Python (argument checks, the autograd Function,
the layout, the tuner's choice) plus Triton's launcher.  The first part runs the same on a
machine without a GPU: this counts it under valgrind's callgrind, with the kernel launches
stubbed out ("kernels": the Triton path on CPU tensors, nothing launched; "launcher": the
same through actgen's launcher, whose compiled variants stand-ins that launch nothing, so
its keying counts too) or on the CPU fallback ("fallback": the op computes), for a
4096-element tensor, next to torch's own F.silu.  Each figure is (instructions for 300 calls - for 100 calls) / 200, so the process's
start and the warm-up cancel out; the counts repeat within about 1%.

    python benchmarks/host_instructions.py [--cases silu_fwd silu_fwdbwd ...] [--paths kernels launcher fallback] [--jobs 2]

Needs valgrind (callgrind_control too).  Slow: about 30 s per count.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

_CHILD = """\
import os, subprocess, sys
import torch
torch.set_num_threads(1)
import torch.nn.functional as F
import actgen.ops as ops
from actgen.runtime import backend, launch
path, case, n_iter = sys.argv[1], sys.argv[2], int(sys.argv[3])
torch.manual_seed(0)       # the same inputs in every count (the fallback's path depends on them)
x = torch.randn(4096); xg = x.clone().requires_grad_(); g = torch.randn(4096)
xc = torch.randn(16, 64, 4, requires_grad=True); gc = torch.randn(16, 64, 4); w = torch.rand(64, requires_grad=True)
xh = torch.randn(8, 1024, requires_grad=True); gh = torch.randn(8, 512)
cs = [torch.full((1,), v, requires_grad=True) for v in (0.1, 0.5, 0.2, -0.1)]
if path == "kernels":       # the Triton path on CPU tensors, every launch stubbed out
    launch.LAUNCH = lambda *args: None
    backend.set_backend("triton")
if path == "launcher":      # ... launched by actgen's launcher, a compiled variant's launch stubbed out
    from types import SimpleNamespace
    from actgen.runtime import variants

    class Variant:
        function = packed_metadata = None
        def launch_metadata(self, grid, stream, *values):
            return None
        def run(self, *args):
            return None

    variants.jit_launch = lambda *args: Variant()       # (a variant's first launch "compiles" it)
    launcher = variants.Launcher(enabled=True, store=None, static=False)
    launcher._device, launcher._stream, launcher._target = (lambda: 0), (lambda device: 0), (lambda: None)
    launcher._hooks = SimpleNamespace(launch_enter_hook=None, launch_exit_hook=None)
    launch.LAUNCH = launcher
    backend.set_backend("triton")
f = {
    "silu_fwd": lambda: ops.silu(x),
    "silu_fwdbwd": lambda: torch.autograd.grad(ops.silu(xg), [xg], g),
    "prelu_fwdbwd": lambda: torch.autograd.grad(ops.prelu(xc, w), [xc, w], gc),
    "swiglu_fwdbwd": lambda: torch.autograd.grad(ops.swiglu(*xh.chunk(2, -1)), [xh], gh),
    "polynomial_fwdbwd": lambda: torch.autograd.grad(ops.polynomial(xg, *cs), [xg, *cs], g),
    "F.silu_fwd": lambda: F.silu(x),
    "F.silu_fwdbwd": lambda: torch.autograd.grad(F.silu(xg), [xg], g),
}[case]
for _ in range(30):
    f()
control = ["callgrind_control", "-i"]
subprocess.run(control + ["on", str(os.getpid())], capture_output=True)
for _ in range(n_iter):
    f()
subprocess.run(control + ["off", str(os.getpid())], capture_output=True)
"""

PATHS = ("kernels", "launcher", "fallback")
CASES = ("silu_fwd", "silu_fwdbwd", "prelu_fwdbwd", "swiglu_fwdbwd", "polynomial_fwdbwd")


def count(path: str, case: str, n_iter: int) -> int:
    """Instructions callgrind collected while the calls ran (instrumentation on)."""
    proc = subprocess.run(
        ["valgrind", "--tool=callgrind", "--instr-atstart=no", "--callgrind-out-file=/dev/null",
         sys.executable, "-c", _CHILD, path, case, str(n_iter)],
        capture_output=True, text=True, timeout=1800, env={**os.environ, "ACTGEN_BACKEND": "auto"})
    found = re.search(r"Collected\s*:\s*([\d,]+)", proc.stderr)
    if proc.returncode or not found:
        raise RuntimeError(f"{path} {case}: valgrind failed\n{proc.stderr[-2000:]}")
    return int(found.group(1).replace(",", ""))


def per_call(path: str, case: str) -> int:
    return (count(path, case, 300) - count(path, case, 100)) // 200


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    p.add_argument("--paths", nargs="+", default=list(PATHS), choices=PATHS)
    p.add_argument("--jobs", type=int, default=2)
    args = p.parse_args(argv)
    runs = [("torch", "F.silu_fwd"), ("torch", "F.silu_fwdbwd")]
    runs += [(path, case) for case in args.cases for path in args.paths]
    with ThreadPoolExecutor(args.jobs) as pool:
        counts = list(pool.map(lambda r: per_call(*r), runs))
    print(f"instructions per call, 4096 elements (python {sys.version.split()[0]})")
    for (path, case), n in zip(runs, counts):
        print(f"{case:<16} {path:<9} {n:>9,}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
