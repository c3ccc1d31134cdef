"""Session 15 experiment: L2 prefetch (1) in the Gluon MLA decode producer, (2) of the weight by the quant
kernel in ptpc_linear at small M. Correctness first, then timings; JSON to $OUT."""
import json, os, statistics, sys, time, traceback
import torch
import torch.nn.functional as F
sys.path.insert(0, "benchmarks")
OUT = os.environ.get("OUT", "/tmp/out")
res = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
import triton
res["triton"] = triton.__version__
import rocm_attn  # noqa
from rocm_attn.kernels.triton_kernels import mla_decode as md, mla_decode_gluon as mg
from rocm_attn.kernels.triton_kernels import per_token_quant as pq
from rocm_attn.testing import make_latent_cache, reference_mla_decode
def save():
    json.dump(res, open(f"{OUT}/s15_exp.json", "w"), indent=1)
t0 = time.time()
# ---- MLA correctness with prefetch
L, R = 512, 64
try:
    lens = [1000, 64, 130, 4097, 3]
    for H in (128, 16):
        cache, table, dense = make_latent_cache(lens, L, R, 64, torch.bfloat16)
        cache = cache.cuda(); table = table.cuda()
        # NaN past the ends: fill unused rows
        q = torch.randn(len(lens), H, L + R, dtype=torch.bfloat16).cuda()
        ref_o, ref_lse = reference_mla_decode(q.cpu(), dense, 0.1352, L)
        for p in (0, 1, 2, 3, 4, 8):
            for splits in (1, 3):
                out = torch.empty(len(lens), H, L, dtype=torch.bfloat16, device="cuda")
                lse = torch.empty(H, len(lens), dtype=torch.float32, device="cuda")
                mg.launch_gluon(q, cache, torch.tensor(lens, dtype=torch.int32, device="cuda"), table, 0.1352, L,
                                splits, out, lse, prefetch=p)
                torch.cuda.synchronize()
                err = ((out.double().cpu() - ref_o).norm() / ref_o.norm()).item()
                res.setdefault("mla_check", []).append(dict(H=H, prefetch=p, splits=splits, rel_err=err))
    print("mla check", max(r["rel_err"] for r in res["mla_check"]), flush=True)
except Exception:
    res["mla_check_error"] = traceback.format_exc()[-2000:]
save()
# ---- MLA timings
import bench_mla as bm
try:
    cases = [(64, 4096), (128, 4096), (64, 8192), (128, 8192), (64, 32768)]
    for batch, ctx in cases:
        nbytes = batch * ctx * (L + R) * 2
        same = bm.copy_bandwidth_gbs(nbytes)
        cache, table, lens_t, q = bm.decode_setup(batch, ctx)
        torch.cuda.synchronize()
        row = dict(batch=batch, ctx=ctx, same_copy_gbs=same, ms={})
        for rnd in range(2):
            for p in (0, 1, 2, 3, 4, 6):
                mg.PREFETCH = p
                md._TUNED.clear() if hasattr(md, "_TUNED") else None
                fn = lambda: md.mla_decode_launch(q, cache.latent_cache, lens_t, table, 0.1352, L, configs=md.GLUON_CONFIGS)
                ms = bm.bench(fn)
                row["ms"].setdefault(str(p), []).append(ms)
        row["gbs"] = {p: nbytes / min(v) / 1e6 for p, v in row["ms"].items()}
        row["pct_same"] = {p: 100 * g / same for p, g in row["gbs"].items()}
        res.setdefault("mla_time", []).append(row)
        print(batch, ctx, {p: round(v, 1) for p, v in row["pct_same"].items()}, flush=True)
        del cache, q; torch.cuda.empty_cache(); save()
    mg.PREFETCH = 0
except Exception:
    res["mla_time_error"] = traceback.format_exc()[-2000:]
save()
print("mla done", time.time() - t0, flush=True)
# ---- linear: prefetch budgets
import bench_linear as bl
from rocm_attn.kernels.quantize_weight import quantize_weight_per_channel
ops = torch.ops.rocm_attn
try:
    for K, N in [(4096, 4096), (4096, 6144), (14336, 4096), (4096, 28672)]:
        for M in (1, 16, 128):
            x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
            w = torch.randn(N, K, device="cuda", dtype=torch.bfloat16) * 0.02
            wq, ws = quantize_weight_per_channel(w)
            pq.L2_PREFETCH_MAX_BYTES = 0
            base = ops.ptpc_linear(x, wq, ws)
            pq.L2_PREFETCH_MAX_BYTES = 64 << 20
            same = torch.equal(ops.ptpc_linear(x, wq, ws), base)
            sets_bf = bl.input_copies((x, w)); sets_p = bl.input_copies((x, wq, ws))
            samples = {}
            for rnd in range(3):
                t = bl.bench(lambda: [F.linear(*s) for s in sets_bf]) / len(sets_bf)
                samples.setdefault("bf16", []).append(t)
                for budget in (0, 8, 16, 32, 64):
                    pq.L2_PREFETCH_MAX_BYTES = budget << 20
                    t = bl.bench(lambda: [ops.ptpc_linear(*s) for s in sets_p]) / len(sets_p)
                    samples.setdefault(f"pf{budget}MB", []).append(t)
            med = {k: statistics.median(v) * 1e3 for k, v in samples.items()}
            row = dict(K=K, N=N, M=M, same_output=same, us=med, x_bf16={k: med["bf16"] / v for k, v in med.items()})
            res.setdefault("linear", []).append(row)
            print(K, N, M, same, {k: round(v, 2) for k, v in row["x_bf16"].items()}, flush=True)
            save()
except Exception:
    res["linear_error"] = traceback.format_exc()[-2000:]
save()
print("done", time.time() - t0)
