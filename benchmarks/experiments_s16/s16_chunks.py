"""Session 16: where the Gluon MLA decode's time goes. Variants of the kept kernel (benchmarks/experiments_s16/mla_diag.py, MODE):
0 kept, 1 stream only (no MMA, no softmax), 2 no softmax (P = scores), 3 no P @ V, 4 no O rescale,
5 group 0's P @ V with P from registers (exact). Plus: every batch on the same pages (L2-resident cache)."""
import importlib.util, json, os, sys
import torch
sys.path.insert(0, "benchmarks")
OUT = os.environ.get("OUT", "/tmp/out")
import rocm_attn  # noqa
from rocm_attn.kernels.triton_kernels import mla_decode as md, mla_decode_gluon as kept
import bench_mla as bm
L, R = 512, 64
src = open("benchmarks/experiments_s16/mla_diag.py").read()
mods = {}
for mode in [8, 9]:
    fn = f"/tmp/mla_diag_mode{mode}.py"
    open(fn, "w").write(src.replace("MODE_VALUE = 0", f"MODE_VALUE = {mode}"))
    spec = importlib.util.spec_from_file_location(f"mla_diag_{mode}", fn)
    m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m); mods[f"m{mode}"] = m
mods["kept"] = kept
def ragged_check():
    torch.manual_seed(1)
    from rocm_attn.kernels.mla import MLACache
    B, page = 8, 64
    lens = torch.randint(1, 5000, (B,), dtype=torch.int32); lens[0] = 1; lens[1] = 64; lens[2] = 65
    pages = int((lens.max() + page - 1) // page)
    cache = MLACache(B * pages + 3, page, L, R, torch.bfloat16, "cuda"); cache.latent_cache.normal_()
    table = torch.randperm(B * pages + 3)[: B * pages].view(B, pages).to(torch.int32).cuda()
    q = torch.randn(B, 128, L + R, dtype=torch.bfloat16, device="cuda")
    out = {}
    for name in ("kept", "m8", "m9"):
        for splits in (1, 3):
            o = torch.empty(B, 128, L, dtype=q.dtype, device="cuda"); lse = torch.empty(128, B, dtype=torch.float32, device="cuda")
            mods[name].launch_gluon(q, cache.latent_cache, lens.cuda(), table, 0.1352, L, splits, o, lse)
            out[(name, splits)] = (o, lse)
    torch.cuda.synchronize()
    r = {}
    for m in ("m8", "m9"):
        for sp in (1, 3):
            a, b = out[("kept", sp)], out[(m, sp)]
            r[f"{m}/{sp}"] = [bool(torch.equal(a[0], b[0])), ((a[0].float() - b[0].float()).norm() / a[0].float().norm()).item(),
                              (a[1] - b[1]).abs().max().item()]
    return r
res = {"device": torch.cuda.get_device_name(), "rows": []}
res["ragged_bitexact"] = ragged_check(); print("ragged", res["ragged_bitexact"], flush=True)
def save(): json.dump(res, open(f"{OUT}/s16_chunks.json", "w"), indent=1)
cases = [(64, 4096, False), (128, 4096, False), (64, 8192, False), (128, 8192, False), (64, 32768, False)]
for batch, ctx, shared in cases:
    nbytes = batch * ctx * (L + R) * 2
    same = bm.copy_bandwidth_gbs(nbytes)
    cache, table, lens, q = bm.decode_setup(batch, ctx)
    if shared:
        table = table[:1].expand_as(table).contiguous()
    torch.cuda.synchronize()
    B, H, _ = q.shape
    splits = md.num_splits_for(B, H, L, md.GLUON_CONFIGS[0], torch.cuda.get_device_properties(0).multi_processor_count)
    fns = {}
    names = ["kept", "m8", "m9"]
    for name in names:
        out = torch.empty(B, H, L, dtype=q.dtype, device="cuda"); lse = torch.empty(H, B, dtype=torch.float32, device="cuda")
        f = (lambda mod, out, lse: (lambda: mod.launch_gluon(q, cache.latent_cache, lens, table, 0.1352, L, splits, out, lse)))(mods[name], out, lse)
        f(); torch.cuda.synchronize()
        fns[name] = (f, out, lse)
    ref = fns["kept"][1].float()
    diffs = {n: ((o.float() - ref).norm() / ref.norm()).item() for n, (_, o, _) in fns.items() if n in ("m8", "m9")}
    ms = {n: [] for n in fns}
    for rnd in range(3):
        for n, (f, _, _) in fns.items():
            ms[n].append(bm.bench(f))
    best = {n: min(v) for n, v in ms.items()}
    row = dict(batch=batch, ctx=ctx, shared_pages=shared, splits=splits, same_copy_gbs=same, diffs=diffs, ms=ms,
               tbs={n: nbytes / v / 1e9 for n, v in best.items()},
               us_per_tile={n: 1e3 * v / (ctx / 64 / splits) for n, v in best.items()},
               pct_same={n: 100 * nbytes / v / 1e6 / same for n, v in best.items()})
    res["rows"].append(row); save()
    print(batch, ctx, "shared" if shared else "", "splits", splits, "diffs", {k: "%.1e" % v for k, v in diffs.items()}, flush=True)
    print("   TB/s", {k: round(v, 3) for k, v in row["tbs"].items()}, flush=True)
    print("   us/tile", {k: round(v, 3) for k, v in row["us_per_tile"].items()}, flush=True)
    del cache, q; torch.cuda.empty_cache()
