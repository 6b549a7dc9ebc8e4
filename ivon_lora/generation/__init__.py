"""Generation from a run: prompt rendering (`prompts`: the one chat-template policy), the posterior decoder and its
modes (`decoding`: mean, per-sample, posterior-averaged; batched, with a KV cache) and the Hugging Face
`model.generate` path for sampling kwargs (`hf`). `generate` is the public entry point."""

from .decoding import FINISH_REASONS, Answer, AveragedAnswer, decode_averaged, decode_mean, decode_samples
from .batching import stop_ids as _stop_ids
from .hf import Generation, generate
from .prompts import Prompt, check_prompt, render_prompts, uses_chat_template

__all__ = [
    "FINISH_REASONS",
    "Answer",
    "AveragedAnswer",
    "Generation",
    "Prompt",
    "_stop_ids",
    "check_prompt",
    "decode_averaged",
    "decode_mean",
    "decode_samples",
    "generate",
    "render_prompts",
    "uses_chat_template",
]
