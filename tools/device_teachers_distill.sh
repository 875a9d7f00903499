#!/usr/bin/env bash
# Stages 4-6 on a lent GPU over a copy of a trimmed experiment directory (stages 0-3 made on the CPU: frame caches,
# graph, state inventory), with new teachers.  Used for the GPU rows of docs/RESULTS.md:
#   tools/device_teachers_distill.sh EXP_DIR OUT_DIR "TRAIN-TEACHERS OPTIONS" [DISTILL OPTIONS...]
# Brings back OUT_DIR/{stage5.log,teachers_01.tgz,teachers_23.tgz,decode.tgz} and OUT_DIR/s6/ (device_distill.sh's):
# the teachers and the decode directory let a later call (or the CPU) go on from stage 6.
set -uo pipefail
src=$1; out=$2; teacher_args=$3; shift 3
exp=/tmp/exp_teachers
cli="python3 -m asr_distill.bin.cli"
export PYTHONUNBUFFERED=1
t0=$(date +%s)
rm -rf "$exp"; cp -r "$src" "$exp"; rm -rf "$exp"/teachers/teacher* "$exp"/decode "$exp"/distill "$exp"/.done/{teachers,evaluate,distill}
# shellcheck disable=SC2086
$cli train-teachers --exp-dir "$exp" --device cuda --num-teachers 4 $teacher_args 2>&1 | tr '\r' '\n' \
  | grep -v "it/s" > "$exp/teachers/stage4.log"
echo "stage 4 rc=${PIPESTATUS[0]} $(( $(date +%s) - t0 )) s"
$cli evaluate --exp-dir "$exp" --device cuda --jobs 16 2>&1 | grep -v "it/s" > "$out/stage5.log"
echo "stage 5 rc=${PIPESTATUS[0]} $(( $(date +%s) - t0 )) s"; grep "test WER" "$out/stage5.log" | cut -c1-200
(cd "$exp/teachers" && tar czf "$out/teachers_01.tgz" --exclude checkpoint.pt stage4.log teachers.json teacher0 teacher1 \
  && tar czf "$out/teachers_23.tgz" --exclude checkpoint.pt teacher2 teacher3)  # best.pt: 4.3 MB each
(cd "$exp" && tar czf "$out/decode.tgz" decode .done)
mkdir -p "$out/s6"
[ $# -gt 0 ] && bash "$(dirname "$0")/device_distill.sh" "$exp" "$out/s6" "$(( 560 - $(date +%s) + t0 ))" "$@"
echo "total $(( $(date +%s) - t0 )) s"
