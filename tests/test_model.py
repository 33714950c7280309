"""Tests of the BitCPM HuggingFace model on tiny random configs."""

import json
import math
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import bitcpm_kernels as bk
from bitcpm_kernels.llama_import import bitcpm_config_from_llama, llama_to_bitcpm
from bitcpm_kernels.models import TERNARY_PROJECTIONS, BitCPMConfig, BitCPMForCausalLM, EagerBitLinear

transformers = pytest.importorskip("transformers")


def tiny_config(**overrides) -> BitCPMConfig:
    settings = dict(
        vocab_size=97,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        # MiniCPM-style scalings, all different from 1.
        scale_emb=12.0,
        scale_depth=1.4,
        dim_model_base=16,
        tie_word_embeddings=False,
    )
    settings.update(overrides)
    return BitCPMConfig(**settings)


def tiny_model(seed: int = 0, **overrides) -> BitCPMForCausalLM:
    torch.manual_seed(seed)
    model = BitCPMForCausalLM(tiny_config(**overrides))
    # Random norm weights, so a wrong norm cannot hide behind ones.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.uniform_(0.5, 1.5)
    return model.eval()


def input_ids(batch: int = 2, seq_len: int = 11, vocab: int = 97, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, seq_len), generator=torch.Generator().manual_seed(seed))


def reference_logits(model: BitCPMForCausalLM, ids: torch.Tensor, quantize: bool = True) -> torch.Tensor:
    """MiniCPM forward pass written out with eager ops, as an independent check of the model."""
    cfg = model.config
    batch, seq_len = ids.shape
    heads, kv_heads, head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim

    def linear(module, x):
        w = module.weight
        if quantize:
            w = bk.reference.fake_quantize_weight(w, cfg.quant_group_size, cfg.quant_eps)
        return x @ w.T

    def rms_norm(norm, x):
        return norm.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + cfg.rms_norm_eps))

    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, head_dim, 2).float() / head_dim))
    angles = torch.arange(seq_len).float()[:, None] * inv_freq[None, :]
    cos = torch.cat([angles.cos(), angles.cos()], dim=-1)
    sin = torch.cat([angles.sin(), angles.sin()], dim=-1)

    def rope(x):
        x1, x2 = x[..., : head_dim // 2], x[..., head_dim // 2 :]
        return x * cos + torch.cat([-x2, x1], dim=-1) * sin

    causal = torch.full((seq_len, seq_len), float("-inf")).triu(1)
    residual_scale = cfg.scale_depth / math.sqrt(cfg.num_hidden_layers)

    h = model.model.embed_tokens.weight[ids] * cfg.scale_emb
    for layer in model.model.layers:
        attn = layer.self_attn
        x = rms_norm(layer.input_layernorm, h)
        q = rope(linear(attn.q_proj, x).view(batch, seq_len, heads, head_dim).transpose(1, 2))
        k = rope(linear(attn.k_proj, x).view(batch, seq_len, kv_heads, head_dim).transpose(1, 2))
        v = linear(attn.v_proj, x).view(batch, seq_len, kv_heads, head_dim).transpose(1, 2)
        k = k.repeat_interleave(heads // kv_heads, dim=1)
        v = v.repeat_interleave(heads // kv_heads, dim=1)
        scores = q @ k.transpose(-1, -2) / math.sqrt(head_dim) + causal
        context = (scores.softmax(-1) @ v).transpose(1, 2).reshape(batch, seq_len, heads * head_dim)
        h = h + residual_scale * linear(attn.o_proj, context)

        x = rms_norm(layer.post_attention_layernorm, h)
        mlp = layer.mlp
        h = h + residual_scale * linear(mlp.down_proj, F.silu(linear(mlp.gate_proj, x)) * linear(mlp.up_proj, x))

    h = rms_norm(model.model.norm, h)
    return (h / (cfg.hidden_size / cfg.dim_model_base)) @ model.lm_head.weight.T


def test_config_scalings():
    cfg = tiny_config()
    assert cfg.residual_scale == pytest.approx(1.4 / math.sqrt(3))
    assert cfg.logit_scale == 4.0
    assert cfg.head_dim == 16


def test_config_llama_defaults_are_identity():
    cfg = BitCPMConfig(hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3)
    assert cfg.residual_scale == 1.0
    assert cfg.logit_scale == 1.0
    assert cfg.scale_emb == 1.0


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"weight_format": "int4"}, "weight_format"),
        ({"quant_group_size": -2}, "quant_group_size"),
        ({"act_bits": 4}, "act_bits"),
        ({"num_key_value_heads": 3}, "num_key_value_heads"),
    ],
)
def test_config_rejects_invalid(overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(**overrides)


def test_projections_are_bitlinear():
    model = tiny_model()
    ternary = model.ternary_linears()
    assert len(ternary) == 7 * model.config.num_hidden_layers
    for name, module in ternary.items():
        assert isinstance(module, bk.BitLinear), name
        assert name.rsplit(".", 1)[-1] in TERNARY_PROJECTIONS
    assert type(model.lm_head) is nn.Linear
    assert type(model.model.embed_tokens) is nn.Embedding


@pytest.mark.parametrize("group_size", [-1, 0, 16])
def test_forward_matches_eager_minicpm(group_size):
    model = tiny_model(quant_group_size=group_size)
    ids = input_ids()
    with torch.no_grad():
        logits = model(ids).logits
        expected = reference_logits(model, ids)
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)


def test_quantize_off_matches_eager_minicpm():
    model = tiny_model()
    model.set_quantize(False)
    ids = input_ids()
    with torch.no_grad():
        logits = model(ids).logits
        expected = reference_logits(model, ids, quantize=False)
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)


def test_quantization_changes_logits():
    model = tiny_model()
    ids = input_ids()
    with torch.no_grad():
        quantized = model(ids).logits
        model.set_quantize(False)
        plain = model(ids).logits
    assert (quantized - plain).abs().max() > 1e-2


def test_backward_reaches_latent_weights():
    model = tiny_model().train()
    ids = input_ids()
    loss = model(ids, labels=ids).loss
    loss.backward()
    assert torch.isfinite(loss)
    for name, module in model.ternary_linears().items():
        assert module.weight.grad is not None, name
        assert module.weight.grad.abs().sum() > 0, name
    assert model.model.embed_tokens.weight.grad.abs().sum() > 0


def test_eager_bitlinear_matches_package():
    torch.manual_seed(3)
    fused = bk.BitLinear(48, 24, bias=True, group_size=16)
    eager = EagerBitLinear(48, 24, bias=True, group_size=16)
    eager.load_state_dict(fused.state_dict())
    x = torch.randn(5, 48, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)

    y_fused = fused(x)
    y_eager = eager(x2)
    torch.testing.assert_close(y_fused, y_eager, rtol=1e-5, atol=1e-5)

    grad = torch.randn_like(y_fused)
    y_fused.backward(grad)
    y_eager.backward(grad)
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fused.weight.grad, eager.weight.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fused.bias.grad, eager.bias.grad, rtol=1e-5, atol=1e-5)


def test_tied_head_shares_embedding():
    model = tiny_model(tie_word_embeddings=True)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    untied = tiny_model(tie_word_embeddings=False)
    assert untied.lm_head.weight is not untied.model.embed_tokens.weight


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_save_load_remote_code(tmp_path, tied):
    model = tiny_model(tie_word_embeddings=tied)
    model.save_pretrained(tmp_path)

    assert (tmp_path / "modeling_bitcpm.py").is_file()
    assert (tmp_path / "configuration_bitcpm.py").is_file()
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_bitcpm.BitCPMForCausalLM"
    assert config["auto_map"]["AutoConfig"] == "configuration_bitcpm.BitCPMConfig"

    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, trust_remote_code=True).eval()
    assert type(loaded).__name__ == "BitCPMForCausalLM"
    assert loaded.config.scale_emb == 12.0
    if tied:
        assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
    ids = input_ids()
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=0)


def test_folder_loads_without_package(tmp_path):
    """A saved folder loads and computes the same logits where bitcpm_kernels is not importable."""
    model = tiny_model()
    model.save_pretrained(tmp_path / "model")
    ids = input_ids()
    with torch.no_grad():
        expected = model(ids).logits
    torch.save({"ids": ids, "logits": expected}, tmp_path / "expected.pt")

    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["bitcpm_kernels"] = None  # any import of the package now raises ImportError
        import torch, transformers
        model = transformers.AutoModelForCausalLM.from_pretrained({str(tmp_path / "model")!r}, trust_remote_code=True)
        backend = sys.modules[type(model).__module__].QUANTIZER_BACKEND
        data = torch.load({str(tmp_path / "expected.pt")!r}, weights_only=True)
        with torch.no_grad():
            diff = (model.eval()(data["ids"]).logits - data["logits"]).abs().max().item()
        print(backend, diff)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr
    backend, diff = result.stdout.split()[-2:]
    assert backend == "eager"
    assert float(diff) < 1e-4


def test_generate_with_cache_matches_without():
    model = tiny_model()
    prompt = input_ids(batch=1, seq_len=5)
    with_cache = model.generate(prompt, max_new_tokens=6, do_sample=False, use_cache=True)
    without_cache = model.generate(prompt, max_new_tokens=6, do_sample=False, use_cache=False)
    assert with_cache.shape == (1, 11)
    assert torch.equal(with_cache, without_cache)


def test_packed_config_is_rejected():
    with pytest.raises(ValueError, match="load_packed_model"):
        BitCPMForCausalLM(tiny_config(bitcpm_packed={"quant_type": "ternary", "group_size": -1}))


def tiny_llama(tied: bool):
    config = transformers.LlamaConfig(
        vocab_size=101,
        hidden_size=48,
        intermediate_size=80,
        num_hidden_layers=2,
        num_attention_heads=6,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=tied,
        rope_parameters={"rope_type": "default", "rope_theta": 50000.0},
    )
    torch.manual_seed(5)
    return transformers.LlamaForCausalLM(config).eval()


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_llama_import_matches_llama(tied):
    llama = tiny_llama(tied)
    model = llama_to_bitcpm(llama).eval()
    ids = input_ids(vocab=101)
    model.set_quantize(False)
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, llama(ids).logits, rtol=0, atol=0)
    assert model.config.scale_emb == 1.0
    assert model.config.residual_scale == 1.0
    assert model.config.dim_model_base == model.config.hidden_size
    assert model.config.rope_theta == 50000.0
    if tied:
        assert model.lm_head.weight is model.model.embed_tokens.weight


def test_llama_import_copies_weights():
    llama = tiny_llama(tied=False)
    model = llama_to_bitcpm(llama)
    q_proj = model.model.layers[0].self_attn.q_proj.weight
    llama_q = llama.model.layers[0].self_attn.q_proj.weight
    assert torch.equal(q_proj, llama_q)
    assert q_proj.data_ptr() != llama_q.data_ptr()


def test_llama_import_rejects_scaled_rope():
    llama = tiny_llama(tied=False)
    llama.config.rope_parameters = {"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0}
    with pytest.raises(NotImplementedError, match="rope_type"):
        bitcpm_config_from_llama(llama.config)
