"""Selective generation on a generative task: each question's chosen answer, its confidence scores, and how well
each score ranks the correct answers above the wrong ones (`ivon-lora eval RUN --task wordqa`).

For one run (model, tokenizer, posterior or None) and a split of `GenerativeExample`s:

1. Prompts as the run was trained: for a chat run (an SFT run on conversational data, or `prompt_format: chat`)
   the question is the user message of the tokenizer's chat template (`generation.render_prompts`); otherwise the
   task's plain prompt ("Question: ...\\nAnswer:").
2. Decoding (`generation.answers.decode_answers`, with `ivon_lora.generation.decoding`): the chosen answer is greedy at the posterior
   mean (at the weights without a posterior), or posterior-averaged (`decoding averaged`); S sampled answers come
   from S posterior samples (batched: one forward per step for all S), else MC dropout (a run with LoRA dropout and
   mc_dropout_samples > 0), else temperature sampling at the weights (the AdamW baseline's samples), both with
   `generation.generate` (`baseline_samples`). Answers are cut at the task's first stop string.
3. Teacher-forced scoring (`teacher_forced`) of the chosen answer, prompt + answer tokens + what ended it (the stop
   string's tokens, or the EOS token; nothing when the token budget ran out), at the mean and under each of the
   S epistemic samples (the same seeded posterior draws as the decoding's; MC-dropout masks seeded per sample).
   It yields the answer's per-token log-probs and, per answer position, the mutual information and expected
   pairwise KL of the S next-token distributions, accumulated one sample at a time (`Disagreement`): no
   [S, T, V] tensor is kept beyond one batch's [T, V] sums.
4. Every score of `uncertainty.CONFIDENCE_SCORES` (a score that needs what the run's samples do not give is
   reported as undefined, with the reason), correctness by the task's judge, each report judge's score, and
   `selective.selective_generation_metrics` per score.

Deterministic for a seed (and batch size: MC-dropout masks depend on the batch they are drawn for).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass

import torch

from ..generation.answers import (  # noqa: F401  (this module's vocabulary too)
    ANSWER_ENDS,
    SAMPLE_KINDS,
    DecodedAnswers,
    Sampling,
    baseline_samples,
    cut_at_stop,
    decode_answers,
    sampling_for,
)
from ..mc_dropout import sample_seed, seeded_dropout

logger = logging.getLogger(__name__)

# A scoring batch holds at most this many answer positions (the [positions, V] float64 sums of `Disagreement`).
MAX_SCORED_POSITIONS = 512


# ------------------------------------------------------------------------------------------- teacher-forced scoring


def answer_tokens(tokenizer, answer: str, end: str, stop_string: str | None = None) -> list[int]:
    """The tokens scored for an answer: its own, then what ended it (`stop_string`'s tokens, or EOS)."""
    ids = tokenizer(answer, add_special_tokens=False)["input_ids"] if answer else []
    if end == "stop":
        if not stop_string:
            raise ValueError("An answer that ended at a stop string needs that stop string")
        ids = ids + tokenizer(stop_string, add_special_tokens=False)["input_ids"]
    elif end == "eos":
        if tokenizer.eos_token_id is None:
            raise ValueError("The answer ended at an end-of-sequence token, but the tokenizer has no eos_token_id")
        ids = ids + [tokenizer.eos_token_id]
    elif end != "length":
        raise ValueError(f"Invalid answer end {end!r}; choose from {', '.join(ANSWER_ENDS)}")
    return ids


class Disagreement:
    """The mutual information and expected pairwise KL of S distributions over V, fed one sample at a time.

    Holds sum_s p_s, sum_s log p_s ([..., V]) and sum_s sum_v p_s log p_s ([...]), from which both follow exactly
    (the formulas of `uncertainty.mutual_information` / `expected_pairwise_kl`): memory of one distribution, not S.
    """

    def __init__(self):
        self.count = 0
        self.sum_probs = self.sum_log_probs = self.sum_negentropy = None

    def add(self, log_probs: torch.Tensor) -> None:
        """One sample's log-probs [..., V] (a log_softmax over the vocabulary)."""
        log_probs = log_probs.double()
        probs = log_probs.exp()
        negentropy = torch.where(torch.isneginf(log_probs), 0.0, probs * log_probs).sum(-1)
        if self.count == 0:
            self.sum_probs, self.sum_log_probs, self.sum_negentropy = probs, log_probs.clone(), negentropy
        else:
            self.sum_probs += probs
            self.sum_log_probs += log_probs
            self.sum_negentropy += negentropy
        self.count += 1

    def _check(self) -> int:
        if self.count < 2:
            raise ValueError(f"Disagreement needs at least 2 samples, got {self.count}")
        return self.count

    def mutual_information(self) -> torch.Tensor:
        """H(mean_s p_s) - mean_s H(p_s), nats; [...]."""
        count = self._check()
        mean = self.sum_probs / count
        entropy_of_mean = -torch.where(mean == 0, 0.0, mean * mean.log()).sum(-1)
        return entropy_of_mean + self.sum_negentropy / count

    def expected_pairwise_kl(self) -> torch.Tensor:
        """Mean over ordered pairs s != t of KL(p_s || p_t), nats; [...]."""
        count = self._check()
        cross = torch.where(self.sum_probs == 0, 0.0, self.sum_probs * self.sum_log_probs).sum(-1)
        return (count * self.sum_negentropy - cross) / (count * (count - 1))


@dataclass
class TeacherForced:
    """The scoring pass over N answers (T: the longest answer's scored tokens, S: the epistemic samples).

    `token_log_probs` [N, T] at the mean, `mask` [N, T] (the answer's positions), `sample_log_likelihoods` [N, S],
    `mutual_information` / `expected_pairwise_kl` [N, T] per answer position (None with fewer than 2 samples).
    """

    token_log_probs: torch.Tensor
    mask: torch.Tensor
    sample_log_likelihoods: torch.Tensor
    mutual_information: torch.Tensor | None = None
    expected_pairwise_kl: torch.Tensor | None = None


def _scoring_batches(lengths: list[int], answer_lengths: list[int], batch_size: int) -> list[list[int]]:
    """Indices by total length (less padding), at most `batch_size` answers and `MAX_SCORED_POSITIONS` answer
    positions a batch (at least one answer)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches, current, positions = [], [], 0
    for i in order:
        if current and (len(current) == batch_size or positions + answer_lengths[i] > MAX_SCORED_POSITIONS):
            batches.append(current)
            current, positions = [], 0
        current.append(i)
        positions += answer_lengths[i]
    return batches + ([current] if current else [])


def _sample_contexts(model, posterior, sampling: Sampling, seed: int, batch_index: int):
    """One context per epistemic sample, holding sample k in the model: posterior draw k of the generator seeded by
    `seed` (as `generate` draws them), or dropout masks seeded by (seed, k, batch)."""
    if sampling.kind == "posterior":
        sampler = posterior.sampler(model, generator=torch.Generator().manual_seed(seed))
        for _ in range(sampling.num_samples):
            yield sampler.sample()
    elif sampling.kind == "mc_dropout":
        for k in range(sampling.num_samples):
            yield seeded_dropout(model, sample_seed(seed, k, batch_index))


@torch.no_grad()
def teacher_forced(model, prompts: list[list[int]], answers: list[list[int]], *, posterior=None,
                   sampling: Sampling = Sampling(None, 0), seed: int = 0, batch_size: int = 16,
                   pad_id: int = 0) -> TeacherForced:  # fmt: skip
    """Score answer i (token ids `answers[i]`, at least one) after prompt i (`prompts[i]`, at least one token).

    Sequences are right-padded (the causal mask keeps padding out of every real position); the log-prob of answer
    token j is read from the logits at the position before it. At the mean: the posterior's mean is held in the
    adapter (`Posterior.holding_mean`, as `predict` does) when there is a posterior; the weights return after.
    """
    if len(prompts) != len(answers):
        raise ValueError(f"Expected one answer per prompt, got {len(prompts)} prompts and {len(answers)} answers")
    if any(not p for p in prompts) or any(not a for a in answers):
        raise ValueError("Every prompt and every scored answer needs at least one token")
    device = next(model.parameters()).device
    n, width = len(answers), max((len(a) for a in answers), default=0)
    num_samples = sampling.epistemic
    token_log_probs = torch.zeros(n, width, dtype=torch.float64)
    mask = torch.zeros(n, width, dtype=torch.bool)
    sample_log_likelihoods = torch.zeros(n, num_samples, dtype=torch.float64)
    disagreement = {name: torch.zeros(n, width, dtype=torch.float64) for name in ("mi", "epkl")}
    restore_weights = ExitStack()
    if posterior is not None:
        restore_weights.enter_context(posterior.holding_mean(model))
    was_training = model.training
    model.eval()
    lengths = [len(p) + len(a) for p, a in zip(prompts, answers)]
    try:
        for batch_index, batch in enumerate(_scoring_batches(lengths, [len(a) for a in answers], batch_size)):
            longest, answer_width = max(lengths[i] for i in batch), max(len(answers[i]) for i in batch)
            input_ids = torch.full((len(batch), longest), pad_id, dtype=torch.long)
            attention_mask = torch.zeros(len(batch), longest, dtype=torch.long)
            positions = torch.zeros(len(batch), answer_width, dtype=torch.long)
            targets = torch.zeros(len(batch), answer_width, dtype=torch.long)
            batch_mask = torch.zeros(len(batch), answer_width, dtype=torch.bool)
            for row, i in enumerate(batch):
                sequence = prompts[i] + answers[i]
                input_ids[row, : len(sequence)] = torch.tensor(sequence)
                attention_mask[row, : len(sequence)] = 1
                count = len(answers[i])
                positions[row, :count] = torch.arange(len(prompts[i]) - 1, len(sequence) - 1)
                targets[row, :count] = torch.tensor(answers[i])
                batch_mask[row, :count] = True
            inputs = {"input_ids": input_ids.to(device), "attention_mask": attention_mask.to(device)}
            rows = torch.arange(len(batch)).unsqueeze(1)

            def answer_log_probs() -> torch.Tensor:  # [B, T, V] float64 at the answer positions
                logits = model(**inputs).logits.cpu()
                return torch.log_softmax(logits[rows, positions].double(), dim=-1)

            def answer_token_log_probs(log_probs: torch.Tensor) -> torch.Tensor:
                return torch.where(batch_mask, log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1), 0.0)

            index = torch.tensor(batch)
            token_log_probs[index, :answer_width] = answer_token_log_probs(answer_log_probs())
            mask[index, :answer_width] = batch_mask
            accumulated = Disagreement()
            for k, sample in enumerate(_sample_contexts(model, posterior, sampling, seed, batch_index)):
                with sample:
                    log_probs = answer_log_probs()
                sample_log_likelihoods[index, k] = answer_token_log_probs(log_probs).sum(-1)
                accumulated.add(log_probs)
            if num_samples >= 2:
                disagreement["mi"][index, :answer_width] = torch.where(
                    batch_mask, accumulated.mutual_information(), 0.0
                )
                disagreement["epkl"][index, :answer_width] = torch.where(
                    batch_mask, accumulated.expected_pairwise_kl(), 0.0)  # fmt: skip
    finally:
        model.train(was_training)
        restore_weights.close()
    return TeacherForced(token_log_probs, mask, sample_log_likelihoods,
                         disagreement["mi"] if num_samples >= 2 else None,
                         disagreement["epkl"] if num_samples >= 2 else None)  # fmt: skip


# ------------------------------------------------------------------------------------------------- confidence scores


def confidence_scores(scored: TeacherForced, decoded: Sequence[DecodedAnswers], sampling: Sampling,
                      equivalent) -> tuple[dict[str, torch.Tensor], dict[str, str]]:  # fmt: skip
    """Every score of `CONFIDENCE_SCORES` that the run's samples define ([N] float64, higher = more confident),
    and for each other score why it is undefined."""
    from . import uncertainty

    scores = {
        "sequence_log_likelihood": uncertainty.sequence_log_likelihood(scored.token_log_probs, scored.mask),
        "mean_token_log_likelihood": uncertainty.mean_token_log_likelihood(scored.token_log_probs, scored.mask),
    }
    undefined = {}
    no_models = (f"{sampling.describe()}: needs the distributions of posterior or MC-dropout samples"
                 if sampling.epistemic == 0 else None)  # fmt: skip
    if no_models:
        undefined["bma_log_likelihood"] = no_models
    else:
        scores["bma_log_likelihood"] = uncertainty.bma_log_likelihood(scored.sample_log_likelihoods)
    if scored.mutual_information is None:
        reason = no_models or f"{sampling.describe()}: disagreement needs at least 2 samples"
        undefined["neg_mutual_information"] = undefined["neg_expected_pairwise_kl"] = reason
    else:
        scores["neg_mutual_information"] = -uncertainty.answer_mean(scored.mutual_information, scored.mask)
        scores["neg_expected_pairwise_kl"] = -uncertainty.answer_mean(scored.expected_pairwise_kl, scored.mask)
    if sampling.num_samples == 0:
        undefined["semantic_agreement"] = undefined["neg_semantic_entropy"] = "no sampled answers (S = 0)"
    else:
        scores["semantic_agreement"] = torch.tensor(
            [uncertainty.semantic_agreement(d.chosen, d.samples, equivalent) for d in decoded], dtype=torch.float64
        )
        scores["neg_semantic_entropy"] = -torch.tensor(
            [uncertainty.semantic_entropy(d.samples, equivalent) for d in decoded], dtype=torch.float64)  # fmt: skip
    order = list(uncertainty.CONFIDENCE_SCORES)
    return {n: scores[n] for n in order if n in scores}, {n: undefined[n] for n in order if n in undefined}


def score_metrics(name: str, confidence, correct, ece_bins) -> dict:
    """`selective_generation_metrics` of one score (with its ECE if it is a probability)."""
    from .selective import selective_generation_metrics
    from .uncertainty import CONFIDENCE_SCORES

    confidence = torch.as_tensor(confidence, dtype=torch.float64)
    to_probability = CONFIDENCE_SCORES[name].probability
    probability = None if to_probability is None else to_probability(confidence).clamp(0.0, 1.0)
    return selective_generation_metrics(confidence, torch.as_tensor(correct, dtype=torch.float64), probability,
                                        ece_bins)  # fmt: skip


# ------------------------------------------------------------------------------------------------------- evaluation


@dataclass
class GenerativeEvaluation:
    """One run on one split: the examples, prompts read, decoded answers, scores and judgements, in example order."""

    examples: list
    prompts: list[str]
    decoded: list[DecodedAnswers]
    sampling: Sampling
    scores: dict[str, torch.Tensor]
    undefined: dict[str, str]
    correct: list[bool]
    judge_scores: dict[str, list[float]]
    answer_token_counts: list[int]

    def rows(self):
        """One dict per example for the per-example jsonl."""
        from .uncertainty import CONFIDENCE_SCORES

        for i, example in enumerate(self.examples):
            decoded = self.decoded[i]
            yield {
                "id": example.id, "prompt": self.prompts[i], "references": list(example.references),
                "sampled_answers": list(decoded.samples), "chosen": decoded.chosen, "chosen_end": decoded.chosen_end,
                "answer_tokens": self.answer_token_counts[i],
                "scores": {name: float(self.scores[name][i]) if name in self.scores else None
                           for name in CONFIDENCE_SCORES},
                "correct": self.correct[i],
                "judges": {name: values[i] for name, values in self.judge_scores.items()},
            }  # fmt: skip

    def metrics(self, ece_bins) -> dict:
        """Accuracy, each report judge's mean, and per defined score its selective-generation metrics."""
        return {
            "num_examples": len(self.examples),
            "accuracy": sum(self.correct) / len(self.correct),
            "judges": {name: sum(values) / len(values) for name, values in self.judge_scores.items()},
            "samples": self.sampling.num_samples,
            "sample_kind": self.sampling.kind,
            "scores": {
                name: score_metrics(name, values, self.correct, ece_bins) for name, values in self.scores.items()
            },
            "undefined_scores": dict(self.undefined),
        }


def evaluate_generative(model, tokenizer, examples: list, task, *, chat: bool, posterior=None,
                        sampling: Sampling = Sampling(None, 0), seed: int = 0, batch_size: int = 16,
                        decode=decode_answers) -> GenerativeEvaluation:  # fmt: skip
    """Decode, score and judge `examples` (`GenerativeExample`s of the `GenerativeTask` `task`); see the module doc.

    `decode` has `decode_answers`' signature and returns its records (the hook for a batched decoder).
    """
    from ..generation import render_prompts

    if not examples:
        raise ValueError(f"No examples of {task.name} to evaluate")
    if posterior is None and sampling.kind == "posterior":
        raise ValueError("Posterior samples need a posterior")
    questions = [example.question if chat else example.prompt for example in examples]
    texts = render_prompts(tokenizer, questions, chat=chat)
    decoded = decode(model, tokenizer, questions, chat=chat, posterior=posterior, sampling=sampling, seed=seed,
                     max_new_tokens=task.max_new_tokens, stop=task.stop, batch_size=batch_size)  # fmt: skip
    # As `generate` tokenizes: a chat-rendered prompt already holds its special tokens.
    prompt_ids = tokenizer(texts, add_special_tokens=not chat)["input_ids"]
    answer_ids = [list(d.chosen_ids) if d.chosen_ids is not None else
                  answer_tokens(tokenizer, d.chosen, d.chosen_end, d.chosen_stop) for d in decoded]  # fmt: skip
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    scored = teacher_forced(model, prompt_ids, answer_ids, posterior=posterior, sampling=sampling, seed=seed,
                            batch_size=batch_size, pad_id=pad_id if pad_id is not None else 0)  # fmt: skip
    scores, undefined = confidence_scores(scored, decoded, sampling, task.judge.equivalent)
    return GenerativeEvaluation(
        examples=list(examples), prompts=texts, decoded=decoded, sampling=sampling, scores=scores,
        undefined=undefined,
        correct=[task.judge.correct(d.chosen, e.references) for d, e in zip(decoded, examples)],
        judge_scores={judge.name: [judge.score(d.chosen, e.references) for d, e in zip(decoded, examples)]
                      for judge in task.report_judges},
        answer_token_counts=[len(ids) for ids in answer_ids],
    )  # fmt: skip
