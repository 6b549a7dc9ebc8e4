"""`ivon-lora generate`: a run's answers to prompts, from the posterior mean and from S posterior samples.

Works on any run dir `load_run` loads (multiple-choice or SFT). Prints each prompt with the mean's answer and each
sample's; with --out, writes them as JSON lines: a header line {"header": {run dir, options, versions}}, then one
line per prompt {"index", "prompt", "mean", "sampled_answers"}. Prompts come from --prompt and --prompts-file (.jsonl: one
object per line with "prompt" (text) or "messages" (chat messages); any other file: one prompt per non-blank line).
"""

from __future__ import annotations

import argparse
import json
import os

from ..config import GenerateConfig
from ._options import build_parser, config_from_options

JSON_LINES_SUFFIXES = (".jsonl",)


CONFIG_CLASS = GenerateConfig  # the parser's flags and the config that main gets


def make_parser(subparsers) -> argparse.ArgumentParser:
    return build_parser(
        subparsers, "generate",
        help="Answers to prompts from a run's posterior mean and from S posterior samples.",
        description="Print RUN_DIR's answer to each prompt from the posterior mean (the PEFT adapter) and, with "
                    "--samples S, from each of S posterior samples; greedy decoding, the tokenizer's chat template "
                    "when it has one. --out writes them as JSON lines. Options also come from a YAML CONFIG and "
                    "key=value (keys: the flags with _ for -).",
        config_class=CONFIG_CLASS,
    )  # fmt: skip


def config_from(options: argparse.Namespace) -> GenerateConfig:
    return config_from_options(options, CONFIG_CLASS, "generate")


def main(config: GenerateConfig) -> int:
    run_generate(config)
    return 0


def read_prompts_file(path: str) -> list:
    """The prompts of a .jsonl ("prompt" text or "messages" list per line) or text file (one per non-blank line)."""
    from ..errors import UsageError
    from ..generation import check_prompt

    if not os.path.isfile(path):
        raise FileNotFoundError(f"Prompts file {path!r} does not exist")
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except UnicodeDecodeError as error:
        raise UsageError(f"{path}: not UTF-8 text (byte {error.start}): save it as UTF-8") from None
    if not path.lower().endswith(JSON_LINES_SUFFIXES):
        return [line for line in lines if line.strip()]
    prompts = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}, line {number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise UsageError(f"{where}: not valid JSON ({error.msg}, column {error.colno})") from None
        if not isinstance(record, dict) or ("prompt" in record) == ("messages" in record):
            raise UsageError(f"{where}: expected an object with either 'prompt' (text) or 'messages' (a list)")
        prompt = record.get("prompt", record.get("messages"))
        if isinstance(prompt, str) != ("prompt" in record):
            raise UsageError(f"{where}: 'prompt' is a text, 'messages' a list of messages")
        check_prompt(prompt, where)
        prompts.append(prompt)
    return prompts


def _check_out_file(config: GenerateConfig) -> None:
    """--out is a new .jsonl file, or with --overwrite one that `ivon-lora generate` wrote (its first line is the
    header): never another file of the user's, whatever the name or a symlink says."""
    from ..output_dir import check_out_apart
    from ..errors import UsageError

    check_out_apart(config.out, {"run dir": config.run_dir})
    out = os.path.realpath(config.out)
    if os.path.isdir(out):
        raise UsageError(f"--out {config.out!r} is a directory: name a .jsonl file")
    if not os.path.lexists(out):
        return
    if not config.overwrite:
        raise FileExistsError(f"{config.out!r} exists: choose another --out, or pass --overwrite")
    header = None
    if os.path.isfile(out):  # not a FIFO or device, whose read would block or never end
        try:
            with open(out, encoding="utf-8") as f:
                header = json.loads(f.readline())
        except (OSError, ValueError):
            pass
    if not (isinstance(header, dict) and isinstance(header.get("header"), dict)):
        raise UsageError(f"--out {config.out!r} is not a file that `ivon-lora generate` wrote (no header line): "
                         "--overwrite replaces only an earlier output of generate; choose another --out")  # fmt: skip


def run_generate(config: GenerateConfig) -> list:
    """Generate for `config` (see the module doc); returns the `ivon_lora.generation.Generation`s."""
    from ..fileio import atomic_write, json_line
    from ..errors import UsageError
    from ..generation import check_prompt, generate, render_prompts, uses_chat_template
    from ..modeling import check_fits_context
    from ..rundir import describe_run, environment, load_run

    # Everything that can be wrong with the options is checked before the model loads.
    described = describe_run(config.run_dir, set(), trust_remote_code=config.trust_remote_code)
    prompts = list(config.prompt or []) + (read_prompts_file(config.prompts_file) if config.prompts_file else [])
    if not prompts:
        raise UsageError("No prompts: pass --prompt TEXT (repeatable) or --prompts-file FILE")
    for i, prompt in enumerate(config.prompt or []):
        check_prompt(prompt, f"--prompt {i + 1}")
    if config.samples and not described["has_posterior"]:
        raise UsageError(f"--samples {config.samples}: {config.run_dir} has no posterior (not an IVON run) to sample "
                         "from: generate from its weights only (--samples 0)")  # fmt: skip
    if config.no_chat and config.system is not None:
        raise UsageError("--system needs the chat template, and --no-chat turns it off: drop one of them")
    if config.no_chat and any(not isinstance(prompt, str) for prompt in prompts):
        raise UsageError(f"{config.prompts_file}: 'messages' prompts need the chat template, and --no-chat turns it "
                         "off: drop --no-chat or give 'prompt' texts")  # fmt: skip
    if config.out is not None:
        _check_out_file(config)

    run = load_run(config.run_dir, trust_remote_code=config.trust_remote_code)
    chat = uses_chat_template(run.tokenizer, False if config.no_chat else None)
    rendered = run.tokenizer(render_prompts(run.tokenizer, prompts, chat, config.system), add_special_tokens=not chat)
    check_fits_context(run.model, [len(ids) for ids in rendered["input_ids"]], config.max_new_tokens)
    generations = generate(
        run.model, run.tokenizer, prompts, posterior=run.posterior, num_samples=config.samples, seed=config.seed,
        max_new_tokens=config.max_new_tokens, chat=chat, system=config.system, batch_size=config.batch_size,
    )  # fmt: skip
    for i, generation in enumerate(generations):
        print(f"[{i + 1}] prompt: {json.dumps(generation.prompt, ensure_ascii=False)}")
        print(f"  mean: {json.dumps(generation.mean, ensure_ascii=False)}")
        for k, answer in enumerate(generation.samples):
            print(f"  sample {k + 1}: {json.dumps(answer, ensure_ascii=False)}")
    if config.out is not None:
        header = {
            "run_dir": described["dir"],
            "chat_template": chat,
            "decoding": "greedy",
            **{key: getattr(config, key) for key in ("seed", "samples", "max_new_tokens", "system")},
            "posterior": {key: run.posterior.config.get(key) for key in ("step", "ess", "temperature", "pruning")}
            if run.posterior is not None else None,
            "environment": environment(),
        }  # fmt: skip
        rows = [{"index": i, "prompt": g.prompt, "mean": g.mean, "sampled_answers": list(g.samples)}
                for i, g in enumerate(generations)]  # fmt: skip

        def write(path):
            with open(path, "w", encoding="utf-8") as f:
                for row in [{"header": header}, *rows]:
                    f.write(json_line(row, ensure_ascii=False))

        out = os.path.realpath(config.out)  # a symlinked --out: its target is what was checked and is replaced
        os.makedirs(os.path.dirname(out), exist_ok=True)
        atomic_write(out, write)
        print(f"wrote {config.out}")
    return generations
