"""MC dropout and the one seed derivation of sampled evaluation and generation.

`sample_seed(seed, k)` is the seed of sample k of a run seeded by `seed` (its MC-dropout mask, its sampled
decoding); `sample_seed(seed, k, b)` of its batch b where masks are drawn per batch. Every derived seed of the
package comes from here, so two paths that sample "sample k" draw it alike. (Posterior samples need none: sample k
is the k-th draw of `Posterior.sampler` from a generator seeded by `seed`.)

`dropout_active` makes every dropout module drop even in eval mode (`model.generate` and scoring put the model in
eval mode); `seeded_dropout` does so under a seeded, forked RNG, so the caller's RNG state is untouched.
"""

from __future__ import annotations

import functools
from contextlib import contextmanager

import torch

_STRIDE = 1_000_003  # a prime larger than any sample or batch count: distinct streams get distinct seeds


def sample_seed(seed: int, *streams: int) -> int:
    """The seed of stream (k, b, ...) under `seed`: each level maps s -> s * 1_000_003 + k + 1."""
    for index in streams:
        seed = seed * _STRIDE + index + 1
    return seed


def has_dropout(model) -> bool:
    return any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in model.modules())


@contextmanager
def dropout_active(model):
    """Every dropout module with p > 0 drops, whatever the model's training mode; restored after."""
    modules = [m for m in model.modules() if isinstance(m, torch.nn.Dropout) and m.p > 0]
    if not modules:
        raise ValueError("MC-dropout samples need a model with dropout (lora_dropout > 0); this one has none")
    for module in modules:
        module.forward = functools.partial(torch.nn.functional.dropout, p=module.p, training=True)
    try:
        yield
    finally:
        for module in modules:
            del module.forward


@contextmanager
def seeded_dropout(model, seed: int):
    """`dropout_active` with the model's device RNG seeded by `seed` (forked: the caller's RNG comes back)."""
    device = next(model.parameters()).device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), dropout_active(model):
        torch.manual_seed(seed)
        yield
