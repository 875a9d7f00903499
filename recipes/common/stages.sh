# Shared stages of every recipe; recipes/<corpus>/run.sh sets its defaults and sources this file with "$@".
#
# A recipe sets before sourcing:  corpus (an4|librispeech|kaldi|yesno), corpus_dir, exp_dir, lexicon (may be
# empty), num_teachers, teacher_args, distill_args, stop_stage; and may set extra_prepare_args / extra_lang_args.
#
# Options (all recipes):
#   --corpus-dir DIR     corpus root (an4, librispeech, yesno)
#   --train-dir/--dev-dir/--test-dir DIR   Kaldi data directories (kaldi)
#   --dev-speakers N / --test-speakers N   carve speaker-disjoint dev/test sets out of train
#   --download           fetch the corpus into --corpus-dir first (librispeech: Mini LibriSpeech; yesno)
#   --lexicon FILE       corpus dictionary (CMU/Sphinx, CMUdict with stress, Kaldi lexicon.txt or lexiconp.txt),
#                        used before CMUdict and the grapheme fallback
#   --lm ARPA            decode with this ARPA LM (any order, plain or .gz) instead of one estimated on train
#   --lm-text FILE  --lm-order N   more LM text (one sentence per line) and the estimated n-gram's order (2)
#   --exp-dir DIR  --stage N  --stop-stage N  --jobs N  --force
#   --num-teachers K  --device cpu|cuda  --nproc N (torchrun data-parallel ranks for stages 4 and 6)
#   --frames auto|resident|stream   stages 4-6's frame path (stream: memory does not grow with the corpus)
#   --dev-tuning lattice|search|grid   how stages 3, 5 and 6 choose the acoustic scale and word penalty on dev
#   --gmm-args "..."  --teacher-args "..."  --distill-args "..."   extra options for `asr-distill gmm` /
#                        `train-teachers` / `distill`
#
# Stages (each skipped when EXP/.done/<name> exists; --force redoes the selected ones):
#   0 manifests   1 features   2 lang + HCLG   3 GMM chain mono -> tri1 -> tri2 (LDA+MLLT) -> tri3 (SAT), each
#   decoded; the last one's alignments label the frames (--gmm-args "--gmm-stages mono" for monophone targets)
#   4 teachers    5 teacher + ensemble evaluation   6 distillation   7 results table   8 export (the student to
#   ship, and any streaming student with causal CMVN)
set -euo pipefail

stage=${stage:-0}
jobs=${jobs:-2}
device=${device:-cpu}
nproc=${nproc:-1}
frames=${frames:-auto}
dev_tuning=${dev_tuning:-lattice}
force=
prepare_args=(${extra_prepare_args:-})
lang_args=(${extra_lang_args:-})

# --help: the recipe's own header, then the shared options and stages above
usage() { sed -n '2,/^[^#]/{/^#/p}' "$0"; sed -n '6,/^set -euo/{/^#/p}' "${BASH_SOURCE[0]}"; exit 1; }
die() { echo "$(basename "$0"): $*" >&2; exit 1; }
while [ $# -gt 0 ]; do
  case "$1" in
    --download|--force|-h|--help) ;;
    -*) [ $# -ge 2 ] || die "option $1 needs a value";;
  esac
  case "$1" in
    --corpus-dir) corpus_dir=$2; shift 2;;
    --train-dir|--dev-dir|--test-dir|--dev-speakers|--test-speakers) prepare_args+=("$1" "$2"); shift 2;;
    --download) prepare_args+=(--download); shift;;
    --lexicon) lexicon=$2; shift 2;;
    --lm|--lm-text|--lm-order) lang_args+=("$1" "$2"); shift 2;;
    --dev-tuning) dev_tuning=$2; shift 2;;
    --exp-dir) exp_dir=$2; shift 2;;
    --stage) stage=$2; shift 2;;
    --stop-stage) stop_stage=$2; shift 2;;
    --jobs) jobs=$2; shift 2;;
    --num-teachers) num_teachers=$2; shift 2;;
    --device) device=$2; shift 2;;
    --nproc) nproc=$2; shift 2;;
    --frames) frames=$2; shift 2;;
    --teacher-args) teacher_args=$2; shift 2;;
    --distill-args) distill_args=$2; shift 2;;
    --gmm-args) gmm_args=$2; shift 2;;
    --force) force=--force; shift;;
    -h|--help) usage;;
    *) echo "unknown option $1" >&2; usage;;
  esac
done

# Validate before any work: a stage range that selects nothing, or is not made of numbers, is an error.
for v in stage stop_stage; do
  [[ "${!v}" =~ ^[0-9]+$ ]] && [ "${!v}" -le 8 ] || die "--${v//_/-} ${!v}: expected a stage number 0-8"
done
[ "$stage" -le "$stop_stage" ] || die "--stage $stage is after --stop-stage $stop_stage: nothing would run"
case "$frames" in auto|resident|stream) ;; *) die "--frames $frames: expected auto, resident or stream";; esac

# The recipes run in the environment `make demo` / `make test` create.
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
if [ -z "${VIRTUAL_ENV:-}" ] && [ -x "$here/.venv/bin/asr-distill" ]; then PATH="$here/.venv/bin:$PATH"; fi
command -v asr-distill >/dev/null || { echo "asr-distill not found: run 'make venv' first" >&2; exit 1; }

log() { echo "$(date '+%H:%M:%S') [$corpus] $*"; }
common=(--exp-dir "$exp_dir" --corpus "$corpus" $force)
# Stages 4 and 6 train: with --nproc N > 1 they run data-parallel under torchrun (rank 0 writes every file).
train_cmd=(asr-distill)
if [ "$nproc" -gt 1 ]; then train_cmd=(torchrun --standalone --nproc_per_node "$nproc" "$(command -v asr-distill)"); fi

if [ $stage -le 0 ] && [ $stop_stage -ge 0 ]; then
  log "stage 0: manifests"
  asr-distill prepare "${common[@]}" ${corpus_dir:+--corpus-dir "$corpus_dir"} "${prepare_args[@]}"
fi
if [ $stage -le 1 ] && [ $stop_stage -ge 1 ]; then
  log "stage 1: features (fbank 40, MFCC 13) + per-speaker CMVN"
  asr-distill features "${common[@]}"
fi
if [ $stage -le 2 ] && [ $stop_stage -ge 2 ]; then
  log "stage 2: lexicon (${lexicon:-no corpus dictionary} + CMUdict + grapheme fallback), LM, HCLG"
  asr-distill lang "${common[@]}" ${lexicon:+--lexicon "$lexicon"} "${lang_args[@]}"
fi
if [ $stage -le 3 ] && [ $stop_stage -ge 3 ]; then
  log "stage 3: GMM-HMM chain (senones from tied-state triphone trees), alignments, GMM decodes"
  asr-distill gmm "${common[@]}" --jobs $jobs --dev-tuning $dev_tuning ${gmm_args:-}
fi
if [ $stage -le 4 ] && [ $stop_stage -ge 4 ]; then
  log "stage 4: $num_teachers DNN teachers"
  "${train_cmd[@]}" train-teachers "${common[@]}" --num-teachers $num_teachers --device $device --frames $frames $teacher_args
fi
if [ $stage -le 5 ] && [ $stop_stage -ge 5 ]; then
  log "stage 5: evaluate teachers and their ensemble"
  asr-distill evaluate "${common[@]}" --jobs $jobs --device $device --frames $frames --dev-tuning $dev_tuning
fi
if [ $stage -le 6 ] && [ $stop_stage -ge 6 ]; then
  log "stage 6: distillation (baseline + student)"
  "${train_cmd[@]}" distill "${common[@]}" --jobs $jobs --device $device --frames $frames --dev-tuning $dev_tuning $distill_args
fi
if [ $stage -le 7 ] && [ $stop_stage -ge 7 ]; then
  log "stage 7: results"
  asr-distill results --exp-dir "$exp_dir"
fi
if [ $stage -le 8 ] && [ $stop_stage -ge 8 ]; then
  log "stage 8: export the smallest student within 0.5 dev WER points of the ensemble (TorchScript + ONNX + int8) to $exp_dir/export/student"
  asr-distill export --exp-dir "$exp_dir" --system auto --out-dir "$exp_dir/export/student"
  # streaming students (stage 6's --experiments streaming), with the causal CMVN that transcribe --stream needs
  for d in "$exp_dir"/distill/student-stream-r*; do
    [ -f "$d/best.pt" ] || continue
    log "stage 8: export $(basename "$d") with --cmvn online to $exp_dir/export/$(basename "$d")"
    asr-distill export --exp-dir "$exp_dir" --system "$(basename "$d")" --cmvn online --out-dir "$exp_dir/export/$(basename "$d")"
  done
fi
