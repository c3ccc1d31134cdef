#!/bin/bash
# Session 21, call 2 of a pair (call 1 carried .gpuA: `mkdir -p /tmp/s19 && cp .gpuA/part1 /tmp/s19/part1`; this
# one carries .gpuB): the SmolLM2 GPU test on the mid-M routing (its prompts' prefill now runs the Gluon GEMM's
# 128 x 64 tiles at K = 576)
set -o pipefail
source benchmarks/experiments_s19/s19_smollm2_setup.sh
timeout 300 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_hf_patch_gpu.py -k smollm2 -rfs 2>&1 \
  | grep -v 'Converting\|Loading\|Writing' | tee $OUT/test_smollm2_gpu.txt | tail -3
