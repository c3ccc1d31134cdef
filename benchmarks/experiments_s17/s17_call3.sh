#!/bin/bash
set -x
python3 -m pip install -q --no-deps --no-build-isolation -e . > $OUT/pip.txt 2>&1
timeout 200 python3 .gpu/s17_mid_m.py > $OUT/s17_mid_m.log 2>&1; echo "mid_m rc=$?"
cat $OUT/s17_mid_m.log | grep '^{'
timeout 340 python3 -m pytest -q -n 4 -p no:cacheprovider tests/gpu -rfs > $OUT/tests_gpu_full.txt 2>&1; echo "tests rc=$?"
tail -8 $OUT/tests_gpu_full.txt
