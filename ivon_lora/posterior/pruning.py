"""Pruning a posterior at test time: per-entry scores (signal-to-noise, magnitude, certainty) and the masks of the
lowest-scored entries, globally or per matrix. Functions on the mean and variance tensors alone; `Posterior.prune`
applies them and records what it did."""

from __future__ import annotations

import torch

from ..vocabulary import PRUNE_CRITERIA, PRUNE_SCOPES


def prune_scores(mean: dict[str, torch.Tensor], variance: dict[str, torch.Tensor], criterion: str = "snr") -> dict:
    """Per-entry scores; the lowest are pruned first. snr = |m| / sqrt(v); magnitude = |m|; variance = 1/sqrt(v).

    Args:
        mean: the adapter tensors, by key.
        variance: their variances, by the same keys.
        criterion: `snr`, `magnitude` or `variance`.

    Returns:
        One tensor of scores per key, of the adapter tensor's shape.
    """
    if criterion not in PRUNE_CRITERIA:
        raise ValueError(f"Invalid criterion value: {criterion!r} (must be one of {', '.join(PRUNE_CRITERIA)})")
    scores = {}
    for key, m in mean.items():
        std = variance[key].double().sqrt()
        magnitude = m.double().abs()
        # An entry that is already certain (v = 0) ranks last: it has no noise to remove.
        inverse_std = torch.where(std > 0, 1.0 / std, torch.full_like(std, float("inf")))
        scores[key] = {"snr": magnitude * inverse_std, "magnitude": magnitude, "variance": inverse_std}[criterion]
    return scores


def prune_masks(scores: dict[str, torch.Tensor], fraction: float, scope: str = "global") -> dict[str, torch.Tensor]:
    """Boolean masks (by key, of each tensor's shape) of the `fraction` of entries with the lowest scores: ranked all
    together (scope "global") or within each tensor ("matrix"); ties broken by position, so the result is
    deterministic."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"Invalid fraction value: {fraction} (must be in [0, 1])")
    if scope not in PRUNE_SCOPES:
        raise ValueError(f"Invalid scope value: {scope!r} (must be one of {', '.join(PRUNE_SCOPES)})")
    keys = sorted(scores)
    if scope == "global":
        flat = torch.cat([scores[k].flatten() for k in keys])
        masks = _split_like(_lowest(flat, round(fraction * flat.numel())), [scores[k] for k in keys])
    else:
        masks = [_lowest(scores[k].flatten(), round(fraction * scores[k].numel())).view_as(scores[k]) for k in keys]
    return dict(zip(keys, masks))


def _lowest(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Boolean mask of the `count` lowest entries of a 1-D tensor (ties broken by position)."""
    mask = torch.zeros(scores.numel(), dtype=torch.bool)
    if count > 0:
        mask[torch.sort(scores, stable=True).indices[:count]] = True
    return mask


def _split_like(flat_mask: torch.Tensor, like: list[torch.Tensor]) -> list[torch.Tensor]:
    return [chunk.view_as(t) for chunk, t in zip(flat_mask.split([t.numel() for t in like]), like)]
