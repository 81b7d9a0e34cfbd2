"""Generated ops under torch's transforms: forward-mode AD, vmap, grad, double backward, compile.

References are torch's own functions (or the formula in plain torch) under the same transform.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.func import grad, jacfwd, jacrev, jvp, vjp, vmap

import actgen.ops as ops


def prelu_ref(x, w):
    return torch.where(x > 0, x, w.view(-1, *([1] * (x.dim() - 2))) * x)


def poly_ref(x, a0, a1, a2, a3):
    return a0 + a1 * x + a2 * x**2 + a3 * x**3


def _poly_params():
    return [torch.tensor([v], dtype=torch.float64) for v in (0.1, 0.5, -0.3, 0.2)]


# --- forward-mode AD -----------------------------------------------------------------


def test_func_jvp_inputs_and_params(backend):
    x, t = torch.randn(4, 5, dtype=torch.float64), torch.randn(4, 5, dtype=torch.float64)
    ps = _poly_params()
    dps = [torch.randn(1, dtype=torch.float64) for _ in ps]
    y, dy = jvp(ops.polynomial, (x, *ps), (t, *dps))
    ry, rdy = jvp(poly_ref, (x, *ps), (t, *dps))
    torch.testing.assert_close(y, ry)
    torch.testing.assert_close(dy, rdy)


def test_autograd_forward_ad(backend):
    import torch.autograd.forward_ad as fwAD

    x, t = torch.randn(3, 7, dtype=torch.float64), torch.randn(3, 7, dtype=torch.float64)
    with fwAD.dual_level():
        out = fwAD.unpack_dual(ops.mish(fwAD.make_dual(x, t)))
        ref = fwAD.unpack_dual(F.mish(fwAD.make_dual(x, t)))
    torch.testing.assert_close(out.primal, ref.primal)
    torch.testing.assert_close(out.tangent, ref.tangent)


def test_jacfwd_of_gated(backend):
    a, b = torch.randn(5, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    ja = jacfwd(ops.swiglu, argnums=(0, 1))(a, b)
    ra = jacfwd(lambda u, v: F.silu(u) * v, argnums=(0, 1))(a, b)
    for j, r in zip(ja, ra):
        torch.testing.assert_close(j, r)


# --- vmap and grad -------------------------------------------------------------------


def test_vmap_over_inputs_and_over_params(backend):
    xb = torch.randn(6, 2, 3, 4, dtype=torch.float64)
    w = torch.rand(3, dtype=torch.float64)
    torch.testing.assert_close(vmap(lambda t: ops.prelu(t, w))(xb), vmap(lambda t: prelu_ref(t, w))(xb))
    wb = torch.rand(6, 3, dtype=torch.float64)
    torch.testing.assert_close(vmap(ops.prelu)(xb, wb), torch.stack([prelu_ref(a, b) for a, b in zip(xb, wb)]))


def test_vmap_over_an_empty_batch(backend):
    """vmap over a batch of 0 entries gives an empty batch of the right shape (it indexed
    the first entry's result), for an op, a per-channel one, its gradient and a draw."""
    w = torch.rand(4)
    assert vmap(ops.mish)(torch.randn(0, 3)).shape == (0, 3)
    assert vmap(lambda x: ops.prelu(x, w))(torch.randn(0, 2, 4, 5)).shape == (0, 2, 4, 5)
    assert vmap(grad(lambda x: ops.mish(x).sum()))(torch.randn(0, 3)).shape == (0, 3)
    assert vmap(lambda x: ops.rrelu(x, training=True), randomness="different")(torch.randn(0, 3)).shape == (0, 3)
    a, b = vmap(ops.swiglu)(torch.randn(0, 3), torch.randn(0, 3)), F.silu(torch.randn(0, 3))
    assert a.shape == b.shape and a.dtype == b.dtype


def test_grad_and_per_sample_param_grads(backend):
    xb = torch.randn(5, 2, 3, 4, dtype=torch.float64)
    w = torch.rand(3, dtype=torch.float64)
    g = vmap(grad(lambda t, w: ops.prelu(t, w).pow(2).sum(), argnums=(0, 1)), in_dims=(0, None))(xb, w)
    r = vmap(grad(lambda t, w: prelu_ref(t, w).pow(2).sum(), argnums=(0, 1)), in_dims=(0, None))(xb, w)
    for a, b in zip(g, r):
        torch.testing.assert_close(a, b)


def test_vjp_with_batched_cotangents(backend):
    x = torch.randn(4, 3, 5, dtype=torch.float64)
    ps = _poly_params()
    _, f = vjp(ops.polynomial, x, *ps)
    _, rf = vjp(poly_ref, x, *ps)
    cot = torch.randn(7, 4, 3, 5, dtype=torch.float64)
    for a, b in zip(vmap(f)(cot), vmap(rf)(cot)):
        torch.testing.assert_close(a, b)


def test_batched_gradients_of_a_gated_op_on_one_tensor(backend):
    """autograd.grad(is_grads_batched=True) - what gradcheck's batched check and
    jacobian(vectorize=True) use - through glu(x) and swiglu(x) split in halves (their
    backward wrote into one buffer with out=, which a batched tensor refuses) and through a
    per-channel param: each batch entry's gradients as torch's for that cotangent."""
    x = torch.randn(3, 4, 5, dtype=torch.float64, requires_grad=True)
    cot = torch.randn(6, 3, 2, 5, dtype=torch.float64)
    got, = torch.autograd.grad(ops.glu(x, dim=1), x, cot, is_grads_batched=True)
    want, = torch.autograd.grad(F.glu(x, 1), x, cot, is_grads_batched=True)
    torch.testing.assert_close(got, want)
    got, = torch.autograd.grad(ops.swiglu(x, dim=1), x, cot, is_grads_batched=True)
    a, b = x.chunk(2, 1)
    want, = torch.autograd.grad(F.silu(a) * b, x, cot, is_grads_batched=True)
    torch.testing.assert_close(got, want)
    w = torch.rand(4, dtype=torch.float64, requires_grad=True)
    cot = torch.randn(6, 3, 4, 5, dtype=torch.float64)
    got = torch.autograd.grad(ops.prelu(x, w), (x, w), cot, is_grads_batched=True)
    want = torch.autograd.grad(F.prelu(x, w), (x, w), cot, is_grads_batched=True)
    for g, r in zip(got, want):
        torch.testing.assert_close(g, r)
    assert torch.autograd.gradcheck(lambda t: ops.swiglu(t, dim=1), (x,), check_batched_grad=True)


def test_forward_ad_through_a_gated_op_on_one_tensor_that_requires_grad(backend):
    """Forward mode through glu(x) / swiglu(x) split in halves, x requiring grad (the output
    of a trainable layer): the split's Function for the backward's one buffer has no jvp, so
    it must not be taken under a dual level; tangents, forward-over-reverse and a
    forward-mode Hessian as torch's F.glu and F.silu(a) * b give."""
    import torch.autograd.forward_ad as fwAD
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    t, g = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 2, dtype=torch.float64)

    def swiglu_ref(u):
        a, b = u.chunk(2, -1)
        return F.silu(a) * b

    for op, ref in ((ops.glu, F.glu), (ops.swiglu, swiglu_ref)):
        with fwAD.dual_level():
            got = fwAD.unpack_dual(op(fwAD.make_dual(x, t))).tangent
            want = fwAD.unpack_dual(ref(fwAD.make_dual(x, t))).tangent
            torch.testing.assert_close(got, want)
            xd = fwAD.make_dual(x, t)           # forward over reverse
            got = fwAD.unpack_dual(torch.autograd.grad(op(xd), xd, g, create_graph=True)[0]).tangent
            xd = fwAD.make_dual(x, t)
            want = fwAD.unpack_dual(torch.autograd.grad(ref(xd), xd, g, create_graph=True)[0]).tangent
            torch.testing.assert_close(got, want)
        hessian = lambda f: torch.autograd.functional.hessian(
            lambda u: f(u).sum(), x.detach(), vectorize=True, outer_jacobian_strategy="forward-mode")
        torch.testing.assert_close(hessian(op), hessian(ref))
    assert torch.autograd.gradgradcheck(ops.glu, (x,), check_fwd_over_rev=True)


def test_reverse_over_forward_in_a_param_with_a_limit_at_inf(backend):
    """jacrev(jacfwd(f)) in swish's beta, whose derivatives hold a limit at +-inf read off in
    the params (_rt.grown): the limit's branch not taken had a gradient of 0 * inf = NaN."""
    x = torch.tensor([-1.0, 0.5, 2.0], dtype=torch.float64)
    b = torch.tensor([0.7], dtype=torch.float64)
    want = jacrev(jacrev(lambda bb: (x * torch.sigmoid(bb * x)).sum()))(b)
    torch.testing.assert_close(jacrev(jacfwd(lambda bb: ops.swish(x, bb).sum()))(b), want)
    bg = b.clone().requires_grad_()
    with torch.autograd.forward_ad.dual_level():
        y = ops.swish(torch.autograd.forward_ad.make_dual(x, torch.ones_like(x)), bg)
        tangent = torch.autograd.forward_ad.unpack_dual(y).tangent
    got, = torch.autograd.grad(tangent.sum(), bg)
    xr, br = x.clone().requires_grad_(), b.clone().requires_grad_()
    slope, = torch.autograd.grad((xr * torch.sigmoid(br * xr)).sum(), xr, create_graph=True)
    torch.testing.assert_close(got, torch.autograd.grad(slope.sum(), br)[0])


def test_grad_of_grad(backend):
    x = torch.tensor(0.7, dtype=torch.float64)
    d2 = grad(grad(lambda t: ops.mish(t)))(x)
    r2 = grad(grad(lambda t: F.mish(t)))(x)
    torch.testing.assert_close(d2, r2)


def test_double_backward_through_param_gradients(backend):
    x = torch.randn(3, 4, 5, dtype=torch.float64, requires_grad=True)
    w = torch.rand(4, dtype=torch.float64, requires_grad=True)
    xr, wr = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    m = ops.learnable_activation
    args = [torch.tensor([1.3], dtype=torch.float64, requires_grad=True), torch.tensor([0.2], dtype=torch.float64, requires_grad=True)]
    y = m(x, w, *args)
    gx, gw = torch.autograd.grad(y.pow(2).sum(), (x, w), create_graph=True)
    (gx.sum() + gw.pow(2).sum()).backward()
    argr = [a.detach().clone().requires_grad_() for a in args]
    ref = argr[0] * torch.where(xr > 0, xr, wr.view(-1, 1) * xr) + argr[1]
    rx, rw = torch.autograd.grad(ref.pow(2).sum(), (xr, wr), create_graph=True)
    (rx.sum() + rw.pow(2).sum()).backward()
    torch.testing.assert_close(x.grad, xr.grad)
    torch.testing.assert_close(w.grad, wr.grad)
    for a, b in zip(args, argr):
        torch.testing.assert_close(a.grad, b.grad)


def test_double_backward_leaves_gradients_not_taken_out(backend):
    """Only the first-order gradients differentiated again enter the second derivatives: at
    x = 1e30 polynomial's d2f/dx da3 = 3x**2 is inf in float32, and its gradient dL/dx of
    L = sum(df/da1) (= x, so dL/dx = 1) is 1, not 0 * inf = NaN."""
    x = torch.tensor([1e30, -1e30, 3.0], requires_grad=True)
    ps = [torch.tensor([v], requires_grad=True) for v in (0.1, 0.5, -0.3, 0.2)]
    grads = torch.autograd.grad(ops.polynomial(x, *ps).sum(), (x, *ps), create_graph=True)
    (gx_of_ga1,) = torch.autograd.grad(grads[2], x, retain_graph=True)
    torch.testing.assert_close(gx_of_ga1, torch.ones(3))
    (gx_of_gx,) = torch.autograd.grad(grads[0].sum(), x)     # 2*a2 + 6*a3*x
    torch.testing.assert_close(gx_of_gx, 2 * ps[2].detach() + 6 * ps[3].detach() * x.detach())


def test_forward_over_reverse_hessian(backend):
    """torch.func.hessian (jacfwd of jacrev) and gradgradcheck's forward-over-reverse check:
    the backward's own jvp (it raised NotImplementedError), against plain torch's, with
    per-channel params and two inputs."""
    from torch.func import hessian

    x = torch.tensor([0.5, -1.0, 2.0, -3.5], dtype=torch.float64)
    torch.testing.assert_close(hessian(lambda t: ops.mish(t).sum())(x), hessian(lambda t: F.mish(t).sum())(x))
    xc, w = torch.randn(2, 3, 4, dtype=torch.float64), torch.rand(3, dtype=torch.float64)
    got = hessian(lambda t, v: ops.prelu(t, v).pow(2).sum(), argnums=(0, 1))(xc, w)
    want = hessian(lambda t, v: prelu_ref(t, v).pow(2).sum(), argnums=(0, 1))(xc, w)
    for row, ref in zip(got, want):
        for a, b in zip(row, ref):
            torch.testing.assert_close(a, b)
    ps = [p.requires_grad_() for p in _poly_params()]
    assert torch.autograd.gradgradcheck(ops.polynomial, (x.clone().requires_grad_(), *ps), check_fwd_over_rev=True)
    a, b = (torch.randn(6, dtype=torch.float64, requires_grad=True) for _ in range(2))
    assert torch.autograd.gradgradcheck(ops.swiglu, (a, b), check_fwd_over_rev=True)


# --- torch.compile -------------------------------------------------------------------


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(16, 32)
        self.act1 = ops.PReLU(32)
        self.fc2 = torch.nn.Linear(32, 32)
        self.act2 = ops.SwiGLU()
        self.act3 = ops.LearnableActivation(16)

    def forward(self, x):
        h = self.act1(self.fc1(x))
        h = self.act2(self.fc2(h))
        return ops.mish(self.act3(h)).sum(-1)


@pytest.mark.parametrize("compiler", ["inductor", "aot_eager"])
def test_compile_fullgraph_same_results_no_recompile(compiler, torch_backend):
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    net = Net()
    frames = []

    def count(gm, example_inputs):
        frames.append(gm)
        return make_boxed_func(gm)

    backend = compiler if compiler == "inductor" else "aot_eager"
    if compiler == "aot_eager":
        from functorch.compile import make_boxed_func
        from torch._dynamo.backends.common import aot_autograd

        backend = aot_autograd(fw_compiler=count, bw_compiler=lambda gm, _: make_boxed_func(gm))
    compiled = torch.compile(net, fullgraph=True, backend=backend)
    for i, batch in enumerate((8, 13, 29)):
        x = torch.randn(batch, 16)
        if i == 0:
            torch._dynamo.mark_dynamic(x, 0)
        y = compiled(x)
        y.square().sum().backward()
        got = [p.grad.clone() for p in net.parameters()]
        net.zero_grad()
        ye = net(x)
        ye.square().sum().backward()
        want = [p.grad.clone() for p in net.parameters()]
        net.zero_grad()
        torch.testing.assert_close(y, ye, rtol=1e-5, atol=1e-5)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    if compiler == "aot_eager":
        assert len(frames) == 1, f"{len(frames)} forward graphs for 3 batch sizes"
        assert any("actgen." in str(n.target) for n in frames[0].graph.nodes)   # the custom ops, opaque
    assert counters["stats"]["unique_graphs"] == 1
    assert not counters["graph_break"]


def test_compile_backward_on_the_kernels_with_several_params(triton_backend):
    """On the kernels (the GPU's path) the param gradients are views of one buffer, which a
    custom op may not return: torch.compile's backward through an op with two or more params
    (LearnableActivation, Polynomial) failed ("may not alias").  Compiled and eager agree."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    net = torch.nn.Sequential(Net(), torch.nn.Unflatten(0, (-1, 1)), ops.Polynomial())
    compiled = torch.compile(net, fullgraph=True, backend="aot_eager")
    x = torch.randn(8, 16)
    compiled(x).square().sum().backward()
    got = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    net(x).square().sum().backward()
    for a, b in zip(got, [p.grad for p in net.parameters()]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_compile_with_a_tensor_constant(torch_backend):
    """A constant given as a 0-dim tensor: torch.compile breaks the graph where it reads the
    value (as for torch's own ops' float arguments) and the results are F.elu's; under
    fullgraph=True, where nothing can read it on the host, the error names the constant
    (it was the custom op's schema refusing a list that held a symbolic float)."""
    torch._dynamo.reset()
    x = torch.randn(64, requires_grad=True)
    alpha = torch.tensor(0.7)
    y = torch.compile(lambda t, a: ops.elu(t, a), backend="aot_eager")(x, alpha)
    y.sum().backward()
    xr = x.detach().requires_grad_()
    F.elu(xr, 0.7).sum().backward()
    torch.testing.assert_close(y, F.elu(x.detach(), 0.7))
    torch.testing.assert_close(x.grad, xr.grad)
    torch._dynamo.reset()
    with pytest.raises(Exception, match="constant 'alpha' is a tensor's value"):
        torch.compile(lambda t, a: ops.elu(t, a), fullgraph=True, backend="aot_eager")(x, alpha)


class TorchNet(torch.nn.Module):
    """Net with its activations written in plain torch: the reference for recompiles."""

    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(16, 32)
        self.act1 = torch.nn.PReLU(32)
        self.fc2 = torch.nn.Linear(32, 32)

    def forward(self, x):
        a, b = self.fc2(self.act1(self.fc1(x))).chunk(2, -1)
        return F.mish(F.silu(a) * b).sum(-1)


def _graphs_for_batch_sizes(net, sizes):
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    torch._dynamo.reset()
    frames = []

    def count(gm, example_inputs):
        frames.append(gm)
        return make_boxed_func(gm)

    compiled = torch.compile(net, fullgraph=True,
                             backend=aot_autograd(fw_compiler=count, bw_compiler=lambda gm, _: make_boxed_func(gm)))
    for batch in sizes:
        compiled(torch.randn(batch, 16)).sum().backward()
    return len(frames)


def test_compile_without_marking_recompiles_no_more_than_plain_torch(torch_backend):
    """Without mark_dynamic torch compiles once static, then once dynamic, for any model;
    the generated ops add no recompile to that."""
    sizes = (8, 13, 29, 64)
    ours = _graphs_for_batch_sizes(Net(), sizes)
    theirs = _graphs_for_batch_sizes(TorchNet(), sizes)
    assert ours == theirs <= 2


# --- random draws (rrelu in training mode) under transforms ------------------------------


def seeded(fn, seed=7):
    """fn in training mode with the RNG reset before each call: a deterministic function."""
    def call(*args):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return fn(*args, training=True)
    return call


def test_gradcheck_and_gradgradcheck_in_training_mode(backend):
    shape = (4, 7) if backend == "torch" else (2, 3)          # (the interpreter is slow)
    x = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3)).requires_grad_()
    rrelu = seeded(ops.rrelu)
    assert not torch.equal(rrelu(x), ops.rrelu(x))          # it does draw
    tol = {} if backend == "torch" else dict(atol=1e-6, rtol=1e-4)
    assert torch.autograd.gradcheck(rrelu, (x,), check_forward_ad=backend == "torch", **tol)
    assert torch.autograd.gradgradcheck(rrelu, (x,), **tol)
    # two draws, a param in a bound: second derivatives d2y/dx db = r0 are not zero
    noisy = __import__("actgen").compile("x * uniform(0, b) + uniform(-1, 1)", name="noisy", params={"b": 2.0}).noisy
    b = torch.tensor([1.5], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(seeded(noisy), (x, b), check_forward_ad=backend == "torch", **tol)
    assert torch.autograd.gradgradcheck(seeded(noisy), (x, b), **tol)


def test_forward_ad_uses_the_forwards_draws(backend):
    import torch.autograd.forward_ad as fwAD

    x = torch.randn(500, dtype=torch.float64)
    t = torch.randn(500, dtype=torch.float64)
    y, dy = jvp(lambda u: ops.rrelu(u, training=True), (x,), (t,))
    slope = torch.where(x > 0, 1.0, y / x)
    assert slope.unique().numel() > 200
    torch.testing.assert_close(dy, slope * t)
    with fwAD.dual_level():
        out = fwAD.unpack_dual(ops.rrelu(fwAD.make_dual(x, t), training=True))
    torch.testing.assert_close(out.tangent, torch.where(x > 0, 1.0, out.primal / x) * t)


def test_vmap_of_a_training_mode_draw_follows_vmap_randomness(backend):
    xb = torch.randn(4, 300, dtype=torch.float64).abs().neg()       # negative: every element draws
    fn = lambda t: ops.rrelu(t, training=True)
    with pytest.raises(RuntimeError, match="randomness"):
        vmap(fn)(xb)
    same = vmap(fn, randomness="same")(xb) / xb
    for s in same[1:]:
        torch.testing.assert_close(s, same[0], rtol=1e-15, atol=0)
    different = vmap(fn, randomness="different")(xb) / xb
    assert not torch.equal(different[0], different[1])
    for slopes in (same, different):
        assert slopes.min() >= 0.125 and slopes.max() <= 1 / 3 + 1e-12
    torch.testing.assert_close(vmap(ops.rrelu)(xb), F.rrelu(xb))     # evaluation mode


@pytest.fixture(scope="module")
def drawing_swish():
    """x * sigmoid(b * u * x), u ~ U(0.5, 2) per element in training mode, b a param: smooth,
    so that every derivative sees the draws; k = b*u is read back off f."""
    import actgen

    return actgen.compile("x * sigmoid(b * uniform(0.5, 2.0) * x)", name="drawing_swish", params={"b": 1.0}).drawing_swish


def _swish_derivatives(x, b, y):
    """(df/dx, d2f/dx2, df/db) of x*sigmoid(k*x) at the k each element drew (from f = y)."""
    k = torch.logit(y / x) / x
    s = torch.sigmoid(k * x)
    ds = s * (1 - s)
    return s + k * x * ds, 2 * k * ds + k * k * x * ds * (1 - 2 * s), k / b * x * x * ds


def test_under_vmap_every_derivative_sees_each_entrys_draws(drawing_swish, backend):
    """vmap(randomness='different') gives each entry its own draws; the gradients (per-sample,
    params' too), jvps and second derivatives under it are each entry's own, against the
    closed form at the draws read back off f; 'same' gives every entry one set; a vmap over
    the cotangents of one call keeps that call's draws; a third derivative there is refused."""
    from torch.func import jacrev

    torch.manual_seed(0)
    xb = (torch.rand(3, 6, dtype=torch.float64) + 0.5) * torch.tensor([1.0, -1.0]).repeat(3)
    b = torch.tensor([1.3], dtype=torch.float64)

    def f(x, b):
        y = drawing_swish(x, b, training=True)
        return y.sum(), y

    for randomness in ("different", "same"):
        (gx, gb), y = vmap(grad(f, argnums=(0, 1), has_aux=True), in_dims=(0, None), randomness=randomness)(xb, b)
        dx, _, db = _swish_derivatives(xb, b, y)
        torch.testing.assert_close(gx, dx)
        torch.testing.assert_close(gb[:, 0], db.sum(1))
        k = torch.logit(y / xb) / xb
        assert torch.allclose(k[0], k[1]) == (randomness == "same")

    # nested: an entry of an entry
    xbb = xb.reshape(3, 2, 3)
    gx, y = vmap(vmap(grad(lambda x: f(x, b), has_aux=True), randomness="different"), randomness="different")(xbb)
    torch.testing.assert_close(gx, _swish_derivatives(xbb, b, y)[0])

    # one call, its vjp over a batch of cotangents (vmap's default randomness: no new draws)
    y1, pullback = vjp(lambda x: drawing_swish(x, b, training=True), xb[0])
    rows = vmap(pullback)(torch.eye(6, dtype=torch.float64))[0]
    torch.testing.assert_close(rows, torch.diag(_swish_derivatives(xb[0], b, y1)[0]))

    # forward mode, and second derivatives in every order of the two modes
    def with_y(x):
        y = drawing_swish(x, b, training=True)
        return y, y

    y, t = vmap(lambda x: jvp(lambda u: drawing_swish(u, b, training=True), (x,), (torch.ones_like(x),)),
                randomness="different")(xb)
    torch.testing.assert_close(t, _swish_derivatives(xb, b, y)[0])
    J, y = vmap(jacfwd(with_y, has_aux=True), randomness="different")(xb)
    torch.testing.assert_close(torch.diagonal(J, dim1=1, dim2=2), _swish_derivatives(xb, b, y)[0])
    for outer, inner in ((jacrev, jacrev), (jacfwd, jacrev), (jacrev, jacfwd)):
        H, y = vmap(outer(inner(with_y, has_aux=True), has_aux=True), randomness="different")(xb)
        d2 = torch.diagonal(torch.diagonal(H, dim1=1, dim2=2), dim1=1, dim2=2)
        torch.testing.assert_close(d2, _swish_derivatives(xb, b, y)[1], msg=f"{outer.__name__}({inner.__name__})")
    with pytest.raises(RuntimeError, match="past the second"):
        vmap(jacrev(jacrev(jacrev(lambda x: drawing_swish(x, b, training=True)))), randomness="different")(xb)


def test_compile_training_mode_draws_and_backward_sees_the_draws(torch_backend):
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    m = ops.RReLU()
    compiled = torch.compile(m, fullgraph=True, backend="aot_eager")
    x = torch.randn(2000, dtype=torch.float64)
    results = []
    for seed in (5, 5, 6):
        xs = x.clone().requires_grad_()
        torch.manual_seed(seed)
        y = compiled(xs)
        y.sum().backward()
        results.append((y.detach(), xs.grad))
    (y, g), (y2, _), (y3, _) = results
    neg = x < 0
    slope = y[neg] / x[neg]
    assert slope.min() >= 0.125 and slope.max() <= 1 / 3 and slope.unique().numel() > 500
    torch.testing.assert_close(g[neg], slope)
    assert torch.equal(y, y2) and not torch.equal(y, y3)
    m.eval()
    torch.testing.assert_close(compiled(x), F.rrelu(x))
    assert not counters["graph_break"]


# --- torch.jit.trace -------------------------------------------------------------------


@pytest.mark.parametrize("name", ["Mish", "PReLU", "SwiGLU"])
def test_jit_trace_passes_its_check_and_generalises(name, backend):
    """torch.jit.trace runs a model twice and compares the graphs: an op was one opaque node
    with a gradient and torch ops without one (the second run's), so the check failed on
    every model holding one.  The op is one node either way, run again on every call: the
    trace is torch's on inputs of another shape and range, with and without gradients."""
    torch.manual_seed(0)
    ours = {"Mish": lambda: ops.Mish(), "PReLU": lambda: ops.PReLU(6), "SwiGLU": lambda: ops.SwiGLU()}[name]()
    theirs = {"Mish": torch.nn.Mish, "PReLU": lambda: torch.nn.PReLU(6),
              "SwiGLU": lambda: (lambda x: F.silu(x[..., :3]) * x[..., 3:])}[name]()
    if name == "PReLU":
        with torch.no_grad():
            ours.weight.copy_(torch.linspace(-0.5, 0.5, 6))
            theirs.weight.copy_(ours.weight)
    lin = torch.nn.Linear(6, 6)
    traced = torch.jit.trace(torch.nn.Sequential(lin, ours), (torch.randn(5, 6),))
    x = torch.randn(7, 6) * 30
    y = traced(x)
    want = theirs(lin(x))
    torch.testing.assert_close(y, want, rtol=1e-5, atol=1e-5)
    (got,) = torch.autograd.grad(y.sum(), [lin.weight])
    (expected,) = torch.autograd.grad(want.sum(), [lin.weight])
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-4)
    with torch.no_grad():
        torch.testing.assert_close(traced(x), want, rtol=1e-5, atol=1e-5)


def test_jit_trace_in_training_mode_warns_of_its_fixed_draws():
    with pytest.warns(torch.jit.TracerWarning, match="rrelu: torch.jit.trace in training mode keeps"):
        torch.jit.trace(ops.RReLU(), (torch.randn(4, 5),), check_trace=False)
    torch.jit.trace(ops.RReLU().eval(), (torch.randn(4, 5),))


def test_forward_mode_ad_under_compile_matches_eager(torch_backend):
    """torch.compile drops an autograd.Function's jvp: tangents of an op came back 0 (jvp,
    jacfwd) or None (forward_ad) with no error.  Under forward-mode AD the op runs outside
    the graph, where its jvp holds: the tangents are eager's, and torch's own."""
    import torch.autograd.forward_ad as fwAD
    from torch.func import jacfwd, jvp

    torch._dynamo.reset()
    x, t = torch.randn(6, dtype=torch.float64), torch.randn(6, dtype=torch.float64)
    beta = torch.tensor([1.5], dtype=torch.float64)
    want_silu = jvp(F.silu, (x,), (t,))[1]
    got = torch.compile(lambda x, t: jvp(ops.silu, (x,), (t,))[1], backend="aot_eager")(x, t)
    torch.testing.assert_close(got, want_silu)
    got = torch.compile(jacfwd(ops.mish), backend="aot_eager")(x)
    torch.testing.assert_close(got, jacfwd(F.mish)(x))

    def tangent(x, t, b):
        with fwAD.dual_level():
            return fwAD.unpack_dual(ops.swish(x, fwAD.make_dual(b, torch.ones_like(b)))).tangent

    got = torch.compile(tangent, backend="aot_eager")(x, t, beta)
    torch.testing.assert_close(got, x * x * torch.sigmoid(1.5 * x) * torch.sigmoid(-1.5 * x))


def test_the_forward_op_is_differentiable_where_a_graph_holds_it_alone(torch_backend):
    """torch.export's program holds the forward custom op without the Function around it:
    backward through it was "no autograd formula was registered" (with constants too: ELU's
    alpha).  Its gradients (inputs and params) are the formula's in plain torch.  A vmap
    under torch.compile stays in the graph (fullgraph) and, where its inputs require grad,
    runs outside it: its gradient is torch's."""
    torch._dynamo.reset()
    x = torch.randn(2, 5, 3, requires_grad=True)
    module = ops.Polynomial()
    with torch.no_grad():
        for k, p in enumerate(module.parameters()):
            p.fill_(0.5 - 0.25 * k)
    exported = torch.export.export(module, (x,)).module()
    exported(x).square().sum().backward()
    ps = [p.detach().clone().requires_grad_() for p in module.parameters()]
    xr = x.detach().clone().requires_grad_()
    poly_ref(xr, *ps).square().sum().backward()        # (the formula in plain torch)
    torch.testing.assert_close(x.grad, xr.grad)
    for (name, p), q in zip(exported.named_parameters(), ps):
        torch.testing.assert_close(p.grad, q.grad, msg=name)
    xe = torch.randn(3, 4, requires_grad=True)
    torch.export.export(ops.ELU(0.7), (xe,)).module()(xe).square().sum().backward()
    want = torch.autograd.grad(F.elu(xe, 0.7).square().sum(), xe)[0]
    torch.testing.assert_close(xe.grad, want)
    xb = torch.randn(3, 4, requires_grad=True)
    torch.compile(torch.func.vmap(ops.silu), backend="aot_eager")(xb).sum().backward()
    torch.testing.assert_close(xb.grad, torch.autograd.grad(F.silu(xb).sum(), xb)[0])
    torch._dynamo.reset()
    x = torch.randn(3, 4)
    got = torch.compile(torch.func.vmap(ops.silu), fullgraph=True, backend="aot_eager")(x)
    torch.testing.assert_close(got, F.silu(x))


def test_torch_func_transforms_under_compile_are_eager_s(torch_backend):
    """torch.func.grad of an op under torch.compile failed on the custom op (an autograd.Function
    "must override the setup_context"), and a vmap's randomness='same' was ignored (each row
    drew its own): under torch.func's transforms the call runs outside the graph, as in eager."""
    from torch.func import grad, vmap

    torch._dynamo.reset()
    x = torch.randn(6, dtype=torch.float64)
    got = torch.compile(grad(lambda v: ops.silu(v).sum()), backend="aot_eager")(x)
    torch.testing.assert_close(got, grad(lambda v: F.silu(v).sum())(x))
    xs = -torch.rand(3, 50) - 0.1
    same = torch.compile(vmap(lambda v: ops.rrelu(v, 0.1, 0.3, True), randomness="same"), backend="aot_eager")(xs) / xs
    torch.testing.assert_close(same[1], same[0])        # (one slope per element for every row: y/x to rounding)
    torch.testing.assert_close(same[2], same[0])
    assert ((same >= 0.1) & (same <= 0.3)).all() and same[0].unique().numel() > 10
