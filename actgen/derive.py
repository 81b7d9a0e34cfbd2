"""Derivatives, stability rewrites, guards and CSE: a Spec -> a small kernel IR (`Derivation`).

Everything here is pure sympy; printers turn the IR into Triton or torch source.

* Stability rewrites (`REWRITES`, applied bottom-up, in order) turn write-outs into the
  stable primitives: log(1 + exp(u)) -> softplus(u), 1/(1 + exp(-u)) -> sigmoid(u),
  log(1 + u) -> log1p(u), exp(u) - 1 -> expm1(u).
* Derivatives are taken symbolically for every input and param (first order for the
  backward kernel, second order for double backward).  The derivative of a Piecewise is the
  Piecewise of the derivatives under the same conditions; DiracDelta (from sign and
  Heaviside) is 0 and sign(0) is 0, so abs'(0) = 0 and Max(x, 0)' at 0 is 0.
* Guards: a value containing a Piecewise gives NaN when an input is NaN (comparisons are
  false on NaN, which would otherwise pick a branch); a single-input function whose limit
  at +-inf exists (and does not depend on params or constants) returns that limit there.
* CSE: shared subexpressions become named temporaries `_t0, _t1, ...`, numbered in a
  stable order; values used once stay inline.
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations_with_replacement
from typing import Callable, Sequence

import mpmath
import sympy

from .functions import expm1, log1p, sigmoid, softplus
from .spec import Spec


class NanGuard(sympy.Function):
    """NanGuard(value, u1, u2, ...): NaN if any u is NaN, else value (printers expand it)."""


class InfGuard(sympy.Function):
    """InfGuard(value, u, at_minus_inf, at_plus_inf): value, or the given limit at u = -inf/+inf.
    A limit of NaN means "no guard on that side"."""


# --- stability rewrites --------------------------------------------------------------
def _exp_arg(e):
    return e.args[0] if isinstance(e, sympy.exp) else None


def _one_plus(e):
    """If e == 1 + rest, return rest."""
    if isinstance(e, sympy.Add) and sympy.S.One in e.args:
        return sympy.Add(*[a for a in e.args if a is not sympy.S.One])
    return None


def rewrite_softplus(e):
    if isinstance(e, sympy.log):
        rest = _one_plus(e.args[0])
        if rest is not None and _exp_arg(rest) is not None:
            return softplus(_exp_arg(rest))
    return None


def rewrite_sigmoid(e):
    if isinstance(e, sympy.Pow) and e.exp is sympy.S.NegativeOne:
        rest = _one_plus(e.base)
        if rest is not None and _exp_arg(rest) is not None:
            return sigmoid(-_exp_arg(rest))
    return None


def rewrite_log1p(e):
    if isinstance(e, sympy.log):
        rest = _one_plus(e.args[0])
        if rest is not None:
            return log1p(rest)
    return None


def rewrite_expm1(e):
    if isinstance(e, sympy.Add) and sympy.S.NegativeOne in e.args:
        exps = [a for a in e.args if isinstance(a, sympy.exp)]
        if exps:
            first = exps[0]
            rest = list(e.args)
            rest.remove(sympy.S.NegativeOne)
            rest.remove(first)
            return expm1(first.args[0]) + sympy.Add(*rest)
    return None


REWRITES: Sequence[Callable[[sympy.Basic], sympy.Basic | None]] = (
    rewrite_softplus,
    rewrite_sigmoid,
    rewrite_log1p,
    rewrite_expm1,
)


def stabilize(expr: sympy.Basic) -> sympy.Basic:
    """Apply REWRITES bottom-up until nothing changes at each node."""
    if not expr.args or isinstance(expr, (sympy.Symbol, sympy.Number)):
        return expr
    args = tuple(stabilize(a) for a in expr.args)
    if args != expr.args:
        expr = expr.func(*args)
    changed = True
    while changed:
        changed = False
        for rule in REWRITES:
            new = rule(expr)
            if new is not None and new != expr:
                expr = stabilize(new)
                changed = True
                break
    return expr


def _clean(expr: sympy.Basic) -> sympy.Basic:
    """DiracDelta -> 0, sign/Heaviside -> Piecewise with value 0 at 0."""
    expr = expr.replace(sympy.DiracDelta, lambda *a: sympy.S.Zero)
    expr = expr.replace(
        sympy.sign, lambda u: sympy.Piecewise((1, u > 0), (-1, u < 0), (0, True))
    )
    expr = expr.replace(
        sympy.Heaviside, lambda u, *h: sympy.Piecewise((1, u > 0), (0, True))
    )
    return expr


def differentiate(expr: sympy.Expr, var: sympy.Symbol) -> sympy.Expr:
    return stabilize(_clean(sympy.diff(expr, var)))


# --- limits at +-inf -----------------------------------------------------------------
_PROBES = (sympy.Integer(10) ** 30, sympy.Integer(10) ** 60)


def _numeric_limit(expr: sympy.Expr, x: sympy.Symbol, sign: int):
    """The limit of expr as x -> sign*inf when it can be read off at two huge points, else None.

    Only for expressions of x alone (a limit that depends on params or constants would be
    wrong for some of their values).  Returns a float (possibly +-inf)."""
    values = []
    for probe in _PROBES:
        try:
            v = sympy.N(expr.subs(x, sign * probe), 40)
        except Exception:  # noqa: BLE001 - any failure to evaluate just means "no guard"
            return None
        if not v.is_number or v.has(sympy.nan, sympy.zoo) or not v.is_real:
            return None
        values.append(mpmath.mpf(sympy.Float(v, 40)._mpf_) if v.is_finite else None)
    if values[0] is None or values[1] is None:
        return None
    a, b = values
    if abs(a) > 1e30 and abs(b) > abs(a) * 10 and mpmath.sign(a) == mpmath.sign(b):
        return float(mpmath.sign(b)) * float("inf")
    if abs(a - b) <= mpmath.mpf(10) ** -25 * max(1, abs(b)):
        return 0.0 if abs(b) < 1e-30 else float(b)
    return None


def _naive_value_at(expr: sympy.Expr, x: sympy.Symbol, at) -> float | None:
    """What IEEE arithmetic roughly gives at x = +-inf (sympy's oo arithmetic: oo*0 = nan...)."""
    try:
        v = expr.subs(x, at)
        return float(v) if v.is_number and v.is_extended_real else None
    except (TypeError, ValueError):
        return None


def limit_guard(expr: sympy.Expr, x: sympy.Symbol) -> sympy.Expr:
    """Wrap expr so it returns its limit at x = +-inf where plain arithmetic would not."""
    if expr.free_symbols != {x}:
        return expr
    lo = _numeric_limit(expr, x, -1)
    hi = _numeric_limit(expr, x, +1)
    if lo is not None and _naive_value_at(expr, x, -sympy.oo) == lo:
        lo = None
    if hi is not None and _naive_value_at(expr, x, sympy.oo) == hi:
        hi = None
    if lo is None and hi is None:
        return expr
    as_expr = lambda v: sympy.nan if v is None else sympy.Float(v) if abs(v) != float("inf") else (sympy.oo if v > 0 else -sympy.oo)
    return InfGuard(expr, x, as_expr(lo), as_expr(hi))


def nan_guard(expr: sympy.Expr, inputs: Sequence[sympy.Symbol]) -> sympy.Expr:
    if expr.has(sympy.Piecewise):
        used = [u for u in inputs if u in expr.free_symbols] or list(inputs)
        return NanGuard(expr, *used)
    return expr


# --- CSE -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Block:
    """Straight-line code: named temporaries, then named outputs."""

    assignments: tuple[tuple[sympy.Symbol, sympy.Expr], ...]
    outputs: tuple[tuple[str, sympy.Expr], ...]


def make_block(outputs: Sequence[tuple[str, sympy.Expr]]) -> Block:
    names = [n for n, _ in outputs]
    exprs = [e for _, e in outputs]
    temps = sympy.numbered_symbols("_t", real=True)
    assignments, reduced = sympy.cse(exprs, symbols=temps, optimizations=None, order="canonical")
    return Block(tuple(assignments), tuple(zip(names, reduced)))


# --- the IR --------------------------------------------------------------------------
@dataclass(frozen=True)
class Derivation:
    spec: Spec
    inputs: tuple[sympy.Symbol, ...]
    params: tuple[sympy.Symbol, ...]
    constants: tuple[sympy.Symbol, ...]
    expr: sympy.Expr                              # after stability rewrites
    first: tuple[tuple[str, sympy.Expr], ...]     # (var name, df/dvar), inputs then params
    second: tuple[tuple[tuple[str, str], sympy.Expr], ...]  # upper triangle, var order
    forward: Block                                # outputs: y
    backward: Block                               # outputs: d_<var> for every input and param
    double_backward: Block                        # outputs: d_<var>, then d2_<a>_<b>

    @property
    def variables(self) -> tuple[sympy.Symbol, ...]:
        return self.inputs + self.params


def derive(spec: Spec) -> Derivation:
    sym = spec.symbols
    inputs = tuple(sym[n] for n in spec.inputs)
    params = tuple(sym[p.name] for p in spec.params)
    constants = tuple(sym[c.name] for c in spec.constants)
    variables = inputs + params

    expr = stabilize(_clean(spec.expr))
    first = tuple((v.name, differentiate(expr, v)) for v in variables)
    d = dict(first)
    second = tuple(
        ((a.name, b.name), differentiate(d[a.name], b))
        for a, b in combinations_with_replacement(variables, 2)
    )

    def guarded(e, single_input_limit=True):
        if len(inputs) == 1 and single_input_limit:
            e = limit_guard(e, inputs[0])
        return nan_guard(e, inputs)

    forward = make_block([("y", guarded(expr))])
    backward = make_block(
        [(f"d_{n}", guarded(e, single_input_limit=(n in spec.inputs))) for n, e in first]
    )
    double_backward = make_block(
        [(f"d_{n}", nan_guard(e, inputs)) for n, e in first]
        + [(f"d2_{a}_{b}", nan_guard(e, inputs)) for (a, b), e in second]
    )
    return Derivation(spec, inputs, params, constants, expr, first, second, forward, backward, double_backward)
