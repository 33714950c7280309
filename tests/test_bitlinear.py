"""``BitLinear`` as a drop-in ``nn.Linear`` and ``replace_linears``."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import bitcpm_kernels as bk


def test_state_dict_keys_equal_linear():
    for bias in (False, True):
        linear = nn.Linear(12, 5, bias=bias)
        layer = bk.BitLinear(12, 5, bias=bias)

        assert list(layer.state_dict()) == list(linear.state_dict())
        for key, value in linear.state_dict().items():
            assert layer.state_dict()[key].shape == value.shape


def test_loads_linear_checkpoint():
    linear = nn.Linear(12, 5, bias=True)
    layer = bk.BitLinear(12, 5, bias=True, group_size=4)

    layer.load_state_dict(linear.state_dict())

    assert torch.equal(layer.weight, linear.weight)
    assert torch.equal(layer.bias, linear.bias)


def test_bias_defaults_to_false():
    assert bk.BitLinear(4, 3).bias is None


def test_from_linear_shares_parameters():
    linear = nn.Linear(16, 8, bias=True)

    layer = bk.BitLinear.from_linear(linear, group_size=8, act_bits=8)

    assert layer.weight is linear.weight
    assert layer.bias is linear.bias
    assert layer.weight.device.type == "cpu"
    assert (layer.group_size, layer.act_bits) == (8, 8)
    with torch.no_grad():
        linear.weight.mul_(2)
    assert torch.equal(layer.weight, linear.weight)


def test_from_linear_without_bias_and_training_mode():
    linear = nn.Linear(16, 8, bias=False).eval()

    layer = bk.BitLinear.from_linear(linear)

    assert layer.bias is None
    assert not layer.training


def test_from_linear_keeps_dtype():
    linear = nn.Linear(16, 8, dtype=torch.bfloat16)

    layer = bk.BitLinear.from_linear(linear)

    assert layer.weight.dtype == torch.bfloat16
    assert layer(torch.randn(2, 16, dtype=torch.bfloat16)).dtype == torch.bfloat16


def test_extra_repr_shows_quantizer_settings():
    layer = bk.BitLinear(64, 32, bias=True, group_size=16, eps=1e-6, act_bits=8)

    text = repr(layer)

    assert "in_features=64" in text
    assert "out_features=32" in text
    assert "group_size=16" in text
    assert "eps=1e-06" in text
    assert "act_bits=8" in text


def test_forward_equals_ternary_linear():
    layer = bk.BitLinear(24, 10, bias=True, group_size=8, act_bits=8)
    x = torch.randn(2, 3, 24)

    y = layer(x)

    expected = bk.ternary_linear(x, layer.weight, layer.bias, 8, layer.eps, 8)
    assert torch.equal(y, expected)


def test_quantize_false_equals_linear():
    linear = nn.Linear(24, 10, bias=True)
    layer = bk.BitLinear.from_linear(linear)
    layer.quantize = False
    x = torch.randn(4, 24)

    assert torch.equal(layer(x), linear(x))
    layer.quantize = True
    assert not torch.allclose(layer(x), linear(x))


def test_quantized_forward_uses_ternary_weight():
    layer = bk.BitLinear(32, 6)
    x = torch.randn(5, 32)

    w_hat = bk.reference.fake_quantize_weight(layer.weight)
    assert w_hat.unique().numel() <= 3 * 6
    torch.testing.assert_close(layer(x), F.linear(x, w_hat), atol=1e-5, rtol=1e-5)


class TinyDecoder(nn.Module):
    """A model with the module names of a HuggingFace causal LM."""

    def __init__(self, vocab: int = 50, hidden: int = 32, layers: int = 2) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(vocab, hidden)
        self.layers = nn.ModuleList(
            nn.ModuleDict(
                {
                    "self_attn": nn.ModuleDict(
                        {"q_proj": nn.Linear(hidden, hidden), "o_proj": nn.Linear(hidden, hidden)}
                    ),
                    "mlp": nn.ModuleDict(
                        {"up_proj": nn.Linear(hidden, 2 * hidden), "down_proj": nn.Linear(2 * hidden, hidden)}
                    ),
                }
            )
            for _ in range(layers)
        )
        self.lm_head = nn.Linear(hidden, vocab, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.embed_tokens(tokens)
        for block in self.layers:
            h = h + block["self_attn"]["o_proj"](torch.tanh(block["self_attn"]["q_proj"](h)))
            h = h + block["mlp"]["down_proj"](F.gelu(block["mlp"]["up_proj"](h)))
        return self.lm_head(h)


ALL_BODY_LINEARS = [
    f"layers.{i}.{name}"
    for i in range(2)
    for name in ("self_attn.q_proj", "self_attn.o_proj", "mlp.up_proj", "mlp.down_proj")
]


def test_replace_linears_default_skips_lm_head_and_embeddings():
    model = TinyDecoder()

    names = bk.replace_linears(model)

    assert names == ALL_BODY_LINEARS
    assert type(model.lm_head) is nn.Linear
    assert type(model.embed_tokens) is nn.Embedding
    for name in names:
        assert isinstance(model.get_submodule(name), bk.BitLinear), name


def test_replace_linears_shares_weights_and_settings():
    model = TinyDecoder()
    before = {name: model.get_submodule(name).weight for name in ALL_BODY_LINEARS}

    bk.replace_linears(model, group_size=16, act_bits=8)

    for name, weight in before.items():
        layer = model.get_submodule(name)
        assert layer.weight is weight
        assert (layer.group_size, layer.act_bits) == (16, 8)


def test_replace_linears_include_pattern():
    model = TinyDecoder()

    names = bk.replace_linears(model, include=["layers.*.mlp.*"])

    assert names == ["layers.0.mlp.up_proj", "layers.0.mlp.down_proj",
                     "layers.1.mlp.up_proj", "layers.1.mlp.down_proj"]
    assert type(model.get_submodule("layers.0.self_attn.q_proj")) is nn.Linear


def test_replace_linears_exclude_pattern_replaces_default():
    model = TinyDecoder()

    names = bk.replace_linears(model, exclude=["*.q_proj", "layers.1.*"])

    assert names == ["layers.0.self_attn.o_proj", "layers.0.mlp.up_proj",
                     "layers.0.mlp.down_proj", "lm_head"]
    assert isinstance(model.lm_head, bk.BitLinear)


def test_replace_linears_twice_is_a_no_op():
    model = TinyDecoder()
    bk.replace_linears(model)

    assert bk.replace_linears(model) == []


def test_replace_linears_bad_group_size():
    model = TinyDecoder(hidden=48)  # 48 and 96 are not multiples of 64

    with pytest.raises(ValueError, match=r"layer layers\.0\.self_attn\.q_proj has in_features=48"):
        bk.replace_linears(model, group_size=64)

    assert not any(isinstance(m, bk.BitLinear) for m in model.modules())


def test_replace_linears_state_dict_unchanged():
    model = TinyDecoder()
    keys = list(model.state_dict())

    bk.replace_linears(model)

    assert list(model.state_dict()) == keys


def test_replace_linears_on_a_bare_linear_model():
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))

    assert bk.replace_linears(model) == ["0", "2"]
    assert isinstance(model[0], bk.BitLinear)


@pytest.mark.parametrize("act_bits", [None, 8], ids=lambda a: f"act_bits={a}")
def test_tiny_model_training_lowers_loss(act_bits):
    # A next-token task with a fixed rule (token t -> (3 t + 1) mod vocab), so
    # a model that learns anything lowers the loss well below chance.
    vocab = 50
    model = TinyDecoder(vocab=vocab)
    names = bk.replace_linears(model, act_bits=act_bits)
    assert len(names) == 8
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    tokens = torch.randint(0, vocab, (16, 12))
    targets = (3 * tokens + 1) % vocab

    losses = []
    for _ in range(20):
        logits = model(tokens)
        loss = F.cross_entropy(logits.reshape(-1, vocab), targets.reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())

    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.5 * losses[0], f"loss went from {losses[0]:.3f} to {losses[-1]:.3f}"
