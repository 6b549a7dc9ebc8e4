"""A generative evaluation's answers to its questions: the chosen one (greedy at the posterior mean, or
posterior-averaged) with the exact tokens that ended it, and the S sampled ones, from posterior samples (batched),
MC-dropout masks or temperature sampling at the weights (`Sampling`: what a run's samples are drawn from).
Scored and judged by `ivon_lora.evaluation.generative`."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from ..mc_dropout import dropout_active, sample_seed

# What the S sampled answers (and the scoring pass's S distributions) are drawn from.
from ..vocabulary import GENERATIVE_SAMPLE_KINDS as SAMPLE_KINDS
from .decoding import FINISH_REASONS

logger = logging.getLogger(__name__)

# How a decoded answer ended: the decoder's vocabulary (at an end-of-sequence token, at a stop string, or out of
# tokens: nothing scored after).
ANSWER_ENDS = FINISH_REASONS


@dataclass(frozen=True)
class Sampling:
    """Where a run's S sampled answers come from: `kind` one of `SAMPLE_KINDS` (None: no samples)."""

    kind: str | None
    num_samples: int
    temperature: float = 1.0  # of "temperature" sampling

    def __post_init__(self):
        if self.kind not in (None, *SAMPLE_KINDS):
            raise ValueError(f"Invalid sampling kind {self.kind!r}; choose from {', '.join(SAMPLE_KINDS)}")
        if self.num_samples < 0 or (self.kind is None) != (self.num_samples == 0):
            raise ValueError(f"Invalid sampling: kind {self.kind!r} with {self.num_samples} samples")
        if not self.temperature > 0:
            raise ValueError(f"Invalid temperature value: {self.temperature!r} (must be > 0)")

    @property
    def epistemic(self) -> int:
        """The samples that are models (posterior or dropout), whose distributions the scoring pass reads; 0 for
        temperature samples, which are answers of one model."""
        return self.num_samples if self.kind in ("posterior", "mc_dropout") else 0

    def describe(self) -> str:
        if self.kind is None:
            return "no samples"
        what = {"posterior": "posterior samples", "mc_dropout": "MC-dropout samples",
                "temperature": f"temperature-{self.temperature:g} samples at the weights"}[self.kind]  # fmt: skip
        return f"{self.num_samples} {what}"


def sampling_for(has_posterior: bool, num_samples: int, mc_dropout_samples: int, temperature: float) -> Sampling:
    """A run's samples: posterior samples, else MC dropout when asked, else temperature sampling at the weights."""
    if has_posterior:
        return Sampling("posterior" if num_samples else None, num_samples)
    if mc_dropout_samples:
        return Sampling("mc_dropout", mc_dropout_samples)
    return Sampling("temperature" if num_samples else None, num_samples, temperature)


# ---------------------------------------------------------------------------------------------------------- decoding


@dataclass(frozen=True)
class DecodedAnswers:
    """One question's answers: the chosen one (greedy at the mean), how it ended (and at which stop string), and
    the S sampled ones."""

    chosen: str
    chosen_end: str  # one of ANSWER_ENDS
    samples: tuple[str, ...] = ()
    chosen_stop: str | None = None  # the stop string that ended the chosen answer, where chosen_ids is None
    # The tokens the decoder generated for the chosen answer, up to and including the one that ended it (scored as
    # they are); None: the text is re-tokenized with what ended it (`answer_tokens`: chosen_stop, or EOS).
    chosen_ids: tuple[int, ...] | None = None


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, str | None]:
    """`text` up to the earliest stop string in it, and that stop string (None: none found)."""
    found = [(text.find(s), s) for s in stop if s and s in text]
    if not found:
        return text, None
    index, stop_string = min(found)
    return text[:index], stop_string


def baseline_samples(model, tokenizer, questions: Sequence[str], *, chat: bool, sampling: Sampling, seed: int,
                     max_new_tokens: int, stop: Sequence[str], batch_size: int) -> list[tuple[str, ...]]:  # fmt: skip
    """Each question's S sampled answers for a run without posterior: MC-dropout masks or temperature sampling at
    the weights, one `generate` call per sample (its seed `mc_dropout.sample_seed(seed, k)`), cut at the first
    stop string.

    `questions` are what `generate` renders: the plain prompts (`chat` False) or the user messages (`chat` True).
    """
    from .hf import generate

    common = {"chat": chat, "max_new_tokens": max_new_tokens, "batch_size": batch_size}
    samples: list[list[str]] = [[] for _ in questions]
    for k in range(sampling.num_samples):
        if sampling.kind == "mc_dropout":
            with dropout_active(model):
                sampled = generate(model, tokenizer, questions, seed=sample_seed(seed, k), **common)
        else:  # pure temperature sampling: no top-k / top-p truncation from the model's generation config
            sampled = generate(model, tokenizer, questions, seed=sample_seed(seed, k), do_sample=True,
                               temperature=sampling.temperature, top_k=0, top_p=1.0, **common)  # fmt: skip
        for answers, generation in zip(samples, sampled):
            answers.append(cut_at_stop(generation.mean, stop)[0])
        logger.info("%s sample %d/%d decoded", sampling.kind, k + 1, sampling.num_samples)
    return [tuple(answers) for answers in samples]


def decode_answers(model, tokenizer, questions: Sequence[str], *, chat: bool, posterior, sampling: Sampling,
                   seed: int, max_new_tokens: int, stop: Sequence[str], batch_size: int,
                   chosen: str = "mean") -> list[DecodedAnswers]:  # fmt: skip
    """Each question's chosen answer, with the exact tokens that `generation.decoding` generated and how it ended
    (greedy at the mean, or with `chosen="averaged"` posterior-averaged), and its S sampled answers: the posterior
    samples' decoded in one batched forward per step, a run without posterior's by `baseline_samples`.

    The default decoder of `evaluate_generative`; another decoder with this signature may return records without
    `chosen_ids`, whose answers are then re-tokenized for scoring.
    """
    from .decoding import decode_averaged, decode_mean, decode_samples
    from .prompts import render_prompts

    texts = render_prompts(tokenizer, questions, chat=chat)
    common = {"max_new_tokens": max_new_tokens, "stop_strings": tuple(stop), "batch_size": batch_size, "chat": chat}
    if chosen == "averaged":
        if sampling.kind != "posterior":
            raise ValueError("Posterior-averaged decoding needs posterior samples")
        answers = decode_averaged(model, tokenizer, texts, posterior, sampling.num_samples, seed=seed, **common)
    else:
        answers = decode_mean(model, tokenizer, texts, posterior=posterior, **common)
    if sampling.kind == "posterior":
        samples = [tuple(a.text for a in per_sample)
                   for per_sample in decode_samples(model, tokenizer, texts, posterior, sampling.num_samples,
                                                    seed=seed, **common)]  # fmt: skip
    else:
        samples = baseline_samples(model, tokenizer, questions, chat=chat, sampling=sampling, seed=seed,
                                   max_new_tokens=max_new_tokens, stop=stop, batch_size=batch_size)  # fmt: skip
    return [DecodedAnswers(answer.text, answer.finish_reason, sampled,
                           chosen_ids=tuple(answer.token_ids)) for answer, sampled in zip(answers, samples)]  # fmt: skip
