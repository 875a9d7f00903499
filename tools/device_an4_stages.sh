#!/usr/bin/env bash
# Runs AN4 stages 4-6 on a lent GPU machine over a trimmed experiment directory (frame caches, lang, graph,
# inventory: what stages 0-3 produced on the CPU).  Used for the GPU rows of docs/RESULTS.md:
#   tools/device_an4_stages.sh EXP_DIR OUT_DIR "DISTILL EXPERIMENTS" [extra train-teachers args]
set -uo pipefail
exp=$1; out=$2; experiments=${3:-table1}; shift 3 || true
cli="python3 -m asr_distill.bin.cli"
export PYTHONUNBUFFERED=1
nvidia-smi -L; python3 -c 'import torch; print("torch", torch.__version__)'
t0=$(date +%s)
$cli train-teachers --exp-dir "$exp" --device cuda --num-teachers 4 "$@" > "$out/stage4.log" 2>&1
echo "stage 4 rc=$? $(( $(date +%s) - t0 )) s"; grep -E "Error|error" "$out/stage4.log" | tail -3
$cli evaluate --exp-dir "$exp" --device cuda --jobs 16 > "$out/stage5.log" 2>&1
echo "stage 5 rc=$? $(( $(date +%s) - t0 )) s"; grep -E "test WER|Error" "$out/stage5.log" | tail -8
for e in ${experiments//,/ }; do
  src=live; [ "$e" = table1 ] && src=both
  $cli distill --exp-dir "$exp" --device cuda --jobs 16 --teacher-source $src --experiments $e --force \
    > "$out/stage6_$e.log" 2>&1
  echo "stage 6 $e rc=$? $(( $(date +%s) - t0 )) s"; grep -E "test WER|Error" "$out/stage6_$e.log" | tail -6
done
