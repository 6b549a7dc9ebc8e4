"""IVON under several processes: the data-parallel group and its averaging, and the FSDP2 sharding of the params.

See ``ivon_lora.optim.ivon``'s module docstring for why IVON averages both ``g`` and ``eps * g`` over the ranks
itself (per-rank noise, W samples per step) instead of letting DDP average ``g``, and why parameters sharded by
FSDP2 need no averaging of IVON's own (FSDP reduce-scatters every micro-batch's gradient).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from ._state import Bucket, DataParallel, DTensor, SamplingState, Sharding


def resolve_sharding(params: list[Tensor]) -> Sharding | None:
    """The 1-D mesh over which FSDP2 (``fully_shard``) shards ``params``; None when no parameter is a DTensor."""
    sharded = [p for p in params if DTensor is not None and isinstance(p, DTensor)]
    if not sharded:
        return None
    if len(sharded) < len(params):
        raise ValueError(
            f"IVON got {len(sharded)} sharded (DTensor) and {len(params) - len(sharded)} plain parameters: shard the "
            "whole trainable model with fully_shard (FSDP2), or none of it."
        )
    mesh = sharded[0].device_mesh
    for p in sharded:
        if p.device_mesh != mesh or mesh.ndim != 1 or not all(placement.is_shard() for placement in p.placements):
            raise ValueError(
                f"IVON supports parameters sharded by FSDP2 (fully_shard) over one 1-D device mesh, got placements "
                f"{tuple(p.placements)} on a {p.device_mesh.ndim}-D mesh: tensor parallelism, HSDP and other layouts "
                "are not supported; shard with fully_shard over the data-parallel processes only."
            )
    return Sharding(mesh, mesh.get_local_rank(), mesh.size())


def resolve_data_parallel(data_parallel: bool | None, process_group: Any) -> DataParallel | None:
    """The group IVON averages over (None: no averaging), from its ``data_parallel`` / ``process_group``."""
    if data_parallel is False:
        return None
    if not (dist.is_available() and dist.is_initialized()):
        if data_parallel or process_group is not None:
            raise RuntimeError(
                "IVON(data_parallel=True) needs torch.distributed to be initialized before its first use: launch "
                "the processes with torchrun (or accelerate launch) and call torch.distributed."
                "init_process_group() first, or leave data_parallel=None to synchronise only when it is."
            )
        return None
    group = process_group
    world_size = dist.get_world_size(group)
    return DataParallel(group, dist.get_rank(group), world_size) if world_size > 1 else None


@torch.no_grad()
def all_reduce_samples(state: SamplingState, buckets: list[Bucket], dp: DataParallel, devices: list[str]) -> int:
    """Sum the recorded ``g`` and ``eps * g`` over the ranks; return the number of samples of all ranks.

    One all-reduce per bucket, of one flat buffer ``[grad_sum | nxg_sum | rows]`` (as DDP buckets its
    gradients). The first bucket of each device appends one row per rank, zero except this rank's own:
    (sample count, checksum of grad_sum, the device's generator state). Summed, the rows are an all-gather
    for free: every rank learns every rank's count (so that all raise together if they differ), whether the
    gradients were already identical (averaged twice), and the generator states that rank 0's state_dict()
    saves. Small integers and bytes are exact in float32/float64, and a sum with zeros is exact. ``devices``: the
    optimizer's devices, in order (the generators' seeds depend on it).
    """
    count = state.num_pending_samples
    first_bucket = {}
    for index, bucket in enumerate(buckets):
        first_bucket.setdefault(str(bucket.device), index)
    works, rows_by_device = [], {}
    for index, bucket in enumerate(buckets):
        bucket.allocate()
        if count == 0:  # nothing recorded here: join the collective anyway, so that no rank hangs
            bucket.grad_sum.zero_()
            bucket.nxg_sum.zero_()
        numel = bucket.grad_sum.numel()
        generator_state = None
        if first_bucket[str(bucket.device)] == index:
            generator_state = state.generator(bucket.device, devices, dp.rank).get_state()
        width = 2 + generator_state.numel() if generator_state is not None else 0
        buffer = bucket.sync_buffer(2 * numel + dp.world_size * width)
        buffer[:numel].copy_(bucket.grad_sum)
        buffer[numel : 2 * numel].copy_(bucket.nxg_sum)
        if generator_state is not None:
            rows = buffer[2 * numel :].view(dp.world_size, width)
            rows.zero_()
            rows[dp.rank, 0] = count
            rows[dp.rank, 1] = bucket.grad_sum.sum()
            rows[dp.rank, 2:].copy_(generator_state)
            rows_by_device[str(bucket.device)] = rows
        works.append(dist.all_reduce(buffer, group=dp.group, async_op=True))
    for work in works:
        work.wait()
    for bucket in buckets:
        numel = bucket.grad_sum.numel()
        bucket.grad_sum.copy_(bucket.sync[:numel])
        bucket.nxg_sum.copy_(bucket.sync[numel : 2 * numel])

    first_rows = next(iter(rows_by_device.values()))
    counts, checksums = first_rows[:, 0].tolist(), first_rows[:, 1].tolist()
    if len(set(counts)) > 1:
        state.num_pending_samples = 0  # the sums are now a mix of the ranks' samples: discard them
        raise RuntimeError(
            f"IVON.step(): the data-parallel ranks recorded different numbers of samples since the last step "
            f"({dict(enumerate(int(c) for c in counts))} by rank). Every rank must run the same number of "
            "sampled_params(train=True) contexts (MC samples x accumulation steps) before each step()."
        )
    if counts[0] == 0:
        raise RuntimeError(
            "IVON.step() found no recorded sample. Run the forward and backward pass inside "
            "`with optimizer.sampled_params(train=True):` before calling step(), or pass a closure."
        )
    if len(set(checksums)) == 1 and checksums[0] != 0 and not state.warned_presynced_grads:
        state.warned_presynced_grads = True
        warnings.warn(
            f"IVON.step(): the recorded gradients are identical on all {dp.world_size} ranks although every rank "
            "draws its own noise: were they already averaged across ranks, e.g. by DistributedDataParallel? IVON "
            "averages g and eps*g itself; averaging g before would underestimate the Hessian by the world size. "
            "Run the backward passes under `model.no_sync()` (or without DDP), or build IVON with "
            "data_parallel=False and the same seed on every rank to let DDP average one shared sample instead.",
            stacklevel=3,
        )
    gathered = [[rows_by_device[key][rank, 2:].to(torch.uint8) for key in devices] for rank in range(dp.world_size)]
    state.rank_generator_states = (state.num_draws, gathered)
    return int(sum(counts))
