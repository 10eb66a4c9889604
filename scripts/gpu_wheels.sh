#!/usr/bin/env bash
# Wheels the lent GPU machines lack (their Python 3.12 image has torch, torchvision, typer, rich,
# pandas, Pillow, NumPy; not pycocotools, nor pyspng for the png extra), fetched here into .whl/
# (git-ignored), to be carried: run(carry=[".whl"], command="OUT=$OUT bash scripts/gpu_bench.sh").
# gpu_bench.sh and gpu_session.sh install .whl/*.whl into /tmp/site when it is there.
set -euo pipefail
cd "$(dirname "$0")/.."
PLAT=""
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  PLAT="$PLAT --platform $p"
done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $PLAT \
  -d .whl "pycocotools>=2.0.7" "pyspng>=0.1.4"
ls -l .whl
