"""The classic hand-written activations, as specs, against the same formulas written by hand.

Each reference is what people write today: a torch nn.Module with its params as
nn.Parameters and autograd for the derivatives.  Values, input gradients and param
gradients must agree in float64 on the fallback and in float32 on the Triton kernels.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import actgen.ops as ops
from actgen.runtime import use_backend


class CustomSmooth(nn.Module):
    def forward(self, x):
        return x * torch.tanh(torch.sqrt(x**2 + 1))


class ScaledActivation(nn.Module):
    def __init__(self, scale=1.0, shift=0.0):
        super().__init__()
        self.scale, self.shift = scale, shift

    def forward(self, x):
        return self.scale * F.relu(x + self.shift)


class ParametricActivation(nn.Module):
    def __init__(self, num_channels=1):
        super().__init__()
        self.alpha = nn.Parameter(torch.full((num_channels,), 0.25))

    def forward(self, x):
        alpha = self.alpha.view(-1, *([1] * (x.dim() - 2)))
        return torch.where(x > 0, x, alpha * x)


class SoftClip(nn.Module):
    def __init__(self, scale=1.0):
        super().__init__()
        self.scale = scale

    def forward(self, x):
        return self.scale * torch.tanh(x / self.scale)


class AdaptiveMixture(nn.Module):
    """softmax(w) . [relu(x), tanh(x), x(, sigmoid(x))]"""

    def __init__(self, four=False):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(4 if four else 3))

    def forward(self, x):
        parts = [F.relu(x), torch.tanh(x), x] + ([torch.sigmoid(x)] if len(self.w) == 4 else [])
        weights = torch.softmax(self.w, 0)
        return sum(w * p for w, p in zip(weights, parts))


class Polynomial(nn.Module):
    def __init__(self):
        super().__init__()
        self.coeffs = nn.Parameter(torch.tensor([0.0, 0.5, 0.0, 0.0]))

    def forward(self, x):
        a0, a1, a2, a3 = self.coeffs
        return a0 + a1 * x + a2 * x**2 + a3 * x**3


class LearnableActivation(nn.Module):
    def __init__(self, num_channels=1):
        super().__init__()
        self.alpha = nn.Parameter(torch.full((num_channels,), 0.25))
        self.scale = nn.Parameter(torch.ones(num_channels))
        self.shift = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        shape = (-1, *([1] * (x.dim() - 2)))
        alpha, scale = self.alpha.view(shape), self.scale.view(shape)
        return scale * torch.where(x > 0, x, alpha * x) + self.shift


class WellDocumented(nn.Module):
    def forward(self, x):
        return x * torch.tanh(torch.log(1 + torch.exp(x)))


def _inputs(dtype, shape=(3, 4, 17), seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64) * 3
    x.view(-1)[:5] = torch.tensor([0.0, -2.0, 2.0, 1e-3, -1e-3], dtype=torch.float64)   # a kink, small values
    return x.to(dtype)


RUNS = [("torch", torch.float64), ("triton", torch.float32)]
TOL = {torch.float64: dict(rtol=1e-10, atol=1e-12), torch.float32: dict(rtol=2e-5, atol=2e-6)}


def _compare(ours_fn, ours_params, ref_module, ref_grads, x, backend):
    """Forward, input gradient and param gradients of ours (functional) vs the reference module."""
    dtype = x.dtype
    xa, xr = x.clone().requires_grad_(), x.clone().to(torch.float64).requires_grad_()
    ps = [p.detach().clone().to(dtype).requires_grad_() for p in ours_params]
    with use_backend(backend):
        y = ours_fn(xa, *ps)
    ref_module.double()
    yr = ref_module(xr)
    gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    y.backward(gy.to(dtype))
    yr.backward(gy)
    torch.testing.assert_close(y.double(), yr, **TOL[dtype])
    torch.testing.assert_close(xa.grad.double(), xr.grad, **TOL[dtype])
    for p, rg in zip(ps, ref_grads()):
        torch.testing.assert_close(p.grad.double(), rg.reshape(p.shape).double(), rtol=1e-5 if dtype == torch.float32 else 1e-9, atol=1e-4 if dtype == torch.float32 else 1e-9)


@pytest.mark.parametrize("backend,dtype", RUNS)
def test_custom_smooth(backend, dtype):
    _compare(ops.custom_smooth, [], CustomSmooth(), lambda: [], _inputs(dtype), backend)


@pytest.mark.parametrize("backend,dtype", RUNS)
@pytest.mark.parametrize("scale,shift", [(1.0, 0.0), (2.5, -0.75)])
def test_scaled_activation(backend, dtype, scale, shift):
    _compare(lambda x: ops.scaled_activation(x, scale=scale, shift=shift), [],
             ScaledActivation(scale, shift), lambda: [], _inputs(dtype), backend)


@pytest.mark.parametrize("backend,dtype", RUNS)
def test_parametric_activation_per_channel(backend, dtype):
    ref = ParametricActivation(4)
    with torch.no_grad():
        ref.alpha.copy_(torch.tensor([0.375, -1.25, 0.75, 2.0]))
    _compare(ops.parametric_activation, [ref.alpha.float()], ref, lambda: [ref.alpha.grad], _inputs(dtype), backend)


@pytest.mark.parametrize("backend,dtype", RUNS)
@pytest.mark.parametrize("scale", [1.0, 3.0])
def test_soft_clip(backend, dtype, scale):
    _compare(lambda x: ops.soft_clip(x, scale=scale), [], SoftClip(scale), lambda: [], _inputs(dtype), backend)


@pytest.mark.parametrize("backend,dtype", RUNS)
@pytest.mark.parametrize("four", [False, True])
def test_adaptive_mixture(backend, dtype, four):
    ref = AdaptiveMixture(four)
    with torch.no_grad():
        ref.w.copy_(torch.tensor([0.375, -1.25, 0.75, 2.0][: len(ref.w)]))
    ours = ops.adaptive_mixture4 if four else ops.adaptive_mixture
    params = [ref.w[i: i + 1].detach().float() for i in range(len(ref.w))]
    x = _inputs(dtype)

    def ref_grads():
        return [ref.w.grad[i: i + 1] for i in range(len(ref.w))]

    _compare(ours, params, ref, ref_grads, x, backend)


@pytest.mark.parametrize("backend,dtype", RUNS)
def test_polynomial(backend, dtype):
    ref = Polynomial()
    with torch.no_grad():
        ref.coeffs.copy_(torch.tensor([0.125, 0.5, -0.25, 0.0625]))
    params = [ref.coeffs[i: i + 1].detach().float() for i in range(4)]
    _compare(ops.polynomial, params, ref, lambda: [ref.coeffs.grad[i: i + 1] for i in range(4)], _inputs(dtype), backend)


@pytest.mark.parametrize("backend,dtype", RUNS)
def test_learnable_activation(backend, dtype):
    ref = LearnableActivation(4)
    with torch.no_grad():
        ref.alpha.copy_(torch.tensor([0.25, 0.125, -0.375, 0.0]))
        ref.scale.copy_(torch.tensor([1.0, 2.0, 0.5, -1.0]))
        ref.shift.fill_(0.3125)
    params = [ref.alpha.detach().float(), ref.scale.detach().float(), ref.shift.detach().float()]
    _compare(ops.learnable_activation, params, ref, lambda: [ref.alpha.grad, ref.scale.grad, ref.shift.grad], _inputs(dtype), backend)


@pytest.mark.parametrize("backend,dtype", RUNS)
def test_well_documented_is_the_long_hand_mish(backend, dtype):
    _compare(ops.well_documented, [], WellDocumented(), lambda: [], _inputs(dtype), backend)
    x = _inputs(dtype, seed=1)
    with use_backend(backend):
        torch.testing.assert_close(ops.well_documented(x), ops.mish(x), rtol=4e-7 if dtype == torch.float32 else 1e-14, atol=1e-7)
        torch.testing.assert_close(ops.well_documented(x).double(), F.mish(x.double()), **TOL[dtype])


def test_modules_hold_their_params_as_the_hand_written_ones_do():
    """Learnable entries are modules with nn.Parameters of the right shapes and initial values."""
    m = ops.ParametricActivation(num_channels=5)
    assert [n for n, _ in m.named_parameters()] == ["alpha"] and m.alpha.shape == (5,)
    assert torch.all(m.alpha == 0.25)
    m = ops.LearnableActivation(num_channels=3)
    assert {n: tuple(p.shape) for n, p in m.named_parameters()} == {"alpha": (3,), "scale": (3,), "shift": (1,)}
    m = ops.Polynomial()
    assert [p.item() for p in m.parameters()] == [0.0, 0.5, 0.0, 0.0]
    x = torch.linspace(-3, 3, 13)
    torch.testing.assert_close(ops.AdaptiveMixture()(x), AdaptiveMixture()(x))
    torch.testing.assert_close(ops.AdaptiveMixture4()(x), AdaptiveMixture(True)(x))
    torch.testing.assert_close(ops.ScaledActivation(scale=2.0, shift=0.5)(x), ScaledActivation(2.0, 0.5)(x))
    torch.testing.assert_close(ops.SoftClip(scale=2.0)(x), SoftClip(2.0)(x))


def test_learnable_params_train(torch_backend):
    """A few steps of SGD move the params as they move the hand-written module's."""
    torch.manual_seed(0)
    x = torch.randn(64, 3, 5, dtype=torch.float64)
    target = torch.tanh(x) * 2
    ours, ref = ops.LearnableActivation(num_channels=3).double(), LearnableActivation(3).double()
    opt_a = torch.optim.SGD(ours.parameters(), lr=0.1)
    opt_b = torch.optim.SGD(ref.parameters(), lr=0.1)
    for _ in range(5):
        for m, opt in ((ours, opt_a), (ref, opt_b)):
            opt.zero_grad()
            ((m(x) - target) ** 2).mean().backward()
            opt.step()
    for name in ("alpha", "scale", "shift"):
        torch.testing.assert_close(getattr(ours, name), getattr(ref, name), rtol=1e-9, atol=1e-12)
