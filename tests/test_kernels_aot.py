"""Every generated Triton kernel, compiled ahead of time for real GPUs on a machine without one.

`python -m actgen.aot` runs Triton's real compiler (TTIR -> PTX -> cubin, no TRITON_INTERPRET)
on the forward and backward kernel of every op in actgen.ops, for sm_80 and sm_90, with fp32,
fp16 and bf16 data pointers, in every tile layout the op runs with (flat; channels first and
channels last for ops with per-channel params), and for ops with random draws in both
variants, evaluation and training (TRAINING, with the Philox draws); and the runtime's own
kernel, draws_kernel; and, on sm_90, with float64 data.  The interpreter accepts code the real
compiler rejects, so this is the check that the kernels would build on a GPU.

The PTX is then checked for what a regression in the kernel layout would break: 128-bit
global loads and stores (ld.global.v4 / st.global.v4), no register spills (ptxas -v), and
local memory only where libdevice puts it (the range reduction of sin/cos/tan); and its
kernel entry's parameters against the arguments torch's launcher would pass
(actgen.runtime.static_launch).
"""
import importlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

ARCHS = (80, 90)
DTYPES = ("fp32", "fp16", "bf16")
KERNELS = ("_forward_kernel", "_backward_kernel")
FLAT = (1, 1024, 0)
OPS_DIR = Path(__file__).resolve().parents[1] / "actgen" / "ops"
MODULES = sorted(f"actgen.ops.{p.stem}" for p in OPS_DIR.glob("*.py") if p.stem != "__init__")
RANDOM = {m for m in MODULES if importlib.import_module(m)._OP.n_draws}


# ops whose kernels span the shapes of the generated code: a one-liner, nested transcendentals,
# a rational with param loads, per-channel param gradients, two inputs
TUNING_MODULES = ("actgen.ops.silu", "actgen.ops.mish", "actgen.ops.pau", "actgen.ops.prelu", "actgen.ops.swiglu")


def _compile_all(out, modules, *options, runtime=False):
    """python -m actgen.aot over modules, split over up to 4 processes (the first also compiles
    the runtime's own kernel if asked); the merged reports."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(out / "triton-cache")
    env["TRITON_DEFAULT_FP_FUSION"] = "0"   # Triton 3.10's default: the kernels must ask for fused multiply-adds
    jobs = max(1, min(4, os.cpu_count() or 1))
    procs = []
    for k in range(jobs):
        part = modules[k::jobs]
        if part:
            path = out / f"aot{k}.json"
            cmd = [sys.executable, "-m", "actgen.aot", *part, *options, "--spills", "--json", str(path)]
            cmd += ["--runtime"] if runtime and k == 0 else []
            procs.append((path, subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE,
                                                 stderr=subprocess.STDOUT, text=True)))
    result = []
    for path, proc in procs:
        log, _ = proc.communicate(timeout=1200)
        assert path.exists(), log           # a failed kernel is a report, not a crash
        result += json.loads(path.read_text())
    return result


@pytest.fixture(scope="module")
def all_reports(tmp_path_factory):
    return _compile_all(tmp_path_factory.mktemp("aot"), MODULES,
                        "--arch", *map(str, ARCHS), "--dtype", *DTYPES, runtime=True)


@pytest.fixture(scope="module")
def reports(all_reports):
    """The generated kernels' reports."""
    return [r for r in all_reports if r["module"].startswith("actgen.ops.")]


@pytest.fixture(scope="module")
def float64_reports(tmp_path_factory):
    """Every generated kernel for float64 data (computing in float64), on sm_90."""
    return _compile_all(tmp_path_factory.mktemp("aot-float64"), MODULES, "--arch", "90", "--dtype", "fp64")


@pytest.fixture(scope="module")
def tuning_reports(tmp_path_factory):
    """Representative kernels with every launch config the tuner may pick, on sm_90."""
    return _compile_all(tmp_path_factory.mktemp("aot-tuning"), list(TUNING_MODULES),
                        "--arch", "90", "--dtype", "fp32", "bf16", "--tuning-candidates")


def test_the_runtimes_draws_kernel_compiles(all_reports):
    runtime = [r for r in all_reports if not r["module"].startswith("actgen.ops.")]
    assert {(r["kernel"], r["arch"]) for r in runtime} == {("draws_kernel", a) for a in ARCHS}
    for r in runtime:
        assert r["ok"] and r["cubin_bytes"] > 1000, r
        assert r["vector_stores"] and r["philox"] and not r["local_memory"] and not r["spill_bytes"], r
        assert r["fp_fusion"], r


def _key(r):
    return (r["module"], r["kernel"], r["dtype"], r["arch"], tuple(r["layout"]), r["training"])


def test_every_builtin_kernel_compiles_to_a_cubin(reports):
    assert len(MODULES) >= 16
    per_channel = {r["module"] for r in reports if tuple(r["layout"]) != FLAT}
    assert "actgen.ops.prelu" in per_channel and "actgen.ops.learnable_activation" in per_channel
    assert "actgen.ops.mish" not in per_channel
    layouts = {tuple(r["layout"]) for r in reports}
    assert len(layouts) == 3          # flat, channels first, channels last
    got = {_key(r) for r in reports}
    missing = [(m, k, d, a, lay, t) for m in MODULES for k in KERNELS for d in DTYPES for a in ARCHS
               for lay in (layouts if m in per_channel else {FLAT})
               for t in ((False, True) if m in RANDOM else (None,)) if (m, k, d, a, lay, t) not in got]
    assert not missing, missing
    failed = [(_key(r), r["error"]) for r in reports if not r["ok"]]
    assert not failed, failed
    assert all(r["cubin_bytes"] > 1000 for r in reports)
    # with fused multiply-adds, as asked (not left to Triton's default, which 3.10 turns off)
    assert all(r["fp_fusion"] for r in reports)


def test_every_builtin_kernel_compiles_for_float64_data(float64_reports):
    """float64 data computes in float64, where Triton has no form of some of its float32
    lowerings (a clamp of bounds -c and c) and libdevice's pow and hypot take both arguments
    in one type (a bare number is float32): each kernel of every layout compiles."""
    got = {(r["module"], r["kernel"], tuple(r["layout"]), r["training"]) for r in float64_reports if r["ok"]}
    for m in ("actgen.ops.tanh", "actgen.ops.gaussian", "actgen.ops.lisht", "actgen.ops.bent_identity",
              "actgen.ops.custom_smooth", "actgen.ops.prelu", "actgen.ops.pau"):
        assert (m, "_backward_kernel", FLAT, None) in got, m
    failed = [(_key(r), r["error"]) for r in float64_reports if not r["ok"]]
    assert not failed, failed
    assert len(float64_reports) == len([r for r in float64_reports if r["cubin_bytes"] > 1000])


def test_torch_launcher_passes_every_kernel_its_parameters(all_reports, float64_reports, tuning_reports):
    """The arguments torch's launcher would be handed (actgen.runtime.static_launch: the
    parameters that are not constexprs, then Triton's scratch pointers) against each compiled
    kernel's PTX entry: as many, each of the parameter's width and kind."""
    reports = all_reports + float64_reports + tuning_reports
    assert all(r["static_launch"] != "?" for r in reports if r["ok"])
    wrong = [(_key(r), r["static_launch"]) for r in reports if r["ok"] and r["static_launch"]]
    assert not wrong, wrong


def test_training_variants_draw_and_evaluation_variants_do_not(reports):
    """Ops with random draws: the TRAINING kernels run Philox (mul.hi.u32 in the PTX), the
    evaluation kernels (each draw at 1/2) do not."""
    assert "actgen.ops.rrelu" in RANDOM and "actgen.ops.leaky_relu" not in RANDOM
    random = [r for r in reports if r["module"] in RANDOM]
    assert {(r["kernel"], r["arch"], r["training"]) for r in random if r["ok"]} >= {
        (k, 90, t) for k in KERNELS for t in (False, True)}
    wrong = [_key(r) for r in random if r["philox"] != r["training"]]
    assert not wrong, wrong


def test_float32_kernels_divide_with_ieee_rounding(reports):
    """Triton's "/" on float32 is the GPU's approximate division (div.full.f32, up to 2 ULP;
    exact under the interpreter): float32 kernels divide through tl.div_rn, and 16-bit ones
    (FAST) keep the approximate division, which their precision cannot tell apart."""
    fp32 = [r for r in reports if r["dtype"] == "fp32"]
    approx = [_key(r) for r in fp32 if r["approx_division"]]
    assert fp32 and not approx, f"float32 kernels with an approximate division: {approx}"
    fast = {(r["kernel"], r["dtype"]) for r in reports if r["module"] == "actgen.ops.silu" and r["approx_division"]}
    assert fast == {(k, d) for k in KERNELS for d in DTYPES if d != "fp32"}


def test_float32_kernels_take_the_ieee_square_root(reports):
    """Triton's float32 sqrt (tl.sqrt, libdevice's sqrtf) is the GPU's sqrt.approx.ftz.f32
    (exact under the interpreter): float32 kernels take sqrt.rn (squareplus', whose slope
    squared libdevice's hypotf, missed the accuracy target on an H200 alone), except inside
    libdevice's hypotf, which a written hypot takes; 16-bit ones (FAST) keep the approximate
    one."""
    def calls_hypot(module):
        return "libdevice.hypot" in Path(importlib.import_module(module).__file__).read_text()

    fp32 = [r for r in reports if r["dtype"] == "fp32"]
    approx = [_key(r) for r in fp32 if r["approx_sqrt"] and not calls_hypot(r["module"])]
    assert fp32 and not approx, f"float32 kernels with an approximate sqrt: {approx}"
    square = {(r["kernel"], r["dtype"]): r["approx_sqrt"] for r in reports if r["module"] == "actgen.ops.squareplus"}
    assert square == {(k, d): d != "fp32" for k in KERNELS for d in DTYPES}


def test_flat_kernels_divide_no_integers(reports, tuning_reports):
    """The flat layout is one row (M = 1, which Triton's JIT makes a constant): its tile is
    the program's number times the tile size, with no integer division (a 64-bit one cost
    about 6 instructions per element on sm_90).  The 2-D layouts divide to find their tile."""
    flat = [r for r in reports + tuning_reports if r["ok"] and tuple(r["layout"])[0] == 1]
    divides = [_key(r) for r in flat if r["integer_division"]]
    assert flat and not divides, f"flat kernels with an integer division: {divides}"
    assert any(r["integer_division"] for r in reports if tuple(r["layout"]) != FLAT)


def test_global_accesses_are_128_bit(reports):
    scalar = [_key(r) for r in reports if not (r["vector_loads"] and r["vector_stores"])]
    assert not scalar, f"kernels without ld.global.v4 / st.global.v4: {scalar}"


def test_no_register_spills(reports):
    if all(r["spill_bytes"] is None for r in reports):
        pytest.skip("Triton's ptxas was not found")
    spilled = [(_key(r), r["spill_bytes"]) for r in reports if r["spill_bytes"]]
    assert not spilled, f"kernels spilling registers to local memory: {spilled}"


def _uses_trig(module):
    src = (OPS_DIR / f"{module.rsplit('.', 1)[-1]}.py").read_text()
    formula = re.search(r'^FORMULA = (.*)$', src, re.M).group(1)
    return bool(re.search(r"\b(sin|cos|tan)\(", formula))


def test_local_memory_only_for_trig_range_reduction(reports):
    assert _uses_trig("actgen.ops.sine") and not _uses_trig("actgen.ops.mish")
    local = [_key(r) for r in reports if r["local_memory"] and not _uses_trig(r["module"])]
    assert not local, f"kernels using local memory: {local}"


def test_every_tuning_candidate_compiles_vectorised(tuning_reports):
    """What the tuner may launch on a GPU is held to the default config's checks: it compiles,
    with 128-bit accesses.  Register spills are counted here, and the tuner leaves out a
    candidate that spills (it reads the count off the compiled kernel on the GPU); the default
    config is spill-free for every kernel (test_no_register_spills)."""
    from actgen.aot import torch_dtype
    from actgen.runtime.tuning import candidates

    for name in ("fp32", "bf16"):
        configs = {(r["layout"][0] * r["layout"][1], r["num_warps"], r["step"]) for r in tuning_reports
                   if r["dtype"] == name}
        assert configs == {(c.tile, c.num_warps, c.step) for c in candidates(torch_dtype(name), True)}, name
    stepping = {(r["module"], r["kernel"]) for r in tuning_reports if r["step"]}
    assert stepping == {("actgen.ops.pau", "_backward_kernel"), ("actgen.ops.prelu", "_backward_kernel")}
    failed = [(_key(r), r["num_warps"], r["error"]) for r in tuning_reports if not r["ok"]]
    assert not failed, failed
    scalar = [(_key(r), r["num_warps"]) for r in tuning_reports if not (r["vector_loads"] and r["vector_stores"])]
    assert not scalar, f"kernels without ld.global.v4 / st.global.v4: {scalar}"
    if all(r["spill_bytes"] is None for r in tuning_reports):
        pytest.skip("Triton's ptxas was not found")
    # only the heaviest kernel (PAU's backward: ten param gradients, limits read off at +-inf)
    # runs out of registers, and only with more elements per thread or stepping; elsewhere a
    # stepping candidate may spill a few bytes (triton 3.8: prelu's bfloat16 backward with
    # 16 x 256 tiles and 8 warps, 8 bytes)
    others = [(_key(r), r["layout"], r["num_warps"], r["spill_bytes"]) for r in tuning_reports
              if r["spill_bytes"] and r["module"] != "actgen.ops.pau" and not (r["step"] and r["spill_bytes"] <= 64)]
    assert not others, others
    assert not [r for r in tuning_reports if r["spill_bytes"] and r["layout"][0] * r["layout"][1] == 1024
                and r["num_warps"] == 4 and not r["step"]]


def test_machine_code_counts_one_exponential_for_mish(tmp_path):
    """`python -m actgen.aot --sass` counts the machine instructions per element (nvdisasm on
    the sm_90 cubin, the kernel function without the compiler's 64-bit division subroutine).
    mish's backward is one ratio in exp(-|x|) (actgen.derive.exp_rational_form): about two
    special-function ops per element (the division's reciprocal; the exp is arithmetic,
    actgen.runtime.triton_lang.exp), and under 72 instructions per element with its IEEE
    division (its five-call form took 112).  So is silu's in the kernels (its two sigmoids took four), and swiglu's
    takes sigmoid(a) and sigmoid(-a) from one exp.  PAU's
    scale 2**-k is built from exponent bits, not libdevice's ldexp: as few special-function
    ops in its forward (twelve per element with ldexp).  swish's limit at +-inf, which depends on
    beta, comes from an expression of beta alone, once per program: its backward has the
    exponential and reciprocal of its own sigmoid only (it had a second sigmoid per element,
    at the probe)."""
    from actgen.aot import nvdisasm_path

    if nvdisasm_path() is None:
        pytest.skip("Triton's nvdisasm was not found")
    reports = _compile_all(tmp_path, ["actgen.ops.mish", "actgen.ops.silu", "actgen.ops.swiglu", "actgen.ops.relu",
                                      "actgen.ops.pau", "actgen.ops.swish"],
                           "--arch", "90", "--dtype", "fp32", "--flat-only", "--sass")
    by = {(r["module"].rsplit(".", 1)[-1], r["kernel"]): r for r in reports}
    mufu = {k: r["sass_mufu"] / r["elements_per_thread"] for k, r in by.items()}
    per_element = {k: r["sass_per_element"] for k, r in by.items()}
    assert all(r["elements_per_thread"] == 8 for r in reports)     # 1024 elements, 4 warps
    assert per_element[("relu", "_forward_kernel")] < per_element[("mish", "_forward_kernel")]
    for name in ("mish", "silu", "swiglu"):
        assert mufu[(name, "_backward_kernel")] <= 2.5, name
    assert per_element[("mish", "_backward_kernel")] < 72
    assert per_element[("silu", "_backward_kernel")] < 72
    assert mufu[("pau", "_forward_kernel")] <= 2.5
    assert mufu[("swish", "_backward_kernel")] <= 2.5 and per_element[("swish", "_backward_kernel")] < 88


def test_stepping_programs_sum_param_gradients_element_by_element(tmp_path):
    """A stepping backward (programs walking through several tiles) keeps its param-gradient
    sums element by element and loads the params once: its loop over tiles, counted by
    `--sass`, holds no reduction across threads.  sm_90 bf16, 1024-element tiles: polynomial's
    loop went from 38.4 to 32.8 instructions per element, prelu's from 24.9 to 19.9, and
    without the flat tile's integer division to 27.0 and 14.8."""
    from actgen.aot import nvdisasm_path

    if nvdisasm_path() is None:
        pytest.skip("Triton's nvdisasm was not found")
    reports = _compile_all(tmp_path, ["actgen.ops.polynomial", "actgen.ops.prelu"], "--arch", "90", "--dtype", "bf16",
                           "--flat-only", "--sass", "--tuning-candidates")
    stepping = [r for r in reports if r["step"]]
    assert stepping and all(r["sass_loop_per_element"] is not None for r in stepping)
    assert all(r["sass_loop_per_element"] is None for r in reports if not r["step"])
    assert all(r["sass_loop_per_element"] < r["sass_per_element"] for r in stepping)
    loop = {(r["module"].rsplit(".", 1)[-1], r["layout"][1], r["num_warps"]): r["sass_loop_per_element"]
            for r in stepping}
    assert loop[("polynomial", 1024, 4)] <= 29 and loop[("prelu", 1024, 4)] <= 16.5, loop


def test_sass_loop_counts_the_largest_loop():
    from actgen.aot import sass_loop

    listing = """
        /*0000*/                   MOV R1, c[0x0][0x28] ;
        /*0010*/                   NOP ;
.L_x_0:
        /*0020*/                   FADD R2, R2, R3 ;
        /*0030*/               @P0 FFMA R4, R2, R2, R4 ;
        /*0040*/              @!P1 BRA `(.L_x_0) ;
.L_x_1:
        /*0050*/                   FMUL R5, R4, R4 ;
        /*0060*/                   BRA `(.L_x_2) ;
.L_x_2:
        /*0070*/                   EXIT ;
"""
    assert sass_loop(listing) == 3
    assert sass_loop(listing.replace("@!P1 BRA `(.L_x_0)", "@!P1 BRA `(.L_x_1)")) is None


def test_kernels_of_formulas_outside_the_library_compile(tmp_path):
    """Forms the library's own kernels do not have: a condition of scalars alone combined with
    one of elements (tl.where(scalar, tile, False)), log-sum-exp's branch on the larger term,
    log-cosh's, sigmoids from exps of two inputs, hypot forms of roots with a param in them
    (sqrt_square_plus of a param, a branch on the param's sign), and log(erfc(u)) through
    libdevice's erfcx."""
    from actgen.build import build

    specs = {
        "clip": "name: clip\nformula: Min(Max(x, lo), hi)\nconstants: {lo: -1.0, hi: 1.0}\n",
        "gate": "name: gate\nformula: where((x > t) & (t > 0), x, 0)\nparams: {t: 0.5}\n",
        "lse": "name: lse\nformula: log(exp(a) + exp(b))\ninputs: [a, b]\n",
        "logcosh": "name: logcosh\nformula: log(cosh(x))\n",
        "sm2": "name: sm2\nformula: exp(a) / (exp(a) + exp(b))\ninputs: [a, b]\n",
        # a power of a param in float64 for float32 data (the precision check's choice, and
        # asked for), hypot in a float64 direction, a rational with float64 data
        "softsignp": "name: softsignp\nformula: x / (1 + abs(x))**p\nparams: {p: {init: 1.5, per_channel: true}}\n",
        "powp64": "name: powp64\nformula: x * 2**p + abs(x)**p\nprecision: float64\nparams: {p: 1.5}\n",
        "deep": "name: deep\nformula: tanh(sin(atan(asinh(erf(sigmoid(softplus(exp(-x**2))))))))\n",
        "recip": "name: recip\nformula: 1/(1 + x**2) + x/(2 + x**4)\n",
        "xerf": "name: xerf\nformula: x * erf(x)\n",
        "log1p_pow": "name: log1p_pow\nformula: log(1 + abs(x)**p)\nparams: {p: 2.0}\n",
        "root_b": "name: root_b\nformula: sqrt(x**2 + b) - sqrt(b)\nparams: {b: 1.0}\n",
        "sinc_min": "name: sinc_min\nformula: sin(Min(x, 1))/x\n",
        # the tails of softplus a param apart, under a condition on both (And), and a param
        # power of 1 + exp(u) as exp(p*softplus(u))
        "softclip_p": "name: softclip_p\nformula: log((1 + exp(p*x))/(1 + exp(p*(x - 1))))/p\nparams: {p: 5.0}\n",
        "aria": "name: aria\nformula: (1 + exp(-b*x))**(-a)\nparams: {a: 0.5, b: 3.0}\n",
        # a param times x**2 under a root: the hypot form where the param is > 0, a branch on
        # a scalar (a shared param) and on a tile (per channel)
        "inv_root_a": "name: inv_root_a\nformula: x / sqrt(1 + a*x**2)\nparams: {a: 0.5}\n",
        "inv_root_ac": "name: inv_root_ac\nformula: x / sqrt(1 + a*x**2)\nparams: {a: {init: 0.5, per_channel: true}}\n",
        "log_erfc": "name: log_erfc\nformula: log(erfc(x))\n",
        "log_erfc_a": "name: log_erfc_a\nformula: log(erfc(a*x))\nparams: {a: 1.5}\n",
    }
    files = []
    for name, text in specs.items():
        (tmp_path / f"{name}.yaml").write_text(text)
        files.append(tmp_path / f"{name}.yaml")
    build(files, tmp_path / "outside")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "triton-cache")
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env.get("PYTHONPATH", "")])
    out = tmp_path / "aot.json"
    cmd = [sys.executable, "-m", "actgen.aot", *[f"outside.{n}" for n in specs], "--arch", "90", "--flat-only",
           "--dtype", *DTYPES, "fp64", "--json", str(out)]
    log = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200)
    assert out.exists(), log.stdout + log.stderr
    reports = json.loads(out.read_text())
    assert len(reports) == len(specs) * 2 * (len(DTYPES) + 1)
    failed = [(r["module"], r["kernel"], r["dtype"], r["error"]) for r in reports if not r["ok"]]
    assert not failed, failed
    assert all(r["vector_loads"] and r["vector_stores"] for r in reports if r["dtype"] != "fp64")


def test_arch_is_taken_as_the_docs_write_it():
    """`--arch sm_90` (as the docs write architectures) was "invalid int value"."""
    import argparse

    from actgen.aot import _arch

    assert _arch("sm_90") == _arch("SM_90") == _arch("90") == 90
    for bad in ("sm_", "hopper", "9.0"):
        with pytest.raises(argparse.ArgumentTypeError, match="is not a GPU architecture"):
            _arch(bad)
