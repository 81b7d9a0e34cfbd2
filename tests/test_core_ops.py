"""Every built-in op against its formula written as plain torch ops (values and gradients).

The reference (tests/_reference.py) is the spec's formula, as parsed and before actgen's
rewrites, evaluated with torch ops in float64 and differentiated by torch's autograd.  Each
op runs on the eager fallback in float64 and on the Triton kernels (under the interpreter
here) in float32 and bfloat16, with random inputs, params away from their init and a random
grad_output; input gradients and param gradients (reduced per channel) are compared.
gradcheck and gradgradcheck (float64) cover first and second derivatives, forward-mode AD
(batched gradients through torch.func: test_core_autograd.py).
"""
from __future__ import annotations

import importlib
import zlib

import pytest
import torch

import actgen.ops as ops
from actgen.runtime import use_backend

from _reference import SPECS, reference_call

NAMES = sorted(SPECS)
STARTER = ["relu", "leaky_relu", "prelu", "elu", "gelu", "gelu_tanh", "silu", "mish", "softplus",
           "hardswish", "swiglu", "custom_smooth", "soft_clip", "learnable_activation", "polynomial",
           "adaptive_mixture"]

# (backend, input dtype, param dtype): params stay float32 under bfloat16 inputs, as a
# module's parameters do in mixed precision.
RUNS = [("torch", torch.float64, torch.float64), ("triton", torch.float32, torch.float32),
        ("triton", torch.bfloat16, torch.float32)]
TOL = {  # (rtol, atol) of outputs and input gradients; param gradients are sums, see below
    torch.float64: (1e-9, 1e-11), torch.float32: (2e-5, 2e-6), torch.bfloat16: (8e-3, 1e-5),
}
# Domains: inputs where the formula is defined and well away from overflow.
INPUT_SCALE = {"soft_exponential": 0.5, "tanh_exp": 1.0}


def _generator(name, salt=0):
    return torch.Generator().manual_seed(zlib.crc32(name.encode()) + salt)


def make_case(name, dtype, param_dtype, channels=5, shape=None):
    """Inputs (f64 and dtype, with the same values), params (f64 and param_dtype) for a spec."""
    spec = SPECS[name]
    g = _generator(name)
    if shape is None:
        shape = (3, channels, 7) if spec.per_channel else (5, 37)
    scale = INPUT_SCALE.get(name, 2.0)
    inputs = [(torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(dtype) for _ in spec.inputs]
    params = []
    for p in spec.params:
        n = channels if p.per_channel else 1
        params.append((p.init + 0.1 * torch.randn(n, generator=g, dtype=torch.float64)).to(param_dtype))
    return spec, inputs, params


@pytest.mark.parametrize("backend,dtype,param_dtype", RUNS, ids=["fallback-f64", "kernel-f32", "kernel-bf16"])
@pytest.mark.parametrize("name", NAMES)
def test_values_and_gradients_match_the_formula_in_plain_torch(name, backend, dtype, param_dtype):
    spec, inputs, params = make_case(name, dtype, param_dtype)
    fn = getattr(ops, name)
    xs = [t.clone().requires_grad_() for t in inputs]
    ps = [p.clone().requires_grad_() for p in params]
    with use_backend(backend):
        y = fn(*xs, *ps)
    assert y.dtype == dtype and y.shape == inputs[0].shape
    gy = torch.randn(y.shape, generator=_generator(name, 1), dtype=torch.float64).to(dtype)
    y.backward(gy)

    rxs = [t.double().requires_grad_() for t in inputs]
    rps = [p.double().requires_grad_() for p in params]
    ry = reference_call(spec, rxs, rps, {})
    ry.backward(gy.double())

    rtol, atol = TOL[dtype]
    torch.testing.assert_close(y.double(), ry.detach(), rtol=rtol, atol=atol)
    for a, r in zip(xs, rxs):
        assert a.grad.dtype == dtype
        torch.testing.assert_close(a.grad.double(), r.grad, rtol=rtol, atol=atol)
    for p, r in zip(ps, rps):
        assert p.grad.dtype == param_dtype and p.grad.shape == p.shape
        # a sum over every element: float32 accumulation error grows with the count
        p_rtol, p_atol = (1e-9, 1e-9) if param_dtype == torch.float64 else (1e-4, 1e-4 * y.numel() ** 0.5)
        torch.testing.assert_close(p.grad.double(), r.grad, rtol=p_rtol, atol=p_atol)


@pytest.mark.parametrize("name,backend,dtype,param_dtype",
                         [(n, *RUNS[0]) for n in NAMES] + [(n, *RUNS[1]) for n in STARTER])
def test_a_channels_last_input_keeps_its_layout(name, backend, dtype, param_dtype):
    """A channels_last input (per-channel params on dim 1, as for a conv's output), on the
    fallback (every op) and the kernels (the starter library): the values and gradients of
    the formula in plain torch, and the output and input gradients with the input's strides
    (an op with random draws: a contiguous output)."""
    spec, inputs, params = make_case(name, dtype, param_dtype, shape=(2, 5, 3, 4))
    inputs = [t.to(memory_format=torch.channels_last) for t in inputs]
    xs = [t.clone().requires_grad_() for t in inputs]
    assert not xs[0].is_contiguous()
    ps = [p.clone().requires_grad_() for p in params]
    with use_backend(backend):
        y = getattr(ops, name)(*xs, *ps)
        gy = torch.randn(y.shape, generator=_generator(name, 1), dtype=torch.float64).to(dtype)
        gy = gy.to(memory_format=torch.channels_last)
        grads = torch.autograd.grad(y, xs + ps, gy)
    drawn = importlib.import_module(f"actgen.ops.{name}")._OP.n_draws
    if drawn:
        assert y.is_contiguous()
    else:
        assert all(t.stride() == xs[0].stride() for t in (y, *grads[: len(xs)]))
    rxs = [t.double().requires_grad_() for t in inputs]
    rps = [p.double().requires_grad_() for p in params]
    ry = reference_call(spec, rxs, rps, {})
    rgrads = torch.autograd.grad(ry, rxs + rps, gy.double())
    rtol, atol = TOL[dtype]
    torch.testing.assert_close(y.double(), ry.detach(), rtol=rtol, atol=atol)
    for a, r in zip(grads, rgrads):
        torch.testing.assert_close(a.double(), r, rtol=rtol, atol=max(atol, 1e-4 if dtype == torch.float32 else atol))


def _gradcheck_case(name):
    spec, inputs, params = make_case(name, torch.float64, torch.float64, channels=3, shape=None)
    small = [t[:2, :3].clone() if not spec.per_channel else t[:2, :, :2].clone() for t in inputs]
    return [t.requires_grad_() for t in (*small, *params)]


@pytest.mark.parametrize("name", NAMES)
def test_gradcheck_and_gradgradcheck_fallback(name, torch_backend):
    fn = getattr(ops, name)
    args = _gradcheck_case(name)
    assert torch.autograd.gradcheck(fn, args, check_forward_ad=True)
    assert torch.autograd.gradgradcheck(fn, args)


@pytest.mark.parametrize("name", STARTER)
def test_gradcheck_and_gradgradcheck_kernels(name, triton_backend):
    fn = getattr(ops, name)
    args = _gradcheck_case(name)
    # the kernels compute float64 in float64 (their literals are float32: ~1e-8 relative)
    assert torch.autograd.gradcheck(fn, args, atol=1e-6, rtol=1e-4)
    assert torch.autograd.gradgradcheck(fn, args, atol=1e-6, rtol=1e-4)


def test_the_starter_library_is_built_in():
    missing = [n for n in STARTER if n not in SPECS or not hasattr(ops, n)]
    assert not missing
    assert [p.name for p in SPECS["prelu"].params] == ["weight"] and SPECS["prelu"].params[0].per_channel
    assert {c.name: c.default for c in SPECS["softplus"].constants} == {"beta": 1.0, "threshold": 20.0}
    assert SPECS["swiglu"].inputs == ("a", "b")
    assert [p.init for p in SPECS["polynomial"].params] == [0.0, 0.5, 0.0, 0.0]
