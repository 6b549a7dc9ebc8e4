"""The lm-evaluation-harness backend and the calibration report from lm-eval's logged samples, offline.

A local lm-eval task (YAML with `dataset_path: json` over rows written here) and the tiny demo run of conftest.
"""

import copy
import json
import math
import os
import shutil
import subprocess
import sys

import pytest
import torch
from lm_eval.api.instance import Instance
from lm_eval.models.huggingface import HFLM

from ivon_lora import cli
from ivon_lora.evaluation.logged_choices import logged_choices, read_logged_samples
from ivon_lora.evaluation.metrics import calibration_metrics, selective_prediction
from ivon_lora.integrations.lm_eval import IVONLoRALM, log_mean_exp, resolve_sampling
from ivon_lora.rundir import load_run

TASK = "ivon_tiny_mc"
# The demo posterior is narrow (ess 1e9); dividing its variance by this makes the samples differ visibly, so
# that a wrong way of combining them (per-token averaging, mean of log-probabilities) fails the tests.
TEMPERATURE = 0.02
# Multi-token continuations, plus one-token ones sharing a context (lm-eval scores those with one row).
REQUESTS = [
    ("Which category does the word dog belong to?", " a kind of animal"),
    ("Next to hammer and saw we found", " a red bus and a train"),
    ("Question: What is mango?\nAnswer:", " A"),
    ("Question: What is mango?\nAnswer:", " B"),
    ("Question: What is mango?\nAnswer:", " C"),
]


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    """A local lm-eval multiple-choice task over synthetic rows whose choices are several tokens long."""
    from ivon_lora.tasks.synthetic import synthetic_records

    directory = tmp_path_factory.mktemp("lm_eval_tasks")
    rows = synthetic_records("validation", 12)
    for row in rows:
        row["choices"]["text"] = [f"a kind of {category}" for category in row["choices"]["text"]]
    (directory / "rows.json").write_text(json.dumps(rows))
    (directory / f"{TASK}.yaml").write_text(
        f"task: {TASK}\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {directory / 'rows.json'}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        'doc_to_text: "Question: {{question}}\\nAnswer:"\n'
        'doc_to_choice: "{{choices.text}}"\n'
        'doc_to_target: "{{choices.label.index(answerKey)}}"\n'
        "metric_list:\n  - metric: acc\n  - metric: acc_norm\n"
        "metadata:\n  version: 1.0\n"
    )
    return str(directory)


@pytest.fixture(scope="module")
def loaded_run(run_dir):
    return load_run(run_dir)


@pytest.fixture(scope="module")
def weights_only_dir(run_dir, tmp_path_factory):
    """The demo run's adapter without its posterior, as a run trained without IVON is scored."""
    directory = tmp_path_factory.mktemp("runs") / "weights-only"
    shutil.copytree(run_dir, directory, ignore=shutil.ignore_patterns("posterior*", "eval-*"))
    return str(directory)


def _instances(requests, kind="loglikelihood"):
    return [Instance(request_type=kind, doc={}, arguments=args, idx=i) for i, args in enumerate(requests)]


def _sample_logprobs(run, num_samples, seed, token_pairs):
    """[S, requests] summed continuation log-probabilities under the same samples as the backend, by plain forwards."""
    sampler = run.posterior.at_test_time(0.0, TEMPERATURE).sampler(run.model, seed=seed)
    values = torch.zeros(num_samples, len(token_pairs), dtype=torch.float64)
    for s in range(num_samples):
        with sampler.sample(), torch.no_grad():
            for i, (context, continuation) in enumerate(token_pairs):
                logits = run.model(torch.tensor([context + continuation])).logits[0, :-1]
                logprobs = torch.log_softmax(logits.double(), dim=-1)[len(context) - 1 :]
                values[s, i] = logprobs.gather(1, torch.tensor(continuation)[:, None]).sum()
    return values


def test_samples_zero_equals_plain_hflm_on_the_merged_adapter(loaded_run):
    lm = IVONLoRALM(loaded_run, samples=0, batch_size=2)
    assert lm.num_samples == 0 and lm.get_model_info()["ivon_lora"]["mode"] == "mean"
    merged = copy.deepcopy(loaded_run.model).merge_and_unload()
    plain = HFLM(pretrained=merged, tokenizer=loaded_run.tokenizer, backend="causal", batch_size=2)

    ours, reference = lm.loglikelihood(_instances(REQUESTS)), plain.loglikelihood(_instances(REQUESTS))
    assert [g for _, g in ours] == [g for _, g in reference]
    assert torch.allclose(torch.tensor([v for v, _ in ours]), torch.tensor([v for v, _ in reference]), atol=1e-4)
    text = [("Which category does the word cat belong to? It was listed next to drum and harp.",)]
    assert lm.loglikelihood_rolling(_instances(text, "loglikelihood_rolling")) == pytest.approx(
        plain.loglikelihood_rolling(_instances(text, "loglikelihood_rolling")), abs=1e-4
    )
    prompt = [("Question: What is mango?\nAnswer:", {"until": ["\n"], "max_gen_toks": 6, "do_sample": False})]
    assert lm.generate_until(_instances(prompt, "generate_until")) == plain.generate_until(
        _instances(prompt, "generate_until")
    )


def test_samples_give_the_log_mean_exp_of_each_samples_sequence_probability(loaded_run):
    num_samples, seed = 3, 5
    lm = IVONLoRALM(loaded_run, samples=num_samples, seed=seed, temperature=TEMPERATURE, batch_size=2)
    tokenizer = loaded_run.tokenizer
    pairs = [(tokenizer(c)["input_ids"], tokenizer(x, add_special_tokens=False)["input_ids"]) for c, x in REQUESTS]
    assert len(pairs[0][1]) > 1 and len(pairs[1][1]) > 1  # multi-token continuations
    per_sample = _sample_logprobs(loaded_run, num_samples, seed, pairs)
    expected = [float(log_mean_exp(per_sample[:, i])) for i in range(len(REQUESTS))]

    scored = lm.loglikelihood(_instances(REQUESTS))
    assert [value for value, _ in scored] == pytest.approx(expected, abs=1e-4)
    # The test can tell the log-mean-exp from the wrong ways of combining samples.
    assert (per_sample.mean(0)[:2] - torch.tensor(expected[:2])).abs().min() > 1e-3
    # The same with another batch size (each batch draws the same S samples).
    other = IVONLoRALM(loaded_run, samples=num_samples, seed=seed, temperature=TEMPERATURE, batch_size=5)
    assert [v for v, _ in other.loglikelihood(_instances(REQUESTS))] == pytest.approx(expected, abs=1e-4)

    # is_greedy: the continuation of argmaxes of the sample-averaged next-token distributions is greedy.
    context, greedy = pairs[0][0], []
    sampler = loaded_run.posterior.at_test_time(0.0, TEMPERATURE).sampler(loaded_run.model, seed=seed)
    for _ in range(3):
        probs = 0
        for _ in range(num_samples):
            with sampler.sample(), torch.no_grad():
                probs = probs + torch.softmax(
                    loaded_run.model(torch.tensor([context + greedy])).logits[0, -1].double(), -1
                )
        greedy.append(int(probs.argmax()))
        sampler.generator.manual_seed(seed)
    not_greedy = greedy[:-1] + [(greedy[-1] + 1) % len(tokenizer)]
    results = lm._loglikelihood_tokens([(("", ""), context, greedy), (("", ""), context, not_greedy)])
    assert [g for _, g in results] == [True, False]


def test_rolling_sums_each_samples_windows_before_averaging(loaded_run):
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    num_samples, seed = 3, 1
    lm = IVONLoRALM(loaded_run, samples=num_samples, seed=seed, temperature=TEMPERATURE, batch_size=4, max_length=8)
    text = "Which category does the word tiger belong to? It was listed next to piano and lamp."
    windows = [make_disjoint_window(w) for w in get_rolling_token_windows(
        token_list=lm.tok_encode(text), prefix_token=lm.prefix_token_id, max_seq_len=8, context_len=1)]  # fmt: skip
    assert len(windows) > 2
    per_window = _sample_logprobs(loaded_run, num_samples, seed, windows)  # [S, windows]
    expected = float(log_mean_exp(per_window.sum(1)))
    (value,) = lm.loglikelihood_rolling(_instances([(text,)], "loglikelihood_rolling"))
    assert value == pytest.approx(expected, abs=1e-4)
    assert abs(value - sum(float(log_mean_exp(per_window[:, w])) for w in range(len(windows)))) > 1e-3


def _softmax_metrics(loglikelihoods, gold, ece_bins):
    probs = torch.zeros(len(loglikelihoods), max(map(len, loglikelihoods)), dtype=torch.float64)
    for i, values in enumerate(loglikelihoods):
        probs[i, : len(values)] = torch.tensor([math.exp(v) for v in values], dtype=torch.float64) / sum(
            map(math.exp, values)
        )
    return {**calibration_metrics(probs, gold, ece_bins), "selective": selective_prediction(probs, gold)}


def test_calibration_report_equals_the_toolkits_metrics_of_the_same_probabilities(
    run_dir, weights_only_dir, task_dir, tmp_path
):
    out = tmp_path / "report"
    args = ["eval", run_dir, "--lm-eval-tasks", TASK, "--lm-eval-include-path", task_dir, "--samples", "2",
            "--temperatures", str(TEMPERATURE), "--limit", "8", "--baseline", weights_only_dir, "--out", str(out)]  # fmt: skip
    assert cli.main(args) == 0
    report = json.loads((out / "eval.json").read_text())
    entry = report["tasks"][TASK]
    assert entry["num_examples"] == 8 and entry["split"] == "test"
    assert set(entry["runs"]) == {"ivon", "ivon (baseline)"}
    assert "sampled" not in entry["runs"]["ivon (baseline)"] and entry["runs"]["ivon"]["sampled"]["samples"] == 2
    assert (
        report["protocol"]["probabilities"].startswith("softmax over the choices") and report["environment"]["lm-eval"]
    )
    assert report["lm_eval"]["ivon"]["sampled"]["config"]["ivon_lora"]["samples"] == 2

    ece_bins = report["protocol"]["ece_bins"]
    for label, metrics in entry["runs"].items():
        rows = [json.loads(line) for line in (out / entry["files"][f"predictions_{label}"]).read_text().splitlines()]
        gold = torch.tensor([row["gold"] for row in rows])
        for predictive in ("mean", "sampled") if "sampled" in metrics else ("mean",):
            expected = _softmax_metrics([row[predictive]["loglikelihoods"] for row in rows], gold, ece_bins)
            assert metrics[predictive]["selective"] == expected.pop("selective"), (label, predictive)
            for key, value in expected.items():
                assert metrics[predictive][key] == pytest.approx(value, abs=1e-9), (label, predictive, key)
            # The probabilities' argmax is lm-eval's acc.
            assert metrics[predictive]["accuracy"] == pytest.approx(metrics["lm_eval"][predictive]["acc"])
    # Mean and posterior predictive differ: the samples were used.
    ivon_rows = (out / entry["files"]["predictions_ivon"]).read_text().splitlines()
    assert any(json.loads(r)["mean"]["probs"] != json.loads(r)["sampled"]["probs"] for r in ivon_rows)
    for name in ("eval.md", f"reliability-{TASK}.png", f"selective-{TASK}.png"):
        assert (out / name).stat().st_size > 0
    assert f"| {TASK} | test | 8 | ivon | samples S=2 |" in (out / "eval.md").read_text()


def test_lm_eval_command_line_runs_the_backend_end_to_end(run_dir, task_dir, loaded_run, tmp_path):
    out = tmp_path / "lm-eval-out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    model_args = f"run={run_dir},samples=2,seed=4,temperature={TEMPERATURE}"
    command = [sys.executable, "-m", "ivon_lora", "lm-eval", "--model", "ivon-lora", "--model_args", model_args,
               "--tasks", TASK, "--include_path", task_dir, "--limit", "3", "--batch_size", "4", "--device", "cpu",
               "--log_samples", "--output_path", str(out)]  # fmt: skip
    finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-3000:]
    (results_path,) = out.rglob("results_*.json")
    results = json.loads(results_path.read_text())
    assert results["config"]["model"] == "ivon-lora" and results["config"]["ivon_lora"]["samples"] == 2
    (samples_path,) = out.rglob(f"samples_{TASK}_*.jsonl")
    rows = read_logged_samples(str(samples_path))
    choices = logged_choices(TASK, rows)
    assert len(choices.doc_ids) == 3 and choices.lm_eval_scores()["acc"] == results["results"][TASK]["acc,none"]
    # The command line's numbers are the Python API's.
    lm = IVONLoRALM(loaded_run, samples=2, seed=4, temperature=TEMPERATURE, batch_size=4)
    # The file holds each choice's (context, continuation) as {"gen_args_K": {"arg_0": ..., "arg_1": ...}}.
    arguments = [(args["arg_0"], args["arg_1"]) for row in sorted(rows, key=lambda r: r["doc_id"])
                 for args in row["arguments"].values()]  # fmt: skip
    api = [value for value, _ in lm.loglikelihood(_instances(arguments))]
    assert api == pytest.approx([v for values in choices.loglikelihoods for v in values], abs=1e-5)


def test_sampling_options_are_checked():
    assert resolve_sampling(None, None, True) is None and resolve_sampling(None, None, False) == 0
    assert resolve_sampling(4, "bma", True) == 4 and resolve_sampling(None, "mean", True) == 0
    for samples, mode, has_posterior, message in [
        (3, "mean", True, "mode=mean scores at the posterior mean"),
        (0, "bma", True, "pass samples=S with S >= 1"),
        (2, None, False, "has no posterior"),
        (-1, None, True, "Invalid samples value: -1"),
        (None, "average", True, "Invalid mode value: 'average'"),
    ]:
        with pytest.raises(ValueError, match=message):
            resolve_sampling(samples, mode, has_posterior)
    with pytest.raises(FileNotFoundError, match="is not a directory: pass run=RUN_DIR"):
        IVONLoRALM("/nonexistent/run")
    with pytest.raises(ValueError, match="Invalid prune value: 2"):
        IVONLoRALM("/nonexistent/run", prune=2)


def test_model_args_are_checked_before_the_run_loads(run_dir, weights_only_dir):
    with pytest.raises(ValueError, match="has no posterior"):
        IVONLoRALM(weights_only_dir, samples=2)
    with pytest.raises(ValueError, match="prune and temperature need one"):
        IVONLoRALM(weights_only_dir, temperature=0.5)
    with pytest.raises(ValueError, match="model_args tokenizer= is set by the run dir"):
        IVONLoRALM(run_dir, tokenizer="gpt2")


def test_report_options_are_checked_before_any_model_loads(run_dir, task_dir, tmp_path, capsys):
    base = ["eval", run_dir, "--lm-eval-include-path", task_dir, "--out", str(tmp_path / "x")]
    assert cli.main(base + ["--lm-eval-tasks", "ivon_tiny_mcq"]) == 2
    assert f"Unknown lm-eval task 'ivon_tiny_mcq'. Did you mean {TASK}" in capsys.readouterr().err
    assert cli.main(base + ["--lm-eval-tasks", TASK, "--task", "synthetic"]) == 2
    assert "--task does not apply to --lm-eval-tasks" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_logged_rows_that_are_not_multiple_choice_are_refused():
    row = {"doc_id": 7, "target": 1, "filtered_resps": [[-1.0, False], [-2.0, True]], "acc": 0.0, "filter": "none"}
    choices = logged_choices("t", [row])
    assert choices.probs()[0].tolist() == pytest.approx([1 / (1 + math.exp(-1)), 1 / (1 + math.e)])
    with pytest.raises(ValueError, match="lm-eval task 't', doc_id 7: not a multiple-choice row"):
        logged_choices("t", [{**row, "filtered_resps": ["generated text"]}])
    with pytest.raises(ValueError, match="doc_id 7: target 2 is not one choice index"):
        logged_choices("t", [{**row, "target": 2}])


@pytest.mark.slow
def test_a_missing_lm_eval_install_names_the_extra():
    code = "import sys; sys.modules['lm_eval'] = None; import ivon_lora.integrations.lm_eval"
    finished = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert finished.returncode != 0 and "pip install 'ivon-lora[lm-eval]'" in finished.stderr


def test_lm_eval_tasks_are_an_eval_config_key_listed_or_comma_separated(run_dir, tmp_path):
    from ivon_lora.config import EvalConfig, load_command_config

    path = tmp_path / "eval.yaml"
    path.write_text(f"run_dir: {run_dir}\nlm_eval_tasks: [arc_easy, 'hellaswag, piqa']\nlm_eval_include_path: tasks\n")
    config = load_command_config(EvalConfig, "eval", str(path))
    assert config.lm_eval_tasks == ["arc_easy", "hellaswag", "piqa"] and config.lm_eval_include_path == "tasks"
    config = load_command_config(EvalConfig, "eval", None, ["lm_eval_tasks=arc_easy,hellaswag"], {"run_dir": run_dir})
    assert config.lm_eval_tasks == ["arc_easy", "hellaswag"]


def test_the_lm_eval_command_passes_every_argument_on_unchanged():
    argv = ["lm-eval", "-h", "--model", "ivon-lora", "--model_args", "run=x,samples=2", "--tasks", "a,b", "--", "+x"]
    from ivon_lora.commands import lm_eval as lm_eval_command

    options = cli.build_parser().parse_args(argv)
    assert options.command == "lm-eval" and lm_eval_command.config_from(options) == argv[1:]


def test_every_request_type_gives_the_models_weights_back(loaded_run):
    """The lm-eval model holds the test-time (here pruned) mean only while it answers requests."""
    model = loaded_run.model
    before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}

    def unchanged():
        return all(torch.equal(p, before[n]) for n, p in model.named_parameters() if "lora_" in n)

    lm = IVONLoRALM(loaded_run, samples=0, prune=0.5, batch_size=2)
    assert unchanged()
    pruned = lm.loglikelihood(_instances(REQUESTS))
    assert unchanged()
    lm.loglikelihood_rolling(_instances([("the cat sat on a mat",)], "loglikelihood_rolling"))
    assert unchanged()
    lm.generate_until(_instances([("Question: What is mango?\nAnswer:", {"max_gen_toks": 2, "until": ["\n"]})],
                                 "generate_until"))  # fmt: skip
    assert unchanged()
    unpruned = IVONLoRALM(loaded_run, samples=0, batch_size=2).loglikelihood(_instances(REQUESTS))
    assert [ll for ll, _ in pruned] != [ll for ll, _ in unpruned]  # it did score at the pruned mean
