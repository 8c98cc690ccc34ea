#!/usr/bin/env bash
# A short check of the real scripts on a CUDA GPU: a few hundred training steps of the default recipe, checkpoints,
# samples, resume, generation, and the throughput printed by the progress bar and by the timers below.
#
# On a machine with the project installed:   bash benchmarks/gpu_check.sh
# On a bare machine with only torch, torchvision, numpy, tqdm and matplotlib: prepare a git-ignored .device/ folder here,
#   mkdir -p .device/gz .device/wheels
#   cp <MNIST root>/MNIST/gz/*.gz .device/gz/      # or the four original .gz files
#   pip download --no-deps -d .device/wheels "fastcore<2"
# and carry .device/ along; the script puts the wheels on PYTHONPATH and unpacks MNIST into .device/data/MNIST/raw/.
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${STEPS:-300}
OUT=${OUT:-.device/out}
mkdir -p "$OUT"

export PYTHONPATH=".:$(ls .device/wheels/*.whl 2>/dev/null | tr '\n' ':')${PYTHONPATH:-}"
DATA=${FM_MNIST_DATA:-.device/data}
if [ ! -f "$DATA/MNIST/raw/train-images-idx3-ubyte" ]; then
  mkdir -p "$DATA/MNIST/raw"
  for f in .device/gz/*.gz; do gunzip -c "$f" > "$DATA/MNIST/raw/$(basename "$f" .gz)"; done
fi

python - <<'PY'
import torch, torchvision, platform
print(f'torch {torch.__version__}, torchvision {torchvision.__version__}, python {platform.python_version()}')
print('device:', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no CUDA device')
PY

echo "== default recipe (gpu preset), $STEPS steps"
start=$(date +%s.%N)
python train_main.py --data_dir "$DATA" --results_dir "$OUT/results" --epochs 1 --max_steps_per_epoch "$STEPS" \
  --sample_every 1 --checkpoint_every 1 --device cuda
end=$(date +%s.%N)
python -c "print(f'wall time incl. start-up and sampling: {$end - $start:.1f} s for $STEPS steps of 128 images')"

echo "== resume for one more epoch"
python train_main.py --resume --epochs 2 --results_dir "$OUT/results" --data_dir "$DATA" --device cuda --sample_every 99

echo "== one full epoch of the default recipe (468 steps)"
start=$(date +%s.%N)
python train_main.py --data_dir "$DATA" --results_dir "$OUT/epoch" --epochs 1 --sample_every 99 --checkpoint_every 99 \
  --device cuda --num_samples 8 --num_steps 2 --no_progress
end=$(date +%s.%N)
python -c "print(f'one epoch of the default recipe, including start-up: {$end - $start:.1f} s')"

echo "== one full epoch with torch.compile (first steps include compilation)"
start=$(date +%s.%N)
python train_main.py --data_dir "$DATA" --results_dir "$OUT/compiled" --epochs 1 --sample_every 99 --checkpoint_every 99 \
  --device cuda --num_samples 8 --num_steps 2 --no_progress --compile
end=$(date +%s.%N)
python -c "print(f'one compiled epoch of the default recipe, including start-up and compilation: {$end - $start:.1f} s')"

echo "== class-conditional, $STEPS steps, then digits on demand with 8 NFE"
python train_main.py --data_dir "$DATA" --results_dir "$OUT/cond" --epochs 1 --max_steps_per_epoch "$STEPS" --conditional \
  --sample_every 1 --checkpoint_every 1 --device cuda --no_progress --solver midpoint --num_steps 4
python generate_samples.py --results_dir "$OUT/cond" --digit 7 --guidance_scale 2 --solver midpoint --num_steps 4 \
  --output_dir "$OUT/cond_generated" --save_trajectory --device cuda

echo "== speed benchmark (batch 128), eager and compiled"
python benchmarks/speed.py --preset gpu --device cuda --steps 50 --warmup 10 --json "$OUT/speed_gpu.json"
python benchmarks/speed.py --preset gpu --device cuda --steps 50 --warmup 10 --compile --json "$OUT/speed_gpu_compiled.json"

echo "== generation, streamed in batches"
python generate_samples.py --results_dir "$OUT/results" --num_samples 1000 --num_steps 100 --batch_size 500 \
  --output_dir "$OUT/generated" --save_numpy --seed 0 --device cuda
ls -la "$OUT/results" "$OUT/generated"
