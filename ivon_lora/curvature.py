"""The curvature of the loss at the posterior mean, measured independently of IVON, and the posterior re-estimated
from it (`refined`).

Every curvature here is on the scale of IVON's `h`: the diagonal of the Hessian of the average loss over the split
(per example), so that a posterior's precision is ess·(h + δ) with δ the prior precision (weight decay).

- `diagonal_fisher`: Σ_i Σ_k p_ik (∂ log p_ik / ∂θ)² / N, the Fisher with labels drawn from the model. Exact
  (`samples=None`): the expectation over the K labels, equal to the diagonal generalised Gauss-Newton (GGN) of the
  softmax cross-entropy. Sampled (`samples=S`): S labels drawn from the model per example, an independent estimate.
- `price_hessian`: IVON's own estimator ε·g/σ² (Price's theorem: E[ε·g(m + ε)] = σ² E[H]) averaged over `samples`
  posterior samples for every batch at learning rate 0, as antithetic pairs ±ε (same expectation, without the
  noise of the gradient at the mean): the posterior-smoothed diagonal Hessian that IVON's `h` tracks in training.
- `data_hessian`, `debiased_hessian`: IVON's `h` read back from a posterior, and its Adam-style debiased data part
  (h − β2^T·h0) / (1 − β2^T), which removes the weight that the never-debiased EMA still puts on `hess_init`.
- `delta_fisher`, `delta_precision`: the same Fisher for each LoRA update ΔW = scaling·B·A entry by entry, and the
  precision the posterior's factor variances imply for it: the comparison in the coordinates the base model sees.
- `agreement`: per adapter matrix, the Spearman correlation and the dynamic ranges of two curvatures.

Objective-agnostic: each takes the model's `outputs(model, batch) -> B x K` answer logits (-inf marks an absent
choice) and batches holding their `labels`; `ivon_lora.choice.curvature` binds the multiple-choice objective.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch

from .lora_update import delta_moments
from .per_example import PerExampleLinearGrads, linear_owners, requires_grad


def _bound(model, posterior) -> dict[str, torch.nn.Parameter]:
    return dict(posterior.bind(model))


def _present_log_probs(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    present = torch.isfinite(logits)
    log_probs = torch.log_softmax(logits.double().masked_fill(~present, float("-inf")), dim=-1)
    return log_probs, present


@contextmanager
def _evaluating(model):
    """Dropout off while measuring; the model's training mode back after."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _fisher_passes(model, params, modules, batches, outputs, samples, seed, progress, accumulate) -> int:
    """The backward passes of the Fisher: per batch, one per label k weighted by p_k (`samples` None: exact) or one per
    label drawn from the model (`samples` of weight 1/samples), each of the batch's summed log-probabilities of those
    labels; `accumulate(hooks, weight, size)` reads its per-example gradients. Returns the number of examples."""
    generator = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    count = 0
    with _evaluating(model), requires_grad(params), torch.enable_grad(), PerExampleLinearGrads(modules) as hooks:
        for batch in batches:
            if progress is not None:
                progress.update()
            batch = {k: v.to(device) for k, v in batch.items()}
            hooks.reset()
            log_probs, present = _present_log_probs(outputs(model, batch))
            size, columns = log_probs.shape
            probs = log_probs.detach().exp().cpu()
            if samples is None:  # every label k (where present), weighted by its probability
                picks = [torch.full((size,), k) for k in range(columns) if bool(present[:, k].any())]
                weights = [probs[:, int(pick[0])] for pick in picks]
            else:  # labels drawn from the model, each of weight 1 / samples
                picks = [torch.multinomial(probs.float(), 1, generator=generator)[:, 0] for _ in range(samples)]
                weights = [torch.full((size,), 1.0 / samples, dtype=torch.float64)] * samples
            for index, (pick, weight) in enumerate(zip(picks, weights)):
                pick = pick.to(log_probs.device)[:, None]
                # an absent choice (-inf, probability 0) of a row adds nothing: its term is 0, not -inf
                chosen = log_probs.gather(1, pick)[:, 0].masked_fill(~present.gather(1, pick)[:, 0], 0.0)
                torch.autograd.grad(chosen.sum(), params, retain_graph=index < len(picks) - 1, allow_unused=True)
                accumulate(hooks, weight, size)
            count += size
    return count


def diagonal_fisher(model, posterior, batches, outputs, samples: int | None = None, seed: int = 0,
                    progress=None) -> dict[str, torch.Tensor]:  # fmt: skip
    """The diagonal Fisher at the adapter's current weights (the caller puts the mean there), per example: exact over
    the K labels (`samples` None, the GGN) or from `samples` labels drawn from the model per example. float64, CPU."""
    bound = _bound(model, posterior)
    owners = linear_owners(model, bound)
    if len(owners) != len(bound):
        missing = sorted(key for key, p in bound.items() if id(p) not in owners)
        raise ValueError(f"The curvature needs adapter tensors of nn.Linear layers (LoRA's A and B); {missing[:3]} are "
                         "not")  # fmt: skip
    key_of = {id(p): key for key, p in bound.items()}
    total = {key: torch.zeros(p.shape, dtype=torch.float64) for key, p in bound.items()}

    def accumulate(hooks, weight, size):
        for module, grads in hooks.grads(size).items():
            for role, grad in grads.items():
                p = getattr(module, role, None)
                if p is not None and id(p) in key_of:
                    w = weight.to(grad.device).view(-1, *([1] * (grad.dim() - 1)))
                    total[key_of[id(p)]] += (w * grad.square()).sum(dim=0).cpu()

    modules = {owners[id(p)][0] for p in bound.values()}
    count = _fisher_passes(model, list(bound.values()), modules, batches, outputs, samples, seed, progress, accumulate)
    return {key: value / max(count, 1) for key, value in total.items()}


def lora_layers(model, posterior) -> dict[str, tuple]:
    """{path: (lora_A, lora_B, scaling, a_key, b_key)} for every PEFT LoRA layer whose A and B the posterior holds."""
    keys = {id(p): key for key, p in _bound(model, posterior).items()}
    layers = {}
    for name, module in model.named_modules():
        a_modules, b_modules = getattr(module, "lora_A", None), getattr(module, "lora_B", None)
        if not isinstance(a_modules, torch.nn.ModuleDict) or not isinstance(b_modules, torch.nn.ModuleDict):
            continue
        for adapter, a in a_modules.items():
            b = b_modules[adapter]
            a_key, b_key = keys.get(id(a.weight)), keys.get(id(b.weight))
            if a_key is not None and b_key is not None:
                layers[a_key.rsplit(".lora_A", 1)[0]] = (a, b, float(module.scaling[adapter]), a_key, b_key)
    return layers


def delta_fisher(model, posterior, batches, outputs, samples: int | None = None, seed: int = 0,
                 progress=None) -> dict[str, torch.Tensor]:  # fmt: skip
    """The diagonal Fisher (exact: the GGN; or from `samples` drawn labels) of each LoRA layer's update
    ΔW = scaling·B·A, entry by entry (out x in), per example: the curvature in the coordinates that merging and the
    base model see. float64, CPU."""
    layers = lora_layers(model, posterior)
    if not layers:
        raise ValueError("The model has no PEFT LoRA layers whose A and B the posterior holds")
    pairs = [(a, b) for a, b, _, _, _ in layers.values()]
    path_of = {(id(a), id(b)): (path, scaling) for path, (a, b, scaling, _, _) in layers.items()}
    total = {path: torch.zeros(b.weight.shape[0], a.weight.shape[1], dtype=torch.float64)
             for path, (a, b, _, _, _) in layers.items()}  # fmt: skip

    def accumulate(hooks, weight, size):
        for (a, b), grad in hooks.paired_grads(pairs, size).items():
            path, scaling = path_of[(id(a), id(b))]
            # B's output gradient is scaling x the layer's: ∂L/∂ΔW = (g_B / scaling) xᵀ
            total[path] += (weight.to(grad.device).view(-1, 1, 1) * (grad / scaling).square()).sum(0).cpu()

    params = list(_bound(model, posterior).values())
    modules = [m for pair in pairs for m in pair]
    count = _fisher_passes(model, params, modules, batches, outputs, samples, seed, progress, accumulate)
    return {path: value / max(count, 1) for path, value in total.items()}


def delta_precision(model, posterior) -> dict[str, torch.Tensor]:
    """The precision 1 / Var(ΔW) that the posterior's independent factor entries give each LoRA update entry (exact
    for independent Gaussian factors, `lora_update.delta_moments`), per layer path, float64."""
    result = {}
    for path, (_, _, scaling, a_key, b_key) in lora_layers(model, posterior).items():
        m, v = posterior.mean, posterior.variance
        _, variance = delta_moments(m[a_key].double(), v[a_key].double(), m[b_key].double(), v[b_key].double(), scaling)
        result[path] = 1.0 / variance.clamp_min(1e-300)
    return result


def price_hessian(
    model, posterior, batches, loss, samples: int, seed: int = 0, progress=None
) -> dict[str, torch.Tensor]:
    """IVON's Price estimator of the diagonal Hessian of the average loss, E[ε·g]/σ² with ε ~ N(0, σ²) the
    posterior's noise, averaged over `samples` antithetic pairs per batch and over the batches (weighted by their
    size). `loss(model, batch)` is the batch's mean training loss. float64, CPU; the adapter is left at its weights."""
    bound = _bound(model, posterior)
    keys = list(bound)
    params = [bound[key] for key in keys]
    device = next(model.parameters()).device
    std = {key: posterior.variance[key].to(device=device, dtype=torch.float32).sqrt() for key in keys}
    total = {key: torch.zeros(bound[key].shape, dtype=torch.float64) for key in keys}
    generator = torch.Generator().manual_seed(seed)
    saved = [p.detach().clone() for p in params]
    count = 0
    try:
        with _evaluating(model), requires_grad(params), torch.enable_grad():
            for batch in batches:
                if progress is not None:
                    progress.update()
                batch = {k: v.to(device) for k, v in batch.items()}
                size = int(batch["labels"].shape[0])
                for _ in range(samples):
                    noise = [
                        torch.randn(p.shape, generator=generator).to(device) * std[key] for key, p in zip(keys, params)
                    ]
                    grads = []
                    for sign in (1.0, -1.0):
                        with torch.no_grad():
                            for p, base, eps in zip(params, saved, noise):
                                p.copy_(base + sign * eps)
                        grads.append(torch.autograd.grad(loss(model, batch), params, allow_unused=True))
                    for key, eps, plus, minus in zip(keys, noise, *grads):
                        if plus is None:
                            continue
                        variance = std[key].double().square()
                        estimate = eps.double() * (plus.double() - minus.double()) / (2.0 * variance)
                        total[key] += (size / samples) * torch.where(variance > 0, estimate, 0.0).cpu()
                count += size
    finally:
        with torch.no_grad():
            for p, base in zip(params, saved):
                p.copy_(base)
    return {key: value / max(count, 1) for key, value in total.items()}


# ------------------------------------------------------------------ IVON's h, read back from a posterior


def data_hessian(posterior) -> dict[str, torch.Tensor]:
    """IVON's h per entry: 1/(ess·v) − δ (float64), from the posterior's ess and prior precision δ."""
    ess, decay = posterior.config.get("ess"), posterior.config.get("weight_decay") or 0.0
    if not ess:
        raise ValueError("The posterior records no single ess (one per parameter group): its h cannot be read back")
    return {key: 1.0 / (ess * v.double().clamp_min(1e-300)) - decay for key, v in posterior.variance.items()}


def debiased_hessian(posterior) -> dict[str, torch.Tensor]:
    """The data part of IVON's h: (h − β2^T·h0) / (1 − β2^T), T the optimizer steps, h0 = hess_init."""
    hyper = posterior.config.get("hyperparameters", {})
    beta2, hess_init, steps = hyper.get("beta2"), hyper.get("hess_init"), posterior.config.get("step")
    if beta2 is None or hess_init is None or not steps:
        raise ValueError("The posterior records no beta2, hess_init and step: its h cannot be debiased")
    kept = beta2**steps
    return {key: (h - kept * hess_init) / (1.0 - kept) for key, h in data_hessian(posterior).items()}


# ------------------------------------------------------------------ comparing two curvatures


def _average_ranks(values: torch.Tensor) -> torch.Tensor:
    order = torch.argsort(values, stable=True)
    ranks = torch.empty(values.numel(), dtype=torch.float64)
    sorted_values = values[order]
    _, counts = torch.unique_consecutive(sorted_values, return_counts=True)
    ends = torch.cumsum(counts, 0)
    starts = ends - counts
    tied = ((starts + ends - 1).double() / 2.0).repeat_interleave(counts)  # the mean rank of each run of ties
    ranks[order] = tied
    return ranks


def spearman(x: torch.Tensor, y: torch.Tensor) -> float:
    """Spearman's rank correlation (ties get their average rank); NaN when either side is constant."""
    rx, ry = _average_ranks(x.flatten().double()), _average_ranks(y.flatten().double())
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denominator = float(rx.norm() * ry.norm())
    return float((rx * ry).sum()) / denominator if denominator > 0 else math.nan


def dynamic_range(values: torch.Tensor) -> float:
    """max / median of the positive entries (NaN if none)."""
    positive = values.flatten().double()
    positive = positive[positive > 0]
    return float(positive.max() / positive.median()) if positive.numel() else math.nan


def agreement(estimate: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> dict:
    """Per adapter matrix, and as the median over matrices: Spearman(estimate, reference) and each one's dynamic
    range."""
    matrices = {key: {"spearman": spearman(estimate[key], reference[key]),
                      "dynamic_range": dynamic_range(estimate[key]),
                      "reference_dynamic_range": dynamic_range(reference[key])} for key in sorted(reference)}  # fmt: skip
    values = torch.tensor([m["spearman"] for m in matrices.values()], dtype=torch.float64)
    values = values[~values.isnan()]
    return {
        "spearman_median": float(values.median()) if values.numel() else math.nan,
        "spearman_min": float(values.min()) if values.numel() else math.nan,
        "spearman_max": float(values.max()) if values.numel() else math.nan,
        "dynamic_range_median": float(torch.tensor([m["dynamic_range"] for m in matrices.values()]).nanmedian()),
        "reference_dynamic_range_median": float(
            torch.tensor([m["reference_dynamic_range"] for m in matrices.values()]).nanmedian()
        ),
        "matrices": matrices,
    }


# ------------------------------------------------------------------ the refined posterior


def refined(posterior, curvature: dict[str, torch.Tensor], ess: float, prior_precision: float, record: dict):
    """The posterior with the same mean and the precision ess·(max(h, 0) + δ) from `curvature` h (per example, as
    IVON's) and prior precision δ > 0; `record` (method, data, ...) goes into its config under "refine"."""
    from .posterior import Posterior

    if not (math.isfinite(ess) and ess > 0):
        raise ValueError(f"Invalid ess value: {ess!r} (must be a finite number > 0)")
    if not (math.isfinite(prior_precision) and prior_precision > 0):
        raise ValueError(f"Invalid prior_precision value: {prior_precision!r} (must be a finite number > 0)")
    variance = {key: (1.0 / (ess * (curvature[key].clamp_min(0.0) + prior_precision))).float()
                for key in posterior.mean}  # fmt: skip
    negative = sum(int((curvature[key] < 0).sum()) for key in posterior.mean)
    config = {**posterior.config, "ess": ess, "weight_decay": prior_precision,
              "refine": {**record, "ess": ess, "prior_precision": prior_precision, "negative_curvature_entries": negative,
                         "from": {k: posterior.config.get(k) for k in ("ess", "weight_decay", "step", "optimizer")}}}  # fmt: skip
    config.pop("param_groups", None)  # the optimizer's per-group ess / decay no longer describe this precision
    return Posterior({key: value.clone() for key, value in posterior.mean.items()}, variance, config)
