"""PEFT's own combination types, called through `LoraModel.add_weighted_adapter` (not re-implemented), on a stand-in
model: only the adapted layers, with the base weights' shapes but no base weights, so a merge needs neither the base
model nor its memory (PEFT reads only the LoRA factors: `get_delta_weight` for the *_svd types, the factors for the
others).
"""

from __future__ import annotations

import torch

from ..vocabulary import MERGE_PEFT_TYPES as PEFT_TYPES  # add_weighted_adapter's combination types (peft 0.21)

# The types that merge A and B separately, so every input needs the same rank (PEFT's own rule).
SAME_RANK_TYPES = ("linear", "ties", "dare_ties", "dare_linear", "magnitude_prune")
DENSITY_TYPES = tuple(t for t in PEFT_TYPES if t not in ("linear", "cat", "svd"))
# PEFT saves adapter tensors under "base_model.model.<module path>.lora_A.weight" (adapter name dropped).
KEY_PREFIX = "base_model.model."
FACTOR_SUFFIXES = (".lora_A.weight", ".lora_B.weight")
MERGED_NAME = "merged"


def module_paths(tensors: dict[str, torch.Tensor]) -> list[str]:
    """The adapted modules' paths (`model.layers.0.self_attn.q_proj`) of a saved adapter's tensors."""
    return sorted(
        {key[len(KEY_PREFIX) : -len(FACTOR_SUFFIXES[0])] for key in tensors if key.endswith(FACTOR_SUFFIXES[0])}
    )


def factor_keys(path: str) -> tuple[str, str]:
    return tuple(f"{KEY_PREFIX}{path}{suffix}" for suffix in FACTOR_SUFFIXES)


def _stand_in_model(shapes: dict[str, tuple[int, int]]) -> torch.nn.Module:
    """nn.Linear layers at the adapted paths, whose weights are one zero broadcast to the base shape (no memory)."""
    root = torch.nn.Module()
    for path, (out_features, in_features) in shapes.items():
        parent = root
        *parents, name = path.split(".")
        for part in parents:
            if not hasattr(parent, part):
                parent.add_module(part, torch.nn.Module())
            parent = getattr(parent, part)
        layer = torch.nn.Linear(in_features, out_features, bias=False, device="meta")
        layer.weight = torch.nn.Parameter(torch.zeros(1).expand(out_features, in_features), requires_grad=False)
        parent.add_module(name, layer)
    return root


def peft_merge(
    configs: list[dict], adapters: list[dict[str, torch.Tensor]], weights: list[float], combination_type: str,
    density: float | None = None, svd_rank: int | None = None, seed: int = 0,
) -> tuple[dict[str, torch.Tensor], dict]:  # fmt: skip
    """`add_weighted_adapter(combination_type)` of the adapters (their adapter_config dicts and saved tensors):
    the merged tensors (saved keys) and its adapter config dict. DARE's random drops are seeded by `seed`."""
    from peft import LoraConfig
    from peft.tuners.lora import LoraModel
    from peft.utils import set_peft_model_state_dict

    paths = module_paths(adapters[0])
    shapes = {}
    for path in paths:
        a_key, b_key = factor_keys(path)
        shapes[path] = (adapters[0][b_key].shape[0], adapters[0][a_key].shape[1])
    names = [f"input{i}" for i in range(len(adapters))]
    lora_configs = [LoraConfig(**{k: v for k, v in config.items() if k in LoraConfig.__dataclass_fields__})
                    for config in configs]  # fmt: skip
    model = LoraModel(_stand_in_model(shapes), lora_configs[0], names[0])
    for name, config in zip(names[1:], lora_configs[1:]):
        model.peft_config[name] = config
        model.inject_adapter(model.model, name)
    for name, tensors in zip(names, adapters):
        set_peft_model_state_dict(model, {k[len("base_model.") :]: v for k, v in tensors.items()}, adapter_name=name)
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)  # DARE draws its masks from torch's global generator
    try:
        model.add_weighted_adapter(names, list(weights), MERGED_NAME, combination_type=combination_type,
                                   density=density, svd_rank=svd_rank)  # fmt: skip
    finally:
        torch.random.set_rng_state(generator_state)
    merged = {}
    for path in paths:
        layer = model.model.get_submodule(path)
        a_key, b_key = factor_keys(path)
        merged[a_key] = layer.lora_A[MERGED_NAME].weight.detach().float().clone()
        merged[b_key] = layer.lora_B[MERGED_NAME].weight.detach().float().clone()
    config = model.peft_config[MERGED_NAME].to_dict()
    return merged, config
