#!/usr/bin/env bash
# One pass on a CUDA GPU: the kernels checked on the device, then the benchmark suite.
#
#   benchmarks/cuda_pass.sh OUT_DIR [SECONDS]
#
# Stages, most important first, each with its own time limit inside SECONDS (default 540),
# so that a stage cut short still leaves the others' results:
#   1. accuracy.npz - every catalogue entry's kernels on the GPU, its param gradients, the
#      kernels' exp and log1p, direct launches of compiled variants against Triton's JIT, and
#      variants loaded from the variant store in a fresh process against the process that
#      recorded them (python -m actgen.device_accuracy collect); score it on any machine with
#      `python -m actgen.device_accuracy score OUT_DIR/accuracy.npz --out FILE`;
#   2. host_profile.txt - where a call's host time goes (benchmarks/host_profile.py);
#      host_profile_static.txt - the same with launches through torch's launcher
#      (ACTGEN_STATIC_LAUNCH=1), fresh processes' first calls included;
#      param_grads.txt - backwards with param gradients against frozen ones: event times,
#      host time, synchronising ops, the ops and kernels (benchmarks/param_grad_profile.py);
#   3. latency/     - first-call latency (fresh processes), recompilation, host time;
#   4. bench-2p26/  - the suite at 2**26 elements (where the targets are judged), fp32 and bf16;
#   5. exp_cost.json - the kernels with their own exp against libdevice's (benchmarks/exp_cost.py);
#   6. bench-more/  - the suite at 2**20 and 2**28 elements (MORE_SIZES), as far as the time allows.
# STAGES picks stages (default: all), CASES the activations benchmarked (default: the suite's).
# Merge the suite's runs with `actgen bench --render A/results.json B/results.json --out DIR`.
# Everything is also packed into OUT_DIR/pass.tgz after every stage.
set -u
set -f      # sizes such as 2**20 are words, not patterns
OUT=${1:?usage: benchmarks/cuda_pass.sh OUT_DIR [SECONDS]}
BUDGET=${2:-540}
PY=${PYTHON:-python3}
JOBS=${JOBS:-8}
STAGES=${STAGES:-accuracy host host-static params latency bench-2p26 exp_cost bench-more}   # which stages, in this order
CASES=${CASES:-}                       # activations to benchmark (default: the suite's)
MORE_SIZES=${MORE_SIZES:-2**20 2**28}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"
WORK=$(mktemp -d)
START=$SECONDS
left() { echo $((BUDGET - (SECONDS - START))); }
stage() {   # stage NAME LIMIT COMMAND...: run with the smaller of LIMIT and the time left
    local name=$1 limit=$2; shift 2
    local t; t=$(left); [ "$limit" -gt "$t" ] && limit=$t
    if [ "$limit" -le 5 ]; then echo "== $name: skipped, no time left"; return; fi
    echo "== $name (limit ${limit}s) at $((SECONDS - START))s"
    timeout --kill-after=5 "$limit" "$@" > "$WORK/$name.log" 2>&1
    echo "== $name: exit $? after $((SECONDS - START))s"
    tail -n 25 "$WORK/$name.log"
    tar czf "$OUT/pass.tgz" -C "$WORK" .
}

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem,temperature.gpu,power.draw --format=csv \
    > "$WORK/nvidia-smi.csv" 2>&1
cat "$WORK/nvidia-smi.csv"
$PY -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"

run() { case " $STAGES " in *" $1 "*) stage "$@";; *) echo "== $1: not asked for";; esac; }
run accuracy 70 env ACTGEN_TUNING_CACHE="$WORK/tuning-accuracy.json" $PY -m actgen.device_accuracy collect --device cuda \
    --jobs 12 --out "$WORK/accuracy.npz"
run host 45 $PY benchmarks/host_profile.py --op silu --out "$WORK/host_profile.txt"
run host-static 45 env ACTGEN_STATIC_LAUNCH=1 $PY benchmarks/host_profile.py --op silu \
    --out "$WORK/host_profile_static.txt"
run params 40 $PY benchmarks/param_grad_profile.py --device cuda --out "$WORK/param_grads.txt"
run latency 150 $PY -m actgen.bench silu --device cuda --dtype fp32 --sizes '2**20' --impls actgen compile \
    --modes fwd --latency-cases silu --no-memory --no-plots --out "$WORK/latency"
run bench-2p26 240 $PY -m actgen.bench $CASES --device cuda --dtype fp32 bf16 --sizes '2**26' --prewarm "$JOBS" \
    --no-latency --no-plots --out "$WORK/bench-2p26"
run exp_cost 50 $PY benchmarks/exp_cost.py --out "$WORK/exp_cost.json"
run bench-more 600 $PY -m actgen.bench $CASES --device cuda --dtype fp32 bf16 --sizes $MORE_SIZES --prewarm "$JOBS" \
    --no-latency --no-plots --rep-ms 50 --out "$WORK/bench-more"
echo "== done after $((SECONDS - START))s"
