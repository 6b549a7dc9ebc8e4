"""The merge formulas on tensors (no model, no files): gradient matching, the product of Gaussian posteriors, and the
way back to LoRA factors; the moments of a LoRA update ΔW = B·A·scaling under Gaussian factors are
`ivon_lora.lora_update.delta_moments`.

Every formula is elementwise over one tensor (diagonal precisions), with the base / prior mean at zero: the base
model is the adapter-free one (ΔW = 0), and IVON's prior is centred at zero (weight decay pulls towards 0).

Each formula computes in its inputs' precision, at least float32: adapters are stored in float32, and a dense
4096 x 4096 ΔW in float64 doubles the memory traffic of what is elementwise work (float64 inputs stay float64).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

# A variance of 0 (an entry pruned in "zero" mode, or a B initialised at 0 whose variance never moved) would be an
# infinite precision: floor it, so such an entry carries a very large but finite weight.
MIN_VARIANCE = 1e-20


def _real(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` in float32 or float64 (half precisions and integers are promoted to float32)."""
    return tensor if tensor.dtype in (torch.float32, torch.float64) else tensor.float()


def _common(tensors: Sequence[torch.Tensor]) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def precision_of(variance: torch.Tensor) -> torch.Tensor:
    """The precision of a diagonal Gaussian from its variance (floored at MIN_VARIANCE)."""
    return _real(variance).clamp_min(MIN_VARIANCE).reciprocal()


def gradient_matching(
    means: Sequence[torch.Tensor], precisions: Sequence[torch.Tensor], weights: Sequence[float], base_precision
) -> torch.Tensor:
    """Uncertainty-based gradient matching (Daheim et al., ICLR 2024, arXiv 2310.12808), with θ₀ = 0:

        θ = θ₀ + Σ_t α_t H̄⁻¹ (H₀ + H_t)(θ_t − θ₀),   H̄ = H₀ + Σ_t α_t H_t

    `precisions` are the H_t, `base_precision` H₀ (a scalar or a tensor). H_t = 0 gives task arithmetic
    (θ₀ + Σ α_t (θ_t − θ₀)) for any H₀ > 0; H₀ = 0 and equal H_t give the α-weighted average.
    """
    dtype = _common([*means, *precisions])
    base = torch.as_tensor(base_precision, dtype=dtype)
    total = base + sum(alpha * h.to(dtype) for alpha, h in zip(weights, precisions))
    if not bool((total > 0).all()):
        raise ValueError("H₀ + Σ α_t H_t has entries <= 0: give a positive base precision or positive weights")
    numerator = sum(alpha * (base + h.to(dtype)) * m.to(dtype) for alpha, h, m in zip(weights, precisions, means))
    return numerator / total


def product_of_gaussians(
    means: Sequence[torch.Tensor], precisions: Sequence[torch.Tensor], weights: Sequence[float], prior_precision,
    prior_mean: torch.Tensor | float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """The weighted product of posteriors that share one prior (arXiv 2412.08147): (mean, precision) of

        S_α = S₀ + Σ_t α_t (S_t − S₀),   m_α = S_α⁻¹ [S₀ m₀ + Σ_t α_t (S_t m_t − S₀ m₀)]

    With α = 1 and exact Gaussian posteriors p(θ | D_t) ∝ p₀(θ) p(D_t | θ) this is the posterior of the union
    of the data sets; α_t weighs task t's likelihood as a multitask loss weight would.
    """
    dtype = _common([*means, *precisions])
    s0 = torch.as_tensor(prior_precision, dtype=dtype)
    m0 = torch.as_tensor(prior_mean, dtype=dtype)
    precision = s0 + sum(alpha * (s.to(dtype) - s0) for alpha, s in zip(weights, precisions))
    if not bool((precision > 0).all()):
        raise ValueError("The merged precision S₀ + Σ α_t (S_t − S₀) has entries <= 0: use positive weights")
    numerator = s0 * m0 + sum(
        alpha * (s.to(dtype) * m.to(dtype) - s0 * m0) for alpha, s, m in zip(weights, precisions, means)
    )
    return numerator / precision, precision


# Above this size (the larger side), the truncated SVD is randomized (Halko et al. 2011, torch.svd_lowrank): a full
# SVD of a 4096 x 4096 update costs tens of seconds on a CPU, of a 1024 x 4096 one seconds, the randomized one a
# fraction of a second.
EXACT_SVD_LIMIT = 1024
SVD_OVERSAMPLING, SVD_POWER_ITERATIONS = 16, 4


def low_rank_factors(delta: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, B) with B @ A the best rank-`rank` approximation of `delta` (truncated SVD), split evenly: B = U√S,
    A = √S Vᵀ, so that neither factor carries all the scale (scaling 1). Exact up to EXACT_SVD_LIMIT, randomized
    (with oversampling and power iterations) above it."""
    if max(delta.shape) <= EXACT_SVD_LIMIT:
        u, s, vh = torch.linalg.svd(delta.double(), full_matrices=False)
    else:
        q = min(rank + SVD_OVERSAMPLING, *delta.shape)
        u, s, v = torch.svd_lowrank(delta.float(), q=q, niter=SVD_POWER_ITERATIONS)
        u, s, vh = u.double(), s.double(), v.double().T
    root = s[:rank].sqrt()
    return root[:, None] * vh[:rank], u[:, :rank] * root[None, :]
