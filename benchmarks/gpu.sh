#!/usr/bin/env bash
# The GPU table of docs/benchmarks.md: the CPU benchmarks' own scripts (each checks eqmlip
# against the reference before timing), run once in sequence on whatever accelerator JAX finds,
# in the order of what matters most, each under its own time limit so that one slow or failing
# script cannot take the others' time. Every script's output goes to OUTDIR/log.txt and its JSON
# lines to OUTDIR/results.jsonl as soon as it ends.
#
# float32 matrix products run at full float32 precision (JAX_DEFAULT_MATMUL_PRECISION=highest):
# on a GPU, JAX's default lets them run in TF32, whose ~1e-3 relative error fails the scripts'
# float32 agreement checks (and would time a different computation from the CPU tables).
#
#     bash benchmarks/gpu.sh OUTDIR [LIMIT_SCALE] [SCRIPTS]
#
# LIMIT_SCALE (default 1) multiplies every time limit; SCRIPTS (comma-separated, default all)
# picks scripts. Compiling for the GPU dominates: on an H200 with a 16-core host, nequip took
# 151 s and train 120 s end to end; the limits below add up to 28 minutes of device time
# (benchmarks/results-gpu.json is nequip, train and message_pass from one 15-minute lease).
set -uo pipefail
out=${1:?usage: bash benchmarks/gpu.sh OUTDIR [LIMIT_SCALE] [SCRIPTS]}
scale=${2:-1}
only=,${3:-nequip,train,message_pass,linear,plot_scaling,mace,nequix},
cd "$(dirname "$0")/.."
mkdir -p "$out"
export PYTHONUNBUFFERED=1 JAX_DEFAULT_MATMUL_PRECISION=highest
python=${PYTHON:-python3}

run() {  # name limit_s arguments...
    local name=$1 limit
    [[ $only == *",$name,"* ]] || return 0
    limit=$(awk -v s="$scale" -v l="$2" 'BEGIN { printf "%d", s * l }')
    shift 2
    local start=$SECONDS tmp
    tmp=$(mktemp)
    echo "== $name $* (limit ${limit} s)" | tee -a "$out/log.txt"
    timeout -k 5 "$limit" "$python" "benchmarks/$name.py" "$@" >"$tmp" 2>&1
    local rc=$?
    cat "$tmp" >>"$out/log.txt"
    grep '^{' "$tmp" | sed "s/^{/{\"script\": \"$name\", \"returncode\": $rc, /" >>"$out/results.jsonl"
    echo "   $name: exit $rc after $((SECONDS - start)) s" | tee -a "$out/log.txt"
    [ "$rc" -eq 0 ] || tail -n 4 "$tmp"
    rm -f "$tmp"
}

"$python" -c 'import jax; print("jax", jax.__version__, jax.devices())' | tee -a "$out/log.txt"
run nequip 240 --rounds 3 --repeats 5 --crystal-repeats 3
run train 180 --rounds 3 --repeats 3
run message_pass 120 --repeats 20
run linear 120 --rounds 7 --repeats 30
run plot_scaling 360 --cells 1,2,4,8 --mlip-max-atoms 4096 --repeats 5 \
    --out "$out/nequip-step-time-gpu.png"
run mace 420 --repeats 10 --crystal-repeats 3 --train-repeats 5
run nequix 240 --rounds 5 --repeats 10 --crystal-repeats 5
