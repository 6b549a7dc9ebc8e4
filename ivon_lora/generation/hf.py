"""Posterior-aware generation (`generate`): a model's answers to prompts from the posterior mean and from samples.

`generate` decodes every prompt once with the adapter at the posterior mean (the plain PEFT model) and, with
`num_samples` = S > 0, once more per posterior sample: the S adapters are drawn one after another with
`Posterior.sampler` from a CPU generator seeded by `seed`, so sample k is the same adapter whatever the prompts,
the batch size or the device. Decoding is greedy unless `generate_kwargs` ask otherwise. Greedy answers (no
generate kwargs, and a generation config whose greedy search is the plain argmax) come from the batched decoder
(`decoding`: a KV cache, the S samples in one batch); anything else goes to `model.generate`, one pass over the
prompts for the mean and one per sample. Either way an answer does not depend on the batch it was decoded in
(beyond float rounding: prompts are left-padded, and padding is masked).

Objective-agnostic: it reads a model, a tokenizer and a `Posterior`, whatever trained them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..mc_dropout import sample_seed
from .batching import PromptBatches, holding_mean, stop_ids
from .prompts import Prompt, render_prompts, uses_chat_template

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Generation:
    """One prompt's answers: `mean` from the posterior mean, `samples[k]` from posterior sample k."""

    prompt: Prompt
    mean: str
    samples: tuple[str, ...] = ()


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
        raise ValueError(f"Invalid batch_size value: {batch_size!r} (must be >= 1)")
    prompts = list(prompts)
    if not prompts:
        return []
    chat = uses_chat_template(tokenizer, chat)
    texts = render_prompts(tokenizer, prompts, chat=chat, system=system)
    if not generate_kwargs and _plain_greedy(model.generation_config):
        try:
            answers = _decoded(model, tokenizer, texts, posterior, num_samples, seed, max_new_tokens, batch_size, chat)
        except NotImplementedError as error:  # a LoRA variant per_sample_lora does not batch: one pass per sample
            logger.info("sequential posterior samples: %s", error)
        else:
            return [Generation(prompt, mean, samples) for prompt, (mean, samples) in zip(prompts, answers)]
    mean, samples = _generated(model, tokenizer, texts, posterior, num_samples, seed, max_new_tokens, batch_size,
                               chat, generate_kwargs)  # fmt: skip
    return [Generation(prompt, mean[i], tuple(sample[i] for sample in samples)) for i, prompt in enumerate(prompts)]


# The generation-config fields under which `model.generate`'s greedy search is not the plain argmax of the logits
# that `decoding` takes (their processors, beams or sampling), with the value that leaves them off.
_PLAIN_GREEDY = {"do_sample": False, "num_beams": 1, "repetition_penalty": 1.0, "no_repeat_ngram_size": 0,
                 "bad_words_ids": None, "min_length": 0, "min_new_tokens": None, "suppress_tokens": None,
                 "begin_suppress_tokens": None, "forced_bos_token_id": None, "forced_eos_token_id": None,
                 "sequence_bias": None, "encoder_repetition_penalty": 1.0, "penalty_alpha": None,
                 "renormalize_logits": False, "guidance_scale": None}  # fmt: skip


def _plain_greedy(config) -> bool:
    # transformers 5 leaves unset fields None (their defaults apply): unset is off too.
    return all(getattr(config, key, None) in (None, off) for key, off in _PLAIN_GREEDY.items())


def _decoded(model, tokenizer, texts, posterior, num_samples, seed, max_new_tokens, batch_size, chat) -> list:
    """Greedy answers by the batched decoder (`decoding`: a KV cache; the S samples in one batch): (mean, samples)
    per text."""
    from .decoding import decode_mean, decode_samples

    common = {"max_new_tokens": max_new_tokens, "batch_size": batch_size, "chat": chat}
    sampled = ([tuple(a.text for a in answers) for answers in
                decode_samples(model, tokenizer, texts, posterior, num_samples, seed=seed, **common)]
               if num_samples else [()] * len(texts))  # fmt: skip
    mean = decode_mean(model, tokenizer, texts, posterior=posterior, **common)
    return [(answer.text, samples) for answer, samples in zip(mean, sampled)]


def _generated(model, tokenizer, texts, posterior, num_samples, seed, max_new_tokens, batch_size, chat,
               generate_kwargs) -> tuple[list[str], list[list[str]]]:  # fmt: skip
    """Answers by `model.generate` (sampling or other generate kwargs): the mean's and each posterior sample's, one
    pass over the prompts each."""
    prompts = PromptBatches(tokenizer, texts, batch_size, chat)
    ends = stop_ids(model, tokenizer, generate_kwargs)
    options = {"max_new_tokens": max_new_tokens, "do_sample": False, "pad_token_id": prompts.pad_id,
               "eos_token_id": ends or None, **generate_kwargs}  # fmt: skip
    device = next(model.parameters()).device

    def answers(pass_index: int) -> list[str]:
        # A sampled decoding draws from the global RNG: seeded per pass, so an answer does not depend on the passes
        # before it (only, with do_sample=True, on the batch it shares).
        torch.manual_seed(sample_seed(seed, pass_index))
        out = [""] * len(prompts)
        for batch in prompts.batches:
            input_ids, attention_mask = prompts.padded(batch, device)
            generated = model.generate(input_ids=input_ids, attention_mask=attention_mask,
                                       **options)[:, prompts.width(batch):].tolist()  # fmt: skip
            for i, tokens in zip(batch, generated):
                end = next((j for j, token in enumerate(tokens) if token in ends), len(tokens))
                out[i] = tokenizer.decode(tokens[:end], skip_special_tokens=True)
        return out

    was_training = model.training
    model.eval()
    # manual_seed seeds every CUDA device: fork them all, so the caller's RNG states come back.
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    try:
        with torch.random.fork_rng(devices=devices), torch.no_grad(), holding_mean(model, posterior):
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
    return mean, samples


def _is_messages(prompts) -> bool:
    """A single message list passed where a list of prompts belongs."""
    return isinstance(prompts, list) and bool(prompts) and isinstance(prompts[0], dict)
