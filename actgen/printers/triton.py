"""Triton printer: every transcendental but exp, log1p and erfc through libdevice (accurate to
a few ULP, and dispatched to float32 or float64 by the argument type); exp, log1p, erfc,
sigmoid, softplus and division through the helpers in actgen.runtime.triton_lang (exp and
log1p within an ULP from arithmetic alone, IEEE division and libdevice's erfc for float32
data; faster ones for 16-bit data, FAST, whose rounding hides their float32 error).

A sum with a product of two tensors among its terms is one `tl.fma`, split as the eager
fallback splits it (fma_split): the kernels round where the fallback rounds, on a GPU and
under the interpreter alike, rather than where the GPU compiler would contract.
"""
from __future__ import annotations

import numpy as np

from ..derive import MAX_PRODUCT_POWER, SATURATE_MAX_EXP2, value_range
from .base import ATOM, COND, POW, ExprPrinter


def _float32_exact(v: float) -> bool:
    """Whether float32 holds v exactly (a number past its range does not: inf)."""
    with np.errstate(over="ignore"):
        return float(np.float32(v)) == v


class TritonPrinter(ExprPrinter):
    FUNCTIONS = {
        "exp": "_exp({0}, FAST)",
        "log": "libdevice.log({0})",
        "log1p": "_log1p({0}, FAST)",
        "expm1": "libdevice.expm1({0})",
        "sqrt": "_sqrt({0}, FAST)",
        "sin": "libdevice.sin({0})",
        "cos": "libdevice.cos({0})",
        "tan": "libdevice.tan({0})",
        "tanh": "libdevice.tanh({0})",
        "sinh": "libdevice.sinh({0})",
        "cosh": "libdevice.cosh({0})",
        "atan": "libdevice.atan({0})",
        "asinh": "libdevice.asinh({0})",
        "erf": "libdevice.erf({0})",
        "erfc": "_erfc({0}, FAST)",
        "erfcx": "libdevice.erfcx({0})",
        "Abs": "tl.abs({0})",
        "SqrtSquarePlus": "_sqrt_square_plus({0}, {1}, FAST)",
        "ScaledInput": "_scaled_input({0})",
        "InverseScale": "_inverse_scale({0})",
        "sigmoid": "_sigmoid({0}, FAST)",
        "softplus": "_softplus({0}, FAST)",
        "LimitAtInf": "_limit_at_inf({0}, {1}, {2}, {3})",
        "Grown": "_grown({0})",
    }
    MAX_PRODUCT_POWER = MAX_PRODUCT_POWER   # x**k, (a + b)**k as products, not libdevice.pow (a log and an exp)
    INF = 'float("inf")'
    NAN = 'float("nan")'

    # Kernels compute in float32 (float16 and bfloat16 are loaded as float32): a larger bound
    # would be a float64 literal, which promotes the whole computation.
    MAX_BOUND = 2.0 ** SATURATE_MAX_EXP2
    # denominators whose range lies here take div_bounded (its reciprocal's exact range is
    # [2**-126, 2**126]; a margin either side)
    BOUNDED = (2.0 ** -100, 2.0 ** 100)

    def __init__(self, tensor_names=(), uniform=()):
        """tensor_names: symbols that are tensors in the fallback (inputs, params, draws);
        uniform: those of them the same for every element of a kernel's tile, scalars there
        (shared params).  Constants are uniform too."""
        super().__init__(tensor_names=tensor_names)
        self.varying = set(tensor_names) - set(uniform)     # and the temporaries made from them

    def add_temporary(self, sym, expr):
        super().add_temporary(sym, expr)
        if not self.is_uniform(expr):
            self.varying.add(sym.name)

    def is_uniform(self, expr) -> bool:
        """Whether expr is the same for every element: a scalar in the kernel."""
        return not any(s.name in self.varying for s in expr.free_symbols)

    def _print_Add(self, expr):
        """rest + a*b of two tensors as one tl.fma (see fma_split)."""
        split = self.fma_split(expr)
        if split is None:
            return super()._print_Add(expr)
        a, b, rest, negative = split
        first = f"-{self.paren(a, POW)}" if negative else self.doprint(a)
        return f"tl.fma({first}, {self.doprint(b)}, {self.addend(rest)})", ATOM

    def addend(self, rest) -> str:
        """The fma's addend.  A number that float32 does not hold exactly is made in the
        kernel's compute type: tl.fma takes a bare number as float32 first (triton 3.6)."""
        if rest.is_number and not _float32_exact(float(rest)):
            return f"tl.full([], {self.doprint(rest)}, ACC)"
        return self.doprint(rest)

    def divide(self, numerator, denominator, denominator_expr=None, numerator_expr=None):
        # IEEE division for float32 data (Triton's "/" is approximate on a GPU): see triton_lang.div.
        # By a denominator the same for every element (of constants and shared params alone),
        # float32 data's division takes its reciprocal once and corrects each quotient: see
        # triton_lang.div_uniform (a quotient of such values alone is a scalar: div, once).
        # By a denominator of known range (a ratio's, from exp(-|u|)), 16-bit data's division
        # takes the special-function unit's reciprocal: see triton_lang.div_bounded.
        if denominator_expr is not None and not denominator_expr.is_number:
            if self.is_uniform(denominator_expr):
                if numerator_expr is not None and self.is_uniform(numerator_expr):
                    return f"_div({numerator}, {denominator}, FAST)"
                return f"_div_uniform({numerator}, {denominator}, FAST)"
            lo, hi = value_range(denominator_expr, self.temps)
            if lo >= self.BOUNDED[0] and hi <= self.BOUNDED[1]:
                return f"_div_bounded({numerator}, {denominator}, FAST)"
        return f"_div({numerator}, {denominator}, FAST)"

    def clamp(self, u, lo, hi):
        nan = "propagate_nan=tl.PropagateNan.ALL"
        if lo and hi:
            return f"_clamp({u}, {lo}, {hi})"       # (float64 as a maximum and a minimum: triton_lang.clamp)
        return f"tl.maximum({u}, {lo}, {nan})" if lo else f"tl.minimum({u}, {hi}, {nan})"

    def operand(self, expr) -> str:
        """An argument of a two-argument libdevice function (pow, hypot), which takes both in
        one type: a number is made in the kernel's compute type (a bare one is float32,
        which float64 data's other argument does not match)."""
        return f"tl.full([], {self.doprint(expr)}, ACC)" if expr.is_number else self.doprint(expr)

    def power(self, base, exp):
        if exp.is_Integer and 2 <= exp <= self.MAX_PRODUCT_POWER:     # the compiler shares the repeats
            return "(" + "*".join([self.paren(base, POW)] * int(exp)) + ")", ATOM     # rounded as one factor
        return f"libdevice.pow({self.operand(base)}, {self.operand(exp)})", ATOM

    def _print_hypot(self, expr):
        return f"libdevice.hypot({', '.join(self.operand(a) for a in expr.args)})", ATOM

    def where(self, cond, value, otherwise, otherwise_expr, uniform_cond=False):
        # a number branch float32 does not hold exactly is made in ACC: tl.where takes a bare
        # number as float32 first (float64 data's asinh(3.0) was 5e-8 off)
        # (both branches numbers: the first in ACC, else the where is float32, and so is what
        # multiplies it - 0.1*tl.where(x < 0, 1.0, 0.0) was float32's 0.1 for float64 data)
        numbers = value.is_number and otherwise_expr is not None and otherwise_expr.is_number
        if numbers and _float32_exact(float(value)):
            value_text = f"tl.full([], {self.doprint(value)}, ACC)"
        else:
            value_text = self.addend(value) if value.is_number else self.doprint(value)
        if otherwise_expr is not None and otherwise_expr.is_number and otherwise == self.doprint(otherwise_expr):
            otherwise = self.addend(otherwise_expr)
        return f"tl.where({cond}, {value_text}, {otherwise})"

    def _print_Not(self, expr):
        return f"({self.doprint(expr.args[0])}) == 0", 0

    def _print_And(self, expr):
        return self._logic(expr, "&")

    def _print_Or(self, expr):
        return self._logic(expr, "|")

    def _logic(self, expr, op):
        """a & b (a | b) of conditions; one of scalars alone with one of the tile's elements as
        tl.where(scalar, tile, False) (tl.where(scalar, True, tile)): the same value, where
        Triton's interpreter would turn a splatted scalar comparison into float data that &
        and | refuse."""
        uniform = [a for a in expr.args if self.is_uniform(a)]
        varying = [a for a in expr.args if not self.is_uniform(a)]
        if not uniform or not varying:
            return f" {op} ".join(f"({self.doprint(a)})" for a in expr.args), COND
        u, v = (f" {op} ".join(f"({self.doprint(a)})" for a in part) for part in (uniform, varying))
        if op == "&":
            return f"tl.where({u}, {v}, False)", ATOM
        return f"tl.where({u}, True, {v})", ATOM
