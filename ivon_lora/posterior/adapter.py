"""The key-to-parameter binding every part of the posterior works on: a model's adapter parameters keyed as PEFT
saves them, the adapter's name, the LoRA settings a posterior must agree with, and the hash that ties a posterior
to the adapter it was saved with."""

from __future__ import annotations

import hashlib

import torch

# Adapter settings that must agree between adapter_config.json and the posterior saved with it.
ADAPTER_KEYS = ("r", "lora_alpha", "target_modules")


def adapter_parameters(model) -> dict[str, torch.nn.Parameter]:
    """The adapter's parameters keyed as they are saved: PEFT adapter keys, else trainable parameter names.

    For a PEFT model the adapter is found by PEFT's own key filter (adapter name dropped), so a model loaded
    for inference, whose adapter does not require grad, binds too.
    """
    if hasattr(model, "peft_config"):
        from peft.utils import get_peft_model_state_dict

        named = dict(model.named_parameters())
        return get_peft_model_state_dict(model, state_dict=named, adapter_name=adapter_name(model),
                                         save_embedding_layers=False)  # fmt: skip
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def adapter_name(model) -> str:
    """The name of a PEFT model's active adapter ("default" unless the user named it)."""
    name = getattr(model, "active_adapter", "default")
    return name if isinstance(name, str) else name[0]


def adapter_hash(mean: dict[str, torch.Tensor]) -> str:
    """SHA-256 of the adapter tensors (names, shapes, float32 values): ties a posterior to its adapter."""
    digest = hashlib.sha256()
    for key in sorted(mean):
        tensor = mean[key].detach().float().cpu().contiguous()
        digest.update(f"{key}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


def adapter_settings(config: dict) -> dict:
    """The LoRA settings of an adapter config (`ADAPTER_KEYS`, target modules sorted) a posterior records."""
    settings = {key: config.get(key) for key in ADAPTER_KEYS}
    if isinstance(settings["target_modules"], (list, set, tuple)):
        settings["target_modules"] = sorted(settings["target_modules"])
    return settings
