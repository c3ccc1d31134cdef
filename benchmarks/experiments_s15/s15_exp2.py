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
    json.dump(res, open(f"{OUT}/s15_exp2.json", "w"), indent=1)
t0 = time.time()
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
                for budget, bpt in ((0, 256), (16, 256), (64, 256), (16, 1024), (64, 1024)):
                    pq.L2_PREFETCH_MAX_BYTES = budget << 20
                    pq.PREFETCH_BYTES_PER_THREAD = bpt
                    t = bl.bench(lambda: [ops.ptpc_linear(*s) for s in sets_p]) / len(sets_p)
                    samples.setdefault(f"pf{budget}MB_{bpt}", []).append(t)
            med = {k: statistics.median(v) * 1e3 for k, v in samples.items()}
            row = dict(K=K, N=N, M=M, same_output=same, us=med, x_bf16={k: med["bf16"] / v for k, v in med.items()})
            res.setdefault("linear", []).append(row)
            print(K, N, M, same, {k: round(v, 2) for k, v in row["x_bf16"].items()}, flush=True)
            save()
except Exception:
    res["linear_error"] = traceback.format_exc()[-2000:]
save()
print("done", time.time() - t0)
