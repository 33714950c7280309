"""Tests of the checkpoint converter on tiny random BitCPM models."""

import hashlib
import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

import bitcpm_kernels as bk
from bitcpm_kernels.convert import (
    ConversionError,
    ConvertOptions,
    convert_checkpoint,
    is_quantized_name,
    load_packed_model,
    load_packed_state_dict,
    looks_pseudo_quantized,
    main,
)
from bitcpm_kernels.models import BitCPMConfig, BitCPMForCausalLM

transformers = pytest.importorskip("transformers")

QUIET = dict(progress=False)
# Max logit difference allowed between the fake-quantized QAT model and the
# converted model. Both use the same W_hat, so only the matmul summation order differs.
LOGIT_ATOL = {torch.float32: 1e-4, torch.bfloat16: 0.1}


def tiny_model(dtype=torch.float32, seed=0, **overrides) -> BitCPMForCausalLM:
    settings = dict(
        vocab_size=97,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        scale_emb=12.0,
        scale_depth=1.4,
        dim_model_base=16,
        tie_word_embeddings=True,
    )
    settings.update(overrides)
    torch.manual_seed(seed)
    return BitCPMForCausalLM(BitCPMConfig(**settings)).to(dtype).eval()


def ids(seq_len=9):
    return torch.randint(0, 97, (2, seq_len), generator=torch.Generator().manual_seed(2))


def logits(model, tokens=None):
    with torch.no_grad():
        return model.eval()(ids() if tokens is None else tokens).logits.float()


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fake_quantized(weight, group_size, eps=1e-5):
    codes, scales = bk.ternary_quantize(weight, group_size=group_size, eps=eps)
    return bk.ternary_dequantize(codes, scales, group_size=group_size, dtype=weight.dtype)


def no_leftovers(folder):
    """Whether the converter left no staging folder behind in `folder`."""
    return not [p for p in folder.iterdir() if ".tmp-" in p.name]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_converted_logits_match_qat(tmp_path, dtype):
    model = tiny_model(dtype)
    model.save_pretrained(tmp_path / "qat")
    report = convert_checkpoint(tmp_path / "qat", tmp_path / "out", ConvertOptions(**QUIET))
    assert len(report.quantized) == 7 * 2

    converted = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out", trust_remote_code=True)
    assert converted.config.weight_format == "pseudo_quantized"
    assert type(converted.model.layers[0].mlp.up_proj) is torch.nn.Linear
    assert converted.dtype == dtype
    torch.testing.assert_close(logits(converted), logits(model), rtol=0, atol=LOGIT_ATOL[dtype])


@pytest.mark.parametrize("group_size", [-1, 0, 16])
def test_quantized_tensors_and_copies(tmp_path, group_size):
    model = tiny_model(torch.bfloat16)
    model.save_pretrained(tmp_path / "qat")
    convert_checkpoint(tmp_path / "qat", tmp_path / "out", ConvertOptions(group_size=group_size, **QUIET))

    before = load_file(tmp_path / "qat" / "model.safetensors")
    after = load_file(tmp_path / "out" / "model.safetensors")
    assert before.keys() == after.keys()
    for name, tensor in before.items():
        assert after[name].dtype == tensor.dtype, name
        if is_quantized_name(name):
            assert torch.equal(after[name], fake_quantized(tensor, group_size)), name
        else:
            assert torch.equal(after[name], tensor), name
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["quant_group_size"] == group_size


def test_only_projections_are_quantized():
    for suffix in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"):
        assert is_quantized_name(f"model.layers.3.mlp.{suffix}.weight")
    for name in ("model.embed_tokens.weight", "lm_head.weight", "model.norm.weight", "model.layers.0.mlp.up_proj.bias"):
        assert not is_quantized_name(name)


def test_pytorch_bin_file_to_file(tmp_path):
    model = tiny_model()
    state = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    torch.save(state, tmp_path / "pytorch_model.bin")
    digest = sha256(tmp_path / "pytorch_model.bin")

    convert_checkpoint(tmp_path / "pytorch_model.bin", tmp_path / "ternary.bin", ConvertOptions(**QUIET))

    assert sha256(tmp_path / "pytorch_model.bin") == digest
    out = torch.load(tmp_path / "ternary.bin", weights_only=True)
    name = "model.layers.1.self_attn.k_proj.weight"
    assert torch.equal(out[name], fake_quantized(state[name], -1))
    assert torch.equal(out["model.embed_tokens.weight"], state["model.embed_tokens.weight"])
    assert no_leftovers(tmp_path)


def test_sharded_safetensors(tmp_path):
    model = tiny_model(tie_word_embeddings=False)
    model.save_pretrained(tmp_path / "qat", max_shard_size="40KB")
    index = json.loads((tmp_path / "qat" / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1

    convert_checkpoint(tmp_path / "qat", tmp_path / "out", ConvertOptions(**QUIET))

    out_index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    assert out_index["weight_map"] == index["weight_map"]
    assert sorted(p.name for p in (tmp_path / "out").glob("*.safetensors")) == shards
    converted = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out", trust_remote_code=True)
    torch.testing.assert_close(logits(converted), logits(model), rtol=0, atol=LOGIT_ATOL[torch.float32])


def test_sharded_bin_with_index(tmp_path):
    model = tiny_model()
    state = model.state_dict()
    names = sorted(state)
    shards = {"pytorch_model-00001-of-00002.bin": names[: len(names) // 2]}
    shards["pytorch_model-00002-of-00002.bin"] = names[len(names) // 2 :]
    weight_map = {}
    for shard, shard_names in shards.items():
        torch.save({n: state[n].clone() for n in shard_names}, tmp_path / shard)
        weight_map.update({n: shard for n in shard_names})
    (tmp_path / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))

    convert_checkpoint(tmp_path / "pytorch_model.bin.index.json", tmp_path / "out", ConvertOptions(**QUIET))

    out_index = json.loads((tmp_path / "out" / "pytorch_model.bin.index.json").read_text())
    assert out_index["weight_map"] == weight_map
    assert out_index["metadata"]["total_size"] > 0
    merged = {}
    for shard in shards:
        merged.update(torch.load(tmp_path / "out" / shard, weights_only=True))
    name = "model.layers.0.mlp.down_proj.weight"
    assert torch.equal(merged[name], fake_quantized(state[name], -1))


# Group size 2 divides every K of the config below, including 90.
@pytest.mark.parametrize("group_size", [-1, 0, 2])
def test_packed_round_trip(tmp_path, group_size):
    # down_proj has K=90, not a multiple of 4.
    model = tiny_model(intermediate_size=90, quant_group_size=group_size)
    model.save_pretrained(tmp_path / "qat")
    options = ConvertOptions(packed=True, group_size=group_size, **QUIET)
    convert_checkpoint(tmp_path / "qat", tmp_path / "packed", options)

    raw = load_file(tmp_path / "packed" / "model.safetensors")
    source = load_file(tmp_path / "qat" / "model.safetensors")
    name = "model.layers.0.mlp.down_proj"
    assert f"{name}.weight" not in raw
    assert raw[f"{name}.weight_packed"].dtype == torch.uint8
    assert raw[f"{name}.weight_packed"].shape == (64, 23)
    assert raw[f"{name}.weight_scale"].dtype == torch.float32
    assert raw[f"{name}.weight_shape"].tolist() == [64, 90]
    codes, scales = bk.ternary_quantize(source[f"{name}.weight"], group_size=options.group_size)
    assert torch.equal(bk.unpack_ternary(raw[f"{name}.weight_packed"], 90), codes)
    assert torch.equal(raw[f"{name}.weight_scale"], scales)

    dense = load_packed_state_dict(tmp_path / "packed")
    assert torch.equal(dense[f"{name}.weight"], fake_quantized(source[f"{name}.weight"], options.group_size))

    loaded = load_packed_model(tmp_path / "packed")
    torch.testing.assert_close(logits(loaded), logits(model), rtol=0, atol=LOGIT_ATOL[torch.float32])


def test_packed_folder_rejected_by_from_pretrained(tmp_path):
    tiny_model().save_pretrained(tmp_path / "qat")
    convert_checkpoint(tmp_path / "qat", tmp_path / "packed", ConvertOptions(packed=True, **QUIET))
    with pytest.raises(ValueError, match="load_packed_model"):
        transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "packed", trust_remote_code=True)


def test_rejects_pseudo_quantized_input(tmp_path):
    tiny_model().save_pretrained(tmp_path / "qat")
    convert_checkpoint(tmp_path / "qat", tmp_path / "once", ConvertOptions(**QUIET))

    with pytest.raises(ConversionError, match="pseudo-quantized"):
        convert_checkpoint(tmp_path / "once", tmp_path / "twice", ConvertOptions(**QUIET))
    assert not (tmp_path / "twice").exists()
    assert no_leftovers(tmp_path)

    convert_checkpoint(tmp_path / "once", tmp_path / "twice", ConvertOptions(force=True, **QUIET))
    once = load_file(tmp_path / "once" / "model.safetensors")
    twice = load_file(tmp_path / "twice" / "model.safetensors")
    name = "model.layers.0.self_attn.q_proj.weight"
    # Quantizing twice shrinks the scale by the fraction of non-zero codes.
    assert twice[name].abs().max() < once[name].abs().max()


def test_pseudo_quantized_detection():
    torch.manual_seed(0)
    latent = torch.randn(8, 32)
    assert not looks_pseudo_quantized(latent)
    assert looks_pseudo_quantized(fake_quantized(latent, -1))
    assert looks_pseudo_quantized(fake_quantized(latent, 0))
    assert looks_pseudo_quantized(fake_quantized(latent, 8), group_size=8)
    assert not looks_pseudo_quantized(torch.zeros(8, 32))
    one_latent_row = fake_quantized(latent, -1)
    one_latent_row[5] = latent[5]
    assert not looks_pseudo_quantized(one_latent_row)


def test_rejects_packed_input(tmp_path):
    tiny_model().save_pretrained(tmp_path / "qat")
    convert_checkpoint(tmp_path / "qat", tmp_path / "packed", ConvertOptions(packed=True, **QUIET))
    with pytest.raises(ConversionError, match="already packed"):
        convert_checkpoint(tmp_path / "packed", tmp_path / "again", ConvertOptions(**QUIET))
    assert not (tmp_path / "again").exists()


def test_missing_input(tmp_path):
    with pytest.raises(ConversionError, match="not found"):
        convert_checkpoint(tmp_path / "nope.bin", tmp_path / "out", ConvertOptions(**QUIET))
    with pytest.raises(ConversionError, match="no checkpoint found"):
        convert_checkpoint(tmp_path, tmp_path / "out", ConvertOptions(**QUIET))


@pytest.mark.parametrize("name", ["model.safetensors", "pytorch_model.bin"])
def test_corrupt_input(tmp_path, name):
    (tmp_path / name).write_bytes(b"\x00\x01 this is not a checkpoint" * 10)
    with pytest.raises(ConversionError, match="cannot read"):
        convert_checkpoint(tmp_path / name, tmp_path / "out", ConvertOptions(**QUIET))
    assert not (tmp_path / "out").exists()
    assert no_leftovers(tmp_path)


def test_failure_in_second_shard_leaves_nothing(tmp_path):
    model = tiny_model(tie_word_embeddings=False)
    model.save_pretrained(tmp_path / "qat", max_shard_size="40KB")
    index = json.loads((tmp_path / "qat" / "model.safetensors.index.json").read_text())
    last_shard = sorted(set(index["weight_map"].values()))[-1]
    (tmp_path / "qat" / last_shard).write_bytes(b"truncated")

    with pytest.raises(ConversionError, match=last_shard):
        convert_checkpoint(tmp_path / "qat", tmp_path / "out", ConvertOptions(**QUIET))
    assert not (tmp_path / "out").exists()
    assert no_leftovers(tmp_path)


def test_group_size_must_divide_k(tmp_path):
    tiny_model().save_pretrained(tmp_path / "qat")
    with pytest.raises(ConversionError, match="K=64 is not a multiple of group_size=24"):
        convert_checkpoint(tmp_path / "qat", tmp_path / "out", ConvertOptions(group_size=24, **QUIET))
    assert not (tmp_path / "out").exists()


def test_unknown_quant_type(tmp_path):
    tiny_model().save_pretrained(tmp_path / "qat")
    with pytest.raises(ConversionError, match="quant_type='int4'"):
        convert_checkpoint(tmp_path / "qat", tmp_path / "out", ConvertOptions(quant_type="int4", **QUIET))


def test_never_overwrites_input(tmp_path):
    state = {"model.layers.0.mlp.up_proj.weight": torch.randn(8, 8)}
    save_file(state, tmp_path / "model.safetensors")
    digest = sha256(tmp_path / "model.safetensors")
    with pytest.raises(ConversionError, match="overwrite the input"):
        convert_checkpoint(tmp_path / "model.safetensors", tmp_path / "model.safetensors", ConvertOptions(**QUIET))
    assert sha256(tmp_path / "model.safetensors") == digest


def test_rejects_non_empty_output_folder(tmp_path):
    tiny_model().save_pretrained(tmp_path / "qat")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("user data")
    with pytest.raises(ConversionError, match="already exists"):
        convert_checkpoint(tmp_path / "qat", tmp_path / "out", ConvertOptions(**QUIET))
    assert (tmp_path / "out" / "keep.txt").read_text() == "user data"


def test_nothing_to_quantize(tmp_path):
    save_file({"encoder.weight": torch.randn(4, 4)}, tmp_path / "model.safetensors")
    with pytest.raises(ConversionError, match="nothing to quantize"):
        convert_checkpoint(tmp_path / "model.safetensors", tmp_path / "out.safetensors", ConvertOptions(**QUIET))
    assert not (tmp_path / "out.safetensors").exists()


def test_cli_errors_exit_nonzero(tmp_path, capsys):
    tiny_model().save_pretrained(tmp_path / "qat")
    code = main(["--input_bin", str(tmp_path / "qat"), "--output", str(tmp_path / "out"), "--quant_type", "int4"])
    assert code == 1
    assert "quant_type='int4' is not supported" in capsys.readouterr().err
    code = main(["--input_bin", str(tmp_path / "missing"), "--output", str(tmp_path / "out")])
    assert code == 1
    assert "not found" in capsys.readouterr().err


def test_cli_module_entry_point(tmp_path):
    tiny_model().save_pretrained(tmp_path / "qat")
    command = [
        sys.executable, "-m", "bitcpm_kernels.convert",
        "--input_bin", str(tmp_path / "qat" / "model.safetensors"),
        "--output", str(tmp_path / "ternary.safetensors"),
        "--quant_type", "ternary",
        "--group_size", "16",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "14 tensors pseudo-quantized" in result.stdout
    assert "tensor" in result.stderr  # the progress bar
    out = load_file(tmp_path / "ternary.safetensors")
    source = load_file(tmp_path / "qat" / "model.safetensors")
    name = "model.layers.1.mlp.gate_proj.weight"
    assert torch.equal(out[name], fake_quantized(source[name], 16))


def test_settings_default_to_config(tmp_path):
    # eps=0.05 is above mean(|W|) of the random init (about 0.016), so it sets every scale.
    model = tiny_model(quant_group_size=16, quant_eps=0.05)
    model.save_pretrained(tmp_path / "qat")
    convert_checkpoint(tmp_path / "qat", tmp_path / "out", ConvertOptions(**QUIET))

    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["quant_group_size"] == 16
    assert config["quant_eps"] == 0.05
    source = load_file(tmp_path / "qat" / "model.safetensors")
    out = load_file(tmp_path / "out" / "model.safetensors")
    name = "model.layers.0.self_attn.o_proj.weight"
    assert torch.equal(out[name], fake_quantized(source[name], 16, eps=0.05))
    assert not torch.equal(out[name], fake_quantized(source[name], 16))
    converted = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out", trust_remote_code=True)
    torch.testing.assert_close(logits(converted), logits(model), rtol=0, atol=LOGIT_ATOL[torch.float32])


def test_rejects_file_quantized_with_finer_groups(tmp_path):
    # Converted with 16-element groups, then again per row: each row now has
    # many magnitudes, but every 16-element group still has one.
    state = {"model.layers.0.mlp.up_proj.weight": torch.randn(8, 64)}
    torch.save(state, tmp_path / "qat.bin")
    convert_checkpoint(tmp_path / "qat.bin", tmp_path / "g16.bin", ConvertOptions(group_size=16, **QUIET))

    with pytest.raises(ConversionError, match="group_size=16"):
        convert_checkpoint(tmp_path / "g16.bin", tmp_path / "again.bin", ConvertOptions(group_size=-1, **QUIET))
    assert not (tmp_path / "again.bin").exists()


def test_rejects_unreadable_bin(tmp_path):
    (tmp_path / "junk.bin").write_text("hello\n")
    with pytest.raises(ConversionError, match="cannot read torch checkpoint"):
        convert_checkpoint(tmp_path / "junk.bin", tmp_path / "out", ConvertOptions(**QUIET))
    assert no_leftovers(tmp_path)


def test_output_folder_has_default_mode(tmp_path):
    import os
    import stat

    tiny_model().save_pretrained(tmp_path / "qat")
    convert_checkpoint(tmp_path / "qat", tmp_path / "out", ConvertOptions(**QUIET))
    umask = os.umask(0)
    os.umask(umask)
    mode = stat.S_IMODE(os.stat(tmp_path / "out").st_mode)
    assert mode == 0o777 & ~umask
