#!/usr/bin/env bash
# Every CPU figure of the documentation's Performance page (docs/performance.md) in one run. Run it on an otherwise idle machine:
# the figures are only comparable side by side within one run.
#   bash scripts/cpu_bench.sh [OUT_DIR]      (PY=path/to/python to choose the interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${1:-runs/cpu_bench}
mkdir -p "$OUT"
{ lscpu | grep -E "Model name|^CPU\(s\)"; $PY -c "import torch; print('torch', torch.__version__, torch.get_num_threads(), 'threads')"; } | tee "$OUT/machine.txt"
# goal 1: end to end per backend beside the plain fp32 forward of the same checkpoint (CamVid frames, 480x360),
# with one process (--procs 1) and predict's default (one one-thread pipeline per core)
$PY benchmarks/predict_speed.py --model compact --images 96 --size 360x480 --backends eager,bf16 --procs 1,default \
    --workers 1 --json "$OUT/backends.json" | tee "$OUT/backends.md"
$PY benchmarks/predict_speed.py --model compact --images 96 --size 360x480 --backends ort-int8 \
    --workers 1 --json "$OUT/backends_ort.json" | tee "$OUT/backends_ort.md"
# goal 2: the host pipeline's ceiling (a stand-in network that costs nothing): one process with 1 and 2
# decoding workers, and predict's default processes with libspng (the png extra) and with Pillow alone;
# 768 frames, so the job's start-up (forks, scan, reports: ~0.2 s, goal 3's concern) is not counted as per-image work
$PY benchmarks/predict_speed.py --model none --images 768 --size 360x480 --workers 1,2 --procs 1 --json "$OUT/host.json" | tee "$OUT/host.md"
$PY benchmarks/predict_speed.py --model none --images 768 --size 360x480 --workers 1 --png-decoder auto,pillow \
    --json "$OUT/host_procs.json" | tee "$OUT/host_procs.md"
# goal 2 as the issue states it: 480x360 PNG only
$PY benchmarks/predict_speed.py --model none --images 768 --size 360x480 --workers 1 --png-decoder auto,pillow --formats png \
    --json "$OUT/host_png.json" | tee "$OUT/host_png.md"
# goal 3: fixed cost per image (2,000 tiny images, half PNG half JPEG) and the no-op re-run
$PY benchmarks/tiny_images.py --images 2000 | tee "$OUT/tiny.txt"
# goal 4: a million-image job's resume scan and reports (synthetic records)
$PY benchmarks/million.py --n 1000000 | tee "$OUT/million.txt"
