"""Every recipe under recipes/ validates and dry-runs: its task's prompts, in its prompt format, through a tiny
stand-in of its model family (tokenizer conventions, quantization and LoRA settings as written), one forward."""

import glob
import json
import os

import pytest
import torch
import yaml
from family_tokenizers import FAMILIES

from ivon_lora.builtin import BUILTIN_MODELS, BuiltinModel, build_tiny_model
from ivon_lora.modeling import apply_lora, load_base_model, load_tokenizer, quantization_config
from ivon_lora.choice import ChoiceCollator, choice_logits, format_examples
from ivon_lora.choice.trainer import choice_rows
from ivon_lora.config import load_recipe
from ivon_lora.packaged import PACKAGED_MODELS
from ivon_lora.tasks import load_examples
from ivon_lora.tasks.registry import TASKS, get_task

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RECIPES = sorted(
    os.path.relpath(path, ROOT) for path in glob.glob(os.path.join(ROOT, "recipes", "**", "*.yaml"), recursive=True)
)

# Hub ids checked to exist (model cards on huggingface.co); a recipe naming another id must be checked and added.
HUB_MODELS = {
    "meta-llama/Llama-2-7b-hf": "llama2",
    "meta-llama/Llama-3.2-1B-Instruct": "llama3",
    "Qwen/Qwen2.5-0.5B-Instruct": "qwen2.5",
    "meta-llama/Llama-3.2-1B": "llama3",
    "meta-llama/Llama-3.2-3B": "llama3",
    "meta-llama/Llama-3.1-8B": "llama3",
    "meta-llama/Llama-3.1-70B": "llama3",
    "Qwen/Qwen2.5-0.5B": "qwen2.5",
    "Qwen/Qwen2.5-1.5B": "qwen2.5",
    "Qwen/Qwen2.5-3B": "qwen2.5",
    "Qwen/Qwen2.5-7B": "qwen2.5",
    "Qwen/Qwen3-1.7B": "qwen3",
}
# Models from the package index, with the family whose tokenizer conventions they share (SmolLM2: byte-level BPE,
# no BOS, like Qwen2.5).
PACKAGED_FAMILIES = {"builtin:smollm2-135m": "qwen2.5"}
# The IVON-LoRA protocol (Cong et al., arXiv 2411.04421, section 4 and appendix): shared settings, then IVON's per-task (ess, hess_init).
PAPER_PROTOCOL = {
    "lora_rank": 8, "lora_alpha": 16, "lora_dropout": 0.1, "lora_target": ["q_proj", "v_proj"], "quantization_bit": 8,
    "per_device_train_batch_size": 4, "max_steps": 10000, "lr_scheduler_type": "linear", "warmup_steps": 0,
    "max_grad_norm": 0.0, "max_length": 320, "weight_decay": 0.0, "final_eval_samples": 10,
}  # fmt: skip
PAPER_IVON_SHARED = {
    "learning_rate": 0.03, "ivon_clip_radius": 1e-3, "ivon_beta2": 0.99999, "ivon_rescale_lr": False, "ivon_mc_samples": 1
}  # fmt: skip
PAPER_IVON = {
    "arc_challenge": (1e6, 1e-3),
    "arc_easy": (1e6, 1e-3),
    "openbookqa": (1e6, 1e-3),
    "winogrande_s": (1e7, 3e-4),
    "winogrande_m": (1e8, 3e-4),
    "boolq": (1e7, 3e-4),
}
# One record per task in its Hub schema (the Hub datasets of ivon_lora.tasks' table), for the dry run's prompts.
ARC_CHOICES = {"text": ["oxygen", "carbon dioxide", "water", "salt"], "label": ["A", "B", "C", "D"]}
ARC_RECORD = {"id": "q1", "question": "Which gas do plants take in?", "answerKey": "B", "choices": ARC_CHOICES}
RECORDS = {
    "arc_challenge": [ARC_RECORD],
    "arc_easy": [ARC_RECORD],
    "openbookqa": [
        {"id": "q1", "question_stem": "Which gas do plants take in?", "answerKey": "B", "choices": ARC_CHOICES}
    ],
    "winogrande": [
        {
            "sentence": "The trophy did not fit in the suitcase because _ was too big.",
            "option1": "trophy",
            "option2": "suitcase",
            "answer": "1",
        }
    ],
    "boolq": [{"question": "is the sky blue", "passage": "The sky is blue on a clear day.", "answer": True}],
}

# SFT datasets: one row in the Hub schema (HuggingFaceH4/ultrachat_200k: prompt, prompt_id, messages).
SFT_RECORDS = {
    "HuggingFaceH4/ultrachat_200k": [
        {
            "prompt": "Name a fruit.",
            "prompt_id": "0" * 64,
            "messages": [{"role": "user", "content": "Name a fruit."}, {"role": "assistant", "content": "A mango."}],
        }
    ],
}


def _raw(path: str) -> dict:
    with open(os.path.join(ROOT, path)) as f:
        return yaml.safe_load(f)


def _family(model: str) -> str:
    if model in BUILTIN_MODELS:
        return model
    if model in PACKAGED_MODELS:
        return PACKAGED_FAMILIES[model]
    assert model in HUB_MODELS, f"{model!r} is not a checked Hub id: check it exists, then add it to HUB_MODELS"
    return HUB_MODELS[model]


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory):
    """Per family, a local model dir: a tiny random model with the family's stand-in tokenizer."""
    dirs = {}
    for family, build in FAMILIES.items():
        tokenizer = build()
        spec = BuiltinModel("qwen2" if family.startswith("qwen") else "llama", bos=family.startswith("llama"))
        dirs[family] = str(tmp_path_factory.mktemp(family))
        build_tiny_model(spec, tokenizer).save_pretrained(dirs[family])
        tokenizer.save_pretrained(dirs[family])
    return dirs


@pytest.fixture(scope="module")
def data_files(tmp_path_factory):
    """Per task, a local jsonl of its sample records (loaded as a recipe's train_file would be)."""
    directory = tmp_path_factory.mktemp("data")
    files = {}
    for task in {_raw(path)["dataset"] for path in RECIPES}:
        if task.split(":")[0] in TASKS and get_task(task).generator is not None:  # generated, no file needed
            continue
        records = RECORDS.get(task) or RECORDS.get(task.split("_")[0]) or SFT_RECORDS.get(task)
        assert records, f"no sample record for task {task!r}: add one in its schema to RECORDS"
        files[task] = directory / f"{task.replace('/', '--')}.jsonl"
        files[task].write_text("".join(json.dumps(r) + "\n" for r in records))
    return files


def test_recipes_are_found():
    assert len(RECIPES) >= 15 and "recipes/demo.yaml" in RECIPES


@pytest.mark.parametrize("path", RECIPES)
def test_recipe_is_documented_and_sane(path):
    raw = _raw(path)
    with open(os.path.join(ROOT, path)) as f:
        assert f.readline().startswith("# "), "a recipe starts with a comment saying what it is for"
    model = raw["model_name_or_path"]
    _family(model)
    assert raw["output_dir"].startswith("runs/")
    if model not in BUILTIN_MODELS and model not in PACKAGED_MODELS:  # the packaged ones are CPU recipes
        assert raw.get("bf16") is True, "GPU recipes train under bf16 autocast"
        assert raw.get("remove_unused_columns") is False, "the collator needs the prompt/answers columns"
        if any(size in model for size in ("-7b", "-7B", "-8B")):
            assert raw.get("quantization_bit") in (4, 8), "7-8B bases are loaded in 8-bit or 4-bit"
    if path.startswith("recipes/llama2-7b-"):
        assert {key: raw.get(key) for key in PAPER_PROTOCOL} == PAPER_PROTOCOL
        assert raw["seed"] in (21, 42, 87)
        if raw["optim"] == "ivon":
            assert {key: raw.get(key) for key in PAPER_IVON_SHARED} == PAPER_IVON_SHARED
            assert (raw["ivon_ess"], raw["ivon_hess_init"]) == PAPER_IVON[raw["dataset"]]
        else:
            assert (raw["optim"], raw["learning_rate"]) == ("adamw_torch", 5e-5)


@pytest.mark.parametrize("path", RECIPES)
def test_recipe_validates_and_dry_runs_on_a_stand_in(path, stand_ins, data_files, tmp_path):
    raw = _raw(path)
    family = _family(raw["model_name_or_path"])
    overrides = [f"output_dir={tmp_path / 'run'}", "bf16=false", "use_cpu=true", "max_steps=2"]
    recipe = load_recipe(os.path.join(ROOT, path), overrides)  # every key valid, the task registered
    quantization = quantization_config(recipe.model)
    if recipe.model.quantization_bit == 4:
        assert quantization.bnb_4bit_quant_type == "nf4" and quantization.bnb_4bit_use_double_quant
        assert quantization.bnb_4bit_compute_dtype == torch.bfloat16  # the recipe's dtype
    elif recipe.model.quantization_bit == 8:
        assert quantization.load_in_8bit
    # The stand-in loads unquantized in fp32 (quantized and bf16 bases are tested in test_modeling.py).
    overrides += ["quantization_bit=null", "dtype=float32"]
    if family not in BUILTIN_MODELS:
        overrides.append(f"model_name_or_path={stand_ins[family]}")
    recipe = load_recipe(os.path.join(ROOT, path), overrides)
    if recipe.objective == "sft":
        return _dry_run_sft(recipe, data_files.get(recipe.data.dataset), tmp_path)
    model_args, data_args = recipe.model, recipe.data

    tokenizer = load_tokenizer(model_args)
    data = data_files.get(data_args.dataset)
    examples = load_examples(data_args.dataset, data_args.train_split, data, limit=4, protocol=recipe.run.protocol)
    examples = format_examples(examples, tokenizer, model_args)
    if model_args.prompt_format == "chat":
        assert examples[0].prompt.endswith("\n") and not examples[0].answers[0].startswith(" ")
    batch = ChoiceCollator(tokenizer, data_args.max_length)(choice_rows(examples))  # the trainer's rows

    model = apply_lora(load_base_model(model_args, tokenizer, seed=recipe.training.seed), model_args)
    assert {p.dtype for p in model.parameters() if p.requires_grad} == {torch.float32}
    with torch.no_grad():
        logits = choice_logits(model, batch)
    assert logits.shape == batch["choice_mask"].shape == (len(examples), max(len(e.answers) for e in examples))
    assert torch.isfinite(logits[batch["choice_mask"]]).all()


def _dry_run_sft(recipe, data_file, tmp_path):
    """An SFT recipe: its data through TRL's preparation with the stand-in's chat template, two IVON steps."""
    from ivon_lora.sft import IVONSFTTrainer
    from ivon_lora.sft.data import check_chat_template, load_sft_split

    data = recipe.data
    split = load_sft_split(data.dataset, data.train_split, data_file, max_samples=4)
    tokenizer = load_tokenizer(recipe.model)
    check_chat_template(split, tokenizer, recipe.model.model_name_or_path)
    model = apply_lora(load_base_model(recipe.model, tokenizer, seed=0), recipe.model)
    trainer = IVONSFTTrainer(model=model, args=recipe.training, train_dataset=split.dataset, processing_class=tokenizer)
    batch = next(iter(trainer.get_train_dataloader()))
    assert (batch["labels"] != -100).any()
    trainer.train()
    assert trainer.state.global_step == 2
