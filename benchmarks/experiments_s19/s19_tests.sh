#!/bin/bash
# Session 19: tests/gpu on the final code (conftest's session fixture, xdist), and the CPU test command's
# xdist form on the device stack (torch 2.11, triton 3.6, transformers 5.17) for a subset
set -o pipefail
python3 -m pip install -q --no-deps --no-build-isolation -e . > $OUT/pip.txt 2>&1
python3 -c "import torch, triton, transformers; print(torch.__version__, triton.__version__, transformers.__version__)" | tee $OUT/versions.txt
nvidia-smi --query-gpu=name --format=csv,noheader | tee -a $OUT/versions.txt
git log --oneline -1 | tee -a $OUT/versions.txt
timeout 420 python3 -m pytest -q -n 4 -p no:cacheprovider tests/gpu -rfs 2>&1 | tee $OUT/tests_gpu_full.txt | tail -15
echo "tests/gpu rc=$?"
