"""IVON under FSDP2 in the Trainer: the posterior gathered from the shards, the sharded prior, what is refused.

Under FSDP2 (`fully_shard`, e.g. `accelerate launch` with `fsdp_version: 2`) the LoRA parameters and IVON's state
are DTensor shards: each rank draws the noise of its own shards (generators derived from the seed and the rank),
FSDP reduce-scatters every micro-batch's gradient, and IVON records noise x gradient on the shard (see the note on
sharded parameters in `ivon_lora.optim.IVON`). The posterior is gathered here into the same `Posterior` (and so the
same `posterior.safetensors`) that a single-process or DDP run writes.
"""

from __future__ import annotations

from torch.distributed.tensor import DTensor

from ..posterior import Posterior


def _full(tensor):
    # An all-gather: every rank of the mesh must call it, in the same order.
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


class _GatheredOptimizer:
    """An IVON optimizer as `Posterior.from_optimizer` reads it, every sharded tensor replaced by its full tensor."""

    def __init__(self, optimizer, full_params: dict):
        self.param_groups = [{**group, "params": [full_params[p] for p in group["params"]]}
                             for group in optimizer.param_groups]  # fmt: skip
        self.state = {
            full_params[p]: {"step": state["step"]} for p, state in optimizer.state.items() if "step" in state
        }
        self._variances = [_full(v) for v in optimizer.posterior_variance()]

    def posterior_variance(self):
        return self._variances


class _GatheredModel:
    """A model as `Posterior.from_optimizer` reads it (its parameters by name, its PEFT config), gathered."""

    def __init__(self, model, full_params: dict):
        self._model = model
        self._named = [(name, full_params.get(p, p)) for name, p in model.named_parameters()]

    def named_parameters(self):
        return iter(self._named)

    def __getattr__(self, name):
        return getattr(self._model, name)


def gather_full_params(optimizer) -> dict:
    """Every parameter of an IVON optimizer with its full tensor: all-gathered if sharded (every rank calls it)."""
    return {p: _full(p.detach()) for group in optimizer.param_groups for p in group["params"]}


def gathered_adapter_state_dict(model, full_params: dict) -> dict:
    """The model's optimized parameters by name, full: what `save_pretrained(state_dict=...)` filters the adapter from
    (only the LoRA tensors are gathered, never the sharded base model)."""
    return {name: full_params[p] for name, p in model.named_parameters() if p in full_params}


def gathered_posterior(optimizer, model, full_params: dict | None = None) -> Posterior:
    """The posterior of an IVON optimizer over `model`'s adapter, with sharded (FSDP2) tensors gathered in full.

    A collective under FSDP2: every rank calls it, and every rank gets the whole posterior. Without sharding it is
    `Posterior.from_optimizer`.

    Args:
        optimizer: the `IVON` optimizer that trained the adapter.
        model: the model whose adapter it optimizes (sharded or not).
        full_params: `gather_full_params(optimizer)`, if already gathered.

    Returns:
        The posterior, as a single-process run of the same optimizer and model would have it.
    """
    if getattr(optimizer, "sharded_world_size", 1) == 1:
        return Posterior.from_optimizer(optimizer, model)
    full_params = gather_full_params(optimizer) if full_params is None else full_params
    return Posterior.from_optimizer(_GatheredOptimizer(optimizer, full_params), _GatheredModel(model, full_params))
