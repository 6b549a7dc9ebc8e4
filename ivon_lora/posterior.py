"""The posterior artifact: a diagonal Gaussian over the adapter weights, saved next to the PEFT adapter.

Files (names in `ivon_lora.filenames`): the mean is the PEFT adapter itself (`adapter_model.safetensors`);
`posterior.safetensors` holds one variance tensor per adapter tensor, under the same key; `posterior_config.json`
holds ess, the prior precision, the step, the optimizer's hyperparameters, the adapter's shape settings and any
test-time transformation (pruning, temperature). The set loads without the optimizer, the Trainer or the base
model: pruning and temperature are operations on these tensors alone.

Longer than this project's ~400-line guide on purpose: the artifact, its checks on load, its test-time transforms
and its sampler all work on the same key-to-parameter binding, which would otherwise be split across modules.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from ._version import __version__
from .errors import RunDirError
from .fileio import atomic_write, read_json, read_tensors
from .filenames import ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME, POSTERIOR_CONFIG_NAME, POSTERIOR_WEIGHTS_NAME
from .output_dir import check_run_files
from .vocabulary import PRUNE_CRITERIA, PRUNE_MODES, PRUNE_SCOPES

# Adapter settings that must agree between adapter_config.json and the posterior saved with it.
ADAPTER_KEYS = ("r", "lora_alpha", "target_modules")
# posterior_config.json's record of the adapter it was saved with (`adapter_hash`).
ADAPTER_HASH_KEY = "adapter_sha256"
# posterior_config.json's (and the reports') record of the run whose adapter / posterior this run started from
# (`ivon_lora.continual`).
PRIOR_RUN_KEY = "prior_run"
# The posterior format this version writes; older ones in COMPATIBLE_FORMAT_VERSIONS load with a warning.
FORMAT_VERSION = 2
COMPATIBLE_FORMAT_VERSIONS = (1, 2)


def adapter_parameters(model) -> dict[str, torch.nn.Parameter]:
    """The adapter's parameters keyed as they are saved: PEFT adapter keys, else trainable parameter names.

    For a PEFT model the adapter is found by PEFT's own key filter (adapter name dropped), so a model loaded
    for inference, whose adapter does not require grad, binds too.
    """
    if hasattr(model, "peft_config"):
        from peft.utils import get_peft_model_state_dict

        named = dict(model.named_parameters())
        return get_peft_model_state_dict(model, state_dict=named, adapter_name=adapter_name(model),
                                         save_embedding_layers=False)  # fmt: skip
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def adapter_name(model) -> str:
    """The name of a PEFT model's active adapter ("default" unless the user named it)."""
    name = getattr(model, "active_adapter", "default")
    return name if isinstance(name, str) else name[0]


def adapter_hash(mean: dict[str, torch.Tensor]) -> str:
    """SHA-256 of the adapter tensors (names, shapes, float32 values): ties a posterior to its adapter."""
    digest = hashlib.sha256()
    for key in sorted(mean):
        tensor = mean[key].detach().float().cpu().contiguous()
        digest.update(f"{key}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


def _adapter_settings(config: dict) -> dict:
    settings = {key: config.get(key) for key in ADAPTER_KEYS}
    if isinstance(settings["target_modules"], (list, set, tuple)):
        settings["target_modules"] = sorted(settings["target_modules"])
    return settings


@dataclass
class Posterior:
    """N(mean, diag(variance)) over the adapter tensors, keyed as in `adapter_model.safetensors`.

    A run dir holds it as the PEFT adapter (the mean) and `posterior.safetensors` (the variance, same keys) with
    `posterior_config.json`; it loads without the optimizer, the Trainer or the base model.

    Example:
        ```python
        posterior = Posterior.load("runs/demo")
        pruned = posterior.prune(0.05).with_temperature(2.0)
        with pruned.sample(run.model, generator=torch.Generator().manual_seed(0)):
            ...  # the model holds one posterior sample here
        ```

    Args:
        mean: the adapter tensors (the posterior mean), by key.
        variance: the per-entry variances, by the same keys and shapes.
        config: `posterior_config.json`'s content: ess, prior precision, step, hyperparameters, LoRA settings, and
            any pruning or temperature applied.

    Raises:
        ValueError: `mean` and `variance` do not have the same keys.
    """

    mean: dict[str, torch.Tensor]
    variance: dict[str, torch.Tensor]
    config: dict = field(default_factory=dict)

    def __post_init__(self):
        missing, unexpected = sorted(set(self.mean) - set(self.variance)), sorted(set(self.variance) - set(self.mean))
        if missing or unexpected:
            raise ValueError(
                f"Adapter and posterior tensors differ: no variance for {missing[:5]}, no adapter tensor for "
                f"{unexpected[:5]}"
            )
        for key, mean in self.mean.items():
            if mean.shape != self.variance[key].shape:
                raise ValueError(
                    f"{key}: adapter shape {tuple(mean.shape)} != posterior {tuple(self.variance[key].shape)}"
                )

    # ------------------------------------------------------------------ creation, files

    @classmethod
    def from_optimizer(cls, optimizer, model) -> Posterior:
        """The posterior held by an `IVON` optimizer over `model`'s adapter (means from the model).

        Args:
            optimizer: the `IVON` optimizer that trained the adapter.
            model: the model whose adapter it optimizes.

        Returns:
            The posterior: the adapter's weights as the mean, the optimizer's variances, its settings as `config`.

        Raises:
            ValueError: an adapter parameter is not optimized by `optimizer`.
        """
        params = [p for group in optimizer.param_groups for p in group["params"]]
        variance_by_param = dict(zip(params, optimizer.posterior_variance()))
        adapter = adapter_parameters(model)
        mean, variance = {}, {}
        for key, p in adapter.items():
            if p not in variance_by_param:
                raise ValueError(f"Adapter parameter {key} is not optimized by IVON")
            mean[key] = p.detach().float().cpu().clone()
            variance[key] = variance_by_param[p].detach().float().cpu().contiguous()
        step = max((int(s["step"]) for s in optimizer.state.values() if "step" in s), default=0)
        # Each param group has its own ess, prior precision and hyperparameters: record every group, with the
        # adapter keys it holds; the top-level ess / weight_decay are those shared by all groups (None if not).
        key_of = {p: key for key, p in adapter.items()}
        groups = []
        for group in optimizer.param_groups:
            groups.append({
                "keys": sorted(key_of[p] for p in group["params"] if p in key_of),
                "ess": group["ess"],
                "weight_decay": group["weight_decay"],
                "hyperparameters": {k: v for k, v in group.items() if k != "params" and isinstance(v, (int, float, bool))},
            })  # fmt: skip

        def shared(name):
            values = {g[name] for g in groups}
            return values.pop() if len(values) == 1 else None

        config = {
            "format_version": FORMAT_VERSION,
            "library": {"name": "ivon-lora", "version": __version__},
            "optimizer": "IVON",
            "ess": shared("ess"),
            "weight_decay": shared("weight_decay"),
            "step": step,
            "hyperparameters": groups[0]["hyperparameters"],
            "param_groups": groups,
        }
        if hasattr(model, "peft_config"):
            name = adapter_name(model)
            config["adapter_name"] = name
            config["adapter"] = _adapter_settings(model.peft_config[name].to_dict())
        return cls(mean, variance, config)

    @classmethod
    def load(cls, directory: str) -> Posterior:
        """Read the adapter (mean) and the posterior files of a run or checkpoint dir, checking they belong together:
        same LoRA settings, the adapter the posterior was saved with (its hash), finite values, variances >= 0.

        Args:
            directory: a run, checkpoint or pruned dir.

        Returns:
            The posterior.

        Raises:
            FileNotFoundError: the adapter or a posterior file is missing.
            ivon_lora.errors.RunDirError: the files are damaged or do not belong together (the message says which).
        """
        check_run_files(directory)
        paths = {
            n: os.path.join(directory, n) for n in (ADAPTER_WEIGHTS_NAME, POSTERIOR_WEIGHTS_NAME, POSTERIOR_CONFIG_NAME)
        }
        for name, path in paths.items():
            if not os.path.isfile(path):
                what = "adapter" if name == ADAPTER_WEIGHTS_NAME else "posterior (was it trained with optim=ivon?)"
                raise FileNotFoundError(f"No {what} in {directory!r}: {name} is missing")
        config = read_json(paths[POSTERIOR_CONFIG_NAME])
        version = config.get("format_version")
        if version not in COMPATIBLE_FORMAT_VERSIONS:
            raise RunDirError(
                f"{paths[POSTERIOR_CONFIG_NAME]}: unsupported format_version {version!r}; this ivon-lora "
                f"({__version__}) reads versions {', '.join(map(str, COMPATIBLE_FORMAT_VERSIONS))}. Upgrade ivon-lora "
                "to read it."
            )
        if version != FORMAT_VERSION:
            warnings.warn(
                f"{paths[POSTERIOR_CONFIG_NAME]} has the older format_version {version} (current: {FORMAT_VERSION}); "
                "it loads, but records less (no per-group ess / weight decay, library version or adapter name).",
                stacklevel=2,
            )
        adapter_config_path = os.path.join(directory, ADAPTER_CONFIG_NAME)
        if "adapter" in config and os.path.isfile(adapter_config_path):
            adapter = _adapter_settings(read_json(adapter_config_path))
            if adapter != config["adapter"]:
                raise RunDirError(
                    f"{directory}: the adapter ({adapter}) and the posterior ({config['adapter']}) come from "
                    "different LoRA settings"
                )
        mean, variance = read_tensors(paths[ADAPTER_WEIGHTS_NAME]), read_tensors(paths[POSTERIOR_WEIGHTS_NAME])
        recorded = config.pop(ADAPTER_HASH_KEY, None)  # a record of the files, not of the posterior
        if recorded is not None and recorded != adapter_hash(mean):
            raise RunDirError(
                f"{paths[ADAPTER_WEIGHTS_NAME]} is not the adapter the posterior in {directory} was saved with "
                f"({POSTERIOR_CONFIG_NAME} records another {ADAPTER_HASH_KEY}): the dir mixes files of two runs; "
                "retrain into an empty output_dir"
            )
        negative = [key for key, v in variance.items() if bool((v < 0).any())]
        if negative:
            raise RunDirError(f"{paths[POSTERIOR_WEIGHTS_NAME]}: negative variances in {negative[:3]}")
        try:
            return cls(mean, variance, config)
        except ValueError as error:
            raise RunDirError(f"{directory}: {error}") from error

    def save(self, directory: str, include_mean: bool = False) -> None:
        """Write the posterior files (and, with `include_mean`, the adapter weights), each atomically.

        Args:
            directory: the dir to write into (a run dir: beside the adapter the posterior belongs to).
            include_mean: also write the mean as the adapter's weights (`adapter_model.safetensors`).

        Raises:
            FloatingPointError: the posterior holds NaN or inf values (nothing is written).
        """
        from safetensors.torch import save_file

        os.makedirs(directory, exist_ok=True)
        if not all(bool(t.isfinite().all()) for t in [*self.mean.values(), *self.variance.values()]):
            raise FloatingPointError(f"Not saving a posterior with NaN or inf values into {directory}")
        config = {**self.config, ADAPTER_HASH_KEY: adapter_hash(self.mean)}  # loading checks the adapter beside it
        metadata = {"format": "pt"}
        files = [(POSTERIOR_WEIGHTS_NAME, self.variance)] + (
            [(ADAPTER_WEIGHTS_NAME, self.mean)] if include_mean else []
        )
        for name, tensors in files:
            tensors = {k: v.contiguous() for k, v in tensors.items()}
            atomic_write(os.path.join(directory, name), lambda path, t=tensors: save_file(t, path, metadata=metadata))

        def write_config(path):
            with open(path, "w") as f:
                json.dump(config, f, indent=2, sort_keys=True)

        atomic_write(os.path.join(directory, POSTERIOR_CONFIG_NAME), write_config)

    # ------------------------------------------------------------------ test-time transformations

    def with_temperature(self, temperature: float) -> Posterior:
        """The posterior with variance / temperature (temperature > 1 narrows it, < 1 widens it).

        Args:
            temperature: the divisor of the variance, > 0.

        Returns:
            A new posterior (this one is unchanged), its `config` recording the temperature.

        Raises:
            ValueError: `temperature` is not > 0.
        """
        if not temperature > 0:
            raise ValueError(f"Invalid temperature value: {temperature} (must be > 0)")
        config = copy.deepcopy(self.config)
        config["temperature"] = config.get("temperature", 1.0) * temperature
        return Posterior(dict(self.mean), {k: v / temperature for k, v in self.variance.items()}, config)

    def prune_scores(self, criterion: str = "snr") -> dict[str, torch.Tensor]:
        """Per-entry scores; the lowest are pruned first. snr = |m| / sqrt(v); magnitude = |m|; variance = 1/sqrt(v).

        Args:
            criterion: `snr`, `magnitude` or `variance`.

        Returns:
            One tensor of scores per key, of the adapter tensor's shape.
        """
        if criterion not in PRUNE_CRITERIA:
            raise ValueError(f"Invalid criterion value: {criterion!r} (choose from {', '.join(PRUNE_CRITERIA)})")
        scores = {}
        for key, mean in self.mean.items():
            std = self.variance[key].double().sqrt()
            magnitude = mean.double().abs()
            # An entry that is already certain (v = 0) ranks last: it has no noise to remove.
            inverse_std = torch.where(std > 0, 1.0 / std, torch.full_like(std, float("inf")))
            scores[key] = {"snr": magnitude * inverse_std, "magnitude": magnitude, "variance": inverse_std}[criterion]
        return scores

    def prune(self, fraction: float, scope: str = "global", mode: str = "zero", criterion: str = "snr") -> Posterior:
        """Prune the `fraction` of adapter entries with the lowest score (see `prune_scores`).

        scope "global" ranks all entries together, "matrix" prunes `fraction` of each tensor. Mode "zero" sets the
        pruned entries' mean and variance to 0; "denoise" sets only their variance to 0. Ties are broken by
        position, so the result is deterministic.

        Args:
            fraction: the share of entries to prune, in [0, 1].
            scope: `global` or `matrix`.
            mode: `zero` or `denoise`.
            criterion: the score to rank by (`prune_scores`).

        Returns:
            A new posterior (this one is unchanged), its `config` recording the pruning.

        Raises:
            ValueError: a value out of range or not among the choices.
        """
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"Invalid fraction value: {fraction} (must be in [0, 1])")
        if scope not in PRUNE_SCOPES:
            raise ValueError(f"Invalid scope value: {scope!r} (choose from {', '.join(PRUNE_SCOPES)})")
        if mode not in PRUNE_MODES:
            raise ValueError(f"Invalid mode value: {mode!r} (choose from {', '.join(PRUNE_MODES)})")
        scores = self.prune_scores(criterion)
        keys = sorted(scores)
        if scope == "global":
            flat = torch.cat([scores[k].flatten() for k in keys])
            masks = _split_like(_lowest(flat, round(fraction * flat.numel())), [scores[k] for k in keys])
        else:
            masks = [_lowest(scores[k].flatten(), round(fraction * scores[k].numel())).view_as(scores[k]) for k in keys]
        mean, variance = dict(self.mean), dict(self.variance)
        for key, pruned in zip(keys, masks):
            variance[key] = variance[key].masked_fill(pruned, 0.0)
            if mode == "zero":
                mean[key] = mean[key].masked_fill(pruned, 0.0)
        config = copy.deepcopy(self.config)
        num_pruned = int(sum(int(m.sum()) for m in masks))
        config.setdefault("pruning", []).append(
            {"fraction": fraction, "scope": scope, "mode": mode, "criterion": criterion, "num_pruned": num_pruned,
             "num_entries": sum(s.numel() for s in scores.values())}
        )  # fmt: skip
        return Posterior(mean, variance, config)

    def evaluation_record(self, fraction: float = 0.0, temperature: float = 1.0, **prune_options) -> dict:
        """What a report records of an evaluation at `at_test_time(fraction, temperature, ...)`: those settings, and
        the pruning and temperature the loaded dir already holds (a pruned dir's, from `ivon-lora prune`)."""
        return {"fraction": fraction, "temperature": temperature, **prune_options,
                "in_run_dir": {"pruning": list(self.config.get("pruning", [])),
                               "temperature": self.config.get("temperature", 1.0)}}  # fmt: skip

    def at_test_time(self, fraction: float = 0.0, temperature: float = 1.0, **prune_options) -> Posterior:
        """Pruned by `fraction` (see `prune`; recorded even at 0), then with variance / `temperature`.

        Args:
            fraction: the share of entries to prune (`prune`).
            temperature: the divisor of the variance (`with_temperature`).
            **prune_options: `scope`, `mode`, `criterion`, as `prune` takes them.

        Returns:
            The posterior to evaluate.
        """
        pruned = self.prune(fraction, **prune_options)
        return pruned if temperature == 1.0 else pruned.with_temperature(temperature)

    # ------------------------------------------------------------------ applying to a model

    def bind(self, model) -> list[tuple[str, torch.nn.Parameter]]:
        """(key, parameter) pairs of `model`'s adapter; names or shapes that differ from the posterior are an error.

        Args:
            model: a model holding the adapter (a `peft.PeftModel`).

        Returns:
            The adapter's parameters, each with its posterior key, in sorted key order.

        Raises:
            ValueError: the model's adapter tensors differ from the posterior's in name or shape.
        """
        params = adapter_parameters(model)
        missing, unexpected = sorted(set(params) - set(self.mean)), sorted(set(self.mean) - set(params))
        if missing or unexpected:
            raise ValueError(
                f"Posterior does not match the model's adapter: missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
        for key, p in params.items():
            if p.shape != self.mean[key].shape:
                raise ValueError(f"{key}: posterior shape {tuple(self.mean[key].shape)} != model {tuple(p.shape)}")
        return sorted(params.items())

    @torch.no_grad()
    def apply_mean(self, model) -> None:
        """Load the posterior mean into `model`'s adapter for good (e.g. to save a pruned adapter); to evaluate at the
        mean, use `holding_mean`, which gives the model its weights back.

        Args:
            model: a model holding the adapter.
        """
        for key, p in self.bind(model):
            p.copy_(self.mean[key])

    @contextmanager
    def holding_mean(self, model):
        """Hold this posterior's mean (e.g. after pruning) in `model`'s adapter; the weights it held before return on
        exit, also on error. The contract of every entry point that writes weights into a caller's model (`predict`,
        `teacher_forced`, the lm-eval model, and `sample` / `PosteriorSampler.sample` for samples): the model is
        left bitwise as it was.

        Args:
            model: a model holding the adapter.

        Yields:
            The model, holding the mean.
        """
        pairs = self.bind(model)
        with torch.no_grad():
            saved = [p.detach().clone() for _, p in pairs]
            for key, p in pairs:
                p.copy_(self.mean[key])
        try:
            yield model
        finally:
            with torch.no_grad():
                for (_, p), value in zip(pairs, saved):
                    p.copy_(value)

    def sampler(self, model, generator: torch.Generator | None = None, seed: int | None = None) -> PosteriorSampler:
        """A `PosteriorSampler` bound to `model`'s adapter: draw many samples cheaply (see there).

        Args:
            model: a model holding the adapter.
            generator: the noise's generator; or
            seed: the seed of a fresh generator on the adapter's device (neither: the global RNG).

        Returns:
            The sampler; its `sample()` holds one sample in the model, `draw(S)` returns S without touching it.
        """
        return PosteriorSampler(self, model, generator=generator, seed=seed)

    @contextmanager
    def sample(self, model, generator: torch.Generator | None = None):
        """Hold one sample mean + sqrt(variance) * z in `model`'s adapter; its previous weights return after.

        For many samples, build one `sampler` and call its `sample()`: this binds and caches afresh every call.

        Args:
            model: a model holding the adapter.
            generator: the noise's generator (None: the global RNG).

        Yields:
            The model, holding the sample.
        """
        with self.sampler(model, generator=generator).sample():
            yield model


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


def _lowest(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Boolean mask of the `count` lowest entries of a 1-D tensor (ties broken by position)."""
    mask = torch.zeros(scores.numel(), dtype=torch.bool)
    if count > 0:
        mask[torch.sort(scores, stable=True).indices[:count]] = True
    return mask


def _split_like(flat_mask: torch.Tensor, like: list[torch.Tensor]) -> list[torch.Tensor]:
    return [chunk.view_as(t) for chunk, t in zip(flat_mask.split([t.numel() for t in like]), like)]
