"""The runtime contract of generated ops: shapes, layouts, dtypes, special values, errors.

Every check runs on the eager fallback and on the Triton kernels (interpreter), against
torch's own functions or the formula written in plain torch.
"""
from __future__ import annotations

import functools
import importlib
import math
from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import actgen.ops as ops
from actgen import runtime as rt
from actgen.runtime import HAS_TRITON, launch, use_backend

from _reference import SPECS, reference_call

TILE = launch.TILE


def _check(fn, ref, *inputs, rtol=1e-5, atol=1e-6):
    """Value and every input gradient of fn vs ref (float64 on float64 copies)."""
    xs = [t.detach().clone().requires_grad_() for t in inputs]
    rs = [t.detach().double().requires_grad_() for t in inputs]
    y, r = fn(*xs), ref(*rs)
    torch.testing.assert_close(y.double(), r, rtol=rtol, atol=atol)
    g = torch.randn(y.shape, dtype=torch.float64)
    y.backward(g.to(y.dtype))
    r.backward(g)
    for a, b in zip(xs, rs):
        torch.testing.assert_close(a.grad.double(), b.grad, rtol=rtol, atol=atol)


# --- shapes --------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(0,), (3, 0, 5), (1,), (), (TILE - 1,), (TILE,), (TILE + 1,),
                                   (7, 13, 311), (2 * TILE + 17, 3)], ids=str)
def test_any_shape(shape, backend):
    x = torch.randn(shape)
    _check(ops.mish, F.mish, x)


def test_large_odd_size(backend):
    n = 3 * TILE * 5 + 7 if backend == "triton" else 1_000_003
    x = torch.randn(n) * 4
    _check(ops.gelu_tanh, lambda t: F.gelu(t, approximate="tanh"), x)


@pytest.mark.parametrize("make", [
    lambda x: x.t(),                       # transposed
    lambda x: x[:, ::3],                   # strided columns
    lambda x: x.unsqueeze(0).expand(3, -1, -1),   # stride 0
], ids=["transposed", "sliced", "expanded"])
def test_non_contiguous_inputs(make, backend):
    base = torch.randn(37, 66)
    x = make(base)
    assert not x.is_contiguous()
    y = ops.silu(x)
    torch.testing.assert_close(y, F.silu(x))
    _check(ops.silu, F.silu, x)


def test_gated_inputs_of_different_layouts(backend):
    a = torch.randn(40, 30).t()
    b = torch.randn(30, 40)
    _check(ops.swiglu, lambda u, v: F.silu(u) * v, a, b)


@pytest.mark.parametrize("shape,dim", [((6, 40), -1), ((3, 4, 34), -1), ((5, 8, 3), 1), ((8, 2, 5), 0),
                                       ((12, 2 * 300), -1)], ids=str)
def test_gated_modules_take_the_halves_of_one_tensor_in_place(shape, dim, backend):
    """A gated module's halves of its input (rows 2N apart, or two contiguous halves): the
    values and the input's gradient of F.silu(a) * b in float64, with no concatenation of the
    halves' gradients (the op writes them as the halves of one buffer, which is the input's
    gradient as it is)."""
    x = torch.randn(shape, dtype=torch.float64) * 3
    for module, ref in ((ops.SwiGLU(dim), lambda u, v: F.silu(u) * v), (ops.GEGLU(dim), lambda u, v: F.gelu(u) * v)):
        dtype = torch.float32 if backend == "triton" else torch.float64
        xs = x.to(dtype).clone().requires_grad_()
        y = module(xs)
        g = torch.randn(y.shape, dtype=torch.float64)
        with torch.profiler.profile() as prof:
            y.backward(g.to(dtype))
        assert "aten::cat" not in {e.key for e in prof.key_averages()}, "the halves' gradients were concatenated"
        xr = x.clone().requires_grad_()
        r = ref(*xr.chunk(2, dim))
        r.backward(g)
        tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(y.double(), r.detach(), **tol)
        torch.testing.assert_close(xs.grad.double(), xr.grad, **tol)


def test_gated_modules_second_derivatives_through_the_halves(torch_backend):
    """create_graph through a gated module's halves: the second derivatives as gradgradcheck
    finds them (the halves' gradients are concatenated there, in the graph)."""
    x = torch.randn(4, 12, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(ops.SwiGLU(), (x,))
    assert torch.autograd.gradgradcheck(ops.GEGLU(0), (x,))


@pytest.mark.parametrize("rows", [16, 600], ids=["one_piece", "chunks"])
def test_the_fallback_allocates_the_halves_gradient_once(rows, torch_backend, monkeypatch):
    """Where torch's kernel declines a gated backward (float32 swiglu's window ends at 4: here
    most inputs are past it), the derived code writes into the buffer the native attempt
    allocated, not a second one - in one piece and chunk by chunk alike."""
    from actgen.runtime import activation
    made = []
    real = activation.halves_grads
    monkeypatch.setattr(activation, "halves_grads", lambda a, b: made.append(1) or real(a, b))
    x = (torch.randn(rows, 2 * 512) + 6).requires_grad_()
    y = ops.SwiGLU()(x)
    g = torch.randn(y.shape)
    y.backward(g)
    assert len(made) == 1
    a, b = x.detach().double().chunk(2, -1)
    s = torch.sigmoid(a)
    torch.testing.assert_close(x.grad[:, :512].double(), g.double() * b * s * (1 + a * (1 - s)), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x.grad[:, 512:].double(), g.double() * a * s, rtol=1e-5, atol=1e-5)


def test_gated_kernels_read_the_halves_where_they_are(triton_backend, monkeypatch):
    """The kernels read a gated op's halves of one tensor in place (no contiguous copies) and
    write their gradients as the halves of one buffer."""
    seen = []
    launch_ = launch.LAUNCH
    monkeypatch.setattr(launch, "LAUNCH", lambda kernel, grid, args, *rest: seen.append(args) or launch_(kernel, grid, args, *rest))
    x = torch.randn(16, 96, requires_grad=True)
    a, b = x.chunk(2, -1)
    y = ops.swiglu(a, b)
    ga, gb = torch.autograd.grad(y, (a, b), torch.ones_like(y))
    forward_args, backward_args = seen
    assert [t.data_ptr() for t in forward_args[:2]] == [a.data_ptr(), b.data_ptr()]
    assert [t.data_ptr() for t in backward_args[1:3]] == [a.data_ptr(), b.data_ptr()]
    assert gb.data_ptr() == ga.data_ptr() + 48 * ga.element_size() and ga.stride() == (96, 1)
    torch.testing.assert_close(ga, torch.sigmoid(a) * (1 + a * torch.sigmoid(-a)) * b)
    torch.testing.assert_close(gb, F.silu(a))


def test_a_half_without_a_gradient_is_zeros_in_the_tensors(backend):
    """Only one half of a split used: the other half's part of the gradient is zeros."""
    from actgen.runtime import split_halves
    x = torch.randn(4, 10, requires_grad=True)
    a, b = split_halves(x, -1, "test")
    (ops.silu(a) * 2).sum().backward()
    u = x.detach()[:, :5]
    torch.testing.assert_close(x.grad[:, 5:], torch.zeros(4, 5))
    torch.testing.assert_close(x.grad[:, :5], 2 * torch.sigmoid(u) * (1 + u * torch.sigmoid(-u)))


@pytest.mark.parametrize("channel_dim", [1, -1])
@pytest.mark.parametrize("name", ["prelu", "learnable_activation"])
def test_4d_per_channel(name, channel_dim, backend):
    spec = SPECS[name]
    C = 6
    shape = (2, C, 5, 7) if channel_dim == 1 else (2, 5, 7, C)
    x = torch.randn(shape, dtype=torch.float64)
    g = torch.Generator().manual_seed(3)
    params = [(p.init + 0.3 * torch.randn(C if p.per_channel else 1, generator=g, dtype=torch.float64)) for p in spec.params]
    fn = getattr(ops, name)
    dtype = torch.float32 if backend == "triton" else torch.float64
    xs = x.to(dtype).clone().requires_grad_()
    ps = [p.to(dtype).clone().requires_grad_() for p in params]
    y = fn(xs, *ps, channel_dim=channel_dim)
    rx = x.clone().requires_grad_()
    rp = [p.clone().requires_grad_() for p in params]
    r = reference_call(spec, [rx], rp, {}, channel_dim=channel_dim)
    gy = torch.randn(shape, dtype=torch.float64)
    y.backward(gy.to(dtype))
    r.backward(gy)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(y.double(), r.detach(), **tol)
    torch.testing.assert_close(xs.grad.double(), rx.grad, **tol)
    for p, q in zip(ps, rp):
        torch.testing.assert_close(p.grad.double(), q.grad, **tol)


def test_prelu_module_matches_torch_prelu_channels_first_and_last(backend):
    x = torch.randn(3, 8, 4, 5)
    ours, theirs = ops.PReLU(8), torch.nn.PReLU(8)
    with torch.no_grad():
        w = torch.linspace(-0.5, 0.9, 8)
        ours.weight.copy_(w)
        theirs.weight.copy_(w)
    torch.testing.assert_close(ours(x), theirs(x))
    last = ops.PReLU(8, channel_dim=-1)
    with torch.no_grad():
        last.weight.copy_(w)
    xl = x.permute(0, 2, 3, 1)
    torch.testing.assert_close(last(xl), theirs(x).permute(0, 2, 3, 1))
    # fewer than 2 dims: shared params only, as torch
    one = ops.PReLU()
    torch.testing.assert_close(one(torch.tensor([-2.0, 3.0])), torch.tensor([-0.5, 3.0]))


def _grads(y, tensors, g):
    return torch.autograd.grad(y, tensors, g)


@pytest.mark.parametrize("layout", ["channels_last", "transposed", "batch_moved"])
def test_outputs_and_gradients_keep_the_inputs_memory_layout(layout, backend):
    """A dense input in another order than the logical one (channels_last, x.t(), a batch dim
    moved to the front as vmap does) gives an output, and input gradients, of its strides,
    as torch's own ops do; the values are torch's (per-channel params on the channel dim
    whichever it is in memory)."""
    base = torch.randn(3, 8, 5, 6)
    x = {"channels_last": base.to(memory_format=torch.channels_last),
         "transposed": base.reshape(24, 30).t(),
         "batch_moved": base.movedim(2, 0)}[layout]
    assert not x.is_contiguous()
    x.requires_grad_()
    g = torch.randn_like(x)             # (the same strides as x: empty_like keeps them)
    for ours, theirs in ((ops.mish, F.mish), (ops.gelu_tanh, lambda t: F.gelu(t, approximate="tanh"))):
        y = ours(x)
        assert y.stride() == x.stride()
        torch.testing.assert_close(y, theirs(x))
        gx, = _grads(y, x, g)
        assert gx.stride() == x.stride()
        torch.testing.assert_close(gx, _grads(theirs(x), x, g)[0])
    C = x.shape[1]
    w = torch.linspace(-0.5, 0.9, C).requires_grad_()
    y = ops.prelu(x, w, channel_dim=1)
    assert y.stride() == x.stride()
    r = F.prelu(x, w)                   # (torch's channel dim is dim 1 too)
    torch.testing.assert_close(y, r)
    gx, gw = _grads(y, (x, w), g)
    rx, rw = _grads(r, (x, w), g)
    assert gx.stride() == x.stride()
    torch.testing.assert_close(gx, rx)
    torch.testing.assert_close(gw, rw)
    # a grad laid out otherwise (contiguous, as a loss's often is): still x's strides, on
    # the fallback as on the kernels (the fallback's product took the grad's)
    g = g.contiguous()
    for ours, theirs in ((ops.mish, F.mish), (lambda t: ops.prelu(t, w, channel_dim=1), lambda t: F.prelu(t, w))):
        gx, = _grads(ours(x), x, g)
        assert gx.stride() == x.stride()
        torch.testing.assert_close(gx, _grads(theirs(x), x, g)[0])


def test_gaps_and_mixed_layouts_are_computed_on_contiguous_copies(backend):
    """Inputs that are not dense (a slice with a step), or two inputs of different layouts,
    give a contiguous output of the right values."""
    x = torch.randn(6, 20)[:, ::2]
    y = ops.silu(x)
    assert y.is_contiguous()
    torch.testing.assert_close(y, F.silu(x))
    a = torch.randn(4, 6, 5, 5).to(memory_format=torch.channels_last)
    b = torch.randn(4, 6, 5, 5)
    y = ops.swiglu(a, b)
    assert y.is_contiguous()
    torch.testing.assert_close(y, F.silu(a) * b)


def test_the_custom_ops_fake_outputs_have_the_real_ones_layout():
    """Under torch.compile the ops' fake implementations stand in for the real ones: their
    outputs' strides must be the real ones' (torch.library.opcheck compares them)."""
    from actgen.ops.prelu import _OP
    x = torch.randn(2, 8, 3, 4).to(memory_format=torch.channels_last)
    w = torch.rand(8)
    g = torch.randn_like(x)
    torch.library.opcheck(_OP.fwd_op, ([x], [w], [], 1, None), test_utils=("test_schema", "test_faketensor"))
    torch.library.opcheck(_OP.bwd_op, (g, [x], [w], [], 1, [True, True], None), test_utils=("test_schema", "test_faketensor"))


@pytest.mark.parametrize("kind", ["sum", "transposed", "sliced"])
def test_backward_accepts_any_grad_output_layout(kind, backend):
    x = torch.randn(33, 40, dtype=torch.float64)
    w = torch.tensor([0.1], dtype=torch.float64)
    xa, wa = x.clone().requires_grad_(), w.clone().requires_grad_()
    xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()
    y = ops.learnable_activation(xa, torch.tensor([0.3], dtype=torch.float64), torch.tensor([1.5], dtype=torch.float64), wa)
    r = 1.5 * torch.where(xr > 0, xr, 0.3 * xr) + wr
    if kind == "sum":                      # autograd hands backward a stride-0 expanded tensor
        y.sum().backward()
        r.sum().backward()
    else:
        big = torch.randn(40, 33, dtype=torch.float64) if kind == "transposed" else torch.randn(33, 80, dtype=torch.float64)
        g = big.t() if kind == "transposed" else big[:, ::2]
        assert not g.is_contiguous()
        y.backward(g)
        r.backward(g)
    torch.testing.assert_close(xa.grad, xr.grad)
    torch.testing.assert_close(wa.grad, wr.grad)


@pytest.mark.parametrize("name", ["tanh", "mish", "prelu", "polynomial", "silu"])
def test_a_contiguous_inputs_gradient_is_contiguous_whatever_the_grad_outputs_layout(name, backend):
    """A permuted but dense grad_output: the input gradient is laid out as the (contiguous)
    input, on the kernels and the fallback alike, and right against float64 torch (the
    fallback's one-chunk path gave it the grad's strides, (1, 3, 9) for (3, 3, 5))."""
    fn = getattr(ops, name)
    x = torch.randn(3, 3, 5, generator=torch.Generator().manual_seed(2), requires_grad=True)
    g = torch.randn(5, 3, 3, generator=torch.Generator().manual_seed(3)).permute(2, 1, 0)
    args = [torch.full((3,), 0.25)] if name == "prelu" else []
    (gx,) = torch.autograd.grad(fn(x, *args), x, g)
    assert gx.stride() == x.stride()
    xd = x.detach().double().requires_grad_()
    refs = {"tanh": torch.tanh, "mish": F.mish, "silu": F.silu,
            "prelu": lambda t: F.prelu(t, torch.full((3,), 0.25, dtype=torch.float64)),
            "polynomial": lambda t: t / 2}
    (want,) = torch.autograd.grad(refs[name](xd), xd, g.double())
    torch.testing.assert_close(gx.double(), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("layout", ["channels_last", "transposed"])
def test_an_output_in_another_memory_order_is_no_view(layout, backend):
    """For a dense input laid out otherwise (channels_last, x.t()), the output keeps its
    strides and is a tensor of its own, not a view of one made inside the op: it takes
    in-place ops (`h += skip`, also after no_grad) and forward-mode AD, as F.mish's does
    (both raised in autograd: a view created inside a custom Function, and an INTERNAL
    ASSERT on the tangent's layout)."""
    import torch.autograd.forward_ad as fwAD

    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 3, 4, 5, generator=g).to(memory_format=torch.channels_last) if layout == "channels_last" \
        else torch.randn(6, 5, generator=g).t()
    w = torch.full((3 if layout == "channels_last" else 6,), 0.25)
    xr = x.clone().requires_grad_()
    y = ops.prelu(xr, w)
    assert y._base is None and y.stride() == x.stride()
    y += 1.0
    y.mul_(2.0).sum().backward()
    want = torch.where(x > 0, 2.0, 0.5)
    torch.testing.assert_close(xr.grad, want)
    with torch.no_grad():
        y = ops.mish(x)
    scale = torch.tensor(2.0, requires_grad=True)
    y.mul_(scale)
    tangent = torch.randn(x.shape, generator=g).to(memory_format=torch.channels_last) if layout == "channels_last" \
        else torch.randn(x.shape, generator=g)
    (_, want_t) = torch.func.jvp(lambda t: F.mish(t.double()), (x,), (tangent,))
    with fwAD.dual_level():
        primal, t = fwAD.unpack_dual(ops.mish(fwAD.make_dual(x, tangent)))
    assert primal.stride() == x.stride()
    torch.testing.assert_close(t.double(), want_t, rtol=1e-5, atol=1e-6)


def test_a_complex_param_is_a_type_error():
    """A complex param is refused, as a complex input is (its imaginary part was dropped on
    the way to the compute dtype: prelu with weight 0.5+2j computed with 0.5)."""
    x = torch.tensor([-1.0, 2.0])
    with pytest.raises(TypeError, match="param 'weight' must be a floating-point tensor, got torch.complex64"):
        ops.prelu(x, torch.tensor([0.5 + 2j]))
    with pytest.raises(TypeError, match="param 'beta' must be a floating-point tensor"):
        ops.swish(x, torch.tensor([1 + 5j]))


@pytest.mark.parametrize("value", ["0.2", b"0.2", None, 0.2 + 1j], ids=["str", "bytes", "None", "complex"])
def test_a_constant_or_number_param_that_is_not_a_real_number_is_a_type_error(value):
    """torch's own leaky_relu refuses negative_slope="0.2" (a TypeError); float() would parse
    the text, and did: leaky_relu(x, "0.2") computed with 0.2."""
    x = torch.tensor([-1.0, 2.0])
    with pytest.raises((TypeError, RuntimeError)):     # (complex: a RuntimeError of torch's)
        torch.nn.functional.leaky_relu(x, value)
    with pytest.raises(TypeError, match="constant 'negative_slope' must be a real number"):
        ops.leaky_relu(x, value)
    with pytest.raises(TypeError, match="constant 'negative_slope' must be a real number"):
        ops.LeakyReLU(value)(x.requires_grad_())
    with pytest.raises(TypeError, match="param 'weight' must be a real number"):
        ops.prelu(x, value)


def test_a_constant_takes_numbers_as_torch_takes_them():
    """ints, bools, numpy scalars and 0-dim tensors are numbers, as torch's leaky_relu takes them."""
    x = torch.tensor([-1.0, 2.0, -3.0])
    for value in (1, True, np.float32(0.5), np.float64(0.25), torch.tensor(0.5)):
        torch.testing.assert_close(ops.leaky_relu(x, value), torch.nn.functional.leaky_relu(x, value))

# --- dtypes --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64], ids=str)
def test_dtypes_output_and_param_gradients(dtype, backend):
    x = (torch.randn(4, 6, 9) * 2).to(dtype).requires_grad_()
    m = ops.LearnableActivation(6)
    y = m(x)
    assert y.dtype == dtype
    y.float().sum().backward()
    assert x.grad.dtype == dtype
    for p in m.parameters():
        assert p.grad.dtype == torch.float32 and p.grad.shape == p.shape
    m64 = ops.LearnableActivation(6).double()
    x64 = x.detach().double().requires_grad_()
    y64 = m64(x64)
    y64.sum().backward()
    tol = {torch.float16: 1e-3, torch.bfloat16: 8e-3}.get(dtype, 1e-6)
    torch.testing.assert_close(y.double(), y64, rtol=tol, atol=tol)
    for p, q in zip(m.parameters(), m64.parameters()):
        torch.testing.assert_close(p.grad.double(), q.grad, rtol=1e-5, atol=1e-4)
    assert all(p.grad.dtype == torch.float64 for p in m64.parameters())


def test_float16_extremes_stay_finite_where_torch_is(backend):
    x = torch.tensor([-65504.0, -20.0, -1.0, 0.0, 1.0, 20.0, 65504.0], dtype=torch.float16)
    for ours, theirs in [(ops.silu, F.silu), (ops.mish, F.mish), (ops.gelu, F.gelu), (ops.softplus, F.softplus)]:
        torch.testing.assert_close(ours(x), theirs(x.float()).half(), rtol=1e-3, atol=1e-3)


# --- special values ------------------------------------------------------------------

NAN, INF = math.nan, math.inf


@pytest.mark.parametrize("name,fn", [("relu", F.relu), ("hardtanh", F.hardtanh), ("leaky_relu", F.leaky_relu),
                                     ("threshold", lambda x: F.threshold(x, 0.0, 0.0)),
                                     ("prelu", lambda x: F.prelu(x, torch.tensor([0.25], dtype=x.dtype)))])
def test_nan_in_nan_out_through_max_min_where(name, fn, backend):
    x = torch.tensor([NAN, -1.0, 0.0, 2.0])
    y = getattr(ops, name)(x)
    assert torch.isnan(y[0]) and torch.isnan(fn(x)[0])
    torch.testing.assert_close(y[1:], fn(x)[1:])


@pytest.mark.parametrize("name,limits", [
    ("relu", (INF, 0.0)), ("silu", (INF, 0.0)), ("mish", (INF, 0.0)), ("gelu", (INF, 0.0)),
    ("gelu_tanh", (INF, 0.0)), ("softplus", (INF, 0.0)), ("elu", (INF, -1.0)), ("hardswish", (INF, 0.0)),
    ("custom_smooth", (INF, -INF)), ("soft_clip", (1.0, -1.0)), ("sigmoid", (1.0, 0.0)), ("tanh", (1.0, -1.0)),
])
def test_infinities_give_the_limit(name, limits, backend):
    x = torch.tensor([INF, -INF, NAN])
    y = getattr(ops, name)(x)
    assert y[0].item() == limits[0] and y[1].item() == limits[1]
    assert torch.isnan(y[2])


def test_infinity_derivatives_are_the_limits(backend):
    x = torch.tensor([INF, -INF], requires_grad=True)
    ops.silu(x).sum().backward()
    assert x.grad.tolist() == [1.0, 0.0]
    x.grad = None
    ops.mish(x).sum().backward()
    assert x.grad.tolist() == [1.0, 0.0]


def test_kinks_take_the_selected_branch_and_no_nan_leaks(backend):
    x = torch.tensor([0.0, 0.0], requires_grad=True)
    ops.relu(x).sum().backward()
    assert x.grad.tolist() == [0.0, 0.0]          # relu'(0) = 0, as torch
    # where(x > 0, sqrt(x), 0): torch autograd gives NaN from the unselected sqrt branch
    m = __import__("actgen").compile("where(x > 0, sqrt(x), 0)", name="sqrt_pos")
    x = torch.tensor([-1.0, 0.0, 4.0], requires_grad=True)
    m.sqrt_pos(x).sum().backward()
    assert x.grad.tolist() == [0.0, 0.0, 0.25]


# --- errors --------------------------------------------------------------------------


def test_non_float_input_is_a_clear_error():
    with pytest.raises(TypeError, match="floating-point"):
        ops.silu(torch.arange(4))
    with pytest.raises(TypeError, match="must be a tensor"):
        ops.silu([1.0, 2.0])


def test_channel_count_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="channel-count mismatch.*4 channels.*3 along dim 1"):
        ops.PReLU(4)(torch.randn(2, 3, 5))
    with pytest.raises(ValueError, match="channel-count mismatch"):
        ops.PReLU(4, channel_dim=-1)(torch.randn(2, 4, 5))


def test_odd_split_is_a_clear_error():
    with pytest.raises(ValueError, match="odd"):
        ops.SwiGLU()(torch.randn(2, 7))
    with pytest.raises(ValueError, match="same shape"):
        ops.swiglu(torch.randn(2, 4), torch.randn(2, 5))


def test_a_dim_out_of_range_or_not_an_int_is_a_clear_error():
    """As torch's dims: out of the input's range an IndexError (it wrapped around to another
    dim), not an int a TypeError (it failed deep inside); in range, negative or a numpy int,
    the params go along that dim."""
    x, w = -torch.ones(2, 3, 4, dtype=torch.float64), torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64)
    for cd in (3, 4, -4, -6):
        with pytest.raises(IndexError, match=f"channel_dim {cd} is out of range for a 3-dim input"):
            ops.prelu(x, w, channel_dim=cd)
        for shared in (w[:1], 0.25):        # one channel: the dim is still checked (it was not)
            with pytest.raises(IndexError, match=f"channel_dim {cd} is out of range for a 3-dim input"):
                ops.prelu(x, shared, channel_dim=cd)
        with pytest.raises(IndexError, match=f"channel_dim {cd} is out of range for a 3-dim input"):
            ops.PReLU(1, channel_dim=cd)(x)
    torch.testing.assert_close(ops.prelu(x[0, 0], w[:1]), F.prelu(x[0, 0], w[:1]))    # 1-D: no channel dim
    for cd in (1.0, None, True, "1"):
        with pytest.raises(TypeError, match="channel_dim must be an int"):
            ops.prelu(x, w, channel_dim=cd)
    for cd in (1, -2, np.int64(1)):
        torch.testing.assert_close(ops.prelu(x, w, channel_dim=cd), F.prelu(x, w))
    with pytest.raises(IndexError, match="dim 3 is out of range for a 2-dim input"):
        ops.SwiGLU(dim=3)(torch.randn(3, 4))
    with pytest.raises(TypeError, match="channel_dim must be an int"):
        ops.PReLU(3, 0.1)                   # torch's PReLU(num_parameters, init) positionally


def test_drop_in_constructors_refuse_what_they_would_misread():
    """GELU's first argument is torch's approximate (GELU(True), inplace as it reads in other
    modules, is an error, not the exact GELU); inplace is a keyword; torch's factory keywords
    make the params in that dtype and on that device."""
    with pytest.raises(ValueError, match="approximate must be one of 'none', 'tanh', got True"):
        ops.GELU(True)
    with pytest.raises(TypeError, match="inplace must be True or False, got 'tanh'"):
        ops.GELU("tanh", "tanh")
    x = torch.linspace(-3, 3, 7)
    torch.testing.assert_close(ops.GELU(inplace=True)(x), F.gelu(x))
    torch.testing.assert_close(ops.GELU("tanh")(x), F.gelu(x, approximate="tanh"))
    torch.testing.assert_close(ops.GELUTanh()(x), F.gelu(x, approximate="tanh"))
    m = ops.PReLU(num_parameters=3, init=0.1, device="cpu", dtype=torch.float64)
    ref = torch.nn.PReLU(num_parameters=3, init=0.1, device="cpu", dtype=torch.float64)
    assert m.weight.dtype == torch.float64 and torch.equal(m.weight, ref.weight)
    xd = torch.randn(2, 3, 5, dtype=torch.float64)
    torch.testing.assert_close(m(xd), ref(xd))


# --- the kernels' own contract ---------------------------------------------------------


def test_backward_saves_only_inputs_and_params(backend):
    saved = []

    def pack(t):
        saved.append(t)
        return t

    x = torch.randn(8, 6, 10, requires_grad=True)
    m = ops.LearnableActivation(6)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = m(x)
    assert len(saved) == 4
    assert saved[0] is x or saved[0].data_ptr() == x.data_ptr()
    owned = {x.data_ptr()} | {p.data_ptr() for p in m.parameters()}
    assert {t.data_ptr() for t in saved} == owned
    assert sum(t.numel() for t in saved) == x.numel() + 6 + 6 + 1
    y.sum().backward()
    assert x.grad is not None


def test_param_gradients_are_reduced_in_the_kernel(triton_backend, monkeypatch):
    """The backward kernel writes per-tile partial sums, never a per-element gradient."""
    allocs = []
    real_empty = torch.empty

    def empty(*shape, **kw):
        t = real_empty(*shape, **kw)
        allocs.append(tuple(t.shape))
        return t

    monkeypatch.setattr(launch.torch, "empty", empty)
    x = torch.randn(4, 16, 32, 32, requires_grad=True)
    m = ops.PReLU(16)
    m(x).sum().backward()
    partials = [s for s in allocs if len(s) == 2 and s[0] == 1]
    assert partials and all(math.prod(s) <= x.numel() // 32 for s in partials), allocs
    torch.testing.assert_close(m.weight.grad, torch.where(x > 0, 0.0, x).sum((0, 2, 3)), rtol=1e-5, atol=1e-3)


def test_constants_are_runtime_kernel_arguments():
    """Changing a constant's value must not recompile: constants are not constexpr."""
    import inspect

    pytest.importorskip("triton")
    mod = importlib.import_module("actgen.ops.leaky_relu")

    fn = getattr(mod._forward_kernel, "fn", mod._forward_kernel)
    params = inspect.signature(fn).parameters
    assert "negative_slope" in params
    assert "constexpr" not in str(params["negative_slope"].annotation)
    x = torch.randn(100)
    with use_backend("triton"):
        for slope in (0.01, 0.2, 0.3):
            torch.testing.assert_close(ops.leaky_relu(x, negative_slope=slope), F.leaky_relu(x, slope))


if HAS_TRITON:
    import triton
    import triton.language as tl

    from actgen.runtime.triton_lang import div_uniform, param_at, sqrt_square_plus

    @triton.jit
    def _read_params(p_ptr, out_ptr, N, BLOCK: tl.constexpr, CH_AXIS: tl.constexpr):
        cols = tl.arange(0, BLOCK)[None, :]
        tl.store(out_ptr + cols, param_at(p_ptr, cols, 1, N, CH_AXIS))

    @triton.jit
    def _fma(x_ptr, y_ptr, z_ptr, out_ptr, n, BLOCK: tl.constexpr):
        offs = tl.arange(0, BLOCK)
        mask = offs < n
        x = tl.load(x_ptr + offs, mask=mask, other=0.0)
        y = tl.load(y_ptr + offs, mask=mask, other=0.0)
        z = tl.load(z_ptr + offs, mask=mask, other=0.0)
        tl.store(out_ptr + offs, tl.fma(x, y, z), mask=mask)

    @triton.jit
    def _count_to(out_ptr, n):
        total = 0
        for _ in range(n):
            total += 1
        tl.store(out_ptr, total)

    @triton.jit
    def _divide_uniform(a_ptr, out_ptr, b, n, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        a = tl.load(a_ptr + offs, mask=mask, other=0.0)
        tl.store(out_ptr + offs, div_uniform(a, b, False), mask=mask)

    @triton.jit
    def _sqrt_square_plus(u_ptr, out_ptr, c, n, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        u = tl.load(u_ptr + offs, mask=mask, other=0.0)
        tl.store(out_ptr + offs, sqrt_square_plus(u, c, False), mask=mask)


def test_a_loop_over_a_kernel_argument_runs_under_triton_36s_interpreter(triton_backend, monkeypatch):
    """A stepping backward loops range(_iters) over a kernel argument: Triton 3.6's interpreter
    takes its index as int() of the scalar's 1-element array, which numpy 2.4 refuses; the
    runtime's patch of the interpreter takes it as later Triton does.  Here the interpreter is
    made to patch as 3.6's does, then the runtime's patch is applied over it."""
    import triton.runtime.interpreter as interpreter

    from actgen.runtime import triton_lang

    if not triton_lang.INTERPRET:
        pytest.skip("the interpreter is off")

    def patch_as_36(tensor, scope):
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data))
    monkeypatch.setattr(interpreter, "_patch_lang_tensor", patch_as_36)
    triton_lang._index_of_a_scalar()
    out = torch.zeros(1, dtype=torch.int32)
    _count_to[(1,)](out, 5)
    assert out.item() == 5


def _rounded_to_float32(v: Fraction) -> np.float32:
    """The float32 nearest the rational v (ties to the even significand), by comparing the
    neighbours of a first guess exactly."""
    guess = np.float32(float(v))
    candidates = {guess, np.nextafter(guess, np.float32(np.inf)), np.nextafter(guess, np.float32(-np.inf))}
    candidates = [c for c in candidates if np.isfinite(c)]
    return min(candidates, key=lambda c: (abs(Fraction(float(c)) - v), int(np.array(c).view(np.int32)) & 1))


def test_the_interpreters_float32_fma_rounds_once(triton_backend):
    """The interpreter's tl.fma on float32 (Triton 3.6's rounded twice: the runtime gives it
    triton_lang.fma_float32) against the exact x*y + z rounded once: bitwise on random
    triples, on cancellations (z the product's negated rounding) and on products that are a
    float32 midpoint with a tiny z, where rounding twice goes the wrong way."""
    from actgen.runtime import triton_lang

    if not triton_lang.INTERPRET:
        pytest.skip("the interpreter is off")
    rng = np.random.default_rng(11)
    n = 3000
    x = (rng.standard_normal(n) * np.exp(rng.uniform(-20, 20, n))).astype(np.float32)
    y = (rng.standard_normal(n) * np.exp(rng.uniform(-20, 20, n))).astype(np.float32)
    z = (rng.standard_normal(n) * np.exp(rng.uniform(-40, 40, n))).astype(np.float32)
    z[: n // 2] = -(x[: n // 2].astype(np.float64) * y[: n // 2]).astype(np.float32)
    h = np.float32(1 + 2.0**-12)        # h*h = 1 + 2**-11 + 2**-24: halfway between two float32
    x = np.concatenate([x, [h, h, -h]]).astype(np.float32)
    y = np.concatenate([y, [h, h, h]]).astype(np.float32)
    z = np.concatenate([z, [2.0**-60, -2.0**-60, 2.0**-60]]).astype(np.float32)
    want = np.array([_rounded_to_float32(Fraction(float(a)) * Fraction(float(b)) + Fraction(float(c)))
                     for a, b, c in zip(x, y, z)], dtype=np.float32)
    assert want[-3] == np.float32(1 + 2.0**-11 + 2.0**-23) and want[-2] == np.float32(1 + 2.0**-11)
    assert np.array_equal(triton_lang.fma_float32(x, y, z), want)
    out = torch.empty(len(x))
    _fma[(1,)](torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(z), out, len(x), BLOCK=4096)
    assert np.array_equal(out.numpy(), want)


def test_division_by_a_uniform_denominator_rounds_as_ieee(triton_backend):
    """div_uniform (a / b for b the same for every element: its reciprocal once, each quotient
    corrected by its remainder) against numpy's IEEE float32 division: bitwise where |a| is
    at least 2**-102, within an ULP below (the remainder underflows); inf, NaN and zeros as
    division gives them; b past [2**-100, 2**100] through div_rn, bitwise."""
    import triton as _t

    rng = np.random.default_rng(3)
    a = np.concatenate([rng.standard_normal(60_000) * np.exp(rng.uniform(-85, 85, 60_000)),
                        [np.inf, -np.inf, np.nan, 0.0, -0.0, 3.4e38, -3.4e38, 1e-40, 1e-45]]).astype(np.float32)
    bs = [*(rng.standard_normal(12) * np.exp(rng.uniform(-60, 60, 12))), 1.0, 3.0, -7.0, 0.1, 2.0**-100, 2.0**100,
          1e-35, -1e35, 2.0**-140]
    for b in np.float32(bs):
        with np.errstate(all="ignore"):
            want = a / b
        out = torch.empty(len(a))
        _divide_uniform[(_t.cdiv(len(a), 1024),)](torch.from_numpy(a), out, float(b), len(a), BLOCK=1024)
        got = out.numpy()
        same = (got == want) & (np.signbit(got) == np.signbit(want)) | (np.isnan(got) & np.isnan(want))
        exact = (np.abs(a) >= 2.0**-102) | ~np.isfinite(a) | (a == 0)
        if not 2.0**-100 <= abs(b) <= 2.0**100:
            exact[:] = True
        assert same[exact].all(), (b, a[exact & ~same][:5])
        off = np.abs(got[~exact].astype(np.float64) - want[~exact]) / np.spacing(np.abs(want[~exact]))
        assert (off <= 1.0).all(), b


def test_channels_last_param_loads_stay_inside_the_param(triton_backend):
    """Channels last, a tile's columns past the row would be channels past the param's last:
    they read nothing (a GPU faults on an address past an allocation), where channels-first
    rows wrap around C.  The param here is the front of a buffer whose tail is poison."""
    buf = torch.tensor([1.0, 2, 3, 4, 5, 99, 99, 99])
    out = torch.empty(8)
    _read_params[(1,)](buf[:5], out, 5, BLOCK=8, CH_AXIS=1)
    assert out.tolist() == [1, 2, 3, 4, 5, 0, 0, 0]
    for name in ("prelu", "learnable_activation", "parametric_activation"):
        mod = importlib.import_module(f"actgen.ops.{name}")
        src = inspect_source(mod._forward_kernel) + inspect_source(mod._backward_kernel)
        assert "_param_at(" in src and "_stride)" not in src, name


def test_kernels_launch_on_the_tensors_gpu(monkeypatch):
    """Triton launches on the current CUDA device: a tensor on another GPU (cuda:1 while
    cuda:0 is current) gets its own made current around the launch; the current one, or a
    CPU tensor (which never asks), gets no context."""
    import contextlib
    from types import SimpleNamespace

    entered, current = [], []

    class Device:
        def __init__(self, device):
            self.device = device

        def __enter__(self):
            entered.append(self.device)
            current.append(self.device)

        def __exit__(self, *exc):
            current.pop()
            return False

    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "device", Device)
    on_one = SimpleNamespace(is_cuda=True, device=torch.device("cuda", 1))
    with launch.on_device(on_one):
        pass
    assert entered == [torch.device("cuda", 1)]
    assert isinstance(launch.on_device(SimpleNamespace(is_cuda=True, device=torch.device("cuda", 0))),
                      contextlib.nullcontext)
    # a launch through the tuner: run(config) is called with cuda:1 current
    monkeypatch.setattr(launch, "INTERPRET", False)
    on_one.dtype, on_one.numel = torch.float32, lambda: 4096
    calls = []
    launch._tuned(object(), on_one, "flat", lambda cfg: calls.append((cfg, list(current))))
    assert calls == [(launch.DEFAULT, [torch.device("cuda", 1)])] and not current
    monkeypatch.setattr(torch.cuda, "current_device", lambda: pytest.fail("asked for a CPU tensor"))
    assert isinstance(launch.on_device(torch.zeros(2)), contextlib.nullcontext)


def test_offsets_are_int64():
    """Tensors over 2**31 elements: tile offsets are computed from an int64 program id."""
    mod = importlib.import_module("actgen.ops.mish")

    from actgen.runtime import triton_lang

    src = inspect_source(mod._forward_kernel) + inspect_source(mod._backward_kernel)
    assert src.count("= _tile(_M, _N, _C, BLOCK_M, BLOCK_N, CH_AXIS)") == 2
    prelu = importlib.import_module("actgen.ops.prelu")          # its backward steps through tiles
    assert "= _nth_tile(_it, _M, _N, _C, BLOCK_M, BLOCK_N, CH_AXIS)" in inspect_source(prelu._backward_kernel)
    assert "tile_at(tl.program_id(0).to(tl.int64)," in inspect_source(triton_lang.tile)
    assert ("tl.program_id(0).to(tl.int64) + tl.num_programs(0).to(tl.int64) * it"
            in inspect_source(triton_lang.nth_tile))
    lay = launch.layout((2**31 + 5,), 1, 1)
    assert lay.M * lay.N == 2**31 + 5 and lay.grid[0] * lay.block_n >= 2**31 + 5


if HAS_TRITON:
    from actgen.runtime.triton_lang import tile_at

    @triton.jit
    def _offsets_kernel(offs_ptr, mask_ptr, ch_ptr, t, M, N, C, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                        CH_AXIS: tl.constexpr):
        """tile_at's offsets, mask and channels for tile t (int64, as tile and nth_tile pass
        it), stored as values."""
        offs, mask, ch, rows, cols = tile_at(t.to(tl.int64), M, N, C, BLOCK_M, BLOCK_N, CH_AXIS)
        idx = tl.arange(0, BLOCK_M)[:, None] * BLOCK_N + tl.arange(0, BLOCK_N)[None, :]
        tl.store(offs_ptr + idx, offs)
        tl.store(mask_ptr + idx, mask.to(tl.int8))
        tl.store(ch_ptr + idx, (ch + 0 * idx).to(tl.int64))


TILE_CASES = [
    # M, N, C, BLOCK_M, BLOCK_N, CH_AXIS, tile numbers: the flat layout past 2**31 elements (its
    # last tile, and one past it, as a stepping program's), channels first with rows of over
    # 2**31 elements, channels last past 2**32 elements, and a single row of channels
    (1, 2**31 + 5, 1, 1, 1024, 0, (0, 2**21, 2**21 + 1)),
    (15, 2**31 + 7, 5, 1, 1024, 0, (0, 2**21 + 1, 2**21 + 5, 14 * (2**21 + 1) + 2**21)),
    (2**26 + 3, 64, 64, 16, 64, 1, (0, 2**22, 2**22 + 1)),
    (1, 64, 64, 1, 64, 1, (0, 1)),
]


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
@pytest.mark.parametrize("case", TILE_CASES)
def test_tile_offsets_masks_and_channels(case):
    """triton_lang.tile_at (the interpreter) against the same arithmetic in Python's ints: the
    offsets (int64), the bounds mask and each element's channel, for tensors past 2**31
    elements (nothing is read or written there: the offsets are stored as values)."""
    M, N, C, bm, bn, axis, tiles = case
    tiles_n = -(-N // bn)
    for t in tiles:
        offs, mask, ch = (torch.empty(bm * bn, dtype=dt) for dt in (torch.int64, torch.int8, torch.int64))
        _offsets_kernel[(1,)](offs, mask, ch, t, M, N, C, BLOCK_M=bm, BLOCK_N=bn, CH_AXIS=axis)
        rows = [(t // tiles_n) * bm + i for i in range(bm) for _ in range(bn)]
        cols = [(t % tiles_n) * bn + j for _ in range(bm) for j in range(bn)]
        want_mask = [r < M and c < N for r, c in zip(rows, cols)]
        assert mask.bool().tolist() == want_mask, t
        assert [o for o, m in zip(offs.tolist(), want_mask) if m] == [r * N + c for r, c, m in zip(rows, cols, want_mask) if m]
        assert [v for v, m in zip(ch.tolist(), want_mask) if m] == [(r % C if axis == 0 else c)
                                                                    for r, c, m in zip(rows, cols, want_mask) if m]
        if t == 0:
            assert all(want_mask[: min(bn, N)])


def inspect_source(kernel):
    import inspect

    return inspect.getsource(getattr(kernel, "fn", kernel))


def test_gated_infinities_give_the_limit_and_keep_nan(backend):
    a = torch.tensor([-INF, -INF, -INF, INF, 1.0], requires_grad=True)
    b = torch.tensor([2.0, -3.0, NAN, 2.0, INF], requires_grad=True)
    y = ops.swiglu(a, b)
    assert y[:2].tolist() == [0.0, 0.0]            # silu(a) -> 0 as a -> -inf, times any finite b
    assert torch.isnan(y[2])                       # NaN in, NaN out
    assert y[3].item() == INF and y[4].item() == INF
    y[:2].sum().backward()
    assert a.grad[:2].tolist() == [0.0, 0.0] and b.grad[:2].tolist() == [0.0, 0.0]
    g = ops.geglu(torch.tensor([-INF]), torch.tensor([5.0]))
    assert g.item() == 0.0


def test_limits_that_depend_on_params_are_read_off_at_run_time(backend):
    """x * sigmoid(beta * x) at -inf is 0 for beta > 0 and -inf for beta < 0; a polynomial
    with zero leading coefficients is dominated by its highest non-zero term."""
    x = torch.tensor([-INF, INF, NAN, 2.0], requires_grad=True)
    y = ops.swish(x, torch.tensor([1.5]))
    assert y[:2].tolist() == [0.0, INF] and torch.isnan(y[2])
    assert y[3].item() == pytest.approx(2.0 * torch.sigmoid(torch.tensor(3.0)).item(), rel=1e-6)
    y = ops.swish(x, torch.tensor([-0.5]))
    assert y[:2].tolist() == [-INF, 0.0]
    coeffs = [torch.tensor([v]) for v in (0.25, 0.5, 0.0, 0.0)]
    xs = x.detach().clone().requires_grad_()
    p = ops.polynomial(xs, *coeffs)
    assert p[:2].tolist() == [-INF, INF] and torch.isnan(p[2])
    p[:2].sum().backward()
    assert xs.grad[:2].tolist() == [0.5, 0.5]                   # f' = a1 where a2 = a3 = 0
    cubic = ops.polynomial(x.detach(), *[torch.tensor([v]) for v in (0.0, 0.0, 0.0, -2.0)])
    assert cubic[:2].tolist() == [INF, -INF]


# --- random draws: uniform(lo, hi) in training mode ------------------------------------
# A formula with two draws and a param in a draw's bound: y = x * uniform(0, b) + uniform(-1, 1),
# i.e. y = b*r0*x + (2*r1 - 1).  dy/dx = b*r0 is the first draw, y - x*dy/dx the second, and
# dy/db = r0*x = x * (dy/dx) / b: every gradient has to use the draws the forward made.
NOISY = "x * uniform(0, b) + uniform(-1, 1)"


@functools.lru_cache(maxsize=None)
def noisy():
    return __import__("actgen").compile(NOISY, name="noisy", params={"b": 2.0}).noisy


def _noisy_call(x, b, seed, backend):
    xs, bs = x.clone().requires_grad_(), b.clone().requires_grad_()
    torch.manual_seed(seed)
    with use_backend(backend):
        y = noisy()(xs, bs, training=True)
        gx, gb = torch.autograd.grad(y, (xs, bs), torch.ones_like(y))
    return y.detach(), gx, gb


@pytest.mark.parametrize("backend,dtype", [("torch", torch.float64), ("torch", torch.float32), ("triton", torch.float32)],
                         ids=["fallback-f64", "fallback-f32", "kernel-f32"])
def test_two_draws_are_independent_and_backward_sees_the_forwards_draws(backend, dtype):
    n = 1 << 15 if backend == "triton" else 1 << 18
    x = torch.randn(n, dtype=dtype, generator=torch.Generator().manual_seed(21)) * 2
    b = torch.tensor([2.0], dtype=dtype)
    y, gx, gb = _noisy_call(x, b, 22, backend)
    first = gx.double()                      # b * r0 ~ U(0, 2)
    second = y.double() - x.double() * first   # 2 * r1 - 1 ~ U(-1, 1)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    assert first.min() >= 0 and first.max() < 2 and second.min() >= -1 - tol and second.max() < 1 + tol
    se = 5 / math.sqrt(n)
    assert abs(first.mean().item() - 1.0) < se * 2 / math.sqrt(12)
    assert abs(second.mean().item()) < se * 2 / math.sqrt(12)
    corr = torch.corrcoef(torch.stack([first, second]))[0, 1].item()
    assert abs(corr) < se
    # the param gradient sums x * r0 over the same draws
    torch.testing.assert_close(gb.double().sum(), (x.double() * first).sum() / 2, rtol=1e-4 if dtype == torch.float32 else 1e-10, atol=1e-3)
    # evaluation mode: every draw at its mean
    with use_backend(backend):
        torch.testing.assert_close(noisy()(x, b), x, rtol=tol, atol=tol)


def test_random_op_backward_saves_only_the_inputs_and_keeps_an_int_seed(backend):
    saved = []

    def pack(t):
        saved.append(t)
        return t

    x = torch.randn(8, 6, 10, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = ops.RReLU()(x)
    assert len(saved) == 1 and saved[0].data_ptr() == x.data_ptr()
    seed, _ = y.grad_fn.rng
    assert type(seed) is int
    y.sum().backward()
    neg = x.detach() < 0
    torch.testing.assert_close(x.grad[neg], y.detach()[neg] / x.detach()[neg], rtol=1e-6, atol=0)


def test_backward_draws_with_the_generator_of_the_forward():
    """A forward on the kernels, its backward (and double backward) outside use_backend: the
    gradients still come from the kernels' draws."""
    x = torch.randn(3000, dtype=torch.float64)
    for forward_backend in ("triton", "torch"):
        xs = x.clone().requires_grad_()
        with use_backend(forward_backend):
            y = ops.rrelu(xs, training=True)
        other = "torch" if forward_backend == "triton" else "triton"
        with use_backend(other):
            (g,) = torch.autograd.grad(y, xs, torch.ones_like(y), create_graph=True)
            (gg,) = torch.autograd.grad(g, xs, torch.ones_like(g), allow_unused=True, materialize_grads=True)
        neg = x < 0
        torch.testing.assert_close(g.detach()[neg], y.detach()[neg] / x[neg], rtol=1e-12, atol=0)
        assert torch.equal(gg, torch.zeros_like(gg))


def test_uniform_bounds_must_not_depend_on_an_input():
    from actgen import SpecError

    with pytest.raises(SpecError, match=r"formula: uniform\(lo, hi\): the bounds must not depend on the input x"):
        __import__("actgen").compile("x * uniform(x, 1)", name="bad_draw")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_runtime_softplus_is_accurate_past_torchs_default_threshold(dtype):
    """The fallback's softplus (torch's one-pass kernel, threshold 40): within an ULP of the
    50-digit truth from -800 to 800, where torch's default threshold of 20 is 5e5 ULP off in
    float64 just above 20."""
    import mpmath

    from actgen import runtime as rt
    xs = torch.cat([torch.linspace(-800, 800, 4001, dtype=dtype),
                    torch.tensor([19.99, 20.01, 25.5, 36.9, 39.99, 40.0, 40.01, -87.0, -700.0], dtype=dtype)])
    with mpmath.workdps(50):
        truth = np.array([float(mpmath.log1p(mpmath.exp(mpmath.mpf(v)))) for v in xs.tolist()])
    got = rt.softplus(xs).double().numpy()
    ulp = np.spacing(np.abs(truth).astype(torch.empty((), dtype=dtype).numpy().dtype)).astype(np.float64)
    normal = np.abs(truth) >= torch.finfo(dtype).tiny
    assert (np.abs(got - truth)[normal] / ulp[normal]).max() <= 1.5


try:
    import triton as _triton

    from actgen.device_accuracy import exp_kernel as _apply_exp, log1p_kernel as _apply_log1p
except ImportError:
    _apply_exp = _apply_log1p = None


def test_kernel_log1p_is_within_an_ulp():
    """The kernels' log1p (actgen.runtime.triton_lang.log1p, float32 from arithmetic alone)
    against mpmath at 30 digits: within an ULP on both sides of each branch point (k = 0 for
    1 + u in [sqrt(2)/2, sqrt(2)), the rounding of 1 + u corrected for k up to 24), down to
    subnormal u and out to float32's largest; -0, -1 -> -inf, below -1 and NaN -> NaN, inf;
    float64 through libdevice."""
    import mpmath
    if _apply_log1p is None:
        pytest.skip("triton is not installed")
    rng = np.random.default_rng(0)
    xs = np.concatenate([rng.uniform(-1, 1, 20_000), -rng.uniform(0, 1, 5_000) ** 8,
                         np.exp(rng.uniform(-100, 88, 20_000)), -np.exp(rng.uniform(-100, -0.01, 5_000)),
                         np.float32([-0.29289323, -0.29289320, 0.41421354, 0.41421357, 1e-45, -1e-45, 2.0**24,
                                     2.0**25 + 4, -0.99999994, 3.4e38])]).astype(np.float32)
    x = torch.from_numpy(xs)
    out = torch.empty_like(x)
    _apply_log1p[(_triton.cdiv(len(x), 1024),)](x, out, len(x), BLOCK=1024)
    with mpmath.workdps(30):
        want = np.array([float(mpmath.log1p(mpmath.mpf(float(v)))) for v in xs])
    ulp = np.spacing(np.abs(want).astype(np.float32)).astype(np.float64)
    assert (np.abs(out.double().numpy() - want) / ulp).max() <= 1.0
    special = torch.tensor([0.0, -0.0, -1.0, -2.0, math.inf, -math.inf, math.nan])
    got = torch.empty_like(special)
    _apply_log1p[(1,)](special, got, len(special), BLOCK=8)
    assert got[:2].tolist() == [0.0, 0.0] and math.copysign(1, got[1]) == -1.0
    assert got[2] == -math.inf and got[4] == math.inf and got[[3, 5, 6]].isnan().all()
    x64 = torch.from_numpy(xs[:1000]).double()
    out64 = torch.empty_like(x64)
    _apply_log1p[(1,)](x64, out64, len(x64), BLOCK=1024)
    torch.testing.assert_close(out64, torch.log1p(x64), rtol=1e-15, atol=0)


def test_kernel_exp_is_within_an_ulp():
    """The kernels' exp (actgen.runtime.triton_lang.exp, float32 from arithmetic alone) against
    float64 numpy: within an ULP wherever the result is a normal float32, at most 2**-149 off
    in the subnormal range; 0, inf and NaN where exp's are; float64 through libdevice."""
    if _apply_exp is None:
        pytest.skip("triton is not installed")
    rng = np.random.default_rng(0)
    xs = np.concatenate([np.arange(-2 * 2**14, 2 * 2**14 + 1) / 2**14, rng.uniform(-104, 89, 200_000),
                         [-np.inf, np.inf, np.nan, 88.72283, 88.72284, 89.0, 1e30, -87.33654, -103.97, -104.5, -1e30]])
    for dtype in (torch.float32, torch.float64):
        x = torch.from_numpy(xs).to(dtype)
        out = torch.empty_like(x)
        _apply_exp[(_triton.cdiv(len(x), 1024),)](x, out, len(x), BLOCK=1024)
        with np.errstate(over="ignore"):       # exp(1e30) is inf in float64 too
            got, want = out.double().numpy(), np.exp(x.double().numpy())
        if dtype == torch.float64:
            np.testing.assert_allclose(got, want, rtol=1e-15)
            continue
        with np.errstate(over="ignore", invalid="ignore"):      # inf - inf, out of float32's range
            spacing = np.spacing(want.astype(np.float32)).astype(np.float64)
            error = np.abs(got - want)
        normal = np.isfinite(want) & (want >= 2.0**-126) & (want <= np.finfo(np.float32).max)
        assert (error[normal] / spacing[normal]).max() <= 1.0
        assert (error[want < 2.0**-126] <= 2.0**-149).all()
        big = want > np.finfo(np.float32).max          # past float32's range (inf, 89, 1e30...)
        assert np.array_equal(np.isposinf(got), big)
        assert np.isnan(got[np.isnan(want)]).all() and got[xs == -np.inf][0] == 0.0


def test_kernel_16bit_log1p_and_erfc_are_within_their_bound():
    """What bfloat16/float16 kernels compute log1p and erfc with (FAST: log1p's series below
    2**-7, else log2 of 1 + u; Numerical Recipes' erfc fit), in float32 against float64: within
    2**-14 relative wherever the truth is a normal float32 (bfloat16's half-ULP is 2**-9), on
    both sides of log1p's switch and through erfc's tail; special values as log1p's and
    erfc's own.  (The GPU's log2 and exp2 are approximate; actgen.device_accuracy checks the
    same there.)"""
    from actgen.device_accuracy import FAST16_REL_BOUND, check_fast16
    if _apply_log1p is None:
        pytest.skip("triton is not installed")
    got = check_fast16("cpu")
    assert got["log1p_max_rel"] <= FAST16_REL_BOUND
    assert got["erfc_max_rel"] <= FAST16_REL_BOUND
    assert got["specials_as_expected"]


def test_kernel_16bit_forms_are_the_ones_compiled_for_16bit_data():
    """The FAST forms are what a kernel on 16-bit data calls, and only there: log1p and erfc on
    float32 data stay the accurate ones (libdevice's erfc: the same values as math.erfc to a
    few ULP), and the 16-bit ones differ from them by more than float32 rounding."""
    if _apply_log1p is None:
        pytest.skip("triton is not installed")
    from actgen.device_accuracy import erfc_kernel
    z = torch.linspace(-9, 9, 4001)
    out = {}
    for fast in (False, True):
        o = torch.empty_like(z)
        erfc_kernel[(_triton.cdiv(len(z), 1024),)](z, o, len(z), BLOCK=1024, FAST=fast)
        out[fast] = o.double().numpy()
    want = np.array([math.erfc(v) for v in z.double().tolist()])
    ok = want > 2.0**-126
    rel = {f: np.abs(out[f][ok] - want[ok]) / want[ok] for f in out}
    assert rel[False].max() <= 2**-21
    assert 2**-21 < rel[True].max() <= 2**-14


def test_kernel_sqrt_square_plus_is_within_an_ulp(triton_backend):
    """sqrt(u**2 + c) in float32 kernels (actgen.runtime.triton_lang.sqrt_square_plus: the
    sqrt of one fma, scaled where |c| is outside [1e-30, 1e30], |u| past 4096 sqrt(|c|))
    against mpmath: within an ULP for c from 1e-40 to 1e36 and negative c alike, |u| from 0 to
    3e38 (where u**2 overflows); inf for inf, NaN for NaN and where u**2 + c < 0."""
    import mpmath
    rng = np.random.default_rng(1)
    for c in (4.0, 1.0, 1e-40, 1e-32, 3e-31, 2e30, 1e36, -4.0, -1e-35, -1e32):
        r = math.sqrt(abs(c))
        us = np.concatenate([r * np.exp(rng.uniform(-20, 10, 3000)), -r * rng.uniform(0, 2, 1000),
                             [0.0, r, r * 4096, r * 4097, 3e38, 1e20, 2.0**-140]]).astype(np.float32)
        u = torch.from_numpy(us)
        out = torch.empty_like(u)
        _sqrt_square_plus[(triton.cdiv(len(u), 1024),)](u, out, c, len(u), BLOCK=1024)
        c32 = float(np.float32(c))
        with mpmath.workdps(40):
            square = [mpmath.mpf(float(v)) ** 2 + mpmath.mpf(c32) for v in us]
            want = np.array([float(mpmath.sqrt(s)) if s >= 0 else math.nan for s in square])
        got = out.double().numpy()
        real = ~np.isnan(want)
        assert np.array_equal(np.isnan(got), ~real), c
        ulp = np.spacing(want[real].astype(np.float32)).astype(np.float64)
        assert (np.abs(got[real] - want[real]) / ulp).max() <= 1.0, c
    special = torch.tensor([math.inf, -math.inf, math.nan, 0.5])
    got = torch.empty_like(special)
    _sqrt_square_plus[(1,)](special, got, -1.0, 4, BLOCK=4)
    assert got[:2].tolist() == [math.inf, math.inf] and got[2:].isnan().all()


def test_torch_fx_symbolic_trace_holds_each_op_as_one_node():
    """torch.fx.symbolic_trace (FX quantization, feature extraction) of a model holding the
    modules: each op is one call_function node, as torch's own functions (it was "input 'x'
    must be a tensor, got Proxy", and a gated module's split was control flow on a Proxy);
    the traced module computes what the model does, gradients included."""
    import torch.fx

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 12), ops.PReLU(12), ops.SwiGLU(), ops.GELU(approximate="tanh"),
                                ops.Polynomial(), ops.SiLU())
    traced = torch.fx.symbolic_trace(model)
    calls = [n.target.__name__ for n in traced.graph.nodes if n.op == "call_function"]
    assert calls == ["prelu", "swiglu", "gelu", "polynomial", "silu"], calls
    x = torch.randn(5, 4)
    torch.testing.assert_close(traced(x), model(x), rtol=0, atol=0)
    traced(x).sum().backward()
    got = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model(x).sum().backward()
    for a, b in zip(got, [p.grad for p in model.parameters()]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_misused_arguments_are_type_errors_that_name_them():
    """As torch's own ops refuse them: training that is no bool (F.rrelu), a bool or integer
    weight (F.prelu), a sparse input; values given as a constant or number param that are
    several (a tensor or an array) name the argument (they were accepted, or torch's "only
    one element tensors can be converted to Python scalars")."""
    import numpy as np

    x = torch.randn(2, 3)
    for call, problem in (
            (lambda: ops.rrelu(x, training="yes"), "rrelu: training must be True or False, got 'yes'"),
            (lambda: ops.rrelu(x, training=None), "rrelu: training must be True or False, got None"),
            (lambda: ops.rrelu(x, training=2), "rrelu: training must be True or False, got 2"),
            (lambda: ops.prelu(x, torch.tensor([True, False, True])),
             "prelu: param 'weight' must be a floating-point tensor, got torch.bool"),
            (lambda: ops.prelu(x, torch.tensor([1, 2, 3])), "prelu: param 'weight' must be a floating-point tensor, got torch.int64"),
            (lambda: ops.prelu(x, np.array([0.1, 0.2, 0.3])),
             r"prelu: param 'weight' must be a real number \(one value\), got a ndarray of shape \(3,\)"),
            (lambda: ops.leaky_relu(x, torch.tensor([0.2, 0.3])),
             r"leaky_relu: constant 'negative_slope' must be a real number \(one value\), got a Tensor of shape \(2,\)"),
            (lambda: ops.silu(torch.randn(3, 3).to_sparse()), "silu: input 'x' must be a dense tensor, got layout torch.sparse_coo")):
        with pytest.raises(TypeError, match=problem):
            call()
    # what torch takes, taken: a bool (or 0/1) training, one value as a 0-dim tensor or a numpy scalar
    torch.testing.assert_close(ops.rrelu(x, training=0), F.rrelu(x, training=False))
    torch.testing.assert_close(ops.leaky_relu(x, torch.tensor(0.3)), F.leaky_relu(x, 0.3))
    torch.testing.assert_close(ops.leaky_relu(x, np.float32(0.3)), F.leaky_relu(x, 0.3))


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
def test_the_growth_threshold_is_one_number_everywhere():
    """A probe's limit is +-inf from GROWTH on: the compiler (derive), the fallback (runtime)
    and the kernels (triton_lang, a literal: the real compiler takes globals only as
    constexpr) must agree on it."""
    import inspect

    from actgen import derive, runtime
    from actgen.runtime import triton_lang

    assert derive.GROWTH == runtime.GROWTH == 2.0 ** 14
    assert f">= {runtime.GROWTH!r}" in inspect.getsource(triton_lang.grown.fn)
    # and on where a NaN value at a finite input takes the limit (LimitAtInf)
    assert f">= {runtime.HUGE_INPUT!r}" in inspect.getsource(triton_lang.limit_at_inf.fn)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_scaled_input_and_inverse_scale_are_frexps(dtype):
    """u / 2**k and 2**-k, k = max(0, e) with frexp's |u| < 2**e (numpy's frexp and ldexp in
    float64 the reference): exact over the whole range - zeros, subnormals, powers of two and
    their neighbours, the largest finite value - with +-1 and 0 at +-inf, NaN and 0 at NaN;
    the out= forms write the same bits without allocating."""
    np_dt = np.float32 if dtype == torch.float32 else np.float64
    fi = np.finfo(np_dt)
    rng = np.random.default_rng(0)
    edges = [0.0, -0.0, 0.5, 0.75, 1.0, -1.0, 1.5, 2.0, -4.0, 3.0, 1234.5, fi.tiny, fi.tiny / 8, -fi.smallest_subnormal,
             fi.max, -fi.max, fi.max / 2, 2.0 ** 100, np.nextafter(np_dt(2.0), np_dt(0)), np.inf, -np.inf, np.nan]
    spread = rng.standard_normal(4000) * 10.0 ** rng.integers(fi.minexp // 3, fi.maxexp // 3.33, 4000)
    vals = np.concatenate([np.array(edges, dtype=np_dt), spread.astype(np_dt)])
    e = np.frexp(vals.astype(np.float64))[1]
    k = np.clip(e, 0, None)
    with np.errstate(all="ignore"):
        w_ref = np.where(np.isinf(vals) | np.isnan(vals), 0.0, np.ldexp(1.0, -k)).astype(np_dt)
        v_ref = np.where(np.isinf(vals), np.sign(vals), np.ldexp(vals.astype(np.float64), -k)).astype(np_dt)
    u = torch.from_numpy(vals.copy())
    v, w = rt.scaled_input(u).numpy(), rt.inverse_scale(u).numpy()
    assert np.array_equal(w, w_ref) and np.array_equal(v, v_ref, equal_nan=True)
    assert np.all(np.abs(v[np.isfinite(vals)]) < 1) and np.all(w > 0) == np.all(np.isfinite(vals))
    out = torch.full_like(u, math.nan)
    assert rt.scaled_input(u, out=out) is out and np.array_equal(out.numpy(), v_ref, equal_nan=True)
    assert rt.inverse_scale(u, out=out) is out and np.array_equal(out.numpy(), w_ref)
