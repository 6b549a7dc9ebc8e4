"""Per-sample LoRA: several posterior samples in one forward pass. The batch is repeated S times, each copy with
its own LoRA weights.

A LoRA layer computes base(x) + B(A(x)) * scaling. Only A and B differ between posterior samples, so S samples of
a B-row batch can run as one (S*B)-row batch: the base weights are read once for all S copies (on a GPU the
larger matmuls also fill the device better), and each LoRA layer adds its own sample's delta to its slice of
rows with two batched matmuls, (S, B*T, in) @ (S, in, r) @ (S, r, out). FLOPs are those of S sequential passes,
so on a CPU, which is already busy with one batch, it is not faster; it is for GPUs with small evaluation batches.

The samples come from `PosteriorSampler.draw` and are bit for bit those that as many `PosteriorSampler.sample()`
calls would hold, so the result equals S sequential sampled passes up to float rounding (tests/generation/test_sampling.py).
Only plain LoRA on `nn.Linear` base layers is supported (peft's `lora.Linear`); DoRA and other variants, merged
or disabled adapters, LoRA biases, fan-in-fan-out weights and active LoRA dropout are refused.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from .posterior import SampleStack


def _lora_layers(model, stack: SampleStack) -> list[tuple[torch.nn.Module, str, str, str]]:
    """(layer, adapter, key of A, key of B) of every LoRA layer, after checking that batching it is exact."""
    from peft.tuners.lora import LoraLayer
    from peft.tuners.lora.layer import Linear

    key_of = {id(p): key for key, p in stack.parameters.items()}
    layers, covered = [], set()
    for name, module in model.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        what = f"LoRA layer {name} ({type(module).__name__})"
        if type(module).forward is not Linear.forward:
            raise NotImplementedError(
                f"{what}: batched samples support LoRA on nn.Linear layers only; score this model with "
                "sequential samples (PosteriorSampler.sample)"
            )
        active = [a for a in module.active_adapters if a in module.lora_A]
        if module.disable_adapters or module.merged or len(active) != 1:
            raise ValueError(
                f"{what}: batched samples need exactly one active, unmerged adapter (active: {active}, merged: "
                f"{module.merged}, disabled: {module.disable_adapters})"
            )
        adapter = active[0]
        variant = getattr(module, "lora_variant", {}).get(adapter)
        if variant is not None or module.use_dora.get(adapter, False):
            raise NotImplementedError(
                f"{what}: LoRA variant {type(variant).__name__ if variant else 'DoRA'} is not supported by batched "
                "samples; use sequential samples"
            )
        if module.fan_in_fan_out or module.lora_B[adapter].bias is not None:
            raise NotImplementedError(f"{what}: fan_in_fan_out and lora_bias are not supported by batched samples")
        dropout = module.lora_dropout[adapter]
        if dropout.training and getattr(dropout, "p", 0.0) > 0:
            raise ValueError(f"{what}: LoRA dropout is active; call model.eval() before scoring samples")
        keys = [key_of.get(id(module.lora_A[adapter].weight)), key_of.get(id(module.lora_B[adapter].weight))]
        if None in keys:
            raise ValueError(f"{what}: its adapter weights are not in the posterior samples (a different model?)")
        layers.append((module, adapter, *keys))
        covered.update(keys)
    uncovered = sorted(set(stack.parameters) - covered)
    if uncovered:
        raise NotImplementedError(
            f"Batched samples perturb LoRA A/B weights only; the posterior also covers {uncovered[:5]} (e.g. "
            "modules_to_save); use sequential samples"
        )
    return layers


@contextmanager
def per_sample_lora(model, stack: SampleStack):
    """Within the context, a forward pass over S stacked copies of a batch gives copy s the LoRA weights of sample s.

    Rows must be ordered sample-major (rows s*B .. s*B+B-1 are copy s), as `batch.repeat(S, 1)` makes them. The
    model's weights are never written; each LoRA layer's `forward` is replaced on the instance and restored after.
    """
    num_samples = len(stack)
    patched = []
    try:
        for module, adapter, key_a, key_b in _lora_layers(model, stack):
            lora_a, lora_b = module.lora_A[adapter].weight, module.lora_B[adapter].weight
            # (S, in, r) and (S, r, out), in the adapter's dtype: what `sample()` would copy into the parameters.
            a_t = stack.values[key_a].to(lora_a.dtype).transpose(1, 2)
            b_t = stack.values[key_b].to(lora_b.dtype).transpose(1, 2)
            patched.append((module, module.__dict__.get("forward")))
            module.forward = _batched_forward(module, adapter, a_t, b_t, num_samples)
        yield model
    finally:
        for module, previous in reversed(patched):
            del module.forward
            if previous is not None:
                module.forward = previous


def _batched_forward(module, adapter: str, a_t: torch.Tensor, b_t: torch.Tensor, num_samples: int):
    scaling = module.scaling[adapter]

    # Mirrors peft's lora.Linear.forward for one plain adapter: result + (x A^T) B^T * scaling, added in the
    # adapter's dtype, then cast back to the base output's dtype.
    def forward(x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if "adapter_names" in kwargs:
            raise ValueError("adapter_names (mixed adapter batches) cannot be combined with batched samples")
        if x.shape[0] % num_samples:
            raise ValueError(f"Batch of {x.shape[0]} rows is not {num_samples} stacked copies")
        result = module.base_layer(x, *args, **kwargs)
        x = module._cast_input_dtype(x, a_t.dtype)
        per_sample = x.reshape(num_samples, -1, x.shape[-1])  # (S, rows of one copy, in)
        delta = torch.bmm(torch.bmm(per_sample, a_t), b_t) * scaling
        return (result + delta.view(result.shape)).to(result.dtype)

    return forward
