#!/usr/bin/env bash
# The GPU evidence in one call (bench/gpu.py says what it measures): the CUDA-only tests, then the
# overhead ratios in bf16, into docs/gpu/ (or --out DIR).
#   bash bench/gpu.sh              # one CUDA device; under 8 minutes on an H200
#   bash bench/gpu.sh --cpu --out /tmp/gpu   # the same path, tiny, on the CPU (the test suite runs it)
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
exec python3 bench/gpu.py "$@"
