"""Launching a compiled kernel variant directly (actgen.runtime.variants).

The key that picks a compiled variant is checked against Triton's own argument binder (what
its JIT specializes a launch on), the direct launch's arguments against the binder's bound
arguments (what the JIT hands the launcher), and the launcher's bookkeeping with stand-in
kernels: there is no GPU here to launch on.
"""
import importlib
import itertools
import warnings

import pytest
import torch

pytest.importorskip("triton")

from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import make_backend  # noqa: E402
from triton.runtime.jit import JITFunction, create_function_from_signature  # noqa: E402

from _stand_ins import Compiled as _Compiled, Kernel as _Kernel, launcher as _launcher  # noqa: E402
from actgen.runtime import launch, variants  # noqa: E402
from actgen.runtime.triton_lang import tl  # noqa: E402


def _jit(kernel):
    """The kernel as Triton's JIT sees it (tests run under the interpreter)."""
    return kernel if isinstance(kernel, JITFunction) else JITFunction(kernel.fn, **kernel.kwargs)


def _binder(kernel):
    """Triton's binder for the kernel: (bound args, specialization, options) of a launch."""
    return create_function_from_signature(kernel.signature, kernel.params, make_backend(GPUTarget("cuda", 90, 32)))


def _kernel(op, which):
    return _jit(getattr(importlib.import_module(f"actgen.ops.{op}"), f"_{which}_kernel"))


def _tensor(dtype, offset):
    """A 64-element tensor of dtype starting `offset` elements into its storage."""
    return torch.zeros(64 + offset, dtype=dtype)[offset:]


def _launches(op, which):
    """Argument lists of one kernel's launches that differ in what Triton may specialize on."""
    kernel = _kernel(op, which)
    names = kernel.arg_names
    consts = {"BLOCK_M": 4, "BLOCK_N": 256, "CH_AXIS": 0, "ACC": tl.float32, "FAST": False, "PARAM_GRAD": True,
              "STEP": False, "TRAINING": True}
    tail = tuple(n for n in names if n in consts)
    n_args = len(names) - len(tail)
    tensor_slots = [i for i, n in enumerate(names[:n_args]) if n.endswith("_ptr")]
    int_values = (1, 16, 17, 0, 32, 33, -16, -1, 2**31 + 16, 2**31 + 1, -2**31 - 16, 2**63 + 16, 2**63 + 1)
    out = []
    for dtype, offset, value, seed in itertools.product((torch.float32, torch.bfloat16), (0, 1, 8),
                                                          int_values, (1, 16, 12345, 2**31 - 1)):
        args = []
        for i, n in enumerate(names[:n_args]):
            if i in tensor_slots:
                args.append(_tensor(dtype, offset if i == tensor_slots[-1] else 0))
            elif n == "_seed":
                args.append(seed)
            elif n.endswith("_stride") or n in ("_M", "_n_partials"):
                args.append(value)
            elif n in ("_N", "_C", "_iters"):
                args.append(64)
            else:                                   # a constant
                args.append(0.5)
        for warps in (4, 8):
            out.append((tuple(args), tuple(consts[n] for n in tail), warps))
    return kernel, out


CASES = [("silu", "forward"), ("prelu", "backward"), ("rrelu", "forward"), ("rrelu", "backward"),
         ("swiglu", "backward"), ("softplus", "forward"), ("polynomial", "backward")]


@pytest.mark.parametrize("op,which", CASES)
def test_key_is_at_least_as_fine_as_tritons_specialization(op, which):
    kernel, launches = _launches(op, which)
    bind = _binder(kernel)
    seen = {}
    for args, consts, warps in launches:
        key = variants.variant_key(kernel, 0, args, consts, warps)
        names = kernel.arg_names[len(args):]
        _, spec, options = bind(*args, **dict(zip(names, consts)), num_warps=warps)
        triton_key = (str(spec), str(options))
        assert seen.setdefault(key, triton_key) == triton_key, f"one key for two Triton variants: {args}"
    # the key tells apart what Triton does (alignment, dtype, int values of 1 and multiples of
    # 16, widths), and no more: launches Triton compiles alike share a key, whatever the shape
    assert len(set(seen.values())) > 1
    assert len(seen) == len(set(seen.values()))


@pytest.mark.parametrize("which", ["forward", "backward"])
def test_a_new_seed_every_call_keeps_its_variant(which):
    """rrelu draws with a new seed every training call: Triton does not specialize on it, and
    neither does the key (else every call would miss)."""
    kernel, launches = _launches("rrelu", which)
    seed_at = kernel.arg_names.index("_seed")
    keys = {variants.variant_key(kernel, 0, args, consts, warps)
            for args, consts, warps in launches if args[0].dtype == torch.float32 and args[seed_at] != 0}
    by_rest = {variants.variant_key(kernel, 0, args[:seed_at] + (7,) + args[seed_at + 1:], consts, warps)
               for args, consts, warps in launches if args[0].dtype == torch.float32}
    assert len(keys) == len(by_rest)


def test_key_tells_apart_device_warps_and_constexprs():
    kernel = _kernel("silu", "forward")
    x = torch.zeros(64)
    args = (x, x, 64, 64, 1)
    consts = (1, 64, 0, tl.float32, False)
    key = variants.variant_key(kernel, 0, args, consts, 4)
    assert key == variants.variant_key(kernel, 0, (torch.ones(64), torch.ones(64), 64, 64, 1), consts, 4)
    assert key == variants.variant_key(kernel, 0, (x, x, 4096, 2048, 1), consts, 4)    # another shape, alike
    assert key != variants.variant_key(kernel, 1, args, consts, 4)
    assert key != variants.variant_key(kernel, 0, args, consts, 8)
    assert key != variants.variant_key(kernel, 0, args, (1, 64, 0, tl.float32, True), 4)
    assert key != variants.variant_key(kernel, 0, args, (1, 64, 0, tl.float64, False), 4)
    assert key != variants.variant_key(kernel, 0, (x, x, 64, 65, 1), consts, 4)


class _Recorder:
    """Stands in for the launcher: records every launch, then launches through the JIT
    (the interpreter here)."""

    def __init__(self):
        self.calls = []

    def __call__(self, kernel, grid, args, consts, num_warps):
        self.calls.append((kernel, grid, args, consts, num_warps))
        return variants.jit_launch(kernel, grid, args, consts, num_warps)


def _params(*shapes):
    return [torch.rand(s, requires_grad=True) + 0.5 for s in shapes]


CALLS = {
    "silu": lambda ops, x: ops.silu(x),
    "prelu": lambda ops, x: ops.prelu(x, *_params(4)),
    "rrelu": lambda ops, x: ops.rrelu(x, training=True),
    "swiglu": lambda ops, x: ops.swiglu(x, x.detach().flip(-1).requires_grad_()),
    "polynomial": lambda ops, x: ops.polynomial(x, *_params(1, 1, 1, 1)),
    "learnable_activation": lambda ops, x: ops.learnable_activation(x, *_params(4, 4, 1)),
}


@pytest.mark.parametrize("op", sorted(CALLS))
def test_direct_launch_passes_what_the_jit_binds(op, triton_backend, monkeypatch):
    """Every launch of a forward and a backward: the values a direct launch hands the
    launcher (the arguments, then the constexprs) are the JIT's bound arguments in order."""
    import actgen.ops as ops

    rec = _Recorder()
    monkeypatch.setattr(launch, "LAUNCH", rec)
    module = importlib.import_module(f"actgen.ops.{op}")
    x = torch.randn(3, 4, 35, requires_grad=True)
    y = CALLS[op](ops, x)
    y.backward(torch.randn_like(y))
    assert {c[0] for c in rec.calls} == {module._forward_kernel, module._backward_kernel}
    for kernel, grid, args, consts, warps in rec.calls:
        jit = _jit(kernel)
        bound, _, options = _binder(jit)(*args, **dict(zip(jit.arg_names[len(args):], consts)), num_warps=warps)
        assert list(bound.values()) == [*args, *consts]
        assert list(bound) == jit.arg_names
        assert options == {"num_warps": warps}


def test_first_launch_through_the_jit_then_the_variants_launcher():
    launcher, kernel = _launcher(), _Kernel()
    x, out = torch.zeros(64), torch.zeros(64)
    first = launcher(kernel, (3,), (x, out, 64), (128, False), 4)
    assert kernel.jit_calls == [((3,), (x, out, 64), {"BLOCK": 128, "FAST": False, "num_warps": 4, "enable_fp_fusion": True})]
    again = launcher(kernel, (5,), (x, out, 64), (128, False), 4)
    assert again is first and len(kernel.jit_calls) == 1
    assert first.calls == [(5, 1, 1, "stream0", first.function, first.packed_metadata,
                            ("meta", (5,), "stream0", (x, out, 64, 128, False)), "enter", "exit", x, out, 64, 128, False)]
    # what Triton specializes differently is a new variant, through the JIT
    launcher(kernel, (3,), (x[1:], out[1:], 63), (128, False), 4)
    launcher(kernel, (3,), (x, out, 64), (128, True), 4)
    launcher(kernel, (3,), (x.double(), out.double(), 64), (128, False), 4)
    launcher(kernel, (3,), (x, out, 64), (128, False), 8)
    assert len(kernel.jit_calls) == 5 and len(first.calls) == 1


def test_a_launcher_that_refuses_the_arguments_falls_back_to_the_jit():
    launcher, kernel = _launcher(), _Kernel(fail=True)
    x = torch.zeros(64)
    launcher(kernel, (1,), (x, x, 64), (128, False), 4)
    with pytest.warns(UserWarning, match="through Triton's JIT"):
        launcher(kernel, (1,), (x, x, 64), (128, False), 4)
    assert not launcher.enabled and len(kernel.jit_calls) == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        launcher(kernel, (1,), (x, x, 64), (128, False), 4)
    assert len(kernel.jit_calls) == 3


def test_variants_kept_are_bounded(monkeypatch):
    monkeypatch.setattr(variants, "MAX_VARIANTS", 3)
    launcher, kernel = _launcher(), _Kernel()
    x = torch.zeros(64)
    for n in range(5):
        launcher(kernel, (1,), (x, x, 64), (128 << n, False), 4)
    assert len(launcher.variants) == 2


def test_off_under_the_interpreter_and_by_environment(monkeypatch):
    assert not variants.Launcher().enabled            # the tests run under the interpreter
    monkeypatch.setattr(variants, "INTERPRET", False)
    assert variants.Launcher().enabled
    monkeypatch.setenv("ACTGEN_DIRECT_LAUNCH", "0")
    assert not variants.Launcher().enabled


def test_jit_launch_refuses_the_wrong_number_of_constexprs():
    with pytest.raises(TypeError, match="2 constexprs"):
        variants.jit_launch(_Kernel(), (1,), (torch.zeros(4), torch.zeros(4), 4), (128,), 4)


def test_a_triton_without_the_launcher_hooks_keeps_the_jit(monkeypatch):
    """Where Triton's driver or knobs cannot be bound, every launch goes through the JIT."""
    launcher, kernel = variants.Launcher(enabled=True), _Kernel()

    def no_knobs():
        raise ImportError("no triton.knobs")
    monkeypatch.setattr(launcher, "_bind", no_knobs)
    x = torch.zeros(64)
    first = launcher(kernel, (1,), (x, x, 64), (128, False), 4)
    assert isinstance(first, _Compiled) and not launcher.enabled
    launcher(kernel, (1,), (x, x, 64), (128, False), 4)
    assert len(kernel.jit_calls) == 2 and not first.calls
