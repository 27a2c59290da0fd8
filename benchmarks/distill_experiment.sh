#!/usr/bin/env bash
# The distillation experiment on SemEval-2018 E-c, run from the repository root:
#   1. teacher:   MiniLM-L6 fine-tuned with configs/semeval/minilm-l6.yaml (skipped if TEACHER=path.ckpt is set)
#   2. distilled: a 3-layer student (teacher layers 0, 2, 4 + embeddings + head), configs/distill/minilm-l6-to-l3.yaml
#   3. plain:     the same 3-layer student fine-tuned without a teacher, configs/semeval/minilm-l3.yaml
#   4. dev metrics of all three and their forward-pass speed, side by side (benchmarks/distill_compare.py)
#
#   benchmarks/distill_experiment.sh ../shared/data/semeval2018-ec runs/distill-experiment
#   TEACHER=runs/semeval/minilm-l6/lightning_logs/version_0/checkpoints/best-2-1284.ckpt benchmarks/distill_experiment.sh ../shared/data/semeval2018-ec
#
# Arguments after OUT_DIR go to every `emolightning fit` (e.g. --config configs/trainer/t4.yaml, or a
# smoke test: --trainer.max_epochs 1 --trainer.limit_train_batches 2); COMPARE_ARGS to the comparison
# (e.g. COMPARE_ARGS="--timing_texts 0 --repeats 7"). Everything lands in OUT_DIR, the table in OUT_DIR/results.json.
set -euo pipefail
DATA=${1:?usage: benchmarks/distill_experiment.sh DATA_DIR [OUT_DIR] [extra emolightning fit args...]}
OUT=${2:-runs/distill-experiment}
shift $(( $# >= 2 ? 2 : 1 ))

best() {  # the best checkpoint (on val/jaccard) of the newest run under $1
  local run
  run=$(ls -td "$1"/lightning_logs/version_* | head -1)
  ls "$run"/checkpoints/best-*.ckpt | head -1
}

if [ -z "${TEACHER:-}" ]; then
  emolightning fit --config configs/semeval/minilm-l6.yaml --data.data_dir "$DATA" --trainer.default_root_dir "$OUT/teacher" "$@"
  TEACHER=$(best "$OUT/teacher")
fi
echo "teacher: $TEACHER"

emolightning fit --config configs/distill/minilm-l6-to-l3.yaml --data.data_dir "$DATA" --trainer.default_root_dir "$OUT/distilled" \
  --model.init_args.teacher "$TEACHER" "$@"
emolightning fit --config configs/semeval/minilm-l3.yaml --data.data_dir "$DATA" --trainer.default_root_dir "$OUT/plain" "$@"

# shellcheck disable=SC2086  # COMPARE_ARGS is a list of options
python benchmarks/distill_compare.py --data_dir "$DATA" --output_json "$OUT/results.json" \
  --ckpt "teacher-l6=$TEACHER" --ckpt "distilled-l3=$(best "$OUT/distilled")" --ckpt "plain-l3=$(best "$OUT/plain")" ${COMPARE_ARGS:-}
