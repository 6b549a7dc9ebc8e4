"""Prediction covariances V = J Σ Jᵀ of per-example outputs under a diagonal Gaussian posterior: the K x K matrix
(`full=True`), or its diagonal v = diag(J Σ Jᵀ).

Two estimators, each over pre-collated batches and any `outputs(model, batch) -> B x K` function:

* `exact_variances`: for every output column k, one backward pass of the batch's summed column k. The examples of
  a batch are independent (left padding, per-row attention), so the gradient reaching a layer's output at row i is
  example i's alone; for an `nn.Linear` adapter tensor (LoRA's A and B) the per-example gradient is then the outer
  product of that gradient with the layer's input, summed over positions, captured by hooks. So a batch costs K
  backward passes, not B x K. The full matrix keeps the batch's K per-example gradients to pair them (memory
  K x B x the adapter's size, in float64); the diagonal keeps none. Adapter tensors not owned by an `nn.Linear`
  (e.g. DoRA's magnitudes) fall back to a plain loop: one example at a time, one backward per output.
* `sampled_variances`: the unbiased sample (co)variance of the outputs over S posterior samples (the evaluation's
  `PosteriorSampler`): exact in expectation for a model linear in the adapter, noisy with few samples.
"""

from __future__ import annotations

import torch

from ..per_example import PerExampleLinearGrads, linear_owners, requires_grad


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _example_gradients(hooks: PerExampleLinearGrads, modules: dict, num_examples: int) -> dict:
    """{(module, role): (per-example gradient B x n, its variance n)} of the adapter tensors the last backward
    reached, float64."""
    return {(module, role): (grads[role].flatten(1), modules[module][role].double().flatten())
            for module, grads in hooks.grads(num_examples).items() for role in modules[module]}  # fmt: skip


def exact_variances(model, posterior, batches, outputs, progress=None, full: bool = False) -> torch.Tensor:
    """N x K float64 v_ik = sum_j variance_j (d output_ik / d adapter_j)^2, in batch order (absent outputs: 0); with
    `full`, N x K x K V_ikl = sum_j variance_j (d output_ik / d adapter_j)(d output_il / d adapter_j).

    `outputs(model, batch)` gives B x K outputs (-inf marks an absent choice); the model must be in eval mode
    (dropout off), and the adapter holds the posterior mean (the caller's job).
    """
    bound = dict(posterior.bind(model))
    device = _device(model)
    variance = {key: posterior.variance[key].to(device) for key in bound}
    owners = linear_owners(model, bound)
    params = list(bound.values())
    looped = [key for key, p in bound.items() if id(p) not in owners]
    modules: dict[torch.nn.Module, dict[str, torch.Tensor]] = {}
    for key, p in bound.items():
        if id(p) in owners:
            module, role = owners[id(p)]
            modules.setdefault(module, {})[role] = variance[key]
    chunks = []
    with requires_grad(params), torch.enable_grad():
        for batch in batches:
            if progress is not None:
                progress.update()
            batch = {k: v.to(device) for k, v in batch.items()}
            if looped:
                chunks.append(_looped_covariances(model, batch, outputs, bound, variance, full))
            else:
                chunks.append(_hooked_covariances(model, batch, outputs, modules, params, full))
    covariance = _concat_square(chunks)
    return covariance if full else torch.diagonal(covariance, dim1=1, dim2=2).clone()


def _pair(first: dict, second: dict):
    """Σ_j variance_j g1_ij g2_ij per example, over the adapter tensors both gradients reached (B float64, or a
    float for one example's flat gradients)."""
    return sum(((g1 * variance) * second[key][0]).sum(dim=-1) for key, (g1, variance) in first.items() if key in second)


def _hooked_covariances(model, batch, outputs, modules, params, full: bool) -> torch.Tensor:
    """B x K x K covariances of one batch (only the diagonal filled unless `full`)."""
    with PerExampleLinearGrads(modules) as hooks:
        values = outputs(model, batch)
        size, columns = values.shape
        result = torch.zeros(size, columns, columns, dtype=torch.float64, device=values.device)
        present = torch.isfinite(values)
        kept = {}
        for k in range(columns):
            if not bool(present[:, k].any()):
                continue
            column = values[:, k].masked_fill(~present[:, k], 0.0).sum()
            torch.autograd.grad(column, params, retain_graph=k < columns - 1, allow_unused=True)
            gradients = _example_gradients(hooks, modules, size)
            result[:, k, k] = _pair(gradients, gradients)
            if full:  # each pair with the outputs before it, once
                for other, earlier in kept.items():
                    result[:, k, other] = result[:, other, k] = _pair(gradients, earlier)
                kept[k] = gradients
    both = present[:, :, None] & present[:, None, :]
    return result.masked_fill(~both, 0.0).cpu()


def _looped_covariances(model, batch, outputs, bound, variance, full: bool) -> torch.Tensor:
    keys = list(bound)
    params = [bound[key] for key in keys]
    rows = []
    for i in range(batch["input_ids"].shape[0]):
        values = outputs(model, {k: v[i : i + 1] for k, v in batch.items()})[0]
        row = torch.zeros(values.shape[0], values.shape[0], dtype=torch.float64)
        kept = {}
        for k in range(values.shape[0]):
            if not torch.isfinite(values[k]):
                continue
            found = torch.autograd.grad(values[k], params, retain_graph=True, allow_unused=True)
            gradients = {key: (g.double().flatten(), variance[key].double().flatten())
                         for key, g in zip(keys, found) if g is not None}  # fmt: skip
            row[k, k] = float(_pair(gradients, gradients))
            if full:
                for other, earlier in kept.items():
                    row[k, other] = row[other, k] = float(_pair(gradients, earlier))
                kept[k] = gradients
        rows.append(row)
    return torch.stack(rows)


@torch.no_grad()
def sampled_variances(model, posterior, batches, outputs, num_samples: int, seed: int = 0,
                      progress=None, full: bool = False) -> torch.Tensor:  # fmt: skip
    """N x K float64 unbiased sample variances of `outputs` over `num_samples` >= 2 posterior samples (the
    evaluation's sampler, seeded by `seed`); with `full`, N x K x K sample covariances; absent outputs 0. The
    adapter's weights are restored after."""
    if num_samples < 2:
        raise ValueError(f"Invalid num_samples value: {num_samples!r} (must be >= 2: a sample variance needs two)")
    device = _device(model)
    batches = [{k: v.to(device) for k, v in batch.items()} for batch in batches]
    sampler = posterior.sampler(model, generator=torch.Generator().manual_seed(seed))
    total = total_sq = None
    for _ in range(num_samples):
        with sampler.sample():
            values = []
            for batch in batches:
                if progress is not None:
                    progress.update()
                values.append(outputs(model, batch).double().cpu())
        values = _concat(values, fill=float("-inf"))
        present = torch.isfinite(values)
        values = values.masked_fill(~present, 0.0)
        outer = values[:, :, None] * values[:, None, :]
        total = values if total is None else total + values
        total_sq = outer if total_sq is None else total_sq + outer
    mean = total / num_samples
    covariance = (total_sq - num_samples * mean[:, :, None] * mean[:, None, :]) / (num_samples - 1)
    covariance = covariance.masked_fill(~(present[:, :, None] & present[:, None, :]), 0.0)
    if full:
        return covariance
    return torch.diagonal(covariance, dim1=1, dim2=2).clamp_min(0.0).clone()


def _concat_square(chunks: list[torch.Tensor]) -> torch.Tensor:
    """Row-wise concatenation of B x K_b x K_b chunks padded with zeros to the widest K."""
    width = max(chunk.shape[1] for chunk in chunks)
    return torch.cat([torch.nn.functional.pad(c, (0, width - c.shape[1], 0, width - c.shape[1])) for c in chunks])


def _concat(chunks: list[torch.Tensor], fill: float = 0.0) -> torch.Tensor:
    """Row-wise concatenation of B x K_b chunks padded to the widest K with `fill`."""
    width = max(chunk.shape[1] for chunk in chunks)
    return torch.cat([torch.nn.functional.pad(c, (0, width - c.shape[1]), value=fill) for c in chunks])
