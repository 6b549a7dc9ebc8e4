"""Prediction variances v = diag(J Σ Jᵀ) of per-example outputs under a diagonal Gaussian posterior.

Two estimators, each over pre-collated batches and any `outputs(model, batch) -> B x K` function:

* `exact_variances`: for every output column k, one backward pass of the batch's summed column k. The examples of
  a batch are independent (left padding, per-row attention), so the gradient reaching a layer's output at row i is
  example i's alone; for an `nn.Linear` adapter tensor (LoRA's A and B) the per-example gradient is then the outer
  product of that gradient with the layer's input, summed over positions, captured by hooks. So a batch costs K
  backward passes, not B x K. Adapter tensors not owned by an `nn.Linear` (e.g. DoRA's magnitudes) fall back to
  a plain loop: one example at a time, one backward per output.
* `sampled_variances`: the unbiased sample variance of the outputs over S posterior samples (the evaluation's
  `PosteriorSampler`): exact in expectation for a model linear in the adapter, noisy with few samples.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch


def _device(model) -> torch.device:
    return next(model.parameters()).device


@contextmanager
def _adapter_requires_grad(parameters):
    """Adapter tensors need grad for the backward passes (a run loaded for inference has them frozen)."""
    previous = [p.requires_grad for p in parameters]
    try:
        for p in parameters:
            p.requires_grad_(True)
        yield
    finally:
        for p, flag in zip(parameters, previous):
            p.requires_grad_(flag)


def _linear_owners(model, bound: dict[str, torch.nn.Parameter]):
    """{id(param): (module, "weight" | "bias")} for the adapter tensors owned by an nn.Linear."""
    owners = {}
    wanted = {id(p) for p in bound.values()}
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            for role in ("weight", "bias"):
                p = getattr(module, role, None)
                if p is not None and id(p) in wanted:
                    owners[id(p)] = (module, role)
    return owners


class _PerExampleLinearGrads:
    """Hooks on nn.Linear modules that keep each call's input (forward) and output gradient (each backward), and turn
    them into every example's squared weight/bias gradient, weighted by the posterior variance and summed."""

    def __init__(self, modules: dict[torch.nn.Module, dict[str, torch.Tensor]]):
        self.modules = modules  # module -> {"weight": variance, "bias": variance} (only the adapter's roles)
        self.inputs: dict[torch.nn.Module, list[torch.Tensor]] = {}
        self.grads: dict[torch.nn.Module, dict[int, torch.Tensor]] = {}
        self.handles = []

    def __enter__(self):
        for module in self.modules:
            self.handles.append(module.register_forward_hook(self._forward))
        return self

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()

    def _forward(self, module, inputs, output):
        calls = self.inputs.setdefault(module, [])
        index = len(calls)
        calls.append(inputs[0].detach())

        def keep(grad, module=module, index=index):
            self.grads.setdefault(module, {})[index] = grad.detach()

        output.register_hook(keep)

    def weighted_square_norms(self, num_examples: int) -> torch.Tensor:
        """sum over adapter entries of variance x (per-example gradient)^2, for the last backward: [B] float64."""
        total = torch.zeros(num_examples, dtype=torch.float64, device=next(iter(self.modules)).weight.device)
        for module, roles in self.modules.items():
            grads = self.grads.get(module, {})
            weight_grad = bias_grad = None
            for index, x in enumerate(self.inputs.get(module, [])):
                if index not in grads:
                    continue  # no gradient reached this call
                g = grads[index].reshape(num_examples, -1, grads[index].shape[-1]).double()
                x = x.reshape(num_examples, -1, x.shape[-1]).double()
                if "weight" in roles:
                    term = torch.einsum("bto,bti->boi", g, x)
                    weight_grad = term if weight_grad is None else weight_grad + term
                if "bias" in roles:
                    term = g.sum(dim=1)
                    bias_grad = term if bias_grad is None else bias_grad + term
            if weight_grad is not None:
                total += (weight_grad.square() * roles["weight"].double()).sum(dim=(1, 2))
            if bias_grad is not None:
                total += (bias_grad.square() * roles["bias"].double()).sum(dim=1)
        self.grads.clear()
        return total

    def reset(self):
        self.inputs.clear()
        self.grads.clear()


def exact_variances(model, posterior, batches, outputs, progress=None) -> torch.Tensor:
    """N x K float64 v_ik = sum_j variance_j (d output_ik / d adapter_j)^2, in batch order (absent outputs: 0).

    `outputs(model, batch)` gives B x K outputs (-inf marks an absent choice); the model must be in eval mode
    (dropout off), and the adapter holds the posterior mean (the caller's job).
    """
    bound = dict(posterior.bind(model))
    device = _device(model)
    variance = {key: posterior.variance[key].to(device) for key in bound}
    owners = _linear_owners(model, bound)
    params = list(bound.values())
    looped = [key for key, p in bound.items() if id(p) not in owners]
    modules: dict[torch.nn.Module, dict[str, torch.Tensor]] = {}
    for key, p in bound.items():
        if id(p) in owners:
            module, role = owners[id(p)]
            modules.setdefault(module, {})[role] = variance[key]
    chunks = []
    with _adapter_requires_grad(params), torch.enable_grad():
        for batch in batches:
            if progress is not None:
                progress.update()
            batch = {k: v.to(device) for k, v in batch.items()}
            if looped:
                chunks.append(_looped_variances(model, batch, outputs, bound, variance))
            else:
                chunks.append(_hooked_variances(model, batch, outputs, modules, params))
    return _concat(chunks)


def _hooked_variances(model, batch, outputs, modules, params) -> torch.Tensor:
    with _PerExampleLinearGrads(modules) as hooks:
        values = outputs(model, batch)
        size, columns = values.shape
        result = torch.zeros(size, columns, dtype=torch.float64, device=values.device)
        present = torch.isfinite(values)
        for k in range(columns):
            if not bool(present[:, k].any()):
                continue
            column = values[:, k].masked_fill(~present[:, k], 0.0).sum()
            torch.autograd.grad(column, params, retain_graph=k < columns - 1, allow_unused=True)
            result[:, k] = hooks.weighted_square_norms(size)
    return result.masked_fill(~present, 0.0).cpu()


def _looped_variances(model, batch, outputs, bound, variance) -> torch.Tensor:
    keys = list(bound)
    params = [bound[key] for key in keys]
    rows = []
    for i in range(batch["input_ids"].shape[0]):
        values = outputs(model, {k: v[i : i + 1] for k, v in batch.items()})[0]
        row = torch.zeros(values.shape[0], dtype=torch.float64)
        for k in range(values.shape[0]):
            if not torch.isfinite(values[k]):
                continue
            grads = torch.autograd.grad(values[k], params, retain_graph=True, allow_unused=True)
            row[k] = sum(float((g.double().square() * variance[key].double()).sum())
                         for key, g in zip(keys, grads) if g is not None)  # fmt: skip
        rows.append(row)
    return torch.stack(rows)


@torch.no_grad()
def sampled_variances(model, posterior, batches, outputs, num_samples: int, seed: int = 0,
                      progress=None) -> torch.Tensor:  # fmt: skip
    """N x K float64 unbiased sample variances of `outputs` over `num_samples` >= 2 posterior samples (the
    evaluation's sampler, seeded by `seed`); absent outputs 0. The adapter's weights are restored after."""
    if num_samples < 2:
        raise ValueError(f"Invalid num_samples value: {num_samples} (a sample variance needs at least 2)")
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
        total = values if total is None else total + values
        total_sq = values.square() if total_sq is None else total_sq + values.square()
    mean = total / num_samples
    return ((total_sq - num_samples * mean.square()) / (num_samples - 1)).clamp_min(0.0).masked_fill(~present, 0.0)


def _concat(chunks: list[torch.Tensor], fill: float = 0.0) -> torch.Tensor:
    """Row-wise concatenation of B x K_b chunks padded to the widest K with `fill`."""
    width = max(chunk.shape[1] for chunk in chunks)
    return torch.cat([torch.nn.functional.pad(c, (0, width - c.shape[1]), value=fill) for c in chunks])
