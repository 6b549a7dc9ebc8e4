"""Drawing posterior samples into a model's adapter: `PosteriorSampler` (one sample held in the model, or S
stacked without touching it) and `SampleStack` (S samples of every adapter tensor, for one forward pass)."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .core import Posterior


@dataclass(frozen=True)
class SampleStack:
    """S posterior samples of an adapter: `values[key]` is S x the parameter's shape (float32, on its device)."""

    parameters: dict[str, torch.nn.Parameter]
    values: dict[str, torch.Tensor]

    def __len__(self) -> int:
        return len(next(iter(self.values.values()))) if self.values else 0

    def __getitem__(self, index: slice) -> SampleStack:
        """Samples `index` (a slice) of the stack, as views."""
        if not isinstance(index, slice):
            raise TypeError(f"SampleStack indices are slices, got {type(index).__name__}")
        return SampleStack(self.parameters, {key: value[index] for key, value in self.values.items()})


class PosteriorSampler:
    """Draws samples of a `Posterior` into one model's adapter, with all that does not change between samples cached.

    Built once (`Posterior.sampler(model, ...)`), it binds the adapter and keeps the mean and std = sqrt(variance)
    as flat float32 buffers on the adapter's device(s). A sample then costs one `normal_` into a flat noise buffer,
    one `addcmul` per device and foreach copies into the parameters (plus one to save and one to restore them):
    a handful of kernels, whatever the number of adapter tensors.

    Noise: one flat standard-normal vector per sample, over the adapter entries in sorted key order, drawn with
    `generator` on the generator's device; without a generator, with a fresh one seeded by `seed` on the adapter's
    device (and with the global RNG if `seed` is None too). The same seed gives different samples on CPU and on
    CUDA (their generators are different streams), each reproducible; to reproduce a CPU run's samples on a GPU,
    pass a CPU generator (the noise is then copied over, which is slower). Samples are independent of how the
    adapter is spread over devices. The sampler reads the posterior's tensors when it is built.
    """

    def __init__(self, posterior: Posterior, model, generator: torch.Generator | None = None, seed: int | None = None):
        if generator is not None and seed is not None:
            raise ValueError("Pass either a generator or a seed, not both")
        pairs = posterior.bind(model)
        self.parameters = dict(pairs)
        params = [p for _, p in pairs]
        noise_device = generator.device if generator is not None else (params[0].device if params else "cpu")
        if generator is None and seed is not None:
            generator = torch.Generator(noise_device).manual_seed(seed)
        self.generator = generator
        self._noise = torch.empty(sum(p.numel() for p in params), device=noise_device)
        offsets = [0]
        for p in params:
            offsets.append(offsets[-1] + p.numel())

        # One group per device: its parameters (in key order), their entries' ranges in the flat noise, and the
        # flat float32 mean and std that a sample is computed from.
        self._groups = []
        for device in dict.fromkeys(p.device for p in params):
            members = [i for i, p in enumerate(params) if p.device == device]
            keys = [pairs[i][0] for i in members]
            mean = torch.cat([posterior.mean[k].reshape(-1) for k in keys]).to(device, torch.float32)
            std = torch.cat([posterior.variance[k].reshape(-1) for k in keys]).to(device, torch.float32).sqrt_()
            ranges = [(offsets[i], offsets[i + 1]) for i in members]
            whole = len(members) == len(params)  # the common case: the group's noise is the flat buffer itself
            self._groups.append({
                "params": [params[i] for i in members], "keys": keys, "ranges": ranges, "whole": whole,
                "mean": mean, "std": std, "sample": torch.empty_like(mean),
                "saved": [torch.empty_like(params[i]) for i in members],
            })  # fmt: skip
        for group in self._groups:
            sizes = [stop - start for start, stop in group["ranges"]]
            group["views"] = [v.view(p.shape) for v, p in zip(group["sample"].split(sizes), group["params"])]

    def _group_noise(self, group) -> torch.Tensor:
        if group["whole"]:
            noise = self._noise
        else:
            noise = torch.cat([self._noise[start:stop] for start, stop in group["ranges"]])
        return noise.to(group["mean"].device)

    @torch.no_grad()
    def _draw(self, outs: list[torch.Tensor] | None = None) -> None:
        """Draw one sample into each group's flat `outs` buffer (default: its `sample` buffer); the model is untouched."""
        self._noise.normal_(generator=self.generator)
        for i, group in enumerate(self._groups):
            out = group["sample"] if outs is None else outs[i]
            torch.addcmul(group["mean"], group["std"], self._group_noise(group), out=out)

    @contextmanager
    def sample(self):
        """Hold one fresh sample in the adapter; the weights it held before return on exit, also on error."""
        with torch.no_grad():
            for group in self._groups:
                torch._foreach_copy_(group["saved"], group["params"])
        try:
            self._draw()
            with torch.no_grad():
                for group in self._groups:
                    torch._foreach_copy_(group["params"], group["views"])
            yield
        finally:
            with torch.no_grad():
                for group in self._groups:
                    torch._foreach_copy_(group["params"], group["saved"])

    @torch.no_grad()
    def draw(self, num_samples: int) -> SampleStack:
        """The next `num_samples` samples, stacked, without touching the model.

        They are the samples that `num_samples` calls of `sample()` would hold, bit for bit (the same generator
        calls in the same order), e.g. for `ivon_lora.evaluation.batched`.
        """
        if num_samples < 1:
            raise ValueError(f"Invalid num_samples value: {num_samples} (must be >= 1)")
        stacks = [torch.empty(num_samples, g["mean"].numel(), device=g["mean"].device) for g in self._groups]
        for s in range(num_samples):
            self._draw([stack[s] for stack in stacks])
        values = {}
        for group, stack in zip(self._groups, stacks):
            start = 0
            for key, p in zip(group["keys"], group["params"]):
                values[key] = stack[:, start : start + p.numel()].unflatten(1, p.shape)
                start += p.numel()
        return SampleStack(self.parameters, values)
