"""Posterior-aware generation (`ivon_lora.generation`, `ivon-lora generate`) against plain `model.generate` calls:
the mean's answers are the PEFT model's, sample k's are those of the adapter with noise added by hand from the same
generator; answers do not depend on the batch size; the adapter comes back bitwise; chat templates are applied as
`apply_chat_template` tokenizes them; the command's output and its one-line errors before any model loads."""

import json
import os
import shutil

import pytest
import torch
from family_tokenizers import LLAMA3_CHAT_TEMPLATE

from ivon_lora import cli
from ivon_lora.errors import UsageError
from ivon_lora.generation import generate
from ivon_lora.posterior import adapter_parameters

PROMPTS = ["Question: which word", "A B C", "hello world, this prompt is longer than the others by far", "x"]
MAX_NEW_TOKENS = 6


def reference_answer(model, tokenizer, ids: list[int]) -> str:
    """One prompt's greedy answer, generated alone (no padding), cut at the first EOS."""
    out = model.generate(
        input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
        max_new_tokens=MAX_NEW_TOKENS, do_sample=False, pad_token_id=tokenizer.pad_token_id,
    )[0]  # fmt: skip
    tokens = out[len(ids) :].tolist()
    if tokenizer.eos_token_id in tokens:
        tokens = tokens[: tokens.index(tokenizer.eos_token_id)]
    return tokenizer.decode(tokens, skip_special_tokens=True)


def reference_answers(model, tokenizer, prompts=PROMPTS) -> list[str]:
    with torch.no_grad():
        return [reference_answer(model, tokenizer, tokenizer(p)["input_ids"]) for p in prompts]


def adapter_snapshot(model) -> dict[str, torch.Tensor]:
    return {key: p.detach().clone() for key, p in adapter_parameters(model).items()}


def assert_adapter_is(model, snapshot):
    for key, p in adapter_parameters(model).items():
        assert torch.equal(p, snapshot[key]), key


@pytest.fixture(scope="module")
def run(run):
    """The shared run with its tokenizer's chat template removed: these tests compare with plain tokenization (the
    built-in tokenizers have a template, which test_the_chat_template_is_applied_... covers)."""
    run.tokenizer.chat_template = None
    return run


def test_the_means_answers_are_the_peft_models(run):
    expected = reference_answers(run.model, run.tokenizer)
    assert len(set(expected)) > 1  # the prompts get different answers: a mix-up between prompts would show
    for posterior in (None, run.posterior):
        generations = generate(run.model, run.tokenizer, PROMPTS, posterior=posterior, max_new_tokens=MAX_NEW_TOKENS)
        assert [g.prompt for g in generations] == PROMPTS
        assert [g.mean for g in generations] == expected
        assert all(g.samples == () for g in generations)


def test_a_pruned_posteriors_mean_is_generated_from_and_the_adapter_comes_back(run):
    before = adapter_snapshot(run.model)
    pruned = run.posterior.prune(0.5)
    pruned.apply_mean(run.model)
    expected = reference_answers(run.model, run.tokenizer)
    run.posterior.apply_mean(run.model)
    assert expected != reference_answers(run.model, run.tokenizer)  # pruning half the adapter changes answers
    generations = generate(run.model, run.tokenizer, PROMPTS, posterior=pruned, max_new_tokens=MAX_NEW_TOKENS)
    assert [g.mean for g in generations] == expected
    assert_adapter_is(run.model, before)
    with pytest.raises(Exception):  # an error while the pruned mean is held (model.generate refuses the option)
        generate(run.model, run.tokenizer, PROMPTS, posterior=pruned, no_such_option=1)
    assert_adapter_is(run.model, before)


def test_sample_k_is_the_adapter_with_noise_added_by_hand(run, wide):
    """Re-implementation of the sampler: one standard-normal vector per sample from a CPU generator seeded by
    `seed`, over the adapter entries in sorted key order; weights = mean + sqrt(variance) * noise."""
    seed, num_samples = 3, 3
    before = adapter_snapshot(run.model)
    generations = generate(run.model, run.tokenizer, PROMPTS, posterior=wide, num_samples=num_samples, seed=seed,
                           max_new_tokens=MAX_NEW_TOKENS)  # fmt: skip
    assert_adapter_is(run.model, before)

    params = adapter_parameters(run.model)
    keys = sorted(wide.mean)
    generator = torch.Generator().manual_seed(seed)
    expected = []
    for _ in range(num_samples):
        noise = torch.empty(sum(wide.mean[k].numel() for k in keys)).normal_(generator=generator)
        offset = 0
        with torch.no_grad():
            for key in keys:
                n = wide.mean[key].numel()
                std = wide.variance[key].sqrt()
                params[key].copy_(wide.mean[key] + std * noise[offset : offset + n].view_as(std))
                offset += n
        expected.append(reference_answers(run.model, run.tokenizer))
    run.posterior.apply_mean(run.model)
    assert_adapter_is(run.model, before)

    assert [list(g.samples) for g in generations] == [list(answers) for answers in zip(*expected)]
    assert [g.mean for g in generations] == reference_answers(run.model, run.tokenizer)
    # The posterior is wide enough that the test means something: samples differ from the mean and between them.
    assert any(g.samples[0] != g.mean for g in generations)
    assert any(len(set(g.samples)) > 1 for g in generations)


def test_greedy_answers_come_from_the_batched_decoder_and_equal_model_generates(run, wide, monkeypatch):
    """No generate kwargs: the batched decoder (S samples in one forward per step); a generate kwarg (here the
    greedy default spelled out): `model.generate`, one pass per sample. Same answers."""
    from ivon_lora.generation import decoding

    calls = []
    batched_samples = decoding.decode_samples
    monkeypatch.setattr(decoding, "decode_samples", lambda *a, **k: calls.append(k) or batched_samples(*a, **k))
    common = {"posterior": wide, "num_samples": 3, "seed": 2, "max_new_tokens": MAX_NEW_TOKENS}
    batched = generate(run.model, run.tokenizer, PROMPTS, **common)
    assert len(calls) == 1
    generated = generate(run.model, run.tokenizer, PROMPTS, do_sample=False, **common)
    assert len(calls) == 1 and batched == generated


def test_answers_do_not_depend_on_the_batch_size_and_a_seed_fixes_them(run, wide):
    def answers(batch_size, seed=0):
        generations = generate(run.model, run.tokenizer, PROMPTS, posterior=wide, num_samples=2, seed=seed,
                               batch_size=batch_size, max_new_tokens=MAX_NEW_TOKENS)  # fmt: skip
        return [(g.mean, g.samples) for g in generations]

    one_by_one = answers(1)
    assert answers(3) == one_by_one
    assert answers(len(PROMPTS)) == one_by_one
    assert answers(len(PROMPTS), seed=1) != one_by_one
    # Sampled decoding (passed through to model.generate) is fixed by the seed too, and leaves the global RNG alone.
    state = torch.get_rng_state()
    sampled = [generate(run.model, run.tokenizer, PROMPTS, seed=5, do_sample=True, max_new_tokens=MAX_NEW_TOKENS)
               for _ in range(2)]  # fmt: skip
    assert sampled[0] == sampled[1]
    assert torch.equal(torch.get_rng_state(), state)


def test_the_chat_template_is_applied_as_apply_chat_template_tokenizes_it(run, monkeypatch):
    from ivon_lora.builtin import BUILTIN_MODELS, build_tokenizer

    tokenizer = build_tokenizer(BUILTIN_MODELS["builtin:tiny-llama"])  # adds a BOS, which the template renders too
    tokenizer.chat_template = LLAMA3_CHAT_TEMPLATE
    system = "Answer in one word."
    prompts = ["Question: which word", [{"role": "user", "content": "A B C"}]]
    conversations = [[{"role": "system", "content": system}, {"role": "user", "content": text}]
                     for text in ("Question: which word", "A B C")]  # fmt: skip
    expected_ids = [tokenizer.apply_chat_template(conversation, add_generation_prompt=True)["input_ids"]
                    for conversation in conversations]  # fmt: skip
    assert all(ids.count(tokenizer.bos_token_id) == 1 for ids in expected_ids)
    with torch.no_grad():
        expected = [reference_answer(run.model, tokenizer, ids) for ids in expected_ids]

    inputs = []  # what generate feeds model.generate, padding removed
    original = run.model.generate

    def recording(**kwargs):
        inputs.extend(ids[mask.bool()].tolist() for ids, mask in zip(kwargs["input_ids"], kwargs["attention_mask"]))
        return original(**kwargs)

    monkeypatch.setattr(run.model, "generate", recording)
    # A generate kwarg (the greedy default spelled out) takes model.generate's path, whose inputs are recorded.
    generations = generate(run.model, tokenizer, prompts, system=system, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
    assert sorted(inputs) == sorted(expected_ids)
    assert [g.mean for g in generations] == expected
    batched = generate(run.model, tokenizer, prompts, system=system, max_new_tokens=MAX_NEW_TOKENS)  # the decoder's
    assert [g.mean for g in batched] == expected
    assert [g.prompt for g in generations] == prompts
    # chat=False: the text as written, with the tokenizer's special tokens; chat=True without a template: an error.
    inputs.clear()
    plain = generate(run.model, tokenizer, PROMPTS, chat=False, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
    assert sorted(inputs) == sorted(tokenizer(PROMPTS)["input_ids"])
    assert [g.mean for g in plain] == reference_answers(run.model, run.tokenizer)
    plain = generate(run.model, tokenizer, PROMPTS, chat=False, max_new_tokens=MAX_NEW_TOKENS)  # the decoder's
    assert [g.mean for g in plain] == reference_answers(run.model, run.tokenizer)
    with pytest.raises(UsageError, match="no chat template"):
        generate(run.model, run.tokenizer, PROMPTS, chat=True)


def test_an_answer_ends_at_the_tokenizers_eos_or_the_stop_tokens_passed(run):
    """A chat tokenizer's EOS is its end-of-turn token, which a base model's generation config may not list."""
    from ivon_lora.builtin import BUILTIN_MODELS, build_tokenizer

    ids = run.tokenizer(PROMPTS[0])["input_ids"]
    with torch.no_grad():
        tokens = run.model.generate(input_ids=torch.tensor([ids]), max_new_tokens=MAX_NEW_TOKENS, do_sample=False,
                                    pad_token_id=run.tokenizer.pad_token_id)[0, len(ids) :].tolist()  # fmt: skip
    stop = tokens[2]
    expected = run.tokenizer.decode(tokens[: tokens.index(stop)])
    assert len(set(tokens)) > 1 and run.tokenizer.eos_token_id not in tokens
    tokenizer = build_tokenizer(BUILTIN_MODELS["builtin:tiny-llama"])
    tokenizer.chat_template = None  # as the module's run (plain prompts)
    tokenizer.eos_token = tokenizer.convert_ids_to_tokens(stop)
    assert run.model.generation_config.eos_token_id != stop
    (by_tokenizer,) = generate(run.model, tokenizer, PROMPTS[:1], max_new_tokens=MAX_NEW_TOKENS)
    (by_option,) = generate(run.model, run.tokenizer, PROMPTS[:1], max_new_tokens=MAX_NEW_TOKENS, eos_token_id=[stop])
    assert by_tokenizer.mean == by_option.mean == expected


@pytest.mark.parametrize(
    "prompts, options, error, message",
    [
        ("x", {}, TypeError, "wrap a single prompt in a list"),
        (PROMPTS, {"num_samples": -1}, ValueError, "num_samples"),
        (PROMPTS, {"num_samples": 2}, ValueError, "needs a posterior"),
        ([[{"role": "user", "content": "x"}]], {}, UsageError, "Prompt 1 is a list of chat messages"),
        (PROMPTS, {"system": "Be brief."}, UsageError, "system message needs a chat template"),
        (["x", ""], {}, UsageError, "Prompt 2: the prompt is empty"),
        (["x", [{"role": "user"}]], {}, UsageError, "Prompt 2: expected"),
    ],
)  # fmt: skip
def test_bad_arguments_are_refused(run, prompts, options, error, message):
    with pytest.raises(error, match=message):
        generate(run.model, run.tokenizer, prompts, **options)


def test_cli_prints_and_writes_the_answers_of_the_python_api(run, run_dir, tmp_path, capsys):
    prompts_file = tmp_path / "prompts.jsonl"
    prompts_file.write_text(json.dumps({"prompt": PROMPTS[2]}) + "\n\n" + json.dumps({"prompt": PROMPTS[3]}) + "\n")
    out = tmp_path / "answers.jsonl"
    args = ["generate", run_dir, "--no-chat", "--prompt", PROMPTS[0], "--prompt", PROMPTS[1],
            "--prompts-file", str(prompts_file),
            "--samples", "2", "--seed", "4", "--max-new-tokens", str(MAX_NEW_TOKENS), "--out", str(out)]  # fmt: skip
    assert cli.main(args) == 0
    expected = generate(run.model, run.tokenizer, PROMPTS, posterior=run.posterior, num_samples=2, seed=4,
                        max_new_tokens=MAX_NEW_TOKENS)  # fmt: skip
    printed = capsys.readouterr().out

    def quoted(text):
        return json.dumps(text, ensure_ascii=False)

    for i, g in enumerate(expected):
        lines = [f"[{i + 1}] prompt: {quoted(g.prompt)}", f"  mean: {quoted(g.mean)}",
                 f"  sample 1: {quoted(g.samples[0])}"]  # fmt: skip
        assert "\n".join(lines) + "\n" in printed
    header, *rows = [json.loads(line) for line in out.read_text().splitlines()]
    header = header["header"]
    assert header["run_dir"] == os.path.abspath(run_dir) and header["seed"] == 4 and header["samples"] == 2
    assert header["environment"]["torch"] == torch.__version__ and not header["chat_template"]
    assert rows == [{"index": i, "prompt": g.prompt, "mean": g.mean, "sampled_answers": list(g.samples)}
                    for i, g in enumerate(expected)]  # fmt: skip
    # An existing --out is kept unless --overwrite.
    assert cli.main(args) == 2
    assert "exists" in capsys.readouterr().err
    assert cli.main([*args[:-2], "--prompts-file", str(prompts_file), "--samples", "0", "--out", str(out),
                     "--overwrite"]) == 0  # fmt: skip
    assert [json.loads(line)["sampled_answers"] for line in out.read_text().splitlines()[1:]] == [[], [], [], []]


@pytest.fixture(scope="module")
def run_without_posterior(run_dir, tmp_path_factory):
    from ivon_lora.filenames import POSTERIOR_CONFIG_NAME, POSTERIOR_WEIGHTS_NAME

    directory = tmp_path_factory.mktemp("runs") / "no-posterior"
    shutil.copytree(run_dir, directory)
    for name in (POSTERIOR_WEIGHTS_NAME, POSTERIOR_CONFIG_NAME):
        os.remove(directory / name)
    return str(directory)


@pytest.mark.parametrize(
    "args, message",
    [
        (["generate", "{missing}", "--prompt", "x"], "does not exist"),
        (["generate", "{run}"], "No prompts: pass --prompt"),
        (["generate", "{run}", "--prompts-file", "{blank}"], "No prompts: pass --prompt"),
        (["generate", "{run}", "--prompt", ""], "--prompt 1: the prompt is empty"),
        (["generate", "{run}", "--prompt", "x", "--samples", "-1"], "Invalid samples value: -1 (must be >= 0)"),
        (["generate", "{run}", "--prompt", "x", "--max-new-tokens", "0"], "Invalid max_new_tokens value: 0 (must be >= 1)"),
        (["generate", "{bare}", "--prompt", "x", "--samples", "2"], "has no posterior"),
        (["generate", "{run}", "--prompts-file", "{missing}"], "Prompts file"),
        (["generate", "{run}", "--prompts-file", "{bad}"], "bad.jsonl, line 2: expected an object with either"),
        (["generate", "{run}", "--prompts-file", "{messages}", "--no-chat"], "'messages' prompts need the chat"),
        (["generate", "{run}", "--prompt", "x", "--no-chat", "--system", "s"], "--system needs the chat template"),
        (["generate", "{run}", "--prompt", "x", "--out", "{dir}"], "is a directory"),
        (["generate", "{run}", "--prompt", "x", "--out", "{run}"], "is the run dir"),
    ],
)  # fmt: skip
def test_cli_errors_are_one_line_before_the_model_loads(args, message, run_dir, run_without_posterior, tmp_path,
                                                        capsys, monkeypatch):  # fmt: skip
    def no_loading(*_):
        raise AssertionError("the model loaded before the options were checked")

    monkeypatch.setattr("ivon_lora.rundir.load_run", no_loading)
    (tmp_path / "blank.txt").write_text("\n  \n")
    (tmp_path / "bad.jsonl").write_text('{"prompt": "x"}\n{"text": "y"}\n')
    (tmp_path / "messages.jsonl").write_text(json.dumps({"messages": [{"role": "user", "content": "x"}]}) + "\n")
    paths = {"run": run_dir, "bare": run_without_posterior, "missing": str(tmp_path / "missing"), "dir": str(tmp_path),
             **{name: str(tmp_path / f"{name}.{suffix}") for name, suffix in
                (("blank", "txt"), ("bad", "jsonl"), ("messages", "jsonl"))}}  # fmt: skip
    args = [arg.format(**paths) for arg in args]
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("ivon-lora generate: ") and message in err, err
