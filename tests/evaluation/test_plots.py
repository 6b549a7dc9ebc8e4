"""The evaluation's PNGs (ivon_lora.evaluation.plots): each writes a PNG, with one panel per predictive or run, the
axes labelled as the README describes them, the titles carrying the summary metrics; and no pyplot figure is left
alive (the object API only)."""

import pytest
import torch
from matplotlib.figure import Figure

from ivon_lora.evaluation import plots
from ivon_lora.evaluation.metrics import calibration_metrics, selective_prediction
from ivon_lora.evaluation.selective import selective_generation_metrics

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def drawn(monkeypatch):
    """Every figure saved, kept for its axes."""
    figures = []
    savefig = Figure.savefig

    def recording(figure, *args, **kwargs):
        figures.append(figure)
        return savefig(figure, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", recording)
    return figures


def _predictive(seed: int, n: int = 200, k: int = 4):
    generator = torch.Generator().manual_seed(seed)
    probs = torch.softmax(3 * torch.randn(n, k, generator=generator, dtype=torch.float64), dim=1)
    gold = torch.randint(0, k, (n,), generator=generator)
    gold[: n // 2] = probs[: n // 2].argmax(dim=1)  # better than chance
    return probs, gold


def _labels(figure):
    return [(axis.get_xlabel(), axis.get_ylabel()) for axis in figure.axes if axis.get_xlabel()]


def test_reliability_has_one_labelled_panel_per_predictive_with_its_ece(tmp_path, drawn):
    curves = []
    for label, seed in (("ivon mean", 0), ("adamw", 1)):
        probs, gold = _predictive(seed)
        curves.append((label, probs, gold, calibration_metrics(probs, gold, (10,))))
    path = tmp_path / "reliability.png"
    plots.plot_reliability("arc_easy", curves, str(path), num_bins=10)
    assert path.read_bytes()[:8] == PNG
    (figure,) = drawn
    assert _labels(figure) == [("confidence (max probability), 10 bins (lo", "accuracy in the bin")] * 2
    titles = [axis.get_title() for axis in figure.axes]
    for (label, _, _, metrics), title in zip(curves, titles):
        assert title.startswith(f"{label}\nECE-10 {100 * metrics['ece_10']:.1f}%")
        assert f"accuracy {100 * metrics['accuracy']:.1f}" in title
    assert figure.texts[0].get_text().startswith("arc_easy: reliability")


def test_reliability_with_left_edges_draws_the_bin_of_confidence_one(drawn):
    probs = torch.tensor([[1.0, 0.0], [0.7, 0.3], [0.2, 0.8]], dtype=torch.float64)
    gold = torch.tensor([0, 1, 1])
    figure = plots.reliability_figure("t", [("x", probs, gold, calibration_metrics(probs, gold, (15,)))], 15, "left")
    (axis,) = figure.axes
    assert axis.get_xlabel() == "confidence (max probability), 15 bins [lo" and axis.get_xlim()[1] > 1.0
    counts = sorted(text.get_text() for text in axis.texts if text.get_text().isdigit())
    assert counts == ["1", "1", "1"]  # three occupied bins, one of them the exact-1 bin


def test_selective_draws_one_curve_per_predictive(tmp_path, drawn):
    curves = [(label, selective_prediction(*_predictive(seed))) for label, seed in (("ivon", 0), ("adamw", 1))]
    path = tmp_path / "selective.png"
    plots.plot_selective("boolq", curves, str(path))
    assert path.read_bytes()[:8] == PNG
    (figure,) = drawn
    (axis,) = figure.axes
    assert (axis.get_xlabel(), axis.get_ylabel()) == ("coverage (%)", "accuracy on the accepted (%)")
    legend = [text.get_text() for text in axis.get_legend().get_texts()]
    assert legend == [f"{label} (AURC {100 * s['aurc']:.1f})" for label, s in curves]
    line = axis.get_lines()[0].get_xydata()
    assert line[-1][0] == pytest.approx(100.0)  # the curve reaches full coverage


def test_tradeoff_circles_the_chosen_configuration_on_both_splits(tmp_path, drawn):
    configs = []
    for index, (fraction, temperature) in enumerate([(0.0, 1.0), (0.1, 1.0), (0.0, 2.0)]):
        metrics = {role: {"mean": {"accuracy": 0.5 + 0.1 * index, "ece_10": 0.2 - 0.05 * index, "nll": 1.0}}
                   for role in ("select", "report")}  # fmt: skip
        configs.append({"fraction": fraction, "temperature": temperature, **metrics})
    path = tmp_path / "tradeoff.png"
    plots.plot_tradeoff({"configs": configs, "chosen": 2, "select_by": "nll"}, str(path), ece_key="ece_10")
    assert path.read_bytes()[:8] == PNG
    (figure,) = drawn
    panels = [axis for axis in figure.axes if axis.get_xlabel().startswith("ECE")]
    assert [(a.get_xlabel(), a.get_ylabel()) for a in panels] == [("ECE (10 bins, %)", "accuracy (%)")] * 2
    assert [a.get_title().split(";")[0] for a in panels] == ["select split", "report split"]
    chosen = panels[0].collections[-1].get_offsets()[0]  # the red circle, drawn last
    assert tuple(chosen) == pytest.approx((100 * 0.1, 100 * 0.7))
    assert "chosen by nll" in figure.texts[0].get_text()
    assert any(axis.get_ylabel() == "pruning fraction" for axis in figure.axes)  # the colour bar


def test_selective_generation_has_a_panel_per_run_and_a_curve_per_score(tmp_path, drawn):
    generator = torch.Generator().manual_seed(0)
    correct = torch.rand(50, generator=generator) < 0.6
    scores = {"sequence_log_likelihood": correct.double() + torch.rand(50, generator=generator),
              "neg_semantic_entropy": torch.rand(50, generator=generator)}  # fmt: skip
    run = {"accuracy": float(correct.double().mean()), "samples": 4, "sample_kind": "posterior", "num_examples": 50,
           "scores": {name: selective_generation_metrics(score, correct) for name, score in scores.items()},
           "undefined_scores": {"bma_log_likelihood": "no samples"}}  # fmt: skip
    path = tmp_path / "selective-gen.png"
    plots.plot_selective_generation("wordqa", {"ivon": run, "adamw": {**run, "samples": None}}, str(path))
    assert path.read_bytes()[:8] == PNG
    (figure,) = drawn
    assert _labels(figure) == [("coverage: share of answers accepted (%)", "accuracy of the accepted answers (%)")] * 2
    first, second = figure.axes
    assert first.get_title() == "ivon (4 posterior samples, n=50)" and second.get_title() == "adamw (no samples, n=50)"
    legend = [text.get_text() for text in first.get_legend().get_texts()]
    no_abstention = f"no abstention: accuracy {100 * run['accuracy']:.1f}"
    assert [entry.split(" (")[0] for entry in legend] == [*scores, no_abstention]
    assert any("undefined: bma_log_likelihood (no samples)" in text.get_text() for text in first.texts)


def test_no_pyplot_figure_is_left_open(tmp_path):
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    probs, gold = _predictive(0)
    plots.plot_reliability("t", [("x", probs, gold, calibration_metrics(probs, gold))], str(tmp_path / "r.png"))
    assert plt.get_fignums() == before
