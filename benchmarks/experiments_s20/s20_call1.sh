#!/bin/bash
# Session 20, call 1: tests/gpu in full on the session's code (eager plans, rounded generate cache).
python3 -m pip install -q --no-deps --no-build-isolation -e . > $OUT/pip.txt 2>&1
timeout 560 python3 -m pytest -q -n 4 -p no:cacheprovider tests/gpu -rfs > $OUT/tests_gpu_full.txt 2>&1
echo "tests/gpu rc=$?"
tail -25 $OUT/tests_gpu_full.txt
