#!/bin/bash
# Issue 34's GPU path, on a lent device machine (run there from the repository root, after carrying
# runs/gpu_carry: `run(command="bash bench/gpu_run.sh", carry=["runs/gpu_carry"])`).  Unpacks the faces
# bench/gpu_carry.py packed, trains configs/experiments/long_sface/student_gpu.yaml for EPOCHS epochs or
# MINUTES minutes (whichever ends first; a checkpoint every 500 steps), and leaves in $OUT what can come
# back: the stripped student of the last checkpoint (~4 MB), metrics.jsonl (loss, img/s) and the log.
set -uo pipefail
cd "$(dirname "$0")/.."
EPOCHS=${EPOCHS:-100}
MINUTES=${MINUTES:-9}
OUT=${OUT:-runs/gpu/out}
RUN=runs/long_sface/student_gpu
mkdir -p runs/gpu/faces "$OUT"
[[ -d runs/gpu/faces/labelled ]] || tar -xzf runs/gpu_carry/faces.tgz -C runs/gpu/faces
export PYTHONPATH=$PWD
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > "$OUT/gpu.txt" 2>&1
timeout "$((MINUTES * 60))" python3 -m facekd train-student --config configs/experiments/long_sface/student_gpu.yaml \
  --device cuda --resume --set "train.epochs=$EPOCHS" > "$OUT/train.log" 2>&1
echo "train exit $?" >> "$OUT/train.log"
cp "$RUN/metrics.jsonl" "$OUT/" 2>/dev/null
[[ -f $RUN/last.pt ]] && python3 -m facekd strip "$RUN/last.pt" --out "$OUT/student_last.pt"
tail -5 "$OUT/train.log"
