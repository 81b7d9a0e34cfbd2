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

from ..derive import INVERSE_SCALE_PREFIX

# precedence levels
COND, ADD, MUL, NEG, POW, ATOM = range(6)


class PrinterError(ValueError):
    pass


def _split_powers(factors):
    """Factors with small integer powers written out (x**2 -> x, x; q**2 -> q, q)."""
    out = []
    for f in factors:
        if f.is_Pow and not f.base.is_number and f.exp.is_Integer and 2 <= f.exp <= 4:
            out += [f.base] * int(f.exp)
        else:
            out.append(f)
    return out


def _grows(factor) -> bool:
    """A factor that can overflow on its own where a ratio it is in does not: a power >= 2 of a
    symbol (x**2), or a sum with a product of varying factors (a polynomial in Horner form)."""
    if factor.is_Pow and factor.base.is_Symbol and factor.exp.is_Integer and factor.exp >= 2:
        return True
    if isinstance(factor, sympy.Add):
        return any(t.is_Mul and sum(1 for a in t.args if not a.is_number) >= 2 for t in factor.args)
    return False


def _is_data(factor) -> bool:
    """A factor that is one of a formula's own names (an input, param or constant: any value
    of its dtype), not a temporary of the generated code (named with a leading underscore)."""
    return factor.is_Symbol and not factor.name.startswith("_")


def _reciprocal_branches(e):
    """Piecewise((a, c), (b, True)) for a Piecewise((1/a, c), (1/b, True)) (sympy writes
    1/Piecewise(...) so), else None: printed as one division of the selected value."""
    if not isinstance(e, sympy.Piecewise) or len(e.args) < 2:
        return None
    if not all(v.is_Pow and v.exp.is_number and v.exp.is_negative for v, _ in e.args):
        return None
    return sympy.Piecewise(*[(v.base ** -v.exp, c) for v, c in e.args], evaluate=False)


def _pair_ratios(numer, denom):
    """Where a product has a numerator factor that grows (see _grows) and denominator factors
    that vary, pair numerator and denominator factors up: x*x/(2*(h + 1)) prints as
    x/(h + 1)*x/2, p/q**2 as p/q/q.  The numerator (or the denominator) alone can overflow
    where the result does not (x**2 at |x| > 1.8e19 in float32); the paired ratios stay near
    the result's magnitude.  Returns the numerators and denominators left over (denominators
    that vary are each divided by in turn), and the pairs."""
    varying = lambda f: not f.is_number
    if any(_is_inverse_scale(_base_power(d)[0]) for d in denom):
        return _scale_last(numer, denom)
    n_var = [f for f in _split_powers(numer) if varying(f)]
    d_var = [f for f in _split_powers(denom) if varying(f)]
    if not d_var or len(n_var) + len(d_var) < 3:
        return numer, denom, []
    if not any(_grows(f) for f in numer):
        if not any(_is_data(f) for f in n_var):
            return numer, denom, []
        # data (an input, up to float32's largest) times a factor that varies, over one: the
        # ratio first, then the data (smish's x*N/D overflowed from x = 1.1e38 where N ~ 3)
        n_var.sort(key=_is_data)
    k = min(len(n_var), len(d_var))
    pairs = list(zip(n_var[:k], d_var[:k])) + [(None, d) for d in d_var[k:]]
    rest_n = n_var[k:] + [f for f in numer if not varying(f)]
    rest_d = [f for f in denom if not varying(f)]
    return rest_n, rest_d, pairs


def _is_inverse_scale(f) -> bool:
    """A scaled ratio's w = 1/s (see actgen.derive.rational_form), by its name."""
    return f.is_Symbol and f.name.startswith(INVERSE_SCALE_PREFIX)


def _base_power(f) -> tuple[sympy.Expr, int]:
    return (f.base, int(f.exp)) if f.is_Pow and f.exp.is_Integer and f.exp > 0 else (f, 1)


def _scale_last(numer, denom):
    """The layout of a product that divides by powers of a scaled ratio's w = 1/s (s**k
    times a ratio in v = x/s and w, times the rest): every numerator factor first, then each
    denominator that varies in turn, then w, one at a time.  What the numerators make is
    the result times w**k, at most its size, and each division by w (exact: a power of two,
    at least 2**-128 for a finite x) takes it a factor s towards the result: nothing
    overflows where the result does not, and a factor that vanishes where s is huge leaves
    0.  (w**4 as one divisor underflows to 0 from |x| = 2**38 in float32: 0/0 where the
    numerator vanishes, x**4*exp(-a*x**2)/(1 + x**2) at x = 1e13; v/w*v/w first overflows
    where the factor that vanishes comes after it.)"""
    d_var, w_var, rest_d = [], [], []
    for d in denom:
        base, k = _base_power(d)
        if _is_inverse_scale(base):
            w_var += [base] * k
        elif d.is_number:
            rest_d.append(d)
        else:
            d_var.append(d)
    return list(numer), rest_d, [(None, d) for d in d_var + w_var]


def product_layout(expr: sympy.Mul):
    """How a product (positive coefficient) is computed: (numerator factors, denominator
    factors, pairs (n, d) of _pair_ratios); the value is every n/d of the pairs with an n,
    times the numerator factors, divided by each d of the pairs without one, divided by
    the product of the denominator factors."""
    numer, denom = [], []
    for factor in expr.as_ordered_factors():
        flipped = _reciprocal_branches(factor)
        if flipped is not None:          # where(c, 1/a, 1/b) -> /where(c, a, b): one division
            denom.append(flipped)
        elif factor.is_Pow and factor.exp.is_number and factor.exp.is_negative:
            denom.append(factor.base ** -factor.exp)
        elif factor.is_Rational and factor.q != 1:
            if factor.p != 1:
                numer.append(sympy.Integer(factor.p))
            denom.append(sympy.Integer(factor.q))
        else:
            numer.append(factor)
    return _pair_ratios(_data_last(_between_powers(numer)), denom)


def _data_last(numer):
    """The factors of a product with the formula's own names (inputs, params, constants:
    any value of the dtype) after the others, where a call (or a branch) is among them: the
    bounded factors meet first, and a product of two data that overflows meets a call that
    vanishes only after it (geglu's 0.5*a*b*erfc(...) was inf*0 = NaN at a = -100,
    b = 1e37; erfc(...)*0.5*a*b is -0).  Left as they are where _between_powers has
    interleaved a power around the calls."""
    if len(numer) < 3 or not any(isinstance(f, sympy.Function) for f in numer):
        return numer
    data = [f for f in numer if _is_data(f) or (f.is_Pow and _is_data(f.base))]
    if not data or any(f.is_Pow for f in data):
        return numer
    return [f for f in numer if f not in data] + data


def _between_powers(numer):
    """x**2 * g(b*x) as x * g(b*x) * x: a power of a symbol that can overflow on its own (x**2
    from |x| = 1.8e19 in float32) is split around a call that vanishes where it grows, whose
    product stays 0, not inf * 0 = NaN (x*tanh(softplus(b*x))'s gradient in b); around every
    call of the product, where there are several (x*s*s*x for x*(1 + tanh(a*x))/2's gradient
    in a: one of sigmoid(2*a*x) and sigmoid(-2*a*x) vanishes on either side).  A power
    named once for several uses is a temporary here: actgen.derive.split_powers_at_calls
    splits those products before CSE (exp(-a*x**2)'s gradient in a, -x**2*exp(-a*x**2))."""
    grows = [f for f in numer if f.is_Pow and f.base.is_Symbol and f.exp.is_Integer and 2 <= f.exp <= 4]
    calls = [f for f in numer if isinstance(f, sympy.Function)]
    if len(grows) != 1 or not calls:
        return numer
    power = grows[0]
    rest = [f for f in numer if f is not power and not isinstance(f, sympy.Function)]
    return [power.base, *calls, power.base ** (power.exp - 1)] + rest


def product_chain(e: sympy.Expr) -> list[tuple[str, sympy.Expr]]:
    """The factors of a product as the eager fallback's printed code applies them, left to
    right: [("*" or "/", factor)], each factor printed atomically (in parentheses, or a call
    or a name).  A product inside a product (x**3 written x*x*x, a ratio n/d that the
    printers pair) continues the same chain, as Python parses the printed text."""
    if e.is_Mul and not e.is_number:
        coeff, rest = e.as_coeff_Mul()
        if coeff.is_negative:               # printed -(...)
            return [("*", e)]
        if coeff.is_Float and float(coeff) == 1.0:
            return product_chain(rest)
        numer, denom, pairs = product_layout(e)
        items = []
        for n, d in pairs:
            if n is not None:
                items += product_chain(n) + [("/", d)]
        for n in numer:
            items += product_chain(n)
        items = items or [("*", sympy.Float(1.0))]
        items += [("/", d) for n, d in pairs if n is None]
        if denom:
            items.append(("/", denom[0] if len(denom) == 1 else sympy.Mul(*denom, evaluate=False)))
        return items
    if e.is_Pow and e.exp.is_number:
        if e.exp < 0:                       # printed 1.0/(base**-exp)
            return [("*", sympy.Float(1.0)), ("/", e.base ** -e.exp)]
        if e.exp.is_Integer and 1 <= e.exp <= ExprPrinter.MAX_PRODUCT_POWER and e.base.is_Symbol:
            return [("*", e.base)] * int(e.exp)
    return [("*", e)]


def fma_split(expr: sympy.Add, is_tensor):
    """How the eager fallback computes a sum: as rest + a*b (negative False) or rest - a*b
    (True) in one fused multiply-add (torch.addcmul), where a*b is the last of expr's terms
    (in the printed order) that is a product of exactly two factors, both tensors at run time
    (is_tensor(factor)), with coefficient 1 or -1 - and the kernels, by the same rule, in one tl.fma.
    A product of two tensors over a third, a*n/d, is a*(n/d) there, a the factor that grows
    (logish's x*e/D + log1p(s): one rounding less where the sum cancels).
    Where no term is such a product, a term c*a*b with c a number (0.4*x*e) is, as rest +
    (c*a)*b (torch.addcmul's value=c: c*a rounded, then one fused multiply-add, as the
    kernels' tl.fma(c*a, b, rest)); a is then c*a, a the factor that is not one of the
    formula's own names where one is (2*sp*x as (2*sp)*x: 2*x overflowed where the product
    does not, xielu's slope from x = 1.7e38 in float32).
    (a, b, rest, negative), or None where no term is such a product."""
    terms = expr.as_ordered_terms()
    return _fma_term(terms, is_tensor) or _scaled_fma_term(terms, is_tensor)


def _fma_term(terms, is_tensor):
    for i in reversed(range(len(terms))):
        term = terms[i]
        negative = term.as_coeff_Mul()[0].is_negative
        chain = product_chain(-term if negative else term)
        if len(terms) < 2 or not all(is_tensor(f) for _, f in chain):
            continue
        rest = sympy.Add(*terms[:i], *terms[i + 1:])
        if len(chain) == 2 and all(op == "*" for op, _ in chain):
            return chain[0][1], chain[1][1], rest, negative
        if len(chain) == 3 and [op for op, _ in chain].count("/") == 1:
            (n1, n2), d = [f for op, f in chain if op == "*"], next(f for op, f in chain if op == "/")
            a, n = (n2, n1) if _grows(n2) and not _grows(n1) else (n1, n2)
            return a, sympy.Mul(n, sympy.Pow(d, -1)), rest, negative
    return None


def _scaled_fma_term(terms, is_tensor):
    if len(terms) < 2:
        return None
    for i in reversed(range(len(terms))):
        factors = terms[i].as_ordered_factors()
        coeff = sympy.Mul(*[f for f in factors if f.is_number])
        chain = product_chain(sympy.Mul(*[f for f in factors if not f.is_number]))
        if coeff in (1, -1) or len(chain) != 2 or not all(op == "*" and is_tensor(f) for op, f in chain):
            continue
        scale = sympy.Float(abs(float(coeff)))
        rest = sympy.Add(*terms[:i], *terms[i + 1:])
        a, b = chain[0][1], chain[1][1]
        if _is_data(a) and not _is_data(b):     # (the number scales the other factor: 2*x overflowed first)
            a, b = b, a
        return sympy.Mul(scale, a, evaluate=False), b, rest, bool(coeff < 0)
    return None


class ExprPrinter:
    FUNCTIONS: dict[str, str] = {}     # sympy class name -> "template({0})"
    MAX_PRODUCT_POWER = 4               # x**k up to this k is printed as x*x*...*x
    RELATIONS = {"StrictGreaterThan": ">", "GreaterThan": ">=", "StrictLessThan": "<", "LessThan": "<="}
    INF = "float('inf')"
    NAN = "float('nan')"

    def __init__(self, names: dict[str, str] | None = None, tensor_names=()):
        """names: symbol name -> printed name; tensor_names: symbols that are tensors at run
        time (the temporaries computed from them join as a block is printed: add_tensor_name)."""
        self.names = names or {}
        self.tensor_names = set(tensor_names)
        self.temps: dict = {}       # the block's temporaries printed so far: symbol -> definition

    def is_scalar(self, expr) -> bool:
        return not any(s.name in self.tensor_names for s in expr.free_symbols)

    def add_tensor_name(self, name: str):
        self.tensor_names.add(name)

    def add_temporary(self, sym, expr):
        """A temporary of the block being printed, by its definition (for what later
        expressions know of its value: actgen.derive.value_range)."""
        self.temps[sym] = expr
        if not self.is_scalar(expr):
            self.add_tensor_name(sym.name)

    def fma_split(self, expr):
        """fma_split of a sum by this printer's tensors (None for a number)."""
        return None if expr.is_number else fma_split(expr, lambda f: not self.is_scalar(f))

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

    def _print_UnevaluatedExpr(self, expr):
        """A product kept whole (a*x in an approximant's powers, x*exp(-a*x**2) before its
        second x: actgen.derive.split_powers_at_calls): in parentheses in a product, computed
        first."""
        text, prec = self._print(expr.args[0])
        return (text, ADD) if expr.args[0].is_Mul else (text, prec)    # (ADD: in parentheses in a product)

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
        if coeff.is_Float and float(coeff) == 1.0:      # 1.0*x (a folded 2*0.5) is x
            return self._print(rest)
        numer, denom, pairs = product_layout(expr)
        # left to right, as `n1/d1*n2/d2*f/d` evaluates: ((n1/d1)*n2)/d2 ...
        steps = [s for n, d in pairs if n is not None for s in (("*", n), ("/", d))]
        steps += [("*", f) for f in numer] + [("/", d) for n, d in pairs if n is None]
        if denom:
            steps.append(("/", denom[0] if len(denom) == 1 else sympy.Mul(*denom, evaluate=False)))
        if not steps or steps[0][0] == "/":
            steps.insert(0, ("*", sympy.Float(1.0)))
        first = steps[0][1]         # (a product kept whole, first: computed first anyway)
        text = self._print(first.args[0])[0] if isinstance(first, sympy.UnevaluatedExpr) else self.paren(first, MUL)
        done = [first]
        for op, v in steps[1:]:
            if op == "*":
                text = f"{text}*{self.paren(v, MUL)}"
            else:
                text = self.divide(text, self.paren(v, POW), v, sympy.Mul(*done, evaluate=False))
            done.append(v)
        return text, MUL

    def divide(self, numerator: str, denominator: str, denominator_expr=None, numerator_expr=None) -> str:
        """numerator / denominator, both printed as operands of a product (denominator_expr
        and numerator_expr: what they print, or for the numerator what it is made of, where a
        printer divides by what it knows of them)."""
        return f"{numerator}/{denominator}"

    def _print_Pow(self, expr):
        base, exp = expr.base, expr.exp
        if exp.is_number:
            e = float(exp)
            if e < 0:
                return self.divide(self.number(1.0), self.paren(base ** -exp, POW), base ** -exp, sympy.Float(1.0)), MUL
            if e == 0.5:
                return self.sqrt(base), ATOM
            if e.is_integer() and 1 <= e <= self.MAX_PRODUCT_POWER and base.is_Symbol:
                return "*".join([self.paren(base, POW)] * int(e)), MUL
            if e.is_integer() and 1 <= e <= self.MAX_EXACT_POWER and self.is_power_of_two(base):
                # (every product exact, or one that underflows as pow's result does: a
                # general pow took as long as 25 products on a CPU)
                return "*".join([self.paren(base, POW)] * int(e)), MUL
        return self.power(base, exp)

    MAX_EXACT_POWER = 16

    def is_power_of_two(self, e) -> bool:
        """Whether e is a temporary whose values are powers of two (a ratio of polynomials'
        inverse scale, actgen.derive.InverseScale, 1/2**k): its integer powers are products
        rounded exactly."""
        return type(self.temps.get(e)).__name__ == "InverseScale"

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

    def _print_ITE(self, expr):
        """if c then a else b, a condition sympy makes of a branch's own condition (nested Max)."""
        c, a, b = expr.args
        return self._print(sympy.Or(sympy.And(c, a), sympy.And(sympy.Not(c), b)))

    def _print_Piecewise(self, expr):
        flipped = _reciprocal_branches(expr)
        if flipped is not None:
            return self.divide(self.number(1.0), self.paren(flipped, POW), flipped, sympy.Float(1.0)), MUL
        *pairs, (last, cond) = expr.args
        if not pairs and cond is sympy.true:       # one branch left (actgen.derive.LogErfc)
            return self._print(last)
        rest = last if cond is sympy.true else sympy.nan
        if cond is not sympy.true:
            pairs.append((last, cond))
        text = self.doprint(rest)
        for value, c in reversed(pairs):
            text = self.where(self.doprint(c), value, text, rest, self.is_scalar(c))
            rest = sympy.Piecewise((value, c), (rest, True), evaluate=False)
        return text, ATOM

    def where(self, cond: str, value, otherwise: str, otherwise_expr, uniform_cond: bool = False) -> str:
        """Print `where(cond, value, otherwise)`; value/otherwise_expr are sympy, cond and
        otherwise already printed; uniform_cond: cond is of constants alone (one bool)."""
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

    def _print_Saturate(self, expr):
        u, lo, hi = expr.args
        bound = lambda b: None if b.is_infinite or abs(float(b)) > self.MAX_BOUND else repr(float(b))
        lo, hi = bound(lo), bound(hi)
        text = self.doprint(u)
        return (self.clamp(text, lo, hi) if lo or hi else text), ATOM

    #: Bounds of a Saturate beyond this magnitude are left out (no input of the dtypes a
    #: target computes in reaches them).
    MAX_BOUND = float("inf")

    def clamp(self, u: str, lo: str | None, hi: str | None) -> str:
        """Print u clamped to [lo, hi] (None: no bound), NaN staying NaN."""
        raise NotImplementedError

    def isnan(self, name: str) -> str:
        return f"{name} != {name}"
