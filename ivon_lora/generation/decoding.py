"""Decoding from the posterior, over prompt texts already rendered (`generation.render_prompts`), in three modes:

- `decode_mean`: greedy from the posterior mean (the adapter as it is without a posterior);
- `decode_samples`: one greedy answer per posterior sample, S answers per prompt, the S samples in one batch:
  `sample_lora.per_sample_lora` on the prompts repeated S times (sample-major), with one KV cache for the
  S x B rows (per-sample LoRA only changes the linear layers' outputs per block of rows, so each row's cache holds
  its own sample's keys and values);
- `decode_averaged`: posterior-averaged greedy decoding. At each step the next token is the argmax over the
  vocabulary of (1/S) sum_s softmax(logits_s), appended to all S copies of the prompt. At each answer position it
  also keeps, reduced on the fly (never an [S, T, V] tensor), what the confidence scores of
  `evaluation.uncertainty` read: each sample's log-prob of the chosen token, and the samples' mutual information
  and expected pairwise KL.

The three share one greedy loop with a KV cache (left padding; positions and attention mask as `model.generate`
prepares them), so with S = 1 the averaged answer is the sampled one. Greedy is the plain argmax of the logits:
the logits processors of a model's generation config (e.g. a repetition penalty) are not applied, which is
where `generate()` (through `model.generate`) can differ on such a model.

Common to the three: prompts are left-padded and batched by length as `generate()` does (`batch_size` prompts a
batch; modes 2 and 3 forward S x `batch_size` rows); sample k is the k-th draw of `posterior.sampler(model,
generator=torch.Generator().manual_seed(seed))`, as `generate()` and evaluation draw it, so answers do not
depend on the batch size (beyond float rounding) and a seed fixes them. An answer ends at the first of: a token of
`generation.batching.stop_ids` ("eos"), a decoded continuation that contains one of `stop_strings` ("stop"), or
`max_new_tokens` ("length"). Its `token_ids` include the token that ended it; its `text` is the continuation
decoded without special tokens, cut before the first stop string. The adapter's weights are bitwise the same
after a call as before it, also on error (modes 2 and 3 never write them; mode 1 restores them).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from ..sample_lora import per_sample_lora
from ..disagreement import expected_pairwise_kl, mutual_information
from .batching import PromptBatches, holding_mean, stop_ids
from .prompts import uses_chat_template

# Why an answer ended: its last token is an end-of-sequence id; its decoded text reached a stop string; or it
# reached max_new_tokens.
FINISH_REASONS = ("eos", "stop", "length")


@dataclass(frozen=True)
class Answer:
    """One decoded answer: `text` (cut before any stop string), `token_ids` (up to and including the token that
    ended it) and `finish_reason` (one of `FINISH_REASONS`)."""

    text: str
    token_ids: tuple[int, ...]
    finish_reason: str


@dataclass(frozen=True, eq=False)  # tensors have no single truth value: compare the fields
class AveragedAnswer(Answer):
    """A posterior-averaged answer with, at each of its T positions (the token chosen there included), what the S
    samples' next-token distributions say about it (float64, on the CPU):

    - `sample_log_probs` [T, S]: log p_s(token_t | prompt, tokens before t) under sample s, so
      `sample_log_probs.sum(0)` are the samples' sequence log-likelihoods (`uncertainty.bma_log_likelihood`);
    - `mutual_information` [T] and `expected_pairwise_kl` [T]: `uncertainty.mutual_information` /
      `expected_pairwise_kl` of the S full-vocabulary distributions at t (0 for S = 1).
    """

    sample_log_probs: torch.Tensor
    mutual_information: torch.Tensor
    expected_pairwise_kl: torch.Tensor


def decode_mean(
    model, tokenizer, texts: Sequence[str], *, posterior=None, max_new_tokens: int = 64,
    stop_strings: Sequence[str] = (), batch_size: int = 8, chat: bool | None = None,
) -> list[Answer]:  # fmt: skip
    """Each text's greedy answer from the posterior mean (`posterior.mean`, e.g. pruned; without a posterior, from
    the model's adapter as it is).

    `chat` says how `texts` were rendered, as `render_prompts(tokenizer, prompts, chat)` took it: chat-rendered
    texts hold their special tokens and are tokenized without adding any.
    """
    decoder = _Decoder(model, tokenizer, texts, max_new_tokens, stop_strings, batch_size, chat)
    with _evaluating(model), holding_mean(model, posterior):
        return [answers[0] for answers in decoder.decode(1, averaged=False)]


def decode_samples(
    model, tokenizer, texts: Sequence[str], posterior, num_samples: int, *, seed: int = 0,
    max_new_tokens: int = 64, stop_strings: Sequence[str] = (), batch_size: int = 8, chat: bool | None = None,
) -> list[tuple[Answer, ...]]:  # fmt: skip
    """Each text's S = `num_samples` greedy answers, answer k under posterior sample k, the S samples in one batch.

    Equals S `decode_mean` calls, each with sample k held in the adapter (`PosteriorSampler.sample()`), up to the
    float rounding of the batched LoRA product. Arguments as in `decode_mean`; `seed` fixes the samples.
    """
    decoder = _Decoder(model, tokenizer, texts, max_new_tokens, stop_strings, batch_size, chat)
    stack = _draw(model, posterior, num_samples, seed)
    with _evaluating(model), per_sample_lora(model, stack):
        return [tuple(answers) for answers in decoder.decode(num_samples, averaged=False)]


def decode_averaged(
    model, tokenizer, texts: Sequence[str], posterior, num_samples: int, *, seed: int = 0,
    max_new_tokens: int = 64, stop_strings: Sequence[str] = (), batch_size: int = 8, chat: bool | None = None,
) -> list[AveragedAnswer]:  # fmt: skip
    """Each text's posterior-averaged greedy answer: at each step the argmax of the mean over the S =
    `num_samples` posterior samples of their next-token distributions, with its per-position uncertainty (see
    `AveragedAnswer`). Arguments as in `decode_samples`.
    """
    decoder = _Decoder(model, tokenizer, texts, max_new_tokens, stop_strings, batch_size, chat)
    stack = _draw(model, posterior, num_samples, seed)
    with _evaluating(model), per_sample_lora(model, stack):
        return decoder.decode(num_samples, averaged=True)


@contextmanager
def _evaluating(model):
    """The model in eval mode, without gradients; its training mode comes back after."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def _draw(model, posterior, num_samples: int, seed: int):
    if posterior is None:
        raise ValueError("Decoding from posterior samples needs a posterior (posterior=None)")
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"Invalid num_samples value: {num_samples!r} (must be an int >= 1)")
    return posterior.sampler(model, generator=torch.Generator().manual_seed(seed)).draw(num_samples)


class _Decoder:
    """What the three modes share: the checked arguments, the tokenized prompts in length-sorted batches, left
    padding, the stop rule and the cutting of a row's tokens into an `Answer`."""

    def __init__(self, model, tokenizer, texts, max_new_tokens, stop_strings, batch_size, chat):
        if isinstance(texts, str) or not all(isinstance(t, str) and t for t in texts):
            raise TypeError("texts is a list of non-empty prompt strings (render chat prompts with render_prompts)")
        if isinstance(stop_strings, str) or not all(isinstance(s, str) and s for s in stop_strings):
            raise TypeError(f"Invalid stop_strings value: {stop_strings!r:.80} (must be a list of non-empty strings)")
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ValueError(f"Invalid max_new_tokens value: {max_new_tokens!r} (must be an int >= 1)")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"Invalid batch_size value: {batch_size!r} (must be an int >= 1)")
        self.model, self.tokenizer = model, tokenizer
        self.max_new_tokens, self.stop_strings = max_new_tokens, tuple(stop_strings)
        self.prompts = PromptBatches(tokenizer, texts, batch_size, uses_chat_template(tokenizer, chat))
        self.encoded, self.pad_id, self.batches = self.prompts.encoded, self.prompts.pad_id, self.prompts.batches
        self.stop_ids = stop_ids(model, tokenizer, {})
        self.device = next(model.parameters()).device

    def decode(self, copies: int, averaged: bool) -> list:
        """`decode_batch` over all batches, in the prompts' order."""
        out: list = [None] * len(self.encoded)
        for batch in self.batches:
            for i, result in zip(batch, self.decode_batch(batch, copies, averaged)):
                out[i] = result
        return out

    def padded(self, batch: list[int], copies: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded input ids and attention mask of a batch, repeated `copies` times sample-major."""
        return self.prompts.padded(batch, self.device, copies)

    def stopped_by_string(self, tokens: Sequence[int]) -> bool:
        return bool(self.stop_strings) and self._contains_stop(self.tokenizer.decode(tokens, skip_special_tokens=True))

    def _contains_stop(self, text: str) -> bool:
        return any(stop in text for stop in self.stop_strings)

    def answer(self, tokens: Sequence[int]) -> Answer:
        """The answer in a row's generated tokens: cut after the first token that ends it (padding follows)."""
        for end, token in enumerate(tokens, start=1):
            if token in self.stop_ids:
                return Answer(self.tokenizer.decode(tokens[: end - 1], skip_special_tokens=True),
                              tuple(tokens[:end]), "eos")  # fmt: skip
            if self.stop_strings:
                text = self.tokenizer.decode(tokens[:end], skip_special_tokens=True)
                if self._contains_stop(text):
                    cut = min(text.index(stop) for stop in self.stop_strings if stop in text)
                    return Answer(text[:cut], tuple(tokens[:end]), "stop")
        return Answer(self.tokenizer.decode(tokens, skip_special_tokens=True), tuple(tokens), "length")

    @torch.no_grad()
    def decode_batch(self, batch: list[int], copies: int, averaged: bool) -> list:
        """Greedy decoding of one batch of prompts repeated `copies` times (sample-major rows): each row its own
        argmax, or with `averaged` one token per prompt for all copies, the argmax of the copies' mean distribution.
        Returns per prompt the `copies` answers, or with `averaged` one `AveragedAnswer`."""
        size = len(batch)
        streams = 1 if averaged else copies  # token sequences per prompt
        input_ids, attention_mask = self.padded(batch, copies)
        # As `model.generate` prepares them: positions count the real tokens; an all-ones mask is dropped.
        position_ids = (attention_mask.cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)
        keep_mask = not bool(attention_mask.all())
        cache_key, cache = _cache_argument(self.model), None
        tokens = [[[] for _ in batch] for _ in range(streams)]
        finished = [[False] * size for _ in range(streams)]
        records: list[list[tuple]] = [[] for _ in batch]  # averaged: per position (sample log-probs, MI, EPKL)
        step_ids = input_ids
        for _ in range(self.max_new_tokens):
            output = self.model(input_ids=step_ids, position_ids=position_ids, use_cache=True, logits_to_keep=1,
                                attention_mask=attention_mask if keep_mask else None, **{cache_key: cache})  # fmt: skip
            cache = getattr(output, cache_key)
            logits = output.logits[:, -1].float()
            if averaged:
                chosen = self.averaged_step(logits, copies, finished[0], records)
            else:
                chosen = logits.argmax(-1).view(copies, size).tolist()
            for k in range(streams):
                for b in range(size):
                    if not finished[k][b]:
                        tokens[k][b].append(chosen[k][b])
                        finished[k][b] = chosen[k][b] in self.stop_ids or self.stopped_by_string(tokens[k][b])
            if all(all(row) for row in finished):
                break
            # Finished rows are fed padding, as `model.generate` does; their tokens are no longer kept.
            step = [[self.pad_id if finished[k][b] else chosen[k][b] for b in range(size)] for k in range(streams)]
            step_ids = torch.tensor(step, device=self.device).repeat(copies // streams, 1).view(-1, 1)
            position_ids = position_ids[:, -1:] + 1
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones(attention_mask.shape[0], 1)], dim=1)
        if not averaged:
            return [[self.answer(tokens[k][b]) for k in range(streams)] for b in range(size)]
        answers = []
        for b in range(size):
            answer = self.answer(tokens[0][b])
            kept = records[b][: len(answer.token_ids)]
            answers.append(AveragedAnswer(
                answer.text, answer.token_ids, answer.finish_reason,
                sample_log_probs=torch.stack([r[0] for r in kept]),
                mutual_information=torch.tensor([r[1] for r in kept], dtype=torch.float64),
                expected_pairwise_kl=torch.tensor([r[2] for r in kept], dtype=torch.float64),
            ))  # fmt: skip
        return answers

    def averaged_step(
        self, logits: torch.Tensor, copies: int, finished: list[bool], records: list[list]
    ) -> list[list[int]]:
        """The averaged step: the argmax of the mean of the copies' softmaxes, per prompt; appends to each active
        prompt's `records` its copies' log-probs of that token and their mutual information and pairwise KL."""
        log_probs = torch.log_softmax(logits, dim=-1).view(copies, len(finished), -1)
        chosen = log_probs.exp().mean(0).argmax(-1)  # [B]
        active = [b for b, done in enumerate(finished) if not done]
        index = torch.tensor(active, device=log_probs.device)
        per_sample = log_probs[:, index].transpose(0, 1)  # [active, S, V]
        chosen_log_probs = per_sample.gather(2, chosen[index].view(-1, 1, 1).expand(-1, copies, 1))[..., 0]
        if copies > 1:
            information, pairwise = mutual_information(per_sample).tolist(), expected_pairwise_kl(per_sample).tolist()
        else:  # one sample does not disagree with itself
            information = pairwise = [0.0] * len(active)
        chosen_log_probs = chosen_log_probs.double().cpu()
        for a, b in enumerate(active):
            records[b].append((chosen_log_probs[a], information[a], pairwise[a]))
        return [chosen.tolist()]


def _cache_argument(model) -> str:
    """The KV cache's keyword in the model's forward and output: `cache` (transformers >= 5.2x) or
    `past_key_values` (earlier 5.x)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"
