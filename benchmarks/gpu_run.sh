#!/usr/bin/env bash
# GPU figures (issue 12): scdr-score with ONNX Runtime's CUDA provider beside the IO floor and the
# CPU provider, on the same machine and file. Needs an NVIDIA GPU and onnxruntime-gpu.
#
#   bash benchmarks/gpu_run.sh [cells] [results_dir]
#
# The file is written with make_atlas.py --distinct-blocks 5 (5 resampled 20k-cell blocks,
# repeated), so that a 1M-cell file takes a minute, not ten, on a borrowed machine.
set -euo pipefail
cells=${1:-1000000}
results=${2:-benchmarks/results}
data=${SCDR_BENCH_DATA:-/tmp/scdr-bench}
mkdir -p "$data" "$results"
python3 -c "import onnxruntime as o; print('onnxruntime', o.__version__, o.get_available_providers())"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
file="$data/atlas_${cells}_10x.h5ad"
[ -e "$file" ] || python3 benchmarks/make_atlas.py "$file" --cells "$cells" --density 10x \
    --distinct-blocks 5
python3 benchmarks/throughput.py --cells "$cells" --data-dir "$data" --device cuda \
    --stages io,forward,scdr,explain --out "$results/throughput_gpu_cuda.json"
python3 benchmarks/throughput.py --cells "$cells" --data-dir "$data" --device cpu \
    --stages forward,scdr,explain --out "$results/throughput_gpu_cpu.json"
