"""Sequence log-likelihoods of SFT batches, and the validation loss of the posterior predictive built from them.

The unit of the Bayesian model average is a whole sequence: p(y | x) = mean_s p_s(y | x), the probability of
the target tokens y (the completion, or every non-masked token) under posterior sample s. Averaging token by
token instead (the mean of the S next-token distributions at each position, what posterior-averaged decoding
uses) is another valid predictive; the sequence-level one is the Bayesian posterior predictive of the answer as a
whole, the quantity that selective answering scores.

Rows are documents, except in padding-free / packed batches (TRL's `padding_free`, `packing` with bfd), where one
row holds several documents, each starting where `position_ids` restarts at 0: there each document is its own
unit, so packing does not change what the predictive averages.
"""

from __future__ import annotations

import math

import torch

IGNORE_INDEX = -100


def document_ids(batch: dict) -> torch.Tensor:
    """[B, T] index of the document each position belongs to, numbered across the batch from 0."""
    labels = batch["labels"]
    rows, length = labels.shape
    position_ids = batch.get("position_ids")
    if position_ids is None or "attention_mask" in batch:
        return torch.arange(rows, device=labels.device).unsqueeze(1).expand(rows, length)
    starts = (position_ids == 0).long()
    starts[:, 0] = 1  # a row always starts a document
    ids = starts.flatten().cumsum(0) - 1
    return ids.view(rows, length)


@torch.no_grad()
def sequence_log_likelihoods(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p(y | x) summed over each document's target tokens [D] float64, target token counts [D]).

    The targets are `labels` shifted by one (a causal LM predicts position t + 1 at t), -100 excluded; a document
    without target tokens gets log-likelihood 0 and count 0.
    """
    labels = batch["labels"]
    # Logits only from the first position that predicts a target on (completion-only rows: the last few tokens):
    # the head's vocabulary-wide projection and softmax are the costly part of scoring.
    has_target = (labels[:, 1:] != IGNORE_INDEX).any(dim=0).nonzero()
    first = int(has_target[0]) if len(has_target) else labels.shape[1] - 1
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits = model(**inputs, use_cache=False, logits_to_keep=labels.shape[1] - first).logits
    targets = labels[:, first + 1 :]
    mask = targets != IGNORE_INDEX
    log_probs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    token_log_probs = log_probs.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1).double()
    documents = document_ids(batch)
    docs = documents[:, first + 1 :]
    num_docs = int(documents.max()) + 1
    sums = torch.zeros(num_docs, dtype=torch.float64, device=labels.device)
    counts = torch.zeros(num_docs, dtype=torch.long, device=labels.device)
    sums.index_add_(0, docs[mask], token_log_probs[mask])
    counts.index_add_(0, docs[mask], torch.ones_like(docs[mask]))
    return sums, counts


def predictive_loss_metrics(sample_log_likelihoods: torch.Tensor, token_counts: torch.Tensor) -> dict:
    """The S-sample predictive's validation loss from per-sample document log-likelihoods [S, D] and counts [D].

    loss: -sum_d log mean_s p_s(y_d | x_d) / sum_d |y_d| (per target token, nats), perplexity = exp(loss);
    expected_loss: the samples' own mean loss (the loss of a single random posterior sample). By Jensen, loss <=
    expected_loss; the gap is how much the samples disagree.
    """
    sample_log_likelihoods = sample_log_likelihoods.double()
    num_samples = sample_log_likelihoods.shape[0]
    tokens = float(token_counts.sum())
    if tokens == 0:
        raise ValueError("The evaluation data has no target tokens (every label is -100)")
    bma = torch.logsumexp(sample_log_likelihoods, dim=0) - math.log(num_samples)
    loss = float(-bma.sum() / tokens)
    expected_loss = float(-sample_log_likelihoods.sum(dim=1).mean() / tokens)
    return {"loss": loss, "perplexity": math.exp(loss), "expected_loss": expected_loss, "samples": num_samples,
            "tokens": int(tokens)}  # fmt: skip


def predictive_losses(model, batches, posterior=None, num_samples: int = 0, seed: int = 0, gather=None,
                      at_mean: bool = True, num_documents: int | None = None) -> dict:  # fmt: skip
    """Validation loss and perplexity at the posterior mean ("mean") and of the `num_samples`-sample predictive
    ("sampled", with a posterior): what `ivon-lora train` and `ivon-lora eval` report for an SFT run.

    `batches`: the evaluation batches on the model's device (a re-iterable: it is read once per sample);
    `gather`: under data parallelism, gathers a tensor of every rank's documents (`accelerator.gather`), and
    `num_documents` drops the padded repeats of the last batch (the first `num_documents` are the documents).
    Not `accelerator.gather_for_metrics`: called after the evaluation loader has finished, it cuts every batch to
    the remainder of whichever loader accelerate saw last (an abandoned train loader's, when training stops at the
    end of an epoch), scoring only part of the documents.
    Posterior samples come from a generator seeded by `seed`: the same seed gives the same samples. `at_mean=False`
    skips the pass at the mean (the Trainer's evaluation has scored it already).
    """
    gather = gather or (lambda tensor: tensor)

    def all_documents():
        sums, counts = zip(*((gather(s), gather(c)) for s, c in (sequence_log_likelihoods(model, b) for b in batches)))
        return torch.cat(sums)[:num_documents].cpu(), torch.cat(counts)[:num_documents].cpu()

    was_training = model.training
    model.eval()
    try:
        result, counts = {}, None
        if at_mean:
            mean_log_likelihoods, counts = all_documents()
            mean = predictive_loss_metrics(mean_log_likelihoods.unsqueeze(0), counts)
            result["mean"] = {key: mean[key] for key in ("loss", "perplexity", "tokens")} | {"documents": len(counts)}
        if posterior is not None and num_samples > 0:
            sampler = posterior.sampler(model, generator=torch.Generator().manual_seed(seed))
            per_sample = []
            for _ in range(num_samples):
                with sampler.sample():
                    log_likelihoods, counts = all_documents()
                per_sample.append(log_likelihoods)
            result["sampled"] = predictive_loss_metrics(torch.stack(per_sample), counts) | {"documents": len(counts)}
    finally:
        model.train(was_training)
    return result
