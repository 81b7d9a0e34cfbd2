"""The small runtime generated modules import.  Never imports sympy."""
from __future__ import annotations

import math

import torch

from .backend import HAS_TRITON, get_backend, set_backend, use_backend
from .activation import Activation, as_tensor, dim_index, no_forward_ad, vmap_by_loop
from .layouts import Halves
from ..special import erfcx as scalar_erfcx
from .workspace import WORKSPACE

if HAS_TRITON:      # Triton's hash of itself, for a first compile, taken in the background
    from . import compiler_key

    compiler_key.start_if_wanted()


def release_workspace() -> None:
    """Free this thread's CPU workspace (the fallback's reused chunk buffers, at most 8 MiB
    per dtype); the next CPU call makes it again."""
    WORKSPACE.release()


#: softplus(u) = u + log1p(exp(-u)) is u to float64 precision above 40 (log1p(exp(-40)) = 4e-18),
#: and log1p(exp(u)) is exact enough at or below it (no overflow): torch's one-pass kernel with
#: this threshold, where its default of 20 is off by 2e-9 relative at u = 20 in float64.
SOFTPLUS_THRESHOLD = 40.0


def softplus(u: torch.Tensor, out=None) -> torch.Tensor:
    """log(1 + exp(u)) without overflow, to an ULP in float32 and float64."""
    if out is None:
        return torch.nn.functional.softplus(u, threshold=SOFTPLUS_THRESHOLD)
    return torch._C._nn.softplus(u, 1.0, SOFTPLUS_THRESHOLD, out=out)


def _into(out, value):
    """value, written into out where out is given (the CPU fast variant's workspace buffer,
    actgen.printers.workspace): a function called with out= always leaves its value there (a
    Python bool as 1.0 or 0.0)."""
    if out is None or value is out:
        return value
    return out.copy_(value) if isinstance(value, torch.Tensor) else out.fill_(value)


# The value at +-inf of a formula whose limit there depends on params (actgen.derive.LimitAtInf):
# the formula is evaluated once more at +-2**24 (an expression of the params alone, written by
# the compiler); a result of magnitude GROWTH or more means the function grows without bound.
GROWTH = 2.0 ** 14
# A finite input this large or larger where the value is NaN is at its infinity too: a product
# with a param overflowed on the way (x * sigmoid(beta * x)'s slope at x = 3e38 in float32,
# beta*x*sigmoid(-beta*x) as inf * 0); the limit on that side is its value.
HUGE_INPUT = 2.0 ** 64


def grown(p):
    """A probe's limit (an expression of the params and constants: a tensor or a number): +-inf
    where it grew to GROWTH or more."""
    if not isinstance(p, torch.Tensor):
        return math.copysign(math.inf, p) if abs(p) >= GROWTH else p
    # (copysign, not p*inf: the branch not taken gets a gradient of 0, which times inf was
    # NaN in a derivative of the limit in the params, jacrev of jacfwd)
    return torch.where(p.abs() >= GROWTH, torch.copysign(torch.full_like(p, math.inf), p), p)


def number(like: torch.Tensor, value: float) -> torch.Tensor:
    """A 0-dim tensor of like's dtype and device holding value - rounded to +-inf where value is
    beyond the dtype's range (a formula's 1e300 in float32), as float arithmetic rounds it."""
    try:
        return like.new_full((), value)
    except RuntimeError:        # torch refuses to convert it ("without overflow")
        return like.new_full((), math.copysign(math.inf, value))


def limit_at_inf(value, at_plus, at_minus, u: torch.Tensor):
    """value, except where u is +-inf, or finite at HUGE_INPUT or beyond, and value is NaN:
    at_plus or at_minus there (the limits on either side, numbers or param tensors)."""
    value = as_tensor(value, u)
    side = lambda v: v if isinstance(v, torch.Tensor) else number(u, v)
    return torch.where((torch.abs(u) >= HUGE_INPUT) & torch.isnan(value), torch.where(u > 0, side(at_plus), side(at_minus)),
                       value)


def hypot(a, b, out=None) -> torch.Tensor:
    """sqrt(a**2 + b**2) without overflow; either may be a Python float."""
    if not isinstance(a, torch.Tensor):
        a = number(b, a)
    if not isinstance(b, torch.Tensor):
        b = number(a, b)
    return torch.hypot(a, b) if out is None else torch.hypot(a, b, out=out)


def sqrt_square_plus(u, c, out=None) -> torch.Tensor:
    """sqrt(u**2 + c) without forming u**2 (which overflows first): hypot(u, sqrt(c)) where
    c >= 0, sqrt(|u| - sqrt(-c)) * sqrt(|u| + sqrt(-c)) where not; c a number or a tensor."""
    if isinstance(c, torch.Tensor):
        r = torch.sqrt(torch.abs(c))
        a = torch.abs(u)
        return _into(out, torch.where(c >= 0, hypot(a, r), torch.sqrt(a - r) * torch.sqrt(a + r)))
    if c >= 0:
        return hypot(u, math.sqrt(c), out=out)
    r = math.sqrt(-c)
    a = torch.abs(u)
    return _into(out, torch.sqrt(a - r) * torch.sqrt(a + r))


def scalar_sqrt_square_plus(u: float, c: float) -> float:
    if c >= 0:
        return math.hypot(u, math.sqrt(c))
    r, a = math.sqrt(-c), abs(u)
    return math.sqrt(a - r) * math.sqrt(a + r) if a >= r else math.nan


# The scale s = 2**k of a ratio of polynomials in x (actgen.derive.ScaledInput), from the
# input's bits: its exponent field alone is p = 2**floor(log2|u|) for a normal u (0 for 0 and
# subnormals, inf for +-inf and NaN), and s = max(2p, 1) - frexp's 2**e, |u| < 2**e, at
# least 1.  Three or four passes over memory that allocate nothing with out= (torch.frexp,
# ldexp and the bool masks of a where took 13 times as long, and allocated).
_EXPONENT_FIELD = {torch.float32: (torch.int32, 0x7F800000, 2.0 ** 127),
                   torch.float64: (torch.int64, 0x7FF0000000000000, 2.0 ** 1023)}


def _half_over_exponent(u: torch.Tensor, out, finite: bool) -> torch.Tensor:
    """0.5 / p into out (a new tensor where out is None or u itself), p as above; with finite,
    p no larger than the dtype's largest power of two (+-inf and NaN as the largest finite)."""
    bits, mask, largest = _EXPONENT_FIELD[u.dtype]
    t = torch.empty_like(u, memory_format=torch.contiguous_format) if out is None or out.data_ptr() == u.data_ptr() else out
    torch.bitwise_and(u.view(bits), mask, out=t.view(bits))
    if finite:
        t.clamp_max_(largest)
    return torch.div(0.5, t, out=t)         # (exact: a power of two; 2**-128 is float32's, subnormal)


def _wide(u: torch.Tensor) -> bool:
    return u.dtype not in _EXPONENT_FIELD


def scaled_input(u: torch.Tensor, out=None) -> torch.Tensor:
    """u / 2**k, exactly (see actgen.derive.ScaledInput): +-1 at +-inf, NaN at NaN.  out may
    not be u."""
    if _wide(u):        # (16-bit: the compute dtype's result, rounded to it)
        return _into(out, scaled_input(u.float()).to(u.dtype))
    # u * 0.5/p, within [-1, 1] (|u| < 2p); at +-inf inf * 2**-128 (float32), clamped to +-1
    t = _half_over_exponent(u, out, finite=True).clamp_max_(1.0).mul_(u).clamp_(-1.0, 1.0)
    return _into(out, t)


def inverse_scale(u: torch.Tensor, out=None) -> torch.Tensor:
    """1 / 2**k for scaled_input's k: 1 where |u| < 1, 0 at +-inf and NaN."""
    if _wide(u):
        return _into(out, inverse_scale(u.float()).to(u.dtype))
    return _into(out, _half_over_exponent(u, out, finite=False).clamp_max_(1.0))


def rdiv(c: float, t: torch.Tensor, out=None) -> torch.Tensor:
    """c / t for a float c, rounded once as IEEE division: Python's c / t on a tensor is
    t.reciprocal() * c, two roundings, and NaN where 1/t overflows (t subnormal) and c is 0.
    out may be t."""
    c = number(t, c)
    return torch.div(c, t) if out is None else torch.div(c, t, out=out)


def _addcmul(c, a, b, value, out):
    c = c if isinstance(c, torch.Tensor) else number(a, c)
    return torch.addcmul(c, a, b, value=value) if out is None else torch.addcmul(c, a, b, value=value, out=out)


def fma(a: torch.Tensor, b: torch.Tensor, c, scale: float = 1.0, out=None) -> torch.Tensor:
    """(scale*a)*b + c, scale*a rounded and the rest rounded once where the CPU has fused
    multiply-add (torch.addcmul with value=scale); c may be a number; out may be one of a, b
    and c."""
    return _addcmul(c, a, b, scale, out)


def fnma(a: torch.Tensor, b: torch.Tensor, c, scale: float = 1.0, out=None) -> torch.Tensor:
    """c - (scale*a)*b, rounded as fma."""
    return _addcmul(c, a, b, -scale, out)


def clamp(u: torch.Tensor, lo: float | None, hi: float | None, out=None) -> torch.Tensor:
    """u clamped to [lo, hi] (None: no bound; a bound beyond u's dtype's range is none either),
    NaN staying NaN."""
    big = torch.finfo(u.dtype).max
    lo = lo if lo is not None and -lo <= big else None
    hi = hi if hi is not None and hi <= big else None
    if lo is None and hi is None:
        return _into(out, u)
    return torch.clamp(u, lo, hi) if out is None else torch.clamp(u, lo, hi, out=out)


def capped_exp(u: torch.Tensor, hi32: float, hi64: float, out=None) -> torch.Tensor:
    """exp(min(u, hi)), hi = hi64 for float64 and hi32 otherwise (actgen.derive.CappedExp);
    out may be u."""
    hi = hi64 if u.dtype == torch.float64 else hi32
    if out is None:
        return torch.clamp(u, max=hi).exp_()
    return torch.clamp(u, max=hi, out=out).exp_()


# --- numbers of constants alone (Python floats), with IEEE results where Python raises ----
# A formula's constants can be anything at call time (c = 0 in x/c); the generated code
# computes their expressions with these, as the kernels and torch would: NaN outside a
# function's domain, +-inf at a pole or on overflow - never an exception.

def _ieee(fn, pole=None, odd=False):
    def scalar(u: float) -> float:
        try:
            return fn(u)
        except ValueError:          # outside the domain (log(-1), sin(inf)); -inf at the pole
            return -math.inf if u == pole else math.nan
        except OverflowError:
            return math.copysign(math.inf, u) if odd else math.inf
    scalar.__name__ = scalar.__qualname__ = f"scalar_{fn.__name__}"
    scalar.__doc__ = f"math.{fn.__name__} of a float, IEEE where math raises."
    return scalar


scalar_exp, scalar_expm1, scalar_cosh = _ieee(math.exp), _ieee(math.expm1), _ieee(math.cosh)
scalar_sinh = _ieee(math.sinh, odd=True)
scalar_log, scalar_log1p = _ieee(math.log, pole=0.0), _ieee(math.log1p, pole=-1.0)
scalar_sqrt, scalar_sin, scalar_cos, scalar_tan = (_ieee(f) for f in (math.sqrt, math.sin, math.cos, math.tan))


def scalar_div(a: float, b: float) -> float:
    """a / b of floats: +-inf, or NaN for 0/0, where b is 0."""
    try:
        return a / b
    except ZeroDivisionError:
        if a != a or a == 0:
            return math.nan
        return math.copysign(math.inf, a) * math.copysign(1.0, b)


def scalar_pow(a: float, b: float) -> float:
    """a ** b of floats: NaN where it is not real (a negative base, a fractional exponent),
    +-inf on overflow and for 0 to a negative power."""
    odd = b == int(b) and int(b) % 2 == 1 if math.isfinite(b) else False
    try:
        r = a ** b
    except (ZeroDivisionError, OverflowError):
        return math.copysign(math.inf, a) if odd else math.inf
    return math.nan if isinstance(r, complex) else r


def scalar_sigmoid(u: float) -> float:
    return 1.0 / (1.0 + math.exp(-u)) if u >= 0 else math.exp(u) / (1.0 + math.exp(u))


def scalar_softplus(u: float) -> float:
    return max(u, 0.0) + math.log1p(math.exp(-abs(u)))


# --- the fallback's fast variant (finite inputs, CPU): float 0/1 masks instead of bool ones.
# A compare into a float tensor is vectorized; a bool mask and torch.where are not (several
# times slower on CPU).  select is exact wherever both branches are finite, and NaN where
# the branch not taken is not; the generated functions check their outputs (finite_or_none)
# and the guarded variant runs when a value is not finite.
_FLIPPED = {"gt": "lt", "ge": "le", "lt": "gt", "le": "ge"}


def _compare(op: str, a, b, out=None):
    if not isinstance(a, torch.Tensor):
        a, b, op = b, a, _FLIPPED[op]
    if out is None:
        if isinstance(b, torch.Tensor):
            shape = torch.broadcast_shapes(a.shape, b.shape)
        else:
            shape = a.shape
        out = torch.empty(shape, dtype=torch.result_type(a, b), device=a.device)
    return getattr(torch, op)(a, b, out=out)


def gt(a, b, out=None):
    """a > b as a float 0/1 mask (out: a float tensor to write it into, may be a or b)."""
    return _compare("gt", a, b, out)


def ge(a, b, out=None):
    """a >= b as a float 0/1 mask."""
    return _compare("ge", a, b, out)


def lt(a, b, out=None):
    """a < b as a float 0/1 mask."""
    return _compare("lt", a, b, out)


def le(a, b, out=None):
    """a <= b as a float 0/1 mask."""
    return _compare("le", a, b, out)


def _largest_first(masks):
    """The tensors among masks, the one with most elements first: the first partial result
    then has the whole result's shape, which out has (a param's 0-dim mask combined with
    another into out would resize it)."""
    return sorted((m for m in masks if isinstance(m, torch.Tensor)), key=lambda m: m.numel(), reverse=True)


def mask_and(*masks, out=None):
    """Conjunction of float 0/1 masks (or Python bools); out (not one of the masks): where to
    write it."""
    if any(not m for m in masks if not isinstance(m, torch.Tensor)):
        return _into(out, False)
    value = True
    for m in _largest_first(masks):
        if value is True:
            value = m
        else:
            value = torch.mul(value, m, out=out) if out is not None and value.shape == out.shape else value * m
    return _into(out, value)


def mask_or(*masks, out=None):
    """Disjunction of float 0/1 masks (or Python bools)."""
    if any(m for m in masks if not isinstance(m, torch.Tensor)):
        return _into(out, True)
    value = False
    for m in _largest_first(masks):
        if value is False:
            value = m
        else:
            value = torch.maximum(value, m, out=out) if out is not None and value.shape == out.shape else torch.maximum(value, m)
    return _into(out, value)


def mask_not(m, out=None):
    """Negation of a float 0/1 mask (or a Python bool)."""
    if not isinstance(m, torch.Tensor):
        return _into(out, not m)
    return 1.0 - m if out is None else torch.neg(m, out=out).add_(1.0)


def select(m, a, b, out=None):
    """where(m, a, b) for a float 0/1 mask m: exact where a and b are finite; NaN where the
    branch not taken is inf or NaN.  out (not one of m, a, b): where to write it."""
    if not isinstance(m, torch.Tensor):
        return _into(out, a if m else b)
    a_number, b_number = not isinstance(a, torch.Tensor), not isinstance(b, torch.Tensor)
    if b_number and b == 0.0:
        if a_number and a == 1.0:
            return _into(out, m)
        # 0 + m*a: +0.0 where m is 0, as torch.where gives (m*a alone is -0.0 where a < 0)
        zero, a = number(m, 0.0), number(m, a) if a_number else a
        return torch.addcmul(zero, m, a) if out is None else torch.addcmul(zero, m, a, out=out)
    # lerp(b, a, w) is b + w*(a - b) for w < 0.5 and a - (1 - w)*(a - b) otherwise: b or a exactly
    # (a = 0: +0.0 where m is 1, as torch.where gives; one pass)
    start, end = number(m, b) if b_number else b, number(m, a) if a_number else a
    return torch.lerp(start, end, m) if out is None else torch.lerp(start, end, m, out=out)


def finite_or_none(value):
    """value (a tensor, number or tuple of them) if every tensor in it is finite, else None."""
    for t in value if isinstance(value, tuple) else (value,):
        if isinstance(t, torch.Tensor) and not math.isfinite(t.sum().item()):
            return None
    return value


def halves_dim(b, dim: int, name: str) -> int:
    """The dim a gated functional splits its one tensor along: dim where b is None, else b
    (an int in b's place, as F.glu(x, 1)) - a TypeError where dim is given too and says
    another (glu(x, 1, dim=0), as torch's F.glu refuses two values for its dim)."""
    if b is None:
        return dim
    if dim != -1 and dim != b:
        raise TypeError(f"{name}: the dim is given twice: {b} in the second input's place and dim={dim}")
    return b


def split_halves(t: torch.Tensor, dim: int, name: str):
    """Split a gated module's input into two halves along dim (first half first, as nn.GLU)."""
    if t.dim() == 0:
        raise ValueError(f"{name}: cannot split a 0-dim tensor")
    dim = dim_index(dim, name, "dim", t.dim())
    size = t.shape[dim]
    if size % 2:
        raise ValueError(f"{name}: the input's size {size} along dim {dim} is odd; it must split into two equal halves")
    if (t.requires_grad and torch.is_grad_enabled() and not torch.compiler.is_compiling()
            and not torch._C._are_functorch_transforms_active() and no_forward_ad()
            and torch._C._get_tracing_state() is None):     # (torch.jit.trace: chunk, whatever the grad mode)
        return Halves.apply(t, dim)     # (its backward takes the halves' gradients as one buffer where they are)
    a, b = t.chunk(2, dim)
    return a, b


def mode_function(owner: str, keyword: str, value, modes: dict, default: str):
    """The function a modes keyword's value picks (a spec's `modes`: gelu's approximate='tanh'
    picks gelu_tanh; modes maps each other value to its function), None for the default (the
    activation itself); a ValueError for any other value, as a module's constructor checks it."""
    if isinstance(value, str) and value == default:
        return None
    if not isinstance(value, str) or value not in modes:
        allowed = ", ".join(repr(v) for v in (default, *modes))
        raise ValueError(f"{owner}: {keyword} must be one of {allowed}, got {value!r}")
    return modes[value]


__all__ = [     # what generated modules call (as _rt.<name>), and the runtime's own API
    "HAS_TRITON", "Activation", "as_tensor", "dim_index", "vmap_by_loop", "get_backend", "set_backend", "release_workspace",
    "use_backend", "number", "softplus", "clamp", "hypot", "sqrt_square_plus", "scalar_sqrt_square_plus",
    "scaled_input", "inverse_scale", "grown", "capped_exp", "fma", "fnma", "rdiv",
    "scalar_sigmoid", "scalar_softplus", "scalar_erfcx", "scalar_div", "scalar_exp", "scalar_expm1", "scalar_pow", "scalar_sqrt",
    "split_halves", "halves_dim", "limit_at_inf",
    "gt", "ge", "lt", "le", "mask_and", "mask_or", "mask_not", "select", "finite_or_none", "mode_function",
]
