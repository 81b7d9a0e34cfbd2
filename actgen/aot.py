"""Ahead-of-time compilation of generated kernels for real GPUs, on a machine without one.

`triton.compile(ASTSource(...), target=GPUTarget("cuda", arch, 32))` runs the whole real
compiler (TTIR -> TTGIR -> LLVM -> PTX -> cubin).  Triton's interpreter accepts code the
real compiler rejects, so every generated kernel is compiled here too.  The PTX also shows
the memory access width (ld.global.v4 = 128-bit); ptxas -v on it counts register spills;
its kernel entry's parameters are the arguments torch's launcher for Triton's cubins must
pass (actgen.runtime.static_launch), checked against what it would.

Run it in a process without TRITON_INTERPRET (`python -m actgen.aot`), since under the
interpreter kernels are not JIT functions.  The kernels of an op with random draws are
compiled in both variants, evaluation (TRAINING=False) and training (TRAINING=True); with
--runtime also the runtime's own kernel (actgen.runtime.triton_lang.draws_kernel).
"""
from __future__ import annotations

import argparse
import importlib
import inspect
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass

os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

POINTER_DTYPES = ("fp32", "fp16", "bf16", "fp64")
ARCHS = (80, 90)


def layouts_for(tile: int) -> tuple:
    """(BLOCK_M, BLOCK_N, CH_AXIS) of a tile: a flat 1-D tile, channels-first rows of 1/8 of the
    tile, channels-last columns of 1/16 of it."""
    return ((1, tile, 0), (8, tile // 8, 0), (16, tile // 16, 1))


LAYOUTS = layouts_for(1024)


@dataclass
class KernelReport:
    module: str
    kernel: str
    dtype: str
    arch: int
    layout: tuple
    ok: bool
    num_warps: int = 4
    step: bool = False
    training: bool | None = None   # the TRAINING variant of a kernel with random draws
    error: str = ""
    fp_fusion: bool = False        # compiled with fused multiply-adds (the option the compiler took)
    vector_loads: bool = False     # ld.global.v4 present
    vector_stores: bool = False    # st.global.v4 present
    scalar_global_access: bool = False
    local_memory: bool = False     # spills or local arrays
    philox: bool = False           # mul.hi.u32 present: Philox rounds (random draws)
    approx_division: bool = False  # div.full.f32 / div.approx.f32 present (Triton's "/" on float32)
    approx_sqrt: bool = False      # sqrt.approx.f32 / rsqrt.approx.f32 present (tl.sqrt, libdevice's hypotf)
    integer_division: bool = False  # div/rem on integers present (tile indices past the flat layout)
    spill_bytes: int | None = None  # ptxas -v spill stores + loads (None: no ptxas found)
    cubin_bytes: int = 0
    elements_per_thread: int = 0   # tile elements / threads: what one thread's instructions cover
    sass_instructions: int | None = None  # in the cubin, NOPs left out (None: not counted)
    sass_mufu: int | None = None   # of those, special-function unit ops (exp2, log2, rcp, ...)
    sass_loop_instructions: int | None = None  # in its loop over tiles (a stepping backward), else None
    static_launch: str = "?"       # where torch's launcher would pass other arguments than the PTX takes ("": none)

    @property
    def sass_per_element(self) -> float | None:
        return None if self.sass_instructions is None else self.sass_instructions / self.elements_per_thread

    @property
    def sass_loop_per_element(self) -> float | None:
        """A stepping program's instructions per element on every tile but its last few: its
        loop's, without the set-up before and the sums stored after."""
        return None if self.sass_loop_instructions is None else self.sass_loop_instructions / self.elements_per_thread


def signature(fn, dtype: str, param_names=(), wide: bool = False) -> tuple[dict, dict]:
    """Triton signature and constexprs for a generated kernel, with data pointers of `dtype`
    (wide: computing in float64, as float64 data always does, whose param-gradient partial
    sums are float64)."""
    sig, attrs = {}, {}
    names = list(inspect.signature(fn).parameters)
    for i, name in enumerate(names):
        if name in ("BLOCK_M", "BLOCK_N", "CH_AXIS", "ACC", "FAST", "PARAM_GRAD", "STEP", "TRAINING"):
            sig[name] = "constexpr"
        elif name == "_seed":
            sig[name] = "i32"
        elif name.endswith("_ptr"):
            base = name[: -len("_ptr")]
            # params in float32, as a module's are, and in float64 with float64 data (a
            # module made .double()); partial sums in the compute type (launch.backward)
            if name == "_partials_ptr":
                sig[name] = "*fp64" if wide else "*fp32"
            elif base in param_names:
                sig[name] = "*fp64" if dtype == "fp64" else "*fp32"
            else:
                sig[name] = f"*{dtype}"
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif name.endswith("_stride") or name in ("_M", "_C", "_n_partials"):
            sig[name] = "i64"
        elif name == "_iters":
            sig[name] = "i32"
        elif name in ("_N", "_S", "_SG"):      # (a gated op's row distances: 2N for the halves of one tensor)
            sig[name] = "i64"
            attrs[(i,)] = [["tt.divisibility", 16]]
        else:  # a constant
            sig[name] = "fp32"
    return sig, attrs


def compile_kernel(kernel, dtype: str, arch: int, layout=LAYOUTS[0], param_names=(), num_warps: int = 4,
                   step: bool = False, training: bool = False, wide: bool = False):
    """Compile a generated kernel for pointers of dtype, computing in float32 (or with wide,
    in float64: an op that computes that direction in float64, see actgen.precision and
    Activation.kernel_wide)."""
    import triton
    from triton.backends.compiler import GPUTarget

    from .runtime.triton_lang import FP_FUSION

    src = kernel_source(kernel, dtype, layout, param_names, step, training, wide)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": num_warps, **FP_FUSION})


def kernel_source(kernel, dtype: str, layout=LAYOUTS[0], param_names=(), step: bool = False, training: bool = False,
                  wide: bool = False):
    """The ASTSource compile_kernel compiles: the kernel specialized as Triton's JIT would
    for such a launch."""
    import triton.language as tl
    from triton.compiler import ASTSource

    fn = getattr(kernel, "fn", kernel)
    wide = wide or dtype == "fp64"
    sig, attrs = signature(fn, dtype, param_names, wide)
    block_m, block_n, axis = layout
    constexprs = {"BLOCK_M": block_m, "BLOCK_N": block_n, "CH_AXIS": axis, "ACC": tl.float64 if wide else tl.float32,
                  "FAST": dtype in ("fp16", "bf16")}
    if "PARAM_GRAD" in sig:
        constexprs["PARAM_GRAD"] = True
    if "STEP" in sig:
        constexprs["STEP"] = step
    if "TRAINING" in sig:
        constexprs["TRAINING"] = training
    if block_m == 1 and axis == 0:      # the flat layout: one row, M = 1, which Triton's JIT makes a constant
        sig["_M"] = "constexpr"
        constexprs["_M"] = 1
    return ASTSource(fn=kernel, signature=sig, constexprs=constexprs, attrs=attrs)


def inspect_ptx(ptx: str) -> dict:
    return {
        "vector_loads": bool(re.search(r"ld\.global(\.\w+)*\.v4", ptx)),
        "vector_stores": bool(re.search(r"st\.global(\.\w+)*\.v4", ptx)),
        "scalar_global_access": bool(re.search(r"(ld|st)\.global(\.(?!v[248])\w+)*\s", ptx)),
        "local_memory": bool(re.search(r"\.local\b|(ld|st)\.local", ptx)),
        "philox": "mul.hi.u32" in ptx,
        "approx_division": bool(re.search(r"div\.(full|approx)(\.ftz)?\.f32", ptx)),
        "approx_sqrt": bool(re.search(r"\br?sqrt\.approx(\.ftz)?\.f32", ptx)),
        "integer_division": bool(re.search(r"\b(div|rem)\.[su](16|32|64)\b", ptx)),
    }


#: the PTX parameter types an argument of each of torch's launcher's type codes fills
PTX_PARAMS = {"O": ("u64",), "l": ("u64", "s64", "b64"), "K": ("u64", "b64"), "i": ("u32", "s32", "b32"),
              "I": ("u32", "b32"), "h": ("u16", "s16", "b16"), "H": ("u16", "b16"), "b": ("u8", "s8", "b8"),
              "B": ("u8", "b8"), "f": ("f32", "b32"), "d": ("f64", "b64")}


def entry_params(ptx: str) -> list[str]:
    """The PTX types of the kernel entry's parameters, in order."""
    entry = re.search(r"\.entry\s+\w+\s*\((.*?)\)", ptx, re.S)
    return re.findall(r"\.param\s+\.(\w+)", entry.group(1)) if entry else []


def static_launch_mismatch(compiled) -> str:
    """Where the arguments torch's launcher would pass the compiled kernel
    (actgen.runtime.static_launch.plan, for a launch with every parameter that is not a
    constexpr) differ from its PTX entry's parameters; "" where they match."""
    from .runtime import static_launch

    n_args = sum(not p.is_constexpr for p in compiled.src.fn.params)
    try:
        _, codes = static_launch.plan(compiled, n_args)
    except static_launch.Unsupported as exc:
        return f"not launched through torch's launcher: {exc}"
    params = entry_params(compiled.asm["ptx"])
    if len(params) != len(codes):
        return f"{len(codes)} arguments ({codes}) for {len(params)} parameters ({' '.join(params)})"
    wrong = [f"{i}: {c} for .{t}" for i, (c, t) in enumerate(zip(codes, params)) if t not in PTX_PARAMS[c]]
    return "; ".join(wrong)


def ptxas_path(arch: int = 90) -> str | None:
    """The ptxas that Triton ships (None if not found)."""
    try:
        from triton.backends.nvidia.compiler import get_ptxas
    except ImportError:
        return None
    try:
        try:
            return get_ptxas(arch).path
        except TypeError:  # older Triton: no arch argument
            return get_ptxas().path
    except Exception:  # noqa: BLE001 - no ptxas is a reportable state, not an error
        return None


def nvdisasm_path() -> str | None:
    """The nvdisasm that Triton ships beside its ptxas (None if not found)."""
    ptxas = ptxas_path()
    path = ptxas and os.path.join(os.path.dirname(ptxas), "nvdisasm")
    return path if path and os.path.exists(path) else None


def sass_listing(cubin: bytes, nvdisasm: str) -> str:
    """nvdisasm's listing of a cubin's kernel function, without the compiler's internal
    subroutines after it (the 64-bit integer division that tile indices call only past 2**32
    tiles)."""
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as fh:
        fh.write(cubin)
    try:
        listing = subprocess.run([nvdisasm, "-c", fh.name], capture_output=True, text=True, check=True).stdout
    finally:
        os.unlink(fh.name)
    return re.split(r"^\$__internal_\w*\$[\w$]*:", listing, flags=re.M)[0]


_OPCODE = re.compile(r"/\*[0-9a-f]{4}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)")


def _opcodes(lines) -> list[str]:
    return [op for line in lines for op in _OPCODE.findall(line) if not op.startswith("NOP")]


def sass_counts(listing: str) -> tuple[int, int]:
    """(instructions, MUFU instructions) in a kernel function's listing, NOPs left out: a
    static measure of the work per thread (a memory-bound kernel has to stay under the
    instructions its bytes take to move), not a timing."""
    ops = _opcodes(listing.splitlines())
    return len(ops), sum(op.startswith("MUFU") for op in ops)


def sass_loop(listing: str) -> int | None:
    """Instructions in the largest loop of a listing (from a label to the branch back to it),
    NOPs left out; None without a loop."""
    lines = listing.splitlines()
    labels = {m.group(1): i for i, line in enumerate(lines) if (m := re.match(r"^\s*(\.L_x_\d+):", line))}
    sizes = [len(_opcodes(lines[labels[m.group(1)]: i + 1])) for i, line in enumerate(lines)
             if (m := re.search(r"\bBRA\b.*?(\.L_x_\d+)", line)) and labels.get(m.group(1), i) < i]
    return max(sizes, default=None)


def spill_bytes(ptx: str, ptxas: str) -> int:
    """Register spill bytes (stores + loads) that `ptxas -v` reports for this PTX."""
    target = re.search(r"^\.target\s+(\w+)", ptx, re.M).group(1)
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as fh:
        fh.write(ptx)
    try:
        log = subprocess.run([ptxas, "-v", f"--gpu-name={target}", fh.name, "-o", os.devnull],
                             capture_output=True, text=True, check=True).stderr
    finally:
        os.unlink(fh.name)
    return sum(int(a) + int(b) for a, b in re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log))


def module_layouts(mod, layouts=LAYOUTS) -> tuple:
    """The tile layouts a generated module runs with: flat only, unless a param is per-channel."""
    return tuple(layouts) if any(mod._OP.per_channel) else tuple(layouts[:1])


def torch_dtype(name: str):
    """The torch dtype of one of POINTER_DTYPES."""
    import torch

    from .bench import DTYPES

    return {**DTYPES, "fp64": torch.float64}[name]


def compile_module(module_name: str, dtypes=POINTER_DTYPES, archs=ARCHS, layouts=LAYOUTS,
                   ptxas: str | None = None, num_warps: int = 4, step: bool = False,
                   nvdisasm: str | None = None) -> list[KernelReport]:
    mod = importlib.import_module(module_name)
    params = set(mod._OP.param_names)
    variants = (False, True) if getattr(mod._OP, "n_draws", 0) else (None,)
    reports = []
    for kname in ("_forward_kernel", "_backward_kernel"):
        kernel = getattr(mod, kname)
        wide = getattr(mod._OP, "float64_forward" if kname == "_forward_kernel" else "float64_backward", False)
        if step and "STEP" not in inspect.signature(getattr(kernel, "fn", kernel)).parameters:
            continue              # only backward kernels with params have a stepping variant
        for dtype in dtypes:
            for arch in archs:
                for lay in module_layouts(mod, layouts):
                    for training in variants:
                        reports.append(_compile_one(module_name, kname, kernel, dtype, arch, lay, params, training,
                                                    ptxas, num_warps, step, nvdisasm,
                                                    mod._OP.kernel_wide(torch_dtype(dtype), wide)))
    return reports


def _compile_one(module_name, kname, kernel, dtype, arch, lay, params, training, ptxas, num_warps=4,
                 step=False, nvdisasm=None, wide=False) -> KernelReport:
    rep = KernelReport(module_name, kname, dtype, arch, lay, ok=False, num_warps=num_warps, step=step, training=training,
                       elements_per_thread=lay[0] * lay[1] // (32 * num_warps))
    try:
        _fill(rep, compile_kernel(kernel, dtype, arch, lay, params, num_warps, step, bool(training), wide), ptxas,
              nvdisasm)
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        rep.error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return rep


def _fill(rep: KernelReport, compiled, ptxas, nvdisasm=None):
    rep.ok = "cubin" in compiled.asm and len(compiled.asm["cubin"]) > 0
    rep.cubin_bytes = len(compiled.asm.get("cubin", b""))
    rep.fp_fusion = bool(getattr(compiled.metadata, "enable_fp_fusion", False))
    for k, v in inspect_ptx(compiled.asm["ptx"]).items():
        setattr(rep, k, v)
    rep.static_launch = static_launch_mismatch(compiled)
    if ptxas:
        rep.spill_bytes = spill_bytes(compiled.asm["ptx"], ptxas)
    if nvdisasm and rep.ok:
        listing = sass_listing(compiled.asm["cubin"], nvdisasm)
        rep.sass_instructions, rep.sass_mufu = sass_counts(listing)
        if rep.step:
            rep.sass_loop_instructions = sass_loop(listing)


def compile_runtime(archs=ARCHS, ptxas: str | None = None) -> list[KernelReport]:
    """The runtime's own kernel: draws_kernel (a call's random draws, for double backward and jvp)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from .runtime.launch import TILE
    from .runtime.triton_lang import FP_FUSION, draws_kernel

    sig = {"out_ptr": "*fp32", "seed": "i32", "n": "i64", "K": "constexpr", "BLOCK": "constexpr"}
    attrs = {(0,): [["tt.divisibility", 16]], (2,): [["tt.divisibility", 16]]}
    reports = []
    for arch in archs:
        rep = KernelReport("actgen.runtime.triton_lang", "draws_kernel", "fp32", arch, (1, TILE, 0), ok=False)
        try:
            src = ASTSource(fn=draws_kernel, signature=sig, constexprs={"K": 1, "BLOCK": TILE}, attrs=attrs)
            _fill(rep, triton.compile(src, target=GPUTarget("cuda", arch, 32), options=FP_FUSION), ptxas)
        except Exception as exc:  # noqa: BLE001 - reported, not raised
            rep.error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        reports.append(rep)
    return reports


def _variant(r: KernelReport) -> str:
    return (f" {r.num_warps} warps" + (" step" if r.step else "")
            + ("" if r.training is None else f" TRAINING={r.training}"))


def _arch(text: str) -> int:
    """--arch's value: a compute capability as 90 or sm_90."""
    digits = text[3:] if text.lower().startswith("sm_") else text
    if not digits.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a GPU architecture (90 or sm_90)")
    return int(digits)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m actgen.aot", description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="*",
                        help="generated modules or op names: actgen.ops.silu or silu (default: every actgen.ops module)")
    parser.add_argument("--dtype", nargs="*", choices=POINTER_DTYPES, default=list(POINTER_DTYPES))
    parser.add_argument("--arch", nargs="*", type=_arch, default=list(ARCHS),
                        help=f"GPU architectures, as 90 or sm_90 (default: {' '.join(map(str, ARCHS))})")
    parser.add_argument("--flat-only", action="store_true", help="compile only the flat 1-D tile layout")
    parser.add_argument("--tuning-candidates", action="store_true",
                        help="compile with every launch config the tuner tries (tile size, warps), not only the default")
    parser.add_argument("--spills", action="store_true", help="count register spills with ptxas -v")
    parser.add_argument("--runtime", action="store_true", help="also compile the runtime's own kernel (draws_kernel)")
    parser.add_argument("--sass", action="store_true",
                        help="count machine instructions per element (nvdisasm): the work a memory-bound kernel must hide")
    parser.add_argument("--json", help="write the reports here")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("unset TRITON_INTERPRET: interpreted kernels cannot be compiled", file=sys.stderr)
        return 2
    modules = [m if "." in m else f"actgen.ops.{m}" for m in args.modules]
    if not modules:
        import actgen.ops as ops

        modules = sorted({f"actgen.ops.{getattr(ops, n).__module__.rsplit('.', 1)[-1]}" for n in ops.__all__})
    from actgen.runtime.tuning import DEFAULT, candidates

    # every config the tuner may launch for each dtype asked for (param-gradient ones included),
    # with the dtypes it is a candidate for; else the default for every dtype
    configs = {}
    for d in args.dtype:
        for cfg in (candidates(torch_dtype(d), True) if args.tuning_candidates else (DEFAULT,)):
            configs.setdefault(cfg, []).append(d)
    ptxas = ptxas_path() if args.spills else None
    nvdisasm = nvdisasm_path() if args.sass else None
    if args.sass and nvdisasm is None:
        print("--sass: no nvdisasm found beside Triton's ptxas", file=sys.stderr)
        return 2
    reports = []
    for m in modules:
        for cfg, dtypes in configs.items():
            layouts = layouts_for(cfg.tile)[:1] if args.flat_only else layouts_for(cfg.tile)
            reports += compile_module(m, tuple(dtypes), tuple(args.arch), layouts, ptxas, cfg.num_warps, cfg.step,
                                      nvdisasm)
    if args.runtime:
        reports += compile_runtime(tuple(args.arch), ptxas)
    failed = [r for r in reports if not r.ok]
    for r in failed:
        print(f"FAIL {r.module}.{r.kernel} {r.dtype} sm_{r.arch} {r.layout}{_variant(r)}: {r.error}", file=sys.stderr)
    for r in reports:
        if r.spill_bytes:
            print(f"SPILL {r.module}.{r.kernel} {r.dtype} sm_{r.arch} {r.layout}{_variant(r)}: {r.spill_bytes} bytes",
                  file=sys.stderr)
    for r in reports:
        if r.sass_instructions is not None:
            loop = "" if r.sass_loop_per_element is None else f"; {r.sass_loop_per_element:.1f} in its loop over tiles"
            print(f"SASS {r.module}.{r.kernel} {r.dtype} sm_{r.arch} {r.layout}{_variant(r)}: "
                  f"{r.sass_per_element:.0f} instructions per element ({r.sass_mufu / r.elements_per_thread:.1f} MUFU)"
                  + loop)
    print(f"{len(reports) - len(failed)}/{len(reports)} kernels compiled")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump([asdict(r) | {"sass_per_element": r.sass_per_element, "sass_loop_per_element": r.sass_loop_per_element}
                       for r in reports], fh, indent=1)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
