#!/usr/bin/env bash
# GPU benchmarks for one H100 on which nothing can be downloaded (no hub, no trl/datasets on the image):
# random-initialised Llama-shaped ~1.1B model (TinyLlama shape) built from a config, bf16 trunk.
#   bash benchmarks/gpu.sh                 # on the GPU machine; a few minutes
#   BENCH_TINY=1 bash benchmarks/gpu.sh    # same commands, tiny sizes, on CPU (to test the script)
# Prints JSON lines; also writes them to $OUT/gpu-results.jsonl when $OUT is set.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
LOG=${OUT:-$(mktemp -d)}/gpu-results.jsonl
: > "$LOG"
if [ -n "${BENCH_TINY:-}" ]; then
  M=random-llama:tiny; DEV=cpu; DT=float32
  TRAIN=(--batch 2 --prompt-len 8 --response-len 8 --warmup 1 --steps 1 --rounds 1 --threads 1)
  DEC=(--batch-sizes 1,4 --prompt-len 8 --new-tokens 4 --reps 1 --threads 1)
else
  M=random-llama:1b; DEV=cuda; DT=bfloat16
  TRAIN=(--batch 8 --prompt-len 256 --response-len 256 --warmup 2 --steps 5 --rounds 2)
  DEC=(--batch-sizes 1,16 --prompt-len 64 --new-tokens 64 --reps 3)
  "$PY" -c "import torch; print(torch.cuda.get_device_name(0), torch.__version__)"
fi
"$PY" benchmarks/bench_train.py --model "$M" --device "$DEV" --dtype "$DT" "${TRAIN[@]}" \
  --configs dpo,cmpo-lowrank-k2,cmpo-lowrank-k9,cmpo-full-k9 | grep --line-buffered '^{"bench"' | tee -a "$LOG"
"$PY" benchmarks/bench_decode.py --model "$M" --device "$DEV" --dtype "$DT" --k 9 "${DEC[@]}" \
  | grep --line-buffered '^{"bench"' | tee -a "$LOG"
echo "wrote $LOG" >&2
