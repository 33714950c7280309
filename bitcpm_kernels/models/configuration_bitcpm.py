"""Configuration of the BitCPM model: MiniCPM with ternary linear projections.

This file is HuggingFace remote code: `save_pretrained` copies it next to the
weights, so it must import nothing from `bitcpm_kernels`.
"""

from transformers import PreTrainedConfig

# Values of `weight_format`:
#   "latent"           full-precision latent weights; every forward pass
#                      fake-quantizes the seven projections (QAT checkpoints).
#   "pseudo_quantized" the projections already contain W_hat = Q * s, so they
#                      run as plain linears (what the converter writes).
WEIGHT_FORMATS = ("latent", "pseudo_quantized")


class BitCPMConfig(PreTrainedConfig):
    r"""
    Configuration of a BitCPM causal language model.

    The transformer follows MiniCPM: RMSNorm, rotary embeddings, grouped-query
    attention and a SwiGLU MLP, with three scalings that MiniCPM's muP-style
    training uses:

    - embeddings are multiplied by `scale_emb`;
    - each residual branch is multiplied by `scale_depth / sqrt(num_hidden_layers)`;
    - the final hidden state is divided by `hidden_size / dim_model_base` before `lm_head`.

    A Llama model is the special case `scale_emb = 1`,
    `scale_depth = sqrt(num_hidden_layers)` and `dim_model_base = hidden_size`.

    Ternary quantization applies to the seven projections of each layer
    (`q_proj`, `k_proj`, `v_proj`, `o_proj`, `gate_proj`, `up_proj`,
    `down_proj`). Embeddings, norms and `lm_head` stay full precision.

    Args:
        quant_group_size: `-1` for one scale per output row, `g > 0` for
            groups of `g` consecutive input features, `0` for one scale per tensor.
        quant_eps: lower bound of every scale.
        act_bits: `None` for weight-only quantization, `8` to also fake-quantize
            activations per token.
        weight_format: `"latent"` (QAT checkpoint, quantized on every forward)
            or `"pseudo_quantized"` (converted checkpoint, plain linears).
    """

    model_type = "bitcpm"
    keys_to_ignore_at_inference = ["cache"]

    vocab_size: int = 32000
    hidden_size: int = 1024
    intermediate_size: int = 2816
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    hidden_act: str = "silu"
    max_position_embeddings: int = 4096
    initializer_range: float = 0.02
    rms_norm_eps: float = 1e-6
    use_cache: bool = True
    pad_token_id: int | None = None
    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2
    tie_word_embeddings: bool = True
    rope_theta: float = 10000.0
    attention_bias: bool = False
    attention_dropout: float = 0.0
    mlp_bias: bool = False
    scale_emb: float = 1.0
    dim_model_base: int | None = None
    scale_depth: float | None = None
    quant_group_size: int = -1
    quant_eps: float = 1e-5
    act_bits: int | None = None
    weight_format: str = "latent"

    def __post_init__(self, **kwargs):
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.dim_model_base is None:
            self.dim_model_base = self.hidden_size
        if self.scale_depth is None:
            # A residual scale of exactly 1, as in Llama.
            self.scale_depth = float(self.num_hidden_layers) ** 0.5
        super().__post_init__(**kwargs)
        self.validate_architecture()

    def validate_architecture(self):
        """Check the head counts, the quantizer settings and the weight format."""
        if self.num_attention_heads % self.num_key_value_heads != 0:
            raise ValueError(
                f"num_attention_heads={self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads={self.num_key_value_heads}"
            )
        if self.weight_format not in WEIGHT_FORMATS:
            raise ValueError(f"weight_format={self.weight_format!r} is invalid; expected one of {WEIGHT_FORMATS}")
        if self.quant_group_size < -1:
            raise ValueError(f"quant_group_size={self.quant_group_size} is invalid; use -1, 0 or a positive size")
        if self.act_bits not in (None, 8):
            raise ValueError(f"act_bits={self.act_bits} is not supported; use None or 8")

    @property
    def residual_scale(self) -> float:
        """Factor applied to each attention and MLP branch before the residual add."""
        return self.scale_depth / float(self.num_hidden_layers) ** 0.5

    @property
    def logit_scale(self) -> float:
        """Divisor applied to the final hidden state before `lm_head`."""
        return self.hidden_size / self.dim_model_base


__all__ = ["BitCPMConfig"]
