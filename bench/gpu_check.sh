#!/usr/bin/env bash
# Issue 17's GPU check, one run of at most ~8 minutes on one CUDA GPU with torch already installed:
# bench/memory.py for an 8B-shaped Llama (Llama-3.1-8B's layers, random weights built in code on
# the GPU, saved as bf16 safetensors, ~15 GiB), every step on cuda, with peak
# torch.cuda.max_memory_allocated and peak RSS per step. First the current code ("after"), then,
# while time is left and git can export it, the code before issue 17 ("before", commit 22df712).
#
#   OUT=/some/folder bash bench/gpu_check.sh        # results: $OUT/memory-8b.md, $OUT/result-*.json, logs
#
# Every step has its own timeout; a step that runs out is recorded as "timeout", never dropped.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/out/gpu}
mkdir -p "$OUT"
START=$(date +%s)
BUDGET=${BUDGET:-450}                       # seconds for everything after the install
left() { echo $(( BUDGET - ($(date +%s) - START) )); }
log() { echo "[$(( $(date +%s) - START ))s] $*" | tee -a "$OUT/gpu_check.log"; }

python -c "import torch; assert torch.cuda.is_available(), 'no CUDA'; print(torch.__version__, torch.cuda.get_device_name(0))" \
  2>&1 | tee -a "$OUT/gpu_check.log" || { log "torch with CUDA is missing: nothing to measure"; exit 1; }
# torch is present, so pip keeps it; the rest comes from PyPI (bitsandbytes for --load-in-4bit).
timeout 150 pip install -q -e '.[quant]' >>"$OUT/gpu_check.log" 2>&1 || log "pip install failed or timed out (see log)"
python -c "import tunewise.model.load" || { log "tunewise does not import"; exit 1; }
START=$(date +%s)

export MEMORY_BENCH_OUT=$PWD/bench/out/memory-gpu   # the 15 GiB model stays here, not under $OUT
export TUNEWISE_THREADS=8 HF_HUB_OFFLINE=1
log "building the 8B-shaped model on the GPU"
timeout 150 python bench/memory.py build --shape 8b --device cuda >>"$OUT/gpu_check.log" 2>&1 || log "build failed"

for step in score coslow finetune plan; do
  (( $(left) > 40 )) || { log "skipping after/$step: out of time"; continue; }
  log "after/$step"
  python bench/memory.py run --shape 8b --label after --steps "$step" --device cuda --timeout 75 >>"$OUT/gpu_check.log" 2>&1
done

# The code before issue 17 loads fp32 on the CPU and casts, and plan loads a second fp32 copy for CoS-Low.
BEFORE=/tmp/tunewise-before
if git archive 22df712 src >/tmp/before.tar 2>/dev/null; then
  rm -rf "$BEFORE" && mkdir -p "$BEFORE" && tar -xf /tmp/before.tar -C "$BEFORE"
  for step in plan score; do
    (( $(left) > 60 )) || { log "skipping before/$step: out of time"; continue; }
    log "before/$step"
    python bench/memory.py run --shape 8b --label before --src "$BEFORE/src" --steps "$step" --device cuda \
      --timeout $(( $(left) - 20 < 150 ? $(left) - 20 : 150 )) >>"$OUT/gpu_check.log" 2>&1
  done
else
  log "no git history here: the 'before' rows are left out"
fi

cp "$MEMORY_BENCH_OUT"/result-8b-*.json "$OUT"/ 2>/dev/null
for f in "$MEMORY_BENCH_OUT"/work-8b-*/log.txt; do [ -f "$f" ] && tail -c 3000 "$f" >"$OUT/$(basename "$(dirname "$f")").log"; done
python bench/memory.py table --shape 8b | tee "$OUT/memory-8b.md"
nvidia-smi --query-gpu=name,memory.total --format=csv >>"$OUT/gpu_check.log" 2>&1
log "done"
