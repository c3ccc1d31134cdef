"""Host time of one Llama-3.1-8B decoder layer's 7 eager linears (q, k, v, o, gate, up, down) as a patched
model runs them, with kernels/ptpc_linear.py's eager plans and through the op on every call
(ROCM_ATTN_EAGER_PLANS=0): PTPC grouped (patch.SharedInputProjections), PTPC one by one, bf16 nn.Linear.
Also one linear alone (q_proj shape), plan vs op, and a cProfile of the grouped layer with plans.
Session 18's s18_host.py is the same layer; this adds the plan / op A/B (interleaved rounds, one process)."""
import cProfile, io, json, os, pstats, time
import torch
from torch import nn
from rocm_attn.kernels.ptpc_linear import ptpc_linear_eager
from rocm_attn.patch import FP8Linear, _share_projection_storage, PatchReport

OUT = os.environ.get("OUT", "/tmp")
H, KV, I = 4096, 1024, 14336


class Attn(nn.Module):
    def __init__(s, lin):
        super().__init__()
        s.q_proj, s.k_proj, s.v_proj, s.o_proj = lin(H, H), lin(H, KV), lin(H, KV), lin(H, H)


class MLP(nn.Module):
    def __init__(s, lin):
        super().__init__()
        s.gate_proj, s.up_proj, s.down_proj = lin(H, I), lin(H, I), lin(I, H)


class Layer(nn.Module):
    def __init__(s, lin):
        super().__init__()
        s.self_attn, s.mlp = Attn(lin), MLP(lin)

    def forward(s, x, x_i):  # the 7 linears on fixed inputs (the attention / SiLU in between are not timed)
        a = s.self_attn
        q, k, v = a.q_proj(x), a.k_proj(x), a.v_proj(x)
        o = a.o_proj(x)
        g, u = s.mlp.gate_proj(x), s.mlp.up_proj(x)
        d = s.mlp.down_proj(x_i)
        return q, k, v, o, g, u, d


def bf16_linear(i, o):
    return nn.Linear(i, o, bias=False, device="cuda", dtype=torch.bfloat16)


def fp8_linear(i, o):
    return FP8Linear(bf16_linear(i, o))


def host_us(fn, n=200):
    for _ in range(10): fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n): fn()
    t1 = time.perf_counter()
    torch.cuda.synchronize()
    t2 = time.perf_counter()
    return round((t1 - t0) / n * 1e6, 1), round((t2 - t0) / n * 1e6, 1)


def with_plans(on, fn):
    def run():
        if on:
            os.environ.pop("ROCM_ATTN_EAGER_PLANS", None)
        else:
            os.environ["ROCM_ATTN_EAGER_PLANS"] = "0"
        try:
            return fn()
        finally:
            os.environ.pop("ROCM_ATTN_EAGER_PLANS", None)
    return run


torch.manual_seed(0)
bf16, apart, grouped = Layer(bf16_linear), Layer(fp8_linear), Layer(fp8_linear)
_share_projection_storage(grouped, PatchReport("Layer", "ptpc_fp8", "-", "-"))
assert grouped.self_attn.q_proj.shared_input_group is not None
res = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
with torch.no_grad():
    for M in [int(m) for m in os.environ.get("MS", "1,64,512").split(",")]:
        x = torch.randn(M, H, device="cuda", dtype=torch.bfloat16)
        x_i = torch.randn(M, I, device="cuda", dtype=torch.bfloat16)
        q = apart.self_attn.q_proj
        variants = {
            "bf16": lambda: bf16(x, x_i),
            "ptpc_grouped_plans": with_plans(True, lambda: grouped(x, x_i)),
            "ptpc_grouped_op": with_plans(False, lambda: grouped(x, x_i)),
            "ptpc_apart_plans": with_plans(True, lambda: apart(x, x_i)),
            "ptpc_apart_op": with_plans(False, lambda: apart(x, x_i)),
            "one_linear_plans": lambda: ptpc_linear_eager(x, q.wq, q.w_scale, None),
            "one_linear_op": lambda: torch.ops.rocm_attn.ptpc_linear(x, q.wq, q.w_scale, None),
        }
        row = {}
        for rnd in range(3):  # interleaved rounds
            for name, fn in variants.items():
                row.setdefault(name, []).append(host_us(fn))
        res[f"M{M}"] = {k: {"enqueue_us": sorted(e for e, _ in v)[1], "with_drain_us": sorted(d for _, d in v)[1]}
                        for k, v in row.items()}
        # the plan's output is the op's, bit for bit (same kernels, same inputs)
        outs_plan = with_plans(True, lambda: grouped(x, x_i))()
        outs_op = with_plans(False, lambda: grouped(x, x_i))()
        res[f"M{M}"]["bit_identical_grouped"] = all(torch.equal(a, b) for a, b in zip(outs_plan, outs_op))
        res[f"M{M}"]["bit_identical_one"] = torch.equal(ptpc_linear_eager(x, q.wq, q.w_scale, None),
                                                        torch.ops.rocm_attn.ptpc_linear(x, q.wq, q.w_scale, None))
        print(M, json.dumps(res[f"M{M}"]), flush=True)
    x = torch.randn(64, H, device="cuda", dtype=torch.bfloat16)
    x_i = torch.randn(64, I, device="cuda", dtype=torch.bfloat16)
    for _ in range(10): grouped(x, x_i)
    torch.cuda.synchronize()
    pr = cProfile.Profile(); pr.enable()
    for _ in range(100): grouped(x, x_i)
    pr.disable(); torch.cuda.synchronize()
s = io.StringIO(); pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(30)
res["profile_grouped_plans_M64_tottime"] = s.getvalue()
s = io.StringIO(); pstats.Stats(pr, stream=s).sort_stats("cumulative").print_stats(30)
res["profile_grouped_plans_M64_cumulative"] = s.getvalue()
print(res["profile_grouped_plans_M64_tottime"][:4000])
json.dump(res, open(f"{OUT}/{os.environ.get('TAG', 's20_layer_linears_host')}.json", "w"), indent=1)
