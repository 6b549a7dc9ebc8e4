"""Which parallelism the IVON Trainer trains under, what it refuses, and the checks that IVON synchronises over it.

Data parallel (DDP: several processes, `torchrun` / `accelerate launch`; see `ivon_lora.optim` for why this choice):
each rank draws its own noise and `IVON.step()` averages both the gradients and noise x gradients over the ranks (W
ranks = W posterior samples per step). DDP's own gradient all-reduce must then not run (`training_step` runs every
micro-batch under `no_sync`). An IVON that does not synchronise (`data_parallel=False`) under a multi-process Trainer
is an error: with DDP averaging per-rank-noise gradients the Hessian would be underestimated by the world size.

FSDP2 (`fsdp` with `fsdp_config: {version: 2}`, or an Accelerate FSDP2 config): the LoRA parameters and IVON's state
are shards; each rank draws its own shards' noise, and every micro-batch's gradient is reduce-scattered before IVON
records it, so `training_step` keeps FSDP's gradient sync ON where the Trainer would defer it (one sample per step on
the global batch; docs/guides/multi-gpu.md). Refused, each with one line naming the setting and the reason or the
alternative: FSDP1, DeepSpeed, HSDP, tensor or context parallelism, CPU offload under FSDP2, a 4-bit or 8-bit base
under FSDP2, FSDP asked for where Accelerate does not enable it (CPU), a model sharded at load time, and evaluation
with posterior samples during an FSDP2 run. Mixed into `IVONTrainerMixin`.
"""

from __future__ import annotations

import json

import torch
from torch.nn.parallel import DistributedDataParallel
from transformers.training_args import ParallelMode

from ..optim import IVON

# The refusals, one line each (`optim='ivon' does not support ...`).
REFUSED_DEEPSPEED = (
    "DeepSpeed: its engine partitions the gradients and steps the optimizer itself, so IVON cannot record every "
    "micro-batch's gradient; use FSDP2 (fsdp_config: {version: 2}) or plain data parallelism"
)
REFUSED_FSDP1 = (
    "FSDP1 (fsdp_config version 1): its flattened parameters hide the LoRA tensors that IVON keeps its state for; "
    "set fsdp_config: {version: 2} (FSDP2, fully_shard)"
)
REFUSED_OFFLOAD = (
    "CPU offload under FSDP (fsdp 'offload' / fsdp_config cpu_offload): under CPUOffloadPolicy the DTensor RNG "
    "resets the CPU generator, so IVON's noise would repeat (pytorch/pytorch#196562); keep the shards on the GPU"
)
REFUSED_HSDP = (
    "HSDP (hybrid_shard / dp_replicate_size > 1): IVON's sharded noise and recording assume one 1-D FSDP2 mesh; "
    "shard over all processes (full_shard)"
)
REFUSED_QUANTIZED = (
    "a 4-bit or 8-bit base under FSDP2: broken upstream (a silent loss of 0, huggingface/accelerate#3983; a wrong "
    "4-bit forward, bitsandbytes-foundation/bitsandbytes#1945); use a bf16 base under FSDP2, or the quantized base "
    "with plain data parallelism (no fsdp)"
)
REFUSED_FSDP_WITHOUT_ACCELERATOR = (
    "fsdp without an accelerator: Accelerate enables FSDP only on GPUs (on CPU it would silently run plain data "
    "parallelism instead); drop fsdp on CPU, or train on GPUs"
)
REFUSED_SAMPLED_EVALUATION = (
    "evaluation with posterior samples during an FSDP2 run (ivon_eval_samples > 0 or ivon_loo_eval): the posterior "
    "sampler perturbs whole parameters, not shards; set ivon_eval_samples: 0 and ivon_loo_eval: false, and score "
    "the saved run with `ivon-lora eval`"
)


def _fsdp_config(args) -> dict:
    """`fsdp_config` as a dict with its keys' `fsdp_` prefix dropped, before or after TrainingArguments' own parsing."""
    config = args.fsdp_config or {}
    if isinstance(config, str):
        with open(config, encoding="utf-8") as f:
            config = json.load(f)
    return {key.removeprefix("fsdp_"): value for key, value in config.items()}


def _fsdp_options(args) -> list[str]:
    fsdp = args.fsdp
    if isinstance(fsdp, str):
        return fsdp.split()
    return [str(getattr(option, "value", option)) for option in fsdp] if isinstance(fsdp, list) else []


def refused_training_arguments(args) -> str | None:
    """What `optim='ivon'` cannot train under among these TrainingArguments (one line), or None. Read from the fields
    as the user gave them, so that a config refuses before TrainingArguments parses (or imports) anything."""
    if getattr(args, "deepspeed", None):
        return REFUSED_DEEPSPEED
    if not args.fsdp:
        return None
    config, options = _fsdp_config(args), _fsdp_options(args)
    if int(config.get("version", 2)) != 2:  # transformers' default is FSDP2
        return REFUSED_FSDP1
    if "offload" in options or config.get("cpu_offload") or config.get("offload_params"):
        return REFUSED_OFFLOAD
    if "hybrid_shard" in options or "hybrid_shard_zero2" in options:
        return REFUSED_HSDP
    if args.use_cpu or not torch.accelerator.is_available():
        return REFUSED_FSDP_WITHOUT_ACCELERATOR
    if getattr(args, "ivon_eval_samples", 0) or getattr(args, "ivon_loo_eval", False):
        return REFUSED_SAMPLED_EVALUATION
    return None


def _is_quantized(model) -> bool:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return any(bool(getattr(m, name, False)) for m in (model, base)
               for name in ("is_loaded_in_4bit", "is_loaded_in_8bit"))  # fmt: skip


def unwrap_optimizer(optimizer):
    # Accelerate wraps the optimizer in `AcceleratedOptimizer`; the raw one is `.optimizer`.
    return getattr(optimizer, "optimizer", optimizer)


class ParallelismMixin:
    """The parallelism checks of `IVONTrainerMixin` (see the module docstring)."""

    def _data_parallel_world_size(self) -> int:
        return self.args.world_size if self.args.parallel_mode == ParallelMode.DISTRIBUTED else 1

    def _fsdp_version(self) -> int | None:
        """The FSDP version Accelerate runs (None: no FSDP)."""
        plugin = getattr(self.accelerator.state, "fsdp_plugin", None)
        return None if plugin is None else int(getattr(plugin, "fsdp_version", 1))

    def _ivon_unsupported_parallelism(self) -> str | None:
        """What parallelism IVON cannot train under in this Trainer (one line: what, why, the alternative), or None."""
        from accelerate.utils import DistributedType

        refusal = refused_training_arguments(self.args)
        if refusal is not None and refusal != REFUSED_FSDP_WITHOUT_ACCELERATOR:
            return refusal
        distributed_type = self.accelerator.distributed_type
        if getattr(self, "is_deepspeed_enabled", False) or distributed_type == DistributedType.DEEPSPEED:
            return REFUSED_DEEPSPEED
        plugin = getattr(self.accelerator.state, "fsdp_plugin", None)
        if self.args.fsdp and plugin is None:
            return REFUSED_FSDP_WITHOUT_ACCELERATOR
        parallelism = getattr(self.accelerator, "parallelism_config", None)
        if plugin is not None:
            if self._fsdp_version() != 2:
                return REFUSED_FSDP1
            offload = getattr(plugin, "cpu_offload", None)
            if type(offload).__name__ == "CPUOffloadPolicy" or getattr(offload, "offload_params", False) is True:
                return REFUSED_OFFLOAD
            if parallelism is not None and getattr(parallelism, "dp_replicate_size", 1) > 1:
                return REFUSED_HSDP
            if self.model is not None and _is_quantized(self.model):
                return REFUSED_QUANTIZED
        if getattr(self, "is_distributed_loading_by_transformers", False):
            return ("a model sharded at load time (from_pretrained(distributed_config=...)): load it whole and let "
                    "Accelerate shard it with FSDP2 (fsdp_config: {version: 2})")  # fmt: skip
        if distributed_type in (DistributedType.XLA, DistributedType.MEGATRON_LM):
            return f"{distributed_type.value} training: use FSDP2 (fsdp_config: {{version: 2}}) or DDP on GPUs"
        if parallelism is not None and max(getattr(parallelism, "tp_size", 1), getattr(parallelism, "cp_size", 1)) > 1:
            return ("tensor or context parallelism (tp_size / cp_size > 1): IVON's noise and state follow FSDP2's "
                    "1-D shards only; shard the model with FSDP2 over all processes instead")  # fmt: skip
        return None

    def _load_optimizer_and_scheduler(self, checkpoint):
        # Resuming: the model and optimizer are prepared (under FSDP2 sharded, the optimizer's parameters swapped), so
        # the check can run; it also makes IVON create its sharded state, which torch.distributed.checkpoint's loader
        # expects (it would otherwise call step() with zero gradients to create it).
        if checkpoint is not None:
            self._check_ivon_synchronises(self.optimizer, self.model_wrapped)
        return super()._load_optimizer_and_scheduler(checkpoint)

    def _check_ivon_synchronises(self, optimizer, model=None) -> None:
        """Raise unless IVON averages its samples over exactly the Trainer's data-parallel processes, or, under FSDP2,
        its parameters are sharded over exactly them (which is known only once Accelerate has sharded the model)."""
        ivon = unwrap_optimizer(optimizer)
        if not isinstance(ivon, IVON):
            return
        if self._fsdp_version() == 2:
            if model is None or ivon.sharded_world_size == self.args.world_size:
                return
            raise ValueError(
                f"This Trainer shards the model over {self.args.world_size} FSDP2 processes, but its IVON optimizer's "
                f"parameters are sharded over {ivon.sharded_world_size}. Let the Trainer build IVON (optim='ivon'), or "
                "build it on the model's parameters with data_parallel=None."
            )
        if isinstance(model, DistributedDataParallel):
            world_size = model.process_group.size()
        else:
            world_size = self._data_parallel_world_size()
        if ivon.data_parallel_world_size == world_size:
            return
        raise ValueError(
            f"This Trainer runs {world_size} data-parallel processes, but its IVON optimizer averages samples over "
            f"{ivon.data_parallel_world_size}. Each rank draws its own noise, so IVON must average both the "
            "gradients and noise x gradients over the ranks itself; DDP's gradient averaging alone would "
            "underestimate the Hessian by the world size. Let the Trainer build IVON (optim='ivon'), or build it "
            "with data_parallel=None (the default) or True, after torch.distributed is initialized."
        )
