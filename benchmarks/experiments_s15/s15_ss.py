"""Session 15: the seesaw Gluon MLA decode schedule vs the split one. argv[1]: check | bench."""
import json, os, sys, time
import torch
sys.path.insert(0, "benchmarks")
OUT = os.environ.get("OUT", "/tmp/out")
import rocm_attn  # noqa
from rocm_attn.kernels.triton_kernels import mla_decode as md, mla_decode_gluon as mg
from rocm_attn.testing import make_latent_cache, reference_mla_decode
L, R = 512, 64
mode = sys.argv[1]
res = {"device": torch.cuda.get_device_name()}
def save(): json.dump(res, open(f"{OUT}/s15_ss_{mode}.json", "w"), indent=1)
if mode == "check":
    for lens in ([1000, 64, 130, 4097, 3, 128], [1], [64, 65]):
        for H in (128, 16, 40):
            cache, table, dense = make_latent_cache(lens, L, R, 64, torch.bfloat16)
            used = torch.zeros(cache.shape[0], 64, dtype=torch.bool)
            for b, n in enumerate(lens):
                for p in range(n):
                    used[table[b, p // 64], p % 64] = True
            cache[~used] = float("nan")  # rows past the ends and unused pages: NaN
            cache = cache.cuda(); table = table.cuda()
            q = torch.randn(len(lens), H, L + R, dtype=torch.bfloat16).cuda()
            ref_o, ref_lse = reference_mla_decode(q.cpu(), dense, 0.1352, L)
            for sched in ("split", "seesaw"):
                for splits in (1, 2, 3, 7):
                    out = torch.empty(len(lens), H, L, dtype=torch.bfloat16, device="cuda")
                    lse = torch.empty(H, len(lens), dtype=torch.float32, device="cuda")
                    mg.launch_gluon(q, cache, torch.tensor(lens, dtype=torch.int32, device="cuda"), table, 0.1352,
                                    L, splits, out, lse, schedule=sched)
                    torch.cuda.synchronize()
                    err = ((out.double().cpu() - ref_o).norm() / ref_o.norm()).item()
                    lerr = (lse.double().cpu() - ref_lse).abs().max().item()
                    res.setdefault("check", []).append(dict(lens=lens, H=H, sched=sched, splits=splits, rel_err=err,
                                                            lse_err=lerr))
                    print(lens[:3], H, sched, splits, "%.2e %.2e" % (err, lerr), flush=True)
            save()
else:
    import bench_mla as bm
    cases = [(64, 4096), (128, 4096), (64, 8192), (128, 8192), (64, 32768), (16, 4096), (128, 1024)]
    for batch, ctx in cases:
        nbytes = batch * ctx * (L + R) * 2
        same = bm.copy_bandwidth_gbs(nbytes)
        cache, table, lens, q = bm.decode_setup(batch, ctx)
        torch.cuda.synchronize()
        B, H, _ = q.shape
        splits = md.num_splits_for(B, H, L, md.GLUON_CONFIGS[0], torch.cuda.get_device_properties(0).multi_processor_count)
        outs, fns = {}, {}
        for sched in ("split", "seesaw"):
            out = torch.empty(B, H, L, dtype=q.dtype, device="cuda"); lse = torch.empty(H, B, dtype=torch.float32, device="cuda")
            fns[sched] = (lambda sched=sched, out=out, lse=lse: mg.launch_gluon(q, cache.latent_cache, lens, table, 0.1352, L, splits, out, lse, schedule=sched))
            fns[sched](); torch.cuda.synchronize(); outs[sched] = out
        diff = ((outs["seesaw"].float() - outs["split"].float()).norm() / outs["split"].float().norm()).item()
        ms = {k: [] for k in fns}
        for rnd in range(3):
            for k, fn in fns.items():
                ms[k].append(bm.bench(fn))
        row = dict(batch=batch, ctx=ctx, splits=splits, same_copy_gbs=same, rel_diff=diff, ms=ms,
                   pct_same={k: 100 * nbytes / min(v) / 1e6 / same for k, v in ms.items()},
                   pct_3TBs={k: 100 * nbytes / min(v) / 1e6 / 3000 for k, v in ms.items()})
        res.setdefault("rows", []).append(row)
        print(batch, ctx, "splits", splits, "diff %.2e" % diff, {k: round(v, 1) for k, v in row["pct_same"].items()},
              {k: round(min(v), 4) for k, v in ms.items()}, flush=True)
        save()
        del cache, q; torch.cuda.empty_cache()
