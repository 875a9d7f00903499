#!/usr/bin/env bash
# Stage 6 on a lent GPU over a trimmed experiment directory: what stages 0-5 made on the CPU (frame caches, graph,
# state inventory, the trained teachers, the ensemble's scores) is carried; the GPU trains the students and the
# machine's 16 cores decode them.  Used for the GPU rows of docs/RESULTS.md:
#   tools/device_distill.sh EXP_DIR OUT_DIR SECONDS [asr-distill distill options...]
# Results come back as OUT_DIR/{stage6.log,results.json,distill_logs.tgz,models.tgz}.
set -uo pipefail
exp=$1; out=$2; limit=$3; shift 3
export PYTHONUNBUFFERED=1
nvidia-smi -L; python3 -c 'import torch; print("torch", torch.__version__)'
t0=$(date +%s)
timeout "$limit" python3 -m asr_distill.bin.cli distill --exp-dir "$exp" --device cuda --jobs 16 --force "$@" 2>&1 \
  | tr '\r' '\n' | grep --line-buffered -v "it/s\]" > "$out/stage6.log"
echo "stage 6 rc=${PIPESTATUS[0]} $(( $(date +%s) - t0 )) s"
grep -E "select|chosen|test WER|Error|error" "$out/stage6.log" | cut -c1-300 | tail -40
cp "$exp/results.json" "$out/"
(cd "$exp/distill" && tar czf "$out/distill_logs.tgz" */log.csv */summary.json */config.json *.png 2>/dev/null)
(cd "$exp/distill" && tar czf "$out/models.tgz" student/best.pt baseline/best.pt 2>/dev/null)
ls -la "$out"
