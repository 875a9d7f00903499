#!/usr/bin/env bash
# AN4 recipe: ensemble -> student distillation for a hybrid HMM-DNN system, scored with a WFST decoder.
#
#   recipes/an4/run.sh --corpus-dir ../shared/corpora/an4 --exp-dir exp/an4 [--stage 0] [--stop-stage 8]
#                      [--nproc N]   (stages 4 and 6 data-parallel: torchrun --standalone --nproc_per_node N)
#
# Stages (each skipped when EXP/.done/<name> exists; pass --force to redo the selected ones):
#   0 manifests   1 features   2 lang + HCLG   3 GMM-HMM + alignments + GMM decode
#   4 teachers    5 teacher + ensemble evaluation   6 distillation   7 results table   8 export
set -euo pipefail

corpus_dir=corpora/an4_slice   # the embedded slice; point at a full AN4 copy for real numbers
exp_dir=exp/an4
stage=0
stop_stage=7
jobs=2
force=
# stage 4-6 options (defaults suit full AN4 on a CPU; see docs/RESULTS.md)
num_teachers=4
device=cpu
nproc=1         # processes for stages 4 and 6 (one per GPU with --device cuda; gloo processes on the CPU)
teacher_args=""
distill_args=""

usage() { sed -n '2,9p' "$0"; exit 1; }
while [ $# -gt 0 ]; do
  case "$1" in
    --corpus-dir) corpus_dir=$2; shift 2;;
    --exp-dir) exp_dir=$2; shift 2;;
    --stage) stage=$2; shift 2;;
    --stop-stage) stop_stage=$2; shift 2;;
    --jobs) jobs=$2; shift 2;;
    --num-teachers) num_teachers=$2; shift 2;;
    --device) device=$2; shift 2;;
    --nproc) nproc=$2; shift 2;;
    --teacher-args) teacher_args=$2; shift 2;;
    --distill-args) distill_args=$2; shift 2;;
    --force) force=--force; shift;;
    -h|--help) usage;;
    *) echo "unknown option $1" >&2; usage;;
  esac
done

# The recipe runs with the environment `make demo` / `make test` create.
here=$(cd "$(dirname "$0")/../.." && pwd)
if [ -z "${VIRTUAL_ENV:-}" ] && [ -x "$here/.venv/bin/asr-distill" ]; then PATH="$here/.venv/bin:$PATH"; fi
command -v asr-distill >/dev/null || { echo "asr-distill not found: run 'make venv' first" >&2; exit 1; }

log() { echo "$(date '+%H:%M:%S') [an4] $*"; }
# training stages: under torchrun when several processes are asked for (rank 0 decodes and writes the files)
train_cmd=asr-distill
if [ "$nproc" -gt 1 ]; then
  command -v torchrun >/dev/null || { echo "torchrun not found (it comes with torch)" >&2; exit 1; }
  train_cmd="torchrun --standalone --nproc_per_node $nproc $(command -v asr-distill)"
fi
common="--exp-dir $exp_dir --corpus an4 $force"

if [ $stage -le 0 ] && [ $stop_stage -ge 0 ]; then
  log "stage 0: manifests from $corpus_dir"
  asr-distill prepare $common --corpus-dir "$corpus_dir"
fi
if [ $stage -le 1 ] && [ $stop_stage -ge 1 ]; then
  log "stage 1: features (fbank 40, MFCC 13) + per-speaker CMVN"
  asr-distill features $common
fi
if [ $stage -le 2 ] && [ $stop_stage -ge 2 ]; then
  log "stage 2: lang, bigram LM, HCLG"
  asr-distill lang $common --lexicon "$corpus_dir/etc/an4.dic"
fi
if [ $stage -le 3 ] && [ $stop_stage -ge 3 ]; then
  log "stage 3: monophone GMM-HMM, alignments, GMM decode"
  asr-distill gmm $common --jobs $jobs
fi
if [ $stage -le 4 ] && [ $stop_stage -ge 4 ]; then
  log "stage 4: $num_teachers DNN teachers"
  $train_cmd train-teachers $common --num-teachers $num_teachers --device $device $teacher_args
fi
if [ $stage -le 5 ] && [ $stop_stage -ge 5 ]; then
  log "stage 5: evaluate teachers and their ensemble"
  asr-distill evaluate $common --jobs $jobs --device $device
fi
if [ $stage -le 6 ] && [ $stop_stage -ge 6 ]; then
  log "stage 6: distillation (baseline + student)"
  $train_cmd distill $common --jobs $jobs --device $device $distill_args
fi
if [ $stage -le 7 ] && [ $stop_stage -ge 7 ]; then
  log "stage 7: results"
  asr-distill results --exp-dir "$exp_dir"
fi
if [ $stage -le 8 ] && [ $stop_stage -ge 8 ]; then
  log "stage 8: export the student (TorchScript + ONNX + int8) to $exp_dir/export/student"
  asr-distill export --exp-dir "$exp_dir" --system student --out-dir "$exp_dir/export/student"
fi
