"""``rocm_attn.patch(model)``: one line for a Hugging Face model.

    model = rocm_attn.patch(model)          # FP8 weights, rocm_attn attention, paged cache, compiled decode
    print(model.rocm_attn_report)

What it changes, in place:
1. every ``nn.Linear`` (except lm_head / embeddings / Config.skip_modules) becomes an ``FP8Linear``
   holding the fp8 weight [N, K] and its fp32 per-channel scale [N, 1] (weight memory halves vs bf16)
   and calling ``torch.ops.rocm_attn.ptpc_linear`` (or ``fp8_per_tensor_linear``); the input embedding
   becomes an ``FP8Embedding`` (Config.quantize_embeddings, on by default): an fp8 table [V, D] and an
   fp32 scale per row [V, 1], shared with a tied lm_head's when that is a PTPC FP8Linear (a tied
   embedding whose lm_head stays bf16 is kept: an fp8 copy would add memory); sibling projections that
   read one input (q/k/v, gate/up: PROJECTION_GROUPS) keep their fp8 weights, scales and biases in one
   buffer each, as row views (Config.fuse_projections): no extra memory, and the group runs as one wider
   GEMM, in a compiled graph (passes/patched_linear_split.py) and eagerly (SharedInputProjections);
2. attention goes through this library: ``"rocm_attn"`` is registered with HF's AttentionInterface and
   AttentionMaskInterface and set as the model's attention implementation;
3. ``generate()`` gets a paged ``RocmAttnCache`` (unless the caller passes a cache or a
   cache_implementation), and with ``compile=True`` compiles decode with ``backend="rocm_attn"``
   (HF compiles decode on GPUs only, as it does for its own caches). A model whose layers the paged cache
   cannot hold (hf_cache.paged_cache_refusal) keeps HF's cache, and the report says why.

Patching twice changes nothing more. A model it cannot handle gets an error naming the module, raised
before anything is changed (but for transformers refusing the attention implementation itself).
"""

from __future__ import annotations

import fnmatch
import inspect
import logging
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .config import Config
from .continuous_batching import enable_continuous_batching
from .hf_cache import (ATTN_NAME, RocmAttnCache, _attention_modules, paged_cache_refusal, pass_cache_to_attention,
                       register_hf_attention)
from .kernels.ptpc_linear import ptpc_linear_eager
from .kernels.quantize_weight import quantize_weight_per_channel, quantize_weight_per_tensor
from .patterns.patched_linear import rows_view

log = logging.getLogger("rocm_attn")
# the device types on which transformers' generate() compiles the decode step with a compile_config
# (GenerationMixin._valid_auto_compile_criteria); elsewhere it runs eagerly and warns once
HF_COMPILE_DEVICES = ("cuda", "xpu", "neuron", "tpu")


class _KeepsQuantizedDtypes:
    """Mixin for modules holding quantized buffers ``wq`` (fp8) and ``w_scale`` (fp32): ``model.to(dtype)``,
    ``.half()``, ``.bfloat16()`` and the like cast every floating-point tensor, fp8 included, which would
    undo the quantization (and round the scales). Those two keep their dtype and follow only the device
    (what the cast asked of the others is applied to them: bias, dtypes of outputs)."""

    _QUANTIZED_BUFFERS = ("wq", "w_scale")

    def _apply(self, fn, recurse=True):
        before = {name: self._buffers[name] for name in self._QUANTIZED_BUFFERS if self._buffers.get(name) is not None}
        super()._apply(fn, recurse)
        for name, old in before.items():
            new = self._buffers[name]
            if new.dtype != old.dtype:
                self._on_cast(new.dtype)
                self._buffers[name] = old.to(new.device)
        return self

    def _on_cast(self, dtype: torch.dtype) -> None:
        """Called when a cast to `dtype` reached the module."""


class FP8Linear(_KeepsQuantizedDtypes, nn.Module):
    """A linear layer with an fp8 weight and fp32 scales: per output channel (``ptpc_fp8``, w_scale [N, 1])
    or one per tensor (``fp8_per_tensor``, w_scale [1]); activations are quantized per token / per tensor
    at run time inside the op. The output has the input's dtype."""

    def __init__(self, linear: nn.Linear, quantization: str = "ptpc_fp8", fast_accum: bool = False):
        super().__init__()
        if quantization not in ("ptpc_fp8", "fp8_per_tensor"):
            raise ValueError(f"FP8Linear: quantization must be 'ptpc_fp8' or 'fp8_per_tensor', got {quantization!r}")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.quantization = quantization
        self.fast_accum = fast_accum  # Config.fast_accum: the PTPC GEMM without fp32 promotion (sm_90)
        quant = quantize_weight_per_channel if quantization == "ptpc_fp8" else quantize_weight_per_tensor
        wq, w_scale = quant(linear.weight.data)
        self.register_buffer("wq", wq)
        self.register_buffer("w_scale", w_scale)
        bias = linear.bias.data.detach().clone() if linear.bias is not None else None
        self.register_buffer("bias", bias)

        # set by patch() (Config.fuse_projections) on q/k/v and gate/up: see SharedInputProjections
        self.shared_input_group: SharedInputProjections | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.quantization == "ptpc_fp8":
            group = self.shared_input_group
            # eager calls on plain tensors only: a compiled graph gets this fusion from its own pass, and a
            # traced or subclassed tensor (fake, functional, DTensor) takes the op as written
            if group is not None and not torch.compiler.is_compiling() and type(x) is torch.Tensor:
                return group.forward(self, x)
            return self.forward_alone(x)
        return torch.ops.rocm_attn.fp8_per_tensor_linear(x, self.wq, self.w_scale, self.bias)

    def forward_alone(self, x: torch.Tensor) -> torch.Tensor:
        """This linear on its own: one ptpc_linear call over its own rows (eagerly, through
        ptpc_linear_eager: the op's result, with the checks and provider choices made once per kind of call;
        a compiled graph gets the op itself)."""
        return ptpc_linear_eager(x, self.wq, self.w_scale, self.bias, self.fast_accum)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, quantization={self.quantization}")


class SharedInputProjections:
    """Sibling PTPC FP8Linears of one module that read one input (q/k/v, gate/up) and whose fp8 weights,
    scales and biases patch() laid out as adjacent rows of one buffer (Config.fuse_projections).

    Why: HF continuous batching and eager generate() run the model eagerly, and there an eager ptpc_linear
    costs ~140-220 us of host time against ~20 us for a bf16 F.linear (H100 machine, Session 17), so a
    decode step with 7 of them per layer waits on the host. Run as a group, the 7 become 4.

    How: the first member called with an input tensor runs one ptpc_linear over the rows of all members (one
    activation quant, one GEMM; rows of a GEMM do not interact and each keeps its own scale) and keeps the
    other members' column slices of the output. A member then called with that same tensor, not modified in
    place since (its version counter; inference-mode tensors have none, so for them the same tensor object
    is the test), takes its slice instead of computing. Any other call computes afresh. The slices are
    views of the wide output, as the compiled graph's (passes/patched_linear_split.py).
    If the members' buffers are no longer adjacent rows of one buffer (moved or replaced one by one since
    patch()), every member runs on its own, as an unpatched FP8Linear would. So does a group whose kept
    slices go unused MAX_UNUSED times in a row (a layer that skips some members, such as a layer sharing
    another's k/v, would otherwise pay for their rows on every call): it is switched off, with a log line."""

    MAX_UNUSED = 3

    def __init__(self, members: list[FP8Linear], names: list[str]):
        self.members = list(members)
        self.names = list(names)  # module paths, for the switch-off's log line
        self.enabled = True
        self._unused_in_a_row = 0
        self._operands_for: tuple | None = None  # (the members' buffers, the merged (wq, w_scale, bias))
        self._pending: tuple | None = None  # (x, x's version, {member index: its output slice})

    def _merged_operands(self) -> tuple | None:
        """(wq, w_scale, bias | None) views spanning every member's rows, or None if not adjacent rows."""
        buffers = tuple((m.wq, m.w_scale, m.bias) for m in self.members)
        cached = self._operands_for
        if cached is not None and all(a is b for old, new in zip(cached[0], buffers) for a, b in zip(old, new)):
            return cached[1]
        views = [rows_view([b[i] for b in buffers]) for i in range(2)]
        bias = None if buffers[0][2] is None else rows_view([b[2] for b in buffers])
        merged = None if None in views or (buffers[0][2] is not None and bias is None) else (*views, bias)
        self._operands_for = (buffers, merged)
        return merged

    def forward(self, member: FP8Linear, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return member.forward_alone(x)
        index = self.members.index(member)
        version = _version(x)
        pending = self._pending
        if pending is not None and pending[0] is x and pending[1] == version:
            out = pending[2].pop(index, None)
            if out is not None:
                if not pending[2]:
                    self._pending = None  # every slice taken: let go of x and the wide output
                    self._unused_in_a_row = 0
                return out
        if pending is not None:  # computing afresh while kept slices were never taken
            self._unused_in_a_row += 1
            if self._unused_in_a_row >= self.MAX_UNUSED:
                self.enabled, self._pending = False, None
                log.info("rocm_attn: %s are not all called on one input; they now run one by one",
                         "/".join(self.names))
                return member.forward_alone(x)
        merged = self._merged_operands()
        if merged is None:
            return member.forward_alone(x)
        wide = ptpc_linear_eager(x, *merged, member.fast_accum)
        slices, start = {}, 0
        for i, m in enumerate(self.members):
            slices[i] = wide.narrow(-1, start, m.out_features)
            start += m.out_features
        out = slices.pop(index)
        self._pending = (x, version, slices)
        return out


def _version(x: torch.Tensor) -> int | None:
    """x's version counter (bumped by every in-place change), or None for an inference-mode tensor."""
    return None if x.is_inference() else x._version


class FP8Embedding(_KeepsQuantizedDtypes, nn.Module):
    """An input embedding table in fp8 with one fp32 scale per row (per vocabulary entry): wq [V, D] and
    w_scale [V, 1] from quantize_weight_per_channel (a [V, D] table's rows are its "output channels"). A
    lookup is a gather, not a GEMM: only the rows looked up are dequantized, in fp32, then cast to the
    original weight dtype. ``quantized``: an existing (wq, w_scale) to share (a tied PTPC lm_head's)
    instead of quantizing the weight again."""

    def __init__(self, embedding: nn.Embedding, quantized: tuple[torch.Tensor, torch.Tensor] | None = None):
        super().__init__()
        self.num_embeddings, self.embedding_dim = embedding.num_embeddings, embedding.embedding_dim
        self.padding_idx = embedding.padding_idx  # for repr only: inference needs no gradient masking
        self.out_dtype = embedding.weight.dtype
        wq, w_scale = quantized or quantize_weight_per_channel(embedding.weight.data)
        self.register_buffer("wq", wq)
        self.register_buffer("w_scale", w_scale)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return (F.embedding(ids, self.wq).float() * F.embedding(ids, self.w_scale)).to(self.out_dtype)

    def _on_cast(self, dtype: torch.dtype) -> None:
        self.out_dtype = dtype  # model.half() after patch(): the embeddings come out in fp16 too

    def __getattr__(self, name: str):
        if name == "weight":  # some models read embed_tokens.weight (its device, or rows of it)
            raise AttributeError(
                "FP8Embedding has no .weight: it holds an fp8 table (.wq) and per-row scales (.w_scale), and "
                "this code reads the embedding's weight directly; patch the model with quantize_embeddings=False")
        return super().__getattr__(name)

    def extra_repr(self) -> str:
        pad = f", padding_idx={self.padding_idx}" if self.padding_idx is not None else ""
        return f"{self.num_embeddings}, {self.embedding_dim}{pad}, quantization=fp8 per row"


@dataclass
class PatchReport:
    """What patch() changed."""

    model: str
    quantization: str
    attention_backend: str
    kv_layout: str | None  # None: generate() keeps HF's own cache (see the notes)
    linears_replaced: int = 0
    linears_skipped: list[str] = field(default_factory=list)
    attention_layers: int = 0
    weight_bytes_before: int = 0
    weight_bytes_after: int = 0
    embeddings_quantized: int = 0  # Config.quantize_embeddings: the input embedding (0 or 1)
    embedding_bytes_before: int = 0  # the input embedding's table (+ scales once fp8)
    embedding_bytes_after: int = 0
    compile_decode: bool = False
    compile_decode_device: str | None = None  # set when the model sits where HF will not compile decode
    projection_groups: int = 0  # sibling projections sharing one weight buffer (q/k/v, gate/up)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    def __str__(self) -> str:
        mib = 1 / 2**20
        lines = [
            f"rocm_attn.patch({self.model})",
            f"  quantization        {self.quantization}",
            f"  linears replaced    {self.linears_replaced}",
            f"  linears kept        {len(self.linears_skipped)}"
            + (f" ({', '.join(self.linears_skipped[:4])}{', ...' if len(self.linears_skipped) > 4 else ''})"
               if self.linears_skipped else ""),
            f"  linear weights      {self.weight_bytes_before * mib:.1f} MiB -> {self.weight_bytes_after * mib:.1f} MiB",
            *([f"  projection groups   {self.projection_groups} (q/k/v, gate/up: one weight buffer each, "
               "one GEMM each)"] if self.projection_groups else []),
            *([f"  embedding weights   {self.embedding_bytes_before * mib:.1f} MiB -> "
               f"{self.embedding_bytes_after * mib:.1f} MiB "
               f"({'fp8' if self.embeddings_quantized else 'kept'})"] if self.embedding_bytes_before else []),
            f"  attention layers    {self.attention_layers} -> rocm_attn ({self.attention_backend}, "
            + (f"{self.kv_layout} paged KV cache in generate)" if self.kv_layout else "HF's KV cache in generate)"),
            f"  compiled decode     {self._compile_line()}",
        ]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    def _compile_line(self) -> str:
        if not self.compile_decode:
            return "off"
        if self.compile_decode_device:
            return f"backend=rocm_attn (CUDA graphs) once on a GPU; eager on {self.compile_decode_device} (note)"
        return "backend=rocm_attn (CUDA graphs)"


def _skipped(name: str, patterns) -> bool:
    leaf = name.rsplit(".", 1)[-1]
    return any(fnmatch.fnmatch(name, p) or fnmatch.fnmatch(leaf, p) or p in name for p in patterns)


def _tensor_bytes(*tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def _module_name(model, module) -> str | None:
    return next((n for n, m in model.named_modules() if m is module), None)


def _embeddings(model) -> tuple[str | None, str | None]:
    """(input embedding's module name, lm_head's name when it reads the same weight Parameter: tied)."""
    try:
        emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    except (AttributeError, NotImplementedError):  # a model without the HF accessors
        return None, None
    weight = getattr(emb, "weight", None)
    tied = weight is not None and getattr(head, "weight", None) is weight
    return _module_name(model, emb) if emb is not None else None, _module_name(model, head) if tied else None


def _why_not_fp8_embedding(emb) -> str | None:
    if type(emb).forward is not nn.Embedding.forward:  # a subclass with its own forward (Gemma's scaled one)
        return f"{type(emb).__name__} is not a plain nn.Embedding"
    if emb.max_norm is not None:
        return "max_norm renormalizes the looked-up rows in place"
    if not emb.weight.dtype.is_floating_point or emb.weight.device.type == "meta":
        return f"weight {emb.weight.dtype} on {emb.weight.device}"
    return None


def _quantize_input_embedding(model, report: PatchReport, name: str, tied_head: str | None) -> None:
    """Config.quantize_embeddings: the input embedding -> FP8Embedding, or a report note saying why not."""
    emb = model.get_submodule(name)
    reason = _why_not_fp8_embedding(emb)
    shared = None
    if reason is None and tied_head is not None:
        head = model.get_submodule(tied_head)
        if not isinstance(head, FP8Linear):
            reason = (f"tied to {tied_head}, which stays bf16, so an fp8 copy would add memory; quantize "
                      f"{tied_head} too (skip_modules without it) to share its fp8 weight")
        elif head.quantization != "ptpc_fp8":
            reason = f"tied to {tied_head}, whose per-tensor scale differs from the per-row ones a table gets"
        else:
            shared = (head.wq, head.w_scale)  # the same per-row quantization of the same weight
            report.notes.append(f"quantize_embeddings: {name} shares the fp8 weight of {tied_head} (tied)")
    if reason is not None:
        report.notes.append(f"quantize_embeddings: {name} kept: {reason}")
        return
    # per-row scales with fp8_per_tensor linears too: a lookup table is gathered, never multiplied
    new = FP8Embedding(emb, shared)
    parent_name, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, leaf, new)
    report.embeddings_quantized += 1
    report.embedding_bytes_after = _tensor_bytes(new.wq, new.w_scale)


# Sibling projections of HF decoder layers that read the same input, in the order their outputs are laid out
# (gate before up: the [gate | up] order silu_mul_quant_fp8 reads).
PROJECTION_GROUPS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


def _can_share_storage(members: list[FP8Linear]) -> bool:
    first = members[0]
    return all(
        m.quantization == "ptpc_fp8" and m.in_features == first.in_features
        and m.fast_accum == first.fast_accum and m.wq.dtype == first.wq.dtype and m.wq.device == first.wq.device
        and (m.bias is None) == (first.bias is None)
        and (m.bias is None or m.bias.dtype == first.bias.dtype)
        for m in members
    )


def _share_projection_storage(model, report: PatchReport) -> None:
    """Config.fuse_projections: each PROJECTION_GROUPS group of PTPC FP8Linears under one module gets its wq,
    w_scale and bias concatenated into one buffer; the modules keep row views of it (same values, same memory).
    The compile pass (passes/patched_linear_split.py) then runs linears that read the same input and whose
    weights are adjacent rows of one buffer as one GEMM, and eager calls do the same through the group's
    SharedInputProjections; both check the input and the adjacency themselves, so a model whose projections
    do not share an input is still correct (they run one by one)."""
    for parent_name, parent in model.named_modules():
        for names in PROJECTION_GROUPS:
            named = [(f"{parent_name}.{n}" if parent_name else n, m)
                     for n, m in ((n, getattr(parent, n, None)) for n in names) if isinstance(m, FP8Linear)]
            members = [m for _, m in named]
            if len(members) < 2 or not _can_share_storage(members):
                continue
            for attr in ("wq", "w_scale", "bias"):
                parts = [getattr(m, attr) for m in members]
                if parts[0] is None:
                    continue
                fused = torch.cat(parts, dim=0)
                row = 0
                for m, part in zip(members, parts, strict=True):
                    setattr(m, attr, fused.narrow(0, row, part.shape[0]))
                    row += part.shape[0]
            group = SharedInputProjections(members, [n for n, _ in named])
            for m in members:
                m.shared_input_group = group
            report.projection_groups += 1


EXPERT_COUNT_FIELDS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")


ROUTER_NAMES = ("router", "gate", "gating")


def _is_moe_router(model, name: str, mod: nn.Linear) -> bool:
    """An nn.Linear that scores experts: one output per expert, and either inside a block that holds the
    ``experts`` (itself or up to two levels up: Afmoe's ``mlp.router.gate``, HunYuan-MoE's ``mlp.gate.wg``) or
    named as a router (JetMoe's ``mlp.router.layer``). Most of transformers' routers are not nn.Linear; the
    compile path finds routers in the graph instead (patterns.linear.is_moe_router: the output feeds topk)."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    counts = {getattr(config, f) for f in EXPERT_COUNT_FIELDS if isinstance(getattr(config, f, None), int)}
    parts = name.split(".")
    named_as_router = any(p in ROUTER_NAMES for p in parts[-2:])
    for up in range(1, 4):
        block_name = ".".join(parts[:-up])
        experts = getattr(model.get_submodule(block_name) if block_name else model, "experts", None)
        if experts is not None:
            if isinstance(experts, (nn.ModuleList, nn.ModuleDict)):
                counts.add(len(experts))
            return mod.out_features in counts
        if not block_name:
            break
    return named_as_router and mod.out_features in counts


def _note_unquantized_expert_weights(model, report: PatchReport, config: Config) -> None:
    """A report note for weights patch() leaves as they are although they are GEMM weights: tensors of 3 or
    more dims, such as the fused experts of transformers' MoE models (Mixtral, Qwen-MoE, ...). Only nn.Linear
    layers become FP8Linear, so those stay in their dtype and the model's weight memory falls less."""
    if config.quantization == "none":
        return
    kept = [(f"{mod_name}.{name}" if mod_name else name, p) for mod_name, mod in model.named_modules()
            if not isinstance(mod, nn.modules.conv._ConvNd)  # a conv's [C, C/g, k] weight is no GEMM weight
            for name, p in mod.named_parameters(recurse=False) if p.dim() >= 3 and p.dtype.is_floating_point]
    if kept:
        mib = sum(_tensor_bytes(p) for _, p in kept) / 2**20
        report.notes.append(f"{len(kept)} weight tensors of 3+ dims (fused MoE experts, e.g. {kept[0][0]}: "
                            f"{mib:.1f} MiB in all) kept in {kept[0][1].dtype}: patch() quantizes nn.Linear "
                            "layers only")


def _check_model(model) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"rocm_attn.patch: expected a Hugging Face model (nn.Module), got {type(model).__name__}")
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "_attn_implementation"):
        raise TypeError(f"rocm_attn.patch: {type(model).__name__} has no Hugging Face config; patch() works on "
                        "transformers PreTrainedModel instances (use torch.compile(backend='rocm_attn') otherwise)")
    if not getattr(model, "_supports_attention_backend", False):
        raise NotImplementedError(
            f"rocm_attn.patch: {type(model).__name__} does not route its attention through transformers' "
            "AttentionInterface, so its attention cannot be replaced; use torch.compile(model, backend='rocm_attn')")
    if getattr(config, "is_encoder_decoder", False):
        raise NotImplementedError(f"rocm_attn.patch: {type(model).__name__} is an encoder-decoder model; "
                                  "only decoder-only models are supported")


def patch(model, quantization: str = "ptpc_fp8", attention_backend: str | None = None, compile: bool = True,
          **options):
    """Patch a HF causal LM in place (see the module docstring) and return it; the report is
    ``model.rocm_attn_report``. ``options`` are other ``rocm_attn.Config`` fields (skip_modules, kernels, ...)."""
    _check_model(model)
    config = Config.from_env(quantization=quantization, attention_backend=attention_backend, **options)
    previous = getattr(model, "_rocm_attn_config", None)
    if previous is not None:
        if previous != config:
            raise ValueError(f"rocm_attn.patch: {type(model).__name__} is already patched with a different config "
                             f"({previous.quantization}, {previous.attention_backend}); load the model again to "
                             "patch it differently")
        return model  # idempotent
    from .hf_cache import layout_for_backend

    # checked before anything changes: a refusal leaves the model as it was
    attn = _attention_modules(model)
    if not attn:
        raise NotImplementedError(f"rocm_attn.patch: found no attention module (a '*Attention' module with "
                                  f"layer_idx) in {type(model).__name__}")
    sinks = next((name for name, m in attn if getattr(m, "sinks", None) is not None), None)
    if sinks is not None:
        raise NotImplementedError(f"rocm_attn.patch: {type(model).__name__}'s attention has sinks ({sinks}.sinks), "
                                  "which rocm_attn's attention kernels do not implement; use "
                                  "torch.compile(model, backend='rocm_attn'), which leaves that attention as written")
    cache_refusal = paged_cache_refusal(model.config, attn)

    report = PatchReport(type(model).__name__, config.quantization, config.attention_backend,
                         layout_for_backend(config.attention_backend) if cache_refusal is None else None)

    # 1. linears (tied embeddings found first: an FP8Linear lm_head no longer holds the shared weight)
    embedding_name, tied_head = _embeddings(model)
    custom = {}  # nn.Linear subclasses with their own forward (kept): type name -> first module name
    routers = []  # MoE routers (kept): fp8 logits could send tokens to other experts
    to_quantize = []
    for name, mod in list(model.named_modules()):
        if not isinstance(mod, nn.Linear):
            continue
        w_bytes = _tensor_bytes(mod.weight, mod.bias)
        report.weight_bytes_before += w_bytes
        if config.quantization == "none" or _skipped(name, config.skip_modules):
            report.linears_skipped.append(name)
            report.weight_bytes_after += w_bytes
        elif type(mod).forward is not nn.Linear.forward:  # e.g. Llama 4's router returns (scores, logits)
            report.linears_skipped.append(name)
            report.weight_bytes_after += w_bytes
            custom.setdefault(type(mod).__name__, name)
        elif _is_moe_router(model, name, mod):
            report.linears_skipped.append(name)
            report.weight_bytes_after += w_bytes
            routers.append(name)
        elif mod.weight.dim() != 2 or not mod.weight.dtype.is_floating_point or mod.weight.device.type == "meta":
            raise NotImplementedError(f"rocm_attn.patch: cannot quantize {name} ({type(mod).__name__}, weight "
                                      f"{mod.weight.dtype} on {mod.weight.device}); add it to skip_modules")
        else:
            to_quantize.append((name, mod))
    for name, mod in to_quantize:  # every check passed: now the model changes
        new = FP8Linear(mod, config.quantization, config.fast_accum)
        parent_name, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, leaf, new)
        report.linears_replaced += 1
        report.weight_bytes_after += _tensor_bytes(new.wq, new.w_scale, new.bias)

    for type_name, name in custom.items():
        report.notes.append(f"{type_name} layers (e.g. {name}) kept: an nn.Linear subclass with its own forward")
    if routers:
        report.notes.append(f"{len(routers)} MoE router linears (e.g. {routers[0]}) kept unquantized, as vLLM keeps "
                            "them: fp8 router logits can send tokens to other experts")
    if config.fuse_projections and config.quantization == "ptpc_fp8":
        _share_projection_storage(model, report)
    _note_unquantized_expert_weights(model, report, config)

    # 1b. the input embedding (Config.quantize_embeddings, on by default)
    if embedding_name is not None:
        emb_weight = getattr(model.get_submodule(embedding_name), "weight", None)
        report.embedding_bytes_before = report.embedding_bytes_after = _tensor_bytes(emb_weight)
    if config.quantize_embeddings and config.quantization != "none":
        if embedding_name is None:
            report.notes.append("quantize_embeddings: the model has no input embedding (get_input_embeddings)")
        else:
            _quantize_input_embedding(model, report, embedding_name, tied_head)

    # 2. attention
    report.attention_layers = len(attn)
    register_hf_attention()
    try:
        model.set_attn_implementation(ATTN_NAME)
    except Exception as exc:  # older / unusual models: set the config field directly
        report.notes.append(f"set_attn_implementation failed ({exc}); set config._attn_implementation")
    for sub in model.modules():
        cfg = getattr(sub, "config", None)
        if cfg is not None and hasattr(cfg, "_attn_implementation"):
            cfg._attn_implementation = ATTN_NAME
    if model.config._attn_implementation != ATTN_NAME:
        raise NotImplementedError(f"rocm_attn.patch: {type(model).__name__} refused attention implementation "
                                  f"{ATTN_NAME!r}")
    model.register_forward_pre_hook(pass_cache_to_attention, with_kwargs=True)
    base = getattr(model, "base_model", None)
    if base is not None and base is not model:
        base.register_forward_pre_hook(pass_cache_to_attention, with_kwargs=True)

    # 3. generation: our cache, and compiled decode (only on our cache: its decode step is CUDA-graph safe)
    if cache_refusal is not None:
        report.notes.append(f"generate: HF's own KV cache, not the paged RocmAttnCache ({cache_refusal}); "
                            "attention runs flash_attention on it with HF's mask, decode is not compiled")
    elif hasattr(model, "_prepare_cache_for_generation"):
        _install_cache_factory(model, config)
    if compile and cache_refusal is None and getattr(model, "generation_config", None) is not None:
        from transformers import CompileConfig

        # CUDA graphs: a decode step on the RocmAttnCache runs on device tensors only (hf_cache.decode_step).
        # "mode" rides in the options: torch.compile refuses mode and options together (HF passes both).
        options_for_backend = {"quantization": config.quantization, "attention_backend": config.attention_backend,
                               "kernels": config.kernels, "skip_modules": config.skip_modules,
                               "mode": "reduce-overhead"}
        model.generation_config.compile_config = CompileConfig(backend="rocm_attn", mode=None,
                                                               options=options_for_backend)
        report.compile_decode = True
        device = next(model.parameters(), torch.empty(0)).device
        if device.type not in HF_COMPILE_DEVICES:  # HF's _valid_auto_compile_criteria: decode runs eagerly
            report.compile_decode_device = device.type
            report.notes.append(f"compile: generate() compiles the decode step on {' / '.join(HF_COMPILE_DEVICES)} "
                                f"devices only (transformers' rule): on {device.type} it runs eagerly (transformers "
                                "warns once that compile_config is set); moved to a GPU, the model compiles it")
    elif getattr(model, "generation_config", None) is not None:
        # HF would auto-compile decode on a GPU with its default (inductor, CUDA graphs): never with our cache
        model.generation_config.disable_compile = True
    # 4. continuous batching (generate_batch) runs under its own attention name: see continuous_batching.py
    enable_continuous_batching(model, attn, config.attention_backend, ATTN_NAME)
    model._rocm_attn_config = config
    model.rocm_attn_report = report
    log.info("%s", report)
    return model


GENERATE_CACHE_MIN_LEN = 256


def rounded_cache_length(positions: int, min_len: int = GENERATE_CACHE_MIN_LEN) -> int:
    """The length generate()'s cache gets for a call that may reach ``positions``: at least ``min_len``,
    then rounded up to a multiple of a quarter of the largest power of two <= positions (1025 -> 1280,
    1281 -> 1536, 2047 -> 2048), so at most 25% more positions than asked and 4 lengths per doubling.
    Why: a cache of a new length changes the compiled decode's shapes (block table, mask), and on a GPU
    that recompiles decode (~50 s for SmolLM2 on an H100); rounded, calls whose lengths differ a little
    share one cache."""
    if positions <= min_len:
        return min_len
    step = max(1 << (positions.bit_length() - 1) >> 2, 1)
    return -(-positions // step) * step


def _generate_cache(model, config: Config, batch: int, max_len: int) -> RocmAttnCache:
    """The cache for one generate() call. Like HF's static cache, the last one is kept on the model and
    reset for the next call when it fits (same batch, long enough): its tensors keep their addresses, so
    the compiled decode's CUDA graph replays instead of re-recording. A cache returned by generate()
    (return_dict_in_generate) is therefore emptied by the next generate() that makes its own cache.
    A new cache is sized rounded_cache_length(max_len) (Config.round_generate_cache), so a slightly
    longer call fits it too."""
    cache = getattr(model, "_rocm_attn_generate_cache", None)
    if (cache is not None and cache.pool_batch_size == batch and cache.pool_max_len >= max_len
            and cache._batch in (None, batch) and cache.backend == config.attention_backend):
        cache.reset()
        return cache
    if config.round_generate_cache:
        max_len = rounded_cache_length(max_len)
    cache = RocmAttnCache(model, max_batch_size=batch, max_cache_len=max_len,
                          backend=config.attention_backend)
    model._rocm_attn_generate_cache = cache
    return cache


def _install_cache_factory(model, config: Config) -> None:
    """Wrap the instance's _prepare_cache_for_generation: where HF would make a DynamicCache for
    generate(), make a RocmAttnCache sized for this call instead."""
    original = model._prepare_cache_for_generation
    signature = inspect.signature(original)

    def prepare(*args, **kwargs):
        result = original(*args, **kwargs)
        bound = signature.bind(*args, **kwargs)
        model_kwargs = bound.arguments.get("model_kwargs")
        generation_config = bound.arguments.get("generation_config")
        if model_kwargs is None or generation_config is None:
            return result
        from transformers import DynamicCache

        cache = model_kwargs.get("past_key_values")
        max_length = generation_config.max_length
        if isinstance(cache, RocmAttnCache) and max_length and max_length > cache.pool_max_len:
            raise ValueError(f"rocm_attn: this generate() call may reach {max_length} positions (prompt, "
                             f"padding and new tokens) but the RocmAttnCache holds "
                             f"max_cache_len={cache.pool_max_len}; make it larger")
        made_by_hf = type(cache) is DynamicCache and not getattr(cache, "_is_user_defined", False)
        if made_by_hf and generation_config.cache_implementation is None:
            batch = int(bound.arguments.get("batch_size", 1))
            max_len = int(bound.arguments.get("max_cache_length", 0) or generation_config.max_length or 4096)
            # a length the user set for generate's caches (HF's own static cache honours it too)
            max_len = max(max_len, int(getattr(generation_config, "max_cache_len", None) or 0))
            model_kwargs["past_key_values"] = _generate_cache(model, config, batch, max_len)
        return result

    model._prepare_cache_for_generation = prepare
