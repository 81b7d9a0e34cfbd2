"""The small runtime generated modules import.  Never imports sympy."""
from __future__ import annotations

import math

import torch

from .backend import HAS_TRITON, get_backend, set_backend, use_backend
from .activation import Activation, as_tensor, vmap_by_loop


def softplus(u: torch.Tensor) -> torch.Tensor:
    """log(1 + exp(u)) without overflow, accurate for large |u| (torch's threshold is not)."""
    return torch.clamp_min(u, 0) + torch.log1p(torch.exp(-torch.abs(u)))


def scalar_sigmoid(u: float) -> float:
    return 1.0 / (1.0 + math.exp(-u)) if u >= 0 else math.exp(u) / (1.0 + math.exp(u))


def scalar_softplus(u: float) -> float:
    return max(u, 0.0) + math.log1p(math.exp(-abs(u)))


def split_halves(t: torch.Tensor, dim: int, name: str):
    """Split a gated module's input into two halves along dim (first half first, as nn.GLU)."""
    if t.dim() == 0:
        raise ValueError(f"{name}: cannot split a 0-dim tensor")
    size = t.shape[dim]
    if size % 2:
        raise ValueError(f"{name}: the input's size {size} along dim {dim} is odd; it must split into two equal halves")
    a, b = t.chunk(2, dim)
    return a, b


__all__ = [
    "HAS_TRITON", "Activation", "as_tensor", "vmap_by_loop", "get_backend", "set_backend",
    "use_backend", "softplus", "scalar_sigmoid", "scalar_softplus", "split_halves",
]
