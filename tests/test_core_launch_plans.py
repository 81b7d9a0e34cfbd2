"""Launch plans (actgen.runtime.launch.Plan): an op without draws, called again on contiguous
inputs (or a gated op's inputs that are the halves of one tensor) of a size, dtype and device
its kernels ran on, launches by a plan made by the earlier call, skipping the layout and the
tuner.

What is checked, on the Triton kernels under the interpreter: a planned launch hands the
launcher what the unplanned one did; the planned path is taken (launch.forward and
launch.backward are not called again); the values and gradients stay the references' when
the size, the dtype, the constants or the backend change between calls; and whatever a plan
does not cover - autograd, non-contiguous inputs, forward-mode AD, vmap, batched gradients -
still takes the path it took before.
"""
import importlib

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton")

import actgen.ops as ops  # noqa: E402
from _reference import SPECS  # noqa: E402
from _stand_ins import Compiled as _Compiled, Kernel as _Kernel, launcher as _launcher  # noqa: E402
from actgen.runtime import launch, use_backend, variants  # noqa: E402
from actgen.runtime.tuning import Config, Tuner  # noqa: E402


class _Recorder:
    """Stands in for the launcher: records every launch, then launches through the JIT."""

    def __init__(self):
        self.calls = []

    def __call__(self, kernel, grid, args, consts, num_warps):
        self.calls.append((kernel, grid, args, consts, num_warps))
        return variants.jit_launch(kernel, grid, args, consts, num_warps)


@pytest.fixture
def fresh(monkeypatch, triton_backend):
    """A tuner of its own (so no plans from other tests), a recording launcher, and counts of
    the unplanned launches (launch.forward / launch.backward)."""
    monkeypatch.setattr(launch, "TUNER", Tuner())
    rec = _Recorder()
    monkeypatch.setattr(launch, "LAUNCH", rec)
    counts = {"forward": 0, "backward": 0}
    for name in counts:
        original = getattr(launch, name)

        def counted(*args, _name=name, _original=original, **kw):
            counts[_name] += 1
            return _original(*args, **kw)
        monkeypatch.setattr(launch, name, counted)
    return rec, counts


def _same_launch(first, second, replaced):
    """second launched what first did, but for the tensors at the positions `replaced` (new
    buffers): the same kernel, grid, constexprs, warps and scalar arguments, the same
    memory for the other tensors."""
    (k1, g1, a1, c1, w1), (k2, g2, a2, c2, w2) = first, second
    assert (k1, g1, c1, w1) == (k2, g2, c2, w2)
    assert len(a1) == len(a2)
    for i, (u, v) in enumerate(zip(a1, a2)):
        if isinstance(u, torch.Tensor):
            assert isinstance(v, torch.Tensor)
            assert v is not u if i in replaced else v.data_ptr() == u.data_ptr()
        else:
            assert type(u) is type(v) and u == v


def test_a_planned_forward_launches_what_the_first_did(fresh):
    rec, counts = fresh
    x = torch.randn(4096) * 4
    with torch.no_grad():
        y1 = ops.silu(x)
        y2 = ops.silu(x)
    assert counts["forward"] == 1            # the second call: by the plan
    assert len(rec.calls) == 2
    _same_launch(rec.calls[0], rec.calls[1], replaced={1})
    torch.testing.assert_close(y1, F.silu(x), rtol=1e-5, atol=1e-6)
    assert torch.equal(y1, y2)


def test_a_planned_backward_launches_what_the_first_did(fresh):
    rec, counts = fresh
    x = (torch.randn(3000) * 4).requires_grad_()
    g = torch.randn(3000)
    grads = [torch.autograd.grad(ops.mish(x), [x], g)[0] for _ in range(3)]
    assert counts == {"forward": 1, "backward": 1}
    bwd = [c for c in rec.calls if c[0] is rec.calls[1][0]]
    assert len(bwd) == 3
    _same_launch(bwd[0], bwd[2], replaced={2})
    assert bwd[2][2][0] is g                 # (the gradient as given: contiguous)
    xd = x.detach().double().requires_grad_()
    want = torch.autograd.grad(F.mish(xd), [xd], g.double())[0]
    for got in grads:
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)


def _polynomial_ref(x, ps, g, frozen):
    """The polynomial's gradients (x's, and the params' unless frozen) in float64."""
    leaves = [t.detach().double().requires_grad_(not frozen or i == 0) for i, t in enumerate((x, *ps))]
    y = sum(c * leaves[0] ** k for k, c in enumerate(leaves[1:]))
    return torch.autograd.grad(y, leaves[:1] if frozen else leaves, g.double())


def test_a_planned_call_finds_its_backward_plan_once(fresh, monkeypatch):
    """A call whose forward a plan launched finds its backward's plan through that plan: one
    lookup per forward plan, whether the params' gradients are needed and backend, not one
    per call; the gradients are the references' either way."""
    from actgen.runtime import activation

    rec, counts = fresh
    op = importlib.import_module("actgen.ops.polynomial")._OP
    lookups = []
    original = activation.Activation._plan

    def counted(self, kernel, *args):
        if kernel is op.backward_kernel:
            lookups.append(args[4])         # (need_params)
        return original(self, kernel, *args)
    monkeypatch.setattr(activation.Activation, "_plan", counted)
    x = (torch.randn(2000) * 2).requires_grad_()
    ps = [torch.full((1,), v, requires_grad=True) for v in (0.1, 0.5, 0.2, -0.1)]
    g = torch.randn(2000)
    for i, frozen in enumerate((False, True, False, True, False, True)):
        if i == 2:
            lookups.clear()
        for p in ps:
            p.requires_grad_(not frozen)
        wanted = [x] if frozen else [x, *ps]
        got = torch.autograd.grad(ops.polynomial(x, *ps), wanted, g)
        for u, v in zip(got, _polynomial_ref(x, ps, g, frozen)):
            torch.testing.assert_close(u.double(), v, rtol=1e-5, atol=1e-5)
    # the first call of each kind makes the plans (full path); the second looks the
    # backward's up through the forward's plan and keeps it there; the third finds it kept
    assert counts == {"forward": 1, "backward": 2}
    assert lookups == [True, False]          # (need_params: the params not frozen, then frozen)
    plan = next(p for p in launch.TUNER.plans.values() if p.kernel is op.forward_kernel)
    assert {link[0] for link in plan.after} == {False, True}
    assert len(rec.calls) == 12


def test_a_planned_forward_then_another_backend_or_tuner_for_its_backward(fresh, monkeypatch):
    """The backward's plan kept by a forward's is for the backend and the tuner it was found
    with: under the torch backend the backward is the fallback's (no launch), with a new tuner
    the full path's."""
    rec, counts = fresh
    x = (torch.randn(1500) * 4).requires_grad_()
    g = torch.randn(1500)
    xd = x.detach().double().requires_grad_()
    want = torch.autograd.grad(F.silu(xd), [xd], g.double())[0]
    for _ in range(3):
        torch.autograd.grad(ops.silu(x), [x], g)       # (plans made, the backward's kept)
    n = len(rec.calls)
    y = ops.silu(x)                                    # (by the plan)
    assert len(rec.calls) == n + 1
    with use_backend("torch"):
        (gx,) = torch.autograd.grad(y, [x], g)
    assert len(rec.calls) == n + 1
    torch.testing.assert_close(gx.double(), want, rtol=1e-5, atol=1e-6)
    y = ops.silu(x)
    monkeypatch.setattr(launch, "TUNER", Tuner())
    (gx,) = torch.autograd.grad(y, [x], g)
    assert counts["backward"] == 2 and len(rec.calls) == n + 3
    torch.testing.assert_close(gx.double(), want, rtol=1e-5, atol=1e-6)


def test_a_planned_call_differentiated_twice(fresh):
    """create_graph=True after plans: the backward is differentiable (the planned backward
    is not used), and the second derivative is the reference's."""
    x = (torch.randn(800) * 3).requires_grad_()
    xd = x.detach().double().requires_grad_()
    (d1,) = torch.autograd.grad(F.mish(xd).sum(), [xd], create_graph=True)
    (want,) = torch.autograd.grad(d1.sum(), [xd])
    for _ in range(3):
        (gx,) = torch.autograd.grad(ops.mish(x).sum(), [x], create_graph=True)
        assert gx.grad_fn is not None
        (ggx,) = torch.autograd.grad(gx.sum(), [x])
        torch.testing.assert_close(ggx.double(), want, rtol=1e-4, atol=1e-5)



def test_a_planned_forward_under_non_reentrant_checkpointing(fresh):
    """torch.utils.checkpoint(use_reentrant=False) lets a backward unpack its saved tensors
    once.  A planned forward whose backward has no plan yet (a module's second call of a
    step, or its first after a no-grad call) unpacked them twice: a CheckpointError.  The
    gradients are torch's GELU's."""
    from torch.utils.checkpoint import checkpoint

    torch.manual_seed(0)
    linears = [torch.nn.Linear(8, 8) for _ in range(2)]
    x = torch.randn(4, 8)
    grads = []
    for act in (ops.GELU(), torch.nn.GELU()):
        with torch.no_grad():       # (a validation pass: plans the forward)
            act(linears[0](x))
        h = x
        for lin in linears:
            h = checkpoint(torch.nn.Sequential(lin, act), h, use_reentrant=False)
        grads.append(torch.autograd.grad(h.sum(), [lin.weight for lin in linears]))
    for got, want in zip(*grads):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)

def test_a_gated_op_and_constants_are_planned(fresh):
    rec, counts = fresh
    a, b = torch.randn(2, 2048).unbind(0)
    x = torch.randn(2048) * 8
    for _ in range(2):
        torch.testing.assert_close(ops.swiglu(a, b), F.silu(a) * b, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(ops.softplus(x, 2.0, 5.0), F.softplus(x, 2.0, 5.0), rtol=1e-5, atol=1e-6)
    assert counts["forward"] == 2
    with pytest.raises(ValueError, match="same shape"):
        ops.swiglu(a, b[:-1])
    with pytest.raises(TypeError, match="floating-point"):
        ops.swiglu(a, b.int())
    torch.testing.assert_close(ops.swiglu(a, b.double()), F.silu(a) * b, rtol=1e-5, atol=1e-6)
    _same_launch(rec.calls[0], rec.calls[2], replaced={2})
    _same_launch(rec.calls[1], rec.calls[3], replaced={1})
    assert rec.calls[3][2][2:8] == tuple(launch.constant_parts([2.0, 5.0]))


def test_plans_are_per_size_dtype_and_constants(fresh):
    """Calls that alternate what a plan is keyed on each get their own launch and values."""
    rec, counts = fresh
    xs = [torch.randn(n) * 6 for n in (4096, 5000, 1)]
    for _ in range(2):
        for x in xs:
            torch.testing.assert_close(ops.silu(x), F.silu(x), rtol=1e-5, atol=1e-6)
            xb = x.bfloat16()
            torch.testing.assert_close(ops.silu(xb), F.silu(xb.float()).bfloat16(), rtol=1e-2, atol=1e-2)
            for beta, threshold in ((1.0, 20.0), (0.5, 3.0)):
                torch.testing.assert_close(ops.softplus(x, beta, threshold), F.softplus(x, beta, threshold),
                                           rtol=1e-5, atol=1e-6)
    assert counts["forward"] == 3 * 4         # once for each (size, dtype, op, constants)
    grids = {c[1] for c in rec.calls}
    assert len(grids) > 1


def test_plans_are_per_param_dtype(fresh):
    """A kernel reads a param as its dtype: a float64 or bfloat16 weight after calls with a
    float32 one is a launch of its own (a plan made for float32 would read it as float32),
    and an integer or bool weight is the TypeError of an unplanned call (a plan took it)."""
    rec, counts = fresh
    x = torch.randn(4, 3, 8)
    for dtype in (torch.float32, torch.float32, torch.float64, torch.float64, torch.bfloat16, torch.bfloat16):
        w = torch.tensor([0.1, 0.2, 0.3], dtype=dtype)
        torch.testing.assert_close(ops.prelu(x, w), F.prelu(x, w.float()), rtol=1e-6, atol=1e-6)
    assert counts["forward"] == 3
    for w in (torch.tensor([1, 2, 3]), torch.tensor([True, False, True])):
        with pytest.raises(TypeError, match="param 'weight' must be a floating-point tensor"):
            ops.prelu(x, w)


def test_a_planned_call_checks_its_arguments_as_an_unplanned_one(fresh):
    """After planned calls, a constant as a numpy array and a sparse input get call()'s
    TypeErrors (they were "unhashable type" and is_contiguous's error), and a 0-dim array
    constant is taken, as without a plan."""
    import numpy as np

    x = torch.randn(64)
    for _ in range(3):
        ops.leaky_relu(x, 0.2)
        ops.silu(x)
    with pytest.raises(TypeError, match=r"constant 'negative_slope' must be a real number \(one value\)"):
        ops.leaky_relu(x, np.array([0.2, 0.3]))
    torch.testing.assert_close(ops.leaky_relu(x, np.array(0.2)), F.leaky_relu(x, 0.2))
    with pytest.raises(TypeError, match="must be a dense tensor"):
        ops.silu(torch.randn(8, 8).to_sparse_csr())


def test_what_a_plan_does_not_cover_takes_its_own_path(fresh):
    rec, counts = fresh
    x = torch.randn(64, 64) * 4
    ops.silu(x)
    ops.silu(x)
    assert counts["forward"] == 1
    # not contiguous: a transposed view runs as its memory order (contiguous: by the plan),
    # one with gaps through the layouts
    for view in (x.t(), x[:, ::2]):
        torch.testing.assert_close(ops.silu(view), F.silu(view), rtol=1e-5, atol=1e-6)
    assert ops.silu(x.t()).stride() == x.t().stride()
    assert counts["forward"] == 2
    # autograd: a graph, and the gradient
    xg = x.clone().requires_grad_()
    y = ops.silu(xg)
    assert y.grad_fn is not None
    (gx,) = torch.autograd.grad(y, [xg], torch.ones_like(y))
    xd = x.double().requires_grad_()
    want = torch.autograd.grad(F.silu(xd), [xd], torch.ones_like(xd))[0]
    torch.testing.assert_close(gx.double(), want, rtol=1e-5, atol=1e-6)
    # ... and none under no_grad, by the plan
    with torch.no_grad():
        assert ops.silu(xg).grad_fn is None
    # the eager fallback: no launch
    n = len(rec.calls)
    with use_backend("torch"):
        torch.testing.assert_close(ops.silu(x), F.silu(x), rtol=1e-5, atol=1e-6)
    assert len(rec.calls) == n


def test_transforms_and_batched_gradients_after_a_plan(fresh):
    x = torch.randn(8, 32) * 3
    ops.gelu(x)
    ops.gelu(x)                                # a plan for (256 floats)
    xd = x.double()
    t = torch.randn_like(x)
    _, jvp = torch.func.jvp(ops.gelu, (x,), (t,))
    _, want = torch.func.jvp(F.gelu, (xd,), (t.double(),))
    torch.testing.assert_close(jvp.double(), want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.func.vmap(ops.gelu)(x), F.gelu(x), rtol=1e-5, atol=1e-6)
    xg = x.clone().requires_grad_()
    y = ops.gelu(xg)
    eye = torch.eye(y.numel()).view(-1, *y.shape)
    (jac,) = torch.autograd.grad(y, [xg], eye, is_grads_batched=True)
    d = torch.func.vmap(torch.func.grad(lambda v: F.gelu(v)))(xd.reshape(-1))
    torch.testing.assert_close(jac.double(), torch.diag(d).view_as(jac), rtol=1e-5, atol=1e-6)


def test_an_expanded_gradient_goes_in_contiguous(fresh):
    x = (torch.randn(1000) * 4).requires_grad_()
    for _ in range(2):
        x.grad = None
        ops.silu(x).sum().backward()           # (its gradient: ones, expanded from a scalar)
    xd = x.detach().double().requires_grad_()
    F.silu(xd).sum().backward()
    torch.testing.assert_close(x.grad.double(), xd.grad, rtol=1e-5, atol=1e-6)


def test_a_new_tuner_starts_without_plans_and_plans_are_bounded(fresh, monkeypatch):
    rec, counts = fresh
    x = torch.randn(512)
    ops.silu(x)
    ops.silu(x)
    assert counts["forward"] == 1
    monkeypatch.setattr(launch, "TUNER", Tuner())
    ops.silu(x)
    assert counts["forward"] == 2
    monkeypatch.setattr(launch, "MAX_PLANS", 3)
    for n in range(1, 9):
        ops.silu(torch.randn(n))
        assert 1 <= len(launch.TUNER.plans) <= 3


def test_plans_turned_off(fresh, monkeypatch):
    rec, counts = fresh
    monkeypatch.setattr(launch, "PLANS", False)
    x = (torch.randn(700) * 4).requires_grad_()
    for _ in range(3):
        torch.autograd.grad(ops.silu(x), [x], torch.ones_like(x))
        with torch.no_grad():
            torch.testing.assert_close(ops.silu(x), F.silu(x), rtol=1e-5, atol=1e-6)
    assert counts == {"forward": 6, "backward": 3} and not launch.TUNER.plans


def test_an_empty_input_has_no_plan(fresh):
    rec, counts = fresh
    for _ in range(2):
        assert ops.silu(torch.empty(0, 3)).shape == (0, 3)
    assert counts["forward"] == 2 and not rec.calls and not launch.TUNER.plans


def test_plans_made_meanwhile_do_not_recompile(fresh):
    """torch.compile traces no plan lookup: eager calls that make plans between compiled
    calls leave its graph as it is."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(lambda x: ops.silu(x) * 2, fullgraph=True, backend="aot_eager")
    for i, n in enumerate((64, 96, 160)):
        x = torch.randn(n, 8)
        if i == 0:
            torch._dynamo.mark_dynamic(x, 0)
        ops.silu(x)
        ops.silu(x)             # (a plan for x's size)
        torch.testing.assert_close(compiled(x), 2 * F.silu(x), rtol=1e-5, atol=1e-6)
    assert launch.TUNER.plans
    assert counters["stats"]["unique_graphs"] == 1
    assert not counters["graph_break"]


# --- a plan's variants, with stand-ins for a compiled kernel (no GPU here) ----------------


def test_a_plan_launches_its_variants_again_without_keying_them(monkeypatch):
    launcher = _launcher()
    monkeypatch.setattr(launch, "LAUNCH", launcher)
    keyed = []
    original = variants.variant_key
    monkeypatch.setattr(variants, "variant_key", lambda *a: keyed.append(a) or original(*a))
    kernel = _Kernel()
    plan = launch.Plan(kernel, (3,), (), (64,), (128, False), 4, (torch.float32, torch.float32))

    x = torch.zeros(64)
    outs = [plan.forward([x]) for _ in range(3)]
    assert len(kernel.compiled) == 1                 # compiled once, by the first launch
    first = kernel.compiled[0]
    assert len(keyed) == 2                           # that launch's key, and kept()'s: none since
    assert len(first.calls) == 2
    for call, out in zip(first.calls, outs[1:]):
        values = call[-5:]
        assert values[0] is x and values[1] is out and values[2:] == (64, 128, False)

    misaligned = torch.zeros(65)[1:]                 # another variant (Triton specializes on alignment)
    plan.forward([misaligned])
    plan.forward([misaligned])
    assert len(kernel.compiled) == 2 and len(kernel.compiled[1].calls) == 1
    plan.forward([x])
    assert len(first.calls) == 3 and len(keyed) == 4

    half = torch.zeros(64, dtype=torch.float16)       # not the plan's dtype: keyed every launch
    plan.forward([half])
    plan.forward([half])
    assert len(keyed) == 4 + 2 and len(kernel.compiled) == 3

    monkeypatch.setattr(launch, "LAUNCH", _launcher())      # another launcher: its own variants
    plan.forward([x])
    plan.forward([x])
    assert len(kernel.compiled) == 4 and len(kernel.compiled[3].calls) == 1 and len(first.calls) == 3
    monkeypatch.setattr(launch, "LAUNCH", launcher)

    launcher.enabled = False                         # (the launcher turned to the JIT): the JIT's
    plan.forward([x])
    assert len(kernel.compiled) == 5 and len(first.calls) == 3


def test_a_kept_static_variant_after_the_static_launcher_was_given_up():
    """A plan may hold a variant loaded through torch's launcher after the launcher turned to
    Triton's (a refused launch): launch_kept launches its Triton variant then."""
    from actgen.runtime import static_launch

    launcher = _launcher(static=False)
    static = static_launch.StaticKernel.__new__(static_launch.StaticKernel)
    static.compiled = _Compiled()
    x, out = torch.zeros(64), torch.zeros(64)
    assert launcher.launch_kept(static, _Kernel(), (3,), (x, out, 64), (128, False), 4) is static.compiled
    assert len(static.compiled.calls) == 1 and static.compiled.calls[0][-5:] == (x, out, 64, 128, False)


# --- ops with params ----------------------------------------------------------------------


def _prelu_ref(x, w, channel_dim):
    """F.prelu with the channels at channel_dim, in float64."""
    y = F.prelu(x.double().movedim(channel_dim, 1), w.double())
    return y.movedim(1, channel_dim)


def _prelu_case(shape, channel_dim, channels):
    """(x, w, grad, the call, and the gradients of x and w in float64) of a prelu case with
    the channels at channel_dim."""
    x = (torch.randn(shape) * 3).requires_grad_()
    w = (torch.rand(channels) - 0.3).requires_grad_()
    g = torch.randn(shape)
    fn = lambda x, w: ops.prelu(x, w, channel_dim=channel_dim)      # noqa: E731
    xd, wd = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    want = torch.autograd.grad(_prelu_ref(xd, wd, channel_dim), [xd, wd], g.double())
    return x, w, g, fn, want


def _grads(fn, x, params, g):
    """(y, grads of x and the params that require grad) of one call."""
    y = fn(x, *params)
    wrt = [x, *[p for p in params if p.requires_grad]]
    return y, torch.autograd.grad(y, wrt, g)


@pytest.mark.parametrize("shape,channel_dim", [((6, 16, 40), 1), ((240, 16), -1)])
def test_per_channel_params_are_planned(fresh, shape, channel_dim):
    rec, counts = fresh
    x, w, g, fn, want = _prelu_case(shape, channel_dim, 16)
    for _ in range(3):
        y, got = _grads(fn, x, [w], g)
        torch.testing.assert_close(y.double(), _prelu_ref(x.detach(), w.detach(), channel_dim), rtol=1e-6, atol=1e-6)
        for a, b in zip(got, want):
            torch.testing.assert_close(a.double(), b, rtol=1e-5, atol=1e-5)
    assert counts == {"forward": 1, "backward": 1}
    fwd = [c for c in rec.calls if c[0] is rec.calls[0][0]]
    bwd = [c for c in rec.calls if c[0] is not rec.calls[0][0]]
    _same_launch(fwd[0], fwd[2], replaced={3})                 # (x, w, flag, out, ...)
    _same_launch(bwd[0], bwd[2], replaced={4, 5})              # (grad, x, w, flag, gx, partials, ...)

    # the param frozen, then no grad at all: plans of their own, the same values
    w.requires_grad_(False)
    for _ in range(2):
        y, (gx,) = _grads(fn, x, [w], g)
        torch.testing.assert_close(gx.double(), want[0], rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        for _ in range(2):
            torch.testing.assert_close(fn(x, w).double(), _prelu_ref(x.detach(), w, channel_dim), rtol=1e-6, atol=1e-6)
    assert counts == {"forward": 1, "backward": 2}

    # what call() refuses, it still refuses where plans exist
    with pytest.raises(ValueError, match="channel-count mismatch"):
        fn(x, torch.rand(8))
    with pytest.raises(IndexError):
        ops.prelu(x, w, channel_dim=5)
    with pytest.raises(TypeError, match="floating-point"):
        fn(x.detach().int(), w)
    # a shared (1,) weight on the same input: another plan
    w1 = torch.tensor([0.25])
    for _ in range(2):
        torch.testing.assert_close(fn(x.detach(), w1).double(), _prelu_ref(x.detach(), w1.expand(16), channel_dim),
                                   rtol=1e-6, atol=1e-6)
    assert counts["forward"] == 2


def test_shared_params_are_planned_and_checked(fresh):
    rec, counts = fresh
    x = (torch.randn(3000) * 2).requires_grad_()
    cs = [torch.full((1,), v, requires_grad=True) for v in (0.1, 0.5, 0.2, -0.1)]
    g = torch.randn(3000)
    xd = x.detach().double().requires_grad_()
    csd = [c.detach().double().requires_grad_() for c in cs]
    ref = csd[0] + csd[1] * xd + csd[2] * xd**2 + csd[3] * xd**3
    want = torch.autograd.grad(ref, [xd, *csd], g.double())
    for _ in range(3):
        y, got = _grads(ops.polynomial, x, cs, g)
        torch.testing.assert_close(y.double(), ref.detach(), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got[0].double(), want[0], rtol=1e-5, atol=1e-5)
        for a, b in zip(got[1:], want[1:]):       # (sums over 3000 float32 products)
            torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-3)
    assert counts == {"forward": 1, "backward": 1}
    # params as numbers, a 0-dim param, a (3,) shared param: call()'s checks, which make
    # them (1,) tensors (then the plan serves), or refuse them
    with torch.no_grad():
        torch.testing.assert_close(ops.polynomial(x, 0.1, 0.5, 0.2, -0.1).double(), ref.detach(), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ops.polynomial(x, cs[0][0], *cs[1:]).double(), ref.detach(), rtol=1e-5, atol=1e-5)
        with pytest.raises(ValueError, match="shared"):
            ops.polynomial(x, torch.zeros(3), *cs[1:])
    assert counts["forward"] == 1


def test_a_non_contiguous_param_and_another_channel_dim(fresh):
    rec, counts = fresh
    x = torch.randn(8, 8, 8) * 3
    w = torch.rand(16) - 0.5
    for _ in range(2):
        for cd in (1, 2):
            torch.testing.assert_close(ops.prelu(x, w[::2], channel_dim=cd).double(), _prelu_ref(x, w[::2], cd),
                                       rtol=1e-6, atol=1e-6)
            torch.testing.assert_close(ops.prelu(x, w[:8], channel_dim=cd).double(), _prelu_ref(x, w[:8], cd),
                                       rtol=1e-6, atol=1e-6)
    # (w[::2] is not contiguous: never planned, four full calls; w[:8] one per channel dim)
    assert counts["forward"] == 4 + 2


@pytest.mark.parametrize("name", sorted(SPECS))
def test_a_planned_call_computes_what_the_full_path_did(name, fresh):
    """Every catalogue op, called twice alike (its plans made by the first call): the same
    values and gradients, bit for bit, and the second call launched by its plans."""
    rec, counts = fresh
    spec = SPECS[name]
    g = torch.Generator().manual_seed(7)
    shape = (3, 5, 7) if spec.per_channel else (5, 37)
    inputs = [torch.randn(shape, generator=g) for _ in spec.inputs]
    params = [p.init + 0.1 * torch.randn(5 if p.per_channel else 1, generator=g) for p in spec.params]
    gy = torch.randn(shape, generator=g)
    fn = getattr(ops, name)
    runs = []
    for _ in range(2):
        leaves = [t.clone().requires_grad_() for t in (*inputs, *params)]
        y = fn(*leaves)
        grads = torch.autograd.grad(y, leaves, gy)
        with torch.no_grad():
            runs.append((y.detach(), *grads, fn(*inputs, *params)))
    for a, b in zip(*runs):
        assert torch.equal(a, b)
    if not importlib.import_module(f"actgen.ops.{name}")._OP.n_draws:
        assert counts == {"forward": 1, "backward": 1}


class _Stepping(Tuner):
    """A tuner that settles every launch on a stepping config (param-gradient programs that
    walk through several tiles)."""

    def choose(self, kernel, x, kind, run, candidates=()):
        return Config(1024, 4, step=True)

    def settled(self, kernel, x, kind):
        return Config(1024, 4, step=True)


@pytest.mark.parametrize("shape,channel_dim", [((40, 64, 37), 1), ((900, 64), -1)])
def test_a_stepping_backward_is_planned(fresh, monkeypatch, shape, channel_dim):
    rec, counts = fresh
    monkeypatch.setattr(launch, "TUNER", _Stepping())
    x, w, g, fn, want = _prelu_case(shape, channel_dim, 64)
    runs = [_grads(fn, x, [w], g)[1] for _ in range(2)]
    assert counts == {"forward": 1, "backward": 1}
    bwd = [c for c in rec.calls if c[0] is not rec.calls[0][0]]
    assert bwd[0][3][-1] is True and bwd[0][2][-1] > 1       # (STEP, and more than one tile per program)
    _same_launch(bwd[0], bwd[1], replaced={4, 5})
    for got in runs:
        torch.testing.assert_close(got[0].double(), want[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got[1].double(), want[1], rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("call", [
    lambda x, ps: ops.silu(x),
    lambda x, ps: ops.polynomial(x, *ps),
    lambda x, ps: ops.prelu(x.view(16, 8, 8), ps[0].expand(8).contiguous()),
], ids=["silu", "polynomial", "prelu"])
def test_a_planned_call_skips_the_checks_also_for_autograd(fresh, monkeypatch, call):
    """Once a plan exists, a call that autograd needs goes to its Function without call()'s
    argument checks (which passed for arguments like these when the plan was made)."""
    from actgen.runtime import activation

    checked = []
    original = activation._any_requires_grad
    monkeypatch.setattr(activation, "_any_requires_grad", lambda *a: checked.append(1) or original(*a))
    x = torch.randn(1024, requires_grad=True)
    ps = [torch.full((1,), v, requires_grad=True) for v in (0.1, 0.5, 0.2, -0.1)]
    for _ in range(3):
        y = call(x, ps)
        torch.autograd.grad(y, [x], torch.ones_like(y))
    assert len(checked) == 1 and y.grad_fn is not None


# --- gated ops: the halves of one tensor, and inputs apart --------------------------------
def _swiglu_ref(x, dim, g):
    """swiglu of x's halves along dim and the gradient of x, in float64."""
    xd = x.detach().double().requires_grad_()
    a, b = xd.chunk(2, dim)
    y = F.silu(a) * b
    return y, torch.autograd.grad(y, [xd], g.double())[0]


@pytest.mark.parametrize("shape,dim", [((6, 74), -1), ((4, 6, 5), 1), ((10, 37), 0)],
                         ids=["rows", "rows-inner-dims", "flat"])
def test_a_gated_op_on_the_halves_of_one_tensor_is_planned(fresh, shape, dim):
    """swiglu(x) splits x in halves: views of x, not contiguous except along the first dim.
    The second and third calls launch by the plans, with what the first launched, and x's
    gradient is the one buffer the kernel wrote its halves' gradients into (no concatenation)."""
    rec, counts = fresh
    gen = torch.Generator().manual_seed(3)
    x = (torch.randn(shape, generator=gen) * 4).requires_grad_()
    half = list(shape)
    half[dim] //= 2
    g = torch.randn(half, generator=gen)
    want_y, want_gx = _swiglu_ref(x, dim, g)
    runs = []
    for _ in range(3):
        y = ops.swiglu(x, dim=dim)
        (gx,) = torch.autograd.grad(y, [x], g)
        runs.append((y.detach(), gx))
    assert counts == {"forward": 1, "backward": 1}
    fwd = [c for c in rec.calls if c[0] is rec.calls[0][0]]
    bwd = [c for c in rec.calls if c[0] is not rec.calls[0][0]]
    assert len(fwd) == len(bwd) == 3
    _same_launch(fwd[0], fwd[2], replaced={2})
    _same_launch(bwd[0], bwd[2], replaced={3, 4})
    for (y, gx), (_, _, args, _, _) in zip(runs, bwd):
        ga, gb = args[3], args[4]
        assert gx.data_ptr() == ga.data_ptr() and ga._base is not None and gb._base is ga._base
        torch.testing.assert_close(y.double(), want_y, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(gx.double(), want_gx, rtol=1e-5, atol=1e-5)
    for got in runs[1:]:
        assert all(torch.equal(u, v) for u, v in zip(runs[0], got))


@pytest.mark.parametrize("first", ["halves", "apart"])
def test_a_gated_plan_serves_halves_and_inputs_apart_alike(fresh, first):
    """Inputs of one shape and strides are the halves of one tensor or not by where b starts:
    one plan serves both, its gradients the halves of one buffer only where they are; and
    where they must not alias (a custom op's outputs under torch.compile: halves=False)."""
    from actgen.ops.swiglu import _OP

    rec, counts = fresh
    gen = torch.Generator().manual_seed(5)
    x, other = (torch.randn(8, 2 * 40, generator=gen) * 4 for _ in range(2))
    g = torch.randn(8, 40, generator=gen)
    halves = list(x.chunk(2, -1))
    apart = [x[:, :40], other[:, 40:]]           # (the same shape and strides, b elsewhere)
    order = [halves, apart] if first == "halves" else [apart, halves]
    for a, b in order * 2:
        la, lb = a.double().requires_grad_(), b.double().requires_grad_()
        want = torch.autograd.grad(F.silu(la) * lb, [la, lb], g.double())
        ga, gb = _OP.backward_impl(g, [a, b], [], [], 1, [True, True])
        for got, w in zip((ga, gb), want):
            torch.testing.assert_close(got.double(), w, rtol=1e-5, atol=1e-5)
        together = b.data_ptr() == a.data_ptr() + 40 * a.element_size()
        assert (ga._base is not None and gb._base is ga._base) == together
        assert (gb.data_ptr() - ga.data_ptr() == 40 * ga.element_size()) == together
        assert ga.is_contiguous() != together and gb.is_contiguous() != together
        ga2, gb2 = _OP.backward_impl(g, [a, b], [], [], 1, [True, True], halves=False)
        assert ga2._base is None and gb2._base is None and torch.equal(ga2, ga) and torch.equal(gb2, gb)
    assert counts["backward"] == 1


@pytest.fixture(scope="module")
def gated_with_params():
    """Gated ops of a formula outside the library with a shared and a per-channel param."""
    import actgen

    shared = actgen.compile("a * sigmoid(s * a) * b + c * b", name="gate_sc", params={"s": 1.3, "c": 0.2},
                            inputs=["a", "b"])
    per_channel = actgen.compile("a * sigmoid(s * a) * b", name="gate_pc",
                                 params={"s": {"init": 1.3, "per_channel": True}}, inputs=["a", "b"])
    return shared.gate_sc, per_channel.gate_pc


def test_a_gated_op_with_params_is_planned(fresh, gated_with_params):
    """A gated op's param gradients by its plan: the same as the first call's, and the float64
    formula's, for inputs apart and for the halves of one tensor."""
    rec, counts = fresh
    fn, _ = gated_with_params
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(16, 2 * 300, generator=gen) * 3
    g = torch.randn(16, 300, generator=gen)
    ps = [torch.tensor([1.3]), torch.tensor([0.2])]
    for make in (lambda t: [u.contiguous() for u in t.chunk(2, -1)], lambda t: list(t.chunk(2, -1))):
        runs = []
        for _ in range(3):
            leaves = [t.requires_grad_() for t in make(x.clone())] + [p.clone().requires_grad_() for p in ps]
            runs.append(torch.autograd.grad(fn(*leaves), leaves, g))
        d = [t.double().requires_grad_() for t in (*make(x.clone()), *ps)]
        a, b, s, c = d
        want = torch.autograd.grad(a * torch.sigmoid(s * a) * b + c * b, d, g.double())
        for got in runs:
            for u, w in zip(got, want):
                torch.testing.assert_close(u.double(), w, rtol=1e-4, atol=1e-4)
        for got in runs[1:]:
            assert all(torch.equal(u, v) for u, v in zip(runs[0], got))
    assert counts == {"forward": 2, "backward": 2}       # (one plan each for inputs apart and halves)


def test_a_gated_op_with_per_channel_params_on_halves_takes_the_full_path(fresh, gated_with_params):
    """Per-channel params: the kernels take such inputs as contiguous copies (no plan), and
    write contiguous gradients - not into the halves of one buffer, whose rows are apart."""
    rec, counts = fresh
    _, fn = gated_with_params
    gen = torch.Generator().manual_seed(13)
    x = torch.randn(6, 2 * 8, 5, generator=gen) * 3
    g = torch.randn(6, 8, 5, generator=gen)
    s = torch.linspace(0.5, 2.0, 8)
    for _ in range(2):
        leaves = [t.requires_grad_() for t in x.clone().chunk(2, 1)] + [s.clone().requires_grad_()]
        got = torch.autograd.grad(fn(*leaves), leaves, g)
    assert counts == {"forward": 2, "backward": 2}
    d = [t.double().requires_grad_() for t in (*x.clone().chunk(2, 1), s)]
    a, b, sd = d
    sc = sd.view(1, -1, 1)
    want = torch.autograd.grad(a * torch.sigmoid(sc * a) * b, d, g.double())
    for u, w in zip(got, want):
        torch.testing.assert_close(u.double(), w, rtol=1e-4, atol=1e-4)


def test_a_gated_module_under_compile_after_eager_plans(fresh):
    """SwiGLU under torch.compile, after eager calls made plans for its halves: the compiled
    forward and backward (custom ops, whose outputs must not alias: separate gradient
    buffers) give what eager and the float64 reference give."""
    torch._dynamo.reset()
    module = ops.SwiGLU()
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
    gen = torch.Generator().manual_seed(17)
    x = torch.randn(16, 2 * 64, generator=gen) * 3
    g = torch.randn(16, 64, generator=gen)
    want_y, want_gx = _swiglu_ref(x, -1, g)
    for run in (module, module, compiled, compiled):
        xl = x.clone().requires_grad_()
        y = run(xl)
        (gx,) = torch.autograd.grad(y, [xl], g)
        torch.testing.assert_close(y.double(), want_y, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(gx.double(), want_gx, rtol=1e-5, atol=1e-5)
    assert launch.TUNER.plans


def test_gated_inputs_alike_but_not_rows_take_the_full_path(fresh):
    """a and b taken every other element of one tensor: of one shape and strides, but not
    rows (the kernels take contiguous copies of them): no plan, the values each time right."""
    rec, counts = fresh
    gen = torch.Generator().manual_seed(19)
    x = torch.randn(12, 2 * 50, generator=gen) * 3
    g = torch.randn(12, 50, generator=gen)
    xd = x.double().requires_grad_()
    want = torch.autograd.grad(F.silu(xd[:, ::2]) * xd[:, 1::2], [xd], g.double())[0]
    for _ in range(3):
        xl = x.clone().requires_grad_()
        y = ops.swiglu(xl[:, ::2], xl[:, 1::2])
        torch.testing.assert_close(torch.autograd.grad(y, [xl], g)[0].double(), want, rtol=1e-5, atol=1e-5)
    assert counts == {"forward": 3, "backward": 3}
