"""IVON's noise generators: per-device, per-rank seeds, and their states in the optimizer's state_dict.

One ``torch.Generator`` per device, seeded from the optimizer's seed, the device's position among its devices
and the data-parallel rank. The state_dict hooks here carry every generator (and, under data parallelism, every
rank's, gathered by ``step()``'s all-reduce) so that a resumed run draws the same noise. All of it lives in one
``SamplingState`` (``_state.py``, with the seeds' derivation) that the optimizer owns; the functions here and in
``_distributed.py`` read and write that object, never the optimizer's attributes.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor

from ._state import DataParallel, DTensor, SamplingState, Shard, Sharding

# Under FSDP2, the key in the first parameter's state of every rank's generator state (see save_sharded_generators).
SHARDED_GENERATOR_KEY = "noise_generator_states"


def save_generator_states(state: SamplingState, dp: DataParallel | None, state_dict: dict[str, Any]) -> dict[str, Any]:
    saved = {
        "seed": state.seed,
        "generator_states": {key: gen.get_state() for key, gen in state.generators.items()},
    }
    if dp is not None:
        # The Trainer (like most code) saves the optimizer from rank 0 only, so this must not need a
        # collective: the other ranks' states come from the last step()'s all-reduce.
        saved["world_size"] = dp.world_size
        gathered = state.rank_generator_states
        if state.num_draws != (gathered[0] if gathered is not None else 0):
            warnings.warn(
                "IVON drew noise since its last step() (e.g. sampled_params(train=False) for evaluation): the "
                "state_dict holds every rank's generator state as of that step, so a run resumed from it draws "
                "other (equally valid) noise than this one. Save right after step() for a bitwise resume.",
                stacklevel=3,
            )
        if gathered is not None:
            saved["generator_states_by_rank"] = [[s.cpu() for s in states] for states in gathered[1]]
    state_dict["ivon"] = saved
    return state_dict


def load_generator_states(state: SamplingState, dp: DataParallel | None, devices: list[str],
                          state_dict: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    state_dict = dict(state_dict)
    saved = state_dict.pop("ivon", None)
    if saved is not None:
        state.restart(int(saved["seed"]))
        if dp is None:
            set_generator_states(state, saved["generator_states"], devices, rank=0)
        else:
            set_rank_generator_states(state, saved, dp, devices)
    # Samples recorded before loading belong to the old trajectory.
    state.num_pending_samples = 0
    return state_dict


def set_generator_states(state: SamplingState, states: dict[str, Tensor], devices: list[str], rank: int) -> None:
    for key, generator_state in states.items():
        # Loaders such as Accelerate move optimizer state to the accelerator; set_state needs a CPU tensor.
        state.generator(torch.device(key), devices, rank).set_state(generator_state.cpu())


def set_rank_generator_states(
    state: SamplingState, saved: dict[str, Any], dp: DataParallel, devices: list[str]
) -> None:
    """Give this rank its own saved generator states; a rank with none saved starts its own fresh stream.

    A checkpoint of a single process (or of a data-parallel run before its first step) has only rank 0's
    states: rank 0 continues them and the other ranks' streams, derived from (seed, rank), were never used.
    """
    by_rank = saved.get("generator_states_by_rank")
    saved_world_size = saved.get("world_size", 1)
    if saved_world_size != dp.world_size:
        warnings.warn(
            f"IVON state saved by {saved_world_size} data-parallel process(es) is loaded by {dp.world_size}: "
            f"ranks below {min(saved_world_size, dp.world_size)} continue their saved noise streams and the "
            "others start fresh ones. The noise stays independent across ranks, but the run is not a bitwise "
            "continuation of the saved one.",
            stacklevel=4,
        )
    if by_rank is None:
        if dp.rank == 0:
            set_generator_states(state, saved["generator_states"], devices, dp.rank)
        return
    if dp.rank < len(by_rank):
        states = by_rank[dp.rank]
        if len(states) != len(devices):
            raise ValueError(
                f"The IVON state has generator states for {len(states)} device(s) per rank, but this optimizer's "
                f"parameters are on {len(devices)}: {devices}. Load it into the same model placement."
            )
        for key, generator_state in zip(devices, states):
            state.generator(torch.device(key), devices, dp.rank).set_state(generator_state.cpu())
    if len(by_rank) == dp.world_size:
        # Keep them, so that a state_dict() taken before the next step() saves them again.
        state.rank_generator_states = (0, by_rank)


def save_sharded_generators(state: SamplingState, sharding: Sharding, device: torch.device, devices: list[str],
                            state_dict: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    """Every rank's generator state, as one DTensor ``[world_size, n]`` sharded by rank (Shard(0)), in the state of
    the first parameter, so that a distributed checkpoint (``torch.distributed.checkpoint``, which the Trainer and
    Accelerate use for FSDP2) keeps it: it saves only the per-parameter state, each rank its own shard of it."""
    state_dict["ivon"] = {
        "seed": state.seed,
        "generator_states": {key: gen.get_state() for key, gen in state.generators.items()},
    }
    own = state.generator(device, devices, sharding.rank).get_state()
    rows = DTensor.from_local(own.view(1, -1).to(device), sharding.mesh, [Shard(0)], run_check=False)
    packed = dict(state_dict["state"])
    first = next(iter(packed))
    packed[first] = {**packed[first], SHARDED_GENERATOR_KEY: rows}  # a copy: the packed entries are the live state
    state_dict["state"] = packed
    return state_dict


def load_sharded_generators(state: SamplingState, sharding: Sharding, device: torch.device, devices: list[str],
                            state_dict: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    """Set this rank's generator from its row of the saved states (see ``save_sharded_generators``)."""
    state_dict = dict(state_dict)
    saved = state_dict.pop("ivon", None)
    if saved is not None:
        state.restart(int(saved["seed"]))
    packed, rows = dict(state_dict.get("state", {})), None
    for key, param_state in packed.items():
        if SHARDED_GENERATOR_KEY in param_state:
            param_state = dict(param_state)
            rows = param_state.pop(SHARDED_GENERATOR_KEY)
            packed[key] = param_state
    state_dict["state"] = packed
    if rows is not None and rows.shape[0] != sharding.world_size:
        warnings.warn(
            f"IVON state saved by {rows.shape[0]} sharded process(es) is loaded by {sharding.world_size}: every rank "
            "starts a fresh noise stream. The noise stays independent across ranks, but the run is not a bitwise "
            "continuation of the saved one.",
            stacklevel=4,
        )
    elif rows is not None:
        own = rows.to_local() if isinstance(rows, DTensor) else rows[sharding.rank : sharding.rank + 1]
        state.generator(device, devices, sharding.rank).set_state(own.reshape(-1).to("cpu", torch.uint8))
    elif saved is not None:  # a state_dict saved by this rank alone, without the per-parameter rows
        set_generator_states(state, saved["generator_states"], devices, sharding.rank)
    state.num_pending_samples = 0
    return state_dict
