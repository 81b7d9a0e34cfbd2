"""Triton's hash of its own sources and shared library, taken early and in the background.

Every `triton.compile` keys its cache with `triton.runtime.cache.triton_key()`: a SHA-256 of
Triton's compiler and language sources and of its shared library (hundreds of MB), taken
once per process - 0.35 s on an H200's host, inside the first call that compiles a kernel.
A process whose variants are all in actgen's variant store compiles nothing and never
needs it; one with an empty store (a first run) compiles its first kernels on its first
call.  So where the store holds no variant yet and a GPU is there, importing the runtime
starts a daemon thread that takes the hash (Python's hashlib lets go of the GIL while it
hashes), while the program goes on with what it does before its first call - building its
model, starting CUDA; a launch that must compile, or that first starts Triton's driver
(which imports Triton's backends, as the hash does), waits for that thread first, rather
than hashing a second time beside it.  ACTGEN_WARM_COMPILER_KEY=0 turns it off; it never
starts under Triton's interpreter (nothing is compiled for a GPU there).
"""
from __future__ import annotations

import os
import threading

_THREAD: threading.Thread | None = None


def wanted(interpret: bool, gpu_build: bool, store_empty) -> bool:
    """Whether to take the hash in the background: not under the interpreter, a GPU build of
    torch, not turned off, and (store_empty(), asked last) no variant in the store yet."""
    if interpret or not gpu_build or os.environ.get("ACTGEN_WARM_COMPILER_KEY", "1") == "0":
        return False
    return store_empty()


def _store_empty() -> bool:
    from . import variant_store

    if not variant_store.enabled():
        return True
    try:
        with os.scandir(variant_store.root()) as entries:
            return not any(e.name.endswith(".json") for e in entries)
    except OSError:
        return True


def _take(needs_gpu: bool) -> None:
    try:
        if needs_gpu:
            import torch

            if not torch.cuda.is_available():
                return
        from triton.runtime.cache import triton_key

        triton_key()
    except Exception:  # noqa: BLE001  (an early start only: a compile takes the hash itself)
        pass


def start(needs_gpu: bool = True) -> bool:
    """Take the hash in a daemon thread (once per process; with needs_gpu only where torch
    sees a GPU).  Whether a thread was started."""
    global _THREAD
    if _THREAD is not None:
        return False
    _THREAD = threading.Thread(target=_take, args=(needs_gpu,), name="actgen-compiler-key", daemon=True)
    _THREAD.start()
    return True


def wait() -> None:
    """Before a compile: wait for the thread taking the hash, if one is still at it."""
    thread = _THREAD
    if thread is not None and thread.is_alive() and thread is not threading.current_thread():
        thread.join()


def start_if_wanted() -> bool:
    """At import: start() where wanted() (the runtime's own reading of the interpreter, the
    torch build and the store)."""
    import torch

    from .triton_lang import INTERPRET

    if wanted(INTERPRET, torch.version.cuda is not None or torch.version.hip is not None, _store_empty):
        return start()
    return False
