"""Special functions of floats that Python's math lacks, for the generated code's numbers
of constants alone (actgen.runtime.scalar_erfcx), the kernels' libdevice under Triton's
interpreter, and the compiler's float64 evaluations."""
from __future__ import annotations

import math


def _exp_of_square(u: float) -> float:
    """exp(u**2) for a float u, with u**2 = hi + lo split exactly (Veltkamp): exp(hi)*(1 + lo),
    so the rounding of u**2 (up to u**2 * 2**-53 absolute) does not reach the result."""
    c = 134217729.0 * u              # 2**27 + 1
    h = c - (c - u)
    t = u - h
    hi = u * u
    lo = ((h * h - hi) + 2 * h * t) + t * t
    try:
        return math.exp(hi) * (1 + lo)
    except OverflowError:
        return math.inf


#: From here up erfcx takes the continued fraction: its 40 terms are within an ULP of
#: float64 from u = 6 on (against mpmath), and converge faster the larger u
_FRACTION = 6.0


def erfcx(u: float) -> float:
    """erfcx(u) in float64, within 2 ULP (against mpmath): exp(u**2)*erfc(u) for u below _FRACTION (the
    square taken exactly, see _exp_of_square), Laplace's continued fraction 1/sqrt(pi) /
    (u + (1/2)/(u + 1/(u + (3/2)/(u + ...)))) above, where erfc(u) underflows from 26.6; for
    u < 0, 2*exp(u**2) - erfcx(-u) (inf from u = -26.7)."""
    u = float(u)
    if math.isnan(u):
        return math.nan
    if u < 0:
        return math.inf if u < -27 else 2 * _exp_of_square(u) - erfcx(-u)
    if u < _FRACTION:
        return _exp_of_square(u) * math.erfc(u)
    if math.isinf(u):
        return 0.0
    f = u
    for k in range(40, 0, -1):
        f = u + (k / 2) / f
    return 1 / (math.sqrt(math.pi) * f)
