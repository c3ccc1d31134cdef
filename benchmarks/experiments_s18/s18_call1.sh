#!/bin/bash
python3 -m pip install -q --no-deps --no-build-isolation -e . > $OUT/pip.txt 2>&1
nvidia-smi --query-gpu=name,clocks.sm,power.draw --format=csv > $OUT/smi.txt
timeout 100 python3 .gpu/s18_host.py > $OUT/s18_host.log 2>&1; echo "host rc=$?"
tail -5 $OUT/s18_host.log | cut -c1-400
grep -E "^(1|64|512) " $OUT/s18_host.log
timeout 440 python3 benchmarks/bench_serving_cb.py --iters 2 \
  --variants hf,rocm_attn_none,rocm_attn_ptpc:TRITON_ATTN,rocm_attn_ptpc_unfused:TRITON_ATTN \
  --out $OUT/bench_serving_cb.json > $OUT/bench_serving_cb.log 2>&1
echo "bench_serving_cb rc=$?"
grep "^|" $OUT/bench_serving_cb.log | tail -12
