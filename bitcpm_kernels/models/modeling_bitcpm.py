"""BitCPM: a MiniCPM-architecture causal LM whose linear projections are ternary.

This file is HuggingFace remote code. `save_pretrained` copies it and
`configuration_bitcpm.py` into the output folder, and
`AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)` loads
it from there. It uses `bitcpm_kernels.BitLinear` (the fused kernels) when
that package is importable, and otherwise `EagerBitLinear` below, which runs
the same quantizer math as a chain of PyTorch ops.

Per decoder layer, with `r = scale_depth / sqrt(num_hidden_layers)`:

    h = h + r * o_proj(attention(rope(q_proj(norm(h))), rope(k_proj(..)), v_proj(..)))
    h = h + r * down_proj(silu(gate_proj(norm(h))) * up_proj(norm(h)))

The embeddings are multiplied by `scale_emb` and the final hidden state is
divided by `hidden_size / dim_model_base` before `lm_head`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache
from transformers.generation import GenerationMixin
from transformers.masking_utils import create_causal_mask
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, PreTrainedModel
from transformers.utils.deprecation import deprecate_kwarg

from .configuration_bitcpm import BitCPMConfig

# Names of the projections that become ternary, in every decoder layer.
TERNARY_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class EagerBitLinear(nn.Linear):
    """A ternary-QAT linear layer written in plain PyTorch ops.

    It computes what `bitcpm_kernels.BitLinear` computes. Per group, in float32:
    `s = max(mean(|W|), eps)`, `Q = clamp(round_half_to_even(W / s), -1, 1)` and
    `W_hat = (Q * s).to(W.dtype)`. The forward pass is `x @ W_hat^T + bias`,
    and the backward pass is a straight-through estimator in detach form
    (`W + (W_hat - W).detach()`). With `act_bits=8` activations are also
    fake-quantized per token. Setting `quantize = False` makes it a plain
    `nn.Linear`.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = False,
        group_size: int = -1,
        eps: float = 1e-5,
        act_bits: int | None = None,
        device=None,
        dtype=None,
    ):
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        if group_size > 0 and in_features % group_size != 0:
            raise ValueError(f"in_features={in_features} is not a multiple of group_size={group_size}")
        self.group_size = group_size
        self.eps = eps
        self.act_bits = act_bits
        self.quantize = True

    def _fake_quantize_weight(self) -> torch.Tensor:
        w = self.weight.detach()
        n, k = w.shape
        if self.group_size == -1:
            groups = w.float().reshape(n, 1, k)
        elif self.group_size == 0:
            groups = w.float().reshape(1, 1, n * k)
        else:
            groups = w.float().reshape(n, k // self.group_size, self.group_size)
        scales = groups.abs().mean(dim=-1, keepdim=True).clamp(min=self.eps)
        codes = torch.round(groups / scales).clamp(-1, 1)
        return (codes * scales).to(w.dtype).reshape(n, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.quantize:
            return F.linear(x, self.weight, self.bias)

        w_hat = self._fake_quantize_weight()
        w_ste = self.weight + (w_hat - self.weight).detach()
        if self.act_bits is not None:
            xf = x.detach().float()
            act_scale = 127.0 / xf.abs().amax(dim=-1, keepdim=True).clamp(min=self.eps)
            x_hat = (torch.round(xf * act_scale).clamp(-128, 127) / act_scale).to(x.dtype)
            x = x + (x_hat - x).detach()
        return F.linear(x, w_ste, self.bias)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, group_size={self.group_size}, eps={self.eps}, "
            f"act_bits={self.act_bits}, quantize={self.quantize}"
        )


try:
    from bitcpm_kernels import BitLinear

    QUANTIZER_BACKEND = "bitcpm_kernels"
except (ImportError, AttributeError):
    # A saved folder must load where the package is not installed.
    BitLinear = EagerBitLinear
    QUANTIZER_BACKEND = "eager"


def make_projection(config: BitCPMConfig, in_features: int, out_features: int, bias: bool) -> nn.Linear:
    """Build one of the seven per-layer projections for the config's weight format."""
    if config.weight_format == "pseudo_quantized":
        # The weights already are W_hat, so quantizing again would shrink the scales.
        return nn.Linear(in_features, out_features, bias=bias)
    return BitLinear(
        in_features,
        out_features,
        bias=bias,
        group_size=config.quant_group_size,
        eps=config.quant_eps,
        act_bits=config.act_bits,
    )


class BitCPMRMSNorm(nn.Module):
    """Root-mean-square layer norm, computed in float32 (as in Llama and MiniCPM)."""

    def __init__(self, hidden_size: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        input_dtype = hidden_states.dtype
        hidden_states = hidden_states.to(torch.float32)
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
        return self.weight * hidden_states.to(input_dtype)


class BitCPMRotaryEmbedding(nn.Module):
    """Default rotary position embedding: `inv_freq[i] = rope_theta ** (-2 i / head_dim)`."""

    def __init__(self, config: BitCPMConfig):
        super().__init__()
        self.head_dim = config.head_dim
        self.rope_theta = config.rope_theta
        self.register_buffer("inv_freq", self.compute_inv_freq(), persistent=False)

    def compute_inv_freq(self) -> torch.Tensor:
        exponents = torch.arange(0, self.head_dim, 2, dtype=torch.float) / self.head_dim
        return 1.0 / (self.rope_theta**exponents)

    @torch.no_grad()
    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = position_ids[..., None].float() * self.inv_freq.to(device=x.device, dtype=torch.float)
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(x.dtype), emb.sin().to(x.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1 = x[..., : x.shape[-1] // 2]
    x2 = x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary_pos_emb(q, k, cos, sin):
    """Rotate queries and keys of shape (batch, heads, seq, head_dim)."""
    cos = cos.unsqueeze(1)
    sin = sin.unsqueeze(1)
    return (q * cos) + (rotate_half(q) * sin), (k * cos) + (rotate_half(k) * sin)


def repeat_kv(hidden_states: torch.Tensor, n_rep: int) -> torch.Tensor:
    """Repeat each key/value head `n_rep` times for grouped-query attention."""
    batch, num_kv_heads, seq_len, head_dim = hidden_states.shape
    if n_rep == 1:
        return hidden_states
    hidden_states = hidden_states[:, :, None, :, :].expand(batch, num_kv_heads, n_rep, seq_len, head_dim)
    return hidden_states.reshape(batch, num_kv_heads * n_rep, seq_len, head_dim)


def eager_attention_forward(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    key_states = repeat_kv(key, module.num_key_value_groups)
    value_states = repeat_kv(value, module.num_key_value_groups)

    attn_weights = torch.matmul(query, key_states.transpose(2, 3)) * scaling
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask
    attn_weights = F.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype)
    attn_weights = F.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value_states)
    return attn_output.transpose(1, 2).contiguous(), attn_weights


class BitCPMAttention(nn.Module):
    """Grouped-query self-attention with ternary q/k/v/o projections."""

    def __init__(self, config: BitCPMConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.head_dim = config.head_dim
        self.num_key_value_groups = config.num_attention_heads // config.num_key_value_heads
        self.scaling = self.head_dim**-0.5
        self.attention_dropout = config.attention_dropout
        self.is_causal = True

        q_features = config.num_attention_heads * self.head_dim
        kv_features = config.num_key_value_heads * self.head_dim
        self.q_proj = make_projection(config, config.hidden_size, q_features, config.attention_bias)
        self.k_proj = make_projection(config, config.hidden_size, kv_features, config.attention_bias)
        self.v_proj = make_projection(config, config.hidden_size, kv_features, config.attention_bias)
        self.o_proj = make_projection(config, q_features, config.hidden_size, config.attention_bias)

    def forward(self, hidden_states, position_embeddings, attention_mask=None, cache: Cache | None = None, **kwargs):
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.head_dim)

        query_states = self.q_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        key_states = self.k_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        value_states = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)

        cos, sin = position_embeddings
        query_states, key_states = apply_rotary_pos_emb(query_states, key_states, cos, sin)
        if cache is not None:
            key_states, value_states = cache.update(key_states, value_states, self.layer_idx)

        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        attn_output, attn_weights = attention_interface(
            self,
            query_states,
            key_states,
            value_states,
            attention_mask,
            dropout=0.0 if not self.training else self.attention_dropout,
            scaling=self.scaling,
            **kwargs,
        )

        attn_output = attn_output.reshape(*input_shape, -1).contiguous()
        return self.o_proj(attn_output), attn_weights


class BitCPMMLP(nn.Module):
    """SwiGLU feed-forward block with ternary gate/up/down projections."""

    def __init__(self, config: BitCPMConfig):
        super().__init__()
        self.gate_proj = make_projection(config, config.hidden_size, config.intermediate_size, config.mlp_bias)
        self.up_proj = make_projection(config, config.hidden_size, config.intermediate_size, config.mlp_bias)
        self.down_proj = make_projection(config, config.intermediate_size, config.hidden_size, config.mlp_bias)
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class BitCPMDecoderLayer(nn.Module):
    def __init__(self, config: BitCPMConfig, layer_idx: int):
        super().__init__()
        self.self_attn = BitCPMAttention(config, layer_idx)
        self.mlp = BitCPMMLP(config)
        self.input_layernorm = BitCPMRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = BitCPMRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.residual_scale = config.residual_scale

    def forward(self, hidden_states, position_embeddings, attention_mask=None, cache=None, **kwargs):
        residual = hidden_states
        hidden_states = self.input_layernorm(hidden_states)
        hidden_states, _ = self.self_attn(
            hidden_states,
            position_embeddings=position_embeddings,
            attention_mask=attention_mask,
            cache=cache,
            **kwargs,
        )
        hidden_states = residual + hidden_states * self.residual_scale

        residual = hidden_states
        hidden_states = self.mlp(self.post_attention_layernorm(hidden_states))
        return residual + hidden_states * self.residual_scale


class BitCPMPreTrainedModel(PreTrainedModel):
    config_class = BitCPMConfig
    config: BitCPMConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = False
    _no_split_modules = ["BitCPMDecoderLayer"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_attention_backend = True

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, BitCPMRotaryEmbedding):
            # Models built on the meta device lose non-persistent buffers.
            init.copy_(module.inv_freq, module.compute_inv_freq())


class BitCPMModel(BitCPMPreTrainedModel):
    """The BitCPM decoder stack without the language-model head."""

    def __init__(self, config: BitCPMConfig):
        super().__init__(config)
        self.padding_idx = config.pad_token_id
        self.vocab_size = config.vocab_size
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList(
            [BitCPMDecoderLayer(config, layer_idx) for layer_idx in range(config.num_hidden_layers)]
        )
        self.norm = BitCPMRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = BitCPMRotaryEmbedding(config)
        self.post_init()

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        if use_cache is None:
            use_cache = self.config.use_cache if not self.training else False

        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids) * self.config.scale_emb

        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)

        if position_ids is None:
            past_seen_tokens = cache.get_seq_length() if cache is not None else 0
            position_ids = torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device) + past_seen_tokens
            position_ids = position_ids.unsqueeze(0)

        causal_mask = create_causal_mask(
            config=self.config,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            cache=cache,
            position_ids=position_ids,
        )

        hidden_states = inputs_embeds
        position_embeddings = self.rotary_emb(hidden_states, position_ids)
        for decoder_layer in self.layers:
            hidden_states = decoder_layer(
                hidden_states,
                position_embeddings=position_embeddings,
                attention_mask=causal_mask,
                cache=cache,
                position_ids=position_ids,
                **kwargs,
            )

        hidden_states = self.norm(hidden_states)
        return BaseModelOutputWithPast(last_hidden_state=hidden_states, cache=cache)


class BitCPMForCausalLM(BitCPMPreTrainedModel, GenerationMixin):
    """BitCPM with a full-precision language-model head, tied to the embeddings when
    `config.tie_word_embeddings` is true."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: BitCPMConfig):
        if getattr(config, "bitcpm_packed", None):
            raise ValueError(
                "this checkpoint contains packed 2-bit weights (config.bitcpm_packed is set); "
                "load it with bitcpm_kernels.convert.load_packed_model(folder)"
            )
        super().__init__(config)
        self.model = BitCPMModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def ternary_linears(self) -> dict[str, nn.Linear]:
        """Return the projections that the quantizer applies to, by module name."""
        return {
            name: module
            for name, module in self.named_modules()
            if name.rsplit(".", 1)[-1] in TERNARY_PROJECTIONS and isinstance(module, nn.Linear)
        }

    def set_quantize(self, enabled: bool) -> None:
        """Switch fake quantization of every ternary projection on or off."""
        for module in self.ternary_linears().values():
            if hasattr(module, "quantize"):
                module.quantize = enabled

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )

        hidden_states = outputs.last_hidden_state
        if isinstance(logits_to_keep, int):
            if logits_to_keep > 0:
                hidden_states = hidden_states[:, -logits_to_keep:, :]
        else:
            hidden_states = hidden_states[:, logits_to_keep, :]
        logits = self.lm_head(hidden_states / self.config.logit_scale)

        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)

        return CausalLMOutputWithPast(loss=loss, logits=logits, cache=outputs.cache)


BitCPMConfig.register_for_auto_class()
BitCPMForCausalLM.register_for_auto_class("AutoModelForCausalLM")

__all__ = ["BitCPMForCausalLM", "BitCPMModel", "BitCPMPreTrainedModel", "EagerBitLinear", "QUANTIZER_BACKEND"]
