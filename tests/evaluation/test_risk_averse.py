"""The risk-averse selector (mean - kappa * std of the chosen answer's sample probabilities) against a plain
re-implementation, kappa = 0 against the mean-confidence score, and its kappa chosen on the selection split only."""

import json
import statistics

import pytest
import torch

from ivon_lora import cli
from ivon_lora.evaluation.metrics import risk_coverage, selective_prediction
from ivon_lora.evaluation.risk_averse import (
    KAPPA_GRID,
    choose_kappa,
    risk_averse_confidence,
    risk_averse_selective,
)


def random_samples(seed=0, num_samples=5, n=40, k=4):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(num_samples, n, k, generator=generator, dtype=torch.float64) * 2
    gold = torch.randint(0, k, (n,), generator=generator)
    return torch.softmax(logits, -1), gold


def plain_confidence(samples, kappa):
    """Per question, with Python lists: the answer of the averaged predictive, then mean - kappa * pstdev of its
    per-sample probabilities."""
    scores, answers = [], []
    for i in range(samples.shape[1]):
        per_sample = samples[:, i, :].tolist()
        averaged = [sum(row[k] for row in per_sample) / len(per_sample) for k in range(len(per_sample[0]))]
        answer = max(range(len(averaged)), key=lambda k: (averaged[k], -k))
        chosen = [row[answer] for row in per_sample]
        scores.append(statistics.fmean(chosen) - kappa * statistics.pstdev(chosen))
        answers.append(answer)
    return scores, answers


@pytest.mark.parametrize("kappa", [0.0, 0.5, 2.0])
def test_selector_equals_a_plain_reimplementation(kappa):
    samples, gold = random_samples()
    confidence, chosen = risk_averse_confidence(samples, kappa)
    expected, answers = plain_confidence(samples, kappa)
    torch.testing.assert_close(confidence, torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-12)
    assert chosen.tolist() == answers
    # And its selective numbers are risk_coverage of those scores and hits.
    assert risk_averse_selective(samples, gold, kappa) == risk_coverage(torch.tensor(expected),
                                                                        torch.tensor(answers) == gold)  # fmt: skip


def test_kappa_zero_is_the_sampled_predictives_max_probability():
    samples, gold = random_samples(seed=1)
    assert risk_averse_selective(samples, gold, 0.0) == selective_prediction(samples.mean(0), gold)
    single, _ = risk_averse_confidence(samples[:1], 3.0)
    torch.testing.assert_close(single, samples[0].max(1).values), "one sample has no spread"


def test_kappa_is_the_grids_lowest_selection_aurc_and_can_beat_the_mean():
    # Wrong answers: high mean, high spread across samples; right ones: slightly lower mean, no spread. Only a
    # positive kappa ranks the right ones first.
    right = torch.tensor([[0.7, 0.3]]).expand(4, 10, 2)
    wrong = torch.tensor([[0.99, 0.01], [0.5, 0.5], [0.99, 0.01], [0.5, 0.5]]).view(4, 1, 2).expand(4, 10, 2)
    samples = torch.cat([right, wrong], dim=1).double()
    gold = torch.cat([torch.zeros(10), torch.ones(10)]).long()
    kappa, grid = choose_kappa(samples, gold)
    assert [row["kappa"] for row in grid] == sorted(KAPPA_GRID)
    aurcs = {row["kappa"]: row["aurc"] for row in grid}
    assert aurcs[kappa] == min(aurcs.values()) and kappa == min(k for k, a in aurcs.items() if a == aurcs[kappa])
    assert kappa > 0 and aurcs[kappa] < aurcs[0.0]
    with pytest.raises(ValueError, match="kappa"):
        risk_averse_confidence(samples, -1.0)


def test_eval_chooses_kappa_on_the_select_split_and_reports_it(run_dir, tmp_path, capsys):
    out = tmp_path / "risk"
    args = ["eval", run_dir, "--split", "test", "--select-split", "validation", "--risk-averse", "--limit", "32",
            "--samples", "3", "--out", str(out)]  # fmt: skip
    assert cli.main(args) == 0
    report = json.loads((out / "eval.json").read_text())
    assert "sweep" not in report, "--risk-averse's select split asks for no sweep"
    ivon = report["tasks"]["synthetic"]["runs"]["ivon"]
    selector = ivon["risk_averse"]
    assert selector["chosen_on"] == "validation" and selector["kappa"] in KAPPA_GRID and selector["samples"] == 3
    # The reported numbers are the selector's on the test split's samples (the per-example file), at that kappa.
    rows = [json.loads(line) for line in (out / "predictions-synthetic-ivon.jsonl").read_text().splitlines()]
    samples = torch.tensor([row["sample_probs"] for row in rows]).transpose(0, 1)
    gold = torch.tensor([row["gold"] for row in rows])
    assert selector["selective"]["aurc"] == pytest.approx(
        risk_averse_selective(samples, gold, selector["kappa"])["aurc"]
    )
    # The choice is the lowest selection-split AURC, not the test split's.
    aurcs = {row["kappa"]: row["aurc"] for row in selector["grid"]}
    assert aurcs[selector["kappa"]] == min(aurcs.values())
    assert "risk-averse selector (kappa=" in (out / "eval.md").read_text()
    assert report["protocol"]["risk_averse"].startswith("kappa")
    assert cli.main(["eval", run_dir, "--split", "test", "--risk-averse", "--out", str(tmp_path / "x")]) == 2
    assert "--risk-averse" in capsys.readouterr().err and not (tmp_path / "x").exists()
