"""Host time of one Llama-3.1-8B decoder layer's 7 eager linears (q, k, v, o, gate, up, down) as a patched
model runs them: PTPC grouped (q/k/v and gate/up as one ptpc_linear each: patch.SharedInputProjections),
PTPC one by one (fuse_projections=False) and bf16 nn.Linear; M = 1 / 64 / 512 rows."""
import cProfile, io, json, os, pstats, time
import torch
from torch import nn
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


def cprofile_calls(fn, args, res, key, n=100):
    """cProfile n calls of fn(*args) after 10 warm-up calls; res[key + "_tottime" / "_cumulative"] get the top 30
    entries by each order (s20_host.py profiles its grouped layer the same way)."""
    for _ in range(10): fn(*args)
    torch.cuda.synchronize()
    pr = cProfile.Profile(); pr.enable()
    for _ in range(n): fn(*args)
    pr.disable(); torch.cuda.synchronize()
    for order in ("tottime", "cumulative"):
        s = io.StringIO(); pstats.Stats(pr, stream=s).sort_stats(order).print_stats(30)
        res[f"{key}_{order}"] = s.getvalue()


def main():
    torch.manual_seed(0)
    layers = {"bf16": Layer(bf16_linear), "ptpc_apart": Layer(fp8_linear), "ptpc_grouped": Layer(fp8_linear)}
    _share_projection_storage(layers["ptpc_grouped"], PatchReport("Layer", "ptpc_fp8", "-", "-"))
    assert layers["ptpc_grouped"].self_attn.q_proj.shared_input_group is not None
    res = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    with torch.no_grad():
        for M in [int(m) for m in os.environ.get('MS', '1,64,512').split(',')]:
            x = torch.randn(M, H, device="cuda", dtype=torch.bfloat16)
            x_i = torch.randn(M, I, device="cuda", dtype=torch.bfloat16)
            row = {}
            for rnd in range(3):  # interleaved rounds
                for name, layer in layers.items():
                    row.setdefault(name, []).append(host_us(lambda: layer(x, x_i)))
            res[f"M{M}"] = {k: {"enqueue_us": sorted(e for e, _ in v)[1], "with_drain_us": sorted(d for _, d in v)[1]}
                            for k, v in row.items()}
            # grouped vs apart outputs (the same quant; GEMM summation order may differ with N)
            g = layers["ptpc_grouped"](x, x_i)
            lg = layers["ptpc_grouped"]
            alone = [m.forward_alone(x) for m in (lg.self_attn.q_proj, lg.self_attn.k_proj, lg.self_attn.v_proj)]
            res[f"M{M}"]["max_rel_diff_qkv"] = max(float((o.float() - w.float()).norm() / w.float().norm())
                                                   for o, w in zip(g[:3], alone))
            print(M, json.dumps(res[f"M{M}"]), flush=True)
        PM = int(os.environ.get("PROFILE_M", "64"))
        x = torch.randn(PM, H, device="cuda", dtype=torch.bfloat16)
        x_i = torch.randn(PM, I, device="cuda", dtype=torch.bfloat16)
        layer = layers["ptpc_grouped"]
        cprofile_calls(layer, (x, x_i), res, "profile_grouped_M64")
    print(res["profile_grouped_M64_tottime"][:5000])
    # GPU kernel times of one call of each variant at PROFILE_M
    from torch.profiler import ProfilerActivity, profile
    with torch.no_grad():
        for name, layer in layers.items():
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                for _ in range(5): layer(x, x_i)
                torch.cuda.synchronize()
            res[f"kernels_{name}_M{PM}_x5"] = prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=12)
            print(name, res[f"kernels_{name}_M{PM}_x5"][:3000], flush=True)
    json.dump(res, open(f"{OUT}/{os.environ.get('TAG', 's18_layer_linears_host')}.json", "w"), indent=1)


if __name__ == "__main__":  # (Session 20 imports the layer and the timer from here)
    main()
