"""The catalogue: accuracy against a high-precision oracle, plots, and the generated docs.

* The oracle evaluates a spec's formula - the sympy expression as parsed, before any
  stability rewrite - and its derivatives with mpmath at 50 significant digits (and again
  at 70 to catch cancellation; where the two disagree the precision is raised until they
  agree).  It shares nothing with actgen's printers or rewrites, so it checks them.  A
  formula with random draws is evaluated in evaluation mode: uniform(lo, hi) is (lo + hi)/2.
* `measure` runs an activation (the shipped op in actgen.ops, or the formula compiled as
  written, without stability rewrites) on a grid of inputs on the eager fallback and on the
  Triton kernels, and scores every result in ULPs of its dtype against the oracle.
* `write_docs` generates docs/catalogue.md, docs/accuracy.md and docs/plots/*.png
  (`actgen docs`); `plot` draws one activation (`actgen plot NAME`).

Deterministic: fixed grids, no randomness, sorted output, PNGs without timestamps.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import math
import shlex
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import mpmath
import numpy as np
import sympy
import torch

from .functions import MPMATH_FUNCTIONS, mean_of_draws
from .native import kernels_text as native_kernels_text
from .precision import DENSE_HALF_WIDTH, DENSE_STEP, dense_points
from .spec import Spec, load_spec, load_specs

DEFAULT_SPECS = Path("specs")
DEFAULT_DOCS = Path("docs")

# --- the oracle ------------------------------------------------------------------------
_DPS = 50
_CHECK_DPS = 70


def _clean(expr: sympy.Expr) -> sympy.Expr:
    """The derivative conventions of the formula language: DiracDelta is 0, sign(0) is 0 (and
    so is sign's derivative where sympy leaves it unevaluated: sign(x/a)'s in a)."""
    expr = expr.replace(sympy.DiracDelta, lambda *a: sympy.S.Zero)
    expr = expr.replace(lambda e: isinstance(e, sympy.Derivative) and isinstance(e.expr, sympy.sign),
                        lambda e: sympy.S.Zero)
    return expr.replace(sympy.sign, lambda u: sympy.Piecewise((1, u > 0), (-1, u < 0), (0, True)))


def param_values(spec: Spec) -> dict[str, float]:
    """The params' initial values as the ops see them: float32 tensors."""
    return {p.name: float(np.float32(p.init)) for p in spec.params}


class Oracle:
    """f and df/d(input) of a spec at given points, from its formula, with mpmath; and the
    condition number of each of them.  Random draws at their mean (evaluation mode).

    Params are fixed at `params` (default: their initial values in float32), constants at
    `constants` (default: their defaults, exactly).  With `param_grads`, df/d(param) too.
    Where a param's or constant's value makes the formula 0/0 everywhere ((exp(a*x) - 1)/a
    at a = 0), the limit is taken in it as in the inputs (see _removable)."""

    def __init__(self, spec: Spec, params: dict | None = None, constants: dict | None = None,
                 param_grads: bool = False):
        self.spec = spec
        sym = spec.symbols
        values = {**param_values(spec), **{c.name: c.default for c in spec.constants}}
        values.update(params or {})
        values.update(constants or {})
        self.inputs = [sym[n] for n in spec.inputs]
        # The data the result depends on besides the inputs: params, constants and the
        # formula's decimal literals (all of them rounded to float32 in a kernel).
        expr = mean_of_draws(spec.expr)       # evaluation mode
        literals = sorted({a for a in expr.atoms(sympy.Float)}, key=sympy.default_sort_key)
        lit_syms = [sympy.Symbol(f"_literal{k}", real=True) for k in range(len(literals))]
        expr = expr.xreplace(dict(zip(literals, lit_syms)))
        data = {sym[k]: sympy.nsimplify(repr(float(v)), rational=True) for k, v in values.items()}
        data.update({s_: sympy.nsimplify(str(lit), rational=True) for s_, lit in zip(lit_syms, literals)})
        self.data = data
        wrt = self.inputs + ([sym[p.name] for p in spec.params] if param_grads else [])
        outputs = [("f", expr)] + [(f"df/d{u.name}", sympy.diff(expr, u)) for u in wrt]
        # a datum whose value makes an output 0/0 everywhere stays an argument (self.free), at
        # its value: the limit there is read off as at an input's 0/0
        collapsed = lambda e: not e.has(sympy.nan, sympy.zoo) and _clean(e).xreplace(data).has(sympy.nan, sympy.zoo)
        free = set()
        if any(collapsed(e) for _, e in outputs):
            free = {v for v in data if v.name in values and v in expr.free_symbols}
        self.free = sorted(free, key=sympy.default_sort_key)
        self.free_values = tuple(float(data[v]) for v in self.free)
        data = {v: value for v, value in data.items() if v not in free}

        def numeric(e):
            return _clean(e).xreplace(data)

        self.exprs = [(name, numeric(e)) for name, e in outputs]
        # for the condition numbers: d(output)/dv for every input and datum v, and v's value
        self.slopes: dict[str, list] = {}
        for name, e in outputs:
            self.slopes[name] = [(v.name, numeric(sympy.diff(e, v))) for v in [*self.inputs, *data, *self.free]]
        self.datum_values = {v.name: float(value) for v, value in self.data.items()}
        modules = [MPMATH_FUNCTIONS, "mpmath"]
        args = self.inputs + self.free
        self.functions = [(name, sympy.lambdify(args, e, modules=modules)) for name, e in self.exprs]
        self.slope_functions = {
            name: [(v, sympy.lambdify(args, e, modules=modules)) for v, e in slopes]
            for name, slopes in self.slopes.items()
        }

    def _eval(self, fn, point, dps, offset=0, zero_division=mpmath.nan):
        """fn at point (+ offset on every coordinate) in dps digits; zero_division where it
        divides by 0."""
        with mpmath.workdps(dps):
            try:
                value = fn(*[mpmath.mpf(float(v)) + offset for v in point])
            except ZeroDivisionError:
                return zero_division
            except (ValueError, OverflowError):
                return mpmath.nan
            return mpmath.mpf(value) if isinstance(value, (int, float)) else value

    def _value(self, fn, point, offset=0) -> float:
        if any(math.isnan(v) for v in point):
            return math.nan
        if any(math.isinf(v) for v in point):
            return self._limit(fn, point)
        # terms that cancel near 0 (1 - cos(x) ~ x**2/2) lose digits as x shrinks: 50 and 70
        # digits can agree on the same wrong value at x = 1e-38, so tiny inputs get more
        tiny = [abs(v + offset) for v in point if v + offset != 0]
        extra = 3 * max([0] + [math.ceil(-math.log10(v)) for v in tiny if v < 1])
        a = self._eval(fn, point, _DPS + extra, offset, zero_division=None)
        if a is None:
            return self._removable(fn, point) if not offset else math.nan
        dps = _CHECK_DPS + extra
        while True:
            b = self._eval(fn, point, dps, offset)
            if not _is_real(a) or not _is_real(b):
                return math.nan
            if a == b or abs(a - b) <= abs(b) * mpmath.mpf(10) ** -30 or dps >= 800:
                if mpmath.isinf(b) and dps < 800:
                    # an inf that a cancellation can make: log(1 - sigmoid(x)) at x = 174 is
                    # log(0) in 50 and 70 digits, -174 in 80
                    a, dps = b, 800
                    continue
                return _to_float(b)
            a, dps = b, dps * 2

    def _removable(self, fn, point) -> float:
        """The value where the formula divides 0/0 (sin(x)/x at 0): its limit, read off at
        every coordinate +-1e-40 and +-1e-60, where the four agree (NaN at a pole or a jump)."""
        probes = [self._value(fn, point, sign * mpmath.mpf(10) ** -e) for sign in (1, -1) for e in (40, 60)]
        if not all(math.isfinite(v) for v in probes):
            return math.nan
        if max(probes) - min(probes) <= 1e-25 * max(1.0, max(abs(v) for v in probes)):
            return (probes[1] + probes[3]) / 2       # the closest two, either side
        return math.nan

    def _limit(self, fn, point) -> float:
        """The value at an infinite input: read off at 1e20, 1e25, ... 1e40 in its place - inf
        where each probe is ten times the last and more, all of one sign; the value where they
        all agree; else NaN (no limit: x*sin(2*x) at 1e20 and 1e40 alone can grow with one
        sign)."""
        probes = []
        for k in range(20, 41, 5):
            big = mpmath.mpf(10) ** k
            p = [big * (1 if v > 0 else -1) if math.isinf(v) else v for v in point]
            v = self._eval(fn, p, _DPS)
            if not _is_real(v):
                return math.nan
            probes.append(v)
        last = probes[-1]
        if (abs(last) > 1e30 and all(abs(b) > 10 * abs(a) for a, b in zip(probes, probes[1:]))
                and len({mpmath.sign(v) for v in probes}) == 1):
            return math.copysign(math.inf, float(mpmath.sign(last)))
        if all(abs(v - last) <= mpmath.mpf(10) ** -25 * max(1, abs(last)) for v in probes):
            return _to_float(last)
        return math.nan

    def outputs(self) -> list[str]:
        """What the ops compute: f and df/du for every input u."""
        return [name for name, _ in self.exprs]

    def values(self, points: Sequence[tuple[float, ...]]) -> dict[str, np.ndarray]:
        """f and df/du for every input u at the points."""
        points = [tuple(p) + self.free_values for p in points]
        return {name: np.array([self._value(fn, p) for p in points]) for name, fn in self.functions}

    def condition(self, points: Sequence[tuple[float, ...]], values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The condition number of every output g at the points: the sum over its data v -
        inputs, params, constants and decimal literals - of |v * dg/dv / g|, how much relative
        rounding errors in the data are amplified.  NaN where it cannot be evaluated."""
        names = [u.name for u in self.inputs]
        points = [tuple(p) + self.free_values for p in points]
        out = {}
        for g in self.outputs():
            total = np.zeros(len(points))
            for v, fn in self.slope_functions[g]:
                slope = np.array([self._value(fn, p) if all(math.isfinite(c) for c in p) else math.nan for p in points])
                if v in names:
                    scale = np.array([p[names.index(v)] for p in points])
                else:
                    scale = np.full(len(points), self.datum_values[v])
                with np.errstate(all="ignore"):
                    total = total + np.where(scale == 0, 0.0, np.abs(scale * slope))
            with np.errstate(all="ignore"):
                out[g] = np.where(total == 0, 0.0, total / np.abs(values[g]))
        return out


def _is_real(v) -> bool:
    return isinstance(v, mpmath.mpf) and not mpmath.isnan(v)


def _to_float(v) -> float:
    if mpmath.isinf(v):
        return math.copysign(math.inf, float(mpmath.sign(v)))
    try:
        return float(v)
    except OverflowError:
        return math.copysign(math.inf, float(mpmath.sign(v)))


# --- grids -------------------------------------------------------------------------------
EXTREMES = (30.0, 100.0, 1e4, 2e38, 3.4e38, math.inf)     # (2e38, 3.4e38: past 1e38, float32's top)
SPECIAL = (0.0, 1e-38, 1e-20, 1e-7, 1e-3, 0.1, 0.5, 1.0, 2.0, 3.0, 6.0) + EXTREMES


#: The huge magnitudes of the grid reach this (float32's largest finite value is 3.4e38).
HUGE_MAX = 1e38


def _short(v: float) -> str:
    """30, 1e4, 3.4e38, inf: a grid value as the docs name it."""
    return "inf" if math.isinf(v) else f"{v:g}" if abs(v) < 1e4 else f"{v:.2g}".replace("e+", "e").replace("e0", "e")


def grid(step: float = 0.01, n_log: int = 200, half_width: float = 20.0, n_huge: int | None = None) -> np.ndarray:
    """Uniform on [-w, w] (exact multiples of step), log-spaced out to 1e4, n_huge more (default
    n_log // 5) log-spaced from 1e4 to HUGE_MAX, the special points (0, tiny, the usual kinks)
    and the extremes (EXTREMES: +-30, +-100, +-1e4, +-2e38, +-3.4e38 near float32's top, +-inf)."""
    dense = dense_points(step, half_width)
    far = np.geomspace(half_width, 1e4, n_log)
    huge = np.geomspace(1e4, HUGE_MAX, n_log // 5 if n_huge is None else n_huge)
    special = np.array(SPECIAL)
    points = np.concatenate([dense, far, -far, huge, -huge, special, -special])
    return np.unique(points)


def round_to(points: np.ndarray, dtype: torch.dtype) -> np.ndarray:
    """The points as representable in dtype (as float64), without duplicates."""
    return np.unique(torch.tensor(points, dtype=torch.float64).to(dtype).double().numpy())


GATE_VALUES = (-2.5, -1.0, 0.5, 1.5, 3.0)


def input_points(spec: Spec, xs: np.ndarray) -> list[tuple[float, ...]]:
    """One point per grid value; a gated activation pairs it with a gate value in turn."""
    if spec.gated:
        return [(float(x), GATE_VALUES[i % len(GATE_VALUES)]) for i, x in enumerate(xs)]
    return [(float(x),) for x in xs]


# --- ULPs ----------------------------------------------------------------------------------
_MANTISSA = {torch.float32: 24, torch.bfloat16: 8, torch.float16: 11, torch.float64: 53}
_MIN_EXP = {torch.float32: -126, torch.bfloat16: -126, torch.float16: -14, torch.float64: -1022}
#: Below this magnitude a float32/bfloat16 result may be computed through intermediates
#: below the smallest normal number (subnormal or flushed to zero, then scaled by up to
#: 2**24); such results are scored by absolute error (see `score`).  A float16 result is
#: computed in float32 too (torch's CPU kernels, actgen's fallback and kernels), so the
#: bound is float32's, not one from float16's own range (its subnormals are ULPs apart).
UNDERFLOW = {dt: 2.0 ** (_MIN_EXP[dt] + _MANTISSA[dt]) for dt in _MANTISSA}
UNDERFLOW[torch.float16] = UNDERFLOW[torch.float32]


def ulps(computed: np.ndarray, truth: np.ndarray, dtype: torch.dtype) -> np.ndarray:
    """|computed - truth| in units in the last place of truth in dtype (subnormal spacing
    below the smallest normal number).  Both are float64 arrays of finite values."""
    _, e = np.frexp(np.abs(truth))
    e = np.maximum(e - 1, _MIN_EXP[dtype])
    return np.abs(computed - truth) / np.ldexp(1.0, e - (_MANTISSA[dtype] - 1))


#: The accuracy target, in ULPs of the result's dtype, at well-conditioned points (condition
#: number <= 1); where the condition number c is larger the target is TARGET_ULP * c ULP, as
#: rounding the data by half an ULP may already move the result by c/2 ULP.
TARGET_ULP = 4.0


@dataclass
class Score:
    """The accuracy of one output (f or a derivative) of one run on a grid."""

    worst_scaled: float = 0.0        # max over the points of ULP error / max(1, condition number)
    worst_at: float | None = None    # the (first) input where it happens
    worst_ulp: float = 0.0           # max ULP error at well-conditioned points (condition number <= 1)
    worst_ulp_at: float | None = None
    worst_ulp_any: float = 0.0       # max ULP error anywhere
    ill_points: int = 0              # points with condition number > 1
    bad_nonfinite: int = 0           # inf/NaN where the truth is finite, or a wrong inf
    bad_nonfinite_at: float | None = None
    underflow_points: int = 0        # |truth| < UNDERFLOW and off by at most UNDERFLOW
    points: int = 0

    @property
    def meets_target(self) -> bool:
        return self.worst_scaled <= TARGET_ULP and self.bad_nonfinite == 0


def score(xs: np.ndarray, computed: np.ndarray, truth: np.ndarray, dtype: torch.dtype,
          cond: np.ndarray | None = None) -> Score:
    """Score results of dtype (given as float64) against the truth (float64).

    * truth NaN (undefined there): not scored;
    * truth rounds to +-inf in dtype: the result must be that inf;
    * truth finite: the result must be finite; its error is counted in ULPs (of the truth,
      in dtype) and scaled by the condition number where that is above 1 (cond; NaN counts
      as 0).  Where |truth| < UNDERFLOW[dtype] (2**-102 for float32 and bfloat16) the
      evaluation may pass through intermediates below the smallest normal number 2**-126,
      which lose precision or flush to zero; with factors up to 2**24 applied to them that
      is an absolute error up to 2**-102, which counts as no error there."""
    s = Score()
    cond = np.zeros_like(truth) if cond is None else np.nan_to_num(cond, nan=0.0, posinf=np.inf)
    with np.errstate(all="ignore"):
        rounded = torch.tensor(truth).to(dtype).double().numpy()
        defined = ~np.isnan(truth)
        s.points = int(defined.sum())
        inf_truth = defined & np.isinf(rounded)
        finite = defined & ~np.isinf(rounded)
        bad = (inf_truth & (computed != rounded)) | (finite & ~np.isfinite(computed))
        s.bad_nonfinite = int(bad.sum())
        if bad.any():
            s.bad_nonfinite_at = float(xs[bad][0])
        ok = finite & np.isfinite(computed)
        forgiven = ok & (np.abs(truth) < UNDERFLOW[dtype]) & (np.abs(computed - truth) <= UNDERFLOW[dtype])
        s.underflow_points = int(forgiven.sum())
        scored = ok
        err = np.zeros_like(truth)
        err[ok & ~forgiven] = ulps(computed[ok & ~forgiven], truth[ok & ~forgiven], dtype)
        scaled = np.where(scored, err / np.maximum(1.0, cond), -1.0)
    well = scored & (cond <= 1.0)
    s.ill_points = int((scored & ~well).sum())
    if scored.any():
        k = int(np.argmax(scaled))
        s.worst_scaled, s.worst_at = float(scaled[k]), float(xs[k])
        s.worst_ulp_any = float(err[scored].max())
    if well.any():
        k = int(np.argmax(np.where(well, err, -1.0)))
        s.worst_ulp, s.worst_ulp_at = float(err[k]), float(xs[k])
    return s


# --- running the ops -------------------------------------------------------------------------
def op_function(spec: Spec):
    """The functional of an activation: actgen.ops.<name> where that is this very spec's op,
    else the spec compiled now (a spec of the user's own: `actgen docs --specs DIR`)."""
    return shipped_or_compiled_function(spec)


_LOADED: dict[tuple[str, str, bool], Callable] = {}
_SCRATCH: list[tempfile.TemporaryDirectory] = []     # this process's folder, removed at exit


def _scratch() -> Path:
    if not _SCRATCH:
        _SCRATCH.append(tempfile.TemporaryDirectory(prefix="actgen-catalogue-"))
    return Path(_SCRATCH[0].name)


def compiled_function(spec: Spec, rewrites: bool = True):
    """The functional of a spec compiled now (with or without the stability rewrites), from a
    module written to a folder of this process's temporary folder (removed when the process
    exits) - for formulas that are not in actgen.ops."""
    key = (spec.name, spec.sha256, rewrites)
    if key in _LOADED:
        return _LOADED[key]
    from .build import compile_guard
    from .codegen import render_module
    from .derive import derive

    tag = ":as-written" if not rewrites else ":compiled"
    name = f"_{'compiled' if rewrites else 'as_written'}_{spec.name}"
    with compile_guard(spec):
        # (the formula's function alone: a module on its own, so without the modes' siblings)
        d = derive(dataclasses.replace(spec, sha256=spec.sha256 + tag, modes=None), rewrites=rewrites)
        folder = Path(tempfile.mkdtemp(dir=_scratch()))
        path = folder / f"{name}.py"
        path.write_text(render_module(d), encoding="utf-8")
        module_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        module_spec.loader.exec_module(module)
    _LOADED[key] = getattr(module, spec.name)
    return _LOADED[key]


def shipped_or_compiled_function(spec: Spec):
    """The shipped functional where actgen.ops holds this very spec's op, else the spec
    compiled now (compiled_function): a spec of the user's own, or one edited since."""
    import actgen.ops

    fn = getattr(actgen.ops, spec.name, None) if spec.name in getattr(actgen.ops, "__all__", ()) else None
    if fn is not None and getattr(sys.modules.get(fn.__module__), "SPEC_SHA256", None) == spec.sha256:
        return fn
    return compiled_function(spec)


def as_written_function(spec: Spec):
    """The formula compiled as written (guards and CSE only, see actgen.derive.derive): the "before"."""
    return compiled_function(spec, rewrites=False)


def _arguments(spec: Spec, points: list[tuple[float, ...]], dtype: torch.dtype, params: dict | None = None,
               device="cpu"):
    """The inputs at the points in dtype (requiring grad) and the params (float32 tensors, at
    their initial values unless params says otherwise), on device."""
    values = {**param_values(spec), **(params or {})}
    xs = [torch.tensor(c, dtype=torch.float64).to(dtype).to(device).requires_grad_() for c in zip(*points)]
    return xs, [torch.tensor([values[p.name]], dtype=torch.float32, device=device) for p in spec.params]


def run(fn, spec: Spec, points: list[tuple[float, ...]], dtype: torch.dtype, backend: str,
        params: dict | None = None, device="cpu") -> dict[str, np.ndarray]:
    """f and df/d(input) of fn at the points, on one backend and device, as float64 arrays."""
    from .runtime import use_backend

    xs, ps = _arguments(spec, points, dtype, params, device)
    with use_backend(backend):
        y = fn(*xs, *ps)
        grads = torch.autograd.grad(y, xs, grad_outputs=torch.ones_like(y))
    out = {"f": y.detach().double().cpu().numpy()}
    for n, g in zip(spec.inputs, grads):
        out[f"df/d{n}"] = g.double().cpu().numpy()
    return out


def per_element_params(spec: Spec) -> Spec:
    """spec with every param per channel: over channel dim 1 of a (1, n) input, one value per
    element, whose gradient is that element's df/d(param) (run_param_grads)."""
    params = tuple(dataclasses.replace(p, per_channel=True) for p in spec.params)
    return dataclasses.replace(spec, name=f"{spec.name}_per_element", params=params, sha256=spec.sha256 + ":per-element")


def run_param_grads(fn, spec: Spec, points: list[tuple[float, ...]], dtype: torch.dtype, backend: str,
                    params: dict | None = None, device="cpu") -> dict[str, np.ndarray]:
    """df/d(param) of fn at each point, as float64 arrays: fn is the functional of
    per_element_params(spec), whose params each take one value per point."""
    from .runtime import use_backend

    values = {**param_values(spec), **(params or {})}
    xs = [torch.tensor(c, dtype=torch.float64).to(dtype).to(device).reshape(1, -1) for c in zip(*points)]
    ps = [torch.full((len(points),), values[p.name], dtype=torch.float32, device=device, requires_grad=True)
          for p in spec.params]
    with use_backend(backend):
        y = fn(*xs, *ps, channel_dim=1)
        grads = torch.autograd.grad(y, ps, grad_outputs=torch.ones_like(y))
    return {f"df/d{p.name}": g.double().cpu().numpy() for p, g in zip(spec.params, grads)}


def truth_at(oracle: "Oracle", pts: list[tuple[float, ...]]):
    """(truth, condition numbers, first input) at the points: what `score` takes."""
    truth = oracle.values(pts)
    return truth, oracle.condition(pts, truth), np.array([p[0] for p in pts])


RUNS = (("torch", torch.float32), ("triton", torch.float32), ("triton", torch.bfloat16))


@dataclass
class Accuracy:
    """Worst errors of one activation: {(backend, dtype name, output): Score}, compiled and as
    written on the grid, and compiled between the grid's points (dense, see screen_dense)."""

    name: str
    compiled: dict = field(default_factory=dict)
    as_written: dict = field(default_factory=dict)
    dense: dict = field(default_factory=dict)
    params: dict = field(default_factory=dict)


#: The runs that score df/d(param) (per element, see run_param_grads).
PARAM_RUNS = (("torch", torch.float32), ("triton", torch.float32))


def param_grad_function(spec: Spec):
    """What scores an entry's df/d(param) per element: the shipped op where every param is per
    channel, else its formula compiled with per-element params (the same derivatives)."""
    if all(p.per_channel for p in spec.params):
        return op_function(spec)
    return compiled_function(per_element_params(spec))


def measure(spec: Spec, xs: np.ndarray, runs=RUNS, as_written: bool = True, oracle: Oracle | None = None,
            dense: bool = False, param_grads: bool = False, params: dict | None = None) -> Accuracy:
    """Score the shipped op (and, with as_written, the formula compiled without rewrites; with
    dense, the shipped op between the grid's points too: screen_dense; with param_grads, its
    df/d(param) on PARAM_RUNS, in acc.params), its params at `params` (default: their initial
    values; not with dense, whose screen takes those)."""
    assert params is None or not dense
    oracle = oracle or Oracle(spec, params=params, param_grads=param_grads)
    acc = Accuracy(spec.name)
    truths: dict = {}

    def points_and_truth(dtype):        # the grid in dtype, and the oracle's truth there (once per grid)
        pts = input_points(spec, round_to(xs, dtype))
        key = tuple(pts)
        if key not in truths:
            truths[key] = truth_at(oracle, pts)
        return pts, truths[key]

    if param_grads and spec.params:
        for backend, dtype in PARAM_RUNS:
            pts, (truth, cond, xcol) = points_and_truth(dtype)
            got = run_param_grads(param_grad_function(spec), spec, pts, dtype, backend, params)
            for out, values in got.items():
                acc.params[(backend, str(dtype).replace("torch.", ""), out)] = score(
                    xcol, values, truth[out], dtype, cond[out])
    for backend, dtype in runs:
        pts, (truth, cond, xcol) = points_and_truth(dtype)
        targets = [("compiled", op_function(spec))] + ([("as_written", as_written_function(spec))] if as_written else [])
        for which, fn in targets:
            got = run(fn, spec, pts, dtype, backend, params)
            for out, values in got.items():
                getattr(acc, which)[(backend, str(dtype).replace("torch.", ""), out)] = score(
                    xcol, values, truth[out], dtype, cond[out])
    if dense:
        acc.dense = screen_dense(spec, oracle=oracle)
    return acc


# --- between the grid's points ----------------------------------------------------------------
# A worst case can fall between the grid's points: a sum whose terms cancel over a narrow
# interval, a dozen roundings that line up at a few inputs.  Every multiple of DENSE_STEP in
# [-DENSE_HALF_WIDTH, DENSE_HALF_WIDTH] (where activations bend) is screened against the op's
# own eager fallback in float64; the DENSE_CONFIRM worst points of each output and run are
# then scored against the mpmath oracle like the grid's points.
DENSE_CONFIRM = 12
DENSE_RUNS = (("torch", torch.float32), ("triton", torch.float32))


def _float64_reference(spec: Spec, points: list[tuple[float, ...]], device="cpu"):
    """The shipped op's eager fallback in float64 at the points: {output: values} and
    {output: d output / d (first input)} (its own second derivatives), for ranking points by
    their error per unit of condition before the oracle scores the worst of them."""
    from .runtime import use_backend

    xs, ps = _arguments(spec, points, torch.float64, device=device)
    with use_backend("torch"):
        y = op_function(spec)(*xs, *ps)
        grads = torch.autograd.grad(y, xs, grad_outputs=torch.ones_like(y), create_graph=True)
        outs = {"f": y, **{f"df/d{n}": g for n, g in zip(spec.inputs, grads)}}
        slopes = {"f": grads[0]}
        for n, g in zip(spec.inputs, grads):
            if g.requires_grad:
                slopes[f"df/d{n}"] = torch.autograd.grad(g, xs[0], torch.ones_like(g), retain_graph=True,
                                                         allow_unused=True)[0]
    as_array = lambda t: np.zeros(len(points)) if t is None else t.detach().double().expand(len(points)).cpu().numpy()
    return ({k: as_array(v) for k, v in outs.items()},
            {k: as_array(slopes.get(k)) for k in outs})


def rank_dense(spec: Spec, pts: list[tuple[float, ...]], runs=DENSE_RUNS, confirm: int = DENSE_CONFIRM,
               device="cpu") -> tuple[list[int], dict]:
    """Run the shipped op at every point on each (backend, dtype) of runs, on device, and rank
    the points by their error against the op's float64 fallback (on the same device) over
    their condition along the first input: (the indices of the `confirm` worst of each output
    and run, sorted; {(backend, dtype): {output: values}})."""
    ref, slope = _float64_reference(spec, pts, device)
    x0 = np.array([p[0] for p in pts])
    picked: set[int] = set()
    runs_out = {}
    for backend, dtype in runs:
        got = run(op_function(spec), spec, pts, dtype, backend, device=device)
        runs_out[(backend, dtype)] = got
        for out, values in got.items():
            with np.errstate(all="ignore"):
                cond = np.nan_to_num(np.abs(x0 * slope[out] / ref[out]), nan=0.0, posinf=0.0)
                finite = np.isfinite(ref[out])
                err = np.where(finite & np.isfinite(values),
                               np.abs(values - ref[out]) / np.maximum(np.abs(ref[out]) * 2.0 ** -24, 2.0 ** -149),
                               np.where(finite, np.inf, 0.0)) / np.maximum(1.0, cond)
            picked |= set(np.argsort(err)[-confirm:].tolist())
    return sorted(picked), runs_out


def score_dense(spec: Spec, pts: list[tuple[float, ...]], chosen: list[int], runs_out: dict,
                oracle: Oracle | None = None) -> dict:
    """{(backend, dtype name, output): Score} of the chosen points of each run against the oracle
    (runs_out's values are at every point, or at the chosen ones only)."""
    truth, cond, xcol = truth_at(oracle or Oracle(spec), [pts[i] for i in chosen])
    scores = {}
    for (backend, dtype), got in runs_out.items():
        for out, values in got.items():
            values = values[chosen] if len(values) == len(pts) else values
            scores[(backend, str(dtype).replace("torch.", ""), out)] = score(xcol, values, truth[out], dtype, cond[out])
    return scores


def dense_inputs(spec: Spec, xs: np.ndarray | None = None) -> list[tuple[float, ...]]:
    """The points between the grid's (xs, default every multiple of DENSE_STEP in
    [-DENSE_HALF_WIDTH, DENSE_HALF_WIDTH]) in float32, as input_points gives them."""
    xs = dense_points(DENSE_STEP, DENSE_HALF_WIDTH) if xs is None else xs
    return input_points(spec, round_to(xs, torch.float32))


def screen_dense(spec: Spec, xs: np.ndarray | None = None, runs=DENSE_RUNS, oracle: Oracle | None = None,
                 confirm: int = DENSE_CONFIRM) -> dict:
    """{(backend, dtype name, output): Score} of the shipped op between the grid's points: every
    point of xs (default: every multiple of DENSE_STEP in [-DENSE_HALF_WIDTH, DENSE_HALF_WIDTH])
    ranked by its error against the op's float64 fallback over its condition along the first
    input (rank_dense), and the `confirm` worst of each output and run scored against the
    oracle (mpmath) with the full condition number."""
    pts = dense_inputs(spec, xs)
    chosen, runs_out = rank_dense(spec, pts, runs, confirm)
    return score_dense(spec, pts, chosen, runs_out, oracle)


# --- what the docs say about each entry ---------------------------------------------------------
#: torch's spelling of an entry, where the spec's `reference` alone does not say it.
TORCH_EQUIVALENT = {
    "gelu_tanh": 'torch.nn.GELU(approximate="tanh")',
    "rrelu": "torch.nn.RReLU / torch.nn.functional.rrelu (training mode: random slopes)",
    "glu": "torch.nn.GLU(dim)",
    "sigmoid": "torch.nn.Sigmoid",
    "tanh": "torch.nn.Tanh",
    "selu": "torch.nn.SELU",
    "well_documented": "torch.nn.Mish (the same function)",
    "silu": "torch.nn.SiLU",
}

#: Where the compiled op misses the accuracy target, on the grid or between its points, and why.  The accuracy test
#: checks that the misses are exactly these (a fix shows up as a test failure until the
#: entry is removed here).  Keys: (entry, "f", "df" or "dp"); "df" covers every df/d(input),
#: "dp" every df/d(param).
KNOWN_MISSES: dict[tuple[str, str], str] = {
    ("adaptive_mixture", "dp"): "a weight's gradient e_i*(g_i - f)/S near 0, where relu, tanh and x agree to ~x**3: the "
                                "difference of rounded values is ~1e-7*|x| there (the kernels, which sum grad times relu(x), "
                                "tanh(x) and x apart: -2e-28 at x = 1e-20, against a true 4e-62); pairwise differences with x - tanh(x) as a Padé approximant are exact, but took "
                                "the sm_90 float32 backward from 126 to 196 instructions per element (it is compute-bound "
                                "already), for terms that a shared param's sum makes negligible",
    ("adaptive_mixture4", "dp"): "as adaptive_mixture's, and up to 15 ULP near x = 0.6 besides, where tanh(x) and the "
                                 "mean f are close (the exact form: 180 -> 266 sm_90 instructions per element)",
    ("xielu", "dp"): "alpha_n's gradient (expm1(x) - x)*sigmoid(alpha_n) for x < eps cancels near 0 (354 ULP at "
                     "x = -1e-3, ~x**2/2 from terms ~x); as a Padé approximant it is exact, but took the sm_90 float32 "
                     "backward from 118 to 172 instructions per element, for terms that alpha_n's sum makes negligible",
}


def _kind(spec: Spec) -> str:
    return "gated" if spec.gated else ("learnable" if spec.params else "")


def _torch_equivalent(spec: Spec) -> str:
    if spec.name in TORCH_EQUIVALENT:
        return TORCH_EQUIVALENT[spec.name]
    if spec.reference and spec.reference.startswith("torch.nn.functional."):
        return f"torch.nn.{spec.class_name} / {spec.reference}"
    return spec.reference or ""


# --- plots -------------------------------------------------------------------------------------
PLOT_RANGE = (-6.0, 6.0)
PLOT_SIZE = (8.0, 5.0)     # inches, at PLOT_DPI: 640 x 400 pixels
PLOT_DPI = 80


def plot_values(spec: Spec, n: int = 601):
    """x, f(x) and df/dx on PLOT_RANGE from the op (the shipped one, or the spec compiled
    now: shipped_or_compiled_function; eager fallback, float64); a gated activation with its
    gate b = 1, params at their initial values."""
    from .runtime import use_backend

    xs = torch.linspace(*PLOT_RANGE, n, dtype=torch.float64)
    x = xs.clone().requires_grad_()
    inputs = [x] + ([torch.ones_like(xs)] if spec.gated else [])
    params = [torch.tensor([p.init], dtype=torch.float64) for p in spec.params]
    with use_backend("torch"):
        y = shipped_or_compiled_function(spec)(*inputs, *params)
        (g,) = torch.autograd.grad(y, x, grad_outputs=torch.ones_like(y))
    return xs.numpy(), y.detach().numpy(), g.numpy()


def plot(spec: Spec, out: Path) -> Path:
    """Draw f and f' of one activation over [-6, 6] into a PNG (640 x 400, no timestamp)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs, y, g = plot_values(spec)
    var = spec.inputs[0]
    fig, ax = plt.subplots(figsize=PLOT_SIZE, dpi=PLOT_DPI)
    ax.axhline(0, color="0.8", lw=0.8)
    ax.axvline(0, color="0.8", lw=0.8)
    ax.plot(xs, y, lw=2, label=f"f({var}{', b=1' if spec.gated else ''})")
    ax.plot(xs, g, lw=1.5, ls="--", label=f"df/d{var}")
    finite = np.concatenate([y[np.isfinite(y)], g[np.isfinite(g)]])
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (-1.0, 1.0)
    pad = 0.05 * max(hi - lo, 1e-3)
    ax.set_ylim(max(lo, -10) - pad, min(hi, 10) + pad)
    ax.set_xlim(*PLOT_RANGE)
    ax.set_xlabel(var)
    ax.set_title(f"{spec.name} ({spec.class_name})")
    ax.grid(True, lw=0.3)
    ax.legend(loc="best")
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=PLOT_DPI, metadata=_REPRODUCIBLE.get(out.suffix.lstrip(".").lower()))
    plt.close(fig)
    return out


#: metadata that would make the same plot's file differ from run to run or machine to
#: machine (matplotlib's version, a date), left out, per format; other formats take none
_REPRODUCIBLE = {"png": {"Software": None}, "svg": {"Date": None}, "svgz": {"Date": None},
                 "pdf": {"CreationDate": None}}


# --- catalogue.md --------------------------------------------------------------------------------
REGENERATE = "Generated by `actgen docs` from specs/; do not edit. Regenerate with `actgen docs` (see docs/README.md)."


def _regenerate(source: str | None, out: str | None = None) -> str:
    """The docs' note on how they were made: the built-in library's (source None), or from a
    spec directory of the user's own (`actgen docs --specs DIR [--out DOCS]`)."""
    if source is None:
        return REGENERATE
    command = shlex.join(["actgen", "docs", "--specs", source, *(["--out", out] if out is not None else [])])
    return f"Generated by `{command}`; do not edit. Regenerate with that command."


def _code(text: str) -> str:
    return "`" + " ".join(text.split()).replace("`", "'") + "`"


def catalogue_markdown(specs: Sequence[Spec], source: str | None = None, out: str | None = None) -> str:
    """The catalogue of specs: the built-in library's (source None: specs/ -> actgen/ops/), or
    of a spec directory of the user's own (out: the docs' folder where not docs/)."""
    from .derive import derive, draw_lines
    from .precision import float64_notes

    made = ("`actgen/ops/<name>.py` (a functional `actgen.ops.<name>`, an `nn.Module` `actgen.ops.<ClassName>` "
            "and an autograd Function `actgen.ops.<ClassName>Function`)" if source is None else
            "`<out>/<name>.py` (a functional `<name>`, an `nn.Module` `<ClassName>` and an autograd Function "
            "`<ClassName>Function`)")
    lines = ["# The activation catalogue", "", _regenerate(source, out), "",
             f"{len(specs)} activation{'s' if len(specs) != 1 else ''}, each generated from its spec in `{source or 'specs/'}` by `actgen build` into "
             f"{made}.  Derivatives are the compiler's "
             "(after its stability rewrites); accuracy against a 50-digit oracle is in [accuracy.md](accuracy.md).",
             "", "| name | class | kind | torch equivalent |", "|---|---|---|---|"]
    for s in specs:
        lines.append(f"| [{s.name}](#{s.name}) | `{s.class_name}` | {_kind(s)} | {_torch_equivalent(s)} |")
    for s in specs:
        d = derive(s)
        where = "actgen.ops." if source is None else ""
        lines += ["", f"## {s.name}", "", f"`{where}{s.name}` / `{where}{s.class_name}`"
                  + (f" - drop-in for {_torch_equivalent(s)}" if _torch_equivalent(s) else ""), ""]
        if s.doc:
            lines += [" ".join(s.doc.split()), ""]
        lines.append(f"- formula: {_code(s.formula)}")
        lines.append(f"- inputs: {', '.join(s.inputs)}" + (" (the module, and the functional given one tensor, split it in halves along `dim`)" if s.gated else ""))
        if s.params:
            lines.append("- learnable params: " + ", ".join(
                f"`{p.name}` (init {p.init!r}{', per channel' if p.per_channel else ''})" for p in s.params))
        if s.constants:
            lines.append("- constants (after the params, by position or keyword): " + ", ".join(f"`{c.name}={c.default!r}`" for c in s.constants))
        if s.checks:
            lines.append("- checks (else a ValueError): " + "; ".join(
                f"`{sympy.sstr(c)}` ({m})" for c, m in s.checks))
        if s.modes:
            kw, pairs = s.modes
            lines.append(f"- modes (keyword argument `{kw}`): `{pairs[0][0]!r}` (this one, the default), "
                         + ", ".join(f"`{v!r}` ([{t}](#{t}))" for v, t in pairs[1:]))
        lines.append(f"- generated source: [actgen/ops/{s.name}.py](../actgen/ops/{s.name}.py)" if source is None else
                     f"- generated source: `<out>/{s.name}.py` (`actgen build {source} --out <out>`)")
        lines += ["", "As compiled (after stability rewrites):", "", "```"]
        lines.append(f"f = {sympy.sstr(d.expr)}")
        for n, e in d.first:
            lines.append(f"df/d{n} = {sympy.sstr(e)}")
        lines += draw_lines(s.expr)
        lines += ["```"]
        for note in float64_notes(d):
            lines += ["", "Precision (actgen/precision.py): " + note]
        lines += ["", f"![{s.name}: f and its derivative on [-6, 6]](plots/{s.name}.png)"]
    return "\n".join(lines) + "\n"


# --- accuracy.md ---------------------------------------------------------------------------------
_COLUMNS = (("torch", "float32"), ("triton", "float32"), ("triton", "bfloat16"))


def _severity(s: Score) -> tuple:
    """How badly a score misses: non-finite results first, then the worst error."""
    return s.bad_nonfinite, s.worst_scaled


def _worst(acc_part: dict, backend: str, dtype: str, out: str) -> Score:
    """f, or the worst of the df/d(input) outputs."""
    scores = [s for (b, d, o), s in acc_part.items() if b == backend and d == dtype and (o == "f") == (out == "f")]
    return max(scores, key=_severity)


def _cell(s: Score) -> str:
    text = f"{s.worst_scaled:.3g}" if s.worst_scaled < 1e4 else f"{s.worst_scaled:.1e}"
    if s.bad_nonfinite:
        text += f" ({s.bad_nonfinite}&nbsp;NaN/inf)"
    return f"**{text}**" if not s.meets_target else text


def dense_cell(s: Score) -> str:
    """A cell of a between-the-grid's-points table: the worst, with its input."""
    return _cell(s) + (f" at {s.worst_at:.6g}" if s.worst_at is not None and s.worst_scaled else "")


def misses(acc: Accuracy) -> set:
    """{(entry, "f" | "df" | "dp")} where the compiled op misses the target in any run, on the
    grid or between its points ("dp": a df/d(param))."""
    return {(acc.name, "f" if out == "f" else "df") for (_, _, out), s in (*acc.compiled.items(), *acc.dense.items())
            if not s.meets_target} | {(acc.name, "dp") for s in acc.params.values() if not s.meets_target}


REWRITE_EXAMPLES = (
    ("sqrt_minus", "sqrt(x**2 + 1) - x", "cancellation for large positive x"),
    ("log_cosh2", "log(exp(x) + exp(-x))", "exp overflows for |x| > 88 in float32"),
    ("one_minus_tanh", "1 - tanh(x)", "cancellation for large positive x"),
    ("gelu_erf", "x * (1 + erf(x / sqrt(2))) / 2", "1 + erf(u) cancels for u < 0 and underflows to 0 below -4"),
    ("log_one_plus_exp", "log(1 + exp(x))", "exp overflows for x > 88 in float32; 1 + exp(x) rounds to 1 for x < -17"),
    ("sinc", "sin(x) / x", "0/0 at x = 0; the slope's two terms (each ~1/x) cancel near it"),
)


def rewrite_example_specs() -> list[Spec]:
    return [load_spec(f"name: {n}\nformula: {f}\n", f"<{n}>") for n, f, _ in REWRITE_EXAMPLES]


def measured_on() -> str:
    """The machine the accuracy table is measured on, in words: its figures depend on it
    (torch's CPU functions and numpy's, which the interpreter's kernels call, take other
    paths on other vector extensions)."""
    from .bench import _lscpu, device_info

    info = device_info(torch.device("cpu"))
    flags = set(_lscpu().get("Flags", "").split())
    vector = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    triton_version = f", triton {info['triton']}" if info["triton"] else ""
    return (f"{info['name']}, {vector}; torch {info['torch']}{triton_version}, numpy {np.__version__}, "
            f"Python {info['python']}; {info['date'][:10]}")


def accuracy_markdown(results: Sequence[Accuracy], examples: Sequence[Accuracy], grid_size: int,
                      machine: str = "", step: float = 0.01, source: str | None = None, out: str | None = None) -> str:
    native_names, native_any = native_kernels_text()
    lines = [
        "# Accuracy against the truth", "", _regenerate(source, out), "",
        "Every catalogue entry is run on a grid of inputs and each result is compared with the truth: "
        "the spec's formula and its derivatives evaluated with mpmath at 50 significant digits (checked "
        "at 70, more where they disagree), from the sympy expression as parsed - before any stability "
        "rewrite, and independent of the printers that generate the code.",
        "",
        f"* **Grid**: {grid_size} float32 inputs - every multiple of {step:g} in [-20, 20], 200 log-spaced "
        f"magnitudes out to 1e4 on either side and 40 more from 1e4 to {HUGE_MAX:.0e} (float32's largest is "
        "3.4e38), 0, tiny values (1e-38, 1e-20, 1e-7) and the extremes "
        f"{', '.join('+-' + _short(v) for v in EXTREMES)} (rounded to each dtype).  A gated entry (a, b) takes b in turn "
        f"from {', '.join(map(str, GATE_VALUES))}.  Params are at their initial values, constants at their defaults.",
        "* **Runs**: the eager torch fallback in float32, and the Triton kernels in float32 and "
        "bfloat16 (run under Triton's interpreter on CPU, whose libdevice functions are numpy's; the kernels' float32 exp and log1p, IEEE divisions and fused multiply-adds round as on a GPU; benchmarks/results/cuda/accuracy.md runs them on one); "
        "outputs f and df/d(input) (backward with a gradient of ones).  Where a formula is one of torch's "
        f"activations ({native_names}), the fallback calls "
        "torch's own kernel on the inputs it is trusted with (actgen/native.py: a window of inputs per dtype and "
        "direction) and the derived code on the rest; on the grid's tensor, with its non-finite values, that is "
        f"torch's kernel only where it takes any input ({native_any}), "
        "and tests/test_core_native.py scores torch's kernels on the grid's points inside their windows.",
        *([f"* **Measured on**: {machine}.  The figures are this machine's: torch's CPU functions, and "
           "numpy's that the interpreter's kernels call, round differently on other vector extensions "
           "(by a few tenths of an ULP, here and there)."] if machine else []),
        "* **Error**: |result - truth| in ULPs of the truth in the result's dtype, divided by the "
        "condition number where that is above 1.  The condition number of an output g is the sum over "
        "its data v (inputs, params, constants, the formula's decimal literals) of |v dg/dv / g|: "
        "rounding the data by half an ULP alone moves the result by that many half-ULPs, so no "
        "evaluation can do better than a few ULP times it.  At well-conditioned points (condition "
        "number <= 1) the number is plain ULPs.",
        f"* **Target**: <= {TARGET_ULP:g} (ULPs where well-conditioned, ULPs per unit of condition elsewhere), and "
        "no result that is inf/NaN where the truth is finite (nor a wrong inf).  Where the true result is "
        "below 2^-102 in magnitude, an absolute error below 2^-102 counts as exact: float32 evaluation may "
        "pass through intermediates below the smallest normal number there (subnormal or flushed to zero).",
        "* **As written**: the same formula compiled as written - without the stability rewrites, the "
        "forms for huge inputs (clamps, hypot, Horner form, scaled ratios of polynomials) and the folded "
        "numbers; only the NaN and +-inf guards and common-subexpression elimination - on the f32 kernel: "
        "the before; the other columns are the after.",
        "",
        "Cells give the worst error over the grid (f, and the worst over the df/d(input)); **bold** "
        "misses the target, with the count of non-finite results where the truth is finite.",
        "",
        "| entry | f: fallback f32 | kernel f32 | kernel bf16 | as written | df: fallback f32 | kernel f32 | kernel bf16 | as written |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for acc in results:
        row = [f"[{acc.name}](catalogue.md#{acc.name})"]
        for out in ("f", "df"):
            row += [_cell(_worst(acc.compiled, b, d, out)) for b, d in _COLUMNS]
            row.append(_cell(_worst(acc.as_written, "triton", "float32", out)) if acc.as_written else "")
        lines.append("| " + " | ".join(row) + " |")
    dense = [a for a in results if a.dense]
    if dense:
        lines += [
            "", "## Between the grid's points", "",
            f"Every multiple of 2^{int(math.log2(DENSE_STEP))} in [-{DENSE_HALF_WIDTH:g}, {DENSE_HALF_WIDTH:g}] "
            f"({len(dense_points(DENSE_STEP, DENSE_HALF_WIDTH))} float32 inputs; a gated entry's b as above) "
            "is run on the fallback and the kernels in float32 and ranked by its error against the op's own eager fallback in float64, "
            "per unit of condition along the input; the "
            f"{DENSE_CONFIRM} worst points of each output and run are then scored against the mpmath "
            "truth as above.  Cells give the worst of those, with its input.", "",
            "| entry | f: fallback f32 | kernel f32 | df: fallback f32 | kernel f32 |",
            "|---|---|---|---|---|",
        ]
        for acc in dense:
            cells = []
            for out in ("f", "df"):
                for b, d in _COLUMNS[:2]:
                    cells.append(dense_cell(_worst(acc.dense, b, d, out)))
            lines.append(f"| [{acc.name}](catalogue.md#{acc.name}) | " + " | ".join(cells) + " |")
    learnable = [a for a in results if a.params]
    if learnable:
        lines += [
            "", "## Param gradients", "",
            "df/d(param) of every param, per element, against the mpmath truth on the same grid and with the same "
            "target: each param takes one value per input (at its initial value), as a param per channel over "
            "a (1, n) input does, so that its gradient is that input's df/d(param) rather than a sum.  An entry "
            "whose params are shared runs its formula compiled with per-channel params (the same derivatives).  "
            "Cells give the worst over the params, with its param and input.", "",
            "| entry | fallback f32 | kernel f32 |", "|---|---|---|",
        ]
        for acc in learnable:
            cells = []
            for b, d in _COLUMNS[:2]:
                (_, _, out), worst = max(((k, v) for k, v in acc.params.items() if k[:2] == (b, d)),
                                         key=lambda kv: _severity(kv[1]))
                cells.append(f"{dense_cell(worst)} ({out})")
            lines.append(f"| [{acc.name}](catalogue.md#{acc.name}) | " + " | ".join(cells) + " |")
    missed = sorted(set().union(*[misses(a) for a in results])) if results else []
    lines += ["", "## Where the target is missed", ""]
    if not missed:
        lines.append("Nowhere.")
    for name, out in missed:
        reason = KNOWN_MISSES.get((name, out), "not yet explained")
        acc = next(a for a in results if a.name == name)
        scored = acc.params.values() if out == "dp" else [
            s for (b, d, o), s in (*acc.compiled.items(), *acc.dense.items()) if (o == "f") == (out == "f")]
        worst = max(scored, key=_severity)
        where = f"worst {worst.worst_scaled:.3g} at {worst.worst_at:g}" if worst.worst_at is not None else ""
        if worst.bad_nonfinite:
            where += f"; non-finite at {worst.bad_nonfinite_at:g}"
        what = {"f": "f", "df": "derivative", "dp": "param gradient"}[out]
        lines.append(f"* **{name}** ({what}): {reason} ({where}).")
    lines += [
        "", "## The stability rewrites, before and after", "",
        "The compiler rewrites formulas that lose accuracy as written into equivalent stable forms "
        "(actgen/derive.py, `REWRITES`), automatically: stable primitives (softplus, sigmoid, log1p, "
        "expm1, erfc, log-sum-exp pivoting on the larger term, log-cosh, ratios of exponentials as "
        "sigmoids), cancellation-free forms guarded by a branch on the sign "
        "(sqrt(k u^2 + c) -+ sqrt(k) u through its conjugate), sech^2 for 1 - tanh^2, products of "
        "exponentials as one exponential, symbolic cancellation of sign and common denominators, and a "
        "Padé approximant near 0 for expressions whose terms cancel there (x - tanh(x)) or that divide 0/0 "
        "there (sin(x)/x, x/(exp(x) - 1): the value at 0 is the limit), also in p*x where a param scales the "
        "input (sin(a*x)/x; (exp(a*x) - 1)/a, x at a = 0); softplus(u) - u*sigmoid(u) from its two tails; "
        "t + t*expm1(u) as t*exp(u); comparisons that overflow or underflow as the sign they decide "
        "(x > a*x as (1 - a)*x > 0, 2*x**2 > 0 as |x| > 0); "
        "and after them, a "
        "function of exp(x) built from softplus, tanh, sigmoid and logs as one ratio of polynomials in "
        "exp(-|x|), each polynomial in Horner form, a sigmoid inside a costlier call from the same exponential "
        "(`exp_rational_form`: mish and its derivative, logish' from one exponential).  Last, a precision "
        "check (actgen/precision.py) evaluates each compiled form in float32 and float64 over a grid; where "
        "the float32 error, over its 20 worst points, is above 3.5 ULP per unit of condition (terms that "
        "cancel over an interval: the product rule's g + x g' in serf and tanh_exp), that direction is "
        "computed in float64 (on the kernels for float32 data; 16-bit data stays in float32).  The table above "
        "shows them on the catalogue (as written vs compiled); these ad-hoc formulas show the textbook cases:",
        "", "| formula | problem | f as written | f compiled | df as written | df compiled |", "|---|---|---|---|---|---|",
    ]
    for (name, formula, problem), acc in zip(REWRITE_EXAMPLES, examples):
        cells = []
        for out in ("f", "df"):
            cells += [_cell(_worst(acc.as_written, "triton", "float32", out)), _cell(_worst(acc.compiled, "triton", "float32", out))]
        lines.append(f"| `{formula}` | {problem} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def measure_example(spec: Spec, xs: np.ndarray) -> Accuracy:
    """measure() for an ad-hoc formula: compiled with actgen.compile, and as written."""
    oracle = Oracle(spec)
    acc = Accuracy(spec.name)
    pts = input_points(spec, round_to(xs, torch.float32))
    truth, cond, xcol = truth_at(oracle, pts)
    for which, fn in (("compiled", compiled_function(spec)), ("as_written", as_written_function(spec))):
        got = run(fn, spec, pts, torch.float32, "triton")
        for out, values in got.items():
            getattr(acc, which)[("triton", "float32", out)] = score(xcol, values, truth[out], torch.float32, cond[out])
    return acc


def _measure_one(args):
    spec, xs = args
    return measure(spec, xs, dense=True, param_grads=True)


def write_docs(specs_dir: Path = DEFAULT_SPECS, out: Path = DEFAULT_DOCS, *, accuracy: bool = True,
               plots: bool = True, step: float = 0.01, n_log: int = 200, jobs: int = 1,
               log: Callable[[str], None] = lambda _: None) -> list[Path]:
    """Generate out/catalogue.md, out/plots/*.png and (with accuracy) out/accuracy.md."""
    specs = load_specs([Path(specs_dir)])
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    path = out / "catalogue.md"
    source = None if Path(specs_dir).resolve() == Path(DEFAULT_SPECS).resolve() else str(specs_dir)
    out_arg = None if out.resolve() == Path(DEFAULT_DOCS).resolve() else str(out)
    path.write_text(catalogue_markdown(specs, source, out_arg), encoding="utf-8", newline="\n")
    written.append(path)
    if plots:
        for s in specs:
            written.append(plot(s, out / "plots" / f"{s.name}.png"))
        names = {s.name for s in specs}
        for stale in sorted((out / "plots").glob("*.png")):
            if stale.stem not in names:          # an entry that is gone
                stale.unlink()
        log(f"{len(specs)} plots")
    if accuracy:
        xs = grid(step, n_log)
        if jobs > 1:
            import multiprocessing

            _scratch()          # made here, the workers write into it and this process removes it
            with multiprocessing.get_context("fork").Pool(jobs) as pool:
                results = []
                for acc in pool.imap(_measure_one, [(s, xs) for s in specs]):
                    log(f"accuracy: {acc.name}")
                    results.append(acc)
        else:
            results = []
            for s in specs:
                results.append(measure(s, xs, dense=True, param_grads=True))
                log(f"accuracy: {s.name}")
        examples = [measure_example(s, xs) for s in rewrite_example_specs()]
        path = out / "accuracy.md"
        path.write_text(accuracy_markdown(results, examples, len(round_to(xs, torch.float32)), measured_on(), step, source, out_arg),
                        encoding="utf-8", newline="\n")
        written.append(path)
    return written
