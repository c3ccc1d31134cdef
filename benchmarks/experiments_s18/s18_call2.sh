#!/bin/bash
python3 -m pip install -q --no-deps --no-build-isolation -e . > $OUT/pip.txt 2>&1
MS=1024,2048,2201,4096 PROFILE_M=2201 TAG=s18_layer_linears_large_m timeout 130 python3 .gpu/s18_host.py > $OUT/s18_host_large.log 2>&1; echo "host rc=$?"
grep -E "^(1024|2048|2201|4096) " $OUT/s18_host_large.log
timeout 150 python3 .gpu/s18_prefill_profile.py > $OUT/s18_prefill_profile.log 2>&1; echo "profile rc=$?"
grep -E "^rocm_attn" $OUT/s18_prefill_profile.log | cut -c1-300
timeout 300 python3 -m pytest -q -n 4 -p no:cacheprovider tests/gpu -rfs > $OUT/tests_gpu_full.txt 2>&1; echo "tests rc=$?"
tail -8 $OUT/tests_gpu_full.txt
