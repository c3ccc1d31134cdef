#!/usr/bin/env bash
# One GPU session: install, env report, tests/gpu, then the benchmarks; results under $OUT
# (or ./results). Usage: bash benchmarks/run_gpu.sh [tests|bench|all] [extra bench args]
set -uo pipefail
what=${1:-all}; shift || true
out=${OUT:-results}; mkdir -p "$out"
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-deps --no-build-isolation -e . >"$out/install.log" 2>&1 || { cat "$out/install.log"; exit 1; }
rocm-attn env | tee "$out/env.txt"
if [ "$what" = tests ] || [ "$what" = all ]; then
  timeout 300 python3 -m pytest tests/gpu -q -x -p no:cacheprovider 2>&1 | tee "$out/tests_gpu.txt" | tail -25
fi
if [ "$what" = bench ] || [ "$what" = all ]; then
  for b in bench_linear bench_attention bench_mla; do
    [ -f benchmarks/$b.py ] && timeout 280 python3 benchmarks/$b.py --out "$out/$b.json" "$@" 2>&1 | tee "$out/$b.txt" | tail -40
  done
fi
