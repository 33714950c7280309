"""``BitLinear``, a drop-in ternary ``nn.Linear``, and ``replace_linears`` to swap a model's layers."""

from __future__ import annotations

import fnmatch
from typing import Iterable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from . import _validation
from .ops import ternary_linear

# Module names that replace_linears leaves alone unless asked: the output head
# stays full precision in BitCPM, as do embeddings (which are not nn.Linear).
DEFAULT_EXCLUDE = ("lm_head", "*.lm_head")


class BitLinear(nn.Linear):
    """An ``nn.Linear`` whose forward fake-quantizes the weight to {-1, 0, +1} times a scale.

    The parameters and ``state_dict`` keys are those of ``nn.Linear`` (the
    full-precision latent weight), so checkpoints load unchanged. Setting
    ``quantize = False`` turns the layer back into a plain linear.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = False,
        group_size: int = -1,
        eps: float = 1e-5,
        act_bits: Optional[int] = None,
        device=None,
        dtype=None,
    ) -> None:
        _validation.check_group_size(group_size, in_features)
        _validation.check_eps(eps)
        _validation.check_act_bits(act_bits)
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.group_size = group_size
        self.eps = eps
        self.act_bits = act_bits
        self.quantize = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.quantize:
            return F.linear(x, self.weight, self.bias)
        return ternary_linear(x, self.weight, self.bias, self.group_size, self.eps, self.act_bits)

    @classmethod
    def from_linear(
        cls,
        linear: nn.Linear,
        group_size: int = -1,
        eps: float = 1e-5,
        act_bits: Optional[int] = None,
    ) -> "BitLinear":
        """Wrap an existing ``nn.Linear``; the new layer shares its parameters, nothing is copied."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"from_linear needs an nn.Linear, got {type(linear).__name__}")
        with torch.device("meta"):
            layer = cls(
                linear.in_features,
                linear.out_features,
                bias=linear.bias is not None,
                group_size=group_size,
                eps=eps,
                act_bits=act_bits,
            )
        layer.weight = linear.weight
        layer.bias = linear.bias
        layer.train(linear.training)
        return layer

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, group_size={self.group_size}, eps={self.eps}, "
            f"act_bits={self.act_bits}"
        )


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def replace_linears(
    model: nn.Module,
    include: Optional[Iterable[str]] = None,
    exclude: Optional[Iterable[str]] = None,
    group_size: int = -1,
    eps: float = 1e-5,
    act_bits: Optional[int] = None,
) -> list[str]:
    """Swap the ``nn.Linear`` layers of ``model`` for ``BitLinear`` in place.

    ``include`` and ``exclude`` are fnmatch patterns on qualified module names
    (``"model.layers.*.mlp.*"``). By default every linear is included except
    ``lm_head``; embeddings are never linears. Layers that are already
    ``BitLinear`` are skipped. Returns the names of the replaced layers.
    """
    include = tuple(include) if include is not None else ("*",)
    exclude = tuple(exclude) if exclude is not None else DEFAULT_EXCLUDE

    targets = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear) or isinstance(module, BitLinear):
            continue
        if not _matches(name, include) or _matches(name, exclude):
            continue
        if group_size > 0 and module.in_features % group_size != 0:
            raise ValueError(
                f"layer {name} has in_features={module.in_features}, which is not a multiple "
                f"of group_size={group_size}; exclude it or pick another group_size"
            )
        targets.append(name)

    for name in targets:
        parent_name, _, child_name = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        linear = getattr(parent, child_name)
        setattr(parent, child_name, BitLinear.from_linear(linear, group_size, eps, act_bits))
    return targets
