"""The printer base: precedence-aware, strict, table-driven.

A target subclasses `ExprPrinter`, fills `FUNCTIONS` (sympy function name -> call template)
and overrides the few `_print_<Class>` methods a table cannot express.  A node with no
table entry and no method is an error naming the node: nothing is silently printed as
Python.  Numbers are always printed as float literals (Triton follows C semantics: 1/2 is
integer division there).
"""
from __future__ import annotations

import math

import sympy

from ..derive import InfGuard, NanGuard

# precedence levels
COND, ADD, MUL, NEG, POW, ATOM = range(6)


class PrinterError(ValueError):
    pass


class ExprPrinter:
    FUNCTIONS: dict[str, str] = {}     # sympy class name -> "template({0})"
    RELATIONS = {"StrictGreaterThan": ">", "GreaterThan": ">=", "StrictLessThan": "<", "LessThan": "<="}
    INF = "float('inf')"
    NAN = "float('nan')"

    def __init__(self, names: dict[str, str] | None = None):
        self.names = names or {}

    # entry point
    def doprint(self, expr) -> str:
        return self._print(expr)[0]

    def _print(self, expr) -> tuple[str, int]:
        if isinstance(expr, sympy.Expr) and expr.is_number and not expr.is_Number:
            value = complex(expr.evalf(30))
            if value.imag:
                raise PrinterError(f"{type(self).__name__} cannot print complex constant {expr}")
            return self._print_Number(sympy.Float(value.real))
        for cls in type(expr).__mro__:
            method = getattr(self, f"_print_{cls.__name__}", None)
            if method is not None:
                return method(expr)
            template = self.FUNCTIONS.get(cls.__name__)
            if template is not None:
                return template.format(*[self.doprint(a) for a in expr.args]), ATOM
            if cls is sympy.Function:
                break
        raise PrinterError(f"{type(self).__name__} cannot print {type(expr).__name__}: {expr}")

    def paren(self, expr, level: int) -> str:
        text, prec = self._print(expr)
        return f"({text})" if prec < level else text

    # numbers
    def number(self, value: float) -> str:
        if math.isnan(value):
            return self.NAN
        if math.isinf(value):
            return self.INF if value > 0 else f"-{self.INF}"
        return repr(float(value))

    def _print_Number(self, expr):
        value = float(expr)
        text = self.number(value)
        return text, (NEG if text.startswith("-") else ATOM)

    def _print_NumberSymbol(self, expr):
        return self._print_Number(expr)

    def _print_Symbol(self, expr):
        return self.names.get(expr.name, expr.name), ATOM

    # arithmetic
    def _print_Add(self, expr):
        if expr.is_number:
            return self._print_Number(sympy.Float(expr.evalf(30), 30))
        parts = []
        for i, term in enumerate(expr.as_ordered_terms()):
            coeff, _ = term.as_coeff_Mul()
            if i and coeff.is_negative:
                parts.append(" - " + self.paren(-term, MUL))
            else:
                parts.append((" + " if i else "") + self.paren(term, ADD))
        return "".join(parts), ADD

    def _print_Mul(self, expr):
        if expr.is_number:
            return self._print_Number(sympy.Float(expr.evalf(30), 30))
        coeff, rest = expr.as_coeff_Mul()
        if coeff.is_negative:
            return "-" + self.paren(-expr, POW), NEG
        numer, denom = [], []
        for factor in expr.as_ordered_factors():
            if factor.is_Pow and factor.exp.is_number and factor.exp.is_negative:
                denom.append(factor.base ** -factor.exp)
            elif factor.is_Rational and factor.q != 1:
                if factor.p != 1:
                    numer.append(sympy.Integer(factor.p))
                denom.append(sympy.Integer(factor.q))
            else:
                numer.append(factor)
        text = "*".join(self.paren(f, MUL) for f in numer) or self.number(1.0)
        if denom:
            d = denom[0] if len(denom) == 1 else sympy.Mul(*denom, evaluate=False)
            text += "/" + self.paren(d, POW)
        return text, MUL

    def _print_Pow(self, expr):
        base, exp = expr.base, expr.exp
        if exp.is_number:
            e = float(exp)
            if e < 0:
                return f"{self.number(1.0)}/{self.paren(base ** -exp, POW)}", MUL
            if e == 0.5:
                return self.sqrt(base), ATOM
            if e.is_integer() and 1 <= e <= 4 and base.is_Symbol:
                return "*".join([self.paren(base, POW)] * int(e)), MUL
        return self.power(base, exp)

    def sqrt(self, base) -> str:
        return self.FUNCTIONS["sqrt"].format(self.doprint(base))

    def power(self, base, exp) -> tuple[str, int]:
        raise NotImplementedError

    # conditions
    def _print_Relational(self, expr):
        op = self.RELATIONS.get(type(expr).__name__)
        if op is None:
            raise PrinterError(f"{type(self).__name__} cannot print relation {expr}")
        return f"{self.paren(expr.lhs, ADD)} {op} {self.paren(expr.rhs, ADD)}", COND

    def _print_And(self, expr):
        return " & ".join(f"({self.doprint(a)})" for a in expr.args), COND

    def _print_Or(self, expr):
        return " | ".join(f"({self.doprint(a)})" for a in expr.args), COND

    def _print_Piecewise(self, expr):
        *pairs, (last, cond) = expr.args
        rest = last if cond is sympy.true else sympy.nan
        if cond is not sympy.true:
            pairs.append((last, cond))
        text = self.doprint(rest)
        for value, c in reversed(pairs):
            text = self.where(self.doprint(c), value, text, rest)
            rest = sympy.Piecewise((value, c), (rest, True), evaluate=False)
        return text, ATOM

    def where(self, cond: str, value, otherwise: str, otherwise_expr) -> str:
        """Print `where(cond, value, otherwise)`; value/otherwise_expr are sympy, cond and
        otherwise already printed."""
        raise NotImplementedError

    # guards
    def _print_NanGuard(self, expr):
        value, *inputs = expr.args
        text = self.doprint(value)
        for u in reversed(inputs):
            name = self.doprint(u)
            text = self.where(self.isnan(name), u, text, value)
        return text, ATOM

    def _print_InfGuard(self, expr):
        value, u, lo, hi = expr.args
        text = self.doprint(value)
        name = self.doprint(u)
        if lo is not sympy.nan:
            text = self.where(f"{name} == -{self.INF}", lo, text, value)
        if hi is not sympy.nan:
            text = self.where(f"{name} == {self.INF}", hi, text, value)
        return text, ATOM

    def isnan(self, name: str) -> str:
        return f"{name} != {name}"
