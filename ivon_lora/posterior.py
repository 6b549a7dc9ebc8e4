"""The posterior artifact: the variance of every adapter weight, saved next to the PEFT adapter (its mean).

Files (names defined once here): `posterior.safetensors` holds one variance tensor per adapter tensor, under the
same key as in `adapter_model.safetensors`; `posterior_config.json` holds ess, the prior precision, the step and
the optimizer's hyperparameters. The pair loads without the optimizer or the Trainer.
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

POSTERIOR_WEIGHTS_NAME = "posterior.safetensors"
POSTERIOR_CONFIG_NAME = "posterior_config.json"
FORMAT_VERSION = 1


def adapter_parameters(model) -> dict[str, torch.nn.Parameter]:
    """The adapter's parameters keyed as they are saved: PEFT adapter keys, else trainable parameter names.

    For a PEFT model the adapter is found by PEFT's own key filter (adapter name dropped), so a model loaded
    for inference, whose adapter does not require grad, binds too.
    """
    if hasattr(model, "peft_config"):
        from peft.utils import get_peft_model_state_dict

        named = dict(model.named_parameters())
        return get_peft_model_state_dict(model, state_dict=named, save_embedding_layers=False)
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def _atomic_write(path: str, write) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-" + os.path.basename(path))
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@dataclass
class Posterior:
    """A diagonal Gaussian N(mean, diag(variance)) over adapter weights; the means live in the model."""

    variance: dict[str, torch.Tensor]
    config: dict = field(default_factory=dict)

    @classmethod
    def from_optimizer(cls, optimizer, model) -> Posterior:
        """The posterior held by an `IVON` optimizer over `model`'s trainable parameters."""
        params = [p for group in optimizer.param_groups for p in group["params"]]
        variance_by_param = dict(zip(params, optimizer.posterior_variance()))
        variance = {}
        for key, p in adapter_parameters(model).items():
            if p not in variance_by_param:
                raise ValueError(f"Trainable parameter {key} is not optimized by IVON")
            variance[key] = variance_by_param[p].detach().float().cpu().contiguous()
        group = optimizer.param_groups[0]
        step = max((int(s["step"]) for s in optimizer.state.values() if "step" in s), default=0)
        hyperparameters = {k: v for k, v in group.items() if k != "params" and isinstance(v, (int, float, bool))}
        config = {
            "format_version": FORMAT_VERSION,
            "ess": group["ess"],
            "weight_decay": group["weight_decay"],
            "step": step,
            "optimizer": "IVON",
            "hyperparameters": hyperparameters,
        }
        return cls(variance, config)

    def save(self, directory: str) -> None:
        from safetensors.torch import save_file

        os.makedirs(directory, exist_ok=True)
        metadata = {"format": "pt", "format_version": str(FORMAT_VERSION)}
        _atomic_write(
            os.path.join(directory, POSTERIOR_WEIGHTS_NAME), lambda p: save_file(self.variance, p, metadata=metadata)
        )

        def write_config(path):
            with open(path, "w") as f:
                json.dump(self.config, f, indent=2, sort_keys=True)

        _atomic_write(os.path.join(directory, POSTERIOR_CONFIG_NAME), write_config)

    @classmethod
    def load(cls, directory: str) -> Posterior:
        from safetensors.torch import load_file

        weights, config_path = (os.path.join(directory, n) for n in (POSTERIOR_WEIGHTS_NAME, POSTERIOR_CONFIG_NAME))
        for path in (weights, config_path):
            if not os.path.isfile(path):
                raise FileNotFoundError(f"No posterior in {directory!r}: {os.path.basename(path)} is missing")
        with open(config_path) as f:
            config = json.load(f)
        if config.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{config_path}: unsupported format_version {config.get('format_version')}")
        return cls(load_file(weights), config)

    def bind(self, model) -> list[tuple[torch.nn.Parameter, torch.Tensor]]:
        """(parameter, variance) pairs for `model`; names or shapes that do not match are an error."""
        params = adapter_parameters(model)
        missing, unexpected = sorted(set(params) - set(self.variance)), sorted(set(self.variance) - set(params))
        if missing or unexpected:
            raise ValueError(
                f"Posterior does not match the model's adapter: missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
        pairs = []
        for key, p in params.items():
            if p.shape != self.variance[key].shape:
                raise ValueError(f"{key}: posterior shape {tuple(self.variance[key].shape)} != {tuple(p.shape)}")
            pairs.append((p, self.variance[key].to(p.device, p.dtype)))
        return pairs

    @contextmanager
    def sample(self, model, generator: torch.Generator | None = None):
        """Apply one sample theta = mean + sqrt(variance) * z to `model`'s adapter, restoring the mean after."""
        pairs = self.bind(model)
        means = [p.detach().clone() for p, _ in pairs]
        try:
            with torch.no_grad():
                for p, variance in pairs:
                    z = torch.randn(p.shape, generator=generator, dtype=p.dtype)
                    p.add_(z.to(p.device) * variance.sqrt())
            yield model
        finally:
            with torch.no_grad():
                for (p, _), mean in zip(pairs, means):
                    p.copy_(mean)
