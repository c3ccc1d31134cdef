"""Session 15: the software-pipelined Gluon MLA decode (QK of tile t+1 issued behind P @ V of tile t) against
the Session-14 kernel (.gpu/mla_gluon_old.py), interleaved rounds; JSON to $OUT."""
import json, os, sys, time
import torch
sys.path.insert(0, "benchmarks"); sys.path.insert(0, ".gpu")
OUT = os.environ.get("OUT", "/tmp/out")
import rocm_attn  # noqa
from rocm_attn.kernels.triton_kernels import mla_decode as md, mla_decode_gluon as new
import mla_gluon_old as old
import bench_mla as bm
L, R = 512, 64
res = {"device": torch.cuda.get_device_name()}
def save(): json.dump(res, open(f"{OUT}/s15_mla.json", "w"), indent=1)
cases = [(64, 4096), (128, 4096), (64, 8192), (128, 8192), (64, 32768), (16, 4096)]
for batch, ctx in cases:
    nbytes = batch * ctx * (L + R) * 2
    same = bm.copy_bandwidth_gbs(nbytes)
    cache, table, lens, q = bm.decode_setup(batch, ctx)
    torch.cuda.synchronize()
    B, H, _ = q.shape
    splits = md.num_splits_for(B, H, L, md.GLUON_CONFIGS[0], torch.cuda.get_device_properties(0).multi_processor_count)
    outs = {}
    def runner(mod):
        out = torch.empty(B, H, L, dtype=q.dtype, device="cuda"); lse = torch.empty(H, B, dtype=torch.float32, device="cuda")
        def fn():
            mod.launch_gluon(q, cache.latent_cache, lens, table, 0.1352, L, splits, out, lse)
        return fn, out, lse
    fns = {"old": runner(old), "new": runner(new)}
    for name, (fn, out, lse) in fns.items():
        fn(); torch.cuda.synchronize()
    o_old, o_new = fns["old"][1], fns["new"][1]
    diff = ((o_new.float() - o_old.float()).norm() / o_old.float().norm()).item()
    lse_diff = (fns["new"][2] - fns["old"][2]).abs().max().item()
    ms = {"old": [], "new": []}
    for rnd in range(3):
        for name, (fn, _, _) in fns.items():
            ms[name].append(bm.bench(fn))
    row = dict(batch=batch, ctx=ctx, splits=splits, same_copy_gbs=same, rel_diff_new_vs_old=diff, lse_maxdiff=lse_diff,
               ms=ms, pct_same={k: 100 * nbytes / min(v) / 1e6 / same for k, v in ms.items()},
               pct_3TBs={k: 100 * nbytes / min(v) / 1e6 / 3000 for k, v in ms.items()})
    res.setdefault("rows", []).append(row)
    print(batch, ctx, "splits", splits, "diff %.2e" % diff, {k: round(v, 1) for k, v in row["pct_same"].items()},
          {k: round(min(v), 4) for k, v in ms.items()}, flush=True)
    save()
    del cache, q; torch.cuda.empty_cache()
