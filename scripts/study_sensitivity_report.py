"""study.json, study.md and study.png of scripts/study_sensitivity.py, from its cached parts (whatever has run)."""

from __future__ import annotations

import json
import os
import statistics
import sys

PARTS = {"a": "(a) against retraining", "b": "(b) flipped-label recovery", "c": "(c) cleaning",
         "d": "(d) LOO-NLL vs validation NLL",
         "e": "(e) the posterior as trained against the learned one, at ess = N with a fitted prior"}  # fmt: skip


def _mean_std(values) -> str:
    """The mean and, in brackets, each seed's value."""
    from ivon_lora.comparison.stats import summarize

    summary = summarize(values)
    if summary.n == 1:
        return f"{summary.mean:.3f}"
    return f"{summary.mean:.3f} ({', '.join(f'{v:.3f}' for v in summary.values)})"


def tables(parts: dict) -> str:
    lines = []
    if "a" in parts:
        a = parts["a"]
        lines += [f"## {PARTS['a']}", "",
                  f"{len(a['removed'])} removals ({len(a['top'])} top by s_i, the rest at random), warm-started retraining "
                  f"of {a['steps']} IVON steps at lr {a['lr']} (dropout off, same batches and noise as the control) from "
                  f"{os.path.basename(os.path.dirname(a['checkpoint']))}/{os.path.basename(a['checkpoint'])} "
                  f"({a.get('recipe', {}).get('model_name_or_path', '')}). Spearman of the removed example's movement Σ_k|Δp_k| with:", "",
                  "| score | all removals | random half |", "|---|---|---|",
                  f"| sensitivity s_i | {a['spearman']['sensitivity']:.3f} | {a['spearman_random_half']['sensitivity']:.3f} |",
                  f"| loss | {a['spearman']['loss']:.3f} | {a['spearman_random_half']['loss']:.3f} |",
                  f"| variance alone | {a['spearman']['variance']:.3f} | |", ""]  # fmt: skip
    if "b" in parts:
        b = {k: v for k, v in parts["b"].items() if k.isdigit()}
        names = list(next(iter(b.values()))["detection"])
        lines += [f"## {PARTS['b']}", "", f"Seeds {', '.join(b)} (mean, each seed in brackets); 38 of 256 train labels flipped "
                  "(precision of a random ranking: 0.148).", "",
                  "| ranking | AUROC | precision at 15% |", "|---|---|---|"]  # fmt: skip
        if parts["b"].get("note"):
            lines[-3:-3] = [f"Note: {parts['b']['note']}."]
        for name in names:
            lines.append(f"| {name.replace('|', chr(92) + '|')} | {_mean_std(s['detection'][name]['auroc'] for s in b.values())} | "
                         f"{_mean_std(s['detection'][name]['precision_at_15'] for s in b.values())} |")  # fmt: skip
        lines.append("")
    if "c" in parts:
        c = {k: v for k, v in parts["c"].items() if isinstance(v, dict) and "test" in v}
        lines += [f"## {PARTS['c']}", "", "Seed 0, test split (300): IVON at the mean and with 10 samples; AdamW at its "
                  "weights.", "", "| run | flipped among dropped | acc | NLL | ECE | acc (S=10) | NLL (S=10) | ECE (S=10) |",
                  "|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for key, value in c.items():
            mean, sampled = value["test"]["mean"], value["test"].get("sampled")
            cells = [f"{mean['accuracy']:.3f}", f"{mean['nll']:.3f}", f"{mean['ece_10']:.3f}"]
            cells += (
                [f"{sampled['accuracy']:.3f}", f"{sampled['nll']:.3f}", f"{sampled['ece_10']:.3f}"]
                if sampled
                else ["", "", ""]
            )
            lines.append(f"| {key} | {value.get('flipped_dropped', '')} | " + " | ".join(cells) + " |")
        lines.append("")
    if "d" in parts:
        d = {k: v for k, v in parts["d"].items() if "/" in k}
        lines += [f"## {PARTS['d']}", "", "| seed | step | train NLL | LOO-NLL (ess 1e6) | LOO-NLL (ess N=256) | "
                  "validation NLL |", "|---|---|---|---|---|---|"]  # fmt: skip
        for value in d.values():
            lines.append(f"| {value['seed']} | {value['step']} | {value['train_nll']:.3f} | {value['loo_nll']:.3f} | "
                         f"{value['loo_nll_ess_n']:.3f} | {value['validation_nll']:.3f} |")  # fmt: skip
        lines.append("")
    if "e" in parts:
        lines += _e_tables(parts["e"])
    return "\n".join(lines)


def _interval(entry: dict, digits: int = 3) -> str:
    from ivon_lora.comparison.stats import interval_text

    return interval_text(entry["difference"], entry["interval"], digits=digits, signed=True)


def _e_tables(e: dict) -> list[str]:
    from ivon_lora.comparison.stats import markdown_table

    fit, seeds = e["fit"], ", ".join(str(seed) for seed in e["seeds"])
    lines = [f"## {PARTS['e']}", "",
             f"All {fit['num_train']} train examples, the full K x K covariance, precision N·h + δ with N = "
             f"{fit['num_train']}: h is IVON's own (trained) or the exact diagonal GGN at the mean (learned, what `refine "
             f"--method ggn` computes). The validation NLL is under the train split's 15% label noise, in expectation over "
             f"the flips ({fit['num_validation']} questions). δ was fitted on seed {e['fit_seed']} alone, as the LOO-NLL "
             f"nearest its validation NLL ({fit['validation_noisy_nll']:.3f}):", ""]  # fmt: skip
    by_prior = {name: {row["prior_precision"]: row for row in rows} for name, rows in fit["posteriors"].items()}
    table = []
    for prior in e["prior_grid"]:
        cells = [f"{prior:g}"]
        for name in ("trained", "learned"):
            row = by_prior[name][prior]
            chosen = " (fitted)" if prior == e["fitted_prior_precision"][name] else ""
            cells += [f"{row['loo_nll']:.3f}{chosen}", f"{row['auroc']['sensitivity']:.3f}"]
        table.append(cells)
    lines += [markdown_table(["δ", "trained: LOO-NLL", "trained: AUROC s_i", "learned: LOO-NLL", "learned: AUROC s_i"],
                             table).rstrip("\n"), "",
              f"Seeds {seeds} at the fitted δ: the mean over the seeds of each estimate minus the validation NLL, with its "
              "95% bootstrap interval (train and validation examples drawn independently, each draw shared by the seeds); "
              "the train NLL is the estimate that ignores the posterior.", ""]  # fmt: skip
    gaps = e["intervals"]["gaps"]
    rows = [[name, f"{e['fitted_prior_precision'][name]:g}", _interval(gaps[f"{name}/loo_nll"]),
             _interval(gaps[f"{name}/train_nll"])] for name in ("trained", "learned")]  # fmt: skip
    lines += [markdown_table(["posterior", "δ", "LOO-NLL - validation NLL", "train NLL - validation NLL"], rows).rstrip("\n"), "",
              f"Finding the 38 flipped train labels on seeds {seeds}: AUROC differences, paired over the train examples "
              "(95% bootstrap interval).", ""]  # fmt: skip
    rows = [[key, _interval(value), ", ".join(f"{v:+.3f}" for v in value["per_seed"])]
            for key, value in e["intervals"]["auroc"].items()]  # fmt: skip
    lines += [markdown_table(["AUROC difference", "mean over seeds [95% CI]", "per seed"], rows).rstrip("\n"), ""]
    return lines


def figure(parts: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    present = [name for name in "abcde" if name in parts]
    fig, row = plt.subplots(1, len(present), figsize=(5 * len(present), 4.5), squeeze=False)
    axes = {ord(name) - ord("a"): ax for name, ax in zip(present, row[0])}
    if "a" in parts:
        a = parts["a"]
        top = len(a["top"])
        axes[0].scatter(a["sensitivity"][:top], a["movement"][:top], label="top by s_i", color="C3")
        axes[0].scatter(a["sensitivity"][top:], a["movement"][top:], label="random", color="C0")
        axes[0].set(xscale="log", yscale="log", xlabel="predicted: sensitivity s_i",
                    ylabel="retrained: Σ|Δp| of the removed example",
                    title=f"(a) removal vs. MPE (Spearman {a['spearman']['sensitivity']:.2f})")  # fmt: skip
        axes[0].legend()
    if "b" in parts:
        b = {k: v for k, v in parts["b"].items() if k.isdigit()}
        names = list(next(iter(b.values()))["detection"])
        values = [[s["detection"][n]["auroc"] for s in b.values()] for n in names]
        axes[1].bar(range(len(names)), [statistics.mean(v) for v in values],
                    yerr=[statistics.stdev(v) if len(v) > 1 else 0 for v in values], color="C2")  # fmt: skip
        axes[1].set_xticks(range(len(names)), [n.replace(" (", "\n(") for n in names], fontsize=8)
        axes[1].axhline(0.5, color="gray", ls="--")
        axes[1].set(ylabel="AUROC of flipped labels", title="(b) finding the 38 flipped train labels", ylim=(0, 1))
    if "c" in parts:
        c = {k: v for k, v in parts["c"].items() if isinstance(v, dict) and "test" in v}
        keys = list(c)
        axes[2].barh(range(len(keys)), [c[k]["test"]["mean"]["nll"] for k in keys], color="C1")
        axes[2].set_yticks(range(len(keys)), keys, fontsize=7)
        axes[2].set(xlabel="test NLL at the mean", title="(c) retrained without 15% of train")
    if "d" in parts:
        d = {k: v for k, v in parts["d"].items() if "/" in k}
        for seed in sorted({v["seed"] for v in d.values()}):
            rows = sorted((v for v in d.values() if v["seed"] == seed), key=lambda v: v["step"])
            steps = [v["step"] for v in rows]
            axes[3].plot(
                steps, [v["validation_nll"] for v in rows], "k-", label="validation NLL" if seed == 0 else None
            )
            # The estimate as `ivon_loo_eval` logs it (the posterior as trained); the ess = N rescaling is in the table.
            axes[3].plot(steps, [v["loo_nll"] for v in rows], "C3--", label="LOO-NLL estimate" if seed == 0 else None)
            axes[3].plot(steps, [v["train_nll"] for v in rows], "C0:", label="train NLL" if seed == 0 else None)
        axes[3].set(xlabel="training step", ylabel="NLL", title="(d) train-only LOO-NLL vs. validation")
        axes[3].legend()
    if "e" in parts:
        fit = parts["e"]["fit"]
        for name, color in (("trained", "C0"), ("learned", "C3")):
            rows = fit["posteriors"][name]
            axes[4].plot([r["prior_precision"] for r in rows], [r["loo_nll"] for r in rows], "o-", color=color,
                         label=f"LOO-NLL, {name} h")  # fmt: skip
        axes[4].axhline(fit["validation_noisy_nll"], color="k", label="validation NLL (15% noise)")
        axes[4].axhline(fit["posteriors"]["learned"][0]["train_nll"], color="gray", ls=":", label="train NLL")
        axes[4].set(xscale="log", yscale="log", xlabel="prior precision δ (precision N·h + δ)", ylabel="NLL",
                    title=f"(e) fitting δ at ess = N (seed {parts['e']['fit_seed']})")  # fmt: skip
        axes[4].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(args, parts: dict) -> None:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from ivon_lora.config import load_recipe
    from ivon_lora.rundir import environment

    recipes = {m: load_recipe(path, for_training=False).resolved()
               for m, path in {"ivon": "recipes/smollm2/wordfacts-ivon.yaml",
                               "adamw": "recipes/smollm2/wordfacts-adamw.yaml"}.items()}  # fmt: skip
    payload = {"command": " ".join(["python", "scripts/study_sensitivity.py", *sys.argv[1:]]),
               "settings": {k: v for k, v in vars(args).items()}, "recipes": recipes, "environment": environment(),
               "parts": parts}  # fmt: skip
    with open(os.path.join(args.out, "study.json"), "w") as f:
        json.dump(payload, f, indent=1, default=str)
    with open(os.path.join(args.out, "study.md"), "w") as f:
        commands = "\n".join(f"- {PARTS[name]}: `{part['command']}`" for name, part in sorted(parts.items())
                              if isinstance(part, dict) and part.get("command"))  # fmt: skip
        f.write(
            f"# Sensitivity study (wordfacts, SmolLM2-135M)\n\nThe parts were made by:\n\n{commands}\n\n{tables(parts)}"
        )
    figure(parts, os.path.join(args.out, "study.png"))
