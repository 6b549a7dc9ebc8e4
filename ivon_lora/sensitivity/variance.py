"""Prediction covariances V = J Σ Jᵀ of per-example outputs under a diagonal Gaussian posterior: the K x K matrix
(`full=True`), or its diagonal v = diag(J Σ Jᵀ).

Two estimators, each over pre-collated batches and any `outputs(model, batch) -> B x K` function:

* `exact_variances`: for every output column k, one backward pass of the batch's summed column k. The examples of
  a batch are independent (left padding, per-row attention), so the gradient reaching a layer's output at row i is
  example i's alone; for an `nn.Linear` adapter tensor (LoRA's A and B) the per-example gradient is then the outer
  product of that gradient with the layer's input, summed over positions, captured by hooks. So a batch costs K
  backward passes, not B x K; the full matrix keeps the K per-example gradients and pairs them. Adapter tensors not owned by an `nn.Linear` (e.g. DoRA's magnitudes) fall back to
  a plain loop: one example at a time, one backward per output.
* `sampled_variances`: the unbiased sample (co)variance of the outputs over S posterior samples (the evaluation's
  `PosteriorSampler`): exact in expectation for a model linear in the adapter, noisy with few samples.
"""

from __future__ import annotations

import torch

from ..per_example import PerExampleLinearGrads, linear_owners, requires_grad


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _example_gradients(hooks: PerExampleLinearGrads, modules: dict, num_examples: int) -> list[tuple]:
    """(per-example gradient B x n, its variance n) of every adapter tensor the last backward reached, float64."""
    pairs = []
    for module, grads in hooks.grads(num_examples).items():
        for role, variance in modules[module].items():
            pairs.append((grads[role].flatten(1), variance.double().flatten()))
    return pairs


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
                chunks.append(_looped_covariances(model, batch, outputs, bound, variance))
            else:
                chunks.append(_hooked_covariances(model, batch, outputs, modules, params))
    covariance = _concat_square(chunks)
    return covariance if full else torch.diagonal(covariance, dim1=1, dim2=2).clone()


def _pair(first: list[tuple], second: list[tuple]) -> torch.Tensor:
    """Σ_j variance_j g1_ij g2_ij per example over the adapter tensors both gradients reached: B float64."""
    return sum(((g1 * variance) * g2).sum(dim=1) for (g1, variance), (g2, _) in zip(first, second))


def _hooked_covariances(model, batch, outputs, modules, params) -> torch.Tensor:
    with PerExampleLinearGrads(modules) as hooks:
        values = outputs(model, batch)
        size, columns = values.shape
        result = torch.zeros(size, columns, columns, dtype=torch.float64, device=values.device)
        present = torch.isfinite(values)
        gradients = {}
        for k in range(columns):
            if not bool(present[:, k].any()):
                continue
            column = values[:, k].masked_fill(~present[:, k], 0.0).sum()
            torch.autograd.grad(column, params, retain_graph=k < columns - 1, allow_unused=True)
            gradients[k] = _example_gradients(hooks, modules, size)
            for other, earlier in gradients.items():  # the K x K matrix from the K gradients, each pair once
                value = _pair(gradients[k], earlier)
                result[:, k, other] = result[:, other, k] = value
    both = present[:, :, None] & present[:, None, :]
    return result.masked_fill(~both, 0.0).cpu()


def _looped_covariances(model, batch, outputs, bound, variance) -> torch.Tensor:
    keys = list(bound)
    params = [bound[key] for key in keys]
    rows = []
    for i in range(batch["input_ids"].shape[0]):
        values = outputs(model, {k: v[i : i + 1] for k, v in batch.items()})[0]
        grads = {}
        for k in range(values.shape[0]):
            if torch.isfinite(values[k]):
                found = torch.autograd.grad(values[k], params, retain_graph=True, allow_unused=True)
                grads[k] = [(g.double().flatten(), variance[key].double().flatten())
                            for key, g in zip(keys, found) if g is not None]  # fmt: skip
        row = torch.zeros(values.shape[0], values.shape[0], dtype=torch.float64)
        for k, first in grads.items():
            for other, second in grads.items():
                row[k, other] = sum(float((g1 * v * g2).sum()) for (g1, v), (g2, _) in zip(first, second))
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
