"""Torch printer for the eager fallback.

Subexpressions that involve only constants (Python floats at run time) are printed with
`math`, or where math raises (log(-1), exp(1000), c/0) with actgen.runtime's IEEE versions
(`_rt.scalar_log`, `_rt.scalar_div`), so they never reach a torch function as a float and
give NaN or inf as tensors would, never an exception; `where` with two scalar branches
gets one branch as a 0-dim tensor of the compute dtype (`_rt.number`), so torch.where keeps
float64.

With `fast=True` it prints the fallback's fast variant (actgen.derive.fast_variant: the
block without its NaN/inf guards), which runs on CPU only when every input is finite: a
condition is a float 0/1 mask (`_rt.gt(a, b)`: a vectorized compare, where a bool mask and
torch.where are not) and a branch choice is `_rt.select(mask, a, b)`, exact wherever both
branches are finite; the generated function checks its outputs and hands over to the
guarded variant when one is not.

A sum with a product of two tensors among its terms is computed as a fused multiply-add
(`_rt.fma(a, b, c)`, torch.addcmul), rounded once as the kernels' `tl.fma` is (the same
split, fma_split): fewer passes over memory, and the fallback rounds where the kernels do.
"""
from __future__ import annotations

from .base import ATOM, POW, ExprPrinter

TENSOR_FUNCTIONS = {
    "exp": "torch.exp({0})",
    "log": "torch.log({0})",
    "log1p": "torch.log1p({0})",
    "expm1": "torch.expm1({0})",
    "sqrt": "torch.sqrt({0})",
    "sin": "torch.sin({0})",
    "cos": "torch.cos({0})",
    "tan": "torch.tan({0})",
    "tanh": "torch.tanh({0})",
    "sinh": "torch.sinh({0})",
    "cosh": "torch.cosh({0})",
    "atan": "torch.atan({0})",
    "asinh": "torch.asinh({0})",
    "erf": "torch.erf({0})",
    "erfc": "torch.erfc({0})",
    "erfcx": "torch.special.erfcx({0})",
    "Abs": "torch.abs({0})",
    "sigmoid": "torch.sigmoid({0})",
    "softplus": "_rt.softplus({0})",
    "CappedExp": "_rt.capped_exp({0}, {1}, {2})",
    "hypot": "_rt.hypot({0}, {1})",
    "SqrtSquarePlus": "_rt.sqrt_square_plus({0}, {1})",
    "ScaledInput": "_rt.scaled_input({0})",
    "InverseScale": "_rt.inverse_scale({0})",
    "LimitAtInf": "_rt.limit_at_inf({0}, {1}, {2}, {3})",
    "Grown": "_rt.grown({0})",
}
#: actgen.runtime's IEEE versions of the math functions that raise (log(-1), exp(1000))
_IEEE = ("exp", "expm1", "cosh", "sinh", "log", "log1p", "sqrt", "sin", "cos", "tan")

SCALAR_FUNCTIONS = {
    name: template.replace("torch.", "_rt.scalar_" if name in _IEEE else "math.") for name, template in TENSOR_FUNCTIONS.items()
} | {
    "Abs": "abs({0})",
    "hypot": "math.hypot({0}, {1})",
    "SqrtSquarePlus": "_rt.scalar_sqrt_square_plus({0}, {1})",
    "sigmoid": "_rt.scalar_sigmoid({0})",
    "softplus": "_rt.scalar_softplus({0})",
    "erfcx": "_rt.scalar_erfcx({0})",
}


FAST_RELATIONS = {"StrictGreaterThan": "gt", "GreaterThan": "ge", "StrictLessThan": "lt", "LessThan": "le"}


class TorchPrinter(ExprPrinter):
    INF = "math.inf"
    NAN = "math.nan"

    def __init__(self, tensor_names, like: str, names=None, fast: bool = False):
        """tensor_names: symbols that are tensors at run time; like: a tensor to take the dtype from;
        fast: print the unguarded fast variant (float masks and selects, see the module doc)."""
        super().__init__(names, tensor_names)
        self.like = like
        self.fast = fast
        self.FUNCTIONS = TENSOR_FUNCTIONS

    def _print(self, expr):
        if self.FUNCTIONS is TENSOR_FUNCTIONS and self.is_scalar(expr) and not expr.is_Atom:
            self.FUNCTIONS = SCALAR_FUNCTIONS
            try:
                return super()._print(expr)
            finally:
                self.FUNCTIONS = TENSOR_FUNCTIONS
        return super()._print(expr)

    @property
    def scalar_mode(self) -> bool:
        return self.FUNCTIONS is SCALAR_FUNCTIONS

    def power(self, base, exp):
        if self.scalar_mode:
            return f"_rt.scalar_pow({self.doprint(base)}, {self.doprint(exp)})", ATOM
        return f"{self.paren(base, POW + 1)}**{self.paren(exp, POW + 1)}", POW

    def divide(self, numerator, denominator, denominator_expr=None, numerator_expr=None):
        if self.scalar_mode:        # floats: c/0 is inf (or NaN), as on tensors, not an exception
            return f"_rt.scalar_div({numerator}, {denominator})"
        if (numerator_expr is not None and denominator_expr is not None and self.is_scalar(numerator_expr)
                and not self.is_scalar(denominator_expr)
                and not (numerator_expr.is_number and float(numerator_expr) == 1.0)):
            # a float over a tensor: Python's c/t is t.reciprocal()*c, two roundings, and NaN
            # where 1/t overflows (t subnormal) and c is 0; rdiv divides once, as the kernels do
            return f"_rt.rdiv({numerator}, {denominator})"
        return super().divide(numerator, denominator, denominator_expr, numerator_expr)

    def _print_Add(self, expr):
        """rest + a*b of two tensors as one fused multiply-add (see fma_split)."""
        split = None if self.scalar_mode else self.fma_split(expr)
        if split is None:
            return super()._print_Add(expr)
        a, b, rest, negative = split
        scale = ""
        coeff, factor = a.as_coeff_Mul()
        if coeff != 1:                  # (c*a)*b + rest: torch.addcmul's value=c
            a, scale = factor, f", {self.doprint(coeff)}"
        return f"_rt.{'fnma' if negative else 'fma'}({self.doprint(a)}, {self.doprint(b)}, {self.doprint(rest)}{scale})", ATOM

    def where(self, cond, value, otherwise, otherwise_expr, uniform_cond=False):
        if self.scalar_mode:
            return f"({self.doprint(value)} if {cond} else {otherwise})"
        if self.fast:
            return f"_rt.select({cond}, {self.doprint(value)}, {otherwise})"
        if uniform_cond:            # a bool: the branch it takes (torch.where wants a tensor)
            return f"({self.doprint(value)} if {cond} else {otherwise})"
        text = self.doprint(value)
        if self.is_scalar(value) and self.is_scalar(otherwise_expr):
            text = f"_rt.number({self.like}, {text})"
        return f"torch.where({cond}, {text}, {otherwise})"

    def _print_Relational(self, expr):
        op = FAST_RELATIONS.get(type(expr).__name__)
        if self.fast and not self.scalar_mode and op is not None:
            return f"_rt.{op}({self.doprint(expr.lhs)}, {self.doprint(expr.rhs)})", ATOM
        return super()._print_Relational(expr)

    def _print_And(self, expr):
        if self.scalar_mode:
            return " and ".join(f"({self.doprint(a)})" for a in expr.args), 0
        if self.fast:
            return f"_rt.mask_and({', '.join(self.doprint(a) for a in expr.args)})", ATOM
        return super()._print_And(expr)

    def _print_Or(self, expr):
        if self.scalar_mode:
            return " or ".join(f"({self.doprint(a)})" for a in expr.args), 0
        if self.fast:
            return f"_rt.mask_or({', '.join(self.doprint(a) for a in expr.args)})", ATOM
        return super()._print_Or(expr)

    def _print_Not(self, expr):
        if self.scalar_mode:
            return f"not ({self.doprint(expr.args[0])})", 0
        if self.fast:
            return f"_rt.mask_not({self.doprint(expr.args[0])})", ATOM
        return f"~({self.doprint(expr.args[0])})", ATOM

    def clamp(self, u, lo, hi):       # a Saturate clamps an input: always a tensor
        return f"_rt.clamp({u}, {lo}, {hi})"

    def isnan(self, name):
        return f"torch.isnan({name})"
