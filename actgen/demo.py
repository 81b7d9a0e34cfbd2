"""`actgen demo`: a formula in, its derivatives out, and the generated op checked.

Two formulas go through the whole pipeline (spec -> sympy -> derivatives and rewrites ->
printers -> generated module -> runtime), and each generated op is compared with an
independent reference - torch's own kernel, or the formula written as plain torch ops and
differentiated by torch's autograd - on the eager fallback (float64) and on the Triton
kernels (on a CPU they run under Triton's interpreter), then gradcheck'ed.
Exit status 1 if any check fails.
"""
from __future__ import annotations

import os
import sys

DEMOS = [
    # (name, formula as a user writes it, params, reference description)
    ("long_mish", "x * tanh(log(1 + exp(x)))", None, "torch.nn.functional.mish"),
    ("swish_beta", "x * sigmoid(beta * x)", {"beta": {"init": 1.0, "per_channel": True}},
     "x * torch.sigmoid(beta * x) with autograd"),
]


def _prepare_interpreter() -> None:
    """On a machine without CUDA, run the Triton kernels under Triton's interpreter."""
    import torch

    if not torch.cuda.is_available() and "triton" not in sys.modules:
        os.environ.setdefault("TRITON_INTERPRET", "1")


def _references():
    import torch
    import torch.nn.functional as F

    return {
        "long_mish": lambda x: F.mish(x),
        "swish_beta": lambda x, beta: x * torch.sigmoid(beta.view(-1, *([1] * (x.dim() - 2))) * x),
    }


def _check(mod, name, ref, backend, dtype, params) -> tuple[float, float, float]:
    """Largest relative error of f, df/dx and df/dparams against the reference."""
    import torch

    from .runtime import use_backend

    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 257, generator=g, dtype=torch.float64) * 6
    x.view(-1)[:6] = torch.tensor([0.0, -30.0, 30.0, -100.0, 100.0, 1e-4], dtype=torch.float64)
    ps = [torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64) for _ in params]
    xa = x.to(dtype).requires_grad_()
    pa = [p.to(dtype).requires_grad_() for p in ps]
    # one torch thread: torch's CPU exp, split across threads at 2048 elements, computes the
    # second thread's share to about 1e-9 relative in float64 in some processes on some MKL
    # builds (2-vCPU Xeon VMs with torch 2.13's CPU wheel), which is torch's error, not the op's
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with use_backend(backend):
            y = getattr(mod, name)(xa, *pa)
            y.backward(torch.ones_like(y))
        xr = xa.detach().double().requires_grad_()
        pr = [p.detach().double().requires_grad_() for p in pa]
        yr = ref(xr, *pr)
        yr.backward(torch.ones_like(yr))
    finally:
        torch.set_num_threads(threads)

    def rel(a, b):
        return ((a.double() - b).abs() / b.abs().clamp_min(1.0)).max().item()

    return (rel(y.detach(), yr.detach()), rel(xa.grad, xr.grad),
            max([rel(p.grad, q.grad) for p, q in zip(pa, pr)], default=0.0))


def main() -> int:
    _prepare_interpreter()
    import torch

    import actgen

    from .codegen.module import _math_lines
    from .compiler import _spec_mapping
    from .derive import derive
    from .runtime import HAS_TRITON
    from .spec import load_spec

    import yaml

    refs = _references()
    failed = 0
    print("actgen: write a formula, get a fused op\n")
    for name, formula, params, ref_name in DEMOS:
        mapping = _spec_mapping(formula, name, params, None, None, "", None)
        spec = load_spec(yaml.safe_dump(mapping, sort_keys=False), f"<{name}>")
        print(f"formula   {name}: {formula}" + (f"   (learnable per-channel {', '.join(params)})" if params else ""))
        for line in _math_lines(derive(spec)):
            print(f"  {line}")
        mod = actgen.compile(formula, name=name, params=params)
        n_lines = len(open(mod.__file__).read().splitlines())
        print(f"generated {mod.__file__} ({n_lines} lines: Triton forward and backward kernels, "
              f"eager fallback, {mod.__name__.rsplit('.', 1)[-1]}(), {spec.class_name}, {spec.class_name}Function)")
        runs = [("torch", torch.float64, "eager fallback, float64", 1e-12)]
        if HAS_TRITON:
            where = "GPU" if torch.cuda.is_available() else "CPU, Triton interpreter"
            runs.append(("triton", torch.float32, f"Triton kernels ({where}), float32", 1e-5))
        print(f"checked against {ref_name}:")
        for backend, dtype, label, tol in runs:
            errs = _check(mod, name, refs[name], backend, dtype, list(params or ()))
            ok = max(errs) <= tol
            failed += not ok
            parts = [f"f {errs[0]:.1e}", f"df/dx {errs[1]:.1e}"] + ([f"df/dparams {errs[2]:.1e}"] if params else [])
            print(f"  {label:<48} max rel. error: {', '.join(parts)}  {'OK' if ok else 'FAIL'} (tol {tol:g})")
        x = torch.randn(2, 3, 5, dtype=torch.float64, requires_grad=True)
        args = [x] + [torch.rand(3, dtype=torch.float64, requires_grad=True) for _ in (params or ())]
        fn = getattr(mod, name)
        ok = torch.autograd.gradcheck(fn, args) and torch.autograd.gradgradcheck(fn, args)
        failed += not ok
        print(f"  {'gradcheck + gradgradcheck, float64':<48} {'OK' if ok else 'FAIL'}\n")
    import actgen.ops as ops

    print(f"built-in library: {len(ops.__all__) // 3} activations in actgen.ops "
          "(`actgen list`, docs/catalogue.md); `from actgen.ops import mish, Mish`")
    print("all checks passed" if not failed else f"{failed} check(s) FAILED")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
