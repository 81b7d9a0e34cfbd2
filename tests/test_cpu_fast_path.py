"""The CPU fallback's chunked evaluation and its guard-free fast variant.

The fast variant runs where every input of a chunk is finite; it must give exactly what the
guarded functions give on the whole tensor (the path before chunking), with and without
inf/NaN in the input, on one chunk and on many (every way of cutting around the channel
dim), and agree with the plain-torch reference.
"""
import importlib
import math

import pytest
import torch

from actgen import runtime as rt
from actgen.runtime.activation import Activation, as_tensor, reduce_to_param

from _reference import SPECS, reference_call

FAST = sorted(
    name for name in SPECS
    if getattr(importlib.import_module(f"actgen.ops.{name}")._OP, "forward_torch_fast", None) is not None
    or getattr(importlib.import_module(f"actgen.ops.{name}")._OP, "derivatives_torch_fast", None) is not None
)
SPECIAL = [math.inf, -math.inf, math.nan, 0.0, -0.0, 1e30, -1e30, 88.0, -88.0, 1e-40]


def _op(name):
    return importlib.import_module(f"actgen.ops.{name}")._OP


def _guarded(op, inputs, params, constants, channel_dim, grad):
    """Forward and gradients from the guarded functions on whole tensors (no chunks, no fast variant)."""
    args = op._eager_args(inputs, params, constants, channel_dim)
    x = inputs[0]
    y = as_tensor(op.forward_torch(*args), x).to(x.dtype)
    derivs = op.derivatives_torch(*args)
    g = grad.to(args[0].dtype)
    grads = [(g * as_tensor(derivs[i], x)).to(t.dtype) for i, t in enumerate(inputs)]
    grads += [reduce_to_param(g * derivs[op.n_inputs + k], p, x.shape, channel_dim) for k, p in enumerate(params)]
    return y, grads


def _case(name, shape, special, dtype=torch.float64, seed=0):
    spec = SPECS[name]
    gen = torch.Generator().manual_seed(seed)
    inputs = [torch.randn(shape, generator=gen, dtype=dtype) * 3 for _ in spec.inputs]
    if special:
        flat = inputs[0].view(-1)
        for i, v in enumerate(SPECIAL):
            flat[(7 * i + 3) % flat.numel()] = v
    channels = shape[1] if len(shape) > 1 else 1
    params = []
    for p in spec.params:
        n = channels if p.per_channel else 1
        params.append(torch.full((n,), float(p.init), dtype=dtype) + 0.05 * torch.rand(n, generator=gen, dtype=dtype))
    constants = [float(c.default) for c in spec.constants]
    grad = torch.randn(shape, generator=gen, dtype=dtype)
    return spec, inputs, params, constants, grad


def _same(a, b):
    torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)


def _close(a, b):
    """Equal up to rounding: without its guards a product can be flattened into a different
    order (b * InfGuard(silu(a)) -> b*a*sigmoid(a)); NaN and inf exactly where they were."""
    assert torch.equal(torch.isnan(a), torch.isnan(b)) and torch.equal(torch.isinf(a), torch.isinf(b))
    finite = torch.isfinite(b)
    _same(a[~finite & ~torch.isnan(b)], b[~finite & ~torch.isnan(b)])
    torch.testing.assert_close(a[finite], b[finite], rtol=1e-13 if a.dtype == torch.float64 else 1e-5, atol=1e-300)


def _check_against_guarded(name, shape, special, chunk, monkeypatch, dtype=torch.float64, rtol=0.0):
    monkeypatch.setattr(Activation, "CHUNK_BYTES", chunk * (4 if dtype == torch.bfloat16 else dtype.itemsize))
    op = _op(name)
    spec, inputs, params, constants, grad = _case(name, shape, special, dtype)
    want_y, want_grads = _guarded(op, inputs, params, constants, 1, grad)
    with rt.use_backend("torch"):
        y = op.forward_impl(inputs, params, constants, 1)
        grads = op.backward_impl(grad, inputs, params, constants, 1, [True] * op.n_tensors)
    _close(y, want_y)
    for i, (got, want) in enumerate(zip(grads, want_grads)):
        if i < op.n_inputs:
            _close(got, want)
        else:   # param gradients are sums: chunked partial sums round differently
            torch.testing.assert_close(got, want, rtol=rtol or 1e-12, atol=1e-12 * float(grad.abs().sum()), equal_nan=True)


@pytest.mark.parametrize("special", [False, True], ids=["finite", "inf-nan"])
@pytest.mark.parametrize("name", FAST)
def test_fast_path_matches_guarded_path(name, special, monkeypatch):
    _check_against_guarded(name, (4, 3, 37), special, 1 << 16, monkeypatch)


@pytest.mark.parametrize("chunk", [1, 5, 40, 200], ids=lambda c: f"chunk{c}")
@pytest.mark.parametrize("special", [False, True], ids=["finite", "inf-nan"])
@pytest.mark.parametrize("name", ["prelu", "learnable_activation", "relu", "silu", "elu", "hardswish", "swiglu", "xielu"])
def test_chunks_match_guarded_path(name, special, chunk, monkeypatch):
    """Chunks of rows, of channels within a row and of runs within a channel."""
    _check_against_guarded(name, (3, 5, 16), special, chunk, monkeypatch)


@pytest.mark.parametrize("name", ["relu", "silu", "prelu", "learnable_activation"])
def test_bf16_matches_guarded_path(name, monkeypatch):
    _check_against_guarded(name, (2, 4, 64), True, 96, monkeypatch, dtype=torch.bfloat16, rtol=1e-2)


@pytest.mark.parametrize("name", ["elu", "celu", "selu", "softplus", "xielu", "hardswish"])
def test_branch_not_taken_overflowing_falls_back(name, monkeypatch):
    """Finite inputs whose unselected branch overflows (exp(1000)): the float-mask select gives
    NaN there, and the guarded function must take over, exactly."""
    monkeypatch.setattr(Activation, "CHUNK_BYTES", 8 * 8)
    op = _op(name)
    spec, inputs, params, constants, grad = _case(name, (2, 3, 8), False)
    inputs[0].view(-1)[::5] = 1000.0
    inputs[0].view(-1)[1::7] = -1000.0
    want_y, want_grads = _guarded(op, inputs, params, constants, 1, grad)
    with rt.use_backend("torch"):
        y = op.forward_impl(inputs, params, constants, 1)
        grads = op.backward_impl(grad, inputs, params, constants, 1, [True] * op.n_tensors)
    _close(y, want_y)
    for got, want in zip(grads[: op.n_inputs], want_grads):
        _close(got, want)


@pytest.mark.parametrize("special", [False, True], ids=["finite", "inf-nan"])
@pytest.mark.parametrize("name", ["relu", "silu", "gelu", "mish", "prelu", "learnable_activation", "swiglu", "elu", "hardswish"])
def test_fallback_matches_plain_torch_reference(name, special, monkeypatch):
    """Values and gradients against the formula in plain torch with autograd (float64)."""
    monkeypatch.setattr(Activation, "CHUNK_BYTES", 50 * 8)
    spec, inputs, params, constants, grad = _case(name, (3, 4, 20), special)
    for t in inputs:
        t.view(-1)[:: 11] = 1e6
        t.view(-1)[5:: 13] = -1e6
    leaves = [t.clone().requires_grad_() for t in (*inputs, *params)]
    want = reference_call(spec, leaves[: len(inputs)], leaves[len(inputs):], dict(zip([c.name for c in spec.constants], constants)))
    want_grads = torch.autograd.grad(want, leaves, grad, allow_unused=True)
    mod = importlib.import_module(f"actgen.ops.{name}")
    ours = [t.clone().requires_grad_() for t in (*inputs, *params)]
    with rt.use_backend("torch"):
        y = mod._OP.call(tuple(ours[: len(inputs)]), tuple(ours[len(inputs):]), tuple(constants), 1)
        got_grads = torch.autograd.grad(y, ours, grad)
    # the formula as written gives NaN at +-inf where the op gives the limit, and a branch's
    # value at NaN where the op gives NaN: compare where it is finite and the input is not NaN
    want = want.detach()
    nan_in = torch.isnan(inputs[0])
    assert torch.isnan(y)[nan_in].all()
    ok = torch.isfinite(want) & ~nan_in
    assert ok.sum() >= want.numel() - len(SPECIAL)
    torch.testing.assert_close(y[ok], want[ok], rtol=1e-10, atol=1e-12)
    for got, ref in zip(got_grads, want_grads):
        if ref is None:
            continue
        finite = torch.isfinite(ref) & ~nan_in if ref.shape == nan_in.shape else torch.isfinite(ref)
        torch.testing.assert_close(got[finite], ref[finite], rtol=1e-9, atol=1e-9)


def test_select_is_exact_where_finite():
    gen = torch.Generator().manual_seed(3)
    a = torch.randn(1000, generator=gen) * torch.logspace(-30, 30, 1000)
    b = torch.randn(1000, generator=gen) * torch.logspace(30, -30, 1000)
    m = rt.gt(torch.randn(1000, generator=gen), 0.0)
    _same(rt.select(m, a, b), torch.where(m > 0, a, b))
    _same(rt.select(m, a, 0.0), torch.where(m > 0, a, 0.0))
    _same(rt.select(m, 0.0, b), torch.where(m > 0, 0.0, b))
    _same(rt.select(m, 2.5, -1.5), torch.where(m > 0, 2.5, -1.5))
    assert m.dtype == torch.float32 and set(m.unique().tolist()) <= {0.0, 1.0}
    bad = b.clone()
    bad[m.bool()] = math.inf          # not taken where m is 1: the select is NaN there
    assert rt.finite_or_none(rt.select(m, a, bad)) is None


def test_masks_compare_both_ways():
    x = torch.tensor([-1.0, 0.0, 1.0])
    _same(rt.gt(x, 0.0), (x > 0).float())
    _same(rt.gt(0.0, x), (0 > x).float())
    _same(rt.le(x, 0.0), (x <= 0).float())
    _same(rt.ge(0.5, x), (0.5 >= x).float())
    _same(rt.mask_and(rt.gt(x, -0.5), rt.lt(x, 0.5)), torch.tensor([0.0, 1.0, 0.0]))
    _same(rt.mask_or(rt.gt(x, 0.5), rt.lt(x, -0.5)), torch.tensor([1.0, 0.0, 1.0]))
    _same(rt.mask_not(rt.gt(x, 0.0)), torch.tensor([1.0, 1.0, 0.0]))
