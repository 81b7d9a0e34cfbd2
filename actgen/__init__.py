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


def compile(formula, name="activation", *, params=None, constants=None, inputs=None, doc="", class_name=None,
            precision="auto", checks=None):
    """Compile a formula into a module with `<name>`, `<ClassName>` and `<ClassName>Function`,
    built once into the cache ($ACTGEN_CACHE_DIR) and imported from it after.

    params: {name: init} or {name: {"init": v, "per_channel": bool}}; constants: {name: default};
    inputs: e.g. ["a", "b"] for a gated activation; doc, class_name, precision (auto, float32,
    float64) and checks ({condition on the constants: message}): the spec fields.  Raises
    actgen.SpecError on a bad formula or argument.

    >>> m = actgen.compile("x * sigmoid(beta * x)", name="swish_b", params={"beta": 1.0})
    >>> y = m.swish_b(torch.randn(8));  layer = m.SwishB()
    """
    from .compiler import compile as _compile

    return _compile(formula, name, params=params, constants=constants, inputs=inputs, doc=doc,
                    class_name=class_name, precision=precision, checks=checks)


def __getattr__(name):
    if name == "SpecError":
        from .spec import SpecError

        return SpecError
    raise AttributeError(f"module 'actgen' has no attribute {name!r}")


__all__ = ["compile", "SpecError", "__version__"]
