"""SmolLM2 patched with compile=True (CUDA-graph decode), generate() at several lengths in one process: wall time
and dynamo's graph count per call. With the rounded generate cache (Config.round_generate_cache) calls up to
256 positions share one cache and one compiled decode; round_generate_cache=False shows the exact-size
behaviour (each longer call a new cache and a recompile)."""
import json, os, sys, time
import torch
from torch._dynamo.utils import counters
import rocm_attn
from rocm_attn.demo import chat_ids, load

OUT = os.environ.get("OUT", "/tmp")
rounded = sys.argv[1] != "exact"
tok, lm = load()
model = rocm_attn.patch(lm, compile=True, round_generate_cache=rounded)
ids = chat_ids(tok, "Explain in two sentences why the sky is blue.", "cuda")
rows = []
torch._dynamo.reset()
counters.clear()
for new in ((64, 96, 128, 160) if rounded else (64, 96)):  # exact: each longer call recompiles (~50 s)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = model.generate(ids, max_new_tokens=new, min_new_tokens=new, do_sample=False)
    torch.cuda.synchronize()
    rows.append({"new_tokens": new, "positions": ids.shape[1] + new, "wall_s": round(time.perf_counter() - t0, 2),
                 "cache_len": model._rocm_attn_generate_cache.pool_max_len,
                 "unique_graphs": counters["stats"]["unique_graphs"]})
    print(json.dumps(rows[-1]), flush=True)
json.dump({"rounded": rounded, "prompt_tokens": ids.shape[1], "rows": rows},
          open(f"{OUT}/generate_lengths_{'rounded' if rounded else 'exact'}.json", "w"), indent=1)
