"""The variant store (actgen.runtime.variant_store): a compiled kernel variant found again
in a fresh process without Triton's compile path.

Real variants come from Triton's own compiler, ahead of time for sm_90 (there is no GPU to
launch on), in processes of their own without the interpreter (tests/_store_process.py):
one compiles and records, a fresh one loads, and what it loads is compared with what
`triton.compile` itself returns on a cache hit.  An entry must name another file wherever
anything the variant depends on differs.  The launcher's use of the store is checked with
stand-ins.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("triton")

from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from actgen.runtime import variant_store, variants  # noqa: E402
from actgen.runtime.triton_lang import tl  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
H100 = GPUTarget("cuda", 90, 32)
KEY = (0, 0, 4, (4, 256, 0, tl.float32, False), torch.float32, True, 33)   # as variants.variant_key has it
DAMAGES = ("binary", "missing metadata", "not json", "format", "specialization", "target")


def _process(mode, directory, *stores):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "_store_process.py"), mode, str(directory),
                           *map(str, stores)], env=env, capture_output=True, text=True, timeout=900)
    for line in proc.stdout.splitlines():
        if line.startswith("STORE_PROCESS "):
            return json.loads(line[len("STORE_PROCESS "):])
    raise AssertionError(f"{mode} exited {proc.returncode}: {proc.stderr[-3000:]}")


def _damaged_copy(directory: Path, entry_name: str, damage: str | None) -> Path:
    """A store holding a copy of silu's entry, pointing at copies of its files, damaged."""
    store = directory / f"store-{damage or 'intact'}".replace(" ", "-")
    store.mkdir()
    entry = json.loads((directory / "actgen" / "variants" / entry_name).read_text())
    copies = {}
    for name, path in entry["group"].items():
        copies[Path(name).suffix] = store / name
        shutil.copyfile(path, store / name)
    entry["group"] = {name: str(store / name) for name in entry["group"]}
    if damage == "binary":
        data = bytearray(copies[".cubin"].read_bytes())
        data[len(data) // 2] ^= 0xFF
        copies[".cubin"].write_bytes(bytes(data))
    elif damage == "missing metadata":
        copies[".json"].unlink()
    elif damage == "format":
        entry["format"] = variant_store.FORMAT + 1
    elif damage == "specialization":                 # recorded for another specialization of the kernel
        entry["constants"] = [[k, 8 if k == {"tuple": [5]} else v] for k, v in entry["constants"]]
    elif damage == "target":
        meta = json.loads(copies[".json"].read_text())
        copies[".json"].write_text(json.dumps({**meta, "target": {**meta["target"], "arch": 80}}))
    (store / entry_name).write_text("{not json" if damage == "not json" else json.dumps(entry))
    return store


@pytest.fixture(scope="module")
def processes(tmp_path_factory):
    """Record in one process; load in a fresh one, from the store and from damaged copies."""
    directory = tmp_path_factory.mktemp("variants")
    recorded = _process("record", directory)
    entry = recorded["silu-forward-fp32"]["entry"]
    stores = {damage: _damaged_copy(directory, entry, damage) for damage in (None, *DAMAGES)}
    return directory, recorded, stores, _process("load", directory, *stores.values())


CASES = ("silu-forward-fp32", "prelu-backward-bf16", "rrelu-forward-fp16")


@pytest.mark.parametrize("case", CASES)
def test_a_fresh_process_loads_a_recorded_variant_as_triton_finds_it_in_its_cache(case, processes):
    directory, recorded, _, loaded = processes
    assert recorded[case]["recorded"]
    assert (directory / "actgen" / "variants" / recorded[case]["entry"]).is_file()
    got, triton_hit = loaded[case]["loaded"], loaded[case]["triton"]
    assert got is not None, "not found in a fresh process"
    assert got["elf"] and got["binary_sha256"] == recorded[case]["binary_sha256"]
    for fact in ("src_hash", "signature", "constants", "attrs", "binary_sha256", "metadata", "packed_metadata",
                 "name", "hash"):
        assert got[fact] == triton_hit[fact], fact
    assert got["files"] == [".cubin", ".json"]                  # the metadata and the binary, no IR read


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_damaged_or_stale_entry_is_dropped(damage, processes):
    _, _, stores, loaded = processes
    intact = loaded["stores"][str(stores[None])]
    assert intact == {"loaded": True, "entry_left": True}          # a copy loads: what fails below is the damage
    assert loaded["stores"][str(stores[damage])] == {"loaded": False, "entry_left": False}


def _stand_in(cache_key="k1"):
    """A kernel as the store sees it: Triton's hash of its source, its name and parameters."""
    return SimpleNamespace(cache_key=cache_key, __name__="_forward_kernel", arg_names=[f"a{i}" for i in range(10)],
                           pre_run_hooks=[], debug=None)


def test_what_a_variant_depends_on_names_another_entry(monkeypatch):
    kernel = _stand_in()
    name = variant_store.entry_name(kernel, KEY, H100)
    assert name == variant_store.entry_name(kernel, (123, 1) + KEY[2:], H100)     # not the kernel's id, device index
    other = {
        "target": variant_store.entry_name(kernel, KEY, GPUTarget("cuda", 80, 32)),
        "warps": variant_store.entry_name(kernel, KEY[:2] + (8,) + KEY[3:], H100),
        "constexpr": variant_store.entry_name(kernel, KEY[:3] + ((4, 256, 0, tl.float32, True),) + KEY[4:], H100),
        "acc": variant_store.entry_name(kernel, KEY[:3] + ((4, 256, 0, tl.float64, False),) + KEY[4:], H100),
        "dtype": variant_store.entry_name(kernel, KEY[:4] + (torch.bfloat16,) + KEY[5:], H100),
        "alignment": variant_store.entry_name(kernel, KEY[:5] + (False,) + KEY[6:], H100),
        "int": variant_store.entry_name(kernel, KEY[:6] + (32,), H100),
        "kernel": variant_store.entry_name(_stand_in("k2"), KEY, H100),
    }
    with monkeypatch.context() as mp:
        mp.setenv("TRITON_DEFAULT_FP_FUSION", "0")
        other["TRITON_* variable"] = variant_store.entry_name(kernel, KEY, H100)
    with monkeypatch.context() as mp:
        mp.setenv("MLIR_ENABLE_DUMP", "1")          # one of Triton's cache-invalidating variables
        other["invalidating variable"] = variant_store.entry_name(kernel, KEY, H100)
    from triton import knobs
    with monkeypatch.context() as mp:
        mp.setattr(knobs.runtime, "debug", True)
        other["debug"] = variant_store.entry_name(kernel, KEY, H100)
    with monkeypatch.context() as mp:
        mp.setattr(variant_store, "_TRITON_BUILD", "3.9.0 another build")
        other["triton build"] = variant_store.entry_name(kernel, KEY, H100)
    assert variant_store.entry_name(kernel, KEY, H100) == name
    assert len(set(other.values()) | {name}) == len(other) + 1, other


def test_triton_build_names_its_install():
    import triton

    build = variant_store.triton_build()
    assert build.startswith(triton.__version__) and "libtriton" in build and "compiler.py" in build


def test_values_round_trip_with_their_types():
    values = [None, True, 1, 1.0, "s", [1, [2]], (1, (2, "a")), [(0,), ["tt.divisibility", 16]], tl.float32, tl.bfloat16]
    back = [variant_store.decode(json.loads(json.dumps(variant_store.encode(v)))) for v in values]
    assert back == values
    assert [type(b) for b in back] == [type(v) for v in values]
    with pytest.raises(variant_store.Unstorable):
        variant_store.encode(object())
    with pytest.raises(ValueError):
        variant_store.decode({"function": "f"})


def test_a_variant_it_cannot_describe_is_not_recorded(processes, tmp_path):
    """Recorded from files the record process wrote: a constexpr the store cannot write, and a
    variant compiled for another target than the launch's."""
    directory, recorded, stores, _ = processes
    entry = json.loads((stores[None] / recorded["silu-forward-fp32"]["entry"]).read_text())
    kernel = _stand_in()
    src = ASTSource(kernel, {"a0": "*fp32"}, {(9,): object()}, {})
    from triton.compiler import CompiledKernel

    compiled = CompiledKernel(ASTSource(kernel, {"a0": "*fp32"}, {(9,): False}, {}), entry["group"], entry["hash"])
    store = variant_store.VariantStore(tmp_path / "variants")
    assert store.record(kernel, KEY, H100, compiled)                       # the control: it records
    assert store.load(kernel, KEY, H100) is not None
    compiled.src = src
    assert not store.record(kernel, KEY[:2] + (8,) + KEY[3:], H100, compiled)
    compiled.src = ASTSource(kernel, {"a0": "*fp32"}, {(9,): False}, {})
    assert not store.record(kernel, KEY[:2] + (8,) + KEY[3:], GPUTarget("cuda", 80, 32), compiled)
    assert store.recorded == 1 and len(list(store.directory.iterdir())) == 1
    blocker = tmp_path / "a file"                     # a store that cannot be written: nothing raised
    blocker.write_text("")
    assert not variant_store.VariantStore(blocker / "variants").record(kernel, KEY, H100, compiled)


def test_off_by_environment(monkeypatch):
    assert variants.Launcher(enabled=True).store is variant_store.STORE
    monkeypatch.setenv("ACTGEN_VARIANT_STORE", "0")
    assert variants.Launcher(enabled=True).store is None


def test_the_store_lives_in_actgens_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("ACTGEN_CACHE_DIR", str(tmp_path))
    assert variant_store.STORE.directory == tmp_path / "variants"


# ---- the launcher and the store, with stand-ins ----


class _Compiled:
    def __init__(self):
        self.function, self.packed_metadata, self.calls, self.handles = object(), object(), [], 0

    def _init_handles(self):
        self.handles += 1

    def launch_metadata(self, grid, stream, *values):
        return None

    def run(self, *a):
        self.calls.append(a)


class _Kernel:
    arg_names = ["x_ptr", "out_ptr", "n", "BLOCK", "FAST"]
    params = [SimpleNamespace(num=i, do_not_specialize=False) for i in range(5)]
    pre_run_hooks = []
    debug = None

    def __init__(self):
        self.jit_calls = []

    def __getitem__(self, grid):
        def launch(*args, **kw):
            self.jit_calls.append(args)
            return _Compiled()
        return launch


class _Store:
    def __init__(self, entries=None, fail=False):
        self.entries, self.fail, self.records = dict(entries or {}), fail, []

    def load(self, kernel, key, target):
        if self.fail:
            raise OSError("unreadable")
        return self.entries.get((key[2:], target))

    def record(self, kernel, key, target, compiled):
        self.records.append((key[2:], target, compiled))
        self.entries[(key[2:], target)] = compiled


def _launcher(store):
    launcher = variants.Launcher(enabled=True, store=store)
    hooks = SimpleNamespace(launch_enter_hook=None, launch_exit_hook=None)
    launcher._device, launcher._stream, launcher._hooks = (lambda: 0), (lambda device: "stream"), hooks
    launcher._target = lambda: "sm_90"
    return launcher


def test_a_fresh_process_launches_a_stored_variant_without_the_jit():
    kernel, x = _Kernel(), torch.zeros(64)
    first = _launcher(_Store())
    compiled = first(kernel, (2,), (x, x, 64), (128, False), 4)          # through the JIT, and recorded
    assert len(kernel.jit_calls) == 1 and len(first.store.records) == 1 and first.store.records[0][2] is compiled
    fresh = _launcher(first.store)                                       # another process, the same store
    assert fresh(kernel, (2,), (x, x, 4096), (128, False), 4) is compiled
    assert len(kernel.jit_calls) == 1 and compiled.handles == 1 and fresh.direct == 1
    assert compiled.calls[0][:4] == (2, 1, 1, "stream") and compiled.calls[0][-5:] == (x, x, 4096, 128, False)
    fresh(kernel, (2,), (x, x, 64), (128, False), 4)                     # kept in memory from then on
    assert compiled.handles == 1 and fresh.direct == 2 and len(first.store.records) == 1
    fresh(kernel, (2,), (x, x, 64), (128, True), 4)                      # another variant: the JIT
    assert len(kernel.jit_calls) == 2 and len(first.store.records) == 2


def test_a_store_that_fails_leaves_the_launch_to_the_jit():
    kernel, x = _Kernel(), torch.zeros(64)
    launcher = _launcher(_Store(fail=True))
    launcher(kernel, (1,), (x, x, 64), (128, False), 4)
    assert len(kernel.jit_calls) == 1 and launcher.enabled


def test_a_stored_variant_that_does_not_load_on_the_gpu_leaves_it_to_the_jit():
    kernel, x = _Kernel(), torch.zeros(64)
    bad, tries = _Compiled(), []

    def fails():
        tries.append(1)
        raise RuntimeError("out of resources")
    bad._init_handles = fails
    store = _Store()
    store.load = lambda kernel, key, target: bad
    launcher = _launcher(store)
    compiled = launcher(kernel, (1,), (x, x, 64), (128, False), 4)
    assert tries == [1] and not bad.calls                 # loaded, failed on the GPU, not launched
    assert len(kernel.jit_calls) == 1 and compiled is not bad and store.records[0][2] is compiled


def test_the_store_is_not_used_while_tritons_jit_hooks_are_set(monkeypatch):
    from triton import knobs

    kernel, x = _Kernel(), torch.zeros(64)
    store = _Store()
    _launcher(store)(kernel, (1,), (x, x, 64), (128, False), 4)
    assert len(store.records) == 1
    monkeypatch.setattr(knobs.runtime, "jit_post_compile_hook", lambda *a, **k: None)
    kernel2 = _Kernel()
    launcher = _launcher(store)
    launcher(kernel2, (1,), (x, x, 64), (128, False), 4)
    assert len(kernel2.jit_calls) == 1 and len(store.records) == 1
