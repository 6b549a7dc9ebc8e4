"""Selective generation (`ivon_lora.evaluation.generative`, `ivon-lora eval RUN --task wordqa`): wordqa as a task;
the scoring pass against plain full forwards (at the mean and per posterior sample); the streamed disagreement
against `uncertainty.py`; which scores a run's samples leave undefined; the report's metrics against
`selective_generation_metrics` recomputed from the per-example jsonl; the CLI on a choice run and on SFT runs (with a
temperature-sampling and an MC-dropout baseline); bad input in one line before any model loads."""

import json
import math
import os

import pytest
import torch

from ivon_lora import cli
from ivon_lora.evaluation import uncertainty
from ivon_lora.evaluation.generative import (
    DecodedAnswers,
    Disagreement,
    Sampling,
    answer_tokens,
    confidence_scores,
    cut_at_stop,
    evaluate_generative,
    teacher_forced,
)
from ivon_lora.evaluation.selective import selective_generation_metrics
from ivon_lora.tasks import get_task, load_generative_split
from ivon_lora.tasks.base import GENERATIVE
from ivon_lora.tasks.judges import numeric_match
from ivon_lora.tasks.wordqa import SPLIT_SIZES, word_categories, wordqa_records

LIMIT = 5
DEMO_SFT = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "recipes", "demo-sft.yaml"
)


def test_wordqa_is_a_generative_task_accepting_every_category():
    task = get_task("wordqa")
    assert task.kind == GENERATIVE and task.judge.name == "exact_match" and task.stop == ("\n",)
    assert task.max_new_tokens <= 8
    categories = word_categories()
    for split, size in SPLIT_SIZES.items():
        loaded = load_generative_split("wordqa", split)
        records = wordqa_records(split)
        assert len(loaded.examples) == size == len(records)
        for example, record in zip(loaded.examples, records):
            assert example.id == record["id"] and example.question == record["question"]  # no "?" appended
            assert example.prompt == f"Question: {record['question']}\nAnswer:"
            assert example.references == tuple(record["answers"]) and example.target == " " + record["answers"][0]
    orange = next(e for split in SPLIT_SIZES for e in load_generative_split("wordqa", split).examples
                  if "orange" in e.question)  # fmt: skip
    assert orange.references == categories["orange"] == ("fruit", "color")
    assert task.judge.correct("Color.", orange.references) and task.judge.correct(" fruit", orange.references)
    assert not task.judge.correct("a vegetable", orange.references)


def test_cut_at_stop_and_the_scored_end_of_an_answer(llama_tokenizer):
    assert cut_at_stop(" fruit\nQuestion: x", ("\n",)) == (" fruit", "\n")
    assert cut_at_stop("12 #### 3 Question: y", ("Question:", "####")) == ("12 ", "####")  # the earliest one
    assert cut_at_stop(" fruit", ("\n",)) == (" fruit", None)
    ids = llama_tokenizer(" fruit", add_special_tokens=False)["input_ids"]
    newline = llama_tokenizer("\n", add_special_tokens=False)["input_ids"]
    assert answer_tokens(llama_tokenizer, " fruit", "stop", "\n") == ids + newline
    assert answer_tokens(llama_tokenizer, " fruit", "eos") == ids + [llama_tokenizer.eos_token_id]
    assert answer_tokens(llama_tokenizer, " fruit", "length") == ids
    assert answer_tokens(llama_tokenizer, "", "eos") == [llama_tokenizer.eos_token_id]


def _plain_log_probs(model, prompt: list[int], answer: list[int]) -> torch.Tensor:
    """[T, V] log-softmax of one sequence's full forward, alone, at the positions predicting the answer."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt + answer])).logits[0].double()
    return torch.log_softmax(logits[len(prompt) - 1 : len(prompt) + len(answer) - 1], dim=-1)


def test_the_scoring_pass_equals_plain_forwards_at_the_mean_and_per_sample(run, wide):
    model, generator = run.model, torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    prompts = [torch.randint(3, vocab, (n,), generator=generator).tolist() for n in (7, 3, 12, 5, 9)]
    answers = [torch.randint(3, vocab, (n,), generator=generator).tolist() for n in (2, 6, 1, 4, 3)]
    sampling = Sampling("posterior", 3)
    scored = teacher_forced(model, prompts, answers, posterior=wide, sampling=sampling, seed=5, batch_size=2,
                            pad_id=run.tokenizer.pad_token_id)  # fmt: skip
    assert scored.token_log_probs.shape == scored.mask.shape == (5, 6)
    wide.apply_mean(model)
    per_sample = []  # the plain forwards under the same draws: the k-th of a generator seeded by the seed
    sampler = wide.sampler(model, generator=torch.Generator().manual_seed(5))
    for _ in range(3):
        with sampler.sample():
            per_sample.append([_plain_log_probs(model, p, a) for p, a in zip(prompts, answers)])
    wide.apply_mean(model)
    for i, (prompt, answer) in enumerate(zip(prompts, answers)):
        n = len(answer)
        expected = _plain_log_probs(model, prompt, answer).gather(-1, torch.tensor(answer)[:, None]).squeeze(-1)
        assert scored.mask[i].sum() == n and not scored.mask[i, n:].any()
        torch.testing.assert_close(scored.token_log_probs[i, :n], expected, atol=1e-5, rtol=0)
        stacked = torch.stack([sample[i] for sample in per_sample], dim=1)  # [T, S, V]
        sample_ll = stacked.gather(-1, torch.tensor(answer)[:, None, None].expand(n, 3, 1)).squeeze(-1).sum(0)
        torch.testing.assert_close(scored.sample_log_likelihoods[i], sample_ll, atol=1e-4, rtol=0)
        torch.testing.assert_close(scored.mutual_information[i, :n], uncertainty.mutual_information(stacked),
                                   atol=1e-6, rtol=1e-3)  # fmt: skip
        torch.testing.assert_close(scored.expected_pairwise_kl[i, :n], uncertainty.expected_pairwise_kl(stacked),
                                   atol=1e-6, rtol=1e-3)  # fmt: skip
    assert (scored.mutual_information[scored.mask] > 0).all()
    again = teacher_forced(model, prompts, answers, posterior=wide, sampling=sampling, seed=5, batch_size=5,
                           pad_id=run.tokenizer.pad_token_id)  # fmt: skip
    torch.testing.assert_close(again.sample_log_likelihoods, scored.sample_log_likelihoods, atol=1e-5, rtol=0)


def test_streamed_disagreement_equals_uncertainty_on_hand_built_distributions():
    generator = torch.Generator().manual_seed(1)
    log_probs = torch.log_softmax(3 * torch.randn(4, 5, 7, generator=generator, dtype=torch.float64), dim=-1)
    # A token no sample can emit (0 log 0 = 0), and a near one-hot sample.
    log_probs[:, :, 2] = -math.inf
    log_probs = torch.log_softmax(log_probs, dim=-1)
    log_probs[1, 0] = torch.log_softmax(torch.tensor([0.0, 40, 0, 0, 0, 0, 0], dtype=torch.float64), -1)
    log_probs[1, 0, 2] = -math.inf
    for samples in (2, 5):
        accumulated = Disagreement()
        for s in range(samples):
            accumulated.add(log_probs[:, s])
        torch.testing.assert_close(accumulated.mutual_information(),
                                   uncertainty.mutual_information(log_probs[:, :samples]))  # fmt: skip
        torch.testing.assert_close(accumulated.expected_pairwise_kl(),
                                   uncertainty.expected_pairwise_kl(log_probs[:, :samples]))  # fmt: skip
    identical = Disagreement()
    for _ in range(3):
        identical.add(log_probs[:, 0])
    assert torch.allclose(identical.mutual_information(), torch.zeros(4, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(identical.expected_pairwise_kl(), torch.zeros(4, dtype=torch.float64), atol=1e-12)
    with pytest.raises(ValueError, match="at least 2 samples"):
        Disagreement().mutual_information()


def test_scores_a_runs_samples_cannot_give_are_undefined_with_the_reason():
    from ivon_lora.evaluation.generative import TeacherForced

    decoded = [
        DecodedAnswers(" fruit", "stop", (" Fruit", "tool", " fruit."), "\n"),
        DecodedAnswers("x", "eos", ("y",) * 3),
    ]
    base = {"token_log_probs": torch.tensor([[-0.5, -1.0], [-2.0, 0.0]]), "mask": torch.tensor([[1, 1], [1, 0]]).bool(),
            "sample_log_likelihoods": torch.zeros(2, 0)}  # fmt: skip
    equivalent = get_task("wordqa").judge.equivalent
    scores, undefined = confidence_scores(TeacherForced(**base), decoded, Sampling("temperature", 3), equivalent)
    assert list(scores) == ["sequence_log_likelihood", "mean_token_log_likelihood", "semantic_agreement",
                            "neg_semantic_entropy"]  # fmt: skip
    assert set(undefined) == {"bma_log_likelihood", "neg_mutual_information", "neg_expected_pairwise_kl"}
    assert "temperature-1 samples" in undefined["bma_log_likelihood"]
    assert scores["sequence_log_likelihood"].tolist() == [-1.5, -2.0]
    assert scores["mean_token_log_likelihood"].tolist() == [-0.75, -2.0]
    assert scores["semantic_agreement"].tolist() == [pytest.approx(2 / 3), 0.0]
    assert scores["neg_semantic_entropy"].tolist() == [
        pytest.approx(-uncertainty.semantic_entropy(["a", "b", "a"], str.__eq__)),
        0.0,
    ]
    one = {**base, "sample_log_likelihoods": torch.tensor([[-1.0], [-3.0]])}
    scores, undefined = confidence_scores(TeacherForced(**one), decoded, Sampling("posterior", 1), equivalent)
    assert scores["bma_log_likelihood"].tolist() == [-1.0, -3.0] and set(undefined) == {
        "neg_mutual_information", "neg_expected_pairwise_kl"}  # fmt: skip
    _, undefined = confidence_scores(TeacherForced(**base), decoded, Sampling(None, 0), equivalent)
    assert undefined["semantic_agreement"] == "no sampled answers (S = 0)" and len(undefined) == 5


def test_evaluate_generative_with_a_given_decoder_judges_and_scores_its_answers(run):
    """The decoder hook: answers fixed by hand (two right, one wrong) are judged, scored and ranked."""
    examples = load_generative_split("wordqa", "validation", limit=3).examples
    fixed = [DecodedAnswers(" " + examples[0].references[0], "stop", (examples[0].references[0],) * 2, "\n"),
             DecodedAnswers("no idea", "length", ("no idea", "maybe")),
             DecodedAnswers(examples[2].references[-1].upper(), "eos", ("x", "y"))]  # fmt: skip

    def decode(model, tokenizer, questions, **options):
        assert questions == [e.prompt for e in examples] and options["stop"] == ("\n",)
        return fixed

    evaluation = evaluate_generative(run.model, run.tokenizer, examples, get_task("wordqa"), chat=False,
                                     sampling=Sampling("temperature", 2), decode=decode)  # fmt: skip
    assert evaluation.correct == [True, False, True]
    assert evaluation.scores["semantic_agreement"].tolist() == [1.0, 0.5, 0.0]
    assert evaluation.answer_token_counts[0] == len(answer_tokens(run.tokenizer, fixed[0].chosen, "stop", "\n"))
    metrics = evaluation.metrics([10])
    assert metrics["accuracy"] == pytest.approx(2 / 3) and metrics["judges"]["token_f1"] == pytest.approx(2 / 3)
    assert metrics["scores"]["semantic_agreement"]["auroc"] == 0.5  # wrong 0.5 sits between the right 1.0 and 0.0


def _recomputed(rows: list[dict], score: str) -> dict:
    probability = {"sequence_log_likelihood": math.exp, "bma_log_likelihood": math.exp,
                   "semantic_agreement": float}.get(score)  # fmt: skip
    confidence = [row["scores"][score] for row in rows]
    return selective_generation_metrics(confidence, [float(row["correct"]) for row in rows],
                                        None if probability is None else [min(1.0, probability(c)) for c in confidence],
                                        [10])  # fmt: skip


def _assert_report_matches_jsonl(run_metrics: dict, rows: list[dict]) -> None:
    assert run_metrics["accuracy"] == pytest.approx(sum(row["correct"] for row in rows) / len(rows))
    for score, metrics in run_metrics["scores"].items():
        expected = _recomputed(rows, score)
        for key, value in expected.items():
            if isinstance(value, float) and math.isnan(value):
                assert metrics[key] is None and metrics["undefined"][key]  # NaN as null, with the reason
            elif key != "curve":
                assert metrics[key] == pytest.approx(value), (score, key)
    for score in run_metrics["undefined_scores"]:
        assert all(row["scores"][score] is None for row in rows)


def _read(out) -> tuple[dict, dict]:
    report = json.loads((out / "eval.json").read_text())
    rows = {label: [json.loads(line) for line in (out / f"predictions-wordqa-{label}.jsonl").read_text().splitlines()]
            for label in report["tasks"]["wordqa"]["runs"]}  # fmt: skip
    return report, rows


def test_eval_of_a_choice_run_on_wordqa_with_a_temperature_sampling_baseline(run_dir, adamw_run_dir, tmp_path):
    out = tmp_path / "eval"
    args = ["eval", run_dir, "--task", "wordqa", "--baseline", adamw_run_dir, "--samples", "3", "--limit",
            str(LIMIT), "--seed", "3", "--out", str(out)]  # fmt: skip
    assert cli.main(args) == 0
    report, rows = _read(out)
    entry = report["tasks"]["wordqa"]
    assert entry["split"] == "validation" and entry["num_examples"] == LIMIT and entry["task"]["kind"] == GENERATIVE
    assert (
        report["runs"]["ivon"]["sample_kind"] == "posterior"
        and report["runs"]["adamw_torch"]["sample_kind"] == "temperature"
    )
    assert report["runs"]["ivon"]["prompts"] == "plain task prompt (prompt_format: plain)"
    assert {"torch", "transformers"} <= set(report["environment"]) and report["protocol"]["kind"] == "generative"
    assert set(entry["runs"]["ivon"]["scores"]) == set(uncertainty.CONFIDENCE_SCORES)
    assert set(entry["runs"]["adamw_torch"]["undefined_scores"]) == {"bma_log_likelihood", "neg_mutual_information",
                                                               "neg_expected_pairwise_kl"}  # fmt: skip
    for label, run_rows in rows.items():
        assert [row["id"] for row in run_rows] == [f"wordqa-validation-{i}" for i in range(LIMIT)]
        assert all(len(row["sampled_answers"]) == 3 and row["prompt"].startswith("Question: ") for row in run_rows)
        _assert_report_matches_jsonl(entry["runs"][label], run_rows)
    assert os.path.getsize(out / entry["files"]["selective"]) > 10_000
    table = (out / "eval.md").read_text()
    assert "| task | split | n | run | samples | score | accuracy | auroc | prr |" in table
    assert "| wordqa | validation | 5 | adamw_torch | 3 temperature | semantic_agreement |" in table
    assert "bma_log_likelihood undefined" in table
    # Deterministic for a seed: the same answers and scores again.
    assert cli.main(args[:-1] + [str(tmp_path / "again")]) == 0
    assert _read(tmp_path / "again")[1] == rows


@pytest.fixture(scope="module")
def sft_runs(tmp_path_factory):
    """A tiny IVON SFT run and an AdamW SFT run with LoRA dropout (for MC dropout), 4 steps each."""
    root = tmp_path_factory.mktemp("sft")
    common = ["max_steps=4", "max_train_samples=32", "max_eval_samples=8", "final_eval_samples=2", "disable_tqdm=true"]
    assert cli.main(["train", DEMO_SFT, f"output_dir={root / 'ivon'}", *common]) == 0
    assert cli.main(["train", DEMO_SFT, f"output_dir={root / 'adamw'}", "optim=adamw_torch", "learning_rate=0.001",
                     "lora_dropout=0.1", *common]) == 0  # fmt: skip
    return str(root / "ivon"), str(root / "adamw")


def test_eval_of_sft_runs_on_wordqa_with_an_mc_dropout_baseline(sft_runs, tmp_path):
    ivon, adamw = sft_runs
    out = tmp_path / "eval"
    assert cli.main(["eval", ivon, "--task", "wordqa", "--baseline", adamw, "--samples", "2", "--mc-dropout-samples",
                     "3", "--limit", str(LIMIT), "--out", str(out)]) == 0  # fmt: skip
    report, rows = _read(out)
    runs = report["tasks"]["wordqa"]["runs"]
    assert report["runs"]["ivon"]["prompts"] == ("chat template (question as the user message) (SFT train data "
                                                 "builtin:wordqa is chat messages)")  # fmt: skip
    assert (runs["ivon"]["sample_kind"], runs["ivon"]["samples"]) == ("posterior", 2)
    assert (runs["adamw_torch"]["sample_kind"], runs["adamw_torch"]["samples"]) == ("mc_dropout", 3)
    for label, run_rows in rows.items():
        assert runs[label]["undefined_scores"] == {}
        assert all(row["prompt"].startswith("User: ") and row["prompt"].endswith("Assistant: ") for row in run_rows)
        _assert_report_matches_jsonl(runs[label], run_rows)
    # The tiny random model answers nothing right: AUROC and PRR are null, with the reason.
    assert not any(row["correct"] for row in rows["ivon"])
    metrics = runs["ivon"]["scores"]["sequence_log_likelihood"]
    assert metrics["auroc"] is None and "every answer is wrong" in metrics["undefined"]["auroc"]
    assert metrics["prr"] is None and metrics["aurc"] == 1.0
    # Posterior-averaged decoding of the chosen answer: the decoder's own answers, the run's mode recorded.
    from ivon_lora import load_run
    from ivon_lora.generation.decoding import decode_averaged
    from ivon_lora.generation import render_prompts
    from ivon_lora.tasks import load_generative_split

    averaged = tmp_path / "averaged"
    assert cli.main(["eval", ivon, "--task", "wordqa", "--samples", "2", "--limit", str(LIMIT), "--decoding",
                     "averaged", "--out", str(averaged)]) == 0  # fmt: skip
    report, rows = _read(averaged)
    assert report["runs"]["ivon"]["decoding"] == "averaged"
    run = load_run(ivon)
    task = report["tasks"]["wordqa"]["task"]
    examples = load_generative_split("wordqa", "validation", limit=LIMIT).examples
    texts = render_prompts(run.tokenizer, [e.question for e in examples], chat=True)
    expected = decode_averaged(run.model, run.tokenizer, texts, run.posterior, 2, seed=0, chat=True,
                               max_new_tokens=task["max_new_tokens"], stop_strings=tuple(task["stop"]))  # fmt: skip
    assert [row["chosen"] for row in rows["ivon"]] == [answer.text for answer in expected]


def test_local_rows_of_a_hub_task_and_bad_input_fail_in_one_line_before_any_model_loads(run_dir, tmp_path, capsys,
                                                                                         monkeypatch):  # fmt: skip
    import ivon_lora.rundir

    def no_model(directory):
        raise AssertionError("a model loaded before the input was checked")

    monkeypatch.setattr(ivon_lora.rundir, "load_run", no_model)
    out = str(tmp_path / "e")
    assert cli.main(["eval", run_dir, "--task", "wordqq", "--out", out]) == 2
    assert "Unknown task 'wordqq'. Did you mean 'wordqa'?" in capsys.readouterr().err
    assert cli.main(["eval", run_dir, "--task", "wordqa", "synthetic", "--out", out]) == 2
    assert "mixes generative (wordqa) and multiple-choice (synthetic)" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "Who?", "answer": ["x"]}) + "\n" + json.dumps({"question": "Why?"}) + "\n")
    assert cli.main(["eval", run_dir, "--task", "nq_open", "--file", str(bad), "--out", out]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Task 'nq_open', split 'validation'" in err and str(bad) in err
    assert "row 1" in err and "answer" in err
    assert cli.main(["eval", run_dir, "--task", "gsm8k", "--split", "validation", "--out", out]) == 2
    assert "task 'gsm8k' has no split 'validation'; available: train, test" in capsys.readouterr().err
    assert cli.main(["eval", run_dir, "--task", "wordqa", "--temperature-scaling", "--select-split", "test",
                     "--out", out]) == 2  # fmt: skip
    assert "--temperature-scaling is for multiple-choice tasks" in capsys.readouterr().err


def test_eval_on_local_triviaqa_and_gsm8k_rows(run_dir, tmp_path):
    trivia = tmp_path / "trivia.jsonl"
    trivia.write_text(
        "".join(
            json.dumps({"question": q, "question_id": f"tq{i}", "answer": {"value": a, "aliases": [a]}}) + "\n"
            for i, (q, a) in enumerate([("Capital of France?", "Paris"), ("2+2?", "four")])
        )
    )
    assert cli.main(["eval", run_dir, "--task", "triviaqa", "--file", str(trivia), "--samples", "2",
                     "--out", str(tmp_path / "t")]) == 0  # fmt: skip
    report = json.loads((tmp_path / "t" / "eval.json").read_text())
    assert report["tasks"]["triviaqa"]["data"]["source"] == str(trivia)
    rows = (tmp_path / "t" / "predictions-triviaqa-ivon.jsonl").read_text().splitlines()
    assert [json.loads(row)["id"] for row in rows] == ["tq0", "tq1"]
    gsm = tmp_path / "gsm.jsonl"
    gsm.write_text(json.dumps({"question": "1+1?", "answer": "1+1=<<1+1=2>>2\n#### 2"}) + "\n")
    assert cli.main(["eval", run_dir, "--task", "gsm8k", "--file", str(gsm), "--split", "test", "--samples", "0",
                     "--out", str(tmp_path / "g")]) == 0  # fmt: skip
    runs = json.loads((tmp_path / "g" / "eval.json").read_text())["tasks"]["gsm8k"]["runs"]
    (row,) = map(json.loads, (tmp_path / "g" / "predictions-gsm8k-ivon.jsonl").read_text().splitlines())
    assert row["references"] == ["2"]  # the number after "####", not the worked solution
    # The run's score is gsm8k's judge (numeric match, not exact match) on the answer it chose, whatever that is.
    expected = numeric_match(row["chosen"], ["2"])
    assert row["judges"] == {"numeric_match": expected} and row["correct"] == (expected == 1.0)
    assert runs["ivon"]["judges"] == {"numeric_match": expected}
    assert len(runs["ivon"]["undefined_scores"]) == 5


def test_teacher_forced_gives_the_model_its_weights_back(run):
    model = run.model
    pruned = run.posterior.at_test_time(0.5)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}
    prompts, answers = [[5, 9, 11], [7, 3]], [[12, 4], [8]]
    scored = teacher_forced(model, prompts, answers, posterior=pruned, sampling=Sampling("posterior", 2), seed=3,
                            pad_id=run.tokenizer.pad_token_id)  # fmt: skip
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters() if "lora_" in n)
    unpruned = teacher_forced(model, prompts, answers, posterior=run.posterior, pad_id=run.tokenizer.pad_token_id)
    assert not torch.equal(scored.token_log_probs, unpruned.token_log_probs)  # it did score at the pruned mean
