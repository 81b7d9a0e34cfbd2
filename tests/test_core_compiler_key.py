"""Triton's hash of itself taken in the background (actgen/runtime/compiler_key.py): when the
runtime starts it at import, that the thread takes the hash that triton.compile then finds
taken, and that a launch that compiles, or first starts Triton's driver, waits for it first
(and one that does neither, does not)."""
import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from actgen.runtime import HAS_TRITON, compiler_key, variants

from test_core_static_launch import _Kernel, _static_launcher

pytestmark = pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")


def _fresh(code: str, env: dict) -> dict:
    """Run code in a fresh process (no interpreter unless env asks); the JSON it prints last."""
    full = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"} | env
    proc = subprocess.run([sys.executable, "-c", code], env=full, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


_AT_IMPORT = """
import json, torch
torch.version.cuda = "12.8"         # a CUDA build of torch, as far as the runtime can tell
import actgen.runtime
from actgen.runtime import compiler_key
t = compiler_key._THREAD
if t is not None:
    t.join()
from triton.runtime.cache import triton_key
print(json.dumps({"started": t is not None, "hashed": triton_key.cache_info().currsize}))
"""


@pytest.mark.parametrize("case", ["empty store", "store has a variant", "interpreter", "turned off", "cpu build"])
def test_import_starts_the_thread_only_where_a_first_compile_is_likely(case, tmp_path):
    env = {"ACTGEN_CACHE_DIR": str(tmp_path)}
    code = _AT_IMPORT
    if case == "store has a variant":
        (tmp_path / "variants").mkdir()
        (tmp_path / "variants" / "0f.json").write_text("{}")
    elif case == "interpreter":
        env["TRITON_INTERPRET"] = "1"
    elif case == "turned off":
        env["ACTGEN_WARM_COMPILER_KEY"] = "0"
    elif case == "cpu build":
        code = code.replace('torch.version.cuda = "12.8"', "torch.version.cuda = None")
    out = _fresh(code, env)
    assert out["started"] == (case == "empty store")
    # (this machine has no GPU: a thread started at import finds none and takes no hash)
    assert out["hashed"] == 0


def test_the_thread_takes_the_hash_that_compiles_then_find_taken():
    out = _fresh("""
import json, threading
from triton.runtime.cache import triton_key
from actgen.runtime import compiler_key
before = triton_key.cache_info().currsize
compiler_key._take(True)                    # needs a GPU: none here, so no hash
no_gpu = triton_key.cache_info().currsize
first, second = compiler_key.start(needs_gpu=False), compiler_key.start(needs_gpu=False)
name = compiler_key._THREAD.name
compiler_key.wait()
info = triton_key.cache_info()
triton_key()
print(json.dumps({"before": before, "no_gpu": no_gpu, "first": first, "second": second, "name": name,
                  "after": info.currsize, "misses": info.misses, "hits": triton_key.cache_info().hits,
                  "alive": compiler_key._THREAD.is_alive(), "daemon": compiler_key._THREAD.daemon}))
""", {})
    assert (out["before"], out["no_gpu"]) == (0, 0)
    assert out["first"] and not out["second"] and out["name"] == "actgen-compiler-key" and out["daemon"]
    assert (out["after"], out["misses"]) == (1, 1) and not out["alive"]
    assert out["hits"] == 1          # a compile's triton_key() after it: the thread's hash, not a second one


def test_wanted_asks_the_store_last(monkeypatch):
    asked = []

    def store_empty():
        asked.append(1)
        return True
    monkeypatch.delenv("ACTGEN_WARM_COMPILER_KEY", raising=False)
    assert not compiler_key.wanted(True, True, store_empty)
    assert not compiler_key.wanted(False, False, store_empty)
    monkeypatch.setenv("ACTGEN_WARM_COMPILER_KEY", "0")
    assert not compiler_key.wanted(False, True, store_empty)
    assert not asked
    monkeypatch.setenv("ACTGEN_WARM_COMPILER_KEY", "1")
    assert compiler_key.wanted(False, True, store_empty) and asked == [1]
    assert not compiler_key.wanted(False, True, lambda: False)


def test_the_store_counts_as_empty_until_it_holds_an_entry(tmp_path, monkeypatch):
    monkeypatch.setenv("ACTGEN_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("ACTGEN_VARIANT_STORE", raising=False)
    assert compiler_key._store_empty()                  # no directory yet
    (tmp_path / "variants").mkdir()
    (tmp_path / "variants" / "entry.json.tmp").write_text("")
    assert compiler_key._store_empty()                  # (a file being written is not an entry)
    (tmp_path / "variants" / "ab12.json").write_text("{}")
    assert not compiler_key._store_empty()
    monkeypatch.setenv("ACTGEN_VARIANT_STORE", "0")     # a store turned off holds nothing to load
    assert compiler_key._store_empty()


class _Thread:
    def __init__(self, log):
        self.log = log

    def is_alive(self):
        return True

    def join(self):
        self.log.append("wait")


def _logged(monkeypatch, log):
    monkeypatch.setattr(compiler_key, "_THREAD", _Thread(log))


def test_a_launch_that_compiles_waits_for_the_hash_first(tmp_path, monkeypatch):
    log = []
    _logged(monkeypatch, log)
    kernel = _Subscripted(_Kernel(tmp_path), log)
    launcher = variants.Launcher(enabled=True, store=None, static=False)
    launcher._device, launcher._stream, launcher._target = (lambda: 0), (lambda device: 0), (lambda: "t")
    launcher._hooks = SimpleNamespace(launch_enter_hook=None, launch_exit_hook=None)
    x = torch.zeros(64)
    launcher(kernel, (1,), (x, x, 64), (128, False), 4)
    assert log == ["wait", "compile"]
    launcher(kernel, (1,), (x, x, 64), (128, False), 4)
    assert log == ["wait", "compile"]       # found again: no compile, no wait


class _Subscripted:
    """The stand-in kernel, logging its JIT launches (each compiles, here)."""

    def __init__(self, kernel, log):
        self.kernel, self.log = kernel, log
        self.arg_names, self.params, self.__name__ = kernel.arg_names, kernel.params, kernel.__name__

    def __getitem__(self, grid):
        self.log.append("compile")
        return self.kernel[grid]


def test_a_static_compile_waits_for_the_hash_first(tmp_path, monkeypatch):
    from actgen.runtime import static_launch

    log = []
    _logged(monkeypatch, log)
    launcher, _ = _static_launcher(monkeypatch)
    kernel = _Kernel(tmp_path)
    compiled = kernel.warmup(grid=(1,))
    monkeypatch.setattr(static_launch, "compile_variant", lambda *a: (log.append("compile"), compiled)[1])
    x = torch.zeros(64)
    launcher(kernel, (2,), (x, x, 64), (128, False), 4)
    launcher(kernel, (2,), (x, x, 64), (128, False), 4)
    assert log == ["wait", "compile"]


def test_the_first_launch_waits_before_it_starts_tritons_driver(tmp_path, monkeypatch):
    """Binding Triton's driver imports its backends, as the hash does: one thread at a time."""
    log = []
    _logged(monkeypatch, log)
    launcher = variants.Launcher(enabled=True, store=None, static=False)

    def bind():
        log.append("bind")
        launcher._device, launcher._stream, launcher._target = (lambda: 0), (lambda device: 0), (lambda: "t")
        launcher._hooks = SimpleNamespace(launch_enter_hook=None, launch_exit_hook=None)
    monkeypatch.setattr(launcher, "_bind", bind)
    kernel = _Subscripted(_Kernel(tmp_path), log)
    x = torch.zeros(64)
    launcher(kernel, (1,), (x, x, 64), (128, False), 4)
    assert log[:2] == ["wait", "bind"] and log[-1] == "compile"
