"""Launching generated kernels: the 2-D tile layout, grids, and the param-gradient reduction.

A tensor of shape (..., C, I...) with per-channel params is seen as a contiguous matrix:
* channels first (elements after the channel dim, I > 1): M = outer*C rows of N = I
  elements; a row's channel is row % C (CH_AXIS = 0);
* channels last (I == 1): M = outer rows of N = C elements; an element's channel is its
  column (CH_AXIS = 1);
* no per-channel params: one row of N = numel elements;
* a gated op's two inputs that are the halves of one tensor (layouts.rows_of: a SwiGLU
  module's a and b, rows of N elements 2N apart): M rows of N, read where they are (the
  kernels' _S, the rows' distance), their gradients written as the halves of one buffer
  (_SG), which is the tensor's gradient (layouts.Halves).
Each program handles one BLOCK_M x BLOCK_N tile, so per-channel param gradients are tile
row sums (CH_AXIS 0) or column sums (CH_AXIS 1): per-program partial sums land in a small
buffer, and a deterministic torch sum finishes them.  No atomics, no per-element gradient.
The tile's size and the warps per program come from tuning.py (per size bucket, tuned once
per GPU).  An op without random draws, called again on contiguous inputs and params like
those of an earlier call, launches by a Plan that call made (below): its host work is then
its outputs' allocation and the launch.
"""
from __future__ import annotations

import contextlib
import functools
import math
import os
from dataclasses import dataclass

import numpy as np
import torch

from .layouts import halves_buffers, halves_form, halves_grads, new_contiguous, rows_of
from .triton_lang import INTERPRET, tl
from .tuning import DEFAULT, TUNER, Config, candidates
from .variants import LAUNCH, Launcher

TILE = DEFAULT.tile          # elements per program, untuned


def _pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


@dataclass(frozen=True)
class Layout:
    M: int
    N: int
    C: int
    ch_axis: int
    block_m: int
    block_n: int

    @property
    def tiles_m(self) -> int:
        return -(-self.M // self.block_m)

    @property
    def tiles_n(self) -> int:
        return -(-self.N // self.block_n)

    # asked on every launch: computed once per (cached) layout
    @functools.cached_property
    def grid(self) -> tuple[int]:
        return (self.tiles_m * self.tiles_n,)

    @functools.cached_property
    def kind(self) -> str:
        """The layout's name in the tuner's keys: flat, rows (channels first, or a gated op's
        rows: see rows_of) or cols."""
        return "flat" if self.C <= 1 and self.M == 1 else ("rows", "cols")[self.ch_axis]


@functools.lru_cache(maxsize=256)     # the same shapes come back every step
def layout(shape, channel_dim: int, channels: int, tile: int = TILE) -> Layout:
    numel = math.prod(shape)
    if channels > 1:
        inner = math.prod(shape[channel_dim + 1:])
        if inner == 1:
            M, N, axis = numel // channels, channels, 1
        else:
            M, N, axis = numel // inner, inner, 0
    else:
        M, N, axis = 1, numel, 0
    return _tiled(M, N, channels, axis, tile)


def row_layout(M: int, N: int, tile: int = TILE) -> Layout:
    """M rows of N elements, no channels (rows_of)."""
    return _tiled(M, N, 1, 0, tile)


@functools.lru_cache(maxsize=256)
def _tiled(M: int, N: int, C: int, axis: int, tile: int) -> Layout:
    """The layout of an (M, N) matrix in tiles of `tile` elements: a row's worth (up to the
    tile) across, as many rows as fill the tile."""
    block_n = min(_pow2(N), tile)
    return Layout(M, N, C, axis, max(1, min(tile // block_n, _pow2(M))), block_n)


def retile(lay: Layout, tile: int) -> Layout:
    """lay's matrix in tiles of another size (what layout() or row_layout() gives for it)."""
    return lay if tile == TILE else _tiled(lay.M, lay.N, lay.C, lay.ch_axis, tile)


def _acc(dtype: torch.dtype, wide: bool = False):
    """What a kernel computes in: float64 for float64 inputs, or for every dtype where the op
    computes that direction in float64 (see actgen.precision); float32 otherwise."""
    return tl.float64 if dtype == torch.float64 or wide else tl.float32


def _fast(dtype: torch.dtype) -> bool:
    """The kernels' FAST: 16-bit data (see triton_lang.exp)."""
    return dtype.itemsize == 2


def _param_args(params, per_channel):
    """The kernels' arguments for the params: each (contiguous), and after a param that may
    be per channel its flag (_flags)."""
    args = []
    for p, flag in zip(params, _flags(params, per_channel)):
        args.append(p.contiguous())
        if flag is not None:
            args.append(flag)
    return args


def _flags(params, per_channel) -> tuple:
    """Each param's int argument after it: for a param that may be per channel, 1 where it
    is (more than one element), else 0; None for a shared one (no argument)."""
    return tuple((1 if p.numel() > 1 else 0) if pc else None for p, pc in zip(params, per_channel))


def _draw_args(draws):
    """The kernel arguments of an op with random draws: draws is None for an op without any,
    else (seed, training); the arguments, and the TRAINING constexpr."""
    if draws is None:
        return (), ()
    seed, training = draws
    return (seed,), (training,)


def _elsewhere(x: torch.Tensor) -> bool:
    """Whether x is on a GPU other than the current one (Triton launches on the current one)."""
    return x.is_cuda and x.device.index != torch.cuda.current_device()


def on_device(x: torch.Tensor):
    """A context that makes x's GPU the current one where it is another (x on cuda:1 while
    cuda:0 is current), else none."""
    return torch.cuda.device(x.device) if _elsewhere(x) else contextlib.nullcontext()


def _tuned(kernel, x, kind, run, param_grad=False):
    """Launch with the config the tuner picks for this launch among its candidates for x's
    dtype (run(config) launches), on x's GPU.  Overflow to inf and NaN arithmetic do not warn
    on a GPU; under the interpreter, whose arithmetic is numpy's, they do not either."""
    configs = candidates(x.dtype, param_grad)
    if INTERPRET:
        with np.errstate(all="ignore"):
            return run(TUNER.choose(kernel, x, kind, run, configs))
    if _elsewhere(x):
        with torch.cuda.device(x.device):
            return run(TUNER.choose(kernel, x, kind, run, configs))
    return run(TUNER.choose(kernel, x, kind, run, configs))


_FLOAT32_MAX = float(np.finfo(np.float32).max)


@functools.lru_cache(maxsize=256)
def _parts(c: float) -> tuple[float, float, float]:
    if not math.isfinite(c) or abs(c) > _FLOAT32_MAX:
        return c, 0.0, 0.0          # (float32 takes it as +-inf or NaN, as before)
    hi = float(np.float32(c))
    mid = float(np.float32(c - hi))
    return hi, mid, float(np.float32(c - hi - mid))


def constant_parts(constants) -> list[float]:
    """Each constant as three float32 numbers whose float64 sum is the constant (a kernel
    takes a Python float argument as float32): hi, the rest rounded, and the rest of that;
    what the kernels' arguments for constants are (actgen.codegen.module)."""
    return [p for c in constants for p in _parts(float(c))]


def _layouts(inputs, channel_dim, channels):
    """(the inputs as the kernels take them, their layout in untuned tiles, their row
    distance): a gated op's rows (rows_of) where its inputs are such, else contiguous (None)."""
    if len(inputs) == 2 and channels <= 1:
        rows = rows_of(inputs)
        if rows is not None:
            views, stride = rows
            M, N = views[0].shape
            return views, row_layout(M, N), stride
    x = inputs[0]
    return [t.contiguous() for t in inputs], layout(x.shape, channel_dim, channels), None


def forward(kernel, inputs, params, per_channel, constants, channel_dim, channels, draws=None, wide=False):
    x = inputs[0]
    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    if x.numel() == 0:
        return out
    tensors, lay0, stride = _layouts(inputs, channel_dim, channels)
    args = [*tensors, *_param_args(params, per_channel), out, *constant_parts(constants)] if params or constants \
        else [*tensors, out]
    training = ()
    if draws is not None:
        args.append(draws[0])
        training = (draws[1],)
    consts = (_acc(x.dtype, wide), _fast(x.dtype), *training)
    gated = len(inputs) == 2

    def run(cfg: Config):
        grid, tail, blocks = _forward_tiles(lay0, cfg, stride, gated)
        return LAUNCH(kernel, grid, (*args, *tail), (*blocks, *consts), cfg.num_warps)

    _tuned(kernel, x, lay0.kind, run)
    return out


def _forward_tiles(lay0: Layout, cfg: Config, stride, gated: bool):
    """A forward's grid, its arguments after the tensors and constants (the matrix, and a
    gated op's row distance), and its tile constexprs, in cfg's tiles."""
    lay = retile(lay0, cfg.tile)
    tail = (lay.M, lay.N, lay.C, stride or lay.N) if gated else (lay.M, lay.N, lay.C)
    return lay.grid, tail, (lay.block_m, lay.block_n, lay.ch_axis)


def _backward_tiles(lay0: Layout, cfg: Config, stride, grad_stride, gated: bool):
    """A backward's grid, its matrix and row distances (a gated op's: the inputs', the
    gradients'), and its tile constexprs, in cfg's tiles."""
    lay = retile(lay0, cfg.tile)
    strides = ((stride or lay.N), (grad_stride or lay.N)) if gated else ()
    return lay, (lay.M, lay.N, lay.C, *strides), (lay.block_m, lay.block_n, lay.ch_axis)


# --- launch plans: the host work of a launch done once per size, dtype and device ----------
# An op without random draws, on contiguous inputs and params, launches the same way for
# every call on inputs of one shape, dtype and device (params of the same sizes, the same
# constants and channel dim), once the tuner has settled on a config: the grid, every
# argument but the tensors, the constexprs and the warps are the same.  So does a gated op
# on inputs of one shape and strides that are rows (_layouts: the halves of one tensor).  A
# Plan keeps them, so a later call's host work is its outputs' allocation and the launch
# (Activation looks them up; TUNER.plans holds them, so a new tuner starts without any).
# ACTGEN_LAUNCH_PLANS=0 (or PLANS = False) makes none.

class Plan:
    """One kernel's launch for inputs and params like those it was made for (see above).
    The compiled variants it launched, by its tensors' alignments, are launched again without
    the launcher's per-call key (Launcher.kept, launch_kept)."""

    __slots__ = ("kernel", "grid", "flags", "scalars", "consts", "num_warps", "dtypes", "launcher", "variants",
                 "partials", "lay", "programs", "halves", "after")

    def __init__(self, kernel, grid, flags, scalars, consts, num_warps, dtypes, partials=None, lay=None, programs=0,
                 halves=None):
        self.kernel, self.grid, self.consts, self.num_warps = kernel, grid, consts, num_warps
        self.flags = flags          # per param: the int argument after it (per-channel or not), or None
        self.scalars = scalars      # the arguments after the tensors
        self.dtypes = dtypes        # of the tensor arguments, in order
        self.launcher, self.variants = None, {}      # the launcher whose variants these are
        # a backward with params: its partial sums' (shape, dtype), and where it sums the
        # params' gradients the layout and programs finish_param_grads takes
        self.partials, self.lay, self.programs = partials, lay, programs
        # a gated op's backward: where its inputs may be the halves of one tensor, (b's
        # distance from a in bytes where they are, that tensor's rows (halves_form), the
        # scalars then: the gradients are the halves of one buffer, their rows maybe apart)
        self.halves = halves
        # a forward's: the backward plans its calls led to, by (whether the params' gradients
        # are needed, backend), each with the plans it was made among (Activation.planned_grads)
        self.after = {}

    def _signature(self, tensors) -> int | None:
        """What picks the variant of a launch by this plan: its tensors' 16-byte alignments,
        as the bits of an int, where their dtypes are the plan's (else None)."""
        sig = 1
        for t, dtype in zip(tensors, self.dtypes):
            if t.dtype is not dtype:
                return None
            sig = 2 * sig + (t.data_ptr() % 16 == 0)
        return sig

    def _launch(self, head, params, tail, scalars):
        """Launch with the tensors head, the params (each followed by its flag), the tensors
        tail, then the scalars."""
        if params:
            args = list(head)
            for p, flag in zip(params, self.flags):
                args.append(p)
                if flag is not None:
                    args.append(flag)
            args += tail
            args += scalars
            tensors = (*head, *params, *tail)
        else:
            tensors = (*head, *tail)
            args = (*tensors, *scalars)
        launcher = LAUNCH
        if launcher.__class__ is not Launcher:      # (a stand-in)
            return self._through(launcher, args)
        if launcher is not self.launcher:           # (the variants kept are a launcher's own)
            self.launcher, self.variants = launcher, {}
        sig = self._signature(tensors)
        compiled = self.variants.get(sig) if sig is not None else None
        if compiled is not None:
            return launcher.launch_kept(compiled, self.kernel, self.grid, args, self.consts, self.num_warps)
        result = self._through(launcher, args)
        if sig is not None:
            compiled = launcher.kept(self.kernel, args, self.consts, self.num_warps)
            if compiled is not None:
                self.variants[sig] = compiled
        return result

    def _through(self, launcher, args):
        if INTERPRET:       # (numpy's arithmetic, as in _tuned)
            with np.errstate(all="ignore"):
                return launcher(self.kernel, self.grid, args, self.consts, self.num_warps)
        return launcher(self.kernel, self.grid, args, self.consts, self.num_warps)

    def forward(self, inputs, params=()) -> torch.Tensor:
        """f of the inputs (forward's result)."""
        x = inputs[0]
        out = torch.empty_like(x) if x.is_contiguous() else new_contiguous(x)      # (a gated op's rows: not)
        self._launch(inputs, params, (out,), self.scalars)
        return out

    def backward(self, grad, inputs, params=(), halves=True) -> list[torch.Tensor]:
        """backward's result: [grad * df/d(each input), and each param's gradient (where the
        plan sums them; else an unused buffer)]; a gated op's input gradients are the halves
        of one buffer where its inputs are the halves of one tensor and `halves` allows it
        (halves_grads)."""
        scalars = self.scalars
        if len(inputs) == 1:
            grads = [torch.empty_like(inputs[0])]        # (contiguous, as the input is)
        else:
            a, b = inputs
            form = self.halves
            if halves and form is not None and b.data_ptr() - a.data_ptr() == form[0]:     # (one dtype: _plan_form)
                grads = halves_buffers(a, b, form[1])
                scalars = form[2]
            else:
                grads = [new_contiguous(a), new_contiguous(b)]
        head = (grad.contiguous(), *inputs)
        if self.partials is None:       # (no params)
            self._launch(head, (), grads, scalars)
            return grads
        shape, dtype = self.partials
        partials = torch.empty(shape, dtype=dtype, device=grad.device)
        self._launch(head, params, (*grads, partials), scalars)
        if self.lay is None:
            return [*grads, *[torch.empty_like(p) for p in params]]
        return [*grads, *finish_param_grads(partials, self.lay, self.programs, params)]


MAX_PLANS = 1024        # plans kept: cleared beyond
PLANS = os.environ.get("ACTGEN_LAUNCH_PLANS", "1") != "0"      # whether plans are made


def _planned_layout(inputs, channel_dim, channels):
    """_layouts' (layout in untuned tiles, row distance) of inputs that a plan launches as
    they are: contiguous, or rows (a gated op's); None where the launch takes copies."""
    _, lay0, stride = _layouts(inputs, channel_dim, channels)
    if stride is None and not all(t.is_contiguous() for t in inputs):
        return None
    return lay0, stride


def plan_forward(kernel, inputs, params, per_channel, constants, channel_dim, channels, wide=False) -> Plan | None:
    """forward()'s launch for inputs and params like these of an op without draws, as a
    Plan; None where the tuner has not settled on a config for them, they are empty, or the
    launch takes copies of them."""
    x = inputs[0]
    laid = _planned_layout(inputs, channel_dim, channels) if x.numel() and PLANS else None
    if laid is None:
        return None
    lay0, stride = laid
    cfg = TUNER.settled(kernel, x, lay0.kind)
    if cfg is None:
        return None
    grid, tail, blocks = _forward_tiles(lay0, cfg, stride, len(inputs) == 2)
    dtypes = (*[t.dtype for t in inputs], *[p.dtype for p in params], x.dtype)
    return Plan(kernel, grid, _flags(params, per_channel), (*constant_parts(constants), *tail),
                (*blocks, _acc(x.dtype, wide), _fast(x.dtype)), cfg.num_warps, dtypes)


def plan_backward(kernel, inputs, params, per_channel, constants, channel_dim, channels, need_params,
                  wide=False) -> Plan | None:
    """backward()'s launch for inputs and params like these of an op without draws, the
    params' gradients needed or not, as a Plan (see plan_forward); a gated op's also for
    inputs that are the halves of one tensor (Plan.halves)."""
    x = inputs[0]
    laid = _planned_layout(inputs, channel_dim, channels) if x.numel() and PLANS else None
    if laid is None:
        return None
    lay0, stride = laid
    kind = lay0.kind + "+param_grad" if need_params else lay0.kind
    cfg = TUNER.settled(kernel, x, kind)
    if cfg is None:
        return None
    gated = len(inputs) == 2
    lay, tail, blocks = _backward_tiles(lay0, cfg, stride, None, gated)
    consts = (*blocks, _acc(x.dtype, wide), _fast(x.dtype))
    parts = constant_parts(constants)
    dtypes = (x.dtype, *[t.dtype for t in inputs], *[p.dtype for p in params], *[t.dtype for t in inputs])
    flags = _flags(params, per_channel)
    form = halves_form(*inputs) if gated else None
    if form is not None:        # (the halves of one buffer: rows 2N apart where the inputs are rows)
        _, tail_halves, _ = _backward_tiles(lay0, cfg, stride, 2 * lay0.N if stride is not None else None, gated)
    if not params:
        halves = None if form is None else (*form[:2], (*parts, *tail_halves))
        return Plan(kernel, lay.grid, flags, (*parts, *tail), (*consts, False), cfg.num_warps, dtypes, halves=halves)
    programs, iters, step, n_partials, acc_dtype = _param_grad_tiles(lay, cfg, need_params, x.dtype, wide, x.device)
    halves = None if form is None else (*form[:2], (n_partials, *parts, *tail_halves, iters))
    return Plan(kernel, (programs,), flags, (n_partials, *parts, *tail, iters), (*consts, need_params, step),
                cfg.num_warps, (*dtypes, acc_dtype), partials=((len(params), n_partials if need_params else 1), acc_dtype),
                lay=lay if need_params else None, programs=programs, halves=halves)


def draw_values(seed: int, n: int, shape, device) -> list[torch.Tensor]:
    """The n draws the kernels make in a call with this seed, as float32 tensors of shape."""
    from .triton_lang import FP_FUSION, draws_kernel

    numel = math.prod(shape)
    out = [torch.empty(shape, dtype=torch.float32, device=device) for _ in range(n)]
    if numel:
        with on_device(out[0]):
            for k, r in enumerate(out):
                draws_kernel[(-(-numel // TILE),)](r, seed, numel, K=k, BLOCK=TILE, num_warps=DEFAULT.num_warps, **FP_FUSION)
    return out


# Programs of a stepping backward with param gradients (Config.step): about PROGRAMS_PER_SM
# per SM, each stepping through its share of the tiles and keeping its param-gradient sums in
# registers, so the partial sums are a few per program, not one per tile.
PROGRAMS_PER_SM = 8
INTERPRETER_SMS = 4


@functools.lru_cache(maxsize=None)
def _sm_count(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return INTERPRETER_SMS


def param_grad_programs(lay: Layout, device: torch.device) -> tuple[int, int]:
    """(programs, tiles per program) for a backward that sums param gradients.

    Program p takes tiles p, p + P, p + 2P, ...  With P a multiple of tiles_n, its tiles share
    their columns (channels-last: its partial sums are per channel), and with (P / tiles_n)
    row-tiles a whole number of channel periods, its rows' channels repeat (channels-first)."""
    tiles = lay.tiles_m * lay.tiles_n
    period = lay.C // math.gcd(lay.C, lay.block_m) if lay.ch_axis == 0 else 1
    base = lay.tiles_n * period
    programs = base * max(1, min(tiles, PROGRAMS_PER_SM * _sm_count(device)) // base)
    return programs, -(-tiles // programs)


def backward(kernel, grad, inputs, params, per_channel, constants, channel_dim, channels, needs, draws=None,
             wide=False, halves=True):
    x = inputs[0]
    need_params = any(needs[len(inputs):])
    if x.numel() == 0:
        return [torch.empty_like(t, memory_format=torch.contiguous_format) for t in inputs] + [torch.zeros_like(p) for p in params]
    tensors, lay0, stride = _layouts(inputs, channel_dim, channels)
    gated = len(inputs) == 2
    grads, grad_stride = _input_grads(inputs, tensors, stride, halves)
    args = [grad.contiguous(), *tensors, *_param_args(params, per_channel), *grads] if params \
        else [grad.contiguous(), *tensors, *grads]
    parts = constant_parts(constants) if constants else ()
    seed, training = _draw_args(draws)
    consts = (_acc(x.dtype, wide), _fast(x.dtype))       # ACC, FAST

    launched = {}

    def run(cfg: Config):
        """Launch with cfg (the compiled kernel back); the param-gradient partial sums, sized
        from its tile, summed into the params' gradients (left in `launched`) - so the
        tuner times a config with the sums it leaves to finish."""
        lay, tail, blocks = _backward_tiles(lay0, cfg, stride, grad_stride, gated)
        if not params:
            return LAUNCH(kernel, lay.grid, (*args, *parts, *seed, *tail), (*blocks, *consts, False, *training),
                          cfg.num_warps)
        programs, iters, step, n_partials, acc_dtype = _param_grad_tiles(lay, cfg, need_params, x.dtype, wide, x.device)
        partials = torch.empty((len(params), n_partials if need_params else 1), dtype=acc_dtype, device=x.device)
        compiled = LAUNCH(kernel, (programs,), (*args, partials, n_partials, *parts, *seed, *tail, iters),
                          (*blocks, *consts, need_params, step, *training), cfg.num_warps)
        if need_params:
            launched["param_grads"] = finish_param_grads(partials, lay, programs, params)
        return compiled

    kind = lay0.kind + "+param_grad" if need_params else lay0.kind
    _tuned(kernel, x, kind, run, need_params)
    grads = [g if g.shape == t.shape else g.view(t.shape) for g, t in zip(grads, inputs)]
    if not need_params:
        return grads + [torch.empty_like(p) for p in params]
    return grads + launched["param_grads"]


def _param_grad_tiles(lay: Layout, cfg: Config, need_params: bool, dtype, wide: bool, device):
    """A backward with params in lay, cfg's tiles: (its programs, tiles per program, whether
    it steps, partial sums per param, their dtype)."""
    step = need_params and cfg.step
    programs, iters = param_grad_programs(lay, device) if step else (lay.grid[0], 1)
    n_partials = programs * (lay.block_m if lay.ch_axis == 0 else lay.block_n)
    acc_dtype = torch.float64 if dtype == torch.float64 or wide else torch.float32
    return programs, iters, step, n_partials, acc_dtype


def _input_grads(inputs, tensors, stride, halves=True):
    """The input gradients' buffers, as the kernel writes them (the shapes of `tensors`, the
    inputs as it reads them), and their row distance (None: _N): with halves, for a gated
    op's inputs that are the halves of one tensor, the halves of one buffer laid out as that
    tensor (layouts.halves_grads), so that its gradient is that buffer itself (layouts.Halves)."""
    # (not where the kernel takes copies of inputs that are rows apart - per-channel params:
    # it writes contiguous gradients, so halves rows apart cannot take them)
    halves = (halves_grads(*inputs) if halves and len(inputs) == 2 and (stride is not None or inputs[0].is_contiguous())
              else None)
    if halves is None:
        return [new_contiguous(t) for t in tensors], None
    grads = [h.view(t.shape) for h, t in zip(halves, tensors)]
    return grads, grads[0].stride(0) if stride is not None else None


def finish_param_grads(partials: torch.Tensor, lay: Layout, programs: int, params) -> list[torch.Tensor]:
    """Every param's gradient from the kernel's per-program partial sums, all params at once
    (a handful of torch ops whatever their number: on a fast GPU the host time per op counts).

    Program p's partials: rows (p // tiles_n) * BLOCK_M + r, modulo q * BLOCK_M (a whole
    number of channel periods) when stepping, rows from M on being zero; or columns
    (p % tiles_n) * BLOCK_N + c."""
    n = len(params)
    q = programs // lay.tiles_n
    if lay.ch_axis == 0:
        if q * lay.block_m == 1:        # one row (the flat layout): every partial sums to it
            per_channel = partials.sum(1, keepdim=True)
        else:
            per_row = partials.view(n, q, lay.tiles_n, lay.block_m).sum(2).view(n, -1)[:, : lay.M]
            per_channel = per_row.view(n, -1, lay.C).sum(1) if lay.C > 1 else per_row
    else:
        per_channel = partials.view(n, q, lay.tiles_n * lay.block_n).sum(1)[:, : lay.N]
    numels = [p.numel() for p in params]
    shared = None
    if 1 in numels:
        shared = per_channel if per_channel.shape[1] == 1 else per_channel.sum(1, keepdim=True)
    casts: dict = {}        # per dtype: (per-channel rows, totals), cast once, the rows as views at once
    out = []
    for k, p in enumerate(params):
        if p.dtype not in casts:
            casts[p.dtype] = (per_channel.to(p.dtype).unbind(0) if max(numels) > 1 else None,
                              None if shared is None else shared.to(p.dtype).unbind(0))
        full, total = casts[p.dtype]
        out.append(full[k] if numels[k] > 1 else total[k])
    return out
