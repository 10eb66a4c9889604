#!/usr/bin/env bash
# Issue #14 goal 5 in one short GPU lease (< 10 minutes): every GPU throughput figure, then the
# CUDA tests. Each step has its own timeout, so one slow step cannot eat the lease.
#   1. network alone, VGG16 FCN-8s at 500x375: fp32 / TF32 / AMP fp16 / AMP bf16 / fp16 and bf16
#      weights / NCHW vs channels_last / torch.compile / CUDA graphs, batches 16, 32, 64
#      (target >= 1,000 img/s; amp16 vs half16 shows whether AMP's per-call weight casts are why
#      AMP ran slower than TF32); plus JPEG decoding on the GPU vs PIL on one core;
#   2. VGG16 half16 vs torch.compile vs CUDA graphs at batch 32; the compact model (fewer variants);
#   3. end to end vs network alone, mixed sizes, compact and VGG16 (target e2e >= 80%),
#      --workers 4 and predict's default (from the core count: 7 on 16 cores);
#   4. the host pipeline's ceiling: --model none, --workers 1, 4 and the default (16 cores);
#   5. all-JPEG frames end to end, decoded by Pillow in the workers vs predict --gpu-jpeg (nvJPEG batches);
#   6. predict --engine ray on a one-node Ray cluster vs the local engine vs the network alone (where Ray is installed);
#   7. tests/test_cuda.py (pinned-memory staging and --gpu-jpeg among them).
# Usage: OUT=dir scripts/gpu_bench.sh            (on the GPU machine, from the repository root)
#        DRY=1 scripts/gpu_bench.sh              (CPU dry run of every Python step at toy sizes)
# Results: $OUT/*.json, $OUT/*.log, $OUT/summary.md.
set -u
OUT=${OUT:-gpu_bench_out}
DRY=${DRY:-0}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
PY=${PY:-python3}
TMUL=1
if [ "$DRY" = 1 ]; then
  TMUL=4  # a CPU takes longer; the dry run checks the code paths, not the time
  DEV=cpu; SIZE=64x96; VB=2; VB1=2; CB=2; ROUNDS="--rounds 1 --iters 1"; N=8; NV=2; DEC=8; WK="1,default"; WK_NONE="1,default"
else
  DEV=cuda; SIZE=375x500; VB=16,32,64; VB1=32; CB=16,64; ROUNDS="--rounds 5 --iters 5"; N=192; NV=64; DEC=256; WK="4,default"; WK_NONE="1,4,default"
fi
T0=$SECONDS
step() {  # name, timeout seconds, command...
  local name=$1 limit=$2; shift 2
  local t=$SECONDS
  timeout "$((limit * TMUL))" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "## $name (exit $rc, $((SECONDS - t)) s; $((SECONDS - T0)) s so far)" | tee -a "$OUT/summary.md"
  grep -E '^\||^device|^hardware|^decode|^machine|^frames|^same masks' "$OUT/$name.log" >> "$OUT/summary.md"
  echo >> "$OUT/summary.md"
}
: > "$OUT/summary.md"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"; nproc
  $PY -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"; } \
  > "$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt" | tee -a "$OUT/summary.md"

step vgg16_forward 85 $PY benchmarks/gpu_forward.py --device $DEV --model vgg16 --size $SIZE --batch $VB $ROUNDS \
  --variants fp32,tf32,amp16,amp_bf16,half16,half_bf16,tf32_nchw,half16_nchw --budget 68 --decode $DEC \
  --json "$OUT/vgg16_forward.json"
step vgg16_compiled 70 $PY benchmarks/gpu_forward.py --device $DEV --model vgg16 --size $SIZE --batch $VB1 $ROUNDS \
  --variants half16,compile16,graphs16 --budget 50 --json "$OUT/vgg16_compiled.json"
step compact_forward 45 $PY benchmarks/gpu_forward.py --device $DEV --model compact --size $SIZE --batch $CB $ROUNDS \
  --variants tf32,amp16,half16,half_bf16,compile16,graphs16 --budget 30 --json "$OUT/compact_forward.json"
step e2e_compact 65 $PY benchmarks/predict_speed.py --device $DEV --model compact --batch-size 16 --workers $WK \
  --images $N --json "$OUT/e2e_compact.json"
step e2e_vgg16 50 $PY benchmarks/predict_speed.py --device $DEV --model vgg16 --batch-size 16 --workers $WK \
  --vgg-images $NV --json "$OUT/e2e_vgg16.json"
step host_ceiling 35 $PY benchmarks/predict_speed.py --device $DEV --model none --batch-size 16 --workers $WK_NONE \
  --images $N --json "$OUT/host_ceiling.json"
step gpu_jpeg 35 $PY benchmarks/predict_speed.py --device $DEV --model compact --batch-size 16 --workers default \
  --images $N --formats jpeg --jpeg-decoder pillow,device --json "$OUT/gpu_jpeg.json"
# predict --engine ray end to end (a one-node Ray cluster on this machine, one GPU actor) vs the local engine and
# the network alone, on the same frames; needs ray[data] in the image (its wheels are too big to carry in .whl)
if $PY -c "import ray.data" >/dev/null 2>&1; then
  step ray_engine 120 $PY benchmarks/ray_engine.py --device $DEV --n $N --runs local,ray1 --batch-size 16 \
    --json "$OUT/ray_engine.json"
else
  echo "## ray_engine: skipped (no Ray here: pip install \"fcn-label[ray]\")" | tee -a "$OUT/summary.md"
fi
if [ "$DRY" = 1 ]; then
  echo "## cuda tests: skipped in a dry run" | tee -a "$OUT/summary.md"
else
  step cuda_tests 95 $PY -m pytest -q tests/test_cuda.py -p no:cacheprovider
  tail -3 "$OUT/cuda_tests.log" >> "$OUT/summary.md"
fi
echo "total $((SECONDS - T0)) s" | tee -a "$OUT/summary.md"
