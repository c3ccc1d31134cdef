"""Host time per eager mla_decode call: the compiled-launch path (launch_cache) against the JIT path (the kept
compiled kernels dropped before every call), same process; and where the rest goes (cProfile)."""
import cProfile, io, json, os, pstats, sys, time
import torch
sys.path.insert(0, "benchmarks")
OUT = os.environ.get("OUT", "/tmp/out")
import rocm_attn  # noqa
import bench_mla as bm
from rocm_attn.kernels.triton_kernels import mla_decode as md, mla_decode_gluon as mg
res = {}
op = torch.ops.rocm_attn.mla_decode
for batch, ctx in ((1, 4096), (64, 4096), (1, 512)):
    cache, table, lens, q = bm.decode_setup(batch, ctx)
    f = lambda: op(q, cache.latent_cache, lens, table, 0.1352, 512)
    def f_jit():
        md._COMPILED.clear(); mg._COMPILED.clear()
        f()
    for _ in range(5): f()
    torch.cuda.synchronize()
    picked = md.tuned_config(q, 512, latent_cache=cache.latent_cache)
    row = dict(picked=picked.name if picked else None)
    n = 300
    for name, fn in (("compiled", f), ("jit", f_jit), ("compiled_again", f)):
        fn(); torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(n): fn()
        t_enq = (time.perf_counter() - t0) / n
        torch.cuda.synchronize(); t_all = (time.perf_counter() - t0) / n
        row[name] = dict(enqueue_us=t_enq * 1e6, synced_us=t_all * 1e6)
    row["gpu_us"] = bm.bench(f) * 1e3
    pr = cProfile.Profile(); pr.enable()
    for _ in range(n): f()
    pr.disable(); torch.cuda.synchronize()
    s = io.StringIO(); pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(22)
    row["profile"] = s.getvalue()[-6000:]
    res[f"{batch}x{ctx}"] = row
    print(batch, ctx, row["picked"], {k: {a: round(b, 1) for a, b in v.items()} for k, v in row.items() if isinstance(v, dict)},
          "gpu %.1f us" % row["gpu_us"], flush=True)
    del cache, q; torch.cuda.empty_cache()
print(res["64x4096"]["profile"][:4000])
json.dump(res, open(f"{OUT}/s16_host.json", "w"), indent=1)
