"""What generated kernels import: triton, tl, libdevice and the stable helpers.

Under Triton's interpreter (TRITON_INTERPRET=1, how CPU tests run the kernels) libdevice
calls are not supported, so `libdevice` is a small numpy-backed stand-in with the same
function names; on a GPU it is Triton's own libdevice.
"""
from __future__ import annotations

import math
import os

import numpy as np
import triton
import triton.language as tl

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
#: Every kernel is compiled with fused multiply-adds (a*b + c contracted), as its accuracy was
#: measured: the default of Triton 3.6-3.9, asked for explicitly (3.9 warns where it is left
#: to the default, which 3.10 turns off).  TRITON_FORCE_DISABLE_FP_FUSION=1 still turns it off.
FP_FUSION = {"enable_fp_fusion": True}

if INTERPRET:
    from triton.runtime.interpreter import TensorHandle

    from .. import special

    class _InterpreterLibdevice:
        """numpy implementations of the libdevice functions generated kernels call."""

        @staticmethod
        def _wrap(np_fn):
            def call(*args):
                tensors = [a for a in args if isinstance(a, tl.tensor)]
                first = next((a for a in tensors if a.type.is_block()), tensors[0] if tensors else None)
                if first is None:       # of scalar kernel arguments alone (fp32, as compiled)
                    with np.errstate(all="ignore"):
                        out = np.asarray(np_fn(*[np.float32(a) for a in args]), np.float32)
                    return tl.tensor(TensorHandle(out, tl.float32), tl.float32)
                data = [a.handle.data if isinstance(a, tl.tensor) else np.asarray(a, first.handle.data.dtype) for a in args]
                with np.errstate(all="ignore"):
                    out = np.asarray(np_fn(*data)).astype(first.handle.data.dtype)
                return tl.tensor(TensorHandle(out, first.handle.dtype), first.type)

            return call

        def __init__(self):
            erf = np.vectorize(math.erf, otypes=[np.float64])
            erfc = np.vectorize(math.erfc, otypes=[np.float64])
            erfcx = np.vectorize(special.erfcx, otypes=[np.float64])
            table = {
                "exp": np.exp, "log": np.log, "log1p": np.log1p, "expm1": np.expm1,
                "sqrt": np.sqrt, "sin": np.sin, "cos": np.cos, "tan": np.tan, "tanh": np.tanh,
                "sinh": np.sinh, "cosh": np.cosh, "atan": np.arctan, "asinh": np.arcsinh,
                "erf": erf, "erfc": erfc, "erfcx": erfcx, "pow": np.power, "hypot": np.hypot,
                "fast_log2f": np.log2, "fast_dividef": np.divide,
            }
            for name, fn in table.items():
                setattr(self, name, self._wrap(fn))

        @staticmethod
        def ilogb(x):
            # floor(log2|x|) as int32 (0, inf and NaN give -1 here: their k is handled apart)
            e = (np.frexp(x.handle.data)[1] - 1).astype(np.int32)
            return tl.tensor(TensorHandle(e, tl.int32), x.type.with_element_ty(tl.int32))

    libdevice = _InterpreterLibdevice()

    def _index_of_a_scalar():
        """A kernel argument's loop count (a stepping backward's range(_iters)) as the
        interpreter of Triton 3.7 on takes it: the interpreter of 3.6 takes int() of the
        scalar's 1-element array, which numpy 2.4 refuses."""
        import triton.runtime.interpreter as interpreter

        patch = getattr(interpreter, "_patch_lang_tensor", None)
        if patch is None or getattr(patch, "_actgen_index", False):
            return

        def patch_lang_tensor(tensor, scope):
            patch(tensor, scope)
            scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.squeeze()))

        patch_lang_tensor._actgen_index = True
        interpreter._patch_lang_tensor = patch_lang_tensor

    def fma_float32(x, y, z):
        """x*y + z on float32 arrays, rounded once, as a GPU's fma: the product is exact in
        float64 and the sum is rounded to odd there (by its rounding error, TwoSum), which
        then rounds to float32 correctly (no double rounding at a float32 midpoint)."""
        p = np.multiply(x, y, dtype=np.float64)
        c = np.asarray(z, dtype=np.float64)
        with np.errstate(all="ignore"):
            s = p + c
            b = s - p
            err = (p - (s - b)) + (c - b)
            odd = (np.asarray(s).view(np.int64) & 1) == 1
            nudge = np.isfinite(s) & np.isfinite(err) & (err != 0) & ~odd
            s = np.where(nudge, np.nextafter(s, np.where(err > 0, np.inf, -np.inf)), s)
        return s.astype(np.float32)

    def _fused_float32_fma():
        """tl.fma on float32 rounded once, as the interpreter of Triton 3.7 on and the GPU do
        it: the interpreter of 3.6 multiplies and adds in float32, rounding twice (the
        kernels' accuracy was measured with one rounding)."""
        import triton.runtime.interpreter as interpreter

        if getattr(getattr(interpreter, "_interpreter", None), "fma_fp32", None) is not None:
            return
        builder = interpreter.InterpreterBuilder
        create_fma = builder.create_fma
        if getattr(create_fma, "_actgen_fma", False):
            return

        def fused(self, x, y, z):
            if z.data.dtype != np.float32:
                return create_fma(self, x, y, z)
            return TensorHandle(fma_float32(*np.broadcast_arrays(x.data, y.data, z.data)), z.dtype.scalar)

        fused._actgen_fma = True
        builder.create_fma = fused

    _index_of_a_scalar()
    _fused_float32_fma()
else:
    from triton.language.extra import libdevice


@triton.jit
def narrow(v, ptr):
    """v in ptr's element type, through float32 where a float64 value goes to a 16-bit type
    (a kernel computing in float64 for narrower data: Triton's interpreter converts float64
    to bfloat16 wrongly)."""
    if v.dtype == tl.float64 and ptr.dtype.element_ty.primitive_bitwidth == 16:
        return v.to(tl.float32).to(ptr.dtype.element_ty)
    return v.to(ptr.dtype.element_ty)


# exp(u) in float32 to within an ULP (libdevice's expf: 2), from arithmetic alone, so that
# the interpreter takes the same steps as a GPU (about eleven more machine instructions than
# libdevice's, one special-function op fewer): u = k ln2 + r with |r| <= ln2/2 (k by
# the 1.5 * 2**23 rounding trick, which leaves k in the low bits too, so no conversion op;
# ln2 in two parts), exp(r) by its Taylor polynomial to r**7 (truncation below 0.1 ULP),
# times 2**k in two exact halves.  Beyond [-104, 89] the result is 0 or inf anyway.
# Float64 goes through libdevice.exp.  FAST (a kernel whose data is 16-bit: bfloat16 or
# float16, whose half-ULP is 2**-9 or 2**-11) takes the special-function unit's exp2
# (tl.exp: a few ULP of float32, subnormal results flushed to zero), as these kernels
# have half the instructions per element to spend that float32 ones have before they
# fall behind memory.
@triton.jit
def exp(u, FAST: tl.constexpr):
    if u.dtype == tl.float64:
        return libdevice.exp(u)
    elif FAST:
        return tl.exp(u)
    else:
        v = tl.clamp(u, -104.0, 89.0, propagate_nan=tl.PropagateNan.ALL)
        j = tl.fma(v, 1.4426950408889634, 12582912.0)
        k = j - 12582912.0
        r = tl.fma(k, -0.693145751953125, v)
        r = tl.fma(k, -1.428606820309417232e-06, r)
        p = tl.fma(r, 1.0 / 5040.0, 1.0 / 720.0)
        p = tl.fma(p, r, 1.0 / 120.0)
        p = tl.fma(p, r, 1.0 / 24.0)
        p = tl.fma(p, r, 1.0 / 6.0)
        p = tl.fma(p, r, 0.5)
        p = tl.fma(p, r, 1.0)
        p = tl.fma(p, r, 1.0)
        n = j.to(tl.int32, bitcast=True) - 0x4B400000
        half = n >> 1
        return p * _power_of_two(half, v) * _power_of_two(n - half, v)


# a / b: Triton's float32 division is the hardware's approximate one (div.full.f32, up to 2
# ULP), where the interpreter divides exactly; the kernels round it as IEEE does (div.rn),
# as their error analysis assumes.  FAST (16-bit data) keeps the approximate one.
@triton.jit
def div(a, b, FAST: tl.constexpr):
    q = a / b
    if FAST or q.dtype != tl.float32:
        return q
    else:
        return tl.div_rn(a, b)


# log1p(u) in float32 to within an ULP (libdevice's log1pf: 1; numpy's, which the
# interpreter would take: 2), from arithmetic alone, so that the interpreter takes the same
# steps as a GPU (fdlibm's log1pf, as in musl): 1 + u = 2**k (1 + f) with 1 + f in
# [sqrt(2)/2, sqrt(2)) from the bits of 1 + u, c the rounding of 1 + u over 1 + u (f = u and
# c = 0 where k = 0), log(1 + f) = f - f**2/2 + s (f**2/2 + R(s**2)) with s = f/(2 + f) and R
# a minimax polynomial, k ln2 in two parts.  Its one division rounds as IEEE does, as every
# float32 division of the kernels.  About 40 more machine instructions than libdevice's
# log1pf (sm_90: logish's forward 77 -> 115 per element), so softplus (whose
# log1p(exp(-|u|)) is added to max(u, 0), where libdevice's error does not show) keeps
# libdevice's.  Float64 goes through libdevice.log1p.  FAST (16-bit data, half-ULP 2**-9
# or 2**-11) takes u - u**2/2 + u**3/3 where |u| < 2**-7 (truncated below 2**-23 of u) and
# the special-function unit's log2 of 1 + u elsewhere (lg2.approx: absolute error below
# 2**-22 near 1, relative elsewhere, so within 2**-15 of log1p(u) there): a few machine
# instructions where libdevice's log1pf takes about 30.
@triton.jit
def log1p(u, FAST: tl.constexpr):
    if u.dtype == tl.float64:
        return libdevice.log1p(u)
    elif FAST:
        series = u * tl.fma(u, tl.fma(u, 0.3333333333333333, -0.5), 1.0)
        return tl.where(tl.abs(u) < 0.0078125, series, libdevice.fast_log2f(1.0 + u) * 0.6931471805599453)
    else:
        w = 1.0 + u
        iw = w.to(tl.int32, bitcast=True) + 0x004AFB0D     # + (1.0 - sqrt(2)/2 in bits): k counts from sqrt(2)/2
        k = (iw >> 23) - 127
        near = k == 0
        f = tl.where(near, u, ((iw & 0x007FFFFF) + 0x3F3504F3).to(tl.float32, bitcast=True) - 1.0)
        # c/w = c 2**-k / (1 + f), 1/(1 + f) to within f**3 (7%) of a correction below an ULP
        scale = ((127 - k) << 23).to(tl.float32, bitcast=True)
        c = tl.where(k >= 2, 1.0 - (w - u), u - (w - 1.0)) * scale * tl.fma(f, f - 1.0, 1.0)
        c = tl.where(near | (k >= 25), 0.0, c)
        s = tl.div_rn(f, 2.0 + f)
        z = s * s
        q = z * z
        r = tl.fma(q, tl.fma(q, 0.24279078841209412, 0.40000972151756287), z * tl.fma(q, 0.28498786687850952, 0.66666662693023682))
        h = 0.5 * f * f
        dk = k.to(tl.float32)
        y = tl.fma(dk, 0.693138122558593750, tl.fma(s, h + r, tl.fma(dk, 9.0580006144591607e-06, c)) - h + f)
        y = tl.where(u == float("inf"), u, y)
        y = tl.where(u == -1.0, -float("inf"), y)
        y = tl.where(u == 0.0, u, y)                        # -0 stays -0
        return tl.where((u < -1.0) | (u != u), float("nan"), y)


# a / b for b the same for every element (a constant, a shared param, or made of them, so
# a scalar in the kernel): b's reciprocal r once per program, then per element q = a r and
# q + (a - q b) r (Markstein: with r correctly rounded, the correctly rounded quotient, as
# div_rn's, wherever nothing overflows or underflows), about eight machine instructions fewer
# than div_rn (below |a| = 2**-102 the remainder underflows: within an ULP).  b is kept to
# [2**-100, 2**100] (else the program divides as div does), and where a r is not finite (a
# quotient past float32's range, a = inf or NaN) or zero (a signed zero) it stands.
@triton.jit
def div_uniform(a, b, FAST: tl.constexpr):
    if FAST or a.dtype != tl.float32:
        return div(a, b, FAST)
    else:
        size = tl.abs(b)
        if (size >= 7.888609052210118e-31) & (size <= 1.2676506002282294e30):
            r = tl.div_rn(1.0, b)
            q = a * r
            q = tl.where((tl.abs(q) <= 3.4028234663852886e38) & (q != 0.0), tl.fma(tl.fma(-q, b, a), r, q), q)
        else:
            q = tl.div_rn(a, b)
        return q


# a / b for a denominator known to lie in [2**-100, 2**100] (actgen.derive.value_range: a
# ratio's polynomial in exp(-|u|)): FAST (16-bit data) takes the special-function unit's
# reciprocal times a (div.approx, 2 ULP, exact where |b| is in [2**-126, 2**126]), about five
# machine instructions fewer than the full-range division; float32 data divides as div does.
@triton.jit
def div_bounded(a, b, FAST: tl.constexpr):
    if FAST and b.dtype == tl.float32:
        return libdevice.fast_dividef(a, b)
    else:
        return div(a, b, FAST)


# u clamped to [lo, hi], NaN staying NaN: tl.clamp, which Triton lowers for bounds -c and c
# to an NVVM intrinsic (fmin.nan.xorsign.abs) that has no float64 form, so float64 clamps
# with a maximum and a minimum
@triton.jit
def clamp(u, lo, hi):
    if u.dtype == tl.float64:
        return tl.minimum(tl.maximum(u, lo, propagate_nan=tl.PropagateNan.ALL), hi, propagate_nan=tl.PropagateNan.ALL)
    else:
        return tl.clamp(u, lo, hi, propagate_nan=tl.PropagateNan.ALL)


# sigmoid(u) = 1/(1 + exp(-u)); FAST through div_bounded: the denominator is 1 or more, and
# beyond 2**126, where the reciprocal gives 0, sigmoid(u) is below float32's normal range
@triton.jit
def sigmoid(u, FAST: tl.constexpr):
    # in e = exp(-|u|), which does not overflow: 1/(1 + e) for u >= 0, e/(1 + e) below, down
    # to float32's subnormals (1/(1 + exp(-u)) was 0 below u = -88.7, where exp(-u) is inf).
    # FAST (16-bit data): the shorter form, as FAST's exp flushes subnormal results anyway
    if FAST:
        return div_bounded(1.0, 1.0 + exp(-u, FAST), FAST)
    else:
        e = exp(-tl.abs(u), FAST)
        r = div_bounded(1.0, 1.0 + e, FAST)
        return tl.where(u >= 0, r, e * r)


@triton.jit
def softplus(u, FAST: tl.constexpr):
    # max(u, 0) + log1p(exp(-|u|)): no overflow, full accuracy for large |u| (libdevice's
    # log1p for float32 and float64 data, the FAST one for 16-bit data: see log1p)
    if FAST and u.dtype == tl.float32:
        return tl.maximum(u, 0.0) + log1p(exp(-tl.abs(u), FAST), FAST)
    else:
        return tl.maximum(u, 0.0) + libdevice.log1p(exp(-tl.abs(u), FAST))


# erfc(u): libdevice's (float32: 2 ULP), or for FAST (16-bit data) the Chebyshev fit of
# Numerical Recipes (erfcc, section 6.2: relative error below 1.2e-7 everywhere in exact
# arithmetic; in float32 with the special-function unit's exp2, within about 2**-17 of
# erfc(u) down to its underflow): t exp(P(t) - u**2) with t = 1/(1 + |u|/2), reflected as
# 2 - erfc(|u|) for u < 0.
@triton.jit
def erfc(u, FAST: tl.constexpr):
    if FAST and u.dtype == tl.float32:
        z = tl.abs(u)
        t = libdevice.fast_dividef(1.0, 1.0 + 0.5 * z)     # 0 beyond 2**126: erfc underflows long before
        p = tl.fma(t, 0.17087277, -0.82215223)
        p = tl.fma(p, t, 1.48851587)
        p = tl.fma(p, t, -1.13520398)
        p = tl.fma(p, t, 0.27886807)
        p = tl.fma(p, t, -0.18628806)
        p = tl.fma(p, t, 0.09678418)
        p = tl.fma(p, t, 0.37409196)
        p = tl.fma(p, t, 1.00002368)
        p = tl.fma(p, t, -1.26551223)
        r = t * tl.exp(p - z * z)
        return tl.where(u < 0.0, 2.0 - r, r)
    else:
        return libdevice.erfc(u)


# Triton's float32 sqrt (tl.sqrt, libdevice's sqrtf) is the GPU's approximate one
# (sqrt.approx.ftz.f32: subnormals flushed to 0) where the interpreter's is exact; float32
# kernels take the IEEE one (sqrt.rn), 16-bit ones (FAST) the approximate one.
@triton.jit
def sqrt(u, FAST: tl.constexpr):
    if FAST or u.dtype != tl.float32:
        return tl.sqrt(u)
    else:
        return tl.sqrt_rn(u)


@triton.jit
def sqrt_square_plus(u, c, FAST: tl.constexpr):
    # sqrt(u**2 + c) without forming u**2 (see actgen.runtime.sqrt_square_plus).  In float32
    # (libdevice's hypotf is within 3 ULP on the GPU: squareplus' slope, which squares it,
    # missed by 6) the sqrt of one fma of |u| and c, scaled by exact powers of two where |c|
    # is outside [1e-30, 1e30] (no overflow or underflow), or |u| itself from
    # |u| >= 4096 sqrt(|c|) on, where c is below half the last bit of u**2.
    a = tl.abs(u)
    if a.dtype == tl.float32:
        ca = tl.abs(c)
        s = tl.where(ca > 1e30, 5.421010862427522e-20, tl.where(ca < 1e-30, 1.8446744073709552e19, 1.0))
        inv = tl.where(ca > 1e30, 1.8446744073709552e19, tl.where(ca < 1e-30, 5.421010862427522e-20, 1.0))
        v = a * s
        near = sqrt(tl.fma(v, v, (c * s) * s), FAST) * inv
        return tl.where(a >= sqrt(ca, FAST) * 4096.0, a, near)
    else:
        r = tl.sqrt(tl.abs(c) + tl.zeros_like(a))
        return tl.where(c >= 0, libdevice.hypot(a, r), tl.sqrt(a - r) * tl.sqrt(a + r))


# The scale of a ratio of polynomials (actgen.derive.ScaledInput): 2**-k built from its
# exponent bits and applied by one exact multiply, not by libdevice's ldexp (which goes
# through the special-function unit: twelve such ops per element in PAU's forward).
@triton.jit
def scale_shift(u):
    # k of the scale 2**k above |u|: 0 where |u| < 1; inf and NaN give some k, handled apart
    return tl.maximum(libdevice.ilogb(u) + 1, 0)


@triton.jit
def _power_of_two(n, like):
    # 2**n for a normal exponent n, in like's dtype, from its bits
    if like.dtype == tl.float64:
        return ((n.to(tl.int64) + 1023) << 52).to(tl.float64, bitcast=True)
    else:
        return ((n + 127) << 23).to(tl.float32, bitcast=True)


@triton.jit
def inverse_scale(u):
    # 1 / 2**k for scaled_input's k (see actgen.derive.InverseScale), exactly: as two normal
    # halves, 2**-k being subnormal for |u| beyond 2**126 in float32; 1 where |u| < 1, 0 at +-inf
    k = scale_shift(u)
    half = k >> 1
    w = _power_of_two(-half, u) * _power_of_two(half - k, u)
    return tl.where((u == float("inf")) | (u == -float("inf")), 0.0, w)


@triton.jit
def scaled_input(u):
    # u / 2**k, exactly (a power of two): +-1 at +-inf, NaN at NaN
    v = u * inverse_scale(u)
    return tl.where((u == float("inf")) | (u == -float("inf")), tl.where(u > 0, 1.0, -1.0), v)


__all__ = ["triton", "tl", "libdevice", "exp", "log1p", "div", "div_uniform", "clamp", "sigmoid", "softplus", "sqrt_square_plus", "scaled_input", "inverse_scale",
           "limit_at_inf",
           "tile", "nth_tile", "tile_channels", "param_at", "partial_zeros", "in_tile", "store_partial",
           "reduce_partial", "store_reduced", "not_finite", "draw", "draws_kernel", "INTERPRET"]


# The value at +-inf of a formula whose limit there depends on params (actgen.derive.LimitAtInf):
# the formula evaluated once more at +-2**24 (by the compiler, from the params alone) is
# `probed`; 2**14 or more in magnitude there is growth.  (Literals, not module globals: the
# real compiler takes globals only as tl.constexpr.)


@triton.jit
def limit_at_inf(value, at_plus, at_minus, u):
    # value, or where u is +-inf (or finite from 2**64 on) and value NaN the limit on that
    # side (see actgen.derive.LimitAtInf, actgen.runtime.HUGE_INPUT)
    return tl.where((tl.abs(u) >= 1.8446744073709552e+19) & (value != value), tl.where(u > 0, at_plus, at_minus), value)


@triton.jit
def grown(p):
    # a probe's limit: +-inf by its sign where it grew (not p * inf: 0 * inf is NaN where unused)
    return tl.where(tl.abs(p) >= 16384.0, tl.where(p > 0, float("inf"), -float("inf")), p)


@triton.jit
def tile_at(t, M, N, C, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CH_AXIS: tl.constexpr):
    """Tile number t (int64) of the (M, N) matrix the tensor is seen as: BLOCK_M x BLOCK_N,
    row-major over the tiles; a t past the last tile is wholly masked.

    Returns the element offsets (int64: tensors over 2**31 elements), the bounds mask, each
    element's channel (its row % C for channels-first, its column for channels-last), and
    the tile's row and column indices.

    One row (M == 1: the flat layout, or a single row of channels) needs no division: Triton
    specializes M = 1 as a constant, so such a kernel has no integer division at all.  More
    rows divide the tile number in 32 bits (under 2**31 tiles), the offsets stay int64."""
    if M == 1:
        rows = tl.arange(0, BLOCK_M).to(tl.int64)
        cols = t * BLOCK_N + tl.arange(0, BLOCK_N)
    else:
        tiles_n = tl.cdiv(N, BLOCK_N).to(tl.int32)
        t32 = t.to(tl.int32)
        rows = (t32 // tiles_n).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
        cols = (t32 % tiles_n).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs = rows[:, None] * N + cols[None, :]
    mask = (rows[:, None] < M) & (cols[None, :] < N)
    if CH_AXIS == 0:
        ch = (rows % C)[:, None]
    else:
        ch = cols[None, :]
    return offs, mask, ch, rows, cols


@triton.jit
def tile(M, N, C, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CH_AXIS: tl.constexpr):
    """This program's tile (one tile per program)."""
    return tile_at(tl.program_id(0).to(tl.int64), M, N, C, BLOCK_M, BLOCK_N, CH_AXIS)


@triton.jit
def nth_tile(it, M, N, C, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CH_AXIS: tl.constexpr):
    """This program's it-th tile, when programs step through the tiles num_programs apart."""
    t = tl.program_id(0).to(tl.int64) + tl.num_programs(0).to(tl.int64) * it
    return tile_at(t, M, N, C, BLOCK_M, BLOCK_N, CH_AXIS)


@triton.jit
def tile_channels(M, N, C, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CH_AXIS: tl.constexpr):
    """The channels of this program's first tile's elements: every one of its tiles' when it
    steps through the tiles (launch.param_grad_programs sizes the steps so)."""
    offs, mask, ch, rows, cols = tile(M, N, C, BLOCK_M, BLOCK_N, CH_AXIS)
    return ch


@triton.jit
def row_offsets(offs, rows, cols, M, S):
    """The tile's offsets in a tensor whose rows are S elements apart, where the tile's own
    (offs) are N apart: a gated op's inputs that are the halves of one tensor (S = 2N), read
    and their gradients written in place.  One row (the flat layout): offs itself."""
    if M == 1:
        return offs
    else:
        return rows[:, None] * S + cols[None, :]


@triton.jit
def param_at(ptr, ch, stride, N, CH_AXIS: tl.constexpr):
    """A per-channel param (stride 0: a (1,) one) at each element's channel ch.  Channels
    last, an element's channel is its column, and a tile's columns from N on (past the
    row: channels N = C and on) read nothing; channels first, rows wrap around C."""
    if CH_AXIS == 1:
        return tl.load(ptr + ch * stride, mask=ch < N, other=0.0)
    else:
        return tl.load(ptr + ch * stride)


@triton.jit
def partial_zeros(BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, ACC: tl.constexpr):
    """An empty param-gradient sum: a tile of zeros, each element summing its place in the
    program's tiles (summed per row or column once, when stored).  Negative zeros: -0 + v is
    v for every v, so a program of one tile adds nothing to it."""
    return tl.full([BLOCK_M, BLOCK_N], -0.0, ACC)


@triton.jit
def in_tile(values, mask):
    """A tile's values, 0 where the tile runs past the tensor."""
    return tl.where(mask, values, 0.0)


@triton.jit
def reduce_partial(acc, CH_AXIS: tl.constexpr):
    """A program's sums accumulated element by element over its tiles (partial_zeros), summed
    per tile row (CH_AXIS 0: shape (BLOCK_M, 1)) or column (1: (1, BLOCK_N)), as a channel's
    params are loaded: the shape that param-gradient sums by basis are combined in."""
    if CH_AXIS == 0:
        return tl.sum(acc, axis=1, keep_dims=True)
    else:
        return tl.sum(acc, axis=0, keep_dims=True)


@triton.jit
def store_reduced(ptr, v, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CH_AXIS: tl.constexpr):
    """One program's partial param-gradient sums as reduce_partial shapes them, stored at its
    place in the partials: BLOCK_M per program (CH_AXIS 0) or BLOCK_N (1)."""
    pid = tl.program_id(0).to(tl.int64)
    if CH_AXIS == 0:
        tl.store(ptr + pid * BLOCK_M + tl.arange(0, BLOCK_M)[:, None], v)
    else:
        tl.store(ptr + pid * BLOCK_N + tl.arange(0, BLOCK_N)[None, :], v)


@triton.jit
def store_partial(ptr, acc, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CH_AXIS: tl.constexpr):
    """One program's partial param-gradient sums, accumulated element by element over its
    tiles: summed per tile row or column (reduce_partial), and stored (store_reduced)."""
    store_reduced(ptr, reduce_partial(acc, CH_AXIS), BLOCK_M, BLOCK_N, CH_AXIS)


@triton.jit
def not_finite(v):
    """Whether any of v's values (a reduce_partial shape) is +-inf or NaN: one scalar for the
    program (v - v is 0 where v is finite, NaN elsewhere)."""
    d = v - v
    return tl.max(tl.max((d != d).to(tl.int32), axis=1), axis=0) > 0


# Random draws (a formula's uniform(lo, hi), see actgen.derive.replace_draws): draw K of a call
# is Philox keyed by seed + K at each element's offset in the contiguous tensor, so the
# backward kernel draws the same values again from the seed, and draws_kernel writes them
# out for the plain-torch double backward and jvp.


@triton.jit
def draw(seed, K: tl.constexpr, offs):
    """U[0, 1) float32 for draw K at the element offsets offs."""
    return tl.rand(seed + K, offs)


@triton.jit(do_not_specialize=["seed"])
def draws_kernel(out_ptr, seed, n, K: tl.constexpr, BLOCK: tl.constexpr):
    """Draw K of a call with this seed, for the n elements of a contiguous tensor."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    tl.store(out_ptr + offs, draw(seed, K, offs), mask=offs < n)
