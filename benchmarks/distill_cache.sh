#!/usr/bin/env bash
# What `cache_teacher_logits` saves: the same distillation (cosine loss off, which caching needs)
# with and without the cache, alternating, on the first N training tweets for E epochs; wall time
# of each `emolightning fit` and the final dev Jaccard (must be equal: the cache is exact when the
# teacher has no dropout, which eval mode guarantees).
#   benchmarks/distill_cache.sh DATA_DIR TEACHER.ckpt [N=800] [EPOCHS=3] [REPEATS=2]
set -euo pipefail
DATA=${1:?usage: benchmarks/distill_cache.sh DATA_DIR TEACHER.ckpt [N] [EPOCHS] [REPEATS]}; TEACHER=${2:?teacher checkpoint}
N=${3:-800}; EPOCHS=${4:-3}; REPEATS=${5:-2}
WORK=$(mktemp -d); trap 'rm -rf "$WORK"' EXIT
head -n $((N + 1)) "$DATA"/*-train.txt > "$WORK/train.txt"
for r in $(seq "$REPEATS"); do
  for cache in false true; do
    start=$(date +%s.%N)
    emolightning fit --config configs/distill/minilm-l6-to-l3.yaml --data.train_file "$WORK/train.txt" --data.val_file "$(ls "$DATA"/*-dev.txt)" \
      --model.init_args.teacher "$TEACHER" --model.init_args.cosine_weight 0 --model.init_args.cache_teacher_logits $cache \
      --trainer.max_epochs "$EPOCHS" --trainer.enable_progress_bar false --trainer.default_root_dir "$WORK/run-$cache-$r" > "$WORK/log" 2>&1
    end=$(date +%s.%N)
    echo "repeat $r cache_teacher_logits=$cache: $(echo "$end - $start" | bc) s; $(grep '^\[val epoch' "$WORK/log" | tail -1)"
  done
done
