#!/bin/bash
# Session 20, call 2: host time of eager PTPC linears, plans vs the op (s20_host.py), then HF continuous
# batching with and without the plans (bench_serving_cb.py, rocm_attn_ptpc_op is the op-path A/B).
python3 -m pip install -q --no-deps --no-build-isolation -e . > $OUT/pip.txt 2>&1
MS=1,64,512,2048 timeout 200 python3 benchmarks/experiments_s20/s20_host.py > $OUT/s20_host.log 2>&1
echo "s20_host rc=$?"; grep -v "^ " $OUT/s20_host.log | head -30
timeout 330 python3 benchmarks/bench_serving_cb.py --iters 2 \
  --variants hf,rocm_attn_ptpc:TRITON_ATTN,rocm_attn_ptpc_op:TRITON_ATTN,rocm_attn_none \
  --out $OUT/bench_serving_cb.json > $OUT/bench_serving_cb.log 2>&1
echo "bench_serving_cb rc=$?"
grep "^|" $OUT/bench_serving_cb.log | tail -14
