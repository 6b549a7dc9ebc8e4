"""Predictions at the mean and over samples, selective prediction, the evaluate module, and `ivon-lora eval`."""

import json
import random

import pytest
import torch

from ivon_lora import cli
from ivon_lora.evaluation import load_calibration_metric, predict
from ivon_lora.evaluation.metrics import calibration_metrics, reliability_bins, selective_prediction
from ivon_lora.rundir import load_run

PNG = b"\x89PNG\r\n\x1a\n"


def reference_selective(confidence, correct, risk):
    """Plain-Python selective classification: thresholds at each distinct confidence, highest first."""
    n = len(confidence)
    points = []
    for threshold in sorted(set(confidence), reverse=True):
        accepted = [ok for c, ok in zip(confidence, correct) if c >= threshold]
        points.append((len(accepted) / n, sum(accepted) / len(accepted)))
    feasible = [cov for cov, acc in points if 1 - acc <= risk + 1e-12]
    return points, max(feasible) if feasible else 0.0


def test_selective_prediction_hand_case_with_ties():
    # confidences 0.9 (right), 0.8 (right), 0.8 (wrong), 0.6 (wrong): the two 0.8s enter together.
    probs = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.2, 0.8], [0.6, 0.4]])
    gold = torch.tensor([0, 0, 0, 1])
    result = selective_prediction(probs, gold, risk_levels=(0.0, 0.34, 0.5))
    assert result["curve"]["coverage"] == [0.25, 0.75, 1.0]
    assert result["curve"]["accuracy"] == pytest.approx([1.0, 2 / 3, 0.5])
    assert result["coverage_at_risk"] == {"0": 0.25, "0.34": 0.75, "0.5": 1.0}
    # AURC: mean over the 4 acceptance counts of the selective risk, ties sharing their group's risk.
    assert result["aurc"] == pytest.approx((0 + 2 * (1 / 3) + 0.5) / 4)


def test_selective_prediction_matches_a_plain_implementation():
    generator = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(300, 4, generator=generator) * 2, dim=1).round(decimals=2)
    probs = probs / probs.sum(dim=1, keepdim=True)  # rounded, so that ties occur
    gold = torch.randint(0, 4, (300,), generator=generator)
    result = selective_prediction(probs, gold, risk_levels=(0.3, 0.5), max_curve_points=10_000)
    confidence, prediction = probs.max(dim=1)
    correct = (prediction == gold).tolist()
    points, coverage_30 = reference_selective(confidence.tolist(), correct, 0.3)
    assert result["curve"]["coverage"] == pytest.approx([p[0] for p in points])
    assert result["curve"]["accuracy"] == pytest.approx([p[1] for p in points])
    assert result["coverage_at_risk"]["0.3"] == pytest.approx(coverage_30)
    assert len(selective_prediction(probs, gold, max_curve_points=7)["curve"]["coverage"]) == 7


def test_reliability_bins_agree_with_the_ece():
    generator = torch.Generator().manual_seed(1)
    probs = torch.softmax(torch.randn(200, 5, generator=generator), dim=1)
    gold = torch.randint(0, 5, (200,), generator=generator)
    bins = reliability_bins(probs, gold, 15)
    assert sum(b["count"] for b in bins) == 200
    ece = sum(b["count"] / 200 * abs(b["confidence"] - b["accuracy"]) for b in bins if b["count"])
    assert ece == pytest.approx(calibration_metrics(probs, gold, (15,))["ece_15"])
    assert all(b["lo"] < b["confidence"] <= b["hi"] + 1e-6 for b in bins if b["count"])


def test_calibration_metric_loads_offline_through_evaluate():
    metric = load_calibration_metric()
    rng = random.Random(0)
    rows = [[rng.random() for _ in range(3)] for _ in range(50)]
    rows = [[p / sum(row) for p in row] for row in rows]
    gold = [rng.randrange(3) for _ in rows]
    for start in range(0, 50, 20):
        metric.add_batch(predictions=rows[start : start + 20], references=gold[start : start + 20])
    result = metric.compute(ece_bins=[10, 15])
    expected = calibration_metrics(torch.tensor(rows, dtype=torch.float64), torch.tensor(gold), (10, 15))
    assert result == pytest.approx(expected)


@pytest.fixture(scope="module")
def loaded_run(run_dir):
    return load_run(run_dir)


def test_predictions_are_ordered_complete_deterministic_and_batch_size_independent(loaded_run, synthetic_examples):
    examples = synthetic_examples["validation"][:37]  # not a multiple of the batch size
    run = loaded_run
    first = predict(run.model, run.tokenizer, examples, run.posterior, num_samples=3, batch_size=8, seed=5)
    again = predict(run.model, run.tokenizer, examples, run.posterior, num_samples=3, batch_size=8, seed=5)
    other_batches = predict(run.model, run.tokenizer, examples, run.posterior, num_samples=3, batch_size=5, seed=5)
    assert first.ids == [e.id for e in examples] and first.samples.shape == (3, 37, 4)
    assert torch.equal(first.samples, again.samples)
    torch.testing.assert_close(first.samples, other_batches.samples, atol=1e-6, rtol=0)
    torch.testing.assert_close(first.mean, other_batches.mean, atol=1e-6, rtol=0)
    # Batching by prompt length is undone: one example scored alone gets its own row.
    alone = predict(run.model, run.tokenizer, examples[20:21], run.posterior, num_samples=3, seed=5)
    torch.testing.assert_close(alone.mean[0], first.mean[20], atol=1e-6, rtol=0)
    metrics = first.metrics((10,))
    assert [m["samples"] for m in metrics["by_num_samples"]] == [1, 2, 3]
    expected = calibration_metrics(first.samples[:2].mean(0), first.gold, (10,))
    assert {k: metrics["by_num_samples"][1][k] for k in expected} == pytest.approx(expected)
    assert metrics["sampled"]["selective"]["coverage_at_risk"].keys() == {"0.01", "0.05", "0.1"}
    rows = list(first.rows())
    assert (
        rows[3]["id"] == examples[3].id
        and len(rows[3]["sample_probs"]) == 3
        and sum(rows[3]["mean"]) == pytest.approx(1)
    )


def test_mc_dropout_needs_dropout(loaded_run, synthetic_examples):
    with pytest.raises(ValueError, match="lora_dropout > 0"):
        predict(loaded_run.model, loaded_run.tokenizer, synthetic_examples["validation"][:4], num_samples=2,
                sample_kind="mc_dropout")  # fmt: skip


def test_eval_sweep_chooses_on_the_select_split_only(run_dir, tmp_path):
    out = tmp_path / "sweep"
    args = ["eval", run_dir, "--split", "test", "--select-split", "validation", "--limit", "48", "--samples", "2",
            "--prune-fractions", "0", "0.2", "0.9", "--temperatures", "1", "4", "--select-by", "nll", "--out", str(out)]  # fmt: skip
    assert cli.main(args) == 0
    report = json.loads((out / "eval.json").read_text())
    sweep = report["sweep"]
    configs = sweep["configs"]
    assert [(c["fraction"], c["temperature"]) for c in configs] == [
        (0, 1),
        (0, 4),
        (0.2, 1),
        (0.2, 4),
        (0.9, 1),
        (0.9, 4),
    ]
    select_nll = [c["select"]["sampled"]["nll"] for c in configs]
    assert sweep["chosen"] == select_nll.index(min(select_nll))
    assert all(c["report"]["num_examples"] == 48 and c["select"]["num_examples"] == 48 for c in configs)
    assert (out / "tradeoff.png").read_bytes()[:8] == PNG
    assert "(chosen)" in (out / "eval.md").read_text()
    # The reported evaluation is the chosen configuration's.
    chosen = configs[sweep["chosen"]]
    assert report["runs"]["ivon"]["pruning"]["fraction"] == chosen["fraction"]
    task = report["tasks"]["synthetic"]
    assert task["split"] == "test" and task["runs"]["ivon"]["sampled"]["nll"] == pytest.approx(
        chosen["report"]["sampled"]["nll"]
    )
    # The unpruned configuration reproduces a plain evaluation of the run.
    assert (
        cli.main(
            ["eval", run_dir, "--split", "test", "--limit", "48", "--samples", "2", "--out", str(tmp_path / "plain")]
        )
        == 0
    )
    plain = json.loads((tmp_path / "plain" / "eval.json").read_text())["tasks"]["synthetic"]["runs"]["ivon"]
    assert {k: plain[k] for k in ("mean", "sampled")} == {k: configs[0]["report"][k] for k in ("mean", "sampled")}


def test_eval_refuses_to_choose_on_the_reported_split_or_without_a_choice_split(run_dir, tmp_path, capsys):
    base = ["eval", run_dir, "--split", "validation", "--out", str(tmp_path / "x")]
    assert cli.main(base + ["--select-split", "validation"]) == 2
    assert "is the reported split" in capsys.readouterr().err
    assert cli.main(base + ["--sweep"]) == 2
    assert "pass --select-split" in capsys.readouterr().err
    assert cli.main(base + ["--task", "synthetic", "arc_easy", "--file", run_dir]) == 2
    assert "single --task" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_eval_reports_ivon_and_a_baseline_side_by_side(run_dir, adamw_run_dir, tmp_path):
    out = tmp_path / "report"
    args = ["eval", run_dir, "--baseline", adamw_run_dir, "--mc-dropout-samples", "3", "--samples", "2",
            "--limit", "40", "--split", "test", "--out", str(out)]  # fmt: skip
    assert cli.main(args) == 0
    report = json.loads((out / "eval.json").read_text())
    runs = report["tasks"]["synthetic"]["runs"]
    assert set(runs) == {"ivon", "adamw_torch"}
    assert runs["ivon"]["sampled"]["samples"] == 2 and runs["ivon"]["sample_kind"] == "posterior"
    assert runs["adamw_torch"]["sampled"]["samples"] == 3 and runs["adamw_torch"]["sample_kind"] == "mc_dropout"
    assert (report["runs"]["adamw_torch"]["samples"], report["runs"]["adamw_torch"]["sample_kind"]) == (3, "mc_dropout")
    assert report["protocol"]["preset"]["name"] == "ivon-lora" and report["environment"]["torch"]
    table = (out / "eval.md").read_text()
    assert "| synthetic | test | 40 | adamw_torch | MC dropout S=3 |" in table and "| ivon | samples S=2 |" in table
    for name in ("predictions-synthetic-ivon.jsonl", "predictions-synthetic-adamw_torch.jsonl"):
        rows = [json.loads(line) for line in (out / name).read_text().splitlines()]
        assert len(rows) == 40 and len({r["id"] for r in rows}) == 40
    assert (out / "reliability-synthetic.png").read_bytes()[:8] == PNG
    assert (out / "selective-synthetic.png").read_bytes()[:8] == PNG


def test_a_registered_metric_reaches_eval_json_eval_md_and_the_plots(run_dir, tmp_path, monkeypatch):
    """Adding a metric is one registry entry: it is computed, reported in every table and drawn in the plots."""
    from matplotlib.figure import Figure
    from matplotlib.text import Text

    from ivon_lora.evaluation import metrics

    drawn = []
    savefig = Figure.savefig

    def recording_savefig(figure, *args, **kwargs):
        drawn.extend(text.get_text() for text in figure.findobj(Text))
        return savefig(figure, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", recording_savefig)
    mean_confidence = metrics.Metric("mean_confidence", higher_is_better=False, percent=True,
                                     compute=lambda probs, gold: float(probs.max(dim=1).values.mean()))  # fmt: skip
    with metrics.METRICS.patched("mean_confidence", mean_confidence):  # registered for this test only
        out = tmp_path / "report"
        args = ["eval", run_dir, "--split", "test", "--limit", "16", "--samples", "2", "--out", str(out),
                "--select-split", "validation", "--prune-fractions", "0", "0.5"]  # fmt: skip
        assert cli.main(args) == 0
        result = json.loads((out / "eval.json").read_text())
        runs = result["tasks"]["synthetic"]["runs"]["ivon"]
        expected = float(torch.tensor([row["mean"] for row in map(json.loads, (out / "predictions-synthetic-ivon.jsonl")
                                                                 .read_text().splitlines())]).max(dim=1).values.mean())  # fmt: skip
        assert runs["mean"]["mean_confidence"] == pytest.approx(expected)
        assert "mean_confidence" in runs["sampled"] and "mean_confidence" in runs["by_num_samples"][0]
        table, sweep_table = (out / "eval.md").read_text().split("\n\n")[:2]
        assert "mean_confidence" in table.splitlines()[0] and "mean_confidence" in sweep_table.splitlines()[0]
        assert f"| {100 * runs['mean']['mean_confidence']:.1f} |" in table
        assert sum("mean_confidence" in text for text in drawn) >= 3  # reliability panels and the trade-off plot


def test_the_tradeoff_plot_shows_the_protocols_headline_ece(run_dir, tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    labels = []
    savefig = Figure.savefig

    def recording_savefig(figure, *args, **kwargs):
        labels.extend(axis.get_xlabel() for axis in figure.axes)
        return savefig(figure, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", recording_savefig)
    args = ["eval", run_dir, "--split", "test", "--select-split", "validation", "--limit", "8", "--samples", "1",
            "--prune-fractions", "0", "0.5", "--protocol", "blob", "--out", str(tmp_path / "blob")]  # fmt: skip
    assert cli.main(args) == 0
    assert "ECE (15 bins, %)" in labels and "ECE (10 bins, %)" not in labels


def test_eval_ensemble_and_temperature_scaling(run_dir, adamw_run_dir, tmp_path):
    from ivon_lora.evaluation.baselines import fit_temperature

    out = tmp_path / "baselines"
    args = ["eval", run_dir, "--ensemble", adamw_run_dir, run_dir, "--temperature-scaling", "--select-split",
            "validation", "--split", "test", "--samples", "2", "--limit", "24", "--out", str(out)]  # fmt: skip
    assert cli.main(args) == 0
    report = json.loads((out / "eval.json").read_text())
    runs = report["tasks"]["synthetic"]["runs"]
    assert set(runs) == {"ivon", "ensemble", "ivon + TS", "ensemble + TS"}
    # The ensemble of an AdamW run and the IVON run's mean averages their per-example probabilities.
    rows = {name: [json.loads(line) for line in (out / f"predictions-synthetic-{name}.jsonl").read_text().splitlines()]
            for name in ("ivon", "ensemble")}  # fmt: skip
    for ivon_row, ensemble_row in zip(rows["ivon"], rows["ensemble"]):
        assert ensemble_row["sample_probs"][1] == pytest.approx(ivon_row["mean"])
    assert (
        runs["ensemble"]["sampled"]["samples"] == 2 and "| ensemble | ensemble M=2 |" in (out / "eval.md").read_text()
    )
    # Temperature scaling: T fitted on the selection split's mean predictions, accuracy unchanged on the reported one.
    select = cli.main(["eval", run_dir, "--split", "validation", "--samples", "0", "--limit", "24", "--out",
                       str(tmp_path / "select")])  # fmt: skip
    assert select == 0
    select_rows = [
        json.loads(line) for line in (tmp_path / "select" / "predictions-synthetic-ivon.jsonl").read_text().splitlines()
    ]
    probs = torch.tensor([r["mean"] for r in select_rows], dtype=torch.float64)
    gold = torch.tensor([r["gold"] for r in select_rows])
    temperature = report["runs"]["ivon + TS"]["temperature_scaling"]["temperature"]
    assert temperature == pytest.approx(fit_temperature(probs, gold), rel=1e-6)
    assert runs["ivon + TS"]["mean"]["accuracy"] == runs["ivon"]["mean"]["accuracy"]
    assert "temperature_scaling" in report["protocol"]


def test_eval_baseline_options_are_checked_before_loading(run_dir, tmp_path, capsys):
    base = ["eval", run_dir, "--split", "test", "--out", str(tmp_path / "x")]
    assert cli.main(base + ["--temperature-scaling"]) == 2
    assert "pass --select-split" in capsys.readouterr().err
    assert cli.main(base + ["--ensemble", run_dir]) == 2
    assert "at least 2" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def _adapter_weights(model):
    return {name: p.detach().clone() for name, p in model.named_parameters() if "lora_" in name}


def test_predict_gives_the_model_its_weights_back(loaded_run, synthetic_examples):
    """predict holds the (pruned) posterior mean and the samples only while it scores: the adapter is bitwise as it
    was before (here the unpruned mean) afterwards."""
    run, examples = loaded_run, synthetic_examples["validation"][:6]
    pruned = run.posterior.at_test_time(0.5)
    before = _adapter_weights(run.model)
    at_pruned = predict(run.model, run.tokenizer, examples, pruned, num_samples=2, batch_size=4, seed=1)
    assert all(torch.equal(p, before[n]) for n, p in _adapter_weights(run.model).items())
    unpruned = predict(run.model, run.tokenizer, examples, run.posterior, num_samples=0, batch_size=4)
    assert not torch.equal(at_pruned.mean, unpruned.mean)  # it did score at the pruned mean
