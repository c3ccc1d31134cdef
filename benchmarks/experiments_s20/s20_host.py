"""Host time of one Llama-3.1-8B decoder layer's 7 eager linears (q, k, v, o, gate, up, down) as a patched
model runs them, with kernels/ptpc_linear.py's eager plans and through the op on every call
(ROCM_ATTN_EAGER_PLANS=0): PTPC grouped (patch.SharedInputProjections), PTPC one by one, bf16 nn.Linear.
Also one linear alone (q_proj shape), plan vs op, and a cProfile of the grouped layer with plans.
Session 18's s18_host.py is the same layer; this adds the plan / op A/B (interleaved rounds, one process)."""
import json, os, sys
import torch
from rocm_attn.kernels.ptpc_linear import ptpc_linear_eager
from rocm_attn.patch import _share_projection_storage, PatchReport

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "experiments_s18"))
import s18_host  # noqa: E402  (the same layer of 7 linears and the same timer)

OUT = os.environ.get("OUT", "/tmp")
H, I = s18_host.H, s18_host.I
Layer, bf16_linear, fp8_linear, host_us = s18_host.Layer, s18_host.bf16_linear, s18_host.fp8_linear, s18_host.host_us


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
    s18_host.cprofile_calls(grouped, (x, x_i), res, "profile_grouped_plans_M64")
print(res["profile_grouped_plans_M64_tottime"][:4000])
json.dump(res, open(f"{OUT}/{os.environ.get('TAG', 's20_layer_linears_host')}.json", "w"), indent=1)
