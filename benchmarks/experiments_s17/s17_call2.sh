#!/bin/bash
set -x
python3 -m pip install -q --no-deps --no-build-isolation -e . > $OUT/pip.txt 2>&1
timeout 120 python3 .gpu/s17_linear_host.py > $OUT/s17_linear_host.log 2>&1; echo "host rc=$?"
grep -E "^(4096|14336)" $OUT/s17_linear_host.log
timeout 200 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_linear_gpu.py tests/gpu/test_mla_decode_gpu.py -rfs -x > $OUT/tests_gpu_linear_mla.txt 2>&1; echo "tests rc=$?"
tail -5 $OUT/tests_gpu_linear_mla.txt
timeout 330 python3 benchmarks/bench_serving_cb.py --iters 2 \
  --variants hf,rocm_attn_none,rocm_attn_ptpc:TRITON_ATTN,rocm_attn_ptpc:ROCM_AITER_FA \
  --out $OUT/bench_serving_cb.json > $OUT/bench_serving_cb.log 2>&1
echo "bench_serving_cb rc=$?"
grep "^|" $OUT/bench_serving_cb.log | tail -12
