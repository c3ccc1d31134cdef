#!/bin/bash
# Session 19, call 2 of 2 on one warm machine: the whole tests/gpu with the SmolLM2 test, which earlier runs
# skipped (its package cannot travel whole)
set -o pipefail
source benchmarks/experiments_s19/s19_smollm2_setup.sh  # these lines were inline when it ran
timeout 500 python3 -m pytest -q -n 4 -p no:cacheprovider tests/gpu -rfs 2>&1 | grep -v 'Converting\|Loading\|Writing' \
  | tee $OUT/tests_gpu_full_with_smollm2.txt | tail -8
echo "tests/gpu rc=$?"
