#!/usr/bin/env bash
# The five-shift correction-loop protocol (bench_correction_loop.py) at full size on a GPU machine, with the
# fine-tune's step budget fixed to what the one-click recipe does on 2 CPU cores (so the numbers are the CPU
# recipe's, only faster to get). A CUDA smoke run comes first; where it fails the run falls back to the CPU.
# Usage: bash benchmarks/gpu_correction_loop.sh OUTDIR [STEPS] [SECONDS]; GRID="--grid NAME=V1,V2 ..." sets the
# recipe fields chosen leave-one-shift-out (default: lr x crop x corrected_weight, 8 recipes; none on the CPU).
set -u
out=${1:?output folder}; steps=${2:-150}; budget=${3:-480}
cd "$(dirname "$0")"
export PYTHONUNBUFFERED=1
device=cuda
if ! timeout 120 python3 bench_correction_loop.py --quick --shifts synthetic --repeats 1 --peer none --device cuda \
        --steps 4 --threads 1 > "$out/smoke.txt" 2>&1; then
    echo "CUDA smoke run failed (tail below); falling back to the CPU"; tail -20 "$out/smoke.txt"; device=cpu
fi
jobs=$(( $(nproc) - 1 ))
read -r -a grid <<< "${GRID:---grid lr=2e-4,5e-4 --grid crop=128,256 --grid corrected_weight=1,3}"
[ "$device" = cpu ] && grid=()
timeout -k 10 "$budget" python3 bench_correction_loop.py --device "$device" --steps "$steps" --jobs "$jobs" \
    --threads 1 --repeats 3 --peer isbi --peer-pretrain-steps 3000 --peer-cache /tmp/neuroedge-peer \
    --results "$out/results.jsonl" "${grid[@]}" > "$out/log.txt" 2>&1
echo "bench rc $? on $device"
