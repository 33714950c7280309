"""The BitCPM HuggingFace model (MiniCPM architecture with ternary projections)."""

from .configuration_bitcpm import BitCPMConfig
from .modeling_bitcpm import TERNARY_PROJECTIONS, BitCPMForCausalLM, BitCPMModel, EagerBitLinear

__all__ = ["TERNARY_PROJECTIONS", "BitCPMConfig", "BitCPMForCausalLM", "BitCPMModel", "EagerBitLinear"]
