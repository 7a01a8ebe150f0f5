#!/usr/bin/env bash
# All GPU measurements of this project in one go (one CUDA machine, ~8 minutes):
#   CUDA/AMP/DDP-over-CUDA tests, the MNIST paper preset (lambdas in parallel) and quick preset,
#   the center-loss scaling benchmark and Face-ResNet-27 training throughput.
# Usage: OUT=/some/dir MNIST_DIR=/path/to/mnist bash benchmarks/gpu_session.sh
# Runs from the repository root without installing the package (PYTHONPATH=src).
set -u
OUT=${OUT:-runs/gpu}
mkdir -p "$OUT/work"
W="$OUT/work"
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 CENTERLOSS_MNIST_DIR=${MNIST_DIR:-../shared/data/mnist}
export TQDM_MININTERVAL=30
{ nvidia-smi; python3 -c "import torch,sys; print(sys.version); print('torch', torch.__version__, torch.cuda.get_device_name(0))"; } > "$W/env.txt" 2>&1

# 1. MNIST (background): paper sweep with all lambdas in parallel processes, and the quick preset
( timeout 270 python3 -m centerloss.experiments.mnist --preset paper --device cuda --out "$W/mnist-paper" --set workers=5 \
    > "$W/mnist-paper.log" 2>&1; echo "exit $?" >> "$W/mnist-paper.log" ) &
P1=$!
( timeout 270 python3 -m centerloss.experiments.mnist --preset quick --device cuda --out "$W/mnist-quick" --set workers=2 \
    > "$W/mnist-quick.log" 2>&1; echo "exit $?" >> "$W/mnist-quick.log" ) &
P2=$!

# 2. correctness on CUDA (does not time anything, so sharing the GPU is fine)
timeout 240 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_center_loss.py \
    tests/test_center_loss_ddp.py tests/test_engine_cuda.py > "$W/pytest_cuda.log" 2>&1; echo "exit $?" >> "$W/pytest_cuda.log"

wait $P1 $P2

# 3. timings on an otherwise idle GPU
timeout 100 python3 benchmarks/bench_center_loss.py --device cuda --steps 20 --dense-steps 5 --out "$W/bench" \
    > "$W/bench_center_loss.log" 2>&1; echo "exit $?" >> "$W/bench_center_loss.log"
timeout 100 python3 benchmarks/bench_face_throughput.py --device cuda --out "$W/bench" \
    > "$W/bench_face.log" 2>&1; echo "exit $?" >> "$W/bench_face.log"

tar czf "$OUT/gpu_results.tgz" -C "$W" . && echo "wrote $OUT/gpu_results.tgz"
tail -n 3 "$W"/*.log
