"""Launching compiled variants through torch's launcher for Triton's cubins
(actgen.runtime.static_launch, ACTGEN_STATIC_LAUNCH=1).

There is no GPU here and no CUDA build of torch: the argument layout is checked against real
compiled kernels (their PTX entries, for every built-in kernel, in test_kernels_aot.py; here
the parameters a launch leaves out), and the variants launcher's bookkeeping with a stand-in
for torch's launcher, which records what it would be asked to load and launch.
"""
import json
import os
import subprocess
import sys
import warnings
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("triton")

from actgen.runtime import static_launch, variants  # noqa: E402


# prelu's backward compiled for sm_90 (in a process without the interpreter), in the flat
# layout (one row: the JIT specializes M = 1 as a constexpr): the parameters a launch passes,
# and the PTX check against the launch's arguments as they are, without Triton's scratch
# pointers, and with an i64 passed as an i32.
_PLAN = """
import importlib, json
from actgen import aot
from actgen.runtime import static_launch
mod = importlib.import_module("actgen.ops.prelu")
c = aot.compile_kernel(mod._backward_kernel, "bf16", 90, aot.LAYOUTS[0], tuple(mod._OP.param_names))
fn = c.src.fn
n_args = sum(not p.is_constexpr for p in fn.params)
kept, codes = static_launch.plan(c, n_args)
out = {"args": fn.arg_names[:n_args], "kept": [fn.arg_names[i] for i in kept], "codes": codes,
       "scratch": sum(hasattr(c.metadata, s) for s in static_launch.SCRATCH), "mismatch": aot.static_launch_mismatch(c)}
static_launch.SCRATCH = ()
out["no_scratch"] = aot.static_launch_mismatch(c)
static_launch.SCRATCH = ("global_scratch_size", "profile_scratch_size")
static_launch.TYPE_CODES["i64"] = "i"
out["i64_as_i32"] = aot.static_launch_mismatch(c)
static_launch.TYPE_CODES["i64"] = "l"
# a launch compiled as the JIT would, without Triton's driver: x misaligned, M = 1, iters = 1
import sys, torch
from triton.backends.compiler import GPUTarget
from actgen.runtime.triton_lang import FP_FUSION, tl
from actgen.runtime.variants import constexpr_kwargs
x = torch.zeros(4097, dtype=torch.bfloat16)[1:]
g, dx, w, partials = torch.zeros_like(x), torch.zeros_like(x), torch.zeros(64), torch.zeros(1, 1024)
args = (g, x, w, 0, dx, partials, 1024, 1, 4096, 64, 1)
consts = (1, 1024, 0, tl.float32, True, True, False)
v = static_launch.compile_variant(mod._backward_kernel, args, constexpr_kwargs(mod._backward_kernel, args, consts), 4,
                                 GPUTarget("cuda", 90, 32), FP_FUSION)
names = mod._backward_kernel.arg_names
out["variant"] = {"cubin": len(v.asm["cubin"]), "mismatch": aot.static_launch_mismatch(v),
                  "fusion": v.metadata.enable_fp_fusion, "warps": v.metadata.num_warps,
                  "constexprs": sorted(names[k[0]] for k in v.src.constants),
                  "aligned": sorted(names[k[0]] for k, a in v.src.attrs.items() if ["tt.divisibility", 16] in a),
                  "driver": getattr(sys.modules["triton.runtime.driver"].driver, "_active", None) is not None}
print("PLAN " + json.dumps(out))
"""


@pytest.fixture(scope="module")
def prelu_plan():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", _PLAN], env=env, capture_output=True, text=True, timeout=600)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("PLAN ")), None)
    assert line, proc.stdout + proc.stderr
    return json.loads(line[5:])


def test_the_launch_leaves_out_constexprs_and_ints_specialized_as_constexprs(prelu_plan):
    assert "_M" in prelu_plan["args"] and "_M" not in prelu_plan["kept"]          # M = 1: compiled in
    assert prelu_plan["kept"] == ["_grad_ptr", "x_ptr", "weight_ptr", "weight_stride", "_d_x_ptr", "_partials_ptr",
                                  "_n_partials", "_N", "_C", "_iters"]
    assert prelu_plan["scratch"] >= 1
    assert prelu_plan["codes"] == "OOOlOOllli" + "O" * prelu_plan["scratch"]
    assert prelu_plan["mismatch"] == ""


def test_a_variant_compiles_as_the_jit_would_without_tritons_driver(prelu_plan):
    v = prelu_plan["variant"]
    assert not v["driver"] and v["cubin"] > 1000 and v["mismatch"] == "" and v["fusion"] and v["warps"] == 4
    # the ints equal to 1 specialized, the constexprs; x (one element in) not 16-byte aligned,
    # the ints that are multiples of 16 (0 too) known to be
    assert v["constexprs"] == sorted(["_M", "_iters", "BLOCK_M", "BLOCK_N", "CH_AXIS", "ACC", "FAST", "PARAM_GRAD",
                                      "STEP"])
    assert v["aligned"] == sorted(["_grad_ptr", "weight_ptr", "weight_stride", "_d_x_ptr", "_partials_ptr",
                                   "_n_partials", "_N", "_C"])


def test_the_ptx_check_sees_a_missing_scratch_pointer_and_a_wrong_width(prelu_plan):
    assert "parameters" in prelu_plan["no_scratch"]
    assert "i for .u64" in prelu_plan["i64_as_i32"]


class _TorchLauncher:
    """Stands in for torch._C._StaticCudaLauncher: records loads and launches."""

    def __init__(self, old_torch=False, fail=None):
        self.loads, self.launches, self.old_torch, self.fail = [], [], old_torch, fail

    def _load_kernel(self, path, name, shared, device):
        self.loads.append((path, name, shared, device))
        return ("function", 32, 0) if self.old_torch else ("module", "function", 32, 0)

    def _launch_kernel(self, *a):
        if self.fail:
            raise self.fail
        self.launches.append(a)


def _compiled(tmp_path, signature=None, **metadata):
    cubin = tmp_path / "k.cubin"
    cubin.write_bytes(b"cubin")
    md = dict(name="k", shared=16, num_warps=4, num_ctas=1, global_scratch_size=0, profile_scratch_size=0)
    md.update(metadata)
    compiled = SimpleNamespace(
        src=SimpleNamespace(signature=signature or {"x_ptr": "*fp32", "out_ptr": "*fp32", "n": "i32",
                                                    "BLOCK": "constexpr", "FAST": "constexpr"}),
        metadata=SimpleNamespace(**md), metadata_group={"k.json": str(tmp_path / "k.json"), "k.cubin": str(cubin)},
        asm={"cubin": b"cubin"}, hash="h", packed_metadata=object(), function=object(), runs=[], inits=0)
    compiled.run = lambda *a: compiled.runs.append(a)
    compiled.launch_metadata = lambda grid, stream, *values: None
    return compiled


@pytest.mark.parametrize("old_torch", [False, True])
def test_a_loaded_kernel_launches_its_arguments_then_null_scratch_pointers(tmp_path, old_torch):
    torch_launcher = _TorchLauncher(old_torch)
    compiled = _compiled(tmp_path)
    k = static_launch.StaticKernel(compiled, 3, 1, torch_launcher)
    assert torch_launcher.loads == [(str(tmp_path / "k.cubin"), "k", 16, 1)]
    x, out = torch.zeros(4), torch.zeros(4)
    k.launch((7,), (x, out, 4), 99)
    (call,) = torch_launcher.launches
    assert call[:7] == ("function", 7, 1, 1, 4, 16, "OOiOO") and call[8] == 99
    assert call[7][0] is x and call[7][1] is out and call[7][2:] == (4, None, None)


def test_an_int_specialized_as_a_constexpr_is_not_passed(tmp_path):
    torch_launcher = _TorchLauncher()
    sig = {"x_ptr": "*fp32", "out_ptr": "*fp32", "n": "constexpr", "c": "fp32", "BLOCK": "constexpr"}
    k = static_launch.StaticKernel(_compiled(tmp_path, sig, profile_scratch_size=0), 4, 0, torch_launcher)
    x = torch.zeros(4)
    k.launch((2, 3), (x, x, 1, 0.5), 0)
    assert torch_launcher.launches[0][1:4] == (2, 3, 1)
    assert torch_launcher.launches[0][6:8] == ("OOfOO", (x, x, 0.5, None, None))


def test_a_kernel_without_scratch_metadata_takes_no_scratch_pointers(tmp_path):
    compiled = _compiled(tmp_path)
    del compiled.metadata.global_scratch_size, compiled.metadata.profile_scratch_size
    torch_launcher = _TorchLauncher()
    static_launch.StaticKernel(compiled, 3, 0, torch_launcher).launch((1,), (1, 2, 3), 0)
    assert torch_launcher.launches[0][6:8] == ("OOi", (1, 2, 3))


@pytest.mark.parametrize("metadata", [{"global_scratch_size": 128}, {"num_ctas": 2}, {"launch_cooperative_grid": True},
                                      {"tensordesc_meta": [{}]}])
def test_what_torchs_launcher_cannot_launch_stays_with_tritons(tmp_path, metadata):
    torch_launcher = _TorchLauncher()
    assert static_launch.load(_compiled(tmp_path, **metadata), 3, 0, torch_launcher) is None
    assert not torch_launcher.loads
    sig = {"x_ptr": "*fp32", "out_ptr": "*fp32", "n": "u1"}
    assert static_launch.load(_compiled(tmp_path, sig), 3, 0, torch_launcher) is None


def test_a_variant_without_a_cubin_file_is_written_to_actgens_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ACTGEN_CACHE_DIR", str(tmp_path / "cache"))
    compiled = _compiled(tmp_path)
    compiled.metadata_group = {}
    path = static_launch.cubin_path(compiled)
    assert path.startswith(str(tmp_path / "cache")) and open(path, "rb").read() == b"cubin"


def test_hooks_are_set_by_a_callable_or_a_chain_with_calls():
    assert not static_launch.hooks_set(SimpleNamespace(launch_enter_hook=None, launch_exit_hook=None))
    chain = SimpleNamespace(calls=[])
    assert not static_launch.hooks_set(SimpleNamespace(launch_enter_hook=chain, launch_exit_hook=None))
    chain.calls.append(print)
    assert static_launch.hooks_set(SimpleNamespace(launch_enter_hook=chain, launch_exit_hook=None))
    assert static_launch.hooks_set(SimpleNamespace(launch_enter_hook=None, launch_exit_hook=print))


def test_off_unless_asked_for(monkeypatch):
    monkeypatch.delenv("ACTGEN_STATIC_LAUNCH", raising=False)
    assert not static_launch.requested() and not variants.Launcher(enabled=True).static
    monkeypatch.setenv("ACTGEN_STATIC_LAUNCH", "1")
    assert variants.Launcher(enabled=True).static


def test_without_torchs_launcher_tritons_driver_is_bound(monkeypatch):
    """A torch without the launcher (this CPU build) keeps Triton's driver and launcher."""
    assert not static_launch.available()
    active = SimpleNamespace(get_current_device=lambda: 0, get_current_stream=lambda d: 0, get_current_target=lambda: "t")
    monkeypatch.setattr(sys.modules["triton.runtime.driver"], "driver", SimpleNamespace(active=active))
    launcher = variants.Launcher(enabled=True, static=True)
    launcher._bind()
    assert not launcher.static and launcher._device is active.get_current_device


class _Kernel:
    """Stands in for a JIT kernel: warmup compiles without launching, kernel[grid](...) launches."""

    arg_names = ["x_ptr", "out_ptr", "n", "BLOCK", "FAST"]
    params = [SimpleNamespace(num=i, do_not_specialize=False) for i in range(5)]
    __name__ = "stand_in"

    def __init__(self, tmp_path):
        self.tmp_path, self.warmups, self.jit_calls = tmp_path, [], []

    def warmup(self, *args, grid, **kw):
        self.warmups.append((grid, args, kw))
        return _compiled(self.tmp_path)

    def __getitem__(self, grid):
        def launch(*args, **kw):
            self.jit_calls.append((grid, args, kw))
            return _compiled(self.tmp_path)
        return launch


class _Store:
    def __init__(self, stored=None):
        self.stored, self.recorded, self.asked = stored, [], 0

    def load(self, kernel, key, target):
        self.asked += 1
        return self.stored

    def record(self, kernel, key, target, compiled):
        self.recorded.append(compiled)


def _static_launcher(monkeypatch, store=None, hooks=None, torch_launcher=None):
    torch_launcher = torch_launcher or _TorchLauncher()
    monkeypatch.setattr(torch._C, "_StaticCudaLauncher", torch_launcher, raising=False)
    launcher = variants.Launcher(enabled=True, store=store, static=True)
    launcher._device, launcher._stream, launcher._target = (lambda: 0), (lambda device: 1234), (lambda: "target0")
    launcher._hooks = hooks or SimpleNamespace(launch_enter_hook=None, launch_exit_hook=None)
    return launcher, torch_launcher


def test_first_launch_compiles_without_launching_then_every_launch_is_torchs(tmp_path, monkeypatch):
    store = _Store()
    launcher, torch_launcher = _static_launcher(monkeypatch, store)
    kernel = _Kernel(tmp_path)
    x, out = torch.zeros(64), torch.zeros(64)
    first = launcher(kernel, (3,), (x, out, 64), (128, False), 4)
    again = launcher(kernel, (5,), (x, out, 64), (128, False), 4)
    assert again is first and not first.runs and not kernel.jit_calls
    assert kernel.warmups == [((3,), (x, out, 64), {"BLOCK": 128, "FAST": False, "num_warps": 4, "enable_fp_fusion": True})]
    assert len(torch_launcher.loads) == 1 and store.recorded == [first]
    assert [c[1] for c in torch_launcher.launches] == [3, 5] and launcher.direct == 2
    assert torch_launcher.launches[1][7][:3] == (x, out, 64) and torch_launcher.launches[1][8] == 1234
    launcher(kernel, (3,), (x, out, 64), (128, False), 8)       # another variant: compiled again
    assert len(kernel.warmups) == 2 and len(torch_launcher.loads) == 2


def test_first_launch_compiles_without_tritons_driver_where_it_can(tmp_path, monkeypatch):
    launcher, torch_launcher = _static_launcher(monkeypatch)
    kernel, compiled = _Kernel(tmp_path), _compiled(tmp_path)
    asked = []

    def compile_variant(*a):
        asked.append(a)
        return compiled
    monkeypatch.setattr(static_launch, "compile_variant", compile_variant)
    x = torch.zeros(64)
    assert launcher(kernel, (2,), (x, x, 64), (128, False), 4) is compiled
    assert not kernel.warmups and not kernel.jit_calls and len(torch_launcher.launches) == 1
    assert asked == [(kernel, (x, x, 64), {"BLOCK": 128, "FAST": False}, 4, "target0", {"enable_fp_fusion": True})]


def test_a_stored_variant_is_loaded_without_tritons_launcher(tmp_path, monkeypatch):
    stored = _compiled(tmp_path)
    stored._init_handles = lambda: pytest.fail("Triton's launcher was built")
    launcher, torch_launcher = _static_launcher(monkeypatch, _Store(stored))
    kernel = _Kernel(tmp_path)
    x = torch.zeros(64)
    assert launcher(kernel, (2,), (x, x, 64), (128, False), 4) is stored
    assert not kernel.warmups and not kernel.jit_calls and len(torch_launcher.launches) == 1


def test_launch_hooks_go_through_tritons_launcher(tmp_path, monkeypatch):
    hooks = SimpleNamespace(launch_enter_hook=print, launch_exit_hook=None)
    launcher, torch_launcher = _static_launcher(monkeypatch, hooks=hooks)
    kernel = _Kernel(tmp_path)
    x = torch.zeros(64)
    compiled = launcher(kernel, (2,), (x, x, 64), (128, False), 4)
    assert not torch_launcher.launches and len(compiled.runs) == 1
    assert compiled.runs[0][7] is print


def test_a_launch_torch_refuses_falls_back_to_tritons_launcher(tmp_path, monkeypatch):
    launcher, _ = _static_launcher(monkeypatch, torch_launcher=_TorchLauncher(fail=RuntimeError("bad argument")))
    kernel = _Kernel(tmp_path)
    x = torch.zeros(64)
    with pytest.warns(UserWarning, match="torch's launcher failed"):
        compiled = launcher(kernel, (2,), (x, x, 64), (128, False), 4)
    assert len(compiled.runs) == 1 and not launcher.static
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert launcher(kernel, (2,), (x, x, 64), (128, False), 4) is compiled
    assert len(compiled.runs) == 2 and len(kernel.warmups) == 1


def test_a_variant_torch_cannot_launch_goes_through_the_jit(tmp_path, monkeypatch):
    launcher, torch_launcher = _static_launcher(monkeypatch)
    kernel = _Kernel(tmp_path)
    kernel.warmup = lambda *a, grid, **kw: _compiled(tmp_path, global_scratch_size=64)
    x = torch.zeros(64)
    launcher(kernel, (2,), (x, x, 64), (128, False), 4)
    assert len(kernel.jit_calls) == 1 and not torch_launcher.launches


_ON_GPU = """
import json
from actgen.device_accuracy import check_static_launch
print("STATIC " + json.dumps(check_static_launch("cuda")))
"""


@pytest.mark.skipif(not static_launch.available(), reason="needs a GPU and a CUDA build of torch with its launcher")
def test_launches_through_torchs_launcher_give_the_jits_results_on_a_gpu():
    """On a GPU (in a process without the interpreter): the device check's cases launched
    through torch's launcher, bitwise against Triton's JIT."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", _ON_GPU], env=env, capture_output=True, text=True, timeout=900)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("STATIC ")), None)
    assert line, proc.stdout + proc.stderr
    d = json.loads(line[7:])
    assert d["available"] and d["still_static"] and d["static_variants"] == d["variants"] > 0
    assert d["launches"] > 0 and d["mismatches"] == []
