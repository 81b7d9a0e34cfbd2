"""torch's own CPU kernels for formulas that are exactly one of torch's activations
(actgen/native.py): which formulas match, that the fallback takes them, and that their
values and gradients - kinks, tails and the non-finite inputs they are trusted with included -
meet the accuracy target against the mpmath oracle, in float32 and bfloat16."""
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

MATCHED = ("relu", "leaky_relu", "elu", "softplus", "hardswish", "silu")
GRID = C.round_to(C.grid(step=0.01, n_log=100), torch.float32)


def test_the_catalogue_entries_that_are_torch_activations_match_and_only_those():
    found = {name for name, spec in SPECS.items() if native.match(spec) is not None}
    assert found == set(MATCHED)
    m = native.match(SPECS["softplus"])
    assert m.forward == "torch.nn.functional.softplus(x, beta, threshold)"
    assert m.backward == "torch.ops.aten.softplus_backward(_g, x, beta, threshold)"
    assert native.match(SPECS["silu"]).backward is None       # silu's backward is the derived one


@pytest.mark.parametrize("text, kernel", [
    ("name: f\ninputs: [u]\nformula: where(k*u > m, u, log(1 + exp(k*u))/k)\nconstants: {k: 2.0, m: 15.0}\n", "softplus"),
    ("name: f\nformula: sigmoid(x) * x\n", "silu"),
    ("name: f\nformula: where(x > 0, x, a*(exp(x) - 1))\nconstants: {a: 0.5}\n", "elu"),
    ("name: f\nformula: log1p(exp(x))\n", None),                 # written another way: the derived code
    ("name: f\nformula: x * sigmoid(2*x)\n", None),
    ("name: f\nformula: where(x >= 0, x, 0.01*x)\n", None),      # >= moves the kink's derivative
    ("name: f\nformula: where(x > 0, x, s*x)\nparams: {s: 0.25}\n", None),    # a param: not torch's op
    ("name: f\ninputs: [a, b]\nformula: a * sigmoid(a) * b\n", None),
])
def test_a_formula_matches_only_as_torch_writes_it(text, kernel):
    m = native.match(load_spec(text))
    assert (m.kernel.name if m else None) == kernel


def _spy(op, monkeypatch):
    """Counts of the op's native forward and backward calls."""
    calls = {"forward": 0, "backward": 0}
    for which in ("forward", "backward"):
        fn = getattr(op, f"{which}_native")
        if fn is None:
            continue

        def counted(*args, _fn=fn, _which=which):
            calls[_which] += 1
            return _fn(*args)
        monkeypatch.setattr(op, f"{which}_native", counted)
    return calls


def _op(name):
    fn = getattr(actgen.ops, name)
    return fn, fn.__globals__["_OP"]


@pytest.mark.parametrize("name", MATCHED)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_torch_kernels_meet_the_accuracy_target_on_finite_inputs(name, dtype, monkeypatch):
    """f and df/dx through torch's kernels on every finite point of the docs grid (kinks and
    float32's extremes included), scored against the mpmath oracle as docs/accuracy.md scores
    the derived code."""
    spec = SPECS[name]
    fn, op = _op(name)
    calls = _spy(op, monkeypatch)
    xs = np.unique(C.round_to(GRID[np.isfinite(GRID)], dtype))
    xs = xs[np.abs(xs) < op.native_bound]          # (beyond it the derived code runs: below)
    x = torch.tensor(xs, dtype=dtype, requires_grad=True)
    with use_backend("torch"):
        y = fn(x)
        (g,) = torch.autograd.grad(y, x, torch.ones_like(y))
    assert calls["forward"] == 1 and calls["backward"] == (1 if op.backward_native else 0)
    truth, cond, xcol = C.truth_at(C.Oracle(spec), [(float(v),) for v in xs])
    for out, got in (("f", y), ("df/dx", g)):
        s = C.score(xcol, got.detach().double().numpy(), truth[out], dtype, cond[out])
        assert s.meets_target, (name, out, s)


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
    forward, backward = op.native_any_input
    assert calls["forward"] == int(forward)
    assert calls["backward"] == int(backward and op.backward_native is not None)
    truth = C.Oracle(spec).values([(v,) for v in x.tolist()])
    np.testing.assert_allclose(y.detach().double().numpy(), truth["f"], rtol=1e-6)    # (float32 constants)
    np.testing.assert_allclose(g.double().numpy(), truth["df/dx"], rtol=1e-6)


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


def test_huge_inputs_beyond_a_kernels_bound_take_the_derived_code(monkeypatch):
    """torch's hardswish, x*min(max(x + 3, 0), 6)/6, overflows to inf from x = 5.7e37 in
    float32, where the formula is x: a tensor with an input past 2**120 runs the derived code."""
    fn, op = _op("hardswish")
    calls = _spy(op, monkeypatch)
    x = torch.tensor([-1e38, -2.0, 1.0, 1e38, 3e38], requires_grad=True)
    with use_backend("torch"):
        y = fn(x)
        (g,) = torch.autograd.grad(y, x, torch.ones_like(y))
    assert calls == {"forward": 0, "backward": 0}
    xd = x.detach().double()
    want = torch.where(xd <= -3, 0.0, torch.where(xd < 3, xd * (xd + 3) / 6, xd))
    torch.testing.assert_close(y.detach(), want.float())
    torch.testing.assert_close(g, torch.tensor([0.0, -1 / 6, 5 / 6, 1.0, 1.0]))
