"""The formula language: whitelist parsing (no eval), conventions, stability rewrites."""
import inspect
import math
import re

import pytest
import sympy

from actgen.derive import derive, stabilize
from actgen.formula import FormulaError, make_symbol, parse_formula
from actgen.functions import expm1, log1p, mean_of_draws, sigmoid, softplus, uniform
from actgen.spec import load_spec

X = make_symbol("x")
NAMES = {"x": X, "a": make_symbol("a")}


def parse(text):
    return parse_formula(text, NAMES)


def test_arithmetic_and_functions_build_sympy():
    e = parse("2*x**3 - a/x + exp(-x) + sigmoid(x) * softplus(x) + erf(x) + pi + E")
    assert e.has(sigmoid) and e.has(softplus) and e.has(sympy.erf)
    # numeric check against plain Python math at a point
    v = float(e.subs({X: 0.7, NAMES["a"]: 1.3}))
    sig = 1 / (1 + math.exp(-0.7))
    sp = math.log1p(math.exp(0.7))
    ref = 2 * 0.7**3 - 1.3 / 0.7 + math.exp(-0.7) + sig * sp + math.erf(0.7) + math.pi + math.e
    assert v == pytest.approx(ref, rel=1e-14)


def test_a_yaml_block_formula_is_one_expression_over_its_lines():
    """`formula: |` keeps its newlines; they separate the formula's lines, not statements."""
    spec = load_spec("name: f\nformula: |\n  x *\n  sigmoid(a * x)\nparams: {a: 1.0}\n")
    assert spec.expr == parse("x * sigmoid(a * x)")
    with pytest.raises(FormulaError, match="syntax error"):
        parse("x *\n* x")


def test_a_syntax_error_says_where():
    """The column where Python's parser stopped; an expression cut short is said to end too
    early (Python reports its offset as 0, which is no column)."""
    with pytest.raises(FormulaError, match="syntax error at column 3: invalid syntax"):
        parse("x y")
    for text in ("x * 2 +", "x **"):
        with pytest.raises(FormulaError, match=r"syntax error at the end \(the expression is incomplete\)"):
            parse(text)


@pytest.mark.parametrize("text", [
    "__import__('os').system('touch /tmp/actgen_pwned')",
    "open('/tmp/actgen_pwned', 'w')",
    "x.__class__",
    "(lambda: 1)()",
    "[x for x in ()]",
    "x[0]",
    "f'{x}'",
    "(y := x)",
    "exec('1')",
    "eval('x')",
    "getattr(x, 'real')",
    "x if x > 0 else 0",
    "'abc'",
    "x and a",
    "x @ a",
    "x // 2",
    "x % 2",
    "x == 0",
    "x > 0",
    "sin(x, x)",
    "exp(x=1)",
    "Piecewise((x, x > 0))",
    "where(x, 1, 0)",
    "unknown_fn(x)",
    "y + 1",
    "exp",
    "x ** 1000",
    "10.0 ** 400 * x",
    "1e999 * x",
    "1 / 0 * x",
    "",
    "x" + " + x" * 3000,
    "sin(" * 100 + "x" + ")" * 100,
    "-" * 500 + "x",
    "sqrt(-1) * x",
    "log(-2) * x",
    "sqrt(-x**2)",
])
def test_rejected_formulas_execute_nothing(text, tmp_path):
    with pytest.raises(FormulaError):
        parse(text)
    assert not __import__("os").path.exists("/tmp/actgen_pwned")


def test_complex_values_are_an_error_that_says_so():
    with pytest.raises(FormulaError, match=r"the constant sqrt\(2\)\*I is not a real number at column 5"):
        parse("x * sqrt(-2)")
    with pytest.raises(FormulaError, match="is not a real number"):
        parse("x * log(-2)")


@pytest.mark.parametrize("formula", ["x**x**x**x", "cos(sinh(x))", "expm1(10*cosh(sqrt(x)))"])
def test_limits_at_huge_points_are_not_computed_forever(formula):
    """x**x**x**x, cos(sinh(x)), expm1(10*cosh(sqrt(x))): the limits at +-inf are not read off
    by evaluating them exactly at a huge point (a power with a 10**30-digit exponent, e**1e30
    reduced modulo pi, an exp of e**1e15: hours or all memory); they get no limit guard."""
    import subprocess
    import sys
    code = ("from actgen.spec import load_spec; from actgen.derive import derive; "
            f"d = derive(load_spec('name: tower\\nformula: {formula}\\n')); print(d.spec.name)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.strip() == "tower", run.stderr[-2000:]


def test_unknown_name_lists_known_names():
    with pytest.raises(FormulaError, match=r"unknown name 'y' \(known names: a, x"):
        parse("x + y")


@pytest.mark.parametrize("text, message", [
    ("where(x > 0 & x < 1, x, 0)", r"'&' combines conditions and binds tighter than a comparison: put each "
                                   r"comparison in parentheses, as \(x > 0\) & \(x < 1\) at column 11"),
    ("x // 2", "the operator // is not part of the formula language at column 1"),
    ("x % 2", "the operator % is not part of the formula language"),
    ("x @ x", "the operator @ is not part of the formula language"),
    ("x^2", r"the operator \^ \(for a power write \*\*\) is not part of the formula language"),
    ("(x > 0) & (x < 1)", r"a condition is only allowed inside where\(...\) or Piecewise\(...\)"),
])
def test_an_operator_outside_the_language_is_named(text, message):
    with pytest.raises(FormulaError, match=message):
        parse_formula(text, {"x": make_symbol("x")})


def test_max_min_heaviside_sign_conventions():
    relu = parse("Max(x, 0)")
    assert relu.subs(X, 0) == 0 and relu.subs(X, 2) == 2
    assert sympy.diff(relu, X).subs(X, 0) == 0          # Max(x, 0)' at 0 is 0, as torch's relu
    assert parse("Min(x, 0)").subs(X, -3) == -3
    assert parse("Heaviside(x)").subs(X, 0) == 0
    assert parse("sign(x)").subs(X, 0) == 0
    assert parse("where((x > 0) & ~(x > 1) | (x < -5), 1, 2)").subs(X, 0.5) == 1


@pytest.mark.parametrize("formula", ["Max(0, x)", "Min(Max(x, -1), 1)", "Max(-1, Min(1, x))", "Min(1, Max(-1, x))",
                                     "max(-1, min(x, 1))"])
def test_the_slope_at_a_tie_does_not_depend_on_the_arguments_order(formula):
    """At a tie of an input with a number the slope is the number's, 0, however the
    arguments are ordered or nested (Max(-1, Min(1, x)) had slope 1 at x = 1): as torch's
    relu at 0 and hardtanh at its bounds."""
    import actgen
    import torch

    m = actgen.compile(formula, name="tie")
    x = torch.tensor([-2.0, -1.0, 0.0, 0.5, 1.0, 2.0], dtype=torch.float64, requires_grad=True)
    want = torch.autograd.grad((torch.relu(x) if formula == "Max(0, x)" else torch.nn.functional.hardtanh(x)).sum(), x)[0]
    for backend in ("torch", "triton"):
        with actgen.runtime.use_backend(backend):
            got = torch.autograd.grad(m.tie(x).sum(), x)[0]
        assert got.tolist() == want.tolist(), (backend, got.tolist(), want.tolist())


def test_abs_derivative_is_zero_at_zero():
    d = derive(load_spec("name: t\nformula: abs(x)\n"))
    (name, expr), = d.first
    assert expr.subs(X, 0) == 0 and expr.subs(X, 2) == 1 and expr.subs(X, -2) == -1


@pytest.mark.parametrize("text, func", [
    ("log(1 + exp(x))", softplus),
    ("log(exp(2*x) + 1)", softplus),
    ("1/(1 + exp(-x))", sigmoid),
    ("1/(1 + exp(-a*x))", sigmoid),
    ("log(1 + x**2)", log1p),
    ("exp(x) - 1", expm1),
    ("3*(exp(a*x) - 1)", expm1),
])
def test_stability_rewrites(text, func):
    e = stabilize(parse(text))
    assert e.has(func), e
    assert not e.has(sympy.log) or func is not softplus
    # the rewrite keeps the value
    assert float(e.subs({X: 0.3, NAMES["a"]: 0.9})) == pytest.approx(float(parse(text).subs({X: 0.3, NAMES["a"]: 0.9})), rel=1e-14)


def test_piecewise_derivative_uses_selected_branch():
    d = derive(load_spec("name: t\nformula: where(x > 0, x**2, sqrt(-x) * 0 + 3*x)\n"))
    (_, expr), = d.first
    assert expr.subs(X, 0) == 3          # the branch selected at 0 is the second
    assert expr.subs(X, 2) == 4


def test_uniform_draws_are_numbered_in_order_and_never_merged():
    e = parse_formula("x * uniform(a, 1) + uniform(a, 1) - uniform(a, 1)", NAMES, inputs=("x",))
    draws = sorted(e.atoms(uniform), key=lambda u: int(u.args[2]))
    assert [int(u.args[2]) for u in draws] == [0, 1, 2]           # the same bounds, three draws
    assert all(u.args[:2] == (NAMES["a"], 1) for u in draws)
    assert sympy.expand(mean_of_draws(e) - X * (NAMES["a"] + 1) / 2) == 0     # evaluation mode
    assert sympy.sstr(draws[0]) == "uniform(a, 1)"


def test_uniform_bounds_must_not_depend_on_inputs():
    parse_formula("x * uniform(0, a)", NAMES, inputs=("x",))
    for text in ("x * uniform(0, x)", "uniform(sin(x), 1)"):
        with pytest.raises(FormulaError, match=r"uniform\(lo, hi\): the bounds must not depend on the input x"):
            parse_formula(text, NAMES, inputs=("x",))
    with pytest.raises(FormulaError, match="uniform takes 2 arguments"):
        parse_formula("uniform(0, 1, 2)", NAMES)


def test_a_draw_is_lo_plus_width_times_r_with_r_constant_for_the_derivatives():
    d = derive(load_spec("name: t\nformula: where(x > 0, x, uniform(c, 3 * c) * x) + uniform(0, 1)\nconstants: {c: 0.5}\n"))
    r0, r1 = d.draws
    assert (r0.name, r1.name) == ("_r0", "_r1")
    c = make_symbol("c")
    (_, dx), = d.first
    assert sympy.expand(dx.subs(X, -1) - (c + 2 * c * r0)) == 0    # lo + (hi - lo) r0
    assert r1 not in dx.free_symbols                                # r1 does not reach df/dx
    assert sympy.simplify(d.expr.subs({X: -2, r0: sympy.S.Half, r1: sympy.S.Half}) - (-4 * c + sympy.S.Half)) == 0


def test_common_factors_of_a_sum_are_taken_out():
    """silu' = s + x*s*sigmoid(-x) is computed as s*(1 + x*sigmoid(-x)): fewer rounded terms
    where they cancel; a branch (sign) is never divided out, sums inside functions stay."""
    from actgen.derive import common_factors_out
    s = sigmoid(X)
    assert common_factors_out(s + X * s * sigmoid(-X)) == s * (1 + X * sigmoid(-X))
    assert common_factors_out(X**3 + X) == X**3 + X
    sign = sympy.Piecewise((1, X > 0), (-1, X < 0), (0, True))
    e = sign * sympy.exp(X) + sign * X
    assert common_factors_out(e) == e
    # the silu derivative the compiler derives has that form, and it is still silu'
    (_, dx), = derive(load_spec("name: t\nformula: x * sigmoid(x)\n")).first
    assert dx == s * (1 + X * sigmoid(-X))
    # taken out before the rewrites too: golu's g + x*exp(-x)*g keeps g = exp(-exp(-x)) whole,
    # not merged with exp(-x) into exp(-x - exp(-x)) (two exps rounding on their own)
    (_, dx), = derive(load_spec("name: t\nformula: x * exp(-exp(-x))\n")).first
    g = sympy.exp(-sympy.exp(-X))
    assert dx == g * (1 + X * sympy.exp(-X))


def test_numbers_of_a_product_are_one_coefficient():
    """0.5*sqrt(2)*x*exp(-x**2/2)/sqrt(pi) is computed as 0.39894...*x*exp(...): one rounding
    of the coefficient instead of three multiplications and a division in float32."""
    from actgen.derive import fold_constants
    e = sympy.S.Half * sympy.sqrt(2) * X * sympy.exp(-X**2 / 2) / sympy.sqrt(sympy.pi)
    folded = fold_constants(e)
    coeff, rest = folded.as_coeff_Mul()
    assert coeff.is_Float and not rest.has(sympy.pi) and not any(a.is_number for a in rest.args)
    assert float(coeff) == pytest.approx(1 / math.sqrt(2 * math.pi), rel=1e-15)
    assert float(folded.subs(X, 0.7)) == pytest.approx(float(e.subs(X, 0.7)), rel=1e-14)
    assert fold_constants(3 * X + 1) == 3 * X + 1          # an integer coefficient stays


def test_ratios_of_polynomials_are_scaled_by_max_1_abs_x():
    """P(x)/Q(x) of degrees (5, 4) is computed in v = x/s and w = 1/s, s the power of two above
    max(1, |x|): no x**5 (which overflows in float32 for |x| > 5e7) is left, the quotient
    rule's two terms are over one denominator with the leading terms cancelled, and the value
    is unchanged."""
    from actgen.derive import InverseScale, ScaledInput, rational_form
    a = sympy.symbols("a0:6", real=True)
    b = sympy.symbols("b1:5", real=True)
    P = sum(a[k] * X**k for k in range(6))
    Q = 1 + sum(abs(b[k - 1] * X**k) for k in range(1, 5))
    f = P / Q
    df = sympy.diff(f, X)
    assert isinstance(df, sympy.Add)        # P'/Q - P*Q'/Q**2: terms that cancel for large |x|
    values = {s: sympy.Rational(v) for s, v in zip(a + b, ("0.03", "0.5", "1.6", "2.0", "0.9", "0.15",
                                                            "-0.2", "3.9", "0.5", "-0.3"))}
    for e in (f, df):
        scaled = rational_form(e, [X])
        powers = [p for p in scaled.atoms(sympy.Pow) if p.base == X]
        assert not powers and scaled.has(ScaledInput(X)) and scaled.has(InverseScale(X))
        for x0 in ("-1e6", "-3.5", "-0.25", "0", "0.75", "2", "1e9"):
            want = e.subs(values).subs(X, sympy.Rational(x0))
            got = scaled.subs(values).subs(X, sympy.Rational(x0))
            assert sympy.N(got - want, 30) == pytest.approx(0, abs=1e-25 * max(1, abs(float(want))))
    # one ratio: the derivative's numerator is a polynomial (degree 8 in x) over Q**2
    scaled_df = rational_form(df, [X])
    assert isinstance(scaled_df, sympy.Mul)
    # a branch's condition stays in x: v = x/s > 2 would never hold
    step = sympy.Piecewise((1, X > 2), (0, True)) * X**3 / (1 + X**2)
    for x0 in (3, 1, -3):
        assert rational_form(step, [X]).subs(X, x0) == step.subs(X, x0)
    # |a*x + x| is a monomial |(a + 1)*x| (sympy.expand writes it as a sum inside the abs)
    c = sympy.Symbol("c", real=True)
    e = X**3 * abs(c * X + X) / (1 + X**2)
    scaled = rational_form(e, [X])
    assert scaled.has(ScaledInput(X))
    for x0 in (-10**6, sympy.Rational(-1, 2), 3):
        at = {c: sympy.Rational(3, 4), X: x0}
        assert sympy.N(scaled.subs(at), 40) == pytest.approx(float(e.subs(at)), rel=1e-15)
    derive(load_spec("name: t\nformula: sigmoid(tanh(a*x + x))\nparams: {a: 0.75}\n"))
    # a polynomial alone (Horner form handles it), a lone 1/Q and an x inside exp stay as they are
    for e in (P, 1 / Q, sympy.exp(-X**2) * X):
        assert rational_form(e, [X]) == e


def test_functions_of_exp_x_are_one_ratio_from_one_exponential():
    """mish = x*tanh(softplus(x)) and its derivative (softplus, tanh, sigmoid and exp calls)
    become N/D in e = exp(-|x|), with the branch x < 0 (E = e) or x >= 0 (E = 1/e): one
    exponential, no other call, and the value unchanged (checked at 50 digits, out to
    |x| = 800 where exp(x) itself would overflow).  tanh(x) = (E**2 - 1)/(E**2 + 1) stays
    (its numerator cancels near 0), and so do outputs with only sigmoids and exps (silu')."""
    import mpmath
    from actgen.derive import exp_rational_form
    mish = X * sympy.tanh(softplus(X))
    smish = X * sympy.tanh(log1p(sigmoid(X)))
    for f in (mish, sympy.diff(mish, X), smish, sympy.diff(smish, X), stabilize(sympy.diff(mish, X))):
        g = exp_rational_form(f, [X])
        calls = [a for a in sympy.preorder_traversal(g) if isinstance(a, sympy.Function)]
        assert {type(a) for a in calls} <= {sympy.exp, sympy.Abs, sympy.Piecewise}, calls
        assert len(g.atoms(sympy.exp)) == 1 and g.has(sympy.exp(-abs(X)))
        with mpmath.workdps(50):
            for x0 in ("-800", "-30", "-2.54", "-1.19", "-0.23", "0", "0.23", "1.5", "19", "800"):
                v = sympy.Float(x0, 50)
                want, got = sympy.N(f.subs(X, v), 50), sympy.N(g.subs(X, v), 50)
                assert abs(got - want) <= sympy.Float("1e-40") * max(1, abs(want)), (f, x0, got, want)
    # no cancellation in D(E), nor in N(E)'s numbers: tanh(x) stays; one call, or sigmoids only, stay
    silu_d = sympy.diff(X * sigmoid(X), X)
    for f in (sympy.tanh(X) * sympy.tanh(2 * X), X * sympy.tanh(X), silu_d, sigmoid(X) * sympy.exp(X)):
        assert exp_rational_form(f, [X]) == f
    # a param in the coefficients: b*x*tanh(softplus(x)) keeps b in N; tanh(softplus(a*x)) with
    # a param a in the exponent stays (a may be 0 or negative)
    b, a = sympy.symbols("b a", real=True)
    g = exp_rational_form(b * mish, [X])
    assert g.has(b) and not g.has(sympy.tanh)
    assert exp_rational_form(sympy.tanh(softplus(a * X)) * sympy.tanh(X), [X]).has(sympy.tanh)


def test_kernels_take_sigmoids_from_one_exponential():
    """The kernels' form (a GPU computes each sigmoid as an exp and a reciprocal on its
    special-function unit): silu' = sigmoid(x)*(1 + x*sigmoid(-x)) as one ratio in exp(-|x|),
    and swiglu's sigmoid(a) and sigmoid(-a), shared by df/da and df/db, from one exp(-|a|) and
    one reciprocal.  The fallback keeps its sigmoids (one vectorized pass each on a CPU), and
    the values are unchanged (50 digits, and +-inf and NaN through the IEEE evaluator)."""
    import mpmath
    from actgen.derive import exp_rational_form, ieee_value, sigmoid_pairs
    silu_d = sympy.diff(X * sigmoid(X), X)
    one = exp_rational_form(silu_d, [X], sigmoids=True)
    assert not one.has(sigmoid) and len(one.atoms(sympy.exp)) == 1
    a, b = make_symbol("a"), make_symbol("b")
    outputs = [("d_a", b * sigmoid(a) * (1 + a * sigmoid(-a))), ("d_b", a * sigmoid(a)), ("y", sigmoid(X))]
    paired = sigmoid_pairs(outputs)
    assert not any(e.has(sigmoid) for n, e in paired if n != "y") and dict(paired)["y"] == sigmoid(X)
    assert {x for _, e in paired for x in e.atoms(sympy.exp)} == {sympy.exp(-abs(a))}
    with mpmath.workdps(50):
        for v in ("-800", "-3.5", "-0.25", "0", "0.25", "3.5", "800"):
            env = {a: sympy.Float(v, 50), b: sympy.Float("1.5", 50), X: sympy.Float(v, 50)}
            for (_, want), (_, got) in zip(outputs + [("", silu_d)], paired + [("", one)]):
                w, g = sympy.N(want.subs(env), 50), sympy.N(got.subs(env), 50)
                assert abs(g - w) <= sympy.Float("1e-40") * max(1, abs(w)), (want, v, g, w)
    for v, want in ((math.inf, 1.0), (-math.inf, 0.0)):
        assert ieee_value(dict(paired)["d_b"] / a, {a: v, b: 1.0}) == want
    assert math.isnan(ieee_value(dict(paired)["d_b"], {a: math.nan, b: 1.0}))
    silu = derive(load_spec("name: silu\nformula: x * sigmoid(x)\n"))
    swiglu = derive(load_spec("name: swiglu\ninputs: [a, b]\nformula: a * sigmoid(a) * b\n"))
    for d in (silu, swiglu):
        kernel = {type(f) for _, e in (*d.kernel_backward.assignments, *d.kernel_backward.outputs) for f in e.atoms(sympy.Function)}
        fallback = {type(f) for _, e in (*d.backward.assignments, *d.backward.outputs) for f in e.atoms(sympy.Function)}
        assert sigmoid in fallback and sigmoid not in kernel and sympy.exp in kernel
        assert d.kernel_forward is d.forward      # one sigmoid: nothing to gain


def test_a_ratios_denominator_is_one_polynomial_in_horner_form():
    """mish's derivative over D = (E**2 + 2E + 2)**2: D multiplied out and in Horner form (a
    square doubles the rounding of its base), with integer coefficients (1.0*e is not e)."""
    from actgen.derive import exp_rational_form
    g = exp_rational_form(sympy.diff(X * sympy.tanh(softplus(X)), X), [X])
    powers = [p for p in sympy.preorder_traversal(g) if p.is_Pow and p.base.is_Add and abs(p.exp) >= 2]
    assert not powers, powers
    floats = {f for f in g.atoms(sympy.Float)}
    assert not floats, floats
    e = sympy.Symbol("e", positive=True)
    pieces = [b.expr for p in sympy.preorder_traversal(g) if isinstance(p, sympy.Piecewise) for b in p.args]
    assert 1 / sympy.expand((e**2 + 2 * e + 2) ** 2) in {sympy.expand(b.xreplace({sympy.exp(-abs(X)): e})) for b in pieces}


def test_sigmoids_inside_a_costlier_call_come_from_the_ratios_exponential():
    """logish' = log1p(sigmoid(x)) + x*sigmoid(x)*sigmoid(-x)/(1 + sigmoid(x)): the rational part
    is one ratio in e = exp(-|x|) and the sigmoid inside log1p is (1 or e)/(1 + e) from the same
    e, on the fallback too - one exponential, no sigmoid - with the value unchanged (50
    digits), and 0 and log(2) at -inf and inf, NaN at NaN, as the derivative's own."""
    import mpmath
    from actgen.derive import exp_rational_form, ieee_value, sigmoids_from_exp
    d = sympy.diff(X * log1p(sigmoid(X)), X)
    g = exp_rational_form(d, [X])
    assert not g.has(sigmoid) and g.atoms(sympy.exp) == {sympy.exp(-abs(X))} and g.has(log1p)
    with mpmath.workdps(50):
        for v in ("-800", "-2.3", "-0.5", "0", "0.5", "2.3", "800"):
            want, got = sympy.N(d.subs(X, sympy.Float(v, 50)), 50), sympy.N(g.subs(X, sympy.Float(v, 50)), 50)
            assert abs(got - want) <= sympy.Float("1e-40") * max(1, abs(want)), (v, got, want)
    logish = derive(load_spec("name: logish\nformula: x * log(1 + sigmoid(x))\n"))
    for block in (logish.backward, logish.kernel_backward):
        calls = {type(f) for _, e in (*block.assignments, *block.outputs) for f in e.atoms(sympy.Function)}
        assert sigmoid not in calls and sympy.exp in calls and log1p in calls
    # a lone sigmoid(a) next to a ratio's exp(-|a|) (swiglu's df/db), and sigmoid(-a), from it
    a = make_symbol("a")
    e = sympy.exp(-abs(a))
    out = dict(sigmoids_from_exp([("r", e / (1 + e)), ("s", a * sigmoid(a)), ("t", sigmoid(-a)), ("u", sigmoid(X))]))
    assert not out["s"].has(sigmoid) and not out["t"].has(sigmoid) and out["u"] == sigmoid(X)
    for v, want in ((math.inf, 1.0), (-math.inf, 0.0), (0.0, 0.5), (-3.0, 1 / (1 + math.exp(3.0)))):
        assert ieee_value(out["s"] / a if v not in (0.0,) else out["s"].subs(a, 1e-300) / 1e-300, {a: v}) == \
            pytest.approx(want, rel=1e-15)
        assert ieee_value(out["t"], {a: -v}) == pytest.approx(want, rel=1e-15)
    assert math.isnan(ieee_value(out["t"], {a: math.nan}))


def test_a_product_over_a_third_tensor_is_one_fused_multiply_add():
    """x*e/D + g prints as fma(x, e/D, g) on the fallback and the kernels (one rounding less
    where the sum cancels); a product of two tensors as before, and a number over a tensor not."""
    from actgen.printers import TorchPrinter, TritonPrinter
    from actgen.printers.base import fma_split
    e, D, g = (make_symbol(n) for n in ("e", "D", "g"))
    tensor = lambda f: not f.is_number
    a, b, rest, negative = fma_split(X * e / D + g, tensor)
    assert {a, b} in ({X, e / D}, {e, X / D}) and rest == g and not negative
    assert fma_split(X * e + g, tensor)[:3] in ((X, e, g), (e, X, g))
    assert fma_split(2 * X / D + g, tensor) is None
    names = ["x", "e", "D", "g"]
    assert TorchPrinter(names, like="x").doprint(X * e / D + g).startswith("_rt.fma(")
    assert TritonPrinter(tensor_names=names).doprint(X * e / D + g).startswith("tl.fma(")


def test_a_named_number_of_named_numbers_is_written_where_it_is_used():
    """CSE can name sqrt(pi) and then 2*sqrt(pi) from it: both are numbers, written inline."""
    from actgen.derive import make_block
    t = sympy.sqrt(sympy.pi)
    block = make_block([("y", sympy.exp(-abs(X)) * (t * X + 2 * t) + t * sympy.exp(-abs(X)) * X + 2 * t * sympy.exp(X) + t)])
    assert all(not v.is_number for _, v in block.assignments), block.assignments


def test_a_sign_times_its_argument_is_an_abs():
    """u*sign(u) -> |u| where the product holds u's factors: x**2*sign(x) -> x*|x| and
    a*b*x*sign(b*x) -> a*|b*x| (terms in |u| then cancel symbolically: x**2/(1 + |x|)**2's
    derivative), but x*sign(b*x) stays (x/b would divide by a b that may be 0)."""
    from actgen.derive import _clean, rewrite_sign_product
    a, b = sympy.symbols("a b", real=True)
    sign = lambda u: _clean(sympy.sign(u))
    assert rewrite_sign_product(X**2 * sign(X)) == X * abs(X)
    assert rewrite_sign_product(a * b * X * sign(b * X)) == a * abs(b * X)
    assert rewrite_sign_product(-X * sign(X) / (abs(X) + 1) ** 2) == -abs(X) / (abs(X) + 1) ** 2
    assert rewrite_sign_product(X * sign(b * X)) is None
    assert rewrite_sign_product(a * sign(X)) is None


def test_generated_code_names_power_bases_and_divides_once():
    """(x + 1)**2 prints as _t0*_t0 with _t0 = x + 1, not as the written-out base twice;
    exp(2*u) as a named exp(u) squared; and
    sympy's 1/Piecewise (a Piecewise of reciprocals: the branches of a scaled ratio's
    denominator) prints as one division by the selected value, not two divisions."""
    from actgen.derive import make_block
    from actgen.printers.torch import TorchPrinter
    from actgen.printers.triton import TritonPrinter
    block = make_block([("y", (X + 1) ** 2 * sympy.exp(X) / (X**2 + 3) ** 3)])
    assert set(dict(block.assignments).values()) >= {X + 1, X**2 + 3}
    (_, out), = block.outputs
    assert all(p.base.is_Symbol for p in out.atoms(sympy.Pow))
    # exp(2*u) where exp(u) has a name (it is used twice) is that name squared: one exponential
    e = sympy.exp(-abs(X))
    block = make_block([("a", e * (X + 1) + 1), ("b", e * (e + 2) * sympy.exp(-2 * abs(X)) * X)])
    calls = [f for _, e in block.assignments + block.outputs for f in e.atoms(sympy.exp)]
    assert len(calls) == 1, block
    y = sympy.Symbol("y", real=True)
    e = y * sympy.Piecewise((1 / (X + 2) ** 2, X < 0), (1 / (2 * X + 1) ** 2, True))
    text = TorchPrinter({"x", "y"}, "x").doprint(e)
    assert text.count("/") == 1 and "where(" in text.split("/")[1], text
    # the kernels divide through _div (IEEE rounding for float32 data): the same one division
    text = TritonPrinter().doprint(e)
    assert text.count("_div(") == 1 and "/" not in text and "where(" in text.split(",", 1)[1], text


def test_value_range_bounds_a_ratios_denominator_and_nothing_unbounded():
    """value_range: an interval that holds the expression's every value (checked by sampling),
    finite for a ratio's denominator in exp(-|x|) (mish's: [1, 5]) and through temporaries;
    unbounded for x, 1 + |x| (softsign's) and exp(x)."""
    import numpy as np

    from actgen.derive import exp_rational_form, value_range
    e = sympy.exp(-sympy.Abs(X))
    t0 = sympy.Symbol("_t0", real=True)
    assert value_range(t0 * (t0 + 2) + 1, {t0: e}) == (1.0, 4.0)
    assert value_range(sympy.Piecewise((e + 2, X < 0), (2 * e + 1, True))) == (1.0, 3.0)
    for unbounded in (X, 1 + sympy.Abs(X), sympy.exp(X), X * e):
        lo, hi = value_range(unbounded)
        assert lo == -math.inf or hi == math.inf
    g = exp_rational_form(X * sympy.tanh(softplus(X)), [X])      # x * N / D, 1/D by branch
    reciprocal = next(f for f in g.args if isinstance(f, sympy.Piecewise) and f.args[0][0].is_Pow)
    denominator = sympy.Piecewise(*[(b.base, c) for b, c in reciprocal.args])
    lo, hi = value_range(denominator)
    assert (lo, hi) == (1.0, 5.0)
    f = sympy.lambdify(X, denominator, "numpy")
    xs = np.concatenate([np.linspace(-50, 50, 20001), [-1e30, 1e30]])
    values = np.array([f(v) for v in xs], dtype=float)
    assert lo <= values.min() and values.max() <= hi


def test_kernels_divide_by_a_bounded_denominator_with_the_fast_reciprocal_on_16bit_data():
    """A division whose denominator value_range bounds (mish's ratio, a sigmoid's 1 + e) is
    _div_bounded in the kernels: on 16-bit data the special-function unit's reciprocal, on
    float32 data IEEE division as before; any other division (softsign's x / (1 + |x|)) stays
    _div, whose full range handles a denominator past 2**126."""
    import importlib
    mish = importlib.import_module("actgen.ops.mish")
    softsign = importlib.import_module("actgen.ops.softsign")
    source = lambda m: inspect.getsource(m._forward_kernel.fn) + inspect.getsource(m._backward_kernel.fn)
    assert "_div_bounded(" in source(mish) and "_div(" not in source(mish)
    assert "_div(" in source(softsign) and "_div_bounded(" not in source(softsign)


def test_kernels_divide_by_a_uniform_denominator_with_its_reciprocal():
    """A division whose denominator is the same for every element (a constant, a shared param,
    or made of them only: celu's x/alpha, laplace's /sigma) is
    _div_uniform in the kernels; by a per-channel param or anything of x it is not, and a
    quotient of uniform values alone (a scalar, once per program) stays _div."""
    import importlib
    mod = lambda name: importlib.import_module(f"actgen.ops.{name}")
    source = lambda m: inspect.getsource(m._forward_kernel.fn) + inspect.getsource(m._backward_kernel.fn)
    assert "_div_uniform(x, alpha, FAST)" in source(mod("celu"))
    assert "_div_uniform(" in inspect.getsource(mod("laplace")._forward_kernel.fn)
    assert "_div_uniform(" not in source(mod("softsign")) + source(mod("mish"))
    squareplus = source(mod("squareplus"))     # its limits at +-inf, of its constant b alone
    assert "_div_uniform(" not in squareplus and "_div(1.0, _t2, FAST)" in squareplus
    from actgen.printers.triton import TritonPrinter
    x, w, c = sympy.symbols("x w c")
    printer = TritonPrinter(["x", "w"], uniform=[])            # w per-channel
    assert "_div_uniform" not in printer.doprint(x / w) and "_div_uniform" in printer.doprint(x / c)
    printer = TritonPrinter(["x", "w"], uniform=["w"])         # w shared
    assert printer.doprint(x / (w + c)) == "_div_uniform(x, (c + w), FAST)"
    assert printer.doprint(c / w) == "_div(c, w, FAST)"


def test_an_exponential_of_a_sum_comes_from_the_exponentials_already_computed():
    """shared_exp_products: exp(a + b) is exp(a)*exp(b) where both are among the outputs' calls
    (adaptive_mixture's exp(w1 - 2|x|) next to exp(w1) and exp(-2|x|)), and only there; the
    kernels' backward then has one exponential fewer per element, with the same values."""
    import importlib

    from actgen.derive import shared_exp_products
    w = make_symbol("w")
    e, ew, ex = sympy.exp(-2 * sympy.Abs(X)), sympy.exp(w), sympy.exp(w - 2 * sympy.Abs(X))
    (_, got), = shared_exp_products([("d", ex / (e + 1) + ew)], [X])
    assert not got.has(ex) and got.has(e) and got.has(ew)
    assert sympy.simplify(got - (ex / (e + 1) + ew).rewrite(sympy.exp)) == 0
    (_, alone), = shared_exp_products([("d", ex + ew)], [X])          # exp(-2|x|) not computed: kept
    assert alone.has(ex)
    # both parts holding x: exp(-x)*exp(-exp(-x)) is inf*0 at x = -100 where the sum's exp is 0
    u = sympy.exp(-X)
    (_, both), = shared_exp_products([("d", sympy.exp(-X - u) + u + sympy.exp(-u))], [X])
    assert both.has(sympy.exp(-X - u))
    mod = importlib.import_module("actgen.ops.adaptive_mixture")
    kernel = inspect.getsource(mod._backward_kernel.fn)
    # exp(w0), exp(w1), exp(w2), exp(-2|x|) (in each place the kernel computes them)
    assert set(re.findall(r"_exp\((.*?), FAST\)", kernel)) == {"w0", "w1", "w2", "-(2.0*tl.abs(x))"}


def test_taylor_coefficients_at_zero_come_from_a_circle_around_it():
    """The Padé approximants near 0 start from Taylor coefficients read off fn on |t| = 1/2 in
    the complex plane: exact where fn is 0/0 at 0 itself, and none at a pole or branch point."""
    import mpmath

    from actgen.derive import _taylor_coefficients

    with mpmath.workdps(40):
        got = _taylor_coefficients(lambda t: mpmath.sin(t) / t, 12)
        want = [0 if n % 2 else (-1) ** (n // 2) / mpmath.factorial(n + 1) for n in range(12)]
        assert all(abs(g - w) < mpmath.mpf(10) ** -35 for g, w in zip(got, want))
        got = _taylor_coefficients(lambda t: t / mpmath.expm1(t), 10)       # Bernoulli numbers / n!
        want = [mpmath.bernoulli(n) / mpmath.factorial(n) for n in range(10)]
        assert all(abs(g - w) < mpmath.mpf(10) ** -35 for g, w in zip(got, want))
        got = _taylor_coefficients(lambda t: mpmath.sin(t) / t**3 - 1 / t**2, 40)   # entire: -1/6 + t**2/120 ...
        assert abs(got[0] + mpmath.mpf(1) / 6) < 1e-35 and abs(got[36] + mpmath.mpf(1) / mpmath.factorial(39)) < 1e-60
    assert _taylor_coefficients(lambda t: mpmath.cos(t) / t, 8) is None         # a pole
    assert _taylor_coefficients(lambda t: mpmath.sqrt(t) + 1, 8) is None        # a branch point


def test_a_quotient_over_a_root_cancels_its_common_factor():
    """squareplus' slope for x < 0 as sympy derives it, -b*(x/r - 1)/(2*(r - x)**2), is
    b/(2*r*(r - x)): no square of r - x (which doubled r's rounding error), the same value;
    a form with nothing to cancel is left alone."""
    from actgen.derive import rewrite_root_common_factor
    x, b = sympy.symbols("x b", real=True)
    r = sympy.sqrt(b + x**2)
    slope = -b * (x / r - 1) / (2 * (r - x) ** 2)
    new = rewrite_root_common_factor(slope)
    assert new is not None and not any(p.exp == -2 for p in new.atoms(sympy.Pow))
    for xv, bv in ((-0.5, 4.0), (-30.0, 0.25), (2.0, 1.0)):
        assert abs(float((new - slope).subs({x: xv, b: bv}))) < 1e-12
    assert rewrite_root_common_factor(1 / (r - x) ** 2) is None
    assert rewrite_root_common_factor((x / r + 1) / 2) is None


def test_a_long_sum_or_product_is_one_level_of_nesting():
    """a + b + c is ((a + b) + c) to Python: a sum of 64 weighted terms (with 64 constants,
    the limit) was refused as "nests deeper than 64 levels"; calls nested deeper still are."""
    cs = {f"c{i}": make_symbol(f"c{i}") for i in range(1, 65)}
    expr = parse_formula(" + ".join(f"c{i}*sin({i}*x)" for i in range(1, 65)), {"x": X, **cs})
    assert expr == sum(cs[f"c{i}"] * sympy.sin(i * X) for i in range(1, 65))
    assert parse_formula(" - ".join(f"x/{i}" for i in range(1, 100)), {"x": X}) == \
        X - sum(X / i for i in range(2, 100))
    assert parse_formula("x" + " * x" * 99, {"x": X}) == X**100
    with pytest.raises(FormulaError, match="nests deeper than 64 levels"):
        parse_formula("exp(" * 70 + "x" + ")" * 70, {"x": X})
    with pytest.raises(FormulaError, match="nests deeper than 64 levels"):
        parse_formula("(x + " * 70 + "x" + ")" * 70, {"x": X})
