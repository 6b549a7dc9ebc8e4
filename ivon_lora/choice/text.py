"""Answer texts scored by likelihood: lm-evaluation-harness's `acc` (and `acc_norm`) as a K-way objective.

Under `answer_scoring: text` a question's K answers are texts (" Paris", " a kind of fruit") and each is scored by
its summed token log-probability after the prompt, log p(text | prompt); the K scores go through a softmax, as
the letter scoring's K logits do, so training minimises the K-way cross-entropy over them and evaluation reports
the same predictive. `text_norm` divides each score by the answer's length in characters, leading whitespace
excluded, before the softmax: lm-eval's `acc_norm` (`np.argmax(lls / completion_len)`, `completion_len` the
choice strings without lm-eval's " " target delimiter). Its argmax is lm-eval's prediction; the softmax over
length-normalised scores is this toolkit's choice (lm-eval reports no probabilities).

Tokenization at the prompt/answer boundary is lm-eval's `_encode_pair`: whitespace ending the prompt moves to the
start of the answer, prompt + answer is tokenized whole, and the answer's tokens are those past the prompt's own
tokenization (prompts are tokenized with the tokenizer's special tokens, as the letter collator does). One row
per (question, answer), left-padded, so every answer ends at the last position: one forward pass per batch, the
LM head evaluated at the answers' positions only (`logits_to_keep`).
"""

from __future__ import annotations

import dataclasses

import torch

from ..vocabulary import ANSWER_SCORINGS
from .truncation import shorten

TEXT_SCORINGS = frozenset({"text", "text_norm"})


def check_scoring(scoring: str) -> str:
    if scoring not in ANSWER_SCORINGS:
        raise ValueError(f"Invalid answer_scoring value: {scoring!r} (must be one of {', '.join(ANSWER_SCORINGS)})")
    return scoring


def as_text_example(example, scoring: str):
    """`example` (a ChoiceExample) in its text form: prompt `text_prompt` and answers `texts` when it has them
    (else its own prompt and answers, which are texts already), scored by `scoring`."""
    check_scoring(scoring)
    if scoring not in TEXT_SCORINGS:
        return example
    prompt = example.text_prompt or example.prompt
    answers = example.texts or example.answers
    return dataclasses.replace(example, prompt=prompt, answers=tuple(answers), scoring=scoring)


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """The token ids of `context` and of `continuation` after it, split as lm-eval's `_encode_pair` splits them:
    trailing whitespace of the context moves to the continuation, context + continuation is tokenized whole and
    the continuation is what lies past the context's own tokens."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tokenizer(context + continuation)["input_ids"]
    context_ids = tokenizer(context)["input_ids"]
    return whole[: len(context_ids)], whole[len(context_ids) :]


def length_normaliser(answer: str, scoring: str) -> float:
    """What `scoring` divides an answer's log-likelihood by: 1, or (text_norm) its characters without leading
    whitespace."""
    if scoring != "text_norm":
        return 1.0
    length = len(answer.lstrip())
    if length == 0:
        raise ValueError(f"Answer {answer!r} is empty: text_norm cannot divide its log-likelihood by its length")
    return float(length)


def text_batch(tokenizer, examples, max_length: int | None = None) -> dict[str, torch.Tensor]:
    """The text-scoring batch of `examples` (dicts with prompt, answers, gold, scoring): B*K_max left-padded rows
    prompt + answer (a question with fewer answers repeats its last row, masked out by `choice_mask`),
    `continuation_mask` (B*K_max x L_max: the answer's tokens, right-aligned), `choice_mask` and `labels` as the
    letter batch, and `length_normalisers` (B x K_max). A prompt longer than `max_length` minus its answer loses
    its middle (`truncation.shorten`)."""
    scorings = {e.get("scoring", "letter") for e in examples}
    if len(scorings) != 1 or not scorings <= TEXT_SCORINGS:
        raise ValueError(f"A text-scoring batch needs one text scoring, got {sorted(scorings)}")
    scoring = scorings.pop()
    num_choices = max(len(e["answers"]) for e in examples)
    rows, answer_lengths, normalisers = [], [], []
    for e in examples:
        pairs = []
        for answer in e["answers"]:
            context_ids, answer_ids = encode_pair(tokenizer, e["prompt"], answer)
            if not answer_ids:
                raise ValueError(f"Answer {answer!r} adds no token after the prompt ...{e['prompt'][-30:]!r}")
            if not context_ids:
                raise ValueError(f"Prompt {e['prompt']!r} has no token for the answer {answer!r} to follow "
                                 "(an empty prompt, and the tokenizer adds no BOS token)")  # fmt: skip
            budget = None if max_length is None else max(max_length - len(answer_ids), 1)
            pairs.append(shorten(context_ids, budget) + answer_ids)
            answer_lengths.append(len(answer_ids))
        pairs += [pairs[-1]] * (num_choices - len(pairs))
        answer_lengths += [answer_lengths[-1]] * (num_choices - len(e["answers"]))
        rows += pairs
        norms = [length_normaliser(answer, scoring) for answer in e["answers"]]
        normalisers.append(norms + [1.0] * (num_choices - len(norms)))
    width = max(len(row) for row in rows)
    span = max(answer_lengths)
    pad = tokenizer.pad_token_id
    # labels first: the Trainer's find_batch_size reads the first tensor, and the batch has B questions, not B*K rows.
    return {
        "labels": torch.tensor([e["gold"] for e in examples]),
        "input_ids": torch.tensor([[pad] * (width - len(row)) + row for row in rows]),
        "attention_mask": torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in rows]),
        "continuation_mask": torch.tensor([[k >= span - n for k in range(span)] for n in answer_lengths]),
        "choice_mask": torch.tensor([[k < len(e["answers"]) for k in range(num_choices)] for e in examples]),
        "length_normalisers": torch.tensor(normalisers, dtype=torch.float32),
    }


def text_choice_logits(model, batch) -> torch.Tensor:
    """B x K_max float32 scores of a `text_batch`: each answer's summed token log-prob after its prompt, divided by
    its `length_normalisers`; absent choices are -inf. The K-way softmax of these is the predictive."""
    span = batch["continuation_mask"].shape[1]
    outputs = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                    logits_to_keep=span + 1, use_cache=False)  # fmt: skip
    # Left padding puts every answer at the end: positions -(span+1) .. -2 predict the last `span` tokens.
    log_probs = torch.log_softmax(outputs.logits[:, -span - 1 : -1, :].float(), dim=-1)
    targets = batch["input_ids"][:, -span:]
    token_log_probs = log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    scores = torch.where(batch["continuation_mask"], token_log_probs, 0.0).sum(-1)
    choice_mask = batch["choice_mask"]
    scores = scores.view(-1, choice_mask.shape[1]) / batch["length_normalisers"]
    return scores.masked_fill(~choice_mask, float("-inf"))
