"""Per-example gradients of LoRA's tensors from one backward pass of a batch (hooks on the `nn.Linear` layers).

The examples of a batch are independent (left padding, per-row attention), so the gradient reaching a layer's output
at row i is example i's alone; for a tensor of an `nn.Linear` (LoRA's A and B are) the per-example gradient is then
the outer product of that gradient with the layer's input, summed over positions. The sensitivity (prediction
variances) and the curvature (diagonal Fisher) both read them; tensors of other modules are looped over.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch


@contextmanager
def requires_grad(parameters):
    """Adapter tensors need grad for the backward passes (a run loaded for inference has them frozen)."""
    previous = [p.requires_grad for p in parameters]
    try:
        for p in parameters:
            p.requires_grad_(True)
        yield
    finally:
        for p, flag in zip(parameters, previous):
            p.requires_grad_(flag)


def linear_owners(model, bound: dict[str, torch.nn.Parameter]) -> dict[int, tuple[torch.nn.Module, str]]:
    """{id(param): (module, "weight" | "bias")} for the tensors of `bound` owned by an nn.Linear."""
    owners = {}
    wanted = {id(p) for p in bound.values()}
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            for role in ("weight", "bias"):
                p = getattr(module, role, None)
                if p is not None and id(p) in wanted:
                    owners[id(p)] = (module, role)
    return owners


class PerExampleLinearGrads:
    """Hooks on nn.Linear `modules` that keep each call's input (forward) and output gradient (each backward); after
    a backward, `grads(num_examples)` gives every example's gradient of each module's weight and bias."""

    def __init__(self, modules):
        self.modules = list(modules)
        self.inputs: dict[torch.nn.Module, list[torch.Tensor]] = {}
        self.output_grads: dict[torch.nn.Module, dict[int, torch.Tensor]] = {}
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
            self.output_grads.setdefault(module, {})[index] = grad.detach()

        output.register_hook(keep)

    def grads(self, num_examples: int, dtype=torch.float64) -> dict[torch.nn.Module, dict[str, torch.Tensor]]:
        """{module: {"weight": B x out x in, "bias": B x out}} of the last backward (modules it did not reach are
        left out); the kept output gradients are then dropped, the inputs stay for the next backward."""
        result = {}
        for module in self.modules:
            grads = self.output_grads.get(module, {})
            weight = bias = None
            for index, x in enumerate(self.inputs.get(module, [])):
                if index not in grads:
                    continue  # no gradient reached this call
                g = grads[index].reshape(num_examples, -1, grads[index].shape[-1]).to(dtype)
                x = x.reshape(num_examples, -1, x.shape[-1]).to(dtype)
                term = torch.einsum("bto,bti->boi", g, x)
                weight = term if weight is None else weight + term
                bias = g.sum(dim=1) if bias is None else bias + g.sum(dim=1)
            if weight is not None:
                result[module] = {"weight": weight, "bias": bias}
        self.output_grads.clear()
        return result

    def paired_grads(self, pairs, num_examples: int, dtype=torch.float64) -> dict:
        """{(a, b): B x out x in} for each `(a, b)` of `pairs`: the per-example product of b's output gradient with
        a's input, the gradient of a weight that maps a's input to b's output (LoRA's ΔW: `a` its A, `b` its B), of
        the last backward; then, as `grads`, the kept output gradients are dropped."""
        result = {}
        for a, b in pairs:
            grads = self.output_grads.get(b, {})
            total = None
            for index, x in enumerate(self.inputs.get(a, [])):
                if index not in grads:
                    continue
                g = grads[index].reshape(num_examples, -1, grads[index].shape[-1]).to(dtype)
                x = x.reshape(num_examples, -1, x.shape[-1]).to(dtype)
                term = torch.einsum("bto,bti->boi", g, x)
                total = term if total is None else total + term
            if total is not None:
                result[(a, b)] = total
        self.output_grads.clear()
        return result

    def reset(self):
        self.inputs.clear()
        self.output_grads.clear()
