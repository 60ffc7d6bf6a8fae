#!/usr/bin/env bash
# Every method's CUDA path at a meaningful size, one line per check, logs under $OUT; about
# 8 minutes on one GPU. Usage: bash benchmarks/gpu_check.sh [--cpu]
set -uo pipefail
cd "$(dirname "$0")"
OUT="${OUT:-gpu_check_out}" exec python gpu_check.py "$@"
