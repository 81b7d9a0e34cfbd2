"""How the ops see their inputs' memory: in memory order (a dense tensor in another order
than the logical one), as rows (a gated op's inputs that are the halves of one tensor), or
as contiguous copies.  Pure functions of shapes and strides; no triton."""
from __future__ import annotations

import torch


def new_contiguous(t: torch.Tensor) -> torch.Tensor:
    """A new contiguous tensor of t's shape, dtype and device (empty_like: about a third of
    the host time of torch.empty(t.shape, dtype=..., device=...))."""
    return torch.empty_like(t, memory_format=torch.contiguous_format)


def memory_order(inputs) -> tuple[int, ...] | None:
    """The dims of the inputs from outermost to innermost in memory, where they are laid out
    densely in another order than the logical one (channels_last, a transposed matrix, a
    batch dim moved to the front) and all alike; else None (contiguous, or gaps or mixed
    layouts).  The ops run on the views in memory order, so their outputs keep the inputs'
    layout, as torch's elementwise ops do, with no copy."""
    x = inputs[0]
    if x.dim() < 2 or x.is_contiguous():
        return None
    strides = x.stride()
    order = tuple(sorted(range(x.dim()), key=lambda d: (-strides[d], d)))
    if not all(t.permute(order).is_contiguous() for t in inputs):
        return None
    return order


def inverse_order(order) -> tuple[int, ...]:
    return tuple(sorted(range(len(order)), key=order.__getitem__))


def permuted_back(y: torch.Tensor, order) -> torch.Tensor:
    """y (computed in memory order, contiguous) permuted back to the logical order as a tensor
    of its own over y's memory, not a view of y: an op's output that is a view of a tensor
    made inside it cannot be modified in place (`h = act(x); h += skip`), and forward-mode
    AD refuses such a view's tangent (channels_last x, x.t())."""
    view = y.permute(inverse_order(order))
    out = y.new_empty(0)
    return out.set_(y.untyped_storage(), y.storage_offset(), view.shape, view.stride())


def rows_of(inputs) -> tuple[list[torch.Tensor], int] | None:
    """Inputs that are not contiguous but are rows of unit-stride elements the same distance
    apart, all alike - the halves of one tensor along a dim (a SwiGLU module's a and b: rows
    2N apart) - as (their (rows, N) views, the distance); else None."""
    x = inputs[0]
    if x.is_contiguous() or not x.numel():
        return None
    n, k = 1, x.dim()
    while k and (x.shape[k - 1] == 1 or x.stride(k - 1) == n):     # the trailing dims that are contiguous
        n *= x.shape[k - 1]
        k -= 1
    try:
        views = [t.view(-1, n) for t in inputs]
    except RuntimeError:        # the leading dims are not rows the same distance apart
        return None
    stride = views[0].stride(0)
    if stride < n or any(v.stride() != (stride, 1) for v in views):
        return None
    return views, stride


def halves_form(a: torch.Tensor, b: torch.Tensor) -> tuple[int, int | None] | None:
    """Where a gated op's inputs a and b, alike in shape, dtype and device, are the two halves
    of one tensor split along a dim when b starts where this says: (b's distance from a in
    bytes, the rows of that tensor as halves_buffers lays it out: None where a and b are each
    contiguous, split along the first dim); None where they cannot be (their shapes and
    strides decide it, and their distance whether they are)."""
    if a.shape != b.shape or a.dtype != b.dtype or a.device != b.device or not a.numel():
        return None
    if a.is_contiguous() and b.is_contiguous():
        return a.numel() * a.element_size(), None
    rows = rows_of([a, b])
    if rows is None:
        return None
    (va, _), stride = rows
    m, n = va.shape
    return (n * a.element_size(), m) if stride == 2 * n else None


def halves_buffers(a: torch.Tensor, b: torch.Tensor, rows: int | None) -> list[torch.Tensor]:
    """The halves of one new buffer laid out as the tensor whose halves a and b are (see
    halves_form), each of its input's shape: flat where rows is None, else (rows, 2n)."""
    if rows is None:
        ga, gb = a.new_empty(2 * a.numel()).chunk(2)
    else:
        ga, gb = a.new_empty((rows, 2 * (a.numel() // rows))).chunk(2, 1)
    if ga.shape != a.shape:
        return [ga.view(a.shape), gb.view(b.shape)]
    return [ga, gb]


def halves_grads(a: torch.Tensor, b: torch.Tensor) -> list[torch.Tensor] | None:
    """For a gated op's inputs a and b that are the two halves of one tensor split along a dim
    - b's part of each row right after a's (rows_of's views 2N apart), or each contiguous and
    b right after a (split along the first dim) - buffers for their gradients: the halves of
    one new buffer laid out as that tensor, each of its input's shape, so that Halves takes the
    tensor's gradient whole, with no concatenation; else None."""
    form = halves_form(a, b)
    if form is None or b.data_ptr() != a.data_ptr() + form[0]:
        return None
    return halves_buffers(a, b, form[1])


class Halves(torch.autograd.Function):
    """t split in two halves along dim (t.chunk(2, dim)), whose backward takes the halves'
    gradients as they are where they are the halves of one buffer laid out as t (a gated op's
    backward writes them so: halves_grads), instead of concatenating them into a new one; not
    where they take part in a graph of their own (create_graph: the buffer is not in it)."""

    @staticmethod
    def forward(ctx, t, dim):
        ctx.dim, ctx.shape = dim, t.shape
        return tuple(t.chunk(2, dim))

    @staticmethod
    def backward(ctx, ga, gb):
        base = ga._base if ga is not None and not (ga.requires_grad or (gb is not None and gb.requires_grad)) else None
        if base is not None and gb is not None and gb._base is base and base.is_contiguous() and base.numel() == 2 * ga.numel():
            whole = base.view(ctx.shape)
            ha, hb = whole.chunk(2, ctx.dim)
            if (ha.data_ptr(), ha.stride(), hb.data_ptr(), hb.stride()) == (ga.data_ptr(), ga.stride(), gb.data_ptr(), gb.stride()):
                return whole, None
        size = ctx.shape[ctx.dim] // 2
        shape = list(ctx.shape)
        shape[ctx.dim] = size
        ga = ga if ga is not None else gb.new_zeros(shape)
        gb = gb if gb is not None else ga.new_zeros(shape)
        return torch.cat([ga, gb], ctx.dim), None
