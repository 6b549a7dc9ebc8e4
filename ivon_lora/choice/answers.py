"""Answer spelling: each answer must be one token after the prompt, resolved per tokenizer."""

from __future__ import annotations


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


def ending_key(prompt: str, answers) -> tuple[str, tuple[str, ...]]:
    # How answers tokenize after a prompt depends only on the prompt's end: results are cached per ending.
    return prompt[-32:], tuple(answers)
