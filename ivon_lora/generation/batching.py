"""What every generation path shares: tokenizing rendered prompts, batching them by length, left padding, the
tokens that end an answer, and the posterior's mean held in the adapter while decoding."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager

import torch

from .prompts import add_special_tokens


class PromptBatches:
    """Rendered prompt texts tokenized (chat-rendered texts without added special tokens, see `prompts`) and
    grouped `batch_size` at a time by length: similar lengths share a batch (less padding); a stable sort, so
    equal lengths keep their order."""

    def __init__(self, tokenizer, texts: Sequence[str], batch_size: int, chat: bool):
        self.encoded = tokenizer(list(texts), add_special_tokens=add_special_tokens(chat))["input_ids"] if texts else []
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        order = sorted(range(len(self.encoded)), key=lambda i: len(self.encoded[i]))
        self.batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]

    def __len__(self) -> int:
        return len(self.encoded)

    def width(self, batch: list[int]) -> int:
        return max(len(self.encoded[i]) for i in batch)

    def padded(self, batch: list[int], device, copies: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded input ids and attention mask of a batch, repeated `copies` times sample-major."""
        width = self.width(batch)
        ids = [[self.pad_id] * (width - len(self.encoded[i])) + self.encoded[i] for i in batch]
        mask = [[0] * (width - len(self.encoded[i])) + [1] * len(self.encoded[i]) for i in batch]
        return (torch.tensor(ids, device=device).repeat(copies, 1),
                torch.tensor(mask, device=device).repeat(copies, 1))  # fmt: skip


def stop_ids(model, tokenizer, generate_kwargs: dict) -> list[int]:
    """The tokens that end an answer: `eos_token_id` if passed, else the model's generation config's EOS ids and the
    tokenizer's EOS (for a chat tokenizer its end-of-turn token, which a base model's generation config may lack)."""
    if "eos_token_id" in generate_kwargs:
        eos, tokenizer_eos = generate_kwargs["eos_token_id"], None
    else:
        eos = (generate_kwargs.get("generation_config") or model.generation_config).eos_token_id
        tokenizer_eos = tokenizer.eos_token_id
    ids = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    return sorted({int(i) for i in [*ids, tokenizer_eos] if i is not None})


@contextmanager
def holding_mean(model, posterior):
    """The posterior's mean in the model's adapter (e.g. a pruned mean); the previous weights return after
    (`Posterior.holding_mean`, the one implementation of that contract)."""
    if posterior is None:
        yield
        return
    with posterior.holding_mean(model):
        yield
