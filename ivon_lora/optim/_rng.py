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

from ._state import DataParallel, SamplingState


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
