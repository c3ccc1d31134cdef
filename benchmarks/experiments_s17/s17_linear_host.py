"""Host time per eager linear call (M = 64 decode, K = N = 4096 / K = 14336): bf16 F.linear vs ptpc_linear,
with the compiled-kernel launch and with the JIT path forced (kept kernels emptied before every call)."""
import cProfile, io, json, os, pstats, sys, time
import torch
import torch.nn.functional as F
import rocm_attn
from rocm_attn.kernels.quantize_weight import quantize_weight_per_channel
from rocm_attn.kernels.triton_kernels import per_token_quant as qk, ptpc_gemm_small_m as sm

OUT = os.environ.get("OUT", "/tmp")
res = {}
def host_us(fn, n=400):
    for _ in range(20): fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n): fn()
    t1 = time.perf_counter()
    torch.cuda.synchronize()
    t2 = time.perf_counter()
    return (t1 - t0) / n * 1e6, (t2 - t0) / n * 1e6  # enqueue, enqueue + drain (= GPU-bound time if larger)

def jit(fn):
    def f():
        qk._COMPILED.clear(); sm._COMPILED.clear()
        return fn()
    return f

for K, N in ((4096, 4096), (14336, 4096)):
    for M in (1, 64):
        w = torch.randn(N, K, device="cuda", dtype=torch.bfloat16) * 0.02
        wq, ws = quantize_weight_per_channel(w)
        x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
        row = {}
        row["bf16_linear"] = host_us(lambda: F.linear(x, w))
        row["ptpc_linear"] = host_us(lambda: torch.ops.rocm_attn.ptpc_linear(x, wq, ws))
        row["ptpc_linear_jit"] = host_us(jit(lambda: torch.ops.rocm_attn.ptpc_linear(x, wq, ws)))
        row["quant_op"] = host_us(lambda: torch.ops.rocm_attn.per_token_quant_fp8(x))
        xq, xs = torch.ops.rocm_attn.per_token_quant_fp8(x)
        row["scaled_mm_op"] = host_us(lambda: torch.ops.rocm_attn.ptpc_scaled_mm(xq, xs, wq, ws))
        row["quant_launch"] = host_us(lambda: qk.per_token_quant_fp8_launch(x, wq.dtype, 448.0))
        row["small_m_launch"] = host_us(lambda: sm.ptpc_gemm_small_m_launch(xq, xs, wq, ws, None, torch.bfloat16))
        res[f"K{K}_N{N}_M{M}"] = {k: {"enqueue_us": round(v[0], 1), "with_drain_us": round(v[1], 1)} for k, v in row.items()}
        print(K, N, M, json.dumps(res[f"K{K}_N{N}_M{M}"]), flush=True)

# where the time goes: cProfile of 300 eager ptpc_linear calls (compiled path), M = 64
w = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16) * 0.02
wq, ws = quantize_weight_per_channel(w)
x = torch.randn(64, 4096, device="cuda", dtype=torch.bfloat16)
for _ in range(20): torch.ops.rocm_attn.ptpc_linear(x, wq, ws)
torch.cuda.synchronize()
pr = cProfile.Profile(); pr.enable()
for _ in range(300): torch.ops.rocm_attn.ptpc_linear(x, wq, ws)
pr.disable(); torch.cuda.synchronize()
s = io.StringIO(); pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(25)
res["profile_tottime"] = s.getvalue()
print(s.getvalue()[:6000])
json.dump(res, open(f"{OUT}/s17_linear_host.json", "w"), indent=1)
