"""Hostile and odd specs: every one a clean `path:line: field: problem` error or a working op.

The cases are the kinds a random search over specs turned up: YAML that nests into a cycle,
numbers no float holds, constants that are not real, conditions sympy cannot decide, formulas
whose limits take exact arithmetic forever, and constants that make the generated code's
float arithmetic raise.  The ops that build are checked against the formula as plain torch
(tests/_reference.py), and must give NaN or inf where torch does, never an exception.
"""
import importlib
import math
import subprocess
import sys

import pytest
import torch

from actgen import runtime as rt
from actgen.build import build
from actgen.spec import SpecError, load_spec

from _reference import reference_call


@pytest.mark.parametrize("text, expected", [
    ("name: a\nformula: x * q\nparams: &a {p: *a}\n", "s.yaml:3: spec: YAML aliases (*name) are not supported"),
    ("name: a\nformula: x\nparams: {p: &i 1.0}\nconstants: {c: *i}\n", "s.yaml:4: spec: YAML aliases"),
    ("name: a\nformula: x\ndoc: " + "[" * 40 + "]" * 40 + "\n", "s.yaml:3: spec: nested deeper than 16 levels"),
    ("name: a\nformula: x * p\nparams: {p: 1" + "0" * 400 + "}\n", "s.yaml:3: params.p: must be a finite number"),
    ("name: a\nformula: max(sqrt(-1), x)\n", "s.yaml:2: formula: the constant I is not a real number"),
    ("name: a\nformula: where(sqrt(-2) > 0, x, 0)\n", "s.yaml:2: formula: the constant sqrt(2)*I is not a real number"),
    ("name: a\nformula: Max(log(-6.5), x)\n", "is not a real number"),
    ("name: a\nformula: where(log(0) < 1, x, 0)\n", "s.yaml:2: formula: the constant zoo is not a real number"),
    ("name: a\nformula: x + sigmoid(sinh(1e300))\n", "number 1e+300 is beyond float32's range"),
    ("name: a\nformula: x + sigmoid(sinh(1e30))\n", "is beyond float32's range"),
    ("name: a\nformula: x * exp(100)\n", "the constant exp(100) is beyond float32's range"),
    ("name: a\nformula: x + 1e39\n", "number 1e+39 is beyond float32's range"),
    ("name: a\nformula: x * c\nconstants: {c: -1.0e+39}\n", "s.yaml:3: constants.c: -1e+39 is beyond float32's range"),
    ("name: a\nformula: where(Min(2, uniform(0, 1)) < 1, x, 2*x)\n", "where(...) of these arguments cannot be built"),
    ("name: a\nformula: Max(x, Min(c, -2)**(1/3))\nconstants: {c: 1.0}\n", "Max(...) of these arguments cannot be built"),
])
def test_hostile_specs_are_clean_errors(text, expected):
    with pytest.raises(SpecError) as info:
        load_spec(text, "s.yaml")
    assert any(expected in p for p in info.value.problems), info.value.problems


def test_hostile_spec_on_the_command_line_exits_2_and_writes_nothing(tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text("name: a\nformula: x\nparams: &a {p: *a}\n")
    out = tmp_path / "lib"
    r = subprocess.run([sys.executable, "-m", "actgen.cli", "build", str(spec), "--out", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr and not out.exists()
    assert r.stderr.strip() == f"{spec}:3: spec: YAML aliases (*name) are not supported"


def test_a_formula_the_compiler_fails_on_is_reported_not_raised(tmp_path, monkeypatch):
    """The last line of defence: whatever derive raises on a formula that passed validation
    becomes `path:line: formula: cannot be compiled (...)`."""
    import actgen.build as build_module

    def fails(spec):
        raise RuntimeError("no form for this")

    monkeypatch.setattr(build_module, "derive", fails)
    spec = tmp_path / "s.yaml"
    spec.write_text("name: a\ndoc: d\nformula: x * sigmoid(x)\n")
    with pytest.raises(SpecError) as info:
        build([spec], tmp_path / "lib")
    assert info.value.problems == [f"{spec}:3: formula: cannot be compiled (RuntimeError: no form for this)"]
    assert not (tmp_path / "lib").exists()


def _op(tmp_path, text):
    """Build one spec into a fresh package under tmp_path and import it: (spec, module)."""
    spec_file = tmp_path / "s.yaml"
    spec_file.write_text(text)
    package = f"hostile_{abs(hash(text)) % 10**8}"
    build([spec_file], tmp_path / package)
    sys.path.insert(0, str(tmp_path))
    try:
        spec = load_spec(text)
        return spec, importlib.import_module(f"{package}.{spec.name}")
    finally:
        sys.path.remove(str(tmp_path))


@pytest.mark.parametrize("text", [
    "name: f\nformula: abs(log(x))\n",
    "name: f\nformula: erfc(log(x))\n",
    "name: f\nformula: Abs(log(x) - log(1+x))\n",
    "name: f\nformula: where(log(c) > 0, x, 0)\nconstants: {c: -1.0}\n",
    "name: f\nformula: where(log1p(p) > 0, x, 2*x)\nparams: {p: -2.0}\n",
    "name: f\nformula: x * sigmoid(x) + c - 3e38\nconstants: {c: 1.0}\n",
    "name: f\nformula: x**x**x**x\n",
    "name: f\nformula: tanh(exp(sqrt(x)))\n",
    "name: f\nformula: cos(sinh(x))\n",
    "name: f\nformula: cos(log(x))\n",
    "name: f\nformula: tan(log(x**2 - 1))\n",
    "name: f\nformula: expm1(cosh(sqrt(x)))\n",
    "name: f\nformula: sigmoid(exp(sqrt(x))) * x\n",
    "name: f\nformula: max(x, Piecewise((k, ~(-0.5 < k)), (x, True)))\nparams: {k: 0.985}\n",
    "name: f\nformula: x * max(max(Abs(k), x, Piecewise((k, ~(-0.5 < k)), (x, True))), 3)\nparams: {k: 0.985}\n",
])
def test_odd_formulas_build_and_match_plain_torch(tmp_path, text):
    """Each of these once crashed the compiler or its generated code; f must match the
    formula as plain torch in float64 (NaN where it is NaN), and backward must run."""
    spec, mod = _op(tmp_path, text)
    fn = getattr(mod, spec.name)
    x = torch.linspace(-6, 6, 242, dtype=torch.float64).reshape(2, -1).requires_grad_()
    params = [torch.full((1,), p.init, dtype=torch.float64) for p in spec.params]
    y = fn(x, *params)
    want = reference_call(spec, [x.detach()], params, {})
    torch.testing.assert_close(y.detach(), want.expand_as(y), equal_nan=True, rtol=1e-9, atol=1e-12)
    y.sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape


@pytest.mark.parametrize("formula", [
    "(x - sinh(x))**2",
    "3*(x - sinh(x))**3",
    "(x - tanh(x))**2 + x",
    "(sinh(x) - x)/(1 + (x - sinh(x))**2)",
])
def test_powers_of_sums_rewritten_near_zero_differentiate_as_written(tmp_path, formula):
    """x - sinh(x) cancels near 0 and is computed there from a rational approximant; a power
    or product of it is differentiated as the formula's own (the derivative once came from
    the power's base and exponent added together, or sympy recursed without end)."""
    spec, mod = _op(tmp_path, f"name: f\nformula: {formula}\n")
    x = torch.linspace(-4, 4, 161, dtype=torch.float64).requires_grad_()
    y = mod.f(x)
    want_x = x.detach().clone().requires_grad_()
    want = reference_call(spec, [want_x], [], {})
    torch.testing.assert_close(y.detach(), want.detach(), rtol=1e-9, atol=1e-12)
    (g,) = torch.autograd.grad(y.sum(), x)
    (want_g,) = torch.autograd.grad(want.sum(), want_x)
    torch.testing.assert_close(g, want_g, rtol=1e-9, atol=1e-12)


def test_gated_op_with_a_per_channel_param_has_a_module(tmp_path):
    spec, mod = _op(tmp_path, "name: f\nformula: a * b * s\ninputs: [a, b]\nparams: {s: {init: 1.5, per_channel: true}}\n")
    m = mod.F(num_channels=3)
    assert m.s.shape == (3,)
    with torch.no_grad():
        m.s.copy_(torch.tensor([0.5, 1.0, 2.0]))
    v = torch.randn(2, 3, 8, requires_grad=True)
    y = m(v)
    a, b = v.detach().chunk(2, dim=-1)
    torch.testing.assert_close(y, a * b * m.s.detach().view(-1, 1))
    y.sum().backward()
    assert m.s.grad.shape == (3,)


@pytest.mark.parametrize("formula, c, want", [
    ("x * (1/c)", 0.0, lambda x: x * math.inf),
    ("x / (c - 1)", 1.0, lambda x: x / 0.0),
    ("x * log(c)", 0.0, lambda x: x * -math.inf),
    ("x * log(c)", -1.0, lambda x: x * math.nan),
    ("x * log1p(c)", -1.0, lambda x: x * -math.inf),
    ("x * sqrt(c)", -1.0, lambda x: x * math.nan),
    ("x * c**0.5", -1.0, lambda x: x * math.nan),
    ("x * c**(-1)", 0.0, lambda x: x * math.inf),
    ("x * exp(c)", 1000.0, lambda x: x * math.inf),
    ("x * sinh(c)", -1000.0, lambda x: x * -math.inf),
    ("x * sin(c)", math.inf, lambda x: x * math.nan),
])
def test_constants_compute_as_ieee_floats(tmp_path, formula, c, want):
    """A constant can be anything at call time: its expressions give inf or NaN as the
    formula's tensors would (c/0, log(-1), exp(1000)), not a Python exception, forward and
    backward."""
    spec, mod = _op(tmp_path, f"name: f\nformula: {formula}\nconstants: {{c: 2.0}}\n")
    x = torch.tensor([-2.0, -0.5, 0.5, 3.0], dtype=torch.float64, requires_grad=True)
    y = mod.f(x, c=c)
    torch.testing.assert_close(y.detach(), want(x.detach()), equal_nan=True)
    y.sum().backward()
    with torch.no_grad():
        slope = want(torch.ones(1, dtype=torch.float64))        # f is x times a constant
    torch.testing.assert_close(x.grad, slope.expand_as(x), equal_nan=True)


@pytest.mark.parametrize("name", ["exp", "expm1", "cosh", "sinh", "log", "log1p", "sqrt", "sin", "cos", "tan"])
def test_runtime_scalar_functions_are_torch_on_floats(name):
    values = [0.0, -0.0, 1.0, -1.0, 0.5, -2.0, 700.0, 710.0, -710.0, 1e308, math.inf, -math.inf, math.nan]
    fn = getattr(rt, f"scalar_{name}")
    for v in values:
        want = getattr(torch, name)(torch.tensor(v, dtype=torch.float64)).item()
        got = fn(v)
        assert (math.isnan(got) and math.isnan(want)) or got == pytest.approx(want, rel=1e-15), (name, v, got, want)


def test_runtime_scalar_division_and_power_are_torch_on_floats():
    values = [0.0, -0.0, 2.0, -2.0, 0.5, -8.0, 1e300, math.inf, -math.inf, math.nan]
    for a in values:
        for b in values + [3.0, -3.0, 1 / 3]:
            ta, tb = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
            for got, want in ((rt.scalar_div(a, b), (ta / tb).item()), (rt.scalar_pow(a, b), (ta ** tb).item())):
                assert (math.isnan(got) and math.isnan(want)) or got == want, (a, b, got, want)


def test_masks_of_params_and_of_the_chunk_combine_into_out():
    """A param's 0-dim mask first, the chunk's after: out keeps the chunk's shape."""
    x = torch.linspace(-2, 2, 12)
    k = torch.tensor(1.0)
    for combine, ref in ((rt.mask_or, torch.maximum), (rt.mask_and, torch.mul)):
        out = torch.full((12,), math.nan)
        got = combine(rt.gt(k, 0.5), rt.lt(k, 2.0), rt.gt(x, 0.0), out=out)
        assert got.shape == (12,) and out.shape == (12,)
        torch.testing.assert_close(got, ref(ref((k > 0.5).float(), (k < 2.0).float()), (x > 0).float()).expand(12))


def test_runtime_number_beyond_the_dtype_is_inf():
    like = torch.zeros(3)
    assert rt.number(like, 1e300).item() == math.inf and rt.number(like, -1e300).item() == -math.inf
    assert rt.number(like.double(), 1e300).item() == 1e300


@pytest.mark.parametrize("c", [1.0, -1.0])
def test_a_condition_of_constants_alone_picks_its_branch(tmp_path, c):
    """where(c > 0, ...) with c a constant is one bool: the guarded path (taken where an input
    or a result is not finite) picks the branch with it, as the fast path does."""
    spec, mod = _op(tmp_path, "name: f\nformula: where(c > 0, sqrt(x), exp(x))\nconstants: {c: 1.0}\n")
    x = torch.tensor([-1.0, 0.0, 2.0, 700.0, math.inf, -math.inf, math.nan], dtype=torch.float64, requires_grad=True)
    y = mod.f(x, c=c)
    want = reference_call(spec, [x.detach()], [], {"c": c})
    torch.testing.assert_close(y.detach(), want, equal_nan=True)
    y.sum().backward()
    slope = torch.func.vmap(torch.func.grad(lambda t: torch.sqrt(t) if c > 0 else torch.exp(t)))(x.detach())
    torch.testing.assert_close(x.grad[:4], slope[:4], equal_nan=True)


def test_runtime_rdiv_rounds_once_and_is_zero_over_a_subnormal():
    """c / t for a float c: one IEEE division (Python's c / t on a tensor is t.reciprocal()*c:
    NaN for 0 over a subnormal, whose reciprocal overflows)."""
    g = torch.Generator().manual_seed(5)
    t = torch.rand(10000, generator=g) * 4 - 2
    for c in (0.3, -7.0, 1e-30):
        want = (torch.tensor(c, dtype=torch.float32).double() / t.double()).float()
        assert torch.equal(rt.rdiv(c, t), want)
    sub = torch.tensor([1e-40, -1e-40, 1e-45])
    assert torch.equal(rt.rdiv(0.0, sub), torch.tensor([0.0, -0.0, 0.0]))
    out = sub.clone()
    assert rt.rdiv(2.0, out, out=out) is out and torch.isinf(out).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_squareplus_at_b_0_is_0_left_of_0_down_to_subnormals(dtype):
    from actgen.ops import squareplus
    from _reference import SPECS
    x = torch.tensor([-1e-40, -1e-45, -1e-39, -1e-30, -3.0, 1e-40, 2.0], dtype=dtype)
    want = reference_call(SPECS["squareplus"], [x.double()], [], {"b": 0.0}).to(dtype)
    torch.testing.assert_close(squareplus(x, b=0.0), want, rtol=0, atol=0)


def test_float64_kernels_take_bare_numbers_in_float64(tmp_path, triton_backend):
    """A number tl.where would take as float32 first (asinh(3.0) as a branch) and an
    evaluation-mode draw (lo + (hi - lo)/2) are float64 in a float64 kernel: the kernels
    agree with the formula as plain torch to float64 rounding, not float32's."""
    text = ("name: f\nformula: where(a < c, asinh(3.0), b / (1 + abs(c))) - softplus(uniform(0.3, 0.9) * b)\n"
            "inputs: [a, b]\nconstants: {c: 1.0}\n")
    spec, mod = _op(tmp_path, text)
    a = torch.linspace(-3, 3, 7, dtype=torch.float64)
    b = torch.linspace(-2, 2.5, 7, dtype=torch.float64)
    y = mod.f(a, b, training=False)
    torch.testing.assert_close(y, reference_call(spec, [a, b], [], {}), rtol=4e-16, atol=4e-16)
