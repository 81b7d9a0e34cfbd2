"""Accuracy against the truth: every catalogue entry against a 50-digit mpmath oracle.

The oracle evaluates each spec's formula (the sympy expression as parsed, before any
stability rewrite) and its derivatives with mpmath; the ops run on a grid including the
extremes on the eager fallback (float32) and the Triton kernels (float32, bfloat16).  The
targets (actgen/catalogue.py): at most 4 ULP where well-conditioned (4 ULP per unit of
condition number elsewhere) and no inf/NaN where the truth is finite.  The grid here is
coarser than docs/accuracy.md's; the misses must be exactly the documented KNOWN_MISSES.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from actgen import catalogue as C
from actgen.spec import load_spec, load_specs

SPECS = {s.name: s for s in load_specs([Path(__file__).resolve().parents[1] / "specs"])}
GRID = C.grid(step=0.25, n_log=24, n_huge=12)


@pytest.mark.parametrize("name", sorted(SPECS))
def test_meets_the_accuracy_targets(name):
    acc = C.measure(SPECS[name], GRID, as_written=False, dense=True)
    expected = {key for key in C.KNOWN_MISSES if key[0] == name}
    missed = C.misses(acc)
    details = {k: (s.worst_scaled, s.worst_at, s.bad_nonfinite, s.bad_nonfinite_at)
               for k, s in (*acc.compiled.items(), *acc.dense.items()) if not s.meets_target}
    # (a documented miss may not show on this coarser grid; docs/accuracy.md has the full one)
    assert missed <= expected, f"misses {sorted(missed - expected)} not documented in KNOWN_MISSES: {details}"


LEARNABLE = sorted(n for n, s in SPECS.items() if s.params)


@pytest.mark.parametrize("name", LEARNABLE)
def test_param_gradients_meet_the_accuracy_targets(name):
    """df/d(param) per element on both backends against the mpmath oracle, with the same
    targets; the misses must be exactly the documented KNOWN_MISSES ("dp")."""
    acc = C.measure(SPECS[name], GRID, runs=(), as_written=False, param_grads=True)
    assert {out for _, _, out in acc.params} == {f"df/d{p.name}" for p in SPECS[name].params}
    expected = {key for key in C.KNOWN_MISSES if key[0] == name and key[1] == "dp"}
    details = {k: (s.worst_scaled, s.worst_at, s.bad_nonfinite, s.bad_nonfinite_at)
               for k, s in acc.params.items() if not s.meets_target}
    assert C.misses(acc) == expected, details


REWRITTEN = [  # (entry, output): what the formula as written gets wrong and the compiler fixes
    ("tanhshrink", "f"), ("logsigmoid", "f"), ("gelu", "f"), ("gelu_tanh", "f"), ("softsign", "df/dx"),
    ("squareplus", "f"), ("sigmoid", "df/dx"), ("tanh", "df/dx"), ("bent_identity", "f"), ("celu", "f"),
]


@pytest.mark.parametrize("name,out", REWRITTEN)
def test_rewrites_fix_the_formula_as_written(name, out):
    acc = C.measure(SPECS[name], GRID, runs=(("triton", torch.float32),), as_written=True)
    before = acc.as_written[("triton", "float32", out)]
    after = acc.compiled[("triton", "float32", out)]
    assert not before.meets_target, (name, out, before)
    assert after.meets_target, (name, out, after)


@pytest.mark.parametrize("spec", C.rewrite_example_specs(), ids=lambda s: s.name)
def test_rewrites_fix_the_textbook_cases(spec):
    acc = C.measure_example(spec, GRID)
    assert not all(s.meets_target for s in acc.as_written.values()), acc.as_written
    assert all(s.meets_target for s in acc.compiled.values()), acc.compiled


# --- the measuring tools themselves ------------------------------------------------------------
def test_oracle_values_and_limits():
    spec = load_spec("name: t\nformula: x * sigmoid(x)\n")
    o = C.Oracle(spec)
    v = o.values([(1.0,), (-1.0,), (0.0,), (-math.inf,), (math.inf,), (math.nan,), (-800.0,)])
    s1 = 1 / (1 + math.exp(-1))
    np.testing.assert_allclose(v["f"][:3], [s1, -(1 - s1), 0.0], rtol=1e-15)
    np.testing.assert_allclose(v["df/dx"][:3], [s1 * (1 + (1 - s1)), (1 - s1) * (1 - s1), 0.5], rtol=1e-15)
    assert v["f"][3] == 0 and v["f"][4] == math.inf and math.isnan(v["f"][5])
    assert v["df/dx"][3] == 0 and v["df/dx"][4] == 1
    assert v["f"][6] == pytest.approx(-800 * math.exp(-800), rel=1e-12)    # beyond float64's exp, in mpmath


def test_oracle_has_no_limit_at_inf_where_the_formula_oscillates():
    """x + sin(a*x)**2/a's gradient in a, x*sin(2*a*x)/a - sin(a*x)**2/a**2, swings between
    about +-|x| as x grows: no value at x = -inf, though its values at -1e20 and -1e40 alone
    grow tenfold with one sign; x*sigmoid(x)'s slope has its limit, x + sin(x) grows."""
    o = C.Oracle(load_spec("name: t\nformula: x + sin(a*x)**2 / a\nparams:\n  a: 1.0\n"), param_grads=True)
    v = o.values([(-math.inf,), (math.inf,)])
    assert np.isnan(v["df/da"]).all()
    assert C.Oracle(load_spec("name: t\nformula: x + sin(x)\n")).values([(math.inf,)])["f"][0] == math.inf
    assert C.Oracle(load_spec("name: t\nformula: x * sigmoid(x)\n")).values([(math.inf,)])["df/dx"][0] == 1.0


def test_oracle_resolves_cancellation():
    """x - tanh(x) at x = 1e-20 needs 60 digits; the oracle raises its precision to get them."""
    o = C.Oracle(load_spec("name: t\nformula: x - tanh(x)\n"))
    v = o.values([(1e-20,), (1e-3,)])["f"]
    np.testing.assert_allclose(v, [1e-60 / 3, 1e-9 / 3 - 2e-15 / 15 + 17e-21 / 315], rtol=1e-12)


def test_oracle_resolves_cancellation_that_fixed_digits_agree_on():
    """1 - cos(x) at x = 1e-38 is 0 in 50 digits and in 70: the oracle adds digits for tiny inputs."""
    o = C.Oracle(load_spec("name: t\nformula: (1 - cos(x)) / x**2\n"))
    v = o.values([(1e-38,), (-1e-20,)])
    np.testing.assert_allclose(v["f"], [0.5, 0.5], rtol=1e-12)
    np.testing.assert_allclose(v["df/dx"], [-1e-38 / 12, 1e-20 / 12], rtol=1e-12)


def test_oracle_takes_the_limit_where_the_formula_divides_zero_by_zero():
    """sin(x)/x at 0 is its limit 1 (slope 0); at a pole (1/x) or a jump (x/|x|) no value."""
    o = C.Oracle(load_spec("name: t\nformula: sin(x) / x\n"))
    v = o.values([(0.0,)])
    assert v["f"][0] == 1.0 and abs(v["df/dx"][0]) < 1e-50
    o = C.Oracle(load_spec("name: t\nformula: x / (exp(x) - 1)\n"))
    v = o.values([(0.0,)])
    assert v["f"][0] == 1.0 and v["df/dx"][0] == -0.5
    assert math.isnan(C.Oracle(load_spec("name: t\nformula: 1 / x\n")).values([(0.0,)])["f"][0])
    assert math.isnan(C.Oracle(load_spec("name: t\nformula: x / abs(x)\n")).values([(0.0,)])["f"][0])


def test_oracle_gives_param_gradients_and_their_limits():
    """df/d(param) with param_grads; where a param's value makes the formula 0/0 for every input
    ((exp(a*x) - 1)/a at a = 0) the limit is taken in the param too: x, slope 1, and x**2/2."""
    spec = load_spec("name: t\nformula: (exp(a*x) - 1) / a\nparams:\n  a: 0.5\n")
    o = C.Oracle(spec, param_grads=True)
    assert o.outputs() == ["f", "df/dx", "df/da"] and o.free == []
    v = o.values([(2.0,), (-3.0,)])
    np.testing.assert_allclose(v["df/da"], [(math.exp(1) - math.expm1(1)) / 0.25, (-1.5 * math.exp(-1.5) - math.expm1(-1.5)) / 0.25],
                               rtol=1e-14)
    o = C.Oracle(spec, params={"a": 0.0}, param_grads=True)
    assert [s_.name for s_ in o.free] == ["a"]
    v = o.values([(2.0,), (-3.0,), (0.0,)])
    np.testing.assert_allclose(v["f"], [2.0, -3.0, 0.0], atol=1e-30)
    np.testing.assert_allclose(v["df/dx"], [1.0, 1.0, 1.0], rtol=1e-14)
    np.testing.assert_allclose(v["df/da"], [2.0, 4.5, 0.0], rtol=1e-14, atol=1e-30)
    assert C.Oracle(spec, params={"a": 0.0}).outputs() == ["f", "df/dx"]      # (without param_grads)


def test_oracle_takes_sign_derivatives_as_zero():
    """sign(x/a)'s derivative in a, which sympy leaves unevaluated (the condition number of
    x/(1 + |x/a|)'s gradient in a), is 0 as DiracDelta is."""
    o = C.Oracle(load_spec("name: t\nformula: x / (1 + abs(x/a))\nparams:\n  a: 1.0\n"), param_grads=True)
    pts = [(2.0,), (-0.5,)]
    v = o.values(pts)
    np.testing.assert_allclose(v["df/da"], [4 / 9, -0.25 / 2.25], rtol=1e-14)
    assert np.isfinite(o.condition(pts, v)["df/da"]).all()


def test_param_gradients_run_per_element():
    """run_param_grads gives each input its own df/d(param): one param value per element."""
    spec = load_spec("name: t\nformula: a * x**2 + b\nparams:\n  a: 0.5\n  b: 2.0\n")
    fn = C.param_grad_function(spec)
    got = C.run_param_grads(fn, spec, [(1.0,), (-3.0,), (0.5,)], torch.float32, "torch")
    assert got["df/da"].tolist() == [1.0, 9.0, 0.25] and got["df/db"].tolist() == [1.0, 1.0, 1.0]


def test_condition_numbers():
    o = C.Oracle(load_spec("name: t\nformula: exp(x)\n"))
    pts = [(2.0,), (-3.0,)]
    cond = o.condition(pts, o.values(pts))
    np.testing.assert_allclose(cond["f"], [2.0, 3.0])          # |x f'/f| = |x|
    o = C.Oracle(load_spec("name: t\nformula: x - 0.7\n"))     # the literal 0.7 is data too
    pts = [(0.701,)]
    cond = o.condition(pts, o.values(pts))
    np.testing.assert_allclose(cond["f"], [1.401 / 0.001], rtol=1e-6)   # cancellation: (|x| + 0.7)/|x - 0.7|


def test_score_counts_ulps_and_nonfinite():
    f32 = torch.float32
    truth = np.array([1.0, 1.0, 3.0, math.inf, 0.5, math.nan, 1e-35])
    one_ulp = float(np.nextafter(np.float32(1.0), np.float32(2.0)))
    computed = np.array([1.0, one_ulp, 3.0, math.inf, math.nan, 7.0, 0.0])
    s = C.score(np.arange(7.0), computed, truth, f32)
    assert s.worst_scaled == pytest.approx(1.0) and s.worst_at == 1.0
    assert s.bad_nonfinite == 1 and s.bad_nonfinite_at == 4.0     # NaN where the truth is 0.5
    assert s.underflow_points == 1                                 # 0 for 1e-35: below 2**-102
    assert not s.meets_target
    s = C.score(np.arange(2.0), np.array([1.0 + 4 * 2**-23, math.inf]), np.array([1.0, 1e39]), f32)
    assert s.worst_scaled == pytest.approx(4.0) and s.meets_target    # 1e39 rounds to inf in float32
    s = C.score(np.arange(1.0), np.array([1.0 + 40 * 2**-23]), np.array([1.0]), f32, cond=np.array([10.0]))
    assert s.worst_scaled == pytest.approx(4.0) and s.worst_ulp_any == pytest.approx(40.0)


def test_grid_holds_the_extremes():
    g = C.grid(step=0.5, n_log=4)
    for v in (0.0, 30.0, -30.0, 100.0, -100.0, 1e4, -1e4, 2e38, -2e38, 3.4e38, -3.4e38, math.inf, -math.inf, 3.0, -3.0, 6.0):
        assert v in g


def test_dense_screen_finds_what_the_grid_misses(monkeypatch):
    """An op 8 ULP off at one input between the grid's points (mish's derivative at -0.187012,
    -766 * 2**-12, not a multiple of 0.01) meets the target on a grid of steps of 0.01 but
    not between its points: the screen ranks 2**-12 steps against the float64 fallback, and
    the oracle (mpmath) confirms the worst, at a well-conditioned point."""
    mish = SPECS["mish"]
    x0 = -766 * 2.0**-12
    real_run = C.run

    def off_at_x0(fn, spec, points, dtype, backend, params=None, device="cpu"):
        out = real_run(fn, spec, points, dtype, backend, params, device)
        at = np.array([p[0] for p in points]) == x0
        out["df/dx"] = np.where(at, out["df/dx"] * (1 + 8 * 2.0**-23), out["df/dx"])
        return out

    monkeypatch.setattr(C, "run", off_at_x0)
    on_grid = C.measure(mish, C.grid(step=0.01, n_log=8, n_huge=4), runs=(("torch", torch.float32),), as_written=False)
    assert on_grid.compiled[("torch", "float32", "df/dx")].meets_target
    xs = C.dense_points(C.DENSE_STEP, 0.5)
    found = C.screen_dense(mish, xs, runs=(("torch", torch.float32),))[("torch", "float32", "df/dx")]
    assert not found.meets_target and found.worst_at == x0, found
    assert found.worst_ulp > 4 and found.ill_points < C.DENSE_CONFIRM      # plain ULPs, condition <= 1
    monkeypatch.setattr(C, "run", real_run)
    assert C.screen_dense(mish, xs, runs=(("torch", torch.float32),))[("torch", "float32", "df/dx")].meets_target
    exact = C.screen_dense(SPECS["relu"], xs, runs=(("torch", torch.float32),))
    assert all(s.worst_scaled == 0 and s.points > 0 for s in exact.values())


def test_formulas_compiled_for_measuring_leave_no_files_behind(tmp_path):
    """compiled_function writes its modules into one temporary folder per process, removed
    when the process exits (a docs run compiles hundreds)."""
    import os
    import subprocess
    import sys

    code = ("from actgen import catalogue as C\nfrom actgen.spec import load_spec\n"
            "C.compiled_function(load_spec('name: t\\nformula: x * sigmoid(x)\\n'))\n"
            "C.as_written_function(load_spec('name: t\\nformula: x * sigmoid(x)\\n'))\n"
            "print(C._scratch())\n")
    env = {**os.environ, "ACTGEN_CACHE_DIR": str(tmp_path)}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    folder = Path(r.stdout.strip().splitlines()[-1])
    assert folder.name.startswith("actgen-catalogue-") and not folder.exists()


def _trained(spec) -> dict:
    """The params moved off their initial values as training moves them: 1.5*init + 0.1 each
    (in float32, as the ops see them)."""
    return {p.name: float(np.float32(1.5 * p.init + 0.1)) for p in spec.params}


#: Misses away from the initial values only (README, "Limitations"): (entry, "f", "df" or "dp").
#: None now: the soft exponential's gradient in alpha past alpha*x = 88, where exp(alpha*x)
#: overflows, was NaN (inf - inf) where the truth is inf.
TRAINED_MISSES: dict[tuple[str, str], str] = {}


@pytest.mark.parametrize("name", LEARNABLE)
def test_learnable_entries_meet_the_accuracy_targets_away_from_their_initial_values(name):
    """f, df/dx on the fallback and df/d(param) on both backends, with every param at
    1.5*init + 0.1, against the mpmath oracle at those values; the misses must be exactly the
    documented ones."""
    spec = SPECS[name]
    acc = C.measure(spec, GRID, runs=(("torch", torch.float32),), as_written=False, param_grads=True,
                    params=_trained(spec))
    expected = {key for key in C.KNOWN_MISSES if key[0] == name and key[1] == "dp"}
    expected |= {key for key in TRAINED_MISSES if key[0] == name}
    details = {k: (s.worst_scaled, s.worst_at, s.bad_nonfinite, s.bad_nonfinite_at)
               for k, s in (*acc.compiled.items(), *acc.params.items()) if not s.meets_target}
    assert C.misses(acc) == expected, details
