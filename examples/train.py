"""Continued pre-training of a BitCPM model with ternary QAT.

The training text is packed into blocks of --max_seq_length tokens (documents
joined with the EOS token) and trained with the next-token loss. Every
projection fake-quantizes its latent weight in each forward pass through the
fused kernels; the latent weights get the straight-through gradient.

--train_file is a .txt file (one document per blank-line-separated
paragraph block) or a .jsonl file with a "text" field per line. --tiny
trains a tiny random model on CPython's pydoc help topics instead.

Launch it with run.sh, or directly:

    torchrun --nproc_per_node 8 train.py --deepspeed ds_config_zero2.json \\
        --model_name_or_path /path/to/BitCPM-1B --train_file corpus.jsonl --output_dir out
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_common import add_common_arguments, finish, logger, make_loader, prepare, train_loop  # noqa: E402


def read_documents(args: argparse.Namespace) -> list[str]:
    if args.tiny:
        from bitcpm_kernels.text_data import split_topics

        train_texts, _ = split_topics()
        return train_texts
    if not args.train_file:
        raise SystemExit("--train_file is required unless --tiny is given")
    path = Path(args.train_file)
    if path.suffix == ".jsonl":
        with path.open(encoding="utf-8") as lines:
            return [json.loads(line)["text"] for line in lines if line.strip()]
    return [block for block in path.read_text(encoding="utf-8").split("\n\n") if block.strip()]


def pack_blocks(tokenizer, documents: list[str], seq_len: int, max_blocks: int | None) -> torch.Tensor:
    """Tokenize and concatenate the documents (EOS after each), cut into (num_blocks, seq_len)."""
    ids: list[int] = []
    for text in documents:
        ids.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        ids.append(tokenizer.eos_token_id)
        if max_blocks is not None and len(ids) >= max_blocks * seq_len:
            break
    num_blocks = len(ids) // seq_len
    if max_blocks is not None:
        num_blocks = min(num_blocks, max_blocks)
    if num_blocks == 0:
        raise SystemExit(f"the training text has {len(ids)} tokens, fewer than one block of {seq_len}")
    return torch.tensor(ids[: num_blocks * seq_len], dtype=torch.long).view(num_blocks, seq_len)


class BlockDataset(torch.utils.data.Dataset):
    def __init__(self, blocks: torch.Tensor):
        self.blocks = blocks

    def __len__(self) -> int:
        return self.blocks.shape[0]

    def __getitem__(self, index: int) -> dict:
        block = self.blocks[index]
        return {"input_ids": block, "labels": block}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser)
    parser.add_argument(
        "--max_train_blocks", type=int, default=None, help="use at most this many packed blocks of training text"
    )
    args = parser.parse_args(argv)

    ctx, engine, tokenizer = prepare(args, tiny_seq_len=64)
    max_blocks = args.max_train_blocks
    if args.tiny and max_blocks is None:
        max_blocks = 64
    blocks = pack_blocks(tokenizer, read_documents(args), args.max_seq_length, max_blocks)
    logger.info("%d blocks of %d tokens", blocks.shape[0], blocks.shape[1])

    loader = make_loader(BlockDataset(blocks), args, ctx)
    losses = train_loop(args, ctx, engine, loader)
    finish(args, ctx, engine, tokenizer, losses)


if __name__ == "__main__":
    main()
