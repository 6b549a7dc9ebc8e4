"""Choice probabilities of a model over a list of examples, at the posterior mean and over posterior samples.

`predict` returns every example's probabilities (at the mean and per sample); `Predictions.metrics` turns them
into the report's numbers. Under torch.distributed the examples are sharded across ranks (rank r scores
examples r, r + W, ...) and gathered back in order on every rank, so none is dropped or counted twice.
"""

from __future__ import annotations

import logging
from contextlib import ExitStack
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from ..choice.collator import ChoiceCollator
from ..choice.example import ChoiceExample
from ..choice.logits import choice_logits
from ..mc_dropout import has_dropout, sample_seed, seeded_dropout
from ..vocabulary import ANSWER_SCORINGS, CHOICE_SAMPLE_KINDS as SAMPLE_KINDS
from .metrics import (
    BIN_EDGES,
    DEFAULT_ECE_BINS,
    DEFAULT_RISK_LEVELS,
    calibration_metrics,
    selective_prediction,
)

logger = logging.getLogger(__name__)


def protocol(preset, num_samples: int, ece_bins, answer_scoring: str = "letter") -> dict:
    """How the numbers of `predict` / `Predictions.metrics` were made under `preset` (a tasks.Protocol) with the
    run's `answer_scoring` (`vocabulary.ANSWER_SCORINGS`), for every result file."""
    return {
        "preset": preset.as_dict(),
        "answer_scoring": answer_scoring,
        "scoring": ANSWER_SCORINGS[answer_scoring],
        "predictive": "mean of S sample probability vectors",
        "samples": num_samples,
        "sample_kind": "posterior" if num_samples else None,
        "ece": f"equal-width bins on the max probability, {BIN_EDGES[preset.ece_edges]}",
        "ece_bins": list(ece_bins),
        "brier": "sum over classes",
        "selective": "accept from the most confident down; coverage at risk = largest coverage with 1 - accuracy <= r",
        "units": "fractions (x100 for papers' tables)",
    }


@dataclass
class Predictions:
    """Per-example probabilities: `mean` N x K at the posterior mean, `samples` S x N x K (absent choices are 0)."""

    ids: list[str]
    gold: torch.Tensor
    num_choices: list[int]
    mean: torch.Tensor
    samples: torch.Tensor | None = None
    sample_kind: str | None = None

    def predictive(self, num_samples: int | None = None) -> torch.Tensor:
        """The mean of the first `num_samples` sample probability vectors (all when None)."""
        return self.samples[:num_samples].mean(dim=0)

    def metrics(self, ece_bins=DEFAULT_ECE_BINS, risk_levels=DEFAULT_RISK_LEVELS, ece_edges: str = "right") -> dict:
        """{"num_examples", "mean", and with samples "sampled" (all S) and "by_num_samples" (s = 1..S)}.

        Each predictive also gets `selective`: AURC and coverage at each risk level.
        """

        def scored(probs):
            return {**calibration_metrics(probs, self.gold, ece_bins, ece_edges),
                    "selective": selective_prediction(probs, self.gold, risk_levels)}  # fmt: skip

        result = {"num_examples": len(self.ids), "mean": scored(self.mean)}
        if self.samples is None:
            return result
        running = torch.zeros_like(self.mean)
        by_num_samples = []
        for s in range(1, len(self.samples) + 1):
            running += self.samples[s - 1]
            by_num_samples.append({"samples": s, **calibration_metrics(running / s, self.gold, ece_bins, ece_edges)})
        result["sampled"] = {**by_num_samples[-1], "selective": selective_prediction(running / len(self.samples),
                                                                                     self.gold, risk_levels)}  # fmt: skip
        result["sample_kind"] = self.sample_kind
        result["by_num_samples"] = by_num_samples
        return result

    def rows(self):
        """One dict per example for the per-example file: id, gold, probabilities at the mean and per sample."""
        for i, example_id in enumerate(self.ids):
            k = self.num_choices[i]
            row = {"id": example_id, "gold": int(self.gold[i]), "mean": self.mean[i, :k].tolist()}
            if self.samples is not None:
                row["sample_probs"] = self.samples[:, i, :k].tolist()
            yield row


def read_predictions(path: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Mean (N x K) and samples (S x N x K, or None) from a per-example file of `Predictions.rows()` (train's
    predictions.jsonl, eval's predictions-TASK-RUN.jsonl); beside its writer, so the two change together. A file
    written before the per-sample key was `sample_probs` holds them under `samples`."""
    import json

    means, samples = [], []
    with open(path) as f:
        for line_number, line in enumerate(f, 1):
            try:
                row = json.loads(line)
                means.append(row["mean"])
                samples.append(row.get("sample_probs", row.get("samples")))
            except (json.JSONDecodeError, KeyError) as error:
                raise ValueError(f"{path}, line {line_number}: not a predictions row ({error})") from None
    if not means:
        raise ValueError(f"{path}: no predictions")
    width = max(len(m) for m in means)
    mean = torch.tensor([m + [0.0] * (width - len(m)) for m in means], dtype=torch.float64)
    if any(s is None for s in samples):
        return mean, None
    stacked = torch.tensor([[s + [0.0] * (width - len(s)) for s in per_sample] for per_sample in samples],
                           dtype=torch.float64)  # fmt: skip
    return mean, stacked.transpose(0, 1).contiguous()


def _world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


@torch.no_grad()
def predict_probs(model, batches, progress=None) -> torch.Tensor:
    """N x K_max float64 probabilities of pre-collated batches, in order (padding choices get probability 0)."""
    device = next(model.parameters()).device
    chunks = []
    for batch in batches:
        if progress is not None:
            progress.update()
        batch = {k: v.to(device) for k, v in batch.items()}
        chunks.append(torch.softmax(choice_logits(model, batch).double(), dim=-1).cpu())
    num_choices = max(chunk.shape[1] for chunk in chunks)
    return torch.cat([torch.nn.functional.pad(c, (0, num_choices - c.shape[1])) for c in chunks])


def predict(
    model,
    tokenizer,
    examples: list[ChoiceExample],
    posterior=None,
    num_samples: int = 10,
    batch_size: int = 16,
    max_length: int | None = None,
    seed: int = 0,
    sample_kind: str = "posterior",
    samples_per_pass: int | None = None,
) -> Predictions:
    """Probabilities at the posterior mean and for `num_samples` samples of the posterior (or of MC dropout).

    Every example is scored (no drop_last). Prompts are tokenized before the first forward pass, never per
    sample, and batched by length (less padding);
    each sample is drawn once and scores every batch, so results do not depend on the batch size beyond float
    rounding, and a seed fixes them. `sample_kind="mc_dropout"` samples dropout masks instead of the posterior
    (the baseline for adapters trained without IVON; it needs lora_dropout > 0). `samples_per_pass` K: posterior
    samples are scored K per forward pass (`batched.predict_sampled_probs`: the same draws, equal up to float
    rounding; plain LoRA only); None: one sample per pass.
    """
    if sample_kind not in SAMPLE_KINDS:
        raise ValueError(f"Invalid sample_kind value: {sample_kind!r} (must be one of {', '.join(SAMPLE_KINDS)})")
    if any(e.gold < 0 for e in examples):
        raise ValueError("Every evaluation example needs a gold label")
    if sample_kind == "posterior" and posterior is None:
        num_samples = 0
    if sample_kind == "mc_dropout" and num_samples and not has_dropout(model):
        raise ValueError("MC-dropout samples need a model with dropout (lora_dropout > 0); this one has none")
    rank, world_size = _world()
    shard = list(range(rank, len(examples), world_size))
    batches, unsort = _length_sorted_batches(tokenizer, [examples[i] for i in shard], batch_size, max_length)

    progress = tqdm(total=len(batches) * (1 + num_samples), desc="scoring", unit="batch", disable=rank != 0,
                    leave=False)  # fmt: skip

    def score() -> torch.Tensor:
        if not batches:
            return torch.zeros(0, max(len(e.answers) for e in examples), dtype=torch.float64)
        return predict_probs(model, batches, progress)[unsort]

    was_training = model.training
    model.eval()
    restore_weights = ExitStack()
    try:
        if posterior is not None:  # "mean" is the posterior's mean, e.g. after pruning; the weights return after
            restore_weights.enter_context(posterior.holding_mean(model))
        mean = score()
        samples = []
        # Built once: the mean and std stay cached on the adapter's device between samples.
        sampler = posterior.sampler(model, generator=torch.Generator().manual_seed(seed)) if posterior else None
        batched = bool(samples_per_pass and sample_kind == "posterior" and num_samples and batches)
        if batched:  # the same draws as `sampler.sample()` in turn, K of them per forward pass
            from .batched import predict_sampled_probs

            samples = list(
                predict_sampled_probs(model, batches, sampler, num_samples, samples_per_pass, progress)[:, unsort]
            )
        for s in range(0 if batched else num_samples):
            if sample_kind == "posterior":
                with sampler.sample():
                    samples.append(score())
            else:
                with seeded_dropout(model, sample_seed(seed, s)):
                    samples.append(score())
            if rank == 0:
                logger.info("%s sample %d/%d scored", sample_kind, s + 1, num_samples)
    finally:
        restore_weights.close()
        model.train(was_training)
        progress.close()

    samples = torch.stack(samples) if samples else None
    if world_size > 1:
        mean, samples = _gather(shard, mean, samples, len(examples))
    return Predictions(
        ids=[e.id for e in examples],
        gold=torch.tensor([e.gold for e in examples]),
        num_choices=[len(e.answers) for e in examples],
        mean=mean,
        samples=samples,
        sample_kind=sample_kind if samples is not None else None,
    )


def _length_sorted_batches(tokenizer, examples: list[ChoiceExample], batch_size: int, max_length: int | None):
    """Collated batches of `examples` sorted by prompt length (less padding), and the index that puts the scored
    rows back in the examples' order."""
    collator = ChoiceCollator(tokenizer, max_length)
    lengths = [len(ids) for ids in tokenizer([e.prompt for e in examples])["input_ids"]] if examples else []
    order = sorted(range(len(examples)), key=lambda j: lengths[j])  # stable: equal lengths keep their order
    rows = [{"prompt": examples[j].prompt, "answers": examples[j].answers, "gold": examples[j].gold,
             "scoring": examples[j].scoring} for j in order]  # fmt: skip
    batches = [collator(rows[i : i + batch_size]) for i in range(0, len(rows), batch_size)] if rows else []
    unsort = torch.empty(len(order), dtype=torch.long)
    unsort[torch.tensor(order, dtype=torch.long)] = torch.arange(len(order))
    return batches, unsort


def _gather(shard: list[int], mean: torch.Tensor, samples: torch.Tensor | None, total: int):
    """Every rank's shard, reassembled in example order on every rank."""
    parts = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(parts, (shard, mean, samples))
    num_choices = max(part[1].shape[1] for part in parts)
    full_mean = torch.zeros(total, num_choices, dtype=torch.float64)
    full_samples = None if samples is None else torch.zeros(len(samples), total, num_choices, dtype=torch.float64)
    for indices, part_mean, part_samples in parts:
        index = torch.tensor(indices, dtype=torch.long)
        full_mean[index, : part_mean.shape[1]] = part_mean
        if full_samples is not None:
            full_samples[:, index, : part_samples.shape[2]] = part_samples
    return full_mean, full_samples


def evaluate_predictive(
    model,
    tokenizer,
    examples: list[ChoiceExample],
    posterior=None,
    ece_bins=DEFAULT_ECE_BINS,
    ece_edges="right",
    **predict_options,
) -> dict:
    """Metrics at the posterior mean ("mean") and of the average of 1..S sampled predictive distributions.

    `predict_options` are those of `predict` (num_samples, batch_size, max_length, seed, sample_kind).
    """
    return predict(model, tokenizer, examples, posterior, **predict_options).metrics(ece_bins, ece_edges=ece_edges)
