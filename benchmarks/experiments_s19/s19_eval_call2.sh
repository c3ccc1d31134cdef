#!/bin/bash
# Session 19, call 2 of 2 on one warm machine: the load-cache check on transformers 5.17, then rocm-attn
# eval on 72k tokens of the Lee corpus on the GPU
set -o pipefail
source benchmarks/experiments_s19/s19_smollm2_setup.sh  # these lines were inline when it ran
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
