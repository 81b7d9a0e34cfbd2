"""Huge finite inputs: where the truth is finite, f and f' stay finite and accurate, though the
formula as written passes through an overflow there (x**2 at |x| > 1.8e19 in float32, x**3 at
7e12, inf * 0 = NaN).  The compiler's answers: a clamp of the input where the value has
reached its limit (actgen.derive.saturate), hypot for sqrt(x**2 + c), Horner form for
polynomials, and products printed as paired ratios.  Checked on the fallback (float32,
float64) and the kernels (interpreter, float32) against mpmath at 50 digits."""
import math

import mpmath
import pytest
import sympy
import torch

import actgen
import actgen.ops
from actgen.derive import Saturate, derive
from actgen.spec import load_spec

HUGE = [1e5, 3e9, 1e13, 3e19, 1e25, 1e30, 1e37]
mp = mpmath.mpf


def _truth(fn, x: float) -> float:
    with mpmath.workdps(50):
        return float(fn(mp(x)))


PAU_FORMULA = ("(a0 + a1 * x + a2 * x**2 + a3 * x**3 + a4 * x**4 + a5 * x**5)"
               " / (1 + abs(b1 * x) + abs(b2 * x**2) + abs(b3 * x**3) + abs(b4 * x**4))")
PAU_INIT = {"a0": 0.0335583603, "a1": 0.505000375, "a2": 1.65343934, "a3": 2.01001052, "a4": 0.931901999,
            "a5": 0.152424124, "b1": 3.30847488e-06, "b2": 3.98021568, "b3": 5.12471206e-07, "b4": 0.301830109}


def _pau_parts(x):
    """P, Q, dP/dx, dQ/dx, dP/da_k, dQ/db_k of the Padé unit (params as float32 holds them)."""
    a = [mp(float(torch.tensor(PAU_INIT[f"a{k}"]))) for k in range(6)]
    b = [None] + [mp(float(torch.tensor(PAU_INIT[f"b{k}"]))) for k in range(1, 5)]
    p = sum(a[k] * x**k for k in range(6))
    q = 1 + sum(abs(b[k] * x**k) for k in range(1, 5))
    dp = sum(k * a[k] * x ** (k - 1) for k in range(1, 6))
    dq = sum(k * abs(b[k]) * abs(x) ** (k - 1) * mpmath.sign(x) for k in range(1, 5))
    da = [x**k for k in range(6)]
    db = [None] + [abs(x**k) * mpmath.sign(b[k]) for k in range(1, 5)]
    return p, q, dp, dq, da, db


def _pau(x):
    p, q, dp, dq, _, _ = _pau_parts(x)
    return p / q, (dp * q - p * dq) / q**2


MIX_LOGITS = {"a": 0.0, "b": 0.5, "c": -0.5}     # (softmax_mix's params, as _mix weighs its truth)

# (formula, params, constants, f, f', points): f and f' written independently, in mpmath
CASES = {
    "gaussian_slope": ("x * exp(-x**2)", {}, {},
                       lambda x: x * mpmath.exp(-x**2), lambda x: (1 - 2 * x**2) * mpmath.exp(-x**2), HUGE),
    "gelu_tanh_like": ("x * sigmoid(x + x**3)", {}, {},
                       lambda x: x / (1 + mpmath.exp(-(x + x**3))),
                       lambda x: (lambda s: s + x * (1 + 3 * x**2) * s * (1 - s))(1 / (1 + mpmath.exp(-(x + x**3)))),
                       HUGE),
    "root": ("sqrt(x**2 + 1)", {}, {},
             lambda x: mpmath.sqrt(x**2 + 1), lambda x: x / mpmath.sqrt(x**2 + 1), HUGE),
    "root_of_constant": ("sqrt(4 * x**2 + c)", {}, {"c": -9.0},
                         lambda x: mpmath.sqrt(4 * x**2 - 9), lambda x: 4 * x / mpmath.sqrt(4 * x**2 - 9), HUGE),
    "bent": ("(sqrt(x**2 + 1) - 1) / 2 + x", {}, {},
             lambda x: (mpmath.sqrt(x**2 + 1) - 1) / 2 + x, lambda x: x / (2 * mpmath.sqrt(x**2 + 1)) + 1, HUGE),
    "cubic_at_a_line": ("a3 * x**3 + a2 * x**2 + a1 * x", {"a3": 0.0, "a2": 0.0, "a1": 0.5}, {},
                        lambda x: x / 2, lambda x: mp(1) / 2, HUGE),
    "bump": ("x / (1 + x**2)", {}, {}, lambda x: x / (1 + x**2), lambda x: (1 - x**2) / (1 + x**2) ** 2, HUGE),
    "cubic_over_square": ("x**3 / (1 + x**2)", {}, {},
                          lambda x: x**3 / (1 + x**2), lambda x: x**2 * (x**2 + 3) / (1 + x**2) ** 2, HUGE),
    "square_over_square": ("x**2 / (1 + abs(x))**2", {}, {}, lambda x: x**2 / (1 + abs(x)) ** 2,
                           lambda x: 2 * x / (1 + abs(x)) ** 3, HUGE),      # the quotient rule cancels: x|x| - x**2 sign(x)
    "sum_of_ratios": ("x / (x**2 + 1) + x**3 / (x**4 + 1)", {}, {}, lambda x: x / (x**2 + 1) + x**3 / (x**4 + 1),
                      lambda x: (1 - x**2) / (x**2 + 1) ** 2 + (3 * x**2 - x**6) / (x**4 + 1) ** 2, HUGE),
    "x_times_quotient_rule": ("(a * x**2 + b) / (1 + abs(c * x**3))", {"a": 1.5, "b": -0.5, "c": 0.25}, {},
                              lambda x: (1.5 * x**2 - 0.5) / (1 + abs(x**3) / 4),
                              lambda x: (3 * x * (1 + abs(x**3) / 4) - (1.5 * x**2 - 0.5) * 0.75 * x * abs(x))
                              / (1 + abs(x**3) / 4) ** 2, HUGE),
    "pau": (PAU_FORMULA, PAU_INIT, {}, lambda x: _pau(x)[0], lambda x: _pau(x)[1], HUGE + [3.0, 18.75]),
    # an exponential over a power of a sum that holds it: inf/inf (NaN) from x = -710 as written
    "exp_in_a_denominator": ("1/(2 + exp(-x))", {}, {}, lambda x: 1 / (2 + mpmath.exp(-x)),
                             lambda x: mpmath.exp(-x) / (2 + mpmath.exp(-x)) ** 2, HUGE + [50.0, 100.0, 720.0, 800.0]),
    # log(1 + c*exp(x)) is softplus(x + log(c)): exp(x) overflowed from x = 89 (float32), 710
    "scaled_softplus": ("log(1 + 2*exp(x))", {}, {}, lambda x: mpmath.log1p(2 * mpmath.exp(x)),
                        lambda x: 2 * mpmath.exp(x) / (1 + 2 * mpmath.exp(x)), HUGE + [720.0]),
    "exp_over_a_sum_with_it": ("x * exp(x) / (2 + 3*exp(x))", {}, {}, lambda x: x * mpmath.exp(x) / (2 + 3 * mpmath.exp(x)),
                               lambda x: mpmath.exp(x) * (2 + 3 * mpmath.exp(x) + 2 * x) / (2 + 3 * mpmath.exp(x)) ** 2,
                               HUGE + [50.0, 100.0, 720.0, 800.0]),
    # data times a ratio (one of polynomials in e = exp(-|x|)): the ratio first, then x
    # (x*N/D overflowed from x = 1.1e38 in float32, where N ~ 3: smish)
    "smish": ("x * tanh(log(1 + sigmoid(x)))", {}, {}, lambda x: x * mpmath.tanh(mpmath.log1p(1 / (1 + mpmath.exp(-x)))),
              lambda x: mpmath.diff(lambda t: t * mpmath.tanh(mpmath.log1p(1 / (1 + mpmath.exp(-t)))), x),
              HUGE + [1.2e38, 2e38, 3e38]),
    # near float32's top: a sum or product that overflows on the way where the value does not
    # (the weights e/S first: a softmax mix's numerator overflowed from x = 1.7e38)
    "softmax_mix": ("(exp(a) * Max(x, 0) + exp(b) * tanh(x) + exp(c) * x) / (exp(a) + exp(b) + exp(c))",
                    MIX_LOGITS, {},
                    lambda x: _mix(x, (max(x, 0), mpmath.tanh(x), x)),
                    lambda x: _mix(x, (1 if x > 0 else 0, 1 / mpmath.cosh(x) ** 2, 1)), HUGE + [1.2e38, 2e38, 3.4e38]),
    # (x + r)/2 as x/2 + r/2: the sum overflowed from x = 1.7e38
    # (in mpmath for x < 0 as 2/(r - x) and 2/(r*(r - x)), r = sqrt(x**2 + 4): 50 digits cancel there)
    "half_conjugate_sum": ("(x + sqrt(x**2 + 4)) / 2", {}, {},
                           lambda x: (x + mpmath.sqrt(x**2 + 4)) / 2 if x > 0 else 2 / (mpmath.sqrt(x**2 + 4) - x),
                           lambda x: (1 + x / mpmath.sqrt(x**2 + 4)) / 2 if x > 0
                           else 2 / (mpmath.sqrt(x**2 + 4) * (mpmath.sqrt(x**2 + 4) - x)), HUGE + [2e38, 3.4e38]),
    # 2*softplus(p)*x as (2*softplus(p))*x: 2*x overflowed from x = 1.7e38
    "scaled_square": ("softplus(p) * x**2 + x / 2", {"p": 0.25}, {},
                      lambda x: mpmath.log1p(mpmath.exp(mp(0.25))) * x**2 + x / 2,
                      lambda x: 2 * mpmath.log1p(mpmath.exp(mp(0.25))) * x + mp(1) / 2, HUGE[:3] + [1.5e38, 1.8e38]),
    # a number goes with the factor of the input: 0.5*s*(x*erfc(-x/sqrt(2))) overflowed in x*erfc ~ 2*x
    "scaled_gelu": ("0.5 * s * x * (1 + erf(x / sqrt(2)))", {"s": 1.0}, {},
                    lambda x: x * (1 + mpmath.erf(x / mpmath.sqrt(2))) / 2,
                    lambda x: (1 + mpmath.erf(x / mpmath.sqrt(2))) / 2 + x * mpmath.exp(-x**2 / 2) / mpmath.sqrt(2 * mpmath.pi),
                    HUGE + [2e38, 3.4e38]),
    # softplus(beta*x)/beta as x + softplus(-beta*x)/beta for beta*x > 0: beta*x overflowed
    # from x = 3.4e37 in float32 (beta = 10), where the value is x
    "sharp_softplus": ("log(1 + exp(beta * x)) / beta", {"beta": 10.0}, {},
                       lambda x: mpmath.log1p(mpmath.exp(10 * x)) / 10, lambda x: 1 / (1 + mpmath.exp(-10 * x)),
                       HUGE + [1e38, 3.4e38]),
}


def _mix(x, values):
    weights = [mpmath.exp(mp(w)) for w in MIX_LOGITS.values()]
    return sum(w * v for w, v in zip(weights, values)) / sum(weights)


@pytest.fixture(scope="module")
def modules():
    out = {}
    for name, (formula, params, constants, *_rest) in CASES.items():
        out[name] = actgen.compile(formula, name=name, params=params or None, constants=constants or None)
    return out


def _close(got: float, truth: float, dtype) -> bool:
    if truth == 0:
        return got == 0 or abs(got) < 1e-30
    if abs(truth) < torch.finfo(dtype).tiny:        # below the dtype's normal range: 0 or as tiny
        return abs(got) < 2 * torch.finfo(dtype).tiny
    eps = torch.finfo(dtype).eps
    return math.isfinite(got) and abs(got - truth) <= 8 * eps * abs(truth)


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_huge_inputs_give_the_truth(name, dtype, backend, modules):
    if backend == "triton" and dtype == torch.float64:
        pytest.skip("kernels: float32 (float64 kernels compute in float64, with the fallback's range)")
    _, params, constants, f, df, points = CASES[name]
    fn = getattr(modules[name], name)
    xs = [s * v for v in points for s in (1, -1)]
    x = torch.tensor(xs, dtype=dtype, requires_grad=True)
    ps = [torch.tensor([v]) for v in params.values()]
    y = fn(x, *ps, **constants)
    (g,) = torch.autograd.grad(y, x, torch.ones_like(y))
    bad = []
    for xi, yi, gi in zip(x.detach().tolist(), y.detach().tolist(), g.tolist()):
        if name == "root_of_constant" and abs(xi) < 1.5:
            continue
        tf, tg = _truth(f, xi), _truth(df, xi)
        ok_f = _close(yi, tf, dtype) if math.isfinite(float(torch.tensor(tf, dtype=dtype))) else yi == float(torch.tensor(tf, dtype=dtype))
        if not ok_f or not _close(gi, tg, dtype):
            bad.append((xi, yi, tf, gi, tg))
    assert not bad, bad


def test_nan_passes_through_the_clamp(backend, modules):
    """The clamp keeps NaN (Triton's min/max would not, without propagate_nan)."""
    fn = modules["gaussian_slope"].gaussian_slope
    x = torch.tensor([math.nan, 1.0, -math.inf, math.inf], requires_grad=True)
    y = fn(x)
    (g,) = torch.autograd.grad(y, x, torch.ones_like(y))
    y = y.detach()
    assert math.isnan(y[0]) and math.isnan(g[0])
    assert g[2] == 0 and g[3] == 0 and y[2] == 0 and y[3] == 0
    assert g[1].item() == pytest.approx(-math.exp(-1.0), rel=1e-6)


def test_clamp_only_where_the_limit_is_reached_and_needed():
    """A clamp bound is where the value has reached its limit to double precision, on the
    sides where plain arithmetic passes through inf or NaN; none where it is not needed."""
    def saturations(formula):
        d = derive(load_spec(f"name: t\nformula: {formula}\n"))
        return {a for blk in (d.forward, d.backward) for _, e in (*blk.assignments, *blk.outputs)
                for a in e.atoms(Saturate)}

    (sat,) = saturations("x * exp(-x**2)")
    lo, hi = float(sat.args[1]), float(sat.args[2])
    # x e^{-x^2} and (1 - 2x^2) e^{-x^2} are below 2**-1076 beyond the bound, not well before it
    for bound in (lo, hi):
        with mpmath.workdps(50):
            assert abs((1 - 2 * mp(bound) ** 2) * mpmath.exp(-mp(bound) ** 2)) < mp(2) ** -1076
            assert abs((1 - 2 * mp(bound / 4) ** 2) * mpmath.exp(-mp(bound / 4) ** 2)) > mp(2) ** -1076
    # plain arithmetic gets these right at every float: no clamp
    assert saturations("sigmoid(x)") == set()
    assert saturations("x * sigmoid(x)") == set()
    # golu's derivative (1 + x*exp(-x))*exp(-exp(-x)) is 0 * -inf for x < -88 in float32, and
    # its value far out cannot be written in mpmath either (exp(-exp(2**1000))): the bound is
    # where it is below 2**-1076, from the points mpmath can evaluate
    (sat,) = saturations("(1 + x*exp(-x)) * exp(-exp(-x))")
    assert -16 <= float(sat.args[1]) <= -4 and not sat.args[2].is_finite


def test_generated_code_says_where_it_clamps():
    """The module header names each clamp; the kernels keep NaN through it."""
    import importlib
    import inspect

    gelu = importlib.import_module("actgen.ops.gelu")
    assert "df/dx: x is clamped where x <= -64 or x >= 16" in gelu.__doc__
    source = inspect.getsource(gelu)
    assert "_clamp(x, -64.0, 16.0)" in source
    from actgen.runtime import triton_lang

    clamp = inspect.getsource(getattr(triton_lang.clamp, "fn", triton_lang.clamp))
    assert clamp.count("propagate_nan=tl.PropagateNan.ALL") == 3
    assert "_rt.clamp(x, -64.0, 16.0)" in source


@pytest.mark.parametrize("x0", [s * v for v in HUGE + [3.0, 18.75] for s in (1, -1)])
def test_huge_inputs_give_the_param_gradients_of_a_ratio(x0, backend, modules):
    """PAU's param gradients x**k/Q and -P*|x**k|*sign(b_k)/Q**2 at huge x: finite where the
    truth is (x**5/Q ~ x/|b4|), though P alone overflows in float32 for |x| > 5e7."""
    names = list(PAU_INIT)
    ps = [torch.tensor([PAU_INIT[n]], requires_grad=True) for n in names]
    x = torch.tensor([x0])
    y = modules["pau"].pau(x, *ps)
    grads = torch.autograd.grad(y, ps, torch.ones_like(y))
    with mpmath.workdps(50):
        p, q, _, _, da, db = _pau_parts(mp(x0))
        truth = [float(da[k] / q) for k in range(6)] + [float(-p * db[k] / q**2) for k in range(1, 5)]
    bad = [(n, g.item(), t) for n, g, t in zip(names, grads, truth) if not _close(g.item(), t, torch.float32)]
    assert not bad, bad


def test_generated_code_says_where_it_scales_a_ratio():
    """PAU's header names the scaled ratios; both targets compute v and w once, by name."""
    import importlib
    import inspect

    pau = importlib.import_module("actgen.ops.pau")
    assert "f, df/dx, df/da1" in pau.__doc__
    assert "ratios of polynomials in x are computed in v = x/s and w = 1/s, s the power of two" in pau.__doc__
    source = inspect.getsource(pau)
    assert "_v_x = _scaled_input(x)" in source and "_w_x = _inverse_scale(x)" in source
    assert "_v_x = _rt.scaled_input(x)" in source and "_w_x = _rt.inverse_scale(x)" in source
    assert "libdevice.pow" not in source          # v**5 is a product of names


def test_generated_code_computes_mish_from_one_exponential():
    """mish's header says f and df/dx are one ratio in e = exp(-|x|); its kernels and fallback
    call exp once and no softplus, tanh or sigmoid.  silu's derivative is one ratio in the
    kernels alone, as its header says: its fallback keeps its sigmoids."""
    import importlib
    import inspect

    for name in ("mish", "well_documented", "smish"):
        module = importlib.import_module(f"actgen.ops.{name}")
        assert "f, df/dx: one ratio of polynomials in e = exp(-|x|)" in module.__doc__
        for fn in ("_forward_torch", "_derivatives_torch", "_forward_kernel", "_backward_kernel"):
            obj = getattr(module, fn)
            source = inspect.getsource(getattr(obj, "fn", obj))       # a kernel: its Python function
            assert source.count("exp(") == 1 and not any(f in source for f in ("tanh(", "softplus(", "sigmoid(", "log")), (name, fn)
    # swish's derivative has one ratio in e = exp(-|beta*x|); its limit at a clamped x (a ratio
    # in beta alone) is not the derivative's form, and the header does not name it
    swish = importlib.import_module("actgen.ops.swish")
    notes = [line for line in swish.__doc__.splitlines() if "one ratio of polynomials" in line]
    assert len(notes) == 1 and "e = exp(-|beta*x|)" in notes[0], notes
    silu = importlib.import_module("actgen.ops.silu")
    assert "df/dx: one ratio" in silu.__doc__ and "(in the Triton kernels; the eager fallback keeps its calls)" in silu.__doc__
    assert "sigmoid(" in inspect.getsource(silu._derivatives_torch)
    kernel = inspect.getsource(silu._backward_kernel.fn)
    assert kernel.count("exp(") == 1 and "sigmoid(" not in kernel


# Formulas that once stopped the compiler (a branch condition made of a branch: nested Max;
# a polynomial whose coefficients hold functions of a param), with the same formula in plain
# torch as the reference: values and gradients at points away from the kinks.
ODD_FORMULAS = {
    "max_of_max": ("Max(Max(x + abs(x), 0), 0)", {},
                   lambda x, a: torch.clamp_min(torch.clamp_min(x + x.abs(), 0), 0)),
    "max_of_ratio": ("tanh(Max(x / (1 + abs(x)), 0))", {},
                     lambda x, a: torch.tanh(torch.clamp_min(x / (1 + x.abs()), 0))),
    "coefficients_of_a_param": ("a*x + a + (a*x)**2 / 4 - 2 / (1 + log(1 + exp(a)))**2", {"a": 0.75},
                                lambda x, a: a * x + a + (a * x) ** 2 / 4 - 2 / (1 + torch.log1p(torch.exp(a))) ** 2),
}


@pytest.mark.parametrize("name", sorted(ODD_FORMULAS))
def test_formulas_with_nested_branches_and_param_coefficients(name, backend):
    formula, params, reference = ODD_FORMULAS[name]
    fn = getattr(actgen.compile(formula, name=name, params=params or None), name)
    dtype = torch.float64 if backend == "torch" else torch.float32
    x = torch.tensor([-3.0, -0.7, 0.4, 1.3, 5.0], dtype=dtype, requires_grad=True)
    a = torch.tensor([params.get("a", 0.0)], dtype=dtype, requires_grad=True)
    y = fn(x, a) if params else fn(x)
    grads = torch.autograd.grad(y, [x, a] if params else [x], torch.ones_like(y))
    xr = x.detach().double().requires_grad_()
    ar = a.detach().double().requires_grad_()
    yr = reference(xr, ar)
    refs = torch.autograd.grad(yr, [xr, ar] if params else [xr], torch.ones_like(yr), allow_unused=True)
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(y.detach().double(), yr.detach(), **tol)
    for g, r in zip(grads, refs):
        torch.testing.assert_close(g.double(), r if r is not None else torch.zeros_like(g.double()), **tol)


def test_a_scaled_ratio_keeps_exact_zeros(backend):
    """The scale is a power of two, so scaling is exact: (x - 3)**2/(1 + x**2) and its
    derivative are exactly 0 at x = 3 (v - 3*w = 3/4 - 3/4), and (a - b)**3/(2 + a**2 + b**4)
    with its gradients at a = b; a scale of 1/|x| (rounded) would leave about 1e-7 there."""
    sq = actgen.compile("(x - 3)**2 / (1 + x**2)", name="root_at_three").root_at_three
    x = torch.tensor([3.0, -3.0, 96.0], requires_grad=True)
    y = sq(x)
    (g,) = torch.autograd.grad(y, x, torch.ones_like(y))
    assert y[0].item() == 0.0 and g[0].item() == 0.0
    assert y[2].item() == pytest.approx(93.0**2 / (1 + 96.0**2), rel=1e-6)
    cube = actgen.compile("(a - b)**3 / (2 + a**2 + b**4)", name="triple_root", inputs=["a", "b"]).triple_root
    a = torch.tensor([1.5, 7.0, 1e3], requires_grad=True)
    b = torch.tensor([1.5, 7.0, 1e3], requires_grad=True)
    y = cube(a, b)
    ga, gb = torch.autograd.grad(y, (a, b), torch.ones_like(y))
    assert y.tolist() == [0.0, 0.0, 0.0] and ga.tolist() == [0.0, 0.0, 0.0] and gb.tolist() == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_nan_input_gives_nan_in_every_entry(dtype, backend):
    """Every catalogue entry, NaN in each input: f and the input's gradient are NaN, and the
    other points are not (the NaN guard is left out only where NaN flows through every branch:
    mish's ratio, prelu's x or weight*x; relu's constant branch keeps it)."""
    import actgen.ops as ops
    from actgen.catalogue import DEFAULT_SPECS
    from actgen.spec import load_specs

    for spec in load_specs([DEFAULT_SPECS]):
        fn = getattr(ops, spec.name)
        symbols = spec.symbols
        for k in range(len(spec.inputs)):
            u = symbols[spec.inputs[k]]
            slope_has_u = u in sympy.diff(spec.expr, u).free_symbols      # bilinear's d(a*b)/da = b does not
            xs = [torch.tensor([0.5, -1.5, 2.0, -0.25], dtype=dtype) for _ in spec.inputs]
            xs[k][1] = math.nan
            xs = [x.requires_grad_() for x in xs]
            params = [torch.full((1,), p.init, dtype=dtype) for p in spec.params]
            y = fn(*xs, *params)
            (g,) = torch.autograd.grad(y.sum(), xs[k])
            y = y.detach()
            assert math.isnan(y[1]) and math.isnan(g[1]) == slope_has_u, (spec.name, spec.inputs[k], y, g)
            others = [0, 2, 3]
            assert torch.isfinite(y[others]).all() and torch.isfinite(g[others]).all(), (spec.name, y, g)


def test_a_gated_limit_in_one_input_that_is_the_other_input(backend):
    """a*sigmoid(b) + b*(1 - sigmoid(b)) (a highway gate) at b = +inf is a, whatever its size
    (read off the probe with a counted as grown from 2**14 before: 16384 gave inf), and at
    b = -inf it is -inf for a finite a and NaN for a NaN one (it was -inf on the fallback);
    a*b*sigmoid(b) + b, whose probe value grows with the probe, is +-inf by a + 1's sign."""
    inf, nan = math.inf, math.nan
    m = actgen.compile("a*sigmoid(b) + b*(1 - sigmoid(b))", name="highway", inputs=["a", "b"])
    a = torch.tensor([16383.0, 16384.0, 1e20, -1e30, 0.5, 2.0, nan, nan], requires_grad=True)
    b = torch.tensor([inf, inf, inf, inf, inf, -inf, -inf, inf], requires_grad=True)
    y = m.highway(a, b)
    ga, gb = torch.autograd.grad(y.sum(), (a, b))

    # the limits in b: sigmoid(b) -> 1 and b*(1 - sigmoid(b)) -> 0 at +inf (a), sigmoid(b) -> 0
    # and 1 - sigmoid(b) -> 1 at -inf (-inf); checked at b = +-60 with mpmath
    f = lambda av, bv: av / (1 + mpmath.exp(-mp(bv))) + bv / (1 + mpmath.exp(mp(bv)))
    assert abs(f(mp(16384), 60) - 16384) < 1e-20 and f(mp(2), -60) < -59
    want = [av if bv > 0 else -inf if math.isfinite(av) else nan for av, bv in zip(a.tolist(), b.tolist())]
    torch.testing.assert_close(y.detach(), torch.tensor(want), equal_nan=True)
    assert ga[:6].tolist() == [1.0, 1.0, 1.0, 1.0, 1.0, 0.0] and gb[:5].tolist() == [0.0] * 5
    g = actgen.compile("a*b*sigmoid(b) + b", name="grows", inputs=["a", "b"])
    y = g.grows(torch.tensor([-2.0, 0.5, 16384.0]), torch.tensor([inf, inf, inf]))
    assert y.tolist() == [-inf, inf, inf]


def test_a_gated_input_times_a_ratio_does_not_overflow_before_the_division(backend):
    """a*tanh(softplus(b)) is a times one ratio of polynomials in exp(-|b|): computed as the
    ratio times a, it stays finite for a up to float32's largest (a times the ratio's
    numerator first was inf from a = 1e38 where the numerator is ~2), and so do its
    gradients; against mpmath."""
    m = actgen.compile("a * tanh(softplus(b))", name="gated_mish", inputs=["a", "b"])
    av = [3e38, -3e38, 2e38, 1.5, -1e30]
    bv = [2.0, 0.5, 30.0, -3.0, 1.0]
    a = torch.tensor(av, requires_grad=True)
    b = torch.tensor(bv, requires_grad=True)
    y = m.gated_mish(a, b)
    ga, gb = torch.autograd.grad(y.sum(), (a, b))
    y = y.detach()
    for k, (ak, bk) in enumerate(zip(a.tolist(), b.tolist())):
        with mpmath.workdps(50):
            t = lambda u: mpmath.tanh(mpmath.log1p(mpmath.exp(u)))
            want = (mp(ak) * t(mp(bk)), t(mp(bk)), mp(ak) * mpmath.diff(t, mp(bk)))
        for got, w in zip((y[k], ga[k], gb[k]), want):
            assert _close(float(got), float(w), torch.float32), (ak, bk, float(got), float(w))


@pytest.mark.parametrize("name", ["geglu", "geglu_tanh"])
def test_a_gate_times_a_vanishing_gelu_is_not_inf_times_zero(name, backend):
    """gelu(a)*b and its gradients where gelu(a) has (nearly) vanished and b is huge: the
    bounded factors meet first, then the inputs (0.5*a*b*erfc(...) overflowed to inf before
    the erfc's 0, NaN: geglu's forward on the fallback at a = -100, b = 1e37; geglu_tanh's
    gradient in a from |b| = 1e36, b times a sum of size 1e3 before a sigmoid of 0);
    against mpmath."""
    fn = getattr(actgen.ops, name)
    av = [-100.0, -20.0, -12.0, -12.0, -30.0, -3.0, 0.5, 2.0]
    bv = [1e37, 1e38, 1e36, -1e37, 3e38, 1e37, -3e38, 1e30]
    a = torch.tensor(av, requires_grad=True)
    b = torch.tensor(bv, requires_grad=True)
    y = fn(a, b)
    ga, gb = torch.autograd.grad(y.sum(), (a, b))
    y = y.detach()
    if name == "geglu":
        g = lambda u: u * mpmath.erfc(-u / mpmath.sqrt(2)) / 2
    else:
        g = lambda u: u / (1 + mpmath.exp(-2 * mpmath.sqrt(2 / mpmath.pi) * (u + mp("0.044715") * u**3)))
    for k, (ak, bk) in enumerate(zip(a.tolist(), b.tolist())):
        with mpmath.workdps(50):
            want = (g(mp(ak)) * mp(bk), mpmath.diff(g, mp(ak)) * mp(bk), g(mp(ak)))
        # (gelu(a) and its slope within the accuracy target's allowance below 2**-102, as
        # docs/accuracy.md scores them, times b: gelu(-12) is -2e-32)
        for got, w, scale in zip((y[k], ga[k], gb[k]), want, (bk, bk, 1.0)):
            got, w = float(got), float(w)
            ok = math.isfinite(got) and abs(got - w) <= 8 * torch.finfo(torch.float32).eps * abs(w) + abs(scale) * 2.0**-102
            assert ok, (name, ak, bk, got, w)


def test_a_slope_that_decays_as_a_power_has_its_limit_at_inf(backend):
    """-sqrt(-x)'s slope, 0.5/sqrt(-x) (written 0.5*sqrt(-x)/x), is inf/inf = NaN at x = -inf
    as written; its limit, 0, is read off probes where it decays as a power (5e-16 at 1e30,
    5e-31 at 1e60). The signed square root's slope is 0 at both infinities."""
    m = actgen.compile("where(x >= 0, sqrt(x), -sqrt(-x))", name="ssqrt")
    x = torch.tensor([-math.inf, -4.0, -1e30, 4.0, 1e30, math.inf], requires_grad=True)
    y = m.ssqrt(x)
    (g,) = torch.autograd.grad(y.sum(), x)
    want = [0.0] + [_truth(lambda v: 0.5 / mpmath.sqrt(abs(v)), v) for v in (-4.0, -1e30, 4.0, 1e30)] + [0.0]
    torch.testing.assert_close(g, torch.tensor(want), rtol=4 * 2**-23, atol=0.0)
    assert y.detach()[[0, -1]].tolist() == [-math.inf, math.inf]


@pytest.mark.parametrize("logits", [(30.0, 30.0, 0.0), (45.0, 45.0, 0.0), (50.0, 50.0, 0.0), (80.0, 0.0, 80.0),
                                    (-60.0, 0.0, 70.0)])
def test_softmax_weights_keep_their_gradients_at_large_logits(logits, backend):
    """adaptive_mixture's weights are a softmax of its params: the quotient rule's square of
    the sum of their exponentials overflows float32 from logits of about 44 on, where the
    param gradients came out as if the square were infinite (the kernels gave (208, 9.0, 0)
    for (97.6, -97.6, 0) at (50, 50, 0)); against the formula in float64 torch."""
    x = torch.randn(1000, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    w64 = [torch.tensor([v], dtype=torch.float64, requires_grad=True) for v in logits]
    e = [torch.exp(t) for t in w64]
    want = torch.autograd.grad(((e[0] * torch.relu(x) + e[1] * torch.tanh(x) + e[2] * x) / sum(e)).sum(), w64)
    ws = [torch.tensor([v], requires_grad=True) for v in logits]
    from actgen.ops import adaptive_mixture
    got = torch.autograd.grad(adaptive_mixture(x.float(), *ws).sum(), ws)
    for g, w in zip(got, want):
        torch.testing.assert_close(g.double(), w, rtol=1e-4, atol=1e-4)


def test_the_kernels_sigmoid_reaches_float32_subnormals(triton_backend):
    """The kernels' sigmoid in e = exp(-|u|): 1/(1 + exp(-u)) was 0 below u = -88.7 in float32
    (exp(-u) is inf there) where the truth is subnormal, while the backward's ratio in e had
    it; now forward and backward agree, to two subnormal steps of float32's truth."""
    import mpmath

    import actgen.ops as ops

    x = torch.tensor([-103.0, -100.0, -95.0, -89.0, -88.0, -60.0, -1.0, 0.0, 2.0, 100.0])
    truth = torch.tensor([float(1 / (1 + mpmath.exp(-mpmath.mpf(v)))) for v in x.tolist()], dtype=torch.float64)
    step = 2.0 ** -149
    for y, want, scale in ((ops.sigmoid(x), truth, torch.ones_like(truth)), (ops.silu(x), x.double() * truth, x.double().abs())):
        err = (y.double() - want).abs()
        assert (err <= torch.maximum(2 * step * scale, 4e-7 * want.abs())).all(), (y, want)
    assert (ops.sigmoid(x[:4]) > 0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_guarded_ratio_over_a_param_does_not_overflow_on_cpu_chunks(dtype, backend):
    """(sqrt(x**2 + 1) - 1)/a is x/(hypot(x, 1) + 1)*x/a: the ratio first, then x, then a.
    The CPU fast variant (its guards dropped) merged the guarded product into the one around
    it and computed x/a*x first: inf from |x| = 1.8e19 in float32, f and df/da, where the
    guarded function and the kernels were exact.  Against mpmath."""
    m = actgen.compile("(sqrt(x**2 + 1) - 1)/a", name="root_over_a", params={"a": 1.0})
    for av in (1.0, 0.5, -2.0):
        x = torch.tensor([s * v for v in HUGE + [3.0, 0.25] for s in (1, -1)], dtype=dtype, requires_grad=True)
        a = torch.tensor([av], dtype=dtype, requires_grad=True)
        y = m.root_over_a(x, a)
        gx, ga = torch.autograd.grad(y.sum(), (x, a))
        bad = []
        for xi, yi, gi in zip(x.detach().tolist(), y.detach().tolist(), gx.tolist()):
            tf = _truth(lambda v: (mpmath.sqrt(v**2 + 1) - 1) / av, xi)
            tg = _truth(lambda v: v / mpmath.sqrt(v**2 + 1) / av, xi)
            if not _close(yi, tf, dtype) or not _close(gi, tg, dtype):
                bad.append((av, xi, yi, tf, gi, tg))
        assert not bad, bad
        want_a = sum(_truth(lambda v: -(mpmath.sqrt(v**2 + 1) - 1) / av**2, xi) for xi in x.detach().tolist())
        assert math.isfinite(ga.item()) and abs(ga.item() - want_a) <= 8 * torch.finfo(dtype).eps * abs(want_a) * 4, (ga, want_a)


def _sech2(u):
    return 1 / mpmath.cosh(u) ** 2


_C3 = mp(0.044715)
# (formula, params, f, df/dx, df/dparam): a factor that vanishes faster than a power of x grows,
# times that power, with the param in the vanishing factor (no clamp of x: where it vanishes
# depends on the param); f and its derivatives written independently, in mpmath
VANISHING = {
    # the kernels' ratio in e = exp(-2|u|): (0.27*a*x**3 + 2*a*x + 1)*e was inf*0 (df/dx from
    # x = 1e19) and df/da's x**4*e over a scaled ratio in x was 0/0 (w**4 = 0) from x = 7e12
    "gelu_tanh_param": ("0.5*x*(1 + tanh(a*(x + 0.044715*x**3)))", 0.7978845608,
                        lambda x, a: x * (1 + mpmath.tanh(a * (x + _C3 * x**3))) / 2,
                        lambda x, a: ((1 + mpmath.tanh(a * (x + _C3 * x**3))) / 2
                                      + x / 2 * _sech2(a * (x + _C3 * x**3)) * a * (1 + 3 * _C3 * x**2)),
                        lambda x, a: x / 2 * _sech2(a * (x + _C3 * x**3)) * (x + _C3 * x**3)),
    # a ratio of polynomials of positive degree (scaled: s**2 * ratio in v, w) times a vanishing
    # exponential: f was NaN from x = 1e25 (s**2 overflowed first), df/da from 7e12
    "ratio_times_gaussian": ("x**4/(1 + x**2)*exp(-a*x**2)", 0.5,
                             lambda x, a: x**4 / (1 + x**2) * mpmath.exp(-a * x**2),
                             lambda x, a: mpmath.diff(lambda t: t**4 / (1 + t**2) * mpmath.exp(-a * t**2), x),
                             lambda x, a: -(x**6) / (1 + x**2) * mpmath.exp(-a * x**2)),
}


@pytest.mark.parametrize("name", sorted(VANISHING))
def test_huge_inputs_give_the_param_gradient_where_a_factor_vanishes(name, backend):
    """f, df/dx and df/da in float32 at huge x, where a power of x meets a factor with the
    param in it that has vanished: 0 (or the truth), not inf*0 or 0/0 = NaN; against mpmath."""
    formula, init, f, dfx, dfa = VANISHING[name]
    fn = getattr(actgen.compile(formula, name=name, params={"a": init}), name)
    xs = [s * v for v in HUGE + [2.0, 10.0] for s in (1, -1)]
    bad = []
    for x0 in xs:
        x = torch.tensor([x0], requires_grad=True)
        a = torch.tensor([init], requires_grad=True)
        y = fn(x, a)
        gx, ga = torch.autograd.grad(y, (x, a), torch.ones_like(y))
        av = mp(a.item())
        for what, got, truth in (("f", y, f), ("df/dx", gx, dfx), ("df/da", ga, dfa)):
            with mpmath.workdps(50):
                want = float(truth(mp(x.item()), av))
            # (at x = -10 and 10 the value is exp(-87), which float32 holds to its condition, 87)
            tol = 64 if abs(x0) == 10.0 else 8
            got = got.item()
            ok = (got == 0 or abs(got) < 1e-30) if want == 0 else (
                math.isfinite(got) and abs(got - want) <= tol * torch.finfo(torch.float32).eps * abs(want))
            if not ok:
                bad.append((x0, what, got, want))
    assert not bad, bad


def test_a_nan_input_gives_nan_where_the_value_no_longer_holds_the_input(backend):
    """sign(log(sigmoid(x))) is -1 for every real x, and the compiler simplifies it so: a NaN
    x still gives NaN (it was -1), as every op gives for a NaN input; the value elsewhere
    against mpmath, and the slope 0."""
    fn = actgen.compile("sign(log(sigmoid(x)))", name="sign_of_log_sigmoid").sign_of_log_sigmoid
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        x = torch.tensor([math.nan, -3.0, 0.0, 2.0, 1e30, -math.inf, math.inf], dtype=dtype, requires_grad=True)
        y = fn(x)
        (g,) = torch.autograd.grad(y.sum(), x)
        assert math.isnan(y[0].item()), (dtype, y)
        with mpmath.workdps(50):
            want = [float(mpmath.sign(-mpmath.log1p(mpmath.exp(-mp(v))))) for v in x.tolist()[1:5]]
        assert y.detach()[1:5].tolist() == want and y.detach()[5:].tolist() == [-1.0, -1.0], (dtype, y)
        assert g.tolist() == [0.0] * 7


def test_log_of_softplus_far_below_zero_is_about_x(backend):
    """log(softplus(x)) is x + log1p(-exp(x)/2 + ...): softplus(x) underflows to 0 from x = -746
    in float64 (-104 in float32, where the kernels compute 16-bit data), where the value was
    log(0) = -inf; value and slope against mpmath, in every dtype."""
    fn = actgen.compile("log(softplus(x))", name="log_softplus").log_softplus
    xs = [-1e30, -1e5, -1000.0, -750.0, -746.0, -200.0, -100.0, -45.0, -35.0, -5.0, 0.5, 30.0]
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        x = torch.tensor(xs, dtype=dtype, requires_grad=True)
        y = fn(x)
        (g,) = torch.autograd.grad(y.sum(), x)
        eps = torch.finfo(dtype).eps
        for xv, yv, gv in zip(x.tolist(), y.tolist(), g.tolist()):
            with mpmath.workdps(60):
                f = mpmath.log(mpmath.log1p(mpmath.exp(mp(xv))))
                slope = 1 / ((1 + mpmath.exp(-mp(xv))) * mpmath.log1p(mpmath.exp(mp(xv))))
            for got, want in ((yv, float(f)), (gv, float(slope))):
                assert math.isfinite(got) and abs(got - want) <= 4 * eps * abs(want), (dtype, xv, got, want)


def _root(x, a):
    return mpmath.sqrt(x**2 + a)


# (formula, init of a, f, df/dx, df/da): a learnable param with the square of x under a root;
# f and its derivatives written independently, in mpmath (the differences in their cancelling
# forms: sqrt(x**2 + a) - sqrt(a) is x**2/(r + sqrt(a)), exactly)
ROOT_PARAM = {
    # the param times x**2: (a*x**2 + 1)**(3/2) overflows from |x| = 7e12 in float32 (x**2
    # from 1.8e19), where df/da, -x**3/(2*(1 + a*x**2)**(3/2)), is near -sign(x)/(2*a**1.5)
    "inverse_root_param": ("x / sqrt(1 + a*x**2)", 0.5,
                           lambda x, a: x / mpmath.sqrt(1 + a * x**2),
                           lambda x, a: (1 + a * x**2) ** mp(-1.5),
                           lambda x, a: -(x**3) / (2 * (1 + a * x**2) ** mp(1.5))),
    # the param added to x**2: the value's conjugate form has its own derivatives, which
    # were 2 (df/dx, where it is 1) and 0 (df/da, where it is -1/2) from |x| = 1e25 in float32
    "root_minus_root_param": ("sqrt(x**2 + a) - sqrt(a)", 1.0,
                              lambda x, a: x**2 / (_root(x, a) + mpmath.sqrt(a)),
                              lambda x, a: x / _root(x, a),
                              lambda x, a: -(x**2) / (2 * mpmath.sqrt(a) * _root(x, a) * (_root(x, a) + mpmath.sqrt(a)))),
}
ROOT_POINTS = [-1e30, -1e25, -3e19, -1e13, -3.0, -1e-3, 0.0, 1e-20, 1e-3, 0.7, 5.0, 1e5, 1e13, 3e19, 1e25, 1e30, 1e37]


@pytest.mark.parametrize("name", sorted(ROOT_PARAM))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_param_under_a_root_with_the_square_of_x(name, dtype, backend):
    """f, df/dx and df/da at huge and small |x| where a learnable param multiplies x**2 under a
    square root, or is added to it: within 8 ULP of mpmath (absolute where the truth is 0 or
    below the dtype's normal range), on both targets; for a = init and for a second value."""
    if backend == "triton" and dtype == torch.float64:
        pytest.skip("kernels: float32 (float64 kernels compute in float64, with the fallback's range)")
    formula, init, f, dfx, dfa = ROOT_PARAM[name]
    fn = getattr(actgen.compile(formula, name=name, params={"a": init}), name)
    bad = []
    for av in (init, 3.0):
        x = torch.tensor(ROOT_POINTS, dtype=dtype, requires_grad=True)
        a = torch.tensor([av], dtype=dtype, requires_grad=True)
        y = fn(x, a)
        (gx,) = torch.autograd.grad(y.sum(), x, retain_graph=True)
        for i, x0 in enumerate(x.detach().tolist()):
            (ga,) = torch.autograd.grad(y[i], a, retain_graph=True)
            for what, got, truth in (("f", y[i].item(), f), ("df/dx", gx[i].item(), dfx), ("df/da", ga.item(), dfa)):
                want = _truth(lambda v: truth(v, mp(av)), x0)
                if not _close(got, want, dtype):
                    bad.append((av, x0, what, got, want))
    assert not bad, bad


#: log(erfc(x)) is log(2) for x << 0 and -x**2 - log(x*sqrt(pi)) - 1/(2x**2) + ... for x >> 0
LOG_ERFC_POINTS = [-30.0, -5.0, -1.0, -0.01, 0.0, 1e-3, 0.5, 3.0, 9.5, 12.0, 27.0, 100.0, 1e4, 1e10]


@pytest.mark.parametrize("scaled", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_log_of_erfc_past_its_underflow_is_about_minus_x_squared(scaled, dtype, backend):
    """log(erfc(x)) and log(erfc(a*x)): erfc underflows to 0 from a*x = 9.2 in float32 and 26.6
    in float64, where the value was log(0) = -inf and the slopes (about -2*a*x and -2*x*a*x)
    0/0 = NaN or 0; f, df/dx and df/da against mpmath at 50 digits, to 8 ULP in float32 and
    1e-12 (relative) in float64, across the sign of x."""
    if backend == "triton" and dtype == torch.float64:
        pytest.skip("kernels: float32 (float64 kernels compute in float64, with the fallback's range)")
    if scaled:
        fn = actgen.compile("log(erfc(a*x))", name="log_erfc_a", params={"a": 1.5}).log_erfc_a
    else:
        fn = actgen.compile("log(erfc(x))", name="log_erfc").log_erfc
    x = torch.tensor(LOG_ERFC_POINTS, dtype=dtype, requires_grad=True)
    a = torch.tensor([1.5], dtype=dtype, requires_grad=True)
    y = fn(x, a) if scaled else fn(x)
    grads = torch.autograd.grad(y, (x, a) if scaled else (x,), torch.ones_like(y), allow_unused=True)
    ga = [None] * len(LOG_ERFC_POINTS)
    if scaled:      # df/da per point: one point at a time (the gradient in a sums over x)
        ga = []
        for xv in LOG_ERFC_POINTS:
            xi = torch.tensor([xv], dtype=dtype)
            ai = torch.tensor([1.5], dtype=dtype, requires_grad=True)
            (g,) = torch.autograd.grad(fn(xi, ai), ai, torch.ones(1, dtype=dtype))
            ga.append(g.item())
    tol = 8 * torch.finfo(torch.float32).eps if dtype == torch.float32 else 1e-12
    tiny = torch.finfo(dtype).tiny
    bad = []
    for xv, yv, gx, gav in zip(LOG_ERFC_POINTS, y.detach().tolist(), grads[0].tolist(), ga):
        with mpmath.workdps(50):
            av = mp(1.5) if scaled else mp(1)
            u = av * mp(xv)
            f = mpmath.log(mpmath.erfc(u))
            slope = -2 * mpmath.exp(-u * u) / (mpmath.sqrt(mpmath.pi) * mpmath.erfc(u))
            wants = [("f", yv, float(f)), ("df/dx", gx, float(av * slope))]
            if scaled:
                wants.append(("df/da", gav, float(mp(xv) * slope)))
        for what, got, want in wants:
            if abs(want) < tiny:        # (the slope at x = -30: exp(-900), 0 in either dtype)
                ok = abs(got) < 2 * tiny
            else:
                ok = math.isfinite(got) and abs(got - want) <= tol * abs(want)
            if not ok:
                bad.append((xv, what, got, want))
    assert not bad, bad


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_log_of_the_normal_cdf_far_below_zero(dtype, backend):
    """log(erfc(-x/sqrt(2))/2), the log of the normal CDF: erfc underflowed from x = -13 in
    float32 and -37.7 in float64 (log(0) = -inf, a slope of 0/0 = NaN), where the value is
    about -x**2/2 - log(-x*sqrt(2*pi)) and the slope about -x; f and df/dx against mpmath at 50
    digits, to 8 ULP in float32 and 1e-12 (relative) in float64."""
    if backend == "triton" and dtype == torch.float64:
        pytest.skip("kernels: float32 (float64 kernels compute in float64, with the fallback's range)")
    fn = actgen.compile("log(0.5*erfc(-x/sqrt(2)))", name="log_ndtr").log_ndtr
    xs = [-1e10, -1e4, -100.0, -40.0, -38.0, -14.0, -5.0, -1.0, 0.0, 0.5]
    x = torch.tensor(xs, dtype=dtype, requires_grad=True)
    y = fn(x)
    (g,) = torch.autograd.grad(y.sum(), x)
    tol = 8 * torch.finfo(torch.float32).eps if dtype == torch.float32 else 1e-12
    bad = []
    for xv, yv, gv in zip(xs, y.tolist(), g.tolist()):
        with mpmath.workdps(50):
            cdf = mpmath.erfc(-mp(xv) / mpmath.sqrt(2)) / 2
            f = mpmath.log(cdf)
            slope = mpmath.exp(-mp(xv) ** 2 / 2) / (mpmath.sqrt(2 * mpmath.pi) * cdf)
        for what, got, want in (("f", yv, float(f)), ("df/dx", gv, float(slope))):
            if not (math.isfinite(got) and abs(got - want) <= tol * abs(want)):
                bad.append((xv, what, got, want))
    assert not bad, bad


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_erfc_times_exp_of_its_square_is_erfcx(dtype, backend):
    """exp(x**2)*erfc(x) is erfcx(x): erfc underflows from x = 26.6 in float64 where the
    product is ~1/(x*sqrt(pi)), and exp(x**2) overflows first: inf*0 = NaN there (both dtypes:
    float32 data computed it in float64).  Against mpmath: f everywhere, and its slope
    2x*erfcx(x) - 2/sqrt(pi) finite (for |x| > 1 its two terms cancel, ~x**-2 of them)."""
    m = actgen.compile("exp(x**2)*erfc(x)", name="scaled_erfc")
    xs = [-5.0, -1.0, -1e-3, 0.0, 0.5, 3.0, 9.5, 27.0, 30.0, 100.0, 1e4, 1e10]
    x = torch.tensor(xs, dtype=dtype, requires_grad=True)
    y = m.scaled_erfc(x)
    (g,) = torch.autograd.grad(y.sum(), x)
    for xv, yv, gv in zip(xs, y.tolist(), g.tolist()):
        f = _truth(lambda v: mpmath.exp(v**2) * mpmath.erfc(v), xv)
        slope = _truth(lambda v: 2 * v * mpmath.exp(v**2) * mpmath.erfc(v) - 2 / mpmath.sqrt(mpmath.pi), xv)
        assert _close(yv, f, dtype), (dtype, xv, yv, f)
        assert math.isfinite(gv) and (abs(xv) > 1 or _close(gv, slope, dtype)), (dtype, xv, gv, slope)


def _sig(u):
    return 1 / (1 + mpmath.exp(-u))


#: (formula, params, f): a param times (or over) x, which overflows at a huge finite x though
#: every value there is finite (x * sigmoid(beta * x)'s slope, beta*x*sigmoid(-beta*x) as
#: inf * 0 at x = 3e38 in float32); derivatives by central differences in mpmath
PARAM_PRODUCTS = {
    "swish_beta": ("x * sigmoid(beta * x)", {"beta": 2.5}, lambda x, beta: x * _sig(beta * x)),
    "celu_max_min": ("Max(0, x) + Min(0, alpha * (exp(x / alpha) - 1))", {"alpha": 0.3},
                     lambda x, alpha: max(x, mp(0)) + min(mp(0), alpha * mpmath.expm1(x / alpha))),
    "celu_branches": ("Piecewise((x, x > 0), (a * (exp(x / a) - 1), True))", {"a": 0.5},
                      lambda x, a: x if x > 0 else a * mpmath.expm1(x / a)),
    "aria_unit": ("(1 + exp(-b * x))**(-a)", {"a": 0.5, "b": 3.0}, lambda x, a, b: _sig(b * x) ** a),
    "sigmoid_power": ("x * sigmoid(x)**p", {"p": 2.0}, lambda x, p: x * _sig(x) ** p),
    "softplus_beta": ("log(1 + exp(beta * x)) / beta", {"beta": 10.0},
                      lambda x, beta: (beta * x + mpmath.log1p(mpmath.exp(-beta * x)) if x > 0
                                       else mpmath.log1p(mpmath.exp(beta * x))) / beta),
}


@pytest.mark.parametrize("name", sorted(PARAM_PRODUCTS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_param_product_that_overflows_at_a_huge_input_takes_the_limit(name, dtype, backend):
    """f, df/dx and every param gradient at huge finite inputs where a param times x overflows
    (the guarded limit at +-inf holds from |x| = 2**64 on, where the value is NaN) and at
    ordinary ones in the same batch (whose param gradients one NaN term made NaN too): within
    8 ULP of mpmath, on both targets."""
    if backend == "triton" and dtype == torch.float64:
        pytest.skip("kernels: float32 (float64 kernels compute in float64, with the fallback's range)")
    formula, params, f = PARAM_PRODUCTS[name]
    big = [3e38, 1e38] if dtype == torch.float32 else [1.7e308, 1e300]
    points = [-big[0], -big[1], -2.0, 1.5] + big
    fn = getattr(actgen.compile(formula, name=name, params=params), name)
    x = torch.tensor(points, dtype=dtype, requires_grad=True)
    ps = [torch.tensor([v], dtype=dtype, requires_grad=True) for v in params.values()]
    y = fn(x, *ps)
    (gx,) = torch.autograd.grad(y.sum(), x, retain_graph=True)
    bad = []
    # (digits for float64's 1.7e308 times a param: its 310 digits, and the differences' 35)
    with mpmath.workdps(80 if dtype == torch.float32 else 400):
        pv = {k: mp(float(torch.tensor(v, dtype=dtype))) for k, v in params.items()}
        for i, x0 in enumerate(points):
            X, h = mp(x0), abs(mp(x0)) * mp(10) ** -35
            checks = [("f", y[i].item(), f(X, **pv)), ("df/dx", gx[i].item(), (f(X + h, **pv) - f(X - h, **pv)) / (2 * h))]
            grads = torch.autograd.grad(y[i], ps, retain_graph=True)
            for (k, v), g in zip(pv.items(), grads):
                hk = abs(v) * mp(10) ** -35
                checks.append((f"df/d{k}", g.item(), (f(X, **{**pv, k: v + hk}) - f(X, **{**pv, k: v - hk})) / (2 * hk)))
            bad += [(x0, what, got, float(want)) for what, got, want in checks if not _close(got, float(want), dtype)]
    assert not bad, bad


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_terms_that_overflow_together_are_inf_not_nan(dtype, backend):
    """expm1(x)/x's slope exp(x)/x - expm1(x)/x**2, and (exp(a*x) - 1)/a's gradient in a,
    x*exp(a*x)/a - expm1(a*x)/a**2: both terms overflow where exp does, inf - inf = NaN
    where the truth is inf (from x = 89 in float32).  Collected in exp(u) past their
    approximants: +inf there, and within 8 ULP of mpmath below the overflow."""
    if backend == "triton" and dtype == torch.float64:
        pytest.skip("kernels: float32")
    top = 88.0 if dtype == torch.float32 else 709.0
    beyond = [100.0, 1e4, 1e30] if dtype == torch.float32 else [750.0, 1e4, 1e300]
    fn = actgen.compile("(exp(x) - 1)/x", name="expm1_ratio").expm1_ratio
    x = torch.tensor([-1e30, -50.0, -3.0, 3.0, 40.0, top - 8.0] + beyond, dtype=dtype, requires_grad=True)
    (g,) = torch.autograd.grad(fn(x).sum(), x)
    big = torch.finfo(dtype).max

    def check(v, got, want):
        want = float(want)
        if abs(want) > big:         # (past the dtype's range the truth is inf)
            want = math.copysign(math.inf, want)
        assert got == want if math.isinf(want) else _close(got, want, dtype), (v, got, want)

    with mpmath.workdps(50):
        for v, got in zip(x.tolist(), g.tolist()):
            check(v, got, (mp(v) * mpmath.exp(mp(v)) - mpmath.expm1(mp(v))) / mp(v) ** 2)
    scaled = actgen.compile("(exp(a*x) - 1)/a", name="exp_scaled", params={"a": 0.5}).exp_scaled
    for v in [-300.0, 10.0, 2 * top - 20.0] + [2 * b for b in beyond]:
        # one element a call: a param's gradient is a sum, and 0 * another element's inf is NaN
        a = torch.tensor([0.5], dtype=dtype, requires_grad=True)
        (ga,) = torch.autograd.grad(scaled(torch.tensor([v], dtype=dtype), a).sum(), a)
        with mpmath.workdps(50):
            check(v, ga.item(), 2 * mp(v) * mpmath.exp(mp(v) / 2) - 4 * mpmath.expm1(mp(v) / 2))


def test_a_param_times_a_squaring_branch_takes_the_param_first(backend):
    """star_relu, scale*relu(x)**2 + bias, at a scale below its initial value: scale*x*x is
    (scale*x)*x, finite up to 7.4e19 at scale = 1/16 in float32, where x*x overflowed from
    1.8e19; its gradient in scale, relu(x)**2, is inf there as it should be.  Against mpmath."""
    x = torch.tensor([2.8e19, 5e19, 7e19, 1.5, -1e20], requires_grad=True)
    scale = torch.tensor([0.0625], requires_grad=True)
    bias = torch.tensor([-0.5], requires_grad=True)
    y = actgen.ops.star_relu(x, scale, bias)
    gx, gs, gb = torch.autograd.grad(y, [x, scale, bias], torch.ones_like(y))
    truth = [float(mp(0.0625) * max(mp(v), 0) ** 2 - mp(0.5)) for v in x.tolist()]
    slope = [float(mp(0.125) * max(mp(v), 0)) for v in x.tolist()]
    assert all(_close(got, want, torch.float32) for got, want in zip(y.tolist(), truth)), (y, truth)
    assert all(_close(got, want, torch.float32) for got, want in zip(gx.tolist(), slope)), (gx, slope)
    assert gs.item() == math.inf and gb.item() == 5.0
