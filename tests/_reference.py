"""Independent references for the tests: a spec's formula as plain torch ops, with autograd.

`formula_as_torch` walks the sympy expression the formula parses to - before any of
actgen's stability rewrites - and applies the matching torch op to each node, the way a
user would write the formula by hand in torch.  It shares nothing with actgen's printers,
rewrites or derivatives: the gradients come from torch's autograd.  A random draw
uniform(lo, hi) is evaluated as in evaluation mode, at its mean (lo + hi)/2.
"""
from __future__ import annotations

from pathlib import Path

import sympy
import torch

from actgen.functions import erfc, sigmoid, softplus, uniform
from actgen.spec import load_specs

ROOT = Path(__file__).resolve().parents[1]
SPECS = {s.name: s for s in load_specs([ROOT / "specs"])}

_UNARY = {
    sympy.exp: torch.exp, sympy.log: torch.log, sympy.sin: torch.sin, sympy.cos: torch.cos,
    sympy.tan: torch.tan, sympy.tanh: torch.tanh, sympy.sinh: torch.sinh, sympy.cosh: torch.cosh,
    sympy.atan: torch.atan, sympy.asinh: torch.asinh, sympy.erf: torch.erf, sympy.erfc: torch.erfc, erfc: torch.erfc,
    sympy.Abs: torch.abs, sympy.sign: torch.sign,
    sigmoid: torch.sigmoid, softplus: lambda u: torch.logaddexp(u, torch.zeros_like(u)),
}
_COMPARE = {
    sympy.StrictGreaterThan: torch.gt, sympy.GreaterThan: torch.ge,
    sympy.StrictLessThan: torch.lt, sympy.LessThan: torch.le,
}


def _tensor(v, like):
    return v if isinstance(v, torch.Tensor) else torch.full_like(like, float(v))


def formula_as_torch(expr: sympy.Expr, env: dict[str, torch.Tensor], like: torch.Tensor):
    """Evaluate expr with torch ops; env maps symbol names to tensors (broadcastable)."""

    def ev(e):
        if e.is_Symbol:
            return env[e.name]
        if e is sympy.true or e is sympy.false:
            return torch.full_like(like, e is sympy.true, dtype=torch.bool)
        if e.is_Number or e.is_NumberSymbol:
            return float(e)
        f = e.func
        if f in _UNARY:
            return _UNARY[f](_tensor(ev(e.args[0]), like))
        if f.__name__ in ("log1p", "expm1"):
            return getattr(torch, f.__name__)(_tensor(ev(e.args[0]), like))
        if f is sympy.Add:
            out = 0
            for a in e.args:
                out = out + ev(a)
            return out
        if f is sympy.Mul:
            out = 1
            for a in e.args:
                out = out * ev(a)
            return out
        if f is sympy.Pow:
            base, exp = ev(e.args[0]), e.args[1]
            if exp == sympy.Rational(1, 2):
                return torch.sqrt(_tensor(base, like))
            if exp.is_Integer and int(exp) < 0:
                return 1 / base ** (-int(exp))
            return base ** (int(exp) if exp.is_Integer else ev(exp))
        if f is uniform:
            return (ev(e.args[0]) + ev(e.args[1])) / 2
        if f is sympy.Heaviside:
            u = _tensor(ev(e.args[0]), like)
            return torch.heaviside(u, torch.zeros_like(u))
        if f in (sympy.Max, sympy.Min):
            args = [_tensor(ev(a), like) for a in e.args]
            out = args[0]
            for a in args[1:]:
                out = torch.where(a > out, a, out) if f is sympy.Max else torch.where(a < out, a, out)
            return out
        if f in _COMPARE:
            return _COMPARE[f](_tensor(ev(e.args[0]), like), _tensor(ev(e.args[1]), like))
        if f is sympy.And:
            out = ev(e.args[0])
            for a in e.args[1:]:
                out = out & ev(a)
            return out
        if f is sympy.Or:
            out = ev(e.args[0])
            for a in e.args[1:]:
                out = out | ev(a)
            return out
        if f is sympy.Not:
            return ~ev(e.args[0])
        if f is sympy.ITE:                  # if c then a else b, of conditions
            c, a, b = (_tensor(ev(t), like).bool() for t in e.args)
            return torch.where(c, a, b)
        if f is sympy.Piecewise:
            out = None
            for value, cond in reversed(e.args):
                v = _tensor(ev(value), like)
                out = v if out is None else torch.where(ev(cond), v, out)
            return out
        raise NotImplementedError(f"no torch reference for {f}")

    return _tensor(ev(expr), like)


def reference_call(spec, inputs, params, constants, channel_dim=1):
    """The spec's formula in plain torch on these inputs, params (shape (1,) or (C,)) and constants."""
    x = inputs[0]
    env = dict(zip(spec.inputs, inputs))
    for p, t in zip(spec.params, params):
        if t.numel() == 1:
            env[p.name] = t.reshape(())
        else:
            env[p.name] = t.reshape((-1,) + (1,) * (x.dim() - 1 - channel_dim % x.dim()))
    for c in spec.constants:
        env[c.name] = torch.tensor(float(constants.get(c.name, c.default)), dtype=x.dtype)
    return formula_as_torch(spec.expr, env, x)
