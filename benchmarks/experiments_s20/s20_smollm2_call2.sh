#!/bin/bash
# Session 20, call 2 of a pair (call 1 carried .gpuA: `mkdir -p /tmp/s19 && cp .gpuA/part1 /tmp/s19/part1`; this
# one carries .gpuB): the SmolLM2 GPU test, then generate() at 4 lengths in one process, rounded cache vs exact
set -o pipefail
source benchmarks/experiments_s19/s19_smollm2_setup.sh
timeout 200 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_hf_patch_gpu.py -k smollm2 -rfs 2>&1 \
  | grep -v 'Converting\|Loading\|Writing' | tee $OUT/test_smollm2_gpu.txt | tail -3
timeout 150 python3 benchmarks/experiments_s20/s20_generate_lengths.py rounded 2>&1 | grep -v 'Converting\|Loading\|Writing' | tail -6
timeout 170 python3 benchmarks/experiments_s20/s20_generate_lengths.py exact 2>&1 | grep -v 'Converting\|Loading\|Writing' | tail -6
