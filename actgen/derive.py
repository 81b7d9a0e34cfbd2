"""Derivatives, stability rewrites, guards and CSE: a Spec -> a small kernel IR (`Derivation`).

Everything here is pure sympy (and the precision check's numpy); printers turn the IR into
Triton or torch source.

* Stability rewrites (`REWRITES`, applied bottom-up, in order) turn write-outs into the
  stable primitives: log(1 + exp(u)) -> softplus(u) (c*exp(u): softplus(u + log(c))), 1/(1 + exp(-u)) -> sigmoid(u),
  log(1 + u) -> log1p(u) (log(c + k exp(u) + r) with c + k = 1 -> log1p(k expm1(u) + r)),
  exp(u) - 1 -> expm1(u), log1p(exp(u)) -> softplus(u); and
  remove cancellation and overflow: log(sigmoid(u)) -> -softplus(-u), the log of a product
  of (1 + exp(u))**k as a sum of softplus, log(exp(a) + exp(b)) -> a + softplus(b - a)
  pivoting on the larger (a/2 + b/2 + log(2) where neither is, a = b = -inf included:
  LogSumExp), log(cosh(u)) without cosh, exp(a)/(exp(a) + exp(b)) ->
  sigmoid(a - b), exp(u) sigmoid(-u) -> sigmoid(u), 1 + erf(u) -> erfc(-u),
  1 + tanh(u) -> 2 sigmoid(2u), 1 - sigmoid(u) -> sigmoid(-u), 1 - 2 sigmoid(u) ->
  -tanh(u/2), sigmoid(u) - sigmoid(-u) -> tanh(u/2), expm1(u) sigmoid(-u) -> tanh(u/2)
  ((exp(u) - 1)/(exp(u) + 1)), differences of softplus or sigmoid a
  number apart through their tails, 1 - tanh(u)**2 -> sech(u)**2 in exponentials,
  exp(a) exp(b) -> exp(a + b), u*sign(u) -> |u|, sums over a common denominator that cancel
  symbolically, and over the lowest power of a common sum (ISRU's derivative
  -x**2/(1 + x**2)**(3/2) + 1/sqrt(1 + x**2) -> (1 + x**2)**(-3/2)), sqrt(k u**2 + c) -+
  sqrt(k) u through its conjugate on the side where it cancels, and a Padé approximant near
  0 for expressions of one variable whose terms cancel there (x - tanh(x)).  erfc(-u) stays
  as it is (sympy would write 2 - erfc(u)), and powers of one base in a derivative's product
  are one power (|x|**p/|x| -> |x|**(p - 1), not 0/0 at 0).
* Derivatives are taken symbolically for every input and param (first order for the
  backward kernel, second order for double backward), with the factors common to all terms
  of a sum taken out (the product rule's s + x*s*sigmoid(-x) -> s*(1 + x*sigmoid(-x))).  The derivative of a Piecewise is the
  Piecewise of the derivatives under the same conditions; DiracDelta (from sign and
  Heaviside) is 0 and sign(0) is 0, so abs'(0) = 0 and Max(x, 0)' at 0 is 0 - except where
  the function is smooth across kinks at a number (smooth_at_kinks: symlog's slope at 0 is 1).
* Guards: a value containing a Piecewise gives NaN when an input is NaN (comparisons are
  false on NaN, which would otherwise pick a branch) - guarded unless every branch holds the
  input and every call passes NaN on (mish's ratio, prelu's x or weight*x: two instructions
  less per output); where plain arithmetic would give NaN
  at an infinite input but the limit there exists, the result is that limit: derived at
  compile time where it does not depend on params or constants (or is such a limit times a
  factor free of that input: a gated b * silu(a)), read off at run time where it does
  (x * sigmoid(beta * x): 0 or -inf by the sign of beta), see LimitAtInf.
* Huge finite inputs: where an output of one input reaches its limit to double precision
  within float64's range and plain arithmetic would pass through inf or NaN on the way
  (x**3 overflowing, then inf * 0), the input is clamped at that point (Saturate, see
  saturate); sqrt(k u**2 + c) becomes hypot (hypot_form), polynomials in an input Horner
  form (horner_form), and ratios of polynomials in an input are scaled by the power of two
  above max(1, |x|) to each polynomial's degree, a sum of them over one denominator
  (rational_form: PAU's P/Q and the quotient rule's P'/Q - P Q'/Q**2, whose leading terms
  then cancel exactly).  Near float32's top, a sum of an input's terms over a sum of params
  alone is the terms times the weights (weights_form: a softmax mix), a param times a branch
  that squares an input goes into the branch (factor_into_branches), and softplus(k*x)/k is
  x + softplus(-k*x)/k where k*x > 0 (scaled_softplus_form).  The printers pair the varying
  factors of a product above and below the line (actgen.printers.base).
* One exponential: an output that is a rational function of exp(u) (u a multiple of an
  input) built from softplus, tanh, sigmoid and logs - mish's x*tanh(softplus(x)) and its
  derivative - becomes one ratio N/D of polynomials in e = exp(-|u|), branching on the sign
  of u (exp_rational_form): one exponential instead of up to five calls, and the rounding
  errors of the calls no longer meet where the derivative's terms cancel.
* Numbers: the numbers of each product become one coefficient (fold_constants:
  0.5*sqrt(2)/sqrt(pi) -> 0.3989...), so a kernel rounds once where it would round at each.
* Fast variants: the same values without the guards, for the eager fallback's CPU path
  when every input is finite (the guards only act on NaN and +-inf inputs); none where a
  condition depends on a branch choice (the fast path's selects are checked through the
  values they feed, which a condition does not pass on).
* Precision: f and df/d(input), in the fallback's and the kernels' forms, are evaluated in
  float32 over a grid (actgen.precision); a direction with an output beyond the accuracy
  target there is computed in float64 (`Derivation.float64_forward`, `float64_backward`).
* CSE: shared subexpressions become named temporaries `_t0, _t1, ...`, numbered in a
  stable order; values used once stay inline.  An input's clamp and its scaled v and w are
  named first (`_clamped_x`, `_v_x`, `_w_x`).
* Random draws: the k-th `uniform(lo, hi)` of a formula becomes lo + (hi - lo)*_rk, with _rk
  a symbol the derivatives treat as a constant: per element U[0, 1) in training mode and
  exactly 1/2 in evaluation mode, so one derivation serves both (see replace_draws).
"""
from __future__ import annotations

import functools
import itertools
import math
import sys
from collections import Counter
from dataclasses import dataclass
from itertools import combinations_with_replacement
from typing import Callable, Sequence

import mpmath
import numpy as np
import sympy

from sympy.codegen.cfunctions import hypot

from . import precision
from .functions import MPMATH_AT_HUGE, Oscillates, erfc, erfcx, erfcx_float, expm1, log1p, sigmoid, softplus, uniform
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
    """log(1 + exp(u)) and log1p(exp(u)) -> softplus(u), and with c*exp(u) for a number c > 0
    softplus(u + log(c)): exp(u) overflows for u >> 0, softplus does not (log(1 + 2*exp(x))
    was inf from x = 89 in float32)."""
    rest = _one_plus(e.args[0]) if isinstance(e, sympy.log) else e.args[0] if isinstance(e, log1p) else None
    if rest is None:
        return None
    coeff, term = rest.as_coeff_Mul()
    if _exp_arg(term) is not None and coeff.is_positive:
        return softplus(_exp_arg(term) + sympy.log(coeff))
    return None


def rewrite_log_of_product(e):
    """log(c * (1 + exp(u))**k * sigmoid(w)**j ...) -> log(c) + k*softplus(u) - j*softplus(-w) + ...:
    a ratio of such factors
    (SoftClip's log((1 + exp(a*x))/(1 + exp(a*(x - 1))))) overflows to inf/inf where the sum
    of its softplus does not."""
    if not isinstance(e, sympy.log) or not isinstance(e.args[0], sympy.Mul):
        return None
    out = []
    for f in e.args[0].args:
        if f.is_number and f.is_positive:
            out.append(sympy.log(f))
            continue
        base, k = f.as_base_exp()
        if not k.is_Integer:
            return None
        if isinstance(base, sigmoid):           # (1 + exp(-w))**-1, rewritten already
            out.append(-k * softplus(-base.args[0]))
            continue
        rest = _one_plus(base)
        if rest is None or _exp_arg(rest) is None:
            return None
        out.append(k * softplus(_exp_arg(rest)))
    return sympy.Add(*out)


def rewrite_sigmoid(e):
    """(1 + exp(u))**-n -> sigmoid(-u)**n for a whole n > 0, where 1 + exp(u) may overflow
    for n > 1 (u <= 0 is sech**2's own ratio of one exponential, see rewrite_sech2)."""
    if isinstance(e, sympy.Pow) and e.exp.is_Integer and e.exp < 0:
        rest = _one_plus(e.base)
        u = None if rest is None else _exp_arg(rest)
        if u is not None and (e.exp == -1 or not _nonpositive(u)):
            return sigmoid(-u) ** -e.exp
    return None


def rewrite_power_of_one_plus_exp(e):
    """(1 + c*exp(u))**p with p not a whole number (a param, 1/2) and a number c > 0 ->
    exp(p*softplus(u + log(c))): 1 + exp(u) overflows where its power would not (the ARiA
    unit (1 + exp(-b*x))**(-a) was 0 from x = -30 in float32 with b = 3, a = 1/2, where it is
    2.9e-20, and its slopes NaN from x = -700).  (A whole negative power is a sigmoid's:
    rewrite_sigmoid.)"""
    if not isinstance(e, sympy.Pow) or e.exp.is_Integer:
        return None
    rest = _one_plus(e.base)
    if rest is None:
        return None
    coeff, term = rest.as_coeff_Mul()
    u = _exp_arg(term)
    if u is None or not coeff.is_positive:
        return None
    return sympy.exp(e.exp * softplus(u + sympy.log(coeff)))


def rewrite_sigmoid_power(e):
    """sigmoid(u)**p with p not a number (a param, a constant) -> exp(-p*softplus(-u)): the
    sigmoid underflows first where its power would not (x*sigmoid(x)**p at x = -200, p =
    0.01 was 0, where it is -27).  exp's argument, rounded, costs |p*u| rounding errors, as
    the value's condition number in p does (30 ULP at u = -30, p = 2.5 in float64, against a
    condition number of 75).  A whole-number power stays a product of sigmoids."""
    if isinstance(e, sympy.Pow) and isinstance(e.base, sigmoid) and not e.exp.is_number:
        return sympy.exp(-e.exp * softplus(-e.base.args[0]))
    return None


def _nonpositive(u) -> bool:
    """Whether u <= 0 for every real value of its symbols (-2*|x/c| is, whatever c)."""
    coeff, rest = u.as_coeff_Mul()
    return bool(u.is_nonpositive) or (coeff.is_negative and isinstance(rest, sympy.Abs))


def _power_of(f, cls):
    """(f's base, its whole exponent) where f is cls(...) or a whole positive power of one, else None."""
    if isinstance(f, cls):
        return f, 1
    if isinstance(f, sympy.Pow) and isinstance(f.base, cls) and f.exp.is_Integer and f.exp > 0:
        return f.base, int(f.exp)
    return None


def _factor_pairs(e, cls):
    """(u, g, the other factors) for every factor cls(u) of a product e, or whole power cls(u)**k
    (cls(u)**(k - 1) then among the other factors: sinh(x)**3 / (exp(x) + exp(-x))**3, a tanh
    written out and cubed), and every other factor g."""
    if not isinstance(e, sympy.Mul):
        return
    for f in e.args:
        found = _power_of(f, cls)
        if found is not None:
            base, k = found
            for g in e.args:
                if g is not f:
                    yield base.args[0], g, [a for a in e.args if a is not f and a is not g] + [base ** (k - 1)]


def rewrite_exp_sigmoid(e):
    """exp(u) * sigmoid(-u)**n -> sigmoid(u) * sigmoid(-u)**(n - 1): exp(u) overflows where
    sigmoid(-u) underflows, their product (sigmoid(u)) does neither (exp(x)/(1 + exp(x)) and
    its square's derivative as written)."""
    for u, g, rest in _factor_pairs(e, sympy.exp):
        found = _power_of(g, sigmoid)
        if found is not None and found[0].args[0] == -u:
            return sympy.Mul(*rest) * sigmoid(u) * sigmoid(-u) ** (found[1] - 1)
    return None


def _ratio_over_power(e, num, den, ratio):
    """num(u) * den(u)**-n (a whole n > 0) among e's factors -> ratio(u) * den(u)**-(n - 1),
    ratio(u) being num(u)/den(u) in a form that does not overflow where both do; else None."""
    for u, g, rest in _factor_pairs(e, num):
        if (isinstance(g, sympy.Pow) and isinstance(g.base, den) and g.base.args[0] == u
                and g.exp.is_Integer and g.exp < 0):
            return sympy.Mul(*rest) * ratio(u) * g.base ** (g.exp + 1)
    return None


def rewrite_sinh_over_cosh(e):
    """sinh(u) / cosh(u)**n -> tanh(u) / cosh(u)**(n - 1): sinh and cosh overflow together
    where their ratio is +-1 (inf/inf), and tanh(x) written as sinh(x)/cosh(x) keeps the
    tail of its derivative (1/cosh(x)'s derivative -sinh(x)/cosh(x)**2 is NaN at |x| > 89
    in float32, -tanh(x)/cosh(x) is 0 there)."""
    return _ratio_over_power(e, sympy.sinh, sympy.cosh, sympy.tanh)


def rewrite_cosh_over_sinh(e):
    """cosh(u) / sinh(u)**n -> 1 / (tanh(u) * sinh(u)**(n - 1)), as above (x/sinh(x)'s
    derivative 1/sinh(x) - x*cosh(x)/sinh(x)**2 was NaN at |x| > 89 in float32)."""
    return _ratio_over_power(e, sympy.cosh, sympy.sinh, lambda u: 1 / sympy.tanh(u))


def _exp_pair(e):
    """(u, c, sign) for a sum of exactly c*exp(u) and sign*c*exp(-u) (sign +-1, c a number),
    else None."""
    if type(e) is not sympy.Add or len(e.args) != 2:
        return None
    (c1, t1), (c2, t2) = (t.as_coeff_Mul() for t in e.args)
    if not (isinstance(t1, sympy.exp) and isinstance(t2, sympy.exp)) or sympy.expand(t1.args[0] + t2.args[0]) != 0:
        return None
    if c2 == c1:
        return t1.args[0], c1, 1
    if c2 == -c1:
        return t1.args[0], c1, -1
    return None


def rewrite_sinh(e):
    """c*exp(u) - c*exp(-u) -> 2c*sinh(u): the difference cancels near u = 0 (tanh written
    out with exponentials was 0 at x = 1e-30, and 3.7e7 ULP off at 1e-8 in float64)."""
    pair = _exp_pair(e)
    if pair is None or pair[2] != -1:
        return None
    u, c, _ = pair
    return 2 * c * sympy.sinh(u)


def rewrite_sinh_over_exp_sum(e):
    """sinh(u) / (c*exp(u) + c*exp(-u))**n -> tanh(u)/(2c) / (...)**(n - 1): the sum is
    2c*cosh(u), and sinh over cosh is tanh, which does not overflow where both do (the
    tanh written out, once its numerator is sinh)."""
    for u, g, rest in _factor_pairs(e, sympy.sinh):
        pair = _exp_pair(g.base) if isinstance(g, sympy.Pow) and g.exp.is_Integer and g.exp < 0 else None
        if pair is not None and pair[2] == 1 and 0 in (sympy.expand(pair[0] - u), sympy.expand(pair[0] + u)):
            return sympy.Mul(*rest) * sympy.tanh(u) / (2 * pair[1]) * g.base ** (g.exp + 1)
    return None


def rewrite_exp_over_expm1(e):
    """exp(u) / expm1(u)**n -> -1 / (expm1(u)**(n - 1) * expm1(-u)): exp(u)/(exp(u) - 1) is
    1/(1 - exp(-u)), where exp(u) and expm1(u)**n overflow, the ratio does not (the
    derivative of x/(exp(x) - 1), x*exp(x)/expm1(x)**2, was inf/inf for x > 44 in float32, and
    went wrong from 355 in float64 where the square alone overflows)."""
    return _ratio_over_power(e, sympy.exp, expm1, lambda u: -1 / expm1(-u))


def _exp_terms(e):
    """The arguments of a sum of exactly two exponentials exp(a) + exp(b), else None."""
    if type(e) is sympy.Add and len(e.args) == 2 and all(isinstance(t, sympy.exp) for t in e.args):
        return e.args[0].args[0], e.args[1].args[0]
    return None


def rewrite_exp_ratio(e):
    """exp(a) / (exp(a) + exp(b))**n -> sigmoid(a - b) / (exp(a) + exp(b))**(n - 1): exp(a)
    and exp(b) overflow, the ratio does not (a two-way softmax of two inputs, or of an
    input and a param)."""
    for a, d, rest in _factor_pairs(e, sympy.exp):
        pair = _exp_terms(d.base) if isinstance(d, sympy.Pow) and d.exp.is_Integer and d.exp < 0 else None
        if pair is not None and a in pair:
            b = pair[1] if a == pair[0] else pair[0]
            return sympy.Mul(*rest) * sigmoid(a - b) * d.base ** (d.exp + 1)
    return None


def rewrite_exp_over_exp_square_sum(e):
    """exp(u) / (c + k*exp(2u))**n (c, k > 0 numbers) -> 1 / (2*sqrt(c*k)*cosh(u - log(c/k)/2))
    / (...)**(n - 1): the sum is exp(u) times that cosh, and exp(u) and the sum overflow
    together where the ratio tends to 0 (atan(exp(x))'s slope exp(x)/(1 + exp(2x)) was
    NaN past x = 355 in float64).  exp(u) * sigmoid(-2u)**n, the same for c = k = 1, likewise."""
    for u, d, rest in _factor_pairs(e, sympy.exp):
        found = _power_of(d, sigmoid)
        if found is not None and sympy.expand(found[0].args[0] + 2 * u) == 0:
            return sympy.Mul(*rest) / (2 * sympy.cosh(u)) * found[0] ** (found[1] - 1)
        if not (isinstance(d, sympy.Pow) and d.exp.is_Integer and d.exp < 0 and type(d.base) is sympy.Add
                and len(d.base.args) == 2):
            continue
        c, t = d.base.as_coeff_Add()
        k, t = t.as_coeff_Mul()
        if (c.is_positive and k.is_positive and isinstance(t, sympy.exp)
                and sympy.expand(t.args[0] - 2 * u) == 0):
            cosh = 2 * sympy.sqrt(c * k) * sympy.cosh(u - sympy.log(c / k) / 2)
            return sympy.Mul(*rest) / cosh * d.base ** (d.exp + 1)
    return None


def rewrite_log1p(e):
    """log(1 + u) -> log1p(u); and log(c + k*exp(u) + ...) with c + k + ... = 1 (numbers) ->
    log1p(k*expm1(u) + ...), 1 where every u is 0: log(2 - exp(-x**2)) is about x**2 near
    x = 0, where 2 - exp(-x**2) rounds to 1 (0 at x = 1e-12 in float32, 820 ULP off at
    1e-6)."""
    if isinstance(e, sympy.log):
        rest = _one_plus(e.args[0])
        if rest is None:
            rest = _one_plus_expm1(e.args[0])
        if rest is not None:
            return log1p(rest)
    return None


def _one_plus_expm1(e):
    """If e is c + k1*exp(u1) + k2*exp(u2) + ... + rest with numbers c != 1 and k1 + k2 + ...
    = 1 - c, return k1*expm1(u1) + k2*expm1(u2) + ... + rest (log(x**2 + exp(-x**2)) as
    log1p(x**2 + expm1(-x**2)), whose argument then cancels near 0 in one sum)."""
    if not isinstance(e, sympy.Add):
        return None
    c, terms = e.as_coeff_add()
    pairs = [t.as_coeff_Mul() for t in terms]
    exps = [(k, f) for k, f in pairs if isinstance(f, sympy.exp)]
    if c == 1 or not exps or c + sum(k for k, _ in exps) != 1:
        return None
    rest = [t for t, (_, f) in zip(terms, pairs) if not isinstance(f, sympy.exp)]
    return sympy.Add(*[k * expm1(f.args[0]) for k, f in exps], *rest)


class Branches(sympy.Piecewise):
    """A rewrite's branches, a Piecewise of its own class (what the rewrites and the
    derivatives tell apart), printed as the Piecewise it is."""

    def _sympystr(self, printer):
        return printer.doprint(sympy.Piecewise(*self.args))


class DerivedAsWritten(Branches):
    """A rewrite's branches, final (the rewrites leave them as they are), whose derivative is
    that of the expression as written: its branch WRITTEN."""

    WRITTEN = -1

    def written(self) -> sympy.Expr:
        return self.args[self.WRITTEN].expr

    def _eval_derivative(self, s):
        return sympy.diff(self.written(), s)


def rewrite_log_of_power(e):
    """log(w**k) -> k*log(|w|) for an even integer k, k*log(w) for any other number k (for
    w < 0 both are NaN, w**k negative or not real): w**k over- or underflows, or rounds to
    1, where its log does not (x**2*log(x**2) was 0*-inf = NaN at x = 1e-30 in float32,
    where x**2 underflows and 2*x**2*log|x| is 0; log(sqrt(1 + x)) 820 ULP off at 1e-12,
    where it is log1p(x)/2)."""
    if not (isinstance(e, sympy.log) and e.args[0].is_Pow):
        return None
    w, k = e.args[0].args
    if not (k.is_number and k.is_real and w.free_symbols):
        return None
    if k.is_integer and k.is_even and not w.is_nonnegative:
        return k * sympy.log(sympy.Abs(w))
    return k * sympy.log(w)


def rewrite_vanishing_times_log(e):
    """x**k * log(v) * rest of one input x, v = x, |x| or a positive power of either, k > 0
    in all (|x|**k too), rest finite at x = 0 -> 0 at x = 0, as written elsewhere: the limit
    there, where the product is 0*-inf = NaN as written (x*log(x), -x*log(x) of an entropy,
    is 0 at 0, as torch.xlogy has it).  Its derivative is the product's as written
    (log|x| + 1 for x*log|x|, -inf at 0)."""
    if not isinstance(e, sympy.Mul) or len(e.free_symbols) != 1:     # (a param's NaN stays NaN at 0)
        return None
    logs = [f for f in e.args if isinstance(f, sympy.log)]
    if len(logs) != 1:
        return None
    x = _vanishing_base(logs[0].args[0])
    if x is None:
        return None
    order = sympy.S.Zero        # (the power of x the product vanishes with)
    for f in e.args:
        if f is logs[0]:
            continue
        if _vanishing_base(f) == x:
            order += f.exp if f.is_Pow else 1
        elif f.has(x) and not f.subs(x, 0).is_finite:
            return None
    if not order.is_positive:
        return None
    return VanishingTimesLog((0, sympy.Abs(x) <= 0), (e, True))


def _vanishing_base(f):
    """x where f is x, |x|, or a power of either with a positive exponent (0 where x is),
    else None."""
    if f.is_Pow:
        if not (f.exp.is_number and f.exp.is_positive):
            return None
        f = f.base
    if isinstance(f, sympy.Abs):
        f = f.args[0]
    return f if f.is_Symbol else None


class VanishingTimesLog(DerivedAsWritten):
    """x**k * log(v) * rest as rewrite_vanishing_times_log computes it: 0 at x = 0."""


def rewrite_log_expm1(e):
    """log(expm1(u)) -> u + log(-expm1(-u)): the inverse of softplus (a positive param's
    usual parametrization) as written overflows to inf for u > 88 in float32, where it is ~u;
    for u < 0 both are NaN, at 0 both -inf."""
    if isinstance(e, sympy.log) and isinstance(e.args[0], expm1):
        u = e.args[0].args[0]
        return u + sympy.log(-expm1(-u))
    return None


def _one_minus_exp_of(e):
    """u where e is log(-expm1(u)) or log1p(-exp(u)) (log(1 - exp(u)), as the rewrites above
    leave it or as it is written), else None."""
    if isinstance(e, sympy.log) and isinstance(-e.args[0], expm1):
        return (-e.args[0]).args[0]
    if isinstance(e, log1p) and isinstance(-e.args[0], sympy.exp):
        return (-e.args[0]).args[0]
    return None


class Log1mExp(DerivedAsWritten):
    """log(1 - exp(u)), u <= 0, as rewrite_log_one_minus_exp computes it: log1p(-exp(u)) for
    u < -log(2), log(-expm1(u)) above (Maechler's log1mexp); its derivative is
    log(-expm1(u))'s."""


def rewrite_log_one_minus_exp(e):
    """log(-expm1(u)) (and log1p(-exp(u))) -> Log1mExp(u): -expm1(u) rounds near 1 for u << 0,
    where its log is about -exp(u) (log(1 - exp(-x)) was 2e-8 off, relative, at x = 20 in
    float64, and 0 from x = 40), and 1 - exp(u) cancels near u = 0 in log1p's form."""
    u = _one_minus_exp_of(e)
    if u is None or len(u.free_symbols) != 1:
        # (of one variable only: with a param in u, sympy's own log1p, evaluated at the huge
        # probes the limits are read off, takes minutes to turn the number into a fraction)
        return None
    return Log1mExp((log1p(-sympy.exp(u)), u < -sympy.log(2)), (sympy.log(-expm1(u)), True))


#: Below this u, log(softplus(u)) is u to within exp(u)/2 < 2.2e-18 (relative, less): its
#: value and slope 1 are exact in float64, where softplus(u) itself underflows from -745 on.
LOG_SOFTPLUS_LINEAR = -40


class LogSoftplus(Branches):
    """log(softplus(u)) as rewrite_log_softplus computes it: u below LOG_SOFTPLUS_LINEAR
    (where softplus(u) is still normal in float32), log(softplus(u)) above.  Its branches are
    final; its derivative is sigmoid(u)/softplus(u), and 1 below LOG_SOFTPLUS_LINEAR (0/0
    where both underflow)."""

    def _eval_derivative(self, s):
        u = self.args[0].expr
        du = sympy.diff(u, s)
        return sympy.Piecewise((du, u < LOG_SOFTPLUS_LINEAR), (sigmoid(u) * du / softplus(u), True))


def rewrite_log_softplus(e):
    """log(softplus(u)) -> LogSoftplus(u): softplus(u) underflows to 0 for u < -745 in
    float64 (-103 in float32, where the kernels compute 16-bit data, and is subnormal from
    -87), where its log is about u: log(0) = -inf there (log(softplus(x)) at x = -746)."""
    if not (isinstance(e, sympy.log) and isinstance(e.args[0], softplus)):
        return None
    u = e.args[0].args[0]
    if len(u.free_symbols) != 1:        # (as rewrite_log_one_minus_exp: of one variable only)
        return None
    return LogSoftplus((u, u < LOG_SOFTPLUS_LINEAR), (sympy.log(softplus(u)), True))


#: From this u on, log(erfc(u)) is computed as -u**2 + log(erfcx(u)): both terms are negative
#: for u > 0 (no cancellation), and erfcx(u) = exp(u**2)*erfc(u) neither underflows, where
#: erfc(u) is 0 from u = 9.2 in float32 (subnormal from 9.1) and 26.6 in float64, nor takes
#: the exponential of a rounded u**2, whose rounding costs exp(-u**2) in the slope about
#: u**2/2 ULP (relative).
LOG_ERFC_SCALED = 1
#: Below this |u|, log(erfc(u)) is computed as log1p(-erf(u)): erfc(u) is near 1 there, and
#: log(erfc(u)), about -2u/sqrt(pi), was left with erfc(u)'s rounding (12.7 float32 ULP at
#: u = -1/32, more the closer to 0); |erf(u)| < 0.53 there, so 1 - erf(u) cancels less than
#: twofold.
LOG_ERFC_NEAR_ZERO = sympy.Rational(1, 2)


class LogErfc(Branches):
    """log(erfc(u)) as rewrite_log_erfc computes it: log1p(-erf(u)) for |u| < LOG_ERFC_NEAR_ZERO,
    log(erfc(u)) elsewhere below LOG_ERFC_SCALED (erfc(u) between 0.15 and 2 there), and
    -u**2 + log(erfcx(u)) from it on.  Its branches are final; its derivative is
    -2*exp(-u**2)/(sqrt(pi)*erfc(u))*u' below LOG_ERFC_SCALED, and -2/(sqrt(pi)*erfcx(u))*u'
    from it on (the far branch's own, -2u + erfcx'(u)/erfcx(u), with its two terms of about 2u
    cancelled: erfcx' = 2u*erfcx(u) - 2/sqrt(pi))."""

    def __new__(cls, *args, **options):
        """As a Piecewise, but where sympy decides every condition but one (u = x**2 + 1 is
        never below 1) the branch left stays a LogErfc, whose derivative is still its own
        (-u**2 + log(erfcx(u)) differentiated as written has terms of about 2u*u' that cancel)."""
        obj = super().__new__(cls, *args, **options)
        if isinstance(obj, cls):
            return obj
        pairs = []
        for ec in args:
            pair = sympy.functions.elementary.piecewise.ExprCondPair(*getattr(ec, "args", ec))
            if pair.cond is sympy.false:
                continue
            pairs.append(pair)
            if pair.cond is sympy.true:
                break
        return sympy.Basic.__new__(cls, *pairs) if len(pairs) == 1 else obj

    def argument(self) -> sympy.Expr | None:
        """u, from the call in the branch log(erfc(u)) or -u**2 + log(erfcx(u)) (erf(u) in the
        first would not do: sympy writes erf(-v) as -erf(v)); None where sympy has decided
        both away (|u| < 1/2 for every x: log1p(-erf(u)) alone)."""
        calls = [f for e, _ in self.args for f in sympy.preorder_traversal(e) if isinstance(f, (sympy.erfc, erfcx))]
        return calls[0].args[0] if calls else None

    def _eval_derivative(self, s):
        u = self.argument()
        if u is None:
            return sympy.diff(self.args[0].expr, s)
        du = sympy.diff(u, s)
        c = 2 / sympy.sqrt(sympy.pi)
        return sympy.Piecewise((-c * sympy.exp(-u**2) / erfc(u) * du, u < LOG_ERFC_SCALED),
                               (-c / erfcx(u) * du, True))


def rewrite_log_erfc(e):
    """log(c*erfc(u)), c a number > 0 -> log(c) + LogErfc(u): erfc(u) underflows to 0 from
    u = 9.2 in float32 and 26.6 in float64, where log(erfc(u)) is about -u**2 - log(u*sqrt(pi)):
    it was log(0) = -inf there, and its slope, about -2u, 0/0 = NaN (log(erfc(x)) at x = 27
    in float64; the log of the normal CDF, log(erfc(-x/sqrt(2))/2), from x = -37.7)."""
    if not isinstance(e, sympy.log):
        return None
    coeff, rest = e.args[0].as_coeff_Mul()
    if not (isinstance(rest, sympy.erfc) and coeff.is_positive):
        return None
    u = rest.args[0]
    return sympy.log(_exact(coeff)) + LogErfc((log1p(-sympy.erf(u)), sympy.Abs(u) < LOG_ERFC_NEAR_ZERO),
                                              (sympy.log(erfc(u)), u < LOG_ERFC_SCALED),
                                              (-u**2 + sympy.log(erfcx(u)), True))


def rewrite_scaled_erfc(e):
    """exp(u**2)*erfc(u) -> erfcx(u): erfc underflows (from u = 26.6 in float64) where the
    product is ~1/(u*sqrt(pi)), and exp(u**2) overflows first (from u = 26.7): inf*0 = NaN
    there."""
    if not isinstance(e, sympy.Mul):
        return None
    for f in e.args:
        if isinstance(f, sympy.erfc):
            u = f.args[0]
            for g in e.args:
                if isinstance(g, sympy.exp) and sympy.expand(g.args[0] - u**2) == 0:
                    return sympy.Mul(*(a for a in e.args if a is not f and a is not g)) * erfcx(u)
    return None


class Log1pPower(Branches):
    """log1p(B**p), B >= 0 and p of params or constants, as rewrite_log1p_of_power computes it:
    log1p(B**p) where B**p <= 1, else p*log(B) + log1p(B**-p).  Its branches are final (the
    rewrites leave them as they are); its derivatives are its branches'."""

    def _eval_derivative(self, s):
        return sympy.Piecewise(*[(sympy.diff(e, s), c) for e, c in self.args])


def rewrite_log1p_of_power(e):
    """log1p(B**p) with B >= 0 and an exponent p of params or constants -> Log1pPower: past
    B**p = 1 it is p*log(B) + log1p(B**-p), so B**p overflowing does not make it inf
    (log(1 + |x|**p) at x = 1e200, p = 2 in float64) nor its gradient in p inf/inf = NaN
    (x = 1e20 in float32)."""
    if not (isinstance(e, log1p) and isinstance(e.args[0], sympy.Pow)):
        return None
    base, p = e.args[0].args
    if p.is_number or not base.free_symbols or base.free_symbols & p.free_symbols or not base.is_nonnegative:
        return None
    t = base ** p
    return Log1pPower((e, t <= 1), (p * sympy.log(base) + log1p(base ** (-p)), True))


def rewrite_constant_over_sum(e):
    """c + k/D -> c*(D - d)/D for a sum D = d + rest with c*d + k = 0: the pair cancels where
    rest is small (x - log(1 + x)'s slope 1 - 1/(1 + x) -> x/(1 + x): 668 ULP off at
    x = 1e-3 in float64, and 0 at 1e-30 in float32)."""
    if not _is_sum(e):
        return None
    numbers, _ = _numbers_and_terms(e)
    for c in numbers:
        for term in e.args:
            k, rest = term.as_coeff_Mul()
            if isinstance(rest, sympy.Pow) and rest.exp == -1 and _is_sum(rest.base):
                d, others = rest.base.as_coeff_Add()
                if d != 0 and c * d + k == 0:
                    return _replace_pair(e, term, c, c * others / rest.base)
    return None


def rewrite_one_plus_inverse_expm1(e):
    """c + c/expm1(u) -> -c/expm1(-u) (both are c*exp(u)/expm1(u)): the sum cancels for u < 0
    (log(expm1(x))'s derivative 1 + 1/expm1(x) as the rewrite above leaves it)."""
    if not isinstance(e, sympy.Add):
        return None
    for term in e.args:
        coeff, rest = term.as_coeff_Mul()
        if isinstance(rest, sympy.Pow) and rest.exp == -1 and isinstance(rest.base, expm1) and coeff in e.args:
            others = [a for a in e.args if a is not term and a != coeff]
            return sympy.Add(*others) - coeff / expm1(-rest.base.args[0])
    return None


def _minus_value_at_zero(e, cls, stable):
    """c*g(u) - c -> c*stable(u) for the function g = cls (g(0) = 1), c a number or a product
    of factors free of g (a param: sympy distributes a*(exp(u) - 1) into a*exp(u) - a)."""
    if not isinstance(e, sympy.Add):
        return None
    for term in e.args:
        for factor in sympy.Mul.make_args(term):
            if isinstance(factor, cls):
                c = term / factor
                if not c.has(cls) and -c in e.args:
                    return _replace_pair(e, term, -c, c * stable(factor.args[0]))
    return None


def rewrite_expm1(e):
    """c*exp(u) - c -> c*expm1(u) (sympy distributes c*(exp(u) - 1) into that form)."""
    return _minus_value_at_zero(e, sympy.exp, expm1)


def rewrite_cos_minus_one(e):
    """c*cos(u) - c -> -2*c*sin(u/2)**2: cos(u) rounds to 1 for |u| below 2**-12 in float32
    (a*cos(w*x) - a was 0 there, and 9e-5 off, relative, at w*x = 1e-6 in float64)."""
    return _minus_value_at_zero(e, sympy.cos, lambda u: -2 * sympy.sin(u / 2) ** 2)


def rewrite_expm1_complement(e):
    """t + t*expm1(u) -> t*exp(u): the sum cancels where expm1(u) is near -1 (u << 0:
    x + x*expm1(x) is x*exp(x), 3e5 ULP off at x = -45 as written; its slope 1 + expm1(x) + ...)."""
    if not _is_sum(e):
        return None
    for term in e.args:
        for factor in sympy.Mul.make_args(term):
            if isinstance(factor, expm1):
                rest = term / factor
                if rest != term and rest in e.args:
                    others = list(e.args)
                    others.remove(term)
                    others.remove(rest)
                    return rest * sympy.exp(factor.args[0]) + sympy.Add(*others)
    return None


def _replace_found(expr: sympy.Basic, find: Callable[[sympy.Basic], sympy.Basic | None]) -> sympy.Basic:
    """expr with each node for which find gives a replacement (not None) replaced by it,
    bottom-up as sympy's replace, find run once per node (a query and a value that both run
    it would run it twice per match)."""
    found = {}

    def query(e):
        v = find(e)
        if v is not None:
            found[e] = v
        return v is not None

    return expr.replace(query, lambda e: found[e])


# --- stability rewrites for cancellation and overflow -----------------------------------
# Each turns a write-out that loses accuracy in floating point into an equivalent form that
# does not; where the loss happens only on one side, the stable form is guarded by a
# Piecewise on the sign (its NaN guard comes with it).
class StableSum(sympy.Add):
    """A sum already in stable form, as a branch of a guarded rewrite below: the rewrites of
    sums leave it as it is (they would otherwise rewrite their own branch again), and sympy
    neither distributes a coefficient into it nor merges it into an enclosing sum (is_Add is
    False).  Prints, evaluates and differentiates as a sum."""

    is_Add = False


def _is_sum(e) -> bool:
    return type(e) is sympy.Add


def _far_sum(e):
    """The sum e as an approximant's far branch (StableSum), its terms in exp(u) or expm1(u)
    of one u, where two or more have them, as exp(u) times the sum of their coefficients
    plus the rest (in cosh(u) and sinh(u): cosh(u) times theirs, sinh(u) being
    sign(u)*(cosh(u) - exp(-|u|))): those terms overflow together where exp(u) does, and
    inf - inf was NaN where the value is +-inf (expm1(x)/x's slope, exp(x)/x - expm1(x)/x**2, from x = 89 in
    float32; the soft exponential's gradient in alpha from alpha*x = 89).  Beyond the
    approximant's radius the coefficients do not cancel (exp(x)*(1/x - 1/x**2) + 1/x**2)."""
    if not _is_sum(e):
        return e
    us = {a.args[0] for a in e.atoms(sympy.exp, expm1)}
    hyperbolic = {a.args[0] for a in e.atoms(sympy.cosh, sympy.sinh)}
    if not us and len(hyperbolic) == 1:
        # sinh(u) as sign(u)*(cosh(u) - exp(-|u|)), and the terms in cosh(u) collected: they
        # overflow together, where cosh(u) does (sinh(x)/x's slope, cosh(x)/x - sinh(x)/x**2,
        # was inf - inf = NaN from |x| = 90 in float32, where it is +-inf)
        u, = hyperbolic
        big = sympy.cosh(u)
        if sum(1 for t in e.args if t.has(big, sympy.sinh(u))) >= 2:
            small = sympy.exp(-sympy.Abs(u))
            sign = sympy.Piecewise((1, u > 0), (-1, u < 0), (0, True))     # (as sign() is printed)
            collected = _collected(e.xreplace({sympy.sinh(u): sign * (big - small)}), [big])
            if collected is not None:
                return collected
    if len(us) == 1:
        u, = us
        big = sympy.exp(u)
        if hyperbolic and hyperbolic <= {u, -u}:
            # cosh(u) and sinh(u) with exp(u) (x*exp(x) - sinh(x), inf - inf from x = 89 in
            # float32): in exp(u) and exp(-u), each collected, one of them overflowing
            small = sympy.exp(-u)
            half = {h(v): (sympy.exp(v) + k * sympy.exp(-v)) / 2
                    for v in hyperbolic for h, k in ((sympy.cosh, 1), (sympy.sinh, -1))}
            collected = _collected(e.xreplace({**half, expm1(u): big - 1}), [big, small])
            if collected is not None:
                return collected
        elif sum(1 for t in e.args if t.has(big, expm1(u))) >= 2:
            collected = _collected(e.xreplace({expm1(u): big - 1}), [big])
            if collected is not None:
                return collected
    return StableSum(*e.args)


def _collected(e, bigs):
    """The sum e, expanded, as each of bigs times its coefficient plus the rest (StableSum),
    where that is all of it (no big left in a coefficient or the rest, one big at least
    present); else None."""
    parts = sympy.collect(sympy.expand_mul(e), bigs, evaluate=False)
    cs = [parts.get(b) for b in bigs]
    rest = parts.get(sympy.S.One, sympy.S.Zero)
    if (all(c is None for c in cs) or not set(parts) <= {*bigs, sympy.S.One}
            or any(v is not None and v.has(*bigs) for v in (*cs, rest))):
        return None
    return StableSum(*(b * c for b, c in zip(bigs, cs) if c is not None), *sympy.Add.make_args(rest))


def _numbers_and_terms(e):
    numbers = [a for a in e.args if a.is_Number]
    return numbers, [a for a in e.args if not a.is_Number]


def _number_in(numbers, v):
    """The one of numbers equal to the number v by value, else None: a decimal's Float and a
    fraction are not == in sympy (sigmoid(x) - 0.5 is sigmoid(x) - 1/2)."""
    return next((n for n in numbers if n == v or n - v == 0), None)


def _replace_pair(e, term, other, new):
    """The sum e with its terms term and other as new."""
    others = list(e.args)
    others.remove(term)
    others.remove(other)
    return new + sympy.Add(*others)


def rewrite_log_tanh(e):
    """log(tanh(u)) -> log(-expm1(-2u)) - softplus(-2u) (tanh(u) = (1 - exp(-2u))/(1 +
    exp(-2u)); NaN for u < 0 as before), and log|tanh(u)| alike in |u|: tanh(u) rounds to 1
    far out, where its log is about -2*exp(-2|u|) (log(tanh(x)**2) was 0 at |x| = 30 in
    float32 and 65520 ULP off at 17); near 0 log(-expm1(-2u)) is log1mexp's."""
    if not isinstance(e, sympy.log):
        return None
    arg = e.args[0]
    if isinstance(arg, sympy.Abs) and isinstance(arg.args[0], sympy.tanh):
        u = sympy.Abs(arg.args[0].args[0])
    elif isinstance(arg, sympy.tanh):
        u = arg.args[0]
    else:
        return None
    return sympy.log(-expm1(-2 * u)) - softplus(-2 * u)


def rewrite_log_sigmoid(e):
    """log(sigmoid(u)) -> -softplus(-u): no log(0) = -inf for u << 0, no log(1 - tiny) for u >> 0."""
    if isinstance(e, sympy.log) and isinstance(e.args[0], sigmoid):
        return -softplus(-e.args[0].args[0])
    return None


def _exact(c):
    """A decimal that is a short binary fraction (0.5, 0.25, 3.0) as that fraction, else c:
    its log is then exact (log(0.5*exp(x) + 0.5) is softplus(x) - log(2), 0 at x = 0, where
    the 53-bit log(0.5) left 2.3e-17)."""
    if c.is_Float:
        r = sympy.Rational(c)
        if r.q <= 2**20 and abs(r.p) < 2**40:
            return r
    return c


def _exp_term(t):
    """c * exp(a) with a number c > 0 -> (log(c) + a); a number c > 0 -> log(c); else None."""
    if t.is_Number:
        return sympy.log(_exact(t)) if t.is_positive else None
    coeff, rest = t.as_coeff_Mul()
    if isinstance(rest, sympy.exp) and coeff.is_positive:
        return rest.args[0] + sympy.log(_exact(coeff))
    return None


class LogSumExp(Branches):
    """log(exp(a) + exp(b)) as rewrite_logsumexp computes it: a + softplus(b - a) where a > b,
    b + softplus(a - b) where a < b, and a/2 + b/2 + log(2) where neither holds - a = b,
    also where both are inf or both -inf (b - a is inf - inf there, and the value a itself),
    or a NaN, which that branch passes on.  The sides' expressions are each the function
    itself (log(exp(a) + exp(b)) = a + softplus(b - a) for every a and b; only the last
    branch holds on a = b alone), so its derivative is theirs, the last branch left out:
    1/2 each at a = b, and sigmoid's slope, +-1/4, the second derivatives there."""

    def _eval_derivative(self, s):
        sides = [*self.args[:-1]]
        sides[-1] = (sides[-1].expr, True)
        return sympy.diff(sympy.Piecewise(*sides), s)


def rewrite_logsumexp(e):
    """log(exp(a) + exp(b)) -> a + softplus(b - a) where a >= b, else b + softplus(a - b):
    exp(a) and exp(b) may overflow, the result does not; pivoting on the larger, the smaller
    is not lost in a + (b - a) (a = -1e30, b = 0.5), nor is a = -inf a NaN (the masking
    value of a score).  Where a - b has two variables or more, both can be infinite at once:
    LogSumExp's third branch gives a = b = -inf (both masked) -inf, as torch.logaddexp does
    (a + softplus(b - a) was NaN there).  Each branch is the function itself or, at a = b,
    its value, and the derivative is the formula's, so it is exact at a = b too (1/2 each;
    max(a, b) + softplus(-|a - b|) would give the kinks' 0)."""
    if not isinstance(e, sympy.log) or not isinstance(e.args[0], sympy.Add) or len(e.args[0].args) != 2:
        return None
    parts = [_exp_term(t) for t in e.args[0].args]
    if any(p is None for p in parts) or not any(p.free_symbols for p in parts):
        return None
    a, b = parts
    if (a - b).is_number:          # a constant difference: no branch
        return a + softplus(b - a) if a - b >= 0 else b + softplus(a - b)
    if len((a - b).free_symbols) < 2:
        # (one variable: its infinities are its limits, which the limit guards take)
        return sympy.Piecewise((a + softplus(b - a), a >= b), (b + softplus(a - b), True))
    return LogSumExp((a + softplus(b - a), a > b), (b + softplus(a - b), a < b),
                     (StableSum(a / 2, b / 2, sympy.log(2)), True))


def rewrite_log_cosh(e):
    """log(c*cosh(u)) -> log(c) + log1p(2 sinh(u/2)**2) for |u| < 1 (cosh(u) - 1 without
    cancellation: log(cosh(u)) is u**2/2 there), else log(c) + |u| - log(2) + softplus(-2|u|)
    (cosh(u) overflows for |u| > 89 in float32, its log is about |u|)."""
    if not isinstance(e, sympy.log):
        return None
    coeff, rest = e.args[0].as_coeff_Mul()
    if not isinstance(rest, sympy.cosh) or not coeff.is_positive:
        return None
    u = rest.args[0]
    near = log1p(2 * sympy.sinh(u / 2) ** 2)
    far = StableSum(sympy.Abs(u), -sympy.log(2), softplus(-2 * sympy.Abs(u)))
    return sympy.log(coeff) + LogCosh((near, sympy.Abs(u) < 1), (far, True))


def rewrite_log1p_cosh(e):
    """log1p(cosh(u)) -> log(2) + 2*log(cosh(u/2)) (1 + cosh(u) = 2*cosh(u/2)**2), which then
    neither overflows (cosh(u) is inf for |x| > 710 in float64 where the log is about |x|)."""
    if isinstance(e, log1p) and isinstance(e.args[0], sympy.cosh):
        return sympy.log(2) + 2 * sympy.log(sympy.cosh(e.args[0].args[0] / 2))
    return None


class LogCosh(Branches):
    """log(cosh(u)) as rewrite_log_cosh computes it.  Its derivative is log(cosh(u))'s as
    written, tanh(u)*u', not its branches' (2 sinh(u/2) cosh(u/2)/(1 + 2 sinh(u/2)**2), and
    sign(u)*(1 - 2 sigmoid(-2|u|))): tanh(u) cancels symbolically against a tanh(u) elsewhere
    (x*tanh(b*x) - log(cosh(b*x))/b), and is computed stably as it is."""

    def argument(self) -> sympy.Expr:
        """u, up to its sign (which neither log(cosh(u)) nor tanh(u)*u' depends on), read off
        the near branch log1p(2*sinh(u/2)**2): the condition |u| < 1 is sympy's to rewrite
        (|3x| < 1 is |x| < 1/3).  Where sympy took the sinh away (sinh(asinh(t)) is t), |u|
        from the far branch's softplus(-2|u|)."""
        near = [f.base for f in sympy.Mul.make_args(self.args[0].expr.args[0])
                if f.is_Pow and isinstance(f.base, sympy.sinh)]
        if len(near) == 1:
            return 2 * near[0].args[0]
        far, = (a for a in self.args[1].expr.args if isinstance(a, softplus))
        return -far.args[0] / 2

    def _eval_derivative(self, s):
        u = self.argument()
        return sympy.tanh(u) * sympy.diff(u, s)


def _log_cosh_terms(e):
    """(term, c, u) for each term c*log(cosh(u)) of the sum e (LogCosh: rewrite_log_cosh's;
    near u = 0 the term may be an approximant, read as written), c free of another."""
    if not _is_sum(e):
        return
    for term in e.args:
        written = _unapproximated(term)
        lcs = [f for f in sympy.Mul.make_args(written) if isinstance(f, LogCosh)]
        if len(lcs) != 1:
            continue
        c = sympy.Mul(*(f for f in sympy.Mul.make_args(written) if f is not lcs[0]))
        if not c.has(LogCosh):
            yield term, c, lcs[0].argument()


class LogCoshGap(Branches):
    """c*(u*tanh(u) - log(cosh(u))) as rewrite_log_cosh_gap computes it: the sum as it was for
    |u| < 1, log(2) - softplus(-2|u|) - 2|u|*sigmoid(-2|u|) beyond.  Its derivative is the
    sum's as written, c'*(u*tanh(u) - log(cosh(u))) + c*u*(1 - tanh(u)**2)*u', whose pair the
    rewrite takes again (its far branch's derivative in terms of sigmoids would be longer)."""

    def parts(self):
        """(c, u) of c*(u*tanh(u) - log(cosh(u)))."""
        far = self.args[-1].expr
        c, gap = far.as_independent(StableSum, as_Add=False)
        (sp,) = gap.atoms(softplus)
        return c, -sp.args[0] / 2

    def _eval_derivative(self, s):
        c, u = self.parts()
        return (sympy.diff(c, s) * (u * sympy.tanh(u) - sympy.log(sympy.cosh(u)))
                + c * u * (1 - sympy.tanh(u) ** 2) * sympy.diff(u, s))


def rewrite_log_cosh_gap(e):
    """c*u*tanh(u) - c*log(cosh(u)) -> c*(log(2) - softplus(-2|u|) - 2|u|*sigmoid(-2|u|)) for
    |u| >= 1: the two terms are both about c*|u| there, and their difference tends to c*log(2)
    (log(cosh(a*x))/a's gradient in a, x*tanh(a*x)/a - log(cosh(a*x))/a**2, was 2.6e4 ULP off
    at a*x = 1e5 in float32, all of it at 1e7).  For |u| < 1 the sum as it was (its terms
    are u**2 and u**2/2 there, and near u = 0 an approximant may already hold them)."""
    for t2, c, u in _log_cosh_terms(e):
        for t1 in e.args:
            if t1 is t2 or not _unapproximated(t1).has(sympy.tanh):
                continue
            if sympy.expand(_unapproximated(t1) + c * u * sympy.tanh(u)) != 0:
                continue
            rest = [t for t in e.args if t is not t1 and t is not t2]
            au = sympy.Abs(u)
            far = StableSum(sympy.log(2), -softplus(-2 * au), -2 * au * sigmoid(-2 * au))
            gap = LogCoshGap((t1 + t2, au < 1), (-c * far, True))
            return sympy.Add(*rest) + gap
    return None


class LogCoshLine(DerivedAsWritten):
    """c*log(cosh(u)) -+ c*u as rewrite_log_cosh_line computes it.  Its derivative is the
    sum's as written (tanh(u) -+ 1 times c*u', which the rewrites take to a sigmoid)."""

    WRITTEN = 0


def rewrite_log_cosh_line(e):
    """c*log(cosh(u)) - c*u -> c*(softplus(-2u) - log(2)), and c*log(cosh(u)) + c*u ->
    c*(softplus(2u) - log(2)), for |u| >= 1 (log(cosh(u)) is u + softplus(-2u) - log(2)
    and -u + softplus(2u) - log(2)): past it the two terms are both about c*|u| on one side,
    and their difference, about c*log(2), was rounded away (x - log(cosh(x)) was 0 at
    x = 1e30 in float32 and float64).  For |u| < 1 the sum as it was."""
    for t2, c, u in _log_cosh_terms(e):
        if not u.free_symbols:
            continue
        for t1 in e.args:
            if t1 is t2:
                continue
            for side in (1, -1):        # t1 = -c*u (side 1) or c*u (side -1)
                if sympy.expand(t1 + side * c * u) == 0:
                    rest = [t for t in e.args if t is not t1 and t is not t2]
                    far = c * StableSum(softplus(-2 * side * u), -sympy.log(2))
                    return sympy.Add(*rest) + LogCoshLine((t1 + t2, sympy.Abs(u) < 1), (far, True))
    return None


def _saturation_rewrite(func, at_plus, at_minus, doc):
    """c + c*func(u) -> at_plus(c, u) and c*func(u) - c -> at_minus(c, u), for a func that
    saturates at -+1: the sum then cancels where func(u) -> -+1, the rewritten form does not."""
    def rewrite(e):
        if not _is_sum(e):
            return None
        numbers, _ = _numbers_and_terms(e)
        for term in e.args:
            coeff, rest = term.as_coeff_Mul()
            if isinstance(rest, func):
                u = rest.args[0]
                plus, minus = _number_in(numbers, coeff), _number_in(numbers, -coeff)
                if plus is not None:
                    return _replace_pair(e, term, plus, at_plus(coeff, u))
                if minus is not None:
                    return _replace_pair(e, term, minus, at_minus(coeff, u))
        return None

    rewrite.__doc__ = doc
    return rewrite


rewrite_erfc = _saturation_rewrite(
    sympy.erf, lambda c, u: c * erfc(-u), lambda c, u: -c * erfc(u),
    "c + c*erf(u) -> c*erfc(-u) and c*erf(u) - c -> -c*erfc(u)")
rewrite_tanh_sigmoid = _saturation_rewrite(
    sympy.tanh, lambda c, u: 2 * c * sigmoid(2 * u), lambda c, u: -2 * c * sigmoid(-2 * u),
    "c + c*tanh(u) -> 2c*sigmoid(2u) and c*tanh(u) - c -> -2c*sigmoid(-2u)")


def rewrite_sigmoid_complement(e):
    """c - c*sigmoid(u) -> c*sigmoid(-u): no cancellation where sigmoid(u) -> 1 (sigmoid' is
    written sigmoid(u)*(1 - sigmoid(u)))."""
    if not _is_sum(e):
        return None
    numbers, _ = _numbers_and_terms(e)
    for term in e.args:
        coeff, rest = term.as_coeff_Mul()
        c = _number_in(numbers, -coeff) if isinstance(rest, sigmoid) else None
        if c is not None:
            return _replace_pair(e, term, c, -coeff * sigmoid(-rest.args[0]))
    return None


def rewrite_sigmoid_tanh(e):
    """c - 2c*sigmoid(u) -> -c*tanh(u/2): no cancellation near u = 0 (the derivative of
    log(exp(x) + exp(-x)) = x + softplus(-2x) is 1 - 2*sigmoid(-2x) = tanh(x))."""
    if not _is_sum(e):
        return None
    numbers, _ = _numbers_and_terms(e)
    for term in e.args:
        coeff, rest = term.as_coeff_Mul()
        c = _number_in(numbers, -coeff / 2) if isinstance(rest, sigmoid) else None
        if c is not None:
            return _replace_pair(e, term, c, coeff / 2 * sympy.tanh(rest.args[0] / 2))
    return None


def rewrite_sigmoid_difference(e):
    """c*sigmoid(u) - c*sigmoid(-u) -> c*tanh(u/2): no cancellation near u = 0 (the
    derivative of sigmoid(x)*sigmoid(-x), sigmoid's own derivative)."""
    if not _is_sum(e):
        return None
    for term in e.args:
        for s in sympy.Mul.make_args(term):
            if not isinstance(s, sigmoid):
                continue
            c = term / s                # the term is c*sigmoid(u), c any other factors
            u = s.args[0]
            partner = -c * sigmoid(-u)
            if partner in e.args:       # c*(sigmoid(u) - sigmoid(-u)) = c*tanh(u/2)
                others = [a for a in e.args if a is not term and a != partner]
                return sympy.Add(*others) + c * sympy.tanh(u / 2)
    return None


def rewrite_expm1_sigmoid(e):
    """expm1(u)*sigmoid(-u) -> tanh(u/2) ((exp(u) - 1)/(exp(u) + 1)): written out, the
    slope of x*(exp(x) - 1)/(exp(x) + 1) was terms of size x that cancel to about 1 (7 to 31
    float64 ULP off for x from 20 to 64); as x*tanh(x/2) it is tanh(x/2) plus x/2 times
    tanh's own slope, which is small there."""
    for u, g, rest in _factor_pairs(e, expm1):
        if isinstance(g, sympy.Pow) and g.exp.is_Integer and g.exp > 0:
            g, k = g.base, g.exp            # (a power of the sigmoid: one factor of it pairs)
            rest = rest + [g ** (k - 1)]
        if isinstance(g, sigmoid) and sympy.expand(g.args[0] + u) == 0:
            return sympy.Mul(*rest) * sympy.tanh(u / 2)
    return None


def rewrite_power_sum(e):
    """A sum of terms with powers of one sum B, as its lowest power times the rest expanded,
    where terms cancel in the rest: the derivative of ISRU's x/sqrt(1 + x**2),
    -x**2/(1 + x**2)**(3/2) + 1/sqrt(1 + x**2), is (1 + x**2)**(-3/2): the two terms are
    about 1/|x| where their sum is 1/|x|**3 (all of it lost to cancellation at |x| = 1e4 in
    float32)."""
    if not _is_sum(e) or len(e.args) > 6:
        return None
    # (a decimal exponent that is a short binary fraction as that fraction: x/(1 + x**2)**0.5's
    # slope was 50 to 3045 float64 ULP off for |x| from 17 to 60)
    e = e.replace(lambda a: a.is_Pow and a.exp.is_Float, lambda a: a.base ** _exact(a.exp))
    powers = [t.as_powers_dict() for t in e.args]
    bases = {b for p in powers for b, r in p.items() if isinstance(b, sympy.Add) and r.is_Rational and not r.is_Integer}
    for b in sorted(bases, key=sympy.default_sort_key):
        rs = [p.get(b, sympy.S.Zero) for p in powers]
        if not all(r.is_Rational for r in rs) or len(set(rs)) < 2:
            continue
        low = min(rs)
        inner = [t * b ** -low for t in e.args]
        expanded = sympy.expand(sympy.Add(*inner))
        separate = sum(len(sympy.Add.make_args(sympy.expand(t))) for t in inner)
        if len(sympy.Add.make_args(expanded)) < separate and not expanded.has(b):
            return b ** low * expanded
    return None


def _paired(e, cls):
    """(c, u, v, d, where both are large) for a sum c*cls(u) - c*cls(v) + nothing else, with
    d = u - v a number > 0 (v > 0 there), or no more than u as an expression, free of one of
    its symbols (a param p in softplus(p*x) - softplus(p*(x - 1)): u > 0 and v > 0 there)."""
    if not _is_sum(e) or len(e.args) != 2:
        return None
    (c1, f1), (c2, f2) = (t.as_coeff_Mul() for t in e.args)
    if not (isinstance(f1, cls) and isinstance(f2, cls) and c1 == -c2):
        return None
    u, v = f1.args[0], f2.args[0]
    d = sympy.simplify(u - v)
    if d == 0 or not u.free_symbols:
        return None
    if not d.is_number:     # (free of a symbol that u and v have: u and v move together in it)
        if d.has(cls) or not d.free_symbols < u.free_symbols or sympy.count_ops(d) > sympy.count_ops(u):
            return None
        return c1, u, v, d, (u > 0) & (v > 0)
    return (c1, u, v, d, v > 0) if d > 0 else (c2, v, u, -d, u > 0)


def rewrite_softplus_difference(e):
    """c*(softplus(u) - softplus(v)) with u - v = d a number > 0 (or a param: _paired) ->
    c*(d + softplus(-u) - softplus(-v)) where v > 0 (both > 0): the two are about u and v
    there, whose difference rounds away (SoftClip's softplus(a*x) - softplus(a*(x - 1)) at
    x = 1e8), where d is exact."""
    found = _paired(e, softplus)
    if found is None:
        return None
    c, u, v, d, large = found
    return c * sympy.Piecewise((StableSum(d, softplus(-u), -softplus(-v)), large),
                               (StableSum(softplus(u), -softplus(v)), True))


def rewrite_factor_into_stable_sum(e):
    """k*Piecewise((StableSum(..., t, ...), c), ...) where k*t is a number -> the Piecewise of
    k times each branch, k*t that number: SoftClip with a learnable p,
    (softplus(p*x) - softplus(p*(x - 1)))/p, is 1 + (softplus(-p*x) - softplus(-p*(x - 1)))/p
    for large p*x, whose gradient in p is the tails' alone (k*p's product rule gave 1/p - 1/p,
    which cancelled: 9e4 ULP off at x = 4, p = 5 in float64, 0 from x = 8.5)."""
    if not isinstance(e, sympy.Mul):
        return None
    for f in e.args:
        if type(f) is not sympy.Piecewise:
            continue
        k = sympy.Mul(*(a for a in e.args if a is not f))      # (e/f: a Piecewise of reciprocals)
        if k.is_number or not any(isinstance(v, StableSum) and any((k * t).is_number for t in v.args) for v, _ in f.args):
            return None
        return sympy.Piecewise(*((StableSum(*(k * t for t in v.args)) if isinstance(v, StableSum) else k * v, c)
                                 for v, c in f.args))
    return None


def rewrite_softplus_minus_slope(e):
    """c*softplus(u) - c*u*sigmoid(u) -> c*(softplus(-u) + u*sigmoid(-u)) where u > 0: both terms
    are ~u there and their difference ~u*exp(-u) rounds away (softplus(b*x)/b's slope in b,
    x*sigmoid(b*x)/b - softplus(b*x)/b**2, was off by 5e5 ULP at b*x = 17), where the two
    tails are positive and add up.  (For u < 0 the terms have one sign as written.)"""
    if not _is_sum(e) or not e.has(softplus) or not e.has(sigmoid):
        return None
    terms = list(e.args)
    for i, t in enumerate(terms):
        sp = [f for f in sympy.Mul.make_args(t) if isinstance(f, softplus)]
        if len(sp) != 1:
            continue
        u = sp[0].args[0]
        c = t / sp[0]
        for j, t2 in enumerate(terms):
            sg = [f for f in sympy.Mul.make_args(t2) if isinstance(f, sigmoid) and f.args[0] == u]
            if j == i or len(sg) != 1 or sympy.expand(t2 / sg[0] + u * c) != 0:
                continue
            rest = [t_ for k, t_ in enumerate(terms) if k not in (i, j)]
            return sympy.Add(*rest, c * sympy.Piecewise((StableSum(softplus(-u), u * sigmoid(-u)), u > 0),
                                                        (StableSum(softplus(u), -u * sigmoid(u)), True)))
    return None


def rewrite_softplus_minus_argument(e):
    """c*softplus(u) - c*u -> c*softplus(-u), the same function: softplus(u) ~ u for u >> 0
    and the difference, ~exp(-u), rounded away (x - log(1 + exp(x)), the log of a sigmoid
    written out, was 1.3% off at x = 30 and 0 from x = 35, where it is -4e-16)."""
    if not _is_sum(e) or not e.has(softplus):
        return None
    for t in e.args:
        sp = [f for f in sympy.Mul.make_args(t) if isinstance(f, softplus)]
        if len(sp) != 1:
            continue
        u = sp[0].args[0]
        c = t / sp[0]
        rest = sympy.expand(sympy.Add(*[a for a in e.args if a is not t]))
        after = sympy.expand(rest + c * u)
        if _term_count(after) < _term_count(rest):        # (c*u's terms are among the rest's)
            return after + c * softplus(-u)
    return None


def _term_count(e) -> int:
    return 0 if e == 0 else len(sympy.Add.make_args(e))


def rewrite_sigmoid_difference_far(e):
    """c*(sigmoid(u) - sigmoid(v)) with u - v a number > 0 (or as _paired takes it) ->
    c*(sigmoid(-v) - sigmoid(-u)) where v > 0 (both > 0): both sigmoids round to 1 there, their tails do not (SoftClip's derivative)."""
    found = _paired(e, sigmoid)
    if found is None:
        return None
    c, u, v, _, large = found
    return c * sympy.Piecewise((StableSum(sigmoid(-v), -sigmoid(-u)), large),
                               (StableSum(sigmoid(u), -sigmoid(v)), True))


def real_abs(u: sympy.Expr) -> sympy.Expr:
    """|u| for the real arithmetic the generated code does: sympy's Abs takes the modulus of
    a complex number where it cannot tell u is real (|exp(sqrt(x))| is
    exp(cos(atan2(0, x)/2)*sqrt(|x|)) to it); an exp of anything is positive here."""
    positive = {a: sympy.Dummy(positive=True) for a in u.atoms(sympy.exp)}
    return sympy.Abs(u.xreplace(positive)).xreplace({d: a for a, d in positive.items()})


def rewrite_sech2(e):
    """c - c*tanh(u)**2 -> c*4*exp(-2|u|) / (1 + exp(-2|u|))**2 (= c*sech(u)**2): no cancellation
    where tanh(u)**2 -> 1, so tanh' keeps its tail instead of dropping to 0 at |u| > 9."""
    if not _is_sum(e):
        return None
    numbers, _ = _numbers_and_terms(e)
    for term in e.args:
        coeff, rest = term.as_coeff_Mul()
        if isinstance(rest, sympy.Pow) and rest.exp == 2 and isinstance(rest.base, sympy.tanh) and -coeff in numbers:
            u = rest.base.args[0]
            decay = sympy.exp(-2 * real_abs(u))
            return _replace_pair(e, term, -coeff, -coeff * 4 * decay / (1 + decay) ** 2)
    return None


def rewrite_exp_product(e):
    """exp(a) * exp(b) -> exp(a + b): no inf * 0 where one factor overflows and the other underflows."""
    if not isinstance(e, sympy.Mul):
        return None
    exps = [a for a in e.args if isinstance(a, sympy.exp)]
    if len(exps) < 2:
        return None
    rest = [a for a in e.args if not isinstance(a, sympy.exp)]
    return sympy.Mul(*rest) * sympy.exp(sympy.Add(*[a.args[0] for a in exps]))


def _sign_of(e):
    """u if e is the sign Piecewise((1, u > 0), (-1, u < 0), (0, True)) that sign() becomes."""
    if isinstance(e, sympy.Piecewise) and len(e.args) == 3:
        (one, c1), (minus, c2), (zero, c3) = e.args
        if (one, minus, zero, c3) == (1, -1, 0, sympy.true) and isinstance(c1, sympy.StrictGreaterThan) \
                and c1.rhs == 0 and c2 == sympy.StrictLessThan(c1.lhs, 0):
            return c1.lhs
    return None


def rewrite_sign_product(e):
    """u * sign(u) * rest -> |u| * rest, where the product's other factors include u's
    (x**2*sign(x) -> x*|x|, b*x*sign(b*x) -> |b*x|; abs' = sign gives these in derivatives),
    so that sums in |u| can cancel symbolically instead of numerically."""
    if not isinstance(e, sympy.Mul):
        return None
    for factor in e.args:
        u = _sign_of(factor)
        if u is None:
            continue
        others = list(e.args)
        others.remove(factor)
        rest = sympy.Mul(*others) / u
        # u's factors divide out: no new 1/b (x*sign(x/a)/a -> |x/a| takes one away)
        if sympy.fraction(sympy.fraction(sympy.Mul(*others))[1] / sympy.fraction(rest)[1])[1] == 1:
            return rest * sympy.Abs(u)
    return None


def rewrite_indicator_product(e):
    """rest * Piecewise((1, c1), (0, c2), ...) (Heaviside(u), where(c, 1, 0)) ->
    Piecewise((rest, c1), (0, c2), ...) where rest depends on what the conditions do: where
    the indicator is 0 the product is 0 without computing rest, which can be inf there
    ((exp(x) - 1)*Heaviside(-x), an ELU's negative part, was inf*0 = NaN for x > 709)."""
    if not isinstance(e, sympy.Mul):
        return None
    for factor in e.args:
        if (isinstance(factor, sympy.Piecewise) and all(v in (0, 1) for v, _ in factor.args)
                and any(v == 0 for v, _ in factor.args)):
            others = list(e.args)
            others.remove(factor)
            rest = sympy.Mul(*others)
            if rest.free_symbols & factor.free_symbols:     # (b*Heaviside(a): b = inf is the caller's)
                return sympy.Piecewise(*((rest if v == 1 else sympy.S.Zero, c) for v, c in factor.args))
    return None


def rewrite_common_denominator(e):
    """n1/D**k1 + n2/D**k2 -> (n1*D**(K-k1) + n2*D**(K-k2))/D**K when the numerators then
    cancel symbolically (1/(1 + |x|) - |x|/(1 + |x|)**2 -> 1/(1 + |x|)**2, the quotient rule's
    leftover; (a0 + a1*x)/(1 + |b*x|)'s slope, whose a1*|b*x| and a1*b*x*sign(b*x) cancel;
    erf(x)*x/(1 + |x/2|)'s, with a third term), which in floating point would cancel
    numerically, and their common factors taken out (tanh'' from 4e/(1 + e)**2, e =
    exp(-2|x|): 16e**2/(1 + e)**3 - 8e/(1 + e)**2 -> 8e*(e - 1)/(1 + e)**3, where e - 1 is
    then expm1).  Small sums, powers up to 3."""
    if not _is_sum(e):
        return None
    by_base: dict = {}
    for term in e.args:
        for factor in sympy.Mul.make_args(term):
            base, n = factor.as_base_exp()
            if n.is_Integer and n < 0 and _is_sum(base) and len(base.args) <= 3:
                by_base.setdefault(base, []).append((term, -n))
    for base, terms in by_base.items():
        if len(terms) < 2 or max(k for _, k in terms) > 3:
            continue
        top = max(k for _, k in terms)
        parts = [sympy.expand(term * base**k * base ** (top - k), deep=False) for term, k in terms]
        naive = sum(len(sympy.Add.make_args(p)) for p in parts)
        # (u*sign(u) as |u| first: the quotient rule's a1*|b*x| against b*x*sign(b*x)*a1)
        combined = sympy.Add(*[rewrite_sign_product(t) or t for p in parts for t in sympy.Add.make_args(p)])
        if len(sympy.Add.make_args(combined)) < naive and len(sympy.Add.make_args(combined)) <= 3:
            others = list(e.args)
            for term, _ in terms:
                others.remove(term)
            return sympy.factor_terms(combined) / base**top + sympy.Add(*others)
    return None


def _sqrt_square_plus_all(term, products: bool = False, inputs=()) -> list:
    """a*sqrt(k*u**2 + c) with numbers a, k > 0 and c free of u -> every (a, k, u, c) it is
    (sqrt(x**2 + b**2) is both u = x, c = b**2 and u = b, c = x**2).  With `products`, also
    where the square is a product of even powers (a**2*x**2: u = a*x).  With `inputs`, also
    a k that is not a number, free of them, times the square of a u of theirs (a learnable
    param: a*x**2, u = x, k = a); its sign is decided where the value is computed (see
    hypot_form)."""
    a, rest = term.as_coeff_Mul()
    if not (isinstance(rest, sympy.Pow) and rest.exp == sympy.S.Half and isinstance(rest.base, sympy.Add)):
        return []
    found = []
    for square_term in rest.base.args:
        k, square = square_term.as_coeff_Mul()
        u = _square_root_of(square, products)
        if u is None and inputs and isinstance(square, sympy.Mul):
            k, u = _param_times_square(k, square, inputs)
        if (k.is_positive or (u is not None and not k.is_number)) and u is not None:
            c = rest.base - square_term
            if c != 0 and not (c.free_symbols & u.free_symbols):
                found.append((a, k, u, c))
    return found


def _param_times_square(k, square, inputs):
    """(k*p, u) for a product square = p*u**2 with u of the inputs and p free of them (not a
    number), else (k, None)."""
    factors = sympy.Mul.make_args(square)
    squares = [f for f in factors if isinstance(f, sympy.Pow) and f.exp == 2 and f.base.free_symbols & set(inputs)]
    if len(squares) != 1:
        return k, None
    p = sympy.Mul(*[f for f in factors if f is not squares[0]])
    if p.free_symbols & set(inputs) or p.is_number:
        return k, None
    return k * p, squares[0].base


def _square_root_of(square, products: bool):
    """u where square is u**2 (u not a number), or with `products` a product of even powers;
    else None."""
    if isinstance(square, sympy.Pow) and square.exp == 2 and square.base.free_symbols:
        return square.base
    if products and isinstance(square, sympy.Mul):
        powers = square.as_powers_dict()
        if all(n.is_Integer and n % 2 == 0 for n in powers.values()):
            return sympy.Mul(*(b ** (n // 2) for b, n in powers.items()))
    return None


def _sqrt_square_plus(term, prefer=()):
    """The first of _sqrt_square_plus_all whose u has a symbol of prefer (an input: its square
    is the one to keep from overflowing), else the first; None if none."""
    found = _sqrt_square_plus_all(term, inputs=prefer)
    return next((f for f in found if f[2].free_symbols & set(prefer)), found[0] if found else None)


def rewrite_power_near_one(e):
    """c*(1 + u)**p - c, p a number, not an integer -> c*expm1(p*log1p(u)) where
    |p*log1p(u)| < 1 (there (1 + u)**p is within a factor e of 1, and the difference
    cancels: (1 + x**2)**1.5 - 1 was 0 at x = 1e-12 and 1230 ULP off at 1e-6 in float32),
    as written elsewhere (where pow is exact to an ULP and the expm1 of a large argument is
    not).  Square roots take rewrite_sqrt_conjugate's, before this."""
    if not _is_sum(e):
        return None
    numbers, _ = _numbers_and_terms(e)
    for term in e.args:
        k, power = term.as_coeff_Mul()
        if not (power.is_Pow and power.exp.is_number and not power.exp.is_Integer and _is_sum(power.base)):
            continue
        one, u = power.base.as_coeff_Add()
        c = _number_in(numbers, -k)
        if c is None or _number_in([one], 1) is None:
            continue
        t = power.exp * log1p(u)
        return _replace_pair(e, term, c, PowerNearOne((k * expm1(t), sympy.Abs(t) < 1), (term + c, True)))
    return None


class PowerNearOne(DerivedAsWritten):
    """c*(1 + u)**p - c as rewrite_power_near_one computes it; its derivative is the
    difference's as written (c*p*(1 + u)**(p - 1)*u')."""


def rewrite_sqrt_conjugate(e):
    """Cancellation against sqrt(k*u**2 + c), through the conjugate:
    a*sqrt(k u^2 + c) - a*sqrt(k)*u -> a*c / (sqrt(k u^2 + c) + sqrt(k)*u) where u > 0, and as
    written elsewhere (the mirror image for + a*sqrt(k)*u);
    a*sqrt(k u^2 + c) - a*sqrt(c) -> a*k*u^2 / (sqrt(k u^2 + c) + sqrt(c)) (c a number, or of
    params and constants: sqrt(x**2 + b) - sqrt(b))."""
    if not _is_sum(e):
        return None
    for term in e.args:
        others = list(e.args)
        others.remove(term)
        for a, k, u, c in _sqrt_square_plus_all(term):
            root = term / a
            for other in others:
                coeff, rest = other.as_coeff_Mul()
                if (not other.has(*u.free_symbols) and (other.is_Number or not c.is_Number)
                        and sympy.simplify(other + a * sympy.sqrt(c)) == 0):
                    rest_terms = list(others)
                    rest_terms.remove(other)
                    return a * k * u**2 / (root + sympy.sqrt(c)) + sympy.Add(*rest_terms)
                if rest == u and not other.is_Number:
                    ratio = sympy.simplify(coeff / (a * sympy.sqrt(k)))
                    if ratio not in (1, -1):
                        continue
                    rest_terms = list(others)
                    rest_terms.remove(other)
                    # both branches are sums of two terms of the same sign (and not rewritten again);
                    # a scales the terms of the one as written (squareplus' (r + x)/2 overflowed in
                    # r + x ~ 2*x from x = 1.7e38 in float32, where r/2 + x/2 does not)
                    plain = StableSum(a * root, a * ratio * sympy.sqrt(k) * u)
                    side = u > 0 if ratio == -1 else u < 0
                    stable = sympy.Piecewise((a * c / StableSum(root, -ratio * sympy.sqrt(k) * u), side), (plain, True))
                    return stable + sympy.Add(*rest_terms)
    return None


def rewrite_root_common_factor(e):
    """A product over a power of a sum with a square root r among its terms, whose common
    factor with the rest shows with r as a symbol: squareplus' slope for x < 0,
    -b*(x/r - 1)/(2*(r - x)**2) -> b/(2*r*(r - x)) (x/r - 1 = (x - r)/r), where the square
    of r - x doubled r's rounding error (4.4 ULP where the quotient takes 2).  Only where
    the power of that sum drops and fewer operations are left; a stable sum stays one."""
    if not isinstance(e, sympy.Mul):
        return None
    ops = plain = None          # (the expression's size and its plain sums: once, at the first candidate)
    for f in e.args:
        if not (isinstance(f, sympy.Pow) and f.exp.is_Integer and f.exp <= -2 and isinstance(f.base, sympy.Add)):
            continue
        terms = f.base.args
        for r in dict.fromkeys(g for t in terms for g in sympy.Mul.make_args(t)):     # (in order)
            if not (isinstance(r, sympy.Pow) and r.exp == sympy.S.Half and _is_sum(r.base)):
                continue
            if ops is None:
                ops = sympy.count_ops(e)
                if ops > 60:                    # (factor's time grows fast with the size)
                    return None
                plain = e.replace(lambda a: isinstance(a, StableSum), lambda a: sympy.Add(*a.args))
            s = sympy.Dummy("s", positive=True)
            sum_s = sympy.Add(*terms).subs(r, s)
            new = sympy.factor(plain.subs(r, s))
            if new.has(s**2):
                continue
            left = 0
            for g in sympy.Mul.make_args(sympy.denom(new)):
                base, k = g.as_base_exp()
                if sympy.expand(base - sum_s) == 0 or sympy.expand(base + sum_s) == 0:
                    left += k
            if left >= -f.exp:
                continue
            new = new.subs(s, r)
            if type(f.base) is StableSum:
                same = sympy.Add(*terms)
                new = new.replace(lambda a: type(a) is sympy.Add and (a == same or a == -same),
                                  lambda a: StableSum(*a.args))
            if sympy.count_ops(new) < ops:
                return new
    return None


def rewrite_square_denominator(e):
    """-N/S**2 + M/S -> (M - N/S)/S for a sum S that holds an exponential (a softmax's
    normaliser, the quotient rule's square): S**2 overflows float32 from S = 1.8e19 on (the
    logits of adaptive_mixture past 44), where N/S, and that over S, do not."""
    if not _is_sum(e):
        return None
    powers = [[g.as_base_exp() for g in sympy.Mul.make_args(t)] for t in e.args]
    for base, n in dict.fromkeys(p for ps in powers for p in ps):      # (in order: the same code every run)
        if n == -2 and _is_sum(base) and base.has(sympy.exp) and \
                all(sum(k for b, k in ps if b == base) in (-1, -2) for ps in powers):
            return sympy.Mul(sympy.Add(*[t * base for t in e.args]), base ** -1, evaluate=False)
    return None


def rewrite_inverse_sqrt_conjugate(e):
    """a/sqrt(c) - a/sqrt(k*u**2 + c) (a number c > 0) -> a*k*u**2 / (sqrt(c) * r * (r + sqrt(c)))
    with r = sqrt(k*u**2 + c), for |u| < 1 (past it the terms cancel at most 3.4 times, and
    u**2 overflows far out, where the difference as written is fine): x - asinh(x)'s slope,
    1 - 1/sqrt(1 + x**2), was 0 at x = 1e-8, where it is 5e-17."""
    if not _is_sum(e):
        return None
    for term in e.args:
        coeff, rest = term.as_coeff_Mul()
        if not (rest.is_Pow and rest.exp == -sympy.Rational(1, 2)) or len(rest.base.free_symbols) != 1:
            continue
        base = rest.base
        u, = base.free_symbols
        c = base.subs(u, 0)
        k = sympy.expand(base - c) / u**2
        if not (c.is_Number and c.is_positive and k.is_Number and k.is_positive):
            continue
        for other in e.args:
            if other.is_Number and sympy.simplify(other + coeff / sympy.sqrt(c)) == 0:
                rest_terms = [t for t in e.args if t is not term and t is not other]
                root = sympy.sqrt(base)
                near = -coeff * k * u**2 / (sympy.sqrt(c) * root * StableSum(root, sympy.sqrt(c)))
                written = StableSum(other, term)
                return sympy.Piecewise((near, sympy.Abs(u) < 1), (written, True)) + sympy.Add(*rest_terms)
    return None


class SqrtSquarePlus(sympy.Function):
    """SqrtSquarePlus(u, c) = sqrt(u**2 + c) for a c that may be negative, without forming u**2:
    hypot(u, sqrt(c)) where c >= 0, sqrt(|u| - sqrt(-c)) * sqrt(|u| + sqrt(-c)) where not."""

    nargs = 2


def _hypot_of(root: sympy.Pow, inputs=(), signs=None):
    """sqrt(k*u**2 + c) (root, or an odd power of it: 1/sqrt(...)) -> sqrt(k)*hypot(u, sqrt(c/k)):
    u**2 overflows for |u| > 1.8e19 in float32 where the root does not.  A number c < 0 stays
    as written; a c that is not a number (a constant: squareplus's b) -> SqrtSquarePlus.  A k
    that is not a number (a learnable param: sqrt(1 + a*x**2)) -> sqrt(k)*SqrtSquarePlus(u,
    c/k), which holds where k > 0 only: with `signs` (a dict, the conditions in order) that
    condition is added to it (and where k*u**2 is large, see hypot_form), else the root stays
    as written."""
    base = root.base
    parts = _sqrt_square_plus(sympy.sqrt(base, evaluate=False), inputs) if isinstance(base, sympy.Add) else None
    if parts is None:
        return None
    _, k, u, c = parts
    if c.is_number and not c.is_nonnegative:
        return None
    if not k.is_number:
        if signs is None:
            return None
        signs[k > 0] = "sign"
        signs[k * u**2 > LARGE_SQUARE] = "size"
    plain = hypot(u, sympy.sqrt(c / k)) if (c / k).is_number else SqrtSquarePlus(u, c / k)
    return (sympy.sqrt(k) * plain) ** (2 * root.exp)


def hypot_form(expr: sympy.Expr, inputs=(), params=()) -> sympy.Expr:
    """Every sqrt(k*u**2 + c) in expr (and its odd powers: 1/sqrt(...)) in hypot form, with
    u an input's where one is squared (sqrt(x**2 + b**2): x**2 is the one that overflows).
    Where a k is not a number (a param: x/sqrt(1 + a*x**2), whose slope in a,
    -x**3/(2*(1 + a*x**2)**(3/2)), was 0 from |x| = 7e12 in float32 as written) the whole
    expression takes that form where every such k > 0 and some k*u**2 > LARGE_SQUARE, and
    the form with the roots of numeric k alone elsewhere: sqrt(k) would be NaN where k < 0,
    where the root as written may be real, and below that size the root as written is the
    more accurate (the hypot form's c/k and cube round more: 4.3 ULP against 2.5 in that
    slope in x at x = 0.02 in float32).  One branch for the whole expression, so that the
    printers pair x**3 with the hypot's cube as in a product of numbers.
    A product of a power of u and a hypot form of u with a param in it keeps their ratio
    whole (_ratios_to_roots)."""
    def is_root(e):
        return isinstance(e, sympy.Pow) and e.exp.is_Rational and e.exp.q == 2 and isinstance(e.base, sympy.Add)

    plain = _ratios_to_roots(expr.replace(is_root, lambda e: _hypot_of(e, inputs) or e), inputs, params)
    if not inputs:
        return plain
    signs = {}
    with_params = expr.replace(is_root, lambda e: _hypot_of(e, inputs, signs) or e)
    if not signs:
        return plain
    where = sympy.And(*[c for c, kind in signs.items() if kind == "sign"],
                      sympy.Or(*[c for c, kind in signs.items() if kind == "size"]))
    return sympy.Piecewise((_ratios_to_roots(with_params, inputs, params), where), (plain, True))


#: Where k*u**2 (k a param) passes this, sqrt(k*u**2 + c) takes its hypot form (hypot_form):
#: far below where the form as written overflows or leaves float32's normal range (its
#: slopes' u**3 from |u| = 7e12, (k*u**2 + c)**(-3/2) from k*u**2 = 2e25).
LARGE_SQUARE = 2.0**40


def _ratios_to_roots(expr: sympy.Expr, inputs, params) -> sympy.Expr:
    """Every product of u**n (u an input) and r**-m, r a hypot form of u with a param in it
    (hypot(u, ...), SqrtSquarePlus(u, ...)), with (u/r)**j (j = min(n, m)) kept whole, and
    the u left over with a sum of r and terms free of u it is over, u/(r + sqrt(a)): each
    ratio is bounded, where u**n and r**m overflow or underflow on their own, and CSE names
    a power of 1/r once for several outputs, which the printers then cannot pair with u
    (x/sqrt(1 + a*x**2)'s slope in a, -x**3/(2*a**(3/2)*r**3), was 0 from |x| = 7e12 in
    float32; sqrt(x**2 + a) - sqrt(a)'s, -x**2/(2*sqrt(a)*r*(r + sqrt(a))), 0 from 1e25,
    as (1/r)/(r + sqrt(a)) underflowed first)."""
    def root_of(f, u):
        return isinstance(f, (hypot, SqrtSquarePlus)) and f.args[0] == u and bool(f.free_symbols & set(params))

    def over_root(f, u):        # r**-m, or (r + terms free of u)**-m
        if not (f.is_Pow and f.exp.is_Integer and f.exp < 0):
            return False
        if root_of(f.base, u):
            return True
        return isinstance(f.base, sympy.Add) and any(root_of(t, u) for t in f.base.args) and \
            all(root_of(t, u) or not t.has(u) for t in f.base.args)

    def parts(e):
        if not e.is_Mul:
            return None
        for u in inputs:
            n = sum(int(f.exp) if f.is_Pow else 1 for f in e.args
                    if f == u or (f.is_Pow and f.base == u and f.exp.is_Integer and f.exp > 0))
            # (the roots first, then the sums with one)
            over = sorted((f for f in e.args if over_root(f, u)), key=lambda f: not root_of(f.base, u))
            if n and over and root_of(over[0].base, u):
                return u, n, over
        return None

    def split(e):
        found = parts(e)
        if found is None:
            return None
        u, n, over = found
        rest = [f for f in e.args if not (f == u or (f.is_Pow and f.base == u)) and all(f is not d for d in over)]
        for d in over:
            j = min(n, int(-d.exp))
            n -= j
            ratio = sympy.UnevaluatedExpr(sympy.Mul(u, 1 / d.base, evaluate=False))
            rest += [d.base ** (d.exp + j), ratio ** j]
        return sympy.Mul(*rest, u ** n)

    return _replace_found(expr, split)


def _fold(e: sympy.Mul) -> sympy.Expr:
    numbers = [a for a in e.args if a.is_number]
    rest = [a for a in e.args if not a.is_number]
    return sympy.Float(sympy.Mul(*numbers).evalf(30), 30) * sympy.Mul(*rest)


def fold_constants(expr: sympy.Expr) -> sympy.Expr:
    """The numbers of each product as one coefficient: 0.5*sqrt(2)*x*exp(-x**2/2)/sqrt(pi) ->
    0.3989...*x*exp(-x**2/2), one rounding of x instead of three."""
    def foldable(e):
        if not e.is_Mul or e.is_number:
            return False
        numbers = [a for a in e.args if a.is_number]
        return len(numbers) > 1 or (len(numbers) == 1 and not numbers[0].is_Float and not numbers[0].is_Integer)

    return expr.replace(foldable, _fold)


def weights_form(expr: sympy.Expr, inputs: Sequence[sympy.Symbol]) -> sympy.Expr:
    """A sum of the inputs over a sum S of params and constants alone, each of its terms with
    a coefficient of them (or a number), as the sum of the terms times their coefficients
    over S: (e0*relu(x) + e1*tanh(x) + e2*x)/S -> w0*relu(x) + w1*tanh(x) + w2*x, w = e/S,
    a softmax's weights, computed once per program in the kernels.  The numerator as written
    overflowed from x = 1.7e38 in float32 where the weighted sum, at most |x|, does not
    (adaptive_mixture's f there, and its weights' gradients, w*(relu(x) - f)); and a product
    per element is gone."""
    inputs = tuple(inputs)

    def parts(e):
        if not e.is_Mul:
            return None
        over = [f for f in e.args if f.is_Pow and f.exp == -1 and _is_sum(f.base) and not f.base.has(*inputs)
                and f.base.free_symbols]
        sums = [f for f in e.args if _is_sum(f) and f.has(*inputs)]
        if len(over) != 1 or len(sums) != 1:
            return None
        split = [t.as_independent(*inputs, as_Add=False) for t in sums[0].args]
        if all(c.is_number for c, _ in split):      # (no coefficient of params: nothing to weigh)
            return None
        return over[0], sums[0], split

    def weighted(e):
        found = parts(e)
        if found is None:
            return None
        over, total, split = found
        rest = sympy.Mul(*[f for f in e.args if f is not over and f is not total])
        return rest * sympy.Add(*[sympy.UnevaluatedExpr(c * over) * t for c, t in split])

    return _replace_found(expr, weighted)


def _scaled_softplus(e):
    """The Piecewise of scaled_softplus_form for a product e = softplus(k*v)/k, else None."""
    if not e.is_Mul:
        return None
    sp = [f for f in e.args if isinstance(f, softplus)]
    if len(sp) != 1:
        return None
    w = sp[0].args[0]
    k = 1 / sympy.Mul(*[f for f in e.args if f is not sp[0]])
    if not w.is_Mul or k.has(softplus) or k in (1, -1) or (k.is_number and (not k.is_real or k.is_zero)):
        return None
    v = w / k
    if k.free_symbols & v.free_symbols or len(sympy.Mul.make_args(v)) > len(sympy.Mul.make_args(w)):
        return None         # (k is not a factor of w)
    return sympy.Piecewise((StableSum(v, softplus(-w) / k), w > 0), (softplus(w) / k, True), evaluate=False)


def scaled_softplus_form(expr: sympy.Expr) -> sympy.Expr:
    """softplus(k*v)/k (k a param, constant or number: a softplus with a sharpness) as
    v + softplus(-k*v)/k where k*v > 0, as written elsewhere: the same function, but k*v
    overflows where v does not, and softplus(inf)/k was inf where the value is v
    (log(1 + exp(beta*x))/beta at x = 1e38, beta = 10 in float32).  Both branches take the
    same exp(-|k*v|).  A form for float arithmetic, after the rewrites: the cancellation of
    softplus(2*x)/2 - log(2)/2 near 0 is an approximant's as before (its far branch takes
    this form too)."""
    return _replace_found(expr, _scaled_softplus)


def factor_into_branches(expr: sympy.Expr, inputs: Sequence[sympy.Symbol]) -> sympy.Expr:
    """k*Piecewise((..., c), ...) with k free of the inputs (not a number), where a branch
    holds a power of an input: the Piecewise of k times each branch, k*x**2 computed as
    (k*x)*x: x**2 overflowed from x = 1.8e19 in float32 where k*x**2 does not (star_relu's
    scale*relu(x)**2 at a scale of 0.09, x = 2.8e19)."""
    inputs = tuple(inputs)

    def grows(v):
        return any(p.base in inputs and p.exp.is_Integer and p.exp >= 2 for p in v.atoms(sympy.Pow))

    def found(e):
        if not e.is_Mul:
            return None
        pw = [f for f in e.args if type(f) is sympy.Piecewise]
        if len(pw) != 1 or not any(grows(v) for v, _ in pw[0].args):
            return None
        k = sympy.Mul(*[f for f in e.args if f is not pw[0]])
        if k.is_number or k.has(*inputs):
            return None
        return pw[0], k

    def into(e):
        pair = found(e)
        if pair is None:
            return None
        pw, k = pair
        return sympy.Piecewise(*[(k * v, c) for v, c in pw.args], evaluate=False)

    return _replace_found(expr, into)


def horner_form(expr: sympy.Expr, inputs: Sequence[sympy.Symbol]) -> sympy.Expr:
    """Every polynomial of degree >= 2 in an input, in Horner form: a0 + x*(a1 + x*(a2 + a3*x)).
    Written out, a3*x**3 overflows at |x| > 7e12 in float32 and a zero coefficient then gives
    0 * inf = NaN (a learnable cubic initialised to a line); in Horner form the value is
    finite wherever it should be, and an overflow has the sign of the leading term."""
    def is_polynomial(e):
        if type(e) is not sympy.Add:
            return False
        for u in inputs:
            if u in e.free_symbols and e.is_polynomial(u) and sympy.degree(e, u) >= 2:
                return True
        return False

    def horner(e):
        u = next(u for u in inputs if u in e.free_symbols and e.is_polynomial(u) and sympy.degree(e, u) >= 2)
        return _horner_in(sympy.Poly(e, u).all_coeffs(), u)     # coefficients may be any expressions free of u

    return expr.replace(is_polynomial, horner)


#: calls that can vanish where their argument grows (split_powers_at_calls)
_VANISHING_CALLS = (sympy.exp, sigmoid, sympy.erfc, softplus)


def _can_vanish(f) -> bool:
    """Whether f is a call that can vanish where its argument grows: one of _VANISHING_CALLS,
    a capped exponential, or a sigmoid as its pair's branches (sigmoid_pairs: r or e*r, e an
    exponential)."""
    if isinstance(f, sympy.Piecewise) and len(f.args) == 2:
        a, b = (branch.expr for branch in f.args)
        return any(isinstance(q, sympy.exp) for q in sympy.Mul.make_args(a / b) + sympy.Mul.make_args(b / a))
    return isinstance(f, _VANISHING_CALLS + (CappedExp,))


def split_powers_at_calls(expr: sympy.Expr, inputs: Sequence[sympy.Symbol], of_inputs: bool = False) -> sympy.Expr:
    """Every product of an input's power x**k (k from 2 to MAX_PRODUCT_POWER) and calls that
    can vanish as (x * calls) * x ... * x, each product kept whole (UnevaluatedExpr), and of
    x**-k (k from 1) as (calls / x) / x ... / x (exp(-1/x**2)/x**3 is 0, not 0/0, where x**3
    underflows; _divide_in_kept_products keeps the divisions): x**2
    overflows from |x| = 1.8e19 in float32 where the product does not, and a call that
    vanishes there makes x*call 0, not inf*0 = NaN.  Kept whole, the split holds where CSE
    names x**2 once for several uses (exp(-a*x**2)'s gradient in a, -x**2*exp(-a*x**2), the
    power shared with the exponent).  A call times a sum with such a term takes each term
    (x*exp(-a*x**2)'s slope, (1 - 2*a*x**2)*exp(-a*x**2)).  With `of_inputs`, only calls
    that hold an input (final, before horner_form)."""
    def is_power(f):        # (of x, or of a scaled ratio's v = x/s: rational_form's q(v) = v**k)
        return (f.is_Pow and (f.base in inputs or isinstance(f.base, ScaledInput) and f.base.args[0] in inputs)
                and f.exp.is_Integer and (2 <= f.exp <= MAX_PRODUCT_POWER or -MAX_PRODUCT_POWER <= f.exp <= -1))

    def is_call(f):         # calls that can vanish where their argument grows
        return _can_vanish(f) and (f.has(*inputs) or not of_inputs)

    def splits(e):
        if not e.is_Mul:
            return False
        return sum(1 for f in e.args if is_power(f)) == 1 and any(is_call(f) for f in e.args)

    def split(e):
        power = next(f for f in e.args if is_power(f))
        # x times the calls and the other factors first (a sigmoid pair's 1/(1 + e)**2 as
        # well: at b = 0, x**2*sigmoid(b*x)*sigmoid(-b*x) is x*1*x/4 - inf where x*x/4 is not),
        # then one x at a time, numbers above 1 last (4*x would overflow first)
        big = [f for f in e.args if f.is_number and abs(f) > 1]
        inner = [f for f in e.args if f is not power and all(f is not b for b in big)]
        one = power.base if power.exp > 0 else 1 / power.base
        whole = sympy.UnevaluatedExpr(sympy.Mul(one, *inner))
        for _ in range(abs(int(power.exp)) - 1):
            whole = sympy.UnevaluatedExpr(sympy.Mul(whole, one))
        return sympy.Mul(*big, whole)

    def spread_over(e):     # call * (1 - 2*a*x**2): the sum whose terms split with the calls
        if not (e.is_Mul and any(is_call(f) for f in e.args)):
            return None
        calls = [f for f in e.args if is_call(f)]
        # (a term over a power of x only where the calls vanish at x = 0, where it grows:
        # x**2*sigmoid(-1/x**2)'s slope; exp(x)*(1/x - 1/x**2), expm1(x)/x's slope collected in
        # exp(x), overflows as one product, where its terms taken apart are inf - inf)
        vanish = functools.cache(lambda: vanishes_at_zero(calls))
        return next((f for f in e.args if f.is_Add and any(splits(sympy.Mul(t, *calls)) and (not over_power(t) or vanish())
                                                             for t in f.args)), None)

    def over_power(t):
        return any(is_power(f) and f.exp < 0 for f in sympy.Mul.make_args(t))

    def vanishes_at_zero(calls):
        tiny = {u: sympy.Float("1e-30", 30) for u in inputs}
        try:
            value = sympy.Mul(*calls).xreplace(tiny).evalf(30)
        except (TypeError, ValueError, ArithmeticError, RecursionError):
            return False
        return value.is_number and value.is_finite and abs(value) < 1e-100

    def spread(e):
        total = spread_over(e)
        if total is None:
            return None
        others = [f for f in e.args if f is not total]
        return sympy.Add(*[sympy.Mul(t, *others) for t in total.args])

    return _replace_found(expr, spread).replace(splits, split)


def _horner_in(coeffs, u):
    """c0*u**n + ... + cn (coefficients highest first) in Horner form."""
    out = sympy.S.Zero
    for c in coeffs:        # 1.0*u is not simplified as 1*u is (a product of polynomials in floats)
        out = out * u + (sympy.Integer(int(c)) if c.is_Float and float(c).is_integer() else c)
    return out


# Rational functions of an input (PAU's P(x)/Q(x)): the numerator and the denominator
# overflow where their ratio does not (x**5 at |x| > 5e7 in float32, then inf/inf = NaN).
# Each polynomial of degree d is divided by s**d, with s = 2**k the power of two above |x|
# (k = 0 where |x| < 1), and written in v = x/s and w = 1/s: its term c*x**k becomes
# c*v**k*w**(d - k), all of magnitude at most |c|.  The powers of s that remain are collected
# (s**(5 - 4) for PAU's P/Q, none for its derivative), so nothing grows beyond the result.
# Scaling by a power of two is exact: every term is the term as written times 2**-kd, rounded
# the same way (x - 3 is still exactly 0 at x = 3).  Where |x| < 1 this is the expression as
# written (v = x, w = 1); at x = +-inf (v = +-1, w = 0) it is the limit.
def scale_shift(value: float) -> int:
    """The k of a finite float's scale 2**k: 0 where |value| < 1, else |value| < 2**k <= 2|value|."""
    return max(0, math.frexp(value)[1])


class ScaledInput(sympy.Function):
    """ScaledInput(u) = u / 2**k, 2**k the power of two above |u| (1 where |u| < 1): exact,
    below 1 in magnitude; +-1 at u = +-inf, NaN at NaN."""

    nargs = 1
    is_real = True

    @classmethod
    def eval(cls, arg):
        if arg.is_extended_real and arg.is_infinite:
            return sympy.sign(arg)
        if arg.is_extended_real and arg.is_number:
            return arg / sympy.Integer(2) ** scale_shift(float(arg))


class InverseScale(sympy.Function):
    """InverseScale(u) = 1 / 2**k for ScaledInput's k: 1 where |u| < 1, 0 at u = +-inf."""

    nargs = 1
    is_nonnegative = True

    @classmethod
    def eval(cls, arg):
        if arg.is_extended_real and arg.is_infinite:
            return sympy.S.Zero
        if arg.is_extended_real and arg.is_number:
            return 1 / sympy.Integer(2) ** scale_shift(float(arg))


def _is_sign(e, u) -> bool:
    """sign(...) or a branch whose values do not depend on u (sign(b*u) from abs'): degree 0."""
    return isinstance(e, sympy.sign) or isinstance(e, sympy.Piecewise) and all(not v.has(u) for v, _ in e.args)


def _monomial_degree(e, u) -> int | None:
    """The degree in u of a monomial-like factor (u**k, |c*u**k|, a sign), or None."""
    if not e.has(u) or _is_sign(e, u):
        return 0
    if e == u:
        return 1
    if isinstance(e, sympy.Abs):        # |c*u**k|, also as expand writes it: |a*x + x|
        c, rest = sympy.factor_terms(e.args[0]).as_independent(u, as_Add=False)
        return _monomial_degree(rest, u) if not isinstance(rest, sympy.Abs) else None
    if e.is_Pow and e.exp.is_Integer and e.exp > 0:
        d = _monomial_degree(e.base, u)
        return None if d is None else d * int(e.exp)
    if e.is_Mul:
        degrees = [_monomial_degree(f, u) for f in e.args]
        return None if None in degrees else sum(degrees)
    return None


def _terms(poly, u) -> list[tuple[int, sympy.Expr]] | None:
    out = []
    for t in sympy.Add.make_args(poly):
        d = _monomial_degree(t, u)
        if d is None:
            return None
        out.append((d, t))
    return out


def _is_polynomial_in(e, u) -> bool:
    if not e.has(u) or e == u or _is_sign(e, u):
        return True
    if e.is_Add or e.is_Mul:
        return all(_is_polynomial_in(a, u) for a in e.args)
    if e.is_Pow:
        return e.exp.is_Integer and e.exp > 0 and _is_polynomial_in(e.base, u)
    return isinstance(e, sympy.Abs) and _monomial_degree(e, u) is not None


_S = sympy.Symbol("_scale", positive=True)      # the scale s while a rational function is scaled


def _base_power(f) -> tuple[sympy.Expr, int]:
    """A factor as base**k (k an integer; 1 where it is not such a power)."""
    return (f.base, int(f.exp)) if f.is_Pow and f.exp.is_Integer else (f, 1)


def _pure_power(term, u) -> tuple[int, sympy.Expr]:
    """term as u**j * rest, rest without a bare power of u (|u|, signs and the like stay in it)."""
    j, rest = 0, []
    for f in sympy.Mul.make_args(term):
        if f == u:
            j += 1
        elif f.is_Pow and f.base == u and f.exp.is_Integer and f.exp > 0:
            j += int(f.exp)
        else:
            rest.append(f)
    return j, sympy.Mul(*rest)


def _scaled_polynomial(terms, u):
    """A polynomial in u of degree d, given as its terms (degree, term), as _S**d * q(v, w),
    with v = ScaledInput(u) and w = InverseScale(u): its term c*u**k becomes c*v**k*w**(d - k),
    q in Horner form in v (with w exact, this rounds as Horner's scheme in u does:
    a0*w**5 + v*(a1*w**4 + v*(...)))."""
    d = max(k for k, _ in terms)
    v, w = ScaledInput(u), InverseScale(u)

    def in_v(e):        # a sign's condition stays in u (x > 2 is not v > 2)
        if not e.has(u) or _is_sign(e, u):
            return e
        return v if e == u else e.func(*(in_v(a) for a in e.args))

    by_power: dict[int, sympy.Expr] = {}
    for k, t in terms:
        j, rest = _pure_power(t, u)
        by_power[j] = by_power.get(j, sympy.S.Zero) + in_v(rest) * w ** (d - k)
    powers = sorted(by_power, reverse=True)
    q = by_power[powers[0]]
    for hi, lo in zip(powers, powers[1:]):
        q = q * v ** (hi - lo) + by_power[lo]
    return _S ** d * q * v ** powers[-1]


def _scaled_ratio(e, u):
    """The product e with its ratio of polynomials in u scaled, or None where it has none
    that can overflow: a numerator and a denominator of degree >= 1 in u, one of them of
    degree >= 2 (x/(|x| + 1)**3 is one)."""
    rational, other = [], []       # (terms of a polynomial base, its power, its degree); the rest
    for f in sympy.Mul.make_args(e):
        base, k = _base_power(f)
        terms = _terms(sympy.expand(base), u) if base.has(u) and _is_polynomial_in(base, u) else None
        if terms is not None:
            rational.append((terms, k, max(d for d, _ in terms)))
        else:
            other.append(f)
    numer = sum(d * k for _, k, d in rational if k > 0)
    denom = sum(-d * k for _, k, d in rational if k < 0)
    if not numer or not denom or max(numer, denom) < 2:
        return None
    scaled = sympy.Mul(*(_scaled_polynomial(terms, u) ** k for terms, k, _ in rational))
    return sympy.Mul(*other) * scaled.subs(_S, 1 / InverseScale(u))


def _over_common_denominator(e, u):
    """A sum of ratios of polynomials in u as one ratio, its numerator expanded: the quotient
    rule's P'/Q - P*Q'/Q**2 -> (P'*Q - P*Q')/Q**2, where the leading terms (5*a5*x**4 and
    4*a5*x**4 over b4*x**4 for PAU) cancel exactly instead of in rounded arithmetic."""
    if not all(_is_polynomial_in(_base_power(f)[0], u) for t in e.args for f in sympy.Mul.make_args(t)):
        return e
    numer, denom = sympy.fraction(sympy.together(e))
    if not denom.has(u):
        return e
    # factors common to the terms stay as they are (the derivative of (a - b)**3/D is
    # (a - b)**2 * (...)/D**2: exactly 0 at a = b), the rest is expanded
    common, sums = [], []
    for f in sympy.Mul.make_args(sympy.factor_terms(numer)):
        (sums if f.is_Add else common).append(f)
    terms = sympy.Add.make_args(sympy.expand(sympy.Mul(*sums)))
    return sympy.Mul(*common) * sympy.Add(*(rewrite_sign_product(t) or t for t in terms)) / denom


def rational_form(expr: sympy.Expr, inputs: Sequence[sympy.Symbol]) -> sympy.Expr:
    """Every ratio of polynomials in an input (within a product: x**3/(x**2 + 1)*exp(-x)) with
    each polynomial scaled (see ScaledInput): P(x)/Q(x) -> s*p(v, w)/q(v, w) for degrees (5, 4),
    the powers of s (the power of two above max(1, |x|)) collected, so that nothing overflows
    where the ratio does not.  Not inside a Padé approximant near 0 (ApproximatedNearZero:
    only for small x)."""
    def attempt(e):
        if e.is_Mul or e.is_Add:
            for u in inputs:
                if e.has(u):        # x*(P'/Q - P*Q'/Q**2) is scaled as one ratio, x with the rest
                    one = _over_common_denominator(e, u) if e.is_Add else sympy.Mul(
                        *(_over_common_denominator(f, u) if f.is_Add else f for f in e.args))
                    scaled = _scaled_ratio(one, u)
                    if scaled is not None:
                        return scaled
        return None

    return _outermost(expr, attempt)


def _outermost(expr, attempt):
    """expr with attempt(node) in place of each outermost node where it is not None; nothing
    inside a Padé approximant near 0 (ApproximatedNearZero: only for small x)."""
    if expr.is_Atom or isinstance(expr, ApproximatedNearZero):
        return expr
    done = attempt(expr)
    if done is not None:
        return done
    args = tuple(_outermost(a, attempt) for a in expr.args)
    return expr.func(*args) if args != expr.args else expr


# Functions of exp(x) (mish's x*tanh(softplus(x)) and its derivative): written out, each
# function is its own transcendental call (softplus, exp, sigmoid and tanh in mish's
# derivative), each with its own rounding error, and where the derivative's terms cancel,
# those errors remain.  Every such function is a rational function of E = exp(u)
# (tanh(softplus(x)) = (E**2 + 2*E)/(E**2 + 2*E + 2)), so the whole output is one ratio
# N(E)/D(E), N's coefficients polynomials in x, from ONE exponential: the cancellation then
# happens in the coefficients (6 + 4*x), exactly or in one rounding.  With e = exp(-|u|) in
# (0, 1] nothing overflows: E = e where u < 0 and E = 1/e where u >= 0, where N and D are
# multiplied by e**deg(D) (their coefficients reversed).  Only where D has no coefficients of
# opposite sign (no cancellation in it for E > 0), nor N's constant parts (tanh(x) =
# (E**2 - 1)/(E**2 + 1) stays tanh), and where the output has two calls or more, one of them
# costlier than an exponential (tanh, softplus, a log): sigmoid and exp are one exponential
# each already, and on the CPU fallback the two branches cost more than a second sigmoid
# (silu' stays sigmoid(x)*(1 + x*sigmoid(-x)) there; the kernels take the ratio, see derive).
_EXP_FAMILY = (sympy.exp, sigmoid, softplus, sympy.tanh, sympy.log, log1p, expm1)
COSTLY_CALLS = (sympy.tanh, softplus, sympy.log, log1p, expm1)
_TRANSCENDENTAL = _EXP_FAMILY + (sympy.erf, sympy.erfc, erfcx, sympy.sin, sympy.cos, sympy.sinh, sympy.cosh, sympy.atan)


def _exp_calls(e, x) -> tuple[int, int]:
    """(calls of the exp family, calls costlier than one exponential) in e that hold x."""
    calls = [a for a in sympy.preorder_traversal(e) if isinstance(a, _EXP_FAMILY) and a.has(x)]
    return len(calls), sum(isinstance(a, COSTLY_CALLS) for a in calls)


def _exp_base(written, x):
    """(u, {exp(k*u): k}): the exps in written that hold x as integer powers of exp(u), u a
    positive multiple of one expression (x, 1.702*x); else None."""
    exps = [a for a in written.atoms(sympy.exp) if a.has(x)]
    split = [a.args[0].as_coeff_Mul() for a in exps]
    if not exps or len({rest for _, rest in split}) != 1 or not all(c.is_number and c != 0 for c, _ in split):
        return None
    c0 = min(abs(c) for c, _ in split)
    powers = {}
    for a, (c, _) in zip(exps, split):
        k = float(c / c0)
        if abs(k - round(k)) > 1e-12:
            return None
        powers[a] = round(k)
    return c0 * split[0][1], powers


def _exp_over_exp(e, x) -> bool:
    """Whether e divides by a power of a sum that holds an exponential of x, and holds one
    outside it too: exp(u)/(c + exp(u))**2 overflows to inf/inf, NaN, where the ratio in
    e = exp(-|u|) does not (1/(2 + exp(-x))'s derivative for x <= -710)."""
    def divides(f):
        return isinstance(f, sympy.Pow) and f.exp.is_negative and f.base.is_Add and _exp_calls(f.base, x)[0] > 0
    factors = sympy.Mul.make_args(e)
    return any(divides(f) for f in factors) and any(not divides(f) and _exp_calls(f, x)[0] for f in factors)


def _exp_ratio(expr, x, sigmoids=False, capped=False):
    """expr as N(E)/D(E) with E = exp(u), from one exponential (see above); else None.  With
    `capped`, the CPU fast variant's form: N(E)/D(E) itself, with E = CappedExp(u) (see
    capped_ratio_form)."""
    calls, costly = _exp_calls(expr, x)
    if calls < 2 or not (costly or sigmoids or _exp_over_exp(expr, x)):
        return None
    written = expr.replace(log1p, lambda a: sympy.log(1 + a)).replace(expm1, lambda a: sympy.exp(a) - 1).rewrite(sympy.exp)
    base = _exp_base(written, x)
    if base is None:
        return None
    u, powers = base
    E = sympy.Dummy("E", positive=True)
    r = written.xreplace({a: E**k for a, k in powers.items()})
    if r.atoms(sympy.Function) or r.has(sympy.exp, sympy.log):
        return None
    numer, denom = sympy.fraction(sympy.cancel(sympy.together(r)))
    if not (numer.is_polynomial(E) and denom.is_polynomial(E)) or denom.free_symbols - {E} or not denom.has(E):
        return None
    N = sympy.Poly(numer, E)
    constant_parts = [c.subs({s: 0 for s in c.free_symbols}) for c in N.all_coeffs()]
    if any(c < 0 for c in constant_parts) and any(c > 0 for c in constant_parts):
        return None
    scale, factors = sympy.factor_list(denom, E)
    if any(c < 0 for f, _ in factors for c in sympy.Poly(f, E).all_coeffs()):
        return None
    # N = g * E**m * N1(E); D = scale * prod(f(E)**k)
    g = sympy.gcd_list(N.all_coeffs())
    if not sympy.fraction(sympy.cancel(numer / g))[1].is_number:
        # a gcd of coefficients in floats is monic and need not divide them: 0.08943*x**4 +
        # 2*x**2 over x**4 + 22.36*x**2 left a ratio of polynomials in x (whose scaled form
        # divided 0 by an underflowed 1/s**4: NaN); the common factors as written divide them
        g = sympy.factor_terms(numer).as_independent(E, as_Add=False)[0]
    N1 = sympy.Poly(sympy.cancel(numer / g), E)
    m = min(mon[0] for mon in N1.monoms())
    coeffs = N1.all_coeffs()[: len(N1.all_coeffs()) - m]
    q = sum(sympy.degree(f, E) * k for f, k in factors)
    p1 = len(coeffs) - 1
    # N1's root at E = 1 (u = 0: x*expm1(x)*sigmoid(-x)'s x*(E - 1)), taken out as
    # expm1(-|u|)**ones: in e, N1's terms would cancel there (1 - e for e near 1 - 8.7e6 ULP
    # at x = 1e-8 in float64)
    ones, rest = 0, sympy.Poly(coeffs, E)
    while rest.degree() > 0 and sympy.simplify(rest.eval(1)) == 0:
        rest, ones = sympy.quo(rest, sympy.Poly(E - 1, E)), ones + 1
    # a root at E = 1 for some values of the params or constants only (c*tanh(x) + d*exp(x)'s
    # numerator d*E**3 + c*E**2 + d*E - c, at d = 0) would cancel there as well, and cannot be
    # taken out: not a ratio then (2*tanh(1e-10) was 8e-8 off, relative, in float64)
    # (E = 1 where u = 0, so x = 0 there: a coefficient's x is 0)
    at_one = sympy.simplify(rest.eval(1).subs(x, 0))
    if rest.degree() > 0 and at_one.free_symbols:
        return None
    if ones and capped:
        return None             # (the capped E - 1 would cancel: the ratio in e takes it)
    coeffs = rest.all_coeffs() if ones else coeffs
    if capped:
        D = sympy.Poly(sympy.Mul(*(f**k for f, k in factors)), E).all_coeffs()
        degree = max(len(coeffs) - 1 + m, len(D) - 1)
        E_u = CappedExp(u, *(sympy.Integer(int((limit - CAPPED_MARGIN) / degree)) for limit in CAPPED_EXP_LIMITS))
        num = E_u**m * _horner_in([sympy.expand(c) for c in coeffs], E_u)
        return (g / scale) * num / _horner_in(D, E_u)
    e = sympy.exp(-real_abs(u))
    neg_num = e**m * _horner_in([sympy.expand(c) for c in coeffs], e)
    pos_num = e ** (q - m - p1) * _horner_in([sympy.expand(c) for c in reversed(coeffs)], e)
    if ones:        # E - 1 is e - 1 for u < 0, and (1 - e)/e for u >= 0 (the 1/e in e**(q - m - p1))
        em1 = expm1(-real_abs(u))
        neg_num, pos_num = neg_num * em1**ones, pos_num * (-em1) ** ones
    # D as one polynomial (its factors multiplied out), in Horner form: mish's (E**2 + 2*E + 2)**2
    # squared doubles the rounding of its base, where Horner's inner roundings shrink by e**k
    # (mish' 4.3 -> 3.3 ULP at its worst point between the grid's)
    D = sympy.Poly(sympy.Mul(*(f**k for f, k in factors)), E).all_coeffs()
    neg_den = _horner_in(D, e)
    pos_den = _horner_in(list(reversed(D)), e)
    negative = u < 0
    return (g / scale) * sympy.Piecewise((neg_num, negative), (pos_num, True)) / sympy.Piecewise((neg_den, negative), (pos_den, True))


def sigmoids_from_exp(outputs):
    """(name, expression) outputs with every sigmoid(u) and sigmoid(-u) - where e = exp(-|u|)
    occurs among them (a ratio's, exp_rational_form) - from that e, as (1 or e)/(1 + e):
    sigmoid(|u|) = 1/(1 + e) and sigmoid(-|u|) = e/(1 + e), one division and no call of their
    own (swiglu's sigmoid(a) in df/db next to the ratio of df/da), +-inf and NaN as sigmoid's."""
    exps = {a.args[0].args[1].args[0] for _, e in outputs for a in e.atoms(sympy.exp)
            if a.args[0].is_Mul and len(a.args[0].args) == 2 and a.args[0].args[0] == -1
            and isinstance(a.args[0].args[1], sympy.Abs)}
    new = {}
    for _, e in outputs:
        for a in e.atoms(sigmoid):
            u = a.args[0]
            for v, sign in ((u, 1), (-u, -1)):
                if v in exps:
                    ex = sympy.exp(-real_abs(v))
                    top = sympy.Piecewise((1, v >= 0), (ex, True)) if sign == 1 else sympy.Piecewise((ex, v >= 0), (1, True))
                    new[a] = top / (1 + ex)        # one division, not e times 1/(1 + e): one rounding less
                    break
    return [(n, e.xreplace(new)) for n, e in outputs] if new else list(outputs)


def sigmoid_pairs(outputs):
    """(name, expression) outputs with sigmoid(u) and sigmoid(-u) - where both occur among
    them - from e = exp(-|u|) and r = 1/(1 + e): sigmoid(|u|) = r and sigmoid(-|u|) = e*r,
    one exponential and one reciprocal for the two (swiglu's backward), +-inf and NaN as
    sigmoid's own.  Not a sigmoid that is the argument of another call (logish's
    log1p(sigmoid(x))): e*r rounds once more than 1/(1 + exp(|u|)), and there the call passes
    that on into a sum that cancels (4.4 ULP on logish' in float32, 3.8 without)."""
    args = {a.args[0] for _, e in outputs for a in e.atoms(sigmoid)}
    inner = {a.args[0] for _, e in outputs for c in e.atoms(sympy.Function) if isinstance(c, _TRANSCENDENTAL)
             for a in c.args[0].atoms(sigmoid)}
    pairs = []
    for u in sorted(args, key=sympy.default_sort_key):
        if -u in args and -u not in pairs and not {u, -u} & inner:
            pairs.append(u)
    if not pairs:
        return list(outputs)
    new = {}
    for u in pairs:
        e = sympy.exp(-real_abs(u))
        r = 1 / (1 + e)
        new[sigmoid(u)] = sympy.Piecewise((r, u >= 0), (e * r, True))
        new[sigmoid(-u)] = sympy.Piecewise((e * r, u >= 0), (r, True))
    return [(n, e.xreplace(new)) for n, e in outputs]


def _exp_bound(v: float) -> float:
    return 0.0 if v == -math.inf else (math.inf if v > 709 else math.exp(v))


def _product_range(a, b):
    if (0.0 in a and math.inf in map(abs, b)) or (0.0 in b and math.inf in map(abs, a)):
        return -math.inf, math.inf           # 0 * inf: nothing known
    products = [x * y for x in a for y in b]
    return (min(products), max(products)) if not any(map(math.isnan, products)) else (-math.inf, math.inf)


def value_range(expr: sympy.Expr, temps=None, _memo=None) -> tuple[float, float]:
    """(lo, hi) that expr's value lies in whatever its free symbols hold (a temporary in
    `temps` by its definition): interval arithmetic over numbers, exp, Abs, sigmoid, sums,
    products, positive integer powers and a Piecewise's branches - sound, not tight; (-inf,
    inf) where nothing is known.  A ratio's denominator from exp_rational_form, a polynomial
    with positive coefficients in exp(-|u|), lies in [D(0), D(1)] (mish's in [1, 5])."""
    temps = temps or {}
    memo = {} if _memo is None else _memo
    if expr in memo:
        return memo[expr]
    rng = lambda e: value_range(e, temps, memo)
    out = (-math.inf, math.inf)
    if expr.is_number:
        try:
            v = float(expr)
        except TypeError:           # a complex number
            v = math.nan
        out = out if math.isnan(v) else (v, v)
    elif expr.is_Symbol:
        out = rng(temps[expr]) if expr in temps else out
    elif isinstance(expr, sympy.exp):
        lo, hi = rng(expr.args[0])
        out = (_exp_bound(lo), _exp_bound(hi))
    elif isinstance(expr, sigmoid):
        out = (0.0, 1.0)
    elif isinstance(expr, sympy.Abs):
        lo, hi = rng(expr.args[0])
        out = (0.0 if lo <= 0 <= hi else min(abs(lo), abs(hi)), max(abs(lo), abs(hi)))
    elif expr.is_Add:
        lo, hi = (sum(b) for b in zip(*map(rng, expr.args)))
        out = out if math.isnan(lo) or math.isnan(hi) else (lo, hi)
    elif expr.is_Mul or (expr.is_Pow and expr.exp.is_Integer and expr.exp > 0):
        factors = expr.args if expr.is_Mul else [expr.base] * int(expr.exp)
        out = (1.0, 1.0)
        for f in factors:
            out = _product_range(out, rng(f))
    elif isinstance(expr, sympy.Piecewise):
        parts = [rng(e) for e, _ in expr.args]
        out = (min(p[0] for p in parts), max(p[1] for p in parts))
    memo[expr] = out
    return out


def shared_exp_products(outputs, inputs=()):
    """(name, expression) outputs with exp(a + b) as exp(a)*exp(b) where exp(a) and exp(b) are
    both among their calls already and one of a and b holds no input (adaptive_mixture's
    exp(w1 - 2|x|) next to exp(w1) and exp(-2|x|)): one exponential fewer, and no overflow or
    call that was not there before.  Where both hold one, the product can be inf*0 where the
    exponential of the sum is 0 (exp(-k*x)*exp(-exp(-k*x)) at k*x = -100 in float32)."""
    exps = {a.args[0]: a for _, e in outputs for a in e.atoms(sympy.exp)}
    new = {}
    for arg, call in exps.items():
        if not arg.is_Add:
            continue
        for term in arg.args:
            rest = arg - term
            if term in exps and rest in exps and not (term.has(*inputs) and rest.has(*inputs)):
                new[call] = exps[term] * exps[rest]
                break
    return [(n, e.xreplace(new)) for n, e in outputs] if new else list(outputs)


def _calls(outputs) -> int:
    """The distinct transcendental calls of (name, expression) outputs, between them."""
    return len({a for _, e in outputs for a in e.atoms(sympy.Function) if isinstance(a, _TRANSCENDENTAL)})


def exp_rational_form(expr: sympy.Expr, inputs: Sequence[sympy.Symbol], sigmoids: bool = False,
                      capped: bool = False) -> sympy.Expr:
    """Every output (or part of one) that is a rational function of exp(u), u a multiple of an
    input, with two transcendental calls or more and one of them costlier than an exponential,
    as N/D from e = exp(-|u|) (see above): mish's derivative from one exp instead of four calls.

    With `sigmoids` (the kernels' form), also where the calls are sigmoids and exponentials
    alone: on a GPU each sigmoid is an exponential and a reciprocal on the special-function
    unit, which one exponential and one division replace (silu' from 2 of each to 1).  The
    eager fallback keeps them: there a sigmoid is one vectorized pass, cheaper than the two
    branches of the ratio."""
    # an output that pays for a costlier call of sigmoid(u) (logish's log1p(sigmoid(x))) takes
    # its rational parts as the ratio too, on the fallback as well: the sigmoid inside the call
    # then comes from the ratio's exponential (sigmoids_from_exp), where the terms' roundings
    # would otherwise meet in the product rule's sum (logish' 5.3 -> 3.1 ULP)
    costly_sigmoid = {x for x in inputs if any(isinstance(c, COSTLY_CALLS) and c.args[0].has(sigmoid) and c.has(x)
                                               for c in expr.atoms(sympy.Function))}

    def attempt(e):
        for x in inputs:
            if e.has(x) and (e.is_Add or e.is_Mul or isinstance(e, _EXP_FAMILY)):
                try:
                    one = _exp_ratio(e, x, sigmoids or x in costly_sigmoid, capped)
                except TypeError:       # parts that are not real (cos(log(x)) as exps of I*log(x))
                    one = None
                if one is not None:
                    return one
        return None

    out = _outermost(expr, attempt)
    return sigmoids_from_exp([("", out)])[0][1] if costly_sigmoid and out != expr and not capped else out


class CappedExp(sympy.Function):
    """CappedExp(u, hi32, hi64): exp(min(u, hi)), hi = hi32 where it is computed in float32 and
    hi64 in float64 - the E of the CPU fast variant's ratios (capped_ratio_form)."""

    nargs = 3


#: exp's argument where float32 and float64 overflow; a capped ratio of degree d takes
#: (limit - CAPPED_MARGIN)/d as its cap, room for coefficients up to e**CAPPED_MARGIN.
CAPPED_EXP_LIMITS = (88, 709)
CAPPED_MARGIN = 16


def capped_ratio_form(expr: sympy.Expr, inputs: Sequence[sympy.Symbol]) -> sympy.Expr:
    """The CPU fast variant's form of exp_rational_form's ratios: N(E)/D(E) as they are, with
    E = exp(u) capped (CappedExp) at a point where E**deg stays finite, instead of a ratio in
    e = exp(-|u|) for each sign of u.  A single polynomial pair, no branch: on the CPU both
    branches are computed over every element, and this costs half.  Exact only where the
    ratio has settled beyond the cap - for the inputs' clamps at huge values
    (limit_guards) - which the compiler measures before it takes this form
    (actgen.precision.measure_against); values it does not settle for, and overflows, are
    not finite and hand the chunk to the guarded function."""
    return exp_rational_form(expr, inputs, capped=True)


# Cancellation at 0: an expression of one variable whose terms cancel to leading order there
# (x - tanh(x) ~ x**3/3) loses every digit for small x; one that divides 0/0 there (sin(x)/x,
# x/(exp(x) - 1)) is NaN at 0 itself, and its derivative's terms (cos(x)/x - sin(x)/x**2,
# each ~1/x) cancel near it.  Near 0 it is replaced by a Padé approximant t**k * P(t)/Q(t)
# (in t**2 for odd or even functions) from its Taylor series, accurate to below float64
# rounding on |t| < r, where r is the point beyond which the terms no longer cancel badly
# (their sum of magnitudes is at most _CANCELLATION_OK times the result).
_ANALYTIC = (sympy.tanh, sympy.sin, sympy.tan, sympy.sinh, sympy.atan, sympy.asinh, sympy.erf, sympy.exp,
             sympy.cos, sympy.cosh, log1p, expm1, sigmoid, softplus)
_CANCELLATION_OK = 3
# terms of a sum that cancel near 0 without bound and by at most this much past some radius
# (never below 3): the approximant covers that radius, and the rest rounds as written
_CANCELLATION_BOUNDED = 16
_LARGER_RADII = (6, 8)      # (such terms may cancel less the farther out: 9.4 times at -4, 6.9 at -8)
_RADII = (0.5, 1, 1.5, 2, 3, 4)
# smaller radii an approximant may fall back to where none holds out to _RADII's (a
# singularity closer: log1p(x)/x's slope, singular at -1, takes [8/8] on |x| < 1/4)
_SMALLER_RADII = (0.125, 0.25)
_PADE_TOLERANCE = mpmath.mpf(2) ** -57


def _real_at(e, t, at):
    """e at t = at in 30 digits, None where it is not real there (log1p(t) for t < -1)."""
    value = sympy.N(e.subs(t, at), 30)
    return mpmath.mpf(sympy.Float(value, 30)._mpf_) if value.is_real and value.is_finite else None


def _cancellation(terms, t, at):
    """How many times the terms' magnitudes exceed their sum at t = at (1 where they are not
    all real there: outside the domain nothing is computed)."""
    values = [_real_at(term, t, at) for term in terms]
    if any(v is None for v in values):
        return mpmath.mpf(1)
    total = abs(sum(values))
    return sum(abs(v) for v in values) / total if total else mpmath.inf


def _condition(body, slope, t, at):
    """max(1, |t f'(t) / f(t)|) at t = at (f = body, f' = slope): where f itself is
    ill-conditioned (near its zeros), cancellation up to that much costs nothing more than
    the rounding of t does."""
    value, slope = _real_at(body, t, at), _real_at(slope, t, at)
    if value is None or slope is None:
        return mpmath.mpf(1)
    return max(mpmath.mpf(1), abs(at * slope / value)) if value else mpmath.inf


# (not functions.MPMATH_FUNCTIONS: those compare their argument with bounds, and the Taylor
# coefficients below evaluate on complex points)
_MPMATH_MODULES = [{"sigmoid": lambda u: 1 / (1 + mpmath.exp(-u)), "softplus": lambda u: mpmath.log1p(mpmath.exp(u)),
                     "log1p": mpmath.log1p, "expm1": mpmath.expm1,
                     "erfcx": lambda u: mpmath.exp(u**2) * mpmath.erfc(u)}, "mpmath"]
_TAYLOR_POINTS = 256
_TAYLOR_RADII = (mpmath.mpf(1) / 2, mpmath.mpf(1) / 8)


def _taylor_coefficients(fn, order: int):
    """The Taylor coefficients a_0 ... a_{order-1} at 0 of fn (an mpmath function, analytic
    near 0 but perhaps 0/0 there), from its values on a circle |t| = r in the complex plane:
    a_n = mean of fn(t_j) / t_j**n over _TAYLOR_POINTS points t_j (the trapezoid rule of
    Cauchy's integral, exact to ~(r/R)**256 relative where fn's nearest singularity is at
    |t| = R).  r is 1/2, or 1/8 where a singularity between 1/2 and 1 aliases into the
    coefficients of negative powers at 1/2 (tanh(2x) - 2x, poles at +-i*pi/4: it had no
    approximant, 7.8e-5 off, relatively, at x = 1e-6 in float64).  Coefficients at rounding
    level are 0.  None where fn cannot be evaluated there, is not real on the real axis, or
    has a pole or a branch point at 0 (the coefficients of negative powers are not 0).  A
    singularity closer than r gives wrong coefficients: the approximant built from them is
    checked against fn itself."""
    for radius in _TAYLOR_RADII:
        coeffs = _taylor_coefficients_on(fn, order, radius)
        if coeffs is not None:
            return coeffs
    return None


def _taylor_coefficients_on(fn, order: int, radius):
    """_taylor_coefficients from the circle |t| = radius, or None."""
    n_pts = _TAYLOR_POINTS
    with mpmath.workdps(160):      # a_59 of an entire function is ~1/59!: far below 60 digits of fn
        roots = [mpmath.expjpi(mpmath.mpf(2 * j) / n_pts) for j in range(n_pts)]
        try:
            values = [mpmath.mpc(fn(radius * w)) for w in roots]
        except (TypeError, ValueError, ArithmeticError):
            return None
        scale = max(abs(v) for v in values)
        if not mpmath.isfinite(scale) or scale == 0:
            return None
        noise = scale * mpmath.mpf(10) ** -70       # above rounding (1e-160) and aliasing (2**-256)

        def coefficient(n):         # n < 0: the Laurent coefficient of t**n, 0 for an analytic fn
            return mpmath.fsum(v * roots[(-j * n) % n_pts] for j, v in enumerate(values)) / n_pts / radius**n

        if any(abs(coefficient(n)) > noise * radius ** -n for n in (-1, -2, -3)):
            return None
        out = []
        for n in range(order):
            c = coefficient(n)
            tol = noise * radius ** -n
            if abs(c.imag) > tol:
                return None
            out.append(mpmath.mpf(0) if abs(c.real) <= tol else c.real)
    with mpmath.workdps(40):
        return [+c for c in out]


def _analytic_forms(body, t):
    """body with each |u| as the analytic function it is near t = 0 (the stable forms' exp(-|x|)
    in sech(x)**2 = 4*exp(-2|x|)/(1 + exp(-2|x|))**2): u or -u by u's sign at 0, and where
    u(0) = 0 both (+u everywhere, then -u), for the approximant made from either one's Taylor
    series to be checked against body itself on both sides."""
    absolutes = [a for a in body.atoms(sympy.Abs) if a.has(t)]
    if not absolutes:
        return [body]
    signs = {a: sympy.sign(a.args[0].subs(t, 0)) for a in absolutes}
    return [body.xreplace({a: (signs[a] if signs[a] != 0 else side) * a.args[0] for a in absolutes}) for side in (1, -1)]


def _pade_fit(a, k, step, exact, grid):
    """The lowest-order Padé approximant (P, Q), v**k P(v**step)/Q(v**step), of the series
    coefficients a that is within _PADE_TOLERANCE of exact over the grid, with Q >= 1/4 there
    (no cancellation in the denominator); None if none up to [24/24] (softplus(2x)/2 - log(2)/2
    near 0, with singularities at +-i*pi/2, takes [17/17])."""
    for m in range(2, 25):
        if 2 * m + 1 > len(a):
            return None
        try:
            p, q = mpmath.pade(a[: 2 * m + 1], m, m)
        except ZeroDivisionError:
            continue
        if any(mpmath.polyval(q[::-1], v**step) < mpmath.mpf(1) / 4 for v in grid):
            continue
        if all(abs(v**k * mpmath.polyval(p[::-1], v**step) / mpmath.polyval(q[::-1], v**step) / exact(v) - 1) < _PADE_TOLERANCE
               for v in grid):
            return p, q
    return None


@functools.lru_cache(maxsize=256)
def _pade_near_zero(e, x, sums=None, far=None):
    """ApproximatedNearZero for e near x = 0, or None.  e is a sum whose terms cancel there
    (sums None), or a ratio that is 0/0 there; sums: the ratio's sums, whose terms must not
    cancel beyond the approximant's radius (none: the smallest radius).  far: the branch
    beyond the radius, e's stable form (default e)."""
    t = sympy.Dummy("t", real=True)
    body = e.xreplace({x: t})
    if any(not p.exp.is_integer and p.base.has(t) and p.base.subs(t, 0) == 0 for p in body.atoms(sympy.Pow)):
        return None     # sqrt(x) and the like: no Taylor series at 0
    with mpmath.workdps(40):
        if sums is None:
            sums = [body.args]
            if _cancellation(sums[0], t, sympy.Rational(1, 1024)) < 64 or _cancellation(sums[0], t, -sympy.Rational(1, 1024)) < 64:
                return None
        else:
            sums = [s_.xreplace({x: t}).args for s_ in sums]
        radius = next(
            (r for r in _RADII
             if all(_cancellation(terms, t, s * r * m) <= _CANCELLATION_OK
                    for terms in sums for s in (1, -1) for m in (1, 2, 4, 8))),
            None,
        )
        if radius is None:      # an oscillating one (sin(x)/x's slope): its own zeros cancel too
            slope = sympy.diff(body, t)
            radius = next((r for r in _RADII
                           if all(_cancellation(terms, t, s * r * m) <= _CANCELLATION_OK * _condition(body, slope, t, s * r * m)
                                  for terms in sums for s in (1, -1) for m in (1, 2, 4, 8))), None)
        if radius is None and len(sums) == 1 and len(sums[0]) > 1:
            # terms that never stop cancelling (expm1(x)/x**2 - 2*(expm1(x) - x)/x**3, the slope
            # of (expm1(x) - x)/x**2: 3 times or more for every x < 0; sigmoid(x)/x -
            # (softplus(x) - log(2))/x**2 more and more as x grows), where near 0 they cancel
            # without bound: the approximant out to the radius where they cancel least, and
            # past it the formula as written (its cancellation there is its own)
            worst = {r: max(_cancellation(terms, t, s * r) for terms in sums for s in (1, -1))
                     for r in _RADII + _LARGER_RADII}
            least = min(worst, key=lambda r: (worst[r], -r))
            radius = least if worst[least] <= _CANCELLATION_BOUNDED else None
        if radius is None:
            return None
        exact = sympy.lambdify(t, body, modules=_MPMATH_MODULES)
        series = []
        for analytic in _analytic_forms(body, t):
            coeffs = _taylor_coefficients(sympy.lambdify(t, analytic, modules=_MPMATH_MODULES), 60)
            if coeffs is None:
                continue        # a pole at 0, or not one function around it (a logarithm)
            k = next((n for n, c in enumerate(coeffs) if c != 0), None)
            if k is not None:
                rest = coeffs[k:]
                step = 2 if all(c == 0 for c in rest[1::2]) else 1
                series.append((rest[::step], k, step))
        # Where no approximant holds out to the radius (a singularity closer than the terms
        # stop cancelling: x - atan(x)'s at +-i, its terms cancel out to 3), the largest
        # smaller radius where one does: the cancellation left past it is bounded (26 times
        # at 1/2 for x - atan(x), 18 at 1/4 for log1p(x)/x's slope), where without it the
        # value at x = 1e-8 was 0.
        fit = None
        smaller = _SMALLER_RADII if sums else ()     # (a ratio of no sums: only 0 itself is 0/0)
        for r in [radius] + [r for r in reversed(smaller + _RADII) if r < radius]:
            grid = [r * mpmath.mpf(j) / 64 for j in range(1, 65)]
            grid += [-v for v in grid]
            for a, k, step in series:
                fit = _pade_fit(a, k, step, exact, grid)
                if fit is not None:
                    break
            if fit is not None:
                radius = r
                break
        if fit is None:             # no approximant passes: at least 0 itself is the limit
            limit = _numeric_limit_at_zero(exact)
            if limit is None:
                return None
            return ApproximatedNearZero((limit, sympy.Abs(x) <= 0), (far if far is not None else _far_sum(e), True))
        p, q = fit
    s = x**step

    def horner(cs):
        out = sympy.Float(mpmath.nstr(cs[-1], 20), 20)
        for c in reversed(cs[:-1]):
            out = sympy.Float(mpmath.nstr(c, 20), 20) + s * out
        return out

    near = x**k * horner(p) / horner(q)
    if far is None:
        far = _far_sum(e)
    return ApproximatedNearZero((near, sympy.Abs(x) < radius), (far, True))


def _numeric_limit_at_zero(fn) -> sympy.Float | None:
    """fn's limit at 0, read off at +-10**-60 and +-10**-90 in 300 digits where all four agree
    to 30 digits (0 where all are below 10**-50), else None.  (sympy.limit's series of a
    nested formula took minutes: asinh(sigmoid(log1p(x**2)/x)).)"""
    with mpmath.workdps(300):
        try:
            values = [fn(s * mpmath.mpf(10) ** -e) for s in (1, -1) for e in (60, 90)]
        except (ArithmeticError, ValueError, TypeError):
            return None
        if not all(isinstance(v, mpmath.mpf) and mpmath.isfinite(v) for v in values):
            return None
        if all(abs(v) < mpmath.mpf(10) ** -50 for v in values):
            return sympy.Float(0)
        if any(abs(v - values[0]) > mpmath.mpf(10) ** -30 * abs(values[0]) for v in values):
            return None
        return sympy.Float(mpmath.nstr(values[0], 20), 20)


class ApproximatedNearZero(Branches):
    """Piecewise((approximant, |x| < r), (f, True)) from the rewrite below.  Its derivative
    is that of f as written (rewritten in turn), not the approximant's: the approximant is
    accurate in value, its derivative less so, and f' need not cancel where f does."""

    def as_written(self) -> sympy.Expr:
        """The last branch as written: a sum, or what a power or product taken into the
        Piecewise made of it ((x - sinh(x))**2), its stable sums as plain ones."""
        return self.args[-1].expr.replace(lambda e: isinstance(e, StableSum), lambda e: sympy.Add(*e.args))

    def _eval_derivative(self, s):
        return sympy.diff(self.as_written(), s)


def rewrite_cancellation_at_zero(e):
    """f(x) whose terms cancel at x = 0 (x - tanh(x)) -> a Padé approximant for |x| < r, f elsewhere."""
    if not _is_sum(e) or len(e.free_symbols) != 1:
        return None
    e = _unapproximated(e)
    # (log(cosh(x))'s branches are the function they compute, for the terms and the
    # approximant, and stay the far branch: log(cosh(x)) - x**2/2 cancelled near 0, 3.5e-4
    # off, relatively, at x = 1e-6 in float64)
    found = _of_one_analytic_input(e)
    if found is None or not _is_sum(found[0]):        # (as written, it may be a number)
        return None
    written, x = found
    if not all(term.has(x) for term in written.args if not term.is_number):       # (log(2) is a number too)
        return None
    if not any(term.is_polynomial(x) or _singular_at_zero(term, x) for term in written.args) and \
            not all(term.subs(x, 0) == 0 for term in written.args) and \
            not written.subs(x, 0) == 0:        # (expm1(x) - x*exp(x): 0 - 0; softplus(x - 1) - softplus(-x - 1))
        return None
    if written.could_extract_minus_sign():        # tanh(x) - x as -(x - tanh(x)): one approximant for both
        near = rewrite_cancellation_at_zero(-e)
        return -near if near is not None else None
    try:
        return _pade_near_zero(written, x, far=None if written == e else e)
    except Exception:  # noqa: BLE001 - not real near 0 (log(x**2 - 1)), or not expandable: no rewrite
        return None


def _unapproximated(e):
    """e with its approximants near 0 as the expressions they approximate (the numerator of
    (x - sin(x))/x**3 was rewritten first, bottom-up, but the ratio is what is 0/0)."""
    if not e.has(ApproximatedNearZero):
        return e
    return e.replace(lambda a: isinstance(a, ApproximatedNearZero), lambda a: a.as_written())


def _of_one_analytic_input(e):
    """(e with log(cosh(u)) as written, its input x) where that has no other branches, one
    input (a symbol) and an analytic function of it (what a Padé approximant near 0 is for);
    else None."""
    written = _written_log_cosh(e)
    if written.has(sympy.Piecewise) or len(written.free_symbols) != 1:
        return None
    x, = written.free_symbols
    if not isinstance(x, sympy.Symbol) or not written.has(*_ANALYTIC):
        return None
    return written, x


def _written_log_cosh(e):
    """e with log(cosh(u)) as written where rewrite_log_cosh took it into branches (LogCosh)."""
    return e.replace(lambda a: isinstance(a, LogCosh), lambda a: sympy.log(sympy.cosh(a.argument())))


def _singular_at_zero(e, x) -> bool:
    """Whether e divides by something that is 0 at x = 0 (cos(x)/x, sin(x)/x**2), also in a
    sum of such terms (exp(-1/x**2)'s second derivative: (4/x**6 - 6/x**4)*exp(-1/x**2))."""
    return any((f.is_Pow and f.exp.is_negative and f.base.has(x) and f.base.subs(x, 0) == 0)
               or (f.is_Add and any(_singular_at_zero(t, x) for t in f.args))
               for f in sympy.Mul.make_args(e))


def rewrite_removable_singularity(e):
    """f(x) = N/D with N and D both 0 at x = 0 (sin(x)/x, x/expm1(x), (x - sin(x))/x**3), whose
    limit there is finite -> a Padé approximant for |x| < r, f elsewhere.  r: where the sums in
    f, if any, no longer cancel."""
    if not e.is_Mul or len(e.free_symbols) != 1:
        return None
    e = _unapproximated(e)
    # (a stable form of the numerator - log(cosh(x))'s branches - is the function it computes
    # for the limit and the approximant, and stays the far branch: log(cosh(x))/x was NaN at 0)
    found = _of_one_analytic_input(e)
    if found is None or not found[0].is_Mul or not _singular_at_zero(*found):
        return None
    written, x = found
    try:
        at_zero = written.subs(x, 0)
        # 0/0, or an infinity times a call sympy leaves unevaluated (sigmoid(-1/x**2)/x**4:
        # zoo*sigmoid(zoo)); a pole is zoo
        if at_zero is not sympy.nan and (at_zero == sympy.zoo or not at_zero.has(sympy.zoo)):
            return None
        sums = [a for f in written.args for a in (f.base if f.is_Pow else f,) if _is_sum(a)]
        return _pade_near_zero(written, x, tuple(sums), far=None if written == e else e)
    except Exception:  # noqa: BLE001 - as above: no rewrite
        return None


def rewrite_log_near_one(e):
    """log(E) of one input x, E 1 at x = 0 or tending to it there (cos(x), sinh(x)/x,
    tanh(x)/x) -> a Padé approximant of log(E) for |x| < r, log(E) elsewhere: near 0, E
    rounds to 1 and log(E) to 0, where it is about E - 1 (in float32, log(sinh(x)/x), about
    x**2/6, was 0 at x = 1e-12 and 6500 ULP off at 1e-6; log(cos(x)) 820 ULP off at 1e-6).
    r: where E and 1 no longer cancel (log's condition near 1 is E - 1's)."""
    if not isinstance(e, sympy.log) or len(e.free_symbols) != 1:
        return None
    found = _of_one_analytic_input(_unapproximated(e.args[0]))
    if found is None:
        return None
    inner, x = found
    try:
        at_zero = inner.subs(x, 0)
        if at_zero is sympy.nan:        # 0/0: its limit
            at_zero = _numeric_limit_at_zero(sympy.lambdify(x, inner, modules=_MPMATH_MODULES))
        if at_zero is None or (at_zero - 1).is_zero is not True:      # (a Float 1.0 is not == 1)
            return None
        return _pade_near_zero(sympy.log(inner), x, (sympy.Add(inner, -1),), far=e)
    except Exception:  # noqa: BLE001 - as above: no rewrite
        return None


def rewrite_singularity_in_branches(e):
    """f of a branch whose branch near 0 is a removable singularity or cancels there ->
    the Piecewise of the branches (sympy's piecewise_fold), each rewritten in turn:
    sin(min(x, 1))/x is sin(x)/x for x < 1, 1 at 0 (it was 0/0 = NaN there, and its slope
    1.4e14 at x = 1e-30 in float64, from two terms of ~1/x that cancel).  Only where a
    branch is rewritten (an ELU's min(0, exp(x) - 1) stays one min)."""
    if isinstance(e, sympy.Piecewise) or not (e.is_Mul or _is_sum(e)) or len(e.free_symbols) != 1:
        return None
    e = _unapproximated(e)      # (a branch's numerator rewritten first: the ratio is what is 0/0)
    branches = e.atoms(sympy.Piecewise)
    if not branches or any(type(p) is not sympy.Piecewise for p in branches):
        return None
    folded = sympy.piecewise_fold(e)
    if type(folded) is not sympy.Piecewise or folded == e:
        return None
    values = [v for v, _ in folded.args]
    if any(v.has(sympy.Piecewise) for v in values):
        return None
    if not any(rewrite_removable_singularity(v) is not None or rewrite_cancellation_at_zero(v) is not None
               for v in values):
        return None
    return folded


def rewrite_scaled_singularity(e):
    """h(p) * g(p*u) where g(v) has a removable singularity or cancels at v = 0 -> h times g's
    approximant near 0, in v = p*u: sin(a*x)/x = a * sin(v)/v, and the soft exponential
    (exp(a*x) - 1)/a = x * expm1(v)/v, whose value at a = 0 is x, not 0/0.  Either symbol
    may be the scale (the latter's gradient in a, x**2 * (exp(v)/v - expm1(v)/v**2), has x
    as the scale of a), and v may be u/p (a learnable CELU alpha*expm1(x/alpha)'s gradient in
    alpha, expm1(v) - v*exp(v), ~ -v**2/2 near 0).  A log(cosh(v)) in its stable form
    (LogCosh) is log(cosh(v)) for the approximant, and stays in that form beyond it
    (log(cosh(a*x))/a is x * log(cosh(v))/v: 0 at a = 0, where log1p(2*sinh(v/2)**2)/a was 0/0)."""
    if not (e.is_Mul or _is_sum(e)) or len(e.free_symbols) < 2:
        return None
    e = _unapproximated(e)
    stable = {sympy.log(sympy.cosh(lc.argument())): lc for lc in e.atoms(LogCosh)}
    e = e.xreplace({lc: w for w, lc in stable.items()})
    if e.has(sympy.Piecewise) or not e.has(*_ANALYTIC):
        return None
    symbols = sorted(e.free_symbols, key=sympy.default_sort_key)
    if not all(isinstance(s_, sympy.Symbol) for s_ in symbols):
        return None
    for u, p, inverse in itertools.product(symbols, symbols, (False, True)):
        if p != u:
            near = _scaled_approximant(e, u, p, inverse)
            if near is not None:
                return near.xreplace(stable)
    for u, p in itertools.permutations(symbols, 2):
        near = _shifted_scaled_approximant(e, u, p)
        if near is not None:
            return near.xreplace(stable)
    return None


def _shifts(e, u, p) -> list:
    """The numbers k (not 0) for which u + k*p is a sum in e."""
    ks = set()
    for a in e.atoms(sympy.Add):
        rest = a - u
        if rest.free_symbols == {p} and (rest / p).is_number:
            ks.add(rest / p)
    return sorted(ks, key=sympy.default_sort_key)


def _numerator_terms(term) -> list:
    """term as a sum over its numerator's terms, each over the denominator as it is factored:
    (w + a)/(a*(1 - a*w)) -> [w/(a*(1 - a*w)), 1/(1 - a*w)]."""
    n, d = sympy.fraction(term)
    parts = sympy.Add.make_args(sympy.expand(n))
    return [term] if len(parts) < 2 else [t / d for t in parts]


def _shifted_scaled_approximant(e, u, p):
    """rewrite_scaled_singularity in w = u + k*p for u: the soft exponential's a < 0 branch,
    -log1p(-a*(a + x))/a, is w*log1p(v)/v at v = -a*w, w = x + a, and its gradient in a,
    (2*a + x)/(a*(1 - a*(a + x))) + log1p(-a*(a + x))/a**2, is 1/(1 + v) plus
    w**2*(log1p(v) - v/(1 + v))/v**2 near v = 0, where its two terms of ~x/a cancelled
    (3e7 ULP off at a = -1e-8).  A sum's terms regular at u = 0 and p = 0 stay as they are."""
    for k in _shifts(e, u, p):
        w = sympy.Dummy("w", real=True)
        moved = e.xreplace({u: w - k * p})
        if moved.has(u):
            continue
        terms = [t for term in sympy.Add.make_args(moved) for t in _numerator_terms(term)]
        poles = [t for t in terms if _singular_at_zero(t, p) or _singular_at_zero(t, w)]
        regular = [t for t in terms if t not in poles]
        if not poles:
            continue
        part = sympy.Add(*poles)
        for a, b, inverse in itertools.product((w, p), (w, p), (False, True)):
            near = _scaled_approximant(part, a, b, inverse) if a != b else None
            if isinstance(near, ApproximatedNearZero):
                # one approximant of the whole (its far branch e as written: rewriting the
                # regular terms apart from it would undo the shift and start over)
                (approx, where), _ = near.args
                if isinstance(where, sympy.LessThan):      # the limit at 0 alone: a, not 1.0*a
                    whole = {f: sympy.Integer(int(f)) for f in approx.atoms(sympy.Float) if float(f).is_integer()}
                    approx = approx.xreplace(whole)
                back = {w: u + k * p}
                return ApproximatedNearZero(((sympy.Add(*regular) + approx).xreplace(back), where.xreplace(back)),
                                            (_far_sum(e), True))
    return None


def rewrite_scaled_power_singularity(e):
    """rewrite_scaled_singularity in v = p*log(b), b**p being exp(v): the Box-Cox transform
    (b**p - 1)/p = log(b) * expm1(v)/v, log(b) at p = 0 (0/0 as written, and 0 for
    |p*log(b)| below half an ULP of 1, where b**p rounds to 1), and its gradient in p,
    log(b)**2 * (exp(v)/v - expm1(v)/v**2), whose two terms of ~log(b)/p cancel; so for
    expm1(p*log(b))/p, and for b = 1 + x with log(b) as log1p(x).  The branch beyond the
    approximant is as written (torch's pow: b**2 at b < 0 is b*b, where log(b) and so v are
    NaN and the comparison |v| < r is false)."""
    if not (e.is_Mul or _is_sum(e)) or len(e.free_symbols) < 2 or e.has(sympy.Piecewise, ApproximatedNearZero):
        return None
    powers = {g for g in e.atoms(sympy.Pow) if g.exp.is_Symbol and not g.base.is_number and not g.base.has(g.exp)}
    logs = {g.args[0] for g in e.atoms(sympy.log) if not g.args[0].is_number}
    logs |= {1 + g.args[0] for g in e.atoms(log1p) if not g.args[0].is_number}
    bases = {g.base for g in powers} | logs
    if len(bases) != 1:
        return None
    b, = bases
    exponents = {g.exp for g in powers}
    if len(exponents) > 1:
        return None
    log_b = sympy.Dummy("log_b", real=True)
    written = log1p(b - 1) if b.as_coeff_Add()[0] == 1 else sympy.log(b)     # (log(1 + x) as log1p(x))
    at = {sympy.log(b): log_b, log1p(b - 1): log_b}
    back = {log_b: written}
    for p in exponents:
        at[b**p] = sympy.exp(p * log_b)
        back[sympy.exp(p * log_b)] = b**p
    in_log = e.xreplace(at)
    if in_log.has(*b.free_symbols):
        return None
    near = rewrite_scaled_singularity(in_log)
    if near is None:
        return None
    # (a StableSum's terms are mapped back one by one: it is rebuilt from them, not merged)
    return near.replace(lambda a: isinstance(a, StableSum), lambda a: StableSum(*(t.xreplace(back) for t in a.args))).xreplace(back)


def _scaled_approximant(e, u, p, inverse):
    """rewrite_scaled_singularity's approximant for v = p*u (inverse: u/p), or None."""
    # (in a sum, the terms in both: 1 + x*exp(a*x)/a - expm1(a*x)/a**2, the soft exponential's
    # slope in a, is 1 + x**2*(exp(v)/v - expm1(v)/v**2))
    both = [t for t in e.args if t.has(u) and t.has(p)] if _is_sum(e) else [e]
    rest = [t for t in e.args if t not in both] if _is_sum(e) else []
    part = sympy.Add(*both) if _is_sum(e) else e
    if rest and len(both) < 2:
        return None
    parts = _scale_separated(part, u, p, inverse)
    if parts is None:
        return None
    h, g = parts
    near = rewrite_removable_singularity(g) if g.is_Mul else rewrite_cancellation_at_zero(g)
    if near is not None and near.is_Mul:        # -(approximant) of a sum taken as its negative
        sign, near = near.as_coeff_Mul()
        h = h * sign
    if not isinstance(near, ApproximatedNearZero):
        return None
    # one approximant of the whole part (its derivative is the part's own, not the product
    # rule's two terms, which cancel: x*expm1(v)/v's slope in x is exp(a*x)), its polynomials
    # in v itself, not expanded into powers of p and u
    v = sympy.UnevaluatedExpr(u / p if inverse else p * u)
    (approx, where), _ = near.args
    return sympy.Add(*rest) + ApproximatedNearZero(
        (h * approx.xreplace({_SCALED: v}), where.xreplace({_SCALED: v})),
        (_far_sum(part), True))


def _is_ordering(e) -> bool:
    """Whether e is <, <=, > or >= (not == or !=)."""
    return isinstance(e, sympy.core.relational.Relational) and e.rel_op in ("<", "<=", ">", ">=")


def rewrite_comparison_of_multiples(e):
    """x > a*x -> (1 - a)*x > 0 (max(x, a*x), a leaky relu written as a max): at x = +-inf both
    sides are inf and the comparison is false either way, where the product's sign is the
    limit's.  A positive number factor goes: 0.99*x > 0 -> x > 0."""
    if not _is_ordering(e):
        return None
    common = [u for u in e.lhs.free_symbols & e.rhs.free_symbols if isinstance(u, sympy.Symbol)]
    if len(common) != 1:
        return None
    u, = common
    k, dep = sympy.factor_terms(e.lhs - e.rhs).as_independent(u, as_Add=False)
    if dep != u or k.has(u):
        return None
    if k.is_number:
        if k == 0:
            return None
        return e.func(u, 0) if k > 0 else e.reversed.func(u, 0)
    return e.func(k * u, 0)


def rewrite_comparison_of_a_power(e):
    """k*u**n compared with 0 (k a number) as u's sign: 2*x**2 > 0 -> |x| > 0, x**3 < 0 ->
    x < 0.  The power underflows to 0 (x**2 at |x| < 1e-19 in float32) and overflows where
    the sign does not."""
    if not _is_ordering(e):
        return None
    if e.lhs == 0:
        e = e.reversed
    if e.rhs != 0:
        return None
    k, power = e.lhs.as_coeff_Mul()
    if not (power.is_Pow and power.base.is_Symbol and power.exp.is_Integer and power.exp >= 2) or k == 0:
        return None
    u, n = power.base, int(power.exp)
    op = e.rel_op if k > 0 else {"<": ">", "<=": ">=", ">": "<", ">=": "<="}[e.rel_op]
    if n % 2:
        return {"<": u < 0, "<=": u <= 0, ">": u > 0, ">=": u >= 0}[op]
    return {"<": sympy.false, "<=": sympy.Abs(u) <= 0, ">": sympy.Abs(u) > 0, ">=": sympy.true}[op]


def rewrite_comparison_of_an_exp(e):
    """exp(u) compared with a positive number c as u with log(c): exp(x) > 1 -> x > 0
    (min(0, exp(x) - 1), an ELU written with a min).  exp(x) rounds to 1 for |x| below half
    an ULP of 1 (1e-30 took the branch of x <= 0), where x's sign is exact."""
    if not _is_ordering(e):
        return None
    if isinstance(e.rhs, sympy.exp):
        e = e.reversed
    if not (isinstance(e.lhs, sympy.exp) and e.rhs.is_number and e.rhs.is_positive):
        return None
    return e.func(e.lhs.args[0], sympy.log(e.rhs))


def rewrite_double_angle(e):
    """c*cos(v)**2 - c*sin(v)**2 -> c*cos(2*v), which cancels where cos(2*v) is near 0 (the
    second derivative of 1 - cos(x) once that is 2*sin(x/2)**2); 2*sin(v)*cos(v) -> sin(2*v)
    (one call, no cancellation either way)."""
    if isinstance(e, sympy.Mul):
        sines = [f for f in e.args if isinstance(f, sympy.sin)]
        for s in sines:
            c = sympy.cos(s.args[0])
            if c in e.args:
                rest = e / (s * c)
                if not rest.has(s, c):
                    return rest / 2 * sympy.sin(2 * s.args[0])
        return None
    if not _is_sum(e):
        return None
    for term in e.args:
        for factor in sympy.Mul.make_args(term):
            if isinstance(factor, sympy.Pow) and factor.exp == 2 and isinstance(factor.base, sympy.cos):
                v = factor.base.args[0]
                c = term / factor
                partner = -c * sympy.sin(v) ** 2
                if not c.has(sympy.cos(v), sympy.sin(v)) and partner in e.args:
                    return _replace_pair(e, term, partner, c * sympy.cos(2 * v))
    return None


REWRITES: Sequence[Callable[[sympy.Basic], sympy.Basic | None]] = (
    rewrite_sigmoid_power,
    rewrite_softplus,
    rewrite_log_of_product,
    rewrite_sigmoid,
    rewrite_power_of_one_plus_exp,
    rewrite_exp_sigmoid,
    rewrite_exp_ratio,
    rewrite_sinh_over_cosh,
    rewrite_cosh_over_sinh,
    rewrite_sinh,
    rewrite_sinh_over_exp_sum,
    rewrite_exp_over_expm1,
    rewrite_exp_over_exp_square_sum,
    rewrite_log1p,
    rewrite_log1p_of_power,
    rewrite_expm1,
    rewrite_cos_minus_one,
    rewrite_double_angle,
    rewrite_expm1_complement,
    rewrite_log_of_power,
    rewrite_vanishing_times_log,
    rewrite_log_expm1,
    rewrite_log_one_minus_exp,
    rewrite_one_plus_inverse_expm1,
    rewrite_constant_over_sum,
    rewrite_log_sigmoid,
    rewrite_log_tanh,
    rewrite_log_softplus,
    rewrite_log_erfc,
    rewrite_scaled_erfc,
    rewrite_logsumexp,
    rewrite_log_cosh,
    rewrite_log1p_cosh,
    rewrite_log_cosh_gap,
    rewrite_log_cosh_line,
    rewrite_erfc,
    rewrite_tanh_sigmoid,
    rewrite_sigmoid_complement,
    rewrite_sigmoid_tanh,
    rewrite_sigmoid_difference,
    rewrite_expm1_sigmoid,
    rewrite_softplus_difference,
    rewrite_factor_into_stable_sum,
    rewrite_softplus_minus_slope,
    rewrite_softplus_minus_argument,
    rewrite_sigmoid_difference_far,
    rewrite_sech2,
    rewrite_exp_product,
    rewrite_sign_product,
    rewrite_indicator_product,
    rewrite_common_denominator,
    rewrite_power_sum,
    rewrite_sqrt_conjugate,
    rewrite_power_near_one,
    rewrite_root_common_factor,
    rewrite_square_denominator,
    rewrite_inverse_sqrt_conjugate,
    rewrite_comparison_of_multiples,
    rewrite_comparison_of_a_power,
    rewrite_comparison_of_an_exp,
    rewrite_cancellation_at_zero,
    rewrite_removable_singularity,
    rewrite_log_near_one,
    rewrite_singularity_in_branches,
    rewrite_scaled_singularity,
    rewrite_scaled_power_singularity,
)


def stabilize(expr: sympy.Basic) -> sympy.Basic:
    """Apply REWRITES bottom-up until nothing changes at each node."""
    if not expr.args or isinstance(expr, (sympy.Symbol, sympy.Number, ApproximatedNearZero, DerivedAsWritten, LogSoftplus,
                                          LogErfc, Log1pPower, LogCoshGap)):
        return expr         # (an approximant's far branch is what was rewritten into it)
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


# --- kinks a function is smooth across ----------------------------------------------------
# The conventions at a kink (Max(x, 0)' = 0 at 0, sign(0) = 0, Heaviside(0) = 0) are a
# choice only where the two sides' slopes differ.  Where kinks combine into a function that
# is smooth across them - max(x, 0) + log1p(exp(-|x|)) (softplus as it is often written),
# sign(x)*log1p(|x|) (symlog), x*Heaviside(x) + expm1(x)*Heaviside(-x) (ELU) - the slope
# there is the one both sides have, where the conventions summed to 0 (1/2, 1 and 1 are).

class _Undecided(Exception):
    """A branch's condition that the side of a kink does not decide (it holds a param)."""


#: how far to a side of a kink its branches are decided (an exact number)
_SIDE = sympy.Rational(1, 10**30)


def kink_points(expr: sympy.Expr, x: sympy.Symbol) -> list:
    """The numbers x0 where a condition of expr's branches, or the argument of an |u|,
    changes sign with x: u = k*x + c with numbers k and c (x0 = -c/k).  An approximant near 0
    (ApproximatedNearZero) is the function it approximates: the |x| < r of its branches is
    no kink (the approximant is that function's to within rounding), and taking limits
    across it was most of a compile's time (sympy's gruntz on a Pade approximant)."""
    expr = _unapproximated(expr)
    args = [a.args[0] for a in expr.atoms(sympy.Abs)]
    for pw in expr.atoms(sympy.Piecewise):
        for _, c in pw.args:
            args += [r.lhs - r.rhs for r in c.atoms(sympy.core.relational.Relational)]
    points = set()
    for u in args:
        if u.free_symbols == {x} and u.is_polynomial(x) and sympy.degree(u, x) == 1:
            k, c = sympy.Poly(u, x).all_coeffs()
            x0 = -c / k
            if x0.is_Float:
                x0 = sympy.nsimplify(x0)
            if x0.is_real and x0.is_finite:
                points.add(x0)
    return sorted(points, key=sympy.default_sort_key)


def _sign_beside(u: sympy.Expr, x: sympy.Symbol, x0, side: int) -> int | None:
    """The sign of u just to one side of x0 (side -1 or 1), whatever the params in it are:
    u(x0)'s where sympy can tell it, else, where u(x0) is 0, side times the sign of du/dx
    there (alpha*(exp(x/alpha) - 1) at 0: the side's, for any alpha); None where neither
    tells."""
    at = u.subs(x, x0 + side * _SIDE)
    if at.is_number and at.is_real:
        sign = sympy.sign(at)
        if sign in (-1, 0, 1):
            return int(sign)
    at = u.subs(x, x0)
    if at.is_positive or at.is_negative:
        return 1 if at.is_positive else -1
    if at.is_zero or sympy.simplify(at) == 0:
        slope = sympy.diff(u, x).subs(x, x0)
        if slope.is_positive or slope.is_negative:
            return side if slope.is_positive else -side
    return None


_HOLDS = {"<": lambda s: s < 0, "<=": lambda s: s <= 0, ">": lambda s: s > 0, ">=": lambda s: s >= 0}


def _beside(e: sympy.Expr, x: sympy.Symbol, x0, side: int) -> sympy.Expr:
    """e just to one side of x0 (side -1 or 1): each branch as the one taken there, each |u|
    as u or -u; _Undecided where a condition's truth there depends on a param."""
    at = x0 + side * _SIDE

    def decided(c) -> bool:
        holds = c.subs(x, at)
        if holds in (sympy.true, sympy.false):
            return holds == sympy.true
        if isinstance(c, sympy.core.relational.Relational) and c.rel_op in _HOLDS:
            sign = _sign_beside(c.lhs - c.rhs, x, x0, side)
            if sign is not None:
                return _HOLDS[c.rel_op](sign)
        raise _Undecided

    def branch(*pairs):
        for v, c in pairs:
            if decided(c):
                return v
        raise _Undecided

    def absolute(u):
        sign = _sign_beside(u, x, x0, side)
        return (u if sign > 0 else -u) if sign else sympy.Abs(u)

    e = e.replace(lambda a: isinstance(a, sympy.Piecewise), lambda a: branch(*a.args))
    return e.replace(sympy.Abs, absolute)


def _limit_beside(e: sympy.Expr, x: sympy.Symbol, x0, side: int):
    """e's limit at x0 from one side (side -1 or 1)."""
    g = _beside(e, x, x0, side)
    at = g.subs(x, x0)
    if at.is_finite:
        return at
    return sympy.limit(g, x, x0, "-" if side < 0 else "+")


def _equal(a, b) -> bool:
    return a == b or (a.is_finite is not False and b.is_finite is not False and sympy.simplify(a - b) == 0)


def continuous_kinks(f: sympy.Expr, kinks: dict) -> dict:
    """{x: the kink points of x (kinks[x]) where f is continuous: its limits from both sides
    are its value there}."""
    def continuous(x, x0):
        try:
            value = f.subs(x, x0)
            return _equal(_limit_beside(f, x, x0, -1), value) and _equal(_limit_beside(f, x, x0, 1), value)
        except Exception:       # (_Undecided, a limit sympy cannot take, its recursion: not known)
            return False
    return {x: [x0 for x0 in points if continuous(x, x0)] for x, points in kinks.items()}


def smooth_at_kinks(d: sympy.Expr, kinks: dict) -> sympy.Expr:
    """d (a derivative of f, kinks continuous_kinks of f) with the value both sides have at
    each kink point x0 where d's limits from the two sides are one finite value that d at x0
    is not (its branches' conventions): Piecewise((L, |x - x0| <= 0), (d, True)).  Where the
    sides differ, the selected branches' derivative stands (where(x*x > 0, x*x/4, x/2) takes
    1/2 at 0 as written)."""
    for x, points in kinks.items():
        for x0 in points:
            try:
                left, right = _limit_beside(d, x, x0, -1), _limit_beside(d, x, x0, 1)
                if not (left.is_finite and left.is_real is not False):
                    continue
                if not _equal(left, right) or _equal(d.subs(x, x0), left):
                    continue
            except Exception:       # (_Undecided, a limit sympy cannot take, its recursion: no fix)
                continue
            d = sympy.Piecewise((left, sympy.Abs(x - x0) <= 0), (d, True))
    return d


def _as_asinh(e):
    """log(m*u + a*sqrt(k*u**2 + c)) with numbers c, k > 0 and |m| = a*sqrt(k) > 0 ->
    log(a*sqrt(c)) + asinh(u*sqrt(k/c)) (m > 0; minus it for m < 0), else None: asinh written
    out, whose sum cancels for u < 0 (u > 0 with m < 0), near 0 rounds its log's argument to
    1 (log(x + sqrt(x**2 + 1)) was 0 at x = 1e-8 in float32), and overflows past 1.7e38."""
    if not isinstance(e, sympy.log) or not _is_sum(e.args[0]) or len(e.args[0].args) != 2:
        return None
    for root, other in (e.args[0].args, reversed(e.args[0].args)):
        for a, k, u, c in _sqrt_square_plus_all(root, products=True):
            m = sympy.simplify(other / u)
            if not (a.is_positive and c.is_number and c.is_positive and m.is_number):
                continue
            scale = a * sympy.sqrt(k)
            if sympy.simplify(abs(m) - scale) != 0:
                continue
            sign = 1 if m.is_positive else -1
            return sympy.log(a * sympy.sqrt(c)) + sign * sympy.asinh(u * sympy.sqrt(k / c))
    return None


def recognize_inverse_functions(expr: sympy.Basic) -> sympy.Basic:
    """Inverse functions written out, as the function (see _as_asinh): before the rewrites,
    which would take the sum inside the log apart first."""
    return _replace_found(expr, _as_asinh)


def _clean(expr: sympy.Basic) -> sympy.Basic:
    """DiracDelta -> 0 (and sign's derivative where sympy leaves it unevaluated: sign(x/a)'s in
    a), sign/Heaviside -> Piecewise with value 0 at 0."""
    expr = expr.replace(sympy.DiracDelta, lambda *a: sympy.S.Zero)
    expr = expr.replace(lambda e: isinstance(e, sympy.Derivative) and isinstance(e.expr, sympy.sign),
                        lambda e: sympy.S.Zero)
    expr = expr.replace(
        sympy.sign, lambda u: sympy.Piecewise((1, u > 0), (-1, u < 0), (0, True))
    )
    expr = expr.replace(
        sympy.Heaviside, lambda u, *h: sympy.Piecewise((1, u > 0), (0, True))
    )
    return expr


class _RealAbs(sympy.Function):
    """|u| of a real u, whose derivative is sign(u)*u' - sympy's Abs differentiates as the
    modulus of a complex number where it cannot tell its argument is real (|log(x)|:
    log(x/sign(x))*sign(x)**2*sign(log(x))/(x*log(x)), with 1/sign(x) infinite at 0).  The
    generated code computes in real arithmetic (NaN where the formula is not real)."""

    def fdiff(self, argindex=1):
        return sympy.sign(self.args[0])


def _is_zero_power(e) -> bool:
    """0**p with p not a number (max(x, 0)**p's branch at x <= 0): its derivative in p is
    0**p*log(0), which sympy makes NaN, where for p > 0 it is 0 (differentiate makes the
    branch Piecewise((0, p > 0), (0**p, True)) first)."""
    return isinstance(e, sympy.Pow) and e.base == 0 and not e.exp.is_number


def differentiate(expr: sympy.Expr, var: sympy.Symbol, rewrites: bool = True) -> sympy.Expr:
    """d expr / d var, stabilized, with the common factors of its sums taken out: the product
    rule's s + x*s*sigmoid(-x) (silu') becomes s*(1 + x*sigmoid(-x)), where the terms that
    cancel for x < 0 carry fewer rounding errors (two ULP less on silu' in float32).  They are
    taken out before the rewrites too, which would otherwise merge a shared exp into another
    (golu's g + x*exp(-x)*g with g = exp(-exp(-x)): exp(-x - exp(-x)), two exps that round on
    their own, where g*(1 + x*exp(-x)) cancels in one place).  Without `rewrites`, as sympy
    differentiates (sign and Heaviside as branches)."""
    if rewrites:
        expr = expr.replace(_is_zero_power, lambda e: sympy.Piecewise((0, e.exp > 0), (e, True)))
    d = sympy.diff(expr.replace(sympy.Abs, _RealAbs), var).replace(_RealAbs, sympy.Abs)
    d = _clean(d)
    if not rewrites:
        return d
    # (powers of one base again as one: a factor taken out of a sum leaves its power in each
    # term over it, |x|**(2 - 2*p)*|x|**(2*p - 2) in |x|**p's second derivative in x and p)
    d = common_factors_out(powers_of_a_base_out(stabilize(common_factors_out(combine_powers(d)))))
    return power_slope_at_zero(power_log_at_zero(combine_powers(sums_over_a_root(d))))


def _root_of(e: sympy.Add):
    """The one base Q (a polynomial) of e's powers Q**(n/2) with n odd, or None."""
    bases = {p.base for p in e.atoms(sympy.Pow)
             if p.exp.is_Rational and p.exp.q == 2 and isinstance(p.base, sympy.Add)
             and p.base.is_polynomial(*p.base.free_symbols)}
    return bases.pop() if len(bases) == 1 else None


def _linear_in(p: sympy.Poly) -> tuple:
    """(b, a) of a polynomial a + b*s of degree at most 1 (b is 0 for a constant)."""
    coeffs = p.all_coeffs()
    return (0, coeffs[0]) if len(coeffs) == 1 else tuple(coeffs)


def _one_term_over_a_root(e):
    """A sum of terms in powers of sqrt(Q) (Q a polynomial) as one term, where it is one:
    with s = sqrt(Q), the sum over its common denominator, s**2 -> Q in numerator and
    denominator (polynomials in s), their common factors cancelled.  What differentiating a
    form made for its own cancellation leaves: sqrt(x**2 + b**2) - b, computed as
    x**2/(sqrt(x**2 + b**2) + b), has the slope -x**3/(s*(b + s)**2) + 2*x/(b + s) = x/s and
    the second derivative 2*x**4/(s**2*(b + s)**3) + ... = b**2/s**3, whose four terms cancel
    (1e8 ULP at x = 1e4 in float32).  Else e."""
    if e.count_ops() > 400:
        return e
    q = _root_of(e)
    if q is None:
        return e
    s = sympy.Dummy("s", positive=True)
    plain = e.replace(lambda a: type(a) is StableSum, lambda a: sympy.Add(*a.args))
    # a symbol under a root of its own (sqrt(a) beside sqrt(x**2 + a)) as the square of a
    # positive one: sqrt(x**2 + a) - sqrt(a)'s slope, 2*x/(t + s) - x**3/(s*(t + s)**2) with
    # t = sqrt(a), is x/s (as written it was 2 from |x| = 1e25 in float32, where it is 1)
    halves = {p.base: sympy.Dummy(f"t_{p.base}", positive=True) for p in plain.atoms(sympy.Pow)
              if p.exp.is_Rational and p.exp.q == 2 and p.base.is_Symbol and p.base in q.free_symbols}
    if halves:
        plain = plain.xreplace({b: t ** 2 for b, t in halves.items()})
        q = q.xreplace({b: t ** 2 for b, t in halves.items()})
    back = {t: sympy.sqrt(b) for b, t in halves.items()}
    in_s = plain.xreplace({q: s ** 2})     # (s**2)**(3/2) is s**3: s > 0
    if in_s.has(q) or not in_s.is_rational_function():
        return e
    gens = sorted(q.free_symbols, key=sympy.default_sort_key)
    try:
        num, den = sympy.fraction(sympy.together(in_s))
        if not (num.free_symbols | den.free_symbols) <= set(gens) | {s}:
            return e
        # numerator and denominator mod s**2 - q: a + b*s and c + d*s; times c - d*s the
        # denominator is c**2 - d**2*q, free of s: the sum is (A + B*s)/D
        (b, a), (d, c) = (_linear_in(sympy.Poly(p, s).rem(sympy.Poly(s ** 2 - q, s))) for p in (num, den))
        A, B, D = (sympy.Poly(v, *gens) for v in (a * c - b * d * q, b * c - a * d, c ** 2 - d ** 2 * q))
        if D.is_zero or (A.is_zero == B.is_zero):
            return e            # (both terms left: still a sum)
        top = B if A.is_zero else A
        g = sympy.gcd(top, D)
        top, D = sympy.div(top, g)[0], sympy.div(D, g)[0]
        Q, m = sympy.Poly(q, *gens), 0
        while True:         # D = Q**m * R
            quotient, left = sympy.div(D, Q)
            if not left.is_zero:
                break
            D, m = quotient, m + 1
    except (sympy.PolynomialError, sympy.polys.polyerrors.CoercionFailed):
        return e
    top, R = top.as_expr(), D.as_expr()
    if isinstance(top, sympy.Add) or isinstance(R, sympy.Add):
        return e            # a sum left: as it was
    root = sympy.sqrt(q)
    return (top * root ** ((1 if A.is_zero else 0) - 2 * m) / R).xreplace(back)


def sums_over_a_root(expr: sympy.Expr) -> sympy.Expr:
    """Every sum of terms in powers of one sqrt(Q) that is one term over it, as that term
    (see _one_term_over_a_root)."""
    return expr.replace(lambda e: isinstance(e, sympy.Add) and _root_of(e) is not None, _one_term_over_a_root)


def _has_log_term(f, u) -> bool:
    """Whether f is a sum with a term that has the factor log(u)."""
    return isinstance(f, sympy.Add) and any(sympy.log(u) in sympy.Mul.make_args(t) for t in f.args)


def _power_log(e):
    for g in e.args:
        if isinstance(g, sympy.Pow) and not g.exp.is_number and g.base.free_symbols:
            u = g.base
            if any(f == sympy.log(u) or _has_log_term(f, u) for f in e.args if f is not g):
                return sympy.Piecewise((e, u > 0), (0, g.exp > 0), (e, True))
    return e


def power_log_at_zero(expr: sympy.Expr) -> sympy.Expr:
    """u**p * log(u) -> its limit 0 at u = 0 for p > 0, where 0 * -inf is NaN: d(u**p)/dp, so
    |x|**p's gradient in a param p at x = 0 (common after a relu); also u**p times a sum with
    a term in log(u) (|x|**p's second derivative in x and p).  Once, after the rewrites (its
    branches hold the product again)."""
    return expr.replace(lambda e: isinstance(e, sympy.Mul) and e.has(sympy.log), _power_log)


def _power_slope(e):
    for g in e.args:
        if not (isinstance(g, sympy.Pow) and not g.exp.is_number and g.base.free_symbols) or g.base.is_positive:
            continue
        for c in e.args:
            if c is g or c.is_number or not c.free_symbols:
                continue
            k = sympy.cancel((g.exp + 1) / c)
            if k.is_number and k != 0:
                u, zero = g.base, sympy.And(c >= 0, c <= 0)
                return sympy.Piecewise((e, u > 0), (0, zero), (e, True))
    return e


def power_slope_at_zero(expr: sympy.Expr) -> sympy.Expr:
    """c*u**(k*c - 1) -> 0 at u = 0 for c = 0, where it is 0 * inf (NaN): d(u**(k*c))/du, so
    |x|**p's slope at x = 0 and p = 0, where |x|**0 is 1 for every x (torch's pow takes the
    same 0 for an exponent of 0).  The branch is at u = 0 alone, so that the derivative in p
    of the slope at p = 0 stays sign(x)/|x| elsewhere (a branch on p = 0 everywhere would
    make it 0)."""
    return expr.replace(lambda e: isinstance(e, sympy.Mul), _power_slope)


def _combined(m: sympy.Mul) -> sympy.Expr:
    groups: dict = {}
    for f in m.args:
        base, e = (f, sympy.S.One) if isinstance(f, sympy.exp) or f.is_number else f.as_base_exp()
        groups.setdefault(base, []).append(e)
    if not any(len(es) > 1 and any(not e.is_number for e in es) for es in groups.values()):
        return m
    return sympy.Mul(*(b ** sympy.Add(*es) if len(es) > 1 else (b if es[0] == 1 else b ** es[0])
                       for b, es in groups.items()))


def combine_powers(expr: sympy.Expr) -> sympy.Expr:
    """Powers of one base in a product as one power where an exponent is not a number:
    sympy's derivative of |x|**p is p*sign(x)*|x|**p/|x|, which is 0/0 at x = 0 where
    p*sign(x)*|x|**(p - 1) is 0 (p > 1), as it is for a number p.  (exp(a)*exp(b) stays two
    exponentials.)"""
    return expr.replace(lambda e: isinstance(e, sympy.Mul), _combined)


def _take_out_common(e):
    terms = e.args
    factors = [Counter(f for f in t.as_ordered_factors() if not f.is_number and not f.has(sympy.Piecewise))
               for t in terms]
    common = factors[0]
    for f in factors[1:]:
        common &= f
    if not common:
        return e
    factor = sympy.Mul(*common.elements())
    return factor * sympy.Add(*(t / factor for t in terms))


def _exponent_of(term, base):
    """The exponent of base's power in term (a product), or None."""
    for f in sympy.Mul.make_args(term):
        if isinstance(f, sympy.Pow) and f.base == base:
            return f.exp
    return None


def _take_out_powers(e):
    """A sum whose every term has a power of one base B with exponents that are not numbers
    and differ by whole numbers -> B**lo * P, P the terms over B**lo as one polynomial
    collected in B's variables: the slope of x/(1 + |x|)**p, (1 + |x|)**-p - p*|x|*(1 +
    |x|)**(-p - 1), is ((1 - p)*|x| + 1)*(1 + |x|)**(-p - 1), where its terms cancelled
    for p = 1 (softsign's slope 1 - |x|/(1 + |x|), 0 at x = 1e8 in float32) and the second
    one's power underflowed alone (+1e-30 at x = 1e20, p = 1.5, where it is -5e-31: now the
    whole underflows to -0)."""
    candidates = [f for f in sympy.Mul.make_args(e.args[0])
                  if isinstance(f, sympy.Pow) and not f.exp.is_number and f.base.free_symbols and f.base.is_Add]
    for power in candidates:
        base = power.base
        exps = [_exponent_of(t, base) for t in e.args]
        if any(x is None for x in exps):
            continue
        offsets = [sympy.simplify(x - exps[0]) for x in exps]
        if not all(o.is_Integer for o in offsets) or len(set(offsets)) < 2:
            continue
        lo = min(offsets)
        inner = sympy.Add(*(t / base ** x * base ** (o - lo) for t, x, o in zip(e.args, exps, offsets)))
        atoms = sorted(base.atoms(sympy.Abs) or base.free_symbols, key=sympy.default_sort_key)
        return base ** (exps[0] + lo) * sympy.collect(sympy.expand(inner), atoms)
    return e


def powers_of_a_base_out(expr: sympy.Expr) -> sympy.Expr:
    """Every sum's powers of one base taken out (_take_out_powers); the rest of expr as it is."""
    new = {}
    for e in sympy.preorder_traversal(expr):
        if type(e) is sympy.Add and e not in new:
            out = _take_out_powers(e)
            if out is not e:
                new[e] = out
    return expr.xreplace(new) if new else expr


def common_factors_out(expr: sympy.Expr) -> sympy.Expr:
    """Every sum's factors common to all its terms taken out: s + x*s*sigmoid(-x) ->
    s*(1 + x*sigmoid(-x)).  Only the same factor (not a power of it, nor a branch), so the
    sums inside functions stay as they are."""
    return expr.replace(lambda e: type(e) is sympy.Add, _take_out_common)


# --- random draws ---------------------------------------------------------------------
def draw_symbol(k: int) -> sympy.Symbol:
    """The k-th draw's U[0, 1) variable: _rk in generated code (no user name starts with _)."""
    return sympy.Symbol(f"_r{k}", real=True)


def draws_of(expr: sympy.Expr) -> list:
    """The uniform(lo, hi) draws of a formula, in the formula's order."""
    return sorted(expr.atoms(uniform), key=lambda d: int(d.args[2]))


def draw_lines(expr: sympy.Expr) -> list[str]:
    """What each _rk of a derivation stands for, one line each."""
    return [f"_r{k} ~ U[0, 1) per element in training mode, 1/2 in evaluation mode: "
            f"uniform({sympy.sstr(d.args[0])}, {sympy.sstr(d.args[1])}) = {sympy.sstr(d.args[0] + (d.args[1] - d.args[0]) * draw_symbol(k))}"
            for k, d in enumerate(draws_of(expr))]


def replace_draws(expr: sympy.Expr) -> tuple[sympy.Expr, tuple[sympy.Symbol, ...]]:
    """Every uniform(lo, hi) -> lo + (hi - lo)*_rk, numbered 0, 1, ... in the formula's order
    (draws that the parser's arithmetic removed, as in 0*uniform(0, 1), leave no gap)."""
    draws = draws_of(expr)
    symbols = tuple(draw_symbol(k) for k in range(len(draws)))
    mapping = {d: d.args[0] + (d.args[1] - d.args[0]) * r for d, r in zip(draws, symbols)}
    return expr.xreplace(mapping), symbols


# --- limits at +-inf -----------------------------------------------------------------
_PROBES = (sympy.Integer(10) ** 30, sympy.Integer(10) ** 60)


def _tame_exp(value: sympy.Expr) -> sympy.Expr:
    """exp of an astronomically large number (exp(-exp(x)) at x = 1e30) -> 0 or oo, so that
    evaluating a double exponential at a probe does not try to compute 10**(10**29) digits."""
    def huge(e):
        if not (isinstance(e, sympy.exp) and e.args[0].is_number):
            return False
        return abs(sympy.N(e.args[0], 15)) > _HUGE_EXP_ARG

    return value.replace(huge, lambda e: sympy.S.Zero if sympy.N(e.args[0], 15) < 0 else sympy.oo)


_HUGE_EXP_ARG = sympy.Integer(10) ** 40


def _mp_scale(v) -> mpmath.mpf:
    """InverseScale in mpmath: 2**-k, 0 at +-inf."""
    return mpmath.mpf(0) if mpmath.isinf(v) else mpmath.ldexp(1, -max(0, mpmath.frexp(v)[1]))


_MPMATH_SCALES = {
    "ScaledInput": lambda v: mpmath.sign(v) if mpmath.isinf(v) else v * _mp_scale(v),
    "InverseScale": _mp_scale,
}


@functools.lru_cache(maxsize=256)
def _mpmath_function(expr: sympy.Expr, x: sympy.Symbol):
    """expr as a function of x in mpmath (astronomically large exp arguments taken to their
    limits, see MPMATH_AT_HUGE), or None where sympy cannot write it so."""
    try:
        return sympy.lambdify(x, expr, modules=[MPMATH_AT_HUGE | _MPMATH_SCALES, "mpmath"])
    except Exception:  # noqa: BLE001 - a function lambdify does not know
        return None


def _mpmath_value(fn, at) -> mpmath.mpf | None:
    """fn at the number `at` with 40 digits; None where that is not a real number."""
    with mpmath.workdps(40):
        try:
            v = fn(mpmath.mpf(at))
        except (ZeroDivisionError, ValueError, OverflowError, TypeError, NameError):
            return None
    return v if isinstance(v, mpmath.mpf) and not mpmath.isnan(v) else None


def _numeric_limit(expr: sympy.Expr, x: sympy.Symbol, sign: int):
    """The limit of expr as x -> sign*inf when it can be read off at two huge points, else None.

    Only for expressions of x alone (a limit that depends on params or constants would be
    wrong for some of their values).  Returns a float (possibly +-inf)."""
    values = []
    fn = _mpmath_function(expr, x)
    # sympy's own evaluation, where mpmath's is not possible - but not of a power whose
    # exponent varies with x (x**x**x at 1e30: an exact power with a 1e30-digit exponent),
    # nor of an exponential-like function of another (erfc(sinh(x)): exp(-exp(2e30)), whose
    # evaluation computes ln 2 to 10**30 digits)
    growing = (sympy.exp, sympy.sinh, sympy.cosh, sympy.tanh, sympy.erf, sympy.erfc, erfcx, sigmoid, softplus, expm1,
               sympy.sin, sympy.cos, sympy.tan)
    fast = [f for f in expr.atoms(*growing) if f.has(x)]
    exact = not any(p.exp.has(x) for p in expr.atoms(sympy.Pow)) and not any(
        g is not f and f.args[0].has(g) for f in fast for g in fast)
    for probe in _PROBES:
        try:
            v = _mpmath_value(fn, sign * probe) if fn is not None else None
        except Oscillates:
            return _limit_past_oscillation(expr, x, sign)
        if v is None and not exact:
            return None
        if v is None:
            try:
                v = sympy.N(_tame_exp(expr.subs(x, sign * probe)), 40)
            except Exception:  # noqa: BLE001 - any failure to evaluate just means "no guard"
                return None
            if not v.is_number or v.has(sympy.nan, sympy.zoo) or not v.is_real:
                return None
            v = mpmath.mpf(sympy.Float(v, 40)._mpf_) if v.is_finite else mpmath.inf
        values.append(v if mpmath.isfinite(v) else None)
    if values[0] is None or values[1] is None:
        return None
    a, b = values
    if abs(a) > 1e20 and abs(b) > abs(a) * 10 and mpmath.sign(a) == mpmath.sign(b):
        return float(mpmath.sign(b)) * float("inf")
    if abs(a - b) <= mpmath.mpf(10) ** -25 * max(1, abs(b)):
        return 0.0 if abs(b) < 1e-30 else float(b)
    if abs(a) < 1e-10 and abs(b) < abs(a) / 10:     # a power decaying to 0 (x**-0.5: 1e-15, 1e-30)
        return 0.0
    return None


def _limit_past_oscillation(expr: sympy.Expr, x: sympy.Symbol, sign: int):
    """The limit where sin and cos of a growing argument only bound a term that vanishes or
    grows anyway (sin(x)/x -> 0, x + sin(x) -> inf, (x - sin(x))/x**3 -> 0): with each such
    sin or cos (at most two) as a number s, the limit is the same for s = -1, 0 and 1; else
    None (x*sin(x), 1/(2 + sin(x)): no limit, or none without the oscillation)."""
    periodic = []
    for f in expr.atoms(sympy.sin, sympy.cos, sympy.tan):
        try:
            arg = _mpmath_value(_mpmath_function(f.args[0], x), sign * _PROBES[0]) if f.has(x) else None
        except Oscillates:          # sin(sin(x)): bounded, but not this simple
            return None
        if arg is not None and abs(arg) > 2**60:
            if isinstance(f, sympy.tan):
                return None         # unbounded
            periodic.append(f)
    if not periodic or len(periodic) > 2:
        return None
    stand_ins = [sympy.Dummy("s", real=True) for _ in periodic]
    bounded = expr.xreplace(dict(zip(periodic, stand_ins)))
    if any(f.has(x) for f in bounded.atoms(sympy.sin, sympy.cos, sympy.tan) if f.args[0].has(*stand_ins)):
        return None
    limits = set()
    for values in itertools.product((sympy.Integer(-1), sympy.Integer(0), sympy.Integer(1)), repeat=len(periodic)):
        lim = _numeric_limit(bounded.xreplace(dict(zip(stand_ins, values))), x, sign)
        if lim is None:
            return None
        limits.add(lim)
    return limits.pop() if len(limits) == 1 else None


def _naive_value_at(expr: sympy.Expr, x: sympy.Symbol, at) -> float | None:
    """What IEEE arithmetic roughly gives at x = +-inf (sympy's oo arithmetic: oo*0 = nan...;
    sin, cos and tan of +-inf are NaN, where sympy would take their bounds: x + sin(x))."""
    try:
        periodic = {f: sympy.nan for f in expr.atoms(sympy.sin, sympy.cos, sympy.tan)
                    if f.has(x) and not f.args[0].subs(x, at).is_finite}
        v = expr.xreplace(periodic).subs(x, at)
        return float(v) if v.is_number and v.is_extended_real else None
    except (TypeError, ValueError):
        return None


class Saturate(sympy.Function):
    """Saturate(u, lo, hi): u clamped to [lo, hi], NaN staying NaN; lo = -oo or hi = oo is no
    bound on that side (printers expand it)."""

    nargs = 3       # part of sympy's sort key, which orders CSE: the generated code depends on it


#: A value within this relative distance of a nonzero limit (itself a float64, within 2**-53
#: of the exact limit) is the limit to double precision: at most an ULP of float64 from it,
#: far below one of float32 or bfloat16; for a zero limit, below SETTLED_ZERO in magnitude
#: (float64's smallest subnormal is 2**-1074).
SETTLED_REL = mpmath.mpf(2) ** -52
SETTLED_ZERO = mpmath.mpf(2) ** -1076
_MAX_EXP2 = 1023        # 2**1023: the largest power of two in float64
SATURATE_MAX_EXP2 = 127     # bounds up to 2**127 are in float32's range


def _settled(fn, sign, lim, k) -> bool:
    """Whether fn (an expression of x in mpmath) at x = sign * 2**k equals its limit lim to
    double precision."""
    v = _mpmath_value(fn, sign * mpmath.mpf(2) ** k)
    if v is None or not mpmath.isfinite(v):
        return False
    if lim == 0:
        return abs(v) <= SETTLED_ZERO
    return abs(v - lim) <= SETTLED_REL * abs(lim)


def saturation_point(expr: sympy.Expr, x: sympy.Symbol, sign: int, lim: float) -> int | None:
    """The smallest k >= 0 such that expr equals its (finite) limit lim at x -> sign*inf to
    double precision for every |x| >= 2**k, or None where it never does in float64's range
    (slow decay: 1/x).  Found by bisection over k, then checked at larger k."""
    fn = _mpmath_function(expr, x)
    if fn is None:
        return None

    def settled(k):     # or undefined in mpmath: 0 * inf where exp(-exp(-x)) is taken to 0 (see _tame_exp)
        return _settled(fn, sign, lim, k) or _mpmath_value(fn, sign * mpmath.mpf(2) ** k) is None

    if not settled(_MAX_EXP2):
        return None
    lo, hi = -1, _MAX_EXP2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if settled(mid):
            hi = mid
        else:
            lo = mid
    if _settled(fn, sign, lim, hi) and all(settled(k) for k in range(hi + 1, _MAX_EXP2, 61)):
        return hi
    return None


def _ieee_settles(expr, x, sign, lim, k0: int) -> bool:
    """Whether plain float64 arithmetic gives the limit lim at x = sign * 2**k for every k from
    k0 to float64's largest, with no intermediate inf or NaN on the way (an intermediate that
    overflows in float64 overflows in float32 at a smaller x)."""
    for v in [*(2.0 ** k for k in range(k0, _MAX_EXP2 + 1, 8)), sys.float_info.max]:
        v = ieee_value(expr, {x: sign * v}, finite=True)
        if v is None or abs(v - lim) > 1e-12 * abs(lim) + 1e-300:
            return False
    return True


def saturate(expr: sympy.Expr, x: sympy.Symbol, limits: dict) -> tuple[sympy.Expr, set]:
    """expr evaluated at Saturate(x, -2**k_lo, 2**k_hi) on each side where the limit is finite,
    reached within float64's range, and where plain arithmetic at huge finite x passes through
    inf or NaN (gelu_tanh's derivative: x**3 overflows at |x| > 7e12 in float32, and inf * 0
    is NaN).
    Beyond the bound the value is the limit to double precision, so clamping the input
    changes nothing else; at x = +-inf it gives the limit too.  Returns the new expression and
    the sides (-1, +1) where the clamp also gives the value at +-inf: those whose bound is in
    float32's range (a larger bound is left out of the kernels, see TritonPrinter.MAX_BOUND)."""
    bounds = {}
    far = _unapproximated(expr)     # (an approximant near 0 is not what runs at huge x)
    for sign, lim in limits.items():
        if lim is None or math.isinf(lim):
            continue
        try:
            k = saturation_point(far, x, sign, lim)
        except Oscillates:      # (x - sin(x))/x**3: its limit holds at +-inf, no clamp before
            k = None
        if k is not None and not _ieee_settles(far, x, sign, lim, k):
            bounds[sign] = k
    if not bounds:
        return expr, set()
    lo = -sympy.Integer(2) ** bounds[-1] if -1 in bounds else -sympy.oo
    hi = sympy.Integer(2) ** bounds[1] if 1 in bounds else sympy.oo
    at_inf = {sign for sign, k in bounds.items() if k <= SATURATE_MAX_EXP2}
    return expr.xreplace({x: Saturate(x, lo, hi)}), at_inf


def limit_guard(expr: sympy.Expr, x: sympy.Symbol, clamp: bool = True) -> sympy.Expr:
    """Wrap expr so it returns its limit at x = +-inf where plain arithmetic would not, and
    (with `clamp`) at huge finite x where intermediates would overflow (see saturate)."""
    if expr.free_symbols != {x}:
        return expr
    far = _unapproximated(expr)
    lo = _numeric_limit(far, x, -1)
    hi = _numeric_limit(far, x, +1)
    clamped_expr, clamped = saturate(expr, x, {-1: lo, 1: hi}) if clamp else (expr, set())
    if -1 in clamped or (lo is not None and _naive_value_at(far, x, -sympy.oo) == lo):
        lo = None
    if 1 in clamped or (hi is not None and _naive_value_at(far, x, sympy.oo) == hi):
        hi = None
    expr = clamped_expr
    if lo is None and hi is None:
        return expr
    as_expr = lambda v: sympy.nan if v is None else sympy.Float(v) if abs(v) != float("inf") else (sympy.oo if v > 0 else -sympy.oo)
    return InfGuard(expr, x, as_expr(lo), as_expr(hi))


def limit_guards(expr: sympy.Expr, inputs: Sequence[sympy.Symbol], samples=None, clamp: bool = True) -> sympy.Expr:
    """limit_guard for each input, also where the input's factor is one of several, and a
    run-time limit where the limit depends on params or constants.

    expr = h(others) * g(u) with g a function of the input u alone (swiglu's b * a*sigmoid(a))
    becomes h * InfGuard(g, u, ...): g's limit at u = +-inf, times h evaluated at run time, so a
    NaN in another input still gives NaN.  Where the limit depends on params or constants in
    any other way (x * sigmoid(beta*x): 0 or -inf at -inf, by the sign of beta), and plain
    arithmetic gives NaN at +-inf for their `samples` values (inits, defaults), the value at
    u = +-inf is read off at run time (runtime_limit)."""
    for u in inputs:
        if u not in expr.free_symbols:
            continue
        if expr.free_symbols == {u}:
            expr = _limit_guard_or_none(expr, u, clamp)
            continue
        indep, dep = sympy.factor_terms(expr).as_independent(u, as_Add=False)
        if indep != 1 and dep.free_symbols == {u}:
            # (a number goes with g: geglu's 0.5*b*(a*erfc(-a/sqrt(2))) overflowed in
            # a*erfc(...) ~ 2*a from a = 1.7e38 in float32, where 0.5*a*erfc(...) does not)
            coeff, indep = indep.as_coeff_Mul()
            dep = coeff * dep
            guarded = _limit_guard_or_none(dep, u, clamp)
            if guarded is not dep:
                expr = sympy.Mul(indep, guarded)
            continue
        scaled = _scaled_input(expr, u, set(inputs))
        if scaled is not None:
            p, h, g, v = scaled
            guarded = _limit_guard_or_none(g, v, clamp)
            if guarded.has(Saturate):       # (limits at +-inf alone: the run-time limit below has them)
                # (at p = 0, v = 0*inf is NaN where u is infinite: the run-time limit there)
                expr = runtime_limit(sympy.Mul(h, guarded.xreplace({v: p * u})), u)
                continue
        if samples is not None and _nan_where_limit_exists(expr, u, samples):
            expr = runtime_limit(expr, u, inputs)
    return expr


def _scaled_input(expr, u, inputs):
    """(p, h, g, v) where expr = h * g(v) at v = p*u, with p a param or constant that scales
    the input (x*sigmoid(beta*x)'s slope, x*exp(-exp(-k*x))'s), g a function of v alone and h
    finite at p = 0 and free of u but for a whole power of u (x*sigmoid(beta*x) itself is x at beta = 0, not
    sigmoid-of-v/beta); else None.  g then takes its limits and clamps in v, as a formula
    of one input does."""
    # (a whole power of u may stay a factor outside g: x*sigmoid(exp(a*x))'s gradient in a,
    # x * g(a*x), is inf*0 as written where exp(a*x) overflows; g clamps in v, and x stays x)
    power = sympy.Mul(*[f for f in sympy.Mul.make_args(sympy.factor_terms(expr))
                        if f == u or (f.is_Pow and f.base == u and f.exp.is_Integer and f.exp > 0)])
    for p in sorted(expr.free_symbols - {u} - set(inputs), key=sympy.default_sort_key):
        for outside in ((sympy.S.One, power) if power != 1 else (sympy.S.One,)):
            parts = _scale_separated(expr / outside, u, p)
            if parts is not None:
                h, g = parts
                return p, outside * h, g, _SCALED
    return None


_SCALED = sympy.Dummy("v", real=True)


def _scale_separated(expr, u, p, inverse=False):
    """(h, g) where expr = h(p) * g(v) at v = p*u (inverse: v = u/p; g of _SCALED alone, h free
    of u and, for p*u, finite at p = 0), else None."""
    if not expr.has(u / p if inverse else p * u):
        return None
    at = _SCALED * p if inverse else _SCALED / p
    indep, dep = sympy.factor_terms(expr.xreplace({u: at})).as_independent(_SCALED, as_Add=False)
    if dep.free_symbols != {_SCALED} or indep.has(u):
        return None
    if not inverse and any(f.is_Pow and f.exp.is_negative and f.base.has(p) for f in sympy.Mul.make_args(indep)):
        return None     # (u/p is no value at p = 0 itself: tanh(x/a)/x = tanh(v)/v / a)
    return indep, dep


class LimitAtInf(sympy.Function):
    """LimitAtInf(value, at_plus, at_minus, u): value, except where u is +-inf and value is NaN:
    there at_plus (u = +inf) or at_minus, the limits read off the same expression at u = +-PROBE
    (Grown).  The limits are values of the params and constants alone: a kernel computes them
    once per program, and per element only picks one where u is infinite.  A finite u of
    2**64 or more (actgen.runtime.HUGE_INPUT) whose value is NaN takes the limit too: a
    product with a param overflowed there (x * sigmoid(beta * x)'s slope at x = 3e38 in
    float32 was beta*x*sigmoid(-beta*x) = inf * 0); so the CPU's fast variant, which drops
    the guard, hands a block with one to the guarded function where a value is not finite."""


class Grown(sympy.Function):
    """Grown(p): the limit read off a probe p - p if it is below GROWTH in magnitude, else +-inf
    by its sign (folded where p is a number)."""

    @classmethod
    def eval(cls, p):
        if p.is_number:
            v = float(p)
            if math.isnan(v) or abs(v) < GROWTH:
                return p
            return sympy.oo if v > 0 else -sympy.oo
        return None


PROBE = 2.0 ** 24       # x**5 stays finite in float32 at the probe; sigmoid(beta * probe)
GROWTH = 2.0 ** 14      # saturates for |beta| > 1e-6; linear growth is seen for slopes > 1e-3


def _nan_for_complex(e: sympy.Expr) -> sympy.Expr:
    """e with every number that is not real (a limit read off where the formula is complex,
    (-1)**0.5) as NaN: what real arithmetic gives there, and what the printers can write; a
    comparison with NaN is false, as in IEEE arithmetic (|v| < r of an approximant in
    v = p*log(x), read off at x = -PROBE)."""
    if any(a.is_number and a.is_extended_real is False for a in sympy.preorder_traversal(e)):
        e = e.replace(lambda a: a.is_number and a.is_extended_real is False, lambda a: sympy.nan)
    if e.has(sympy.nan):
        e = e.replace(lambda a: isinstance(a, sympy.core.relational.Relational) and a.has(sympy.nan),
                      lambda a: sympy.false)
    return e


def _limit_guard_or_none(expr, u, clamp):
    """limit_guard, or expr as it is where reading its limits off fails (sympy comparing a
    value that is not real: cos(log(x)) at x = -1e30): no guard, IEEE arithmetic at +-inf."""
    try:
        return limit_guard(expr, u, clamp)
    except (TypeError, ValueError, ArithmeticError, RecursionError):
        return expr


def runtime_limit(expr: sympy.Expr, u: sympy.Symbol, others: Sequence[sympy.Symbol] = ()) -> sympy.Expr:
    """LimitAtInf with expr probed at u = PROBE and at -PROBE: values of the params and
    constants alone, which a kernel computes once per program rather than per element (and
    whatever of them is a number, the compiler folds).  others: the formula's other inputs.
    Where the probe's value depends on one of them (a*sigmoid(b) + b*(1 - sigmoid(b)) at
    b = +inf is a), growth is read off a second probe (at compile time), not off the value's
    size; and a NaN in them stays NaN where the limit replaces a NaN value."""
    def at(v):      # numbers that underflow even float64 (sigmoid(-2**24)) are 0: no 0.0*b left
        try:
            e = expr.subs(u, sympy.Float(v))
        except (TypeError, ValueError, ArithmeticError, RecursionError):    # not real there (sqrt(x) at x < 0)
            return sympy.nan
        e = e.xreplace({f: sympy.Integer(0) for f in e.atoms(sympy.Float) if float(f) == 0.0})
        # a value that is not real there ((-2**24)**(1/3)) is NaN, as the kernels compute it
        return e.replace(lambda a: a.is_number and a.is_extended_real is False, lambda a: sympy.nan)

    others = [s_ for s_ in others if s_ != u and s_ in expr.free_symbols]

    def side(sign):
        probe = at(sign * PROBE)
        # a value of another input: growth is a value that moves with the probe (2**24*a
        # against 2**25*a), not a large input; one that does not move is the limit itself
        settled = others and probe.has(*others) and sympy.expand(probe - at(2 * sign * PROBE)) == 0
        limit = probe if settled else Grown(probe)
        unguarded = [s_ for s_ in others if not limit.has(s_)]     # (a NaN in one the limit has is NaN anyway)
        return NanGuard(limit, *unguarded) if unguarded else limit

    return LimitAtInf(expr, side(1), side(-1), u)


def _nan_where_limit_exists(expr, u, samples) -> bool:
    """Whether, with params and constants at their sample values, IEEE arithmetic at
    u = +-inf gives NaN (or a wrong value) where the limit exists (False where that cannot be
    told: the expression is not real at those values).  A param that picks a branch of its
    own (the soft exponential's alpha < 0, alpha > 0, alpha = 0) is tried at -3/4 and 3/4 too:
    its sample value reaches only one of them."""
    branching = sorted({s_ for c in expr.atoms(sympy.core.relational.Relational) if not c.has(u)
                        for s_ in c.free_symbols if s_ in samples}, key=sympy.default_sort_key)
    for values in [samples] + [{**samples, s_: sympy.Float(v)} for s_ in branching for v in (-0.75, 0.75)]:
        try:
            if _nan_where_limit_exists_at(expr, u, values):
                return True
        except (TypeError, ValueError, ArithmeticError, RecursionError):
            continue
    return False


def _nan_where_limit_exists_at(expr, u, samples) -> bool:
    values = {s: float(samples.get(s, 0.75)) for s in expr.free_symbols - {u}}
    # (an approximant the sample values settle - x*expm1(a*x)/(a*x) at a = 0 is x - as that)
    e = expr.subs({s: sympy.Float(v) for s, v in values.items()})
    e = _unapproximated(e.xreplace({w: w.args[0] for w in e.atoms(sympy.UnevaluatedExpr)}))
    for sign in (-1, 1):
        if e.free_symbols == {u}:
            lim = _numeric_limit(e, u, sign)
        else:       # the sample values cancel u out (0.0 * x): the value is the limit
            lim = float(e) if not e.free_symbols and e.is_extended_real else None
        if lim is None:
            continue
        naive = ieee_value(expr, {**values, u: sign * math.inf})
        # float64 rounding of the limit's own arithmetic (5*a5/|b4|) is no error
        if naive is None or not (math.isclose(naive, lim, rel_tol=2.0 ** -40) or (math.isnan(naive) and math.isnan(lim))):
            return True
    return False


_IEEE_FUNCTIONS: dict = {
    sympy.exp: math.exp, sympy.log: math.log, log1p: math.log1p, expm1: math.expm1,
    sympy.sin: math.sin, sympy.cos: math.cos, sympy.tan: math.tan, sympy.tanh: math.tanh,
    sympy.sinh: math.sinh, sympy.cosh: math.cosh, sympy.atan: math.atan, sympy.asinh: math.asinh,
    sympy.erf: math.erf, sympy.erfc: math.erfc, erfcx: erfcx_float, sympy.Abs: abs,
    sigmoid: lambda v: 1 / (1 + math.exp(-v)) if v >= 0 else math.exp(v) / (1 + math.exp(v)),
    softplus: lambda v: max(v, 0.0) + math.log1p(math.exp(-abs(v))),
    sympy.sign: lambda v: math.copysign(1.0, v) if v else 0.0 if v == 0 else math.nan,
    ScaledInput: lambda v: math.copysign(1.0, v) if math.isinf(v) else math.ldexp(v, -scale_shift(v)),
    InverseScale: lambda v: 0.0 if math.isinf(v) else math.ldexp(1.0, -scale_shift(v)),
}


def ieee_value(expr: sympy.Expr, env: dict, finite: bool = False) -> float | None:
    """expr evaluated in float64 IEEE arithmetic (inf * 0 = nan, as a kernel computes it);
    None for what this evaluator does not know, and with `finite`, where any intermediate
    value is inf or NaN."""
    def ev(e):
        v = _ev(e)
        if finite and not (isinstance(v, bool) or math.isfinite(v)):
            raise _Unknown
        return v

    def _ev(e):
        if e.is_Symbol:
            return env[e]
        if e.is_Number or e.is_NumberSymbol:
            return float(e)
        f, args = e.func, e.args
        if f is sympy.Add:
            vals = [ev(a) for a in args]
            return math.fsum(vals) if all(math.isfinite(v) for v in vals) else sum(vals)
        if f is sympy.Mul:
            out = 1.0
            for a in args:
                out *= ev(a)
            return out
        if f is sympy.Pow:
            base, exp = ev(args[0]), ev(args[1])
            try:
                return math.pow(base, exp)
            except OverflowError:
                return math.inf if base > 0 or float(exp).is_integer() and exp % 2 == 0 else -math.inf
            except (ValueError, ZeroDivisionError):
                return math.inf if base == 0 and exp < 0 else math.nan
        fn = next((_IEEE_FUNCTIONS[c] for c in type(e).__mro__ if c in _IEEE_FUNCTIONS), None)
        if fn is not None:
            v = ev(args[0])
            if math.isnan(v):
                return v
            try:
                return float(fn(v))
            except OverflowError:
                return math.inf if f in (sympy.exp, expm1, sympy.cosh) else math.copysign(math.inf, v)
            except ValueError:
                if (fn is math.log and v == 0) or (fn is math.log1p and v == -1):
                    return -math.inf
                return math.nan if not math.isinf(v) else _ieee_at_inf(f)
        if f is sympy.UnevaluatedExpr:
            return ev(args[0])
        if isinstance(e, sympy.Piecewise):
            for value, cond in args:
                c = ev(cond)
                if c:
                    return ev(value)
            return math.nan
        if isinstance(e, sympy.core.relational.Relational):
            a, b = ev(args[0]), ev(args[1])
            return {"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}.get(e.rel_op, False)
        if f is sympy.And:
            return all(ev(a) for a in args)
        if f is sympy.Or:
            return any(ev(a) for a in args)
        if f is sympy.Not:
            return not ev(args[0])
        if e is sympy.true or e is sympy.false:
            return bool(e)
        if f is InfGuard:
            value, v, lo, hi = args
            x = ev(v)
            if x == -math.inf and lo is not sympy.nan:
                return ev(lo)
            if x == math.inf and hi is not sympy.nan:
                return ev(hi)
            return ev(value)
        raise _Unknown

    try:
        return ev(expr)
    except (_Unknown, KeyError, TypeError, ZeroDivisionError):
        return None


class _Unknown(Exception):
    pass


def _ieee_at_inf(f):
    """A function that math refuses at +-inf: its IEEE value there."""
    if f in (sympy.sin, sympy.cos, sympy.tan):
        return math.nan
    raise _Unknown


def strip_guards(expr: sympy.Expr) -> sympy.Expr:
    """expr without its guards: the same value wherever the inputs are finite.  A product in a
    guard stays one factor (sympy would merge it into a product around the guard, and the
    printers' pairing of its ratio with the rest: x/(hypot(x, 1) + 1)*x/a printed as
    x/a*x/(hypot(x, 1) + 1), inf from |x| = 1.8e19 in float32, as (sqrt(x**2 + 1) - 1)/a's fast
    variant was)."""
    guards = (NanGuard, InfGuard, LimitAtInf)
    expr = expr.replace(
        lambda e: e.is_Mul and any(isinstance(f, guards) and f.args[0].is_Mul for f in e.args),
        lambda e: sympy.Mul(*(sympy.UnevaluatedExpr(f.args[0]) if isinstance(f, guards) and f.args[0].is_Mul else f
                              for f in e.args), evaluate=False))
    for guard in guards:
        expr = expr.replace(guard, lambda value, *rest: value)
    return expr


def has_guards(exprs) -> bool:
    """Whether any of the expressions has a NaN/inf guard or a branch (what fast_variant drops
    or turns into float masks)."""
    return any(e.has(NanGuard, InfGuard, LimitAtInf, sympy.Piecewise) for e in exprs)


def fast_variant(outputs: Sequence[tuple[str, sympy.Expr]], inputs: Sequence[sympy.Symbol] = ()) -> Block | None:
    """The guard-free block for finite inputs, or None where it would gain nothing (no guard
    and no branch) or a condition depends on a branch choice."""
    if not has_guards(e for _, e in outputs):
        return None
    stripped = [(n, strip_guards(e)) for n, e in outputs]
    for _, e in stripped:
        if any(r.has(sympy.Piecewise) for r in e.atoms(sympy.Rel)):
            return None
    return make_block(stripped, inputs)


def nan_guard(expr: sympy.Expr, inputs: Sequence[sympy.Symbol], dropped: Sequence[sympy.Symbol] = ()) -> sympy.Expr:
    """expr with a NaN input giving NaN: guarded where a branch could lose it (comparisons are
    false on NaN, so a Piecewise takes its last branch), for the inputs a NaN does not flow
    through already (_nan_flows: mish's ratio in exp(-|x|), whichever branch, is NaN); and for
    `dropped` inputs that expr no longer holds (the formula's branches on them decided for
    every real value: sign(log(sigmoid(x))) is -1, which was -1 at a NaN x too)."""
    lost = [u for u in dropped if u not in expr.free_symbols]
    if expr.has(sympy.Piecewise):
        used = [u for u in inputs if u in expr.free_symbols] or list(inputs)
        lost += [u for u in used if not _nan_flows(expr, u) and u not in lost]
    return NanGuard(expr, *lost) if lost else expr


#: Calls that give NaN for a NaN argument, as printed (Saturate clamps with NaN propagated; the
#: guards pass their value through where the input is not +-inf).
_NAN_PROPAGATING = (sympy.exp, sympy.log, log1p, expm1, sympy.tanh, sympy.sin, sympy.cos, sympy.atan, sympy.erf,
                    sympy.erfc, erfcx, sigmoid, softplus, sympy.Abs, Saturate, InfGuard, LimitAtInf, CappedExp)


def _nan_flows(expr: sympy.Expr, u: sympy.Symbol) -> bool:
    """Whether a NaN u gives NaN through expr whichever branch its Piecewises take: every branch
    of every Piecewise holds u, and every call passes NaN on (no max or min, which drop it).
    A guard at u = +-inf (LimitAtInf, InfGuard) hands a NaN u its value: only that counts
    (polynomial's limit read off a probe with branches of its own)."""
    expr = expr.replace(lambda e: isinstance(e, LimitAtInf) and e.args[3] == u, lambda e: e.args[0])
    expr = expr.replace(lambda e: isinstance(e, InfGuard) and e.args[1] == u, lambda e: e.args[0])
    calls = (f for f in expr.atoms(sympy.Function) if not isinstance(f, sympy.Piecewise))
    if expr.has(sympy.Max, sympy.Min) or not all(isinstance(f, _NAN_PROPAGATING) for f in calls):
        return False
    return all(value.has(u) for p in expr.atoms(sympy.Piecewise) for value, _ in p.args)


# --- CSE -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Block:
    """Straight-line code: named temporaries, then named outputs."""

    assignments: tuple[tuple[sympy.Symbol, sympy.Expr], ...]
    outputs: tuple[tuple[str, sympy.Expr], ...]


#: The name prefix of a scaled ratio's w = 1/s in a block (_w_x; see make_block), up to 2**127.
INVERSE_SCALE_PREFIX = "_w_"
SCALED_INPUT_PREFIX = "_v_"


def second_names(pairs: Sequence[tuple[str, str]], names: Sequence[str]) -> list[str]:
    """The outputs' names of the second derivatives of pairs of names: d2_<a>_<b>, or where
    two pairs would have one name ((a, b_c) and (a_b, c)) d2_<i>_<j> with i, j the names'
    positions."""
    plain = [f"d2_{a}_{b}" for a, b in pairs]
    if len(set(plain)) == len(plain):
        return plain
    return [f"d2_{names.index(a)}_{names.index(b)}" for a, b in pairs]


def make_block(outputs: Sequence[tuple[str, sympy.Expr]], inputs: Sequence[sympy.Symbol] = ()) -> Block:
    """CSE of the outputs.  An input's clamp (Saturate) and a scaled rational function's
    v = x/s and w = 1/s (see rational_form) are named first, _clamped_x, _v_x and _w_x, so that
    their powers print as products of names."""
    names = [n for n, _ in outputs]
    exprs = [e for _, e in outputs]
    prefix = {Saturate: "_clamped_", ScaledInput: SCALED_INPUT_PREFIX, InverseScale: INVERSE_SCALE_PREFIX}
    atoms = sorted({a for e in exprs for a in e.atoms(*prefix) if a.args[0].is_Symbol}, key=sympy.default_sort_key)
    bases = [f"{prefix[type(a)]}{a.args[0]}" for a in atoms]
    named, taken = {}, set(bases)
    for a, base in zip(atoms, bases):       # two clamps of x: _clamped_x, _clamped_x_1 (unless x_1 has one)
        name, k = base, 0
        while name in named.values() or (k and name in taken):
            k += 1
            name = f"{base}_{k}"
        named[a] = name
        taken.add(name)
    named = {a: sympy.Symbol(name, real=True) for a, name in named.items()}
    exprs = [e.xreplace(named) for e in exprs]
    temps = sympy.numbered_symbols("_t", real=True)
    assignments, reduced = sympy.cse(exprs, symbols=temps, optimizations=None, order="canonical")
    assignments, reduced = _divide_in_kept_products(assignments, reduced, inputs)
    assignments, reduced = _unwrap_unevaluated(assignments, reduced)
    assignments, reduced = _inline_numbers(assignments, reduced)
    assignments, reduced = _exp_powers(assignments, reduced)
    assignments, reduced = _name_power_bases(assignments, reduced, temps)
    return Block(tuple((n, a) for a, n in named.items()) + tuple(assignments), tuple(zip(names, reduced)))


def _unwrap_unevaluated(assignments, reduced):
    """Without the temporaries that only name a product kept whole (_t1 = UnevaluatedExpr(_t0),
    see rewrite_scaled_singularity): its uses read the product's own temporary."""
    alias, kept = {}, []
    for t, value in assignments:
        value = value.xreplace(alias)
        if isinstance(value, sympy.UnevaluatedExpr) and value.args[0].is_Symbol:
            alias[t] = value.args[0]
        else:               # (a name for a product kept whole is that product)
            kept.append((t, value.args[0] if isinstance(value, sympy.UnevaluatedExpr) else value))
    if not alias:
        return kept, reduced
    return _renumbered(kept, [r.xreplace(alias) for r in reduced])


def _divide_in_kept_products(assignments, reduced, inputs=()):
    """A named reciprocal of a variable, 1/x, is a division by x inside the products kept
    whole (split_powers_at_calls' exp(-1/x**2)/x/x/x): 1/x overflows for a subnormal x where
    the vanishing call divided by x is 0 (the name stays where other uses read it)."""
    recips = {t: v for t, v in assignments if v.is_Pow and v.exp == -1 and v.base.is_Symbol
              and (not v.base.name.startswith("_") or v.base.name.startswith(SCALED_INPUT_PREFIX))}
    if not recips:
        return assignments, reduced

    # (and a part CSE took out of such products: 1/x times a call of x, or a scaled ratio's
    # 1/v times a call: not 1/beta times softplus(beta*x), a number computed once)
    defs = dict(assignments)

    def written(e):         # e with the temporaries it reads written out (exp(-1/_t0), _t0 = |x|)
        while e.free_symbols & defs.keys():
            e = e.xreplace(defs)
        return e

    def of_call(u, t):
        base = recips[t].base
        calls = [written(a) for a in u.args if isinstance(a, sympy.Function | sympy.Piecewise)]
        return any(_can_vanish(a) and (base.name.startswith(SCALED_INPUT_PREFIX) or base in inputs and base in a.free_symbols)
                   for a in calls)

    def divided(u):
        if not u.is_Mul:
            return None
        over = {a: recips[a] for a in u.args if a in recips and of_call(u, a)}
        return u.xreplace(over) if over else None

    def divide(e):
        e = _replace_found(e, divided)
        return e.replace(lambda u: isinstance(u, sympy.UnevaluatedExpr) and u.has(*recips),
                         lambda u: sympy.UnevaluatedExpr(u.args[0].xreplace(recips)))

    assignments = [(t, divide(v)) for t, v in assignments]
    reduced = [divide(r) for r in reduced]
    used = set().union(*(v.free_symbols for _, v in assignments), *(r.free_symbols for r in reduced))
    kept = [(t, v) for t, v in assignments if t not in recips or t in used]
    if len(kept) == len(assignments):
        return assignments, reduced
    return _renumbered(kept, reduced)


def _renumbered(kept, reduced):
    """Temporaries numbered again without the gaps some dropped left (later temporaries
    continue past the old numbers)."""
    names = {t: sympy.Symbol(f"_t{k}", real=True) for k, (t, _) in enumerate(kept)}
    return [(names[t], v.xreplace(names)) for t, v in kept], [r.xreplace(names) for r in reduced]


def _inline_numbers(assignments, reduced):
    """A shared number (sqrt(pi) in two sums) is written where it is used, not named; so is
    the reciprocal of a scaled ratio's w = 1/s (see rational_form): as a divisor each w
    comes last in a product, one at a time (pau's x**5/Q(x), v**5/Q_s(v)/w, overflowed at
    |x| = 1e38 as (1/Q_s)*(1/w) first; w**4 named once underflowed to 0 from |x| = 2**38
    in float32: x**4*exp(-a*x**2)/(1 + x**2)'s gradient in a was 0/0 at x = 1e13)."""
    numbers, kept, scales = {}, [], {}
    # a name for a power of w (w**4, also a term of Q_s) stays a name, but as a divisor it is
    # w's power again (see above)
    divides_by_scale = lambda e: e.is_Pow and e.exp.is_negative and e.base in scales
    as_scale_power = lambda e: scales[e.base] ** e.exp
    for t, v in assignments:            # in order: a name can be a number of named numbers
        v = v.xreplace(numbers)
        v = v.replace(divides_by_scale, as_scale_power) if scales else v
        if v.is_number:
            numbers[t] = v.evalf(30)
        elif v.is_Pow and v.exp.is_negative and v.base.is_Symbol and v.base.name.startswith(INVERSE_SCALE_PREFIX):
            numbers[t] = v
        else:
            kept.append((t, v))
            if v.is_Pow and v.exp.is_Integer and v.base.is_Symbol and v.base.name.startswith(INVERSE_SCALE_PREFIX):
                scales[t] = v
    return kept, [e.xreplace(numbers).replace(divides_by_scale, as_scale_power) if scales else e.xreplace(numbers)
                  for e in reduced]


def _exp_powers(assignments, reduced):
    """exp(k*a) as t**k where an earlier name t = exp(a) exists and k is an integer from 2 to
    MAX_PRODUCT_POWER (sympy writes exp(a)**2 as exp(2*a)): a product instead of a second call."""
    named = {}

    def as_power(e):
        def power_of_named(node):
            for a, t in named.items():
                k = node.args[0] / a
                if k.is_Integer and 2 <= k <= MAX_PRODUCT_POWER:
                    return t**k
            return node
        return e.replace(lambda n: isinstance(n, sympy.exp) and n.args[0] not in named, power_of_named) if named else e

    out = []
    for t, e in assignments:
        e = as_power(e)
        out.append((t, e))
        if isinstance(e, sympy.exp):
            named[e.args[0]] = t
    return out, [as_power(e) for e in reduced]


#: Integer powers up to this one print as products (see actgen.printers); their bases get names.
MAX_PRODUCT_POWER = 8


def _name_power_bases(assignments, reduced, temps):
    """The base of every small integer power (b**2, 1/b**3) that is not a name gets one, so
    that the power prints as a product of names (_t4*_t4), not of the written-out base."""
    def is_power(e):
        return (e.is_Pow and e.exp.is_Integer and 2 <= abs(int(e.exp)) <= MAX_PRODUCT_POWER
                and not e.base.is_Symbol and not e.base.is_number)

    out = []

    def name_bases(e):
        while True:
            powers = sorted({p for p in sympy.preorder_traversal(e) if is_power(p)},
                            key=lambda p: (sympy.count_ops(p), sympy.default_sort_key(p)))
            if not powers:
                return e
            base = powers[0].base
            t = next(temps)
            out.append((t, base))
            e = e.xreplace({base: t})

    for t, e in assignments:
        e = name_bases(e)
        out.append((t, e))
    reduced = [name_bases(e) for e in reduced]
    return out, reduced


# --- param-gradient sums by basis ------------------------------------------------------
@dataclass(frozen=True)
class LinearSums:
    """Every param's df/d(param) in a block as a sum over a few terms of the elements
    (bases) times coefficients made of params and constants alone: sum(grad * df/dp) over a
    program's elements is then sum_j c_pj * sum(grad * b_j), so a kernel sums grad * b_j per
    basis (one fma per element each) and combines the sums once, when it stores them,
    rather than computing every df/dp per element (adaptive_mixture's softmax weights: three
    gradients with their NaN and +-inf guards, against three sums of relu(x), tanh(x) and x).

    This holds for finite inputs: the guards (NanGuard, LimitAtInf, InfGuard) differ from
    their value only where an input is NaN or +-inf (or where the value is NaN, LimitAtInf's
    at a huge finite input).  A kernel takes the per-element form
    where a sum or a combined gradient is not finite (see actgen.codegen.module)."""

    bases: tuple[sympy.Expr, ...]      # in the block's temporaries; 1 for a term of params alone
    coefficients: tuple[tuple[tuple[int, sympy.Expr], ...], ...]    # per param: (basis, coefficient)


#: Guards whose value is their first argument wherever the input is finite.
_FINITE_VALUE_GUARDS = (NanGuard, LimitAtInf, InfGuard)


def linear_param_sums(block: Block, params: Sequence[str], elements: Sequence[sympy.Symbol]) -> LinearSums:
    """The block's d_<param> outputs as LinearSums.  `elements`: the symbols that vary per
    element (inputs and draws).  A sum, a product and a guard are taken apart, temporaries
    that are one included; anything else of the elements (a call, a branch, a product of
    two such) is a basis, so every gradient is such a sum - of one basis at the least."""
    temps = dict(block.assignments)
    elements = set(elements)

    @functools.lru_cache(maxsize=None)
    def varying(e) -> bool:
        return any(s in elements or (s in temps and varying(temps[s])) for s in e.free_symbols)

    def scaled(terms, k):
        return {b: k * c for b, c in terms.items()}

    def merged(parts):
        out: dict = {}
        for part in parts:
            for b, c in part.items():
                out[b] = out[b] + c if b in out else c
        return out

    def terms(e):
        if not varying(e):
            return {sympy.S.One: e}
        if isinstance(e, _FINITE_VALUE_GUARDS):
            return terms(e.args[0])
        if type(e) is sympy.Add:            # (not a StableSum: its order is its accuracy)
            return merged(terms(a) for a in e.args)
        if type(e) is sympy.Mul:
            fixed = [a for a in e.args if not varying(a)]
            moving = [a for a in e.args if varying(a)]
            if len(moving) == 1:
                return scaled(terms(moving[0]), sympy.Mul(*fixed))
            return {sympy.Mul(*moving): sympy.Mul(*fixed)}
        if e.is_Symbol and e in temps and (type(temps[e]) in (sympy.Add, sympy.Mul)
                                           or isinstance(temps[e], _FINITE_VALUE_GUARDS)):
            return terms(temps[e])
        return {e: sympy.S.One}

    outputs = dict(block.outputs)
    bases: list = []
    coefficients = []
    for p in params:
        found = [(b, c) for b, c in terms(outputs[f"d_{p}"]).items() if c != 0]
        row = []
        for b, c in found:
            if b not in bases:
                bases.append(b)
            row.append((bases.index(b), c))
        coefficients.append(tuple(row))
    return LinearSums(tuple(bases), tuple(coefficients))


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
    kernel_forward: Block                         # forward and backward as the Triton kernels compute them
    kernel_backward: Block                        # (the same blocks unless a form suits the GPU better)
    double_backward: Block                        # outputs: d2_<a>_<b> (the first derivatives: backward)
    forward_fast: Block | None = None             # forward without guards (finite inputs), if it helps
    backward_fast: Block | None = None            # backward without guards (finite inputs), if it helps
    draws: tuple[sympy.Symbol, ...] = ()          # _r0, _r1, ...: the formula's uniform(...) draws
    # forward / backward computed in float64 for narrower inputs: the outputs that float32
    # evaluation leaves beyond the accuracy target, as measured (actgen.precision.Measured)
    float64_forward: tuple = ()
    float64_backward: tuple = ()

    @property
    def wide_forward(self) -> bool:
        """Whether the forward is computed in float64 for every input dtype (measured, or the
        spec's `precision: float64`)."""
        return bool(self.float64_forward) or self.spec.precision == "float64"

    @property
    def wide_backward(self) -> bool:
        return bool(self.float64_backward) or self.spec.precision == "float64"

    @property
    def variables(self) -> tuple[sympy.Symbol, ...]:
        return self.inputs + self.params


#: A capped ratio (capped_ratio_form) stands in for the CPU fast variant's outputs where its
#: float32 error against their float64 values (ULPs / condition number) is at most this or
#: their own at worst, and no more than theirs within TIE_ULP on average over the grids.
CAPPED_ULP = 2.0
#: ... and in float64, where the forms' own roundings differ by a few of its ULPs: a cap
#: too low is off by far more.
CAPPED_ULP64 = 8.0
#: On the CPU a transcendental call costs about as much as this many arithmetic operations
#: (torch's exp over a chunk against an addition: 110 and 13 us for 2**17 floats on one EPYC core).
CPU_CALL_COST = 8


#: The caps tried for a capped ratio's exponential, lowest first: the lowest that measures as
#: accurate is taken (a higher cap only overflows sooner; an overflow hands the chunk over).
CAP_STEPS = (8, 12, 16, 20, 24, 28, 32, 40, 48, 64, 96, 128, 192, 256, 384, 512)


def capped_caps(capped, fast: Block, slopes, inputs, values, tensors) -> tuple | None:
    """(float32 cap, float64 cap) for capped outputs (CappedExp at their highest caps, from
    the polynomials' degrees), each the lowest of CAP_STEPS up to those at which their error
    against the guard-free fallback's float64 values (precision.measure_against) is as good
    as that fallback's own in float32 (_as_accurate with CAPPED_ULP), and at most
    CAPPED_ULP64 in float64; None where none is."""
    names = [n for n, _ in capped]
    found = []
    for k, (dtype, limit) in enumerate(((np.float32, CAPPED_ULP), (np.float64, CAPPED_ULP64))):
        top = min(int(a.args[1 + k]) for _, e in capped for a in e.atoms(CappedExp))
        theirs = precision.measure_against(fast, fast, names, slopes, inputs, values, tensors, dtype)
        for cap in [c for c in CAP_STEPS if c < top] + [top]:
            block = capped_block(capped, (cap, cap) if not found else (found[0], cap), inputs)
            mine = precision.measure_against(block, fast, names, slopes, inputs, values, tensors, dtype)
            if all(_as_accurate(mine[n], theirs[n], limit, dtype == np.float32) for n in names):
                found.append(cap)
                break
        else:
            return None
    return tuple(found)


def capped_block(capped, caps: tuple, inputs: Sequence[sympy.Symbol] = ()) -> Block:
    """The block of capped outputs with every CappedExp at caps (float32 cap, float64 cap)."""
    return make_block([(n, e.replace(CappedExp, lambda u, *_: CappedExp(u, *caps))) for n, e in capped], inputs)


def _as_accurate(mine: np.ndarray, theirs: np.ndarray, limit: float, mean: bool) -> bool:
    """Whether errors (precision.measure_against) are as good as another form's over the same
    points: a worst at most `limit` or the other's worst, and (`mean`) a mean within TIE_ULP
    of its."""
    return (float(np.max(mine)) <= max(limit, float(np.max(theirs)))
            and (not mean or float(np.mean(mine)) <= float(np.mean(theirs)) + TIE_ULP))


def _cpu_cost(block: Block) -> int:
    """What a block costs the CPU fast variant: its operations (both sides of a branch), a
    transcendental call as CPU_CALL_COST of them."""
    calls = _TRANSCENDENTAL + (CappedExp,)
    total = 0
    for _, e in (*block.assignments, *block.outputs):
        total += sympy.count_ops(e) + (CPU_CALL_COST - 1) * sum(isinstance(a, calls) for a in sympy.preorder_traversal(e))
    return total


#: Forms of the kernels whose measured errors (precision.worst_between) differ by less than
#: this are a tie, and the first of them is taken: the evaluator's float32 functions are not
#: the kernels' (see actgen.precision), so a smaller difference says nothing.  (Two forms of
#: elish' measure 4.99 and 4.68 there, and 5.60 both with numpy's own functions on a CPU with
#: AVX-512, where the second's kernel is the worse at the interpreter's worst point.)
TIE_ULP = 0.5


def derive(spec: Spec, rewrites: bool = True) -> Derivation:
    """The kernel IR of a spec.  Without `rewrites`, the formula as written: no stability
    rewrites, no value-preserving forms for float arithmetic and no clamps at huge inputs -
    only the NaN and +-inf guards and CSE (the "before" of docs/accuracy.md)."""
    sym = spec.symbols
    inputs = tuple(sym[n] for n in spec.inputs)
    params = tuple(sym[p.name] for p in spec.params)
    constants = tuple(sym[c.name] for c in spec.constants)
    variables = inputs + params

    expr, draws = replace_draws(spec.expr)
    expr = stabilize(recognize_inverse_functions(_clean(expr))) if rewrites else _clean(expr)
    first = tuple((v.name, differentiate(expr, v, rewrites)) for v in variables)
    d = dict(first)
    second = tuple(
        ((a.name, b.name), differentiate(d[a.name], b, rewrites))
        for a, b in combinations_with_replacement(variables, 2)
    )
    if rewrites:        # the slopes both sides of a kink have, where f is smooth across it
        kinks = {x: kink_points(expr, x) for x in inputs}
        smooth = continuous_kinks(expr, kinks)
        first = tuple((n, smooth_at_kinks(e, smooth)) for n, e in first)
        smooth = {n: continuous_kinks(e, kinks) for n, e in first}
        second = tuple((ab, smooth_at_kinks(e, smooth[ab[0]])) for ab, e in second)

    # typical values of params (init) and constants (default) for deciding where a run-time
    # limit is needed; other inputs take 3/4
    samples = {sym[p.name]: sympy.Float(p.init) for p in spec.params}
    samples |= {sym[c.name]: sympy.Float(c.default) for c in spec.constants}
    samples |= {r: sympy.Float(0.5) for r in draws}

    def scaled(e, kernel=False):
        return rational_form(exp_rational_form(e, inputs, sigmoids=kernel), inputs) if rewrites else e

    def final(e):       # value-preserving forms for float arithmetic (see the module doc)
        # a polynomial times a call of an input that vanishes where it grows is taken term by
        # term first (each power split at the call), not in Horner form: (0.27*a*x**3 + 2*a*x +
        # 1)*exp(-2*|a*(x + 0.045*x**3)|), a gelu_tanh with a param in the kernels' ratio, was
        # inf*0 = NaN from x = 1e13 in float32, where the exponential is 0 and the polynomial
        # overflows; a polynomial times a call of params alone keeps its Horner form
        e = split_powers_at_calls(hypot_form(e, inputs, params), inputs, of_inputs=True) if rewrites else e
        e = scaled_softplus_form(factor_into_branches(weights_form(e, inputs), inputs)) if rewrites else e
        e = fold_constants(split_powers_at_calls(horner_form(e, inputs), inputs)) if rewrites else e
        return _nan_for_complex(e)

    def guarded(e, dropped=()):
        return final(nan_guard(limit_guards(e, inputs, samples, clamp=rewrites), inputs, dropped))

    # what the precision check and the choice of the kernels' form measure with (actgen.precision)
    slopes = {}
    if rewrites:
        data = variables + constants
        d2 = {frozenset(ab): e for ab, e in second}
        slopes = {"y": [(v, d[v.name] if v in variables else differentiate(expr, v)) for v in data]}
        slopes |= {f"d_{u.name}": [(v, d2[frozenset((u.name, v.name))] if v in variables
                                    else differentiate(d[u.name], v)) for v in data] for u in inputs}
    values = {sym[p.name]: precision.float32(p.init) for p in spec.params}
    values |= {sym[c.name]: float(c.default) for c in spec.constants} | {r: 0.5 for r in draws}
    tensors = {*inputs, *(sym[p.name] for p in spec.params), *draws}     # constants are scalars in generated code

    def blocks(outputs, dropped=()):
        """(the eager fallback's outputs, its block, the kernels' block) of (name, expression)
        outputs.  The kernels take the forms that suit a GPU - sigmoids as one ratio (see
        exp_rational_form), sigmoid(u) and sigmoid(-u) from one exponential (sigmoid_pairs),
        or from the ratio's (sigmoids_from_exp) - where that leaves the outputs fewer distinct
        transcendental calls between them; of the forms with fewest calls, the first unless
        another's float32 error, measured between the grid's points, is clearly less
        (precision.worst_between, TIE_ULP)."""
        plain = [(n, scaled(e)) for n, e in outputs]
        plain = shared_exp_products(plain, inputs) if rewrites else plain
        fallback = [(n, guarded(e, dropped)) for n, e in plain]
        block = make_block(fallback, inputs)
        if not rewrites:
            return fallback, block, block
        one_ratio = [(n, scaled(e, True)) for n, e in outputs]
        candidates = [one_ratio, sigmoid_pairs(plain), sigmoid_pairs(one_ratio), sigmoids_from_exp(one_ratio)]
        candidates = [shared_exp_products(c, inputs) for c in candidates]
        fewest = min(map(_calls, candidates))
        if fewest >= _calls(plain):
            return fallback, block, block
        made = []
        for c in candidates:
            if _calls(c) == fewest and c not in made:
                made.append(c)
        kernel_blocks = [make_block([(n, g if e == p else guarded(e, dropped)) for (n, e), (_, p), (_, g) in zip(c, plain, fallback)], inputs)
                         for c in made]
        names = [n for n, _ in outputs]
        error = lambda b: precision.worst_between(b, names, slopes, inputs, values, tensors)
        best = kernel_blocks[0]
        if len(kernel_blocks) > 1:
            best_error = error(best)
            for b in kernel_blocks[1:]:     # another form where it measures clearly better, not by noise
                e = error(b)
                if e < best_error - TIE_ULP:
                    best, best_error = b, e
        return fallback, block, best

    def cpu_fast(outputs, fallback):
        """The CPU fast variant's block: the guarded outputs without their guards
        (fast_variant), or, where that costs the CPU less (_cpu_cost), with its ratios in one
        capped exponential (capped_ratio_form) - outputs of the inputs alone - at the lowest
        caps that measure as accurate (capped_caps)."""
        fast = fast_variant(fallback, inputs)
        if not rewrites or fast is None or any(e.free_symbols - set(inputs) for _, e in outputs):
            return fast
        capped, changed = [], False
        for (n, e), (_, g) in zip(outputs, fallback):
            stripped = strip_guards(g)
            c = rational_form(capped_ratio_form(e, inputs), inputs)
            if not c.has(CappedExp):
                capped.append((n, stripped))
                continue
            clamps = {}             # the input's clamp at huge values, as the fallback has it
            for x in inputs:
                sats = {a for a in stripped.atoms(Saturate) if a.args[0] == x}
                if len(sats) > 1 or (sats and stripped.xreplace({next(iter(sats)): sympy.Dummy()}).has(x)):
                    return fast
                if sats:
                    clamps[x] = next(iter(sats))
            capped.append((n, final(c.xreplace(clamps))))
            changed = True
        if not changed or _cpu_cost(make_block(capped, inputs)) >= _cpu_cost(fast):
            return fast
        caps = capped_caps(capped, fast, slopes, inputs, values, tensors)
        return fast if caps is None else capped_block(capped, caps, inputs)

    # inputs of the formula as written that its value no longer holds: a NaN there is NaN still
    dropped = tuple(u for u in inputs if spec.expr.has(u) and not expr.has(u))
    forward_outputs, forward, kernel_forward = blocks([("y", expr)], dropped)
    backward_outputs, backward, kernel_backward = blocks([(f"d_{n}", e) for n, e in first])
    double_backward = make_block(list(zip(second_names([ab for ab, _ in second], [v.name for v in variables]),
                                          (guarded(scaled(e)) for _, e in second))), inputs)

    float64_forward = float64_backward = ()
    if rewrites and spec.precision == "auto":   # f and df/d(input) that float32 leaves beyond the target (actgen.precision)
        float64_forward = precision.needs_float64((forward, kernel_forward), ["y"], slopes, inputs, values, tensors)
        float64_backward = precision.needs_float64((backward, kernel_backward), [f"d_{u.name}" for u in inputs],
                                                   slopes, inputs, values, tensors)
    return Derivation(spec, inputs, params, constants, expr, first, second, forward, backward, kernel_forward,
                      kernel_backward, double_backward, cpu_fast([("y", expr)], forward_outputs),
                      cpu_fast([(f"d_{n}", e) for n, e in first], backward_outputs),
                      draws, float64_forward, float64_backward)
