#!/bin/bash
python3 -m pip install -q --no-deps --no-build-isolation -e . > $OUT/pip.txt 2>&1
timeout 330 python3 -m pytest -q -n 4 -p no:cacheprovider tests/gpu -rfs > $OUT/tests_gpu_full.txt 2>&1; echo "tests rc=$?"
tail -4 $OUT/tests_gpu_full.txt
MS=1,64,1024,2048,4096 PROFILE_M=64 TAG=s18_layer_linears_host_final timeout 150 python3 .gpu/s18_host.py > $OUT/s18_host_final.log 2>&1; echo "host rc=$?"
grep -E "^(1|64|1024|2048|4096) " $OUT/s18_host_final.log
