"""Test-time posterior sweeps (ivon_lora.evaluation.sweep): every (fraction, temperature) evaluated on both splits,
the choice made on the select split only, in the criterion's direction, and the model left at the posterior mean.
The predictive is replaced by a known table of metrics per configuration, so the choice has a known answer."""

import pytest

from ivon_lora import vocabulary
from ivon_lora.evaluation import sweep
from ivon_lora.evaluation.metrics import DEFAULT_ECE_BINS


class _Posterior:
    """A stand-in: `at_test_time` returns its (fraction, temperature); records when the mean goes back in."""

    def __init__(self):
        self.mean_applied = 0
        self.prune_options = []

    def at_test_time(self, fraction, temperature, **prune_options):
        self.prune_options.append(prune_options)
        return (fraction, temperature)

    def apply_mean(self, model):
        self.mean_applied += 1


# (fraction, temperature) -> split -> metrics; the select split prefers (0.1, 1.0) by nll, (0.2, 2.0) by accuracy;
# the report split would prefer others, and must not be what the sweep chooses by.
TABLE = {
    (0.0, 1.0): {"select": {"nll": 0.9, "accuracy": 0.60}, "report": {"nll": 0.1, "accuracy": 0.99}},
    (0.0, 2.0): {"select": {"nll": 0.8, "accuracy": 0.61}, "report": {"nll": 0.9, "accuracy": 0.50}},
    (0.1, 1.0): {"select": {"nll": 0.5, "accuracy": 0.62}, "report": {"nll": 0.9, "accuracy": 0.50}},
    (0.1, 2.0): {"select": {"nll": 0.7, "accuracy": 0.63}, "report": {"nll": 0.9, "accuracy": 0.50}},
    (0.2, 1.0): {"select": {"nll": 0.6, "accuracy": 0.64}, "report": {"nll": 0.9, "accuracy": 0.50}},
    (0.2, 2.0): {"select": {"nll": 0.95, "accuracy": 0.70}, "report": {"nll": 0.9, "accuracy": 0.50}},
}


@pytest.fixture
def table_predictive(monkeypatch):
    calls = []

    def evaluate_predictive(model, tokenizer, examples, posterior=None, **options):
        calls.append((examples, posterior, options))
        return {"mean": {"nll": 9.9, "accuracy": 0.0}, "sampled": TABLE[posterior][examples]}

    monkeypatch.setattr(sweep, "evaluate_predictive", evaluate_predictive)
    return calls


@pytest.mark.parametrize("select_by,chosen", [("nll", (0.1, 1.0)), ("accuracy", (0.2, 2.0))])
def test_the_sweep_chooses_on_the_select_split_in_the_criterions_direction(select_by, chosen, table_predictive):
    posterior = _Posterior()
    result = sweep.sweep_posterior("model", "tokenizer", posterior, "select", "report", fractions=(0.0, 0.1, 0.2),
                                   temperatures=(1.0, 2.0), prune_options={"scope": "matrix"}, select_by=select_by,
                                   num_samples=3)  # fmt: skip
    configs = result["configs"]
    assert [(c["fraction"], c["temperature"]) for c in configs] == list(TABLE)  # every pair, fractions outer
    assert (configs[result["chosen"]]["fraction"], configs[result["chosen"]]["temperature"]) == chosen
    assert result["select_by"] == select_by
    assert all(c["report"]["sampled"] == TABLE[(c["fraction"], c["temperature"])]["report"] for c in configs)
    assert len(table_predictive) == 12 and all(options == {"num_samples": 3} for *_, options in table_predictive)
    assert posterior.prune_options == [{"scope": "matrix"}] * 6 and posterior.mean_applied == 1


def test_a_run_without_samples_is_judged_at_its_mean():
    assert sweep.predictive_metrics({"mean": {"nll": 1.0}}) == {"nll": 1.0}
    assert sweep.predictive_metrics({"mean": {"nll": 1.0}, "sampled": {"nll": 0.5}}) == {"nll": 0.5}


def test_the_mean_goes_back_in_even_when_an_evaluation_fails(monkeypatch):
    def failing(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(sweep, "evaluate_predictive", failing)
    posterior = _Posterior()
    with pytest.raises(RuntimeError, match="out of memory"):
        sweep.sweep_posterior("model", "tokenizer", posterior, "select", "report", fractions=(0.0,))
    assert posterior.mean_applied == 1


def test_an_unknown_criterion_is_refused_before_any_evaluation(table_predictive):
    with pytest.raises(ValueError, match=r"Invalid select_by value: 'ece_20' \(must be one of accuracy, nll, ece_10"):
        sweep.sweep_posterior("model", "tokenizer", _Posterior(), "select", "report", select_by="ece_20")
    assert table_predictive == []


@pytest.mark.parametrize("ece_bins", [DEFAULT_ECE_BINS, (20,), (5, 10)])
def test_the_configs_vocabulary_of_criteria_is_the_metric_registrys(ece_bins):
    """config and the eval parser check select_by against `vocabulary.selection_criteria` (no evaluation import);
    the sweep reads the metric registry: the two agree on every built-in metric, name, order and direction."""
    assert list(vocabulary.selection_criteria(ece_bins).items()) == list(sweep.selection_criteria(ece_bins).items())
    assert vocabulary.DEFAULT_SELECTION_CRITERION in vocabulary.selection_criteria()
    assert sweep.DEFAULT_PRUNE_FRACTIONS is vocabulary.DEFAULT_PRUNE_FRACTIONS
