"""The multiple-choice objective: answer-token resolution, the left-padding collator and K-way logits.

A question is scored by the logits of its K answer tokens at the last prompt position (ivon-notes §3): one
forward pass per question, the LM head evaluated at that single position (`logits_to_keep=1`), never over the
whole sequence. Training minimises the cross-entropy of the K-way softmax.

`format_examples` turns a task's examples into what the model reads: the plain prompt, or the prompt wrapped in
the tokenizer's chat template (`prompt_format: chat`), with the answers spelled so each is one token after it.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChoiceExample:
    """One question: the prompt, the K answer strings that may follow it, and the gold index (-1: unknown)."""

    id: str
    prompt: str
    answers: tuple[str, ...]
    gold: int


def answer_token_ids(tokenizer, prompt: str, answers) -> list[int]:
    """The token id of each answer as it follows `prompt`.

    Resolved by tokenizing prompt and prompt + answer: the answer must add exactly one token and leave the
    prompt's tokens unchanged. This is what makes " A" (byte-level BPE, Llama-3/Qwen) and "▁A" (sentencepiece,
    Llama-2) come out right, with or without a BOS token.
    """
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    token_ids = []
    for answer in answers:
        full_ids = tokenizer(prompt + answer, add_special_tokens=False)["input_ids"]
        if len(full_ids) != len(prompt_ids) + 1 or full_ids[: len(prompt_ids)] != prompt_ids:
            added = tokenizer.convert_ids_to_tokens(full_ids[len(prompt_ids) - 1 :])
            raise ValueError(
                f"Answer {answer!r} is not a single token after the prompt ...{prompt[-30:]!r} for tokenizer "
                f"{type(tokenizer).__name__} (the tokens at the boundary are {added}). Choose answer labels that "
                "tokenize to one token after the prompt, e.g. ' A'/' B' or ' True'/' False'."
            )
        token_ids.append(full_ids[-1])
    if len(set(token_ids)) != len(token_ids):
        raise ValueError(f"Answers {list(answers)} map to repeated tokens {token_ids}; they must be distinct.")
    return token_ids


def resolve_answers(tokenizer, prompt: str, answers) -> tuple[str, ...]:
    """The spelling of `answers` that `answer_token_ids` resolves after `prompt`: one token each, all distinct.

    Two spellings are tried, in this order, and the first that resolves is returned:

    1. as written, except that leading whitespace is dropped when the prompt already ends in whitespace (a chat
       prompt ends with the assistant header, e.g. "...assistant\n": the model writes "A" there, not " A");
    2. the other spacing: with the leading space removed if (1) has one, else with a space prepended.

    Letters and True/False after "Answer:" keep their space on every family tested (Llama-2, Llama-3, Qwen2.5,
    Qwen3). Digits do not: Llama-3 and Qwen split " 1" into " " + "1", sentencepiece Llama-2 into "▁" + "1", so
    " 1" falls back to "1", the token Llama-2 IVON-LoRA scores. Neither resolving is the error of (1).
    """
    answers = tuple(answers)
    stripped = tuple(a.lstrip() for a in answers)
    spaced = tuple(" " + a for a in stripped)
    preferred = stripped if prompt[-1:].isspace() else answers
    other = stripped if preferred != stripped else spaced
    try:
        answer_token_ids(tokenizer, prompt, preferred)
        return preferred
    except ValueError as error:
        try:
            answer_token_ids(tokenizer, prompt, other)
        except ValueError:
            raise ValueError(f"{error} (Also tried {list(other)}.)") from None
        return other


def _ending_key(prompt: str, answers) -> tuple[str, tuple[str, ...]]:
    # How answers tokenize after a prompt depends only on the prompt's end: results are cached per ending.
    return prompt[-32:], tuple(answers)


def render_chat_prompt(tokenizer, prompts: list[str], chat_template_kwargs: dict | None = None) -> list[str]:
    """Each prompt as the user message of the tokenizer's chat template, up to and including the assistant header.

    A template that renders the BOS token (Llama-2, Llama-3) would get a second one when the prompt is tokenized
    with the tokenizer's special tokens (as the collator does), so a rendered leading BOS is removed when the
    tokenizer adds it itself.
    """
    if not getattr(tokenizer, "chat_template", None):
        from .recipe import RecipeError

        raise RecipeError(
            f"Recipe key 'prompt_format': chat needs a tokenizer with a chat template, and "
            f"{getattr(tokenizer, 'name_or_path', '') or type(tokenizer).__name__!r} has none (a base model?). "
            "Use prompt_format: plain, or an instruct/chat model."
        )
    rendered = tokenizer.apply_chat_template(
        [[{"role": "user", "content": prompt}] for prompt in prompts],
        add_generation_prompt=True,
        tokenize=False,
        **(chat_template_kwargs or {}),
    )
    bos = tokenizer.bos_token
    adds_bos = bos is not None and tokenizer("x")["input_ids"][:1] == [tokenizer.bos_token_id]
    if adds_bos:
        rendered = [text.removeprefix(bos) for text in rendered]
    return rendered


def format_examples(examples, tokenizer, model_args) -> list[ChoiceExample]:
    """The examples as the model sees them under `model_args.prompt_format` ("plain" or "chat").

    plain: prompts as the task wrote them. chat: each prompt rendered by `render_chat_prompt` with
    `model_args.chat_template_kwargs` (e.g. {"enable_thinking": False} for Qwen3). In both, each example's answers
    get the spelling `resolve_answers` finds, so the collator can always resolve them; an example whose prompt and
    answers need no change is returned as it is (plain prompts with letter or True/False answers: all of them).
    """
    examples = list(examples)
    if model_args.prompt_format == "chat":
        prompts = render_chat_prompt(tokenizer, [e.prompt for e in examples], model_args.chat_template_kwargs)
    elif model_args.prompt_format == "plain":
        prompts = [e.prompt for e in examples]
        if model_args.chat_template_kwargs:
            logger.warning("chat_template_kwargs is ignored with prompt_format: plain")
    else:
        raise ValueError(f"prompt_format must be plain or chat, got {model_args.prompt_format!r}")
    spellings: dict[tuple[str, tuple[str, ...]], tuple[str, ...]] = {}
    formatted = []
    for example, prompt in zip(examples, prompts):
        key = _ending_key(prompt, example.answers)
        if key not in spellings:
            spellings[key] = resolve_answers(tokenizer, prompt, example.answers)
            if spellings[key] != tuple(example.answers):
                logger.info(
                    "answers %s are scored as %s after ...%r", list(example.answers), list(spellings[key]), prompt[-20:]
                )
        answers = spellings[key]
        if prompt == example.prompt and answers == tuple(example.answers):
            formatted.append(example)
        else:
            formatted.append(dataclasses.replace(example, prompt=prompt, answers=answers))
    return formatted


class ChoiceCollator:
    """Tokenizes a batch of `ChoiceExample` dicts with left padding so that position -1 is every prompt's end.

    The batch holds `input_ids`, `attention_mask`, `choice_token_ids` and `choice_mask` (B x K_max, since tasks
    with different K may be mixed) and `labels` (the gold indices). Prompts longer than `max_length` lose their
    beginning, never their end.
    """

    def __init__(self, tokenizer, max_length: int | None = None):
        self.tokenizer = tokenizer
        self.max_length = max_length
        self._answer_ids: dict[tuple[str, tuple[str, ...]], list[int]] = {}

    def _choice_ids(self, prompt: str, answers: tuple[str, ...]) -> list[int]:
        key = _ending_key(prompt, answers)
        if key not in self._answer_ids:
            self._answer_ids[key] = answer_token_ids(self.tokenizer, prompt, answers)
        return self._answer_ids[key]

    def __call__(self, examples) -> dict[str, torch.Tensor]:
        tokenizer = self.tokenizer
        side = tokenizer.truncation_side
        tokenizer.truncation_side = "left"
        try:
            batch = tokenizer(
                [e["prompt"] for e in examples],
                padding=True,
                padding_side="left",
                truncation=self.max_length is not None,
                max_length=self.max_length,
                return_tensors="pt",
            )
        finally:
            tokenizer.truncation_side = side
        choice_ids = [self._choice_ids(e["prompt"], tuple(e["answers"])) for e in examples]
        num_choices = max(len(ids) for ids in choice_ids)
        batch["choice_token_ids"] = torch.tensor([ids + [0] * (num_choices - len(ids)) for ids in choice_ids])
        batch["choice_mask"] = torch.tensor([[k < len(ids) for k in range(num_choices)] for ids in choice_ids])
        batch["labels"] = torch.tensor([e["gold"] for e in examples])
        return dict(batch)


def choice_logits(model, batch) -> torch.Tensor:
    """B x K_max float32 logits of the answer tokens at the last position; absent choices are -inf."""
    outputs = model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], logits_to_keep=1, use_cache=False
    )
    last = outputs.logits[:, -1, :]
    logits = last.gather(1, batch["choice_token_ids"]).float()
    return logits.masked_fill(~batch["choice_mask"], float("-inf"))


class ChoiceLossMixin:
    """Trainer mixin: the loss is the K-way cross-entropy of `choice_logits`, averaged over the micro-batch."""

    # The loss is a per-micro-batch mean: let the Trainer divide by the accumulation steps as usual.
    loss_is_scaled_for_ga = False

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        logits = choice_logits(model, inputs)
        loss = F.cross_entropy(logits, inputs["labels"])
        return (loss, {"logits": logits}) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            logits = choice_logits(model, inputs)
            loss = F.cross_entropy(logits, inputs["labels"])
        return loss.detach(), (None if prediction_loss_only else logits), inputs["labels"]
