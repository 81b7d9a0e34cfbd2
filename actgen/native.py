"""torch's own CPU kernels for formulas that are exactly one of torch's activations.

Where a spec's formula is, as parsed, one of the formulas below (no params; its constants in
any names), or one of them times a second input, a gate (`a*sigmoid(a)*b`: silu(a) * b),
the CPU fallback computes f, and the gradients where the entry has a backward, with torch's
fused kernel for that activation (one pass over memory, where the derived code takes
several; with a gate, one product more) - on the inputs it is trusted with, in the input's
dtype, where the op computes that direction in float32; elsewhere the derived code runs.
The Triton kernels are the derived ones whatever the match.

Trust is per dtype and direction: an open window of the first input's values ((-inf, inf):
finite ones; a gate: finite), or none; values outside it take the derived code (see
actgen.runtime.Activation._native_whole).  float32,
bfloat16 and float16 have windows (torch computes all three in float32 on a CPU; a bfloat16
or float16 result rounds away errors of a few float32 ULP); float64 has none.  Where
torch's kernel also gives the formula's values at +-inf and NaN, it runs on any input of a
trusted dtype, without a check (not with a gate).

The match is structural: the formula and the entry's, both parsed by actgen.formula, are the
same sympy expression (sympy orders sums and products, so `x * sigmoid(x)` and
`sigmoid(x) * x` match; `log1p(exp(x))` for `log(1 + exp(x))` does not, and gets the derived
code).  Each window was measured against the mpmath oracle (every 0.003 on
[-12, 12], and every 1e-4 on [3.5, 8] for silu): inside it torch's kernel is within 3.5 ULP
per unit of condition (the target is 4; silu's float32 backward times a gate: below 4, for
the product's rounding), and tests/test_core_native.py scores it there.  Outside it, in
float32: silu's backward s*(1 + x*(1 - s)) loses about x/2 ULP where s rounds near 1 (4 ULP
from x = 5.7, 8.1 at 16.6); GELU's 1 + erf(x/sqrt(2)) cancels for x < -1.5 (4.9e5 ULP at
-5.6), gelu_tanh's 1 + tanh(u) for x < -2.5; in bfloat16 from -5.5 (GELU's forward), -6.2
(its backward) and -5.06 (gelu_tanh's); in float16, GELU's backward from -4.5 (55 ULP per
unit of condition off at -6.15 on a CPU with AVX512-FP16, where torch computes in float16;
within the target on one without), and gelu_tanh's backward from -4.75 (its
derivative is below float16's normal range there, 2.5e-5 at -5.06, where torch's vectorized
kernel gives 0: times a gradient scaled for float16 training, 2**14, that is 2000 ULP off
at -5.375).  Mish is not here: torch's CPU forward for it takes
longer than the derived code (4.1 against 3.2 ms for 2**20 float32 elements on one core of
a 2-vCPU Xeon VM), and its float32 backward is 8.1 ULP off at x = 8.7.
"""
from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass

import sympy

from .formula import make_symbol, parse_formula
from .spec import Spec


Window = tuple[float, float]        # an open interval of inputs
FINITE: Window = (-math.inf, math.inf)


def _trust(fwd: Window | None, bwd: Window | None, **per_dtype) -> tuple:
    """((dtype name, forward window, backward window), ...): float32, bfloat16 and float16
    alike, but for the dtypes given their own pair."""
    pairs = {d: (fwd, bwd) for d in ("float32", "bfloat16", "float16")} | per_dtype
    return tuple((d, f, b) for d, (f, b) in pairs.items())


@dataclass(frozen=True)
class NativeKernel:
    """An activation torch computes in one fused kernel: its formula over `x` and the
    constants' placeholders, and the calls (templates over {x}, {g}, {out} and the
    placeholders), writing into out."""

    name: str
    formula: str
    constants: tuple[str, ...]
    forward: str
    backward: str | None        # grad * df/dx, None: the derived backward
    # ((dtype name, forward window, backward window), ...): the inputs torch's kernel is
    # trusted with; None or a dtype not listed: the derived code
    trusted: tuple = _trust(FINITE, FINITE)
    # (forward, backward): whether torch's kernel also gives the formula's values (its limits)
    # at +-inf and NaN, so that it runs on any input of a trusted dtype, without a check
    any_input: tuple[bool, bool] = (False, False)
    # times a gate, where the product's rounding takes the edge of a window past the target:
    # the windows then (default: trusted's)
    gated: tuple | None = None


NATIVE_KERNELS: tuple[NativeKernel, ...] = (
    # relu as clamp_min: the same bits (NaN and -0.0 included), where relu's out= variant
    # takes twice as long (a copy after the kernel: 686 against 346 us for 2**20 float32
    # elements on one core of a 2-vCPU Xeon VM)
    NativeKernel("relu", "Max(x, 0)", (), "torch.ops.aten.clamp_min.out({x}, 0.0, out={out})",
                 "torch.ops.aten.threshold_backward.grad_input({g}, {x}, 0.0, grad_input={out})",
                 any_input=(True, False)),
    NativeKernel("leaky_relu", "where(x > 0, x, s * x)", ("s",), "torch.ops.aten.leaky_relu.out({x}, {s}, out={out})",
                 "torch.ops.aten.leaky_relu_backward.grad_input({g}, {x}, {s}, False, grad_input={out})",
                 any_input=(True, False)),
    NativeKernel("elu", "where(x > 0, x, a * (exp(x) - 1))", ("a",), "torch.ops.aten.elu.out({x}, {a}, 1.0, 1.0, out={out})",
                 "torch.ops.aten.elu_backward.grad_input({g}, {a}, 1.0, 1.0, False, {x}, grad_input={out})",
                 any_input=(True, False)),
    NativeKernel("softplus", "where(b * x > t, x, log(1 + exp(b * x)) / b)", ("b", "t"),
                 "torch.ops.aten.softplus.out({x}, {b}, {t}, out={out})",
                 "torch.ops.aten.softplus_backward.grad_input({g}, {x}, {b}, {t}, grad_input={out})",
                 any_input=(True, True)),
    # torch's x * min(max(x + 3, 0), 6) / 6 is inf from x = 5.7e37 in float32
    NativeKernel("hardswish", "Piecewise((0, x <= -3), (x * (x + 3) / 6, x < 3), (x, True))", (),
                 "torch.ops.aten.hardswish.out({x}, out={out})", "torch.ops.aten.hardswish_backward.out({g}, {x}, out={out})",
                 _trust((-2.0 ** 120, 2.0 ** 120), (-2.0 ** 120, 2.0 ** 120), float16=(FINITE, FINITE))),
    NativeKernel("silu", "x * sigmoid(x)", (), "torch.ops.aten.silu.out({x}, out={out})",
                 "torch.ops.aten.silu_backward.grad_input({g}, {x}, grad_input={out})",
                 _trust(FINITE, FINITE, float32=(FINITE, (-math.inf, 5.0))),
                 gated=_trust(FINITE, FINITE, float32=(FINITE, (-math.inf, 4.0)))),     # (4.1 ULP at 5 times b)
    # (torch's bfloat16 forward, x*(1 + erf(...)) in float32, is inf from x = 1.7e38)
    NativeKernel("gelu", "0.5 * x * (1 + erf(x / sqrt(2)))", (), "torch.ops.aten.gelu.out({x}, out={out})",
                 "torch.ops.aten.gelu_backward.grad_input({g}, {x}, grad_input={out})",
                 _trust(FINITE, FINITE, float32=(None, None), bfloat16=((-5.5, 2.0 ** 120), (-6.0, math.inf)),
                        float16=(FINITE, (-4.5, math.inf)))),
    # (torch's x**3 is inf from x = 7e12 in float32: a bound far below that)
    NativeKernel("gelu_tanh", "0.5 * x * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 * x**3)))", (),
                 "torch.ops.aten.gelu.out({x}, approximate='tanh', out={out})",
                 "torch.ops.aten.gelu_backward.grad_input({g}, {x}, approximate='tanh', grad_input={out})",
                 _trust(FINITE, FINITE, float32=(None, None), bfloat16=((-5.0, 2.0 ** 40), (-5.0, 2.0 ** 40)),
                        float16=(FINITE, (-4.5, math.inf)))),
)


@dataclass(frozen=True)
class NativeMatch:
    """A spec's formula as a NativeKernel (times a gate input, where `gate` is named): the
    kernel, and the bodies of the generated functions in the spec's names -
    _forward_native(*inputs, *constants, _out) writes f into _out and returns it;
    _backward_native(_g, *inputs, *constants, _out) writes grad * df/d(input i) into _out[i]
    where that is not None."""

    kernel: NativeKernel
    forward: tuple[str, ...]
    backward: tuple[str, ...] | None
    gate: str | None = None

    @property
    def trusted(self) -> tuple:
        """The kernel's windows; with a gate, the backward's is also the forward's (df/dgate
        is grad times the kernel's f)."""
        if self.gate is None:
            return self.kernel.trusted
        return tuple((d, f, _intersect(f, b)) for d, f, b in self.kernel.gated or self.kernel.trusted)

    @property
    def any_input(self) -> tuple[bool, bool]:
        """The kernel's any_input; with a gate, neither (the gate must be finite)."""
        return (False, False) if self.gate else self.kernel.any_input


def _intersect(u: Window | None, v: Window | None) -> Window | None:
    if u is None or v is None:
        return None
    return (max(u[0], v[0]), min(u[1], v[1]))


def _bodies(kernel: NativeKernel, fill: dict, gate: str | None) -> tuple:
    """(forward lines, backward lines or None) of the generated functions."""
    def call(template, **names):
        return template.format(**(fill | names))
    if gate is None:
        forward = (f"return {call(kernel.forward, out='_out')}",)
        backward = (call(kernel.backward, g="_g", out="_out[0]"),) if kernel.backward else None
        return forward, backward
    forward = (f"return {call(kernel.forward, out='_out')}.mul_({gate})",)
    if kernel.backward is None:
        return forward, None
    backward = ("if _out[0] is not None:",
                "    " + call(kernel.backward, g=f"torch.mul(_g, {gate}, out=_out[0])", out="_out[0]"),
                "if _out[1] is not None:",
                f"    {call(kernel.forward, out='_out[1]')}.mul_(_g)")
    return forward, backward


@functools.lru_cache(maxsize=None)
def _parsed(kernel: NativeKernel, x: str, constants: tuple[str, ...]) -> sympy.Expr:
    """The entry's formula over the spec's input and constant names (parsed once per naming,
    not once per spec built)."""
    renames = dict(zip(("x", *kernel.constants), (x, *constants)))
    expr = parse_formula(kernel.formula, {old: make_symbol(old) for old in renames}, ["x"])
    return expr.xreplace({make_symbol(old): make_symbol(new) for old, new in renames.items()})


def match(spec: Spec) -> NativeMatch | None:
    """The NativeKernel the spec's formula is, with the generated functions' bodies in the
    spec's names, or None.  One input: the formula is the kernel's; two (a gated activation):
    the formula is the kernel's over the first times the second, the gate (`a*sigmoid(a)*b`:
    torch's silu of a, times b)."""
    if spec.params or len(spec.inputs) > 2:      # (a draw is a call no entry has: no match)
        return None
    x, gate, inner = spec.inputs[0], None, spec.expr
    if len(spec.inputs) == 2:
        gate = spec.inputs[1]
        inner, factor = spec.expr.as_independent(make_symbol(gate), as_Add=False)
        if factor != make_symbol(gate):
            return None
    names = tuple(c.name for c in spec.constants)
    for kernel in NATIVE_KERNELS:
        if len(kernel.constants) != len(names):
            continue
        for order in itertools.permutations(names):
            if _parsed(kernel, x, order) == inner:
                forward, backward = _bodies(kernel, dict(zip(kernel.constants, order), x=x), gate)
                return NativeMatch(kernel, forward, backward, gate)
    return None


def and_list(words) -> str:
    """a, b and c."""
    return ", ".join(words[:-1]) + " and " + words[-1] if len(words) > 1 else words[0]


def kernels_text() -> tuple[str, str]:
    """(the entries' names, those whose kernel takes any input and in which directions), as
    the docs say them."""
    forward = and_list([f"{k.name}'s" for k in NATIVE_KERNELS if k.any_input == (True, False)]) + " forward"
    both = [f"{k.name} both ways" for k in NATIVE_KERNELS if k.any_input == (True, True)]
    return ", ".join(k.name for k in NATIVE_KERNELS), ", ".join([forward, *both])


def _window_text(window: Window, dtypes: str) -> str:
    lo, hi = window
    if (lo, hi) == FINITE:
        return f"finite {dtypes} inputs"
    if lo == -math.inf:
        return f"{dtypes} inputs below {hi:g}"
    if hi == math.inf:
        return f"{dtypes} inputs above {lo:g}"
    if lo == -hi:
        return f"{dtypes} inputs below {_power(hi)} in magnitude"
    return f"{dtypes} inputs in ({lo:g}, {_power(hi)})"


def _power(v: float) -> str:
    exponent = math.log2(v)
    return f"2**{int(exponent)}" if exponent == int(exponent) and exponent > 16 else f"{v:g}"


def describe(m: NativeMatch, x: str) -> list[str]:
    """Lines for a generated module's header: where its CPU fallback calls torch's kernels."""
    kernel = m.kernel
    if m.gate is None:
        backward_label = f"grad * df/d{x}"
        lines = [f"On CPU, torch's own {kernel.name} kernels (actgen.native), on the inputs they are trusted with:"]
    else:
        backward_label = f"grad * df/d{x}, grad * df/d{m.gate}"
        lines = [f"On CPU, torch's own {kernel.name} kernels for {x} (actgen.native), times {m.gate}, on the "
                 f"inputs they are trusted with ({m.gate} finite):"]
    for which, label in ((0, "f"), (1, backward_label)):
        if which == 1 and kernel.backward is None:
            continue
        groups: dict = {}
        for dtype, *windows in m.trusted:
            if windows[which] is not None:
                groups.setdefault(windows[which], []).append(dtype)
        parts = []
        for window, dtypes in groups.items():
            names = and_list(dtypes)
            parts.append(f"any {names} input" if m.any_input[which] else _window_text(window, names))
        lines.append(f"    {label}: " + ("; ".join(parts) if parts else "none") + ".")
    lines.append("    The derived code runs elsewhere (and on float64).")
    return lines
