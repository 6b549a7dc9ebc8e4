"""The posterior artifact: a diagonal Gaussian over the adapter weights, saved next to the PEFT adapter.

Files (names in `ivon_lora.filenames`, read and written by `ivon_lora.posterior.files`): the mean is the PEFT
adapter itself (`adapter_model.safetensors`); `posterior.safetensors` holds one variance tensor per adapter tensor,
under the same key; `posterior_config.json` holds ess, the prior precision, the step, the optimizer's
hyperparameters, the adapter's shape settings and any test-time transformation (pruning, temperature). The set loads
without the optimizer, the Trainer or the base model: pruning and temperature are operations on these tensors alone.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from .._version import __version__
from ..errors import RunDirError
from ..vocabulary import PRUNE_MODES
from .adapter import adapter_name, adapter_parameters, adapter_settings
from .files import FORMAT_VERSION, read_posterior, write_posterior
from .pruning import prune_masks, prune_scores
from .sampler import PosteriorSampler


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
            config["adapter"] = adapter_settings(model.peft_config[name].to_dict())
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
        mean, variance, config = read_posterior(directory)
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
        write_posterior(directory, self.mean, self.variance, self.config, include_mean)

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
        return prune_scores(self.mean, self.variance, criterion)

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
        if mode not in PRUNE_MODES:
            raise ValueError(f"Invalid mode value: {mode!r} (must be one of {', '.join(PRUNE_MODES)})")
        scores = self.prune_scores(criterion)
        masks = prune_masks(scores, fraction, scope)
        mean, variance = dict(self.mean), dict(self.variance)
        for key, pruned in masks.items():
            variance[key] = variance[key].masked_fill(pruned, 0.0)
            if mode == "zero":
                mean[key] = mean[key].masked_fill(pruned, 0.0)
        config = copy.deepcopy(self.config)
        num_pruned = int(sum(int(m.sum()) for m in masks.values()))
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
