"""The CPU fast variant on a workspace (actgen.printers.workspace, actgen.runtime.workspace).

The rewrite must give, bit for bit, what the printed expressions give when Python evaluates
them as written (the reference here: the same text run as plain torch), for any expression
the printer can write - random ones over chunk tensors, params and numbers - with the
workspace's buffers full of garbage beforehand; and every generated fast function must
compute a chunk without allocating chunk-sized memory.
"""
import importlib
import math
import random
import threading

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from actgen import runtime as rt
from actgen.printers.workspace import WorkspaceError, workspace_statements
from actgen.runtime.activation import compute_dtype
from actgen.runtime.workspace import WORKSPACE_BYTES, Workspace

from _reference import SPECS

CHUNK_NAMES = ["x", "y"]
UNARY = ["exp", "tanh", "sigmoid", "abs", "erf", "erfc", "special.erfcx", "log1p", "expm1", "sqrt", "atan", "sin"]


def _leaf(rg, tensors_only=False):
    pool = ["x", "y", "w"] + ([] if tensors_only else ["c", "0.5", "2.0", "-1.5", "3.0", "1.0", "0.0"])
    return rg.choice(pool)


def _expr(rg, depth, temps):
    """A random expression, as the torch printer writes them (a chunk name somewhere in it)."""
    if depth == 0 or rg.random() < 0.2:
        return rg.choice(CHUNK_NAMES + temps)
    sub = lambda: _expr(rg, depth - 1, temps)
    any_leaf = lambda: sub() if rg.random() < 0.6 else _leaf(rg)
    kind = rg.choice(["add", "sub", "mul", "div", "pow", "rsub", "rdiv", "neg", "unary", "fma", "fnma",
                      "select", "clamp", "softplus", "hypot", "capped", "masks"])
    if kind in ("add", "sub", "mul", "div"):
        op = {"add": "+", "sub": "-", "mul": "*", "div": "/"}[kind]
        a, b = (sub(), any_leaf()) if rg.random() < 0.5 else (any_leaf(), sub())
        return f"({a} {op} {b})"
    if kind == "pow":
        return rg.choice([f"({sub()})**2.0", f"2.0**({sub()})", f"({sub()})**({sub()})"])
    if kind == "rsub":
        return f"({rg.choice(['1.0', 'c', 'w'])} - {sub()})"
    if kind == "rdiv":
        if rg.random() < 0.3:       # the printer's form for a float over a tensor
            return f"_rt.rdiv({rg.choice(['0.5', 'c', '-3.0'])}, {sub()})"
        return f"({rg.choice(['1.0', 'c', 'w'])}/{sub()})"
    if kind == "neg":
        return f"-({sub()})"
    if kind == "unary":
        return f"torch.{rg.choice(UNARY)}({sub()})"
    if kind in ("fma", "fnma"):
        scale = rg.choice(["", "", ", 0.375", ", 1.4142135623730951"])     # (scale*a)*b + c
        return f"_rt.{kind}({sub()}, {rg.choice([sub(), _leaf(rg, True)])}, {any_leaf()}{scale})"
    if kind == "select":
        cmp = rg.choice(["gt", "ge", "lt", "le"])
        return f"_rt.select(_rt.{cmp}({sub()}, {any_leaf()}), {any_leaf()}, {any_leaf()})"
    if kind == "clamp":
        return f"_rt.clamp({sub()}, {rg.choice(['-2.0', 'None'])}, {rg.choice(['3.0', 'None'])})"
    if kind == "softplus":
        return f"_rt.softplus({sub()})"
    if kind == "hypot":
        return f"_rt.hypot({sub()}, {any_leaf()})"
    if kind == "capped":
        return f"_rt.capped_exp({sub()}, 1.5, 2.5)"
    if rg.random() < 0.15:      # a mask as a value (relu's derivative)
        return f"_rt.select(_rt.gt({sub()}, {any_leaf()}), 1.0, 0.0)"
    masks = [f"_rt.gt({sub()}, 0.0)", f"_rt.lt({sub()}, 1.0)", rg.choice(["True", "False", f"_rt.le({sub()}, -1.0)"])]
    m = rg.choice([f"_rt.mask_and({', '.join(masks)})", f"_rt.mask_or({', '.join(masks)})",
                   f"_rt.mask_not({masks[0]})", f"_rt.mask_and({masks[0]}, {masks[1]})"])
    return f"_rt.select({m}, {any_leaf()}, {any_leaf()})"


def _program(rg):
    statements, temps = [], []
    for i in range(rg.randint(1, 5)):
        statements.append((f"_t{i}", _expr(rg, rg.randint(1, 4), temps)))
        temps.append(f"_t{i}")
    outputs = [f"_o{k}" for k in range(rg.randint(1, 3))]
    for o in outputs:
        statements.append((o, rg.choice([_expr(rg, 3, temps), rg.choice(temps), "x", "1.0", "torch.exp(w)"])))
    return statements, outputs


def _function(name, statements, outputs, args):
    lines = [f"def {name}({', '.join(args)}):"] + [f"    {t} = {e}" for t, e in statements]
    lines.append(f"    return ({', '.join(outputs)},)")
    scope = {"torch": torch, "_rt": rt, "math": math}
    exec(compile("\n".join(lines), f"<{name}>", "exec"), scope)      # the test's own generated text
    return scope[name]


def _bitwise(a, b):
    """Bit for bit (a mask that is a Python bool where no out= is given: as 0.0 or 1.0)."""
    a, b = (float(v) if isinstance(v, bool) else v for v in (a, b))
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        like = a if isinstance(a, torch.Tensor) else b
        a, b = (torch.as_tensor(v, dtype=like.dtype) if not isinstance(v, torch.Tensor) else v for v in (a, b))
        a, b = torch.broadcast_tensors(a, b)
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True, check_dtype=True)
    else:
        assert a == b or (a != a and b != b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("seed", range(40))
def test_rewrite_is_bitwise_the_printed_text(seed, dtype):
    rg = random.Random(seed)
    statements, outputs = _program(rg)
    rewritten, count = workspace_statements(statements, CHUNK_NAMES, ["w"], outputs)
    plain = _function("plain", statements, outputs, ["x", "y", "w", "c"])
    fast = _function("fast", rewritten, outputs, ["x", "y", "w", "c", "_w"])
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(6, 7, generator=gen, dtype=dtype) * 3
    x.view(-1)[::9] = 0.0
    y = torch.randn(6, 7, generator=gen, dtype=dtype)
    for w in (torch.randn(6, 1, generator=gen, dtype=dtype), torch.tensor(0.75, dtype=dtype)):
        want = plain(x, y, w, -0.25)
        ws = [torch.full((6, 7), math.nan, dtype=dtype) for _ in range(count)]      # garbage first
        got = fast(x, y, w, -0.25, ws)
        for g, v in zip(got, want):
            _bitwise(g, v)
        for t, e in rewritten:
            assert "out=_w[" in e or "_w" not in e


def test_buffers_are_reused_only_when_dead():
    statements = [("_t0", "torch.exp(x)"), ("_t1", "_t0*(_t0 + 2.0)"), ("_t2", "_t1 - x"), ("_y", "_t2/_t1 + y")]
    rewritten, count = workspace_statements(statements, ["x", "y"], [], ["_y"])
    text = dict(rewritten)
    assert text["_t0"] == "torch.exp(x, out=_w[0])"
    assert text["_t1"] == "torch.add(_t0, 2.0, out=_w[1]).mul_(_t0)"
    assert text["_t2"] == "torch.sub(_t1, x, out=_w[0])"        # _t0 is dead after _t1
    assert count == 3


def test_a_negated_product_folds_its_number():
    """-(c*a*b) is (-c)*a*b and -(c*a/b) is (-c)*a/b: no negation pass, bit for bit."""
    statements = [("_y", "-(0.5*x*y)"), ("_z", "-(1.5*x/y)"), ("_v", "-(x*y)")]
    rewritten, count = workspace_statements(statements, ["x", "y"], [], ["_y", "_z", "_v"])
    text = dict(rewritten)
    assert text["_y"].startswith("torch.mul(x, -0.5, out=") and "neg" not in text["_y"]
    assert text["_z"].startswith("torch.mul(x, -1.5, out=") and "neg" not in text["_z"]
    assert "neg_()" in text["_v"]
    plain = _function("plain", statements, ["_y", "_z", "_v"], ["x", "y"])
    fast = _function("fast", rewritten, ["_y", "_z", "_v"], ["x", "y", "_w"])
    gen = torch.Generator().manual_seed(3)
    x, y = torch.randn(2, 1000, generator=gen) * 7
    for g, w in zip(fast(x, y, [torch.empty(1000) for _ in range(count)]), plain(x, y)):
        _bitwise(g, w)


def test_a_call_without_an_in_place_method_writes_over_its_argument():
    """torch.special.erfcx has no erfcx_: out= into its argument's buffer (elementwise, so
    each element is read before it is written), or a buffer of its own for an input; the
    values bit for bit the printed text's."""
    statements = [("_t0", "torch.special.erfcx(x*2.0)"), ("_y", "torch.special.erfcx(x) + _t0")]
    rewritten, count = workspace_statements(statements, ["x"], [], ["_y"])
    assert rewritten[0] == ("_t0", "torch.special.erfcx(torch.mul(x, 2.0, out=_w[0]), out=_w[0])"), rewritten
    assert "torch.special.erfcx(x, out=_w[" in rewritten[1][1], rewritten
    x = torch.linspace(-20.0, 30.0, 101)
    ws = [torch.full((101,), math.nan) for _ in range(count)]
    got = _function("fast", rewritten, ["_y"], ["x", "_w"])(x, ws)
    _bitwise(got[0], _function("plain", statements, ["_y"], ["x"])(x)[0])


def test_unknown_call_is_refused():
    with pytest.raises(WorkspaceError, match="no workspace form"):
        workspace_statements([("_y", "torch.lgamma(x)")], ["x"], [], ["_y"])


def test_runtime_out_forms_match():
    gen = torch.Generator().manual_seed(1)
    a, b, c = (torch.randn(50, generator=gen) * 4 for _ in range(3))
    m = rt.gt(a, 0.0)
    cases = [
        (rt.fma, (a, b, c)), (rt.fma, (a, b, 1.5)), (rt.fnma, (a, b, c)), (rt.clamp, (a, -1.0, 2.0)),
        (rt.clamp, (a, None, None)), (rt.softplus, (a,)), (rt.hypot, (a, 2.0)), (rt.sqrt_square_plus, (a, -1.0)),
        (rt.sqrt_square_plus, (a, 2.0)), (rt.select, (m, a, b)), (rt.select, (m, 1.0, 0.0)), (rt.select, (m, a, 0.0)),
        (rt.select, (m, 0.0, b)), (rt.select, (m, 2.0, -3.0)), (rt.select, (True, a, b)), (rt.lt, (0.0, a)),
        (rt.mask_and, (m, rt.lt(b, 0.0))), (rt.mask_and, (m, False)), (rt.mask_or, (m, rt.lt(b, 0.0))),
        (rt.mask_or, (True, m)), (rt.mask_not, (m,)), (rt.scaled_input, (a * 1e30,)), (rt.inverse_scale, (a * 1e30,)),
    ]
    for fn, args in cases:
        out = torch.full((50,), math.nan)
        got = fn(*args, out=out)
        assert got is out, fn.__name__
        _bitwise(out, fn(*args))
    inplace = b.clone()                 # a compare and an fma may write into their own argument
    _bitwise(rt.fma(a, inplace, c, out=inplace), rt.fma(a, b, c))


def test_workspace_buffers_are_kept_distinct_and_per_thread():
    ws = Workspace()
    first = ws.buffers(3, (4, 5), torch.float32)
    again = ws.buffers(2, (4, 5), torch.float32)
    assert [t.data_ptr() for t in first] == [t.data_ptr() for t in again[:3]]
    ptrs = {t.data_ptr() for t in first}
    assert len(ptrs) == 3 and all(t.shape == (4, 5) and t.is_contiguous() for t in first)
    bigger = ws.buffers(5, (4, 5), torch.float32)        # more buffers: still distinct
    assert len({t.data_ptr() for t in bigger}) == 5
    assert ws.nbytes() == 5 * 20 * 4                      # the smaller workspace is gone
    assert ws.buffers(1, (2,), torch.float64)[0].dtype == torch.float64
    other = []
    t = threading.Thread(target=lambda: other.append(ws.buffers(1, (4, 5), torch.float32)[0].data_ptr()))
    t.start()
    t.join()
    assert other[0] not in {b.data_ptr() for b in bigger}
    ws.release()
    assert ws.flat == {} and ws.views == {}
    from actgen.runtime.workspace import WORKSPACE
    WORKSPACE.buffers(2, (3,), torch.float32)
    assert WORKSPACE.nbytes() > 0
    rt.release_workspace()
    assert WORKSPACE.nbytes() == 0


class _ChunkAllocations(TorchDispatchMode):
    """Counts the tensors that ops create with storage of at least `nbytes`."""

    def __init__(self, nbytes, known):
        super().__init__()
        self.nbytes, self.known, self.new = nbytes, known, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                if storage.nbytes() >= self.nbytes and storage.data_ptr() not in self.known:
                    self.new.append(str(func))
        return out


def _ops_with_fast():
    for name in sorted(SPECS):
        op = importlib.import_module(f"actgen.ops.{name}")._OP
        for which, fn in enumerate((op.forward_torch_fast, op.derivatives_torch_fast)):
            if fn is not None:
                yield pytest.param(name, which, id=f"{name}-{'fwd' if which == 0 else 'bwd'}")


@pytest.mark.parametrize("name,which", list(_ops_with_fast()))
def test_fast_function_allocates_no_chunk(name, which):
    """A chunk of a training-mode call (draws of the chunk's shape) and of an evaluation-mode
    one, with per-channel params: every chunk-sized value lands in the workspace."""
    op = importlib.import_module(f"actgen.ops.{name}")._OP
    spec = SPECS[name]
    fn = (op.forward_torch_fast, op.derivatives_torch_fast)[which]
    shape = (8, 256)
    gen = torch.Generator().manual_seed(0)
    xs = [torch.rand(shape, generator=gen) * 2 + 0.1 for _ in spec.inputs]
    ps = [torch.full((8, 1) if p.per_channel else (), float(p.init)) for p in spec.params]
    consts = [float(c.default) for c in spec.constants]
    ws = Workspace()
    bufs = ws.buffers(op.fast_buffers[which], shape, torch.float32)
    for draws in ([torch.rand(shape, generator=gen) for _ in range(op.n_draws)],
                  [torch.tensor(0.5).expand(shape) for _ in range(op.n_draws)]):
        known = {t.untyped_storage().data_ptr() for t in (*xs, *draws, *bufs)}
        with _ChunkAllocations(math.prod(shape) * 4, known) as mode:
            fn(*xs, *draws, *ps, *consts, bufs)       # None where a branch not taken is not finite
        assert mode.new == [], f"{name}: chunk-sized allocations by {mode.new}"


def test_chunks_fit_the_workspace():
    """The chunk size leaves every op's buffers within WORKSPACE_BYTES (pau's many gradients)."""
    for name in SPECS:
        op = importlib.import_module(f"actgen.ops.{name}")._OP
        for which in (0, 1):
            for dtype in (torch.float32, torch.bfloat16, torch.float64):
                n = op._chunk(dtype, False, which)
                itemsize = compute_dtype(dtype).itemsize
                assert (op.fast_buffers[which] + op.n_inputs + 2) * n * itemsize <= WORKSPACE_BYTES
                assert n * itemsize <= op.CHUNK_BYTES


class _Ops(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("n", [1000, 5000], ids=["one-chunk", "chunks"])
def test_forward_computes_into_its_output(n, monkeypatch):
    """A float32 forward's fast variant computes its result in the output itself: no copy
    (silu's derived code: not torch's F.silu, which the fallback otherwise takes)."""
    from actgen.runtime.activation import Activation
    monkeypatch.setattr(Activation, "CHUNK_BYTES", 2048 * 4)
    op = importlib.import_module("actgen.ops.silu")._OP
    monkeypatch.setattr(op, "forward_native", None)
    x = torch.randn(n)
    with rt.use_backend("torch"), _Ops() as mode:
        y = op.forward_impl([x], [], [], 0)
    assert not any("copy" in name or "clone" in name for name in mode.names), mode.names
    torch.testing.assert_close(y, x * torch.sigmoid(x), rtol=0, atol=0)


@pytest.mark.parametrize("first", ["inference", "training"])
def test_workspace_serves_inference_mode_and_autograd_alike(first):
    """Buffers made under torch.inference_mode are normal tensors: a later call outside it
    (and a training step) can still write into them, and the other way round."""
    from actgen.runtime.workspace import WORKSPACE
    WORKSPACE.release()
    op = importlib.import_module("actgen.ops.mish")
    x = torch.randn(3000)

    def inference():
        with torch.inference_mode():
            y = op.mish(x)
        assert y.is_inference()
        return y

    def training():
        xr = x.clone().requires_grad_()
        y = op.mish(xr)
        (g,) = torch.autograd.grad(y.sum(), xr)
        return y.detach()

    calls = (inference, training) if first == "inference" else (training, inference)
    results = [f() for f in calls * 2]
    for y in results:
        torch.testing.assert_close(y, results[0], rtol=0, atol=0)


def test_fallback_ignores_torch_default_device():
    """CPU inputs get CPU outputs, gradients and buffers whatever torch's default device."""
    op = importlib.import_module("actgen.ops.mish")
    from actgen.runtime.workspace import WORKSPACE
    x = torch.randn(5000).requires_grad_()
    want = x.detach() * torch.tanh(torch.nn.functional.softplus(x.detach()))
    WORKSPACE.release()
    torch.set_default_device("meta")
    try:
        y = op.mish(x)
        (g,) = torch.autograd.grad(y.sum(), x)
    finally:
        torch.set_default_device(None)
    assert y.device.type == "cpu" and g.device.type == "cpu"
    torch.testing.assert_close(y.detach(), want, rtol=1e-5, atol=1e-6)
