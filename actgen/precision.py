"""The precision check: how far float32 arithmetic takes an output's compiled form from its
value, measured, and whether that output is computed in float64 instead.

The rewrites (actgen.derive) remove the losses they recognise.  What is left - terms of
opposite sign whose rounding errors meet where a derivative turns (x*tanh(exp(x))'s
tanh(e) + x e sech(e)**2 at x = -1.75) - is found the way Herbie finds it: the compiled
form is evaluated in float32 and in float64 over a grid of inputs, and the error of the
float32 result, in ULPs divided by the output's condition number (what rounding its data
costs any evaluation), is measured at every point.  Where the mean over its WORST_POINTS
worst points is above ACCURACY_ULP - an error beyond the target across an interval, not
one unlucky rounding - the block is computed in float64: for every input dtype on the eager
fallback, and on the kernels for float32 data (16-bit data stays in float32 there: a
float32 error of a few ULP is 2**16 times below a bfloat16 ULP; see
actgen.runtime.Activation.kernel_wide).

The evaluation walks the sympy tree with numpy arrays: no code is generated or run for it.
Float64 is the reference for float32 rounding: each of its operations rounds to 2**-29 of
a float32 ULP, so even where the terms cancel tenfold its error stays far below the ULPs
measured. A float32 function (exp, log1p, tanh...; not sqrt or hypot, which round to the
nearest wherever they are computed) stands in for the kernels' and torch's as the farthest
a faithful one can be: its value in float64, rounded to the float32 neighbour on the other
side from the nearest (an error between 0.5 and 1 ULP; torch's exp is off by up to 0.55
ULP, the kernels' by 0.92; docs/accuracy.md measures the ops themselves, against mpmath).
Numpy's own float32 functions would not do: their results change with the CPU's vector
extensions (another point, another worst error), and the compiler's choices and the
generated modules must not.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import sympy
from sympy.codegen.cfunctions import hypot

from .functions import erfcx, erfcx_float, expm1, log1p, sigmoid, softplus

#: Above this measured error (ULPs / condition number in float32, the mean over the
#: WORST_POINTS worst points of the grid) a block is computed in float64.  docs/accuracy.md
#: holds every op to 4 at its worst point; in the catalogue, forms whose errors only add up
#: to that at a point or two (a dozen roundings) measure 3.3 at most here (geglu_tanh's
#: gradient for b), the ones whose terms cancel over an interval 4.3 and more.
ACCURACY_ULP = 3.5
WORST_POINTS = 20

#: Where the truth is below this in magnitude, float32 evaluation may pass through
#: subnormal intermediates: not scored (as in docs/accuracy.md).
UNDERFLOW = 2.0 ** -102


def _fma(a: np.ndarray, b: np.ndarray, c: np.ndarray, sign: float) -> np.ndarray:
    """c + sign*a*b rounded once: exact in float64 for float32 operands (a product of two
    24-bit significands fits in 53 bits), then rounded to float32."""
    if a.dtype != np.float32:
        return c + sign * a * b
    return (c.astype(np.float64) + sign * (a.astype(np.float64) * b.astype(np.float64))).astype(np.float32)


def float32(v: float) -> float:
    """v rounded to float32."""
    return float(np.float32(v))


def grid() -> np.ndarray:
    """The inputs (float32 values): every multiple of 1/64 in [-20, 20] and 160 log-spaced
    magnitudes from 20 to 1e30 on either side."""
    near = np.arange(-20 * 64, 20 * 64 + 1) / 64.0
    far = np.logspace(math.log10(20), 30, 160)
    return np.unique(np.concatenate([near, far, -far]).astype(np.float32))


#: The other input of a gated pair, in turn.
GATE_VALUES = (-2.5, -1.0, 0.5, 1.5, 3.0)


def _faithful(fn):
    """A numpy function as float32 takes it here (the module doc): in float64, then the
    float32 neighbour on the other side of the value from the nearest (the nearest where
    the float64 value is a float32 - exact, or closer to one than float64 tells, as tanh(x)
    past 19 - or not finite); float64 arguments as numpy takes them."""
    def apply(*args):
        if args[0].dtype != np.float32:
            return fn(*args)
        value = fn(*(a.astype(np.float64) for a in args))
        near = value.astype(np.float32)
        wide = near.astype(np.float64)
        other = np.nextafter(near, np.where(wide > value, np.float32(-np.inf), np.float32(np.inf)))
        return np.where((wide == value) | ~np.isfinite(wide) | ~np.isfinite(value), near, other)
    return apply


_exp, _log1p, _power = _faithful(np.exp), _faithful(np.log1p), _faithful(np.power)


def _sigmoid(u):
    e = _exp(-np.abs(u))
    return np.where(u >= 0, 1 / (1 + e), e / (1 + e)).astype(u.dtype)


def _softplus(u):
    return (np.maximum(u, 0) + _log1p(_exp(-np.abs(u)))).astype(u.dtype)


def _rounded(fn):
    """A function numpy lacks, taken in float64 and rounded to the argument's dtype."""
    vec = np.vectorize(fn, otypes=[np.float64])

    def apply(u):
        return vec(u.astype(np.float64)).astype(u.dtype)
    return apply


def _scale_shift(u):
    _, e = np.frexp(u)
    return np.maximum(e, 0)


FUNCTIONS: dict = {
    sympy.exp: _exp, sympy.log: _faithful(np.log), log1p: _log1p, expm1: _faithful(np.expm1),
    sympy.sin: _faithful(np.sin), sympy.cos: _faithful(np.cos), sympy.tan: _faithful(np.tan),
    sympy.tanh: _faithful(np.tanh), sympy.sinh: _faithful(np.sinh), sympy.cosh: _faithful(np.cosh),
    sympy.atan: _faithful(np.arctan), sympy.asinh: _faithful(np.arcsinh),
    sympy.erf: _rounded(math.erf), sympy.erfc: _rounded(math.erfc), erfcx: _rounded(erfcx_float), sympy.Abs: np.abs,
    sympy.sign: np.sign, sigmoid: _sigmoid, softplus: _softplus,
}


class Unknown(Exception):
    """A part of an expression this evaluator does not know."""


def _number(e: sympy.Expr, dtype):
    """A number in dtype: NaN for one that is not real (zoo, nan, a complex constant: the
    value of a branch that is never taken, or NaN in the generated code too)."""
    try:
        return dtype(float(e))
    except (TypeError, ValueError):
        return dtype(np.nan)


def evaluate(expr: sympy.Expr, env: Mapping[sympy.Symbol, np.ndarray], dtype, tensors=None) -> np.ndarray:
    """expr at the points env gives (arrays of dtype), every operation rounded to dtype.
    Guards against NaN and inf inputs are left out: the points are finite.  With tensors (the
    symbols that are tensors in the generated code), sums round as the eager fallback and the
    kernels compute them: a product of two tensors and the other terms in one fused
    multiply-add (fma_split)."""
    from .derive import CappedExp, InfGuard, InverseScale, LimitAtInf, NanGuard, Saturate, ScaledInput, SqrtSquarePlus
    from .printers.base import ExprPrinter, fma_split, product_chain

    is_tensor = lambda f: bool(f.free_symbols & tensors)

    one = np.ones_like(next(iter(env.values())), dtype=dtype)
    cache: dict = {}

    def ev(e):
        if e not in cache:
            cache[e] = _ev(e)
        return cache[e]

    def _ev(e):
        if e.is_Symbol:
            return np.asarray(env[e], dtype=dtype) * one
        if e.is_Number or e.is_NumberSymbol:
            return _number(e, dtype) * one
        f, args = type(e), e.args
        split = fma_split(e, is_tensor) if tensors is not None and isinstance(e, sympy.Add) else None
        if split is not None:
            a, b, rest, negative = split
            return _fma(ev(a), ev(b), ev(rest), -1.0 if negative else 1.0)
        if isinstance(e, sympy.Add):        # StableSum too; in the printers' order
            terms = e.as_ordered_terms()
            out = ev(terms[0])
            for a in terms[1:]:
                out = out + ev(a)
            return out
        if e.is_number:                     # printed as one number
            return _number(e, dtype) * one
        if f is sympy.Mul:                  # as the printed product evaluates, left to right
            if e.as_coeff_Mul()[0].is_negative:
                return -ev(-e)
            out = None
            for op, factor in product_chain(e):
                v = ev(factor)
                out = v if out is None else (out * v if op == "*" else out / v)
            return out
        if f is sympy.Pow:
            base, exp = args
            if exp.is_number and exp < 0:
                return dtype(1) / ev(base ** -exp)
            if exp == sympy.S.Half:
                return np.sqrt(ev(base))
            if exp.is_Integer and int(exp) <= ExprPrinter.MAX_PRODUCT_POWER and base.is_Symbol:
                b = ev(base)
                p = b
                for _ in range(int(exp) - 1):
                    p = p * b
                return p
            return _power(ev(base), ev(exp))
        if isinstance(e, sympy.Piecewise):
            out = np.full_like(one, np.nan)
            for value, cond in reversed(args):
                out = np.where(ev(cond) * np.ones_like(one, dtype=bool), ev(value), out)
            return out
        if isinstance(e, sympy.core.relational.Relational):
            a, b = ev(args[0]), ev(args[1])
            return {"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[e.rel_op]
        if f is sympy.And:
            return np.logical_and.reduce([ev(a) for a in args])
        if f is sympy.Or:
            return np.logical_or.reduce([ev(a) for a in args])
        if f is sympy.Not:
            return ~ev(args[0])
        if e is sympy.true or e is sympy.false:
            return np.full(one.shape, bool(e))
        if f in (NanGuard, InfGuard, LimitAtInf):
            return ev(args[0])
        if f is Saturate:
            u, lo, hi = args
            return np.clip(ev(u), float(lo) if lo.is_finite else None, float(hi) if hi.is_finite else None)
        if f is CappedExp:
            u, hi32, hi64 = args
            return _exp(np.minimum(ev(u), dtype(float(hi32 if dtype == np.float32 else hi64))))
        if f is hypot:
            return np.hypot(ev(args[0]), ev(args[1]))
        if f is SqrtSquarePlus:
            u, c = ev(args[0]), ev(args[1])
            a = np.abs(u)
            if a.dtype == np.float32:     # (as the kernels: triton_lang.sqrt_square_plus)
                ca = np.abs(c)
                s = np.where(ca > 1e30, 2.0**-64, np.where(ca < 1e-30, 2.0**64, 1.0)).astype(np.float32)
                v = a * s
                with np.errstate(invalid="ignore", over="ignore"):
                    near = np.sqrt(_fma(v, v, (c * s) * s, 1.0)) * (np.float32(1) / s)
                return np.where(a >= np.sqrt(ca) * np.float32(4096), a, near)
            r = np.sqrt(np.abs(c))
            return np.where(c >= 0, np.hypot(a, r), np.sqrt(a - r) * np.sqrt(a + r))
        if f is ScaledInput:
            u = ev(args[0])
            return np.ldexp(u, -_scale_shift(u)).astype(dtype)
        if f is InverseScale:
            u = ev(args[0])
            return np.ldexp(one, -_scale_shift(u)).astype(dtype)
        fn = next((FUNCTIONS[c] for c in f.__mro__ if c in FUNCTIONS), None)
        if fn is None or len(args) != 1:
            raise Unknown(type(e).__name__)
        return fn(ev(args[0]))

    with np.errstate(all="ignore"):
        return ev(expr)


def evaluate_block(block, env: Mapping[sympy.Symbol, np.ndarray], dtype, tensors=None) -> dict[str, np.ndarray]:
    """The outputs of a Block (actgen.derive) at the points env gives, in dtype: its named
    temporaries in turn, as the generated code computes them (with tensors, the symbols that
    are tensors, with the generated code's fused multiply-adds: see evaluate)."""
    env = dict(env)
    tensors = None if tensors is None else set(tensors)
    for name, value in block.assignments:
        env[name] = evaluate(value, env, dtype, tensors)
        if tensors is not None and value.free_symbols & tensors:
            tensors.add(name)
    return {name: evaluate(value, env, dtype, tensors) for name, value in block.outputs}


def ulps(computed: np.ndarray, truth: np.ndarray, dtype=np.float32) -> np.ndarray:
    """|computed - truth| in ULPs of the truth in dtype."""
    spacing = np.spacing(np.abs(truth).astype(dtype)).astype(np.float64)
    return np.abs(computed.astype(np.float64) - truth) / spacing


#: Between the grid's points: every multiple of DENSE_STEP in [-DENSE_HALF_WIDTH, DENSE_HALF_WIDTH]
#: (where activations bend), here and in docs/accuracy.md (actgen.catalogue.screen_dense).
DENSE_STEP = 2.0 ** -12
DENSE_HALF_WIDTH = 8.0


def dense_points(step: float, half_width: float) -> np.ndarray:
    """Every multiple of step in [-half_width, half_width] (exact in float32 for the steps used)."""
    n = int(round(half_width / step))
    return np.arange(-n, n + 1) * step


def dense_grid() -> np.ndarray:
    """Every multiple of DENSE_STEP in [-DENSE_HALF_WIDTH, DENSE_HALF_WIDTH] (float32 values)."""
    return dense_points(DENSE_STEP, DENSE_HALF_WIDTH).astype(np.float32)


def points(inputs: Sequence[sympy.Symbol], xs: np.ndarray | None = None) -> dict:
    """The grid (or xs) over the first input, the others (a gated pair's second) in turn at
    GATE_VALUES; then over each other input in turn, the rest at GATE_VALUES (a*tanh(softplus(b))
    is b's function: its CPU cap on exp(b) measured at b = 3 alone was 8 for float64, 2e-7 off
    at b = 15)."""
    xs = grid() if xs is None else xs
    if len(inputs) == 1:
        return {inputs[0]: xs}
    gates = np.repeat(np.float32(GATE_VALUES), len(xs))
    swept = np.tile(xs, len(GATE_VALUES))
    cols = {v: [] for v in inputs}
    for k in range(len(inputs)):
        for j, v in enumerate(inputs):
            cols[v].append(swept if j == k else gates)
    return {v: np.concatenate(c) for v, c in cols.items()}


def errors(got: np.ndarray, truth: np.ndarray, cond: np.ndarray, dtype=np.float32,
           not_finite: float = np.inf) -> np.ndarray:
    """The error of results in dtype (float32 unless given) against float64 ones, in ULPs of
    dtype divided by the condition number where that is above 1: `not_finite` (inf unless
    given) where the result is not finite, 0 where the point is not scored (the float64
    value or the condition number not finite, or the value below UNDERFLOW or beyond dtype's
    range)."""
    with np.errstate(all="ignore"):
        scored = np.isfinite(truth) & np.isfinite(cond) & (np.abs(truth) >= UNDERFLOW)
        scored &= np.abs(truth) <= np.finfo(dtype).max
        err = np.where(scored, ulps(got, truth, dtype) / np.maximum(1.0, cond), 0.0)
        return np.where(scored & ~np.isfinite(got), not_finite, err)


def condition(value: np.ndarray, slopes: Sequence[tuple[sympy.Symbol, sympy.Expr]], env64) -> np.ndarray:
    """The condition number of a value: the sum over its data v of |v * slope_v / value|, from
    slopes [(v, d value / dv)] evaluated at env64 (float64)."""
    scale = np.zeros_like(value)
    with np.errstate(all="ignore"):
        for v, slope in slopes:
            scale = scale + np.abs(env64[v] * evaluate(slope, env64, np.float64))
        return scale / np.abs(value)


@dataclass(frozen=True)
class Measured:
    """The float32 error of one output over the grid."""

    output: str
    typical_worst: float       # mean over the WORST_POINTS worst points
    worst: float
    at: float                  # the (first) input where the worst is

    def line(self) -> str:
        return (f"{self.typical_worst:.3g} ULP over its {WORST_POINTS} worst points "
                f"({self.worst:.3g} at {self.at:g})")


def float64_notes(d) -> list[str]:
    """What the generated module and the catalogue say of the directions a Derivation d
    computes in float64: as its spec asks (`precision: float64`), or as measured."""
    if d.spec.precision == "float64":
        return ["The forward and the backward are computed in float64 for every input dtype (kernels and "
                "fallback), as the spec asks (precision: float64)."]
    label = lambda m: "f" if m.output == "y" else "df/d" + m.output[2:]
    sixteen = ("16-bit data too, as float32 overflows where the value is finite" if float64_16bit(d)
               else "16-bit data in float32 there")
    notes = []
    for direction, found in (("forward", d.float64_forward), ("backward", d.float64_backward)):
        if found:
            measured = "; ".join(f"{label(m)} measured {m.line()}" for m in found)
            notes.append(f"The {direction} is computed in float64 (the fallback for every input dtype, the kernels "
                         f"for float32 data; {sixteen}): "
                         f"evaluated in float32, {measured}, beyond the accuracy target.")
    return notes


def float64_16bit(d) -> bool:
    """Whether the kernels compute 16-bit data in float64 too where a direction is computed
    in float64: as the spec asks, or where float32 measured values that are not finite (an
    overflow: log1p(x**2) is inf from |x| = 1.8e19) - a 16-bit rounding hides an error of
    float32's, not an inf."""
    return d.spec.precision == "float64" or any(
        not math.isfinite(m.typical_worst) for m in (*d.float64_forward, *d.float64_backward))


def _environments(inputs: Sequence[sympy.Symbol], values: Mapping[sympy.Symbol, float], xs: np.ndarray | None):
    """(the points, the float32 and float64 environments there): the grid (or xs) over the
    inputs (points), params and constants at `values`."""
    at = points(inputs, xs)
    n = len(next(iter(at.values())))
    env32 = at | {s: np.full(n, v, dtype=np.float32) for s, v in values.items()}
    env64 = {s: v.astype(np.float64) for s, v in env32.items()}
    return at, env32, env64


def measure(block, outputs: Sequence[str], slopes: Mapping[str, Sequence[tuple[sympy.Symbol, sympy.Expr]]],
            inputs: Sequence[sympy.Symbol], values: Mapping[sympy.Symbol, float], tensors=None,
            xs: np.ndarray | None = None) -> list[Measured]:
    """The float32 error of the named outputs of a Block over the grid, with slopes[name] =
    [(datum, d output / d datum)] for the condition number (none: 1); params and constants
    at `values`; with tensors, with the generated code's fused multiply-adds (see evaluate).  Empty where
    the evaluator does not know a part of the block.  xs: the first input's values (default: grid())."""
    at, env32, env64 = _environments(inputs, values, xs)
    try:
        got, truth = evaluate_block(block, env32, np.float32, tensors), evaluate_block(block, env64, np.float64)
        conds = {name: condition(truth[name], slopes.get(name, ()), env64) for name in outputs}
    except Unknown:
        return []
    out = []
    for name in outputs:
        err = errors(got[name], truth[name], conds[name])
        k = int(np.argmax(err))
        out.append(Measured(name, float(np.mean(np.sort(err)[-WORST_POINTS:])), float(err[k]),
                            float(next(iter(at.values()))[k])))
    return out


def measure_against(block, truth_block, outputs: Sequence[str], slopes, inputs: Sequence[sympy.Symbol],
                    values: Mapping[sympy.Symbol, float], tensors, dtype) -> dict[str, np.ndarray]:
    """The error of a Block's outputs computed in dtype (float32 or float64), against
    another block's computed in float64 - a form that is exact only where something
    (a cap, actgen.derive.CappedExp) holds, against the form it stands in for - in ULPs of
    dtype divided by the condition number, at each point of grid() and dense_grid(); inf
    where the evaluator does not know a part.  A value that is not finite is not scored: the
    CPU fast variant hands such a chunk to the guarded function, which is the truth here."""
    _, env32, env64 = _environments(inputs, values, np.unique(np.concatenate([grid(), dense_grid()])))
    try:
        got = evaluate_block(block, env32 if dtype == np.float32 else env64, dtype, tensors)
        truth = evaluate_block(truth_block, env64, np.float64)
        conds = {name: condition(truth[name], slopes.get(name, ()), env64) for name in outputs}
    except Unknown:
        return {name: np.array([math.inf]) for name in outputs}
    return {name: errors(got[name], truth[name], conds[name], dtype, not_finite=0.0) for name in outputs}


def worst_between(block, outputs: Sequence[str], slopes, inputs, values, tensors) -> float:
    """The largest float32 error (ULPs / condition number) of a Block's outputs at any point
    of dense_grid(), computed with the generated code's fused multiply-adds: how the
    compiler tells equally cheap forms of the kernels apart.  0 where the evaluator does not
    know a part of the block."""
    return max((m.worst for m in measure(block, outputs, slopes, inputs, values, tensors, dense_grid())), default=0.0)


def needs_float64(blocks, outputs: Sequence[str], slopes, inputs, values, tensors) -> tuple[Measured, ...]:
    """The outputs whose float32 evaluation measures above ACCURACY_ULP (see the module doc)
    in either block - the eager fallback's (blocks[0]) and the kernels' (blocks[1]), both
    computed with fused multiply-adds of the symbols in tensors (see evaluate) - each with its
    worst measure."""
    found: dict[str, Measured] = {}
    for block in blocks:
        for m in measure(block, outputs, slopes, inputs, values, tensors):
            if m.typical_worst > ACCURACY_ULP and (m.output not in found or m.typical_worst > found[m.output].typical_worst):
                found[m.output] = m
    return tuple(found[name] for name in outputs if name in found)
