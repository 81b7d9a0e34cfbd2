"""The torch.nn activations of the catalogue against torch's own kernels.

Every element-wise activation of torch.nn has a drop-in in actgen.ops.  Values and
gradients are compared with torch's - at random points, at every kink and at the extremes
(+-30, +-100, +-1e4, +-inf, NaN) - in float64 and float32 on the eager fallback and in float32
and bfloat16 on the Triton kernels (under the interpreter here).

Where the two differ beyond rounding, the difference must be one listed in
TORCH_LESS_ACCURATE, and there actgen's result must be at least as close to the truth as
torch's, and close to it: the truth is the function written out by hand below and evaluated
with mpmath at 50 digits.  Every such place is a known inaccuracy of torch, named with it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import mpmath as mp
import pytest
import torch
import torch.nn.functional as F

import actgen.ops as ops
from actgen.runtime import use_backend

mp.mp.dps = 50
SELU_ALPHA = mp.mpf("1.6732632423543772848170429916717")
SELU_SCALE = mp.mpf("1.0507009873554804934193349852946")


def sig(u):
    return 1 / (1 + mp.exp(-u))


def sech2(u):
    return 1 / mp.cosh(u) ** 2


def sp(u):
    return u + mp.log1p(mp.exp(-u)) if u > 0 else mp.log1p(mp.exp(u))


@dataclass
class Case:
    """One torch activation: torch's function, the truth (f, df/dx written by hand, with torch's
    derivative at the kinks), its kinks and the constants to test it with."""

    name: str
    torch_fn: Callable
    f: Callable
    df: Callable
    kinks: Callable = lambda **kw: []
    variants: list = field(default_factory=lambda: [{}])


def _gelu_tanh_u(x):
    return mp.sqrt(2 / mp.pi) * (x + mp.mpf("0.044715") * x**3)


CASES = [
    Case("relu", F.relu, lambda x: max(x, 0), lambda x: 1 if x > 0 else 0, lambda: [0.0]),
    Case("relu6", F.relu6, lambda x: min(max(x, 0), 6), lambda x: 1 if 0 < x < 6 else 0, lambda: [0.0, 6.0]),
    Case("sigmoid", torch.sigmoid, sig, lambda x: sig(x) * sig(-x)),
    Case("tanh", torch.tanh, mp.tanh, lambda x: sech2(x)),
    Case("leaky_relu", F.leaky_relu, lambda x, negative_slope=0.01: x if x > 0 else negative_slope * x,
         lambda x, negative_slope=0.01: 1 if x > 0 else negative_slope, lambda **kw: [0.0],
         [{}, {"negative_slope": 0.2}]),
    Case("elu", F.elu, lambda x, alpha=1.0: x if x > 0 else alpha * mp.expm1(x),
         lambda x, alpha=1.0: 1 if x > 0 else alpha * mp.exp(x), lambda **kw: [0.0], [{}, {"alpha": 0.5}]),
    Case("celu", F.celu, lambda x, alpha=1.0: x if x > 0 else alpha * mp.expm1(x / alpha),
         lambda x, alpha=1.0: 1 if x > 0 else mp.exp(x / alpha), lambda **kw: [0.0], [{}, {"alpha": 0.7}]),
    Case("selu", F.selu, lambda x: SELU_SCALE * (x if x > 0 else SELU_ALPHA * mp.expm1(x)),
         lambda x: SELU_SCALE * (1 if x > 0 else SELU_ALPHA * mp.exp(x)), lambda: [0.0]),
    Case("gelu", F.gelu, lambda x: x * mp.erfc(-x / mp.sqrt(2)) / 2,
         lambda x: mp.erfc(-x / mp.sqrt(2)) / 2 + x * mp.exp(-x * x / 2) / mp.sqrt(2 * mp.pi)),
    Case("gelu_tanh", lambda x: F.gelu(x, approximate="tanh"), lambda x: x * sig(2 * _gelu_tanh_u(x)),
         lambda x: sig(2 * _gelu_tanh_u(x)) + x / 2 * sech2(_gelu_tanh_u(x)) * mp.sqrt(2 / mp.pi) * (1 + 3 * mp.mpf("0.044715") * x * x)),
    Case("silu", F.silu, lambda x: x * sig(x), lambda x: sig(x) * (1 + x * sig(-x))),
    Case("mish", F.mish, lambda x: x * mp.tanh(sp(x)), lambda x: mp.tanh(sp(x)) + x * sig(x) * sech2(sp(x))),
    Case("hardtanh", F.hardtanh, lambda x, min_val=-1.0, max_val=1.0: min(max(x, min_val), max_val),
         lambda x, min_val=-1.0, max_val=1.0: 1 if min_val < x < max_val else 0,
         lambda min_val=-1.0, max_val=1.0: [min_val, max_val], [{}, {"min_val": -0.5, "max_val": 2.0}]),
    Case("hardsigmoid", F.hardsigmoid, lambda x: 0 if x <= -3 else 1 if x >= 3 else x / 6 + mp.mpf(1) / 2,
         lambda x: mp.mpf(1) / 6 if -3 < x < 3 else 0, lambda: [-3.0, 3.0]),
    Case("hardswish", F.hardswish, lambda x: 0 if x <= -3 else x if x >= 3 else x * (x + 3) / 6,
         lambda x: 0 if x <= -3 else 1 if x >= 3 else (2 * x + 3) / 6, lambda: [-3.0, 3.0]),
    Case("softshrink", F.softshrink, lambda x, lambd=0.5: x - lambd if x > lambd else x + lambd if x < -lambd else 0,
         lambda x, lambd=0.5: 0 if -lambd <= x <= lambd else 1, lambda lambd=0.5: [-lambd, lambd],
         [{}, {"lambd": 0.75}]),
    Case("hardshrink", F.hardshrink, lambda x, lambd=0.5: x if abs(x) > lambd else 0,
         lambda x, lambd=0.5: 1 if abs(x) > lambd else 0, lambda lambd=0.5: [-lambd, lambd], [{}, {"lambd": 0.75}]),
    Case("tanhshrink", F.tanhshrink, lambda x: x - mp.tanh(x), lambda x: mp.tanh(x) ** 2),
    Case("softplus", F.softplus,
         lambda x, beta=1.0, threshold=20.0: x if beta * x > threshold else sp(beta * x) / beta,
         lambda x, beta=1.0, threshold=20.0: 1 if beta * x > threshold else sig(beta * x),
         lambda beta=1.0, threshold=20.0: [threshold / beta], [{}, {"beta": 2.0, "threshold": 10.0}]),
    Case("softsign", F.softsign, lambda x: x / (1 + abs(x)), lambda x: 1 / (1 + abs(x)) ** 2, lambda: [0.0]),
    Case("threshold", F.threshold, lambda x, threshold=0.0, value=0.0: x if x > threshold else value,
         lambda x, threshold=0.0, value=0.0: 1 if x > threshold else 0,
         lambda threshold=0.0, value=0.0: [threshold], [{"threshold": 0.5, "value": -2.0}, {"threshold": -1.0, "value": 3.0}]),
    Case("logsigmoid", F.logsigmoid, lambda x: -sp(-x), lambda x: sig(-x)),
    Case("rrelu", lambda x, lower=0.125, upper=1 / 3: F.rrelu(x, lower, upper, training=False),
         lambda x, lower=0.125, upper=1 / 3: x if x > 0 else (lower + upper) / 2 * x,
         lambda x, lower=0.125, upper=1 / 3: 1 if x > 0 else (lower + upper) / 2, lambda **kw: [0.0],
         [{}, {"lower": 0.1, "upper": 0.3}]),
]
CASE = {c.name: c for c in CASES}

# Where torch's own result is less accurate than the truth (actgen matches the truth there):
TORCH_LESS_ACCURATE = {
    "sigmoid": "torch's backward computes y * (1 - y): 1 - y cancels for x > 15 (actgen: sigmoid(x) * sigmoid(-x))",
    "tanh": "torch's backward computes 1 - y**2: it cancels for |x| > 4 and is 0 beyond 9 in float32 (actgen: sech^2)",
    "celu": "torch computes celu as elu with input_scale = 1/alpha rounded to float32, so its float64 gradient is off by ~1e-8 for alpha = 0.7",
    "gelu": "torch computes 1 + erf(x/sqrt(2)): it cancels for x < 0 and is 0 below x = -5.9 in float32 (actgen: erfc(-x/sqrt(2))); "
            "its float32 CPU kernel is also off by ~1e-4 relative around x = -3",
    "gelu_tanh": "torch computes 1 + tanh(u): it cancels for x < 0 and is 0 below x = -5 (actgen: 2 * sigmoid(2u))",
    "hardsigmoid": "torch's float64 backward uses 1/6 rounded to float32",
    "tanhshrink": "torch computes x - tanh(x), which cancels for small |x| (actgen: a Padé approximant for |x| < 2), "
                  "and its gradient as 1 - (1 - tanh^2)",
    "softsign": "torch's backward 1/(1+|x|) - x*sign(x)/(1+|x|)^2 cancels for large |x| (actgen: 1/(1+|x|)^2)",
    "logsigmoid": "torch's float32 kernel computes log(sigmoid(x)) losing accuracy for x > 5",
}
# bfloat16: torch's CPU backward works in bfloat16 (for sigmoid: y * (1 - y) with y rounded to
# 8 bits); actgen's kernels compute in float32 and round once.
BF16_NOTE = "torch's bfloat16 backward rounds intermediates to bfloat16; actgen rounds once from float32"

EXTREMES = [30.0, -30.0, 100.0, -100.0, 1e4, -1e4, math.inf, -math.inf, math.nan, 0.0]
RUNS = [  # (backend, dtype): the float64 fallback, float32 both ways, bfloat16 on the kernels
    ("torch", torch.float64), ("torch", torch.float32), ("triton", torch.float32), ("triton", torch.bfloat16),
]
TOL = {  # agreement with torch (rtol, atol)
    torch.float64: (1e-10, 1e-12), torch.float32: (1e-5, 1e-7), torch.bfloat16: (2e-2, 1e-5),
}
TRUTH_TOL = {  # closeness to the truth where torch is less accurate (rtol, atol)
    torch.float64: (1e-12, 1e-17), torch.float32: (4e-6, 3e-8), torch.bfloat16: (8e-3, 1e-38),
}


def points(case: Case, kw: dict, dtype: torch.dtype) -> torch.Tensor:
    """Random points, every kink and its neighbours in dtype, and the extremes."""
    g = torch.Generator().manual_seed(sum(map(ord, case.name)))
    pts = [torch.randn(64, generator=g, dtype=torch.float64) * 4]
    for k in case.kinks(**kw):
        kink = torch.tensor([k], dtype=torch.float64).to(dtype)
        pts.append(torch.cat([kink, torch.nextafter(kink, kink + 1), torch.nextafter(kink, kink - 1)]).double())
    pts.append(torch.tensor(EXTREMES, dtype=torch.float64))
    x = torch.cat(pts).to(dtype)
    if dtype == torch.bfloat16:
        # Triton's interpreter (the CPU stand-in for a GPU) mangles bfloat16 subnormals
        x = x[~((x != 0) & (x.abs() < torch.finfo(dtype).tiny))]
    return x


def truth(fn, x: torch.Tensor, kw: dict) -> torch.Tensor:
    """fn at every point with mpmath; at +-inf the limit, read off at +-1e30; NaN for NaN."""
    out = []
    for v in x.double().tolist():
        if math.isnan(v):
            out.append(math.nan)
            continue
        a = mp.mpf(10) ** 30 * (1 if v > 0 else -1) if math.isinf(v) else mp.mpf(v)
        r = fn(a, **{k: mp.mpf(c) for k, c in kw.items()})
        if math.isinf(v) and abs(r) > 1e25:
            out.append(math.copysign(math.inf, float(mp.sign(r))))
        elif math.isinf(v) and abs(r) < 1e-25:
            out.append(0.0)
        else:
            out.append(float(r))
    return torch.tensor(out, dtype=torch.float64)


def run_ours(name, x, kw, backend):
    x = x.clone().requires_grad_()
    with use_backend(backend):
        y = getattr(ops, name)(x, **kw)
        (g,) = torch.autograd.grad(y, x, torch.ones_like(y))
    return y.detach(), g


def run_torch(fn, x, kw):
    x = x.clone().requires_grad_()
    y = fn(x, **kw)
    (g,) = torch.autograd.grad(y, x, torch.ones_like(y))
    return y.detach(), g


def close(a, b, rtol, atol):
    return torch.isclose(a.double(), b.double(), rtol=rtol, atol=atol, equal_nan=True)


def check(name, what, x, ours, ref, true, dtype):
    """ours agrees with torch, or - where torch is listed as less accurate - with the truth."""
    ours, ref = ours.double(), ref.double()
    rounded = true.to(dtype).double()
    agree = close(ours, ref, *TOL[dtype])
    # the gradient at a NaN input is NaN (torch returns the derivative of an arbitrary branch there)
    nan_in = torch.isnan(x.double())
    if what == "df":
        assert torch.isnan(ours[nan_in]).all(), f"{name}: gradient at a NaN input must be NaN"
        agree |= nan_in
    else:
        assert torch.isnan(ours[nan_in]).all(), f"{name}: f(NaN) must be NaN"
    # torch computes inf * 0 or inf - inf at infinite inputs where the limit is finite
    torch_nan = torch.isnan(ref) & ~nan_in & torch.isfinite(true)
    bad = ~agree
    if not bad.any():
        return
    listed = name in TORCH_LESS_ACCURATE or dtype == torch.bfloat16 or bool(torch_nan[bad].all())
    where = [(x.double()[i].item(), ours[i].item(), ref[i].item(), true[i].item()) for i in bad.nonzero().flatten()[:5]]
    assert listed, f"{name} {what} {dtype}: differs from torch at (x, actgen, torch, truth) {where}"
    # finite exactly where the truth is finite; at least as accurate as torch; close to the truth
    assert torch.equal(torch.isfinite(ours[bad]), torch.isfinite(rounded[bad])), f"{name} {what}: finiteness {where}"
    err_ours = (ours[bad] - true[bad]).abs()
    err_torch = (ref[bad] - true[bad]).abs().nan_to_num(nan=math.inf)
    finite = torch.isfinite(true[bad])
    assert (err_ours[finite] <= err_torch[finite] * (1 + 1e-9) + 1e-300).all(), f"{name} {what}: less accurate than torch {where}"
    assert close(ours[bad], rounded[bad], *TRUTH_TOL[dtype]).all(), f"{name} {what}: far from the truth {where}"


@pytest.mark.parametrize("backend,dtype", RUNS, ids=[f"{b}-{str(d)[6:]}" for b, d in RUNS])
@pytest.mark.parametrize("name", sorted(CASE))
def test_matches_torch(name, backend, dtype):
    case = CASE[name]
    for kw in case.variants:
        x = points(case, kw, dtype)
        y, g = run_ours(name, x, kw, backend)
        ry, rg = run_torch(case.torch_fn, x, kw)
        assert y.dtype == dtype and g.dtype == dtype
        check(name, "f", x, y, ry, truth(case.f, x, kw), dtype)
        check(name, "df", x, g, rg, truth(case.df, x, kw), dtype)


@pytest.mark.parametrize("name", sorted(CASE))
def test_torchs_derivative_at_kinks(name, torch_backend):
    """At every kink value and derivative are torch's, to rounding (float64) - or, where torch
    is listed as less accurate, the truth's."""
    case = CASE[name]
    for kw in case.variants:
        kinks = torch.tensor(case.kinks(**kw), dtype=torch.float64)
        if not len(kinks):
            continue
        y, g = run_ours(name, kinks, kw, "torch")
        ry, rg = run_torch(case.torch_fn, kinks, kw)
        if name in TORCH_LESS_ACCURATE:
            ry, rg = truth(case.f, kinks, kw), truth(case.df, kinks, kw)
        torch.testing.assert_close(y, ry, rtol=1e-15, atol=0, msg=lambda m: f"{name} {kw} f at {kinks}: {m}")
        torch.testing.assert_close(g, rg, rtol=1e-15, atol=0, msg=lambda m: f"{name} {kw} df at {kinks}: {m}")


MODULES = {  # actgen.ops class -> (torch module, kwargs)
    "ReLU": (torch.nn.ReLU, {}), "ReLU6": (torch.nn.ReLU6, {}), "Sigmoid": (torch.nn.Sigmoid, {}),
    "Tanh": (torch.nn.Tanh, {}), "LeakyReLU": (torch.nn.LeakyReLU, {"negative_slope": 0.2}),
    "ELU": (torch.nn.ELU, {"alpha": 0.5}), "CELU": (torch.nn.CELU, {"alpha": 0.5}), "SELU": (torch.nn.SELU, {}),
    "GELU": (torch.nn.GELU, {}), "SiLU": (torch.nn.SiLU, {}), "Mish": (torch.nn.Mish, {}),
    "Hardtanh": (torch.nn.Hardtanh, {"min_val": -2.0, "max_val": 0.5}), "Hardsigmoid": (torch.nn.Hardsigmoid, {}),
    "Hardswish": (torch.nn.Hardswish, {}), "Softshrink": (torch.nn.Softshrink, {"lambd": 0.25}),
    "Hardshrink": (torch.nn.Hardshrink, {"lambd": 0.25}), "Tanhshrink": (torch.nn.Tanhshrink, {}),
    "Softplus": (torch.nn.Softplus, {"beta": 0.5, "threshold": 5.0}), "Softsign": (torch.nn.Softsign, {}),
    "Threshold": (torch.nn.Threshold, {"threshold": 0.1, "value": 20.0}), "LogSigmoid": (torch.nn.LogSigmoid, {}),
    "RReLU": (torch.nn.RReLU, {"lower": 0.2, "upper": 0.4}),
}


@pytest.mark.parametrize("cls", sorted(MODULES))
def test_module_is_a_drop_in(cls, torch_backend):
    """The nn.Module takes torch's keyword arguments and computes what torch's module does
    (in eval(): RReLU's random slopes in train() are compared below)."""
    torch_cls, kw = MODULES[cls]
    ours, theirs = getattr(ops, cls)(**kw).eval(), torch_cls(**kw).eval()
    x = torch.randn(4, 3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 3
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-10, atol=1e-12)


def test_gelu_tanh_module_is_gelu_approximate_tanh(torch_backend):
    x = torch.linspace(-8, 8, 101, dtype=torch.float64)
    torch.testing.assert_close(ops.GELUTanh()(x), torch.nn.GELU(approximate="tanh")(x), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_takes_torchs_approximate(approximate, backend):
    """GELU(approximate=...) and gelu(x, approximate=...) as torch's: values and gradients
    against torch's kernels, positionally as torch.nn.GELU('tanh') too, and torch's repr."""
    dtype = torch.float32 if backend == "triton" else torch.float64     # (torch's in float64: the reference)
    x = torch.linspace(-8, 8, 301, dtype=torch.float64)
    g = torch.randn(301, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-12)
    for ours, theirs in ((ops.GELU(approximate=approximate), torch.nn.GELU(approximate=approximate)),
                         (ops.GELU(approximate), torch.nn.GELU(approximate)),
                         (lambda t: ops.gelu(t, approximate=approximate), lambda t: F.gelu(t, approximate=approximate))):
        xa, xb = x.to(dtype, copy=True).requires_grad_(), x.clone().requires_grad_()
        ya, yb = ours(xa), theirs(xb)
        torch.testing.assert_close(ya.double(), yb, **tol)
        ya.backward(g.to(dtype))
        yb.backward(g)
        torch.testing.assert_close(xa.grad.double(), xb.grad, **tol)
    assert repr(ops.GELU(approximate=approximate)) == repr(torch.nn.GELU(approximate=approximate))


def test_gelu_refuses_an_unknown_approximate():
    with pytest.raises(ValueError, match="GELU: approximate must be one of 'none', 'tanh', got 'Tanh'"):
        ops.GELU(approximate="Tanh")
    with pytest.raises(ValueError, match="gelu: approximate must be one of 'none', 'tanh', got None"):
        ops.gelu(torch.ones(3), approximate=None)


def test_gelu_approximate_compiles_whole(torch_backend):
    """torch.compile(fullgraph=True) through GELU(approximate='tanh'): the mode is picked
    without a graph break."""
    m = ops.GELU(approximate="tanh")
    x = torch.randn(64, dtype=torch.float64)
    torch.testing.assert_close(torch.compile(m, fullgraph=True)(x), F.gelu(x, approximate="tanh"))


# --- rrelu: a random slope per element in training mode, as torch's ----------------------------
# For x < 0 the slope y/x must be a draw from U(lower, upper): within the bounds, with the mean
# and variance of U(lower, upper) to within 5 standard errors, and distributed as the slopes of
# torch's own F.rrelu(training=True) (two-sample Kolmogorov-Smirnov distance below its 0.1%
# critical value) and as U(lower, upper) itself (one-sample).  The input gradient must be the
# same slope - the backward drew the same values again - and 1 for x > 0.
LOWER, UPPER = 0.1, 0.3
RRELU_RUNS = [("torch", torch.float64, 1 << 20), ("torch", torch.float32, 1 << 20), ("triton", torch.float32, 1 << 17)]
KS_C = 1.95          # the Kolmogorov distribution's 0.1% critical value


def rrelu_training(backend, x, generator_seed):
    """y, dy/dx of actgen's rrelu in training mode (ones as grad_output)."""
    x = x.clone().requires_grad_()
    torch.manual_seed(generator_seed)
    with use_backend(backend):
        y = ops.rrelu(x, lower=LOWER, upper=UPPER, training=True)
        (g,) = torch.autograd.grad(y, x, torch.ones_like(y))
    return y.detach(), g


def ks_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """sup |F_a - F_b| of two samples' empirical CDFs."""
    a, b = a.double().sort().values, b.double().sort().values
    at = torch.cat([a, b])
    fa = torch.searchsorted(a, at, right=True) / len(a)
    fb = torch.searchsorted(b, at, right=True) / len(b)
    return (fa - fb).abs().max().item()


@pytest.mark.parametrize("backend,dtype,n", RRELU_RUNS, ids=[f"{b}-{str(d)[6:]}" for b, d, _ in RRELU_RUNS])
def test_rrelu_training_draws_slopes_from_uniform_lower_upper(backend, dtype, n):
    x = torch.randn(n, dtype=dtype, generator=torch.Generator().manual_seed(11)) * 3
    y, g = rrelu_training(backend, x, 12)
    neg, pos = x < 0, x > 0
    assert torch.equal(y[pos], x[pos]) and torch.equal(g[pos], torch.ones_like(g[pos]))
    slope = y[neg].double() / x[neg].double()
    m = slope.numel()
    eps = 1e-12 if dtype == torch.float64 else 2e-7          # y/x recovers the slope to rounding
    assert slope.min() >= LOWER * (1 - eps) and slope.max() <= UPPER * (1 + eps)
    width = UPPER - LOWER
    mean, var = (LOWER + UPPER) / 2, width**2 / 12
    assert abs(slope.mean().item() - mean) < 5 * math.sqrt(var / m)
    assert abs(slope.var().item() - var) < 5 * math.sqrt((width**4 / 80 - var**2) / m)
    # distributed as U(lower, upper), and as torch's own training-mode slopes
    u = ((slope.sort().values - LOWER) / width).clamp(0, 1)
    ranks = torch.arange(1, m + 1, dtype=torch.float64) / m
    assert max((ranks - u).abs().max().item(), (u - (ranks - 1 / m)).abs().max().item()) < KS_C / math.sqrt(m)
    torch.manual_seed(13)
    theirs = F.rrelu(x, LOWER, UPPER, training=True)
    torch_slope = theirs[neg].double() / x[neg].double()
    assert ks_distance(slope, torch_slope) < KS_C * math.sqrt(2 / m)
    # the gradient is the slope the forward drew: the backward drew the same value again
    rtol = 1e-12 if dtype == torch.float64 else 2e-7
    torch.testing.assert_close(g[neg].double(), slope, rtol=rtol, atol=0)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_rrelu_training_is_reproducible_with_manual_seed(backend):
    x = torch.randn(4, 3, 500, generator=torch.Generator().manual_seed(14))
    a, ga = rrelu_training(backend, x, 15)
    b, gb = rrelu_training(backend, x, 15)
    c, gc = rrelu_training(backend, x, 16)
    assert torch.equal(a, b) and torch.equal(ga, gb)
    neg = x < 0
    assert (a[neg] != c[neg]).float().mean() > 0.99 and (ga[neg] != gc[neg]).float().mean() > 0.99
    with use_backend(backend):         # two calls in a row draw differently
        torch.manual_seed(15)
        first, second = (ops.rrelu(x, lower=LOWER, upper=UPPER, training=True) for _ in range(2))
    assert torch.equal(first, a) and (first[neg] != second[neg]).float().mean() > 0.99


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_rrelu_training_derivative_at_zero_is_a_drawn_slope_as_torchs(backend):
    """torch draws a slope at x = 0 too (x <= 0) and its gradient there is that slope."""
    x = torch.zeros(2000)
    _, g = rrelu_training(backend, x, 17)
    xt = x.clone().requires_grad_()
    F.rrelu(xt, LOWER, UPPER, training=True).sum().backward()
    for grad in (g, xt.grad):
        assert grad.min() >= LOWER and grad.max() <= UPPER and grad.unique().numel() > 1000


def test_rrelu_module_draws_in_train_and_is_torchs_eval_in_eval(torch_backend):
    x = torch.linspace(-4, 4, 8001, dtype=torch.float64)
    ours, theirs = ops.RReLU(LOWER, UPPER), torch.nn.RReLU(LOWER, UPPER)
    assert ours.training
    neg = x < 0
    slope = ours(x)[neg] / x[neg]
    assert slope.min() >= LOWER and slope.max() <= UPPER and slope.unique().numel() > 3000
    torch.testing.assert_close(ours.eval()(x), theirs.eval()(x), rtol=1e-15, atol=0)
    torch.testing.assert_close(ops.rrelu(x, lower=LOWER, upper=UPPER), F.rrelu(x, LOWER, UPPER), rtol=1e-15, atol=0)
    again = ours.train()(x)[neg] / x[neg]
    assert (again != slope).float().mean() > 0.99


# --- prelu: learnable per-channel weight, state dicts, torch's constructor spelling ----------------
@pytest.mark.parametrize("backend,dtype", [("torch", torch.float64), ("triton", torch.float32)])
def test_prelu_matches_torch_per_channel(backend, dtype):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 7, dtype=dtype, generator=g) * 3
    x[0, :, 0] = 0.0                                   # the kink
    w = torch.tensor([0.25, -0.5, 1.5], dtype=torch.float32)
    xa, wa = x.clone().requires_grad_(), w.clone().requires_grad_()
    xt, wt = x.clone().requires_grad_(), w.clone().to(dtype).requires_grad_()
    with use_backend(backend):
        y = ops.prelu(xa, wa)
    yt = F.prelu(xt, wt)
    gy = torch.randn(y.shape, dtype=dtype, generator=g)
    y.backward(gy)
    yt.backward(gy)
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(y, yt, **tol)
    torch.testing.assert_close(xa.grad, xt.grad, **tol)
    torch.testing.assert_close(wa.grad.double(), wt.grad.double(), rtol=1e-5, atol=1e-5)


def test_prelu_state_dicts_load_both_ways():
    theirs = torch.nn.PReLU(num_parameters=3, init=0.1)
    with torch.no_grad():
        theirs.weight.copy_(torch.tensor([0.1, -0.2, 0.3]))
    ours = ops.PReLU(num_channels=3)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(ours(x), theirs(x))
    back = torch.nn.PReLU(num_parameters=3)
    back.load_state_dict(ours.state_dict())
    torch.testing.assert_close(back.weight, theirs.weight)
    assert set(ours.state_dict()) == set(theirs.state_dict()) == {"weight"}


def test_prelu_takes_torchs_constructor_arguments():
    ours = ops.PReLU(num_parameters=3, init=0.1)
    theirs = torch.nn.PReLU(num_parameters=3, init=0.1)
    torch.testing.assert_close(ours.weight.detach(), theirs.weight.detach())
    assert ours.weight.shape == (3,)
    assert ours.num_parameters == theirs.num_parameters == 3 and ops.PReLU().num_parameters == 1
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(ours(x), theirs(x))
    torch.testing.assert_close(ops.PReLU()(x), torch.nn.PReLU()(x))     # one shared weight, 0.25


# --- glu: a gated activation, split along dim as torch.nn.GLU ------------------------------------
@pytest.mark.parametrize("dim", [-1, 1, 0])
def test_glu_module_matches_torch(dim, backend):
    x = torch.randn(4, 6, 8, generator=torch.Generator().manual_seed(4)).requires_grad_()
    x2 = x.detach().clone().requires_grad_()
    y = ops.GLU(dim=dim)(x)
    yt = torch.nn.GLU(dim=dim)(x2)
    torch.testing.assert_close(y, yt, rtol=1e-5, atol=1e-6)
    y.sum().backward()
    yt.sum().backward()
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-5, atol=1e-6)


def test_glu_functional_takes_the_halves(backend):
    a, b = torch.randn(2, 5, 3, dtype=torch.float32, generator=torch.Generator().manual_seed(5)).unbind(0)
    torch.testing.assert_close(ops.glu(a, b), F.glu(torch.cat([a, b], -1), dim=-1), rtol=1e-5, atol=1e-6)
    extremes = torch.tensor([math.inf, -math.inf, 1e4, -1e4, 30.0])
    torch.testing.assert_close(ops.glu(extremes, -extremes), F.glu(torch.cat([extremes, -extremes]), dim=0), equal_nan=True)


@pytest.mark.parametrize("dim", [-1, 1, 0])
def test_gated_functionals_split_one_tensor_as_torchs_glu(dim, backend):
    """glu(x) and glu(x, dim=d) - or glu(x, d) positionally - are F.glu(x) and F.glu(x, d):
    one tensor split in halves (values and the gradient of the whole tensor); swiglu(x)
    likewise against the plain torch formula F.silu(a) * b on x's halves."""
    x = torch.randn(4, 6, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(6)) * 3
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    g = torch.randn_like(x).chunk(2, dim)[0]
    y, yt = ops.glu(x1, dim=dim), F.glu(x2, dim)
    torch.testing.assert_close(y, yt)
    torch.testing.assert_close(*(torch.autograd.grad(v, t, g)[0] for v, t in ((y, x1), (yt, x2))))
    y = ops.swiglu(x1, dim=dim)
    a, b = x2.chunk(2, dim)
    yt = F.silu(a) * b
    torch.testing.assert_close(y, yt)
    torch.testing.assert_close(*(torch.autograd.grad(v, t, g)[0] for v, t in ((y, x1), (yt, x2))))
    torch.testing.assert_close(ops.glu(x, dim), F.glu(x, dim))
    torch.testing.assert_close(ops.swiglu(x, dim), yt.detach())
    with pytest.raises(ValueError, match="odd"):
        ops.glu(torch.randn(3, 5), dim=dim if dim != 0 else 1)
    with pytest.raises(IndexError, match="dim 3 is out of range"):
        ops.swiglu(x, dim=3)
    # another dim given twice, positionally and as dim=, is refused as F.glu refuses it (it
    # split along the positional one; dim=-1 reads as the default); the same one twice is it
    other = (dim + 1) % 3
    if dim != -1:
        with pytest.raises(TypeError, match="the dim is given twice"):
            ops.glu(x, other, dim=dim)
        with pytest.raises(TypeError):
            F.glu(x, other, dim=dim)
    torch.testing.assert_close(ops.swiglu(x, dim, dim=dim), yt.detach())


FUNCTIONAL_ARGS = [  # (ours, torch's, positional arguments after the input, as torch's functionals take them)
    (ops.leaky_relu, F.leaky_relu, (0.2,)),
    (ops.elu, F.elu, (0.5,)),
    (ops.celu, F.celu, (0.7,)),
    (ops.hardtanh, F.hardtanh, (-0.5, 2.0)),
    (ops.softplus, F.softplus, (2.0, 10.0)),
    (ops.threshold, F.threshold, (0.5, -2.0)),
    (ops.hardshrink, F.hardshrink, (0.75,)),
    (ops.softshrink, F.softshrink, (0.75,)),
    (ops.rrelu, F.rrelu, (0.1, 0.3)),
    (ops.rrelu, F.rrelu, (0.1, 0.3, False)),
    (ops.prelu, F.prelu, (torch.tensor([0.1, -0.2, 0.3], dtype=torch.float64),)),
]


@pytest.mark.parametrize("ours,theirs,args", FUNCTIONAL_ARGS,
                         ids=[f"{o.__name__}{len(a)}" for o, _, a in FUNCTIONAL_ARGS])
def test_functionals_take_torchs_positional_arguments(ours, theirs, args, backend):
    """F.leaky_relu(x, 0.2), F.hardtanh(x, -0.5, 2.0), F.rrelu(x, lower, upper, training): the
    same call on actgen's functional gives torch's values and gradients."""
    x = torch.randn(2, 3, 50, dtype=torch.float64, generator=torch.Generator().manual_seed(8)) * 3
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y, yt = ours(x1, *args), theirs(x2, *args)
    torch.testing.assert_close(y, yt)
    torch.testing.assert_close(torch.autograd.grad(y.sum(), x1)[0], torch.autograd.grad(yt.sum(), x2)[0])


def test_prelu_takes_a_0dim_weight_as_torchs(backend):
    """F.prelu(x, w) with a 0-dim w (one slope for every channel): the same values and
    gradients, w's gradient 0-dim as w; a 2-D weight is still refused."""
    x = torch.randn(2, 3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(9)) * 3
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    w1, w2 = (torch.tensor(0.3, dtype=torch.float64, requires_grad=True) for _ in range(2))
    y, yt = ops.prelu(x1, w1), F.prelu(x2, w2)
    torch.testing.assert_close(y, yt)
    g = torch.randn_like(y)
    got, want = torch.autograd.grad(y, (x1, w1), g), torch.autograd.grad(yt, (x2, w2), g)
    assert got[1].shape == ()
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="must be 0-dim or 1-D"):
        ops.prelu(x, torch.ones(3, 1, dtype=torch.float64))


@pytest.mark.parametrize("ours,theirs,args,message", [
    (ops.hardtanh, F.hardtanh, (1.0, -1.0), "hardtanh: max_val must be greater than or equal to min_val"),
    (ops.celu, F.celu, (0.0,), "celu: alpha must not be 0"),
    (ops.rrelu, F.rrelu, (0.5, 0.1), "rrelu: lower must not exceed upper"),
    (ops.softshrink, F.softshrink, (-0.5,), "softshrink: lambd must be at least 0"),
], ids=["hardtanh", "celu", "rrelu", "softshrink"])
def test_constants_torch_refuses_are_refused(ours, theirs, args, message):
    """Constants torch's functionals refuse (hardtanh's min_val above max_val, celu's alpha
    0, rrelu's lower above upper, a negative softshrink lambd) are a ValueError with the
    spec's message (they gave values), from the functional and the Module's constructor;
    the bounds themselves are accepted, as torch's are."""
    x = torch.linspace(-2, 2, 9)
    with pytest.raises((RuntimeError, ValueError)):
        theirs(x, *args)
    with pytest.raises(ValueError, match=message):
        ours(x, *args)
    module = {ops.hardtanh: ops.Hardtanh, ops.celu: ops.CELU, ops.rrelu: ops.RReLU, ops.softshrink: ops.Softshrink}[ours]
    with pytest.raises(ValueError, match=message.replace(ours.__name__, module.__name__)):
        module(*args)
    edge = {ops.hardtanh: (0.5, 0.5), ops.celu: (-1.0,), ops.rrelu: (0.2, 0.2), ops.softshrink: (0.0,)}[ours]
    torch.testing.assert_close(ours(x, *edge), theirs(x, *edge))


def test_rrelu_takes_training_positionally(backend):
    """F.rrelu(x, lower, upper, True): training mode, each negative element's slope a draw in
    [lower, upper] (not their mean)."""
    x = -torch.rand(4000, dtype=torch.float64, generator=torch.Generator().manual_seed(9)) - 0.5
    slopes = ops.rrelu(x, 0.1, 0.3, True) / x
    assert slopes.min() >= 0.1 - 1e-12 and slopes.max() <= 0.3 + 1e-12
    assert slopes.std() > 0.05         # uniform on [0.1, 0.3]: 0.058; the mean alone: 0


@pytest.mark.parametrize("ours,theirs", [
    (ops.Threshold(0.5, 0.0), torch.nn.Threshold(0.5, 0.0)),
    (ops.Hardshrink(), torch.nn.Hardshrink()),
], ids=["Threshold", "Hardshrink"])
def test_a_zero_branch_is_a_positive_zero_as_torchs(ours, theirs, torch_backend):
    """Where a float mask picks a branch that is 0, the result is +0.0 as torch's (not the
    -0.0 of 0 * a negative input), in the fallback's fast variant's chunks and whole."""
    x = torch.cat([torch.tensor([-1.0, -0.0, 0.0, -3.0, 0.25, -0.25]), -torch.rand(300_000) * 4])
    want = theirs(x)
    got = ours(x)
    torch.testing.assert_close(got, want)
    assert torch.equal(torch.signbit(got), torch.signbit(want))


@pytest.mark.parametrize("ours,theirs", [
    (lambda: ops.LeakyReLU(0.2, True), lambda: torch.nn.LeakyReLU(0.2, True)),
    (lambda: ops.Threshold(0.1, 20.0), lambda: torch.nn.Threshold(0.1, 20.0)),
    (lambda: ops.Hardtanh(-2.0, 0.5), lambda: torch.nn.Hardtanh(-2.0, 0.5)),
    (lambda: ops.Softplus(2.0, 10.0), lambda: torch.nn.Softplus(2.0, 10.0)),
    (lambda: ops.ELU(0.5, inplace=True), lambda: torch.nn.ELU(0.5, inplace=True)),
    (lambda: ops.ReLU(True), lambda: torch.nn.ReLU(True)),
    (lambda: ops.RReLU(0.1, 0.3).eval(), lambda: torch.nn.RReLU(0.1, 0.3).eval()),
], ids=["LeakyReLU", "Threshold", "Hardtanh", "Softplus", "ELU", "ReLU", "RReLU"])
def test_modules_take_torchs_positional_arguments_and_inplace(ours, theirs, torch_backend):
    """Constructed as torch's modules are, positionally too; inplace is accepted (out-of-place result)."""
    x = torch.randn(3, 40, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) * 3
    want = theirs()(x.clone())
    keep = x.clone()
    torch.testing.assert_close(ours()(x), want)
    torch.testing.assert_close(x, keep)
