"""Formulas as a user writes them, where a direct evaluation overflows, cancels or divides 0/0,
on both backends against independent references: mpmath, and torch's own functions in
float64 (torch.logaddexp, torch.erfc) with autograd for the gradients.
"""
import math

import mpmath
import pytest
import torch

import actgen
import actgen.ops
from actgen.catalogue import UNDERFLOW
from actgen.runtime import use_backend

mpmath.mp.dps = 50


def _grad(fn, *xs):
    xs = [x.detach().clone().requires_grad_() for x in xs]
    y = fn(*xs)
    return y.detach(), torch.autograd.grad(y.sum(), xs)


def _close_to_truth(got, truth, ulps=4):
    """got within ulps of its dtype of the float64 (or mpmath) truth, relative to the truth;
    below UNDERFLOW (2**-102 for float32), as the catalogue's accuracy targets count it, an
    error up to UNDERFLOW is none (intermediates there are subnormal)."""
    truth = torch.as_tensor(truth, dtype=torch.float64)
    info = torch.finfo(got.dtype)
    tol = ulps * info.eps * truth.abs().clamp_min(info.tiny)
    err = (got.double() - truth).abs()
    forgiven = (truth.abs() < UNDERFLOW[got.dtype]) & (err <= UNDERFLOW[got.dtype])
    bad = ((err > tol) & ~forgiven) | (got.double() != truth) & ~torch.isfinite(err)    # NaN, or a wrong inf
    assert not bad.any(), (got[bad].tolist(), truth[bad].tolist())


def test_erfc_of_a_negated_argument_is_not_two_minus_erfc(backend):
    """torch's own GELU form 0.5*x*erfc(-x/sqrt(2)) and erfc(-x): erfc(-z) is not rewritten to
    2 - erfc(z), which is 2 - 2 = 0 for x << 0 where the truth is tiny."""
    m = actgen.compile("0.5 * x * erfc(-x / sqrt(2))", name="gelu_erfc")
    x = torch.linspace(-30, 4, 341, dtype=torch.float64)     # float64: erfc's condition grows as x**2
    y, (g,) = _grad(m.gelu_erfc, x)
    xd = x.clone().requires_grad_()
    want = 0.5 * xd * torch.erfc(-xd / math.sqrt(2))
    (want_g,) = torch.autograd.grad(want.sum(), xd)
    torch.testing.assert_close(y, want.detach(), rtol=1e-12, atol=0)
    torch.testing.assert_close(g, want_g, rtol=1e-12, atol=0)
    e = actgen.compile("erfc(-x)", name="erfc_neg")
    x = torch.tensor([-9.0, -6.0, -3.0, 0.0, 2.0])
    _close_to_truth(e.erfc_neg(x), torch.erfc(-x.double()))


def test_log1p_of_exp_is_softplus(backend):
    m = actgen.compile("log1p(exp(x))", name="sp1p")
    x = torch.tensor([-200.0, -30.0, -1.0, 0.0, 1.0, 30.0, 100.0, 800.0, 1e30])
    y, (g,) = _grad(m.sp1p, x)
    xd = x.double()
    _close_to_truth(y, torch.logaddexp(xd, torch.zeros_like(xd)))
    _close_to_truth(g, torch.sigmoid(xd))


def test_log_sum_exp_pivots_on_the_larger_term(backend):
    """log(exp(a) + exp(b)): b at a = -inf (a masking value), b's 0.5 kept beside a = -1e30,
    and 1/2 each at a = b, where a branch on the larger one must not give a kink's 0."""
    m = actgen.compile("log(exp(a) + exp(b))", name="lse", inputs=["a", "b"])
    a = torch.tensor([-math.inf, -1e30, -3.0, 0.0, 2.0, 90.0, 1e30, 5.0])
    b = torch.tensor([0.5, 0.5, -3.0, 0.0, 2.5, 89.0, -1e30, 5.0])
    y, (ga, gb) = _grad(m.lse, a, b)
    ad, bd = a.double().requires_grad_(), b.double().requires_grad_()
    want = torch.logaddexp(ad, bd)
    want_ga, want_gb = torch.autograd.grad(want.sum(), (ad, bd))
    _close_to_truth(y, want.detach())
    _close_to_truth(ga, want_ga)
    _close_to_truth(gb, want_gb)
    assert ga[3] == gb[3] == 0.5 and ga[2] == gb[2] == 0.5


def test_log_sum_exp_of_two_infinities_is_that_infinity(backend):
    """log(exp(a) + exp(b)) at a = b = -inf (two masked scores) is -inf, and +inf at a = b =
    +inf, as torch.logaddexp gives (b - a was inf - inf there: NaN); a NaN in either input is
    NaN; and at a = b the second derivatives are sigmoid's slope, +-1/4, not the 0 of a branch
    that holds a = b alone (float64 torch.logaddexp, its autograd twice)."""
    m = actgen.compile("log(exp(a) + exp(b))", name="lse", inputs=["a", "b"])
    a = torch.tensor([-math.inf, math.inf, math.inf, -math.inf, math.nan, 1.0, 0.0, -7.5, 3e38, 2.0])
    b = torch.tensor([-math.inf, math.inf, -math.inf, 2.0, 1.0, math.nan, 0.0, -7.5, 3e38, 2.5])
    y = m.lse(a, b)
    want = torch.logaddexp(a.double(), b.double())
    assert y[:4].tolist() == [-math.inf, math.inf, math.inf, 2.0] and y[4:6].isnan().all()
    _close_to_truth(y[6:], want[6:])
    ad, bd = a[6:].clone().requires_grad_(), b[6:].clone().requires_grad_()
    ga, gb = torch.autograd.grad(m.lse(ad, bd).sum(), (ad, bd), create_graph=True)
    aa, ab = torch.autograd.grad(ga.sum(), (ad, bd))
    a64, b64 = a[6:].double().requires_grad_(), b[6:].double().requires_grad_()
    wa, wb = torch.autograd.grad(torch.logaddexp(a64, b64).sum(), (a64, b64), create_graph=True)
    want_aa, want_ab = torch.autograd.grad(wa.sum(), (a64, b64))
    _close_to_truth(ga, wa.detach())
    _close_to_truth(gb, wb.detach())
    _close_to_truth(aa, want_aa)
    _close_to_truth(ab, want_ab)
    assert aa[:3].tolist() == [0.25] * 3


@pytest.mark.parametrize("formula, f, df", [
    ("log(cosh(x))", lambda v: mpmath.log(mpmath.cosh(v)), mpmath.tanh),
    # a number in the argument: |3x| < 1, the near branch's condition, is 3|x| < 1 to sympy
    # (the slope was tanh(x), not 3*tanh(3x))
    ("log(cosh(3*x))", lambda v: mpmath.log(mpmath.cosh(3 * v)), lambda v: 3 * mpmath.tanh(3 * v)),
    ("log(cosh(x/2))", lambda v: mpmath.log(mpmath.cosh(v / 2)), lambda v: mpmath.tanh(v / 2) / 2),
    # 1 + cosh(x) = 2*cosh(x/2)**2: cosh(x) overflowed (inf past 89 in float32)
    ("log1p(cosh(x))", lambda v: mpmath.log1p(mpmath.cosh(v)), lambda v: mpmath.tanh(v / 2)),
    # sinh(asinh(x)/1) is x to sympy: no sinh left in the near branch to read the argument off
    ("log(cosh(2*asinh(x)))", lambda v: mpmath.log(mpmath.cosh(2 * mpmath.asinh(v))),
     lambda v: 2 * mpmath.tanh(2 * mpmath.asinh(v)) / mpmath.sqrt(1 + v * v)),
])
def test_log_cosh_neither_overflows_nor_cancels(backend, formula, f, df):
    m = actgen.compile(formula, name="logcosh")
    x = torch.tensor([-800.0, -100.0, -5.0, -1.0, -0.999, -1e-3, -1e-7, 0.0, 1e-20, 0.5, 1.0, 20.0, 1e38])
    y, (g,) = _grad(m.logcosh, x)
    vals = [mpmath.mpf(v) for v in x.tolist()]
    _close_to_truth(y, [float(f(v)) for v in vals])
    _close_to_truth(g, [float(df(v)) for v in vals])


def test_log_cosh_differentiates_as_written(backend):
    """log(cosh(u))' is tanh(u)*u', whatever branches compute log(cosh(u)): in
    x*tanh(b*x) - log(cosh(b*x))/b the two tanh(b*x) cancel symbolically, leaving
    b*x*sech(b*x)**2, tiny at |x| = 30 where the difference of two values near 1 is 0."""
    m = actgen.compile("x * tanh(b*x) - log(cosh(b*x)) / b", name="lc", params={"b": 1.0})
    x = torch.tensor([-34.0, -30.0, -20.0, -1.0, -1e-3, 0.0, 0.5, 19.5, 30.0])
    b = torch.tensor([1.0])
    _, (g,) = _grad(lambda t: m.lc(t, b), x)
    want = [float(mpmath.mpf(v) / mpmath.cosh(mpmath.mpf(v)) ** 2) for v in x.tolist()]
    _close_to_truth(g, want)


@pytest.mark.parametrize("a", [1.0, 0.5, -2.0, 1e-3, 1e-30, 0.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_log_cosh_over_a_param_keeps_its_gradient_far_out_and_at_zero(backend, a, dtype):
    """log(cosh(a*x))/a's gradient in a, x*tanh(a*x)/a - log(cosh(a*x))/a**2, is two terms of
    about |x|/|a| whose difference tends to log(2)/a**2: 2.6e4 ULP off at a*x = 1e5 in
    float32 (0.3%), all of it from 1e7; beyond |a*x| = 1 it is computed as
    (log(2) - softplus(-2|v|) - 2|v|*sigmoid(-2|v|))/a**2 at v = a*x.  At a = 0 f is 0 and
    df/da x**2/2 (0/0, NaN, as written; and 0 and NaN at a = 1e-30), from an approximant in
    v.  Against mpmath at 300 digits (a = 0: the limit); at x = +-inf df/da is log(2)/a**2."""
    if backend == "triton" and dtype == torch.float64:
        pytest.skip("kernels: float32")
    m = actgen.compile("log(cosh(a*x))/a", name="lc_a", params={"a": {"init": 1.0, "per_channel": True}})
    x = torch.tensor([-1e20, -1e5, -30.0, -1.0, -1e-3, 0.0, 0.5, 2.0, 30.0, 1e3, 1e5, 1e7], dtype=dtype)
    y, gx, ga = _per_element(m.lc_a, x, a, dtype)
    with mpmath.workdps(300):
        c = mpmath.mpf(float(torch.tensor(a, dtype=dtype)))
        c = c if c != 0 else mpmath.mpf(10) ** -400      # (f's limit, 0, in either dtype)
        lc = lambda w: mpmath.log1p(2 * mpmath.sinh(w / 2) ** 2)     # log(cosh(w)), exact at tiny w too
        f = lambda p, v: lc(p * v) / p
        vals = [mpmath.mpf(v) for v in x.double().tolist()]
        want = [float(f(c, v)) for v in vals]
        want_x = [float(mpmath.tanh(c * v)) for v in vals]
        want_a = [float(v * mpmath.tanh(c * v) / c - lc(c * v) / c**2) for v in vals]
    _close_to_truth(y, want, ulps=8)
    _close_to_truth(gx, want_x, ulps=8)
    # (x**2/2 past the dtype's largest, x = 1e20 at a = 1e-30 in float32, is inf - inf there)
    want_a = torch.tensor(want_a, dtype=torch.float64)
    finite = want_a.abs() < torch.finfo(dtype).max
    _close_to_truth(ga[finite], want_a[finite], ulps=8)
    if dtype == torch.float32 and abs(a) > 1e-3:
        _, _, ga = _per_element(m.lc_a, torch.tensor([math.inf, -math.inf]), a)
        _close_to_truth(ga, [math.log(2) / a**2] * 2, ulps=8)


@pytest.mark.parametrize("formula", ["abs(x)**p", "sign(x)*abs(x)**p", "x * abs(x)**p", "max(x, 0)**p"])
def test_a_power_with_a_param_exponent_has_its_slope_at_zero(backend, formula):
    """d|x|**p/dx = p*sign(x)*|x|**(p - 1): 0 at x = 0 for p > 1, as for a number p - not
    sympy's p*sign(x)*|x|**p/|x|, 0/0 there; and d|x|**p/dp = |x|**p*log|x| is 0 there too."""
    m = actgen.compile(formula, name="pw", params={"p": 1.5})
    x = torch.tensor([-2.0, -0.5, 0.0, 1e-30, 0.5, 3.0], dtype=torch.float64)
    p = torch.tensor([1.5], dtype=torch.float64)
    y, (g, gp) = _grad(m.pw, x, p)
    xd, pd = x.clone().requires_grad_(), p.clone().requires_grad_()
    want = {"abs(x)**p": xd.abs() ** pd, "sign(x)*abs(x)**p": torch.sign(xd) * xd.abs() ** pd,
            "x * abs(x)**p": xd * xd.abs() ** pd, "max(x, 0)**p": xd.clamp_min(0) ** pd}[formula]
    want_g, want_gp = torch.autograd.grad(want.sum(), (xd, pd))
    torch.testing.assert_close(y, want.detach())
    torch.testing.assert_close(g, want_g)
    torch.testing.assert_close(gp, want_gp)      # |x|**p*log|x| is 0 at x = 0, not 0 * -inf
    assert g[2] == 0


@pytest.mark.parametrize("formula, p0", [("abs(x)**p", 0.0), ("abs(x)**(p + 1)", -1.0), ("sign(x)*abs(x)**p", 0.0),
                                       ("abs(x)**(2*p)", 0.0)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_power_with_a_param_exponent_of_zero_has_slope_zero_at_zero(backend, formula, p0, dtype):
    """|x|**p at p = 0 is 1 for every x (0**0 = 1, as torch's pow has it), so its slope
    p*sign(x)*|x|**(p - 1) is 0 at x = 0 too, where as written it is 0*0*inf, NaN (torch's
    own pow backward takes 0 for an exponent of 0 as well).  The branch is at x = 0 alone:
    the slope's derivative in p at p = 0 stays sign(x)/|x| (d2f/dx dp) elsewhere.  (df/dp at
    x = 0 and p = 0 is not checked: |0|**p steps from 1 to 0 there, where both difference
    quotients in p go to -inf and torch takes 0.)"""
    m = actgen.compile(formula, name="pw0", params={"p": 1.5})
    x = torch.tensor([0.0, -2.0, -0.5, 1e-30, 0.5, 3.0], dtype=dtype)
    p = torch.tensor([p0], dtype=dtype)
    y, (g, _) = _grad(m.pw0, x, p)
    xd, pd = x.double().requires_grad_(), p.double().requires_grad_()
    want = {"abs(x)**p": xd.abs() ** pd, "abs(x)**(p + 1)": xd.abs() ** (pd + 1),
            "sign(x)*abs(x)**p": torch.sign(xd) * xd.abs() ** pd, "abs(x)**(2*p)": xd.abs() ** (2 * pd)}[formula]
    (want_g,) = torch.autograd.grad(want.sum(), xd)
    assert g[0].item() == 0.0 and want_g[0].item() == 0.0, (g, want_g)
    _close_to_truth(y, want.detach())
    _close_to_truth(g, want_g)
    # d2f/dx dp at p = p0, from mpmath: 1/x for |x|**p (d(p*sign(x)*|x|**(p - 1))/dp at p = 0,
    # which torch's own backward makes 0 there)
    f = {"abs(x)**p": lambda v, q: abs(v) ** q, "abs(x)**(p + 1)": lambda v, q: abs(v) ** (q + 1),
         "sign(x)*abs(x)**p": lambda v, q: mpmath.sign(v) * abs(v) ** q,
         "abs(x)**(2*p)": lambda v, q: abs(v) ** (2 * q)}[formula]
    xs = torch.tensor([-2.0, 0.5, 3.0], dtype=dtype, requires_grad=True)
    ps = p.clone().requires_grad_()
    (gx,) = torch.autograd.grad(m.pw0(xs, ps).sum(), xs, create_graph=True)
    (gxp,) = torch.autograd.grad(gx.sum(), ps)
    _close_to_truth(gxp, [float(sum(mpmath.diff(f, (mpmath.mpf(v), mpmath.mpf(p0)), (1, 1)) for v in xs.tolist()))])


def test_a_condition_of_constants_with_one_of_elements(backend):
    """min(max(x, lo), hi) with constants: conditions of lo and hi alone (hi > lo) combine with
    the elements' (x > lo); the kernels ran into an error there under Triton's interpreter."""
    m = actgen.compile("Min(Max(x, lo), hi)", name="clip", constants={"lo": -1.0, "hi": 1.0})
    x = torch.tensor([-math.inf, -2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0, math.inf])
    for lo, hi in ((-1.0, 1.0), (0.25, 0.75), (1.0, -1.0)):
        y, (g,) = _grad(lambda t: m.clip(t, lo=lo, hi=hi), x)
        xd = x.double().requires_grad_()
        want = torch.minimum(torch.maximum(xd, torch.tensor(lo, dtype=torch.float64)), torch.tensor(hi, dtype=torch.float64))
        (want_g,) = torch.autograd.grad(want.sum(), xd)
        torch.testing.assert_close(y, want.detach().float())
        inner = (x > min(lo, hi)) & (x < hi) if lo < hi else torch.zeros_like(x, dtype=torch.bool)
        torch.testing.assert_close(g[inner], want_g.float()[inner])     # the kinks have their own convention
    t = actgen.compile("where((x > t) & (t > 0), x, 0)", name="gate", params={"t": 0.5})
    for tv in (0.5, -0.5):
        y = t.gate(x, torch.tensor([tv]))
        torch.testing.assert_close(y, torch.where((x > tv) & (tv > 0), x, torch.zeros_like(x)))


@pytest.mark.parametrize("formula, f, df", [
    # exp(x) overflows where 1/(1 + exp(x)) underflows: their product is a sigmoid
    ("x * exp(x) / (1 + exp(x))", lambda v: v * mpmath.exp(v) / (1 + mpmath.exp(v)),
     lambda v: mpmath.exp(v) / (1 + mpmath.exp(v)) + v * mpmath.exp(v) / (1 + mpmath.exp(v)) ** 2),
    ("exp(x) / (1 + exp(x))**2", lambda v: mpmath.exp(v) / (1 + mpmath.exp(v)) ** 2,
     lambda v: mpmath.exp(v) * (1 - mpmath.exp(v)) / (1 + mpmath.exp(v)) ** 3),
    # sigmoid's derivative as written: 1 - 2 sigmoid(x) cancels near 0 in its own derivative
    ("sigmoid(x) * (1 - sigmoid(x))", lambda v: mpmath.exp(v) / (1 + mpmath.exp(v)) ** 2,
     lambda v: mpmath.exp(v) * (1 - mpmath.exp(v)) / (1 + mpmath.exp(v)) ** 3),
    # sinh and cosh overflow together: tanh written as their ratio, and sech's derivative
    ("sinh(x) / cosh(x)", lambda v: mpmath.tanh(v), lambda v: 1 / mpmath.cosh(v) ** 2),
    ("1 / cosh(x)", lambda v: 1 / mpmath.cosh(v), lambda v: -mpmath.tanh(v) / mpmath.cosh(v)),
    # the Gudermannian's slope exp(x)/(1 + exp(2x)) is 1/(2 cosh(x)): inf/inf as written
    ("2 * atan(exp(x)) - pi/2", lambda v: 2 * mpmath.atan(mpmath.exp(v)) - mpmath.pi / 2,
     lambda v: 1 / mpmath.cosh(v)),
    # a tanh written out and cubed: sympy takes the cube into numerator and denominator
    ("((exp(x) - exp(-x)) / (exp(x) + exp(-x)))**3", lambda v: mpmath.tanh(v) ** 3,
     lambda v: 3 * mpmath.tanh(v) ** 2 / mpmath.cosh(v) ** 2),
    # ISRU: its derivative's two terms are 1/|x| each where their sum is 1/|x|**3
    ("x / sqrt(1 + x**2)", lambda v: v / mpmath.sqrt(1 + v * v), lambda v: (1 + v * v) ** mpmath.mpf(-1.5)),
    # SoftClip: a ratio of (1 + exp) that overflows to inf/inf, and a difference of two
    # softplus (of two sigmoids in its derivative) a number apart
    ("log((1 + exp(5*x)) / (1 + exp(5*(x - 1)))) / 5",
     lambda v: (mpmath.log1p(mpmath.exp(5 * v)) - mpmath.log1p(mpmath.exp(5 * v - 5))) / 5,
     lambda v: 1 / (1 + mpmath.exp(-5 * v)) - 1 / (1 + mpmath.exp(5 - 5 * v))),
])
def test_overflow_and_cancellation_as_written_are_removed(backend, formula, f, df):
    m = actgen.compile(formula, name="nat")
    x = torch.tensor([-1e30, -900.0, -200.0, -90.0, -20.0, -3.0, -1e-3, -1e-20, 0.0, 1e-20, 1e-3, 0.5, 2.0, 8.5, 20.0,
                      90.0, 200.0, 800.0, 900.0, 1e4, 1e8, 1e30])
    y, (g,) = _grad(m.nat, x)
    vals = [mpmath.mpf(v) for v in x.tolist()]
    _close_to_truth(y, [float(f(v)) for v in vals], ulps=8)
    _close_to_truth(g, [float(df(v)) for v in vals], ulps=8)


@pytest.mark.parametrize("formula, truth", [
    ("(1 + x**2)**1.5 - 1", lambda v: (1 + v * v) ** mpmath.mpf(1.5) - 1),
    ("(1 + x**2)**0.25 - 1", lambda v: (1 + v * v) ** mpmath.mpf(0.25) - 1),
    ("1/(1 + x**2)**0.5 - 1", lambda v: (1 + v * v) ** mpmath.mpf(-0.5) - 1),
    ("3*(1 + x)**(1/4) - 3", lambda v: 3 * (1 + v) ** (mpmath.mpf(1) / 4) - 3),
])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_power_near_one_minus_one_is_its_expm1(backend, dtype, formula, truth):
    """c*(1 + u)**p - c cancels where (1 + u)**p is near 1: (1 + x**2)**1.5 - 1 was 0 at
    x = 1e-12 and 1230 ULP off at 1e-6 in float32.  expm1(p*log1p(u)) there, the power as
    written farther out; against mpmath at 300 digits, f and its slope (points inside each
    one's domain: 1 + x >= 0)."""
    x = torch.tensor([-0.99, -0.5, -1e-3, -1e-6, -1e-12, -1e-30, 0.0, 1e-30, 1e-12, 1e-6, 1e-3, 0.5, 1.0, 3.0,
                      -30.0, 100.0, 1e4, 1e10], dtype=dtype)
    if "(1 + x)" in formula:
        x = x[x > -1]
    _f_and_slope_match_mpmath(formula, truth, x)


@pytest.mark.parametrize("formula, truth, xs", [
    ("log(sqrt(1 + x))", lambda v: mpmath.log1p(v) / 2, [-0.5, -1e-6, -1e-12, -1e-30, 0.0, 1e-30, 1e-12, 1e-3, 3.0, 1e30]),
    ("log(x**3)", lambda v: 3 * mpmath.log(v), [1e-30, 1e-13, 0.5, 2.0, 1e13, 1e30]),
    ("log(x**2)", lambda v: 2 * mpmath.log(abs(v)), [-1e30, -1e20, -3.0, -1e-30, 1e-30, 1e-23, 0.5, 1e20, 1e30]),
])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_log_of_a_power_is_a_multiple_of_a_log(backend, dtype, formula, truth, xs):
    """log(w**k) is k*log|w| (an even k) or k*log(w): w**k over- or underflows, or rounds to
    1, where the log does not (log(sqrt(1 + x)) was 820 ULP off at x = 1e-12 in float32).
    Against mpmath at 300 digits, f and its slope."""
    _f_and_slope_match_mpmath(formula, truth, torch.tensor(xs, dtype=dtype))


@pytest.mark.parametrize("formula, truth, xs", [
    ("log(tanh(x)**2)", lambda v: mpmath.log(mpmath.tanh(v) ** 2),
     [-300.0, -30.0, -17.0, -1.0, -1e-6, 1e-30, 1e-3, 0.5, 3.0, 9.0, 17.0, 30.0, 300.0]),
    ("log(tanh(x))", lambda v: mpmath.log(mpmath.tanh(v)), [1e-30, 1e-6, 0.1, 1.0, 5.0, 17.0, 40.0, 300.0]),
])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_log_of_a_tanh_keeps_its_tail(backend, dtype, formula, truth, xs):
    """log|tanh(x)| is log(-expm1(-2|x|)) - softplus(-2|x|): far out |tanh(x)| rounds to 1
    and its log, about -2*exp(-2|x|), was 0 at |x| = 30 in float32 and 65520 ULP off at 17.
    Against mpmath at 300 digits, f and its slope."""
    _f_and_slope_match_mpmath(formula, truth, torch.tensor(xs, dtype=dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_power_times_a_log_is_its_limit_at_zero(backend, dtype):
    """x*log(x) is 0 at x = 0, as torch.xlogy(x, x) has it (it was 0*-inf = NaN), and NaN for
    x < 0; x**2*log(x**2) is 2*x**2*log|x|: 0 where x**2 underflows (x = 1e-30 in float32:
    NaN before) and at 0; their slopes are -inf at 0 (log(x) + 1, 2*x*(1 + 2*log|x|) is 0
    there).  Against torch's xlogy and mpmath at 300 digits."""
    x = torch.tensor([-2.0, -1e-30, 0.0, 1e-30, 1e-6, 0.5, 1.0, 3.0, 1e10], dtype=dtype)
    m = actgen.compile("x * log(x)", name="xlogx")
    y, (g,) = _grad(m.xlogx, x)
    torch.testing.assert_close(y, torch.xlogy(x, x), rtol=4 * torch.finfo(dtype).eps, atol=0, equal_nan=True)
    inside = x > 0
    _close_to_truth(g[inside], [float(mpmath.log(mpmath.mpf(v)) + 1) for v in x[inside].tolist()])
    assert g[x == 0].item() == -math.inf and g[x < 0].isnan().all()
    sq = actgen.compile("x**2 * log(x**2)", name="x2logx2")
    truth = lambda v: v * v * mpmath.log(v * v) if v else mpmath.mpf(0)      # noqa: E731
    _f_and_slope_match_mpmath("x**2 * log(x**2)", truth, x[x != 0])
    y, (g,) = _grad(sq.x2logx2, x[x == 0])
    assert y.tolist() == [0.0] and g.tolist() == [0.0]


@pytest.mark.parametrize("formula", ["x / (1 + x**2)**0.5", "x * (1 + x**2)**(-0.5)"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_isru_with_a_decimal_power_keeps_its_slope(backend, dtype, formula):
    """ISRU with its power written as a decimal: the slope's two terms, -x**2*(1 + x**2)**-1.5
    and (1 + x**2)**-0.5, cancel to (1 + x**2)**-1.5 symbolically as they do for 1/2 (they
    were 50 to 3045 float64 ULP off for |x| from 17 to 60).  Against mpmath at 300 digits."""
    x = torch.tensor([-1e30, -1e5, -60.0, -17.0, -1.0, -1e-3, 0.0, 1e-6, 0.5, 3.0, 30.0, 100.0, 1e4, 1e30],
                     dtype=dtype)
    _f_and_slope_match_mpmath(formula, lambda v: v / mpmath.sqrt(1 + v * v), x)


_SIGMOID = lambda v: 1 / (1 + mpmath.exp(-v))     # noqa: E731


@pytest.mark.parametrize("formula, f, df, xs", [
    # log1mexp: -expm1(-x) rounds near 1 for large x, 1 - exp(-x) cancels near 0
    ("log(1 - exp(-x))", lambda v: mpmath.log(-mpmath.expm1(-v)), lambda v: 1 / mpmath.expm1(v),
     [1e-30, 1e-8, 1e-3, 0.5, 0.69, 0.7, 1.0, 5.0, 10.0, 20.0, 40.0, 80.0, 1e3]),
    ("log1p(-exp(-x))", lambda v: mpmath.log(-mpmath.expm1(-v)), lambda v: 1 / mpmath.expm1(v),
     [1e-8, 1e-3, 0.5, 0.7, 5.0, 40.0]),
    # the slope 1 - 1/(1 + x) cancels near 0: x/(1 + x)
    ("x - log(1 + x)", lambda v: v - mpmath.log1p(v), lambda v: v / (1 + v),
     [-0.9, -1e-3, 1e-30, 1e-8, 1e-4, 1e-3, 0.01, 0.3, 1.0, 10.0, 1e6, 1e30]),
    # asinh written out: cancels for x < 0, rounds to log(1) near 0, overflows far out
    ("log(x + sqrt(x**2 + 1))", mpmath.asinh, lambda v: 1 / mpmath.sqrt(1 + v * v),
     [-3e38, -1e20, -5.0, -0.1, -1e-8, 1e-30, 1e-8, 1e-4, 0.1, 3.0, 1e19, 1e20, 3e38]),
    ("log(sqrt(x**2 + 4) - x)", lambda v: mpmath.log(2) - mpmath.asinh(v / 2), lambda v: -1 / mpmath.sqrt(v * v + 4),
     [-1e20, -3.0, -1e-8, 0.0, 1e-8, 3.0, 1e20]),
    # a decimal half: sigmoid(x) - 0.5 is tanh(x/2)/2, as sigmoid(x) - 1/2 is
    ("sigmoid(x) - 0.5", lambda v: mpmath.tanh(v / 2) / 2, lambda v: _SIGMOID(v) * _SIGMOID(-v),
     [-100.0, -3.0, -1e-3, 1e-30, 1e-8, 1e-3, 0.1, 3.0, 100.0]),
    # terms equal but not 0 at 0 (a symmetric softplus difference): 0 at 1e-30, 4.5e5 ULP
    # off at 1e-7 in float64
    # a decimal weight: log(0.5) in 53 bits left 2.3e-17 at x = 0 (softplus(x) - log(2) is 0 there)
    ("log(0.5*exp(x) + 0.5)", lambda v: mpmath.log((mpmath.exp(v) + 1) / 2), lambda v: _SIGMOID(v),
     [-1000.0, -100.0, -3.0, -1e-3, -1e-30, 1e-30, 1e-7, 1e-3, 0.3, 3.0, 100.0, 1000.0]),
    ("softplus(x - 1) - softplus(-x - 1)",
     lambda v: mpmath.log1p(mpmath.exp(v - 1)) - mpmath.log1p(mpmath.exp(-v - 1)),
     lambda v: _SIGMOID(v - 1) + _SIGMOID(-v - 1),
     [-100.0, -3.0, -1e-3, -1e-30, 1e-30, 1e-7, 1e-3, 0.3, 3.0, 100.0]),
])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cancellations_users_write_are_taken_out(backend, formula, f, df, xs, dtype):
    m = actgen.compile(formula, name="nat")
    x = torch.tensor(xs, dtype=dtype)
    y, (g,) = _grad(m.nat, x)
    vals = [mpmath.mpf(v) for v in x.tolist()]
    _close_to_truth(y, [float(f(v)) for v in vals])
    _close_to_truth(g, [float(df(v)) for v in vals])


@pytest.mark.parametrize("a", [2.0, -0.5])
def test_asinh_written_out_with_a_param_is_asinh(backend, a):
    """log(a*x + sqrt(a**2*x**2 + 1)) is asinh(a*x) for either sign of a: no cancellation
    where a*x < 0 or near 0, no overflow far out; its gradients in x and a too."""
    m = actgen.compile("log(a*x + sqrt(a**2*x**2 + 1))", name="asinh_a", params={"a": 1.0})
    x = torch.tensor([-1e20, -3.0, -1e-3, -1e-9, 1e-9, 1e-3, 0.5, 3.0, 1e20], dtype=torch.float64)
    p = torch.tensor([a], dtype=torch.float64)
    y, (gx, gp) = _grad(m.asinh_a, x, p)
    vals = [mpmath.mpf(v) for v in x.tolist()]
    _close_to_truth(y, [float(mpmath.asinh(a * v)) for v in vals])
    _close_to_truth(gx, [float(a / mpmath.sqrt(1 + (a * v) ** 2)) for v in vals])
    _close_to_truth(gp, [float(sum(v / mpmath.sqrt(1 + (a * v) ** 2) for v in vals))], ulps=64)


def test_log_one_minus_exp_with_a_param_compiles_in_its_one_branch_form(backend):
    """With a param in u, log(1 - exp(u)) keeps log(-expm1(u)) (the two-branch form's probes
    for limits took sympy minutes, past the compile's time limit): it compiles, and is right
    where that form is."""
    m = actgen.compile("log(1 - exp(-a*x))", name="l1me_a", params={"a": 1.5})
    x = torch.tensor([1e-6, 0.1, 0.5, 1.0, 3.0], dtype=torch.float64)      # (a*x up to 4.5)
    a = torch.tensor([1.5], dtype=torch.float64)
    y, (g,) = _grad(lambda t: m.l1me_a(t, a), x)
    vals = [mpmath.mpf(v) for v in x.tolist()]
    _close_to_truth(y, [float(mpmath.log(-mpmath.expm1(-1.5 * v))) for v in vals], ulps=64)
    _close_to_truth(g, [float(1.5 / mpmath.expm1(1.5 * v)) for v in vals])


def test_a_term_plus_its_multiple_of_expm1_is_the_exponential(backend):
    """x + x*expm1(x) is x*exp(x), its slope 1 + expm1(x) + x*exp(x) is (1 + x)*exp(x): as
    written x and x*expm1(x) ~ -x cancel for x << 0 (3e5 ULP at x = -45)."""
    m = actgen.compile("x + x * expm1(x)", name="xexp")
    x = torch.tensor([-1e30, -900.0, -90.0, -44.985191345214844, -20.0, -3.0, -1e-3, 0.0, 1e-20, 0.5, 2.0, 20.0, 80.0])
    y, (g,) = _grad(m.xexp, x)
    vals = [mpmath.mpf(v) for v in x.tolist()]
    _close_to_truth(y, [float(v * mpmath.exp(v)) for v in vals])
    _close_to_truth(g, [float((v + 1) * mpmath.exp(v)) for v in vals])


def test_a_two_way_softmax_of_two_inputs_is_a_sigmoid(backend):
    m = actgen.compile("exp(a) / (exp(a) + exp(b))", name="sm2", inputs=["a", "b"])
    a = torch.tensor([-1e30, -100.0, 0.0, 3.0, 100.0, 800.0, 1e30])
    b = torch.tensor([0.0, -101.0, 0.0, -3.0, 99.0, 799.0, 1e30 * 0.5])
    y, (ga, gb) = _grad(m.sm2, a, b)
    ad, bd = a.double().requires_grad_(), b.double().requires_grad_()
    want = torch.softmax(torch.stack([ad, bd]), 0)[0]
    want_ga, want_gb = torch.autograd.grad(want.sum(), (ad, bd))
    _close_to_truth(y, want.detach())
    _close_to_truth(ga, want_ga)
    _close_to_truth(gb, want_gb)


def test_squareplus_with_a_squared_param_keeps_its_conjugate_form(backend):
    """(x + sqrt(x**2 + b**2))/2: the cancellation for x << 0 is found with b**2 as the
    constant term (not b as the square's base), and x is the one hypot keeps from overflowing."""
    m = actgen.compile("(x + sqrt(x**2 + b**2)) / 2", name="sqp", params={"b": 1.0})
    x = torch.tensor([-1e30, -1.9e13, -1e4, -1.0, 0.0, 1.0, 1e4, 1e30], dtype=torch.float64)
    b = torch.tensor([1.0], dtype=torch.float64)
    y, (g,) = _grad(lambda t: m.sqp(t, b), x)
    with mpmath.workdps(150):           # x + sqrt(x**2 + 1) at x = -1e30: 60 digits cancel
        f = [float((mpmath.mpf(v) + mpmath.sqrt(mpmath.mpf(v) ** 2 + 1)) / 2) for v in x.tolist()]
        d = [float((1 + mpmath.mpf(v) / mpmath.sqrt(mpmath.mpf(v) ** 2 + 1)) / 2) for v in x.tolist()]
    _close_to_truth(y, f)
    _close_to_truth(g, d)


def _at(fn, v):
    """fn at v, at 0 its limit (read off at 1e-40: these are analytic there)."""
    return fn(v if v != 0 else mpmath.mpf(10) ** -40)


@pytest.mark.parametrize("formula, f", [
    ("sin(x) / x", lambda v: mpmath.sin(v) / v),
    ("tanh(x) / x", lambda v: mpmath.tanh(v) / v),
    ("expm1(x) / x", lambda v: mpmath.expm1(v) / v),
    ("(exp(x) - 1) / x", lambda v: mpmath.expm1(v) / v),
    ("x / (exp(x) - 1)", lambda v: v / mpmath.expm1(v)),
    ("(1 - exp(-x)) / x", lambda v: -mpmath.expm1(-v) / v),
    ("(x - sin(x)) / x**3", lambda v: (v - mpmath.sin(v)) / v**3),
    ("x / sinh(x)", lambda v: v / mpmath.sinh(v)),
    # a numerator rewritten first (a sum that cancels at 0, log(cosh(x))'s stable branches):
    # the ratio was NaN at 0, or its slope's terms (each ~1/x) cancelled near 0 (1.4e14 at
    # 1e-30, 5e-4 off at 1e-12); some took over the 60 s limit to compile
    ("(expm1(x) - x) / x**2", lambda v: (mpmath.expm1(v) - v) / v**2),
    ("(exp(x) - 1 - x - x**2/2) / x**3", lambda v: (mpmath.expm1(v) - v - v**2 / 2) / v**3),
    ("log(cosh(x)) / x", lambda v: mpmath.log(mpmath.cosh(v)) / v),
    ("(softplus(x) - log(2)) / x", lambda v: (mpmath.log1p(mpmath.exp(v)) - mpmath.log(2)) / v),
    # a ratio inside a sum under calls: the compiler failed on it (a sum of no symbols)
    ("sqrt(exp(sin(x)/x + x))", lambda v: mpmath.sqrt(mpmath.exp(mpmath.sin(v) / v + v))),
    # no approximant fits (log1p(x**2)/x's slope under two calls): the limit at 0 alone, which
    # sympy's series took minutes to find (past the 60 s limit)
    ("asinh(sigmoid(log1p(x**2) / x))", lambda v: mpmath.asinh(1 / (1 + mpmath.exp(-mpmath.log1p(v * v) / v)))),
])
def test_a_removable_singularity_at_zero_has_its_limit(backend, formula, f):
    """0/0 at x = 0 (sin(x)/x, x/(exp(x) - 1)): the value and the slope there are their limits,
    not NaN, and near 0 neither cancels (the slope's two terms are each ~1/x)."""
    m = actgen.compile(formula, name="rs")
    x = torch.tensor([-60.0, -20.0, -3.0, -1.0, -0.1, -1e-3, -1e-7, -1e-20, 0.0, 1e-30, 1e-10, 1e-4, 0.01, 0.3, 1.0,
                      2.5, 7.0, 20.0, 60.0])
    y, (g,) = _grad(m.rs, x)
    with mpmath.workdps(300):           # (x - sin(x))/x**3 at 1e-40 cancels 80 digits
        vals = [mpmath.mpf(v) for v in x.tolist()]
        want = [float(_at(f, v)) for v in vals]
        want_g = [float(_at(lambda u: mpmath.diff(f, u), v)) for v in vals]
    _close_to_truth(y, want, ulps=8)
    _close_to_truth(g, want_g, ulps=8)
    if formula == "x / sinh(x)":        # its slope's x*cosh(x)/sinh(x)**2: inf/inf past |x| = 89
        y, (g,) = _grad(m.rs, torch.tensor([-1e30, -100.0, 100.0, 1e30]))
        assert (y == 0).all() and (g == 0).all(), (y, g)


def test_a_removable_singularity_of_a_function_defined_above_minus_one(backend):
    """(x - log1p(x))/x**2: 1/2 at 0 and its slope -1/3 there, where the slope's terms (each
    ~1/x) cancelled near 0 (0 at 1e-30, 1e-3 off at 1e-12)."""
    m = actgen.compile("(x - log1p(x)) / x**2", name="rs")
    x = torch.tensor([-0.99, -0.5, -0.1, -1e-3, -1e-7, -1e-20, 0.0, 1e-30, 1e-12, 1e-4, 0.3, 1.0, 7.0, 60.0, 1e4])
    y, (g,) = _grad(m.rs, x)
    f = lambda v: (v - mpmath.log1p(v)) / v**2
    with mpmath.workdps(300):
        vals = [mpmath.mpf(v) for v in x.tolist()]
        _close_to_truth(y, [float(_at(f, v)) for v in vals], ulps=8)
        _close_to_truth(g, [float(_at(lambda u: mpmath.diff(f, u), v)) for v in vals], ulps=8)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_exp_over_expm1_keeps_its_tails(backend, dtype):
    """x/(exp(x) - 1): its derivative's x*exp(x)/expm1(x)**2 overflows (inf/inf from x = 44 in
    float32; in float64 the square alone overflows from x = 355, where the rest gave a wrong
    positive value) - exp(x)/expm1(x) is 1/(1 - exp(-x)).  And softplus's inverse
    log(exp(x) - 1) overflowed for x > 88 in float32, where it is ~x."""
    m = actgen.compile("x / (exp(x) - 1)", name="bose")
    x = torch.tensor([-1e4, -100.0, -20.0, -1.0, 0.0, 1e-20, 1.0, 20.0, 50.0, 100.0, 400.0, 800.0, 1e4, 1e30], dtype=dtype)
    y, (g,) = _grad(m.bose, x)
    with mpmath.workdps(60):
        f = lambda v: v / mpmath.expm1(v) if v else mpmath.mpf(1)
        df = lambda v: (mpmath.expm1(v) - v * mpmath.exp(v)) / mpmath.expm1(v) ** 2 if v else -mpmath.mpf(1) / 2
        vals = [mpmath.mpf(v) for v in x.tolist()]
        _close_to_truth(y, [float(f(v)) for v in vals])
        _close_to_truth(g, [float(df(v)) for v in vals])
    m = actgen.compile("log(exp(x) - 1)", name="inv_softplus")
    x = torch.tensor([1e-30, 1e-3, 0.5, 1.0, 20.0, 88.0, 89.0, 100.0, 1e4, 1e30], dtype=dtype)
    y, (g,) = _grad(m.inv_softplus, x)
    with mpmath.workdps(60):
        vals = [mpmath.mpf(v) for v in x.tolist()]
        _close_to_truth(y, [float(v + mpmath.log(-mpmath.expm1(-v))) for v in vals])
        _close_to_truth(g, [float(1 / -mpmath.expm1(-v)) for v in vals])


def test_a_bounded_oscillation_keeps_the_limit_at_inf(backend):
    """sin(inf) is NaN in IEEE arithmetic, but where sin or cos only bound a term that grows or
    vanishes anyway the formula's limit at +-inf exists: x + sin(x) -> +-inf, (x - sin(x))/x**3
    and (1 - cos(x))/x**2 (and their slopes) -> 0.  x*sin(x) has none, and stays NaN."""
    x = torch.tensor([-math.inf, -1e30, 3.0, 1e30, math.inf])
    m = actgen.compile("x + sin(x)", name="snake0")
    y, (g,) = _grad(m.snake0, x)
    assert y[0] == -math.inf and y[-1] == math.inf and g[[0, -1]].isnan().all()    # 1 + cos(x): no limit
    for formula in ("(x - sin(x)) / x**3", "(1 - cos(x)) / x**2"):
        m = actgen.compile(formula, name="osc")
        y, (g,) = _grad(m.osc, x)
        assert y[[0, -1]].tolist() == [0.0, 0.0] and g[[0, -1]].tolist() == [0.0, 0.0], (formula, y, g)
    m = actgen.compile("x * sin(x)", name="xsin")
    y, _ = _grad(m.xsin, x)
    assert y[[0, -1]].isnan().all()


def _gompertz_slope(v, c):
    """d/dx x*exp(-exp(-c*x)) at x = v, in mpmath (exp(-exp(u)) is 0 past u = 1e4: mpmath
    would carry exp(u)'s digits)."""
    u = -c * v
    return (1 + c * v * mpmath.exp(u)) * mpmath.exp(-mpmath.exp(u)) if u < 10**4 else mpmath.mpf(0)


def _mish_slope(v, c):
    """d/dx x*tanh(softplus(c*x)) at x = v, in mpmath."""
    sp = mpmath.log1p(mpmath.exp(c * v))
    return mpmath.tanh(sp) + c * v / (1 + mpmath.exp(-c * v)) / mpmath.cosh(sp) ** 2


@pytest.mark.parametrize("k", [1.0, -0.5, 0.0])
def test_a_learnable_scale_keeps_the_clamps_of_its_formula(backend, k):
    """x*exp(-exp(-k*x)) (a Gompertz gate with a learnable k) and x*tanh(softplus(k*x)): their
    slopes in x are functions of k*x alone, clamped in k*x where they have settled, as the
    formulas with k = 1 written in are - not inf*0 = NaN where exp(-k*x) overflows (x = -90).
    At k = 0, k*x is NaN at x = +-inf: the limit read off at run time there."""
    x = torch.tensor([-math.inf, -1e30, -1e4, -90.0, -30.0, -1.0, 0.0, 2.0, 90.0, 1e4, 1e30, math.inf])
    kk = torch.tensor([k])
    # the slopes' limits at x = -inf and +inf: 0 and 1 as k*x -> -inf and +inf, e**-1 and
    # tanh(log(2)) = 0.6 at k = 0
    at_k0 = {"gompertz": math.exp(-1), "mish": 0.6}
    for name, formula, slope in (("gompertz", "x * exp(-exp(-k*x))", _gompertz_slope),
                                 ("mish", "x * tanh(softplus(k*x))", _mish_slope)):
        m = actgen.compile(formula, name=name, params={"k": 1.0})
        _, (g,) = _grad(lambda t: getattr(m, name)(t, kk), x)
        with mpmath.workdps(60):
            finite = [float(slope(mpmath.mpf(v), mpmath.mpf(k))) for v in x[1:-1].tolist()]
        lim = [at_k0[name]] * 2 if k == 0 else [0.0, 1.0] if k > 0 else [1.0, 0.0]
        _close_to_truth(g, [lim[0], *finite, lim[1]], ulps=8)


@pytest.mark.parametrize("formula, scale", [("softplus(x) - log(2)", 1), ("softplus(2*x)/2 - log(2)/2", 2)])
def test_shifted_softplus_does_not_cancel_near_zero(backend, formula, scale):
    """SchNet's shifted softplus, softplus(x) - log(2) (0 at 0, ~x/2 near it): as written the
    difference loses every digit for small x; near 0 it is a Padé approximant (softplus's
    series, whose singularities at +-i*pi/scale make it a long one)."""
    m = actgen.compile(formula, name="ssp")
    x = torch.tensor([-50.0, -3.0, -1.0, -0.1, -1e-3, -1e-7, -1e-20, 0.0, 1e-30, 1e-10, 1e-4, 0.05, 0.7, 1.4, 2.0, 20.0, 1e30])
    y, (g,) = _grad(m.ssp, x)
    with mpmath.workdps(100):
        c = mpmath.mpf(scale)
        want = [float((mpmath.log1p(mpmath.exp(c * v)) - mpmath.log(2)) / c) for v in map(mpmath.mpf, x.tolist())]
        want_g = [float(1 / (1 + mpmath.exp(-c * v))) for v in map(mpmath.mpf, x.tolist())]
    _close_to_truth(y, want)
    _close_to_truth(g, want_g)


def _per_element(fn, x, a, param_dtype=torch.float32):
    """f, df/dx and df/da of fn at each x with the param at a (in param_dtype): the param per
    channel over dim 1 of a (1, n) input, one value per element, so its gradient is each
    element's own."""
    xs = x.reshape(1, -1).clone().requires_grad_()
    av = torch.full((x.numel(),), a, dtype=param_dtype, requires_grad=True)
    y = fn(xs, av, channel_dim=1)
    gx, ga = torch.autograd.grad(y.sum(), (xs, av))
    return y.detach().reshape(-1), gx.reshape(-1), ga


def _limit_at_zero(fn, v):
    """fn at v, at 0 (v or the param) its limit: read off at 1e-40."""
    return fn(v if v != 0 else mpmath.mpf(10) ** -40)


@pytest.mark.parametrize("a", [1.0, 0.5, -2.0, 0.0])
def test_a_param_that_scales_a_removable_singularity_keeps_its_limit(backend, a):
    """sin(a*x)/x is a * sin(v)/v at v = a*x: 0/0 at x = 0 for every a, whose value there is a
    and whose slope's two terms (a*cos(a*x)/x - sin(a*x)/x**2) cancel near it - a Padé
    approximant in v, as sin(x)/x has; and its gradient in a is cos(a*x)."""
    m = actgen.compile("sin(a*x) / x", name="sinc_a", params={"a": {"init": 1.0, "per_channel": True}})
    x = torch.tensor([-60.0, -3.0, -1.0, -0.1, -1e-3, -1e-7, -1e-20, 0.0, 1e-30, 1e-10, 1e-4, 0.01, 0.3, 1.0, 2.5, 20.0])
    y, gx, ga = _per_element(m.sinc_a, x, a)
    with mpmath.workdps(300):
        c = mpmath.mpf(a)
        f = lambda v: mpmath.sin(c * v) / v
        vals = [mpmath.mpf(v) for v in x.tolist()]
        want = [float(_limit_at_zero(f, v)) for v in vals]
        want_x = [float(_limit_at_zero(lambda u: mpmath.diff(f, u), v)) for v in vals]
        want_a = [float(mpmath.cos(c * v)) for v in vals]
    _close_to_truth(y, want, ulps=8)
    _close_to_truth(gx, want_x, ulps=8)
    _close_to_truth(ga, want_a, ulps=8)


@pytest.mark.parametrize("a", [1.5, -0.25])
@pytest.mark.parametrize("formula, f", [("tanh(x/a) / x", lambda c, v: mpmath.tanh(v / c) / v),
                                        ("sin(x/a) / x", lambda c, v: mpmath.sin(v / c) / v)])
def test_a_param_that_divides_a_removable_singularity_keeps_its_limit(backend, a, formula, f):
    """tanh(x/a)/x is tanh(v)/v / a at v = x/a: the slope's two terms cancel near x = 0 as
    sin(a*x)/x's do (3e-4 off at x = 1e-6, 0 at 1e-12 in float64, before the approximant
    was taken in x/a as in a*x)."""
    m = actgen.compile(formula, name="ratio_a", params={"a": {"init": 1.0, "per_channel": True}})
    x = torch.tensor([-60.0, -3.0, -0.1, -1e-3, -1e-6, -1e-12, 0.0, 1e-30, 1e-9, 1e-4, 0.01, 0.3, 2.5, 20.0],
                     dtype=torch.float64)
    y, gx, ga = _per_element(m.ratio_a, x, a)
    with mpmath.workdps(300):
        c = mpmath.mpf(a)
        vals = [mpmath.mpf(v) for v in x.tolist()]
        vals = [v if v != 0 else mpmath.mpf(10) ** -300 for v in vals]     # (0: the limit, an odd slope's 0)
        want = [float(f(c, v)) for v in vals]
        want_x = [float(mpmath.diff(lambda t: f(c, t), v)) for v in vals]
        want_a = [float(mpmath.diff(lambda q: f(q, v), c)) for v in vals]
    _close_to_truth(y, want, ulps=8)
    _close_to_truth(gx, want_x, ulps=8)
    _close_to_truth(ga, want_a, ulps=8)


@pytest.mark.parametrize("a", [0.0, 1e-3, 0.25, -0.5])
def test_a_soft_exponential_is_x_at_a_zero(backend, a):
    """(exp(a*x) - 1)/a is x * expm1(v)/v at v = a*x: at a = 0 it is x (not 0/0), with slope 1
    and gradient in a x**2/2 - which as written is x*exp(a*x)/a - expm1(a*x)/a**2, two terms
    of ~x/a that cancel for small a*x (a Padé approximant there).  At a = 0 and x = +-inf the
    value is read off at run time (a*x is NaN there)."""
    m = actgen.compile("(exp(a*x) - 1) / a", name="softexp", params={"a": {"init": 0.0, "per_channel": True}})
    x = torch.tensor([-60.0, -20.0, -3.0, -1.0, -0.1, -1e-3, -1e-7, 0.0, 1e-20, 1e-4, 0.01, 0.3, 1.0, 2.5, 20.0, 60.0])
    y, gx, ga = _per_element(m.softexp, x, a)
    with mpmath.workdps(300):
        c = mpmath.mpf(torch.tensor(a).item())          # the param as float32 holds it
        f = lambda p, v: mpmath.expm1(p * v) / p
        vals = [mpmath.mpf(v) for v in x.tolist()]
        at = lambda fn: [float(fn(c if c != 0 else mpmath.mpf(10) ** -40, v)) for v in vals]
        want = at(f)
        want_x = at(lambda p, v: mpmath.exp(p * v))
        want_a = at(lambda p, v: mpmath.diff(lambda q: f(q, v), p))
    _close_to_truth(y, want, ulps=8)
    _close_to_truth(gx, want_x, ulps=8)
    _close_to_truth(ga, want_a, ulps=8)
    if a == 0.0:
        y, _, _ = _per_element(m.softexp, torch.tensor([-math.inf, math.inf]), a)
        assert y.tolist() == [-math.inf, math.inf], y


@pytest.mark.parametrize("formula, f", [
    ("(x**a - 1)/a", lambda p, v: mpmath.expm1(p * mpmath.log(v)) / p),
    ("expm1(a*log(x))/a", lambda p, v: mpmath.expm1(p * mpmath.log(v)) / p),
    ("((1 + x)**a - 1)/a", lambda p, v: mpmath.expm1(p * mpmath.log1p(v)) / p),
])
@pytest.mark.parametrize("a", [0.0, 1e-20, 1e-8, -1e-8, 1e-3, -0.25, 0.5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_box_cox_transform_is_log_at_a_zero(backend, formula, f, a, dtype):
    """(x**a - 1)/a is log(x) * expm1(v)/v at v = a*log(x): at a = 0 it is log(x) (0/0 as
    written), and for |a*log(x)| below half an ULP of 1 x**a rounds to 1 (0 at a = 1e-8, x = 2
    in float32; 0.127 for 0.240 in df/da in float64), where its gradient in a,
    x**a*log(x)/a - (x**a - 1)/a**2, has two terms of ~log(x)/a that cancel (a Padé
    approximant in v there).  f, df/dx and df/da against mpmath at 300 digits, a = 0 as the
    limit; the param as the dtype holds it."""
    if backend == "triton" and dtype == torch.float64:
        pytest.skip("kernels: float32")
    m = actgen.compile(formula, name="box_cox", params={"a": {"init": 0.5, "per_channel": True}})
    x = torch.tensor([1e-30, 1e-3, 0.3, 1.0, 2.0, 7.5, 1e4, 1e30], dtype=dtype)
    y, gx, ga = _per_element(m.box_cox, x, a, dtype)
    with mpmath.workdps(300):
        c = mpmath.mpf(float(torch.tensor(a, dtype=dtype)))
        c = c if c != 0 else mpmath.mpf(10) ** -100
        vals = [mpmath.mpf(v) for v in x.double().tolist()]
        want = [float(f(c, v)) for v in vals]
        want_x = [float(mpmath.diff(lambda t: f(c, t), v)) for v in vals]
        want_a = [float(mpmath.diff(lambda q: f(q, v), c)) for v in vals]
    # (df/dx = x**(a - 1) rounds a - 1 first: within |log(x)| ULP of the truth, 69 at 1e30)
    _close_to_truth(y, want, ulps=8)
    _close_to_truth(ga, want_a, ulps=8)
    torch.testing.assert_close(gx.double(), torch.tensor(want_x, dtype=torch.float64),
                               rtol=80 * torch.finfo(dtype).eps, atol=0)


@pytest.mark.parametrize("a", [0.1, 2.0])
def test_a_leaky_relu_written_as_a_max_keeps_its_slope_at_inf(backend, a):
    """max(x, a*x): at x = +-inf both sides are inf and x > a*x is false either way; as
    (1 - a)*x > 0 the comparison has the limit's answer (slope 1 at +inf for a < 1), and the
    gradient in a is 0 or x by the same branch."""
    m = actgen.compile("Max(x, a*x)", name="leaky", params={"a": {"init": 0.1, "per_channel": True}})
    x = torch.tensor([-math.inf, -1e30, -2.0, 0.5, 1e30, math.inf])
    y, gx, ga = _per_element(m.leaky, x, a)
    take_x = [v > a * v if math.isfinite(v) else (1 - a) * v > 0 for v in x.tolist()]
    a32 = torch.tensor(a)       # (the param in float32)
    assert torch.equal(y, torch.where(torch.tensor(take_x), x, a32 * x))
    assert gx.tolist() == [1.0 if t else a32.item() for t in take_x]
    assert ga.tolist() == [0.0 if t else v for v, t in zip(x.tolist(), take_x)]


def test_a_learnable_softplus_sharpness_keeps_its_gradient(backend):
    """softplus(b*x)/b's gradient in b, x*sigmoid(b*x)/b - softplus(b*x)/b**2: for b*x >> 0
    both terms are ~x/b and their difference ~exp(-b*x) rounded away (5e5 ULP at b*x = 17);
    as softplus(-u) + u*sigmoid(-u) (u = b*x) the tails add up."""
    m = actgen.compile("softplus(b*x) / b", name="softplus_b", params={"b": {"init": 1.0, "per_channel": True}})
    x = torch.tensor([-100.0, -20.0, -3.0, -0.5, 0.0, 0.5, 3.0, 8.75, 16.75, 40.0, 100.0])
    for b in (1.0, 2.0):
        _, _, gb = _per_element(m.softplus_b, x, b)
        with mpmath.workdps(60):
            c = mpmath.mpf(b)
            want = [float(v * mpmath.mpf(1) / (1 + mpmath.exp(-c * v)) / c - mpmath.log1p(mpmath.exp(c * v)) / c**2)
                    for v in map(mpmath.mpf, x.tolist())]
        _close_to_truth(gb, want)


def test_a_power_of_x_times_a_vanishing_factor_is_not_inf_times_zero(backend):
    """x*tanh(softplus(b*x))'s gradient in b is x**2 times a function of b*x that vanishes where
    x**2 overflows (|x| >= 1.8e19 in float32): printed x*g*x it is 0 there, not inf*0 = NaN."""
    m = actgen.compile("x * tanh(softplus(b*x))", name="mish_b", params={"b": {"init": 1.0, "per_channel": True}})
    x = torch.tensor([-1e30, -1e20, -30.0, -1.0, 0.5, 2.0])
    _, _, gb = _per_element(m.mish_b, x, 1.0)
    with mpmath.workdps(60):
        def slope_b(v):
            sp = mpmath.log1p(mpmath.exp(v))
            return v * v / (1 + mpmath.exp(-v)) / mpmath.cosh(sp) ** 2
        want = [float(slope_b(v)) for v in map(mpmath.mpf, x.tolist())]
    _close_to_truth(gb, want)


@pytest.mark.parametrize("a", [1.0, -0.5, 0.0])
def test_x_times_a_function_of_a_times_x_clamps_inside_the_function(backend, a):
    """sigmoid(exp(a*x))'s gradient in a is x * g(a*x), g(v) = exp(v)*sigmoid(exp(v))*sigmoid(-exp(v)):
    where exp(a*x) overflows (a*x > 88 in float32) g was inf*0; g takes its clamp in v, x
    stays a factor outside it (at a = 0 the gradient is x*g(0), infinite with x)."""
    m = actgen.compile("sigmoid(exp(a*x))", name="sig_exp", params={"a": {"init": 1.0, "per_channel": True}})
    x = torch.tensor([-math.inf, -1e30, -300.0, -100.0, -63.0, -1.0, 0.0, 0.5, 40.0, 63.0, 89.0, 100.0, 300.0, 1e30,
                      math.inf])
    y, gx, ga = _per_element(m.sig_exp, x, a)

    def slope_a(v):
        if not mpmath.isfinite(v):
            return v * _SIGMOID(1) * _SIGMOID(-1) if a == 0 else mpmath.mpf(0)
        if abs(a * v) > 1000:       # (|x| * exp(-1000) at most, or |x| * exp(-exp(1000)): 0 in float32)
            return mpmath.mpf(0)
        w = mpmath.exp(a * v)
        return v * w * _SIGMOID(w) * _SIGMOID(-w)
    with mpmath.workdps(60):
        want = [float(slope_a(mpmath.mpf(v))) for v in x.tolist()]
    _close_to_truth(ga, want)


def test_a_power_of_x_times_two_factors_is_not_inf_times_zero(backend):
    """x*(1 + tanh(a*x))/2 is x*sigmoid(2*a*x); its gradient in a is 2*x**2 times
    sigmoid(2*a*x)*sigmoid(-2*a*x), one factor near 1 and one vanishing on either side: x is
    split around both (x*s*s*x), where around one alone x*s*x overflows to inf before the
    other factor's 0 (NaN at x = -1e20)."""
    m = actgen.compile("x*(1 + tanh(a*x))/2", name="tanh_gate", params={"a": {"init": 1.0, "per_channel": True}})
    x = torch.tensor([-1e30, -1e20, -30.0, -1.25, 0.5, 2.0, 1e20, 1e30])
    for a in (1.0, 0.5):
        _, _, ga = _per_element(m.tanh_gate, x, a)
        with mpmath.workdps(60):
            c = mpmath.mpf(a)
            want = [float(v * v / 2 / mpmath.cosh(c * v) ** 2) for v in map(mpmath.mpf, x.tolist())]
        _close_to_truth(ga, want)


@pytest.mark.parametrize("formula, k", [("exp(-a*x**2)", 0), ("x*exp(-a*x**2)", 1), ("x**3*exp(-a*x**2)", 3)])
def test_a_learnable_gaussian_width_is_not_inf_times_zero_far_out(backend, formula, k):
    """x**k * exp(-a*x**2): its gradients hold x**2 (shared with the exponent) times
    exp(-a*x**2), which vanishes where x**2 overflows (|x| >= 1.8e19 in float32) - inf*0 = NaN
    as a product of the two; as x*exp(-a*x**2)*x, one x at a time, 0 (and x**5 from
    |x| = 5e7).  The slope of x*exp(-a*x**2), (1 - 2*a*x**2)*exp(-a*x**2), takes each term to
    the exponential."""
    m = actgen.compile(formula, name=f"gauss{k}", params={"a": {"init": 1.0, "per_channel": True}})
    x = torch.tensor([-1e30, -1e20, -3e19, -1e8, -10.0, -2.5, -0.3, 0.0, 0.4, 2.0, 9.0, 1e19, 1e20, 1e30])
    for a in (1.0, 0.5):
        y, gx, ga = _per_element(getattr(m, f"gauss{k}"), x, a)
        with mpmath.workdps(60):
            c = mpmath.mpf(a)
            vals = list(map(mpmath.mpf, x.tolist()))
            e = [mpmath.exp(-c * v * v) for v in vals]
            _close_to_truth(y, [float(v**k * ev) for v, ev in zip(vals, e)])
            _close_to_truth(gx, [float((k * v ** (k - 1) if k else 0) * ev - 2 * c * v ** (k + 1) * ev) for v, ev in zip(vals, e)])
            _close_to_truth(ga, [float(-v ** (k + 2) * ev) for v, ev in zip(vals, e)])


@pytest.mark.parametrize("alpha", [1.0, 0.5])
def test_a_learnable_celu_alpha_keeps_its_gradient_near_zero(backend, alpha):
    """alpha*expm1(x/alpha) for x < 0 (CELU with a learnable alpha): its gradient in alpha,
    expm1(v) - v*exp(v) at v = x/alpha, is ~ -v**2/2 near 0, where the two terms cancel
    (1e5 ULP at x = -1e-7) - a Padé approximant in v."""
    m = actgen.compile("where(x > 0, x, alpha*expm1(x/alpha))", name="celu_a",
                       params={"alpha": {"init": 1.0, "per_channel": True}})
    x = torch.tensor([-1e30, -100.0, -10.0, -2.0, -0.5, -1e-3, -1e-7, -1e-20, 0.0, 0.5, 1e30])
    y, gx, ga = _per_element(m.celu_a, x, alpha)
    with mpmath.workdps(100):
        c = mpmath.mpf(alpha)
        vals = list(map(mpmath.mpf, x.tolist()))
        want = [float(v if v > 0 else c * mpmath.expm1(v / c)) for v in vals]
        want_x = [float(1 if v > 0 else mpmath.exp(v / c)) for v in vals]
        want_a = [float(0 if v > 0 else mpmath.expm1(v / c) - v / c * mpmath.exp(v / c)) for v in vals]
    _close_to_truth(y, want)
    _close_to_truth(gx, want_x)
    _close_to_truth(ga, want_a)


def test_a_softsign_with_a_learnable_scale_keeps_its_slope_far_out(backend):
    """x/(1 + |x/a|): its slope 1/(1 + |x/a|) - x*sign(x/a)/(a*(1 + |x/a|)**2) is
    1/(1 + |x/a|)**2 once x*sign(x/a)/a is |x/a| - as written the two terms cancel for large
    |x| (2e3 ULP at x = -1.9e13); and sign(x/a)'s derivative in a (the oracle's and the double
    backward's) is 0."""
    m = actgen.compile("x / (1 + abs(x/a))", name="softsign_a", params={"a": {"init": 1.0, "per_channel": True}})
    x = torch.tensor([-1e30, -1.8738174754816e13, -1e4, -3.0, -0.5, 0.0, 0.25, 7.0, 1e6, 1e20])
    for a in (1.0, 0.5):
        y, gx, ga = _per_element(m.softsign_a, x, a)
        with mpmath.workdps(60):
            c = mpmath.mpf(a)
            vals = list(map(mpmath.mpf, x.tolist()))
            _close_to_truth(y, [float(v / (1 + abs(v / c))) for v in vals])
            _close_to_truth(gx, [float(1 / (1 + abs(v / c)) ** 2) for v in vals])
            _close_to_truth(ga, [float(v * abs(v) / c**2 / (1 + abs(v / c)) ** 2) for v in vals])


@pytest.mark.parametrize("a0, a1, b1", [(0.0, 1.0, 0.5), (0.3, -1.0, -2.0)])
def test_a_learnable_rational_with_an_abs_keeps_its_slope_far_out(backend, a0, a1, b1):
    """(a0 + a1*x)/(1 + |b1*x|): by the quotient rule its slope is a1/(1 + |b1*x|) minus
    b1*sign(b1*x)*(a0 + a1*x)/(1 + |b1*x|)**2, two terms ~a1/|b1*x| that cancel far out
    (1.9e3 ULP at x = -1.9e13); over the common denominator a1*|b1*x| cancels symbolically,
    (a1 - a0*b1*sign(b1*x))/(1 + |b1*x|)**2."""
    m = actgen.compile("(a0 + a1*x)/(1 + abs(b1*x))", name="rat_abs",
                       params={n: {"init": v} for n, v in (("a0", a0), ("a1", a1), ("b1", b1))})
    x = torch.tensor([-1e30, -1.8738174754816e13, -1e4, -3.0, -0.5, 0.25, 7.0, 1e6, 4.86e10, 1e20])
    y, (gx,) = _grad(lambda v: m.rat_abs(v, torch.tensor([a0]), torch.tensor([a1]), torch.tensor([b1])), x)
    with mpmath.workdps(60):
        c0, c1, d1 = (mpmath.mpf(torch.tensor(v).item()) for v in (a0, a1, b1))
        vals = list(map(mpmath.mpf, x.tolist()))
        _close_to_truth(y, [float((c0 + c1 * v) / (1 + abs(d1 * v))) for v in vals])
        _close_to_truth(gx, [float((c1 - c0 * d1 * mpmath.sign(d1 * v)) / (1 + abs(d1 * v)) ** 2) for v in vals])


def test_a_condition_on_a_power_of_x_keeps_its_sign_where_the_power_underflows(backend):
    """where(2*x*x > 0, ...) takes its first branch for every x but 0; 2*x*x underflows to 0
    for |x| < 1e-19 in float32, so as written tiny inputs took the other branch.  As |x| > 0
    (and x**3 < 0 as x < 0) the condition is the sign of x."""
    m = actgen.compile("where(2*x*x > 0, x*x/4, x/2) + where(x**3 < 0, 3*x, 5*x)", name="powcond")
    x = torch.tensor([-1e15, -1.0, -1e-20, -1e-38, -1e-45, 0.0, 1e-45, 1e-38, 1e-25, 1e-20, 2.0, 1e18])
    y, (g,) = _grad(m.powcond, x)
    vals = [mpmath.mpf(v) for v in x.tolist()]
    _close_to_truth(y, [float((v * v / 4 if v != 0 else v / 2) + (3 * v if v < 0 else 5 * v)) for v in vals])
    _close_to_truth(g, [float((v / 2 if v != 0 else mpmath.mpf(0.5)) + (3 if v < 0 else 5)) for v in vals])


def test_a_gated_softsign_keeps_its_slope_far_out(backend):
    """x*erf(x)/(1 + |x/2|): the quotient rule's erf(x)/(1 + |x/2|) and
    x*erf(x)*sign(x)/2/(1 + |x/2|)**2 are each ~2/|x| far out where the slope is ~4/x**2
    (3.5e3 ULP at x = -1.9e13); over the common denominator they cancel symbolically, with
    the erf's own derivative a third term."""
    m = actgen.compile("erf(x) * x / (1 + abs(x/2))", name="erfss")
    x = torch.tensor([-1e30, -1.8738174754816e13, -1e4, -3.0, -0.5, 0.0, 0.25, 2.0, 7.0, 1e6, 1e15])
    y, (g,) = _grad(m.erfss, x)
    with mpmath.workdps(60):
        vals = [mpmath.mpf(v) for v in x.tolist()]
        d = lambda v: 1 + abs(v) / 2
        _close_to_truth(y, [float(v * mpmath.erf(v) / d(v)) for v in vals])
        slope = lambda v: ((mpmath.erf(v) + 2 * v * mpmath.exp(-v * v) / mpmath.sqrt(mpmath.pi)) * d(v)
                           - v * mpmath.erf(v) * mpmath.sign(v) / 2) / d(v) ** 2
        _close_to_truth(g, [float(slope(v)) for v in vals])


def test_a_learnable_swish_gradient_at_beta_0_is_not_x_times_x_first(backend):
    """x*sigmoid(b*x)'s gradient in b is x**2*sigmoid(b*x)*sigmoid(-b*x): at b = 0 that is
    x**2/4, finite up to |x| = 3.7e19 in float32, where x*x alone overflows from 1.8e19 -
    the product takes the sigmoids (and their shared 1/(1 + e)**2) before the second x."""
    m = actgen.compile("x * sigmoid(b*x)", name="swish_b0", params={"b": {"init": 0.0, "per_channel": True}})
    x = torch.tensor([-3.5e19, -2.848e19, -1e10, -2.0, 0.0, 0.5, 1.9e19, 3e19])
    for b in (0.0, 1e-30):
        _, _, gb = _per_element(m.swish_b0, x, b)
        with mpmath.workdps(60):
            c = mpmath.mpf(torch.tensor(b).item())
            sig = lambda u: 1 / (1 + mpmath.exp(-u))
            _close_to_truth(gb, [float(v * v * sig(c * v) * sig(-c * v)) for v in map(mpmath.mpf, x.tolist())])


def _matches_mpmath(formula, name, f, df, x):
    """The compiled formula's f and f' at x within 4 ULP of f and df (mpmath functions)."""
    m = actgen.compile(formula, name=name)
    y, (g,) = _grad(getattr(m, name), x)
    _close_to_truth(y, [float(f(mpmath.mpf(v))) for v in x.tolist()])
    _close_to_truth(g, [float(df(mpmath.mpf(v))) for v in x.tolist()])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_tanh_and_sinh_written_with_exponentials(backend, dtype):
    """(exp(x) - exp(-x))/2 is sinh(x) and its ratio to the sum tanh(x): as written the
    difference cancels near 0 (0 at x = 1e-30; 3.7e7 ULP off at 1e-8 in float64) and both
    overflow far out; against mpmath, f and f' (x*tanh(2x) too, and the sum alone in a
    ratio, exp(x)/(exp(x) + exp(-x)), which stays sigmoid(2x))."""
    big = 80.0 if dtype == torch.float32 else 700.0       # (sinh and cosh past it overflow)
    x = torch.tensor([-big, -20.0, -3.0, -1.0, -1e-4, -1e-8, -1e-30, 0.0, 1e-30, 1e-8, 1e-4, 0.5, 3.0, 20.0, big],
                     dtype=dtype)
    cases = (("(exp(x) - exp(-x))/(exp(x) + exp(-x))", mpmath.tanh, lambda v: mpmath.sech(v) ** 2),
             ("(exp(x) - exp(-x))/2", mpmath.sinh, mpmath.cosh),
             ("x*(exp(2*x) - exp(-2*x))/(exp(2*x) + exp(-2*x))", lambda v: v * mpmath.tanh(2 * v),
              lambda v: mpmath.tanh(2 * v) + 2 * v * mpmath.sech(2 * v) ** 2),
             ("exp(x)/(exp(x) + exp(-x))", lambda v: 1 / (1 + mpmath.exp(-2 * v)),
              lambda v: 2 / (mpmath.exp(v) + mpmath.exp(-v)) ** 2))
    for k, (formula, f, df) in enumerate(cases):
        _matches_mpmath(formula, f"exps{k}", f, df, x)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cancellations_near_a_singularity_closer_than_their_extent(backend, dtype):
    """x - atan(x) cancels out to |x| = 3, past atan's singularities at +-i where no
    approximant reaches: one to 1/2 takes the values near 0 (they were 0 at 1e-8 and 650 ULP
    off at 1e-6 in float32); atan(x)/x's slope alike (NaN at 0); log1p(x)/x's slope, singular
    at -1, by one to 1/4 (it was 0 at 1e-30 in float32, and in float64 -1.4e14 there and
    1.7e-8 off, relatively, at 1e-8, where the limit at 0 alone took it).  Against mpmath."""
    x = torch.tensor([-2.0, -0.7, -0.3, -1e-3, -1e-6, -1e-8, 0.0, 1e-8, 1e-6, 1e-3, 0.3, 0.7, 2.0], dtype=dtype)
    cases = (("x - atan(x)", lambda v: v - mpmath.atan(v), lambda v: v * v / (1 + v * v), x),
             ("atan(x)/x", lambda v: mpmath.atan(v) / v if v else mpmath.mpf(1),
              lambda v: (v / (1 + v * v) - mpmath.atan(v)) / v**2 if v else mpmath.mpf(0), x),
             ("log1p(x)/x", lambda v: mpmath.log1p(v) / v if v else mpmath.mpf(1),
              lambda v: (v / (1 + v) - mpmath.log1p(v)) / v**2 if v else mpmath.mpf(-0.5),
              torch.tensor([-0.9, -0.3, -0.2, -1e-3, -1e-6, -1e-12, -1e-30, 0.0, 1e-30, 1e-12, 1e-6, 1e-3, 0.2, 0.26, 0.7, 2.0],
                           dtype=dtype)))
    for k, (formula, f, df, at) in enumerate(cases):
        _matches_mpmath(formula, f"near{k}", f, df, at)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_softplus_minus_its_argument_and_powers_of_one_plus_exp(backend, dtype):
    """x - log(1 + exp(x)) (a log-sigmoid written out) and softplus(x) - x are -softplus(-x)
    and softplus(-x): as written the difference of ~x and ~x rounded away (1.3% off at x = 30,
    0 from 35); sqrt(1 + exp(x)) overflowed with exp(x) (inf from x = 89 in float32).
    Against mpmath, f and f'."""
    big = 80.0 if dtype == torch.float32 else 700.0
    x = torch.tensor([-1e4, -big, -30.0, -3.0, -1e-8, 0.0, 1e-8, 0.5, 4.0, 20.0, 30.0, 40.0, big, 1e4], dtype=dtype)
    sig = lambda v: 1 / (1 + mpmath.exp(-v))
    cases = (("x - log(1 + exp(x))", lambda v: -mpmath.log1p(mpmath.exp(-v)), lambda v: sig(-v)),
             ("softplus(x) - x", lambda v: mpmath.log1p(mpmath.exp(-v)), lambda v: -sig(-v)),
             ("3 + softplus(x - 1) - x", lambda v: 2 + mpmath.log1p(mpmath.exp(1 - v)), lambda v: -sig(1 - v)))
    for k, (formula, f, df) in enumerate(cases):
        _matches_mpmath(formula, f"spminus{k}", f, df, x)
    x = torch.tensor([-30.0, -3.0, -1e-8, 0.0, 1e-8, 0.5, 4.0, 40.0, 80.0, 85.0], dtype=dtype)
    _matches_mpmath("sqrt(1 + exp(x))", "sqrt1pexp", lambda v: mpmath.sqrt(1 + mpmath.exp(v)),
                    lambda v: mpmath.exp(v) / (2 * mpmath.sqrt(1 + mpmath.exp(v))), x)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_param_power_of_one_plus_exp(backend, dtype):
    """The ARiA unit (1 + exp(-b*x))**(-a) is exp(-a*softplus(-b*x)): 1 + exp(-b*x) overflowed
    where its power does not underflow (f 0 from x = -30 in float32 with a = 1/2, b = 3, where
    it is 2.9e-20; its slopes NaN from x = -700).  Against mpmath, f and its gradients in x, a
    and b, within 4 ULP per unit of exp's argument's size (its rounding)."""
    m = actgen.compile("(1 + exp(-b*x))**(-a)", name="aria", params={"a": 0.5, "b": 3.0})
    a, b = mpmath.mpf(0.5), mpmath.mpf(3)
    far = -800.0 if dtype == torch.float64 else -40.0
    for v in (far, -30.0, -5.0, -1.0, -1e-8, 0.0, 1e-8, 0.7, 5.0, 30.0, 1e4):
        x = torch.tensor([v], dtype=dtype)
        y, grads = _grad(m.aria, x, torch.tensor([0.5], dtype=dtype), torch.tensor([3.0], dtype=dtype))
        X = mpmath.mpf(v)
        e = mpmath.exp(-b * X)
        f = (1 + e) ** -a
        slope = a * e * (1 + e) ** (-a - 1)
        truths = (f, b * slope, -mpmath.log1p(e) * f, X * slope)
        ulps = 4 * (1 + float(a * mpmath.log1p(e)))
        for got, truth in zip((y, *grads), truths):
            _close_to_truth(got, [float(truth)], ulps=ulps)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_softclip_with_a_learnable_sharpness(backend, dtype):
    """SoftClip log((1 + exp(p*x))/(1 + exp(p*(x - 1))))/p with p a param: the difference of
    softplus a param apart is taken through its tails where both are large, as for a number
    (its slope was 5e10 ULP off at x = 6, p = 5 in float64, and 0 from 8.5), and 1/p times it
    is 1 plus the tails over p, whose gradient in p was 1/p - 1/p, cancelled.  Against
    mpmath: f, df/dx and df/dp within 8 ULP of the larger of the truth and the terms it is a
    sum of, in the better of its two forms (the tails' for large p*x)."""
    m = actgen.compile("log((1 + exp(p*x))/(1 + exp(p*(x - 1))))/p", name="softclip_p", params={"p": 5.0})
    eps = torch.finfo(dtype).eps
    sig = lambda u: 1 / (1 + mpmath.exp(-u))
    sp = lambda u: mpmath.log1p(mpmath.exp(u))
    with mpmath.workdps(400):
        for pv in (5.0, 1.5):
            for v in (-10.0, -1.0, 0.0, 0.5, 1.0, 2.5, 4.0, 6.0, 8.5, 10.0, 30.0, 1e4):
                x, pt = torch.tensor([v], dtype=dtype), torch.tensor([pv], dtype=dtype)
                y, (gx, gp) = _grad(m.softclip_p, x, pt)
                X, P = mpmath.mpf(v), mpmath.mpf(pv)
                u, w = P * X, P * (X - 1)
                f = (sp(u) - sp(w)) / P
                dx = sig(u) - sig(w)
                dp = (X * sig(u) - (X - 1) * sig(w)) / P - f / P
                scale_x = min(sig(u) + sig(w), sig(-u) + sig(-w))
                scale_p = min(abs(X * sig(u)) + abs((X - 1) * sig(w)) + abs(f),
                              abs(X * sig(-u)) + abs((X - 1) * sig(-w)) + (sp(-u) + sp(-w)) / P) / P
                for got, truth, scale in ((y, f, abs(f)), (gx, dx, scale_x), (gp, dp, scale_p)):
                    err = abs(got.double().item() - float(truth))
                    assert err <= max(8 * eps * float(max(abs(truth), scale)), UNDERFLOW[dtype]), (v, pv, got.item(),
                                                                                                  float(truth))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_removable_singularity_inside_a_branch(backend, dtype):
    """sin(min(x, 1))/x is sin(x)/x for x < 1: as written it was 0/0 = NaN at 0, and its
    slope cos(x)/x - sin(x)/x**2 cancelled near 0 (1.4e14 at x = 1e-30, -1.5e-8 at 1e-8 in
    float64, where it is -x/3); (x - sin(max(x, -2)))/x**3 alike, a cancellation in a
    branch.  The branches are folded, each rewritten in turn.  Against mpmath, f and f'."""
    x = torch.tensor([-5.0, -2.0, -0.7, -1e-3, -1e-8, -1e-30, 0.0, 1e-30, 1e-8, 1e-4, 0.3, 0.99, 1.0, 1.5, 7.0],
                     dtype=dtype)
    sin1 = mpmath.sin(1)
    cases = (("sin(Min(x, 1))/x",
              lambda v: (mpmath.sin(v) / v if v else mpmath.mpf(1)) if v < 1 else sin1 / v,
              lambda v: ((v * mpmath.cos(v) - mpmath.sin(v)) / v**2 if v else mpmath.mpf(0)) if v < 1 else -sin1 / v**2),
             ("(x - sin(Max(x, -2)))/x**3",
              lambda v: ((v - mpmath.sin(v)) / v**3 if v else mpmath.mpf(1) / 6) if v > -2 else (v - mpmath.sin(-2)) / v**3,
              lambda v: (((1 - mpmath.cos(v)) * v - 3 * (v - mpmath.sin(v))) / v**4 if v else mpmath.mpf(0)) if v > -2
              else (v - 3 * (v - mpmath.sin(-2))) / v**4))
    with mpmath.workdps(300):           # ((x - sin(x))/x**3)' at 1e-30 cancels 120 digits
        for k, (formula, f, df) in enumerate(cases):
            _matches_mpmath(formula, f"branch{k}", f, df, x)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_one_minus_an_inverse_square_root(backend, dtype):
    """1 - 1/sqrt(1 + x**2) (x - asinh(x)'s slope) cancels near 0 as written (0 at x = 1e-8,
    where it is 5e-17): through the conjugate there, as written far out (x**2 overflows).
    Against mpmath, f and f', x - asinh(x) included."""
    x = torch.tensor([-3e38, -1e20, -2.0, -0.99, -1e-3, -1e-8, 0.0, 1e-8, 1e-3, 0.5, 1.0, 1e20, 3e38], dtype=dtype)
    cases = (("1 - 1/sqrt(1 + x**2)", lambda v: 1 - 1 / mpmath.sqrt(1 + v * v), lambda v: v / (1 + v * v) ** 1.5),
             ("x - asinh(x)", lambda v: v - mpmath.asinh(v), lambda v: 1 - 1 / mpmath.sqrt(1 + v * v)))
    for k, (formula, f, df) in enumerate(cases):
        _matches_mpmath(formula, f"isqrt{k}", f, df, x)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_ratio_of_exponentials_whose_numerator_vanishes_at_zero(backend, dtype):
    """x*(exp(x) - 1)/(exp(x) + 1) is x*tanh(x/2): as one ratio in e = exp(-|x|) its
    numerator's 1 - e cancelled near 0 (8.7e6 ULP off at x = 1e-8 in float64), where
    expm1(-|x|) does not; and glu's a*sigmoid(b) second derivative in b, a*s*(1 - s)*(1 - 2s),
    alike near b = 0.  Against mpmath."""
    x = torch.tensor([-60.0, -3.0, -0.3, -1e-4, -1e-8, -1e-30, 0.0, 1e-30, 1e-8, 1e-4, 0.3, 3.0, 8.0], dtype=dtype)
    _matches_mpmath("x*(exp(x) - 1)/(exp(x) + 1)", "xtanhhalf", lambda v: v * mpmath.tanh(v / 2),
                    lambda v: mpmath.tanh(v / 2) + v / (2 * mpmath.cosh(v / 2) ** 2), x)
    a = torch.full_like(x, 1.5)
    with use_backend("torch"):
        ar, br = a.clone().requires_grad_(), x.clone().requires_grad_()
        (gb,) = torch.autograd.grad(actgen.ops.glu(ar, br).sum(), br, create_graph=True)
        (gbb,) = torch.autograd.grad(gb.sum(), br)
    s = [1 / (1 + mpmath.exp(-mpmath.mpf(v))) for v in x.tolist()]
    _close_to_truth(gbb, [float(1.5 * si * (1 - si) * (1 - 2 * si)) for si in s])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_smooth_functions_written_with_kinks(backend, dtype):
    """Kinks that add up to a function smooth across them: softplus as max(x, 0) +
    log(1 + exp(-|x|)), symlog sign(x)*log1p(|x|), ELU as x*Heaviside(x) + (exp(x) -
    1)*Heaviside(-x).  At 0 the kinks' conventions summed to slopes 0, 0 and 0 (the truth: 1/2,
    1 and 1); the ELU's inactive part was inf*0 = NaN past x = 709.  Against mpmath, f and f'."""
    x = torch.tensor([-1000.0, -30.0, -1.0, -1e-8, -1e-30, 0.0, 1e-30, 1e-8, 1.0, 30.0, 1000.0, 1e6], dtype=dtype)
    sig = lambda v: 1 / (1 + mpmath.exp(-v))
    cases = (("Max(x, 0) + log(1 + exp(-abs(x)))", lambda v: mpmath.log1p(mpmath.exp(v)) if v < 0 else v + mpmath.log1p(mpmath.exp(-v)), sig),
             ("sign(x)*log1p(abs(x))", lambda v: mpmath.sign(v) * mpmath.log1p(abs(v)), lambda v: 1 / (1 + abs(v))),
             ("x*Heaviside(x) + (exp(x) - 1)*Heaviside(-x)", lambda v: v if v > 0 else mpmath.expm1(v),
              lambda v: 1 if v >= 0 else mpmath.exp(v)))
    for k, (formula, f, df) in enumerate(cases):
        _matches_mpmath(formula, f"kinks{k}", f, df, x)
    m = actgen.compile(cases[0][0], name="kinks0")
    xr = x.clone().requires_grad_()
    (g,) = torch.autograd.grad(m.kinks0(xr).sum(), xr, create_graph=True)
    (g2,) = torch.autograd.grad(g.sum(), xr)
    _close_to_truth(g2, [float(sig(mpmath.mpf(v)) * (1 - sig(mpmath.mpf(v)))) for v in x.tolist()])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_celu_as_torch_writes_it_with_a_param_or_a_constant(backend, dtype):
    """CELU as torch's docs write it, max(0, x) + min(0, alpha*(exp(x/alpha) - 1)): smooth at
    0, slope 1 there.  With alpha a param or a constant the kink's sides were undecided (a
    condition holding alpha) and the conventions summed to 2; with alpha = 1 written in,
    min's condition exp(x) > 1 rounded to false at x = 1e-30, slope 2 there.  Against mpmath:
    f, f' and (the param) df/dalpha."""
    x = torch.tensor([-30.0, -1.0, -1e-8, -1e-30, 0.0, 1e-30, 1e-8, 1.0, 30.0], dtype=dtype)
    celu = lambda v, a: v if v > 0 else a * mpmath.expm1(v / a)
    dcelu = lambda v, a: 1 if v >= 0 else mpmath.exp(v / a)
    dalpha = lambda v, a: 0 if v >= 0 else mpmath.expm1(v / a) - v / a * mpmath.exp(v / a)
    formula = "Max(0, x) + Min(0, alpha*(exp(x/alpha) - 1))"
    mpx = [mpmath.mpf(v) for v in x.tolist()]
    m = actgen.compile(formula, name="celu_param", params={"alpha": 1.0})
    alpha = torch.tensor([0.75], dtype=dtype)
    y, (g, ga) = _grad(m.celu_param, x, alpha)
    a = mpmath.mpf(alpha.item())
    _close_to_truth(y, [float(celu(v, a)) for v in mpx])
    _close_to_truth(g, [float(dcelu(v, a)) for v in mpx])
    _close_to_truth(ga, [float(sum(dalpha(v, a) for v in mpx))], ulps=16)      # (a sum of 9)
    c = actgen.compile(formula, name="celu_const", constants={"alpha": 1.0})
    y, (g,) = _grad(lambda t: c.celu_const(t, alpha=2.0), x)
    _close_to_truth(y, [float(celu(v, 2)) for v in mpx])
    _close_to_truth(g, [float(dcelu(v, 2)) for v in mpx])
    _matches_mpmath("Max(0, x) + Min(0, exp(x) - 1)", "celu_one", lambda v: celu(v, 1), lambda v: dcelu(v, 1), x)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_second_derivatives_of_a_power_with_a_param_exponent(backend, dtype):
    """|x|**p's d2f/dx dp is sign(x)*|x|**(p - 1)*(1 + p*log|x|): taking a common factor out
    of a sum left |x|**(1 - p)*|x|**(2*p - 2) (and |x|**(2 - 2*p)*|x|**(2*p - 2) in each
    term), which underflowed to 0 and overflowed to inf (0 at x = 1e-13, NaN at 1e-20 for p =
    3 in float32; NaN at x = 1e30 for p = 2); at x = 0 it is 0 (p > 1).  Against mpmath, with
    d2f/dx2 = p*(p - 1)*|x|**(p - 2)."""
    m = actgen.compile("abs(x)**p", name="abspow", params={"p": 1.5})
    cases = [(3.0, 1e-13), (3.0, 1e-18), (3.0, 0.0), (2.0, 1e30), (2.5, -2.0), (0.5, 1e-8), (1.5, -1e-3),
             (3.0, 1e-200 if dtype == torch.float64 else 1e-18)]
    for pv, xv in cases:
        x = torch.tensor([xv], dtype=dtype, requires_grad=True)
        p = torch.tensor([pv], dtype=dtype, requires_grad=True)
        (gx,) = torch.autograd.grad(m.abspow(x, p).sum(), x, create_graph=True)
        gxp, gxx = torch.autograd.grad(gx.sum(), (p, x))
        v, q = mpmath.mpf(x.item()), mpmath.mpf(p.item())
        xp = 0 if v == 0 else mpmath.sign(v) * abs(v) ** (q - 1) * (1 + q * mpmath.log(abs(v)))
        xx = 0 if v == 0 else q * (q - 1) * abs(v) ** (q - 2)
        _close_to_truth(gxp, [float(xp)])
        _close_to_truth(gxx, [float(xx)])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_second_derivatives_of_a_root_minus_its_value_at_zero(backend, dtype):
    """sqrt(x**2 + b**2) - b is computed as x**2/(sqrt(x**2 + b**2) + b) (no cancellation near
    0); its derivatives from that form were sums of terms that cancel far out, the second
    b**2/(x**2 + b**2)**1.5 as four terms (1e8 ULP off at x = 1e4 in float32, 3276 at 100);
    over sqrt(x**2 + b**2) they are one term each.  Against mpmath: that formula with b a param,
    and the catalogue's bent_identity and squareplus (its constant b = 3)."""
    x = torch.tensor([-1e6, -1e4, -100.0, -3.0, -1e-3, 0.0, 1e-3, 0.5, 3.0, 100.0, 1e4, 1e6], dtype=dtype)
    mpx = [mpmath.mpf(v) for v in x.tolist()]
    m = actgen.compile("sqrt(x**2 + b**2) - b", name="root_b", params={"b": 1.0})
    b = torch.tensor([0.5], dtype=dtype)
    cases = ((lambda t: m.root_b(t, b), lambda v: 0.25 / (v * v + 0.25) ** 1.5),
             (actgen.ops.bent_identity, lambda v: 0.5 / (v * v + 1) ** 1.5),
             (lambda t: actgen.ops.squareplus(t, b=3.0), lambda v: 1.5 / (v * v + 3) ** 1.5))
    for fn, second in cases:
        xr = x.clone().requires_grad_()
        (g,) = torch.autograd.grad(fn(xr).sum(), xr, create_graph=True)
        (g2,) = torch.autograd.grad(g.sum(), xr)
        _close_to_truth(g2, [float(second(v)) for v in mpx])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_cosine_or_an_exponential_minus_its_value_at_zero(backend, dtype):
    """c*cos(u) - c is -2*c*sin(u/2)**2, and c*exp(u) - c is c*expm1(u), also with c a param
    (sympy distributes a*(exp(u) - 1) into a*exp(u) - a, which the rewrite for a number c did
    not see): as written both were 0 for small u (a*cos(w*x) - a 9e-5 off, relative, at w*x =
    1e-6 in float64).  The second derivative of 1 - cos(x) is cos(x), not the difference of
    cos(x/2)**2 and sin(x/2)**2 (which cancels near pi/2).  Against mpmath, f and the gradients."""
    x = torch.tensor([-3.0, -1e-3, -1e-6, 1e-8, 1e-4, 0.5, 1.5707963, 3.0], dtype=dtype)
    mpx = [mpmath.mpf(v) for v in x.tolist()]
    m = actgen.compile("a*cos(w*x) - a", name="cos_a", params={"a": 1.0, "w": 1.0})
    a, w = torch.tensor([1e3], dtype=dtype), torch.tensor([0.5], dtype=dtype)
    y, (gx, ga, gw) = _grad(m.cos_a, x, a, w)
    A, W = mpmath.mpf(a.item()), mpmath.mpf(w.item())
    _close_to_truth(y, [float(A * (mpmath.cos(W * v) - 1)) for v in mpx])
    _close_to_truth(gx, [float(-A * W * mpmath.sin(W * v)) for v in mpx])
    _close_to_truth(ga, [float(sum(mpmath.cos(W * v) - 1 for v in mpx))], ulps=16)    # (sums of 8)
    _close_to_truth(gw, [float(sum(-A * v * mpmath.sin(W * v) for v in mpx))], ulps=16)
    e = actgen.compile("alpha*exp(x) - alpha", name="exp_a", params={"alpha": 1.0})
    y, (gx, _) = _grad(e.exp_a, x, torch.tensor([2.0], dtype=dtype))
    _close_to_truth(y, [float(2 * mpmath.expm1(v)) for v in mpx])
    _close_to_truth(gx, [float(2 * mpmath.exp(v)) for v in mpx])
    c = actgen.compile("1 - cos(x)", name="one_cos")
    xr = x.clone().requires_grad_()
    (g,) = torch.autograd.grad(c.one_cos(xr).sum(), xr, create_graph=True)
    (g2,) = torch.autograd.grad(g.sum(), xr)
    _close_to_truth(c.one_cos(x), [float(1 - mpmath.cos(v)) for v in mpx])
    _close_to_truth(g2, [float(mpmath.cos(v)) for v in mpx])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_sigmoid_to_a_param_power_does_not_underflow_first(backend, dtype):
    """x*sigmoid(x)**p took the sigmoid first, which underflows where its power does not:
    -0.0 at x = -200 for p = 0.01 (the truth: -27.07), at x = -110 for p = 0.5.  As
    exp(-p*softplus(-x)) it is within 4 ULP per unit of its condition number (|p*x| far
    out) of mpmath, f and its gradients in x and p."""
    xs = [-800.0 if dtype == torch.float64 else -200.0, -200.0, -110.0, -30.0, -1.0, -1e-8, 0.0, 1e-8, 1.0, 30.0, 200.0]
    m = actgen.compile("x*sigmoid(x)**p", name="sig_pow", params={"p": 1.0})
    for pv in (0.01, 0.5, 2.5):
        x, p = torch.tensor(xs, dtype=dtype), torch.tensor([pv], dtype=dtype)
        xr = x.clone().requires_grad_()
        pr = p.clone().requires_grad_()
        y = m.sig_pow(xr, pr)
        gx, gp = torch.autograd.grad(y.sum(), (xr, pr))
        P = mpmath.mpf(p.item())
        truth = []
        for v in x.tolist():
            X = mpmath.mpf(v)
            s = 1 / (1 + mpmath.exp(-X))
            truth.append((X * s ** P, s ** P * (1 + P * X * (1 - s)), X * s ** P * mpmath.log(s)))
        cond = 1 + abs(pv * x.double())
        for k, got in enumerate((y.detach(), gx)):
            want = torch.tensor([float(t[k]) for t in truth], dtype=torch.float64)
            err = (got.double() - want).abs() / want.abs().clamp_min(torch.finfo(dtype).tiny)
            assert (err <= 4 * torch.finfo(dtype).eps * cond).all(), (pv, k, got.tolist(), want.tolist())
        _close_to_truth(gp, [float(sum(t[2] for t in truth))], ulps=4 * float(cond.max()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_product_of_exponentials_that_overflows_is_not_taken_apart(backend, dtype):
    """x*exp(-exp(-k*x))'s gradient in k, x**2*exp(-k*x - exp(-k*x)): the kernels took it as
    exp(-k*x)*exp(-exp(-k*x)), inf*0 = NaN for k*x below -88 in float32 (and at -inf); it is
    the one exponential, 0 there.  Against mpmath, per element."""
    m = actgen.compile("x*exp(-exp(-k*x))", name="gompertz_k", params={"k": 1.0})
    xs = [-math.inf, -1e30, -100.0, -69.0, 0.5, 2.0]      # (near -3 the condition number is ~200)
    k = torch.tensor([1.3], dtype=dtype)
    for v in xs:
        x = torch.tensor([v], dtype=dtype)
        _, (_, gk) = _grad(m.gompertz_k, x, k)
        K, X = mpmath.mpf(k.item()), mpmath.mpf(v)
        far = not mpmath.isfinite(X) or -K * X > 1000        # (exp(-exp(1000)): 0 in any float)
        truth = 0.0 if far else float(X * X * mpmath.exp(-K * X - mpmath.exp(-K * X)))
        _close_to_truth(gk, [truth])


def test_kinks_keep_their_conventions_where_the_sides_differ(backend):
    """Where the two sides' slopes differ the derivative at the kink is the selected
    branches' (torch's relu's 0, abs's 0, leaky_relu's 0.1 for Max(x, 0.1*x), hardtanh's 0
    at 1; Heaviside(0) = 0), also where that is neither side's slope."""
    cases = (("Max(x, 0)", None, 0.0, 0.0), ("abs(x)", None, 0.0, 0.0), ("Max(x, 0.1*x)", None, 0.0, 0.1),
             ("x*Heaviside(x) + 0.1*x*Heaviside(-x)", None, 0.0, 0.0),
             ("x*Heaviside(x) + a*x*Heaviside(-x)", {"a": 0.1}, 0.0, 0.0), ("Min(Max(x, -1), 1)", None, 1.0, 0.0))
    for k, (formula, params, at, want) in enumerate(cases):
        m = actgen.compile(formula, name=f"conv{k}", params=params)
        args = (torch.full((1,), at, dtype=torch.float64),) + ((torch.tensor([0.1], dtype=torch.float64),) if params else ())
        _, (g, *_) = _grad(getattr(m, f"conv{k}"), *args)
        assert g.item() == want, (formula, g.item())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_second_derivatives_over_a_cube_of_a_sum(backend, dtype):
    """tanh's second derivative from its first, 4e/(1 + e)**2 with e = exp(-2|x|), is two terms
    over (1 + e)**3 that cancel near 0 (0 at x = 1e-8 in float32, 2281 ULP off at 1e-4, where
    it is -2e-8 and -2e-4); over the common denominator they are 8e*sign(x)*expm1(-2|x|).
    Against mpmath: tanh(x)'' and a*tanh(b)'s d2/db2."""
    x = torch.tensor([-3.0, -0.5, -1e-4, -1e-8, -1e-30, 0.0, 1e-30, 1e-8, 1e-4, 0.01, 0.5, 3.0], dtype=dtype)
    second = lambda v: -2 * mpmath.tanh(v) / mpmath.cosh(v) ** 2
    m = actgen.compile("tanh(x)", name="th2")
    g = actgen.compile("a*tanh(b)", name="gth", inputs=["a", "b"])
    for fn, args, scale in ((m.th2, (), 1.0), (g.gth, (torch.full_like(x, -1.5),), -1.5)):
        xr = x.clone().requires_grad_()
        (d,) = torch.autograd.grad(fn(*args, xr).sum(), xr, create_graph=True)
        (d2,) = torch.autograd.grad(d.sum(), xr)
        _close_to_truth(d2, [float(scale * second(mpmath.mpf(v))) for v in x.tolist()])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_gated_formula_whose_second_input_carries_the_function(backend, dtype):
    """a*tanh(softplus(b)) is a function of its second input: its CPU fast variant's cap on
    exp(b), measured with b at the gate values alone, was 8 for float64 too, where
    tanh(softplus(8)) is 2e-7 short of 1 (f 1.9e9 ULP off at b = 15).  Every input is now
    swept in turn.  Against mpmath, over a tensor of a few chunks (the fast variant's path)."""
    b = torch.linspace(-60, 60, 3 * 2**15 + 7, dtype=torch.float64).to(dtype)
    a = torch.full_like(b, -1.5)
    m = actgen.compile("a*tanh(softplus(b))", name="gmish", inputs=["a", "b"])
    y, (ga, gb) = _grad(m.gmish, a, b)
    k = torch.arange(0, len(b), 997)
    vals = [mpmath.mpf(v) for v in b[k].tolist()]
    sp = [mpmath.log1p(mpmath.exp(v)) for v in vals]
    t = [mpmath.tanh(u) for u in sp]
    s = [1 / (1 + mpmath.exp(-v)) for v in vals]
    _close_to_truth(y[k], [float(-1.5 * ti) for ti in t])
    _close_to_truth(ga[k], [float(ti) for ti in t])
    _close_to_truth(gb[k], [float(-1.5 * si / mpmath.cosh(u) ** 2) for u, si in zip(sp, s)])


def test_second_derivatives_at_huge_inputs(backend):
    """Double backward gets the clamps and the limits at +-inf that the backward has:
    x*tanh(exp(x))'s second derivative was NaN at x = 710 and 1000 (exp(x) overflows into
    inf * 0), where it is 0 (it underflows from about x = 5); mpmath past that."""
    m = actgen.compile("x*tanh(exp(x))", name="txe2")
    for dtype in (torch.float32, torch.float64):
        x = torch.tensor([-1000.0, -50.0, -1.0, 0.0, 1.0, 3.0, 90.0, 710.0, 1000.0, 1e30, math.inf, -math.inf], dtype=dtype)
        xr = x.clone().requires_grad_()
        (d,) = torch.autograd.grad(m.txe2(xr).sum(), xr, create_graph=True)
        (d2,) = torch.autograd.grad(d.sum(), xr)
        f = lambda v: v * mpmath.tanh(mpmath.exp(v))
        truth = [float(mpmath.diff(f, mpmath.mpf(v), 2)) if abs(v) <= 50 else 0.0 for v in x.tolist()]
        _close_to_truth(d2, truth, ulps=16)


@pytest.mark.parametrize("formula, f, df", [
    ("atan(x) + asinh(x)", lambda x: mpmath.atan(x) + mpmath.asinh(x),
     lambda x: 1 / (1 + x * x) + 1 / mpmath.sqrt(1 + x * x)),
    ("x/(1 + x**2) + asinh(x)", lambda x: x / (1 + x * x) + mpmath.asinh(x),
     lambda x: (1 - x * x) / (1 + x * x) ** 2 + 1 / mpmath.sqrt(1 + x * x)),
    ("1/(1+x**2) + sqrt(1 + x**2)", lambda x: 1 / (1 + x * x) + mpmath.sqrt(1 + x * x),
     lambda x: -2 * x / (1 + x * x) ** 2 + x / mpmath.sqrt(1 + x * x)),
])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_derivative_whose_terms_over_a_root_leave_a_constant_compiles(backend, formula, f, df, dtype):
    """Derivatives with terms in a root's powers whose numerator, mod the root squared, is a
    constant (asinh's 1/sqrt(1 + x**2) next to a rational) were refused as "cannot be compiled"."""
    m = actgen.compile(formula, name="over_a_root")
    x = torch.tensor([-1e4, -30.0, -2.5, -1.0, -1e-3, 0.0, 1e-3, 0.5, 1.0, 3.0, 100.0, 1e4], dtype=dtype)
    y, (g,) = _grad(m.over_a_root, x)
    _close_to_truth(y, [float(f(mpmath.mpf(float(v)))) for v in x.double()], ulps=8)
    _close_to_truth(g, [float(df(mpmath.mpf(float(v)))) for v in x.double()], ulps=8)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_power_of_a_number_to_a_param_computed_in_float64(backend, dtype):
    """x * 2**p + |x|**p computed in float64 (precision: float64): the number 2.0 meets the
    param in one type (a bare number was float32 next to float64, which libdevice.pow does
    not take); values and both gradients against the formula in float64 torch."""
    m = actgen.compile("x * 2**p + abs(x)**p", name="pow_p", params={"p": 1.5}, precision="float64")
    x = torch.tensor([-30.0, -2.5, -1.0, -0.25, 0.5, 1.0, 3.0, 100.0], dtype=dtype)
    p = torch.tensor([1.5], dtype=dtype)
    y, (gx, gp) = _grad(m.pow_p, x, p)
    xd, pd = x.double().requires_grad_(), p.double().requires_grad_()
    want = xd * 2 ** pd + xd.abs() ** pd
    want_gx, want_gp = torch.autograd.grad(want.sum(), [xd, pd])
    _close_to_truth(y, want.detach())
    _close_to_truth(gx, want_gx)
    torch.testing.assert_close(gp.double(), want_gp, rtol=1e-6 if dtype == torch.float32 else 1e-12, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_ratio_whose_numerator_vanishes_at_zero_for_some_constants_is_not_taken(backend, dtype):
    """c*tanh(x) + d*exp(x) as one ratio in exp(-|x|) has the numerator d*E**3 + c*E**2 +
    d*E - c, which cancels at x = 0 where d = 0 (2*tanh(1e-10) came out 8e-8 off in float64,
    and 0 for -1e-20): the terms are computed as written, within a few ULP of the truth."""
    m = actgen.compile("c*tanh(x) + exp(x)*d", name="tanh_exp", constants={"c": 2.0, "d": 0.001})
    x = torch.tensor([-1e-20, -1e-10, 1e-10, 1e-5, -0.3, 0.7, 5.0, -20.0], dtype=dtype)
    for d in (0.0, 0.001):
        y, (g,) = _grad(lambda v: m.tanh_exp(v, 2.0, d), x)
        xs = [mpmath.mpf(float(v)) for v in x.double()]
        _close_to_truth(y, [float(2 * mpmath.tanh(v) + d * mpmath.exp(v)) for v in xs], ulps=8)
        _close_to_truth(g, [float(2 / mpmath.cosh(v) ** 2 + d * mpmath.exp(v)) for v in xs], ulps=8)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_root_minus_its_value_at_zero_with_a_param_takes_its_conjugate(backend, dtype):
    """sqrt(x**2 + b) - sqrt(b) with a learnable b cancels near x = 0 as written (df/db was 0
    from x = 1e-5 in float32, f and df/db 0 at x = 1e-8 in float64): computed as
    x**2/(sqrt(x**2 + b) + sqrt(b)), f and both gradients within a few ULP of mpmath's."""
    m = actgen.compile("sqrt(x**2 + b) - sqrt(b)", name="root_b", params={"b": 1.0})
    x = torch.tensor([-1e4, -3.0, -1e-3, -1e-8, 0.0, 1e-5, 1e-3, 0.5, 2.0, 1e6], dtype=dtype)
    for b in (1.0, 0.25):
        y, (gx, gb) = _grad(m.root_b, x, torch.tensor([b], dtype=dtype))
        xs = [mpmath.mpf(float(v)) for v in x.double()]
        B = mpmath.mpf(b)
        _close_to_truth(y, [float(mpmath.sqrt(v * v + B) - mpmath.sqrt(B)) for v in xs], ulps=8)
        _close_to_truth(gx, [float(v / mpmath.sqrt(v * v + B)) for v in xs], ulps=8)
        want_gb = sum(1 / (2 * mpmath.sqrt(v * v + B)) - 1 / (2 * mpmath.sqrt(B)) for v in xs)
        _close_to_truth(gb, [float(want_gb)], ulps=8)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_log1p_of_a_power_to_a_param_does_not_overflow(backend, dtype):
    """log(1 + |x|**p) with a learnable p: |x|**p overflows long before the function does
    (f was inf at x = 1e200 in float64, df/dp NaN at x = 1e20 in float32); past |x|**p = 1 it
    is p*log|x| + log1p(|x|**-p).  f, df/dx and df/dp against mpmath, from 1e-5 to the
    dtype's largest numbers, for exponents of either sign; 0 and inf as the formula gives."""
    m = actgen.compile("log(1 + abs(x)**p)", name="log1p_pow", params={"p": 2.0})
    big = 3e38 if dtype == torch.float32 else 1e300
    xs = torch.tensor([-1e-5, 0.3, -1.0, 1.0, 2.5, -7.0, 1e10, -1e20, 1e30, big], dtype=dtype)
    for p in (2.0, 0.5, -1.0, 3.7):
        P = mpmath.mpf(float(torch.tensor(p, dtype=dtype)))       # the param as the op sees it
        for v in xs:
            y, (gx, gp) = _grad(m.log1p_pow, v.reshape(1), torch.tensor([p], dtype=dtype))
            X = mpmath.mpf(float(v))
            t = abs(X) ** P
            _close_to_truth(y, [float(mpmath.log1p(t))])
            _close_to_truth(gx, [float(P * mpmath.sign(X) * abs(X) ** (P - 1) / (1 + t))])
            _close_to_truth(gp, [float(mpmath.log(abs(X)) * t / (1 + t))])
    x = torch.tensor([0.0, math.inf, -math.inf], dtype=dtype)
    y, (gx, gp) = _grad(m.log1p_pow, x, torch.tensor([2.0], dtype=dtype))
    assert y.tolist() == [0.0, math.inf, math.inf]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_sum_of_powers_of_one_base_takes_the_power_out(backend, dtype):
    """x/(1 + |x|)**p's slope (1 + |x|)**-p - p*|x|*(1 + |x|)**(-p - 1): the terms cancel
    for p = 1 (softsign's slope was 1400 ULP off at x = 1e4 and 0 at 1e8 in float32) and the
    second one's power underflows first (at p = 1.5 the slope was +1e-30 at x = 1e20, where
    it is -5e-31); as ((1 - p)*|x| + 1)*(1 + |x|)**(-p - 1), within a few ULP of mpmath's
    while that power is a normal number, and of the slope's sign past it."""
    m = actgen.compile("x / (1 + abs(x))**p", name="softsign_p", params={"p": 1.5})
    xs = torch.tensor([-3.0, 0.5, 10.0, 1e4, -1e8, 1e12], dtype=dtype)
    for p in (1.0, 1.5, 0.5):
        P = mpmath.mpf(float(torch.tensor(p, dtype=dtype)))
        _, (gx, _) = _grad(m.softsign_p, xs, torch.tensor([p], dtype=dtype))
        _close_to_truth(gx, [float((1 + (1 - P) * abs(X)) * (1 + abs(X)) ** (-P - 1))
                             for X in map(mpmath.mpf, xs.double().tolist())], ulps=8)
    _, (gx, _) = _grad(m.softsign_p, torch.tensor([1e20, -1e30], dtype=dtype), torch.tensor([1.5], dtype=dtype))
    assert (gx <= 0).all() and (gx.abs() <= 5e-31).all(), gx


def test_formulas_near_float32s_top_stay_finite_where_the_truth_is(backend):
    """User formulas whose intermediates once overflowed where their values do not (float32,
    both backends, against mpmath): x**3/(1 + x**2) up to float32's largest (it was inf from
    |x| = 2**127), (x - sin(x))/x**3's slope past |x| = 5e9 (x**4 overflowed, and the slope's
    sign with it), a*tanh(b)'s gradient in b for |a| > 8.5e37 (4*e*a first was inf), and a
    ratio's gradient in a param at its kink, abs(b1*x) at b1 = 0: sign(0) = 0 times a
    numerator*|x| that overflows from x = 1e15 was NaN; it is 0, as torch's abs gives there."""
    cube = actgen.compile("x**3/(1 + x**2)", name="cube_ratio")
    xs_sin = actgen.compile("(x - sin(x))/x**3", name="x_minus_sin")
    gate = actgen.compile("a*tanh(b)", name="a_tanh_b", inputs=["a", "b"])
    x = torch.tensor([2.0**127, 3e38, -3.4e38, 1e30, -7.0])
    xv = [mpmath.mpf(v) for v in x.double().tolist()]
    s = torch.tensor([5e9, 6e9, -1e12, 3e18, 1e19])
    sv = [mpmath.mpf(v) for v in s.double().tolist()]
    a = torch.tensor([1e38, -3e38, 3.4e38, 9e37])
    b = torch.tensor([0.5, 1.0, -20.0, 1e-3])
    av, bv = [mpmath.mpf(v) for v in a.double().tolist()], [mpmath.mpf(v) for v in b.double().tolist()]
    y, (g,) = _grad(cube.cube_ratio, x)
    _close_to_truth(y, [float(v**3 / (1 + v**2)) for v in xv])
    _close_to_truth(g, [float(v**2 * (v**2 + 3) / (1 + v**2) ** 2) for v in xv])
    _, (g,) = _grad(xs_sin.x_minus_sin, s)
    _close_to_truth(g, [float((3 * mpmath.sin(v) - v * mpmath.cos(v) - 2 * v) / v**4) for v in sv])
    y, (ga, gb) = _grad(gate.a_tanh_b, a, b)
    _close_to_truth(y, [float(p * mpmath.tanh(q)) for p, q in zip(av, bv)])
    _close_to_truth(ga, [float(mpmath.tanh(q)) for q in bv])
    _close_to_truth(gb, [float(p / mpmath.cosh(q) ** 2) for p, q in zip(av, bv)])
    ratio = actgen.compile("(a0 + a1*x + a2*x**2)/(1 + abs(b1*x))", name="kink_ratio",
                           params={"a0": 0.1, "a1": 0.5, "a2": 0.25, "b1": 0.0})
    _, (_, *gp) = _grad(ratio.kink_ratio, torch.tensor([1e15, -3e15, 1e20, 2.0]),
                        *[torch.tensor([v]) for v in (0.1, 0.5, 0.25, 0.0)])
    assert gp[3].item() == 0.0, gp


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_expm1_over_one_plus_exp_is_tanh_of_half(backend, dtype):
    """x*(exp(x) - 1)/(exp(x) + 1) is x*tanh(x/2): written out its slope was terms of size x
    that cancel to about 1 (float64: 14 ULP off at x = 30, 31 on the kernels, 10 at 64);
    as tanh(x/2) plus x/2 times tanh's slope it is within a few ULP.  Against mpmath."""
    m = actgen.compile("x*(exp(x) - 1)/(exp(x) + 1)", name="x_tanh_half")
    x = torch.cat([torch.linspace(-80, 80, 641, dtype=torch.float64),
                   torch.tensor([-1e30, -1e-3, -1e-30, 1e-30, 1e-8, 19.4375, 1e5, 1e30], dtype=torch.float64)]).to(dtype)
    y, (g,) = _grad(m.x_tanh_half, x)
    vals = [mpmath.mpf(v) for v in x.double().tolist()]
    _close_to_truth(y, [float(v * mpmath.tanh(v / 2)) for v in vals])
    _close_to_truth(g, [float(mpmath.tanh(v / 2) + v / 2 / mpmath.cosh(v / 2) ** 2) for v in vals])


def _f_and_slope_match_mpmath(formula: str, truth, x: torch.Tensor):
    """The formula of one input x, compiled, against truth (an mpmath function) at 300 digits:
    f, and its slope as mpmath differentiates truth, within 4 ULP (_close_to_truth)."""
    m = actgen.compile(formula, name="against_mpmath")
    y, (g,) = _grad(m.against_mpmath, x)
    with mpmath.workdps(300):
        vals = [mpmath.mpf(v) for v in x.double().tolist()]
        want = [float(truth(v)) for v in vals]
        want_g = [float(mpmath.diff(truth, v)) for v in vals]
    _close_to_truth(y, want)
    _close_to_truth(g, want_g)


@pytest.mark.parametrize("formula, truth", [
    # log(cosh(x))'s branches hid the sum's cancellation from its approximant (3.5e-4 off,
    # relatively, at x = 1e-6 in float64, where the forward was computed)
    ("log(cosh(x)) - x**2/2", lambda v: mpmath.log(mpmath.cosh(v)) - v**2 / 2),
    ("log(cosh(2*x)) - 2*x**2", lambda v: mpmath.log(mpmath.cosh(2 * v)) - 2 * v**2),
    # tanh(2x)'s poles at +-i*pi/4 aliased into its Taylor coefficients on the circle |t| = 1/2:
    # no approximant (7.8e-5 off, relatively, at x = 1e-6 in float32 and float64)
    ("tanh(2*x) - 2*x", lambda v: mpmath.tanh(2 * v) - 2 * v),
])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sums_that_cancel_near_zero_take_their_approximant(backend, dtype, formula, truth):
    """Sums of one input whose terms cancel near 0 are a Padé approximant there; against
    mpmath at 300 digits, f and f' within 4 ULP (below UNDERFLOW, as _close_to_truth counts)."""
    x = torch.tensor([-1.4, -0.7, -0.1, -1e-3, -1e-6, -1e-12, -1e-30, 0.0, 1e-30, 1e-12, 1e-6, 1e-3, 0.1, 0.7,
                      1.4, 3.0, -30.0], dtype=dtype)
    _f_and_slope_match_mpmath(formula, truth, x)


@pytest.mark.parametrize("formula, truth", [
    ("log(2 - exp(-x**2))", lambda v: mpmath.log(2 - mpmath.exp(-v**2))),
    # (the argument, x**2 + expm1(-x**2), then cancels near 0 in one sum: its approximant)
    ("log(x**2 + exp(-x**2))", lambda v: mpmath.log(v**2 + mpmath.exp(-v**2))),
])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_log_of_a_sum_of_exps_that_is_one_at_zero_is_log1p(backend, dtype, formula, truth):
    """log(2 - exp(-x**2)) is about x**2 near 0, where 2 - exp(-x**2) rounds to 1: it was 0 at
    x = 1e-12 and 820 ULP off at 1e-6 in float32; as log1p(-expm1(-x**2)) it is within a few
    ULP (log(x**2 + exp(-x**2)), about x**4/2, alike).  Against mpmath at 300 digits, f and
    its slope."""
    x = torch.tensor([-3.0, -1.0, -1e-3, -1e-6, -1e-12, -1e-20, 0.0, 1e-20, 1e-12, 1e-6, 1e-3, 0.5, 2.0, 9.0],
                     dtype=dtype)
    _f_and_slope_match_mpmath(formula, truth, x)


@pytest.mark.parametrize("formula, truth", [     # (E at 0: its limit, 1)
    ("log(sinh(x)/x)", lambda v: mpmath.log(mpmath.sinh(v) / v) if v else v),
    ("log(x/sinh(x))", lambda v: mpmath.log(v / mpmath.sinh(v)) if v else v),
    ("log(sin(x)/x)", lambda v: mpmath.log(mpmath.sin(v) / v) if v else v),
    ("log(tanh(x)/x)", lambda v: mpmath.log(mpmath.tanh(v) / v) if v else v),
    ("log(atan(x)/x)", lambda v: mpmath.log(mpmath.atan(v) / v) if v else v),
    ("log(cos(x))", lambda v: mpmath.log(mpmath.cos(v))),
])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_log_of_what_is_one_at_zero_takes_an_approximant(backend, dtype, formula, truth):
    """log(E) with E 1 at x = 0 (or tending to it) is about E - 1 there, where E rounds to 1:
    log(sinh(x)/x), about x**2/6, was 0 at x = 1e-12 and 6500 ULP off at 1e-6 in float32,
    log(cos(x)) 820 ULP off.  A Padé approximant of log(E) near 0, and log(E) past it:
    against mpmath at 300 digits, f and its slope (points inside each one's domain)."""
    x = torch.tensor([-1.4, -0.7, -0.1, -1e-3, -1e-6, -1e-12, -1e-30, 0.0, 1e-30, 1e-12, 1e-6, 1e-3, 0.1, 0.7,
                      1.4, 3.0, -9.0], dtype=dtype)
    if formula in ("log(sin(x)/x)", "log(cos(x))"):
        x = x[x.abs() < 1.5]
    _f_and_slope_match_mpmath(formula, truth, x)


@pytest.mark.parametrize("formula, truth", [
    ("x - log(cosh(x))", lambda v: v - mpmath.log(mpmath.cosh(v))),
    ("log(cosh(x)) + x", lambda v: mpmath.log(mpmath.cosh(v)) + v),
    ("3*log(cosh(x)) - 3*x", lambda v: 3 * mpmath.log(mpmath.cosh(v)) - 3 * v),
])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_log_cosh_and_its_argument_keep_their_difference_far_out(backend, dtype, formula, truth):
    """x - log(cosh(x)) is log(2) - softplus(-2x) for |x| >= 1: the two terms are both about
    x for x >> 0, and their difference, about log(2), was rounded away (0 at x = 1e30 in
    float32 and float64).  Against mpmath at 300 digits, f and its slope, near 0 (the sum as
    written) and far out on both sides."""
    x = torch.tensor([-1e30, -1e5, -30.0, -10.0, -1.0, -0.5, -1e-3, -1e-30, 0.0, 1e-6, 0.5, 1.0, 3.0, 10.0,
                      100.0, 1e5, 1e30], dtype=dtype)
    _f_and_slope_match_mpmath(formula, truth, x)


@pytest.mark.parametrize("formula, f, slope", [
    ("x*exp(x) - sinh(x)", lambda v: v * mpmath.exp(v) - mpmath.sinh(v),
     lambda v: (1 + v) * mpmath.exp(v) - mpmath.cosh(v)),
    ("exp(x) - cosh(x)", lambda v: mpmath.exp(v) - mpmath.cosh(v), lambda v: mpmath.exp(v) - mpmath.sinh(v)),
])
def test_exp_and_hyperbolic_terms_of_a_far_branch_overflow_apart(backend, formula, f, slope):
    """Past its approximant near 0 a sum in exp(x), cosh(x) and sinh(x) is exp(x) and
    exp(-x), each times the sum of its coefficients, plus the rest: x*exp(x) - sinh(x) was
    inf - inf = NaN from x = 89 in float32, where it is inf.  f and its slope within 4 ULP of
    mpmath where the truth is finite in float32, and its infinity, of the truth's sign, where
    the truth is past float32's largest."""
    m = actgen.compile(formula, name="exp_hyperbolic_far")
    x = torch.tensor([-88.0, -30.0, -5.0, 5.0, 30.0, 80.0, 84.0])
    y, (g,) = _grad(m.exp_hyperbolic_far, x)
    with mpmath.workdps(60):
        vals = [mpmath.mpf(v) for v in x.double().tolist()]
        _close_to_truth(y, [float(f(v)) for v in vals])
        _close_to_truth(g, [float(slope(v)) for v in vals])
    far = torch.tensor([-200.0, -100.0, 100.0, 1e4])
    y, (g,) = _grad(m.exp_hyperbolic_far, far)
    with mpmath.workdps(60):
        for got, truth in ((y, f), (g, slope)):
            want = [truth(mpmath.mpf(v)) for v in far.tolist()]
            assert all(abs(t) > torch.finfo(torch.float32).max for t in want)
            assert got.tolist() == [math.copysign(math.inf, t) for t in want], (formula, got)


@pytest.mark.parametrize("formula, slope", [
    ("sinh(x)/x", lambda v: mpmath.cosh(v) / v - mpmath.sinh(v) / v**2),
    ("(cosh(x) - 1)/x**2", lambda v: mpmath.sinh(v) / v**2 - 2 * (mpmath.cosh(v) - 1) / v**3),
])
def test_hyperbolic_terms_of_a_far_branch_overflow_together(backend, formula, slope):
    """Past its approximant near 0 a slope in cosh(x) and sinh(x) is cosh(x) times the sum of
    their coefficients plus the rest: sinh(x)/x's, cosh(x)/x - sinh(x)/x**2, was inf - inf =
    NaN from |x| = 90 in float32, and (cosh(x) - 1)/x**2's -inf at 89 (2*(cosh(x) - 1)
    overflowed before the division).  Within 4 ULP of mpmath while cosh(x) is finite in
    float32, its infinity where the truth is past float32's largest, and between the two
    (|x| = 90, where cosh(x) overflows and the truth does not yet) not NaN, of the truth's
    sign."""
    m = actgen.compile(formula, name="hyperbolic_far")
    x = torch.tensor([-89.0, -30.0, 5.0, 30.0, 80.0, 88.0, 89.0, 89.4])
    _, (g,) = _grad(m.hyperbolic_far, x)
    with mpmath.workdps(60):
        _close_to_truth(g, [float(slope(mpmath.mpf(v))) for v in x.double().tolist()])
    far = torch.tensor([-200.0, -100.0, 100.0, 1e4])
    _, (g,) = _grad(m.hyperbolic_far, far)
    with mpmath.workdps(60):
        truth = [slope(mpmath.mpf(v)) for v in far.tolist()]
    assert all(abs(t) > torch.finfo(torch.float32).max for t in truth)
    assert g.tolist() == [math.copysign(math.inf, t) for t in truth], g
    between = torch.tensor([-90.0, 90.0])
    _, (g,) = _grad(m.hyperbolic_far, between)
    signs = [float(mpmath.sign(slope(mpmath.mpf(v)))) for v in between.tolist()]
    assert not g.isnan().any() and torch.sign(g).tolist() == signs, g


@pytest.mark.parametrize("formula, truth", [
    ("exp(-1/x**2)", lambda v: mpmath.exp(-1 / v**2)),
    ("exp(-1/x**2)/x", lambda v: mpmath.exp(-1 / v**2) / v),
    ("exp(-1/x**2)/x**2", lambda v: mpmath.exp(-1 / v**2) / v**2),
    ("x*exp(-1/x**2)", lambda v: v * mpmath.exp(-1 / v**2)),
    ("sigmoid(-1/x**2)/x**4", lambda v: 1 / (1 + mpmath.exp(1 / v**2)) / v**4),
    ("x**2*sigmoid(-1/x**2)", lambda v: v**2 / (1 + mpmath.exp(1 / v**2))),
    ("exp(-1/Abs(x))", lambda v: mpmath.exp(-1 / abs(v))),
])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_vanishing_call_over_a_power_of_x_divides_one_x_at_a_time(backend, dtype, formula, truth):
    """A call that vanishes at 0 faster than any power (exp(-1/x**2), a smooth bump's) over
    powers of x: exp(-1/x**2)'s slope, 2*exp(-1/x**2)/x**3, was 0/0 = NaN for |x| below 2e-13
    in float32, where x**3 underflows, and the others' values or slopes alike (inf*0 where 1/x
    overflows: a subnormal x), or NaN at x = 0 itself where the slope is a sum with poles
    there times the call ((2/x**4 - 1/x**2)*exp(-1/x**2)), or sympy leaves the call at 0
    unevaluated (sigmoid(-1/x**2)/x**4).  The call is divided by x one x at a time (also in
    a scaled ratio of polynomials, and in a product CSE names), a sum with such terms takes
    the call to each, and 0 takes the limit.  Against mpmath at 300 digits, f and its slope,
    where the exponent is small (1/x**2 rounds once or twice: its error times 1/x**2 is the
    value's, relatively) or the call vanishes."""
    tiny = torch.finfo(dtype).tiny
    x = torch.tensor([-2.0, -1.0, -1e-3, -1e-13, -1e-20, -1e-30, -tiny / 4, 0.0, tiny / 4, 1e-30, 1e-20,
                      1e-13, 1e-3, 1.0, 1.5, 3.0, 1e10], dtype=dtype)
    _f_and_slope_match_mpmath(formula, lambda v: truth(v) if v else v, x)
