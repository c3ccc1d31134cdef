"""rocm_attn.demo.load: a .gguf is converted to a HF directory once, then read from there.

The GGUF reader is replaced by a tiny Llama and a word-level tokenizer (reading the real SmolLM2 GGUF takes
~30 s; tests/hf/test_smollm2.py checks that its converted copy equals a direct read).
"""

import pathlib

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM,
                          PreTrainedTokenizerFast)

from rocm_attn import demo


def tiny_tokenizer():
    vocab = {"[UNK]": 0, "<s>": 1, "</s>": 2, "the": 3, "sky": 4, "is": 5, "blue": 6}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", bos_token="<s>", eos_token="</s>")


class FakeGGUF:
    """Stands in for transformers' GGUF reading: counts reads and tags the model as GGUF-quantized, as
    transformers 5.2x does (that tag is what makes save_pretrained refuse)."""

    def __init__(self, monkeypatch, packed=False):
        self.reads = 0
        self.packed = packed
        real_tok, real_lm = AutoTokenizer.from_pretrained, AutoModelForCausalLM.from_pretrained

        def tok_from_pretrained(where, **kwargs):
            return tiny_tokenizer() if "gguf_file" in kwargs else real_tok(where, **kwargs)

        def lm_from_pretrained(where, **kwargs):
            if "gguf_file" not in kwargs:
                return real_lm(where, **kwargs)
            self.reads += 1
            torch.manual_seed(1)
            cfg = LlamaConfig(vocab_size=7, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
            lm = LlamaForCausalLM(cfg).to(kwargs["dtype"])
            lm.hf_quantizer = object()
            lm.config.quantization_config = {"quant_method": "gguf"}
            if self.packed:
                lm.register_buffer("packed", torch.zeros(4).as_subclass(Packed))
            return lm

        monkeypatch.setattr(AutoTokenizer, "from_pretrained", tok_from_pretrained)
        monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", lm_from_pretrained)


class Packed(torch.Tensor):
    """A tensor subclass, as a transformers that keeps GGUF weights packed would hold."""


@pytest.fixture
def gguf(tmp_path):
    path = tmp_path / "models" / "tiny.Q4_1.gguf"
    path.parent.mkdir()
    path.write_bytes(b"GGUF not read: the reader is faked")
    return path


def logits(lm):
    with torch.no_grad():
        return lm(torch.tensor([[1, 3, 4, 5, 6]])).logits


def test_cache_key_names_file_dtype_and_transformers(gguf, tmp_path, monkeypatch):
    import transformers

    monkeypatch.setenv("ROCM_ATTN_CACHE_DIR", str(tmp_path / "cache"))
    bf16, fp32 = demo.gguf_cache_dir(gguf, torch.bfloat16), demo.gguf_cache_dir(gguf, torch.float32)
    assert bf16.parent == tmp_path / "cache" / "gguf" and bf16 != fp32
    assert "bfloat16" in bf16.name and transformers.__version__ in bf16.name
    gguf.write_bytes(b"a different file of another size")
    assert demo.gguf_cache_dir(gguf, torch.bfloat16) != bf16
    monkeypatch.setenv("ROCM_ATTN_CACHE_DIR", "off")
    assert demo.gguf_cache_dir(gguf, torch.bfloat16) is None
    monkeypatch.delenv("ROCM_ATTN_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert demo.gguf_cache_dir(gguf, torch.bfloat16).parent == tmp_path / "xdg" / "rocm_attn" / "gguf"


def test_converted_once_then_read_back(gguf, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ROCM_ATTN_CACHE_DIR", str(tmp_path / "cache"))
    fake = FakeGGUF(monkeypatch)
    tok1, lm1 = demo.load(gguf, torch.bfloat16, "cpu")
    assert fake.reads == 1 and "converted tiny.Q4_1.gguf once" in capsys.readouterr().out
    tok2, lm2 = demo.load(gguf, torch.bfloat16, "cpu")
    assert fake.reads == 1  # the second load read the converted copy
    cached = demo.gguf_cache_dir(gguf, torch.bfloat16)
    assert (cached / "config.json").is_file() and (cached / "tokenizer.json").is_file()
    assert not [p for p in cached.parent.iterdir() if p.name.startswith(".tmp-")]
    # both loads return the same model, without the GGUF tag, and it equals what the GGUF read gave
    assert getattr(lm1, "hf_quantizer", None) is None and getattr(lm2.config, "quantization_config", None) is None
    assert torch.equal(logits(lm1), logits(lm2))
    monkeypatch.setenv("ROCM_ATTN_CACHE_DIR", "off")
    tok3, lm3 = demo.load(gguf, torch.bfloat16, "cpu")
    assert fake.reads == 2 and torch.equal(logits(lm3), logits(lm2))
    assert tok2("the sky is blue").input_ids == tok3("the sky is blue").input_ids == [3, 4, 5, 6]


def test_unwritable_cache_reads_the_gguf(gguf, tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("a file where the cache directory would go")
    monkeypatch.setenv("ROCM_ATTN_CACHE_DIR", str(blocker))
    fake = FakeGGUF(monkeypatch)
    tok, lm = demo.load(gguf, torch.bfloat16, "cpu")
    assert fake.reads == 1 and "cannot write the converted tiny.Q4_1.gguf" in capsys.readouterr().out
    assert lm.hf_quantizer is not None  # returned as read, its GGUF tag restored
    assert logits(lm).shape == (1, 5, 7)


def test_packed_weights_are_not_cached(gguf, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ROCM_ATTN_CACHE_DIR", str(tmp_path / "cache"))
    fake = FakeGGUF(monkeypatch, packed=True)
    demo.load(gguf, torch.bfloat16, "cpu")
    demo.load(gguf, torch.bfloat16, "cpu")
    assert fake.reads == 2 and "keeps packed GGUF weights; not caching" in capsys.readouterr().out
    assert not pathlib.Path(tmp_path / "cache" / "gguf").exists()


def test_a_model_transformers_will_not_save_reads_the_gguf(gguf, tmp_path, monkeypatch, capsys):
    def refuse(self, *args, **kwargs):
        raise ValueError("The model is quantized with gguf and is not serializable")

    monkeypatch.setenv("ROCM_ATTN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(LlamaForCausalLM, "save_pretrained", refuse)
    fake = FakeGGUF(monkeypatch)
    _, lm = demo.load(gguf, torch.bfloat16, "cpu")
    assert fake.reads == 1 and "ValueError: The model is quantized" in capsys.readouterr().out
    assert logits(lm).shape == (1, 5, 7)
    assert not any((tmp_path / "cache" / "gguf").iterdir())  # no half-written copy left


def test_cache_command_lists_and_clears_the_copies(gguf, tmp_path, monkeypatch, capsys):
    """A changed GGUF converts again and says an older copy is kept; `rocm-attn cache` lists both copies
    and `--clear` deletes them (nothing else in the folder's parent)."""
    from rocm_attn.cli import main

    monkeypatch.setenv("ROCM_ATTN_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "keep.txt").write_text("not a converted copy")
    fake = FakeGGUF(monkeypatch)
    demo.load(gguf, torch.bfloat16, "cpu")
    assert "other cop" not in capsys.readouterr().out
    gguf.write_bytes(b"a changed file of another size")
    demo.load(gguf, torch.bfloat16, "cpu")
    out = capsys.readouterr().out
    assert fake.reads == 2 and "1 other copy of tiny.Q4_1" in out
    assert main(["cache"]) == 0
    out = capsys.readouterr().out
    assert "2 converted GGUF copies" in out and out.count("tiny.Q4_1-") == 2
    assert len(list((tmp_path / "cache" / "gguf").iterdir())) == 2
    assert main(["cache", "--clear"]) == 0
    assert "deleted 2" in capsys.readouterr().out
    assert not any((tmp_path / "cache" / "gguf").iterdir()) and (tmp_path / "cache" / "keep.txt").is_file()
    monkeypatch.setenv("ROCM_ATTN_CACHE_DIR", "off")
    assert main(["cache", "--clear"]) == 0 and "caching is off" in capsys.readouterr().out
