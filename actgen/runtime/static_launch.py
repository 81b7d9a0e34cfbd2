"""Compiled kernel variants launched through torch's own launcher for Triton's cubins.

Triton launches a compiled variant through a small C module that it builds with the system's
C compiler, one per kernel signature, and it starts its driver through another such module
(both cached in ~/.triton/cache).  On a fresh machine those builds are most of a first
call's time: 0.77 s of 1.41 s on an H200's host (benchmarks/results/cuda/host_profile.txt).
Every launch then goes through the module's Python-facing wrapper: about 9 us of host time
there, longer than a small kernel runs.

CUDA builds of torch (2.8 on) carry a launcher of their own for Triton's cubins,
torch._C._StaticCudaLauncher, which torch.compile launches its Triton kernels with: it loads
a cubin with the CUDA driver and launches it with cuLaunchKernel, the arguments parsed in C++
from a string of type codes.  With ACTGEN_STATIC_LAUNCH=1 the variants launcher
(actgen.runtime.variants) launches through it: a variant's first launch in a process
compiles it as Triton's JIT would (its binding and specialization, compile_variant) without
starting Triton's driver or launching it, or loads it from the variant store, and loads its
cubin; every launch passes the kernel's parameters that are not constexprs, in order, then
a null pointer for each scratch buffer Triton's kernels take (and these kernels do not use).
A variant this launcher cannot launch (scratch memory, clusters, cooperative grids, tensor
descriptors, an argument type it has no code for), a torch without it, ROCm, and Triton's
launch hooks keep Triton's launcher.

Off by default: the argument layout is checked against the PTX entry of every built-in
kernel without a GPU (actgen.aot, tests/test_kernels_aot.py), but a GPU is needed to run it.
"""
from __future__ import annotations

import functools
import os

import torch

#: Triton's scalar argument types -> the type codes of torch's launcher (pointers are "O")
TYPE_CODES = {"i8": "b", "i16": "h", "i32": "i", "i64": "l", "u8": "B", "u16": "H", "u32": "I", "u64": "K",
              "fp32": "f", "f32": "f", "fp64": "d"}
#: Triton's metadata of the scratch buffers a kernel may take after its own parameters
SCRATCH = ("global_scratch_size", "profile_scratch_size")


class Unsupported(Exception):
    """A compiled variant torch's launcher does not launch (Triton's launcher keeps it)."""


def requested() -> bool:
    return os.environ.get("ACTGEN_STATIC_LAUNCH", "0") == "1"


def available() -> bool:
    """Whether this torch has the launcher (a CUDA build, not ROCm) and a GPU to launch on."""
    return (getattr(torch._C, "_StaticCudaLauncher", None) is not None and torch.version.hip is None
            and torch.cuda.is_available())


@functools.lru_cache(maxsize=None)
def _target(device: int):
    from triton.backends.compiler import GPUTarget

    major, minor = torch.cuda.get_device_capability(device)
    return GPUTarget("cuda", major * 10 + minor, 32)


def current_target():
    """The current GPU's target, as Triton's driver reports it (from torch's capability)."""
    return _target(torch.cuda.current_device())


def plan(compiled, n_args: int) -> tuple[tuple[int, ...], str]:
    """(the positions among a launch's n_args arguments that the compiled kernel takes, the
    type codes of its parameters, scratch pointers included).  The rest of the launch's
    arguments are constexprs, or ints the JIT specialized as constexprs (the value 1)."""
    md = compiled.metadata
    if (getattr(md, "num_ctas", 1) != 1 or getattr(md, "launch_cooperative_grid", False)
            or getattr(md, "launch_pdl", False) or getattr(md, "tensordesc_meta", None)):
        raise Unsupported("clusters, cooperative grids, programmatic launches or tensor descriptors")
    kept, codes = [], []
    for i, ty in enumerate(compiled.src.signature.values()):
        if ty == "constexpr":
            continue
        if i >= n_args:
            raise Unsupported(f"parameter {i} is not among the launch's {n_args} arguments")
        if ty.startswith("*"):
            codes.append("O")
        elif ty in TYPE_CODES:
            codes.append(TYPE_CODES[ty])
        else:
            raise Unsupported(f"an argument of type {ty}")
        kept.append(i)
    for size in SCRATCH:
        if hasattr(md, size):
            if getattr(md, size):
                raise Unsupported(f"{size} {getattr(md, size)}")
            codes.append("O")
    return tuple(kept), "".join(codes)


_BINDERS: dict = {}     # (id(kernel), target) -> (kernel, backend, binder): the kernel held, its id stays its own


def compile_variant(kernel, args, constexprs: dict, num_warps: int, target, options=None):
    """The variant Triton's JIT compiles for a launch of kernel with these arguments (args,
    and the constexprs by name), for target, without starting Triton's driver: the JIT's own
    binding, specialization and compile (JITFunction.run's steps, as in Triton 3.6-3.9), and
    Triton's cache, where it compiled this variant before.  options: more of the JIT's
    keyword options (FP_FUSION's)."""
    from triton import knobs
    from triton.compiler import ASTSource, compile, make_backend
    from triton.runtime.jit import create_function_from_signature

    found = _BINDERS.get((id(kernel), target))
    if found is None:
        backend = make_backend(target)
        found = _BINDERS[(id(kernel), target)] = (kernel, backend,
                                                  create_function_from_signature(kernel.signature, kernel.params, backend))
    _, backend, binder = found
    kwargs = dict(constexprs, num_warps=num_warps, **(options or {}))
    kwargs["debug"] = kwargs.get("debug", kernel.debug) or knobs.runtime.debug
    kwargs["instrumentation_mode"] = knobs.compilation.instrumentation_mode
    if hasattr(knobs.compilation, "fpsan_homomorphic_casts"):
        kwargs["fpsan_homomorphic_casts"] = knobs.compilation.fpsan_homomorphic_casts
    bound, specialization, opts = binder(*args, **kwargs)
    opts, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound, specialization, opts)
    return compile(ASTSource(kernel, signature, constexprs, attrs), target=target, options=opts.__dict__)


def cubin_path(compiled) -> str:
    """A file holding the compiled variant's cubin: Triton's cache's, or one written under
    actgen's cache directory."""
    for name, path in getattr(compiled, "metadata_group", {}).items():
        if name.endswith(".cubin") and os.path.isfile(path):
            return path
    from actgen.cache import cache_dir

    path = cache_dir() / "cubins" / f"{compiled.hash}.cubin"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(compiled.asm["cubin"])
        os.replace(tmp, path)
    return str(path)


def hooks_set(hooks) -> bool:
    """Whether Triton's launch hooks are set (None, or an empty chain, is unset)."""
    for hook in (hooks.launch_enter_hook, hooks.launch_exit_hook):
        if hook is not None and getattr(hook, "calls", True):
            return True
    return False


class StaticKernel:
    """A compiled variant loaded on one GPU through torch's launcher: launch(grid, args,
    stream) takes the arguments a launch through Triton's JIT takes before its constexprs."""

    __slots__ = ("compiled", "module", "function", "num_warps", "shared", "kept", "types", "nulls", "_launch")

    def __init__(self, compiled, n_args: int, device: int, launcher=None):
        launcher = launcher if launcher is not None else torch._C._StaticCudaLauncher
        kept, self.types = plan(compiled, n_args)
        self.kept = None if kept == tuple(range(n_args)) else kept
        self.nulls = (None,) * (len(self.types) - len(kept))      # (the scratch pointers' codes come last)
        md = compiled.metadata
        loaded = launcher._load_kernel(cubin_path(compiled), md.name, md.shared, device)
        # (function, registers, spills), or in newer torch (module, function, registers, spills)
        self.module, self.function = (None, loaded[0]) if len(loaded) == 3 else (loaded[0], loaded[1])
        self.compiled, self.num_warps, self.shared = compiled, md.num_warps, md.shared
        self._launch = launcher._launch_kernel

    def launch(self, grid, args: tuple, stream: int) -> None:
        values = tuple(args) if self.kept is None else tuple(args[i] for i in self.kept)
        self._launch(self.function, grid[0], grid[1] if len(grid) > 1 else 1, grid[2] if len(grid) > 2 else 1,
                     self.num_warps, self.shared, self.types, values + self.nulls, stream)


def load(compiled, n_args: int, device: int, launcher=None) -> StaticKernel | None:
    """compiled loaded through torch's launcher, or None where it cannot be (see the module)."""
    try:
        return StaticKernel(compiled, n_args, device, launcher)
    except Exception:  # noqa: BLE001  (Unsupported, or the driver refusing it: Triton's launcher keeps it)
        return None

