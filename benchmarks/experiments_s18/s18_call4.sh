#!/bin/bash
python3 -m pip install -q --no-deps --no-build-isolation -e . > $OUT/pip.txt 2>&1
timeout 520 python3 benchmarks/bench_serving_cb.py --iters 2 \
  --variants hf,rocm_attn_none,rocm_attn_ptpc:TRITON_ATTN,rocm_attn_ptpc_unfused:TRITON_ATTN,rocm_attn_ptpc:ROCM_AITER_FA \
  --out $OUT/bench_serving_cb.json > $OUT/bench_serving_cb.log 2>&1
echo "bench_serving_cb rc=$?"
grep "^|" $OUT/bench_serving_cb.log | tail -14
