"""Why PTPC is slower than attention-only on the prefill-heavy CB workload: GPU kernel time by kernel under
torch.profiler for one generate_batch of it, 8 layers of the 8B config, attention-only vs PTPC."""
import json, os, sys, time
import torch
sys.path.insert(0, "benchmarks")
from bench_e2e import build_model, sync
from bench_serving_cb import make_prompts, cb_config, prepare, generate, WORKLOADS, PAGE
from torch.profiler import ProfilerActivity, profile

OUT = os.environ.get("OUT", "/tmp")
res = {}
requests, prompt_range, new_tokens = WORKLOADS["prefill-heavy"]
for variant in ("rocm_attn_none", "rocm_attn_ptpc:TRITON_ATTN"):
    torch.cuda.empty_cache()
    model = build_model("llama", 8, "cuda", False)
    prepare(model, variant)
    prompts = make_prompts(requests, prompt_range, model.config.vocab_size)
    config = cb_config(prompts, new_tokens, PAGE, 4096)
    sizes = []
    hook = model.register_forward_pre_hook(lambda mod, args, kw: sizes.append(
        tuple(kw["input_ids"].shape) if "input_ids" in kw else None), with_kwargs=True)
    with torch.no_grad():
        generate(model, prompts, new_tokens, config)
        sizes.clear()
        sync("cuda"); t0 = time.perf_counter()
        generate(model, prompts, new_tokens, config)
        sync("cuda"); wall = time.perf_counter() - t0
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            generate(model, prompts, new_tokens, config)
            sync("cuda")
    hook.remove()
    ka = prof.key_averages()
    gpu_us = sum(e.self_device_time_total for e in ka if e.device_type == torch.autograd.DeviceType.CUDA)
    res[variant] = {"wall_s": wall, "step_input_shapes": sizes,
                    "gpu_kernel_time_s_profiled": gpu_us / 1e6,
                    "table": ka.table(sort_by="self_cuda_time_total", row_limit=25)}
    print(variant, "wall", round(wall, 3), "gpu", round(gpu_us / 1e6, 3), sizes[:20], flush=True)
    print(res[variant]["table"][:5000], flush=True)
    del model
json.dump(res, open(f"{OUT}/s18_prefill_profile.json", "w"), indent=1)
