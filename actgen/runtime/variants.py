"""Launching a compiled kernel variant again without Triton's per-call argument binding.

`kernel[grid](*args, **constexprs)` goes through Triton's JIT on every call: it binds every
argument, specializes it (a tensor on its dtype and 16-byte alignment, an int on being 1 or
a multiple of 16 and on its width), builds a cache key from that and the options, looks
the compiled variant up, and only then calls the variant's launcher.  That host time is
longer than a small kernel on a fast GPU (about 18 us a launch on an H200's host, in
benchmarks/results/cuda/host_profile.txt) and is paid in every forward and backward.

So the first launch of a variant goes through the JIT, which compiles it (or loads it from
Triton's cache) and returns it, and a later launch whose arguments key the same way calls
that variant's launcher directly, with the arguments in the kernel's order, as the JIT
does.  The key is at least as fine as Triton's specialization: every tensor by dtype and
16-byte alignment, every int as Triton specializes it (its width, whether it is 1, whether
it is a multiple of 16; a seed, which the kernels do not specialize on, by its width
alone), every other argument by type and value, the constexprs and the warps, and the
current device.  So a variant is reused only where Triton's own binding picks that same
variant (tests/test_core_launch_variants.py checks the key against Triton's binder), and a
new shape of the same variant is not a new key.  A launch plan (launch.Plan), whose launches
differ only in their tensors, keeps the variant it launched per alignment of its tensors
(kept) and launches it again without keying (launch_kept).

A variant the JIT launched in an earlier process is found again without the JIT: the first
launch of a variant records it in the variant store (variant_store.py), and a fresh
process's first launch loads it from there and launches it directly.

With ACTGEN_STATIC_LAUNCH=1, where torch has its own launcher for Triton's cubins, a variant
is compiled as the JIT would, without Triton's driver and without being launched, and
launched through that launcher instead of Triton's (static_launch.py): no C compiler runs,
and a launch is one C++ call.

Off under Triton's interpreter (no compiled variants), and with ACTGEN_DIRECT_LAUNCH=0.
Triton's launch hooks are honoured; its debug and instrumentation settings are read when
a variant is first launched.
"""
from __future__ import annotations

import os
import warnings

import torch

from . import compiler_key, static_launch, variant_store
from .triton_lang import FP_FUSION, INTERPRET

DEFAULT_STORE = object()   # Launcher(store=...): the store the environment asks for (variant_store.STORE)
MAX_VARIANTS = 4096        # keys kept (one per variant: dtypes, alignments, config, device): cleared beyond


def constexpr_kwargs(kernel, args, consts) -> dict:
    """The constexprs `consts`, in the order of the kernel's parameters after `args`, by name."""
    names = kernel.arg_names[len(args):]
    if len(names) != len(consts):
        raise TypeError(f"{kernel.__name__}: {len(names)} constexprs {names} after {len(args)} arguments, "
                        f"got {len(consts)}")
    return dict(zip(names, consts))


def jit_launch(kernel, grid, args, consts, num_warps):
    """kernel[grid](*args, **constexprs, num_warps=..., **FP_FUSION) (constexpr_kwargs).  Returns
    what Triton's launch returns (the compiled variant on a GPU)."""
    return kernel[grid](*args, **constexpr_kwargs(kernel, args, consts), num_warps=num_warps, **FP_FUSION)


_UNSPECIALIZED: dict[int, tuple] = {}     # id -> (kernel, positions): the kernel held, its id stays its own


def unspecialized(kernel) -> frozenset:
    """Positions of the kernel's parameters Triton does not specialize on (do_not_specialize)."""
    found = _UNSPECIALIZED.get(id(kernel))
    if found is None:
        found = _UNSPECIALIZED[id(kernel)] = (kernel, frozenset(p.num for p in kernel.params if p.do_not_specialize))
    return found[1]


def jit_compile(kernel, grid, args, consts, num_warps):
    """What jit_launch launches, compiled (or found) by Triton's JIT and not launched."""
    return kernel.warmup(*args, grid=grid, **constexpr_kwargs(kernel, args, consts), num_warps=num_warps, **FP_FUSION)


def variant_key(kernel, device, args, consts, num_warps) -> tuple:
    """What decides the compiled variant of a launch, at least as finely as Triton does.
    (The kernel by id, as hashing a JIT function takes a lock; a kept variant holds its
    kernel, so the id stays that kernel's.)  An int is one number: its width (32, 64, 128
    for unsigned 64-bit) plus 1 where Triton specializes it on being a multiple of 16, or
    1 for the value 1 (a 32-bit int); an argument the kernel does not specialize on, its
    width alone.  Every other argument starts with a type or a dtype, so no two kinds of
    argument key alike."""
    dns = unspecialized(kernel)
    key = [id(kernel), device, num_warps, consts]
    add = key.append
    for i, a in enumerate(args):
        if a.__class__ is int:
            width = 32 if -2147483648 <= a < 2147483648 else 64 if a < 9223372036854775808 else 128
            if i in dns:
                add(width)
            elif a == 1:
                add(1)
            else:
                add(width + (a % 16 == 0))
        elif isinstance(a, torch.Tensor):
            add(a.dtype)
            add(a.data_ptr() % 16 == 0)
        else:
            add(a.__class__)
            add(a)
    return tuple(key)


class Launcher:
    """launch(kernel, grid, args, consts, num_warps): the first launch of a variant in a
    process from the variant store or through Triton's JIT, later ones through its launcher,
    or with static, every one through torch's (see the module's docstring)."""

    def __init__(self, enabled: bool | None = None, store=DEFAULT_STORE, static: bool | None = None):
        if enabled is None:
            enabled = not INTERPRET and os.environ.get("ACTGEN_DIRECT_LAUNCH", "1") != "0"
        self.enabled = enabled
        # torch's launcher (static_launch.py), where asked for: decided when first bound
        self.static = static_launch.requested() if static is None else static
        if store is DEFAULT_STORE:
            store = variant_store.STORE if variant_store.enabled() else None
        self.store = store
        self.variants: dict[tuple, object] = {}
        self.direct = 0             # launches made directly, so far
        self._device = self._stream = self._hooks = self._target = None

    def _bind(self):
        """Triton's current device, stream and target (what its JIT launches on and compiles
        for) and its launch hooks.  Starts Triton's driver, except where static launches go
        through torch's launcher: then torch's current device and stream, and its device's
        capability as Triton's target (what Triton's driver reads them from)."""
        from triton import knobs

        self._hooks = knobs.runtime
        self.static = self.static and static_launch.available()
        if self.static:         # Triton's driver left unstarted: torch's device, stream and capability
            self._device, self._stream = torch.cuda.current_device, torch._C._cuda_getCurrentRawStream
            self._target = static_launch.current_target
            return
        from triton.runtime.driver import driver

        active = driver.active
        self._device, self._stream, self._target = active.get_current_device, active.get_current_stream, active.get_current_target

    def __call__(self, kernel, grid, args, consts, num_warps):
        if self._device is None and self.enabled:
            compiler_key.wait()     # (Triton's modules imported by one thread at a time)
            try:
                self._bind()
            except (ImportError, AttributeError):     # a Triton without these: its JIT for every launch
                self.enabled = False
        if not self.enabled:
            compiler_key.wait()
            return jit_launch(kernel, grid, args, consts, num_warps)
        device = self._device()
        key = variant_key(kernel, device, args, consts, num_warps)
        compiled = self.variants.get(key)
        if compiled is None:
            compiled = self._stored(kernel, key, device, len(args))
            if compiled is None:
                compiler_key.wait()         # (a compile: Triton's hash of itself, where it is being taken)
                if self.static:
                    compiled = self._compile_static(kernel, key, device, grid, args, consts, num_warps)
                if compiled is None:
                    compiled = jit_launch(kernel, grid, args, consts, num_warps)
                    if self._keep(key, compiled):
                        self._record(kernel, key, compiled)
                    return compiled
            else:
                self._keep(key, compiled)
        return self._launch(compiled, kernel, grid, args, consts, num_warps, device)

    def kept(self, kernel, args, consts, num_warps):
        """The variant kept for a launch with these arguments on the current device (by an
        earlier launch), or None: what launch_kept takes."""
        if not self.enabled or self._device is None:
            return None
        return self.variants.get(variant_key(kernel, self._device(), args, consts, num_warps))

    def launch_kept(self, compiled, kernel, grid, args, consts, num_warps):
        """Launch a variant kept() gave for arguments that key as these do (their dtypes and
        alignments; the same ints, constexprs and warps, on the same device), without keying
        them again."""
        if not self.enabled:
            return self(kernel, grid, args, consts, num_warps)
        if compiled.__class__ is static_launch.StaticKernel and not self.static:
            compiled = compiled.compiled
        return self._launch(compiled, kernel, grid, args, consts, num_warps, self._device())

    def _launch(self, compiled, kernel, grid, args, consts, num_warps, device):
        if compiled.__class__ is static_launch.StaticKernel:
            if not static_launch.hooks_set(self._hooks):
                try:
                    compiled.launch(grid, args, self._stream(device))
                except (TypeError, RuntimeError) as exc:    # (refused before launching: Triton's launcher from now on)
                    warnings.warn(f"actgen: launching through torch's launcher failed ({exc}); launching through "
                                  "Triton's instead", stacklevel=4)
                    self.static = False
                    self.variants = {k: v.compiled if v.__class__ is static_launch.StaticKernel else v
                                     for k, v in self.variants.items()}
                else:
                    self.direct += 1
                    return compiled.compiled
            compiled = compiled.compiled        # (Triton's launcher calls the hooks)
        stream = self._stream(device)
        values = (*args, *consts)
        hooks = self._hooks
        enter = hooks.launch_enter_hook
        # (launch_metadata is None without an enter hook: Triton 3.6-3.9 return that at once)
        metadata = None if enter is None else compiled.launch_metadata(grid, stream, *values)
        try:
            compiled.run(grid[0], grid[1] if len(grid) > 1 else 1, grid[2] if len(grid) > 2 else 1, stream,
                         compiled.function, compiled.packed_metadata, metadata, enter,
                         hooks.launch_exit_hook, *values)
        except TypeError as exc:         # a launcher that takes other arguments: the JIT from now on
            warnings.warn(f"actgen: launching compiled kernels directly failed ({exc}); "
                          "launching through Triton's JIT instead", stacklevel=4)
            self.enabled = False
            return jit_launch(kernel, grid, args, consts, num_warps)
        self.direct += 1
        return compiled

    def _stored(self, kernel, key, device, n_args):
        """The variant from the store, loaded onto the current device (through torch's launcher
        where static); None where there is none."""
        if self.store is None or not variant_store.usable(kernel):
            return None
        try:
            compiled = self.store.load(kernel, key, self._target())
            if compiled is not None:
                if self.static:
                    return static_launch.load(compiled, n_args, device)
                compiled._init_handles()         # loads it on the GPU: what fails there, fails here
            return compiled
        except Exception:  # noqa: BLE001  (the JIT compiles it instead, and raises what is wrong)
            return None

    def _compile_static(self, kernel, key, device, grid, args, consts, num_warps):
        """The variant compiled (or found in Triton's cache) as Triton's JIT would, without
        starting Triton's driver (static_launch.compile_variant; else by the JIT, not
        launched), and loaded through torch's launcher, kept and recorded; None where it
        cannot be launched so (the JIT launches it then, as it does without static launches)."""
        if not variant_store.usable(kernel):
            return None
        try:
            compiled = static_launch.compile_variant(kernel, args, constexpr_kwargs(kernel, args, consts), num_warps,
                                                     self._target(), FP_FUSION)
        except Exception:  # noqa: BLE001  (a Triton whose JIT binds otherwise: the JIT compiles, and raises what is wrong)
            compiled = jit_compile(kernel, grid, args, consts, num_warps)
        if compiled is None or not hasattr(compiled, "packed_metadata"):
            return None
        static = static_launch.load(compiled, len(args), device)
        if static is not None:
            self._keep(key, static)
            self._record(kernel, key, compiled)
        return static

    def _record(self, kernel, key, compiled):
        if self.store is not None and variant_store.usable(kernel):
            try:
                self.store.record(kernel, key, self._target(), compiled)
            except Exception:  # noqa: BLE001  (a cache: the next process compiles through the JIT)
                pass

    def _keep(self, key, compiled) -> bool:
        if compiled is None or not (compiled.__class__ is static_launch.StaticKernel or hasattr(compiled, "packed_metadata")):
            return False
        if len(self.variants) >= MAX_VARIANTS:
            self.variants.clear()
        self.variants[key] = compiled
        return True


LAUNCH = Launcher()
