"""Launching generated kernels: the 2-D tile layout, grids, and the param-gradient reduction.

A tensor of shape (..., C, I...) with per-channel params is seen as a contiguous matrix:
* channels first (elements after the channel dim, I > 1): M = outer*C rows of N = I
  elements; a row's channel is row % C (CH_AXIS = 0);
* channels last (I == 1): M = outer rows of N = C elements; an element's channel is its
  column (CH_AXIS = 1);
* no per-channel params: one row of N = numel elements.
Each program handles one BLOCK_M x BLOCK_N tile, so per-channel param gradients are tile
row sums (CH_AXIS 0) or column sums (CH_AXIS 1): per-program partial sums land in a small
buffer, and a deterministic torch sum finishes them.  No atomics, no per-element gradient.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from .triton_lang import tl

TILE = 1024          # elements per program
NUM_WARPS = 4


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

    @property
    def grid(self) -> tuple[int]:
        return (self.tiles_m * self.tiles_n,)


@functools.lru_cache(maxsize=256)     # the same shapes come back every step
def layout(shape, channel_dim: int, channels: int) -> Layout:
    numel = math.prod(shape)
    if channels > 1:
        inner = math.prod(shape[channel_dim + 1:])
        if inner == 1:
            M, N, axis = numel // channels, channels, 1
        else:
            M, N, axis = numel // inner, inner, 0
    else:
        M, N, axis = 1, numel, 0
    block_n = min(_pow2(N), TILE)
    block_m = max(1, min(TILE // block_n, _pow2(M)))
    return Layout(M, N, channels, axis, block_m, block_n)


def _acc(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _param_args(params, per_channel):
    args = []
    for p, pc in zip(params, per_channel):
        args.append(p.contiguous())
        if pc:
            args.append(1 if p.numel() > 1 else 0)
    return args


def _draw_args(draws):
    """The kernel arguments of an op with random draws: draws is None for an op without any,
    else (seed, training)."""
    if draws is None:
        return [], {}
    seed, training = draws
    return [seed], {"TRAINING": training}


def forward(kernel, inputs, params, per_channel, constants, channel_dim, channels, draws=None):
    x = inputs[0]
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if x.numel() == 0:
        return out
    lay = layout(x.shape, channel_dim, channels)
    seed, training = _draw_args(draws)
    kernel[lay.grid](
        *[t.contiguous() for t in inputs], *_param_args(params, per_channel), out,
        *constants, *seed, lay.M, lay.N, lay.C,
        BLOCK_M=lay.block_m, BLOCK_N=lay.block_n, CH_AXIS=lay.ch_axis, ACC=_acc(x.dtype),
        num_warps=NUM_WARPS, **training,
    )
    return out


def draw_values(seed: int, n: int, shape, device) -> list[torch.Tensor]:
    """The n draws the kernels make in a call with this seed, as float32 tensors of shape."""
    from .triton_lang import draws_kernel

    numel = math.prod(shape)
    out = [torch.empty(shape, dtype=torch.float32, device=device) for _ in range(n)]
    if numel:
        for k, r in enumerate(out):
            draws_kernel[(-(-numel // TILE),)](r, seed, numel, K=k, BLOCK=TILE, num_warps=NUM_WARPS)
    return out


def backward(kernel, grad, inputs, params, per_channel, constants, channel_dim, channels, needs, draws=None):
    x = inputs[0]
    grads = [torch.empty(t.shape, dtype=t.dtype, device=t.device) for t in inputs]
    need_params = any(needs[len(inputs):])
    if x.numel() == 0:
        return grads + [torch.zeros_like(p) for p in params]
    lay = layout(x.shape, channel_dim, channels)
    n_partials = lay.tiles_n * lay.M if lay.ch_axis == 0 else lay.tiles_m * lay.N
    acc_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    extra = []
    partials = None
    if params:
        partials = torch.empty((len(params), n_partials if need_params else 1), dtype=acc_dtype, device=x.device)
        extra = [partials, n_partials]
    seed, training = _draw_args(draws)
    kernel[lay.grid](
        grad.contiguous(), *[t.contiguous() for t in inputs], *_param_args(params, per_channel),
        *grads, *extra, *constants, *seed, lay.M, lay.N, lay.C,
        BLOCK_M=lay.block_m, BLOCK_N=lay.block_n, CH_AXIS=lay.ch_axis, ACC=_acc(x.dtype),
        PARAM_GRAD=need_params, num_warps=NUM_WARPS, **training,
    )
    for k, p in enumerate(params):
        if not need_params:
            grads.append(torch.empty_like(p))
            continue
        if lay.ch_axis == 0:
            per_row = partials[k].view(lay.tiles_n, lay.M).sum(0)
            total = per_row.view(-1, lay.C).sum(0) if p.numel() > 1 else per_row.sum().reshape(1)
        else:
            per_col = partials[k].view(lay.tiles_m, lay.N).sum(0)
            total = per_col if p.numel() > 1 else per_col.sum().reshape(1)
        grads.append(total.to(p.dtype))
    return grads
