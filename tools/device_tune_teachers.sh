#!/usr/bin/env bash
# Choose the teacher architecture/regularisation on DEV frame accuracy (one teacher per setting), then run stages
# 4-6 with the winner.  Used on a lent GPU machine; the test set plays no part in the choice.
#   tools/device_tune_teachers.sh EXP_DIR OUT_DIR "DISTILL EXPERIMENTS"
set -uo pipefail
exp=$1; out=$2; experiments=${3:-table1}
cli="python3 -m asr_distill.bin.cli"
export PYTHONUNBUFFERED=1
i=0
for setting in "--hidden-dim 1024 --num-layers 4 --dropout 0.2" \
               "--hidden-dim 1024 --num-layers 4 --dropout 0.4" \
               "--hidden-dim 1024 --num-layers 4 --dropout 0.5 --epochs 20" \
               "--hidden-dim 2048 --num-layers 4 --dropout 0.5 --epochs 20" \
               "--hidden-dim 1024 --num-layers 6 --dropout 0.4 --epochs 20" \
               "--hidden-dim 1024 --num-layers 4 --dropout 0.4 --left-context 5 --right-context 5" \
               "--hidden-dim 1024 --num-layers 4 --dropout 0.4 --left-context 12 --right-context 12" \
               "--hidden-dim 1024 --num-layers 4 --dropout 0.4 --weight-decay 0.01 --epochs 20"; do
  d=/tmp/tune$i; rm -rf $d; mkdir -p $d; cp -r "$exp"/. $d/; rm -rf $d/teachers $d/.done/teachers
  $cli train-teachers --exp-dir $d --device cuda --num-teachers 1 $setting > $out/tune$i.log 2>&1
  acc=$(python3 -c "import json; print(json.load(open('$d/teachers/teacher0/summary.json'))['best_dev_acc'])")
  echo "$acc|$setting" | tee -a $out/tune.txt
  i=$((i+1))
done
best=$(sort -t'|' -k1 -g -r $out/tune.txt | head -1 | cut -d'|' -f2)
echo "best on dev: $best"
tools/device_an4_stages.sh "$exp" "$out" "$experiments" $best
