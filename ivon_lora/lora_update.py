"""The LoRA update ΔW = scaling·B·A as a random variable: its mean and variance when the entries of A and B are
independent Gaussians (a posterior over the factors). Merging (`ivon_lora.merging`) and the curvature
(`ivon_lora.curvature`) both read it; pure torch (a leaf).
"""

from __future__ import annotations

import torch


def _common(tensors) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def delta_moments(
    a_mean: torch.Tensor, a_variance: torch.Tensor | None, b_mean: torch.Tensor, b_variance: torch.Tensor | None,
    scaling: float,
) -> tuple[torch.Tensor, torch.Tensor | None]:  # fmt: skip
    """Mean and variance of ΔW = scaling·B·A (B: out×r, A: r×in) for independent Gaussian factor entries:

        E[ΔW_ij]   = scaling · Σ_k mB_ik mA_kj
        Var(ΔW_ij) = scaling² · Σ_k (mB_ik² vA_kj + vB_ik mA_kj² + vB_ik vA_kj)

    exact for independent factors (each term is the variance of a product of two independent Gaussians, and the
    r products are independent). Without variances (an AdamW run) the variance is None.
    """
    dtype = _common([a_mean, b_mean, *(v for v in (a_variance, b_variance) if v is not None)])
    a, b = a_mean.to(dtype), b_mean.to(dtype)
    mean = scaling * (b @ a)
    if a_variance is None or b_variance is None:
        return mean, None
    va, vb = a_variance.to(dtype), b_variance.to(dtype)
    # the three sums over k as one product of (out x 3r) by (3r x in): one pass over the dense result, not three
    variance = (scaling**2) * (torch.cat([b * b, vb, vb], dim=1) @ torch.cat([va, a * a, va], dim=0))
    return mean, variance
