#!/usr/bin/env bash
# One GPU session: install, env report, tests/gpu file by file, then the benchmarks; results
# under $OUT (or ./results). A lent GPU's time is short: every step has its own timeout and
# writes its own log, so one slow step does not cost the others' results.
#
#   bash benchmarks/run_gpu.sh tests            # tests/gpu only (~5 min on an H100, first-call autotune included)
#   bash benchmarks/run_gpu.sh bench --quick    # kernel benchmarks (extra args go to each script)
#   bash benchmarks/run_gpu.sh tune             # the tuning sweeps (paste their tables back into the kernels)
set -uo pipefail
what=${1:-all}; shift || true
out=${OUT:-results}; mkdir -p "$out"
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-deps --no-build-isolation -e . >"$out/install.log" 2>&1 || { cat "$out/install.log"; exit 1; }
rocm-attn env > "$out/env.txt" 2>&1
if [ "$what" = tests ] || [ "$what" = all ]; then
  # the linear file autotunes many GEMM shapes on first use: it runs last, with the longest timeout
  for f in $(ls tests/gpu/test_*.py | grep -v test_linear_gpu) tests/gpu/test_linear_gpu.py; do
    name=$(basename "$f" .py)
    limit=150; [ "$name" = test_linear_gpu ] && limit=300
    timeout $limit python3 -m pytest "$f" -q -p no:cacheprovider -rf > "$out/$name.txt" 2>&1
    echo "$name: $(tail -1 "$out/$name.txt")"
  done
fi
if [ "$what" = bench ] || [ "$what" = all ]; then
  for b in bench_linear bench_attention bench_mla; do
    timeout 240 python3 "benchmarks/$b.py" --out "$out/$b.json" "$@" > "$out/$b.txt" 2>&1
    tail -30 "$out/$b.txt"
  done
  timeout 240 python3 benchmarks/bench_compile.py --layers 8 --out "$out/bench_compile.json" > "$out/bench_compile.txt" 2>&1
  tail -12 "$out/bench_compile.txt"
fi
if [ "$what" = tune ]; then
  for t in tune_linear tune_decode tune_prefill; do
    timeout 200 python3 "benchmarks/$t.py" --out "$out/$t.json" "$@" > "$out/$t.txt" 2>&1
    tail -30 "$out/$t.txt"
  done
fi
