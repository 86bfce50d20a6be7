#!/usr/bin/env bash
# One command on a GPU machine: builds the full-size random-weight models and runs, side by
# side on cuda:0, FunASR's plain loop, FunASR list batching (fp32 and bf16 autocast), our
# service with `generate`, and our service with `direct` (fp32 and bf16) at concurrency 1, 32,
# 256 and 1024 with 10 s clips (SenseVoiceSmall size), then one 10-minute file through VAD.
# Writes JSON and Markdown into OUT_DIR (default bench-gpu-<time>) and prints the report.
#
#   bench/gpu.sh [OUT_DIR]
#
# Installs what it needs itself: a missing .venv is created with `make venv` (PyPI's torch
# wheel, which is the CUDA build on x86-64 Linux). Budget: under 8 minutes on one H100/H200
# (each step has its own timeout; a step that runs out is reported, the others still run).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:-bench-gpu-$(date -u +%Y%m%d-%H%M%S)}
MODELS=${ASR_BENCH_MODELS:-build/bench-models}
PY=.venv/bin/python
mkdir -p "$OUT_DIR" "$MODELS"

[ -x "$PY" ] || make venv || exit 1
"$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "no CUDA GPU")' \
    || exit 1
DEVICE_NAME=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
echo "device: $DEVICE_NAME" | tee "$OUT_DIR/device.txt"

# Full-size random-weight models (sensevoice-small ~234M) and the real FSMN-VAD.
timeout 300 .venv/bin/asr-scheduler make-models "$MODELS" --all >"$OUT_DIR/make-models.log" 2>&1 \
    || { echo "make-models failed; see $OUT_DIR/make-models.log"; exit 1; }

# Batches of up to 256 clips of 10 s on the GPU.
export ASR_MAX_BATCH_AUDIO_S=2600 ASR_CACHE_CLEAR_EVERY=0
status=0
timeout 330 "$PY" bench/throughput.py --model "$MODELS/sensevoice-small" --devices cuda:0 \
    --clips 64 --clip-seconds 10 --concurrency 1,32,256,1024 --workers-per-device 1 \
    --engines generate,direct --dtypes fp32,bf16 --batch-size 64 --max-batch-size 256 \
    --skip-funasr-server --work-dir "$OUT_DIR/throughput-work" --json "$OUT_DIR/throughput.json" \
    >"$OUT_DIR/throughput.md" 2>"$OUT_DIR/throughput.log" || status=$?
[ $status -eq 0 ] || echo "throughput bench failed ($status); see $OUT_DIR/throughput.log"

# One 10-minute file end to end (VAD + recognition), the service's default engine (direct).
lstatus=0
timeout 150 "$PY" bench/long_audio.py --model "$MODELS/sensevoice-small" \
    --vad-model "$MODELS/fsmn-vad" --minutes 10 --files 1 --vad-workers 4 --devices cuda:0 \
    --work-dir "$OUT_DIR/long-work" --json "$OUT_DIR/long_audio.json" \
    >"$OUT_DIR/long_audio.md" 2>"$OUT_DIR/long_audio.log" || lstatus=$?
[ $lstatus -eq 0 ] || echo "long-audio bench failed ($lstatus); see $OUT_DIR/long_audio.log"

{
  echo "# GPU benchmark on $DEVICE_NAME ($(date -u +%Y-%m-%d))"
  echo
  echo "## 10 s clips, SenseVoiceSmall size (bench/throughput.py)"
  echo
  cat "$OUT_DIR/throughput.md"
  echo
  echo "## One 10-minute file through VAD (bench/long_audio.py)"
  echo
  cat "$OUT_DIR/long_audio.md"
} >"$OUT_DIR/report.md"
cat "$OUT_DIR/report.md"
exit $(( status || lstatus ))
