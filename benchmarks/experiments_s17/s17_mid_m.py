"""GPU time of the FP8 GEMM at decode batch sizes 16-64 (K, N of Llama-3-8B): the small-M kernel with its
TUNED config and with each autotune config, torch._scaled_mm rowwise, bf16 F.linear. 4 weight copies in
rotation (the weight streams from HBM, not L2); CUDA-graph replay."""
import json, os
import torch, triton
import torch.nn.functional as F
from triton.testing import do_bench_cudagraph
from rocm_attn.kernels.quantize_weight import quantize_weight_per_channel
from rocm_attn.kernels.triton_kernels import ptpc_gemm_small_m as sm

OUT = os.environ.get("OUT", "/tmp")
COPIES = 4
res = []
for K, N in ((4096, 6144), (4096, 4096), (4096, 28672), (14336, 4096)):
    ws = [torch.randn(N, K, device="cuda", dtype=torch.bfloat16) * 0.02 for _ in range(COPIES)]
    qs = [quantize_weight_per_channel(w) for w in ws]
    for M in (32, 64):
        x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
        xq, xs = torch.ops.rocm_attn.per_token_quant_fp8(x)
        torch.cuda.synchronize()
        def t(fn):
            fn(); torch.cuda.synchronize()
            return do_bench_cudagraph(lambda: [fn(i) for i in range(COPIES)], rep=30) * 1e3 / COPIES  # us
        row = {"K": K, "N": N, "M": M}
        row["bf16"] = t(lambda i=0: F.linear(x, ws[i]))
        row["scaled_mm"] = t(lambda i=0: torch._scaled_mm(xq, qs[i][0].t(), scale_a=xs, scale_b=qs[i][1].t(),
                                                           out_dtype=torch.bfloat16))
        tuned = sm.tuned_config(M, N, K)
        row["tuned_cfg"] = tuned
        row["small_m_tuned"] = t(lambda i=0: sm.ptpc_gemm_small_m_launch(xq, xs, *qs[i], None, torch.bfloat16,
                                                                          config=tuned)) if tuned else None
        best = None
        for c in sm.CONFIGS:
            cfg = {**c.kwargs, "num_warps": c.num_warps, "num_stages": c.num_stages}
            try:
                us = t(lambda i=0: sm.ptpc_gemm_small_m_launch(xq, xs, *qs[i], None, torch.bfloat16, config=cfg))
            except Exception as e:
                continue
            if best is None or us < best[0]:
                best = (us, cfg)
        row["small_m_best"], row["small_m_best_cfg"] = best
        # the quant's GPU time at this M (ptpc_linear = quant + GEMM)
        row["quant"] = t(lambda i=0: torch.ops.rocm_attn.per_token_quant_fp8(x))
        res.append(row)
        print(json.dumps({k: (round(v, 1) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)
json.dump(res, open(f"{OUT}/s17_mid_m.json", "w"), indent=1)
