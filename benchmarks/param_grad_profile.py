"""Where a backward with param gradients spends its time, against the same backward frozen.

On the H200 of 2026-11-30 some backwards with param gradients took about twice their frozen
time at 2**26 elements (prelu channels-last float32 362 against 189 us, polynomial float32
486 against 253 us) where their kernels alone took about the same (the tuner's timings).
For each activation with params this prints, with the params frozen and not:
* the backward as the suite times it (CUDA events around it, after an untimed forward);
* the host time of a forward+backward issued back to back, not synchronised;
* whether any op of the step synchronises with the GPU (torch.cuda.set_sync_debug_mode);
* the ops and kernels of a few backwards (torch.profiler: host and GPU time per op).

    python benchmarks/param_grad_profile.py [--device cuda] [--sizes 4096 2**26] [--out FILE]

On a CPU (the fallback) it runs as a smoke test at small sizes; the figures mean nothing there.
"""
from __future__ import annotations

import argparse
import sys
import time

CASES = ("prelu", "prelu_cl", "polynomial", "learnable_activation", "adaptive_mixture")


def host_per_call(step, sync, iters: int) -> float:
    """Best mean seconds per step over three loops, not synchronised within a loop."""
    for _ in range(5):
        step()
    sync()
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(iters):
            step()
        best = min(best, (time.perf_counter() - t) / iters)
        sync()
    return best


def synchronises(step, device) -> str:
    """'none', or the first synchronising call torch reports in one step (CUDA only)."""
    import torch

    if device.type != "cuda":
        return "not checked (no GPU)"
    step()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step()
        return "none"
    except RuntimeError as exc:
        return str(exc).strip().splitlines()[0][:200]
    finally:
        torch.cuda.set_sync_debug_mode(0)
        torch.cuda.synchronize()


def op_table(setup, backward, device, rows: int = 14) -> str:
    """torch.profiler's table of three backwards (each after an untimed forward), by total time."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    states = [setup() for _ in range(3)]
    if device.type == "cuda":
        torch.cuda.synchronize()
    with profile(activities=activities) as prof:
        for state in states:
            backward(state)
        if device.type == "cuda":
            torch.cuda.synchronize()
    key = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--cases", nargs="+", default=list(CASES))
    p.add_argument("--sizes", nargs="+", default=None, help="default: 4096 2**26 on CUDA, 4096 2**14 on CPU")
    p.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"))
    p.add_argument("--out")
    args = p.parse_args(argv)
    import torch

    from actgen.bench import CASES as SUITE, DTYPES, make_tensors, parse_size, time_backward

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    sizes = [parse_size(s) for s in (args.sizes or (["4096", "2**26"] if device.type == "cuda" else ["4096", "2**14"]))]
    dtype = DTYPES[args.dtype]

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    lines = [f"device {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}, torch {torch.__version__}, "
             f"python {sys.version.split()[0]}, {args.dtype}"]
    for name in args.cases:
        case = SUITE[name]
        fn = case.actgen_fn()
        for n in sizes:
            inputs, params, grad_out = make_tensors(case, n, dtype, device)
            lines += ["", f"== {name} ({case.layout}, {len(params)} param(s)), n = {n}"]
            for frozen in (False, True):
                xs = [t.detach().requires_grad_(True) for t in inputs]
                ps = [t.detach().requires_grad_(not frozen) for t in params]
                wrt = xs + ([] if frozen else ps)

                def setup():
                    return fn(*xs, *ps)

                def backward(y):
                    return torch.autograd.grad(y, wrt, grad_out)

                def step():
                    return backward(setup())

                label = "frozen" if frozen else "params"
                bwd = time_backward(setup, backward, device, min_run_time=0.05, rep_ms=50)
                host = host_per_call(step, sync, 200 if n <= 1 << 20 else 20)
                lines.append(f"{label:<7} backward (events, as the suite) {bwd * 1e6:9.1f} us; fwd+bwd host per call "
                             f"{host * 1e6:9.1f} us; synchronising: {synchronises(step, device)}")
                if n == max(sizes):
                    lines += [f"-- ops of three backwards, {label}", op_table(setup, backward, device)]
    report = "\n".join(lines)
    print(report)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(report + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
