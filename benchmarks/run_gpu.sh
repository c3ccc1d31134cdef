#!/usr/bin/env bash
# One GPU session: install, env report, tests/gpu file by file, then the benchmarks; results
# under $OUT (or ./results). A lent GPU's time is short: every step has its own timeout and
# writes its own log, so one slow step does not cost the others' results.
#
#   bash benchmarks/run_gpu.sh tests            # tests/gpu only (~5 min on an H100, first-call autotune included)
#   bash benchmarks/run_gpu.sh bench --quick    # kernel benchmarks (extra args go to each script)
#   bash benchmarks/run_gpu.sh tune             # the tuning sweeps (paste their tables back into the kernels)
#   bash benchmarks/run_gpu.sh multi            # 2 GPUs: tensor parallel check + bench, the two soaks side by side
#   bash benchmarks/run_gpu.sh e2e              # end to end, 8 layers of the 8B configs (2 GPUs: one model each)
#   bash benchmarks/run_gpu.sh e2e-torchao      # inductor vs torchao rowwise, 4 layers; carry torchao's wheel in .whl/
#   bash benchmarks/run_gpu.sh fuse             # fused projections on / off (bench_compile, 8 layers)
# The device tool returns at most 8 files: with OUT set, the logs are packed into $OUT/<mode>.tgz at the end.
set -uo pipefail
what=${1:-all}; shift || true
out=${OUT:-results}/$what; mkdir -p "$out"
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then  # carried wheels (torchao, ...): the GPU image cannot reach PyPI
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
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
if [ "$what" = multi ]; then
  timeout 150 torchrun --standalone --nproc-per-node 2 examples/tensor_parallel.py > "$out/tp_tiny.txt" 2>&1
  echo "tp tiny rc=$?"; grep '"ok"' "$out/tp_tiny.txt" | cut -c 1-400
  timeout 240 torchrun --standalone --nproc-per-node 2 examples/tensor_parallel.py --llama8b-layers 4 --batch 8 \
    --seq-len 1024 --bench --budget 0.3 > "$out/tp_llama8b4.txt" 2>&1
  echo "tp llama8b x4 rc=$?"; grep '"ok"' "$out/tp_llama8b4.txt" | cut -c 1-600
  CUDA_VISIBLE_DEVICES=0 timeout 420 python3 benchmarks/soak_attention.py --json "$out/soak_standard.json" \
    > "$out/soak_standard.txt" 2>&1 & p1=$!
  CUDA_VISIBLE_DEVICES=1 timeout 420 python3 benchmarks/soak_attention.py --layout shuffled --backend ROCM_AITER_FA \
    --json "$out/soak_shuffled.json" > "$out/soak_shuffled.txt" 2>&1 & p2=$!
  wait $p1 $p2; tail -n 4 "$out/soak_standard.txt" "$out/soak_shuffled.txt"
fi
if [ "$what" = e2e ] || [ "$what" = e2e-torchao ]; then
  # torchao's FP8 compile autotunes for 3-4 min per shape on an H200: it gets its own call (e2e-torchao)
  variants=inductor,rocm_attn_none,rocm_attn_ptpc:TRITON_ATTN,rocm_attn_ptpc:ROCM_AITER_FA; layers=8
  [ "$what" = e2e-torchao ] && { variants=inductor,torchao_fp8_rowwise; layers=4; }
  CUDA_VISIBLE_DEVICES=0 timeout 540 python3 benchmarks/bench_e2e.py --models llama --layers $layers \
    --variants $variants --out "$out/e2e_llama.json" > "$out/e2e_llama.txt" 2>&1 & p1=$!
  second=1; [ "$(nvidia-smi -L | wc -l)" -lt 2 ] && { wait $p1; second=0; }
  CUDA_VISIBLE_DEVICES=$second timeout 540 python3 benchmarks/bench_e2e.py --models qwen3 --layers $layers \
    --variants $variants --out "$out/e2e_qwen3.json" > "$out/e2e_qwen3.txt" 2>&1 & p2=$!
  wait $p1 $p2 2>/dev/null; grep -h "^| " "$out/e2e_llama.txt" "$out/e2e_qwen3.txt"
fi
if [ "$what" = fuse ]; then
  for f in 0 1; do
    timeout 200 python3 benchmarks/bench_compile.py --layers 8 --fuse-projections $f --out "$out/compile_fuse$f.json" \
      > "$out/compile_fuse$f.txt" 2>&1; tail -n 8 "$out/compile_fuse$f.txt"
  done
fi
if [ "$what" = tune ]; then
  for t in tune_linear tune_decode tune_prefill; do
    timeout 200 python3 "benchmarks/$t.py" --out "$out/$t.json" "$@" > "$out/$t.txt" 2>&1
    tail -30 "$out/$t.txt"
  done
  # the MLA decode sweep (classic + value-split configs; saves after each row, 5-8 min)
  timeout 480 python3 benchmarks/bench_mla.py --tune --out "$out/bench_mla_tune.json" > "$out/bench_mla_tune.txt" 2>&1
  tail -30 "$out/bench_mla_tune.txt"
fi
if [ -n "${OUT:-}" ]; then tar czf "$OUT/$what.tgz" -C "$OUT" "$what" && rm -rf "${OUT:?}/$what"; fi
