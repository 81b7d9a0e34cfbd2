"""torch's own CPU kernels for formulas that are exactly one of torch's activations
(actgen/native.py): which formulas match, that the fallback takes them, and that their
values and gradients - kinks, tails, the edges of their windows and the non-finite inputs they
are trusted with included - meet the accuracy target against the mpmath oracle, in float32,
bfloat16 and float16; and that each chunk of a large tensor takes torch's kernel or the
derived code by its own inputs."""
import functools
import math

import numpy as np
import pytest
import torch

import actgen
import actgen.ops
from actgen import catalogue as C
from actgen import native
from actgen.runtime import use_backend
from actgen.spec import load_spec

from _reference import SPECS

MATCHED = ("relu", "leaky_relu", "elu", "softplus", "hardswish", "silu", "gelu", "gelu_tanh")
GATED = ("reglu", "swiglu", "geglu", "geglu_tanh")      # relu(a) * b, silu(a) * b, gelu(a) * b, ...
GRID = C.round_to(C.grid(step=0.01, n_log=100), torch.float32)
DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def test_the_catalogue_entries_that_are_torch_activations_match_and_only_those():
    found = {name for name, spec in SPECS.items() if native.match(spec) is not None}
    assert found == set(MATCHED) | set(GATED)
    assert {native.match(SPECS[n]).gate for n in GATED} == {"b"}
    m = native.match(SPECS["softplus"])
    assert m.forward == ("return torch.ops.aten.softplus.out(x, beta, threshold, out=_out)",)
    assert m.backward == ("torch.ops.aten.softplus_backward.grad_input(_g, x, beta, threshold, grad_input=_out[0])",)
    assert native.match(SPECS["silu"]).backward == ("torch.ops.aten.silu_backward.grad_input(_g, x, grad_input=_out[0])",)
    assert native.match(SPECS["swiglu"]).forward == ("return torch.ops.aten.silu.out(a, out=_out).mul_(b)",)
    gelu = {d: (f, b) for d, f, b in native.match(SPECS["gelu"]).trusted}
    assert gelu["float32"] == (None, None)          # 1 + erf cancels: never
    assert native.match(SPECS["reglu"]).any_input == (False, False)     # (relu's own takes any: not with a gate)


def test_every_window_end_is_a_number_of_its_dtype():
    """The fallback compares a chunk's inputs with a window's ends in the inputs' dtype, which
    is exact only where each end is a number of that dtype (or infinite)."""
    for kernel in native.NATIVE_KERNELS:
        for dtype_name, *windows in kernel.trusted + (kernel.gated or ()):
            dtype = getattr(torch, dtype_name)
            for end in (e for w in windows if w is not None for e in w):
                assert float(torch.tensor(end, dtype=torch.float64).to(dtype)) == end, (kernel.name, dtype, end)


@pytest.mark.parametrize("text, kernel", [
    ("name: f\ninputs: [u]\nformula: where(k*u > m, u, log(1 + exp(k*u))/k)\nconstants: {k: 2.0, m: 15.0}\n", "softplus"),
    ("name: f\nformula: sigmoid(x) * x\n", "silu"),
    ("name: f\nformula: where(x > 0, x, a*(exp(x) - 1))\nconstants: {a: 0.5}\n", "elu"),
    ("name: f\nformula: log1p(exp(x))\n", None),                 # written another way: the derived code
    ("name: f\nformula: x * sigmoid(2*x)\n", None),
    ("name: f\nformula: where(x >= 0, x, 0.01*x)\n", None),      # >= moves the kink's derivative
    ("name: f\nformula: where(x > 0, x, s*x)\nparams: {s: 0.25}\n", None),    # a param: not torch's op
    ("name: f\ninputs: [a, b]\nformula: a * sigmoid(a) * b\n", "silu"),     # a gate
    ("name: f\ninputs: [u, v]\nformula: v * Max(u, 0)\n", "relu"),
    ("name: f\ninputs: [a, b]\nformula: a * sigmoid(a) * b**2\n", None),  # not a gate
    ("name: f\ninputs: [a, b]\nformula: a * sigmoid(b)\n", None),          # glu: the gate's own call
    ("name: f\ninputs: [a, b]\nformula: a * b\n", None),
])
def test_a_formula_matches_only_as_torch_writes_it(text, kernel):
    m = native.match(load_spec(text))
    assert (m.kernel.name if m else None) == kernel


def _spy(op, monkeypatch):
    """Counts of the op's native forward and backward calls, and under "derived forward" and
    "derived backward" the elements each call of its derived code computed."""
    calls = {"forward": 0, "backward": 0, "derived forward": [], "derived backward": []}
    for which in ("forward", "backward"):
        fn = getattr(op, f"{which}_native")
        if fn is None:
            continue

        def counted(*args, _fn=fn, _which=which):
            calls[_which] += 1
            return _fn(*args)
        monkeypatch.setattr(op, f"{which}_native", counted)
    for name in ("forward_torch", "derivatives_torch", "forward_torch_fast", "derivatives_torch_fast"):
        fn = getattr(op, name)
        if fn is None:
            continue

        def derived(*args, _fn=fn, _key="derived " + ("forward" if name.startswith("forward") else "backward")):
            calls[_key].append(args[0].numel())
            return _fn(*args)
        monkeypatch.setattr(op, name, derived)
    return calls


def _op(name):
    fn = getattr(actgen.ops, name)
    return fn, fn.__globals__["_OP"]


def _window_points(window, dtype):
    """The docs grid's finite points in dtype (float16's: 1600 of its 3900, evenly through them)
    inside the window, and near each finite end the 64 values of dtype next to it and 1000 more
    over the 1.5 before it."""
    xs = np.unique(C.round_to(GRID[np.isfinite(GRID)], dtype))
    xs = xs[np.isfinite(xs)]
    if dtype == torch.float16:
        xs = xs[np.unique(np.linspace(0, len(xs) - 1, 1600).astype(int))]
    edges = []
    for end, toward in ((window[0], math.inf), (window[1], -math.inf)):
        if not (math.isfinite(end) and abs(end) < torch.finfo(dtype).max):
            continue
        v = torch.tensor(end, dtype=torch.float64).to(dtype)
        for _ in range(64):
            v = torch.nextafter(v, torch.tensor(toward, dtype=dtype))
            edges.append(float(v))
        edges += C.round_to(np.linspace(end, end + math.copysign(1.5, toward), 1000), dtype).tolist()
    xs = np.unique(np.concatenate([xs, np.array(edges, dtype=np.float64)]))
    return xs[(window[0] < xs) & (xs < window[1])]


@pytest.mark.parametrize("name", MATCHED + GATED)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("which", [0, 1])
def test_torch_kernels_meet_the_accuracy_target_inside_their_windows(name, dtype, which, monkeypatch):
    """f (which 0) and the gradients (1) through torch's kernels on every finite point of the
    docs grid inside the dtype's window (kinks and float32's extremes included) and near each
    of its ends (a gated entry's gate taking the catalogue's gate values in turn), scored
    against the mpmath oracle as docs/accuracy.md scores the derived code; where the dtype has
    no window (or the entry no backward), the derived code runs."""
    spec = SPECS[name]
    fn, op = _op(name)
    calls = _spy(op, monkeypatch)
    window = op.native_trusted.get(str(dtype)[6:], (None, None))[which]
    if window is None or (op.forward_native, op.backward_native)[which] is None:
        xs = [torch.linspace(-3, 3, 61, dtype=dtype, requires_grad=True) for _ in spec.inputs]
        with use_backend("torch"):
            torch.autograd.grad(fn(*xs), xs, torch.ones_like(xs[0]))
        assert calls[("forward", "backward")[which]] == 0
        return
    truth, cond, pts = _truth(name, str(dtype), window)
    xs = [torch.tensor([p[i] for p in pts], dtype=dtype, requires_grad=True) for i in range(len(spec.inputs))]
    # float16's backward with a gradient as float16 training scales the loss (2**14): a
    # derivative below float16's normal range still counts then (gelu_tanh's was 0 there
    # from -5.06, where its truth is -2.5e-5, times the gradient -0.4).  Not with a gate:
    # its df/db is the forward's float16 value times the gradient, as torch's own product's
    # is (its df/da is the entry's own backward, scored so without the gate).
    scale = 2.0 ** 14 if which and dtype == torch.float16 and not spec.gated else 1.0
    with use_backend("torch"):
        y = fn(*xs)
        got = [y] if which == 0 else torch.autograd.grad(y, xs, torch.full_like(y, scale))
    assert calls[("forward", "backward")[which]] == 1
    outs = ["f"] if which == 0 else [f"df/d{n}" for n in spec.inputs]
    for out, values in zip(outs, got):
        s = C.score(np.array([p[0] for p in pts]), values.detach().double().numpy(), truth[out] * scale, dtype, cond[out])
        assert s.meets_target, (name, out, s)


@functools.lru_cache(maxsize=None)
def _truth(name, dtype_name, window):
    """The oracle's values and condition numbers at _window_points (with gate values, for a
    gated entry), and the points (f's and the backward's windows are often one)."""
    pts = C.input_points(SPECS[name], _window_points(window, getattr(torch, dtype_name[6:])))
    oracle = C.Oracle(SPECS[name])
    truth = oracle.values(pts)
    return truth, oracle.condition(pts, truth), pts


def test_outside_a_window_torch_kernels_miss_the_target():
    """The windows are where they are for a reason: just past silu's float32 backward window
    (x = 16.6) and gelu's bfloat16 one (x = -5.6), torch's kernels are off by more than the
    target, where the derived code is within it."""
    for name, dtype, x0, which in (("silu", torch.float32, 16.64, 1), ("gelu", torch.bfloat16, -5.625, 0)):
        spec = SPECS[name]
        x = torch.tensor([x0], dtype=dtype)
        out = ("f", "df/dx")[which]
        truth, cond, xcol = C.truth_at(C.Oracle(spec), [(float(x),)])
        if which == 0:
            theirs = torch.nn.functional.gelu(x)
        else:
            theirs = torch.ops.aten.silu_backward(torch.ones_like(x), x)
        xr = x.clone().requires_grad_()
        with use_backend("torch"):
            y = getattr(actgen.ops, name)(xr)
            ours = y if which == 0 else torch.autograd.grad(y, xr, torch.ones_like(y))[0]
        assert not C.score(xcol, theirs.double().numpy(), truth[out], dtype, cond[out]).meets_target
        assert C.score(xcol, ours.detach().double().numpy(), truth[out], dtype, cond[out]).meets_target


@pytest.mark.parametrize("name", MATCHED)
def test_non_finite_inputs_keep_the_formulas_limits(name, monkeypatch):
    """At +-inf and NaN the values are the formula's (its limits; NaN for NaN): torch's kernel
    where it gives them (relu's forward, softplus both ways), the derived code otherwise
    (silu(-inf) is 0, torch's x/(1 + exp(-x)) NaN)."""
    spec = SPECS[name]
    fn, op = _op(name)
    calls = _spy(op, monkeypatch)
    x = torch.tensor([-math.inf, math.inf, math.nan], requires_grad=True)
    with use_backend("torch"):
        y = fn(x)
        (g,) = torch.autograd.grad(y, x, torch.ones_like(y))
    forward, backward = op.native_any_input     # (float32: every entry with one has a window there)
    assert calls["forward"] == int(forward)
    assert calls["backward"] == int(backward and op.backward_native is not None)
    truth = C.Oracle(spec).values([(v,) for v in x.tolist()])
    np.testing.assert_allclose(y.detach().double().numpy(), truth["f"], rtol=1e-6)    # (float32 constants)
    np.testing.assert_allclose(g.double().numpy(), truth["df/dx"], rtol=1e-6)


@pytest.mark.parametrize("special", [-math.inf, math.inf, math.nan])
@pytest.mark.parametrize("name", MATCHED + GATED)
def test_one_non_finite_input_among_finite_ones_keeps_its_limit(name, special):
    """A window open at an infinite end holds the finite values on that side, not the
    infinity: silu's float32 backward window (-inf, 5) took [-inf, 1] whole, and torch's
    s*(1 + x*(1 - s)) is 0*-inf = NaN at -inf (swiglu's gradients alike, silu(-inf)*g too).
    One +-inf or NaN among values inside every window: the formula's limits there (NaN for
    NaN), f and the gradients, against the mpmath oracle."""
    spec = SPECS[name]
    fn, _ = _op(name)
    x = torch.tensor([special, 0.5, -0.5, 1.0], requires_grad=True)
    args = [x] + ([torch.full_like(x, 1.5, requires_grad=True)] if name in GATED else [])
    with use_backend("torch"):
        y = fn(*args)
        grads = torch.autograd.grad(y, args, torch.ones_like(y))
    points = [tuple(t.detach()[k].item() for t in args) for k in range(len(x))]
    truth = C.Oracle(spec).values(points)
    np.testing.assert_allclose(y.detach().double().numpy(), truth["f"], rtol=1e-6)
    for v, g in zip(spec.inputs, grads):
        np.testing.assert_allclose(g.double().numpy(), truth[f"df/d{v}"], rtol=1e-6, atol=1e-30)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_relu_on_torch_kernel_is_torch_relu_bit_for_bit(dtype, monkeypatch):
    """relu and reglu run torch's kernel on any input; their values are F.relu's to the bit
    (NaN, -0.0, +-inf and subnormals included)."""
    tiny = torch.finfo(dtype).tiny
    x = torch.tensor([math.nan, -0.0, 0.0, -1.5, 2.5, math.inf, -math.inf, tiny / 4, -tiny / 4], dtype=dtype)
    bits = torch.int16 if dtype.itemsize == 2 else torch.int32
    fn, op = _op("relu")
    calls = _spy(op, monkeypatch)
    with use_backend("torch"):
        y = fn(x)
    assert calls["forward"] == 1
    assert torch.equal(y.view(bits), torch.nn.functional.relu(x).view(bits))
    a = x[torch.isfinite(x)]        # (a gate: torch's kernel for finite inputs)
    b = torch.linspace(-2, 2, a.numel(), dtype=dtype)
    gate, gop = _op("reglu")
    calls = _spy(gop, monkeypatch)
    with use_backend("torch"):
        y = gate(a, b)
    assert calls["forward"] == 1
    assert torch.equal(y.view(bits), (torch.nn.functional.relu(a) * b).view(bits))


def test_a_user_formula_that_is_torch_softplus_builds_onto_its_kernel():
    m = actgen.compile("where(beta*x > threshold, x, log(1 + exp(beta*x))/beta)", name="sp_user",
                       constants={"beta": 2.0, "threshold": 10.0})
    x = torch.linspace(-8, 8, 65, requires_grad=True)
    with use_backend("torch"):
        y = m.sp_user(x, beta=2.0, threshold=10.0)
        (g,) = torch.autograd.grad(y, x, torch.ones_like(y))
    torch.testing.assert_close(y, torch.nn.functional.softplus(x.detach(), 2.0, 10.0))
    torch.testing.assert_close(g, torch.where(2.0 * x.detach() > 10.0, 1.0, torch.sigmoid(2.0 * x.detach())))
    assert m.sp_user.__globals__["_OP"].forward_native is not None


def _reference(name, a, b=None):
    """The formula in float64 torch ops."""
    if name in ("silu", "swiglu"):
        f = a * torch.sigmoid(a)
    elif name in ("gelu", "geglu"):
        f = 0.5 * a * (1 + torch.erf(a / math.sqrt(2)))
    else:
        f = 0.5 * a * (1 + torch.tanh(math.sqrt(2 / math.pi) * (a + 0.044715 * a ** 3)))
    return f if b is None else f * b


@pytest.mark.parametrize("name, dtype, which, outside", [
    ("silu", torch.float32, 1, 16.5),         # past x = 5, silu's float32 backward is the derived code
    ("gelu", torch.bfloat16, 0, -5.625),      # below -5.5, gelu's bfloat16 forward is
    ("gelu_tanh", torch.bfloat16, 1, -5.375),
    ("swiglu", torch.float32, 1, 16.5),       # (torch's kernels miss the target at each of these)
    ("geglu", torch.bfloat16, 0, -5.625),
])
@pytest.mark.parametrize("how_many", ["one", "a chunk"])
def test_each_chunk_takes_torch_kernel_by_its_own_inputs(name, dtype, which, outside, how_many, monkeypatch):
    """A tensor of three chunks with values outside the window in the middle one: one of
    them, and torch's kernel takes the tensor and the derived code that value's block alone;
    the whole chunk (more than PATCH_FRACTION of the tensor), and torch's kernel takes the
    other two chunks and the derived code the middle one.  Every value is right (against the
    formula in float64), the outside ones within the accuracy target against the mpmath
    oracle (torch's are not)."""
    fn, op = _op(name)
    calls = _spy(op, monkeypatch)
    n = op._chunk(dtype, False, which)
    x = torch.linspace(-3, 3, 3 * n, dtype=torch.float64).to(dtype)
    k = torch.arange(n + n // 2, n + n // 2 + 1) if how_many == "one" else torch.arange(n, 2 * n)
    x[k] = outside
    xs = [x] + ([torch.linspace(2, -2, 3 * n, dtype=torch.float64).to(dtype)] if op.n_inputs == 2 else [])
    xr = [t.clone().requires_grad_() for t in xs]
    with use_backend("torch"):
        y = fn(*xr)
        got = [y] if which == 0 else torch.autograd.grad(y, xr, torch.ones_like(y))
    direction = ("forward", "backward")[which]
    if how_many == "one":
        assert calls[direction] == 1 and calls["derived " + direction] == [op.PATCH_BLOCK]
    else:
        assert calls[direction] == 2 and calls["derived " + direction] == [n]
    xd = [t.double().requires_grad_() for t in xs]
    ref = _reference(name, *xd)
    want = [ref] if which == 0 else torch.autograd.grad(ref, xd, torch.ones_like(ref))
    eps = torch.finfo(dtype).eps        # (absolute too: silu' and gelu's are sums of terms ~1 with roots)
    for g, w in zip(got, want):
        torch.testing.assert_close(g.detach().double(), w.detach(), rtol=4 * eps, atol=4 * eps)
    k = k[:: max(1, len(k) // 16)]
    pts = list(zip(*[t[k].double().tolist() for t in xs]))
    truth, cond, xcol = C.truth_at(C.Oracle(SPECS[name]), pts)
    for g, out in zip(got, ["f"] if which == 0 else [f"df/d{v}" for v in SPECS[name].inputs]):
        assert C.score(xcol, g.detach()[k].double().numpy(), truth[out], dtype, cond[out]).meets_target, out


@pytest.mark.parametrize("name, dtype, which, outside", [
    ("silu", torch.float32, 1, 16.5), ("gelu", torch.bfloat16, 0, -5.625), ("swiglu", torch.float32, 1, 16.5),
])
def test_a_tensor_of_one_chunk_takes_torch_kernel_with_a_few_values_outside(name, dtype, which, outside, monkeypatch):
    """2**12 + 100 values, 3 outside the window (where torch's kernel misses the target), and
    for a gated entry the gate infinite at 3 more: torch's kernel on the tensor, the derived
    code on the blocks that hold them and on the tail past the last whole block, every value
    within the accuracy target against the mpmath oracle (at b = inf, df/da is b*silu'(a),
    where float64 torch's product rule is NaN)."""
    fn, op = _op(name)
    calls = _spy(op, monkeypatch)
    n, size = 2 ** 12 + 100, op.PATCH_BLOCK
    x = torch.linspace(-3, 3, n, dtype=torch.float64).to(dtype)
    k = torch.tensor([0, 1000, n - 10])
    x[k] = outside
    xs = [x]
    if op.n_inputs == 2:
        xs.append(torch.linspace(2, -2, n, dtype=torch.float64).to(dtype))
        xs[1][k + 1] = math.inf
    xr = [t.clone().requires_grad_() for t in xs]
    with use_backend("torch"):
        y = fn(*xr)
        got = [y] if which == 0 else torch.autograd.grad(y, xr, torch.ones_like(y))
    direction = ("forward", "backward")[which]
    blocks = {int(i) // size for i in k if i < n - n % size}
    assert len(blocks) == 2 and calls[direction] == 1 and calls["derived " + direction] == [2 * size + n % size]
    pts = list(zip(*[t.double().tolist() for t in xs]))
    truth, cond, xcol = C.truth_at(C.Oracle(SPECS[name]), pts)
    for g, out in zip(got, ["f"] if which == 0 else [f"df/d{v}" for v in SPECS[name].inputs]):
        assert C.score(xcol, g.detach().double().numpy(), truth[out], dtype, cond[out]).meets_target, out


@pytest.mark.parametrize("outside_at, derived", [((), []), ((0, 1000), [512]), ((1000, 4190), [256 + 100])])
def test_the_tail_past_the_last_block_takes_torch_kernel_where_it_is_inside(outside_at, derived, monkeypatch):
    """float32 silu's backward on 2**12 + 100 values (16 whole blocks and a tail of 100): the
    derived code computes the blocks with a value outside the window, and the tail only where
    it holds one; the gradients are right against float64 torch."""
    fn, op = _op("silu")
    calls = _spy(op, monkeypatch)
    n = 2 ** 12 + 100
    x = torch.linspace(-3, 3, n)
    x[list(outside_at)] = 16.5
    xr = x.clone().requires_grad_()
    with use_backend("torch"):
        (got,) = torch.autograd.grad(fn(xr), xr, torch.ones_like(x))
    assert calls["backward"] == 1 and calls["derived backward"] == derived
    xd = x.double().requires_grad_()
    (want,) = torch.autograd.grad(_reference("silu", xd), xd, torch.ones_like(xd))
    torch.testing.assert_close(got.double(), want, rtol=4e-7, atol=4e-7)


def _count_sums(monkeypatch):
    """The dims of every sum the fallback's checks take (None: a whole tensor's)."""
    from actgen.runtime import activation

    dims, sum_ = [], activation._sum

    def counted(t, dim=None):
        dims.append(dim)
        return sum_(t, dim)
    monkeypatch.setattr(activation, "_sum", counted)
    return dims


@pytest.mark.parametrize("name, outside", [
    ("silu", None),         # float32 backward window (-inf, 5): its largest value alone
    ("reglu", None),        # finite inputs both ways
    ("swiglu", None),
    ("swiglu", 16.5),       # a few blocks past the backward's window: the derived code's, per block
    ("mish", None),         # no torch kernel: the derived code's fast variants, for finite inputs
])
def test_a_backward_does_not_sum_again_the_inputs_its_forward_found_finite(name, outside, monkeypatch):
    """The forward's check found its inputs finite (one sum each); the backward of the same
    call, handed the same tensors, takes no sum (the whole tensors', per block, or of the
    values it patches), and its gradients are the formula's, against float64 torch."""
    fn, op = _op(name)
    n = 2 ** 12 + 100
    xs = [torch.linspace(-6, 6, n)] + ([torch.linspace(2, -2, n)] if op.n_inputs == 2 else [])
    if outside is not None:
        xs[0][[7, 1000, n - 10]] = outside
    xr = [t.clone().requires_grad_() for t in xs]
    sums = _count_sums(monkeypatch)
    with use_backend("torch"):
        y = fn(*xr)
        forward = list(sums)
        got = torch.autograd.grad(y, xr, torch.ones_like(y))
    assert forward == [None] * op.n_inputs and sums == forward
    xd = [t.double().requires_grad_() for t in xs]
    formulas = {"reglu": lambda a, b: torch.relu(a) * b, "mish": torch.nn.functional.mish}
    ref = formulas.get(name, functools.partial(_reference, name))(*xd)
    want = torch.autograd.grad(ref, xd, torch.ones_like(ref))
    for g, w in zip(got, want):
        torch.testing.assert_close(g.double(), w, rtol=4e-7, atol=4e-7)


def test_a_saved_tensors_hook_that_hands_back_other_tensors_gets_them_checked():
    """Saved inputs offloaded to float16 and back (a saved-tensors hook) come back as other
    tensors, -1e5 as -inf: the forward's finding is not theirs, the backward checks what it
    is handed, and silu's gradient there is the formula's limit, 0, not torch's kernel's
    0 * -inf = NaN; the others are silu' of the values handed back."""
    x = torch.tensor([-1e5, -1.0, 0.5, 2.0], requires_grad=True)
    with use_backend("torch"), torch.autograd.graph.saved_tensors_hooks(lambda t: t.half(), lambda t: t.float()):
        y = actgen.ops.silu(x)
        (got,) = torch.autograd.grad(y, x, torch.ones_like(y))
    xd = x.detach().half().double()[1:].requires_grad_()
    (want,) = torch.autograd.grad(_reference("silu", xd), xd, torch.ones_like(xd))
    assert got[0].item() == 0.0
    torch.testing.assert_close(got[1:].double(), want, rtol=4e-7, atol=4e-7)


@pytest.mark.parametrize("needs", [(True, False), (False, True)])
def test_a_gated_backward_computes_only_the_gradients_asked_for(needs, monkeypatch):
    """swiglu through torch's kernels with one input frozen: the other's gradient is right,
    and the frozen one gets none."""
    fn, op = _op("swiglu")
    calls = _spy(op, monkeypatch)
    a = torch.linspace(-3.5, 3.5, 101).requires_grad_(needs[0])
    b = torch.linspace(2, -2, 101).requires_grad_(needs[1])
    with use_backend("torch"):
        fn(a, b).sum().backward()
    assert (calls["forward"], calls["backward"]) == (1, 1)
    ad, bd = a.detach().double().requires_grad_(), b.detach().double().requires_grad_()
    _reference("swiglu", ad, bd).sum().backward()
    for t, td, need in ((a, ad, needs[0]), (b, bd, needs[1])):
        if need:
            torch.testing.assert_close(t.grad.double(), td.grad, rtol=1e-6, atol=1e-7)
        else:
            assert t.grad is None


def test_float64_takes_the_derived_code(monkeypatch):
    """No dtype but float32, bfloat16 and float16 has a window (torch's float64 kernels are
    not measured here)."""
    fn, op = _op("silu")
    calls = _spy(op, monkeypatch)
    x = torch.linspace(-4, 4, 33, dtype=torch.float64, requires_grad=True)
    with use_backend("torch"):
        torch.autograd.grad(fn(x), x, torch.ones_like(x))
    assert (calls["forward"], calls["backward"]) == (0, 0)


def test_huge_inputs_beyond_a_kernels_bound_take_the_derived_code(monkeypatch):
    """torch's hardswish, x*min(max(x + 3, 0), 6)/6, overflows to inf from x = 5.7e37 in
    float32, where the formula is x: a tensor with an input past 2**120 runs the derived code."""
    fn, op = _op("hardswish")
    calls = _spy(op, monkeypatch)
    x = torch.tensor([-1e38, -2.0, 1.0, 1e38, 3e38], requires_grad=True)
    with use_backend("torch"):
        y = fn(x)
        (g,) = torch.autograd.grad(y, x, torch.ones_like(y))
    assert (calls["forward"], calls["backward"]) == (0, 0)
    xd = x.detach().double()
    want = torch.where(xd <= -3, 0.0, torch.where(xd < 3, xd * (xd + 3) / 6, xd))
    torch.testing.assert_close(y.detach(), want.float())
    torch.testing.assert_close(g, torch.tensor([0.0, -1 / 6, 5 / 6, 1.0, 1.0]))


def test_inputs_of_two_dtypes_take_the_derived_code(monkeypatch):
    """A gate of another dtype than its input (bfloat16 a, float32 b) is no case torch's
    kernels are trusted with: the derived code, also where a few values are outside a window
    (which once ran torch's kernel on the mixed inputs)."""
    fn, op = _op("swiglu")
    calls = _spy(op, monkeypatch)
    a = torch.linspace(-3, 3, 3000).to(torch.bfloat16)
    a[7] = 16.5
    b = torch.linspace(2, -2, 3000)
    ar, br = a.clone().requires_grad_(), b.clone().requires_grad_()
    with use_backend("torch"):
        y = fn(ar, br)
        ga, gb = torch.autograd.grad(y, (ar, br), torch.ones_like(y))
    assert (calls["forward"], calls["backward"]) == (0, 0)
    ad, bd = a.double().requires_grad_(), b.double().requires_grad_()
    want = _reference("swiglu", ad, bd)
    want_a, want_b = torch.autograd.grad(want, (ad, bd), torch.ones_like(want))
    eps = torch.finfo(torch.bfloat16).eps
    torch.testing.assert_close(y.detach().double(), want.detach(), rtol=2 * eps, atol=2 * eps)
    torch.testing.assert_close(ga.double(), want_a, rtol=2 * eps, atol=2 * eps)
    torch.testing.assert_close(gb.double(), want_b, rtol=2 * eps, atol=2 * eps)
