#!/usr/bin/env bash
# The one prepared check of fm_mnist's CUDA path (benchmarks/gpu_check.py has the list), on a machine with only torch,
# torchvision, numpy, scipy, tqdm and matplotlib: nothing is installed, the repository's own fm_mnist is used.
#
#   OUT=<folder> bash benchmarks/gpu_check.sh             # on a CUDA GPU; about 5 minutes
#   OUT=$(mktemp -d) bash benchmarks/gpu_check.sh --dry-run   # the same checks on the CPU, tiny sizes (CI runs this)
#
# MNIST: $FM_MNIST_DATA if set, else data/ if it holds MNIST/raw/, else the four gzip files in .device/gz/ (git-ignored;
# copy <MNIST root>/MNIST/gz/*.gz there), unpacked into a temporary folder. Writes at most 8 files to $OUT: the summary
# log, the JSON figures and two sample grids; everything else goes to a temporary folder that is removed.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$(mktemp -d)}
PY=$(command -v python3 || command -v python)
if [ -z "${FM_MNIST_DATA:-}" ]; then
  if [ -f data/MNIST/raw/train-images-idx3-ubyte ]; then export FM_MNIST_DATA=data
  elif ls .device/gz/*.gz >/dev/null 2>&1; then
    FM_MNIST_DATA=$(mktemp -d); export FM_MNIST_DATA
    mkdir -p "$FM_MNIST_DATA/MNIST/raw"
    for f in .device/gz/*.gz; do gunzip -c "$f" > "$FM_MNIST_DATA/MNIST/raw/$(basename "$f" .gz)"; done
  else echo "no MNIST: set FM_MNIST_DATA, or copy the four .gz files into .device/gz/" >&2; exit 2; fi
fi
export PYTHONUNBUFFERED=1
"$PY" benchmarks/gpu_check.py --out "$OUT" "$@"
echo "written to $OUT: $(ls "$OUT" | tr '\n' ' ')"
