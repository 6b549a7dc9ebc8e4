"""Prompt rendering, the one chat-template policy of generation and generative evaluation: a prompt (a string,
or a list of chat messages) is either read as written or rendered by the tokenizer's chat template with the
generation prompt; a chat-rendered text already holds its special tokens (BOS included) and is tokenized without
adding any (`add_special_tokens`), a plain one gets the tokenizer's."""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import UsageError

# A prompt is a string (the user's message, or the whole text without a chat template) or a list of chat messages
# ({"role": ..., "content": ...}) that the tokenizer's chat template renders.
Prompt = str | list[dict]


def check_prompt(prompt, where: str) -> None:
    """A prompt is a non-empty string or a non-empty list of messages with string "role" and "content"."""
    if isinstance(prompt, str):
        if not prompt:
            raise UsageError(f"{where}: the prompt is empty")
        return
    if not (
        isinstance(prompt, list)
        and prompt
        and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in prompt
        )
    ):
        raise UsageError(f"{where}: expected a non-empty string or a non-empty list of messages with string 'role' "
                         f"and 'content', got {prompt!r:.80}")  # fmt: skip


def uses_chat_template(tokenizer, chat: bool | None = None) -> bool:
    """Whether prompts go through the tokenizer's chat template: `chat` if given (True needs a template), else
    whether the tokenizer has one."""
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if chat and not has_template:
        raise UsageError(
            f"The tokenizer {getattr(tokenizer, 'name_or_path', '') or type(tokenizer).__name__!r} has no chat "
            "template: generate with plain prompts (chat=False, --no-chat)"
        )
    return has_template if chat is None else chat


def render_prompts(
    tokenizer, prompts: Sequence[Prompt], chat: bool | None = None, system: str | None = None
) -> list[str]:
    """The texts the model reads: each prompt through the tokenizer's chat template (a string prompt as the user
    message, `system` first, `add_generation_prompt=True`), or as written without one.

    `chat` as in `uses_chat_template`; without the template, message lists and `system` are an error: a plain
    prompt has no place for them.
    """
    chat = uses_chat_template(tokenizer, chat)
    for i, prompt in enumerate(prompts):
        check_prompt(prompt, f"Prompt {i + 1}")
        if not chat and not isinstance(prompt, str):
            raise UsageError(f"Prompt {i + 1} is a list of chat messages, and prompts are not rendered with a chat "
                             "template here (the tokenizer has none, or chat is off): pass it as text")  # fmt: skip
    if not chat:
        if system is not None:
            raise UsageError("A system message needs a chat template, and prompts are not rendered with one here "
                             "(the tokenizer has none, or chat is off)")  # fmt: skip
        return list(prompts)
    conversations = []
    for i, prompt in enumerate(prompts):
        conversation = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        if system is not None:
            if conversation[0]["role"] == "system":
                raise UsageError(f"Prompt {i + 1} has its own system message: drop it or the system option")
            conversation = [{"role": "system", "content": system}, *conversation]
        conversations.append(conversation)
    return tokenizer.apply_chat_template(conversations, add_generation_prompt=True, tokenize=False)


def add_special_tokens(chat: bool) -> bool:
    """Whether a rendered text is tokenized with the tokenizer's special tokens: a plain one yes, a chat-rendered one
    no (its template wrote them; adding them again would double the BOS)."""
    return not chat
