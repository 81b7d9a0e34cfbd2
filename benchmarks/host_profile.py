"""Where a generated op's host time goes: per-call times of the layers between a call and
its kernel launch, a profile of many calls, and a fresh process's first call.

A memory-bound op on a fast GPU runs into the host when the Python between a call and its
kernel launch takes longer than the kernel: at 2**26 float32 elements a backward moves
768 MiB in about 190 us on an H200.  This separates that time into its layers.

    python benchmarks/host_profile.py [--op silu] [--out FILE]      # on a GPU

With ACTGEN_STATIC_LAUNCH=1 the launches (and the fresh processes' first calls) go through
torch's launcher for Triton's cubins (actgen.runtime.static_launch) where this torch has it.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import subprocess
import sys
import tempfile
import time

_FIRST_CALL = """\
import cProfile, io, pstats, sys, time
t0 = time.perf_counter()
import torch
t1 = time.perf_counter()
import actgen.ops as ops
t2 = time.perf_counter()
x = torch.randn(1 << 20, device="cuda", requires_grad=True)
g = torch.randn(1 << 20, device="cuda")
torch.cuda.synchronize()
fn = getattr(ops, sys.argv[1])
w = torch.ones(8, device="cuda", requires_grad=True)
tw = time.perf_counter()
torch.autograd.grad(w * 2, [w], torch.ones_like(w))     # torch's own first backward (its lazy imports)
torch.cuda.synchronize()
tw = time.perf_counter() - tw
prof = cProfile.Profile()
t3 = time.perf_counter()
prof.enable()
y = fn(x)
torch.autograd.grad(y, [x], g)
torch.cuda.synchronize()
prof.disable()
t4 = time.perf_counter()
s = io.StringIO()
pstats.Stats(prof, stream=s).sort_stats("cumulative").print_stats(45)
from actgen.runtime import compiler_key
print(f"FIRST_CALL import torch {t1 - t0:.3f}s, import actgen.ops {t2 - t1:.3f}s, torch's first backward {tw:.3f}s, "
      f"the op's first fwd+bwd {t4 - t3:.3f}s; Triton's hash of itself taken early: "
      f"{'yes' if compiler_key._THREAD is not None else 'no'}")
print(s.getvalue())
"""


def per_call(fn, iters=400, repeat=5) -> float:
    """Best mean seconds per call over `repeat` loops of `iters` calls, not synchronised."""
    import torch

    for _ in range(20):
        fn()
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        for _ in range(iters):
            fn()
        best = min(best, (time.perf_counter() - t) / iters)
        torch.cuda.synchronize()
    return best


def _silu_gate(t):
    """F.silu(a) * b of t's halves along its last dim, as plain torch."""
    import torch.nn.functional as F

    a, b = t.chunk(2, -1)
    return F.silu(a) * b


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--op", default="silu")
    p.add_argument("--out")
    args = p.parse_args(argv)
    import importlib

    import torch
    import torch.nn.functional as F

    import actgen.ops as ops
    from actgen.runtime import launch
    from actgen.runtime.triton_lang import FP_FUSION, tl
    from actgen.runtime.tuning import TUNER

    mod = importlib.import_module(f"actgen.ops.{args.op}")
    fn = getattr(ops, args.op)
    builtin = getattr(F, args.op, None)
    lines = [f"device {torch.cuda.get_device_name()}, torch {torch.__version__}, "
             f"triton {__import__('triton').__version__}, python {sys.version.split()[0]}"]
    rows = {}
    direct = launch.LAUNCH.enabled
    plans = launch.PLANS
    lines.append(f"direct launches of compiled variants (actgen.runtime.variants): {'on' if direct else 'off'}")
    for n in (4096, 1 << 26):
        x = torch.randn(n, device="cuda")
        xg = x.clone().requires_grad_()
        g = torch.randn(n, device="cuda")
        out = torch.empty_like(x)
        lay = launch.layout((n,), 0, 1, launch.TILE)
        k = mod._forward_kernel

        def raw_launch():
            k[lay.grid](x, out, lay.M, lay.N, lay.C, BLOCK_M=lay.block_m, BLOCK_N=lay.block_n, CH_AXIS=0,
                        ACC=tl.float32, FAST=False, num_warps=4, **FP_FUSION)

        consts = (lay.block_m, lay.block_n, 0, tl.float32, False)

        def jit(f):
            """f with every launch through Triton's JIT (actgen's direct launches off)."""
            def run():
                launch.LAUNCH.enabled = False
                try:
                    return f()
                finally:
                    launch.LAUNCH.enabled = direct
            return run

        def unplanned(f):
            """f with launch plans off (launch.PLANS; none kept)."""
            def run():
                launch.PLANS = False
                launch.TUNER.plans.clear()
                try:
                    return f()
                finally:
                    launch.PLANS = plans
            return run

        cases = {
            "triton launch alone (kernel[grid](...))": raw_launch,
            "direct launch alone (actgen LAUNCH)": lambda: launch.LAUNCH(k, lay.grid, (x, out, lay.M, lay.N, lay.C),
                                                                         consts, 4),
            "torch.empty_like": lambda: torch.empty_like(x),
            "TUNER.choose (no launch)": lambda: TUNER.choose(k, x, "flat", lambda cfg: None),
            "launch.forward": lambda: launch.forward(k, [x], [], (), (), 0, 1),
            "launch.forward, JIT launch": jit(lambda: launch.forward(k, [x], [], (), (), 0, 1)),
            "actgen fwd, no grad": lambda: fn(x),
            "actgen fwd, no grad, JIT launch": jit(lambda: fn(x)),
            "actgen fwd, no grad, no launch plans": unplanned(lambda: fn(x)),
            "actgen fwd, requires grad": lambda: fn(xg),
            "actgen fwd+bwd": lambda: torch.autograd.grad(fn(xg), [xg], g),
            "actgen fwd+bwd, JIT launches": jit(lambda: torch.autograd.grad(fn(xg), [xg], g)),
            "actgen fwd+bwd, no launch plans": unplanned(lambda: torch.autograd.grad(fn(xg), [xg], g)),
        }
        if builtin is not None:
            cases["F." + args.op + " fwd"] = lambda: builtin(x)
            cases["F." + args.op + " fwd+bwd"] = lambda: torch.autograd.grad(builtin(xg), [xg], g)
        # a gated op on the halves of one tensor (rows apart: planned too), n outputs
        xh = torch.randn(n // 512, 1024, device="cuda", requires_grad=True)
        gh = torch.randn(n // 512, 512, device="cuda")
        cases["swiglu(x) fwd+bwd, x's halves"] = lambda: torch.autograd.grad(ops.swiglu(xh), [xh], gh)
        cases["swiglu(x) fwd+bwd, x's halves, no plans"] = unplanned(
            lambda: torch.autograd.grad(ops.swiglu(xh), [xh], gh))
        cases["F.silu(a) * b fwd+bwd, x's halves"] = lambda: torch.autograd.grad(_silu_gate(xh), [xh], gh)
        with torch.no_grad():
            pass
        for name, f in cases.items():
            if n > 4096 and name.startswith(("torch.empty", "TUNER", "direct launch alone")):
                continue
            iters = 400 if n == 4096 else 30
            try:
                t = per_call(f, iters=iters, repeat=5 if n == 4096 else 3)
                rows[f"{name} @ {n}"] = t
                lines.append(f"{name:<45} n={n:<9} {t * 1e6:9.1f} us per call (host, not synchronised)")
            except Exception as exc:  # noqa: BLE001
                lines.append(f"{name:<45} n={n:<9} error {type(exc).__name__}: {exc}"[:300])
    lines.append("launches through torch's launcher for Triton's cubins (ACTGEN_STATIC_LAUNCH=1): "
                 + ("on" if launch.LAUNCH.static else "off"))
    # a profile of many fwd+bwd calls at 4096 elements
    x = torch.randn(4096, device="cuda", requires_grad=True)
    g = torch.randn(4096, device="cuda")
    for _ in range(50):
        torch.autograd.grad(fn(x), [x], g)
    torch.cuda.synchronize()
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(500):
        torch.autograd.grad(fn(x), [x], g)
    prof.disable()
    torch.cuda.synchronize()
    s = io.StringIO()
    pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(40)
    lines += ["", "== cProfile, 500 fwd+bwd calls at 4096 elements, by own time", s.getvalue()]
    # first calls in fresh processes: cold (empty caches), warm (Triton's cache and actgen's
    # variant store filled by the cold run), and warm with the variant store off (Triton's JIT)
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "TRITON_CACHE_DIR": os.path.join(tmp, "triton"), "ACTGEN_CACHE_DIR": os.path.join(tmp, "a")}
        env.pop("TRITON_INTERPRET", None)
        for label, extra in (("cold caches", {}), ("warm caches", {}),
                             ("warm Triton cache, variant store off", {"ACTGEN_VARIANT_STORE": "0"})):
            proc = subprocess.run([sys.executable, "-c", _FIRST_CALL, args.op], env={**env, **extra},
                                  capture_output=True, text=True, timeout=300)
            text = proc.stdout if proc.returncode == 0 else proc.stdout + proc.stderr[-3000:]
            lines += ["", f"== first call in a fresh process, {label}", text]
    report = "\n".join(lines)
    print(report)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(report)
        with open(os.path.splitext(args.out)[0] + ".json", "w") as fh:
            json.dump(rows, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
