"""The benchmark suite: generated ops side by side with the alternatives and the bandwidth limit.

For each activation (a `Case`), dtype and size it measures, in one run and one process:

* ``actgen``  - the generated op (Triton kernels on CUDA, the eager fallback on CPU);
* ``eager``   - the same formula written by hand as plain torch ops, differentiated by autograd;
* ``torch``   - torch's own kernel where one exists (F.mish, F.silu, F.prelu, ...);
* ``compile`` - torch.compile of the plain-torch formula, timed after warm-up;
* the roofline - ``y.copy_(x)`` for the forward's traffic and ``torch.add(x, g, out=gx)``
  (read two tensors, write one: what a backward moves) for the backward's, timed with each
  activation in the same rounds as its implementations.

in the modes ``fwd`` (no autograd), ``bwd`` (the backward alone, on a retained graph),
``fwdbwd`` (forward + backward) and, for ops with params, ``bwd_frozen`` (backward with the
params frozen).  The backward modes run a fresh, untimed forward before every timed backward.  Around the timings: peak memory of a training step, bytes saved for
backward (``torch.autograd.graph.saved_tensors_hooks``), first-call latency in fresh
processes (cold and warm caches, against torch.compile's cold first call), recompilation
across shapes and host time per call.  `evaluate_targets` turns the numbers into the
issue's targets, each PASS, MISS or "not measured"; `write_results` writes JSON, markdown
and PNG plots.

CUDA timings use ``triton.testing.do_bench`` (median, L2 flushed between runs); CPU
timings use ``torch.utils.benchmark`` (median of blocked runs); backward-only timings use
CUDA events (or perf_counter on CPU) around each backward, median.
"""
from __future__ import annotations

import datetime as _dt
import importlib
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from .runtime.tuning import DEFAULT, TUNE_MIN, TUNER, Config as LaunchConfig
from .runtime.workspace import WORKSPACE

SCHEMA = 1
IMPLS = ("actgen", "eager", "torch", "compile")
MODES = ("fwd", "bwd", "fwdbwd", "bwd_frozen")
MODE_LABELS = {"fwd": "forward", "bwd": "backward", "fwdbwd": "forward+backward", "bwd_frozen": "backward, params frozen"}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
CHANNELS = 64
MAX_HW = 4096           # channels-first cases: the most elements per (batch, channel) row
NOT_MEASURED = "not measured"

# Sizes (elements) and the size from which the GPU bandwidth/speed targets are judged.
GPU_SIZES = tuple(2 ** k for k in range(16, 29, 2))
CPU_SIZES = (2 ** 14, 2 ** 17, 2 ** 20)
GPU_TARGET_MIN = 2 ** 26
CPU_TARGET_MIN = 2 ** 17
CPU_NOISE_MARGIN = 1.05     # "no slower than" on CPU, allowing 5% timing noise


# --------------------------------------------------------------------------------------
# Cases: each benchmarked activation, with its plain-torch formula and torch's own kernel
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    name: str
    op: str                                  # function in actgen.ops
    eager: Callable                          # the formula as plain torch ops: eager(*inputs, *params)
    eager_src: str
    builtin: Callable | None = None          # torch's own kernel(s), same arguments
    builtin_src: str = ""
    n_inputs: int = 1
    params: tuple = ()                       # ((name, per_channel, value), ...)
    layout: str = "flat"                     # flat | channels_first | channels_last
    spec: object = field(default=None, compare=False)   # a spec case's Spec (spec_case), else None

    @property
    def per_channel(self) -> bool:
        return any(pc for _, pc, _ in self.params)

    @property
    def channel_dim(self) -> int:
        return -1 if self.layout == "channels_last" else 1

    def shape(self, n: int) -> tuple:
        if self.layout == "flat":
            return (n,)
        if n % CHANNELS:
            raise ValueError(f"{self.name}: size {n} is not a multiple of {CHANNELS} channels")
        if self.layout == "channels_last":
            return (n // CHANNELS, CHANNELS)
        # (B, C, HW) with B * C * HW == n exactly: HW is the largest divisor of n / C up to
        # 4096 (min(n / C, 4096) left elements out wherever n / C is past 4096 and not a
        # multiple of it, while the bytes were counted for n)
        per_channel = n // CHANNELS
        hw = next(d for d in range(min(per_channel, MAX_HW), 0, -1) if per_channel % d == 0)
        return (per_channel // hw, CHANNELS, hw)

    def actgen_fn(self) -> Callable:
        if self.spec is not None:       # (the shipped op where actgen.ops holds this very spec's)
            from .catalogue import shipped_or_compiled_function

            fn = shipped_or_compiled_function(self.spec)
        else:
            from actgen import ops

            fn = getattr(ops, self.op)
        if self.per_channel:
            cd = self.channel_dim
            return lambda *t: fn(*t, channel_dim=cd)
        return fn


def _cf(p):
    """A per-channel param against a channels-first (B, C, HW) input."""
    return p.view(-1, 1)


_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_INV_SQRT2 = 1.0 / math.sqrt(2.0)

# The formulas as people write them in torch today (module level, so torch.compile sees
# plain functions).


def _relu(x):
    return torch.clamp_min(x, 0)


def _gelu(x):
    return 0.5 * x * (1 + torch.erf(x * _INV_SQRT2))


def _gelu_tanh(x):
    return 0.5 * x * (1 + torch.tanh(_SQRT_2_OVER_PI * (x + 0.044715 * x ** 3)))


def _silu(x):
    return x * torch.sigmoid(x)


def _mish(x):
    return x * torch.tanh(F.softplus(x))


def _softplus(x):
    return torch.where(x > 20.0, x, torch.log1p(torch.exp(x)))


def _hardswish(x):
    return x * torch.clamp(x + 3, 0, 6) / 6


def _elu(x):
    return torch.where(x > 0, x, torch.exp(x) - 1)


def _leaky_relu(x):
    return torch.where(x > 0, x, 0.01 * x)


def _soft_clip(x):
    return torch.tanh(x)


def _custom_smooth(x):
    return x * torch.tanh(torch.sqrt(x * x + 1))


def _prelu_cf(x, w):
    return torch.where(x > 0, x, _cf(w) * x)


def _prelu_cl(x, w):
    return torch.where(x > 0, x, w * x)


def _swiglu(a, b):
    return a * torch.sigmoid(a) * b


def _silu_mul(a, b):
    return F.silu(a) * b


def _learnable_activation(x, alpha, scale, shift):
    return _cf(scale) * (torch.clamp_min(x, 0) + _cf(alpha) * torch.clamp_max(x, 0)) + shift


def _polynomial(x, a0, a1, a2, a3):
    return a0 + a1 * x + a2 * x ** 2 + a3 * x ** 3


def _adaptive_mixture(x, w0, w1, w2):
    e0, e1, e2 = torch.exp(w0), torch.exp(w1), torch.exp(w2)
    return (e0 * torch.clamp_min(x, 0) + e1 * torch.tanh(x) + e2 * x) / (e0 + e1 + e2)


def _gelu_builtin(x):
    return F.gelu(x)


def _gelu_tanh_builtin(x):
    return F.gelu(x, approximate="tanh")


def _leaky_relu_builtin(x):
    return F.leaky_relu(x, 0.01)


CASES: dict[str, Case] = {c.name: c for c in (
    Case("relu", "relu", _relu, "torch.clamp_min(x, 0)", F.relu, "F.relu"),
    Case("gelu", "gelu", _gelu, "0.5 * x * (1 + torch.erf(x / sqrt(2)))", _gelu_builtin, "F.gelu"),
    Case("gelu_tanh", "gelu_tanh", _gelu_tanh,
         "0.5 * x * (1 + torch.tanh(sqrt(2/pi) * (x + 0.044715 * x**3)))", _gelu_tanh_builtin, "F.gelu(approximate='tanh')"),
    Case("silu", "silu", _silu, "x * torch.sigmoid(x)", F.silu, "F.silu"),
    Case("mish", "mish", _mish, "x * torch.tanh(F.softplus(x))", F.mish, "F.mish"),
    Case("softplus", "softplus", _softplus, "torch.where(x > 20, x, torch.log1p(torch.exp(x)))", F.softplus, "F.softplus"),
    Case("hardswish", "hardswish", _hardswish, "x * torch.clamp(x + 3, 0, 6) / 6", F.hardswish, "F.hardswish"),
    Case("prelu", "prelu", _prelu_cf, "torch.where(x > 0, x, w.view(-1, 1) * x)", F.prelu, "F.prelu",
         params=(("weight", True, 0.25),), layout="channels_first"),
    Case("prelu_cl", "prelu", _prelu_cl, "torch.where(x > 0, x, w * x)", F.prelu, "F.prelu",
         params=(("weight", True, 0.25),), layout="channels_last"),
    Case("swiglu", "swiglu", _swiglu, "a * torch.sigmoid(a) * b", _silu_mul, "F.silu(a) * b", n_inputs=2),
    Case("learnable_activation", "learnable_activation", _learnable_activation,
         "scale * (x.clamp_min(0) + alpha * x.clamp_max(0)) + shift",
         params=(("alpha", True, 0.25), ("scale", True, 1.0), ("shift", False, 0.0)), layout="channels_first"),
    Case("polynomial", "polynomial", _polynomial, "a0 + a1 * x + a2 * x**2 + a3 * x**3",
         params=(("a0", False, 0.0), ("a1", False, 0.5), ("a2", False, 0.1), ("a3", False, 0.01))),
    Case("adaptive_mixture", "adaptive_mixture", _adaptive_mixture,
         "(exp(w0) * x.clamp_min(0) + exp(w1) * tanh(x) + exp(w2) * x) / (exp(w0) + exp(w1) + exp(w2))",
         params=(("w0", False, 0.1), ("w1", False, -0.2), ("w2", False, 0.3))),
    Case("elu", "elu", _elu, "torch.where(x > 0, x, torch.exp(x) - 1)", F.elu, "F.elu"),
    Case("leaky_relu", "leaky_relu", _leaky_relu, "torch.where(x > 0, x, 0.01 * x)", _leaky_relu_builtin, "F.leaky_relu"),
    Case("soft_clip", "soft_clip", _soft_clip, "torch.tanh(x)  (scale 1)", torch.tanh, "torch.tanh"),
    Case("custom_smooth", "custom_smooth", _custom_smooth, "x * torch.tanh(torch.sqrt(x * x + 1))"),
)}

DEFAULT_CASES = ("relu", "gelu", "gelu_tanh", "silu", "mish", "softplus", "hardswish", "prelu", "prelu_cl",
                 "swiglu", "learnable_activation", "polynomial", "adaptive_mixture")


# --------------------------------------------------------------------------------------
# Cases of any spec: a built-in op the suite has no case of its own for, or the user's
# --------------------------------------------------------------------------------------


def formula_as_torch(spec) -> tuple[Callable, str]:
    """(eager, its expression): the spec's formula as plain torch ops, the way it is written -
    no stability rewrites, no NaN guards - with autograd for its derivatives, as
    eager(*inputs, *params): a per-channel param against a channels-first input, its
    constants at their defaults, a random draw at its mean (the ops' evaluation mode, which
    the suite times).  Printed from the parsed formula (never from its text) by the printer
    the generated fallback uses."""
    import sympy

    from . import runtime
    from .functions import uniform
    from .printers.torch import TorchPrinter

    expr = spec.expr.replace(lambda e: isinstance(e, uniform), lambda e: (e.args[0] + e.args[1]) / 2)
    defaults = {c.name: c.default for c in spec.constants}
    expr = expr.xreplace({s: sympy.Float(defaults[s.name]) for s in expr.free_symbols if s.name in defaults})
    args = [*spec.inputs, *(p.name for p in spec.params)]
    text = TorchPrinter(set(args), like=spec.inputs[0]).doprint(expr)
    if spec.per_channel:        # (B, C, HW): a param's (C,) values along dim 1
        text = f"({text})"
        body = "".join(f"    {p.name} = {p.name}.view(-1, 1)\n" for p in spec.params if p.per_channel)
    else:
        body = ""
    source = f"def eager({', '.join(args)}):\n{body}    return {text}\n"
    namespace = {"torch": torch, "math": math, "_rt": runtime}
    exec(compile(source, f"<the formula of {spec.name}>", "exec"), namespace)     # noqa: S102 - printed from sympy
    return namespace["eager"], text


def spec_case(spec) -> Case:
    """A benchmark case for a spec: the op is the spec's (actgen.ops' where it ships, else the
    spec compiled now), eager and torch.compile run the formula as written (formula_as_torch);
    there is no torch kernel to compare with.  Per-channel params: a channels-first input."""
    eager, text = formula_as_torch(spec)
    return Case(spec.name, spec.name, eager, text, n_inputs=len(spec.inputs),
                params=tuple((p.name, p.per_channel, p.init) for p in spec.params),
                layout="channels_first" if spec.per_channel else "flat", spec=spec)


def _catalogue_specs() -> dict:
    """The built-in library's specs by name (where its specs/ folder is beside the package: a
    checkout of the repository), else none."""
    from .cli import CATALOGUE_SPECS
    from .spec import load_specs

    return {s.name: s for s in load_specs([CATALOGUE_SPECS])} if CATALOGUE_SPECS.is_dir() else {}


def resolve_cases(names, spec_paths=()) -> dict[str, Case]:
    """{name: Case} for the names asked for (CASES' own, else a built-in op's spec), then every
    spec in spec_paths (files or folders of them) not among them; a user's spec may not take a
    name CASES has.  ValueError on an unknown name, a name taken twice, or a bad spec
    (actgen.SpecError: its `path:line: field: problem` lines)."""
    from .spec import SpecError, load_specs

    specs = load_specs([Path(p) for p in spec_paths]) if spec_paths else []
    taken = [f"{s.source}:{s.name_line}: name: {s.name!r} is a built-in case's name: give the spec another"
             for s in specs if s.name in CASES]
    if taken:
        raise SpecError(taken)
    user = {spec.name: spec_case(spec) for spec in specs}
    missing = [n for n in names if n not in CASES and n not in user]
    catalogue = _catalogue_specs() if missing else {}
    unknown = [n for n in missing if n not in catalogue]
    if unknown:
        known = sorted(set(CASES) | set(catalogue) | set(user))
        raise ValueError(f"unknown activation(s) {', '.join(unknown)}; known: {', '.join(known)}"
                         + ("" if spec_paths else "; a spec of your own: --spec FILE"))
    cases = {n: user[n] if n in user else CASES[n] if n in CASES else spec_case(catalogue[n]) for n in names}
    return cases | {n: c for n, c in user.items() if n not in cases}


# --------------------------------------------------------------------------------------
# Inputs and byte counts
# --------------------------------------------------------------------------------------


def make_tensors(case: Case, n: int, dtype: torch.dtype, device, seed: int = 0):
    """(inputs, params, grad_out) for one case; params in the input dtype, as model.to(dtype) has them."""
    device = torch.device(device)
    gen = torch.Generator(device=device).manual_seed(seed)
    shape = case.shape(n)

    def randn():
        return torch.randn(shape, generator=gen, device=device).to(dtype)

    inputs = [randn() for _ in range(case.n_inputs)]
    params = [torch.full((CHANNELS if pc else 1,), float(v), dtype=dtype, device=device) for _, pc, v in case.params]
    return inputs, params, randn()


def nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def traffic(case: Case, n: int, dtype: torch.dtype, mode: str) -> dict:
    """Bytes a mode must move at least, split by the roofline kernel that bounds each part.

    forward: read the inputs and params, write the output (bound by the copy);
    backward: read grad_out, the inputs and params, write the input grads (and param grads).
    """
    es = torch.empty((), dtype=dtype).element_size()
    pbytes = sum((CHANNELS if pc else 1) * es for _, pc, _ in case.params)
    fwd = (case.n_inputs + 1) * n * es + pbytes
    bwd = (1 + 2 * case.n_inputs) * n * es + pbytes + (pbytes if mode != "bwd_frozen" else 0)
    return {"fwd": {"copy": fwd}, "bwd": {"bwd": bwd}, "bwd_frozen": {"bwd": bwd},
            "fwdbwd": {"copy": fwd, "bwd": (1 + 2 * case.n_inputs) * n * es + 2 * pbytes}}[mode]


# --------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------


def _sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_fn(fn: Callable, device: torch.device, *, min_run_time: float = 0.1, rep_ms: float = 100.0,
            warmup_ms: float = 25.0) -> float:
    """Median seconds per call of fn."""
    if device.type == "cuda":
        try:
            from triton.testing import do_bench
        except ImportError:  # pragma: no cover - CUDA without triton
            return _time_cuda_events(fn, device, rep_ms)
        return do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median") * 1e-3
    from torch.utils import benchmark

    fn()
    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=min_run_time).median


def time_backward(setup: Callable, fn: Callable, device: torch.device, *, min_run_time: float = 0.1,
                  rep_ms: float = 100.0) -> float:
    """Median seconds of fn(setup()), timing fn only: setup (the forward) runs before every call.

    A backward consumes its graph (and torch.compile's backward may donate its saved buffers),
    so each one gets a fresh forward.  CUDA: events around fn on the stream; CPU: perf_counter.
    """
    for _ in range(2):
        fn(setup())
    _sync(device)
    if device.type == "cuda":
        est = []
        for _ in range(3):
            state = setup()
            torch.cuda.synchronize(device)
            t = time.perf_counter()
            fn(state)
            torch.cuda.synchronize(device)
            est.append(time.perf_counter() - t)
        reps = int(min(1000, max(10, rep_ms * 1e-3 / max(min(est), 1e-6))))
        pairs = []
        for _ in range(reps):
            state = setup()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn(state)
            end.record()
            pairs.append((start, end))
            del state
        torch.cuda.synchronize(device)
        times = sorted(s.elapsed_time(e) * 1e-3 for s, e in pairs)
    else:
        times, total = [], 0.0
        while (total < min_run_time or len(times) < 5) and len(times) < 100000:
            state = setup()
            t = time.perf_counter()
            fn(state)
            dt = time.perf_counter() - t
            del state
            times.append(dt)
            total += dt
        times.sort()
    return times[len(times) // 2]


def _time_cuda_events(fn, device, rep_ms):  # pragma: no cover - CUDA only
    fn()
    torch.cuda.synchronize(device)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    torch.cuda.synchronize(device)
    reps = max(5, int(rep_ms / max(start.elapsed_time(end), 1e-3)))
    times = []
    for _ in range(reps):
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize(device)
        times.append(start.elapsed_time(end))
    times.sort()
    return times[len(times) // 2] * 1e-3


# --------------------------------------------------------------------------------------
# Memory: bytes saved for backward, peak of a training step
# --------------------------------------------------------------------------------------


def saved_for_backward(fn: Callable, tensors) -> dict:
    """Unique storages autograd saves for backward when running fn(*tensors).

    Returns bytes, the storage count and whether every saved storage is one of `tensors`'.
    """
    seen: dict[int, int] = {}

    def pack(t):
        s = t.untyped_storage()
        seen[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = fn(*tensors)
    del y
    own = {t.untyped_storage().data_ptr() for t in tensors}
    return {"bytes": sum(seen.values()), "count": len(seen), "only_inputs": set(seen) <= own}


class _QuietStderr:
    """Silence C-level stderr (the profiler's start/stop lines) for a block."""

    def __enter__(self):
        sys.stderr.flush()
        self.saved = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)
        return self

    def __exit__(self, *exc):
        sys.stderr.flush()
        os.dup2(self.saved, 2)
        os.close(self.saved)
        return False


def peak_memory(step: Callable, device: torch.device) -> int:
    """Peak bytes allocated while step() runs, above what was allocated before it.

    CUDA: torch.cuda.max_memory_allocated.  CPU: the profiler's allocator events
    (every allocation and free in the window, with its size), summed in time order.
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        out = step()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - base
        del out
        return int(peak)
    from torch.profiler import ProfilerActivity, profile

    with _QuietStderr():
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            out = step()
            del out
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "trace.json")
            prof.export_chrome_trace(path)
            with open(path) as fh:
                trace = json.load(fh)
    events = [e for e in trace.get("traceEvents", []) if e.get("name") == "[memory]"
              and e.get("args", {}).get("Device Type", 0) == 0]
    events.sort(key=lambda e: float(e["ts"]))
    live = peak = 0
    for e in events:
        live += int(e["args"]["Bytes"])
        peak = max(peak, live)
    return peak


# --------------------------------------------------------------------------------------
# Implementations and measurement
# --------------------------------------------------------------------------------------


@dataclass
class Config:
    device: str = "cpu"
    cases: tuple = DEFAULT_CASES
    dtypes: tuple = ("fp32",)
    sizes: tuple = CPU_SIZES
    impls: tuple = IMPLS
    modes: tuple = MODES
    compile_dynamic: bool = False        # torch.compile(dynamic=...); static recompiles per size
    compile_backend: str = "inductor"    # torch.compile(backend=...)
    min_run_time: float = 0.1            # CPU: torch.utils.benchmark blocked_autorange
    rounds: int = 1                      # each case's implementations timed in turn, this many times
    rep_ms: float = 100.0                # CUDA: do_bench rep / warmup (its defaults)
    warmup_ms: float = 25.0
    memory: bool = True
    latency: bool = True
    latency_cases: tuple = ("silu", "mish")
    latency_impls: tuple = ("actgen", "compile")
    latency_size: int = 2 ** 16
    host_size: int = 4096
    prewarm: int = 0                     # processes that compile everything first (0: none)
    specs: tuple = ()                    # spec files or folders whose ops are cases too (resolve_cases)

    @classmethod
    def for_device(cls, device: str, **kw) -> "Config":
        cuda = device.startswith("cuda")
        base = dict(device=device, dtypes=("fp32", "bf16", "fp16") if cuda else ("fp32", "bf16"),
                    sizes=GPU_SIZES if cuda else CPU_SIZES, compile_dynamic=not cuda, rounds=1 if cuda else 3,
                    latency_size=2 ** 20 if cuda else 2 ** 16)
        base.update({k: v for k, v in kw.items() if v is not None})
        return cls(**base)


def _impl_fn(case: Case, impl: str, compiled: dict) -> Callable | None:
    if impl == "actgen":
        return case.actgen_fn()
    if impl == "eager":
        return case.eager
    if impl == "torch":
        return case.builtin
    if impl == "compile":
        return compiled.get(case.name)
    raise ValueError(impl)


def _times(case: Case, impl: str, mode: str) -> bool:
    """Whether a run times this implementation in this mode (bwd_frozen: actgen with params only)."""
    return mode != "bwd_frozen" or (impl == "actgen" and bool(case.params))


def _compiled(case: Case, dynamic: bool, backend: str):
    """torch.compile of the case's plain-torch formula, as the run times it."""
    return torch.compile(case.eager, dynamic=dynamic, backend=backend)


def _mode_callable(fn, mode, inputs, params, grad_out):
    """A callable that runs one mode of fn: no arguments (fwd, fwdbwd), or, for the backward
    modes, the output of `callable.setup()` (the forward, run untimed before every call)."""
    if mode == "fwd":
        plain = [t.detach() for t in (*inputs, *params)]

        def run():
            with torch.no_grad():
                return fn(*plain)
        return run
    frozen = mode == "bwd_frozen"
    xs = [t.detach().requires_grad_(True) for t in inputs]
    ps = [t.detach().requires_grad_(not frozen) for t in params]
    diff = xs if frozen else xs + ps
    if mode == "fwdbwd":
        def run():
            y = fn(*xs, *ps)
            return torch.autograd.grad(y, diff, grad_out)
        return run

    def setup():          # the forward, untimed: a fresh graph for every backward
        return fn(*xs, *ps)

    def backward(y):
        return torch.autograd.grad(y, diff, grad_out)
    backward.setup = setup
    return backward


def _step(fn, inputs, params, grad_out):
    """One training step through fn: forward, backward to inputs and params; y stays alive."""
    xs = [t.detach().requires_grad_(True) for t in inputs]
    ps = [t.detach().requires_grad_(True) for t in params]

    def step():
        y = fn(*xs, *ps)
        grads = torch.autograd.grad(y, xs + ps, grad_out)
        return y, grads
    return step, xs + ps


def _err(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def _shape_example(case: Case, sizes) -> list | None:
    """The case's tensor shape at the largest of `sizes` it can take (None: it takes none of
    them; run_suite skips such sizes, so the run's description must not fail on them)."""
    for n in sorted(sizes, reverse=True):
        try:
            return list(case.shape(n))
        except ValueError:
            continue
    return None


def size_label(n: int) -> str:
    """2**k for a power of two, else the exact count (2**int(log2(n)) called 200000 "2**17")."""
    n = int(n)
    return f"2**{n.bit_length() - 1}" if n > 0 and n & (n - 1) == 0 else str(n)


def _roofline_kernels(dt: torch.dtype, n: int, device: torch.device) -> list:
    """[(kind, callable, bytes moved)] of the roofline kernels at one dtype and size:
    y.copy_(x) for a forward's traffic, torch.add(x, g, out=y) (two reads, one write) for a
    backward's.  Each callable carries its kind as `.roofline`."""
    x = torch.randn(n, device=device).to(dt)
    g = torch.randn(n, device=device).to(dt)
    y = torch.empty_like(x)

    def copy():
        return y.copy_(x)

    def add():
        return torch.add(x, g, out=y)
    copy.roofline, add.roofline = "copy", "bwd"
    return [("copy", copy, 2 * nbytes(x)), ("bwd", add, 3 * nbytes(x))]


def _roofline_time(parts: dict, roof: dict) -> float | None:
    total = 0.0
    for kind, b in parts.items():
        bw = roof.get(kind)
        if not bw:
            return None
        total += b / bw
    return total


def run_suite(cfg: Config, log: Callable[[str], None] | None = None,
              checkpoint: Callable[[dict], None] | None = None, cases: dict | None = None) -> dict:
    """Run the whole suite; returns the results dict (see write_results for the files).
    checkpoint(results so far) is called after every activation and dtype; cases: cfg's, where
    the caller resolved them already (resolve_cases)."""
    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    device = torch.device(cfg.device)
    cases = cases if cases is not None else resolve_cases(cfg.cases, cfg.specs)
    results = {
        "schema": SCHEMA,
        "device": device_info(device),
        "config": {
            "cases": list(cfg.cases), "dtypes": list(cfg.dtypes), "sizes": list(cfg.sizes),
            "impls": list(cfg.impls), "modes": list(cfg.modes), "compile_dynamic": cfg.compile_dynamic,
            "compile_backend": cfg.compile_backend,
            "timer": ("triton.testing.do_bench (median); backward modes: CUDA events around each backward after "
                      "an untimed forward (median)") if device.type == "cuda"
            else (f"torch.utils.benchmark blocked_autorange (median, min_run_time={cfg.min_run_time / cfg.rounds:g}s); "
                  "backward modes: perf_counter around each backward after an untimed forward (median)"
                  + (f"; each case's implementations and modes timed in turn, {cfg.rounds} rounds, the median "
                     "round" if cfg.rounds > 1 else "")),
            "rounds": cfg.rounds,
            "channels": CHANNELS,
            "target_min_elements": GPU_TARGET_MIN if device.type == "cuda" else CPU_TARGET_MIN,
        },
        "cases": {name: {"op": c.op, "eager": c.eager_src, "torch": c.builtin_src or None, "layout": c.layout,
                         "shape_example": _shape_example(c, cfg.sizes), "params": [p for p, _, _ in c.params],
                         **({"spec": c.spec.source, "formula": c.spec.formula} if c.spec is not None else {})}
                  for name, c in cases.items()},
        "rooflines": [], "timings": [], "memory": [], "latency": [], "host": [], "recompiles": [], "skipped": [],
    }
    t_start = time.perf_counter()
    if cfg.prewarm:
        results["prewarm_s"] = prewarm(cfg, cases, log)

    def skip(name, dtype_name, n, reason):
        log(f"skip {name} {dtype_name} n={size_label(n)}: {reason}")
        results["skipped"].append({"case": name, "dtype": dtype_name, "n": n, "reason": reason})

    for name, case in cases.items():
        for dtype_name in cfg.dtypes:
            dt = DTYPES[dtype_name]
            compiled: dict = {}
            for n in cfg.sizes:
                if "compile" in cfg.impls and (not compiled or not cfg.compile_dynamic):
                    torch._dynamo.reset()
                    compiled[name] = _compiled(case, cfg.compile_dynamic, cfg.compile_backend)
                try:
                    inputs, params, grad_out = make_tensors(case, n, dt, device)
                    roof_kernels = _roofline_kernels(dt, n, device)
                except (ValueError, RuntimeError, MemoryError) as exc:   # a shape it cannot take; out of memory
                    skip(name, dtype_name, n, _err(exc) if not isinstance(exc, ValueError) else str(exc))
                    continue
                if any(t.numel() != n for t in (*inputs, grad_out)):
                    # the byte counts are for n elements: never time a tensor of another size
                    skip(name, dtype_name, n, f"its shape {tuple(inputs[0].shape)} does not hold {n} elements")
                    continue
                line = []
                plans = []          # [row, traffic, callable, times]: timed in interleaved rounds
                fns = {}
                # the roofline kernels are timed in the same rounds as the implementations (the
                # median round kept, as theirs): timed once on their own, one disturbed
                # measurement made every fraction of this size nonsense ("19203% of roofline")
                roof_rows = []
                for kind, fn, b in roof_kernels:
                    roof_rows.append({"case": name, "dtype": dtype_name, "n": n, "kind": kind, "bytes": b})
                    plans.append([roof_rows[-1], None, fn, []])
                for impl in cfg.impls:
                    fn = _impl_fn(case, impl, compiled)
                    if fn is None:
                        continue
                    fns[impl] = fn
                    for mode in cfg.modes:
                        if _times(case, impl, mode):
                            row = {"case": name, "impl": impl, "dtype": dtype_name, "n": n, "mode": mode}
                            parts = traffic(case, n, dt, mode)
                            row["bytes"] = sum(parts.values())
                            plans.append([row, parts, None, []])
                for r in range(cfg.rounds):
                    for plan in plans:
                        row, _, run, times = plan
                        if "error" in row:
                            continue
                        try:
                            if run is None:
                                plan[2] = run = _mode_callable(fns[row["impl"]], row["mode"], inputs, params, grad_out)
                            if hasattr(run, "setup"):
                                t = time_backward(run.setup, run, device, min_run_time=cfg.min_run_time / cfg.rounds,
                                                  rep_ms=cfg.rep_ms)
                            else:
                                if r == 0:
                                    for _ in range(2):   # warm-up: compile, Triton JIT, autotuning
                                        run()
                                    _sync(device)
                                t = time_fn(run, device, min_run_time=cfg.min_run_time / cfg.rounds, rep_ms=cfg.rep_ms,
                                            warmup_ms=cfg.warmup_ms)
                            times.append(t)
                        except Exception as exc:  # noqa: BLE001 - recorded, the run goes on
                            plan[2] = None
                            if device.type == "cuda":
                                torch.cuda.empty_cache()
                            row.update(time_s=None, error=_err(exc))
                roof = {}
                for row in roof_rows:
                    times = next(p[3] for p in plans if p[0] is row)
                    if "error" not in row:
                        t = sorted(times)[len(times) // 2]
                        roof[row["kind"]] = row["bytes"] / t
                        row.update(time_s=t, gbps=row["bytes"] / t / 1e9)
                        if len(times) > 1:
                            row["round_times_s"] = times
                    results["rooflines"].append(row)
                for row, parts, run, times in plans:
                    if parts is None:
                        continue        # a roofline kernel: above
                    if "error" not in row:
                        t = sorted(times)[len(times) // 2]
                        rt = _roofline_time(parts, roof)
                        row.update(time_s=t, gbps=row["bytes"] / t / 1e9, roofline_time_s=rt,
                                   roofline_frac=(rt / t) if rt else None)
                        if len(times) > 1:
                            row["round_times_s"] = times
                        if row["mode"] == "fwdbwd":
                            line.append(f"{row['impl']} {t * 1e6:.0f}us")
                    results["timings"].append(row)
                del plans, roof_kernels
                if cfg.memory:
                    for impl, fn in fns.items():
                        results["memory"].append(_memory_row(case, impl, fn, dtype_name, n, inputs, params, grad_out, device))
                log(f"[{time.perf_counter() - t_start:6.1f}s] {name:<20} {dtype_name} n={size_label(n)}: fwd+bwd " + ", ".join(line))
                del inputs, params, grad_out
            if device.type == "cuda":
                torch.cuda.empty_cache()
            if checkpoint:
                checkpoint({**results, "partial": True, "elapsed_s": time.perf_counter() - t_start,
                            "launch_configs": launch_configs(device)})
    torch._dynamo.reset()
    _add_speedups(results)
    if cfg.latency:
        results["latency"], results["recompiles"] = measure_latency(cfg, log)
        results["host"] = measure_host_time(cfg)
    results["elapsed_s"] = time.perf_counter() - t_start
    results["launch_configs"] = launch_configs(device)
    results["targets"] = evaluate_targets(results)
    return results


def _prewarm_one(task: dict) -> float:
    """In a worker process: run every timed callable of one activation, dtype and size once, so
    that Triton's and inductor's on-disk caches hold their compiled kernels.  Tuning runs
    against a throwaway file: the timed process tunes for itself."""
    os.environ["ACTGEN_TUNING_CACHE"] = task["tuning_cache"]
    t = time.perf_counter()
    case = resolve_cases([task["case"]], task.get("specs", ()))[task["case"]]
    dt, device = DTYPES[task["dtype"]], torch.device(task["device"])
    inputs, params, grad_out = make_tensors(case, task["n"], dt, device)
    for impl in task["impls"]:
        if impl not in ("actgen", "compile"):
            continue
        fn = case.actgen_fn() if impl == "actgen" else _compiled(case, task["compile_dynamic"], task["compile_backend"])
        for mode in task["modes"]:
            if not _times(case, impl, mode):
                continue
            run = _mode_callable(fn, mode, inputs, params, grad_out)
            for _ in range(2):
                if hasattr(run, "setup"):
                    run(run.setup())
                else:
                    run()
    _sync(device)
    return time.perf_counter() - t


def _prewarm_task(task: dict) -> str | None:
    """_prewarm_one, its error as text (a failure here shows again, recorded, when timed)."""
    try:
        _prewarm_one(task)
        return None
    except Exception as exc:  # noqa: BLE001
        return f"{task['case']} {task['dtype']} n={task['n']}: {_err(exc)}"


def prewarm(cfg: Config, cases: dict, log) -> float:
    """Compile the generated kernels (every launch config the tuner will try) and torch.compile's
    graphs of the whole run in cfg.prewarm processes at once, before anything is timed; the
    timed process then loads them from the caches.  Seconds taken."""
    import multiprocessing

    t = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="actgen-prewarm-") as tmp:
        tasks = [dict(case=c, dtype=d, n=n, device=cfg.device, impls=list(cfg.impls), modes=list(cfg.modes),
                      compile_dynamic=cfg.compile_dynamic, compile_backend=cfg.compile_backend,
                      tuning_cache=os.path.join(tmp, "tuning.json"), specs=list(cfg.specs))
                 for c in cases for d in cfg.dtypes for n in cfg.sizes
                 if _shape_example(cases[c], [n]) is not None]     # (a size the case cannot take is skipped)
        with multiprocessing.get_context("spawn").Pool(cfg.prewarm) as pool:
            errors = [e for e in pool.imap_unordered(_prewarm_task, tasks) if e]
    took = time.perf_counter() - t
    log(f"prewarm: {len(tasks)} activation/dtype/size runs compiled in {took:.1f}s ({cfg.prewarm} processes)"
        + "".join(f"\n  prewarm failed: {e}" for e in errors))
    return took


_MERGED_LISTS = {"rooflines": ("case", "dtype", "n", "kind"), "skipped": ("case", "dtype", "n"),
                 "timings": ("case", "impl", "dtype", "n", "mode"),
                 "memory": ("case", "impl", "dtype", "n"), "launch_configs": ("kernel", "dtype", "layout", "bucket")}


def merge_results(parts: list[dict]) -> dict:
    """Several runs on one device as one: the union of their cases, dtypes, sizes, impls and
    modes; a number measured in more than one run is taken from the last.  Latency and host
    time come from the last run that measured them."""
    merged = json.loads(json.dumps(parts[0]))
    cfg = merged["config"]
    for part in parts[1:]:
        if part["device"].get("name") != merged["device"].get("name"):
            raise ValueError(f"cannot merge runs on {merged['device'].get('name')} and {part['device'].get('name')}")
        for k in ("cases", "dtypes", "sizes", "impls", "modes"):
            cfg[k] += [v for v in part["config"][k] if v not in cfg[k]]
        merged["cases"].update(part["cases"])
        for name, key in _MERGED_LISTS.items():
            rows = {tuple(r.get(f) for f in key): r for r in merged.get(name, []) + part.get(name, [])}
            merged[name] = list(rows.values())
        for name in ("latency", "recompiles", "host"):
            if part.get(name):
                merged[name] = part[name]
        merged["elapsed_s"] = merged.get("elapsed_s", 0) + part.get("elapsed_s", 0)
        merged["partial"] = merged.get("partial", False) or part.get("partial", False)
    cfg["sizes"].sort()
    merged["merged_runs"] = len(parts)
    return merged


def launch_configs(device: torch.device) -> list[dict]:
    """The tuned launch configs this device ran with (kernel, dtype, layout, size bucket)."""
    if device.type != "cuda":
        return []
    name = torch.cuda.get_device_name(device)
    rows = []
    for key, entry in sorted(TUNER.table.items()):
        dev, _, kernel, dtype, layout, bucket = key.split("|")
        if dev == name:
            rows.append({"kernel": kernel.split("@")[0].removeprefix("actgen.ops."), "dtype": dtype, "layout": layout,
                         "bucket": bucket, "tile": entry["tile"], "num_warps": entry["num_warps"],
                         "step": bool(entry.get("step", False)), "ms": entry.get("ms", {})})
    return rows


def _memory_row(case, impl, fn, dtype_name, n, inputs, params, grad_out, device):
    row = {"case": case.name, "impl": impl, "dtype": dtype_name, "n": n,
           "expected_saved_bytes": sum(nbytes(t) for t in (*inputs, *params))}
    try:
        step, leaves = _step(fn, inputs, params, grad_out)
        WORKSPACE.release()
        step()   # warm (compile, JIT) outside the measurement
        # the CPU fallback's workspace, which the warm step sized for this op and which stays
        # allocated between steps, counts as part of the step's peak
        held = WORKSPACE.nbytes() if impl == "actgen" and device.type == "cpu" else 0
        row["workspace_bytes"] = held
        row["peak_bytes"] = peak_memory(step, device) + held
        row["peak_per_element"] = row["peak_bytes"] / n
        s = saved_for_backward(fn, leaves)
        row.update(saved_bytes=s["bytes"], saved_tensors=s["count"], saved_only_inputs=s["only_inputs"])
    except Exception as exc:  # noqa: BLE001
        row["error"] = _err(exc)
    return row


def _add_speedups(results):
    """For every actgen timing: alternative's time / actgen's time (> 1: actgen is faster)."""
    index = {(r["case"], r["impl"], r["dtype"], r["n"], r["mode"]): r.get("time_s") for r in results["timings"]}
    for r in results["timings"]:
        if r["impl"] != "actgen" or not r.get("time_s"):
            continue
        r["speedup"] = {}
        for alt in ("eager", "torch", "compile"):
            t = index.get((r["case"], alt, r["dtype"], r["n"], r["mode"]))
            if t:
                r["speedup"][alt] = t / r["time_s"]


# --------------------------------------------------------------------------------------
# Latency: first calls in fresh processes; recompilation; host time per call
# --------------------------------------------------------------------------------------

_PROBE = """\
import time
t0 = time.perf_counter()
import sys, json
import torch
from actgen import ops  # noqa: F401
t_import = time.perf_counter() - t0
from actgen.bench import probe
print("ACTGEN_PROBE " + json.dumps(probe(json.loads(sys.argv[1]), t_import)))
"""


def _kernel_variants(case: Case) -> int | None:
    """Compiled Triton variants of the case's generated kernels in this process (CUDA only):
    those Triton's JIT compiled or found in its cache, and those loaded from actgen's
    variant store."""
    from actgen.runtime.variants import LAUNCH

    mod = importlib.import_module(f"actgen.ops.{case.op}")
    found = set()
    for kname in ("_forward_kernel", "_backward_kernel"):
        k = getattr(mod, kname, None)
        caches = getattr(k, "device_caches", None)
        if caches is None:
            return None
        found.update(id(c) for entry in caches.values() for c in entry[0].values())
        found.update(id(c) for key, c in LAUNCH.variants.items() if key[0] == id(k))
    return len(found)


def probe(spec: dict, t_import: float) -> dict:
    """Run in a fresh process: time the first training steps of one impl over three shapes."""
    case = CASES[spec["case"]]
    device = torch.device(spec["device"])
    dt = DTYPES[spec["dtype"]]
    n = int(spec["n"])
    fn = case.actgen_fn() if spec["impl"] == "actgen" else torch.compile(case.eager)
    out = {"import_s": t_import, "calls_s": []}
    # torch's own first backward with a gradient tensor imports much of torch (sympy among it:
    # seconds); a plain torch op takes that first, so that the first call below is the op's own
    t = time.perf_counter()
    w = torch.ones(8, device=device, requires_grad=True)
    torch.autograd.grad(w * 2, [w], torch.ones_like(w))
    _sync(device)
    out["torch_first_backward_s"] = time.perf_counter() - t
    variants = []
    for k, size in enumerate((n, 2 * n, 3 * n)):
        inputs, params, grad_out = make_tensors(case, size, dt, device, seed=k)
        step, _ = _step(fn, inputs, params, grad_out)
        _sync(device)
        t = time.perf_counter()
        step()
        _sync(device)
        out["calls_s"].append(time.perf_counter() - t)
        if k == 0:
            t = time.perf_counter()
            step()
            _sync(device)
            out["second_call_s"] = time.perf_counter() - t
        if spec["impl"] == "actgen":
            variants.append(_kernel_variants(case) if device.type == "cuda" else None)
    out["first_call_s"] = out["calls_s"][0]
    if spec["impl"] == "actgen":
        from actgen.runtime.variants import LAUNCH

        out["new_variants"] = None if variants[0] is None else variants[-1] - variants[0]
        out["from_store"] = LAUNCH.store.loaded if LAUNCH.store is not None and device.type == "cuda" else None
    else:
        try:
            from torch._dynamo.utils import counters

            out["graphs"] = int(counters["stats"]["unique_graphs"])
        except Exception:  # noqa: BLE001
            out["graphs"] = None
    return out


def fresh_process(code: str, argv: list[str], env: dict, marker: str, timeout: float) -> dict:
    """Run `python -c code *argv` in a fresh process; the JSON it prints after `marker `."""
    proc = subprocess.run([sys.executable, "-c", code, *argv], env=env, capture_output=True, text=True, timeout=timeout)
    for line in proc.stdout.splitlines():
        if line.startswith(marker + " "):
            return json.loads(line[len(marker) + 1:])
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    raise RuntimeError(f"{marker} process exited {proc.returncode}: {tail}")


def _run_probe(spec: dict, cache_dir: str, timeout: float = 900) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "ACTGEN_BACKEND")}
    env["TRITON_CACHE_DIR"] = os.path.join(cache_dir, "triton")
    env["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(cache_dir, "inductor")
    env["ACTGEN_CACHE_DIR"] = os.path.join(cache_dir, "actgen")
    return fresh_process(_PROBE, [json.dumps(spec)], env, "ACTGEN_PROBE", timeout)


def measure_latency(cfg: Config, log=None) -> tuple[list, list]:
    """First-call latency in fresh processes.

    actgen: cold (empty Triton cache and variant store) then warm (the same, populated by the
    cold run);
    compile: cold (empty inductor and Triton caches).  Also: kernel variants compiled or
    graphs traced over three input shapes (n, 2n, 3n).
    """
    rows, recompiles = [], []
    dtype_name = cfg.dtypes[0]
    for name in cfg.latency_cases:
        for impl, caches in (("actgen", ("cold", "warm")), ("compile", ("cold",))):
            if impl not in cfg.latency_impls or impl not in cfg.impls:
                continue
            with tempfile.TemporaryDirectory(prefix="actgen-bench-") as tmp:
                for cache in caches:
                    spec = {"case": name, "impl": impl, "device": cfg.device, "dtype": dtype_name, "n": cfg.latency_size}
                    row = {"case": name, "impl": impl, "cache": cache, "dtype": dtype_name, "n": cfg.latency_size}
                    try:
                        out = _run_probe(spec, tmp)
                        row.update(import_s=out["import_s"], first_call_s=out["first_call_s"],
                                   second_call_s=out["second_call_s"], shape_calls_s=out["calls_s"],
                                   torch_first_backward_s=out.get("torch_first_backward_s"),
                                   from_store=out.get("from_store"))
                        if cache == "warm" or impl == "compile":
                            recompiles.append({"case": name, "impl": impl, "shapes": 3,
                                               "new_kernel_variants": out.get("new_variants"),
                                               "graphs": out.get("graphs")})
                    except Exception as exc:  # noqa: BLE001
                        row["error"] = _err(exc)
                    rows.append(row)
                    if log:
                        fc = row.get("first_call_s")
                        log(f"latency {name} {impl} {cache}: first call " + (f"{fc * 1e3:.1f} ms" if fc is not None else row.get("error", "")))
    return rows, recompiles


def measure_host_time(cfg: Config, iters: int = 300) -> list:
    """Seconds per call, issued back to back without synchronising (host-bound at small sizes)."""
    device = torch.device(cfg.device)
    case = CASES["silu"]
    x = torch.randn(cfg.host_size, device=device)
    rows = []
    for impl, fn in (("actgen", case.actgen_fn()), ("torch", F.silu), ("eager", case.eager)):
        for _ in range(20):
            fn(x)
        _sync(device)
        best = math.inf
        for _ in range(5):
            t = time.perf_counter()
            for _ in range(iters):
                fn(x)
            best = min(best, (time.perf_counter() - t) / iters)
            _sync(device)
        rows.append({"case": "silu", "impl": impl, "n": cfg.host_size, "host_s_per_call": best})
    return rows


# --------------------------------------------------------------------------------------
# Device information
# --------------------------------------------------------------------------------------


def _lscpu() -> dict:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except Exception:  # noqa: BLE001
        return {}
    info = {}
    for line in out.splitlines():
        if ":" in line:
            k, v = line.split(":", 1)
            info[k.strip()] = v.strip()
    return info


def device_info(device: torch.device) -> dict:
    info = {
        "type": device.type,
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        info.update(name=p.name, sm_count=p.multi_processor_count, memory_gib=round(p.total_memory / 2 ** 30, 1),
                    capability=f"sm_{p.major}{p.minor}", cuda=torch.version.cuda)
    else:
        cpu = _lscpu()
        model = cpu.get("Model name") or platform.processor() or "unknown CPU"
        extra = []
        if cpu.get("CPU family"):
            extra.append(f"family {cpu['CPU family']} model {cpu.get('Model', '?')}")
        extra.append(f"{os.cpu_count()} logical CPUs")
        if cpu.get("Hypervisor vendor"):
            extra.append(f"{cpu['Hypervisor vendor']} VM")
        info.update(name=f"{model} ({', '.join(extra)})", threads=torch.get_num_threads())
        if hasattr(os, "getloadavg"):
            info["load_average_at_start"] = round(os.getloadavg()[0], 2)
    return info


# --------------------------------------------------------------------------------------
# Targets
# --------------------------------------------------------------------------------------

BANDWIDTH_CASES = ("silu", "gelu_tanh", "mish", "polynomial")
PER_CHANNEL_CASES = ("prelu", "prelu_cl")


@dataclass
class Target:
    id: str
    text: str
    scope: str                 # "gpu", "cpu" or "any": the device the target is stated for
    threshold: float
    better: str                # "low" or "high"
    values: list = field(default_factory=list)   # (value, where)
    reason: str = ""
    several: bool = False      # stated over several activations (every one, or a list): not passed on a partial run

    def result(self, device_type: str, partial: bool = False) -> dict:
        out = {"id": self.id, "text": self.text, "scope": self.scope, "threshold": self.threshold, "better": self.better}
        if self.scope == "gpu" and device_type != "cuda":
            return {**out, "status": NOT_MEASURED, "reason": "stated for an H100/H200; this run is on " + device_type}
        if self.scope == "cpu" and device_type != "cpu":
            return {**out, "status": NOT_MEASURED, "reason": "stated for the CPU fallback; this run is on " + device_type}
        vals = [(v, w) for v, w in self.values if v is not None]
        if not vals:
            return {**out, "status": NOT_MEASURED, "reason": self.reason or "no data for it in this run"}
        worst = max(vals, key=lambda vw: vw[0]) if self.better == "low" else min(vals, key=lambda vw: vw[0])
        ok = all((v <= self.threshold) if self.better == "low" else (v >= self.threshold) for v, _ in vals)
        if ok and partial and self.several:
            # a run cut short has not measured every activation the target names: what it has
            # measured passing is no pass (a miss it measured is a miss all the same)
            return {**out, "status": NOT_MEASURED, "partial": True, "value": worst[0], "where": worst[1],
                    "checked": len(vals),
                    "reason": f"partial run: not judged (the run did not finish; worst so far {_fmt_value(worst[0])} at "
                              f"{worst[1]}, {len(vals)} checked)"}
        return {**out, "status": "PASS" if ok else "MISS", "value": worst[0], "where": worst[1], "checked": len(vals),
                "misses": [w for v, w in vals if not ((v <= self.threshold) if self.better == "low" else (v >= self.threshold))]}


def _fmt_value(v) -> str:
    return "∞" if v in (math.inf, "inf") else f"{v:.3g}"


def evaluate_targets(results: dict) -> list[dict]:
    dev = results["device"]["type"]
    tmin = results["config"]["target_min_elements"]
    T = {}
    by = {}
    for r in results["timings"]:
        if r.get("time_s"):
            by[(r["case"], r["impl"], r["dtype"], r["n"], r["mode"])] = r

    def rows(case, impl, mode, dtypes=None, min_n=tmin):
        return [r for (c, i, d, n, m), r in sorted(by.items(), key=lambda kv: kv[0][3])
                if c == case and i == impl and m == mode and n >= min_n and (dtypes is None or d in dtypes)]

    def where(r):
        return f"{r['case']} {r['dtype']} n={size_label(r['n'])} {r['mode']}"

    def ratio(case, num, den, mode, dtypes=None, min_n=tmin, invert=False):
        out = []
        for r in rows(case, num, mode, dtypes, min_n):
            o = by.get((case, den, r["dtype"], r["n"], mode))
            if o:
                v = o["time_s"] / r["time_s"] if invert else r["time_s"] / o["time_s"]
                out.append((v, where(r)))
        return out

    def add(t: Target):
        T[t.id] = t

    add(Target("bw_fwd", f"forward >= 0.90 of the y.copy_(x) roofline, fp32 and bf16, n >= {size_label(GPU_TARGET_MIN)} "
               f"({', '.join(BANDWIDTH_CASES)})", "gpu", 0.90, "high",
               [(r["roofline_frac"], where(r)) for c in BANDWIDTH_CASES for r in rows(c, "actgen", "fwd", ("fp32", "bf16"))],
               several=True))
    add(Target("bw_bwd", "backward >= 0.85 of its roofline (2 reads + 1 write), fp32 and bf16, same ops and sizes", "gpu", 0.85, "high",
               [(r["roofline_frac"], where(r)) for c in BANDWIDTH_CASES for r in rows(c, "actgen", "bwd", ("fp32", "bf16"))],
               several=True))
    add(Target("param_grad_cost", "per-channel params (prelu, 64 channels, both layouts): backward with the param gradient "
               "<= 1.15x the backward with the param frozen", "gpu", 1.15, "low",
               [(r["time_s"] / by[(c, "actgen", r["dtype"], r["n"], "bwd_frozen")]["time_s"], where(r))
                for c in PER_CHANNEL_CASES for r in rows(c, "actgen", "bwd")
                if (c, "actgen", r["dtype"], r["n"], "bwd_frozen") in by], several=True))
    add(Target("prelu_vs_torch", "per-channel prelu fwd+bwd <= 0.70x torch's F.prelu (both layouts)", "gpu", 0.70, "low",
               [v for c in PER_CHANNEL_CASES for v in ratio(c, "actgen", "torch", "fwdbwd")], several=True))
    add(Target("vs_compile", "fwd+bwd <= 1.05x torch.compile of the same formula, every benchmarked activation", "gpu", 1.05, "low",
               [v for c in results["config"]["cases"] for v in ratio(c, "actgen", "compile", "fwdbwd")], several=True))
    add(Target("mish_vs_eager", "mish fwd+bwd >= 2.5x faster than the eager composite", "gpu", 2.5, "high",
               ratio("mish", "actgen", "eager", "fwdbwd", invert=True)))
    add(Target("swiglu_vs_silu_mul", "swiglu fwd+bwd >= 1.7x faster than eager F.silu(a) * b", "gpu", 1.7, "high",
               ratio("swiglu", "actgen", "torch", "fwdbwd", invert=True)))

    mem = {(m["case"], m["impl"], m["dtype"], m["n"]): m for m in results["memory"] if "error" not in m}
    add(Target("saved_bytes", "bytes saved for backward = the inputs and params only (saved_tensors_hooks), every activation",
               "any", 1.0, "low",
               [((m["saved_bytes"] / m["expected_saved_bytes"]) if m["saved_only_inputs"] else math.inf,
                 f"{m['case']} {m['dtype']} n={size_label(m['n'])}")
                for (c, i, d, n), m in mem.items() if i == "actgen"], several=True))
    add(Target("swiglu_peak_memory", "peak memory of a training step through swiglu <= 0.60x eager's", "gpu", 0.60, "low",
               [(m["peak_bytes"] / mem[("swiglu", "eager", d, n)]["peak_bytes"], f"swiglu {d} n={size_label(n)}")
                for (c, i, d, n), m in mem.items() if c == "swiglu" and i == "actgen" and n >= tmin
                and mem.get(("swiglu", "eager", d, n), {}).get("peak_bytes")]))

    lat = {(r["case"], r["impl"], r["cache"]): r for r in results["latency"] if "error" not in r}
    add(Target("first_call_warm", "first call in a fresh process, warm Triton cache <= 50 ms", "gpu", 0.050, "low",
               [(r["first_call_s"], f"{c}") for (c, i, cache), r in lat.items() if i == "actgen" and cache == "warm"]))
    add(Target("first_call_cold_vs_compile", "first call, empty caches <= 0.25x torch.compile's cold first call", "gpu", 0.25, "low",
               [(r["first_call_s"] / lat[(c, "compile", "cold")]["first_call_s"], f"{c}")
                for (c, i, cache), r in lat.items() if i == "actgen" and cache == "cold" and (c, "compile", "cold") in lat]))
    add(Target("no_recompile", "no recompilation across 3 input shapes (new Triton kernel variants)", "gpu", 0, "low",
               [(r["new_kernel_variants"], r["case"]) for r in results["recompiles"] if r["impl"] == "actgen"]))
    host = {r["impl"]: r["host_s_per_call"] for r in results["host"]}
    add(Target("host_time", "host time per call on a 4096-element tensor <= 1.5x eager F.silu's", "gpu", 1.5, "low",
               [(host["actgen"] / host["torch"], "silu")] if "actgen" in host and "torch" in host else []))
    add(Target("cpu_fallback_speed", f"CPU: fallback fwd+bwd no slower than the plain-torch composite "
               f"(<= {CPU_NOISE_MARGIN:.2f}x, a 5% timing-noise margin; n >= {size_label(CPU_TARGET_MIN)})",
               "cpu", CPU_NOISE_MARGIN, "low",
               [v for c in results["config"]["cases"] for v in ratio(c, "actgen", "eager", "fwdbwd")], several=True))
    partial = bool(results.get("partial"))
    return [t.result(dev, partial) for t in T.values()]


# --------------------------------------------------------------------------------------
# Writers: JSON, markdown, plots
# --------------------------------------------------------------------------------------


def _fmt_time(t):
    if t is None:
        return "-"
    if t >= 1e-1:
        return f"{t:.3g} s"
    if t >= 1e-3:
        return f"{t * 1e3:.3g} ms"
    return f"{t * 1e6:.3g} µs"


def _fmt_bytes(b):
    if b is None:
        return "-"
    for unit, s in (("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if b >= s:
            return f"{b / s:.3g} {unit}"
    return f"{int(b)} B"


#: A measured time this far under the roofline time (above 150% of it) is not an op moving its
#: bytes faster than a copy: the roofline kernel's own timing was disturbed (a shared CPU).
ROOFLINE_DISTURBED = 1.5
DISTURBED_NOTE = ("† above 150% of the roofline: the roofline kernel's timing was disturbed (it ran slower than "
                  "this op moved its bytes), so the fraction is no measurement of the op; its time is.")


def _x(v):
    return "-" if v is None else f"{v:.2f}×"


def _frac(r) -> str:
    """A row's fraction of the roofline, flagged † where it cannot be right (ROOFLINE_DISTURBED)."""
    f = r.get("roofline_frac")
    if f is None:
        return "-"
    return f"{100 * f:.0f}%" + ("†" if f > ROOFLINE_DISTURBED else "")


def _gbps(r) -> str:
    return "-" if r.get("gbps") is None else f"{r['gbps']:.1f}"


def _index(results):
    return {(r["case"], r["impl"], r["dtype"], r["n"], r["mode"]): r for r in results["timings"]}


def device_line(results) -> str:
    d = results["device"]
    extra = f", {d['threads']} torch thread{'s' if d['threads'] != 1 else ''}" if d.get("threads") else ""
    if d.get("load_average_at_start") is not None:
        extra += f", load average {d['load_average_at_start']:g} at start"
    return (f"{d.get('name', d['type'])}, measured {d['date']} (torch {d['torch']}, triton {d.get('triton') or '-'}, "
            f"Python {d['python']}{extra})")


def headline_table(results, dtype=None, n=None) -> str:
    """fwd+bwd of every case at the largest size of the first dtype that has them all (else the
    largest): the README's table."""
    cfg = results["config"]
    dtype = dtype or cfg["dtypes"][0]
    idx = _index(results)
    if n is None:
        complete = [m for m in cfg["sizes"] if all(idx.get((c, "actgen", dtype, m, "fwdbwd")) for c in cfg["cases"])]
        n = max(complete or cfg["sizes"])
    mem = {(m["case"], m["impl"], m["dtype"], m["n"]): m for m in results["memory"]}
    head = ("| activation | actgen fwd+bwd | GB/s | of roofline | vs eager | vs torch kernel | vs torch.compile "
            "| saved for bwd (actgen / eager) | peak step memory (actgen / eager) |")
    lines = [head, "|" + "---|" * 9]
    for c in cfg["cases"]:
        r = idx.get((c, "actgen", dtype, n, "fwdbwd"))
        if not r or not r.get("time_s"):
            lines.append(f"| {c} | {r.get('error', '-') if r else '-'} |" + " - |" * 7)
            continue
        sp = r.get("speedup", {})
        ma, me = mem.get((c, "actgen", dtype, n), {}), mem.get((c, "eager", dtype, n), {})
        lines.append(
            f"| {c} | {_fmt_time(r['time_s'])} | {_gbps(r)} | {_frac(r)} | {_x(sp.get('eager'))} "
            f"| {_x(sp.get('torch'))} | {_x(sp.get('compile'))} | {_fmt_bytes(ma.get('saved_bytes'))} / {_fmt_bytes(me.get('saved_bytes'))} "
            f"| {_fmt_bytes(ma.get('peak_bytes'))} / {_fmt_bytes(me.get('peak_bytes'))} |")
    caption = (f"{results['device']['type'].upper()}: {device_line(results)}. {dtype}, {size_label(n)} elements, forward+backward; "
               "\"vs X\" is X's time / actgen's time (above 1×: actgen is faster).")
    if results.get("partial"):
        caption = "Partial run (it did not finish). " + caption
    if any("†" in line for line in lines[2:]):
        lines += ["", DISTURBED_NOTE]
    return caption + "\n\n" + "\n".join(lines)


def headline_markdown(results, tables=None) -> str:
    """The README's headline for one device: the table and the verdicts of the targets stated for it
    (tables: where the full tables are, default benchmarks/results/<device>/results.md)."""
    dev = results["device"]["type"]
    tables = tables or f"benchmarks/results/{dev}/results.md"
    scope = "gpu" if dev == "cuda" else dev
    lines = [headline_table(results), "",
             f"Targets stated for {'an H100/H200' if scope == 'gpu' else 'the CPU fallback'} or any device, from this run "
             f"(the full tables: {tables}):", "",
             "| target | status | measured (worst) |", "|---|---|---|"]
    for t in results["targets"]:
        if t["scope"] not in (scope, "any"):
            continue
        if t["status"] == NOT_MEASURED:
            lines.append(f"| {t['text']} | {'not judged (partial run)' if t.get('partial') else 'not measured'} "
                         f"| {t.get('reason', '')} |")
        else:
            v = t["value"]
            val = "∞" if v in (math.inf, "inf") else f"{v:.3g}"
            lines.append(f"| {t['text']} | **{t['status']}** | {val} ({t['where']}) |")
    return "\n".join(lines) + "\n"


def targets_table(results) -> str:
    lines = ["| target | stated for | status | measured (worst) | where |", "|---|---|---|---|---|"]
    for t in results["targets"]:
        status = t["status"]
        if status == NOT_MEASURED and t.get("partial"):
            status, where = "not judged (partial run)", t.get("reason", "")
            val = _fmt_value(t["value"]) + f" ({t['checked']} checked so far)"
        elif status == NOT_MEASURED:
            val, where = "not measured", t.get("reason", "")
        else:
            v = t["value"]
            val = ("∞ (saves other tensors)" if v in (math.inf, "inf") else f"{v:.3g}") + f" (threshold {t['threshold']:g}, {t['checked']} checked)"
            where = t["where"] + (f"; misses: {len(t['misses'])}" if t["misses"] else "")
            status = f"**{status}**"
        lines.append(f"| {t['text']} | {t['scope']} | {status} | {val} | {where} |")
    return "\n".join(lines)


def write_markdown(results) -> str:
    cfg = results["config"]
    idx = _index(results)
    out = [f"# actgen benchmark: {results['device']['type']}", ""]
    if results.get("partial"):
        out += ["**Partial run**: this run did not finish (cut short, or still going when its results.json was "
                "written). The tables hold what it measured; a target over several activations is not judged.", ""]
    out += [f"Device: {device_line(results)}.", "",
           f"Timer: {cfg['timer']}. torch.compile: {'dynamic' if cfg['compile_dynamic'] else 'static'} shapes, "
           f"backend {cfg.get('compile_backend', 'inductor')}. "
           f"Sizes: {', '.join(size_label(n) for n in cfg['sizes'])} elements; dtypes: {', '.join(cfg['dtypes'])}. "
           f"Per-channel cases use {cfg['channels']} channels. Suite time {results.get('elapsed_s', 0):.0f} s.", "",
           "## Headline", "", headline_table(results), "",
           "## Targets", "",
           "PASS/MISS are judged on this run's numbers only; a target stated for another device, or without data "
           "in this run, reads \"not measured\".", "", targets_table(results), ""]
    impls = [i for i in IMPLS if i in cfg["impls"]]
    for dtype in cfg["dtypes"]:
        for mode in cfg["modes"]:
            rows = [r for r in results["timings"] if r["dtype"] == dtype and r["mode"] == mode]
            if not rows:
                continue
            out += [f"## {MODE_LABELS[mode]}, {dtype}", "",
                    "Time (GB/s, fraction of the roofline). Speed-ups are the alternative's time / actgen's time.", "",
                    "| activation | n | roofline | " + " | ".join(impls) + " | × eager | × torch | × compile |",
                    "|---|---|---|" + "---|" * (len(impls) + 3)]
            disturbed = False
            for c in cfg["cases"]:
                for n in cfg["sizes"]:
                    # every row some implementation ran (a run without actgen has rows too;
                    # its speed-ups, against actgen, read "-")
                    ran = [r for r in (idx.get((c, i, dtype, n, mode)) for i in impls) if r]
                    if not ran:
                        continue
                    cells = []
                    for i in impls:
                        r = idx.get((c, i, dtype, n, mode))
                        if not r:
                            cells.append("-")
                        elif not r.get("time_s"):
                            cells.append("error")
                        else:
                            cells.append(f"{_fmt_time(r['time_s'])} ({_gbps(r)}, {_frac(r)})")
                            disturbed |= cells[-1].endswith("†)")
                    a = idx.get((c, "actgen", dtype, n, mode)) or {}
                    sp = a.get("speedup", {})
                    roof = _fmt_time(next((r["roofline_time_s"] for r in ran if r.get("roofline_time_s")), None))
                    out.append(f"| {c} | {size_label(n)} | {roof} | " + " | ".join(cells)
                               + f" | {_x(sp.get('eager'))} | {_x(sp.get('torch'))} | {_x(sp.get('compile'))} |")
            out.append("")
            if disturbed:
                out += [DISTURBED_NOTE, ""]
    if results["rooflines"]:
        out += ["## Roofline kernels", "",
                "Timed with every activation, in the same rounds as its implementations: the median over the "
                "activations, and their range.", "",
                "| dtype | n | y.copy_(x) GB/s | add(x, g, out) GB/s |", "|---|---|---|---|"]
        roof: dict = {}
        for r in results["rooflines"]:
            if r.get("gbps"):
                roof.setdefault((r["dtype"], r["n"], r["kind"]), []).append(r["gbps"])

        def spread(v):
            if not v:
                return "-"
            v = sorted(v)
            return f"{v[len(v) // 2]:.1f}" + (f" ({v[0]:.1f}-{v[-1]:.1f})" if len(v) > 1 else "")
        for dtype in cfg["dtypes"]:
            for n in cfg["sizes"]:
                if (dtype, n, "copy") in roof or (dtype, n, "bwd") in roof:
                    out.append(f"| {dtype} | {size_label(n)} | {spread(roof.get((dtype, n, 'copy')))} "
                               f"| {spread(roof.get((dtype, n, 'bwd')))} |")
        out.append("")
    if results.get("skipped"):
        out += ["## Skipped", "", "Sizes an activation cannot take (measured at the others).", "",
                "| activation | dtype | n | why |", "|---|---|---|---|"]
        out += [f"| {r['case']} | {r['dtype']} | {size_label(r['n'])} | {r['reason']} |" for r in results["skipped"]]
        out.append("")
    if results["memory"]:
        n_mem = max(m["n"] for m in results["memory"])
        out += ["## Memory of a training step", "",
                f"At {size_label(n_mem)} elements (every size is in results.json). Peak: bytes allocated above the inputs "
                "during forward + backward (y kept alive); saved: unique storages autograd saved for backward; "
                "expected: the inputs and params.", "",
                "| activation | dtype | n | impl | peak | peak / element | saved for bwd | expected | only inputs/params |",
                "|---|---|---|---|---|---|---|---|---|"]
        for m in (m for m in results["memory"] if m["n"] == n_mem):
            if "error" in m:
                out.append(f"| {m['case']} | {m['dtype']} | {size_label(m['n'])} | {m['impl']} | error: {m['error']} | | | | |")
                continue
            out.append(f"| {m['case']} | {m['dtype']} | {size_label(m['n'])} | {m['impl']} | {_fmt_bytes(m['peak_bytes'])} "
                       f"| {m['peak_per_element']:.1f} B | {_fmt_bytes(m['saved_bytes'])} | {_fmt_bytes(m['expected_saved_bytes'])} "
                       f"| {'yes' if m['saved_only_inputs'] else 'no'} |")
        out.append("")
    if results["latency"]:
        out += ["## First-call latency (fresh process)", "",
                "cold: empty Triton/inductor/actgen caches; warm: the caches the cold run filled (Triton's, and "
                "actgen's variant store). First call = the first forward+backward (synchronised); shape calls: the "
                "first calls at n, 2n and 3n elements.", "",
                "| activation | impl | cache | import | first call | second call | shape calls | variants from actgen's store |",
                "|---|---|---|---|---|---|---|---|"]
        for r in results["latency"]:
            if "error" in r:
                out.append(f"| {r['case']} | {r['impl']} | {r['cache']} | error: {r['error']} | | | | |")
                continue
            stored = r.get("from_store")
            out.append(f"| {r['case']} | {r['impl']} | {r['cache']} | {_fmt_time(r['import_s'])} | {_fmt_time(r['first_call_s'])} "
                       f"| {_fmt_time(r['second_call_s'])} | {', '.join(_fmt_time(t) for t in r['shape_calls_s'])} "
                       f"| {'-' if stored is None else stored} |")
        out.append("")
        if results["recompiles"]:
            out += ["| activation | impl | new Triton kernel variants over 3 shapes | torch.compile graphs over 3 shapes |",
                    "|---|---|---|---|"]
            for r in results["recompiles"]:
                nv = r.get("new_kernel_variants")
                out.append(f"| {r['case']} | {r['impl']} | {'-' if r['impl'] != 'actgen' else ('n/a (no Triton on this device)' if nv is None else nv)} "
                           f"| {'-' if r['impl'] != 'compile' else r.get('graphs')} |")
            out.append("")
    if results.get("launch_configs"):
        out += ["## Tuned launch configs", "",
                f"Elements per program x warps, chosen by timing every candidate once (actgen/runtime/tuning.py); "
                f"tensors under 2**{int(math.log2(TUNE_MIN))} elements use the default {DEFAULT.tile}x{DEFAULT.num_warps}.", "",
                "| kernel | dtype | layout | sizes from | chosen | candidates (ms) |", "|---|---|---|---|---|---|"]
        for r in results["launch_configs"]:
            cands = ", ".join(f"{k}: {v:.4g}" for k, v in r["ms"].items())
            chosen = LaunchConfig(r["tile"], r["num_warps"], bool(r.get("step", False))).label
            out.append(f"| {r['kernel']} | {r['dtype']} | {r['layout']} | {r['bucket']} | {chosen} | {cands} |")
        out.append("")
    if results["host"]:
        out += ["## Host time per call", "", "silu forward, issued back to back without synchronising.", "",
                "| impl | n | time per call |", "|---|---|---|"]
        for r in results["host"]:
            out.append(f"| {r['impl']} | {r['n']} | {_fmt_time(r['host_s_per_call'])} |")
        out.append("")
    out += ["## Formulas", "", "| activation | layout | plain torch (eager, compile) | torch kernel |", "|---|---|---|---|"]
    for c, info in results["cases"].items():
        shape = tuple(info["shape_example"]) if info.get("shape_example") else "(no size of this run)"
        out.append(f"| {c} | {info['layout']} {shape} | `{info['eager']}` | {info['torch'] or '-'} |")
    out.append("")
    return "\n".join(out)


def _plot_figure(results, dtype: str, mode: str):
    """The figure of one dtype and mode: GB/s vs size of every implementation that ran, one
    panel per activation, the roofline dashed; None where nothing ran."""
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg = results["config"]
    idx = _index(results)
    colors = {"actgen": "C0", "eager": "C1", "torch": "C2", "compile": "C3"}
    # an activation is plotted where any implementation ran (a run without actgen too)
    cases = [c for c in cfg["cases"] if any(idx.get((c, i, dtype, n, mode)) for i in IMPLS for n in cfg["sizes"])]
    if not cases:
        return None
    ncols = min(4, len(cases))
    nrows = -(-len(cases) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols, 2.8 * nrows), squeeze=False)
    for ax, c in zip(axes.flat, cases):
        for impl in IMPLS:
            pts = [(n, idx[(c, impl, dtype, n, mode)]["gbps"]) for n in cfg["sizes"]
                   if idx.get((c, impl, dtype, n, mode), {}).get("time_s")]
            if pts:
                ax.plot(*zip(*pts), marker="o", ms=3, label=impl, color=colors[impl])
        rpts = []
        for n in cfg["sizes"]:
            r = next((r for r in (idx.get((c, i, dtype, n, mode)) for i in IMPLS) if r and r.get("roofline_time_s")), None)
            if r:
                rpts.append((n, r["bytes"] / r["roofline_time_s"] / 1e9))
        if rpts:
            ax.plot(*zip(*rpts), "k--", lw=1.2, label="roofline")
        _, hi = ax.get_ylim()
        ys = [ln.get_ydata() for ln in ax.get_lines()]
        ymin = min((min(y) for y in ys if len(y)), default=0)
        if ymin > 0 and max(hi, 1e-9) / ymin > 20:   # far below the roofline: a log axis keeps it readable
            ax.set_yscale("log")
        ax.set_xscale("log", base=2)
        ax.set_title(c, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(cases):]:
        ax.axis("off")
    axes.flat[0].set_ylabel("GB/s", fontsize=8)
    axes.flat[0].legend(fontsize=7)
    title = (f"{MODE_LABELS[mode]}, {dtype}: GB/s vs elements - {results['device'].get('name', '')}, "
             f"{results['device']['date']}" + (" (partial run)" if results.get("partial") else ""))
    # the title is as wide as the device's name makes it, the figure as its panels: with one
    # or two activations it was cut off at both sides, so it is wrapped until it fits
    st = fig.suptitle(title, fontsize=9)
    renderer = fig.canvas.get_renderer()
    width = len(title)
    while st.get_window_extent(renderer).width > 0.96 * fig.bbox.width and width > 12:
        width = int(width * 0.85)
        st.set_text(textwrap.fill(title, width, break_long_words=True))
    fig.tight_layout()      # (it leaves room for the suptitle, wrapped or not)
    return fig


def write_plots(results, out_dir: Path) -> list[Path]:
    """GB/s vs size per implementation, one figure per dtype and mode, the roofline drawn."""
    import matplotlib.pyplot as plt

    cfg = results["config"]
    paths = []
    for dtype in cfg["dtypes"]:
        for mode in cfg["modes"]:
            fig = _plot_figure(results, dtype, mode)
            if fig is None:
                continue
            path = out_dir / f"gbps_{dtype}_{mode}.png"
            fig.savefig(path, dpi=72)
            plt.close(fig)
            paths.append(path)
    return paths


def _json_safe(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def write_json(results: dict, path: Path) -> None:
    path.write_text(json.dumps(_json_safe(results), indent=1) + "\n")


def write_results(results: dict, out_dir, plots: bool = True) -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "results.json", out_dir / "results.md", out_dir / "headline.md"]
    write_json(results, paths[0])
    paths[1].write_text(write_markdown(results))
    paths[2].write_text(headline_markdown(results, paths[1].as_posix()))
    if plots:
        # only a run that writes plots replaces the old ones (a dtype or mode it did not run
        # leaves none behind); --no-plots leaves the folder's plots alone
        for old in out_dir.glob("gbps_*.png"):
            old.unlink()
        paths += write_plots(results, out_dir)
    return paths


# --------------------------------------------------------------------------------------
# Command line (`actgen bench`, benchmarks/run.py)
# --------------------------------------------------------------------------------------


#: The most elements a benchmarked tensor may have (2**28 on a GPU is the suite's largest): a
#: run holds several tensors of this size at once (inputs, grad_out, output, gradients, the
#: roofline's), 8 GiB each in fp32 at 2**31, so a larger size is refused up front rather than
#: failing inside torch.randn.
MAX_SIZE = 2 ** 31


def parse_size(text: str) -> int:
    """An element count: 2**20, 2^20, 1<<20 or 1048576 (ValueError if not one, or not in
    1..MAX_SIZE)."""
    text = text.strip()
    for sep in ("**", "^", "<<"):
        if sep in text:
            base, exp = (int(part) for part in text.split(sep))     # (ValueError unless two ints)
            if not 0 <= exp <= 64:
                raise ValueError(f"exponent {exp} is out of range")
            n = base ** exp if sep != "<<" else base << exp
            break
    else:
        n = int(text)
    if not 1 <= n <= MAX_SIZE:
        raise ValueError(f"{n} is not between 1 and 2**{MAX_SIZE.bit_length() - 1}")
    return n


def _size_argument(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        import argparse

        raise argparse.ArgumentTypeError(f"{text!r} is not an element count such as 2**20, 1<<20 or 1048576 ({exc})")


def _checked_argument(convert, test, what):
    """An argparse type: convert(text), refused (a one-line argparse error, exit 2) unless test(value)."""
    def check(text):
        import argparse

        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None or not test(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
        return value
    return check


_positive_int = _checked_argument(int, lambda v: v >= 1, "a whole number >= 1")
_nonnegative_int = _checked_argument(int, lambda v: v >= 0, "a whole number >= 0")
_positive_seconds = _checked_argument(float, lambda v: math.isfinite(v) and v > 0, "a number of seconds above 0")
_positive_ms = _checked_argument(float, lambda v: math.isfinite(v) and v > 0, "a number of milliseconds above 0")


def _device_argument(text: str) -> str:
    """cpu, cuda or cuda:N: the devices the suite times on (whether CUDA is there is checked later)."""
    import argparse
    import re

    if not re.fullmatch(r"cpu|cuda(:\d+)?", text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a device the suite runs on (cpu, cuda or cuda:N)")
    return text


def _backend_argument(text: str) -> str:
    """A torch.compile backend by name, looked up as torch.compile looks it up: a wrong name
    failed only at the first compile, recorded as an error in every compile row of the run."""
    import argparse

    from torch._dynamo.backends.registry import lookup_backend

    try:
        lookup_backend(text)
    except Exception:  # noqa: BLE001 - torch._dynamo.exc.InvalidBackend, or a backend that fails to load
        import torch._dynamo

        raise argparse.ArgumentTypeError(f"{text!r} is not a torch.compile backend; known: "
                                         f"{', '.join(torch._dynamo.list_backends(exclude_tags=()))}")
    return text


def _error(message: str) -> int:
    """The suite's one-line error for an option that cannot be run (exit status 2, as argparse's)."""
    print(f"actgen bench: error: {message}", file=sys.stderr)
    return 2


#: What --render needs of a results.json (the writers read these; the lists may be empty).
_RESULT_KEYS = {"device": ("type", "date", "torch", "python"),
                "config": ("cases", "dtypes", "sizes", "impls", "modes", "target_min_elements", "timer",
                           "compile_dynamic", "channels"),
                "cases": (), "timings": ()}


def load_results(path) -> dict:
    """A results.json to render; ValueError (one line) if it is missing, not JSON, or not a
    results file of this suite."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise ValueError(f"--render {path}: cannot read it ({exc.strerror or exc})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"--render {path}: not JSON ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ValueError(f"--render {path}: not a results.json of actgen bench (no object at the top)")
    missing = [k for k in _RESULT_KEYS if k not in data]
    missing += [f"{k}.{sub}" for k, subs in _RESULT_KEYS.items() if isinstance(data.get(k), dict)
                for sub in subs if sub not in data[k]]
    if missing:
        raise ValueError(f"--render {path}: not a results.json of actgen bench (no {', '.join(missing)})")
    for k in ("rooflines", "memory", "latency", "host", "recompiles"):
        data.setdefault(k, [])
    return data


def _prepare_out(out: Path) -> str | None:
    """Create the results directory before anything is measured; the reason it cannot be, or None."""
    try:
        blocked = next((p for p in (out, *out.parents) if p.exists() and not p.is_dir()), None)
        if blocked is not None:
            return f"--out {out}: {blocked} is not a directory"
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:      # a name too long, no permission, a read-only file system
        return f"--out {out}: cannot create it ({exc.strerror or exc})"
    if not os.access(out, os.W_OK | os.X_OK):
        return f"--out {out}: not writable"
    return None


def main_from_args(args) -> int:
    if args.render:
        try:
            parts = [load_results(p) for p in args.render]
            results = merge_results(parts) if len(parts) > 1 else parts[0]
        except ValueError as exc:
            return _error(str(exc))
        _add_speedups(results)      # (a merged table's speed-ups can span runs)
        results["targets"] = evaluate_targets(results)
        out = Path(args.out) if args.out else Path(args.render[0]).parent
        problem = _prepare_out(out)
        if problem:
            return _error(problem)
        paths = write_results(results, out, plots=not args.no_plots)
        print(f"wrote {', '.join(str(p) for p in paths)}")
        return 0
    if args.list:
        for c in CASES.values():
            print(f"{c.name:<22} {'default' if c.name in DEFAULT_CASES else '':<8} {c.layout:<15} "
                  f"eager: {c.eager_src}; torch: {c.builtin_src or '-'}")
        for name, spec in _catalogue_specs().items():
            if name not in CASES:
                print(f"{name:<22} {'':<8} {'channels_first' if spec.per_channel else 'flat':<15} "
                      f"eager: its formula as written ({spec.formula}); torch: -")
        return 0
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        return _error("--device cuda asked for but CUDA is not available")
    if device.startswith("cuda:") and int(device[5:]) >= torch.cuda.device_count():
        return _error(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    names = tuple(args.names) or (() if args.spec else DEFAULT_CASES)
    try:
        cases = resolve_cases(names, args.spec or ())
    except ValueError as exc:       # an unknown name; a bad spec: its `path:line: field: problem` lines, as build's
        from .spec import SpecError

        if isinstance(exc, SpecError):
            print("\n".join(exc.problems), file=sys.stderr)
            return 2
        return _error(str(exc))
    cfg = Config.for_device(
        device, cases=tuple(cases), specs=tuple(args.spec or ()), dtypes=tuple(args.dtype) if args.dtype else None,
        sizes=tuple(args.sizes) if args.sizes else None,
        impls=tuple(args.impls) if args.impls else None, modes=tuple(args.modes) if args.modes else None,
        compile_dynamic={"static": False, "dynamic": True}.get(args.compile_shapes), compile_backend=args.compile_backend,
        min_run_time=args.min_run_time, rounds=args.rounds, memory=not args.no_memory, latency=not args.no_latency,
        latency_cases=tuple(args.latency_cases) if args.latency_cases else None, prewarm=args.prewarm,
        rep_ms=args.rep_ms,
    )
    out = Path(args.out) if args.out else Path("benchmarks") / "results" / torch.device(device).type
    problem = _prepare_out(out)     # before anything is measured: a run must not end unable to write
    if problem:
        return _error(problem)
    if args.threads:
        torch.set_num_threads(args.threads)

    def checkpoint(partial):       # a run cut short still leaves its numbers (render them with --render)
        out.mkdir(parents=True, exist_ok=True)
        write_json(partial, out / "results.json")
    results = run_suite(cfg, checkpoint=checkpoint, cases=cases)
    paths = write_results(results, out, plots=not args.no_plots)
    print(headline_table(results))
    print()
    print(targets_table(results))
    print(f"\nwrote {', '.join(str(p) for p in paths)}")
    return 0


def build_parser(prog: str = "actgen bench"):
    import argparse

    p = argparse.ArgumentParser(prog=prog, description="Benchmark generated ops against torch eager, torch's kernels, "
                                "torch.compile and the memory-bandwidth roofline; write JSON, markdown and plots.")
    p.add_argument("names", nargs="*", help="activations to benchmark: the suite's cases, any built-in op (its formula "
                   f"as written for eager and torch.compile) or a --spec's (default: {' '.join(DEFAULT_CASES)}; "
                   "with --spec: its ops)")
    p.add_argument("--spec", action="append", metavar="FILE_OR_DIR", help="a spec file (or a folder of them) of your "
                   "own, again for more: its ops against their formulas as written, in plain torch and under torch.compile")
    p.add_argument("--device", type=_device_argument, help="cuda (cuda:N) or cpu (default: cuda when available)")
    p.add_argument("--dtype", nargs="+", choices=list(DTYPES), help="default: fp32 bf16 fp16 on CUDA, fp32 bf16 on CPU")
    p.add_argument("--sizes", nargs="+", type=_size_argument,
                   help=f"element counts, e.g. 2**16 2**20, at most {size_label(MAX_SIZE)} (default: 2**16..2**28 on CUDA, "
                   "2**14 2**17 2**20 on CPU)")
    p.add_argument("--impls", nargs="+", choices=list(IMPLS), help="implementations (default: all)")
    p.add_argument("--modes", nargs="+", choices=list(MODES), help="default: all")
    p.add_argument("--compile-shapes", choices=("static", "dynamic"), help="torch.compile shapes (default: static on CUDA, dynamic on CPU)")
    p.add_argument("--compile-backend", type=_backend_argument, help="torch.compile backend (default: inductor)")
    p.add_argument("--threads", type=_positive_int, help="CPU: torch threads, >= 1 (default: torch's default)")
    p.add_argument("--min-run-time", type=_positive_seconds, help="CPU: seconds of timing per implementation and mode (default 0.1)")
    p.add_argument("--rounds", type=_positive_int, help="times each case's implementations and modes are timed in turn, "
                   "the median taken: drift on a shared machine hits them alike (default: 3 on CPU, 1 on CUDA)")
    p.add_argument("--latency-cases", nargs="+", choices=list(CASES), metavar="NAME",
                   help="activations for the first-call latency probes (default: silu mish)")
    p.add_argument("--no-latency", action="store_true", help="skip the fresh-process latency probes and host-time check")
    p.add_argument("--no-memory", action="store_true", help="skip peak-memory and saved-bytes measurements")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--out", help="results directory (default: benchmarks/results/<device type>)")
    p.add_argument("--list", action="store_true", help="list the benchmark cases and exit")
    p.add_argument("--render", metavar="RESULTS_JSON", nargs="+",
                   help="measure nothing: rewrite markdown and plots from a results.json (several: merged into one)")
    p.add_argument("--prewarm", type=_nonnegative_int, help="compile every kernel and torch.compile graph first, in this many "
                   "processes at once (default: none)")
    p.add_argument("--rep-ms", type=_positive_ms, help="CUDA: milliseconds of repetitions per timing (default 100)")
    return p


def main(argv=None, prog: str = "actgen bench") -> int:
    return main_from_args(build_parser(prog).parse_args(argv))


if __name__ == "__main__":
    sys.exit(main(prog="python -m actgen.bench"))
