"""One process of the 2-process (CPU, gloo) FSDP2 checks of tests/optim/test_optim_fsdp.py.

Started by `torchrun --standalone --nproc_per_node 2 tests/optim/fsdp_worker.py OUT [killed|resume]`. Runs every check in
order (or, with a mode, one step of the kill -9 and resume check: `RESTART_MODES`) and writes
`OUT/rank{r}.pt` with each check's results or traceback, and rank 0 the gathered posterior under `OUT/posterior`.
The models are `fully_shard`ed (FSDP2) by hand: Accelerate enables FSDP only on accelerators, so the Trainer cannot
run it on CPU (docs/guides/multi-gpu.md). Leaves with `os._exit`, as tests/optim/distributed_worker.py does, and why.
"""

from __future__ import annotations

import os
import signal
import sys
from datetime import timedelta

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from ivon_lora.optim import IVON

WORLD_SIZE = 2
# cpu (gloo), as the tests run it; cuda (NCCL) from scripts/gpu_check_fsdp.sh, with one GPU per rank.
DEVICE = os.environ.get("IVON_FSDP_DEVICE", "cpu")
SEED = 5
SETTINGS = {"lr": 0.05, "ess": 1e4, "hess_init": 0.5, "beta2": 0.99, "weight_decay": 1e-3, "clip_radius": 0.1}


def tiny_lora_llama():
    """A 2-layer Llama (hidden 32) with LoRA on q, v; random B so that every adapter entry has a gradient."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)  # fmt: skip
    model = get_peft_model(LlamaForCausalLM(config), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.05)
    return model.to(DEVICE)


def shard(model):
    for layer in model.base_model.model.model.layers:
        fully_shard(layer)
    fully_shard(model)
    return model


def micro_batches(num_steps, accumulation, global_batch=4, length=12):
    """Token ids per optimizer step and micro-batch, the global batch (every rank builds the same)."""
    generator = torch.Generator().manual_seed(123)
    return [[torch.randint(0, 64, (global_batch, length), generator=generator) for _ in range(accumulation)]
            for _ in range(num_steps)]  # fmt: skip


def replay_noise(optimizer, rank, world_size):
    """Every sample's noise: one draw of the FULL parameters' shape from a generator shared by the runs compared,
    of which a sharded run keeps its rank's Shard(0) chunk. So a sharded and a single-process run use the same noise."""
    generator = torch.Generator().manual_seed(99)
    params = [p for group in optimizer.param_groups for p in group["params"]]

    def sample_noise(_params, noise, std):
        chunks = []
        for p in params:
            full = torch.randn(p.shape, generator=generator, dtype=noise.dtype) * std
            chunks.append(full.chunk(world_size, dim=0)[rank].reshape(-1) if world_size > 1 else full.reshape(-1))
        noise.copy_(torch.cat(chunks))  # drawn on the CPU, so that every device gets the same numbers

    optimizer._sample_noise = sample_noise


def train(model, optimizer, batches, rank, world_size):
    """Each micro-batch one posterior sample: the sharded run sees its rank's half of every global micro-batch."""
    for step_batches in batches:
        for ids in step_batches:
            if world_size > 1:
                ids = ids.chunk(world_size)[rank]
            ids = ids.to(DEVICE)
            with optimizer.sampled_params(train=True):
                model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()


def full(tensor):
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def adapter(model):
    return {name: full(p.detach()).cpu().clone() for name, p in model.named_parameters() if p.requires_grad}


def priors_for(model):
    generator = torch.Generator().manual_seed(7)
    return {name: (torch.randn(p.shape, generator=generator) * 0.1, torch.rand(p.shape, generator=generator) * 1e-2)
            for name, p in model.named_parameters() if p.requires_grad}  # fmt: skip


def run(rank, world_size, with_prior, num_steps=3, accumulation=2, swap=False):
    """``swap``: as Accelerate prepares FSDP2 under the Trainer, IVON (and its priors) is built on the plain model,
    which is sharded afterwards, and the optimizer's parameters are swapped for the sharded ones in place."""
    model = tiny_lora_llama()
    model = shard(model) if world_size > 1 and not swap else model
    optimizer = IVON([p for p in model.parameters() if p.requires_grad], seed=SEED, data_parallel=False
                     if world_size == 1 else None, **SETTINGS)  # fmt: skip
    if with_prior:
        named = dict(model.named_parameters())
        for name, (mean, precision) in priors_for(model).items():
            optimizer.set_prior(named[name], mean, precision)
    if swap:
        names = {p: name for name, p in model.named_parameters()}
        positions = [[names[p] for p in group["params"]] for group in optimizer.param_groups]
        named = dict(shard(model).named_parameters())
        for group, group_names in zip(optimizer.param_groups, positions):
            group["params"][:] = [named[name] for name in group_names]
    replay_noise(optimizer, rank, world_size)
    train(model, optimizer, micro_batches(num_steps, accumulation), rank, world_size)
    return model, optimizer


def check_equivalence(rank, out):
    """Sharded IVON == single-process IVON on the same global batches and noise (gradient accumulation 2)."""
    results = {}
    for with_prior in (False, True):
        sharded_model, sharded = run(rank, WORLD_SIZE, with_prior)
        single_model, single = run(rank, 1, with_prior)
        sharded_params = [p for group in sharded.param_groups for p in group["params"]]
        single_params = [p for group in single.param_groups for p in group["params"]]
        hess = [
            (full(sharded.state[p]["hess"]), single.state[q]["hess"]) for p, q in zip(sharded_params, single_params)
        ]
        means = list(zip(adapter(sharded_model).values(), adapter(single_model).values()))
        results["prior" if with_prior else "plain"] = {
            "mean_max_diff": max(float((a - b).abs().max()) for a, b in means),
            "hess_max_rel_diff": max(float(((a - b) / b).abs().max()) for a, b in hess),
            "mean_moved": max(
                float((a - b).abs().max())
                for a, b in zip(adapter(sharded_model).values(), adapter(tiny_lora_llama()).values())
            ),
            "local_shapes": sorted({tuple(p.to_local().shape) for p in sharded_params}),
            "state_is_sharded": all(isinstance(sharded.state[p]["hess"], DTensor) for p in sharded_params),
            "sharded_world_size": sharded.sharded_world_size,
        }
        if with_prior:  # built before sharding, its prior set on the plain parameters, then swapped: the same run
            swapped_model, _ = run(rank, WORLD_SIZE, with_prior, swap=True)
            results["swapped_equal"] = all(
                torch.equal(a, b) for a, b in zip(adapter(swapped_model).values(), adapter(sharded_model).values())
            )
        if not with_prior:
            from ivon_lora.posterior import Posterior
            from ivon_lora.trainer.fsdp import gathered_posterior

            posterior = gathered_posterior(sharded, sharded_model)
            reference = Posterior.from_optimizer(single, single_model)
            results["posterior"] = {
                "keys_equal": sorted(posterior.mean) == sorted(reference.mean),
                "mean_max_diff": max(float((posterior.mean[k] - reference.mean[k]).abs().max()) for k in reference.mean),
                "variance_max_rel_diff": max(float(((posterior.variance[k] - reference.variance[k])
                                                    / reference.variance[k]).abs().max()) for k in reference.variance),
                "step": posterior.config["step"],
            }  # fmt: skip
            if rank == 0:
                posterior.save(os.path.join(out, "posterior"), include_mean=True)
    return results


class Quadratic(nn.Module):
    def __init__(self, center):
        super().__init__()
        self.x = nn.Parameter(center.clone())

    def forward(self, curvature, center):
        return (0.5 * curvature * (self.x - center) ** 2).sum()


def check_hessian(rank, out, num_steps=800):
    """On a quadratic with a known Hessian, the sharded estimate (each rank's own noise on its shard) converges to it."""
    curvature = torch.linspace(0.5, 5.0, 200, dtype=torch.float64, device=DEVICE)
    center = torch.linspace(-1.0, 1.0, 200, dtype=torch.float64, device=DEVICE)
    model = fully_shard(Quadratic(center))
    optimizer = IVON(model.parameters(), lr=0.0, ess=100.0, hess_init=1.0, beta2=0.99, weight_decay=0.0, seed=0)
    with optimizer.sampled_params():  # the first noise, gathered: each rank draws its own shard's from its own stream
        first_noise = full(model.x.detach()) - center
    optimizer = IVON(model.parameters(), lr=0.0, ess=100.0, hess_init=1.0, beta2=0.99, weight_decay=0.0, seed=0)
    average = None
    for step in range(num_steps):
        with optimizer.sampled_params(train=True):
            model(curvature, center).backward()
        optimizer.step()
        if step >= num_steps // 2:
            hess = full(optimizer.state[model.x]["hess"]) / (num_steps - num_steps // 2)
            average = hess if average is None else average + hess
    return {"curvature": curvature.cpu(), "estimate": average.cpu(), "first_noise": first_noise.cpu()}


def check_resume(rank, out):
    """A distributed checkpoint (torch.distributed.checkpoint, as Accelerate writes for FSDP2) after 2 of 4 steps,
    loaded into a fresh model and optimizer, continues bitwise; the deferred gradient sync is refused."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (get_model_state_dict, get_optimizer_state_dict,
                                                         set_model_state_dict, set_optimizer_state_dict)  # fmt: skip

    def fresh():
        model = shard(tiny_lora_llama())
        optimizer = IVON([p for p in model.parameters() if p.requires_grad], seed=SEED, **SETTINGS)
        return model, optimizer

    batches = micro_batches(4, 2)
    model, optimizer = fresh()
    train(model, optimizer, batches[:2], rank, WORLD_SIZE)
    path = os.path.join(out, "checkpoint")
    dcp.save({"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, optimizer)},
             checkpoint_id=path)  # fmt: skip
    train(model, optimizer, batches[2:], rank, WORLD_SIZE)
    uninterrupted = adapter(model)

    model, optimizer = fresh()
    state = {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, optimizer)}
    dcp.load(state, checkpoint_id=path)
    set_model_state_dict(model, state["model"])
    set_optimizer_state_dict(model, optimizer, state["optim"])
    train(model, optimizer, batches[2:], rank, WORLD_SIZE)
    resumed = adapter(model)

    model.set_requires_gradient_sync(False)
    try:
        with optimizer.sampled_params(train=True):
            ids = batches[0][0].chunk(WORLD_SIZE)[rank].to(DEVICE)
            model(input_ids=ids, labels=ids).loss.backward()
        deferred_error = None
    except RuntimeError as error:
        deferred_error = str(error)
    finally:
        model.set_requires_gradient_sync(True)
    return {
        "bitwise": all(torch.equal(uninterrupted[k], resumed[k]) for k in uninterrupted),
        "moved": any(not torch.equal(uninterrupted[k], adapter(fresh()[0])[k]) for k in uninterrupted),
        "deferred_error": deferred_error,
    }


# ----------------------------------------------------------------------------------------- through the Trainer


def trainer_class(fsdp2: bool):
    """ChoiceTrainer, with Accelerate's FSDP2 switched on when `fsdp2`: Accelerate enables FSDP only on accelerators
    (on CPU its state says MULTI_CPU), but its FSDP2 preparation (fully_shard by decoder layer, the optimizer's
    parameters swapped for the shards, the checkpoints) runs on CPU, so the Trainer's FSDP2 path is tested here."""
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    from ivon_lora.choice import ChoiceTrainer

    class FSDP2Trainer(ChoiceTrainer):
        def create_accelerator_and_postprocess(self):
            super().create_accelerator_and_postprocess()
            state = self.accelerator.state
            state.distributed_type = DistributedType.FSDP
            state.fsdp_plugin = FullyShardedDataParallelPlugin(
                fsdp_version=2, reshard_after_forward=True, auto_wrap_policy="transformer_based_wrap",
                transformer_cls_names_to_wrap=["LlamaDecoderLayer"], state_dict_type="SHARDED_STATE_DICT",
            )  # fmt: skip
            self.is_fsdp_enabled = True

    return FSDP2Trainer if fsdp2 else ChoiceTrainer


def replayed_noise(self, params, noise, std):
    """IVON._sample_noise replaced: a full-shape draw per parameter from one generator (the same in every process),
    of which a shard keeps its chunk; the single-process run and the sharded one then use the same noise."""
    if not hasattr(self, "_replay"):
        self._replay = torch.Generator().manual_seed(99)
    chunks = []
    for p in params:
        draw = torch.randn(p.shape, generator=self._replay, dtype=noise.dtype) * std
        if isinstance(p, DTensor):
            draw = draw.chunk(p.device_mesh.size(), dim=0)[p.device_mesh.get_local_rank()]
        chunks.append(draw.reshape(-1))
    noise.copy_(torch.cat(chunks))


class KillAtStep:
    """A TrainerCallback that SIGKILLs this process at the end of step `step` (after the step-2 checkpoint): a crash
    nothing can clean up after, as `kill -9` is."""

    def __init__(self, step: int):
        self.step = step

    def __getattr__(self, name):  # every other TrainerCallback event: nothing
        if name.startswith("on_"):
            return lambda *args, **kwargs: None
        raise AttributeError(name)

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            sys.stdout.flush()
            os.kill(os.getpid(), signal.SIGKILL)


def trainer_run(run_dir, world_size, replay=False, resume_from=None, kill_at=None):
    """IVON through the Trainer: 4 steps of 2 micro-batches on the global batch 8 (4 per rank on 2 ranks), a checkpoint
    at step 2, max_grad_norm 1 (clipped on the sharded gradients); the final adapter and posterior saved."""
    from distributed_worker import hf_fixtures

    from ivon_lora.choice import ChoiceCollator
    from ivon_lora.trainer import IVONTrainingArguments

    tokenizer, dataset, build_model = hf_fixtures()
    model = build_model()
    for module in model.modules():  # no dropout: the sharded and the single-process run see the same function
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    args = IVONTrainingArguments(
        output_dir=run_dir, max_steps=4, per_device_train_batch_size=8 // world_size, gradient_accumulation_steps=2,
        learning_rate=0.05, ivon_ess=1e6, ivon_hess_init=1e-3, weight_decay=1e-4, max_grad_norm=1.0,
        lr_scheduler_type="constant", save_strategy="steps", save_steps=2, logging_steps=1, report_to="none",
        use_cpu=True, remove_unused_columns=False, disable_tqdm=True, seed=7,
    )  # fmt: skip
    trainer = trainer_class(world_size > 1)(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                                            data_collator=ChoiceCollator(tokenizer))  # fmt: skip
    if kill_at is not None:
        trainer.add_callback(KillAtStep(kill_at))
    original = IVON._sample_noise
    if replay:
        IVON._sample_noise = replayed_noise
    try:
        trainer.train(resume_from_checkpoint=resume_from)
    finally:
        IVON._sample_noise = original
    trainer.save_model(os.path.join(run_dir, "final"))  # every rank: the posterior is gathered from the shards
    return trainer


def check_trainer(rank, out):
    """FSDP2 through the Trainer: the optimizer is sharded with the model; a run with replayed noise (compared with a
    single process in the test); a run resumed from its step-2 checkpoint (compared with the uninterrupted one)."""
    replayed = trainer_run(os.path.join(out, "trainer-replayed"), WORLD_SIZE, replay=True)
    ivon = replayed.ivon_optimizer
    result = {
        "sharded_world_size": ivon.sharded_world_size,
        "model_is_fsdp": type(replayed.model_wrapped).__name__,
        "state_is_sharded": all(isinstance(ivon.state[p]["hess"], DTensor) for p in ivon.param_groups[0]["params"]),
    }
    trainer_run(os.path.join(out, "trainer-straight"), WORLD_SIZE)
    dist.barrier()
    checkpoint = os.path.join(out, "trainer-straight", "checkpoint-2")
    result["checkpoint_files"] = sorted(os.listdir(checkpoint))
    trainer_run(os.path.join(out, "trainer-resumed"), WORLD_SIZE, resume_from=checkpoint)
    dist.barrier()
    return result


CHECKS = {"equivalence": check_equivalence, "hessian": check_hessian, "resume": check_resume, "trainer": check_trainer}


# A second launch after the checks, `fsdp_worker.py OUT killed` then `fsdp_worker.py OUT resume`: the Trainer's FSDP2
# run killed with SIGKILL at step 3 (after its step-2 checkpoint), then resumed from that checkpoint by new processes.
RESTART_MODES = {
    "killed": lambda out: trainer_run(os.path.join(out, "trainer-killed"), WORLD_SIZE, kill_at=3),
    "resume": lambda out: trainer_run(
        os.path.join(out, "trainer-killed"), WORLD_SIZE, resume_from=os.path.join(out, "trainer-killed", "checkpoint-2")
    ),  # fmt: skip
}


def main(out: str, mode: str | None = None) -> int:
    torch.set_num_threads(1)
    if DEVICE == "cuda":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    backend = "cuda:nccl,cpu:gloo" if DEVICE == "cuda" else "gloo"
    dist.init_process_group(backend, timeout=timedelta(seconds=120))
    assert dist.get_world_size() == WORLD_SIZE
    if mode is not None:
        RESTART_MODES[mode](out)
        dist.barrier()
        dist.destroy_process_group()
        return 0
    from distributed_worker import run_checks

    return run_checks(CHECKS, out)


if __name__ == "__main__":
    exit_code = main(sys.argv[1], *sys.argv[2:3])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(exit_code)
