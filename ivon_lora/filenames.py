"""Every file name a run dir or an output dir holds, defined once (a leaf: it imports nothing, like PEFT's
`peft/utils/constants.py`). Named for what it holds, so that "what is this file in my run dir?" and "what do I call
a new one?" both lead here from the tree; reading and writing the files is `ivon_lora.fileio` (one file) and
`ivon_lora.output_dir` (a whole output dir).

A run dir (or a checkpoint-N inside it, or a pruned copy) is a PEFT adapter dir plus the posterior and results:

    adapter_config.json, adapter_model.safetensors   the PEFT adapter = the posterior mean (PEFT's own names)
    posterior.safetensors, posterior_config.json     per-weight variance under the adapter's keys, and metadata
    recipe.yaml                                      the resolved recipe (train writes it; a checkpoint reads its parent's)
    metrics.json, predictions.jsonl                  the final evaluation of `ivon-lora train`
    diagnostics.json, diagnostics.png                posterior diagnostics (`ivon-lora train`, `ivon-lora inspect`)
    README.md                                        the model card (`ivon-lora train`, `ivon-lora export`)
    eval.json, eval.md, tradeoff.png, ...            `ivon-lora eval`'s output dir

PEFT's two names equal `peft.utils.constants.CONFIG_NAME` / `SAFETENSORS_WEIGHTS_NAME` (tests/test_filenames.py
holds them equal). They are not imported from peft: importing peft imports bitsandbytes when it is installed,
which costs seconds and prints kernel warnings on machines that never asked for a quantized base.
"""

ADAPTER_CONFIG_NAME = "adapter_config.json"  # peft.utils.constants.CONFIG_NAME
ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"  # peft.utils.constants.SAFETENSORS_WEIGHTS_NAME
POSTERIOR_WEIGHTS_NAME = "posterior.safetensors"
POSTERIOR_CONFIG_NAME = "posterior_config.json"

RECIPE_NAME = "recipe.yaml"
METRICS_NAME = "metrics.json"
PREDICTIONS_NAME = "predictions.jsonl"  # per-example probabilities of train's final evaluation
MODEL_CARD_NAME = "README.md"
DIAGNOSTICS_NAME = "diagnostics.json"  # posterior diagnostics (train's end, `ivon-lora inspect --out`)
DIAGNOSTICS_PLOT_NAME = "diagnostics.png"
EXPORT_POSTERIOR_DIR = "posterior"  # export: the adapter and posterior files beside the merged model
TOKENIZER_CONFIG_NAME = "tokenizer_config.json"

REPORT_NAME = "eval.json"
TABLE_NAME = "eval.md"
TRADEOFF_PLOT_NAME = "tradeoff.png"
# `ivon-lora sensitivity`: per-example MPE quantities, the ranked list, the summary and the figure.
SENSITIVITY_EXAMPLES_NAME = "sensitivity.jsonl"
SENSITIVITY_RANKED_NAME = "ranked.txt"
SENSITIVITY_SUMMARY_NAME = "summary.json"
SENSITIVITY_PLOT_NAME = "sensitivity.png"
MERGE_NAME = "merge.json"  # `ivon-lora merge`: the merged dir's provenance

# Hidden names of the writers (`ivon_lora.output_dir`): every output dir's marker; train's final files staged inside
# its run dir (written whole into .final.incomplete, renamed .final.complete, then moved in); the siblings
# .NAME.incomplete-XXXX / .NAME.replaced-XXXX / .NAME.lock of an output dir being written.
OUTPUT_MARKER_NAME = ".ivon-lora-output.json"  # {"command": ..., "format": ...}: which command wrote the dir
FINAL_STAGING_NAME = ".final.incomplete"
FINAL_COMPLETE_NAME = ".final.complete"
STAGING_TAG = "incomplete"  # .NAME.incomplete-XXXX: a result being written
REPLACED_TAG = "replaced"  # .NAME.replaced-XXXX: the previous result, renamed aside while the new one moves in
LOCK_SUFFIX = "lock"  # .NAME.lock: who writes the output dir NAME


def task_file_stem(task: str) -> str:
    """A task (or run label) name usable in a file name (MMLU subjects are written mmlu:subject)."""
    return task.replace(":", "-").replace("/", "-")


def predictions_file_name(task: str, run: str) -> str:
    return f"predictions-{task_file_stem(task)}-{task_file_stem(run)}.jsonl"


def reliability_plot_name(task: str) -> str:
    return f"reliability-{task_file_stem(task)}.png"


def selective_plot_name(task: str) -> str:
    return f"selective-{task_file_stem(task)}.png"


# Files of a run dir that describe one particular adapter and posterior, so a derived dir must not copy them.
RESULT_FILES = (ADAPTER_WEIGHTS_NAME, POSTERIOR_WEIGHTS_NAME, POSTERIOR_CONFIG_NAME, METRICS_NAME, PREDICTIONS_NAME,
                MODEL_CARD_NAME, DIAGNOSTICS_NAME, DIAGNOSTICS_PLOT_NAME)  # fmt: skip


# What `overwrite_output_dir=true` removes before training, so that a run dir never mixes files of two runs: every
# file above, the tokenizer files save_model writes, the Trainer's training_args.bin and checkpoint-N dirs, and eval's
# default eval-SPLIT dirs (those holding an eval.json). Nothing else: a file the user put beside them stays.
TOKENIZER_FILES = (TOKENIZER_CONFIG_NAME, "tokenizer.json", "tokenizer.model", "special_tokens_map.json",
                   "added_tokens.json", "vocab.json", "vocab.txt", "merges.txt", "spiece.model", "chat_template.jinja",
                   "chat_template.json")  # fmt: skip
RUN_FILES = (*RESULT_FILES, ADAPTER_CONFIG_NAME, RECIPE_NAME, "training_args.bin", *TOKENIZER_FILES)
CHECKPOINT_DIR_PATTERN = r"checkpoint-\d+"
EVAL_DIR_PREFIX = "eval-"
