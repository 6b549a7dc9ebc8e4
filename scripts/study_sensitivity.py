"""Does the posterior know what the data did to the model? The Memory-Perturbation Equation on wordfacts/SmolLM2.

    flock /tmp/ivon-study.lock python scripts/study_sensitivity.py --runs /work/runs --work /work/runs/sensitivity \
        --out results/sensitivity-smollm2 [--parts b d a c] [--removals 30] [--retrain-steps 32]

Inputs: the base runs RUNS/wordfacts-{ivon,adamw}-seed{0,1,2} (recipes/smollm2/wordfacts-{ivon,adamw}.yaml with
seed=N, save_steps=50: checkpoints 50..200 with optimizer state). wordfacts flips 15% (38) of its 256 train labels;
`label_flipped` in its records says which.

(b) flipped-label recovery: rank the train examples by s_i (IVON, exact variances), by loss |e| = 1 - p_y (IVON and
    AdamW, at the weights) and by prediction variance alone (IVON, Σ_k v_ik); AUROC and precision at 15%.
(d) the LOO-NLL estimate on train (over a seeded random --loo-examples subset) against the measured validation NLL
    (all 200, at the posterior mean) at --d-checkpoints of --d-seeds; at the posterior as trained (ess 1e6) and
    rescaled to ess = N = 256 (the Bayesian width).
(a) against retraining (seed 0, IVON): warm-started from checkpoint-200 (its adapter and its IVON state: momentum,
    Hessian, noise generator), dropout off, `--retrain-steps` IVON steps at lr `--retrain-lr` over a fixed batch order of the
    train set (seeded permutations), once with every example (the control) and once per removed example with that
    example skipped: same seed, same noise, same batches but one example. Movement = Σ_k |p_removed - p_control| of
    the removed example (as in MPE's code, which warm-starts its retraining from the full-data solution too).
    Spearman of movement with s_i, and with loss for comparison. Half the removals at random, half the top of s_i.
(c) cleaning (seed 0): drop the top 15% by a ranking (and a random 15%), retrain the recipe from scratch on the
    rest, test accuracy/NLL/ECE against the full-data run.
(e) the posterior as trained against the learned one (issue 33), both at ess = N = 256 with a prior and the full
    K x K covariance, on all 256 train examples of the IVON runs --e-fit-seed and --e-seeds: "trained" keeps IVON's
    own h, "learned" takes the exact diagonal GGN at the mean (what `ivon-lora refine --method ggn` computes); the
    precision is N·h + δ. δ, the prior's precision, is fitted on the held-out --e-fit-seed alone: the value of
    PRIOR_GRID whose LOO-NLL is nearest that seed's validation NLL under the train split's label noise (in
    expectation over the flips: 0.85·NLL(label) + 0.15·NLL(other answer)). On the other seeds, at that δ: the LOO-NLL
    against that validation NLL, and the AUROC of s_i for the flipped labels against the loss's, with 95% bootstrap
    intervals over the examples (shared by the seeds; see `paired_bootstrap`).

Each part's numbers are cached under OUT/parts/ and skipped when present, so the study resumes. Writes study.json
(every number, resolved recipes, versions), study.md (tables) and study.png.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import sys
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
RECIPES = {m: os.path.join(ROOT, "recipes", "smollm2", f"wordfacts-{m}.yaml") for m in ("ivon", "adamw")}
SEEDS = (0, 1, 2)
FRACTION = 0.15
# (e): the prior precision δ on θ (the posterior's precision is N·h + δ); log-spaced, wide enough to bracket the fit.
PRIOR_GRID = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0, 10000.0)
POSTERIORS = ("trained", "learned")
logger = logging.getLogger("study_sensitivity")


def _flipped() -> list[bool]:
    from ivon_lora.tasks.wordfacts import wordfacts_records

    return [bool(r["label_flipped"]) for r in wordfacts_records("train")]


def _examples(run, split: str):
    from ivon_lora.choice import format_examples
    from ivon_lora.tasks import load_split

    return format_examples(load_split("wordfacts", split).examples, tokenizer=run.tokenizer, model_args=run.model_args)


def _max_length(run):
    return getattr(run.recipe.data, "max_length", None)


def _sensitivity(run, examples, covariance: str, ess=None):
    """`covariance` (--covariance): "diagonal" made the committed results; "full" (K x K) is the MPE's form and the
    library's default."""
    from ivon_lora.choice.sensitivity import choice_sensitivity
    from ivon_lora.sensitivity import rescaled_to_ess

    return choice_sensitivity(run.model, run.tokenizer, examples, rescaled_to_ess(run.posterior, ess),
                              batch_size=32, max_length=_max_length(run), covariance=covariance)  # fmt: skip


def _mean_probs(run, examples):
    from ivon_lora.evaluation.predict import predict

    return predict(run.model, run.tokenizer, examples, posterior=run.posterior, num_samples=0, batch_size=32,
                   max_length=_max_length(run))  # fmt: skip


def _detection(scores: list[float], flipped: list[bool]) -> dict:
    top = sorted(range(len(scores)), key=lambda i: -scores[i])[: round(FRACTION * len(scores))]
    return {"auroc": _auroc(np.column_stack([scores, flipped]).astype(np.float64)).item(),
            "precision_at_15": sum(flipped[i] for i in top) / len(top)}  # fmt: skip


def part_b(args) -> dict:
    from ivon_lora.rundir import load_run

    flipped, result = _flipped(), {}
    for seed in SEEDS:
        ivon = load_run(os.path.join(args.runs, f"wordfacts-ivon-seed{seed}"))
        sens = _sensitivity(ivon, _examples(ivon, "train"), args.covariance)
        rows = list(sens.rows())
        del ivon
        adamw = load_run(os.path.join(args.runs, f"wordfacts-adamw-seed{seed}"))
        predictions = _mean_probs(adamw, _examples(adamw, "train"))
        adamw_error = [1.0 - float(predictions.mean[i, g]) for i, g in enumerate(predictions.gold.tolist())]
        del adamw
        scores = {"sensitivity (IVON)": [r["sensitivity"] for r in rows], "loss |e| (IVON)": [r["error"] for r in rows],
                  "loss |e| (AdamW)": adamw_error, "variance alone (IVON)": [sum(r["variance"]) for r in rows]}  # fmt: skip
        result[str(seed)] = {"detection": {name: _detection(s, flipped) for name, s in scores.items()},
                             "scores": scores, "summary": sens.summary()}  # fmt: skip
        logger.info("(b) seed %d: %s", seed, {k: v for k, v in result[str(seed)]["detection"].items()})
    return result


def part_d(args) -> dict:
    from ivon_lora.evaluation.metrics import calibration_metrics
    from ivon_lora.rundir import load_run
    from ivon_lora.sensitivity import Sensitivity

    result = {}
    for seed in args.d_seeds:
        for step in args.d_checkpoints:
            run = load_run(os.path.join(args.runs, f"wordfacts-ivon-seed{seed}", f"checkpoint-{step}"))
            train = _examples(run, "train")
            if args.loo_examples:  # a seeded random subset: the LOO-NLL is a mean over examples, estimated by it
                train = [train[i] for i in sorted(random.Random(0).sample(range(len(train)), args.loo_examples))]
            trained = _sensitivity(run, train, args.covariance)
            # ess = N: the same variances times ess_run / N (the posterior's precision is ess (h + δ)).
            bayes = Sensitivity(
                trained.ids, trained.gold, trained.logits, trained.variance * run.posterior.config["ess"] / 256
            )
            validation = _mean_probs(run, _examples(run, "validation"))
            measured = calibration_metrics(validation.mean, validation.gold, [10])
            result[f"{seed}/{step}"] = {"seed": seed, "step": step, "loo_examples": len(train), "train_nll": trained.summary()["nll"],
                                        "loo_nll": trained.loo_nll(), "loo_nll_ess_n": bayes.loo_nll(),
                                        "validation_nll": measured["nll"], "validation_accuracy": measured["accuracy"]}  # fmt: skip
            logger.info("(d) %s", result[f"{seed}/{step}"])
            del run
    return result


def _retrain(model, params, state_path, hyper, batches, skip: int | None, lr: float, loss_fn):
    """IVON from `state_path`'s state for len(batches) steps over `batches` (index lists) without example `skip`."""
    from ivon_lora.optim import IVON

    optimizer = IVON(params, lr=lr, ess=hyper["ess"], hess_init=hyper["hess_init"], beta1=hyper["beta1"],
                     beta2=hyper["beta2"], weight_decay=hyper["weight_decay"], clip_radius=hyper["clip_radius"],
                     rescale_lr=hyper["rescale_lr"])  # fmt: skip
    optimizer.load_state_dict(torch.load(state_path, weights_only=False))
    for group in optimizer.param_groups:
        group["lr"] = lr
    # Dropout off (eval mode): the removal must be the only difference between a retraining and the control.
    model.eval()
    for indices in batches:
        indices = [i for i in indices if i != skip]
        with optimizer.sampled_params(train=True):
            loss_fn(indices).backward()
        optimizer.step()


def _demo_run(args) -> str:
    """The tiny-Llama demo (recipes/demo.yaml) on 256 synthetic train examples, 300 steps, its optimizer state kept:
    small enough to retrain dozens of times on 2 CPU cores."""
    from ivon_lora import cli

    out = os.path.join(args.work, "demo-ivon")
    if not os.path.isfile(os.path.join(out, "metrics.json")):
        assert cli.main(["train", os.path.join(ROOT, "recipes", "demo.yaml"), f"output_dir={out}", "max_steps=300",
                         "max_train_samples=256", "max_eval_samples=200", "save_strategy=steps", "save_steps=300",
                         "disable_tqdm=true", "overwrite_output_dir=true"]) == 0  # fmt: skip
    return os.path.join(out, "checkpoint-300")


def part_a(args) -> dict:
    from ivon_lora.choice import format_examples
    from ivon_lora.choice.collator import ChoiceCollator
    from ivon_lora.choice.logits import choice_logits
    from ivon_lora.posterior import adapter_parameters
    from ivon_lora.rundir import load_run
    from ivon_lora.tasks import load_split

    checkpoint = args.retrain_checkpoint or _demo_run(args)
    run = load_run(checkpoint)
    run.model.eval()
    data = run.recipe.data
    model = run.model
    examples = format_examples(load_split(data.dataset, data.train_split, data.train_file, data.max_train_samples).examples,
                               tokenizer=run.tokenizer, model_args=run.model_args)  # fmt: skip
    sens = _sensitivity(run, examples, args.covariance)
    n = len(examples)
    rng = random.Random(0)
    top = sorted(range(n), key=lambda i: -float(sens.sensitivity[i]))[: args.removals // 2]
    removals = top + rng.sample([i for i in range(n) if i not in top], args.removals - len(top))
    collator = ChoiceCollator(run.tokenizer, _max_length(run))
    rows = [{"prompt": e.prompt, "answers": e.answers, "gold": e.gold} for e in examples]
    batch_size = run.recipe.training.per_device_train_batch_size
    order_rng = random.Random(1)
    order = []
    while len(order) * batch_size < args.retrain_steps * batch_size:
        permutation = list(range(n))
        order_rng.shuffle(permutation)
        order += [permutation[i : i + batch_size] for i in range(0, n, batch_size)]
    batches = order[: args.retrain_steps]

    def loss_fn(indices):
        batch = collator([rows[i] for i in indices])
        return torch.nn.functional.cross_entropy(choice_logits(model, batch), batch["labels"])

    def probs_of(indices):
        with torch.no_grad():
            batch = collator([rows[i] for i in indices])
            return torch.softmax(choice_logits(model, batch).double(), -1)

    adapter = adapter_parameters(model)
    for p in adapter.values():
        p.requires_grad_(True)
    params = [p for p in model.parameters() if p.requires_grad]
    start = {key: p.detach().clone() for key, p in adapter.items()}
    hyper = run.posterior.config["hyperparameters"]
    state_path = os.path.join(checkpoint, "optimizer.pt")

    def reset():
        with torch.no_grad():
            for key, p in adapter.items():
                p.copy_(start[key])

    begun = time.time()
    _retrain(model, params, state_path, hyper, batches, None, args.retrain_lr, loss_fn)
    control = probs_of(removals)
    reset()
    movements = []
    for j, i in enumerate(removals):
        _retrain(model, params, state_path, hyper, batches, i, args.retrain_lr, loss_fn)
        movements.append(float((probs_of([i])[0] - control[j]).abs().sum()))
        reset()
        logger.info("(a) removal %d/%d: example %d, movement %.3g, s_i %.3g", j + 1, len(removals), i, movements[-1],
                    float(sens.sensitivity[i]))  # fmt: skip
    from scipy.stats import spearmanr

    s = [float(sens.sensitivity[i]) for i in removals]
    loss = [float(sens.loss[i]) for i in removals]
    variance = [float(sens.diagonal[i].sum()) for i in removals]
    return {
        "checkpoint": checkpoint, "recipe": run.recipe.resolved(), "removed": removals, "top": top, "movement": movements, "sensitivity": s,
        "loss": loss, "variance": variance, "steps": args.retrain_steps, "lr": args.retrain_lr,
        "seconds": time.time() - begun,
        "spearman": {"sensitivity": float(spearmanr(movements, s).statistic),
                     "loss": float(spearmanr(movements, loss).statistic),
                     "variance": float(spearmanr(movements, variance).statistic)},
        "spearman_random_half": {"sensitivity": float(spearmanr(movements[len(top):], s[len(top):]).statistic),
                                 "loss": float(spearmanr(movements[len(top):], loss[len(top):]).statistic)},
    }  # fmt: skip


def _test_metrics(run_dir: str, samples: int) -> dict:
    from ivon_lora.evaluation.predict import predict
    from ivon_lora.rundir import load_run

    run = load_run(run_dir)
    predictions = predict(run.model, run.tokenizer, _examples(run, "test"), posterior=run.posterior,
                          num_samples=samples if run.posterior is not None else 0, batch_size=32,
                          max_length=_max_length(run))  # fmt: skip
    metrics = predictions.metrics([10])
    keep = ("accuracy", "nll", "ece_10")
    out = {"mean": {k: metrics["mean"][k] for k in keep}}
    if "sampled" in metrics:
        out["sampled"] = {k: metrics["sampled"][k] for k in keep}
    return out


def part_c(args, b: dict) -> dict:
    from ivon_lora import cli
    from ivon_lora.tasks.wordfacts import wordfacts_records

    records = wordfacts_records("train")
    n, drop = len(records), round(FRACTION * len(records))
    scores = b["0"]["scores"]
    drops = {"ivon": {"sensitivity (IVON)": scores["sensitivity (IVON)"], "loss |e| (IVON)": scores["loss |e| (IVON)"],
                      "random": None},
             "adamw": {"loss |e| (AdamW)": scores["loss |e| (AdamW)"], "random": None}}  # fmt: skip
    result = {}
    for method, rankings in drops.items():
        full_cache = os.path.join(args.out, "parts", f"c-{method}-full.json")
        if not os.path.isfile(full_cache):
            os.makedirs(os.path.dirname(full_cache), exist_ok=True)
            json.dump({"dropped": [], "test": _test_metrics(os.path.join(args.runs, f"wordfacts-{method}-seed0"), 10)},
                      open(full_cache, "w"))  # fmt: skip
        result[f"{method}/full data"] = json.load(open(full_cache))
        for name, ranking in rankings.items():
            key = f"{method}/drop 15% by {name}" if ranking else f"{method}/drop random 15%"
            cache = os.path.join(args.out, "parts", f"c-{method}-{name.split()[0]}.json")
            if os.path.isfile(cache):
                result[key] = json.load(open(cache))
                continue
            if args.report_only:
                continue
            if ranking is None:
                dropped = sorted(random.Random(0).sample(range(n), drop))
            else:
                dropped = sorted(sorted(range(n), key=lambda i: -ranking[i])[:drop])
            slug = name.split()[0].strip("|")
            data = os.path.join(args.work, f"train-{method}-{slug}.jsonl")
            with open(data, "w") as f:
                for i, record in enumerate(records):
                    if i not in set(dropped):
                        f.write(json.dumps(record) + "\n")
            out = os.path.join(args.work, f"clean-{method}-{slug}-seed0")
            if not os.path.isfile(os.path.join(out, "metrics.json")):
                assert cli.main(["train", RECIPES[method], "seed=0", f"output_dir={out}", f"train_file={data}",
                                 "disable_tqdm=true"]) == 0  # fmt: skip
            flipped = [records[i]["label_flipped"] for i in dropped]
            result[key] = {"dropped": dropped, "flipped_dropped": sum(flipped), "run": out,
                           "test": _test_metrics(out, 10)}  # fmt: skip
            os.makedirs(os.path.dirname(cache), exist_ok=True)
            json.dump(result[key], open(cache, "w"))
            logger.info("(c) %s: %s", key, result[key]["test"])
    return result


def _noisy_validation_nll(probs: torch.Tensor, gold: torch.Tensor) -> torch.Tensor:
    """Each validation example's NLL under the train split's label noise ρ, in expectation over the flips (two
    answers): (1 - ρ)·(-log p[label]) + ρ·(-log p[other]), what the LOO-NLL on the noisy train split estimates."""
    from ivon_lora.tasks.wordfacts import LABEL_NOISE

    log_probs = probs.double().clamp_min(1e-300).log()
    label = log_probs.gather(1, gold[:, None])[:, 0]
    other = log_probs.gather(1, (1 - gold)[:, None])[:, 0]
    return -((1.0 - LABEL_NOISE) * label + LABEL_NOISE * other)


def _auroc(rows: np.ndarray) -> np.ndarray:
    """AUROC of rows[..., 0] (score) for rows[..., 1] (flipped), over the last-but-one axis: the rank-sum form,
    ties averaged, so that a block of bootstrap replicates (R x n x 2) is scored at once."""
    from scipy.stats import rankdata

    scores, positive = rows[..., 0], rows[..., 1] > 0.5
    ranks = rankdata(scores, axis=-1)
    n_pos = positive.sum(axis=-1)
    n_neg = positive.shape[-1] - n_pos
    return ((ranks * positive).sum(axis=-1) - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def _e_seed(args, seed: int, priors: dict[str, tuple]) -> dict:
    """One IVON run's LOO-NLL, train NLL and flipped-label AUROCs for each posterior at each of its `priors`, and the
    noisy validation NLL; per-example values when a posterior has one prior (the reported seeds)."""
    from ivon_lora.choice.curvature import choice_curvature
    from ivon_lora.choice.sensitivity import choice_sensitivity
    from ivon_lora.curvature import data_hessian, refined
    from ivon_lora.rundir import load_run

    run = load_run(os.path.join(args.runs, f"wordfacts-ivon-seed{seed}"))
    train, flipped = _examples(run, "train"), _flipped()
    n = len(train)
    begun = time.time()
    curvatures = {"trained": data_hessian(run.posterior),
                  "learned": choice_curvature(run.model, run.tokenizer, train, run.posterior, method="ggn",
                                              batch_size=16, max_length=_max_length(run))}  # fmt: skip
    validation = _mean_probs(run, _examples(run, "validation"))
    noisy = _noisy_validation_nll(validation.mean, validation.gold)
    result = {"seed": seed, "num_train": n, "num_validation": len(noisy), "validation_noisy_nll": float(noisy.mean()),
              "curvature_seconds": time.time() - begun, "posteriors": {}}  # fmt: skip
    for name, curvature in curvatures.items():
        rows = []
        for prior in priors[name]:
            posterior = refined(run.posterior, curvature, float(n), prior / n,
                                {"method": "ivon" if name == "trained" else "ggn", "study": "sensitivity (e)"})  # fmt: skip
            sens = choice_sensitivity(run.model, run.tokenizer, train, posterior, batch_size=32,
                                      max_length=_max_length(run), covariance="full")  # fmt: skip
            loo = -sens.loo_label_prob.clamp_min(1e-300).log()
            row = {"prior_precision": prior, "loo_nll": float(loo.mean()), "train_nll": float(sens.loss.mean()),
                   "auroc": {"sensitivity": _auroc(np.column_stack([sens.sensitivity.numpy(), flipped])).item(),
                             "loss": _auroc(np.column_stack([sens.loss.numpy(), flipped])).item()}}  # fmt: skip
            if len(priors[name]) == 1:
                row["per_example"] = {"loo_nll": loo.tolist(), "train_nll": sens.loss.tolist(),
                                      "sensitivity": sens.sensitivity.tolist()}  # fmt: skip
            rows.append(row)
            logger.info("(e) seed %d, %s posterior, δ %g: LOO-NLL %.3f (validation %.3f), AUROC s_i %.3f", seed, name,
                        prior, row["loo_nll"], result["validation_noisy_nll"], row["auroc"]["sensitivity"])  # fmt: skip
        result["posteriors"][name] = rows
    if all(len(p) == 1 for p in priors.values()):
        result["per_example_validation_noisy_nll"] = noisy.tolist()
    return result


def _e_intervals(reported: list[dict], replicates: int = 2000) -> dict:
    """At the fitted δ, over the reported seeds: each posterior's LOO-NLL minus the noisy validation NLL (and the
    train NLL's, the naive estimate), the train and validation examples drawn independently in each replicate, the
    draws shared by the seeds; and the AUROC differences, paired over the train examples."""
    from ivon_lora.comparison.stats import CONFIDENCE, bootstrap_indices, paired_bootstrap

    flipped = np.asarray(_flipped(), dtype=np.float64)
    validation = [np.asarray(seed["per_example_validation_noisy_nll"]) for seed in reported]
    n_train, n_validation = len(flipped), len(validation[0])
    tail = (1.0 - CONFIDENCE) / 2.0
    out = {"gaps": {}, "auroc": {}}
    for name in POSTERIORS:
        for estimate in ("loo_nll", "train_nll"):
            values = [np.asarray(seed["posteriors"][name][0]["per_example"][estimate]) for seed in reported]
            per_seed = [float(v.mean() - w.mean()) for v, w in zip(values, validation)]
            draws = np.concatenate([
                np.mean([v[t].mean(axis=1) - w[u].mean(axis=1) for v, w in zip(values, validation)], axis=0)
                for t, u in zip(bootstrap_indices(n_train, replicates, 0), bootstrap_indices(n_validation, replicates, 1))
            ])  # fmt: skip
            low, high = np.quantile(draws, [tail, 1.0 - tail])
            out["gaps"][f"{name}/{estimate}"] = {"difference": float(np.mean(per_seed)), "interval": [float(low), float(high)],
                                                 "per_seed": per_seed}  # fmt: skip

    def rows(name, score):
        per = [seed["posteriors"][name][0]["per_example"][score] for seed in reported]
        return [np.column_stack([np.asarray(values), flipped]) for values in per]

    pairs = {"learned s_i - loss": (rows("learned", "sensitivity"), rows("learned", "train_nll")),
             "trained s_i - loss": (rows("trained", "sensitivity"), rows("trained", "train_nll")),
             "learned s_i - trained s_i": (rows("learned", "sensitivity"), rows("trained", "sensitivity"))}  # fmt: skip
    for key, (first, second) in pairs.items():
        out["auroc"][key] = paired_bootstrap(first, second, _auroc, replicates=replicates, vectorized=True)
    return out


def part_e(args) -> dict:
    fitting = _e_seed(args, args.e_fit_seed, {name: PRIOR_GRID for name in POSTERIORS})
    fitted = {}
    for name in POSTERIORS:
        rows = fitting["posteriors"][name]
        best = min(range(len(rows)), key=lambda i: abs(rows[i]["loo_nll"] - fitting["validation_noisy_nll"]))
        if best in (0, len(rows) - 1):
            logger.warning(
                "(e) %s: the fitted δ %g is at the edge of PRIOR_GRID: widen it", name, rows[best]["prior_precision"]
            )
        fitted[name] = rows[best]["prior_precision"]
    logger.info("(e) fitted on seed %d: %s", args.e_fit_seed, fitted)
    reported = [_e_seed(args, seed, {name: (fitted[name],) for name in POSTERIORS}) for seed in args.e_seeds]
    return {"fit_seed": args.e_fit_seed, "seeds": list(args.e_seeds), "prior_grid": list(PRIOR_GRID),
            "fitted_prior_precision": fitted, "fit": fitting, "reported": reported,
            "intervals": _e_intervals(reported)}  # fmt: skip


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", default="/work/runs")
    parser.add_argument("--work", default="/work/runs/sensitivity")
    parser.add_argument("--out", default=os.path.join(ROOT, "results", "sensitivity-smollm2"))
    parser.add_argument("--parts", nargs="+", default=["b", "d", "a", "c"], choices=["a", "b", "c", "d", "e"])
    parser.add_argument("--removals", type=int, default=30)
    parser.add_argument(
        "--covariance",
        choices=["full", "diagonal"],
        default="diagonal",
        help="the prediction covariance (diagonal: the committed results'; full: the MPE's K x K)",
    )
    parser.add_argument("--retrain-steps", type=int, default=64, help="IVON steps of each retraining (a)")
    parser.add_argument(
        "--retrain-lr",
        type=float,
        default=0.005,
        help="their learning rate (a; the demo trains at 0.05, decayed linearly)",
    )
    parser.add_argument(
        "--retrain-checkpoint",
        help="(a): a checkpoint dir with optimizer.pt (default: the tiny demo, trained into WORK/demo-ivon)",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--d-seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--d-checkpoints", type=int, nargs="+", default=[50, 200])
    parser.add_argument(
        "--loo-examples", type=int, default=64, help="(d): LOO-NLL over this many random train examples (0: all 256)"
    )
    parser.add_argument("--e-fit-seed", type=int, default=0, help="(e): the seed δ is fitted on, and only that")
    parser.add_argument("--e-seeds", type=int, nargs="+", default=[1, 2, 3, 4], help="(e): the seeds reported")
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="write the report from what has run (c: the retrainings finished so far)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    torch.set_num_threads(args.threads)
    os.makedirs(os.path.join(args.out, "parts"), exist_ok=True)
    os.makedirs(args.work, exist_ok=True)
    parts = {}
    for name in ["b", "a", "d", "c", "e"]:
        path = os.path.join(args.out, "parts", f"{name}.json")
        if os.path.isfile(path):
            parts[name] = json.load(open(path))
            continue
        if name == "c" and args.report_only and "scores" in parts.get("b", {}).get("0", {}):
            parts[name] = part_c(args, parts["b"])
            continue
        if name not in args.parts or args.report_only:
            continue
        begun = time.time()
        if name == "b":
            parts[name] = part_b(args)
        elif name == "d":
            parts[name] = part_d(args)
        elif name == "a":
            parts[name] = part_a(args)
        elif name == "e":
            parts[name] = part_e(args)
        else:
            if "b" not in parts:
                continue
            parts[name] = part_c(args, parts["b"])
        parts[name]["wall_seconds"] = time.time() - begun
        parts[name]["command"] = " ".join(["python", "scripts/study_sensitivity.py", *sys.argv[1:]])
        with open(path, "w") as f:
            json.dump(parts[name], f)
    from study_sensitivity_report import write_report

    write_report(args, parts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
