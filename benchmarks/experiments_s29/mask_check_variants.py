"""The paged cache's mask check at prefill: variants of counting each query's visible keys (H100).
    python benchmarks/experiments_s29/mask_check_variants.py --out $OUT/mask_variants.jsonl"""
import argparse
import json

import torch

import gpu_checks  # this folder's; the script's folder is on sys.path


def gpu_ms(fn):
    return gpu_checks.gpu_ms(fn, iters=50)


ap = argparse.ArgumentParser()
ap.add_argument("--out", required=True)
out = ap.parse_args().out
for B, S, Kv, past in ((8, 1024, 1280, 0), (1, 8192, 8448, 0), (4, 512, 4096, 1024)):
    m = torch.ones(B, 1, S, Kv, dtype=torch.bool, device="cuda").tril(past)
    idx = torch.arange(S, device="cuda")

    def before():
        return m[:, 0][:, idx, past + idx].cpu()

    def a_sum_triu():
        seen = m[:, 0]
        future = seen[..., past + 1:].triu().any(-1)
        return torch.stack([seen[:, idx, past + idx].long(), seen.sum(-1), future]).cpu()

    def b_int32_superdiag():
        seen = m[:, 0, :, :past + S]
        nxt = torch.zeros(B, S, dtype=torch.bool, device="cuda")
        nxt[:, :-1] = seen[:, idx[:-1], past + idx[:-1] + 1]
        return torch.stack([seen[:, idx, past + idx].int(), seen.sum(-1, dtype=torch.int32), nxt.int()]).cpu()

    def c_last_row_next():  # a first version: the count at each row's last real token
        seen = m[:, 0, :, :past + S]
        real = seen[:, idx, past + idx]
        last = torch.where(real, idx, -1).amax(1).clamp(min=0)
        visible = seen[torch.arange(B, device="cuda"), last].sum(-1, dtype=torch.int32)
        sees_next = torch.zeros_like(real)
        sees_next[:, :-1] = seen[:, idx[:-1], past + idx[:-1] + 1]
        return torch.cat([real.int(), sees_next.int(), visible.unsqueeze(1)], 1).cpu()

    def d_step_last_next():  # hf_cache._begin_step at this session's final commit
        seen = m[:, 0, :, :past + S]
        real = seen[:, idx, past + idx]
        visible = seen[:, S - 1].sum(-1, dtype=torch.int32).unsqueeze(1)
        sees_next = seen[:, idx[:-1], past + idx[:-1] + 1]
        both = torch.cat([real, sees_next], 1).int()
        return torch.cat([both, visible], 1).cpu()

    ref = a_sum_triu()
    got = b_int32_superdiag()
    row = dict(shape=[B, S, Kv], past=past, before_ms=gpu_ms(before), a_ms=gpu_ms(a_sum_triu),
               b_ms=gpu_ms(b_int32_superdiag), c_ms=gpu_ms(c_last_row_next), d_ms=gpu_ms(d_step_last_next), b_equals_a=bool(torch.equal(ref.int(), got)))
    print(json.dumps(row), flush=True)
    with open(out, "a") as f:
        f.write(json.dumps(row) + "\n")
