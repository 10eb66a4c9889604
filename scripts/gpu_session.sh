#!/usr/bin/env bash
# Everything that needs a GPU, in one go, for a short lease on a GPU machine:
#   1. two from-scratch CamVid runs of the recipe the CPU search chose (configs/camvid-compact-v2.toml:
#      the shipped model's recipe with a Lovasz-softmax + cross-entropy loss and no class weights),
#      started first because they matter most:
#        A  on train, validated on val: says on val whether the recipe beats the shipped model;
#        B  on train+val, no validation: the file to ship if, and only if, A beats it on val;
#   2. the CUDA test module, alongside (correctness only, timings not taken);
#   3. the predict throughput benchmark, after training, on an otherwise idle GPU.
# Usage: OUT=dir TRAIN_SECONDS=360 EPOCHS=180 scripts/gpu_session.sh
# Data: a CamVid copy at .gpu/camvid (train.txt/val.txt lists; see scripts/pack_camvid.py).
# Results: $OUT/{A,B}_{best,last}.pt (float16 weights) and $OUT/logs.tgz. Ship B's last.pt with
# scripts/export_pretrained.py only when A's val mean IU beats the shipped model's (model card).
set -u
OUT=${OUT:-gpu_out}
TRAIN_SECONDS=${TRAIN_SECONDS:-360}
EPOCHS=${EPOCHS:-180}
DEVICE=${DEVICE:-cuda}  # cpu for a dry run of this script
mkdir -p "$OUT" logs
export PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nproc
  python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"; } \
  > logs/machine.txt 2>&1
cat logs/machine.txt

train() {  # name, data, extra options
  local name=$1 data=$2; shift 2
  timeout "$TRAIN_SECONDS" python3 -m fcn_label finetune "$data" --config configs/camvid-compact-v2.toml \
    --epochs "$EPOCHS" --set workers=6 --set cache=false --device "$DEVICE" --amp --set channels_last=true \
    --out "runs/$name" "$@" > "logs/train_$name.log" 2>&1
  echo "train $name exit $?" | tee -a "logs/train_$name.log"
}
cat .gpu/camvid/train.txt .gpu/camvid/val.txt > .gpu/camvid/trainval.txt
train A .gpu/camvid/train.txt --val .gpu/camvid/val.txt &
train B .gpu/camvid/trainval.txt &

timeout 150 python3 -m pytest -q tests/test_cuda.py -p no:cacheprovider > logs/cuda_tests.log 2>&1
echo "cuda tests exit $?" >> logs/cuda_tests.log
tail -3 logs/cuda_tests.log
wait
tail -n 3 logs/train_A.log logs/train_B.log

timeout 100 python3 benchmarks/predict_speed.py --device "$DEVICE" --amp --batch-size 16 --workers 4 --images "${BENCH_IMAGES:-192}" \
  --vgg-images "${BENCH_VGG:-64}" --json logs/bench_amp.json > logs/bench.log 2>&1
timeout 50 python3 benchmarks/predict_speed.py --device "$DEVICE" --batch-size 16 --workers 4 --model vgg16 \
  --vgg-images "${BENCH_VGG:-64}" --json logs/bench_fp32.json >> logs/bench.log 2>&1
cat logs/bench.log

python3 - "$OUT" <<'EOF'
import sys
from pathlib import Path
from fcn_label.checkpoint import load_checkpoint, save_checkpoint
out = Path(sys.argv[1])
for run in ("A", "B"):
    for which in ("best", "last"):
        src = Path("runs") / run / f"{which}.pt"
        if src.is_file():
            ck = load_checkpoint(src)
            ck.train_state = None
            save_checkpoint(ck, out / f"{run}_{which}.pt", with_train_state=False, half=True)
EOF
cp runs/A/log.csv logs/A_log.csv 2>/dev/null; cp runs/B/log.csv logs/B_log.csv 2>/dev/null
cp runs/A/config.json logs/A_config.json 2>/dev/null; cp runs/B/config.json logs/B_config.json 2>/dev/null
tar czf "$OUT/logs.tgz" logs
ls -la "$OUT"
