"""Two-process training of the tiny BitCPM model under DeepSpeed ZeRO-2/3 and FSDP2.

Each test launches this file under `torch.distributed.run` with two CPU
processes that talk over gloo on 127.0.0.1. The workers train the tiny
BitCPM model for two SGD steps with the package's kernels, each rank on its
own half of the batch, and save the engine's consolidated checkpoint. The
test then repeats the same steps in one process on the whole batch. It checks
that the losses and the updated weights agree within float32 tolerance and
that the quantizer read gathered, not sharded, weights. Last, the saved
checkpoint must convert and load.

DeepSpeed runs with `DS_ACCELERATOR=cpu`. Without `oneccl_bindings_for_pytorch`
its CPU accelerator chooses the gloo backend (DeepSpeed 0.19.8).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ENGINES = ("zero2", "zero3", "fsdp2")
WORLD_SIZE = 2
MICRO_BATCH = 2
SEQ_LEN = 12
VOCAB = 97
LEARNING_RATE = 1.0
STEPS = 2
# Wall-clock limit of one two-process launch, with DeepSpeed's ops already built.
LAUNCH_TIMEOUT_S = 300
# DeepSpeed 0.19.8 compiles its shared-memory op on the first CPU
# initialization. That took 155 s on a busy 2-core Zen3 machine.
DEEPSPEED_BUILD_TIMEOUT_S = 900
REPO_ROOT = Path(__file__).resolve().parent.parent


def tiny_config_kwargs() -> dict:
    """Settings of the tiny BitCPM model, with MiniCPM's three scalings all different from 1."""
    return dict(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        scale_emb=12.0,
        scale_depth=1.4,
        dim_model_base=16,
        tie_word_embeddings=False,
    )


def build_tiny_model(seed: int = 0):
    from bitcpm_kernels.models import BitCPMConfig, BitCPMForCausalLM

    torch.manual_seed(seed)
    model = BitCPMForCausalLM(BitCPMConfig(**tiny_config_kwargs()))
    return model.float().train()


def global_batch() -> torch.Tensor:
    """Token ids of the whole batch; rank r trains on rows [r * MICRO_BATCH, (r + 1) * MICRO_BATCH)."""
    generator = torch.Generator().manual_seed(1234)
    return torch.randint(0, VOCAB, (WORLD_SIZE * MICRO_BATCH, SEQ_LEN), generator=generator)


def rank_batch(rank: int) -> torch.Tensor:
    return global_batch()[rank * MICRO_BATCH : (rank + 1) * MICRO_BATCH]


def cached_tensor_attributes(model: torch.nn.Module) -> list[str]:
    """Name every tensor that a ternary projection stores outside its parameters and buffers."""
    found = []
    for name, module in model.ternary_linears().items():
        for attribute, value in vars(module).items():
            if isinstance(value, torch.Tensor):
                found.append(f"{name}.{attribute}")
    return found


# ---------------------------------------------------------------------------
# Worker side: runs in each of the two processes.


def deepspeed_config(stage: int) -> dict:
    config = {
        "train_micro_batch_size_per_gpu": MICRO_BATCH,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": 0.0,
        "zero_allow_untested_optimizer": True,
        "zero_optimization": {"stage": stage},
        "steps_per_print": 1_000_000,
    }
    if stage == 3:
        config["zero_optimization"].update(
            {
                # The default threshold (1e5 elements) would keep every weight of
                # the tiny model unpartitioned, so nothing would need gathering.
                "stage3_param_persistence_threshold": 0,
                "stage3_gather_16bit_weights_on_model_save": True,
            }
        )
    return config


def record_forward_weight_shapes(model, shapes: dict) -> None:
    """Record the shape of the weight that each projection's forward pass receives."""

    def hook(module, args, name):
        shapes.setdefault(name, tuple(module.weight.shape))

    for name, module in model.ternary_linears().items():
        module.register_forward_pre_hook(lambda module, args, name=name: hook(module, args, name))


def local_weight_shapes(model) -> dict[str, tuple[int, ...]]:
    """Shape of the weight storage that each projection keeps on this rank outside forward."""
    shapes = {}
    for name, module in model.ternary_linears().items():
        weight = module.weight
        if hasattr(weight, "ds_tensor"):
            shapes[name] = tuple(weight.ds_tensor.shape)
        elif hasattr(weight, "to_local"):
            shapes[name] = tuple(weight.to_local().shape)
        else:
            shapes[name] = tuple(weight.shape)
    return shapes


def save_model_metadata(model, folder: Path) -> None:
    """Write config.json and the remote-code files next to a saved state dict."""
    from transformers.dynamic_module_utils import custom_object_save

    custom_object_save(model, folder, config=model.config)
    model.config.save_pretrained(folder)


def run_deepspeed(stage: int, output: Path, rank: int) -> dict:
    import deepspeed

    model = build_tiny_model()
    if rank == 0:
        torch.save(model.state_dict(), output / "initial.pt")
    forward_shapes: dict = {}
    record_forward_weight_shapes(model, forward_shapes)

    optimizer = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=deepspeed_config(stage))
    stored_shapes = local_weight_shapes(model)

    batch = rank_batch(rank)
    losses = []
    for _ in range(STEPS):
        loss = engine(input_ids=batch, labels=batch).loss
        losses.append(loss.item())
        engine.backward(loss)
        engine.step()

    checkpoint = output / "checkpoint"
    checkpoint.mkdir(exist_ok=True)
    # Every rank takes part in gathering the ZeRO-3 partitions; rank 0 writes the file.
    engine.save_16bit_model(str(checkpoint), "pytorch_model.bin")
    if rank == 0:
        save_model_metadata(model, checkpoint)
    return {
        "losses": losses,
        "forward_weight_shapes": forward_shapes,
        "stored_weight_shapes": stored_shapes,
        "cached_tensors": cached_tensor_attributes(model),
    }


def run_fsdp2(output: Path, rank: int) -> dict:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.fsdp import fully_shard

    model = build_tiny_model()
    if rank == 0:
        torch.save(model.state_dict(), output / "initial.pt")
    forward_shapes: dict = {}
    record_forward_weight_shapes(model, forward_shapes)
    checkpoint = output / "checkpoint"
    if rank == 0:
        # Before fully_shard, which swaps the model's class for one defined in torch.
        checkpoint.mkdir()
        save_model_metadata(model, checkpoint)

    for layer in model.model.layers:
        fully_shard(layer)
    fully_shard(model)
    stored_shapes = local_weight_shapes(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE)

    batch = rank_batch(rank)
    losses = []
    for _ in range(STEPS):
        loss = model(input_ids=batch, labels=batch).loss
        losses.append(loss.item())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank == 0:
        torch.save(state, checkpoint / "pytorch_model.bin")
    return {
        "losses": losses,
        "forward_weight_shapes": forward_shapes,
        "stored_weight_shapes": stored_shapes,
        "cached_tensors": cached_tensor_attributes(model),
    }


def worker_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description="one rank of the two-process training check")
    parser.add_argument("--engine", choices=ENGINES, required=True)
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args(argv)

    import torch.distributed as dist

    import bitcpm_kernels as bk
    from bitcpm_kernels.models import modeling_bitcpm

    torch.set_num_threads(1)
    rank = int(os.environ["RANK"])
    if args.engine == "fsdp2":
        dist.init_process_group("gloo")
        result = run_fsdp2(args.output, rank)
    else:
        import deepspeed

        deepspeed.init_distributed(dist_backend="gloo")
        result = run_deepspeed(2 if args.engine == "zero2" else 3, args.output, rank)

    result["cpu_backend"] = bk.backend_info()["cpu"]["backend"]
    result["quantizer"] = modeling_bitcpm.QUANTIZER_BACKEND
    result["comm_backend"] = dist.get_backend()
    (args.output / f"rank{rank}.json").write_text(json.dumps(result))
    dist.barrier()
    dist.destroy_process_group()


# ---------------------------------------------------------------------------
# Test side.


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def worker_env() -> dict[str, str]:
    """Environment for the workers: CPU DeepSpeed, loopback gloo, and this process's bitcpm_kernels."""
    import bitcpm_kernels

    # The workers must import the same package as this process (an installed
    # one with compiled kernels, or the source tree), so its folder goes first.
    package_root = str(Path(bitcpm_kernels.__file__).resolve().parent.parent)
    env = dict(os.environ)
    env.update(
        DS_ACCELERATOR="cpu",
        OMP_NUM_THREADS="1",
        GLOO_SOCKET_IFNAME="lo",
        PYTHONPATH=os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")])),
    )
    return env


def launch(engine: str, output: Path) -> list[dict]:
    """Run the two workers for `engine` and return each rank's result."""
    env = worker_env()
    command = [
        sys.executable, "-m", "torch.distributed.run",
        f"--nproc_per_node={WORLD_SIZE}", "--nnodes=1",
        "--master_addr=127.0.0.1", f"--master_port={free_port()}",
        __file__, "--engine", engine, "--output", str(output),
    ]  # fmt: skip
    try:
        completed = subprocess.run(
            command, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S
        )
    except subprocess.TimeoutExpired as error:
        pytest.fail(f"{engine}: the two-process run timed out after {LAUNCH_TIMEOUT_S} s\n{error.stderr}")
    if completed.returncode != 0:
        pytest.fail(f"{engine}: the two-process run failed with exit code {completed.returncode}\n"
                    f"{completed.stdout[-4000:]}\n{completed.stderr[-8000:]}")  # fmt: skip
    return [json.loads((output / f"rank{rank}.json").read_text()) for rank in range(WORLD_SIZE)]


@pytest.fixture(scope="module")
def deepspeed_ops_built():
    """Compile DeepSpeed's shared-memory op once, before any launch starts its clock.

    DeepSpeed's communication backend loads the op at initialization, although
    ZeRO training does not call it (tensor-parallel inference does). The build
    is cached in ~/.cache/torch_extensions, or in TORCH_EXTENSIONS_DIR when set.
    """
    build = (
        "from deepspeed.accelerator import get_accelerator\n"
        "get_accelerator().create_op_builder('ShareMemCommBuilder').load()\n"
    )
    env = worker_env()
    try:
        completed = subprocess.run(
            [sys.executable, "-c", build], env=env, capture_output=True, text=True, timeout=DEEPSPEED_BUILD_TIMEOUT_S
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"building DeepSpeed's shared-memory op timed out after {DEEPSPEED_BUILD_TIMEOUT_S} s")
    if completed.returncode != 0:
        pytest.fail(f"building DeepSpeed's shared-memory op failed:\n{completed.stderr[-4000:]}")


def single_process_run(initial_state: dict) -> tuple[list[list[float]], torch.nn.Module]:
    """Repeat the distributed run in one process.

    Data-parallel training averages the ranks' gradients, so the single-process
    loss is the mean of the per-rank losses on the same rows. Returns the
    per-rank losses of each step and the model after `STEPS` SGD steps.
    """
    model = build_tiny_model()
    model.load_state_dict(initial_state)
    optimizer = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE)
    losses = []
    for _ in range(STEPS):
        rank_losses = [model(input_ids=rank_batch(r), labels=rank_batch(r)).loss for r in range(WORLD_SIZE)]
        losses.append([loss.item() for loss in rank_losses])
        torch.stack(rank_losses).mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    return losses, model


def engine_available(engine: str) -> str | None:
    """Return why `engine` cannot run here, or None when it can."""
    if engine.startswith("zero") and importlib.util.find_spec("deepspeed") is None:
        return "deepspeed is not installed (pip install deepspeed==0.19.8)"
    if engine == "fsdp2":
        try:
            from torch.distributed.fsdp import fully_shard  # noqa: F401
        except ImportError:
            return f"torch {torch.__version__} has no torch.distributed.fsdp.fully_shard"
    if not torch.distributed.is_gloo_available():
        return "this torch build has no gloo backend"
    return None


@pytest.mark.parametrize("engine", ENGINES)
def test_two_ranks_match_single_process(engine, tmp_path, request):
    reason = engine_available(engine)
    if reason:
        pytest.skip(reason)
    if engine.startswith("zero"):
        request.getfixturevalue("deepspeed_ops_built")

    import bitcpm_kernels as bk
    from bitcpm_kernels.convert import ConvertOptions, convert_checkpoint
    from transformers import AutoModelForCausalLM

    results = launch(engine, tmp_path)
    initial = torch.load(tmp_path / "initial.pt", weights_only=True)
    expected_losses, expected_model = single_process_run(initial)

    for rank, result in enumerate(results):
        assert result["comm_backend"] == "gloo"
        assert result["quantizer"] == "bitcpm_kernels", "the model fell back to the eager quantizer"
        # The single-process run below must use the same kernels as the workers.
        assert result["cpu_backend"] == bk.backend_info()["cpu"]["backend"]
        assert result["cached_tensors"] == [], f"rank {rank} keeps tensors outside forward"
        for step in range(STEPS):
            assert result["losses"][step] == pytest.approx(expected_losses[step][rank], rel=1e-5, abs=1e-6), (
                f"rank {rank}, step {step}"
            )

    # The quantizer must see each full (N, K) weight, while each rank stores only a shard.
    full_shapes = {name: tuple(m.weight.shape) for name, m in expected_model.ternary_linears().items()}
    for result in results:
        seen = {name: tuple(shape) for name, shape in result["forward_weight_shapes"].items()}
        assert seen == full_shapes
    if engine != "zero2":
        for name, shape in full_shapes.items():
            stored = [tuple(result["stored_weight_shapes"][name]) for result in results]
            numel = [torch.Size(s).numel() for s in stored]
            assert sum(numel) >= torch.Size(shape).numel() > max(numel), f"{name} is not sharded: {stored}"

    # Weights after STEPS steps, read back from the engine's consolidated checkpoint.
    saved = torch.load(tmp_path / "checkpoint" / "pytorch_model.bin", weights_only=True)
    expected_state = expected_model.state_dict()
    for name, expected in expected_state.items():
        if name.endswith("inv_freq"):
            continue
        assert name in saved, f"{name} is missing from the checkpoint"
        torch.testing.assert_close(saved[name].float(), expected, rtol=1e-5, atol=1e-6, msg=lambda m: f"{name}: {m}")
    update = max((expected_state[n] - initial[n]).abs().max().item() for n in initial if "proj" in n)
    assert update > 1e-3, "the SGD step barely moved the weights, so the comparison shows nothing"

    # The checkpoint converts, and the converted folder loads as remote code and
    # reproduces the fake-quantized forward pass of the saved latent weights.
    trained = build_tiny_model()
    trained.load_state_dict(saved)
    converted = tmp_path / "converted"
    report = convert_checkpoint(tmp_path / "checkpoint", converted, ConvertOptions(progress=False))
    assert sorted(report.quantized) == sorted(f"{name}.weight" for name in full_shapes)
    loaded = AutoModelForCausalLM.from_pretrained(converted, trust_remote_code=True, dtype=torch.float32).eval()
    assert loaded.config.weight_format == "pseudo_quantized"
    ids = global_batch()
    with torch.no_grad():
        expected_logits = trained.eval()(input_ids=ids).logits
        logits = loaded(input_ids=ids).logits
    torch.testing.assert_close(logits, expected_logits, rtol=1e-4, atol=1e-4)


def load_example(name: str):
    """Import a script from examples/ as a module."""
    sys.path.insert(0, str(REPO_ROOT / "examples"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.pop(0)


def test_sft_labels_cover_only_replies():
    pytest.importorskip("tokenizers")
    common = load_example("train_common")
    sft = load_example("train_sft")
    tokenizer = common.build_tiny_tokenizer()
    messages = [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "Name a prime."},
        {"role": "assistant", "content": "Seven."},
        {"role": "user", "content": "Another?"},
        {"role": "assistant", "content": "Eleven."},
    ]

    example = sft.tokenize_conversation(tokenizer, messages, max_length=1000)

    assert tokenizer.decode(example["input_ids"]) == tokenizer.apply_chat_template(messages, tokenize=False)
    targets = [token for token, label in zip(example["input_ids"], example["labels"]) if label != sft.IGNORE_INDEX]
    assert tokenizer.decode(targets) == "Seven.<|im_end|>\nEleven.<|im_end|>\n"
    target_labels = [label for label in example["labels"] if label != sft.IGNORE_INDEX]
    assert target_labels == targets

    short = sft.tokenize_conversation(tokenizer, messages, max_length=20)
    assert len(short["input_ids"]) == len(short["labels"]) == 20


def test_sft_example_zero3_converts(tmp_path, request):
    reason = engine_available("zero3")
    if reason:
        pytest.skip(reason)
    request.getfixturevalue("deepspeed_ops_built")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    output = tmp_path / "sft"
    env = worker_env()
    env.update(DS_CONFIG="ds_config_zero3.json", OUTPUT_DIR=str(output), MASTER_PORT=str(free_port()))
    command = ["bash", str(REPO_ROOT / "examples" / "run_sft.sh"), "--tiny", "--max_steps", "12"]
    try:
        completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S)
    except subprocess.TimeoutExpired as error:
        pytest.fail(f"run_sft.sh --tiny timed out after {LAUNCH_TIMEOUT_S} s\n{error.stderr}")
    assert completed.returncode == 0, completed.stderr[-8000:]

    losses = json.loads((output / "train_losses.json").read_text())
    assert len(losses) == 12
    assert losses[-1] < losses[0], f"the SFT loss did not fall: {losses}"

    converted = tmp_path / "sft-ternary"
    convert = [sys.executable, "-m", "bitcpm_kernels.convert", "--input_bin", str(output),
               "--output", str(converted), "--quant_type", "ternary", "--group_size", "-1", "--no-progress"]  # fmt: skip
    completed = subprocess.run(convert, env=env, capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr[-4000:]

    model = AutoModelForCausalLM.from_pretrained(converted, trust_remote_code=True, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(converted, trust_remote_code=True)
    assert model.config.weight_format == "pseudo_quantized"
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What does the Python reference say about assert?"}],
        add_generation_prompt=True,
        tokenize=False,
    )
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    assert logits.shape == (1, ids.shape[1], len(tokenizer))
    assert torch.isfinite(logits).all()


if __name__ == "__main__":
    worker_main(sys.argv[1:])
