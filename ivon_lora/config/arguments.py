"""A training recipe's own argument classes: `ModelArguments` (base model, LoRA, prompt format), `DataArguments`
(multiple-choice task) or `SFTDataArguments` (objective: sft), and `RunArguments` (objective, protocol, final
evaluation, prior). The training keys are transformers' TrainingArguments (`ivon_lora.trainer.config`), which this
module never imports; each `__post_init__` refuses a bad value with a message naming its key.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..objectives import OBJECTIVES
from ..vocabulary import ANSWER_SCORINGS, DEFAULT_ECE_BINS
from ..validation import AT_LEAST_ONE, NON_NEGATIVE, Bounds, check_fields, invalid_value, one_of


@dataclass
class ModelArguments:
    model_name_or_path: str = field(
        metadata={
            "help": "Hub id or local dir of the base model, or builtin:tiny-llama / builtin:tiny-qwen2 (random "
            "demo models) / builtin:smollm2-135m (SmolLM2-135M-Instruct from the package index)."
        }
    )
    gguf_file: str | None = field(
        default=None, metadata={"help": "A GGUF file in model_name_or_path (local dir or Hub id) to load, dequantized."}
    )
    dtype: str = field(
        default="auto",
        metadata={
            "help": "Base weights' dtype (auto: the checkpoint's).",
            "choices": ("auto", "float32", "bfloat16", "float16"),
        },
    )
    lora_rank: int = field(default=8, metadata={"help": "LoRA rank r.", "bounds": AT_LEAST_ONE})
    lora_alpha: float = field(default=16.0, metadata={"help": "LoRA scaling alpha."})
    lora_dropout: float = field(
        default=0.1, metadata={"help": "Dropout on the LoRA input.", "bounds": Bounds(0.0, 1.0, high_inclusive=False)}
    )
    lora_target: list[str] = field(
        default_factory=lambda: ["q_proj", "v_proj"],
        metadata={"help": "Module names to adapt, or ['all-linear']."},
    )
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow custom model code from the Hub."})
    quantization_bit: int | None = field(
        default=None,
        metadata={
            "help": "Load the base in 4-bit NF4 or 8-bit with bitsandbytes (QLoRA); None: no.",
            "choices": (4, 8),
        },
    )
    prompt_format: str = field(
        default="plain",
        metadata={"help": "plain: the task prompt as is; chat: wrapped in the tokenizer's chat template."},
    )
    chat_template_kwargs: dict | None = field(
        default=None, metadata={"help": "Extra chat-template arguments, e.g. {enable_thinking: false} for Qwen3."}
    )
    answer_scoring: str = field(
        default="letter",
        metadata={
            "help": "Multiple choice: letter (one answer token at the prompt's end), text "
            "(each answer text's summed log-prob, lm-eval acc) or text_norm (divided "
            "by its characters, lm-eval acc_norm); K-way softmax in every case.",
            "choices": tuple(ANSWER_SCORINGS),
        },
    )

    def __post_init__(self):
        from ..choice.prompts import PROMPT_FORMATS

        check_fields(self)
        if self.prompt_format not in PROMPT_FORMATS:  # a registry of the choice package, read when it is needed
            raise ValueError(invalid_value("prompt_format", self.prompt_format, one_of(PROMPT_FORMATS)))
        if self.model_name_or_path.startswith("builtin:"):
            from ..builtin import BUILTIN_MODELS
            from ..packaged import PACKAGED_MODELS

            if self.model_name_or_path not in {**BUILTIN_MODELS, **PACKAGED_MODELS}:
                available = ", ".join([*BUILTIN_MODELS, *PACKAGED_MODELS])
                raise ValueError(
                    f"model_name_or_path: unknown built-in model {self.model_name_or_path!r}; available: {available}"
                )
        if self.gguf_file is not None and self.quantization_bit is not None:
            raise ValueError("gguf_file and quantization_bit cannot be combined: a GGUF base loads dequantized")
        if not self.lora_target or not all(self.lora_target):
            raise ValueError(invalid_value("lora_target", self.lora_target, "at least one module name, or all-linear"))


@dataclass
class DataArguments:
    dataset: str = field(default="synthetic", metadata={"help": "Task name (see ivon_lora.tasks)."})
    train_split: str = field(default="train", metadata={"help": "Split to train on."})
    eval_split: str = field(default="validation", metadata={"help": "Split reported after training."})
    train_file: str | None = field(
        default=None, metadata={"help": "Local json/jsonl/parquet/csv train records (a file or a dir of them)."}
    )
    eval_file: str | None = field(
        default=None, metadata={"help": "Local json/jsonl/parquet/csv eval records (a file or a dir of them)."}
    )
    max_length: int = field(
        default=320,
        metadata={
            "help": "Max prompt tokens (longer prompts lose their middle; the count is reported).",
            "bounds": AT_LEAST_ONE,
        },
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Use only the first N train records.", "bounds": AT_LEAST_ONE}
    )
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Use only the first N eval records.", "bounds": AT_LEAST_ONE}
    )

    def __post_init__(self):
        check_fields(self)


@dataclass
class SFTDataArguments:
    """The data of `objective: sft` (the sequence length is SFTConfig's `max_length`)."""

    dataset: str | None = field(
        default=None,
        metadata={
            "help": "A built-in SFT dataset (wordqa) or a Hub dataset id (e.g. HuggingFaceH4/ultrachat_200k); "
            "None with train_file/eval_file."
        },
    )
    dataset_config: str | None = field(default=None, metadata={"help": "The Hub dataset's config name."})
    train_split: str = field(default="train", metadata={"help": "Split to train on (e.g. train_sft)."})
    eval_split: str = field(default="validation", metadata={"help": "Split whose loss and perplexity are reported."})
    train_file: str | None = field(
        default=None, metadata={"help": "Local json/jsonl/parquet train rows (messages, prompt/completion or alpaca)."}
    )
    eval_file: str | None = field(
        default=None, metadata={"help": "Local json/jsonl/parquet eval rows (messages, prompt/completion or alpaca)."}
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Use only the first N train rows.", "bounds": AT_LEAST_ONE}
    )
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Use only the first N eval rows.", "bounds": AT_LEAST_ONE}
    )

    def __post_init__(self):
        if self.dataset is None and self.train_file is None:
            raise ValueError("an sft recipe needs dataset (a built-in name or a Hub id) or train_file")
        check_fields(self)


@dataclass
class RunArguments:
    objective: str = field(
        default="choice",
        metadata={
            "help": "choice: the K answer letters' cross-entropy (multiple-choice tasks); sft: causal-LM loss on "
            "instruction/chat data through TRL (needs ivon-lora[sft]; keys: SFTDataArguments, SFTConfig).",
            "choices": OBJECTIVES,
        },
    )
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Allow writing into a non-empty output_dir."})
    protocol: str = field(
        default="ivon-lora", metadata={"help": "Evaluation protocol preset: ivon-lora or blob (see README)."}
    )
    final_eval_samples: int = field(
        default=10,
        metadata={
            "help": "Posterior samples S of the evaluation after training (the reported eval_split); the "
            "Trainer's sampled evaluation during training is ivon_eval_samples. Formerly eval_mc_samples.",
            "formerly": "eval_mc_samples",
            "bounds": NON_NEGATIVE,
        },
    )
    ece_bins: list[int] = field(
        default_factory=lambda: list(DEFAULT_ECE_BINS),
        metadata={"help": "ECE bin counts to report.", "bounds": AT_LEAST_ONE},
    )
    eval_seed: int = field(default=0, metadata={"help": "Seed of the evaluation's posterior samples."})
    prior_from: str | None = field(
        default=None,
        metadata={
            "help": "Continual finetuning: an IVON run dir (or checkpoint) whose posterior is this run's prior; the adapter "
            "starts at its mean. Same base model and LoRA shape (optim: ivon)."
        },
    )
    prior_scale: float = field(
        default=1.0,
        metadata={
            "help": "Multiplies prior_from's precision: below 1 tempers (widens) the prior, above 1 sharpens it.",
            "bounds": Bounds(0.0, 1e6, low_inclusive=False),
        },
    )
    init_from: str | None = field(
        default=None,
        metadata={
            "help": "A run dir (IVON or AdamW) whose adapter this run starts from, with the usual prior (weight_decay)."
        },
    )

    def __post_init__(self):
        check_fields(self)
        if self.prior_from is not None and self.init_from is not None:
            raise ValueError("prior_from and init_from cannot be combined: prior_from already starts at its run's mean")


def run_default(recipe, key: str):
    """A run's own setting `recipe.run.<key>` (e.g. final_eval_samples), or RunArguments' default for a run dir
    without a recipe: what every evaluation uses unless told otherwise (`ivon_lora.evaluation.plan`)."""
    return getattr(recipe.run if recipe is not None else RunArguments(), key)
