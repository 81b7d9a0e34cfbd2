"""What the kernels' exp costs on a GPU: the generated kernels timed as generated and with
libdevice's exp in its place, against the copy roofline.

As generated, the kernels compute a float32 exp from arithmetic for float32 data
(actgen.runtime.triton_lang.exp: within an ULP, a dozen more instructions per call than
libdevice's __nv_expf, one fewer special-function op) and take the special-function unit's
exp2 for 16-bit data.  A memory-bound kernel hides arithmetic behind its loads and stores up
to a point; this measures whether it does.  Each variant runs in its own process (the swap has to happen
before anything is compiled), with tuning off (every variant on the default launch config).

    python benchmarks/exp_cost.py --out exp_cost.json          # on a GPU
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

VARIANTS = ("generated", "libdevice")


def _libdevice_exp():
    """libdevice's exp as a Triton function (defined at module level: Triton resolves the
    names a kernel uses from its module)."""
    global libdevice, tl
    from actgen.runtime.triton_lang import libdevice, tl, triton  # noqa: F401 - seen by the kernel

    @triton.jit
    def exp(x, FAST: tl.constexpr):
        return libdevice.exp(x)
    return exp
OPS = ("silu", "mish", "gelu_tanh")


def measure(variant: str, ops, dtypes, n: int, device: str = "cuda") -> list[dict]:
    os.environ["ACTGEN_TUNE"] = "0"
    import torch

    from actgen.runtime import triton_lang
    if variant == "libdevice":
        triton_lang.exp = _libdevice_exp()            # what sigmoid and softplus call
    import importlib

    from actgen.bench import CASES, DTYPES, _mode_callable, make_tensors, nbytes, time_backward, time_fn

    dev = torch.device(device)
    rows = []
    for name in ops:
        mod = importlib.import_module(f"actgen.ops.{name}")
        if variant == "libdevice" and hasattr(mod, "_exp"):
            mod._exp = triton_lang.exp
        case = CASES[name]
        for dt_name in dtypes:
            dt = DTYPES[dt_name]
            inputs, params, grad_out = make_tensors(case, n, dt, dev)
            y = torch.empty_like(inputs[0])
            copy = time_fn(lambda: y.copy_(inputs[0]), dev)
            add = time_fn(lambda: torch.add(inputs[0], grad_out, out=y), dev)
            for mode in ("fwd", "bwd"):
                run = _mode_callable(case.actgen_fn(), mode, inputs, params, grad_out)
                if mode == "fwd":
                    run()
                    t = time_fn(run, dev)
                    roof = copy
                else:
                    t = time_backward(run.setup, run, dev)
                    roof = add
                rows.append({"variant": variant, "op": name, "dtype": dt_name, "n": n, "mode": mode, "time_s": t,
                             "roofline_s": roof, "roofline_frac": roof / t,
                             "gbps": (2 if mode == "fwd" else 3) * nbytes(inputs[0]) / t / 1e9})
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--ops", nargs="+", default=list(OPS))
    p.add_argument("--dtype", nargs="+", default=["fp32", "bf16"])
    p.add_argument("--n", type=int, default=1 << 26)
    p.add_argument("--device", default="cuda")
    p.add_argument("--variant", choices=VARIANTS, help="measure one variant in this process (internal)")
    args = p.parse_args(argv)
    if args.variant:
        print("EXP_COST " + json.dumps(measure(args.variant, args.ops, args.dtype, args.n, args.device)))
        return 0
    rows = []
    for variant in VARIANTS:
        proc = subprocess.run([sys.executable, __file__, "--out", args.out, "--variant", variant, "--n", str(args.n), "--device", args.device,
                               "--ops", *args.ops, "--dtype", *args.dtype], capture_output=True, text=True)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("EXP_COST ")]
        if not lines:
            print(f"{variant}: failed: {(proc.stderr.strip().splitlines() or ['no output'])[-1]}", file=sys.stderr)
            continue
        rows += json.loads(lines[0][len("EXP_COST "):])
    with open(args.out, "w") as fh:
        json.dump(rows, fh, indent=1)
    print(f"{'op':<10} {'dtype':<5} {'mode':<4} " + " ".join(f"{v:>22}" for v in VARIANTS))
    for op in args.ops:
        for dt in args.dtype:
            for mode in ("fwd", "bwd"):
                cells = []
                for v in VARIANTS:
                    r = next((r for r in rows if (r["variant"], r["op"], r["dtype"], r["mode"]) == (v, op, dt, mode)), None)
                    cells.append(f"{r['time_s'] * 1e6:8.1f} us {100 * r['roofline_frac']:5.1f}%" if r else f"{'-':>22}")
                print(f"{op:<10} {dt:<5} {mode:<4} " + " ".join(f"{c:>22}" for c in cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
