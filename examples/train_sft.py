"""Supervised fine-tuning (SFT) of a BitCPM model with ternary QAT.

--train_file is a .jsonl file with one conversation per line, in the
format MiniCPM's fine-tuning scripts use:

    {"messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}]}

A "system" message may come first, and a conversation may have several
user/assistant turns. Each conversation is rendered with the tokenizer's
chat template. The loss covers only the assistant replies, their text and
end-of-turn token. System and user turns and the template's headers get
the label -100. --tiny trains a tiny random model on question/answer
pairs built from CPython's pydoc help topics.

Launch it with run_sft.sh, or directly:

    torchrun --nproc_per_node 8 train_sft.py --deepspeed ds_config_zero3.json \\
        --model_name_or_path /path/to/BitCPM-1B --train_file sft.jsonl --output_dir out-sft
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_common import add_common_arguments, finish, logger, make_loader, prepare, train_loop  # noqa: E402

IGNORE_INDEX = -100


def tiny_conversations() -> list[list[dict]]:
    """Question/answer pairs from the pydoc help topics: the answer is the topic's first lines."""
    from bitcpm_kernels.text_data import load_topics

    conversations = []
    for name, text in sorted(load_topics().items()):
        answer = " ".join(text.split())[:120]
        conversations.append(
            [
                {"role": "user", "content": f"What does the Python reference say about {name}?"},
                {"role": "assistant", "content": answer},
            ]
        )
    return conversations


def read_conversations(args: argparse.Namespace) -> list[list[dict]]:
    if args.tiny:
        return tiny_conversations()
    if not args.train_file:
        raise SystemExit("--train_file is required unless --tiny is given")
    conversations = []
    with open(args.train_file, encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            record = json.loads(line)
            messages = record.get("messages")
            if not messages or not any(message.get("role") == "assistant" for message in messages):
                raise SystemExit(f"{args.train_file}:{number}: expected a 'messages' list with an assistant turn")
            conversations.append(messages)
    return conversations


def tokenize_conversation(tokenizer, messages: list[dict], max_length: int) -> dict:
    """Token ids and labels of one conversation; labels are -100 outside assistant replies.

    Each turn's tokens are the text that the chat template adds for that turn.
    So the template must render a prefix of a conversation as a prefix of the
    text, which ChatML does. A template that does not raises ValueError.
    """
    input_ids: list[int] = []
    labels: list[int] = []
    rendered = ""
    for index, message in enumerate(messages):
        if message["role"] == "assistant":
            header = tokenizer.apply_chat_template(messages[:index], tokenize=False, add_generation_prompt=True)
            header_ids = tokenizer(header[len(rendered) :], add_special_tokens=False)["input_ids"]
            input_ids += header_ids
            labels += [IGNORE_INDEX] * len(header_ids)
            rendered = header

        text = tokenizer.apply_chat_template(messages[: index + 1], tokenize=False)
        if not text.startswith(rendered):
            raise ValueError("the chat template does not render a conversation prefix as a text prefix")
        piece_ids = tokenizer(text[len(rendered) :], add_special_tokens=False)["input_ids"]
        input_ids += piece_ids
        labels += piece_ids if message["role"] == "assistant" else [IGNORE_INDEX] * len(piece_ids)
        rendered = text
    return {"input_ids": input_ids[:max_length], "labels": labels[:max_length]}


class PaddingCollator:
    """Right-pad a batch to its longest sequence, masking the padding out of attention and loss."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, examples: list[dict]) -> dict:
        length = max(len(example["input_ids"]) for example in examples)
        input_ids = torch.full((len(examples), length), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(examples), length), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(examples), length), dtype=torch.long)
        for row, example in enumerate(examples):
            n = len(example["input_ids"])
            input_ids[row, :n] = torch.tensor(example["input_ids"])
            labels[row, :n] = torch.tensor(example["labels"])
            attention_mask[row, :n] = 1
        return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser)
    args = parser.parse_args(argv)

    ctx, engine, tokenizer = prepare(args, tiny_seq_len=256)
    if tokenizer.chat_template is None:
        raise SystemExit(f"the tokenizer of {args.model_name_or_path} has no chat template")
    examples = [tokenize_conversation(tokenizer, messages, args.max_seq_length) for messages in read_conversations(args)]
    # A conversation cut before its first reply has no target token left.
    examples = [example for example in examples if any(label != IGNORE_INDEX for label in example["labels"])]
    if not examples:
        raise SystemExit(f"no conversation keeps an assistant token within --max_seq_length={args.max_seq_length}")
    logger.info("%d conversations, %d target tokens", len(examples),
                sum(sum(label != IGNORE_INDEX for label in example["labels"]) for example in examples))  # fmt: skip

    loader = make_loader(examples, args, ctx, collate_fn=PaddingCollator(tokenizer.pad_token_id))
    losses = train_loop(args, ctx, engine, loader)
    finish(args, ctx, engine, tokenizer, losses)


if __name__ == "__main__":
    main()
