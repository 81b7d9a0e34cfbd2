"""actgen: write an activation as a formula, get fused Triton forward/backward kernels, an
eager torch fallback, autograd Functions and nn.Modules.

    import actgen
    mod = actgen.compile("x * tanh(softplus(x))", name="my_mish")
    y = mod.my_mish(x)

The built-in library lives in `actgen.ops` (generated from specs/ by `actgen build`).
"""
from __future__ import annotations

from .cache import find_compiled_packages
from .version import __version__

find_compiled_packages()


def compile(formula, name="activation", **kwargs):
    """See actgen.compiler.compile."""
    from .compiler import compile as _compile

    return _compile(formula, name, **kwargs)


def __getattr__(name):
    if name == "SpecError":
        from .spec import SpecError

        return SpecError
    raise AttributeError(f"module 'actgen' has no attribute {name!r}")


__all__ = ["compile", "SpecError", "__version__"]
