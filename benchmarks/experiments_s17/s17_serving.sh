#!/bin/bash
# Session 17: serving benchmarks (attention steps + HF continuous batching) on the GPU
set -x
python3 -m pip install -q --no-deps --no-build-isolation -e . > $OUT/pip.txt 2>&1
nvidia-smi --query-gpu=name,clocks.sm,power.draw --format=csv > $OUT/gpu.txt
timeout 150 python3 benchmarks/bench_serving.py --out $OUT/bench_serving.json > $OUT/bench_serving.log 2>&1
echo "bench_serving rc=$?"
tail -30 $OUT/bench_serving.log
timeout 400 python3 benchmarks/bench_serving_cb.py --iters 2 \
  --variants hf,rocm_attn_none,rocm_attn_ptpc:TRITON_ATTN,rocm_attn_ptpc:ROCM_AITER_FA \
  --out $OUT/bench_serving_cb.json > $OUT/bench_serving_cb.log 2>&1
echo "bench_serving_cb rc=$?"
tail -25 $OUT/bench_serving_cb.log
