"""Prompt formats: how a task's prompt is presented to the model (a registry: plain, chat).

`format_examples` turns a task's examples into what the model reads under a format, with the answers spelled so
that each is one token after the prompt (`answers.resolve_answers`). A new format is one entry of
`PROMPT_FORMATS`: a function (tokenizer, prompts, chat_template_kwargs) -> rendered prompts.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable

from ..errors import RecipeError
from ..registry import Registry
from .answers import ending_key, resolve_answers
from .example import ChoiceExample
from .text import TEXT_SCORINGS, as_text_example

logger = logging.getLogger(__name__)


def render_chat_prompt(tokenizer, prompts: list[str], chat_template_kwargs: dict | None = None) -> list[str]:
    """Each prompt as the user message of the tokenizer's chat template, up to and including the assistant header.

    A template that renders the BOS token (Llama-2, Llama-3) would get a second one when the prompt is tokenized
    with the tokenizer's special tokens (as the collator does), so a rendered leading BOS is removed when the
    tokenizer adds it itself.
    """
    if not getattr(tokenizer, "chat_template", None):
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


def render_plain_prompt(tokenizer, prompts: list[str], chat_template_kwargs: dict | None = None) -> list[str]:
    """The prompts as the task wrote them."""
    if chat_template_kwargs:
        logger.warning("chat_template_kwargs is ignored with prompt_format: plain")
    return list(prompts)


# prompt_format -> renderer (tokenizer, prompts, chat_template_kwargs) -> the texts the model reads.
PROMPT_FORMATS: Registry[Callable[..., list[str]]] = Registry(
    "prompt format", {"plain": render_plain_prompt, "chat": render_chat_prompt}
)


def format_examples(examples, tokenizer, model_args) -> list[ChoiceExample]:
    """The examples as the model sees them under `model_args.prompt_format` ("plain" or "chat").

    Under `model_args.answer_scoring` text / text_norm each example is its text form (`text.as_text_example`: the
    question without listed choices, the answers as texts, any length) instead; see `_format_text_examples`.

    plain: prompts as the task wrote them. chat: each prompt rendered by `render_chat_prompt` with
    `model_args.chat_template_kwargs` (e.g. {"enable_thinking": False} for Qwen3). In both, each example's answers
    get the spelling `resolve_answers` finds, so the collator can always resolve them; an example whose prompt and
    answers need no change is returned as it is (plain prompts with letter or True/False answers: all of them).
    """
    examples = list(examples)
    if model_args.prompt_format not in PROMPT_FORMATS:
        raise ValueError(
            f"Invalid prompt_format value: {model_args.prompt_format!r} (must be one of {', '.join(PROMPT_FORMATS)})"
        )
    render = PROMPT_FORMATS[model_args.prompt_format]
    scoring = getattr(model_args, "answer_scoring", "letter")
    if scoring in TEXT_SCORINGS:
        return _format_text_examples(examples, tokenizer, model_args, render, scoring)
    prompts = render(tokenizer, [e.prompt for e in examples], model_args.chat_template_kwargs)
    spellings: dict[tuple[str, tuple[str, ...]], tuple[str, ...]] = {}
    formatted = []
    for example, prompt in zip(examples, prompts):
        key = ending_key(prompt, example.answers)
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


def _format_text_examples(examples, tokenizer, model_args, render, scoring: str) -> list[ChoiceExample]:
    """The examples' text forms with their prompts rendered by `render`. Answers keep their spelling, except that
    after a rendered prompt ending in whitespace (a chat template's assistant header) their leading whitespace
    goes: the model writes "Paris" there, not " Paris"."""
    texts = [as_text_example(example, scoring) for example in examples]
    prompts = render(tokenizer, [e.prompt for e in texts], model_args.chat_template_kwargs)
    formatted = []
    for example, prompt in zip(texts, prompts):
        answers = example.answers
        if prompt != example.prompt and prompt[-1:].isspace():
            answers = tuple(answer.lstrip() for answer in answers)
        formatted.append(dataclasses.replace(example, prompt=prompt, answers=answers))
    return formatted


def prompt_rendering(recipe) -> tuple[bool, str]:
    """Whether a choice run read its prompts through the chat template (`prompt_format: chat`), and why."""
    return recipe.model.prompt_format == "chat", f"prompt_format: {recipe.model.prompt_format}"
