"""Training and held-out text from CPython's `pydoc_data.topics`.

Every CPython installation ships this module: 79 help topics (about 465,000
characters in CPython 3.11) on the language reference. The split is by topic,
so no held-out passage also appears in the training text.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def load_topics() -> dict[str, str]:
    """Return the pydoc help topics, keyed by topic name."""
    from pydoc_data import topics

    return dict(topics.topics)


def split_topics(eval_every: int = 8) -> tuple[list[str], list[str]]:
    """Split the topics into (train, eval) texts deterministically.

    Topics sorted by name go to the eval split when their index is a multiple
    of `eval_every`, so eval_every=8 holds out 10 of CPython 3.11's 79 topics.
    """
    if eval_every < 2:
        raise ValueError(f"eval_every={eval_every} is invalid; it must be at least 2 to leave training text")
    topics = load_topics()
    train, held_out = [], []
    for index, name in enumerate(sorted(topics)):
        (held_out if index % eval_every == 0 else train).append(topics[name])
    return train, held_out


def tokenize_blocks(tokenizer, texts: list[str], seq_len: int, max_blocks: int | None = None) -> torch.Tensor:
    """Tokenize `texts` into consecutive blocks of `seq_len` token ids.

    The texts are joined with the tokenizer's EOS token, and the tail that
    does not fill a whole block is dropped. Returns int64 of shape
    (num_blocks, seq_len).
    """
    if seq_len < 2:
        raise ValueError(f"seq_len={seq_len} is invalid; a language-model block needs at least 2 tokens")
    separator = tokenizer.eos_token or "\n\n"
    ids: list[int] = []
    for text in texts:
        ids.extend(tokenizer(text + separator, add_special_tokens=False)["input_ids"])
        if max_blocks is not None and len(ids) >= max_blocks * seq_len:
            break

    num_blocks = len(ids) // seq_len
    if max_blocks is not None:
        num_blocks = min(num_blocks, max_blocks)
    if num_blocks == 0:
        raise ValueError(f"the text has {len(ids)} tokens, fewer than one block of seq_len={seq_len}")
    return torch.tensor(ids[: num_blocks * seq_len], dtype=torch.long).view(num_blocks, seq_len)


@dataclass
class TextSplits:
    """Token blocks for training and for held-out evaluation, each (num_blocks, seq_len)."""

    train: torch.Tensor
    eval: torch.Tensor


def load_splits(
    tokenizer,
    seq_len: int = 128,
    max_train_blocks: int | None = None,
    max_eval_blocks: int | None = None,
    eval_every: int = 8,
) -> TextSplits:
    """Tokenize the pydoc topics into train and held-out eval blocks."""
    train_texts, eval_texts = split_topics(eval_every)
    return TextSplits(
        train=tokenize_blocks(tokenizer, train_texts, seq_len, max_train_blocks),
        eval=tokenize_blocks(tokenizer, eval_texts, seq_len, max_eval_blocks),
    )


@torch.no_grad()
def evaluate_loss(model, blocks: torch.Tensor, batch_size: int = 4) -> float:
    """Return the mean next-token cross-entropy (nats per token) of `model` on `blocks`."""
    was_training = model.training
    model.eval()
    total_loss = 0.0
    total_tokens = 0
    for start in range(0, blocks.shape[0], batch_size):
        batch = blocks[start : start + batch_size]
        logits = model(input_ids=batch, use_cache=False).logits.float()
        loss = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="sum"
        )
        total_loss += loss.item()
        total_tokens += batch[:, 1:].numel()
    model.train(was_training)
    return total_loss / total_tokens
