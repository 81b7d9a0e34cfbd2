"""The precision check (actgen.precision): outputs whose float32 form measures beyond the
accuracy target are computed in float64, and then meet it against a 50-digit oracle."""
import dataclasses
import math
from pathlib import Path

import mpmath
import numpy as np
import pytest
import sympy
import torch

from actgen import catalogue as C
from actgen import precision
from actgen.derive import Saturate, derive
from actgen.formula import make_symbol
from actgen.functions import log1p, sigmoid, softplus
from actgen.spec import load_spec, load_spec_file

SPECS = Path(__file__).resolve().parents[1] / "specs"
X = make_symbol("x")


def test_evaluator_agrees_with_mpmath_in_float64():
    """Branches, the stable primitives, clamps and hypot, against mpmath at 30 digits."""
    from sympy.codegen.cfunctions import hypot
    e = (sympy.Piecewise((sigmoid(X) * sympy.erf(X / 3), X < 0), (softplus(-X) + sympy.tanh(X), True))
         + hypot(X, 1) * sympy.exp(-Saturate(X, -5, 5) ** 2) + log1p(X ** 2) / (1 + X ** 4))
    xs = np.array([-40.0, -3.25, -0.5, 0.0, 0.75, 2.5, 30.0])
    got = precision.evaluate(e, {X: xs}, np.float64)
    with mpmath.workdps(30):
        for x, g in zip(xs, got):
            m = mpmath.mpf(x)
            branch = (mpmath.erf(m / 3) / (1 + mpmath.exp(-m)) if x < 0
                      else mpmath.log1p(mpmath.exp(-m)) + mpmath.tanh(m))
            want = branch + mpmath.sqrt(m * m + 1) * mpmath.exp(-min(max(m, -5), 5) ** 2) + mpmath.log1p(m * m) / (1 + m ** 4)
            assert g == pytest.approx(float(want), rel=1e-14, abs=1e-300), x


def test_evaluator_rounds_every_operation_in_float32():
    """x*y + z/x in float32, operation by operation, as numpy computes it."""
    y, z = make_symbol("y"), make_symbol("z")
    rng = np.random.default_rng(0)
    xs, ys, zs = (rng.standard_normal(1000).astype(np.float32) for _ in range(3))
    got = precision.evaluate(X * y + z / X, {X: xs, y: ys, z: zs}, np.float32)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, xs * ys + zs / xs)


def _faithful_far(value) -> np.float32:
    """The float32 neighbour of an mpmath value on the other side from the nearest (the
    nearest where it is exactly a float32)."""
    near = np.float32(float(value))
    if mpmath.mpf(float(near)) == value:
        return near
    return np.nextafter(near, np.float32(-np.inf) if mpmath.mpf(float(near)) > value else np.float32(np.inf))


@pytest.mark.parametrize("fn,ref", [(sympy.exp, mpmath.exp), (log1p, mpmath.log1p), (sympy.tanh, mpmath.tanh),
                                    (sympy.log, mpmath.log), (sympy.atan, mpmath.atan)])
def test_float32_functions_are_the_farthest_faithful_rounding(fn, ref):
    """A float32 function is modelled as the farthest a faithful one can be (between 0.5 and
    1 ULP, the float32 neighbour on the other side of the value from the nearest): the same
    on every CPU, where numpy's own float32 functions change with its vector extensions.
    Checked bitwise against mpmath at 40 digits (below 9, where tanh's float64 value is not
    yet 1)."""
    rng = np.random.default_rng(1)
    xs = np.concatenate([rng.uniform(0.01, 9, 300), np.float32([1.0, 0.5, 2.0, 1e-6])]).astype(np.float32)
    got = precision.evaluate(fn(X), {X: xs}, np.float32)
    assert got.dtype == np.float32
    with mpmath.workdps(40):
        want = np.array([_faithful_far(ref(mpmath.mpf(float(x)))) for x in xs], dtype=np.float32)
    np.testing.assert_array_equal(got, want)


def test_float32_functions_stay_exact_where_the_value_is():
    """exp(0) = 1 and log(1) = 0 exactly: no neighbour taken."""
    assert precision.evaluate(sympy.exp(X), {X: np.float32([0.0])}, np.float32)[0] == 1.0
    assert precision.evaluate(sympy.log(X), {X: np.float32([1.0])}, np.float32)[0] == 0.0


def test_evaluator_pairs_ratios_as_the_printers_do():
    """0.5*x**2/(hypot(x, 1) + 1) prints as x/(hypot + 1)*x*0.5 (no x**2 to overflow): the
    evaluator computes it so, finite at x = -1e30 in float32."""
    spec = load_spec_file(SPECS / "bent_identity.yaml")
    d = derive(spec)
    x = d.inputs[0]
    out = precision.evaluate_block(d.forward, {x: np.array([-1e30, -3.0], dtype=np.float32)}, np.float32)["y"]
    np.testing.assert_allclose(out, [-0.5e30 - 1.5, (math.sqrt(10) - 1) / 2 - 3], rtol=1e-6)


@pytest.mark.parametrize("name,direction", [("tanh_exp", "backward"), ("serf", "backward")])
def test_cancelling_derivatives_are_computed_in_float64(name, direction):
    d = derive(load_spec_file(SPECS / f"{name}.yaml"))
    found = getattr(d, f"float64_{direction}")
    assert [m.output for m in found] == ["d_x"] and found[0].typical_worst > precision.ACCURACY_ULP
    assert not d.float64_forward


@pytest.mark.parametrize("name", ["silu", "mish", "gelu_tanh", "logish", "swiglu", "pau", "polynomial"])
def test_forms_within_the_target_stay_in_float32(name):
    d = derive(load_spec_file(SPECS / f"{name}.yaml"))
    assert not d.float64_forward and not d.float64_backward


def test_formula_as_written_is_not_checked():
    d = derive(load_spec_file(SPECS / "tanh_exp.yaml"), rewrites=False)
    assert not d.float64_backward


# --- the effect, against the mpmath oracle (independent of the evaluator above) ---------------
# where the product rule's terms cancel: x*tanh(exp(x)) and x*erf(softplus(x)) turn near -1.2
CANCELLING = np.arange(-3.0, -0.5, 1 / 128)


def _worst_df(fn, spec, dtype, backend, oracle):
    points = C.input_points(spec, C.round_to(CANCELLING, dtype))
    truth = oracle.values(points)
    cond = oracle.condition(points, truth)
    got = C.run(fn, spec, points, dtype, backend)
    return C.score(CANCELLING, got["df/dx"], truth["df/dx"], dtype, cond["df/dx"])


@pytest.mark.parametrize("name", ["tanh_exp", "serf"])
def test_float64_derivative_meets_the_target_where_float32_does_not(name, monkeypatch):
    spec = load_spec_file(SPECS / f"{name}.yaml")
    oracle = C.Oracle(spec)
    for backend, dtype in C.RUNS:
        s = _worst_df(C.op_function(spec), spec, dtype, backend, oracle)
        assert s.worst_scaled <= 1.0 and s.bad_nonfinite == 0, (backend, dtype, s.worst_scaled, s.worst_at)
    # the same formula with the check off: float32 evaluation misses the target there
    monkeypatch.setattr(precision, "ACCURACY_ULP", math.inf)
    plain = C.compiled_function(dataclasses.replace(spec, sha256=spec.sha256 + ":float32"))
    s = _worst_df(plain, spec, torch.float32, "torch", oracle)
    assert s.worst_scaled > C.TARGET_ULP, s.worst_scaled


def test_float64_backward_keeps_dtypes_and_transforms():
    """tanh_exp's backward computes in float64 but hands back float32 (and bfloat16)
    gradients; jvp and double backward agree with float64 autograd."""
    import actgen.ops as ops
    x64 = torch.linspace(-3, 2, 101, dtype=torch.float64)
    for dtype in (torch.float32, torch.bfloat16):
        x = x64.to(dtype).requires_grad_()
        (g,) = torch.autograd.grad(ops.tanh_exp(x).sum(), x)
        assert g.dtype == dtype
        want = torch.func.grad(lambda t: (t * torch.tanh(torch.exp(t))).sum())(x.detach().double()).to(dtype)
        torch.testing.assert_close(g, want, rtol=torch.finfo(dtype).eps, atol=0)     # at most an ULP
    x = x64.float()
    _, tangent = torch.func.jvp(ops.tanh_exp, (x,), (torch.ones_like(x),))
    assert tangent.dtype == torch.float32
    ref = torch.func.grad(lambda t: (t * torch.tanh(torch.exp(t))).sum())(x.double())
    torch.testing.assert_close(tangent, ref.float(), rtol=torch.finfo(torch.float32).eps, atol=0)
    assert torch.autograd.gradcheck(ops.tanh_exp, (x64[:20].clone().requires_grad_(),))
    assert torch.autograd.gradgradcheck(ops.tanh_exp, (x64[:20].clone().requires_grad_(),))


@pytest.mark.parametrize("name", ["polynomial", "bent_identity", "softsign", "hardswish", "star_relu"])
def test_evaluator_follows_the_generated_code(name):
    """For arithmetic-only forms (no library call to differ), float32 evaluation of the block
    is bit for bit what the generated eager fallback computes: the same operations in the
    same order and pairing, fused multiply-adds included (params away from their inits, some
    of which are 0).  (Not squareplus: its sqrt(x**2 + b) is torch's hypot on the CPU, where
    the evaluator follows the kernels' rounded sqrt of one fma.)"""
    import importlib
    spec = load_spec_file(SPECS / f"{name}.yaml")
    d = derive(spec)
    mod = importlib.import_module(f"actgen.ops.{name}")
    xs = np.concatenate([np.linspace(-30, 30, 2001), [-1e30, -7e12, 1e18, 3e37]]).astype(np.float32)
    sym = spec.symbols
    values = {sym[p.name]: np.float32(p.init + 0.3 + 0.1 * k) for k, p in enumerate(spec.params)}
    values |= {sym[c.name]: c.default for c in spec.constants}
    env = {d.inputs[0]: xs} | {s: np.full(len(xs), v, dtype=np.float32) for s, v in values.items()}
    tensors = {d.inputs[0], *(sym[p.name] for p in spec.params)}
    got = precision.evaluate_block(d.backward, env, np.float32, tensors)
    args = [torch.from_numpy(xs)] + [torch.tensor([float(values[sym[p.name]])]).reshape(()) for p in spec.params]
    args += [c.default for c in spec.constants]
    want = mod._derivatives_torch(*args)
    for (out, _), w in zip(d.backward.outputs, want):
        w = torch.as_tensor(w).expand(len(xs)).numpy()
        np.testing.assert_array_equal(got[out], w, err_msg=f"{name} {out}")


@pytest.mark.parametrize("name", ["polynomial", "bent_identity", "squareplus", "softsign", "hardswish", "star_relu"])
def test_evaluator_follows_the_generated_kernels(name):
    """The same for the backward kernel under the interpreter: its tl.fma round where the
    evaluator's fused multiply-adds do, bit for bit."""
    from actgen.runtime import HAS_TRITON
    if not HAS_TRITON:
        pytest.skip("triton is not installed")
    import importlib
    spec = load_spec_file(SPECS / f"{name}.yaml")
    d = derive(spec)
    mod = importlib.import_module(f"actgen.ops.{name}")
    xs = np.concatenate([np.linspace(-30, 30, 2001), [-1e30, -7e12, 1e18, 3e37]]).astype(np.float32)
    sym = spec.symbols
    params = {p.name: float(np.float32(p.init + 0.3 + 0.1 * k)) for k, p in enumerate(spec.params)}
    env = {d.inputs[0]: xs} | {sym[n]: np.full(len(xs), v, dtype=np.float32) for n, v in params.items()}
    env |= {sym[c.name]: np.full(len(xs), c.default, dtype=np.float32) for c in spec.constants}
    tensors = {d.inputs[0], *(sym[p.name] for p in spec.params)}
    got = precision.evaluate_block(d.kernel_backward, env, np.float32, tensors)["d_x"]
    want = C.run(getattr(mod, name), spec, [(float(x),) for x in xs], torch.float32, "triton", params)["df/dx"]
    np.testing.assert_array_equal(got.astype(np.float64), want, err_msg=name)


def test_kernels_take_the_most_accurate_of_their_cheapest_forms():
    """silu's backward kernel: of its forms with one exponential (one ratio in exp(-|x|), and
    sigmoid(x), sigmoid(-x) from one exponential), the compiler keeps the one whose float32
    error between the grid's points is least: here the ratio."""
    from actgen.derive import make_block, sigmoid_pairs
    spec = load_spec_file(SPECS / "silu.yaml")
    d = derive(spec)
    x = d.inputs[0]
    dx = dict(d.first)["x"]
    pair = make_block(sigmoid_pairs([("d_x", dx)]))
    slopes = {"d_x": [(x, dict(d.second)[("x", "x")])]}
    measured = lambda b: precision.worst_between(b, ["d_x"], slopes, [x], {}, {x})
    assert "_sigmoid" not in str(d.kernel_backward.outputs) and not d.kernel_backward.outputs[0][1].has(sigmoid)
    assert measured(d.kernel_backward) < measured(pair)


def test_float64_backward_in_chunks():
    """A tensor larger than the fallback's chunk (computed chunk by chunk, in float64 here)
    gets the same correctly rounded gradient, in its own dtype."""
    import actgen.ops as ops
    x = torch.linspace(-5, 3, 3 * 100001, dtype=torch.float32).reshape(3, 100001).requires_grad_()
    g = torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    (got,) = torch.autograd.grad(ops.tanh_exp(x), x, g)
    xd = x.detach().double().requires_grad_()
    (want,) = torch.autograd.grad(xd * torch.tanh(torch.exp(xd)), xd, g.double())
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want.float(), rtol=torch.finfo(torch.float32).eps, atol=0)


# --- the spec's `precision` field --------------------------------------------------------------
def test_precision_field_is_checked():
    from actgen.spec import SpecError
    assert load_spec("name: t\nformula: x\n").precision == "auto"
    assert load_spec("name: t\nformula: x\nprecision: float32\n").precision == "float32"
    with pytest.raises(SpecError) as info:
        load_spec("name: t\nformula: x\nprecision: double\n", "t.yaml")
    assert info.value.problems == ["t.yaml:3: precision: 'double' must be one of auto, float32, float64"]


def test_precision_float32_keeps_float32():
    """precision: float32 opts out of the check: tanh_exp's backward stays in float32 (and
    misses the target where its terms cancel, as measured above)."""
    d = derive(load_spec("name: t\nformula: x * tanh(exp(x))\nprecision: float32\n"))
    assert not d.float64_backward and not d.wide_backward and not d.wide_forward


@pytest.mark.parametrize("backend_name", ["torch", "triton"])
def test_precision_float64_computes_both_directions_in_float64(backend_name):
    """precision: float64: forward and backward in float64 for float32 and bfloat16 inputs, on
    the fallback and the kernels: each result is the float64 value, rounded once."""
    import actgen
    from actgen.runtime import HAS_TRITON, use_backend
    if backend_name == "triton" and not HAS_TRITON:
        pytest.skip("triton is not installed")
    m = actgen.compile("x * sigmoid(x) + exp(-x * x) / 3", name="precise", precision="float64")
    assert m._OP.float64_forward and m._OP.float64_backward
    assert "as the spec asks (precision: float64)" in m.__doc__
    x64 = torch.linspace(-30, 30, 2001, dtype=torch.float64)
    ref = lambda t: t * torch.sigmoid(t) + torch.exp(-t * t) / 3
    for dtype in (torch.float32, torch.bfloat16):
        x = x64.to(dtype).requires_grad_()
        with use_backend(backend_name):
            y = m.precise(x)
            (g,) = torch.autograd.grad(y, x, torch.ones_like(y))
        xd = x.detach().double().requires_grad_()
        yd = ref(xd)
        (gd,) = torch.autograd.grad(yd, xd, torch.ones_like(yd))
        assert y.dtype == g.dtype == dtype
        torch.testing.assert_close(y, yd.detach().to(dtype), rtol=torch.finfo(dtype).eps, atol=0)
        torch.testing.assert_close(g, gd.to(dtype), rtol=torch.finfo(dtype).eps, atol=0)


def test_measured_float64_is_float32_for_16bit_data_on_the_kernels():
    """A direction computed in float64 because float32 measured beyond the target (tanh_exp's
    backward) is float64 on the kernels for float32 data only: with bfloat16 data its float32
    error is far below a bfloat16 ULP, and the kernel's gradient is the float64 value rounded
    once all the same.  A spec that asks for float64 gets it for 16-bit data too."""
    import importlib

    import actgen
    from actgen.runtime import HAS_TRITON, use_backend
    if not HAS_TRITON:
        pytest.skip("triton is not installed")
    op = importlib.import_module("actgen.ops.tanh_exp")._OP
    assert op.float64_backward and not op.float64_16bit
    assert op.kernel_wide(torch.float32, True) and not op.kernel_wide(torch.bfloat16, True)
    asked = actgen.compile("x * tanh(exp(x))", name="asked", precision="float64")._OP
    assert asked.kernel_wide(torch.bfloat16, True) and asked.kernel_wide(torch.float16, True)
    import actgen.ops as ops
    x = torch.linspace(-3, 2, 1001, dtype=torch.float64).to(torch.bfloat16).requires_grad_()
    with use_backend("triton"):
        (g,) = torch.autograd.grad(ops.tanh_exp(x).sum(), x)
    want = torch.func.grad(lambda t: (t * torch.tanh(torch.exp(t))).sum())(x.detach().double()).to(torch.bfloat16)
    torch.testing.assert_close(g, want, rtol=torch.finfo(torch.bfloat16).eps, atol=0)     # at most an ULP


def test_16bit_kernels_compute_in_float64_where_float32_overflows(triton_backend):
    """log1p(x**2): x**2 overflows float32 from |x| = 1.8e19, where the value is 2*log|x|:
    measured as not finite, its forward is float64 on the kernels for 16-bit data too (a
    16-bit rounding hides float32's error, not an inf; bfloat16 holds 1e30), as on the
    fallback, and the header says so."""
    import mpmath

    import actgen
    m = actgen.compile("log1p(x**2)", name="overflowing")
    assert m._OP.float64_forward and m._OP.float64_16bit
    assert "16-bit data too, as float32 overflows where the value is finite" in open(m.__file__).read()
    x = torch.tensor([3.0, 1e10, -1e20, 1e30, 3e38], dtype=torch.bfloat16)
    want = torch.tensor([float(mpmath.log1p(mpmath.mpf(float(v)) ** 2)) for v in x.double()]).to(torch.bfloat16)
    torch.testing.assert_close(m.overflowing(x), want, rtol=torch.finfo(torch.bfloat16).eps, atol=0)


def test_fallback_prints_sums_of_two_tensor_products_as_fused_multiply_adds():
    """rest + a*b of two tensors is one _rt.fma (rest - a*b one _rt.fnma); a product with a
    number or a constant (a float at run time), and sums of constants, stay as written."""
    from actgen.printers import TorchPrinter
    y, c = make_symbol("y"), make_symbol("c")
    p = TorchPrinter(["x", "y"], like="x")
    assert p.doprint(X * y + 2) == "_rt.fma(x, y, 2.0)"
    assert p.doprint(3 - X * y) == "_rt.fnma(x, y, 3.0)"
    assert p.doprint(X * (X * (X + 4) + y) + 1) == "_rt.fma(x, _rt.fma(x, x + 4.0, y), 1.0)"
    assert "fma" not in p.doprint(2 * X + y) and "fma" not in p.doprint(c * X + y)
    assert "fma" not in p.doprint(X * y * c + 1) and "fma" not in p.doprint(c * c + 1)
    # a number times two tensors: torch.addcmul's value (c*a rounded, then one fused multiply-add)
    assert p.doprint(sympy.Float(0.5) * X * y + 2) == "_rt.fma(x, y, 2.0, 0.5)"
    assert p.doprint(3 - X * y / 4) == "_rt.fnma(x, y, 3.0, 0.25)"
    assert p.doprint(X * y + sympy.Float(0.5) * X * X) == "_rt.fma(x, y, 0.5*x*x)"     # an unscaled product first


def test_kernels_print_the_same_sums_as_tl_fma():
    """The Triton printer splits sums as the fallback's printer does, into tl.fma (c - a*b as
    tl.fma(-a, b, c)); a number float32 does not hold exactly is made in the kernel's compute
    type, not passed bare (tl.fma would round it to float32 first)."""
    from actgen.printers import TritonPrinter
    y, c = make_symbol("y"), make_symbol("c")
    p = TritonPrinter(["x", "y"])
    assert p.doprint(X * y + 2) == "tl.fma(x, y, 2.0)"
    assert p.doprint(3 - X * y) == "tl.fma(-x, y, 3.0)"
    assert p.doprint(X * (X * (X + 4) + y) + 1) == "tl.fma(x, tl.fma(x, x + 4.0, y), 1.0)"
    assert p.doprint(X * y + sympy.Float(0.1)) == "tl.fma(x, y, tl.full([], 0.1, ACC))"
    assert "fma" not in p.doprint(2 * X + y) and "fma" not in p.doprint(c * X + y)
    assert p.doprint(sympy.Float(0.5) * X * y + 2) == "tl.fma(0.5*x, y, 2.0)"
    assert p.doprint(3 - X * y / 4) == "tl.fma(-(0.25*x), y, 3.0)"


@pytest.mark.parametrize("negative", [False, True])
def test_runtime_fma_rounds_once(negative):
    """_rt.fma(a, b, c) and _rt.fnma are a*b + c and c - a*b rounded once (torch.addcmul on a
    CPU with FMA), against the float64 sum of the exact float32 product; unfused they are
    not, for these operands (c cancels most of a*b)."""
    from actgen import runtime as rt
    if torch.backends.cpu.get_cpu_capability() == "DEFAULT":
        pytest.skip("torch's CPU kernels are built without vector FMA here")
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(4099, generator=g) + 0.5, torch.rand(4099, generator=g) + 0.5
    c = (a.double() * b.double() * (1 + 1e-6 * torch.rand(4099, generator=g, dtype=torch.float64))).float()
    sign = -1.0 if negative else 1.0
    c = -sign * c
    exact = (sign * a.double() * b.double() + c.double()).float()
    got = rt.fnma(a, b, c) if negative else rt.fma(a, b, c)
    assert torch.equal(got, exact)
    assert not torch.equal(sign * (a * b) + c, exact)
    assert torch.equal(rt.fma(a, b, 0.25), (a.double() * b.double() + 0.25).float())
    # with a scale: (scale*a) rounded to float32, then the same single rounding
    scale = 0.3989422804014327
    sa = (a.double() * torch.tensor(scale, dtype=torch.float32).double()).float()
    exact = (sign * sa.double() * b.double() + c.double()).float()
    got = rt.fnma(a, b, c, scale) if negative else rt.fma(a, b, c, scale)
    assert torch.equal(got, exact)
