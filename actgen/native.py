"""torch's own CPU kernels for formulas that are exactly one of torch's activations.

Where a spec's formula is, as parsed, one of the formulas below (one input, no params; its
constants in any names), the CPU fallback computes f, and grad * df/dx where the entry has a
backward, with torch's fused kernel for that activation (one pass over memory, where the
derived code takes several) - on the inputs it is trusted with (finite ones; any, where it
gives the formula's limits at +-inf and NaN too; below a bound, where it overflows on the
way), in the input's dtype, where the op computes that direction in float32; elsewhere the
derived code runs.  The Triton kernels are the derived ones whatever the match.

The match is structural: the formula and the entry's, both parsed by actgen.formula, are the
same sympy expression (sympy orders sums and products, so `x * sigmoid(x)` and
`sigmoid(x) * x` match; `log1p(exp(x))` for `log(1 + exp(x))` does not, and gets the derived
code).  Each entry's values, its derivative at the kinks included, are checked against the
mpmath oracle's in tests/test_core_native.py; an entry is listed only where torch's kernel
meets the accuracy target there (torch's GELU, 1 + erf(x/sqrt(2)), cancels for x < -3 and is
not; nor are silu's backward, s*(1 + x*(1 - s)), and mish's, 8.1 ULP at their worst points
in float32 where the derived ones are within 4).
"""
from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass

import sympy

from .formula import make_symbol, parse_formula
from .spec import Spec


@dataclass(frozen=True)
class NativeKernel:
    """An activation torch computes in one fused kernel: its formula over `x` and the
    constants' placeholders, and the calls (templates over {x}, {g} and the placeholders)."""

    name: str
    formula: str
    constants: tuple[str, ...]
    forward: str
    backward: str | None        # grad * df/dx, None: the derived backward
    # (forward, backward): whether torch's kernel also gives the formula's values (its limits)
    # at +-inf and NaN, so that it runs without a check that the inputs are finite
    any_input: tuple[bool, bool] = (False, False)
    # where torch's kernel overflows on the way for huge inputs: it runs only where every
    # input is below this in magnitude (one pass for the smallest and largest)
    bound: float = float("inf")


NATIVE_KERNELS: tuple[NativeKernel, ...] = (
    NativeKernel("relu", "Max(x, 0)", (), "torch.relu({x})", "torch.ops.aten.threshold_backward({g}, {x}, 0.0)",
                 (True, False)),
    NativeKernel("leaky_relu", "where(x > 0, x, s * x)", ("s",), "torch.nn.functional.leaky_relu({x}, {s})",
                 "torch.ops.aten.leaky_relu_backward({g}, {x}, {s}, False)", (True, False)),
    NativeKernel("elu", "where(x > 0, x, a * (exp(x) - 1))", ("a",), "torch.nn.functional.elu({x}, {a})",
                 "torch.ops.aten.elu_backward({g}, {a}, 1.0, 1.0, False, {x})", (True, False)),
    NativeKernel("softplus", "where(b * x > t, x, log(1 + exp(b * x)) / b)", ("b", "t"),
                 "torch.nn.functional.softplus({x}, {b}, {t})", "torch.ops.aten.softplus_backward({g}, {x}, {b}, {t})",
                 (True, True)),
    NativeKernel("hardswish", "Piecewise((0, x <= -3), (x * (x + 3) / 6, x < 3), (x, True))", (),
                 "torch.nn.functional.hardswish({x})", "torch.ops.aten.hardswish_backward({g}, {x})",
                 bound=2.0 ** 120),     # (x * 6 / 6: inf from x = 5.7e37 in float32)
    NativeKernel("silu", "x * sigmoid(x)", (), "torch.nn.functional.silu({x})", None),
)


@dataclass(frozen=True)
class NativeMatch:
    """A spec's formula as a NativeKernel: the kernel and its calls with the spec's names."""

    kernel: NativeKernel
    forward: str
    backward: str | None


@functools.lru_cache(maxsize=None)
def _parsed(kernel: NativeKernel, x: str, constants: tuple[str, ...]) -> sympy.Expr:
    """The entry's formula over the spec's input and constant names (parsed once per naming,
    not once per spec built)."""
    renames = dict(zip(("x", *kernel.constants), (x, *constants)))
    expr = parse_formula(kernel.formula, {old: make_symbol(old) for old in renames}, [])
    return expr.xreplace({make_symbol(old): make_symbol(new) for old, new in renames.items()})


def match(spec: Spec) -> NativeMatch | None:
    """The NativeKernel the spec's formula is, with its calls in the spec's names, or None."""
    if len(spec.inputs) != 1 or spec.params:     # (a draw is a call no entry has: no match)
        return None
    x = spec.inputs[0]
    names = tuple(c.name for c in spec.constants)
    for kernel in NATIVE_KERNELS:
        if len(kernel.constants) != len(names):
            continue
        for order in itertools.permutations(names):
            if _parsed(kernel, x, order) == spec.expr:
                fill = dict(zip(kernel.constants, order), x=x, g="_g")
                backward = kernel.backward.format(**fill) if kernel.backward else None
                return NativeMatch(kernel, kernel.forward.format(**fill), backward)
    return None
