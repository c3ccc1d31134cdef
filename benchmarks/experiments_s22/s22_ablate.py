"""Session 22 diagnosis: where the fused-quant Gluon GEMM's time goes (run with ROCM_ATTN_S22_ABLATE=0/1/2:
0 as built, 1 the converter skips the conversion (wrong results: timing only), 2 the row scales are not loaded
(1.0)). Prints fused and the fp8 GEMM alone (us, CUDA-graph replays over input copies) at three shapes."""
import json, os, sys
import torch
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from bench_linear import bench, input_copies  # noqa: E402
import rocm_attn  # noqa: E402,F401
from rocm_attn.kernels.quantize_weight import quantize_weight_per_channel  # noqa: E402
from rocm_attn.kernels.triton_kernels import ptpc_gemm_gluon as gg  # noqa: E402

rows = []
for K, N, M in [(4096, 4096, 1024), (4096, 4096, 8192), (14336, 4096, 4096)]:
    x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
    wq, ws = quantize_weight_per_channel(torch.randn(N, K, device="cuda", dtype=torch.bfloat16) * 0.02)
    xq, xs = torch.ops.rocm_attn.per_token_quant_fp8(x)
    r = dict(K=K, N=N, M=M, ablate=os.environ.get("ROCM_ATTN_S22_ABLATE", "0"))
    for name, fn, t in [("fused", lambda x, wq, ws: gg.linear_launch(x, wq, ws, None, 2, 2, 1, 2), (x, wq, ws)),
                        ("gluon_mm", lambda q, s, wq, ws: gg.ptpc_gemm_gluon_launch(q, s, wq, ws, None, torch.bfloat16),
                         (xq, xs, wq, ws))]:
        sets = input_copies(t)
        r[name] = bench(lambda: [fn(*s) for s in sets]) / len(sets) * 1000
    print(json.dumps(r), flush=True)
