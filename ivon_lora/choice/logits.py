"""K-way logits of a multiple-choice batch: the answer tokens' logits at the last prompt position.

A question is scored by the logits of its K answer tokens at the last prompt position (IVON-LoRA's scoring, Cong
et al., arXiv 2411.04421): one forward pass per question, the LM head evaluated at that single position (`logits_to_keep=1`), never over the
whole sequence. Training minimises the cross-entropy of the K-way softmax.
"""

from __future__ import annotations

import torch

from .text import text_choice_logits


def choice_logits(model, batch) -> torch.Tensor:
    """B x K_max float32 logits of the answer tokens at the last position; absent choices are -inf. A text-scoring
    batch (`text.text_batch`, answer_scoring: text) gets its answers' log-likelihoods instead."""
    if "continuation_mask" in batch:
        return text_choice_logits(model, batch)
    outputs = model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], logits_to_keep=1, use_cache=False
    )
    last = outputs.logits[:, -1, :]
    logits = last.gather(1, batch["choice_token_ids"]).float()
    return logits.masked_fill(~batch["choice_mask"], float("-inf"))
