"""Modern activations of the catalogue against references written independently in plain torch.

Each reference is the published definition as people implement it (autograd for the
derivatives).  Values, input gradients and param gradients must agree in float64 on the
fallback and in float32 on the Triton kernels; gated modules split their input like
torch.nn.GLU.
"""
from __future__ import annotations

import math

import mpmath as mp
import pytest
import torch
import torch.nn.functional as F

import actgen.ops as ops
from actgen.runtime import use_backend

RUNS = [("torch", torch.float64), ("triton", torch.float32)]
TOL = {torch.float64: dict(rtol=1e-9, atol=1e-12), torch.float32: dict(rtol=3e-5, atol=3e-6)}
PTOL = {torch.float64: dict(rtol=1e-9, atol=1e-9), torch.float32: dict(rtol=1e-4, atol=1e-4)}


def xielu_reference(x, alpha_p, alpha_n, beta=0.5, eps=-1e-6):
    """The xIELU paper's reference code."""
    alpha_p = F.softplus(alpha_p)
    alpha_n = beta + F.softplus(alpha_n)
    return torch.where(x > 0, alpha_p * x * x + beta * x,
                       (torch.expm1(torch.min(x, torch.tensor(eps, dtype=x.dtype))) - x) * alpha_n + beta * x)


def pau_reference(x, a0, a1, a2, a3, a4, a5, b1, b2, b3, b4):
    """The safe PAU: P(x) / (1 + |b1||x| + |b2||x|^2 + |b3||x|^3 + |b4||x|^4)."""
    num = a0 + a1 * x + a2 * x**2 + a3 * x**3 + a4 * x**4 + a5 * x**5
    den = 1 + b1.abs() * x.abs() + b2.abs() * x.abs() ** 2 + b3.abs() * x.abs() ** 3 + b4.abs() * x.abs() ** 4
    return num / den


def soft_exponential_reference(x, alpha):
    a = alpha.item()
    if a == 0:
        return x + 0 * alpha
    if a < 0:
        return -torch.log(1 - alpha * (x + alpha)) / alpha
    return (torch.exp(alpha * x) - 1) / alpha + alpha


# name: (reference(x, *params), {param: value} (float32-exact), input scale)
SINGLE = {
    "quick_gelu": (lambda x: x * torch.sigmoid(1.702 * x), {}, 4),
    "relu_squared": (lambda x: F.relu(x) ** 2, {}, 4),
    "star_relu": (lambda x, scale, bias: scale * F.relu(x) ** 2 + bias, {"scale": 0.875, "bias": -0.375}, 4),
    "xielu": (xielu_reference, {"alpha_p": 0.25, "alpha_n": -1.0}, 4),
    "pau": (pau_reference, {"a0": 0.03125, "a1": 0.5, "a2": 1.625, "a3": 2.0, "a4": 0.9375, "a5": 0.15625,
                            "b1": -0.25, "b2": 4.0, "b3": 0.5, "b4": 0.3125}, 3),
    "hard_mish": (lambda x: 0.5 * x * (x + 2).clamp(min=0, max=2), {}, 3),
    "gaussian": (lambda x: torch.exp(-x**2), {}, 2),
    "sine": (torch.sin, {}, 6),
    "tanh_exp": (lambda x: x * torch.tanh(torch.exp(x)), {}, 3),
    "logish": (lambda x: x * torch.log(1 + torch.sigmoid(x)), {}, 4),
    "squareplus": (lambda x: (x + torch.sqrt(x * x + 4)) / 2, {}, 4),
    "serf": (lambda x: x * torch.erf(torch.log(1 + torch.exp(x))), {}, 4),
    "smish": (lambda x: x * torch.tanh(torch.log(1 + torch.sigmoid(x))), {}, 4),
    "elish": (lambda x: torch.where(x > 0, x * torch.sigmoid(x), torch.expm1(x) * torch.sigmoid(x)), {}, 4),
    "bent_identity": (lambda x: (torch.sqrt(x**2 + 1) - 1) / 2 + x, {}, 4),
    "laplace": (lambda x: 0.5 * (1 + torch.erf((x - math.sqrt(0.5)) / (math.sqrt(1 / (4 * math.pi)) * math.sqrt(2)))), {}, 2),
    "swish": (lambda x, beta: x * torch.sigmoid(beta * x), {"beta": 1.5}, 4),
    "lisht": (lambda x: x * torch.tanh(x), {}, 4),
    "golu": (lambda x: x * torch.exp(-torch.exp(-x)), {}, 3),
    "soft_exponential": (soft_exponential_reference, {"alpha": 0.625}, 2),
}


def _check(ours, ref, x, params, backend, dtype):
    xa = x.detach().clone().to(dtype).requires_grad_()
    xr = x.detach().clone().to(torch.float64).requires_grad_()
    pa = [torch.tensor([v], dtype=dtype, requires_grad=True) for v in params.values()]
    pr = [torch.tensor([v], dtype=torch.float64, requires_grad=True) for v in params.values()]
    with use_backend(backend):
        y = ours(xa, *pa)
    yr = ref(xr, *pr)
    gy = torch.randn(y.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    (y * gy.to(dtype)).sum().backward()
    (yr * gy).sum().backward()
    torch.testing.assert_close(y.double(), yr, **TOL[dtype])
    torch.testing.assert_close(xa.grad.double(), xr.grad, **TOL[dtype])
    for p, q in zip(pa, pr):
        torch.testing.assert_close(p.grad.double(), q.grad, **PTOL[dtype])


@pytest.mark.parametrize("backend,dtype", RUNS)
@pytest.mark.parametrize("name", sorted(SINGLE))
def test_single_input_against_reference(name, backend, dtype):
    ref, params, scale = SINGLE[name]
    x = torch.randn(257, dtype=torch.float64, generator=torch.Generator().manual_seed(len(name))) * scale
    x[:3] = torch.tensor([0.0, 1e-3, -1e-3])
    _check(getattr(ops, name), ref, x, params, backend, dtype)


@pytest.mark.parametrize("alpha", [-0.5, 0.0, 0.625])
def test_soft_exponential_across_alpha(alpha, backend):
    x = torch.linspace(-0.9, 3, 40, dtype=torch.float64)       # inside the domain for alpha = -0.5
    dtype = torch.float64 if backend == "torch" else torch.float32
    _check(ops.soft_exponential, soft_exponential_reference, x, {"alpha": alpha}, backend, dtype) if alpha else None
    a = torch.tensor([alpha], dtype=dtype, requires_grad=True)
    y = ops.soft_exponential(x.to(dtype), a)
    ref = soft_exponential_reference(x, torch.tensor([alpha], dtype=torch.float64))
    torch.testing.assert_close(y.double(), ref, **TOL[dtype])
    if alpha == 0:
        # d/dalpha at 0 is the limit from either side, 1 + x^2/2 (central difference of the two branches)
        # (central difference of the two branches, with mpmath at 50 digits and h = 1e-20)
        mp.mp.dps = 50
        h = mp.mpf(10) ** -20

        def branch(v, al):
            return -mp.log(1 - al * (v + al)) / al if al < 0 else (mp.exp(al * v) - 1) / al + al

        fd = torch.tensor([float((branch(mp.mpf(v), h) - branch(mp.mpf(v), -h)) / (2 * h)) for v in x.tolist()],
                          dtype=torch.float64)
        y.sum().backward()
        torch.testing.assert_close(a.grad.double(), fd.sum().reshape(1), **PTOL[dtype])


@pytest.mark.parametrize("alpha", [-0.01, -1e-4, -1e-8, 1e-8, 1e-4])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_soft_exponential_gradient_in_a_small_alpha(alpha, dtype, backend):
    """d/dalpha near alpha = 0, where alpha learns from: element by element within 8 ULP of
    mpmath (a central difference at 60 digits).  For alpha < 0, (2*alpha + x)/(alpha*(1 -
    alpha*(alpha + x))) + log1p(-alpha*(alpha + x))/alpha**2 is two terms of ~x/alpha that
    cancel: it was 3e7 ULP off at alpha = -1e-8 (and 639 at -0.001 in float32)."""
    if backend == "triton" and dtype == torch.float64:
        pytest.skip("kernels: float32")
    x = torch.tensor([-5.0, -1.0, -0.3, 0.0, 0.2, 1.0, 2.5, 10.0, 60.0], dtype=dtype)
    a = torch.tensor([alpha], dtype=dtype, requires_grad=True)
    y = ops.soft_exponential(x, a)
    got = [torch.autograd.grad(y[i], a, retain_graph=True)[0].item() for i in range(len(x))]
    av = mp.mpf(float(a.detach()))

    def f(v, al):
        return -mp.log1p(-al * (v + al)) / al if al < 0 else mp.expm1(al * v) / al + al

    eps = torch.finfo(dtype).eps
    with mp.workdps(60):
        h = abs(av) * mp.mpf(10) ** -25
        want = [float((f(mp.mpf(v), av + h) - f(mp.mpf(v), av - h)) / (2 * h)) for v in x.tolist()]
    bad = [(v, g, w) for v, g, w in zip(x.tolist(), got, want) if not abs(g - w) <= 8 * eps * abs(w)]
    assert not bad, bad


def test_soft_exponential_is_nan_outside_its_domain():
    x = torch.tensor([-3.0, 0.0])
    y = ops.soft_exponential(x, torch.tensor([-0.5]))     # defined for x > 1/alpha - alpha = -1.5
    assert torch.isnan(y[0]) and torch.isfinite(y[1])


def test_pau_starts_as_leaky_relu():
    """Initialised to the PAU paper's approximation of leaky ReLU (slope 0.01) on [-3, 3]."""
    x = torch.linspace(-3, 3, 601, dtype=torch.float64)
    err = (ops.PAU()(x) - F.leaky_relu(x, 0.01)).abs().max()
    assert err < 0.05, err
    assert len(list(ops.PAU().parameters())) == 10


def test_star_relu_init_normalises_a_standard_normal():
    """s * relu(x)^2 + b with s = 0.8944, b = -0.4472 has mean 0 and variance 1 for x ~ N(0, 1)."""
    m = ops.StarReLU()
    assert m.scale.item() == pytest.approx(0.8944, abs=1e-4) and m.bias.item() == pytest.approx(-0.4472, abs=1e-4)
    # E[relu(x)^2] = 1/2, E[relu(x)^4] = 3/2: mean s/2 + b = 0, variance s^2 (3/2 - 1/4) = 1
    s, b = m.scale.item(), m.bias.item()
    assert s / 2 + b == pytest.approx(0, abs=1e-6) and s * s * 1.25 == pytest.approx(1, abs=1e-6)


def test_xielu_init_gives_alphas_of_0_8():
    m = ops.XIELU()
    assert F.softplus(m.alpha_p).item() == pytest.approx(0.8, abs=1e-6)
    assert 0.5 + F.softplus(m.alpha_n).item() == pytest.approx(0.8, abs=1e-6)
    x = torch.linspace(-5, 5, 101)
    torch.testing.assert_close(m(x), xielu_reference(x, m.alpha_p.detach(), m.alpha_n.detach()))


def test_mpmath_values_of_a_few(torch_backend):
    """Values against mpmath at 50 digits where a float64 reference would itself cancel."""
    mp.mp.dps = 50
    xs = [-30.0, -8.0, -1e-4, 1e-4, 0.5, 8.0, 30.0]
    refs = {
        "squareplus": lambda x: (x + mp.sqrt(x * x + 4)) / 2,
        "bent_identity": lambda x: (mp.sqrt(x * x + 1) - 1) / 2 + x,
        "tanh_exp": lambda x: x * mp.tanh(mp.exp(x)),
        "golu": lambda x: x * mp.exp(-mp.exp(-x)),
        "logish": lambda x: x * mp.log(1 + 1 / (1 + mp.exp(-x))),
        "gaussian": lambda x: mp.exp(-x * x),
    }
    x = torch.tensor(xs, dtype=torch.float64)
    for name, f in refs.items():
        want = torch.tensor([float(f(mp.mpf(v))) for v in xs], dtype=torch.float64)
        torch.testing.assert_close(getattr(ops, name)(x), want, rtol=1e-13, atol=0, msg=name)


# --- gated --------------------------------------------------------------------------------------
GATED = {
    "swiglu": (lambda a, b: F.silu(a) * b, "SwiGLU"),
    "geglu": (lambda a, b: F.gelu(a) * b, "GEGLU"),
    "geglu_tanh": (lambda a, b: F.gelu(a, approximate="tanh") * b, "GEGLUTanh"),
    "reglu": (lambda a, b: F.relu(a) * b, "ReGLU"),
    "bilinear": (lambda a, b: a * b, "Bilinear"),
    "glu": (lambda a, b: a * torch.sigmoid(b), "GLU"),
}


@pytest.mark.parametrize("backend,dtype", RUNS)
@pytest.mark.parametrize("name", sorted(GATED))
def test_gated_against_reference(name, backend, dtype):
    ref, _ = GATED[name]
    g = torch.Generator().manual_seed(11)
    a = torch.randn(129, dtype=torch.float64, generator=g) * 3
    b = torch.randn(129, dtype=torch.float64, generator=g) * 3
    a[0] = 0.0
    aa, ba = a.clone().to(dtype).requires_grad_(), b.clone().to(dtype).requires_grad_()
    ar, br = a.clone().requires_grad_(), b.clone().requires_grad_()
    with use_backend(backend):
        y = getattr(ops, name)(aa, ba)
    yr = ref(ar, br)
    y.sum().backward()
    yr.sum().backward()
    torch.testing.assert_close(y.double(), yr, **TOL[dtype])
    torch.testing.assert_close(aa.grad.double(), ar.grad, **TOL[dtype])
    torch.testing.assert_close(ba.grad.double(), br.grad, **TOL[dtype])


@pytest.mark.parametrize("name", sorted(GATED))
@pytest.mark.parametrize("dim", [-1, 1])
def test_gated_module_splits_along_dim(name, dim, torch_backend):
    ref, cls = GATED[name]
    x = torch.randn(2, 6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(12))
    a, b = x.chunk(2, dim)
    torch.testing.assert_close(getattr(ops, cls)(dim=dim)(x), ref(a, b), rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError):
        getattr(ops, cls)(dim=-1)(torch.randn(3, 5))             # odd size: no halves
