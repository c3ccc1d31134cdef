"""Host time per mla_decode call (eager, no CUDA graph) and where it goes (cProfile). argv[1]: tag."""
import cProfile, io, json, os, pstats, sys, time
import torch
sys.path.insert(0, "benchmarks")
OUT = os.environ.get("OUT", "/tmp/out"); tag = sys.argv[1]
import rocm_attn  # noqa
import bench_mla as bm
from rocm_attn.kernels.triton_kernels import mla_decode as md
res = {}
for batch, ctx in ((1, 4096), (64, 4096)):
    cache, table, lens, q = bm.decode_setup(batch, ctx)
    op = torch.ops.rocm_attn.mla_decode
    f = lambda: op(q, cache.latent_cache, lens, table, 0.1352, 512)
    for _ in range(5): f()
    torch.cuda.synchronize()
    picked = md.tuned_config(q, 512, latent_cache=cache.latent_cache)
    n = 200
    t0 = time.perf_counter()
    for _ in range(n): f()
    t_enq = (time.perf_counter() - t0) / n
    torch.cuda.synchronize(); t_all = (time.perf_counter() - t0) / n
    gpu = bm.bench(f)
    pr = cProfile.Profile(); pr.enable()
    for _ in range(n): f()
    pr.disable(); torch.cuda.synchronize()
    s = io.StringIO(); pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(25)
    res[f"{batch}x{ctx}"] = dict(picked=picked.name if picked else None, enqueue_us=t_enq * 1e6, synced_us=t_all * 1e6,
                                 gpu_us=gpu * 1e3, profile=s.getvalue()[-6000:])
    print(batch, ctx, picked.name if picked else None, "enqueue %.1f us, synced %.1f us, gpu %.1f us" % (t_enq * 1e6, t_all * 1e6, gpu * 1e3), flush=True)
    del cache, q; torch.cuda.empty_cache()
print(res["1x4096"]["profile"][:3500])
json.dump(res, open(f"{OUT}/s15_host_{tag}.json", "w"), indent=1)
