"""Posterior-aware generation: a model's answers to prompts from the posterior mean and from posterior samples.

`generate` decodes every prompt once with the adapter at the posterior mean (the plain PEFT model) and, with
`num_samples` = S > 0, once more per posterior sample: the S adapters are drawn one after another with
`Posterior.sampler` from a CPU generator seeded by `seed`, so sample k is the same adapter whatever the prompts,
the batch size or the device. Decoding is greedy unless `generate_kwargs` ask otherwise (they go to
`model.generate`); with greedy decoding an answer does not depend on the batch it was decoded in (beyond float
rounding: prompts are left-padded, and padding is masked).

Objective-agnostic: it reads a model, a tokenizer and a `Posterior`, whatever trained them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from .errors import UsageError

logger = logging.getLogger(__name__)

# A prompt is a string (the user's message, or the whole text without a chat template) or a list of chat messages
# ({"role": ..., "content": ...}) that the tokenizer's chat template renders.
Prompt = str | list[dict]


@dataclass(frozen=True)
class Generation:
    """One prompt's answers: `mean` from the posterior mean, `samples[k]` from posterior sample k."""

    prompt: Prompt
    mean: str
    samples: tuple[str, ...] = ()


def check_prompt(prompt, where: str) -> None:
    """A prompt is a non-empty string or a non-empty list of messages with string "role" and "content"."""
    if isinstance(prompt, str):
        if not prompt:
            raise UsageError(f"{where}: the prompt is empty")
        return
    if not (isinstance(prompt, list) and prompt and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in prompt
    )):
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


@contextmanager
def _holding_mean(model, posterior):
    """The posterior's mean in the model's adapter (e.g. a pruned mean); the previous weights return after
    (`Posterior.holding_mean`, the one implementation of that contract)."""
    if posterior is None:
        yield
        return
    with posterior.holding_mean(model):
        yield


def _stop_ids(model, tokenizer, generate_kwargs: dict) -> list[int]:
    """The tokens that end an answer: `eos_token_id` if passed, else the model's generation config's EOS ids and the
    tokenizer's EOS (for a chat tokenizer its end-of-turn token, which a base model's generation config may lack)."""
    if "eos_token_id" in generate_kwargs:
        eos, tokenizer_eos = generate_kwargs["eos_token_id"], None
    else:
        eos = (generate_kwargs.get("generation_config") or model.generation_config).eos_token_id
        tokenizer_eos = tokenizer.eos_token_id
    ids = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    return sorted({int(i) for i in [*ids, tokenizer_eos] if i is not None})


def generate(
    model,
    tokenizer,
    prompts: Sequence[Prompt],
    *,
    posterior=None,
    num_samples: int = 0,
    seed: int = 0,
    max_new_tokens: int = 64,
    chat: bool | None = None,
    system: str | None = None,
    batch_size: int = 8,
    **generate_kwargs,
) -> list[Generation]:
    """Each prompt's answer at the posterior mean and, for `num_samples` > 0, under each of S posterior samples.

    Args:
        model: a causal LM with the adapter (a `peft.PeftModel`, e.g. `load_run(...).model`).
        tokenizer: its tokenizer; prompts are left-padded with its pad token (EOS if it has none).
        prompts: strings or chat message lists (see `render_prompts` for `chat` and `system`).
        posterior: the `Posterior` to sample from; its mean (e.g. pruned) is the "mean" answer's adapter. Without
            one, the mean answer is the model's adapter as it is, and `num_samples` must be 0.
        num_samples: S, the posterior samples; sample k's adapter is the k-th draw of `posterior.sampler(model,
            generator=torch.Generator().manual_seed(seed))`.
        seed: seeds the posterior samples and, with `do_sample=True`, the decoding (the global RNG is restored).
        max_new_tokens, generate_kwargs: passed to `model.generate` (greedy unless `do_sample=True` is passed).

    The adapter's weights are bitwise the same after the call as before it, also on error. A chat-rendered prompt
    is tokenized without adding special tokens: the template already holds them (as `apply_chat_template` does).
    """
    if isinstance(prompts, str) or _is_messages(prompts):
        raise TypeError("prompts is a list of prompts: wrap a single prompt in a list")
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 0:
        raise ValueError(f"Invalid num_samples value: {num_samples!r} (must be an int >= 0)")
    if num_samples and posterior is None:
        raise ValueError(f"num_samples={num_samples} needs a posterior to sample from (posterior=None)")
    if batch_size < 1:
        raise ValueError(f"Invalid batch_size value: {batch_size} (must be >= 1)")
    prompts = list(prompts)
    if not prompts:
        return []
    chat = uses_chat_template(tokenizer, chat)
    texts = render_prompts(tokenizer, prompts, chat=chat, system=system)
    encoded = tokenizer(texts, add_special_tokens=not chat)["input_ids"]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    # Similar lengths share a batch (less padding); a stable sort, so equal lengths keep their order.
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    stop_ids = _stop_ids(model, tokenizer, generate_kwargs)
    options = {"max_new_tokens": max_new_tokens, "do_sample": False, "pad_token_id": pad_id,
               "eos_token_id": stop_ids or None, **generate_kwargs}  # fmt: skip
    device = next(model.parameters()).device

    def answers(pass_index: int) -> list[str]:
        # A sampled decoding draws from the global RNG: seeded per pass, so an answer does not depend on the passes
        # before it (only, with do_sample=True, on the batch it shares).
        torch.manual_seed(seed * 1_000_003 + pass_index)
        out = [""] * len(encoded)
        for batch in batches:
            width = max(len(encoded[i]) for i in batch)
            input_ids = torch.tensor([[pad_id] * (width - len(encoded[i])) + encoded[i] for i in batch])
            attention_mask = torch.tensor([[0] * (width - len(encoded[i])) + [1] * len(encoded[i]) for i in batch])
            generated = model.generate(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                                       **options)[:, width:].tolist()  # fmt: skip
            for i, tokens in zip(batch, generated):
                end = next((j for j, token in enumerate(tokens) if token in stop_ids), len(tokens))
                out[i] = tokenizer.decode(tokens[:end], skip_special_tokens=True)
        return out

    was_training = model.training
    model.eval()
    # manual_seed seeds every CUDA device: fork them all, so the caller's RNG states come back.
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    try:
        with torch.random.fork_rng(devices=devices), torch.no_grad(), _holding_mean(model, posterior):
            mean = answers(0)
            samples = []
            if num_samples:
                sampler = posterior.sampler(model, generator=torch.Generator().manual_seed(seed))
                for k in range(num_samples):
                    with sampler.sample():
                        samples.append(answers(k + 1))
                    logger.info("posterior sample %d/%d decoded", k + 1, num_samples)
    finally:
        model.train(was_training)
    return [Generation(prompt, mean[i], tuple(sample[i] for sample in samples)) for i, prompt in enumerate(prompts)]


def _is_messages(prompts) -> bool:
    """A single message list passed where a list of prompts belongs."""
    return isinstance(prompts, list) and bool(prompts) and isinstance(prompts[0], dict)
