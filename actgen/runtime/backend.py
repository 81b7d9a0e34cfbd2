"""Which implementation runs: Triton kernels or the eager torch fallback.

`ACTGEN_BACKEND=torch|triton` forces one (read once, at import); `set_backend` changes it
at run time.  Default: Triton for CUDA tensors when triton is importable, else torch.
With `triton` on CPU tensors the kernels run under Triton's interpreter.
"""
from __future__ import annotations

import contextlib
import os

import torch

_CHOICES = ("auto", "torch", "triton")
_backend = os.environ.get("ACTGEN_BACKEND", "auto") or "auto"
if _backend not in _CHOICES:
    raise ValueError(f"ACTGEN_BACKEND must be one of torch, triton (got {_backend!r})")

if _backend == "triton" and not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

try:
    import triton  # noqa: F401
    HAS_TRITON = True
except ImportError:
    HAS_TRITON = False


def get_backend() -> str:
    return _backend


def set_backend(name: str) -> None:
    global _backend
    if name not in _CHOICES:
        raise ValueError(f"backend must be one of {', '.join(_CHOICES)}, got {name!r}")
    if name == "triton" and not HAS_TRITON:
        raise RuntimeError("backend 'triton' needs the triton package")
    _backend = name


@contextlib.contextmanager
def use_backend(name: str):
    old = _backend
    set_backend(name)
    try:
        yield
    finally:
        set_backend(old)


def use_triton(x: torch.Tensor, kernel) -> bool:
    if _backend == "torch" or kernel is None:
        if _backend == "triton" and kernel is None:
            raise RuntimeError("backend 'triton' was asked for but triton is not available")
        return False
    return _backend == "triton" or x.is_cuda
