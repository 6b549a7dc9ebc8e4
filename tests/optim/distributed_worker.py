"""One process of the 2-process (CPU, gloo) data-parallel checks of tests/optim/test_optim_distributed.py.

Started by `torchrun --standalone --nproc_per_node 2 tests/optim/distributed_worker.py OUT`. Runs every check of the
launch in order (pure torch first, then the HF Trainer) and writes `OUT/rank{r}.pt`: per check either its
results (tensors, messages) or the traceback it raised. The test process compares the two ranks' files.

Teardown: after its results are on disk the worker leaves with `os._exit`, skipping the interpreter's and the
C++ runtime's exit handlers. With Hugging Face libraries imported, a normal exit sometimes aborts with
"terminate called without an active exception" (a native thread still joinable at static destruction), which
would fail an otherwise finished run.
"""

from __future__ import annotations

import os
import sys
import traceback
import warnings
from datetime import timedelta

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch
import torch.distributed as dist
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from ivon_lora.optim import IVON

WORLD_SIZE = 2
SEED = 11


# ------------------------------------------------------------------------------------------------ pure torch


def quadratic_problem(num_elements=200):
    curvature = torch.linspace(0.5, 5.0, num_elements, dtype=torch.float64)
    center = torch.linspace(-1.0, 1.0, num_elements, dtype=torch.float64)
    return curvature, center


def hessian_estimate(optimizer, x, curvature, center, num_steps, average_ddp_grads=False):
    """The Hessian estimate averaged over the second half of `num_steps` steps at lr=0 (mean held at `center`)."""
    hess_average = torch.zeros_like(x)
    for step in range(num_steps):
        with optimizer.sampled_params(train=True):
            (0.5 * curvature * (x - center) ** 2).sum().backward()
            if average_ddp_grads:  # what DistributedDataParallel does to the gradients in backward
                dist.all_reduce(x.grad, op=dist.ReduceOp.AVG)
        optimizer.step()
        if step >= num_steps // 2:
            hess_average += optimizer.state[x]["hess"] / (num_steps - num_steps // 2)
    return hess_average


def check_hessian(rank):
    """IVON's own sync (per-rank noise, g and eps*g averaged) vs the naive one (per-rank noise, DDP-averaged g)."""
    curvature, center = quadratic_problem()
    settings = {"lr": 0.0, "ess": 100.0, "hess_init": 1.0, "beta2": 0.99, "weight_decay": 0.0}
    x = nn.Parameter(center.clone())
    synced = hessian_estimate(IVON([x], seed=0, **settings), x, curvature, center, num_steps=1200)
    x = nn.Parameter(center.clone())
    # Naive: IVON does not sync, every rank has its own seed (so its own noise), DDP averages the gradients.
    naive_ivon = IVON([x], seed=100 + rank, data_parallel=False, **settings)
    naive = hessian_estimate(naive_ivon, x, curvature, center, num_steps=1200, average_ddp_grads=True)
    # Both: IVON syncs AND the gradients were averaged before; IVON warns at the first step.
    x = nn.Parameter(center.clone())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        hessian_estimate(IVON([x], seed=0, **settings), x, curvature, center, num_steps=2, average_ddp_grads=True)
    return {
        "curvature": curvature,
        "synced": synced,
        "naive": naive,
        "double_sync_warnings": [str(w.message) for w in caught],
    }


def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3)).double()


def rank_batches(rank, num_micro_batches=2):
    """This rank's micro-batches: every rank and micro-batch gets different data."""
    generator = torch.Generator().manual_seed(1000 + rank)
    batches = []
    for _ in range(num_micro_batches):
        inputs = torch.randn(6, 5, generator=generator, dtype=torch.float64)
        batches.append((inputs, torch.randn(6, 3, generator=generator, dtype=torch.float64)))
    return batches


def train_steps(optimizer, model, batches, num_steps):
    """`num_steps` steps, each one sample per micro-batch (gradient accumulation over `batches`)."""
    for _ in range(num_steps):
        for inputs, targets in batches:
            with optimizer.sampled_params(train=True):
                nn.functional.mse_loss(model(inputs), targets).backward()
        optimizer.step()


def optimizer_state(optimizer, model):
    return [{k: v.clone() for k, v in optimizer.state[p].items()} for p in model.parameters()]


def params(model):
    return [p.detach().clone() for p in model.parameters()]


def current_noise(optimizer, model):
    """The noise the optimizer draws next (drawing it)."""
    means = params(model)
    with optimizer.sampled_params():
        return [p.detach() - m for p, m in zip(model.parameters(), means)]


def check_training_and_resume(rank, out):
    """Data-parallel training on different data per rank; a rank-0-only checkpoint; resume on both ranks."""
    model = mlp()
    optimizer = IVON(model.parameters(), lr=0.05, ess=50.0, beta2=0.99, clip_radius=0.1, seed=SEED)
    batches = rank_batches(rank)
    train_steps(optimizer, model, batches, num_steps=3)
    result = {"params_3": params(model), "state_3": optimizer_state(optimizer, model)}

    checkpoint = os.path.join(out, "ivon_checkpoint.pt")
    if rank == 0:  # as the HF Trainer does: only rank 0 calls state_dict(), which must need no collective
        state_dict = optimizer.state_dict()
        torch.save({"model": model.state_dict(), "optimizer": state_dict}, checkpoint)
        result["saved_ivon_keys"] = sorted(state_dict["ivon"])
        result["saved_world_size"] = state_dict["ivon"]["world_size"]
        result["saved_num_rank_states"] = len(state_dict["ivon"]["generator_states_by_rank"])
    dist.barrier()

    train_steps(optimizer, model, batches, num_steps=2)  # uninterrupted
    result["params_5"], result["state_5"] = params(model), optimizer_state(optimizer, model)
    result["noise_after_5"] = current_noise(optimizer, model)

    saved = torch.load(checkpoint, weights_only=True)
    resumed_model = mlp(seed=5)
    resumed_model.load_state_dict(saved["model"])
    resumed = IVON(resumed_model.parameters(), lr=0.05, ess=50.0, beta2=0.99, clip_radius=0.1, seed=999)
    resumed.load_state_dict(saved["optimizer"])
    train_steps(resumed, resumed_model, batches, num_steps=2)
    result["resumed_params_5"] = params(resumed_model)
    result["resumed_state_5"] = optimizer_state(resumed, resumed_model)
    result["resumed_noise_after_5"] = current_noise(resumed, resumed_model)
    return result


def set_test_priors(optimizer, model):
    """A prior N(m0, 1/(ess * p0)) on every parameter, the same on every rank (the test process rebuilds it)."""
    generator = torch.Generator().manual_seed(77)
    for p in model.parameters():
        mean = torch.randn(p.shape, generator=generator, dtype=p.dtype)
        optimizer.set_prior(p, mean, torch.rand(p.shape, generator=generator, dtype=p.dtype) * 3)


def check_training_with_prior(rank, out):
    """Data-parallel training with a prior on every parameter: the ranks stay identical (the test process also
    replays both ranks' samples in one process)."""
    model = mlp()
    optimizer = IVON(model.parameters(), lr=0.05, ess=50.0, beta2=0.99, clip_radius=0.1, seed=SEED)
    set_test_priors(optimizer, model)
    train_steps(optimizer, model, rank_batches(rank), num_steps=3)
    return {"params_3": params(model), "state_3": optimizer_state(optimizer, model)}


def check_sample_count_mismatch(rank):
    model = mlp()
    optimizer = IVON(model.parameters(), lr=0.05, ess=50.0, seed=SEED)
    inputs, targets = rank_batches(rank)[0]
    for _ in range(rank + 1):  # rank 0 records one sample, rank 1 two
        with optimizer.sampled_params(train=True):
            nn.functional.mse_loss(model(inputs), targets).backward()
    try:
        optimizer.step()
    except RuntimeError as error:
        return {"error": str(error)}
    return {"error": None}


def check_single_process_checkpoint(rank, out):
    """A single process's checkpoint loaded by both ranks: rank 0 continues its noise, rank 1 starts its own."""
    path = os.path.join(out, "single_process.pt")
    if rank == 0:
        model = mlp()
        single = IVON(model.parameters(), lr=0.05, ess=50.0, seed=SEED, data_parallel=False)
        train_steps(single, model, rank_batches(0), num_steps=1)
        torch.save({"model": model.state_dict(), "optimizer": single.state_dict()}, path)
        expected = current_noise(single, model)
    dist.barrier()
    saved = torch.load(path, weights_only=True)
    model = mlp()
    model.load_state_dict(saved["model"])
    optimizer = IVON(model.parameters(), lr=0.05, ess=50.0, seed=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        optimizer.load_state_dict(saved["optimizer"])
    result = {"noise": current_noise(optimizer, model), "warnings": [str(w.message) for w in caught]}
    if rank == 0:
        result["single_process_noise"] = expected
    return result


# ----------------------------------------------------------------------------------------- Hugging Face Trainer


def hf_fixtures():
    import datasets

    from ivon_lora.modeling import (
        BUILTIN_MODELS,
        apply_lora,
        build_tiny_model,
        build_tokenizer,
    )
    from ivon_lora.config import ModelArguments
    from ivon_lora.tasks import load_examples

    tokenizer = build_tokenizer(BUILTIN_MODELS["builtin:tiny-llama"])
    examples = load_examples("synthetic", "train", limit=64)
    rows = [{"prompt": e.prompt, "answers": list(e.answers), "gold": e.gold} for e in examples]
    dataset = datasets.Dataset.from_list(rows)

    def model():
        torch.manual_seed(0)
        model_args = ModelArguments(
            "builtin:tiny-llama", lora_rank=4, lora_dropout=0.1, lora_target=["q_proj", "v_proj"]
        )
        return apply_lora(build_tiny_model(BUILTIN_MODELS["builtin:tiny-llama"], tokenizer, seed=0), model_args)

    return tokenizer, dataset, model


def hf_trainer(out, tokenizer, dataset, model, trainer_class=None, optimizer=None, **overrides):

    from ivon_lora.choice import ChoiceCollator, ChoiceTrainer
    from ivon_lora.trainer import IVONTrainingArguments

    values = {
        "output_dir": out, "max_steps": 4, "per_device_train_batch_size": 4, "gradient_accumulation_steps": 2,
        "learning_rate": 0.05, "ivon_ess": 1e6, "ivon_hess_init": 1e-3, "ivon_clip_radius": float("inf"),
        "weight_decay": 1e-4, "max_grad_norm": 1.0, "lr_scheduler_type": "constant", "save_strategy": "steps",
        "save_steps": 2, "logging_steps": 1, "report_to": "none", "use_cpu": True, "remove_unused_columns": False,
        "disable_tqdm": True, "seed": 7,
    }  # fmt: skip
    values.update(overrides)
    return ChoiceTrainer(
        model=model,
        args=IVONTrainingArguments(**values),
        train_dataset=dataset,
        data_collator=ChoiceCollator(tokenizer),
        processing_class=tokenizer,
        optimizers=(optimizer, None),
    )


def trainer_results(trainer):
    ivon = trainer.ivon_optimizer
    adapter = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    state = [{k: v.clone() for k, v in ivon.state[p].items()} for p in ivon.param_groups[0]["params"]]
    return {"adapter": adapter, "state": state}


def check_hf_trainer(rank, out):
    """IVON through the HF Trainer on 2 processes: GA 2, 4 steps, checkpoints; DDP never all-reduces; resume."""
    from transformers import TrainerCallback

    tokenizer, dataset, build_model = hf_fixtures()
    comm_hook_calls = []

    def counting_hook(state, bucket):  # DDP calls it for every gradient all-reduce it would make
        comm_hook_calls.append(1)
        return dist.all_reduce(bucket.buffer(), async_op=True).get_future().then(lambda f: f.value()[0])

    class RegisterCommHook(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            trainer.model_wrapped.register_comm_hook(None, counting_hook)

    run_dir = os.path.join(out, "hf")
    trainer = hf_trainer(run_dir, tokenizer, dataset, build_model())
    trainer.add_callback(RegisterCommHook())
    trainer.train()
    trainer.save_model()  # every rank calls it (as train.py does): must not deadlock
    result = {
        "straight": trainer_results(trainer),
        "model_wrapped": type(trainer.model_wrapped).__name__,
        "ddp_all_reduces": len(comm_hook_calls),
        "data_parallel_world_size": trainer.ivon_optimizer.data_parallel_world_size,
        "losses": [entry["loss"] for entry in trainer.state.log_history if "loss" in entry],
    }
    dist.barrier()
    result["saved_files"] = sorted(os.listdir(run_dir))
    result["checkpoint_files"] = sorted(os.listdir(os.path.join(run_dir, "checkpoint-2")))

    resumed = hf_trainer(os.path.join(out, "hf-resumed"), tokenizer, dataset, build_model())
    resumed.train(resume_from_checkpoint=os.path.join(run_dir, "checkpoint-2"))
    result["resumed"] = trainer_results(resumed)
    return result


def check_hf_trainer_with_prior(rank, out):
    """Continual finetuning under DDP: the posterior of check_hf_trainer's run as the prior, 4 steps with a checkpoint
    at 2, resumed from it; the ranks stay identical and the resumed run equals the straight one."""
    from ivon_lora.posterior import Posterior

    tokenizer, dataset, build_model = hf_fixtures()
    prior = Posterior.load(os.path.join(out, "hf"))
    provenance = {"run_dir": os.path.join(out, "hf")}

    def trainer(run_dir):
        model = build_model()
        prior.apply_mean(model)
        result = hf_trainer(run_dir, tokenizer, dataset, model, weight_decay=0.0)
        result.ivon_prior, result.ivon_prior_provenance = prior, provenance
        return result

    straight = trainer(os.path.join(out, "hf-prior"))
    straight.train()
    straight.save_model()
    result = {"straight": trainer_results(straight), "ess": straight.ivon_optimizer.param_groups[0]["ess"]}
    dist.barrier()
    with open(os.path.join(out, "hf-prior", "posterior_config.json")) as f:
        import json

        result["saved_prior_run"] = json.load(f).get("prior_run")
    resumed = trainer(os.path.join(out, "hf-prior-resumed"))
    resumed.train(resume_from_checkpoint=os.path.join(out, "hf-prior", "checkpoint-2"))
    result["resumed"] = trainer_results(resumed)
    return result


def check_hf_refusals(rank, out):
    """The wrong configurations fail with a clear error on every rank, before any training."""
    tokenizer, dataset, build_model = hf_fixtures()
    messages = {}
    model = build_model()
    unsynced = IVON([p for p in model.parameters() if p.requires_grad], lr=0.05, ess=1e6, data_parallel=False)
    trainer = hf_trainer(
        os.path.join(out, "unsynced"), tokenizer, dataset, model, optimizer=unsynced, save_strategy="no"
    )
    try:
        trainer.train()
    except ValueError as error:
        messages["unsynced"] = str(error)
    try:  # on CPU, where Accelerate would run DDP instead: refused by the config, before any Trainer exists
        hf_trainer(os.path.join(out, "fsdp"), tokenizer, dataset, build_model(), fsdp=True, save_strategy="no")
    except ValueError as error:
        messages["fsdp"] = str(error)
    return messages


# ------------------------------------------------------------------------------------------------- driver

# ----------------------------------------------------------------------------------------- sharded evaluation


def sharded_predictions(rank=None, out=None):
    """`predict` on 37 examples (not a multiple of 2) with 2 posterior samples; sharded when run on 2 ranks."""
    from ivon_lora.evaluation import predict
    from ivon_lora.posterior import Posterior, adapter_parameters
    from ivon_lora.tasks import load_examples

    tokenizer, _, build_model = hf_fixtures()
    model = build_model()
    mean = {key: p.detach().clone() for key, p in adapter_parameters(model).items()}
    posterior = Posterior(mean, {key: torch.full_like(m, 1e-2) for key, m in mean.items()})
    examples = load_examples("synthetic", "validation", limit=37)
    predictions = predict(model, tokenizer, examples, posterior, num_samples=2, batch_size=4, seed=3)
    return {"ids": predictions.ids, "mean": predictions.mean, "samples": predictions.samples}


# ----------------------------------------------------------------------------------------- token-level losses


def sft_token_weighted_run(rank=None, out=None):
    """One IVON SFT step over 8 conversations of very different lengths, every posterior sample with the same noise:
    on 2 ranks x 2 micro-batches x 2 conversations, or (in the test process) 1 x 8. Token weighting normalised by
    the global token count makes both the same update."""
    import datasets

    from ivon_lora.builtin import BUILTIN_MODELS, build_tiny_model, build_tokenizer
    from ivon_lora.config import ModelArguments
    from ivon_lora.modeling import apply_lora
    from ivon_lora.sft import IVONSFTConfig, IVONSFTTrainer

    words = "the cat sat on a mat while dogs ran past seven green trees".split()
    rows = [
        {
            "messages": [
                {"role": "user", "content": " ".join(words[i : i + 3])},
                {"role": "assistant", "content": " ".join(words[: 1 + (5 * i) % 12])},
            ]
        }
        for i in range(8)
    ]
    tokenizer = build_tokenizer(BUILTIN_MODELS["builtin:tiny-llama"])
    torch.manual_seed(0)
    model_args = ModelArguments("builtin:tiny-llama", lora_rank=4, lora_dropout=0.0, lora_target=["q_proj", "v_proj"])
    model = apply_lora(build_tiny_model(BUILTIN_MODELS["builtin:tiny-llama"], tokenizer, seed=0), model_args)
    distributed = rank is not None
    args = IVONSFTConfig(
        output_dir=os.path.join(out, "sft") if out else "unused", max_steps=1, learning_rate=0.05, ivon_ess=1e6,
        ivon_hess_init=1e-3, ivon_clip_radius=float("inf"), weight_decay=1e-4, max_grad_norm=0.0,
        lr_scheduler_type="constant", save_strategy="no", report_to="none", use_cpu=True, disable_tqdm=True, seed=7,
        max_length=64, per_device_train_batch_size=2 if distributed else 8,
        gradient_accumulation_steps=2 if distributed else 1,
    )  # fmt: skip

    def same_noise_every_sample(self, params, noise, std):
        noise.normal_(0.0, std, generator=torch.Generator().manual_seed(123))

    original = IVON._sample_noise
    IVON._sample_noise = same_noise_every_sample
    try:
        trainer = IVONSFTTrainer(model=model, args=args, train_dataset=datasets.Dataset.from_list(rows),
                                 processing_class=tokenizer)  # fmt: skip
        tokens = [int((b["labels"][:, 1:] != -100).sum()) for b in trainer.get_train_dataloader()]
        trainer.train()
    finally:
        IVON._sample_noise = original
    return {**trainer_results(trainer), "micro_batch_tokens": tokens}


CHECKS = {
    "hessian": lambda rank, out: check_hessian(rank),
    "training_and_resume": check_training_and_resume,
    "training_with_prior": check_training_with_prior,
    "sample_count_mismatch": lambda rank, out: check_sample_count_mismatch(rank),
    "single_process_checkpoint": check_single_process_checkpoint,
    "hf_trainer": check_hf_trainer,
    "hf_trainer_prior": check_hf_trainer_with_prior,
    "hf_refusals": check_hf_refusals,
    "sharded_predictions": sharded_predictions,
    "sft_token_weighted": sft_token_weighted_run,
}


def main(out: str) -> int:
    torch.set_num_threads(1)
    # A rank that fails inside a check leaves the other waiting in a collective: time out instead of hanging.
    dist.init_process_group("gloo", timeout=timedelta(seconds=120))
    assert dist.get_world_size() == WORLD_SIZE
    return run_checks(CHECKS, out)


def run_checks(checks: dict, out: str) -> int:
    """Run `checks` in order on this rank and write OUT/rank{r}.pt with each one's result or traceback; the exit
    code. The first failure stops the run (the ranks may be out of step then: later collectives could pair up
    wrongly), and only a run without one leaves the process group cleanly."""
    rank = dist.get_rank()
    results, failed = {}, False
    for name, check in checks.items():
        try:
            results[name] = {"ok": True, "result": check(rank, out)}
        except Exception:  # noqa: BLE001 - reported to the test process, which shows the traceback
            failed = True
            results[name] = {"ok": False, "error": traceback.format_exc()}
            print(f"rank {rank}, check {name!r} failed:\n{results[name]['error']}", file=sys.stderr, flush=True)
            break
    path = os.path.join(out, f"rank{rank}.pt")
    torch.save(results, path + ".tmp")
    os.replace(path + ".tmp", path)
    if not failed:
        dist.barrier()
        dist.destroy_process_group()
    return 1 if failed else 0


if __name__ == "__main__":
    exit_code = main(sys.argv[1])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(exit_code)
