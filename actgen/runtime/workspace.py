"""The chunk-sized buffers the CPU fallback's fast variant computes in.

The generated fast functions (actgen.printers.workspace) write every chunk-sized value into a
buffer of the list they are given (CPU tensors: the fast variant runs on CPU chunks only).
Those buffers are kept here between chunks and between calls, per thread and per dtype, as
views into one tensor of at most WORKSPACE_BYTES (the fallback sizes its chunks to fit:
actgen.runtime.Activation.CHUNK_BYTES), so that a chunk's temporaries are memory already
mapped and warm in cache, not fresh pages from the system.  `release()` lets them go.
"""
from __future__ import annotations

import math
import threading

import torch

#: The most memory one thread's workspace holds per dtype, in bytes.
WORKSPACE_BYTES = 8 << 20
#: Views kept per thread for this many chunk shapes (a call's chunks have one or two).
MAX_SHAPES = 8


class Workspace(threading.local):
    def __init__(self):
        self.flat: dict[torch.dtype, torch.Tensor] = {}
        self.views: dict[tuple, list[torch.Tensor]] = {}

    def buffers(self, count: int, shape, dtype: torch.dtype) -> list[torch.Tensor]:
        """count distinct contiguous buffers of shape and dtype, the same ones from call to
        call (their values are whatever their last user left)."""
        shape = tuple(shape)
        views = self.views.get((dtype, shape))
        if views is not None and len(views) >= count:
            return views
        del views
        with torch.inference_mode(False):       # normal tensors and views, usable in and out of it
            return self._make(count, shape, dtype)

    def _make(self, count, shape, dtype):
        numel = math.prod(shape)
        flat = self.flat.get(dtype)
        if flat is None or flat.numel() < count * numel:
            del flat            # the smaller one goes first: never both at once
            self.flat.pop(dtype, None)
            self.views = {k: v for k, v in self.views.items() if k[0] != dtype}
            flat = torch.empty(max(count * numel, 1), dtype=dtype, device="cpu")
            self.flat[dtype] = flat
        if len(self.views) >= MAX_SHAPES:
            self.views.clear()
        views = [flat[k * numel:(k + 1) * numel].view(shape) for k in range(count)]
        self.views[(dtype, shape)] = views
        return views

    def nbytes(self) -> int:
        """The bytes this thread's buffers hold."""
        return sum(f.numel() * f.element_size() for f in self.flat.values())

    def release(self):
        """Let this thread's buffers go."""
        self.flat.clear()
        self.views.clear()


WORKSPACE = Workspace()
