"""Temperature scaling and deep ensembles against plain re-implementations."""

import math

import pytest
import torch

from ivon_lora.evaluation.baselines import ensemble, fit_temperature, temper, temperature_scaled
from ivon_lora.evaluation.metrics import calibration_metrics
from ivon_lora.evaluation.predict import Predictions


def plain_nll(probs, gold, temperature):
    """Mean NLL of softmax(log p / T), in log space, one example at a time."""
    total = 0.0
    for row, g in zip(probs.tolist(), gold.tolist()):
        logits = [math.log(p) / temperature for p in row if p > 0]
        top = max(logits)
        log_normaliser = top + math.log(sum(math.exp(x - top) for x in logits))
        total -= math.log(row[g]) / temperature - log_normaliser
    return total / len(probs)


def grid_temperature(probs, gold):
    """Coarse grid over 0.05..20 in 1% steps, then a 0.01% grid around the best point."""
    coarse = min((math.exp(x / 100) for x in range(-299, 300)), key=lambda t: plain_nll(probs, gold, t))
    return min((coarse * math.exp(x / 10000) for x in range(-100, 101)), key=lambda t: plain_nll(probs, gold, t))


def random_predictions(seed, n=300, k=4, sharpness=3.0, accuracy=0.6):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, k, generator=generator, dtype=torch.float64) * sharpness
    gold = logits.argmax(1)
    wrong = torch.rand(n, generator=generator) > accuracy
    gold[wrong] = torch.randint(0, k, (int(wrong.sum()),), generator=generator)
    return torch.softmax(logits, 1), gold


@pytest.mark.parametrize("sharpness", [0.3, 3.0, 10.0])
def test_fitted_temperature_minimises_the_nll_like_a_grid_search(sharpness):
    probs, gold = random_predictions(0, sharpness=sharpness)
    fitted = fit_temperature(probs, gold)
    assert fitted == pytest.approx(grid_temperature(probs, gold), rel=2e-3)
    assert plain_nll(probs, gold, fitted) <= plain_nll(probs, gold, 1.0) + 1e-12
    # Overconfident models are flattened (T > 1), underconfident ones sharpened (T < 1).
    assert (fitted > 1) if sharpness == 10.0 else True
    assert (fitted < 1) if sharpness == 0.3 else True


def test_temper_keeps_answers_and_absent_choices():
    probs = torch.tensor([[0.7, 0.2, 0.1, 0.0], [0.1, 0.5, 0.4, 0.0]], dtype=torch.float64)
    for temperature in (0.5, 1.0, 3.0):
        tempered = temper(probs, temperature)
        assert torch.equal(tempered.argmax(1), probs.argmax(1))
        assert torch.all(tempered[:, 3] == 0)
        assert torch.allclose(tempered.sum(1), torch.ones(2, dtype=torch.float64))
        expected = probs[:, :3] ** (1 / temperature)
        assert torch.allclose(tempered[:, :3], expected / expected.sum(1, keepdim=True))
    assert torch.allclose(temper(probs, 1.0), probs)


def test_ensemble_is_the_mean_of_its_members():
    members = []
    for seed in range(3):
        probs, gold = random_predictions(seed, n=50)
        members.append(Predictions([f"x{i}" for i in range(50)], random_predictions(0, n=50)[1], [4] * 50, probs))
    combined = ensemble(members)
    manual = sum(m.mean for m in members) / 3
    assert torch.allclose(combined.predictive(), manual)
    metrics = combined.metrics(ece_bins=(10,))
    assert metrics["sample_kind"] == "ensemble"
    assert metrics["sampled"]["nll"] == pytest.approx(calibration_metrics(manual, members[0].gold, (10,))["nll"])
    assert metrics["by_num_samples"][0]["nll"] == pytest.approx(metrics["mean"]["nll"])  # member 1 alone
    with pytest.raises(ValueError, match="at least 2"):
        ensemble(members[:1])
    shuffled = Predictions(members[1].ids[::-1], members[1].gold, members[1].num_choices, members[1].mean)
    with pytest.raises(ValueError, match="same examples"):
        ensemble([members[0], shuffled])


def test_temperature_scaling_scales_a_run_at_its_weights_and_an_ensemble_as_a_whole():
    probs, gold = random_predictions(0, n=20)
    samples = torch.stack([random_predictions(s, n=20)[0] for s in (1, 2)])
    run = Predictions([str(i) for i in range(20)], gold, [4] * 20, probs, samples, "posterior")
    scaled = temperature_scaled(run, 2.0)
    assert torch.allclose(scaled.mean, temper(probs, 2.0)) and scaled.samples is None
    members = ensemble([Predictions(run.ids, gold, run.num_choices, p) for p in (probs, samples[0])])
    assert torch.allclose(temperature_scaled(members, 2.0).mean, temper((probs + samples[0]) / 2, 2.0))
