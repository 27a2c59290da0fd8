#!/usr/bin/env bash
# The GPU paths CPU tests cannot see (issue 19), in one run on one CUDA GPU, offline:
#   benchmarks/gpu_check.sh [OUT_DIR=gpu-check]        (~6-10 min on an H100; prints PASS/FAIL per check)
# 1. fit at 16-mixed and at bf16-mixed with --trainer.gradient_clip_val 1.0 (the foreach AdamW path)
# 2. predict under --trainer.strategy ddp --trainer.devices 1: a real NCCL process group at the predict end
# 3. the tests marked `gpu` (pytest -m gpu): the early GPU check on this GPU, and the NaN guard at 16-mixed: one
#    fp16 overflow the scaler survives does not stop a run; persistent NaN gradients stop it after 20 skipped steps
# 4. the teacher-logit cache's training step makes no host sync (torch.cuda.set_sync_debug_mode("error"))
# 5. the early GPU check (arch list, native bf16) and the corrected precision benchmark (padding to a
#    multiple of 8, a warm-up step for every shape it times)
# Uses the bundled MiniLM and demo data (configs/quickstart.yaml): nothing is downloaded.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-gpu-check}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 WANDB_MODE=offline TOKENIZERS_PARALLELISM=false
results=()
check() {  # check NAME COMMAND...: runs it, logs to $OUT/NAME.log, records PASS/FAIL
    local name=$1; shift
    local start=$SECONDS
    if "$@" > "$OUT/$name.log" 2>&1; then results+=("PASS $name ($((SECONDS - start)) s)"); else results+=("FAIL $name ($((SECONDS - start)) s): see $OUT/$name.log"); fi
    tail -n 3 "$OUT/$name.log"
}
GPU=(--config configs/quickstart.yaml --trainer.accelerator gpu --trainer.devices 1 --trainer.max_epochs 1 --trainer.enable_progress_bar false)

python - <<'PY' | tee "$OUT/device.txt"
import torch
assert torch.cuda.is_available(), "no CUDA device"
d = torch.device("cuda", 0)
print(f"{torch.cuda.get_device_name(d)}, capability {torch.cuda.get_device_capability(d)}, torch {torch.__version__} CUDA {torch.version.cuda}, "
      f"arch list {torch.cuda.get_arch_list()}, native bf16 {torch.cuda.is_bf16_supported(including_emulation=False)}")
from emolightning.hardware import check_gpu
check_gpu(d, "16-mixed"); print("check_gpu(16-mixed): ok")
PY

check fit-16-mixed-clip emolightning fit "${GPU[@]}" --trainer.precision 16-mixed --trainer.gradient_clip_val 1.0 --trainer.default_root_dir "$OUT/fit16"
check fit-bf16-mixed-clip emolightning fit "${GPU[@]}" --trainer.precision bf16-mixed --trainer.gradient_clip_val 1.0 --trainer.default_root_dir "$OUT/fitbf16"

ckpt=$(ls "$OUT"/fit16/lightning_logs/version_*/checkpoints/best-*.ckpt 2>/dev/null | head -1)
config=$(ls "$OUT"/fit16/lightning_logs/version_*/config.yaml 2>/dev/null | head -1)
predict_ddp() {
    emolightning predict --config "$config" --ckpt_path "$ckpt" --trainer.strategy ddp --trainer.devices 1 --trainer.logger false \
        --trainer.default_root_dir "$OUT/predict" --output "$OUT/predict/pred.txt" --data.predict_chunk_batches 2 || return 1
    python - "$OUT/predict/pred.txt" <<'PY'
import sys
from emolightning.data.tables import find_split_file, resolve_data_dir
lines = open(sys.argv[1], encoding="utf-8").read().splitlines()
gold = open(find_split_file(resolve_data_dir("builtin:demo"), "test"), encoding="utf-8").read().splitlines()
assert len(lines) == len(gold) and [l.split("\t")[0] for l in lines[1:]] == [g.split("\t")[0] for g in gold[1:]], (len(lines), len(gold))
print(f"{len(lines) - 1} rows, in the input's order")
PY
}
check predict-ddp-nccl predict_ddp

gpu_tests() {  # the tests marked `gpu` (tests/helpers.py run_if); a skip for want of a GPU fails the check (a bf16 one may skip on a T4)
    local log
    log=$(python -m pytest -q -p no:cacheprovider -rs -m gpu tests 2>&1)
    local rc=$?
    echo "$log"
    [ "$rc" -eq 0 ] && ! grep -q "CUDA GPU.*found" <<< "$log"
}
check gpu-tests gpu_tests

check teacher-cache-no-sync python - <<'PY'
import torch
from emolightning import EmotionClassifier, EmotionDistiller
ENC = "sentence-transformers/all-MiniLM-L6-v2"
labels = [f"l{i}" for i in range(11)]
torch.save({"state_dict": EmotionClassifier(ENC, labels, lr=1e-3).state_dict(), "hyper_parameters": dict(EmotionClassifier(ENC, labels, lr=1e-3).hparams), "pytorch-lightning_version": "2"}, "/tmp/teacher.ckpt")
m = EmotionDistiller(ENC, labels, lr=1e-3, teacher="/tmp/teacher.ckpt", student_layers=[0], cache_teacher_logits=True).cuda()
m._cache = torch.randn(1000, 11, device="cuda")
index = torch.randint(0, 1000, (32,), device="cuda")
torch.cuda.set_sync_debug_mode("error")
logits, _ = m.teacher_outputs({"input_ids": None, "attention_mask": None, "index": index})
torch.cuda.set_sync_debug_mode(0)
assert torch.equal(logits, m._cache[index]); print("teacher_outputs with the cache: no host sync")
PY

check precision-benchmark python benchmarks/gpu_precision.py --steps 50 --output_json "$OUT/gpu_precision.json"
check precision-benchmark-unpadded python benchmarks/gpu_precision.py --models distilbert-base --steps 50 --pad_to_multiple_of 1 --output_json "$OUT/gpu_precision_unpadded.json"

echo; cat "$OUT/device.txt"; printf '%s\n' "${results[@]}" | tee "$OUT/summary.txt"
! grep -q '^FAIL' "$OUT/summary.txt"
