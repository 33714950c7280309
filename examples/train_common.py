"""Parts shared by train.py (continued pre-training) and train_sft.py (SFT).

Both scripts run one plain training loop under one of three engines:

- `--deepspeed CONFIG.json`: DeepSpeed ZeRO (stage 2 or 3, from the config);
- `--fsdp2`: PyTorch FSDP2 (`fully_shard` on every decoder layer, then on the model);
- neither: one process, or DistributedDataParallel when launched with torchrun.

The ternary projections quantize their weight inside `forward`. ZeRO-3 and
FSDP2 gather each sharded weight before the module's forward and backward
run, so the scales come from the full weight and equal the single-device
ones. Nothing quantized is kept between steps.

Every engine saves a consolidated `pytorch_model.bin` with config.json, the
remote-code files and the tokenizer, which `python -m bitcpm_kernels.convert`
takes as input.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

logger = logging.getLogger("bitcpm_examples")

# ChatML, the chat format of MiniCPM and SmolLM2 instruct models.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model_name_or_path", help="BitCPM model folder (loaded with trust_remote_code=True)")
    parser.add_argument("--train_file", help="training data; see the script's description for the format")
    parser.add_argument("--output_dir", required=True, help="folder for the final checkpoint")

    parser.add_argument("--deepspeed", metavar="CONFIG", help="DeepSpeed JSON config; selects the DeepSpeed engine")
    parser.add_argument("--fsdp2", action="store_true", help="shard with PyTorch FSDP2 (fully_shard)")
    parser.add_argument(
        "--bf16",
        action="store_true",
        help="bfloat16 compute: FSDP2 mixed precision with float32 parameters, or a bfloat16 model without "
        "an engine. DeepSpeed takes this from the config's bf16 section",
    )

    parser.add_argument("--learning_rate", type=float, default=1e-4, help="peak AdamW learning rate")
    parser.add_argument("--weight_decay", type=float, default=0.1, help="AdamW weight decay")
    parser.add_argument("--warmup_steps", type=int, default=10, help="linear warm-up, in optimizer steps")
    parser.add_argument("--max_steps", type=int, default=1000, help="optimizer steps to train")
    parser.add_argument("--per_device_train_batch_size", type=int, default=4, help="sequences per process per micro-step")
    parser.add_argument("--gradient_accumulation_steps", type=int, default=1, help="micro-steps per optimizer step")
    parser.add_argument("--max_grad_norm", type=float, default=1.0, help="gradient clipping norm (0 disables it)")
    parser.add_argument("--max_seq_length", type=int, default=2048, help="tokens per training sequence")
    parser.add_argument("--logging_steps", type=int, default=10, help="log the loss every N optimizer steps")
    parser.add_argument("--seed", type=int, default=42, help="seed for initialization and data order")

    parser.add_argument(
        "--backend",
        choices=("auto", "reference"),
        default="auto",
        help="quantizer kernels: 'auto' (fused NPU/CPU kernels) or 'reference' (eager PyTorch)",
    )
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="self-contained smoke run: a tiny random BitCPM model, a byte-level tokenizer and built-in text",
    )


def tiny_defaults(args: argparse.Namespace, seq_len: int) -> None:
    """Shrink the run so that it finishes on two CPU processes in under a minute."""
    args.max_steps = min(args.max_steps, 30)
    args.max_seq_length = min(args.max_seq_length, seq_len)
    args.per_device_train_batch_size = min(args.per_device_train_batch_size, 2)
    args.gradient_accumulation_steps = 1
    args.warmup_steps = min(args.warmup_steps, 2)
    args.logging_steps = 1
    args.learning_rate = max(args.learning_rate, 3e-3)


# ---------------------------------------------------------------------------
# Processes and devices


@dataclass
class DistributedContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def pick_device(local_rank: int) -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank)
    try:
        import torch_npu  # noqa: F401  (registers the "npu" device with torch)
    except ImportError:
        pass
    except (OSError, RuntimeError) as error:
        logger.warning("torch_npu is installed but failed to import, so no NPU is used: %s", error)
    # NOTE: the NPU branch (HCCL process group) has not been run; the tests use CPUs only.
    if hasattr(torch, "npu") and torch.npu.is_available():
        return torch.device("npu", local_rank)
    return torch.device("cpu")


def init_distributed(args: argparse.Namespace) -> DistributedContext:
    """Join the process group that torchrun (or the deepspeed launcher) set up, if any."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))

    if args.deepspeed:
        import deepspeed
        from deepspeed.accelerator import get_accelerator

        accelerator = get_accelerator()
        device = torch.device(accelerator.device_name(local_rank))
        if device.type != "cpu":
            accelerator.set_device(local_rank)
        # The CPU accelerator chooses gloo unless oneccl_bindings_for_pytorch is installed.
        deepspeed.init_distributed(dist_backend=accelerator.communication_backend_name())
        return DistributedContext(dist.get_rank(), dist.get_world_size(), local_rank, device)

    device = pick_device(local_rank)
    if world_size > 1 or args.fsdp2:
        backend = {"cuda": "nccl", "npu": "hccl"}.get(device.type, "gloo")
        if device.type == "cuda":
            torch.cuda.set_device(device)
        elif device.type == "npu":
            torch.npu.set_device(device)
        dist.init_process_group(backend)
    return DistributedContext(rank, world_size, local_rank, device)


def setup_logging(ctx: DistributedContext) -> None:
    logging.basicConfig(
        level=logging.INFO if ctx.is_main else logging.WARNING,
        format=f"%(asctime)s [rank {ctx.rank}] %(levelname)s %(message)s",
    )


# ---------------------------------------------------------------------------
# Model and tokenizer


def build_tiny_tokenizer():
    """Build a byte-level tokenizer (256 bytes plus ChatML specials) in memory, with no download."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    byte_alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {symbol: index for index, symbol in enumerate(sorted(byte_alphabet))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|pad|>",
        additional_special_tokens=[],
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def build_tiny_model(tokenizer):
    """Build a 2-layer BitCPM model with MiniCPM's scalings, sized for the byte-level tokenizer."""
    from bitcpm_kernels.models import BitCPMConfig, BitCPMForCausalLM

    config = BitCPMConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=160,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        scale_emb=12.0,
        scale_depth=1.4,
        dim_model_base=16,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return BitCPMForCausalLM(config)


def load_model_and_tokenizer(args: argparse.Namespace, deepspeed_config: dict | None):
    """Load the BitCPM model in float32 (the engines keep float32 master weights) and its tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if args.tiny:
        torch.manual_seed(args.seed)
        tokenizer = build_tiny_tokenizer()
        return build_tiny_model(tokenizer), tokenizer

    if not args.model_name_or_path:
        raise SystemExit("--model_name_or_path is required unless --tiny is given")
    tokenizer = AutoTokenizer.from_pretrained(args.model_name_or_path, trust_remote_code=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token

    zero3_init_config = None
    if deepspeed_config and deepspeed_config.get("zero_optimization", {}).get("stage") == 3:
        # While this object lives, from_pretrained builds the model inside
        # deepspeed.zero.Init, so each process only ever stores its own partition.
        from transformers.integrations import HfDeepSpeedConfig

        zero3_init_config = HfDeepSpeedConfig(deepspeed_config)
    model = AutoModelForCausalLM.from_pretrained(
        args.model_name_or_path, trust_remote_code=True, dtype=torch.float32
    )
    if zero3_init_config is not None:
        partitioned = all(hasattr(param, "ds_id") for param in model.parameters())
        logger.info("loaded %s inside deepspeed.zero.Init: partitioned=%s", args.model_name_or_path, partitioned)
    if getattr(model.config, "weight_format", "latent") != "latent":
        raise SystemExit(
            f"{args.model_name_or_path} contains converted (pseudo-quantized) weights; "
            "train from the latent QAT checkpoint instead"
        )
    return model, tokenizer


# ---------------------------------------------------------------------------
# Engines


def cosine_with_warmup(optimizer, warmup_steps: int, total_steps: int):
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def make_optimizer(model, args: argparse.Namespace):
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        # Norm weights and biases are not decayed. Under deepspeed.zero.Init a
        # parameter's data is an empty placeholder and ds_shape is its real shape.
        ndim = len(getattr(param, "ds_shape", param.shape))
        (no_decay if ndim < 2 else decay).append(param)
    groups = [
        {"params": decay, "weight_decay": args.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=args.learning_rate, betas=(0.9, 0.95))


def load_deepspeed_config(args: argparse.Namespace, world_size: int) -> dict:
    """Read the DeepSpeed config and fill its batch fields from the command line."""
    config = json.loads(Path(args.deepspeed).read_text())
    config["train_micro_batch_size_per_gpu"] = args.per_device_train_batch_size
    config["gradient_accumulation_steps"] = args.gradient_accumulation_steps
    config["train_batch_size"] = args.per_device_train_batch_size * args.gradient_accumulation_steps * world_size
    config.setdefault("gradient_clipping", args.max_grad_norm)
    return config


class Engine:
    """One optimizer step's worth of forward, backward and update, for any engine."""

    def __init__(self, args, ctx: DistributedContext, model, deepspeed_config: dict | None):
        self.args = args
        self.ctx = ctx
        self.micro_step = 0
        if args.deepspeed:
            self.kind = "deepspeed"
        elif args.fsdp2:
            self.kind = "fsdp2"
        elif ctx.world_size > 1:
            self.kind = "ddp"
        else:
            self.kind = "single"

        if self.kind == "deepspeed":
            import deepspeed

            optimizer = None
            scheduler = None
            if "optimizer" not in deepspeed_config:
                # A torch optimizer avoids compiling DeepSpeed's fused Adam at start-up.
                optimizer = make_optimizer(model, args)

                # DeepSpeed calls this with the optimizer it wraps, so the
                # schedule uses the param groups that are actually stepped.
                def scheduler(wrapped_optimizer):
                    return cosine_with_warmup(wrapped_optimizer, args.warmup_steps, args.max_steps)

            self.model, self.optimizer, _, self.scheduler = deepspeed.initialize(
                model=model,
                optimizer=optimizer,
                lr_scheduler=scheduler,
                model_parameters=None if optimizer is not None else model.parameters(),
                config=deepspeed_config,
            )
            self.module = self.model.module
            return

        model.to(ctx.device)
        if self.kind == "fsdp2":
            from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

            policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if args.bf16 else MixedPrecisionPolicy()
            for layer in model.model.layers:
                fully_shard(layer, mp_policy=policy)
            fully_shard(model, mp_policy=policy)
            self.model = model
        elif self.kind == "ddp":
            if args.bf16:
                model.to(torch.bfloat16)
            self.model = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[ctx.device.index] if ctx.device.type != "cpu" else None
            )
        else:
            if args.bf16:
                model.to(torch.bfloat16)
            self.model = model
        self.module = model
        self.optimizer = make_optimizer(model, args)
        self.scheduler = cosine_with_warmup(self.optimizer, args.warmup_steps, args.max_steps)

    def forward(self, batch: dict) -> torch.Tensor:
        batch = {key: value.to(self.ctx.device) for key, value in batch.items()}
        return self.model(**batch, use_cache=False).loss

    def backward_and_step(self, loss: torch.Tensor) -> bool:
        """Backpropagate one micro-batch; return True when this call took an optimizer step."""
        if self.kind == "deepspeed":
            self.model.backward(loss)
            stepped = self.model.is_gradient_accumulation_boundary()
            self.model.step()
            return stepped

        (loss / self.args.gradient_accumulation_steps).backward()
        self.micro_step += 1
        if self.micro_step % self.args.gradient_accumulation_steps != 0:
            return False
        if self.args.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.args.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return True

    def learning_rate(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def save_weights(self, output_dir: Path) -> None:
        """Write the consolidated weights of every rank's shards to output_dir/pytorch_model.bin.

        All processes must call this, because ZeRO-3 and FSDP2 gather the shards collectively.
        """
        output_dir.mkdir(parents=True, exist_ok=True)
        if self.kind == "deepspeed":
            # ZeRO-3 needs stage3_gather_16bit_weights_on_model_save in the config for this.
            if not self.model.save_16bit_model(str(output_dir), "pytorch_model.bin"):
                raise RuntimeError(
                    "DeepSpeed did not save the model; set "
                    '"stage3_gather_16bit_weights_on_model_save": true in the ZeRO-3 config'
                )
        elif self.kind == "fsdp2":
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            state = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
            if self.ctx.is_main:
                torch.save(state, output_dir / "pytorch_model.bin")
        elif self.ctx.is_main:
            state = {name: tensor.detach().cpu() for name, tensor in self.module.state_dict().items()}
            torch.save(state, output_dir / "pytorch_model.bin")

        if dist.is_initialized():
            dist.barrier()


def save_model_files(model, tokenizer, output_dir: Path) -> None:
    """Write config.json, the remote-code files and the tokenizer of an unwrapped model.

    This runs before the engine wraps the model: FSDP2 replaces the model's
    class by a subclass defined in torch, and transformers would copy that
    class's source file in place of modeling_bitcpm.py.
    """
    from transformers.dynamic_module_utils import custom_object_save

    output_dir.mkdir(parents=True, exist_ok=True)
    custom_object_save(model, output_dir, config=model.config)
    model.config.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)


def prepare(args: argparse.Namespace, tiny_seq_len: int):
    """Start processes, logging, the quantizer backend, the model and the engine."""
    import bitcpm_kernels as bk

    if args.tiny:
        tiny_defaults(args, tiny_seq_len)
    if args.deepspeed and args.fsdp2:
        raise SystemExit("choose one engine: --deepspeed CONFIG or --fsdp2")

    ctx = init_distributed(args)
    setup_logging(ctx)
    bk.set_backend(args.backend)
    logger.info("quantizer backend: %s", bk.backend_info())

    deepspeed_config = load_deepspeed_config(args, ctx.world_size) if args.deepspeed else None
    model, tokenizer = load_model_and_tokenizer(args, deepspeed_config)
    model.train()
    if ctx.is_main:
        save_model_files(model, tokenizer, Path(args.output_dir))
    engine = Engine(args, ctx, model, deepspeed_config)
    logger.info(
        "engine %s, %d processes on %s, %d optimizer steps",
        engine.kind if not deepspeed_config else f"deepspeed ZeRO-{deepspeed_config['zero_optimization']['stage']}",
        ctx.world_size,
        ctx.device,
        args.max_steps,
    )
    return ctx, engine, tokenizer


def train_loop(args, ctx: DistributedContext, engine: Engine, loader) -> list[float]:
    """Train for args.max_steps optimizer steps, cycling through `loader`; return the logged losses."""
    losses: list[float] = []
    step = 0
    epoch = 0
    window: list[float] = []
    start = time.perf_counter()
    if len(loader) == 0:
        raise SystemExit(
            f"each process gets fewer than --per_device_train_batch_size={args.per_device_train_batch_size} "
            "training examples, so there is no batch to train on; add data or lower the batch size"
        )
    while step < args.max_steps:
        if hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)
        for batch in loader:
            loss = engine.forward(batch)
            window.append(loss.item())
            if not engine.backward_and_step(loss):
                continue
            step += 1
            if step % args.logging_steps == 0 or step == args.max_steps:
                mean_loss = sum(window) / len(window)
                losses.append(mean_loss)
                logger.info(
                    "step %d/%d loss %.4f lr %.3g (%.1f s)",
                    step, args.max_steps, mean_loss, engine.learning_rate(), time.perf_counter() - start,
                )  # fmt: skip
            window = []
            if step >= args.max_steps:
                break
        epoch += 1
    return losses


def finish(args, ctx: DistributedContext, engine: Engine, tokenizer, losses: list[float]) -> None:
    output_dir = Path(args.output_dir)
    engine.save_weights(output_dir)
    if ctx.is_main:
        (output_dir / "train_losses.json").write_text(json.dumps(losses) + "\n")
        logger.info("saved %s; convert it with: python -m bitcpm_kernels.convert --input_bin %s --output %s-ternary",
                    output_dir, output_dir, output_dir)  # fmt: skip
    if dist.is_initialized():
        dist.destroy_process_group()


def make_loader(dataset, args, ctx: DistributedContext, collate_fn=None):
    from torch.utils.data import DataLoader, DistributedSampler

    sampler = None
    if ctx.world_size > 1:
        sampler = DistributedSampler(dataset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    return DataLoader(
        dataset,
        batch_size=args.per_device_train_batch_size,
        sampler=sampler,
        shuffle=sampler is None,
        generator=generator,
        collate_fn=collate_fn,
        drop_last=True,
    )
