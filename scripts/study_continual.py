"""Continual finetuning: task A, then task B; what each method keeps of A (issue 22, item 4).

    flock /tmp/ivon-study.lock python scripts/study_continual.py --out results/continual-smollm2 \
        --runs /work/runs/continual/study --task-b antonyms --b-steps 100 --grid-seeds 0 --reference-seeds 0

Per seed: the A runs are recipes/smollm2/wordfacts-{ivon,adamw}.yaml (seed=N; reused from --reuse-a when finished
there), then every method trains on B (the same recipe with dataset=B, --b-steps steps):
  adamw-seq            AdamW from A's adapter (init_from)
  adamw-l2[lambda]     + lambda/2 * |theta - theta_A|^2 added to the loss
  adamw-ewc[lambda]    + lambda/2 * sum F (theta - theta_A)^2, F the diagonal Fisher of A's train set at theta_A
                       (the expected Fisher of the K-way softmax, one pass over A's train split; its time is counted)
  adamw-replay         AdamW from A's adapter on B's train split plus --replay examples of A's
  ivon-seq             IVON from A's posterior mean with the recipe's prior (init_from)
  ivon-prior[s]        IVON with A's posterior as the prior (prior_from, prior_scale s: --prior-scales)
  ivon-learned-prior[s]  the same with A's learned posterior as the prior: A's IVON run refined by `ivon-lora refine`
                       (the exact GGN at its mean, the scale chosen on A's validation split among --refine-ess x
                       --refine-prior-precision; s: --learned-prior-scales)
  ivon-prior-memory[s] the same on B plus --replay random examples of A (the K-prior's functional memory, crudely;
                       s: --memory-prior-scales)
  ivon-prior-memory-sensitive[s]  (--memory sensitivity; s: the first of --memory-prior-scales) the memory is the
                       --replay A train examples with the largest memory-perturbation sensitivity under A's
                       posterior (`ivon-lora sensitivity`; its time counted)
  multitask-{adamw,ivon}  from scratch on A and B together, twice the B steps (the reference; --reference-seeds)
Each run is evaluated with `ivon-lora eval` on A's and B's test splits (IVON: --samples posterior samples), and on
their validation splits where a grid chooses a setting (lambda, s): per family, the best mean of A's and B's
validation accuracy over --grid-seeds, never test; the other seeds run only the chosen setting (grid seeds apart
from --seeds are not reported: the comparison protocol). Reported on test:
accuracy and ECE on A and B after B, forgetting on A (A's test accuracy after A minus after B), the steps B needed
(the first Trainer evaluation, every --eval-steps on B's validation split at the mean, within 2 points of the run's
last), and the training seconds (plus the Fisher pass for EWC, the sensitivity pass for the sensitive memory, the
refinement for the learned prior); with --paired-against FAMILY, that family's paired differences in A's and B's
test accuracy against every other family, with 95% paired-bootstrap intervals over the test examples (the
compare protocol's, `ivon_lora.comparison.stats`).
Writes OUT/study.json (every run, the choices, settings, versions), OUT/study.md and OUT/study.png. Finished
steps (metrics.json / eval.json present) are skipped, so an interrupted study resumes.

The union and replay training sets are built from the examples of both tasks (any two multiple-choice tasks), and
the penalties and the learning-curve record are added to the Trainer by this script (`--train-one`, a subprocess).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = {"ivon": "recipes/smollm2/wordfacts-ivon.yaml", "adamw": "recipes/smollm2/wordfacts-adamw.yaml"}
CURVE_NAME, FISHER_NAME, MEMORY_NAME = "curve.json", "fisher-A.safetensors", "memory-A.json"
REFINED_A, REFINE_TIME = "A-ivon-refined", "refine-A.json"  # A's IVON run refined (the learned posterior), its seconds


# ---------------------------------------------------------------------------------- one training (subprocess)


def train_one(spec: dict) -> None:
    """Train `spec["recipe"]` with `spec["overrides"]`; adds A's examples to the train split, a penalty towards
    A's adapter, and a record of the Trainer's evaluations (curve.json), as `spec` asks."""
    from transformers import TrainerCallback

    import ivon_lora.tasks as tasks
    from ivon_lora.commands import train
    from ivon_lora.config import load_recipe

    recipe = load_recipe(spec["recipe"], spec["overrides"])
    if spec.get("add_examples"):
        add = spec["add_examples"]
        add_training_examples(tasks, recipe, add["task"], add["count"], spec["seed"], add.get("ids"))
    curve = []

    class Curve(TrainerCallback):
        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            curve.append({"step": state.global_step, **{k: v for k, v in (metrics or {}).items()
                                                        if isinstance(v, (int, float))}})  # fmt: skip

    base = train.trainer_class

    def trainer_class(objective="choice"):
        cls = base(objective)
        penalty = spec.get("penalty")

        class StudyTrainer(cls):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                self.add_callback(Curve())
                self.penalty = None
                if penalty is not None:
                    self.penalty = anchor_penalty(self, recipe, penalty, spec["task_a"])

            def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
                result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
                if self.penalty is None or not model.training:
                    return result
                extra = self.penalty()
                return (result[0] + extra, result[1]) if return_outputs else result + extra

        return StudyTrainer

    train.trainer_class = trainer_class
    train.run_train(recipe)
    with open(os.path.join(recipe.training.output_dir, CURVE_NAME), "w") as f:
        json.dump(curve, f, indent=1)


def add_training_examples(tasks, recipe, task_a: str, count: int | None, seed: int, ids: list[str] | None) -> None:
    """Make load_split return, for the recipe's train split, its examples plus `count` (None: all) of A's: a
    seeded random draw, or the examples named by `ids`."""
    import dataclasses

    original = tasks.load_split

    def load_split(task, split, data_files=None, limit=None, protocol="ivon-lora"):
        loaded = original(task, split, data_files, limit, protocol=protocol)
        if split != recipe.data.train_split or task != recipe.data.dataset:
            return loaded
        extra = original(task_a, "train", protocol=protocol).examples
        if ids is not None:
            by_id = {example.id: example for example in extra}
            extra = [by_id[example_id] for example_id in ids]
        elif count is not None:
            extra = random.Random(seed).sample(extra, count)
        return dataclasses.replace(loaded, examples=loaded.examples + extra, num_rows=loaded.num_rows + len(extra))

    tasks.load_split = load_split


def anchor_penalty(trainer, recipe, penalty: dict, task_a: str):
    """lambda/2 * sum F (theta - theta_A)^2 over the adapter, F = 1 (l2) or A's diagonal Fisher (ewc)."""
    import torch

    from ivon_lora.posterior import adapter_parameters

    params = adapter_parameters(trainer.model)
    anchor = {key: p.detach().clone() for key, p in params.items()}  # init_from put A's adapter there
    if penalty["kind"] == "ewc":
        weights = fisher_diagonal(trainer, recipe, task_a, params, penalty["fisher_path"])
    else:
        weights = {key: torch.ones_like(p) for key, p in anchor.items()}
    strength = penalty["strength"]

    def value():
        return 0.5 * strength * sum((weights[k] * (p - anchor[k]) ** 2).sum() for k, p in params.items())

    return value


def fisher_diagonal(trainer, recipe, task_a, params, path):
    """The expected Fisher of the K-way softmax, averaged over A's train split, at A's adapter (cached at `path`)."""
    import torch
    from safetensors.torch import load_file, save_file

    from ivon_lora.choice import choice_rows, format_examples
    from ivon_lora.choice.logits import choice_logits
    from ivon_lora.tasks import load_split

    if os.path.isfile(path):
        return load_file(path)
    start = time.time()
    model, tokenizer = trainer.model, trainer.processing_class
    examples = format_examples(load_split(task_a, "train").examples, tokenizer, recipe.model)
    fisher = {key: torch.zeros_like(p) for key, p in params.items()}
    was_training = model.training
    model.eval()
    for row in choice_rows(examples):
        batch = {k: v.to(model.device) if hasattr(v, "to") else v for k, v in trainer.data_collator([row]).items()}
        log_probs = torch.log_softmax(choice_logits(model, batch)[0], dim=-1)
        valid = torch.isfinite(log_probs).nonzero().flatten().tolist()
        for index, k in enumerate(valid):
            grads = torch.autograd.grad(log_probs[k], list(params.values()), retain_graph=index < len(valid) - 1)
            for key, grad in zip(params, grads):
                fisher[key] += log_probs[k].exp().detach() * grad**2 / len(examples)
    model.train(was_training)
    save_file({k: v.contiguous() for k, v in fisher.items()}, path, metadata={"seconds": f"{time.time() - start:.1f}"})
    return fisher


# ------------------------------------------------------------------------------------------- the study


def ivon_lora(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "ivon_lora", *args], check=True, cwd=ROOT)


def methods(options) -> dict[str, dict]:
    """name -> what its B run is: the optimizer, where it starts, and what it adds."""
    grid = {"adamw-seq": {"optim": "adamw", "start": "init"}, "ivon-seq": {"optim": "ivon", "start": "init"},
            "adamw-replay": {"optim": "adamw", "start": "init", "replay": options.replay}}  # fmt: skip
    for strength in options.l2:
        grid[f"adamw-l2[{strength:g}]"] = {"optim": "adamw", "start": "init", "penalty": ("l2", strength)}
    for strength in options.ewc:
        grid[f"adamw-ewc[{strength:g}]"] = {"optim": "adamw", "start": "init", "penalty": ("ewc", strength)}
    for scale in options.prior_scales:
        grid[f"ivon-prior[{scale:g}]"] = {"optim": "ivon", "start": "prior", "scale": scale}
    for scale in options.learned_prior_scales:
        grid[f"ivon-learned-prior[{scale:g}]"] = {"optim": "ivon", "start": "learned-prior", "scale": scale}

    def memory(scale: float, **chosen_by) -> dict:
        return {"optim": "ivon", "start": "prior", "scale": scale, "replay": options.replay, **chosen_by}

    for scale in options.memory_prior_scales if "random" in options.memory else ():
        grid[f"ivon-prior-memory[{scale:g}]"] = memory(scale)
    if "sensitivity" in options.memory:  # at the first scale only
        scale = options.memory_prior_scales[0]
        grid[f"ivon-prior-memory-sensitive[{scale:g}]"] = memory(scale, memory="sensitivity")
    for optim in ("adamw", "ivon"):
        grid[f"multitask-{optim}"] = {"optim": optim, "start": None, "replay": None, "multitask": True}
    return grid


def run_a(options, seed: int, optim: str) -> str:
    reused = options.reuse_a.format(optim=optim, seed=seed) if options.reuse_a else None
    if reused and os.path.isfile(os.path.join(reused, "metrics.json")):
        return reused
    out = os.path.join(options.runs, f"seed{seed}", f"A-{optim}")
    if not os.path.isfile(os.path.join(out, "metrics.json")):
        ivon_lora("train", options.recipes[optim], f"dataset={options.task_a}", f"output_dir={out}", f"seed={seed}",
                  "overwrite_output_dir=true", "disable_tqdm=true", *options.set)  # fmt: skip
    return out


def run_b(options, seed: int, name: str, method: dict, a_runs: dict) -> str:
    out = os.path.join(options.runs, f"seed{seed}", name)
    if os.path.isfile(os.path.join(out, "metrics.json")):
        return out
    recipe = options.recipes[method["optim"]]
    overrides = [f"dataset={options.task_b}", f"output_dir={out}", f"seed={seed}", "overwrite_output_dir=true",
                 "disable_tqdm=true", "final_eval_samples=0", *options.set]  # fmt: skip
    # the train command's own evaluation is at the mean only: the study's evaluations are `evaluate`'s
    steps = options.b_steps or read_recipe_value(recipe, "max_steps", options.set)
    overrides.append(f"max_steps={2 * steps if method.get('multitask') else steps}")
    if options.eval_steps:
        overrides += ["eval_strategy=steps", f"eval_steps={options.eval_steps}", "ivon_eval_samples=0"]
    if method["start"] == "init":
        overrides.append(f"init_from={a_runs[method['optim']]}")
    elif method["start"] in ("prior", "learned-prior"):
        prior = a_runs["ivon"] if method["start"] == "prior" else refine_a(options, seed, a_runs["ivon"])
        overrides += [f"prior_from={prior}", f"prior_scale={method['scale']}"]
    spec = {"recipe": os.path.join(ROOT, recipe), "overrides": overrides, "seed": seed, "task_a": options.task_a}
    if method.get("multitask") or method.get("replay"):
        spec["add_examples"] = {"task": options.task_a, "count": None if method.get("multitask") else method["replay"]}
    if method.get("memory") == "sensitivity":
        spec["add_examples"]["ids"] = sensitive_memory(options, seed, a_runs["ivon"])["ids"]
    if method.get("penalty"):
        kind, strength = method["penalty"]
        spec["penalty"] = {"kind": kind, "strength": strength,
                           "fisher_path": os.path.join(options.runs, f"seed{seed}", FISHER_NAME)}  # fmt: skip
    subprocess.run([sys.executable, os.path.abspath(__file__), "--train-one", json.dumps(spec)], check=True, cwd=ROOT)
    return out


def refine_a(options, seed: int, a_run: str) -> str:
    """A's IVON run with its precision refined at the mean (the exact GGN of A's train split), the scale chosen on A's
    validation split among --refine-ess x --refine-prior-precision; its seconds go to the seed's REFINE_TIME."""
    out = os.path.join(options.runs, f"seed{seed}", REFINED_A)
    if not os.path.isfile(os.path.join(out, "posterior_config.json")):
        start = time.perf_counter()
        ivon_lora("refine", a_run, "--ess", *map(str, options.refine_ess), "--prior-precision",
                  *map(str, options.refine_prior_precision), "--select-samples", str(options.samples), "--out", out,
                  "--overwrite")  # fmt: skip
        from ivon_lora.fileio import write_json_atomic

        write_json_atomic(os.path.join(options.runs, f"seed{seed}", REFINE_TIME),
                          {"seconds": time.perf_counter() - start})  # fmt: skip
    return out


def sensitive_memory(options, seed: int, a_run: str) -> dict:
    """The --replay train examples of A to which A's IVON posterior is most sensitive (`ivon-lora sensitivity`, the
    memory-perturbation scores), with the seconds the scoring took; cached in the seed's MEMORY_NAME."""
    path = os.path.join(options.runs, f"seed{seed}", MEMORY_NAME)
    if os.path.isfile(path):
        with open(path) as f:
            return json.load(f)
    out = os.path.join(options.runs, f"seed{seed}", "A-ivon-sensitivity")
    start = time.perf_counter()
    ivon_lora("sensitivity", a_run, "--split", "train", "--out", out, "--overwrite")
    seconds = time.perf_counter() - start
    with open(os.path.join(out, "sensitivity.jsonl")) as f:
        rows = sorted((json.loads(line) for line in f), key=lambda row: -row["sensitivity"])[: options.replay]
    memory = {"ids": [row["id"] for row in rows], "seconds": seconds, "scores": out,
              "label_flipped": sum(bool(row.get("label_flipped")) for row in rows)}  # fmt: skip
    from ivon_lora.fileio import write_json_atomic

    write_json_atomic(path, memory)
    return memory


def read_recipe_value(recipe: str, key: str, overrides: list[str]):
    import yaml

    for item in overrides:
        if item.startswith(f"{key}="):
            return yaml.safe_load(item.split("=", 1)[1])
    with open(os.path.join(ROOT, recipe)) as f:
        return yaml.safe_load(f)[key]


def evaluate(options, run: str, out: str, split: str) -> dict:
    """{task: {"accuracy", "ece"}} of the run's predictive (IVON: the sampled one) on `split` of A and B."""
    if not os.path.isfile(os.path.join(out, "eval.json")):
        limit = ["--limit", str(options.eval_limit)] if options.eval_limit else []
        ivon_lora("eval", run, "--task", options.task_a, options.task_b, "--split", split, "--samples",
                  str(options.samples), "--out", out, "--overwrite", *limit)  # fmt: skip
    with open(os.path.join(out, "eval.json")) as f:
        tasks = json.load(f)["tasks"]
    scores = {}
    for task in (options.task_a, options.task_b):
        (metrics,) = tasks[task]["runs"].values()
        predictive = metrics.get("sampled") or metrics["mean"]
        scores[task] = {"accuracy": predictive["accuracy"], "ece": predictive["ece_10"]}
    return scores


def run_record(options, run: str, split_evals: dict, task_b: str) -> dict:
    with open(os.path.join(run, "metrics.json")) as f:
        trained = json.load(f)
    record = {
        "dir": run,
        "eval": split_evals,
        "train_seconds": trained["train"].get("train_runtime"),
        "recipe": trained["recipe"],
        "prior_run": trained.get("prior_run"),
    }
    curve_path = os.path.join(run, CURVE_NAME)
    if os.path.isfile(curve_path):
        with open(curve_path) as f:
            curve = [p for p in json.load(f) if "eval_accuracy" in p]
        record["curve"] = curve
        if curve:
            target = curve[-1]["eval_accuracy"] - 0.02
            record["steps_needed"] = next(p["step"] for p in curve if p["eval_accuracy"] >= target)
    fisher = os.path.join(os.path.dirname(run), FISHER_NAME)
    if "ewc" in os.path.basename(run) and os.path.isfile(fisher):
        from safetensors import safe_open

        with safe_open(fisher, "pt") as f:
            record["extra_seconds"] = float(f.metadata()["seconds"])
    refine_time = os.path.join(os.path.dirname(run), REFINE_TIME)
    if "learned-prior" in os.path.basename(run) and os.path.isfile(refine_time):
        with open(refine_time) as f:
            record["extra_seconds"] = json.load(f)["seconds"]
        with open(os.path.join(os.path.dirname(run), REFINED_A, "posterior_config.json")) as f:
            record["refine"] = json.load(f)["refine"]
    memory = os.path.join(os.path.dirname(run), MEMORY_NAME)
    if "memory-sensitive" in os.path.basename(run) and os.path.isfile(memory):
        with open(memory) as f:
            record["memory"] = json.load(f)
        record["extra_seconds"] = record["memory"]["seconds"]
    return record


def run_seed(options, seed: int, chosen: dict[str, str] | None = None) -> dict:
    """Every method's B run of `seed`, with its evaluations. `chosen` (family -> setting): run only those settings
    of the families with a grid; the multitask references only on --reference-seeds."""
    a_runs = {optim: run_a(options, seed, optim) for optim in ("adamw", "ivon")}
    results = {}
    for optim, run in a_runs.items():
        test = evaluate(options, run, os.path.join(options.runs, f"seed{seed}", f"A-{optim}-eval-test"), "test")
        results[f"after-A-{optim}"] = {"dir": run, "eval": {"test": test}}
    planned = methods(options)
    grids = {family for family, names in families(planned).items() if len(names) > 1}
    for name, method in planned.items():
        if chosen is not None and chosen.get(family_of(name), name) != name:
            continue
        if method.get("multitask") and seed not in options.reference_seeds:
            continue
        run = run_b(options, seed, name, method, a_runs)
        # validation only where it chooses a setting
        splits = ("validation", "test") if chosen is None and family_of(name) in grids else ("test",)
        evals = {s: evaluate(options, run, f"{run}-eval-{s}", s) for s in splits}
        record = run_record(options, run, evals, options.task_b)
        after_a = results[f"after-A-{method['optim']}"]["eval"]["test"][options.task_a]["accuracy"]
        record["forgetting"] = None if method.get("multitask") else after_a - evals["test"][options.task_a]["accuracy"]
        results[name] = record
    return results


def family_of(name: str) -> str:
    """ "adamw-l2[0.1]" -> "adamw-l2"."""
    return name.split("[")[0]


def families(names) -> dict[str, list[str]]:
    """Method family ("adamw-l2") -> its settings' names ("adamw-l2[0.1]", ...)."""
    grouped: dict[str, list[str]] = {}
    for name in names:
        grouped.setdefault(family_of(name), []).append(name)
    return grouped


def choose(per_seed: dict, options) -> dict[str, str]:
    """Per method family, the grid setting with the best mean validation accuracy (A and B), over the seeds."""

    def validation(name):
        return statistics.mean(per_seed[s][name]["eval"]["validation"][t]["accuracy"]
                               for s in per_seed for t in (options.task_a, options.task_b))  # fmt: skip

    grouped = families(next(iter(per_seed.values())))
    return {family: max(names, key=validation) if len(names) > 1 else names[0] for family, names in grouped.items()}


def summarise(per_seed: dict, chosen: dict, options) -> dict:
    table = {}
    for family, name in chosen.items():
        rows = [per_seed[s][name] for s in per_seed if name in per_seed[s]]
        entry = {"setting": name, "seeds": [s for s in per_seed if name in per_seed[s]]}
        for task, short in ((options.task_a, "A"), (options.task_b, "B")):
            for metric in ("accuracy", "ece"):
                entry[f"{metric}_{short}"] = [r["eval"]["test"][task][metric] for r in rows]
        for key in ("forgetting", "steps_needed", "train_seconds", "extra_seconds"):
            values = [r.get(key) for r in rows]
            entry[key] = values if any(v is not None for v in values) else None
        table[family] = entry
    return table


def test_hits(options, run: str, task: str):
    """(example ids, 1/0 per example) of the run's predictive (IVON: the sampled one) on `task`'s test split, from the
    per-example predictions its evaluation wrote."""
    from ivon_lora.comparison.scoring import read_predictive

    eval_dir = f"{run}-eval-test"
    with open(os.path.join(eval_dir, "eval.json")) as f:
        result = json.load(f)
    (label,) = result["tasks"][task]["runs"]
    predictive = "sampled" if "sampled" in result["tasks"][task]["runs"][label] else "mean"
    ids, gold, probs, _ = read_predictive(eval_dir, result, task, label, predictive)
    return ids, (probs.argmax(axis=1) == gold).astype(float)


def paired_differences(per_seed: dict, chosen: dict, options) -> dict:
    """--paired-against's chosen setting minus every other family's, in A's and B's test accuracy after B: the mean
    over the seeds both ran of each seed's difference, with its 95% paired-bootstrap interval over the test examples
    (`ivon_lora.comparison.stats.paired_bootstrap`: the test set's sampling error; the seeds' spread is per_seed)."""
    from ivon_lora.comparison.stats import paired_bootstrap

    mine = chosen[options.paired_against]
    found = {}
    for family, other in chosen.items():
        if family == options.paired_against:
            continue
        seeds = [s for s in per_seed if mine in per_seed[s] and other in per_seed[s]]
        found[family] = {"setting": other, "seeds": seeds}
        for task, short in ((options.task_a, "A"), (options.task_b, "B")):
            first, second = [], []
            for seed in seeds:
                ids, hits = test_hits(options, per_seed[seed][mine]["dir"], task)
                other_ids, other_hits = test_hits(options, per_seed[seed][other]["dir"], task)
                if ids != other_ids:
                    raise RuntimeError(f"{mine} and {other} (seed {seed}) were scored on other {task} examples")
                first.append(hits)
                second.append(other_hits)
            found[family][f"accuracy_{short}"] = paired_bootstrap(first, second) if seeds else None
    return found


def cell(values, scale=100.0, digits=1) -> str:
    from ivon_lora.comparison.stats import mean_std_text

    return mean_std_text(values, scale, digits)


def markdown(table: dict, options, seeds) -> str:
    lines = [f"Task A {options.task_a}, then task B {options.task_b}; test splits, seeds {', '.join(map(str, seeds))} "
             "(mean ± std); accuracy, ECE (10 bins) and forgetting x100; settings chosen on the validation splits "
             f"of seeds {', '.join(map(str, options.grid_seeds))}.", "",
             "| method (chosen setting) | seeds | acc A | ECE A | acc B | ECE B | forgetting A | steps B needed | "
             "train s | extra s |", "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for family, e in table.items():
        cells = [e["setting"], ",".join(map(str, e["seeds"])), *(cell(e[key]) for key in
                 ("accuracy_A", "ece_A", "accuracy_B", "ece_B", "forgetting")), cell(e["steps_needed"], 1, 0),
                 cell(e["train_seconds"], 1, 0), cell(e["extra_seconds"], 1, 0)]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    for family, e in table.items():
        if e.get("paired"):
            lines += paired_table(e["setting"], e["paired"])
    return "\n".join(lines) + "\n"


def paired_table(setting: str, paired: dict) -> list[str]:
    from ivon_lora.comparison.stats import interval_text

    def difference(found):
        if found is None:
            return "-"
        return interval_text(found["difference"], found["interval"], 100.0, 1, signed=True)

    lines = ["", f"Paired test differences, {setting} minus each family's chosen setting (x100; 95% paired-bootstrap "
             "interval over the test examples, over the seeds both ran):", "",
             "| against | seeds | acc A | acc B |", "|---|---|---|---|"]  # fmt: skip
    for family, found in paired.items():
        lines.append(f"| {found['setting']} | {','.join(map(str, found['seeds']))} | {difference(found['accuracy_A'])} "
                     f"| {difference(found['accuracy_B'])} |")  # fmt: skip
    return lines


def figure(table: dict, per_seed: dict, path: str, options) -> None:
    """Left: accuracy on A after B against accuracy on B; right: the same for ECE. Mean ± std over the seeds; the
    dashed lines are A's test accuracy / ECE before B (the A runs, mean over the seeds)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 5.2))
    left, right = fig.subplots(1, 2)
    for axis, metric, label in ((left, "accuracy", "accuracy"), (right, "ece", "ECE (10 bins)")):
        for family, e in table.items():
            xs, ys = [100 * v for v in e[f"{metric}_B"]], [100 * v for v in e[f"{metric}_A"]]
            axis.errorbar(statistics.mean(xs), statistics.mean(ys), xerr=statistics.stdev(xs) if len(xs) > 1 else 0,
                          yerr=statistics.stdev(ys) if len(ys) > 1 else 0, capsize=3,
                          fmt="o" if family.startswith("ivon") or family == "multitask-ivon" else "s",
                          label=f"{e['setting']} ({len(xs)} seed{'s' if len(xs) > 1 else ''})")  # fmt: skip
        for optim, style in (("ivon", "-"), ("adamw", ":")):
            before = [100 * r[f"after-A-{optim}"]["eval"]["test"][options.task_a][metric] for r in per_seed.values()]
            axis.axhline(statistics.mean(before), color="gray", linestyle=style, linewidth=1,
                         label=f"A's {optim} run before B")  # fmt: skip
        axis.set(xlabel=f"{label} on B ({options.task_b}) after B, test, %",
                 ylabel=f"{label} on A ({options.task_a}) after B, test, %")  # fmt: skip
        axis.grid(alpha=0.3)
    left.set_title("Kept of A, learned of B (up and right is better)")
    right.set_title("Calibration after B (down and left is better)")
    right.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    from study_curvature import REFINE_GRID  # the grid the curvature study settled on (scripts/)

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-one", help=argparse.SUPPRESS)
    parser.add_argument("--out", help="results dir (study.json, study.md, study.png)")
    parser.add_argument("--runs", help="where the runs go (outside the repository)")
    parser.add_argument("--task-a", default="wordfacts")
    parser.add_argument("--task-b", help="the second task, e.g. antonyms")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--b-steps", type=int, help="training steps on B (default: the recipe's max_steps); the "
                        "multitask references train twice as many")  # fmt: skip
    parser.add_argument("--grid-seeds", type=int, nargs="+", help="seeds that run every grid setting; the others "
                        "run the setting chosen on these seeds' validation splits (default: every seed)")  # fmt: skip
    parser.add_argument("--reference-seeds", type=int, nargs="+", help="seeds of the multitask references "
                        "(default: every seed)")  # fmt: skip
    parser.add_argument("--memory", nargs="+", choices=["random", "sensitivity"], default=["random"],
                        help="how IVON's memory of A is chosen: random (ivon-prior-memory) and/or the most "
                             "sensitive examples (ivon-prior-memory-sensitive)")  # fmt: skip
    parser.add_argument("--recipe-ivon", default=RECIPES["ivon"])
    parser.add_argument("--recipe-adamw", default=RECIPES["adamw"])
    parser.add_argument(
        "--reuse-a",
        default="/work/runs/wordfacts-{optim}-seed{seed}",
        help="finished A runs to reuse ({optim}: ivon or adamw, {seed}); '' trains them",
    )
    parser.add_argument("--replay", type=int, default=32, help="A examples replayed (and the memory of IVON's)")
    parser.add_argument("--prior-scales", type=float, nargs="+", default=[1.0, 10.0, 100.0, 1000.0],
                        help="ivon-prior's grid of prior_scale (1: Bayesian updating; the precision of A's posterior "
                             "is about weight decay 1e-3 per entry at ess 1e6, so 10-1000 span l2's grid)")  # fmt: skip
    parser.add_argument(
        "--learned-prior-scales",
        type=float,
        nargs="+",
        default=[],
        help="ivon-learned-prior's grid of prior_scale (1: the exact prior of A's learned posterior)",
    )
    parser.add_argument(
        "--refine-ess",
        type=float,
        nargs="+",
        default=list(REFINE_GRID["ess"]),
        help="the learned posterior's ess grid (chosen on A's validation; the curvature study's)",
    )
    parser.add_argument(
        "--refine-prior-precision",
        type=float,
        nargs="+",
        default=list(REFINE_GRID["prior_precision"]),
        help="the learned posterior's δ grid (chosen with --refine-ess)",
    )
    parser.add_argument("--paired-against", help="a method family whose paired test differences against every "
                        "other family are reported with 95%% intervals (e.g. ivon-learned-prior)")  # fmt: skip
    parser.add_argument("--memory-prior-scales", type=float, nargs="+", default=[1.0, 100.0],
                        help="ivon-prior-memory's grid of prior_scale (the sensitive memory: the first)")  # fmt: skip
    parser.add_argument("--l2", type=float, nargs="+", default=[0.01, 0.1, 1.0])
    parser.add_argument("--ewc", type=float, nargs="+", default=[1.0, 10.0, 100.0, 1000.0, 10000.0])
    parser.add_argument("--samples", type=int, default=10, help="posterior samples of the IVON evaluations")
    parser.add_argument("--eval-steps", type=int, default=25, help="Trainer evaluations on B's validation (0: none)")
    parser.add_argument("--eval-limit", type=int, default=None, help="evaluate only the first N of each split")
    parser.add_argument("--set", nargs="*", default=[], metavar="key=value", help="overrides for every training")
    options = parser.parse_args()
    if options.train_one:
        train_one(json.loads(options.train_one))
        return
    if not (options.out and options.runs and options.task_b):
        parser.error("--out, --runs and --task-b are required")
    from ivon_lora.tasks import get_task

    for task in (options.task_a, options.task_b):
        try:
            get_task(task)
        except KeyError as error:
            parser.error(f"task {task!r}: {error.args[0]}")
    options.recipes = {"ivon": options.recipe_ivon, "adamw": options.recipe_adamw}
    options.out, options.runs = os.path.abspath(options.out), os.path.abspath(options.runs)
    options.grid_seeds = options.grid_seeds or options.seeds
    options.reference_seeds = options.seeds if options.reference_seeds is None else options.reference_seeds
    selection = {seed: run_seed(options, seed) for seed in options.grid_seeds}
    chosen = choose({s: {k: v for k, v in r.items() if not k.startswith("after-A")} for s, r in selection.items()},
                    options)  # fmt: skip
    for family, names in families(methods(options)).items():  # a family without a grid (seeds may have skipped it)
        if len(names) == 1:
            chosen.setdefault(family, names[0])
    # Grid seeds among --seeds are reported too (the earlier studies' protocol); those apart from them only choose.
    per_seed = {
        seed: selection[seed] if seed in selection else run_seed(options, seed, chosen) for seed in options.seeds
    }
    table = summarise(per_seed, chosen, options)
    if options.paired_against:
        table[options.paired_against]["paired"] = paired_differences(per_seed, chosen, options)
    from ivon_lora.rundir import environment

    os.makedirs(options.out, exist_ok=True)
    settings = {k: v for k, v in vars(options).items() if k != "train_one"}
    from ivon_lora.fileio import write_json_atomic

    write_json_atomic(os.path.join(options.out, "study.json"),
                      {"command": " ".join(sys.argv), "settings": settings, "environment": environment(),
                       "methods": methods(options), "chosen": chosen, "summary": table, "per_seed": per_seed,
                       "selection": {s: r for s, r in selection.items() if s not in options.seeds}},
                      default=str)  # fmt: skip
    text = markdown(table, options, options.seeds)
    with open(os.path.join(options.out, "study.md"), "w") as f:
        f.write(text)
    figure(table, per_seed, os.path.join(options.out, "study.png"), options)
    print(text)


if __name__ == "__main__":
    main()
