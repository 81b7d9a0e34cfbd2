"""Huge finite inputs: where the truth is finite, f and f' stay finite and accurate, though the
formula as written passes through an overflow there (x**2 at |x| > 1.8e19 in float32, x**3 at
7e12, inf * 0 = NaN).  The compiler's answers: a clamp of the input where the value has
reached its limit (actgen.derive.saturate), hypot for sqrt(x**2 + c), Horner form for
polynomials, and products printed as paired ratios.  Checked on the fallback (float32,
float64) and the kernels (interpreter, float32) against mpmath at 50 digits."""
import math

import mpmath
import pytest
import torch

import actgen
from actgen.derive import Saturate, derive
from actgen.spec import load_spec

HUGE = [1e5, 3e9, 1e13, 3e19, 1e25, 1e30, 1e37]
mp = mpmath.mpf


def _truth(fn, x: float) -> float:
    with mpmath.workdps(50):
        return float(fn(mp(x)))


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
}


@pytest.fixture(scope="module")
def modules():
    out = {}
    for name, (formula, params, constants, *_rest) in CASES.items():
        out[name] = actgen.compile(formula, name=name, params=params or None, constants=constants or None)
    return out


def _close(got: float, truth: float, dtype) -> bool:
    if truth == 0:
        return got == 0 or abs(got) < 1e-30
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


def test_generated_code_says_where_it_clamps():
    """The module header names each clamp; the kernels keep NaN through it."""
    import importlib
    import inspect

    gelu = importlib.import_module("actgen.ops.gelu")
    assert "df/dx: x is clamped where x <= -64 or x >= 16" in gelu.__doc__
    source = inspect.getsource(gelu)
    assert "tl.clamp(x, -64.0, 16.0, propagate_nan=tl.PropagateNan.ALL)" in source
    assert "_rt.clamp(x, -64.0, 16.0)" in source
