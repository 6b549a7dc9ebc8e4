"""What optim='ivon' refuses to train under, one line each (ivon_lora/trainer/parallelism.py).

The settings a config states (DeepSpeed, FSDP1, CPU offload, HSDP, FSDP without an accelerator, sampled evaluation
under FSDP2) are refused by IVONTrainingArguments before anything loads (through the CLI: tests/test_user_errors.py);
what only the running Trainer knows (Accelerate's FSDP plugin, its parallelism config, a quantized base model) by
`create_optimizer`, checked here on the mixin with Accelerate's own plugin objects (FSDP runs only on GPUs).
"""

from types import SimpleNamespace

import pytest
import torch

from ivon_lora.trainer import parallelism
from ivon_lora.trainer.parallelism import ParallelismMixin, refused_training_arguments


def _args(**values):
    fields = {"deepspeed": None, "fsdp": "", "fsdp_config": None, "use_cpu": False, "ivon_eval_samples": 0,
              "ivon_loo_eval": False}  # fmt: skip
    return SimpleNamespace(**{**fields, **values})


@pytest.fixture
def with_accelerator(monkeypatch):
    monkeypatch.setattr(torch.accelerator, "is_available", lambda: True)


@pytest.mark.parametrize(
    "values, refusal",
    [
        ({"deepspeed": "ds_config.json"}, parallelism.REFUSED_DEEPSPEED),
        ({"fsdp": "full_shard", "fsdp_config": {"fsdp_version": 1}}, parallelism.REFUSED_FSDP1),
        ({"fsdp": True, "fsdp_config": {"version": 1}}, parallelism.REFUSED_FSDP1),
        ({"fsdp": "full_shard offload"}, parallelism.REFUSED_OFFLOAD),
        ({"fsdp": ["full_shard"], "fsdp_config": {"cpu_offload": True}}, parallelism.REFUSED_OFFLOAD),
        ({"fsdp": "hybrid_shard"}, parallelism.REFUSED_HSDP),
        ({"fsdp": "full_shard", "ivon_eval_samples": 4}, parallelism.REFUSED_SAMPLED_EVALUATION),
        ({"fsdp": "full_shard", "ivon_loo_eval": True}, parallelism.REFUSED_SAMPLED_EVALUATION),
        ({"fsdp": "full_shard"}, None),
        ({"fsdp": "full_shard", "fsdp_config": {"fsdp_version": 2, "reshard_after_forward": True}}, None),
        ({}, None),
    ],
)
def test_the_configs_refusals(values, refusal, with_accelerator):
    assert refused_training_arguments(_args(**values)) == refusal


def test_fsdp_on_cpu_is_refused_as_accelerate_would_silently_run_ddp():
    assert (
        refused_training_arguments(_args(fsdp="full_shard", use_cpu=True))
        == parallelism.REFUSED_FSDP_WITHOUT_ACCELERATOR
    )


def test_every_refusal_is_one_line_naming_the_setting_and_the_way_out():
    refusals = [value for name, value in vars(parallelism).items() if name.startswith("REFUSED_")]
    assert len(refusals) == 7
    for refusal in refusals:
        assert "\n" not in refusal and ";" in refusal  # what and why; then the alternative
    assert "pytorch/pytorch#196562" in parallelism.REFUSED_OFFLOAD
    assert "accelerate#3983" in parallelism.REFUSED_QUANTIZED and "bitsandbytes#1945" in parallelism.REFUSED_QUANTIZED


class _Trainer(ParallelismMixin):
    """The parts of a Trainer that the checks read: args, the Accelerator's state, the model."""

    def __init__(self, plugin=None, parallelism_config=None, model=None, distributed_type="MULTI_GPU"):
        from accelerate.utils import DistributedType

        self.args = _args(fsdp="full_shard" if plugin is not None else "")
        state = SimpleNamespace(fsdp_plugin=plugin)
        self.accelerator = SimpleNamespace(state=state, distributed_type=DistributedType(distributed_type),
                                           parallelism_config=parallelism_config)  # fmt: skip
        self.model = model


def _plugin(**values):
    from accelerate.utils import FullyShardedDataParallelPlugin

    return FullyShardedDataParallelPlugin(**values)


def test_the_running_trainers_refusals(with_accelerator):
    quantized = SimpleNamespace(is_loaded_in_4bit=True)
    assert _Trainer(_plugin(fsdp_version=2))._ivon_unsupported_parallelism() is None
    assert _Trainer()._ivon_unsupported_parallelism() is None  # plain DDP
    assert _Trainer(_plugin(fsdp_version=1))._ivon_unsupported_parallelism() == parallelism.REFUSED_FSDP1
    offloaded = _Trainer(_plugin(fsdp_version=2, cpu_offload=True))
    assert offloaded._ivon_unsupported_parallelism() == parallelism.REFUSED_OFFLOAD
    assert _Trainer(_plugin(fsdp_version=2), model=quantized)._ivon_unsupported_parallelism() == (
        parallelism.REFUSED_QUANTIZED
    )
    assert _Trainer(model=quantized)._ivon_unsupported_parallelism() is None  # QLoRA under DDP is supported
    hsdp = SimpleNamespace(dp_replicate_size=2, tp_size=1, cp_size=1)
    assert _Trainer(_plugin(fsdp_version=2), parallelism_config=hsdp)._ivon_unsupported_parallelism() == (
        parallelism.REFUSED_HSDP
    )
    tensor_parallel = SimpleNamespace(dp_replicate_size=1, tp_size=2, cp_size=1)
    assert (
        "tensor or context parallelism" in _Trainer(parallelism_config=tensor_parallel)._ivon_unsupported_parallelism()
    )
    assert _Trainer(distributed_type="DEEPSPEED")._ivon_unsupported_parallelism() == parallelism.REFUSED_DEEPSPEED


def test_the_fsdp2_recipes_memory_estimate_follows_from_the_models_shape():
    """recipes/llama3/llama-3.1-70b-fsdp2-arc_challenge.yaml states its per-GPU memory: each term recomputed from
    Llama-3.1-70B's config (hidden 8192, MLP 28672, 80 layers, 8 KV heads of 128, 70.6 B parameters)."""
    import os

    import yaml

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "recipes", "llama3",
                        "llama-3.1-70b-fsdp2-arc_challenge.yaml")  # fmt: skip
    text = open(path).read()
    recipe = yaml.safe_load(text)
    hidden, mlp, layers, kv, params, gpus = 8192, 28672, 80, 8 * 128, 70.6e9, 8
    assert recipe["lora_target"] == ["q_proj", "v_proj"] and not recipe.get("quantization_bit")
    lora = layers * recipe["lora_rank"] * ((hidden + hidden) + (hidden + kv))  # A (r x in) + B (out x r), q and v
    layer = (2 * hidden * hidden + 2 * hidden * kv + 3 * hidden * mlp) * 2  # one decoder layer in bf16, bytes
    stated = [
        f"{lora / 1e6:.1f} M params x 40 bytes / {gpus}) {lora * 40 / gpus / 1e9:.2f} GB",
        f"sharded base {params * 2 / gpus / 1e9:.1f} GB",
        f"two gathered decoder layers {2 * layer / 1e9:.1f} GB",
    ]
    for fragment in stated:
        assert fragment in text, fragment
