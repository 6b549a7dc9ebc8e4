"""The types that IVON's modules share: the sampling state, the data-parallel group, the sharding and a bucket.

The leaf of ``ivon_lora.optim``: it imports only torch, and ``ivon.py``, ``_rng.py`` and ``_distributed.py`` import
their shared types from here, so the imports inside the optimizer form a tree (tested, TYPE_CHECKING imports too).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

try:
    from torch.distributed.tensor import DTensor, Shard
except ImportError:  # a torch build without torch.distributed: no parameter can be sharded
    DTensor = Shard = None


def local(tensor: Tensor) -> Tensor:
    """A sharded (DTensor) tensor's local shard, which in-place operations on it change; any other tensor itself."""
    return tensor.to_local() if DTensor is not None and isinstance(tensor, DTensor) else tensor


def derive_seed(seed: int, device_ordinal: int, rank: int = 0) -> int:
    """The seed of the generator of the optimizer's ``device_ordinal``-th device (in parameter order).

    ``rank`` is the data-parallel rank; rank 0 (and a single process) uses the seeds of a single process.
    """
    if device_ordinal == 0 and rank == 0:
        return seed
    key = f"{seed}/{device_ordinal}" if rank == 0 else f"{seed}/{device_ordinal}/rank{rank}"
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


@dataclass
class SamplingState:
    """IVON's optimizer-wide sampling state (the per-parameter state is ``step``, ``momentum``, ``hess``)."""

    seed: int
    generators: dict[str, torch.Generator] = field(default_factory=dict)  # by device, created at first use
    num_pending_samples: int = 0  # samples recorded by sampled_params(train=True) since the last step()
    active: bool = False  # a sampled_params() context holds a sample in the parameters
    num_draws: int = 0  # sampled_params() contexts entered: tells whether rank_generator_states is current
    # Data parallel: every rank's generator states (by rank, in device order) as of the last step(), with the
    # num_draws they belong to. Gathered by step()'s all-reduce, so that rank 0's state_dict() holds the generator
    # states of all ranks without a collective of its own.
    rank_generator_states: tuple[int, list[list[Tensor]]] | None = None
    warned_presynced_grads: bool = False

    def generator(self, device: torch.device, devices: list[str], rank: int) -> torch.Generator:
        """The generator of ``device``, the ``devices.index(device)``-th of the optimizer's devices, on ``rank``."""
        key = str(device)
        if key not in self.generators:
            generator = torch.Generator(device=device)
            generator.manual_seed(derive_seed(self.seed, devices.index(key), rank))
            self.generators[key] = generator
        return self.generators[key]

    def restart(self, seed: int) -> None:
        """Forget the generators (and gathered states): the next draws start fresh streams from ``seed``."""
        self.seed = seed
        self.generators = {}
        self.rank_generator_states = None
        self.num_draws = 0


@dataclass(frozen=True)
class DataParallel:
    """The process group over which IVON averages its recorded samples, and this process's place in it."""

    group: Any  # a torch.distributed ProcessGroup; None is the default group
    rank: int
    world_size: int


@dataclass(frozen=True)
class Sharding:
    """The 1-D device mesh over which FSDP2 shards IVON's parameters, and this process's place in it."""

    mesh: Any  # a torch.distributed DeviceMesh
    rank: int
    world_size: int


@dataclass
class Bucket:
    """The parameters of one param group that share a device and a dtype, with their transient buffers.

    Each buffer is one flat tensor, so that the noise is drawn by one call, plus per-parameter views
    shaped like the parameters' ``tensors`` (of a sharded parameter, its local shard). The buffers are allocated on first use and reused: fresh allocations of
    this size cost page faults on CPU and allocator traffic on GPU.
    """

    group_index: int
    params: list[Tensor]
    noise: Tensor | None = None  # eps of the current sample
    backup: Tensor | None = None  # the means while the parameters hold a sample; scratch otherwise
    grad_sum: Tensor | None = None  # sum over the recorded samples of g
    nxg_sum: Tensor | None = None  # sum over the recorded samples of eps * g
    views: dict[str, list[Tensor]] = field(default_factory=dict)
    sync: Tensor | None = None  # data parallel: [grad_sum | nxg_sum | per-rank rows], all-reduced at once

    @property
    def device(self) -> torch.device:
        return self.params[0].device

    @property
    def tensors(self) -> list[Tensor]:
        """The data the buffers line up with, which the sampling changes in place: the params' local shards."""
        return [local(p) for p in self.params]

    def allocate(self) -> None:
        if self.noise is not None:
            return
        tensors = self.tensors
        numel = sum(t.numel() for t in tensors)
        for name in ("noise", "backup", "grad_sum", "nxg_sum"):
            flat = torch.empty(numel, dtype=tensors[0].dtype, device=tensors[0].device)
            setattr(self, name, flat)
            self.views[name] = [view.view_as(t) for view, t in zip(flat.split([t.numel() for t in tensors]), tensors)]

    def sync_buffer(self, numel: int) -> Tensor:
        if self.sync is None or self.sync.numel() != numel:
            self.sync = torch.empty(numel, dtype=self.params[0].dtype, device=self.device)
        return self.sync

    def swap_noise_and_nxg_sum(self) -> None:
        self.noise, self.nxg_sum = self.nxg_sum, self.noise
        self.views["noise"], self.views["nxg_sum"] = self.views["nxg_sum"], self.views["noise"]
