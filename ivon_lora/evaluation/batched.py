"""Choice probabilities of S posterior samples in one forward pass per batch (`ivon-lora eval --samples-per-pass`):
the batch is repeated S times, each copy with its own sample's LoRA weights (`ivon_lora.sample_lora.per_sample_lora`:
the base weights are read once for all S copies). FLOPs are those of S sequential passes, so on a CPU, which is
already busy with one batch, it is not faster; it is for GPUs with small evaluation batches. The samples are bit for
bit those of as many `PosteriorSampler.sample()` calls, so the result equals S sequential sampled passes up to float
rounding (tests/generation/test_sampling.py, tests/evaluation/test_eval_kinds.py).
"""

from __future__ import annotations

import torch

from ..choice.logits import choice_logits
from ..posterior import PosteriorSampler, SampleStack
from ..sample_lora import per_sample_lora


def _repeat(batch: dict[str, torch.Tensor], num_samples: int) -> dict[str, torch.Tensor]:
    return {k: v.repeat(num_samples, *([1] * (v.ndim - 1))) for k, v in batch.items()}


@torch.no_grad()
def sampled_choice_probs(model, batch: dict[str, torch.Tensor], stack: SampleStack) -> torch.Tensor:
    """S x B x K float64 answer probabilities of one collated batch under each of the `len(stack)` samples.

    One forward pass of S*B rows (`choice_logits`: last position, answer tokens only); `batch` is on the model's
    device. Equals `choice_logits` under `sampler.sample()` for each sample in turn.
    """
    num_samples, size = len(stack), batch["choice_mask"].shape[0]  # questions (a text batch has B*K rows)
    with per_sample_lora(model, stack):
        logits = choice_logits(model, _repeat(batch, num_samples))
    return torch.softmax(logits.double(), dim=-1).view(num_samples, size, -1)


@torch.no_grad()
def predict_sampled_probs(
    model, batches, sampler: PosteriorSampler, num_samples: int, samples_per_pass: int | None = None, progress=None
) -> torch.Tensor:
    """S x N x K_max float64 probabilities of pre-collated `batches` under the sampler's next `num_samples` samples.

    The samples are drawn once and shared by every batch (as in sequential evaluation, where one sample scores
    all batches); each batch takes ceil(S / samples_per_pass) forward passes (default: one). Absent choices get 0.
    `progress` (e.g. a tqdm bar) advances by one per batch and sample.
    """
    stack = sampler.draw(num_samples)
    if not batches:
        return torch.zeros(num_samples, 0, 0, dtype=torch.float64)
    per_pass = samples_per_pass or num_samples
    device = next(model.parameters()).device
    chunks = []
    for batch in batches:
        batch = {k: v.to(device) for k, v in batch.items()}
        parts = []
        for start in range(0, num_samples, per_pass):
            parts.append(sampled_choice_probs(model, batch, stack[start : start + per_pass]))
            if progress is not None:
                progress.update(len(parts[-1]))
        chunks.append(torch.cat(parts).cpu())
    num_choices = max(chunk.shape[2] for chunk in chunks)
    return torch.cat([torch.nn.functional.pad(c, (0, num_choices - c.shape[2])) for c in chunks], dim=1)
