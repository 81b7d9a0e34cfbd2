"""The generated kernels on a real GPU, against the same truth as docs/accuracy.md.

docs/accuracy.md runs the kernels under Triton's interpreter on CPU.  This module runs them
on the GPU itself, in two steps, so that the GPU is needed only for the first:

* `collect` (on the GPU): every catalogue entry's kernels in float32 and bfloat16 at the docs
  grid's points, and between the grid's points (every multiple of 2**-12 in [-8, 8], in
  float32, ranked against the op's float64 fallback on the same GPU, the worst kept); the
  param gradients of every learnable entry, at sizes that run the default launch and the
  tuned, stepping ones, against its float64 fallback; the kernels' exp and log1p against
  float64, and the 16-bit kernels' log1p and erfc; compiled variants launched directly, and
  through torch's launcher for Triton's cubins where torch has it, against launches through
  Triton's JIT, and variants a fresh process loads from the variant store against the
  process that recorded them (bitwise).
  Written to one .npz file.
* `score` (anywhere): the mpmath oracle scores the collected values as `actgen docs` scores
  the interpreter's; a markdown report.

    python -m actgen.device_accuracy collect --device cuda --out gpu.npz
    python -m actgen.device_accuracy score gpu.npz --out benchmarks/results/cuda/accuracy.md
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from .catalogue import (DEFAULT_SPECS, DENSE_CONFIRM, KNOWN_MISSES, Accuracy, Oracle, _cell, _worst, dense_cell,
                        dense_inputs, grid, input_points, misses, op_function, rank_dense, round_to, run, score,
                        score_dense, truth_at)
from .precision import DENSE_HALF_WIDTH, DENSE_STEP
from .spec import Spec, load_specs

GRID_RUNS = (torch.float32, torch.bfloat16)
DENSE_RUN = (("triton", torch.float32),)
CHANNELS = 64
#: (shape, channel_dim) of the param-gradient checks: odd sizes that run the default launch,
#: and 2**22 elements, where launches are tuned and the stepping param-gradient kernels run.
PARAM_SHAPES_FLAT = (((1_000_003,), 1), ((1 << 22,), 1))
PARAM_SHAPES_CHANNELS = (((3, CHANNELS, 1001), 1), ((1001, CHANNELS), -1),
                         ((4, CHANNELS, 1 << 14), 1), ((1 << 16, CHANNELS), -1))
#: A kernel's param gradient may be at most this many times further from the float64 truth
#: than torch's own float32 sum of the same terms (the fallback in float32), plus this
#: relative slack: a race or a wrong index is off by far more.
PARAM_GRAD_FACTOR = 10.0
PARAM_GRAD_SLACK = 1e-6


def _key(*parts) -> str:
    return "|".join(str(p).replace("torch.", "") for p in parts)


# --- collecting (on the GPU) ---------------------------------------------------------------------
def collect_values(spec: Spec, xs: np.ndarray, device) -> dict[str, np.ndarray]:
    """The kernels' outputs at the grid's points (GRID_RUNS) and, between them, the
    DENSE_CONFIRM worst of each output in float32 (their indices and values)."""
    arrays = {}
    for dtype in GRID_RUNS:
        pts = input_points(spec, round_to(xs, dtype))
        for out, values in run(op_function(spec), spec, pts, dtype, "triton", device=device).items():
            arrays[_key("grid", dtype, out)] = values.astype(np.float32)
    chosen, runs_out = rank_dense(spec, dense_inputs(spec), DENSE_RUN, DENSE_CONFIRM, device=device)
    arrays[_key("dense", "chosen")] = np.array(chosen, dtype=np.int64)
    for (_, dtype), got in runs_out.items():
        for out, values in got.items():
            arrays[_key("dense", dtype, out)] = values[chosen].astype(np.float32)
    return arrays


def _param_arguments(spec: Spec, shape, channel_dim, device, gen):
    xs = [torch.randn(shape, generator=gen, device=device) * 2 for _ in spec.inputs]
    channels = shape[channel_dim] if len(shape) > 1 else 1
    ps = [p.init + 0.1 + 0.2 * torch.rand((channels if p.per_channel else 1,), generator=gen, device=device)
          for p in spec.params]
    return xs, ps, torch.randn(shape, generator=gen, device=device)


def _grads(fn, xs, ps, grad_out, dtype, backend, kwargs):
    from .runtime import use_backend

    xs = [x.to(dtype).requires_grad_() for x in xs]
    ps = [p.to(dtype).requires_grad_() for p in ps]
    with use_backend(backend):
        y = fn(*xs, *ps, **kwargs)
        return torch.autograd.grad(y, ps, grad_out.to(dtype))


def check_param_grads(spec: Spec, device, shapes=None) -> list[dict]:
    """Every param gradient of the kernels in float32 against the float64 fallback, next to
    the float32 fallback's (torch's own reductions) error from the same truth."""
    if not spec.params:
        return []
    per_channel = any(p.per_channel for p in spec.params)
    shapes = shapes or (PARAM_SHAPES_CHANNELS if per_channel else PARAM_SHAPES_FLAT)
    fn = op_function(spec)
    rows = []
    for k, (shape, channel_dim) in enumerate(shapes):
        gen = torch.Generator(device=device).manual_seed(k)
        xs, ps, grad_out = _param_arguments(spec, shape, channel_dim, device, gen)
        kwargs = {"channel_dim": channel_dim} if per_channel else {}
        truth = _grads(fn, xs, ps, grad_out, torch.float64, "torch", kwargs)
        kernel = _grads(fn, xs, ps, grad_out, torch.float32, "triton", kwargs)
        eager = _grads(fn, xs, ps, grad_out, torch.float32, "torch", kwargs)
        for p, t, g, e in zip(spec.params, truth, kernel, eager):
            scale = t.abs().max().clamp_min(1e-30)
            k_err = float(((g.double() - t).abs().max() / scale).item())
            e_err = float(((e.double() - t).abs().max() / scale).item())
            rows.append({"entry": spec.name, "param": p.name, "shape": list(shape), "channel_dim": channel_dim,
                         "kernel_rel_err": k_err, "fallback_f32_rel_err": e_err,
                         "ok": bool(math.isfinite(k_err) and k_err <= PARAM_GRAD_FACTOR * e_err + PARAM_GRAD_SLACK)})
    return rows


from .runtime import HAS_TRITON  # noqa: E402

if HAS_TRITON:
    from .runtime.triton_lang import FP_FUSION, erfc as _erfc, exp as _exp, log1p as _log1p, tl, triton

    # the kernels' exp, log1p and erfc over a tensor (the CPU tests run these too); FAST: the
    # forms of kernels whose data is 16-bit, computed in float32 all the same
    @triton.jit
    def exp_kernel(x_ptr, out_ptr, n, BLOCK: tl.constexpr, FAST: tl.constexpr = False):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        tl.store(out_ptr + offs, _exp(tl.load(x_ptr + offs, mask=mask), FAST), mask=mask)

    @triton.jit
    def log1p_kernel(x_ptr, out_ptr, n, BLOCK: tl.constexpr, FAST: tl.constexpr = False):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        tl.store(out_ptr + offs, _log1p(tl.load(x_ptr + offs, mask=mask), FAST), mask=mask)

    @triton.jit
    def erfc_kernel(x_ptr, out_ptr, n, BLOCK: tl.constexpr, FAST: tl.constexpr = False):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        tl.store(out_ptr + offs, _erfc(tl.load(x_ptr + offs, mask=mask), FAST), mask=mask)


def _run_float32(kernel, xs, device, fast: bool = False):
    """kernel over xs rounded to float32, on device: (those inputs, the results) as float64."""
    x = torch.from_numpy(np.asarray(xs)).to(torch.float32).to(device)
    out = torch.empty_like(x)
    kernel[(triton.cdiv(len(x), 1024),)](x, out, len(x), BLOCK=1024, FAST=fast, **FP_FUSION)
    return x.double().cpu().numpy(), out.double().cpu().numpy()


#: The 16-bit kernels' log1p and erfc (FAST) are within this of the truth, relative, wherever
#: it is a normal float32: far below bfloat16's and float16's half-ULP (2**-9, 2**-11).
FAST16_REL_BOUND = 2.0**-14


def fast16_inputs() -> tuple[np.ndarray, np.ndarray]:
    """(log1p's inputs, erfc's) for check_fast16: both sides of log1p's switch at 2**-7 and
    its whole range, erfc through its tail to underflow."""
    rng = np.random.default_rng(1)
    u = np.concatenate([rng.uniform(-1, 1, 200_000), np.exp(rng.uniform(-100, 88, 50_000)),
                        -np.exp(rng.uniform(-100, -0.001, 50_000)), np.linspace(-0.01, 0.01, 20_001)])
    z = np.concatenate([np.arange(-10 * 2**10, 10 * 2**10 + 1) / 2**10, rng.uniform(-10, 10, 100_000)])
    return u.astype(np.float32), z.astype(np.float32)


def _max_rel_normal(got, want) -> float:
    ok = np.isfinite(want) & (np.abs(want) >= 2.0**-126)
    return float((np.abs(got[ok] - want[ok]) / np.abs(want[ok])).max())


def check_fast16(device) -> dict:
    """The 16-bit kernels' log1p (series, then the special-function unit's log2) and erfc
    (Numerical Recipes' fit with its exp2) in float32 on the device against float64: worst
    relative error where the truth is a normal float32; and log1p's -0, -inf at -1, NaN below
    -1 and for NaN, inf at inf, erfc's 2 and 0 at -inf and inf."""
    u, z = fast16_inputs()
    got, want, log1p_specials = _run_log1p(u, device, fast=True)
    zx, zgot = _run_float32(erfc_kernel, np.concatenate([z, np.float32([-np.inf, np.inf, np.nan])]), device, fast=True)
    m = len(z)
    zwant = np.array([math.erfc(v) for v in zx[:m]])
    return {"points": int(len(u) + m), "log1p_max_rel": _max_rel_normal(got, want),
            "erfc_max_rel": _max_rel_normal(zgot[:m], zwant),
            "specials_as_expected": bool(log1p_specials and zgot[m] == 2.0 and zgot[m + 1] == 0.0
                                         and np.isnan(zgot[m + 2]))}


def _worst_ulp_normal(got, want) -> float:
    """The worst |got - want| in float32 ULPs of want, where want is a normal float32."""
    with np.errstate(over="ignore", invalid="ignore"):
        size = np.abs(want)
        normal = np.isfinite(want) & (size >= 2.0**-126) & (size <= np.finfo(np.float32).max)
        spacing = np.spacing(size[normal].astype(np.float32)).astype(np.float64)
        return float((np.abs(got - want)[normal] / spacing).max())


def check_exp(device, n_uniform: int = 4_000_000) -> dict:
    """The kernels' float32 exp against float64 on the device: worst ULP where the result is a
    normal float32, worst absolute error below, and whether inf/0/NaN come out where exp's do."""
    rng = np.random.default_rng(0)
    xs = np.concatenate([np.arange(-8 * 2**12, 8 * 2**12 + 1) / 2**12, rng.uniform(-104, 89, n_uniform),
                         [-np.inf, np.inf, np.nan, 88.72283, 88.72284, 89.0, 1e30, -87.33654, -103.97, -104.5, -1e30]])
    x, got = _run_float32(exp_kernel, xs, device)
    with np.errstate(over="ignore", invalid="ignore"):        # inf - inf past float32's range
        want = np.exp(x)
        error = np.abs(got - want)
    big = want > np.finfo(np.float32).max
    return {"points": int(len(xs)), "max_ulp_normal": _worst_ulp_normal(got, want),
            "max_abs_subnormal": float(error[want < 2.0**-126].max()),
            "inf_where_expected": bool(np.array_equal(np.isposinf(got), big)),
            "nan_where_expected": bool(np.isnan(got[np.isnan(want)]).all()),
            "zero_at_minus_inf": bool(got[np.isneginf(xs)][0] == 0.0)}


def check_log1p(device, n_uniform: int = 4_000_000) -> dict:
    """The kernels' float32 log1p against float64 on the device: worst ULP where the result is a
    normal float32, and whether -0, -1, below -1, inf and NaN give -0, -inf, NaN, inf and NaN."""
    rng = np.random.default_rng(0)
    xs = np.concatenate([np.arange(-2**12 + 1, 8 * 2**12 + 1) / 2**12, rng.uniform(-1, 1, n_uniform // 2),
                         np.exp(rng.uniform(-100, 88, n_uniform // 4)), -np.exp(rng.uniform(-100, 0, n_uniform // 4))])
    got, want, specials = _run_log1p(xs, device)
    return {"points": int(len(xs) + len(LOG1P_SPECIALS)), "max_ulp_normal": _worst_ulp_normal(got, want),
            "specials_as_expected": specials}


#: log1p's special inputs: -0, -1, below -1, inf and NaN give -0, -inf, NaN, inf and NaN.
LOG1P_SPECIALS = (-0.0, -1.0, -2.0, np.inf, np.nan)


def _run_log1p(us, device, fast: bool = False):
    """log1p_kernel over us and LOG1P_SPECIALS: (its results on us, float64 log1p of us as
    rounded to float32, whether the specials came out as log1p's)."""
    x, got = _run_float32(log1p_kernel, np.concatenate([np.asarray(us, np.float64), LOG1P_SPECIALS]), device, fast)
    n = len(us)
    with np.errstate(divide="ignore", invalid="ignore"):
        want = np.log1p(x[:n])
    s = got[n:]
    specials = bool(s[0] == 0 and math.copysign(1, s[0]) < 0 and s[1] == -np.inf and np.isnan(s[2])
                    and s[3] == np.inf and np.isnan(s[4]))
    return got[:n], want, specials


#: check_direct_launch's calls: a flat op, per-channel params (their gradients), random
#: draws (training mode), two inputs, the halves of one tensor (rows apart, their gradients
#: one buffer), shared params.
DIRECT_LAUNCH_CASES = {
    "silu": lambda ops, xs, ps: ops.silu(xs[0]),
    "prelu": lambda ops, xs, ps: ops.prelu(xs[0], ps[0]),
    "rrelu": lambda ops, xs, ps: ops.rrelu(xs[0], training=True),
    "swiglu": lambda ops, xs, ps: ops.swiglu(xs[0], xs[1]),
    "swiglu_halves": lambda ops, xs, ps: ops.swiglu(torch.cat(xs, -1)),
    "polynomial": lambda ops, xs, ps: ops.polynomial(xs[0], *ps[1:]),
}


def _launch_outputs(name, dtype, device) -> list:
    """DIRECT_LAUNCH_CASES[name] forward and backward: the output and every gradient."""
    import actgen.ops as ops

    gen = torch.Generator(device=device).manual_seed(0)
    # (under the interpreter on CPU, where the check only shows that it runs and tells equal
    # from unequal, fewer elements: its time goes by the programs it runs)
    shape = (2, CHANNELS, 17) if torch.device(device).type == "cpu" else (8, CHANNELS, 129)
    xs = [torch.randn(shape, generator=gen, device=device).to(dtype).requires_grad_() for _ in range(2)]
    ps = [(0.5 + torch.rand(n, generator=gen, device=device)).to(dtype).requires_grad_() for n in (CHANNELS, 1, 1, 1, 1)]
    torch.manual_seed(0)                        # rrelu's seed: the same draws every run
    y = DIRECT_LAUNCH_CASES[name](ops, xs, ps)
    leaves = [t for t in xs + ps if t.requires_grad]
    grads = torch.autograd.grad(y, leaves, torch.randn(shape, generator=gen, device=device).to(dtype), allow_unused=True)
    return [y.detach()] + [g for g in grads if g is not None]


def _against_jit(device, other) -> list[str]:
    """DIRECT_LAUNCH_CASES in float32 and bfloat16, each run through Triton's JIT alone (the
    process's launcher turned off), then twice through the launcher `other` (the first
    compiles or finds each variant, the second launches it as `other` does, by the launch
    plans of the earlier runs where the op has them); the cases whose outputs and gradients
    are not bitwise equal."""
    from .runtime import launch, use_backend

    own = launch.LAUNCH
    on = own.enabled
    mismatches = []
    try:
        with use_backend("triton"):
            for name in DIRECT_LAUNCH_CASES:
                for dtype in (torch.float32, torch.bfloat16):
                    launch.LAUNCH, own.enabled = own, False
                    want = _launch_outputs(name, dtype, device)
                    own.enabled, launch.LAUNCH = on, other
                    _launch_outputs(name, dtype, device)
                    got = _launch_outputs(name, dtype, device)
                    if len(got) != len(want) or not all(torch.equal(a, b) for a, b in zip(got, want)):
                        mismatches.append(f"{name} {str(dtype).removeprefix('torch.')}")
    finally:
        launch.LAUNCH, own.enabled = own, on
    return mismatches


def check_direct_launch(device) -> dict:
    """Compiled kernel variants launched directly (actgen.runtime.variants) against launches
    through Triton's JIT (_against_jit, with the process's launcher); the outputs and
    gradients must be bitwise equal."""
    from .runtime import launch

    launcher = launch.LAUNCH
    before = launcher.direct
    mismatches = _against_jit(device, launcher)
    return {"cases": 2 * len(DIRECT_LAUNCH_CASES), "direct_launches": launcher.direct - before, "mismatches": mismatches}


def check_static_launch(device) -> dict:
    """Compiled kernel variants launched through torch's launcher for Triton's cubins
    (actgen.runtime.static_launch, ACTGEN_STATIC_LAUNCH=1) against launches through Triton's
    JIT (_against_jit, with a launcher of static launches); the outputs and gradients must be
    bitwise equal, and every variant that launcher kept must be one of torch's launcher."""
    from .runtime import static_launch, variants

    if not static_launch.available():
        return {"available": False}
    static = variants.Launcher(enabled=True, store=None, static=True)
    mismatches = _against_jit(device, static)
    statics = sum(v.__class__ is static_launch.StaticKernel for v in static.variants.values())
    return {"available": True, "cases": 2 * len(DIRECT_LAUNCH_CASES), "still_static": static.static,
            "static_variants": statics, "variants": len(static.variants), "launches": static.direct,
            "mismatches": mismatches}


# A fresh process for check_variant_store: argv = device, output file.
_STORE_PROBE = """\
import json, sys
from actgen.device_accuracy import store_probe
print("ACTGEN_STORE " + json.dumps(store_probe(sys.argv[1], sys.argv[2])))
"""


def store_probe(device, out) -> dict:
    """DIRECT_LAUNCH_CASES in float32 and bfloat16, as a fresh process's first calls: their
    outputs and gradients saved to `out`; the first case's time (torch's own first backward
    taken before it), and what the launcher loaded from or recorded in the variant store."""
    from .runtime import launch, use_backend

    w = torch.ones(8, device=device, requires_grad=True)
    torch.autograd.grad(w * 2, [w], torch.ones_like(w))
    results, first = {}, None
    with use_backend("triton"):
        for name in DIRECT_LAUNCH_CASES:
            for dtype in (torch.float32, torch.bfloat16):
                t = time.perf_counter()
                outputs = _launch_outputs(name, dtype, device)
                if torch.device(device).type == "cuda":
                    torch.cuda.synchronize(device)
                first = time.perf_counter() - t if first is None else first
                results[f"{name} {str(dtype).removeprefix('torch.')}"] = [o.cpu() for o in outputs]
    torch.save(results, out)
    store = launch.LAUNCH.store
    return {"first_case_s": first, "loaded": store.loaded if store else 0, "recorded": store.recorded if store else 0,
            "direct": launch.LAUNCH.direct, "static": launch.LAUNCH.static}


def _store_run(device, directory: Path, k: int, env=None) -> tuple[dict, dict]:
    """store_probe in a fresh process whose variant store is in `directory` (Triton's cache is
    this process's), with env added to this process's environment: its outputs, and what it says."""
    from .bench import fresh_process

    out = directory / f"run{k}.pt"
    said = fresh_process(_STORE_PROBE, [str(device), str(out)],
                         dict(os.environ, ACTGEN_CACHE_DIR=str(directory / "actgen"), **(env or {})), "ACTGEN_STORE", 1800)
    return torch.load(out), said


def _differing(want: dict, got: dict) -> list[str]:
    return [case for case, w in want.items()
            if len(got.get(case, ())) != len(w) or not all(torch.equal(a, b) for a, b in zip(got[case], w))]


def check_variant_store(device, run=_store_run) -> dict:
    """Compiled variants found again in a fresh process (actgen.runtime.variant_store): two
    fresh processes run DIRECT_LAUNCH_CASES with an empty store between them; the first
    launches through Triton's JIT and records its variants, the second loads them from the
    store; their outputs and gradients must be bitwise equal.  Where torch has its launcher
    for Triton's cubins, a third process loads them through it (ACTGEN_STATIC_LAUNCH=1,
    Triton's driver not started), bitwise equal too."""
    import tempfile

    from .runtime import static_launch

    third = None
    with tempfile.TemporaryDirectory(prefix="actgen-store-") as tmp:
        (first, said_first), (second, said_second) = (run(device, Path(tmp), k) for k in range(2))
        if static_launch.available():
            third = run(device, Path(tmp), 2, {"ACTGEN_STATIC_LAUNCH": "1"})
    out = {"cases": len(first), "recorded": said_first["recorded"], "loaded": said_second["loaded"],
           "recorded_again": said_second["recorded"],
           "first_case_s": [said_first["first_case_s"], said_second["first_case_s"]], "mismatches": _differing(first, second)}
    if third is not None:
        got, said = third
        out["static"] = {"loaded": said["loaded"], "recorded": said["recorded"], "on": said.get("static", False),
                         "first_case_s": said["first_case_s"], "mismatches": _differing(first, got)}
    return out


def _collect_worker(args):
    name, specs_dir, device = args
    spec = next(s for s in load_specs([Path(specs_dir)]) if s.name == name)
    t = time.perf_counter()
    arrays = collect_values(spec, grid(), device)
    rows = check_param_grads(spec, device)
    return name, arrays, rows, time.perf_counter() - t


def device_info(device) -> dict:
    import platform

    import triton

    d = torch.device(device)
    from .version import COMPILER_VERSION

    info = {"device": torch.cuda.get_device_name(d) if d.type == "cuda" else platform.processor() or "cpu",
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "torch": torch.__version__,
            "triton": triton.__version__, "python": platform.python_version(), "compiler": COMPILER_VERSION}
    if d.type == "cuda":
        info["cuda"] = torch.version.cuda
    return info


def collect(specs_dir: Path, device: str, out: Path, jobs: int = 1, names=None, log=print) -> Path:
    """Run every entry on device (jobs processes), and write the values and checks to out (.npz)."""
    specs = [s for s in load_specs([Path(specs_dir)]) if not names or s.name in names]
    tasks = [(s.name, str(specs_dir), device) for s in specs]
    arrays: dict[str, np.ndarray] = {}
    param_rows, failures = [], {}
    t0 = time.perf_counter()
    if jobs > 1:
        import multiprocessing

        with multiprocessing.get_context("spawn").Pool(jobs) as pool:
            results = pool.imap_unordered(_safe_worker, tasks)
            results = list(_logged(results, log, t0))
    else:
        results = list(_logged(map(_safe_worker, tasks), log, t0))
    for name, got, rows, error in results:
        if error:
            failures[name] = error
            continue
        arrays.update({_key(name, k): v for k, v in got.items()})
        param_rows += rows
    meta = {"info": device_info(device), "entries": sorted(s.name for s in specs), "failures": failures,
            "param_grads": param_rows, "exp": _safe(check_exp, device), "log1p": _safe(check_log1p, device),
            "fast16": _safe(check_fast16, device), "direct_launch": _safe(check_direct_launch, device),
            "static_launch": _safe(check_static_launch, device),
            "variant_store": _safe(check_variant_store, device), "seconds": time.perf_counter() - t0}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, meta=np.array(json.dumps(meta)), **arrays)
    return out


def _safe(check, device) -> dict:
    try:
        return check(device)
    except Exception as exc:  # noqa: BLE001 - the entries' values are kept
        return {"error": _error_text(exc)}


def _safe_worker(args):
    try:
        name, got, rows, _ = _collect_worker(args)
        return name, got, rows, None
    except Exception as exc:  # noqa: BLE001 - recorded per entry, the others go on
        return args[0], {}, [], _error_text(exc)


def _error_text(exc: BaseException) -> str:
    """An exception as one short line: its type and the first line of its message."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"[:300]


def _logged(results, log, t0):
    for r in results:
        log(f"[{time.perf_counter() - t0:6.1f}s] {r[0]}" + (f": {r[3]}" if r[3] else ""))
        yield r


# --- scoring (anywhere) -----------------------------------------------------------------------
def load(path: Path) -> tuple[dict, dict]:
    with np.load(path, allow_pickle=False) as data:
        meta = json.loads(str(data["meta"]))
        arrays = {k: data[k] for k in data.files if k != "meta"}
    return meta, arrays


def score_entry(spec: Spec, arrays: dict, xs: np.ndarray, oracle: Oracle | None = None) -> Accuracy:
    """The collected values of one entry scored against the oracle, as catalogue.measure scores
    the interpreter's: acc.compiled from the grid, acc.dense from between its points."""
    oracle = oracle or Oracle(spec)
    acc = Accuracy(spec.name)
    outputs = ["f"] + [f"df/d{n}" for n in spec.inputs]
    for dtype in GRID_RUNS:
        truth, cond, xcol = truth_at(oracle, input_points(spec, round_to(xs, dtype)))
        for out in outputs:
            got = arrays[_key(spec.name, "grid", dtype, out)].astype(np.float64)
            acc.compiled[("triton", str(dtype).replace("torch.", ""), out)] = score(xcol, got, truth[out], dtype, cond[out])
    chosen = arrays[_key(spec.name, "dense", "chosen")].tolist()
    runs_out = {("triton", torch.float32): {out: arrays[_key(spec.name, "dense", torch.float32, out)].astype(np.float64)
                                            for out in outputs}}
    acc.dense = score_dense(spec, dense_inputs(spec), chosen, runs_out, oracle)
    return acc


def _score_one(args):
    spec, arrays, xs = args
    return score_entry(spec, arrays, xs)


def report(meta: dict, results: list[Accuracy], grid_size: int) -> str:
    info = meta["info"]
    lines = [
        "# The kernels on a GPU: accuracy against the truth", "",
        f"Measured on {info['device']}, {info['date']} (torch {info['torch']}, triton {info['triton']}"
        + (f", CUDA {info['cuda']}" if info.get("cuda") else "")
        + (f"; kernels of actgen compiler version {info['compiler']}" if info.get("compiler") else "") + "). Regenerate on a GPU with "
        "`python -m actgen.device_accuracy collect --device cuda --out gpu.npz`, then "
        "`python -m actgen.device_accuracy score gpu.npz --out benchmarks/results/cuda/accuracy.md`.", "",
        "The Triton kernels of every catalogue entry, compiled for and run on this GPU, scored against the "
        "same mpmath truth and on the same points as [docs/accuracy.md](../../../docs/accuracy.md) (which runs "
        f"them under Triton's interpreter): the grid ({grid_size} float32 inputs, extremes included) in float32 and "
        f"bfloat16, and every multiple of 2^{int(math.log2(DENSE_STEP))} in [-{DENSE_HALF_WIDTH:g}, {DENSE_HALF_WIDTH:g}] "
        "in float32, ranked on the GPU against the op's float64 fallback, "
        f"its {DENSE_CONFIRM} worst points per output scored. Cells: worst ULPs per unit of condition (f, and the worst "
        "df/d(input)); **bold** misses the target (4, and no inf/NaN where the truth is finite).", "",
        "| entry | f: kernel f32 | kernel bf16 | between points f32 | df: kernel f32 | kernel bf16 | between points f32 |",
        "|---|---|---|---|---|---|---|",
    ]
    for acc in results:
        row = [f"[{acc.name}](../../../docs/catalogue.md#{acc.name})"]
        for out in ("f", "df"):
            row += [_cell(_worst(acc.compiled, "triton", d, out)) for d in ("float32", "bfloat16")]
            row.append(dense_cell(_worst(acc.dense, "triton", "float32", out)))
        lines.append("| " + " | ".join(row) + " |")
    missed = sorted(set().union(*[misses(a) for a in results])) if results else []
    lines += ["", "## Where the target is missed", ""]
    if not missed:
        lines.append("Nowhere.")
    for name, out in missed:
        known = KNOWN_MISSES.get((name, out))
        lines.append(f"* **{name}** ({'f' if out == 'f' else 'derivative'}): "
                     + (f"as under the interpreter (docs/accuracy.md): {known}" if known else "**not a known miss**"))
    if meta["failures"]:
        lines += ["", "## Entries that failed to run", ""]
        lines += [f"* **{k}**: {v}" for k, v in sorted(meta["failures"].items())]
    rows = meta["param_grads"]
    bad = [r for r in rows if not r["ok"]]
    lines += [
        "", "## Param gradients", "",
        "Every learnable entry's param gradients from the kernels (float32; per-program partial sums, finished "
        "by a torch sum) against its float64 fallback, next to the float32 fallback's (torch's own reductions) "
        "error from the same truth: max |error| / max |truth| over the param's entries. Shapes: odd sizes "
        "(the default launch) and 2^22 elements (tuned launches, stepping programs); per-channel entries "
        f"with {CHANNELS} channels, channels first and last. A gradient passes within "
        f"{PARAM_GRAD_FACTOR:g}x the fallback's error + {PARAM_GRAD_SLACK:g}.", "",
        f"**{len(rows) - len(bad)} of {len(rows)} pass.**" + (" Failing:" if bad else ""), "",
        "| entry | param | shape | channel dim | kernel | fallback f32 | |", "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['entry']} | {r['param']} | {tuple(r['shape'])} | {r['channel_dim']} | "
                     f"{r['kernel_rel_err']:.2e} | {r['fallback_f32_rel_err']:.2e} | {'ok' if r['ok'] else '**FAIL**'} |")
    e = meta["exp"]
    lines += [
        "", "## The kernels' exp", "",
        f"float32 exp from arithmetic (actgen.runtime.triton_lang.exp) on {e['points']} inputs (every multiple of "
        "2^-12 in [-8, 8], uniform points in [-104, 89], the edges of float32's range, +-inf, NaN) against float64: "
        f"worst {e['max_ulp_normal']:.3f} ULP where the result is a normal float32; worst absolute error "
        f"{e['max_abs_subnormal']:.3g} below it (2^-149 = 1.4e-45 is one subnormal step); inf where exp overflows: "
        f"{'yes' if e['inf_where_expected'] else '**no**'}; NaN for NaN: {'yes' if e['nan_where_expected'] else '**no**'}; "
        f"0 at -inf: {'yes' if e['zero_at_minus_inf'] else '**no**'}.", "",
    ]
    g = meta.get("log1p")          # collected from compiler version 9 on
    if g and "error" not in g:
        lines += [
            "## The kernels' log1p", "",
            f"float32 log1p from arithmetic (actgen.runtime.triton_lang.log1p) on {g['points']} inputs (every "
            "multiple of 2^-12 in (-1, 8], uniform points in (-1, 1), magnitudes out to 1.6e38 and down to 1e-44 "
            f"on either side) against float64: worst {g['max_ulp_normal']:.3f} ULP where the result is a normal "
            f"float32; -0, -inf at -1, NaN below -1 and for NaN, inf at inf: "
            f"{'yes' if g['specials_as_expected'] else '**no**'}.", "",
        ]
    elif g:
        lines += ["## The kernels' log1p", "", f"**not checked**: {g['error']}", ""]
    h = meta.get("fast16")         # collected from compiler version 11 on
    if h and "error" not in h:
        bound = FAST16_REL_BOUND
        lines += [
            "## The 16-bit kernels' log1p and erfc", "",
            "What bfloat16 and float16 kernels compute log1p and erfc with, in float32 (actgen.runtime.triton_lang, "
            "FAST: the special-function unit's log2 and exp2), against float64 on "
            f"{h['points']} inputs: worst relative error {h['log1p_max_rel']:.3g} (log1p) and {h['erfc_max_rel']:.3g} "
            f"(erfc) where the truth is a normal float32, "
            + ("within" if max(h["log1p_max_rel"], h["erfc_max_rel"]) <= bound else "**beyond**")
            + f" the bound of 2^{int(math.log2(bound))} (bfloat16's half-ULP is 2^-9); special values as expected: "
            f"{'yes' if h['specials_as_expected'] else '**no**'}.", "",
        ]
    elif h:
        lines += ["## The 16-bit kernels' log1p and erfc", "", f"**not checked**: {h['error']}", ""]
    lines += _bitwise_section(
        "## Direct launches", meta.get("direct_launch"), "direct_launches",       # from compiler version 15 on
        "**no direct launch was made** (turned off)",
        lambda d, verdict: "Compiled kernel variants launched again without Triton's per-call binding "
        f"(actgen.runtime.variants), against launches through Triton's JIT, bitwise, forward and backward: "
        f"{d['cases']} cases ({', '.join(DIRECT_LAUNCH_CASES)}; float32 and bfloat16), {d['direct_launches']} direct "
        f"launches: {verdict}.")
    static = meta.get("static_launch")
    if static and static.get("available") is False:
        lines += ["## Launches through torch's launcher", "", "**not checked**: this torch has no launcher for "
                  "Triton's cubins (torch._C._StaticCudaLauncher)", ""]
    else:
        lines += _bitwise_section(
            "## Launches through torch's launcher", static, "launches",
            "**no launch went through torch's launcher**",
            lambda d, verdict: "Compiled kernel variants launched through torch's launcher for Triton's cubins "
            "(actgen.runtime.static_launch, ACTGEN_STATIC_LAUNCH=1), against launches through Triton's JIT, "
            f"bitwise, forward and backward: {d['cases']} cases, {d['launches']} launches through torch's launcher, "
            f"{d['static_variants']} of {d['variants']} variants loaded through it"
            + ("" if d["still_static"] else " (**it refused a launch**: Triton's launcher took over)")
            + f": {verdict}.")
    lines += _bitwise_section(
        "## Variants found again in a fresh process", meta.get("variant_store"), "loaded",
        "**no variant was loaded from the store**",
        lambda v, verdict: "Two fresh processes ran the direct-launch cases forward and backward (float32 and "
        "bfloat16) with an empty variant store between them (actgen.runtime.variant_store): the first recorded "
        f"{v['recorded']} variants, the second loaded {v['loaded']} and compiled {v['recorded_again']} through "
        f"Triton's JIT; outputs and gradients of the {v['cases']} cases against the first process's, bitwise: "
        f"{verdict}. The first case's forward+backward took {v['first_case_s'][0] * 1e3:.1f} ms in the first "
        f"process and {v['first_case_s'][1] * 1e3:.1f} ms in the second." + _static_store_text(v.get("static")))
    return "\n".join(lines)


def _static_store_text(st: dict | None) -> str:
    """check_variant_store's third process, through torch's launcher, in words ("" where none ran)."""
    if not st:
        return ""
    verdict = "**results differ**: " + ", ".join(st["mismatches"]) if st["mismatches"] else "equal"
    return (f" A third process, launching through torch's launcher (ACTGEN_STATIC_LAUNCH=1"
            + ("" if st["on"] else ", **which it did not bind**") + f"), loaded {st['loaded']} variants and compiled "
            f"{st['recorded']}; its first case took {st['first_case_s'] * 1e3:.1f} ms; its outputs and gradients "
            f"against the first process's, bitwise: {verdict}.")


def _bitwise_section(title: str, d: dict | None, count: str, nothing: str, describe) -> list[str]:
    """A report section for a check whose results must be bitwise equal: "not checked" with
    its error, else describe(d, verdict), the verdict `nothing` where d[count] is 0."""
    if not d:
        return []
    if "error" in d:
        return [title, "", f"**not checked**: {d['error']}", ""]
    if d["mismatches"]:
        verdict = "**results differ**: " + ", ".join(d["mismatches"])
    else:
        verdict = "equal" if d[count] else nothing
    return [title, "", describe(d, verdict), ""]


def score_file(path: Path, specs_dir: Path, out: Path, jobs: int = 1, log=print) -> Path:
    meta, arrays = load(path)
    specs = [s for s in load_specs([Path(specs_dir)]) if s.name in meta["entries"] and s.name not in meta["failures"]]
    xs = grid()
    by_entry = {s.name: {k: v for k, v in arrays.items() if k.startswith(s.name + "|")} for s in specs}
    tasks = [(s, by_entry[s.name], xs) for s in specs]
    if jobs > 1:
        import multiprocessing

        with multiprocessing.get_context("spawn").Pool(jobs) as pool:   # not fork: torch's threads may be running
            results = pool.map(_score_one, tasks)
    else:
        results = [_score_one(t) for t in tasks]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report(meta, results, len(round_to(xs, torch.float32))), encoding="utf-8", newline="\n")
    log(f"wrote {out}")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m actgen.device_accuracy", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("collect", help="run every entry's kernels on the device; write the values (.npz)")
    c.add_argument("--device", default="cuda")
    c.add_argument("--out", required=True)
    c.add_argument("--jobs", type=int, default=min(8, os.cpu_count() or 1))
    c.add_argument("--specs", default=str(DEFAULT_SPECS))
    c.add_argument("names", nargs="*")
    s = sub.add_parser("score", help="score collected values against the mpmath oracle; write a markdown report")
    s.add_argument("values")
    s.add_argument("--out", required=True)
    s.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    s.add_argument("--specs", default=str(DEFAULT_SPECS))
    args = p.parse_args(argv)
    if args.cmd == "collect":
        path = collect(Path(args.specs), args.device, Path(args.out), jobs=args.jobs, names=args.names)
        meta, _ = load(path)
        print(json.dumps({"failures": meta["failures"], "exp": meta["exp"], "log1p": meta.get("log1p"),
                          "fast16": meta.get("fast16"), "param_grads_failing": [r for r in meta["param_grads"] if not r["ok"]],
                          "seconds": round(meta["seconds"], 1)}, indent=1))
        return 1 if meta["failures"] else 0
    score_file(Path(args.values), Path(args.specs), Path(args.out), jobs=args.jobs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
