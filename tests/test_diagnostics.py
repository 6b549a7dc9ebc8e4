"""Posterior diagnostics: known answers on hand-made posteriors and predictions, the warnings, `ivon-lora inspect`."""

import json
import math

import pytest
import torch

from ivon_lora import cli
from ivon_lora.diagnostics import diagnose, posterior_diagnostics, predictive_diagnostics
from ivon_lora.evaluation.predict import read_predictions
from ivon_lora.evaluation.predict import Predictions
from ivon_lora.evaluation.report import write_jsonl
from ivon_lora.posterior import Posterior

PNG = b"\x89PNG\r\n\x1a\n"


def posterior_with_hessian(hess, ess=100.0, weight_decay=0.5, hess_init=1.0):
    mean = {"a.lora_A.weight": torch.tensor([[1.0, -2.0], [0.5, 0.0]]), "a.lora_B.weight": torch.tensor([[3.0, 4.0]])}
    variance = {k: 1.0 / (ess * (torch.full_like(v, hess) + weight_decay)) for k, v in mean.items()}
    config = {
        "ess": ess,
        "weight_decay": weight_decay,
        "step": 7,
        "hyperparameters": {"hess_init": hess_init, "beta2": 0.99999},
    }
    return Posterior(mean, variance, config)


def test_posterior_statistics_are_known_answers():
    posterior = posterior_with_hessian(1.0)
    result = posterior_diagnostics(posterior)
    std = 1 / math.sqrt(100 * 1.5)
    assert result["std"]["q50"] == pytest.approx(std)
    assert result["matrices"]["a.lora_B.weight"]["snr"]["q50"] == pytest.approx(3.5 / std)
    assert result["hess_at_init_share"] == 1.0
    assert result["num_entries"] == 6
    assert posterior_diagnostics(posterior_with_hessian(1.04))["hess_at_init_share"] == 1.0  # within 5%
    assert posterior_diagnostics(posterior_with_hessian(1.2))["hess_at_init_share"] == 0.0


def test_predictive_statistics_on_a_hand_case():
    mean = torch.tensor([[0.9, 0.1], [0.4, 0.6]], dtype=torch.float64)
    samples = torch.tensor([[[0.8, 0.2], [0.6, 0.4]], [[0.9, 0.1], [0.3, 0.7]]], dtype=torch.float64)
    result = predictive_diagnostics(mean, samples)
    assert result["flip_rate"] == 0.25 and result["examples_flipped_by_any_sample"] == 0.5
    kl = lambda p, q: sum(a * math.log(a / b) for a, b in zip(p, q))  # noqa: E731
    expected = (kl([0.9, 0.1], [0.8, 0.2]) + kl([0.4, 0.6], [0.6, 0.4]) + 0 + kl([0.4, 0.6], [0.3, 0.7])) / 4
    assert result["mean_kl"] == pytest.approx(expected)
    assert result["predictive_changed"] == 0.0  # the average [0.45, 0.55] keeps the answer


def test_warnings_name_the_failure_and_the_fix():
    mean = torch.tensor([[0.9, 0.1], [0.4, 0.6]], dtype=torch.float64)
    inert = diagnose(posterior_with_hessian(1.0), mean, mean.expand(3, 2, 2))
    assert any(w.startswith("prior-dominated") and "ivon_beta2" in w for w in inert["warnings"])
    assert any(w.startswith("inert") and "ivon_ess" in w for w in inert["warnings"])
    flipped = mean.flip(-1).expand(3, 2, 2)
    wide = diagnose(posterior_with_hessian(3.0), mean, flipped)
    assert [w.split(":")[0] for w in wide["warnings"]] == ["very wide"]


def test_summary_lines_carry_their_level_and_log_at_it(caplog):
    """Warnings travel as a logging level, not as a text prefix a caller parses."""
    import logging

    from ivon_lora.diagnostics import log_summary, summary_lines

    mean = torch.tensor([[0.9, 0.1], [0.4, 0.6]], dtype=torch.float64)
    diagnostics = diagnose(posterior_with_hessian(1.0), mean, mean.expand(3, 2, 2))
    lines = summary_lines(diagnostics)
    assert [line.text for line in lines if line.level == logging.WARNING] == diagnostics["warnings"]
    assert all(line.level == logging.INFO for line in lines[: -len(diagnostics["warnings"])])
    assert str(lines[-1]) == f"WARNING {diagnostics['warnings'][-1]}"  # as `ivon-lora inspect` prints it
    with caplog.at_level(logging.INFO, logger="test-diagnostics"):
        log_summary(diagnostics, logging.getLogger("test-diagnostics"))
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [(line.level, line.text) for line in lines]


def test_predictions_file_round_trip(tmp_path):
    samples = torch.rand(3, 4, 2, dtype=torch.float64)
    predictions = Predictions(["a", "b", "c", "d"], torch.tensor([0, 1, 1, 0]), [2] * 4, torch.rand(4, 2, dtype=torch.float64),
                              samples, "posterior")  # fmt: skip
    write_jsonl(tmp_path / "p.jsonl", predictions.rows())
    mean, read = read_predictions(tmp_path / "p.jsonl")
    assert torch.allclose(mean, predictions.mean) and torch.allclose(read, samples)
    (tmp_path / "bad.jsonl").write_text('{"mean": [0.5, 0.5]}\n{"id": 1}\n')
    with pytest.raises(ValueError, match="bad.jsonl, line 2"):
        read_predictions(tmp_path / "bad.jsonl")


def test_train_writes_diagnostics_and_inspect_reports_any_run(run_dir, tmp_path, capsys):
    diagnostics = json.loads(open(f"{run_dir}/diagnostics.json").read())
    assert diagnostics["predictive"]["samples"] == 2 and "warnings" in diagnostics
    assert open(f"{run_dir}/diagnostics.png", "rb").read()[:8] == PNG
    metrics = json.loads(open(f"{run_dir}/metrics.json").read())
    assert metrics["diagnostics"]["warnings"] == diagnostics["warnings"]

    out = tmp_path / "inspect"
    assert cli.main(["inspect", run_dir, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "adapter entries after 30 steps" in printed and "changes" in printed
    assert json.loads((out / "diagnostics.json").read_text())["predictive"] == diagnostics["predictive"]
    assert (out / "diagnostics.png").read_bytes()[:8] == PNG
    assert cli.main(["inspect", run_dir, "--predictions", str(tmp_path / "missing.jsonl")]) == 2
