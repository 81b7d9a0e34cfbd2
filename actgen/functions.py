"""The sympy functions actgen adds to the formula language.

`sigmoid` and `softplus` are first-class functions with their own derivatives, so the
derivatives the compiler derives stay in terms of the stable primitives instead of
raw exponentials.  `log1p` and `expm1` come from sympy's own codegen functions.
`erfcx` is the scaled complementary error function exp(u**2)*erfc(u), which the stability
rewrites bring in (log(erfc(u)) past erfc's underflow, see actgen.derive.LogErfc).
`uniform` is a random draw; the compiler replaces it before differentiating (see
actgen.derive.replace_draws).
"""
from __future__ import annotations

import mpmath
import sympy
from sympy.codegen.cfunctions import expm1, log1p

from .special import erfcx as erfcx_float

__all__ = ["sigmoid", "softplus", "erfc", "erfcx", "erfcx_float", "log1p", "expm1", "uniform", "mean_of_draws", "MPMATH_FUNCTIONS", "MPMATH_AT_HUGE",
           "Oscillates"]


class erfc(sympy.erfc):
    """sympy's erfc without its canonical form erfc(-z) -> 2 - erfc(z), which would bring
    back the cancellation erfc is there to avoid (erfc(-x) for x << 0, torch's own GELU form
    0.5*x*erfc(-x/sqrt(2))).  Prints, differentiates and evaluates as erfc."""

    @classmethod
    def eval(cls, arg):
        if arg.could_extract_minus_sign():
            return None
        return super().eval(arg)


class _PositiveOnReals(sympy.Function):
    """A function of one argument that is real and positive for a real one, evaluated
    numerically as its rewrite in exp; at 0, oo and -oo the values in its `at` (none: left
    as it is)."""

    nargs = 1
    at: dict = {}

    @classmethod
    def eval(cls, arg):
        if arg is sympy.S.Zero or arg is sympy.S.Infinity or arg is sympy.S.NegativeInfinity:
            return cls.at.get(arg)

    def _eval_evalf(self, prec):
        return self._eval_rewrite_as_exp(self.args[0])._eval_evalf(prec)

    def _eval_is_real(self):
        return self.args[0].is_real

    def _eval_is_positive(self):
        if self.args[0].is_real:
            return True


class erfcx(_PositiveOnReals):
    """erfcx(u) = exp(u**2)*erfc(u), the scaled complementary error function:
    1/(u*sqrt(pi))*(1 - 1/(2u**2) + ...) for u >> 0, where erfc(u) itself underflows (from
    u = 9.2 in float32, 26.6 in float64), and 2*exp(u**2) for u << 0.
    erfcx' = 2*u*erfcx(u) - 2/sqrt(pi).  Prints as torch.special.erfcx and libdevice's erfcx."""

    at = {sympy.S.Zero: sympy.S.One, sympy.S.Infinity: sympy.S.Zero, sympy.S.NegativeInfinity: sympy.S.Infinity}

    def fdiff(self, argindex=1):
        u = self.args[0]
        return 2 * u * erfcx(u) - 2 / sympy.sqrt(sympy.pi)

    def _eval_rewrite_as_erfc(self, arg, **kwargs):
        return sympy.exp(arg**2) * sympy.erfc(arg)

    def _eval_evalf(self, prec):
        arg = self.args[0].evalf(prec)
        if not arg.is_Float:
            return None
        with mpmath.workprec(prec):
            return sympy.Float(_mp_erfcx(mpmath.mpf(arg)), precision=prec)


class sigmoid(_PositiveOnReals):
    """sigmoid(u) = 1 / (1 + exp(-u)); sigmoid' = sigmoid * (1 - sigmoid)."""

    at = {sympy.S.Zero: sympy.S.Half, sympy.S.Infinity: sympy.S.One, sympy.S.NegativeInfinity: sympy.S.Zero}

    def fdiff(self, argindex=1):
        s = sigmoid(self.args[0])
        return s * (1 - s)

    def _eval_rewrite_as_exp(self, arg, **kwargs):
        return 1 / (1 + sympy.exp(-arg))


class softplus(_PositiveOnReals):
    """softplus(u) = log(1 + exp(u)); softplus' = sigmoid."""

    # (at 0: a numerator softplus(x) - log(2) is 0 at 0, 0/0 there, not zoo*0)
    at = {sympy.S.Zero: sympy.log(2), sympy.S.Infinity: sympy.S.Infinity, sympy.S.NegativeInfinity: sympy.S.Zero}

    def fdiff(self, argindex=1):
        return sigmoid(self.args[0])

    def _eval_rewrite_as_exp(self, arg, **kwargs):
        return sympy.log(1 + sympy.exp(arg))

    def _eval_rewrite_as_log(self, arg, **kwargs):
        return sympy.log(1 + sympy.exp(arg))


class uniform(sympy.Function):
    """uniform(lo, hi, k): the formula's draw number k from U(lo, hi), a fresh one per element
    in training mode; in evaluation mode its mean (lo + hi)/2.  The index k keeps two draws with
    the same bounds apart (sympy would otherwise take them for one value); it prints as
    uniform(lo, hi)."""

    nargs = 3

    @property
    def is_number(self):
        """A random value, not a number, even with numbers for bounds: sympy must not try to
        decide a comparison with it (uniform(0, 1) < 1 took it minutes to give up on)."""
        return False

    def _eval_is_real(self):
        lo, hi, _ = self.args
        return True if lo.is_real and hi.is_real else None

    def _sympystr(self, printer):
        lo, hi, _ = self.args
        return f"uniform({printer._print(lo)}, {printer._print(hi)})"


def mean_of_draws(expr: sympy.Expr) -> sympy.Expr:
    """expr in evaluation mode: every uniform(lo, hi) at its mean (lo + hi)/2."""
    return expr.replace(uniform, lambda lo, hi, k: (lo + hi) / 2)


# --- the functions in mpmath, for sympy.lambdify(..., modules=[MPMATH_FUNCTIONS, "mpmath"]) ---
_HUGE = mpmath.mpf(10) ** 100        # exp of an argument beyond this is 0 or inf for any float


def _mp_exp(u):
    if u < -_HUGE:
        return mpmath.mpf(0)
    if u > _HUGE:
        return mpmath.inf
    return mpmath.exp(u)


def _mp_sigmoid(u):
    return 1 / (1 + _mp_exp(-u))


def _mp_softplus(u):
    return u + mpmath.log1p(_mp_exp(-u)) if u > 0 else mpmath.log1p(_mp_exp(u))


def _mp_erf(u):
    return mpmath.sign(u) if abs(u) > _HUGE else mpmath.erf(u)


def _mp_erfc(u):
    return 1 - mpmath.sign(u) if abs(u) > _HUGE else mpmath.erfc(u)


_ASYMPTOTIC = 10 ** 6          # erfcx's asymptotic series gains 12 digits a term beyond this


def _mp_erfcx(u):
    """exp(u**2)*erfc(u) to the working precision: the square exact (bits for u's own two
    significands), and for u > _ASYMPTOTIC the asymptotic series 1/(u*sqrt(pi)) *
    sum (-1)**n (2n - 1)!!/(2u**2)**n, whose terms shrink 2u**2-fold; inf below -_HUGE (as
    _mp_exp's)."""
    if u < -_HUGE:
        return mpmath.inf
    if u > _ASYMPTOTIC:
        if u == mpmath.inf:
            return mpmath.mpf(0)
        term, total, n = mpmath.mpf(1), mpmath.mpf(1), 1
        eps = mpmath.mpf(2) ** (-mpmath.mp.prec - 10)
        while abs(term) > eps:
            term *= -(2 * n - 1) / (2 * u * u)
            total += term
            n += 1
        return total / (u * mpmath.sqrt(mpmath.pi))
    with mpmath.extraprec(2 * mpmath.mp.prec + 64):
        v = mpmath.exp(u * u) * mpmath.erfc(u)
    return +v


_SATURATED = 10 ** 6          # tanh(u) = +-1 to 400000 digits beyond this


def _mp_tanh(u):
    return mpmath.sign(u) if abs(u) > _SATURATED else mpmath.tanh(u)


def _mp_cosh(u):
    return mpmath.inf if abs(u) > _HUGE else mpmath.cosh(u)


def _mp_sinh(u):
    return mpmath.sign(u) * mpmath.inf if abs(u) > _HUGE else mpmath.sinh(u)


def _mp_expm1(u):
    return _mp_exp(u) - 1 if abs(u) > _SATURATED else mpmath.expm1(u)


class Oscillates(ArithmeticError):
    """sin, cos or tan of an argument beyond 2**60: float64 holds no period of it (no limit
    to read off), and mpmath would reduce it modulo pi to as many digits as it has."""


def _mp_periodic(fn):
    def periodic(u):
        if abs(u) > 2 ** 60:
            raise Oscillates(fn.__name__)
        return fn(u)
    return periodic


#: exp, expm1, sigmoid, softplus, erf, erfc, erfcx, tanh, sinh and cosh with astronomically large
#: arguments taken to their limits (exp(-exp(x)) at x = 1e30 would otherwise need 10**29
#: digits, and mpmath's tanh of exp(1e12) runs out of memory).  (cos(sinh(x)) at 1e30 would
#: reduce e**1e30 modulo pi: see MPMATH_AT_HUGE.)
MPMATH_FUNCTIONS = {
    "exp": _mp_exp, "sigmoid": _mp_sigmoid, "softplus": _mp_softplus, "log1p": mpmath.log1p,
    "expm1": _mp_expm1, "erf": _mp_erf, "erfc": _mp_erfc, "erfcx": _mp_erfcx, "tanh": _mp_tanh, "sinh": _mp_sinh,
    "cosh": _mp_cosh,
}
#: ... and for reading limits off huge points (actgen.derive): sin, cos and tan there raise
#: Oscillates.
MPMATH_AT_HUGE = MPMATH_FUNCTIONS | {name: _mp_periodic(getattr(mpmath, name)) for name in ("sin", "cos", "tan")}
