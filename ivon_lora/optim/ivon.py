"""IVON: the Improved Variational Online Newton optimizer, in the shape of a ``torch.optim`` optimizer.

Implemented from the equations of Shen et al. (2024), https://arxiv.org/abs/2402.17641. Pure torch: this
module imports nothing else, so the optimizer can be used without any Hugging Face package.

Data parallelism (several processes, each with its own batch; docs/guides/multi-gpu.md). IVON needs, besides
the mean gradient, the mean of ``eps * g``, and the two ways to get both right across W ranks are:

* per-rank noise, and the optimizer averages BOTH ``g`` and ``eps * g`` over the ranks itself, with the
  framework's gradient all-reduce (DDP) turned off. This is W independent Monte Carlo samples per step;
* the same noise on every rank, and the framework averages ``g`` as usual. This is one sample on a W times
  larger batch.

IVON implements the first (``data_parallel``, on by default when ``torch.distributed`` is initialized): it is
unbiased for any W, gives W samples for the price of one, costs one all-reduce of ``2 x`` the trainable
parameters per optimizer step (instead of DDP's one per step of ``1 x``), and, because every micro-batch of
gradient accumulation is recorded separately, it never depends on when the framework would have synchronised
gradients (DDP syncs only the last micro-batch, which makes shared-noise IVON drift across ranks with gradient
accumulation). Mixing the two (per-rank noise AND DDP-averaged gradients) underestimates the Hessian by W,
since ``E[eps_r * mean_r' g_r'] = E[eps * g] / W``; ``step()`` warns when it sees gradients that are already
identical across ranks.

Sharded parameters (FSDP2, when the LoRA model outgrows one GPU): each shard lives on one rank, so each rank draws
the noise of its own shards and the gathered noise is ONE sample of the whole model; FSDP reduce-scatters every
micro-batch's gradient of the global batch, so ``eps * g`` is recorded on the shard with no averaging of IVON's
own. That is the second way above (one sample per step on the global batch), with the noise split instead of shared.

Layout: like ``torch/optim/adam.py``, this one module holds the class, its functional form ``ivon()`` and the
two kernels (for-loop and foreach), which must stay in step (they agree bitwise, tested) and serve parameters with
and without a prior (``set_prior``: continual learning), and the class docstring carries the algorithm; that is why
it runs over 400 lines. The data-parallel averaging and the FSDP2 sharding are in ``_distributed.py``, the noise
generators' checkpointed states in ``_rng.py``, and the types they share (the sampling state, the data-parallel
group, the sharding, the buckets) in the leaf ``_state.py``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor
from torch.optim.optimizer import Optimizer
from torch.utils._foreach_utils import _get_foreach_kernels_supported_devices

from ._distributed import all_reduce_samples, resolve_data_parallel, resolve_sharding
from ._rng import (load_generator_states, load_sharded_generators, save_generator_states, save_sharded_generators,
                   set_generator_states)  # fmt: skip
from ._state import Bucket, DataParallel, DTensor, SamplingState, Sharding, local

__all__ = ["IVON", "ivon"]

_SUPPORTED_DTYPES = (torch.float32, torch.float64)


def _check_hyperparameters(
    *,
    lr: float,
    ess: float,
    hess_init: float,
    beta1: float,
    beta2: float,
    weight_decay: float,
    mean_weight_decay: float | None,
    mc_samples: int,
    clip_radius: float,
    rescale_lr: bool,
    seed: int | None = None,
    foreach: bool | None = None,
    data_parallel: bool | None = None,
    names: dict[str, str] | None = None,
) -> None:
    """Raise ``ValueError("Invalid <name> value: <value>")`` for the first invalid hyperparameter.

    ``names`` maps an argument to the name the message gives it (a config that sets IVON's arguments through
    fields of its own, e.g. ``lr`` through ``learning_rate``, names its fields); the value is then shown as repr.
    """

    def invalid(argument: str, value: Any) -> ValueError:
        if names is None:
            return ValueError(f"Invalid {argument} value: {value}")
        return ValueError(f"Invalid {names.get(argument, argument)} value: {value!r}")

    # Written as `not (valid)` so that NaN, which fails every comparison, is rejected too.
    if not 0.0 <= lr:
        raise invalid("lr", lr)
    if not 0.0 < ess:
        raise invalid("ess", ess)
    if not 0.0 < hess_init:
        raise invalid("hess_init", hess_init)
    if not 0.0 <= beta1 < 1.0:
        raise invalid("beta1", beta1)
    if not 0.0 <= beta2 < 1.0:
        raise invalid("beta2", beta2)
    if not 0.0 <= weight_decay:
        raise invalid("weight_decay", weight_decay)
    if mean_weight_decay is not None and not 0.0 <= mean_weight_decay:
        raise invalid("mean_weight_decay", mean_weight_decay)
    if isinstance(mc_samples, bool) or not isinstance(mc_samples, int) or mc_samples < 1:
        raise invalid("mc_samples", mc_samples)
    if not 0.0 < clip_radius:
        raise invalid("clip_radius", clip_radius)
    if not isinstance(rescale_lr, bool):
        raise invalid("rescale_lr", rescale_lr)
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise invalid("seed", seed)
    if foreach is not None and not isinstance(foreach, bool):
        raise invalid("foreach", foreach)
    if data_parallel is not None and not isinstance(data_parallel, bool):
        raise invalid("data_parallel", data_parallel)


# The keys of a param group that _check_hyperparameters validates (all of `defaults` that IVON itself sets).
_GROUP_HYPERPARAMETERS = ("lr", "ess", "hess_init", "beta1", "beta2", "weight_decay", "mean_weight_decay",
                          "mc_samples", "clip_radius", "rescale_lr", "foreach")  # fmt: skip


def _per_group_mc_samples_message(values: list) -> str:
    return (
        f"Invalid mc_samples values per param group: {values}. A sample perturbs every group at once, so "
        "mc_samples is the same for all groups: set it once, in IVON(..., mc_samples=...)."
    )


def _prior_and_mean_weight_decay_message(group_index: int, value: float) -> str:
    return (
        f"Invalid mean_weight_decay value: {value} in param group {group_index}, which holds a parameter with a prior "
        "(set_prior): mean_weight_decay decouples the scalar prior around zero, while a prior's precision enters "
        "both the mean update and the variance. Set mean_weight_decay=None in that group."
    )


def _check_prior(mean: Tensor, precision: Tensor, param: Tensor, where: str) -> None:
    """A prior N(mean, 1 / (ess * precision)) for `param`: same shapes, finite, precision >= 0."""
    for name, tensor in (("mean", mean), ("precision", precision)):
        if not isinstance(tensor, Tensor):
            raise ValueError(f"Invalid prior {name} {where}: expected a tensor, got {type(tensor).__name__}")
        if tensor.shape != param.shape:
            raise ValueError(f"Invalid prior {name} shape {tuple(tensor.shape)} {where}: the parameter's is "
                             f"{tuple(param.shape)}")  # fmt: skip
        if not bool(torch.isfinite(local(tensor)).all()):
            raise ValueError(f"Invalid prior {name} {where}: it holds NaN or inf values")
    if bool((local(precision) < 0).any()):
        raise ValueError(f"Invalid prior precision {where}: it holds negative values (a precision is >= 0)")


_PRIOR_KEYS = ("prior_mean", "prior_precision")


def _shard_like(tensor: Tensor, param: Tensor) -> Tensor:
    """``tensor`` (of ``param``'s full shape) sharded as ``param`` is (FSDP2), or itself for a plain parameter."""
    if DTensor is None or not isinstance(param, DTensor):
        return tensor
    if isinstance(tensor, DTensor):
        return tensor.redistribute(param.device_mesh, param.placements)
    from torch.distributed.tensor import distribute_tensor

    # Every rank holds the whole tensor: each keeps its own shard, no communication (src_data_rank=None).
    return distribute_tensor(tensor, param.device_mesh, param.placements, src_data_rank=None)


_UNRESOLVED = object()


class IVON(Optimizer):
    def __init__(
        self,
        params,
        lr: float,
        ess: float,
        hess_init: float = 1.0,
        beta1: float = 0.9,
        beta2: float = 0.99999,
        weight_decay: float = 1e-4,
        mean_weight_decay: float | None = None,
        mc_samples: int = 1,
        clip_radius: float = float("inf"),
        rescale_lr: bool = True,
        seed: int | None = None,
        foreach: bool | None = None,
        *,
        data_parallel: bool | None = None,
        process_group: Any = None,
    ) -> None:
        _check_hyperparameters(
            lr=lr,
            ess=ess,
            hess_init=hess_init,
            beta1=beta1,
            beta2=beta2,
            weight_decay=weight_decay,
            mean_weight_decay=mean_weight_decay,
            mc_samples=mc_samples,
            clip_radius=clip_radius,
            rescale_lr=rescale_lr,
            seed=seed,
            foreach=foreach,
            data_parallel=data_parallel,
        )
        if process_group is not None and data_parallel is False:
            raise ValueError(
                "IVON got a process_group and data_parallel=False: pass data_parallel=True (or None) to average "
                "the samples over that group, or drop the process_group."
            )
        defaults = dict(
            lr=lr,
            ess=ess,
            hess_init=hess_init,
            beta1=beta1,
            beta2=beta2,
            weight_decay=weight_decay,
            mean_weight_decay=mean_weight_decay,
            mc_samples=mc_samples,
            clip_radius=clip_radius,
            rescale_lr=rescale_lr,
            foreach=foreach,
        )
        # Only the generators' seed and mc_samples are optimizer-wide; every other hyperparameter can be set per group.
        # torch.initial_seed() reads the global seed without drawing from the global generator.
        self._data_parallel = data_parallel
        self._process_group = process_group
        self._init_transient_attributes(torch.initial_seed() if seed is None else seed)
        super().__init__(params, defaults)
        self._register_hooks()
        self._sharding_state()

    def _init_transient_attributes(self, seed: int) -> None:
        # The noise generators, their seed and the sampling flags: one object, which _rng and _distributed use.
        self._sampling_state = SamplingState(seed)
        self._buckets: list[Bucket] | None = None
        self._dp: DataParallel | None | object = _UNRESOLVED
        # The FSDP2 sharding of the parameters, and the parameters (by id) it was resolved for: Accelerate shards a
        # model after the Trainer built its optimizer and swaps the optimizer's parameters for the sharded ones.
        self._sharding: Sharding | None = None
        self._sharded_params: list[Tensor] | None = None

    def _register_hooks(self) -> None:
        self.register_state_dict_post_hook(IVON._save_sampling_state)
        self.register_load_state_dict_pre_hook(IVON._load_sampling_state)
        self.register_load_state_dict_post_hook(IVON._check_loaded_priors)

    def _save_sampling_state(self, state_dict: dict[str, Any]) -> dict[str, Any]:
        if self._sharding_state() is not None:
            device = self.param_groups[0]["params"][0].device
            return save_sharded_generators(self._sampling_state, self._sharding, device, self._devices(), state_dict)
        return save_generator_states(self._sampling_state, self._data_parallel_state(), state_dict)

    def _load_sampling_state(self, state_dict: dict[str, Any]) -> dict[str, Any]:
        if self._sharding_state() is not None:
            device = self.param_groups[0]["params"][0].device
            return load_sharded_generators(self._sampling_state, self._sharding, device, self._devices(), state_dict)
        return load_generator_states(self._sampling_state, self._data_parallel_state(), self._devices(), state_dict)

    def _check_loaded_priors(self) -> None:
        """A loaded state's priors are checked as `set_prior` checks them (a state_dict is also user input)."""
        for group_index, group in enumerate(self.param_groups):
            for index, p in enumerate(group["params"]):
                state = self.state.get(p, {})
                keys = [key for key in _PRIOR_KEYS if key in state]
                if not keys:
                    continue
                where = f"for parameter {index} of param group {group_index} in the loaded state"
                if len(keys) != len(_PRIOR_KEYS):
                    raise ValueError(f"Invalid prior {where}: it has {keys[0]} but not both of "
                                     f"{', '.join(_PRIOR_KEYS)}")  # fmt: skip
                _check_prior(state["prior_mean"], state["prior_precision"], p, where)
                if group["mean_weight_decay"] is not None:
                    raise ValueError(_prior_and_mean_weight_decay_message(group_index, group["mean_weight_decay"]))

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["_seed"] = self._sampling_state.seed
        state["_data_parallel"] = self._data_parallel  # a process group cannot be pickled: None after unpickling
        state["_generator_states"] = {key: gen.get_state() for key, gen in self._sampling_state.generators.items()}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        generator_states = state.pop("_generator_states", {})
        seed = state.pop("_seed", None)
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("mean_weight_decay", None)
            group.setdefault("foreach", None)
        # load_state_dict() also lands here, with only the state and the param groups: the attributes that
        # __getstate__ leaves out are rebuilt only when unpickling.
        if "_sampling_state" not in self.__dict__:
            self.__dict__.setdefault("_data_parallel", None)
            self.__dict__.setdefault("_process_group", None)
            self._init_transient_attributes(torch.initial_seed() if seed is None else seed)
            self._register_hooks()
            set_generator_states(self._sampling_state, generator_states, self._devices(), self._noise_rank())

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        group_index = len(self.param_groups)
        params = param_group["params"]
        params = [params] if isinstance(params, Tensor) else list(params)
        for index, p in enumerate(params):
            if isinstance(p, Tensor) and p.dtype not in _SUPPORTED_DTYPES:
                raise ValueError(
                    f"IVON supports float32 and float64 parameters, but parameter {index} of param group "
                    f"{group_index} is {p.dtype}. IVON keeps the posterior mean in the parameters, and its "
                    "updates (about 1e-5 relative) vanish in half precision. Keep the trainable (e.g. LoRA) "
                    "parameters in float32 and run the compute under autocast (e.g. bfloat16)."
                )
        # Only IVON's own hyperparameters are checked: a group may carry other keys (e.g. a "name"), as in
        # torch.optim, and torch itself adds keys such as `differentiable` to `defaults` in load_state_dict().
        hyperparameters = {**self.defaults, **param_group}
        _check_hyperparameters(**{k: hyperparameters[k] for k in _GROUP_HYPERPARAMETERS if k in hyperparameters})
        if self.param_groups and hyperparameters.get("mc_samples") != self.param_groups[0]["mc_samples"]:
            raise ValueError(_per_group_mc_samples_message([*(g["mc_samples"] for g in self.param_groups),
                                                            hyperparameters.get("mc_samples")]))  # fmt: skip
        super().add_param_group(param_group)
        self._buckets = None
        self._sharded_params = None

    def _sharding_state(self) -> Sharding | None:
        """The FSDP2 sharding of the parameters (None: not sharded), resolved again whenever they were swapped."""
        params = [p for group in self.param_groups for p in group["params"]]
        before = self._sharded_params
        if before is not None and len(before) == len(params) and all(p is q for p, q in zip(before, params)):
            return self._sharding
        if before is not None and len(before) == len(params):
            self._move_state(before, params)
        sharding = resolve_sharding(params)
        if sharding is not None:
            if self._data_parallel or self._process_group is not None:
                raise ValueError(
                    "IVON(data_parallel=True or a process_group) got parameters sharded by FSDP2: FSDP reduce-scatters "
                    "(averages) every micro-batch's gradient over its mesh, so averaging the samples again would be "
                    "wrong. Leave data_parallel=None: IVON then draws each rank's noise for its own shards."
                )
            if len(self._devices()) > 1:
                raise ValueError(f"IVON's sharded (FSDP2) parameters must be on one device per process, got "
                                 f"{self._devices()}")  # fmt: skip
            # The state exists from then on, as torch.distributed.checkpoint expects of a sharded optimizer (its
            # state_dict helpers would otherwise call step() with zero gradients to create it).
            for group in self.param_groups:
                for p in group["params"]:
                    self._param_state(p, group)
        self._sharding, self._sharded_params, self._buckets = sharding, params, None
        return sharding

    def _move_state(self, before: list[Tensor], after: list[Tensor]) -> None:
        """Give each swapped-in parameter the state (e.g. a prior) of the one it replaced, at the same position, sharded
        as it is: Accelerate's FSDP2 preparation swaps the optimizer's parameters for sharded ones in place."""
        for old, new in zip(before, after):
            if old is new or old not in self.state:
                continue
            self.state[new] = {key: _shard_like(value.to(new.device), new) if key != "step" and isinstance(value, Tensor)
                               else value for key, value in self.state.pop(old).items()}  # fmt: skip

    # ----------------------------------------------------------------------------------------- state

    def _param_state(self, p: Tensor, group: dict[str, Any]) -> dict[str, Tensor]:
        state = self.state[p]
        if len(state) == 0:
            # `step` is a CPU scalar tensor as in torch.optim: the debiasing reads it on the host.
            state["step"] = torch.tensor(0.0, dtype=torch.float32)
            state["momentum"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["hess"] = torch.full_like(p, group["hess_init"], memory_format=torch.preserve_format)
        return state

    @torch.no_grad()
    def set_prior(self, param: Tensor, mean: Tensor, precision: Tensor) -> None:
        """Give ``param`` the prior N(mean, diag(1 / (ess * precision))) in place of the scalar weight decay.

        ``precision`` (p0, per entry, >= 0) is on the scale of ``weight_decay``: the Hessian estimate, the
        posterior precision ``ess * (h + p0)`` and the noise use ``h + p0`` where a parameter without a prior uses
        ``h + weight_decay``, and the mean update decays towards ``mean`` (m0) by ``p0 * (m - m0)``. The
        posterior of a previous IVON run, N(m_A, 1 / (ess_A * (h_A + wd_A))), is the prior of the next run with
        ``mean = m_A`` and ``precision = ess_A * (h_A + wd_A) / ess``: continual learning (see the note on priors).
        Both tensors are copied into the parameter's state (its dtype and device) and travel in ``state_dict``.
        The parameter's group must have ``mean_weight_decay=None``.

        Args:
            param (Tensor): one of the optimizer's parameters.
            mean (Tensor): the prior mean m0, of ``param``'s shape.
            precision (Tensor): the prior precision p0 per entry, of ``param``'s shape, finite and >= 0, on the
                scale of ``weight_decay``.

        Raises:
            ValueError: ``param`` is not optimized here; ``mean`` or ``precision`` is not a tensor, has another
                shape or holds NaN or inf; ``precision`` is negative; or the parameter's group sets
                ``mean_weight_decay``.
        """
        found = [(i, g) for i, g in enumerate(self.param_groups) if any(p is param for p in g["params"])]
        if not found:
            raise ValueError("set_prior(): the parameter is not one of this optimizer's parameters")
        group_index, group = found[0]
        _check_prior(mean, precision, param, "in set_prior()")
        if group["mean_weight_decay"] is not None:
            raise ValueError(_prior_and_mean_weight_decay_message(group_index, group["mean_weight_decay"]))
        state = self._param_state(param, group)
        state["prior_mean"] = _shard_like(mean.detach().to(param.device, param.dtype, copy=True), param)
        state["prior_precision"] = _shard_like(precision.detach().to(param.device, param.dtype, copy=True), param)

    def _precision_offset(self, p: Tensor, group: dict[str, Any]) -> Tensor | float:
        """What is added to ``hess`` for the posterior precision: the prior precision, else the weight decay."""
        return self.state[p].get("prior_precision", group["weight_decay"])

    def _get_buckets(self) -> list[Bucket]:
        self._sharding_state()  # forgets the buckets if the parameters were swapped (sharded) since
        if self._buckets is None:
            self._buckets = []
            for group_index, group in enumerate(self.param_groups):
                by_device_and_dtype: dict[tuple[torch.device, torch.dtype], list[Tensor]] = {}
                for p in group["params"]:
                    by_device_and_dtype.setdefault((p.device, p.dtype), []).append(p)
                self._buckets += [Bucket(group_index, params) for params in by_device_and_dtype.values()]
        return self._buckets

    def _devices(self) -> list[str]:
        """The optimizer's devices, in the order of their first parameter in ``param_groups``."""
        return list(dict.fromkeys(str(p.device) for g in self.param_groups for p in g["params"]))

    def _noise_rank(self) -> int:
        """The rank the noise generators are seeded for: in the FSDP2 mesh, else in the data-parallel group."""
        if self._sharding_state() is not None:
            return self._sharding.rank
        dp = self._data_parallel_state()
        return dp.rank if dp else 0

    def _generator(self, device: torch.device) -> torch.Generator:
        return self._sampling_state.generator(device, self._devices(), self._noise_rank())

    # ------------------------------------------------------------------------------- data parallelism

    def _data_parallel_state(self) -> DataParallel | None:
        """The data-parallel group IVON averages over, or None; resolved once, at first use."""
        if self._sharding_state() is not None:
            return None  # FSDP2 has averaged every micro-batch's gradient (see the note on sharded parameters)
        if self._dp is _UNRESOLVED:
            self._dp = resolve_data_parallel(self._data_parallel, self._process_group)
        return self._dp

    @property
    def data_parallel_world_size(self) -> int:
        """How many data-parallel processes ``step()`` averages the recorded samples over (1: none).

        Returns:
            int: the world size of the data-parallel group, or 1 without data parallelism.
        """
        dp = self._data_parallel_state()
        return dp.world_size if dp is not None else 1

    @property
    def sharded_world_size(self) -> int:
        """How many processes FSDP2 shards the parameters over (1: the parameters are not sharded).

        Returns:
            int: the size of the parameters' device mesh, or 1 without sharding.
        """
        sharding = self._sharding_state()
        return sharding.world_size if sharding is not None else 1

    # -------------------------------------------------------------------------------------- sampling

    @property
    def num_pending_samples(self) -> int:
        """Samples recorded by ``sampled_params(train=True)`` since the last ``step()``.

        Returns:
            int: the number of samples the next ``step()`` averages on this process.
        """
        return self._sampling_state.num_pending_samples

    @torch.no_grad()
    def posterior_variance(self) -> list[Tensor]:
        """The posterior variances ``1 / (ess * (hess + weight_decay))``, one tensor per parameter.

        In the order of the parameters in ``param_groups``, each with its group's ``ess`` and ``weight_decay``, or,
        for a parameter with a prior (``set_prior``), its prior precision in place of ``weight_decay``.

        Returns:
            list[Tensor]: one tensor of variances per parameter, of its shape, dtype and device.
        """
        variances = []
        for group in self.param_groups:
            for p in group["params"]:
                hess = self._param_state(p, group)["hess"]
                variances.append((hess + self._precision_offset(p, group)).mul_(group["ess"]).reciprocal_())
        return variances

    def _sample_noise(self, params: list[Tensor], noise: Tensor, std: float) -> None:
        """Fill ``noise`` with independent N(0, std^2) draws from the optimizer's own generator.

        ``noise`` is a flat tensor holding the noise of ``params`` one after the other. This is the only place
        the optimizer draws random numbers: tests replace it to replay another implementation's noise.
        """
        noise.normal_(0.0, std, generator=self._generator(noise.device))

    def _uses_foreach(self, bucket: Bucket) -> bool:
        foreach = self.param_groups[bucket.group_index]["foreach"]
        return _default_foreach(bucket.tensors) if foreach is None else foreach

    @contextmanager
    def sampled_params(self, train: bool = False) -> Iterator[None]:
        """Hold a sample ``theta = m + eps``, ``eps ~ N(0, 1 / (ess * (hess + weight_decay)))``, in the params.

        The parameters are perturbed in place (same storage), and the means are restored bitwise when the
        context exits, whether or not its body raised.

        With ``train=True``, run the forward and backward pass inside the context: at exit, the gradient
        ``g = p.grad`` (``None`` counts as zeros) is recorded together with ``eps * g``, and ``p.grad`` is set
        to ``None`` so that the next sample's backward does not add onto it. The next ``step()`` uses the
        mean over all samples recorded since the previous step (MC samples, micro-batches of gradient
        accumulation). Because the gradient is read at exit, anything that modifies it, such as gradient
        clipping, must run inside the context. If the body raises, nothing is recorded and ``p.grad`` is left
        as it is.

        With ``train=False`` (evaluation with posterior samples) nothing is recorded.

        Args:
            train (bool, optional): record the gradient at exit for the next ``step()`` (default: False).

        Yields:
            None: the parameters hold the sample inside the context, their means again after it.
        """
        sampling = self._sampling_state
        if sampling.active:
            raise RuntimeError(
                "IVON.sampled_params() is already active: the parameters already hold a sample. "
                "Exit the outer context before entering another one."
            )
        sampling.active = True
        try:
            buckets = self._get_buckets()
            sampling.num_draws += 1
            self._perturb(buckets)
            try:
                yield
                if train:
                    self._record(buckets)
            finally:
                self._restore(buckets)
        finally:
            sampling.active = False

    # The foreach path works operation by operation on whole buckets: one noise draw and few kernel launches
    # per bucket, what accelerators want. The for-loop path runs all operations on one parameter before
    # the next, so on CPU the parameter's slices of the buffers stay in cache between operations.

    @torch.no_grad()
    def _perturb(self, buckets: list[Bucket]) -> None:
        for bucket in buckets:
            group = self.param_groups[bucket.group_index]
            bucket.allocate()
            hessians = [local(self._param_state(p, group)["hess"]) for p in bucket.params]
            # eps = z / sqrt(ess * (h + offset)): the 1/sqrt(ess) is folded into the draw, and the backup buffer
            # is scratch for 1/sqrt(h + offset) until it receives the means.
            std, weight_decay = 1.0 / math.sqrt(group["ess"]), group["weight_decay"]
            noise, backup = bucket.views["noise"], bucket.views["backup"]
            # One draw per bucket in both paths, so that the noise does not depend on the implementation.
            self._sample_noise(bucket.params, bucket.noise, std)
            # h + offset is the precision / ess: the offset is the prior precision p0 (set_prior) or weight_decay.
            offsets = [local(self._precision_offset(p, group)) for p in bucket.params]
            tensors = bucket.tensors
            if self._uses_foreach(bucket):
                torch._foreach_copy_(backup, hessians)
                with_prior = [i for i, offset in enumerate(offsets) if isinstance(offset, Tensor)]
                if with_prior:
                    torch._foreach_add_([backup[i] for i in with_prior], [offsets[i] for i in with_prior])
                if weight_decay != 0 and len(with_prior) < len(offsets):
                    torch._foreach_add_([b for i, b in enumerate(backup) if i not in with_prior], weight_decay)
                bucket.backup.rsqrt_()
                bucket.noise.mul_(bucket.backup)
                torch._foreach_copy_(backup, tensors)
                torch._foreach_add_(tensors, noise)
                continue
            for p, hess, offset, p_noise, p_backup in zip(tensors, hessians, offsets, noise, backup):
                torch.add(hess, offset, out=p_backup).rsqrt_()
                p_noise.mul_(p_backup)
                p_backup.copy_(p)
                p.add_(p_noise)

    @torch.no_grad()
    def _restore(self, buckets: list[Bucket]) -> None:
        for bucket in buckets:
            if self._uses_foreach(bucket):
                torch._foreach_copy_(bucket.tensors, bucket.views["backup"])
            else:
                for p, p_backup in zip(bucket.tensors, bucket.views["backup"]):
                    p.copy_(p_backup)

    @torch.no_grad()
    def _record(self, buckets: list[Bucket]) -> None:
        if any(p.grad is not None and p.grad.is_sparse for bucket in buckets for p in bucket.params):
            raise RuntimeError("IVON does not support sparse gradients.")
        if self._sharding is not None and all(p.grad is None for bucket in buckets for p in bucket.params):
            raise RuntimeError(
                "IVON.sampled_params(train=True) found no gradient on its sharded (FSDP2) parameters: the backward "
                "ran with FSDP's gradient sync off (set_requires_gradient_sync(False), e.g. Accelerate's no_sync() "
                "for gradient accumulation), which defers the reduce-scatter to a later micro-batch. IVON records "
                "every micro-batch: run every backward with gradient sync on."
            )
        first_sample = self._sampling_state.num_pending_samples == 0
        for bucket in buckets:
            with_grad = [i for i, p in enumerate(bucket.params) if p.grad is not None]
            grads = [local(bucket.params[i].grad) for i in with_grad]
            grad_sums = [bucket.views["grad_sum"][i] for i in with_grad]
            noise = [bucket.views["noise"][i] for i in with_grad]
            nxg_sums = [bucket.views["nxg_sum"][i] for i in with_grad]
            if first_sample and len(with_grad) < len(bucket.params):
                # A parameter without a gradient contributes zeros to both sums.
                bucket.grad_sum.zero_()
                for i, p in enumerate(bucket.params):
                    if p.grad is None:
                        bucket.views["noise"][i].zero_()
            if not grads:
                pass
            elif self._uses_foreach(bucket) and first_sample:
                torch._foreach_copy_(grad_sums, grads)
                torch._foreach_mul_(noise, grads)
            elif self._uses_foreach(bucket):
                torch._foreach_add_(grad_sums, grads)
                torch._foreach_addcmul_(nxg_sums, noise, grads)
            elif first_sample:
                for grad, grad_sum, p_noise in zip(grads, grad_sums, noise):
                    grad_sum.copy_(grad)
                    p_noise.mul_(grad)
            else:
                for grad, grad_sum, p_noise, nxg_sum in zip(grads, grad_sums, noise, nxg_sums):
                    grad_sum.add_(grad)
                    nxg_sum.addcmul_(p_noise, grad)
            if first_sample:
                # eps is not needed after this sample: the noise buffer, now holding eps * g, becomes the nxg
                # accumulator, and the old accumulator becomes the next sample's noise buffer.
                bucket.swap_noise_and_nxg_sum()
            for p in bucket.params:
                p.grad = None
        self._sampling_state.num_pending_samples += 1

    # ------------------------------------------------------------------------------------------ step

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Update the means and the Hessian estimate from the samples recorded since the last step.

        Args:
            closure (Callable, optional): computes the loss AND calls ``backward()`` on it, without zeroing
                any gradient. It is run ``mc_samples`` times (the same in every param group), each time
                inside ``sampled_params(train=True)``, and the mean of its returned losses is returned.
                Without a closure, the samples must have been recorded with ``sampled_params(train=True)``.

        Returns:
            The mean of the closure's losses, or None without a closure.

        Raises:
            RuntimeError: called inside ``sampled_params()``; no sample was recorded since the last step (without
                a closure); or the data-parallel ranks recorded different numbers of samples.
            ValueError: a closure is given and the param groups have different ``mc_samples``.
        """
        if self._sampling_state.active:
            raise RuntimeError(
                "IVON.step() was called inside sampled_params(): the parameters hold a sample, not the "
                "means. Call step() after the context has exited."
            )
        loss = None
        if closure is not None:
            losses = []
            mc_samples = [group["mc_samples"] for group in self.param_groups]
            if len(set(mc_samples)) > 1:
                raise ValueError(_per_group_mc_samples_message(mc_samples))
            for _ in range(mc_samples[0]):
                with torch.enable_grad(), self.sampled_params(train=True):
                    losses.append(closure())
            loss = sum(losses) / len(losses)
        buckets = self._get_buckets()
        dp = self._data_parallel_state()
        if dp is not None:
            # Every rank joins the all-reduce, even one without samples: the error is raised on all of them.
            num_samples = all_reduce_samples(self._sampling_state, buckets, dp, self._devices())
        elif self._sampling_state.num_pending_samples == 0:
            raise RuntimeError(
                "IVON.step() found no recorded sample. Run the forward and backward pass inside "
                "`with optimizer.sampled_params(train=True):` before calling step(), or pass a closure."
            )
        else:
            num_samples = self._sampling_state.num_pending_samples

        for group_index, group in enumerate(self.param_groups):
            # The functional takes priors for all of its parameters or for none (torch-style parallel lists), so a
            # group's parameters without a prior and those with one (set_prior) go in two calls of it.
            lists = {False: [[] for _ in range(6)], True: [[] for _ in range(8)]}
            for bucket in buckets:
                if bucket.group_index != group_index:
                    continue
                for p, grad_sum, nxg_sum in zip(bucket.params, bucket.views["grad_sum"], bucket.views["nxg_sum"]):
                    state = self._param_state(p, group)
                    has_prior = "prior_mean" in state
                    tensors = [
                        local(p),
                        grad_sum,
                        nxg_sum,
                        local(state["momentum"]),
                        local(state["hess"]),
                        state["step"],
                    ]
                    if has_prior:
                        tensors += [local(state["prior_mean"]), local(state["prior_precision"])]
                    for same_kind, tensor in zip(lists[has_prior], tensors):
                        same_kind.append(tensor)
            hyperparameters = dict(num_samples=num_samples, lr=group["lr"], ess=group["ess"],
                                   hess_init=group["hess_init"], beta1=group["beta1"], beta2=group["beta2"],
                                   weight_decay=group["weight_decay"], mean_weight_decay=group["mean_weight_decay"],
                                   clip_radius=group["clip_radius"], rescale_lr=group["rescale_lr"])  # fmt: skip
            if lists[False][0] or not lists[True][0]:
                ivon(*lists[False], foreach=group["foreach"], **hyperparameters)
            if lists[True][0]:
                if group["mean_weight_decay"] is not None:
                    raise ValueError(_prior_and_mean_weight_decay_message(group_index, group["mean_weight_decay"]))
                params, *tensors, prior_means, prior_precisions = lists[True]
                ivon(params, *tensors, foreach=group["foreach"], prior_means=prior_means,
                     prior_precisions=prior_precisions, **hyperparameters)  # fmt: skip
        self._sampling_state.num_pending_samples = 0
        return loss


IVON.__doc__ = r"""Implements IVON, the Improved Variational Online Newton optimizer.

    IVON learns a diagonal Gaussian posterior :math:`q = \mathcal{N}(m, \mathrm{diag}(\sigma^2))` over the
    parameters. The parameters hold the mean :math:`m`; the optimizer state holds a momentum :math:`\bar g`
    and a diagonal Hessian estimate :math:`h`, which sets the variance
    :math:`\sigma^2 = 1 / (\lambda (h + \delta))`.

    .. math::
       \begin{aligned}
            &\rule{110mm}{0.4pt}                                                                 \\
            &\textbf{input}      : \gamma \text{ (lr)}, \lambda \text{ (ess)}, h_0 \text{ (hess\_init)},
                \beta_1, \beta_2, \delta \text{ (weight\_decay)},                                \\
            &\hspace{13mm} \delta_m \text{ (mean\_weight\_decay, default } \delta \text{)},
                \xi \text{ (clip\_radius)}, S \text{ (samples per step)}, m_0 \text{ (params)},
                f(\theta) \text{ (objective)}                                                    \\
            &\textbf{initialize} : \bar g_0 \leftarrow 0, \: h \leftarrow h_0, \:
                \gamma' \leftarrow \gamma (h_0 + \delta) \text{ if rescale\_lr else } \gamma    \\[-1.ex]
            &\rule{110mm}{0.4pt}                                                                 \\
            &\textbf{for} \: t=1 \: \textbf{to} \: \ldots \: \textbf{do}                         \\
            &\hspace{5mm}\textbf{for} \: s=1 \: \textbf{to} \: S \: \textbf{do}
                \hspace{5mm} \text{(one sampled\_params(train=True) context each)}               \\
            &\hspace{10mm}\epsilon_s \sim \mathcal{N}\big(0, 1/(\lambda (h_{t-1} + \delta))\big)    \\
            &\hspace{10mm}g_s \leftarrow \nabla_\theta f(\theta) \big|_{\theta = m_{t-1} + \epsilon_s} \\
            &\hspace{5mm}\hat g_t \leftarrow \frac{1}{S} \sum_s g_s, \quad
                \hat h_t \leftarrow \lambda (h_{t-1} + \delta) \frac{1}{S} \sum_s \epsilon_s g_s \\
            &\hspace{5mm}\bar g_t \leftarrow \beta_1 \bar g_{t-1} + (1 - \beta_1) \hat g_t          \\
            &\hspace{5mm}h_t \leftarrow \beta_2 h_{t-1} + (1 - \beta_2) \hat h_t
                + \tfrac{1}{2} (1 - \beta_2)^2 (h_{t-1} - \hat h_t)^2 / (h_{t-1} + \delta)      \\
            &\hspace{5mm}d_t \leftarrow \bar g_t / (1 - \beta_1^t) + \delta_m m_{t-1}             \\
            &\hspace{5mm}m_t \leftarrow m_{t-1} - \gamma' \,
                \mathrm{clip}\big(d_t / (h_t + \delta), -\xi, \xi\big)                          \\
            &\rule{110mm}{0.4pt}                                                          \\[-1.ex]
            &\bf{return} \: m_t, \: \sigma_t^2 = 1 / (\lambda (h_t + \delta))           \\[-1.ex]
            &\rule{110mm}{0.4pt}                                                          \\[-1.ex]
       \end{aligned}

    All operations are element-wise. :math:`\hat h_t` is the reparameterization ("price") estimate of the
    diagonal Hessian: :math:`\mathbb{E}[\epsilon g] = \sigma^2 \nabla^2 f`. For details see `Variational
    Learning is Effective for Large Deep Networks`_ (Shen et al., 2024).

    Usage::

        optimizer = IVON(model.parameters(), lr=0.1, ess=len(train_set))
        for inputs, targets in loader:
            for _ in range(mc_samples):
                with optimizer.sampled_params(train=True):
                    loss_fn(model(inputs), targets).backward()
            optimizer.step()

    Args:
        params (iterable): iterable of parameters or named_parameters to optimize, or of dicts defining
            parameter groups. float32 or float64 only: the means and the state are kept in the
            parameters' dtype (see the note on precision).
        lr (float): learning rate :math:`\gamma`.
        ess (float): effective sample size :math:`\lambda`, usually the size of the training set. It sets
            the width (temperature) of the posterior, not the scale of the curvature.
        hess_init (float, optional): initial Hessian estimate :math:`h_0` (default: 1.0).
        beta1 (float, optional): momentum coefficient, in [0, 1) (default: 0.9).
        beta2 (float, optional): Hessian averaging coefficient, in [0, 1) (default: 0.99999).
        weight_decay (float, optional): prior precision :math:`\delta`, in the variance and, unless
            ``mean_weight_decay`` is set, in the mean update (default: 1e-4).
        mean_weight_decay (float, optional): if set, replaces ``weight_decay`` in the mean update only
            (:math:`\delta_m`, "decoupled" weight decay); the variance keeps :math:`h + \delta` (default: None).
        mc_samples (int, optional): samples per step taken by ``step(closure)``; without a closure, the step
            uses however many samples were recorded (default: 1).
        clip_radius (float, optional): element-wise bound :math:`\xi` on the preconditioned update,
            ``inf`` for none (default: inf).
        rescale_lr (bool, optional): multiply the learning rate by :math:`h_0 + \delta`, which makes the
            first steps about ``lr`` times the gradient (default: True).
        seed (int, optional): seed of the optimizer's own noise generators. ``None`` derives it from
            ``torch.initial_seed()``, which does not draw from the global generator (default: None).
        foreach (bool, optional): whether the foreach (multi-tensor) implementation is used, for the
            sampling as well as the step. If unspecified (None), it is used when no parameter is on CPU: on
            accelerators it batches the kernel launches, while on CPU the for-loop, which keeps each tensor
            in cache through all its operations, is faster (default: None).
        data_parallel (bool, optional, keyword-only): whether ``step()`` averages the recorded samples over the
            processes of ``process_group`` (see the note on data parallelism). ``None`` does when
            ``torch.distributed`` is initialized with more than one process by the first sample, ``True``
            requires it, ``False`` never does: every process is then an independent optimizer (default: None).
        process_group (ProcessGroup, optional, keyword-only): the data-parallel group; ``None`` is the default
            group (default: None).

    .. note:: **Noise generators.** The noise never comes from the global RNG, so sampling for evaluation
        does not shift the training data order or dropout masks. There is one ``torch.Generator`` per
        device, seeded from ``seed``, the device's position among the optimizer's devices and the
        data-parallel rank (the first device of rank 0, or of a single process, uses ``seed`` itself). So a
        model spread over several devices gets independent noise per device, and data-parallel ranks
        independent noise per rank. The generator states are in the ``state_dict``.

    .. note:: **Data parallelism.** With ``data_parallel`` active, each rank draws its own noise and records
        its own samples, and ``step()`` sums ``g`` and ``eps * g`` over the ranks (one all-reduce per bucket
        of parameters of one device and dtype, carrying ``2 x`` their size) and divides by the number of
        samples of all ranks: W ranks give W Monte Carlo samples per step, unbiased, and every rank makes
        the same update, so parameters and state stay bitwise identical. The framework must NOT average the
        gradients as well: run every backward under DDP's ``no_sync()`` (or do not wrap the model in DDP),
        otherwise the Hessian is underestimated by the world size (``step()`` warns when it sees gradients
        already identical across ranks). Every rank must record the same number of samples before each
        ``step()`` (checked). The alternative, the same noise on every rank with gradients averaged by DDP
        after every backward, is ``data_parallel=False`` with the same ``seed`` everywhere.

        Usage, one process per device (e.g. under ``torchrun``), each with its own shard of the data::

            model = DistributedDataParallel(model)  # optional: IVON only needs the same initial parameters
            optimizer = IVON(model.parameters(), lr=0.1, ess=len(train_set))  # syncs: torch.distributed is up
            for inputs, targets in loader:  # e.g. with a DistributedSampler
                with model.no_sync(), optimizer.sampled_params(train=True):
                    loss_fn(model(inputs), targets).backward()
                optimizer.step()

    .. note:: **Sharded parameters (FSDP2).** Parameters sharded by ``fully_shard`` (DTensors over one 1-D mesh)
        are detected at construction. Each rank draws the noise of its own shards from its own generator (seeded
        from ``seed`` and its rank), so the all-gathered sample is one posterior sample of the whole model per
        micro-batch, evaluated on the world's global batch: one MC sample per step, as with shared noise under
        DDP, not W. FSDP reduce-scatters (averages) every micro-batch's gradient, and IVON records ``g`` and
        ``eps * g`` on the local shard; it averages nothing itself (``data_parallel`` must not be True). The
        momentum, Hessian and any prior (``set_prior`` takes the full tensors and shards them) are DTensors on
        the same shards, created with the optimizer, as ``torch.distributed.checkpoint`` expects. A backward run
        with FSDP's gradient sync off (``set_requires_gradient_sync(False)``, Accelerate's ``no_sync``) leaves no
        gradient to record and is an error: keep it on for every micro-batch. ``state_dict()`` holds every rank's
        generator state as a DTensor in the first parameter's state, so a distributed checkpoint resumes bitwise.

        Usage::

            for layer in model.layers:
                fully_shard(layer)
            fully_shard(model)
            optimizer = IVON([p for p in model.parameters() if p.requires_grad], lr=0.1, ess=len(train_set))
            for inputs, targets in loader:  # each rank its share of the global batch
                with optimizer.sampled_params(train=True):
                    loss_fn(model(inputs), targets).backward()
                optimizer.step()

    .. note:: **Priors: continual learning.** ``weight_decay`` is a prior N(0, 1 / (ess * delta)), one scalar per
        group. ``set_prior(param, mean, precision)`` gives a parameter a prior N(m0, diag(1 / (ess * p0))) instead:
        every :math:`\delta` above becomes p0 for that parameter (the noise, the Hessian estimate, the variance
        and the precision in the mean update), and the decay term :math:`\delta_m m` becomes p0 * (m - m0);
        ``rescale_lr`` still uses the scalar ``weight_decay``. Starting a run at the previous run's means with
        m0 = m_A and p0 = ess_A * (h_A + delta_A) / ess is Bayesian updating: on a quadratic (linear-Gaussian)
        loss, IVON on A and then on B with that prior reaches the posterior of IVON on A and B together (tested).
        The prior's tensors are per-parameter state, like the momentum: ``state_dict`` carries them, and
        ``load_state_dict`` casts them to the parameter's device and dtype. A group with a prior keeps
        ``mean_weight_decay=None`` (decoupled decay is defined for the scalar prior only).

    .. note:: **Gradients are read at context exit.** ``sampled_params(train=True)`` records ``p.grad`` when
        it exits and then sets it to ``None``. Clip (or otherwise modify) gradients inside the context;
        never zero them between samples yourself, and never let them sum across samples or micro-batches:
        each sample is recorded separately and the step averages them.

    .. note:: **Precision.** The mean updates are about 1e-5 relative to the weights and ``beta2`` is
        0.99999: in float16/bfloat16 both round away and IVON silently stops learning, so such parameters
        are rejected. Keep the trainable parameters in float32 and use autocast for the compute. Do not use
        a ``GradScaler``: the scaled gradients would be recorded.

    .. note:: **beta2 < 1.** With ``beta2 = 1`` the Hessian estimate would never leave ``hess_init``: the
        posterior variance would be fixed by hand rather than learned, which is not IVON, so it is rejected.

    .. note:: **Checkpoints.** ``state_dict()`` holds ``step``, ``momentum`` and ``hess`` per parameter and
        the generator states, so a resumed run continues the same trajectory bitwise. Samples recorded but
        not yet used by ``step()`` are not saved, and ``load_state_dict()`` discards them. With data
        parallelism, ``state_dict()`` needs no collective and can be called on rank 0 only (as the HF Trainer
        does): ``step()`` gathers every rank's generator states into ``generator_states_by_rank``, and
        ``load_state_dict()`` on each rank takes its own. Loaded by another number of processes, ranks
        without saved states start fresh streams (with a warning): still independent, not bitwise.

    .. _Variational Learning is Effective for Large Deep Networks:
        https://arxiv.org/abs/2402.17641
    """


def _default_foreach(tensors: list[Tensor]) -> bool:
    # On accelerators the foreach ops batch the kernel launches. On CPU they are a C++ loop running each
    # operation over every tensor before the next operation: with LoRA-sized tensors the for-loop, which
    # runs every operation on one tensor while it is in cache, is faster (scripts/bench_optimizer.py). Which
    # devices have foreach kernels is torch's to say, as in torch.optim's own default.
    supported = _get_foreach_kernels_supported_devices()
    return not torch.jit.is_scripting() and all(
        type(t) in (Tensor, torch.nn.Parameter) and t.device.type in supported for t in tensors
    )


def ivon(
    params: list[Tensor],
    grad_sums: list[Tensor],
    nxg_sums: list[Tensor],
    momentums: list[Tensor],
    hessians: list[Tensor],
    state_steps: list[Tensor],
    foreach: bool | None = None,
    *,
    num_samples: int,
    lr: float,
    ess: float,
    hess_init: float,
    beta1: float,
    beta2: float,
    weight_decay: float,
    mean_weight_decay: float | None,
    clip_radius: float,
    rescale_lr: bool,
    prior_means: list[Tensor] | None = None,
    prior_precisions: list[Tensor] | None = None,
) -> None:
    r"""Functional API that performs the IVON update of the means, momentums and Hessian estimates.

    See :class:`IVON` for the algorithm. ``grad_sums`` and ``nxg_sums`` hold the sums over ``num_samples``
    samples of ``g`` and ``eps * g``; they are used as scratch space and hold unspecified values afterwards.
    ``state_steps`` are scalar tensors, incremented here.

    With ``prior_means`` and ``prior_precisions`` (one tensor per parameter, or both None), every parameter has
    the prior N(m0, diag(1 / (ess * p0))): p0 replaces ``weight_decay`` in the Hessian estimate and the precision,
    the decay term of the mean update is p0 * (m - m0), and ``mean_weight_decay`` must be None. ``weight_decay``
    then only enters the learning-rate rescaling.

    Args:
        params: the means m, updated in place.
        grad_sums: per parameter, the sum over the samples of the gradient g (scratch space).
        nxg_sums: per parameter, the sum over the samples of eps * g (scratch space).
        momentums: the momentums, updated in place.
        hessians: the Hessian estimates h, updated in place.
        state_steps: scalar step counters, incremented in place.
        foreach: use the foreach (multi-tensor) kernel; None chooses by device, as ``IVON`` does.
        num_samples: how many samples the sums are over.
        lr: the learning rate of the group.
        ess: the effective sample size.
        hess_init: the initial Hessian estimate (for ``rescale_lr``).
        beta1: the momentum coefficient.
        beta2: the Hessian averaging coefficient.
        weight_decay: the prior precision (without priors).
        mean_weight_decay: the decay of the mean update only, or None.
        clip_radius: the element-wise bound on the preconditioned update.
        rescale_lr: multiply ``lr`` by ``hess_init + weight_decay``.
        prior_means: per parameter, the prior mean m0; with ``prior_precisions``, or None.
        prior_precisions: per parameter, the prior precision p0; with ``prior_means``, or None.
    """
    if num_samples < 1:
        raise ValueError(f"Invalid num_samples value: {num_samples}")
    if (prior_means is None) != (prior_precisions is None):
        raise ValueError("Pass both prior_means and prior_precisions, or neither")
    if prior_means is not None and mean_weight_decay is not None:
        raise ValueError(f"Invalid mean_weight_decay value: {mean_weight_decay} (must be None with a prior)")
    if foreach is None:
        foreach = _default_foreach(params)
    func = _multi_tensor_ivon if foreach else _single_tensor_ivon
    func(
        params,
        grad_sums,
        nxg_sums,
        momentums,
        hessians,
        state_steps,
        prior_means,
        prior_precisions,
        num_samples=num_samples,
        lr=lr * (hess_init + weight_decay) if rescale_lr else lr,
        ess=ess,
        beta1=beta1,
        beta2=beta2,
        weight_decay=weight_decay,
        mean_weight_decay=weight_decay if mean_weight_decay is None else mean_weight_decay,
        clip_radius=clip_radius,
    )


# The two kernels run the same sequence of in-place operations, so that they agree bitwise on CPU. The Hessian
# update is step 5 of the algorithm rearranged around u = h_hat - h, which needs no temporary:
#     h_new = beta2 * h + (1 - beta2) * h_hat + (1 - beta2)^2 / 2 * (h - h_hat)^2 / (h + o)
#           = h + (1 - beta2) * u + (1 - beta2)^2 / 2 * u * (u / (h + o)),
# where the offset o is the scalar weight decay, or, with priors N(m0, 1 / (ess * p0)), the tensor p0. The mean
# update d / (h + o) is the decay term plus the debiased momentum, momentum / (1 - beta1^t) / (h + o), with the
# decay term (p0 * (m - m0)) / (h + o) with priors and (mean_weight_decay * m) / (h + o) without (none if 0).
# The buffers of the sums serve as scratch: `grad_sum` holds g, then h + o, then u / (h + o), then h_new + o;
# `nxg_sum` holds u, then the preconditioned update.


def _single_tensor_ivon(
    params: list[Tensor],
    grad_sums: list[Tensor],
    nxg_sums: list[Tensor],
    momentums: list[Tensor],
    hessians: list[Tensor],
    state_steps: list[Tensor],
    prior_means: list[Tensor] | None,
    prior_precisions: list[Tensor] | None,
    *,
    num_samples: int,
    lr: float,
    ess: float,
    beta1: float,
    beta2: float,
    weight_decay: float,
    mean_weight_decay: float,
    clip_radius: float,
) -> None:
    for i, (param, scratch, update, momentum, hess, step) in enumerate(
        zip(params, grad_sums, nxg_sums, momentums, hessians, state_steps, strict=True)
    ):
        step += 1
        bias_correction1 = 1 - beta1 ** step.item()
        offset = weight_decay if prior_precisions is None else prior_precisions[i]

        if num_samples != 1:
            scratch.div_(num_samples)
        momentum.lerp_(scratch, 1 - beta1)

        torch.add(hess, offset, out=scratch)
        update.mul_(scratch).mul_(ess / num_samples).sub_(hess)
        scratch.reciprocal_().mul_(update)
        hess.addcmul_(scratch, update, value=0.5 * (1 - beta2) ** 2)
        hess.add_(update, alpha=1 - beta2)

        torch.add(hess, offset, out=scratch)
        if prior_means is not None:
            torch.sub(param, prior_means[i], out=update).mul_(offset).div_(scratch)
        elif mean_weight_decay != 0:
            torch.mul(param, mean_weight_decay, out=update).div_(scratch)
        else:
            update.zero_()
        update.addcdiv_(momentum, scratch, value=1 / bias_correction1)
        if clip_radius != math.inf:
            update.clamp_(-clip_radius, clip_radius)
        param.add_(update, alpha=-lr)


def _group_by_device_and_dtype(*tensor_lists: list[Tensor] | None) -> list[tuple[list[Tensor] | None, ...]]:
    """Split parallel lists by the first list's (device, dtype); a None list stays None in every part."""
    groups: dict[tuple[torch.device, torch.dtype], tuple[list[Tensor], ...]] = {}
    present = [tensors for tensors in tensor_lists if tensors is not None]
    for tensors in zip(*present, strict=True):
        key = (tensors[0].device, tensors[0].dtype)
        group = groups.setdefault(key, tuple([] for _ in present))
        for tensor, same_kind in zip(tensors, group):
            same_kind.append(tensor)
    parts = []
    for group in groups.values():
        lists = iter(group)
        parts.append(tuple(None if tensors is None else next(lists) for tensors in tensor_lists))
    return parts


def _multi_tensor_ivon(
    params: list[Tensor],
    grad_sums: list[Tensor],
    nxg_sums: list[Tensor],
    momentums: list[Tensor],
    hessians: list[Tensor],
    state_steps: list[Tensor],
    prior_means: list[Tensor] | None,
    prior_precisions: list[Tensor] | None,
    *,
    num_samples: int,
    lr: float,
    ess: float,
    beta1: float,
    beta2: float,
    weight_decay: float,
    mean_weight_decay: float,
    clip_radius: float,
) -> None:
    if len(params) == 0:
        return
    for param, scratch, update, momentum, hess, steps, prior_mean, prior_precision in _group_by_device_and_dtype(
        params, grad_sums, nxg_sums, momentums, hessians, state_steps, prior_means, prior_precisions
    ):
        torch._foreach_add_(steps, 1.0)
        inv_bias_corrections1 = [1 / (1 - beta1 ** step.item()) for step in steps]
        offset = weight_decay if prior_precision is None else prior_precision

        if num_samples != 1:
            torch._foreach_div_(scratch, num_samples)
        torch._foreach_lerp_(momentum, scratch, 1 - beta1)

        torch._foreach_copy_(scratch, hess)
        torch._foreach_add_(scratch, offset)
        torch._foreach_mul_(update, scratch)
        torch._foreach_mul_(update, ess / num_samples)
        torch._foreach_sub_(update, hess)
        torch._foreach_reciprocal_(scratch)
        torch._foreach_mul_(scratch, update)
        torch._foreach_addcmul_(hess, scratch, update, value=0.5 * (1 - beta2) ** 2)
        torch._foreach_add_(hess, update, alpha=1 - beta2)

        torch._foreach_copy_(scratch, hess)
        torch._foreach_add_(scratch, offset)
        if prior_mean is not None:
            torch._foreach_copy_(update, param)
            torch._foreach_sub_(update, prior_mean)
            torch._foreach_mul_(update, offset)
            torch._foreach_div_(update, scratch)
        elif mean_weight_decay != 0:
            torch._foreach_copy_(update, param)
            torch._foreach_mul_(update, mean_weight_decay)
            torch._foreach_div_(update, scratch)
        else:
            torch._foreach_zero_(update)
        torch._foreach_addcdiv_(update, momentum, scratch, inv_bias_corrections1)
        if clip_radius != math.inf:
            torch._foreach_clamp_min_(update, -clip_radius)
            torch._foreach_clamp_max_(update, clip_radius)
        torch._foreach_add_(param, update, alpha=-lr)
