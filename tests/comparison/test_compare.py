"""`ivon-lora compare` end to end on the tiny built-in Llama: a grid per recipe chosen on a selection seed, two reported
seeds, every baseline, the report's numbers equal to the evaluator's and its differences to the paired bootstrap;
the test split read only after the last training (the split loader is instrumented); a compare killed with SIGKILL
resumes, reusing its finished runs, and gives the report of an uninterrupted one; the plan's pieces, the ECE of the
bootstrap equal to the evaluator's, and --dry-run."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import yaml

from ivon_lora import cli

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = {
    "model_name_or_path": "builtin:tiny-llama", "lora_target": ["q_proj", "v_proj"], "lora_rank": 4, "lora_alpha": 8,
    "lora_dropout": 0.0, "dataset": "synthetic", "output_dir": "runs/tiny", "optim": "ivon", "learning_rate": 0.05,
    "ivon_ess": 1.0e9, "ivon_hess_init": 1.0e-5, "ivon_clip_radius": 0.01, "weight_decay": 0.0, "max_steps": 8,
    "max_train_samples": 128, "max_eval_samples": 16, "per_device_train_batch_size": 16,
    "per_device_eval_batch_size": 64, "save_strategy": "no", "eval_strategy": "no", "report_to": "none", "seed": 42,
    "use_cpu": True, "remove_unused_columns": False, "final_eval_samples": 2, "disable_tqdm": True,
}  # fmt: skip
ADAMW = {**{k: v for k, v in TINY.items() if not k.startswith("ivon_")}, "optim": "adamw_torch",
         "learning_rate": 0.003, "lora_dropout": 0.1, "output_dir": "runs/tiny-adamw"}  # fmt: skip
FAST = ["--limit", "32", "--bootstrap", "200", "--checkpoints", "2"]


def _recipes(tmp_path):
    paths = []
    for name, recipe in (("ivon", TINY), ("adamw", ADAMW)):
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(recipe))
        paths.append(str(path))
    return paths


@pytest.fixture(scope="module")
def compared(tmp_path_factory, monkeypatch_module):
    """One comparison of an IVON and an AdamW recipe, each with a 2-point learning-rate grid, with a log of every
    split read and every training in the order they happened."""
    from ivon_lora.commands import train
    from ivon_lora.tasks import loading

    tmp = tmp_path_factory.mktemp("compare")
    events = []
    load_records, run_train = loading.load_records, train.run_train

    def logged_records(task, split, data_files=None):
        events.append(("read", split))
        return load_records(task, split, data_files)

    def logged_train(recipe):
        events.append(("train", recipe.training.output_dir))
        return run_train(recipe)

    monkeypatch_module.setattr(loading, "load_records", logged_records)
    monkeypatch_module.setattr(train, "run_train", logged_train)
    out = tmp / "out"
    argv = ["compare", *_recipes(tmp), "--seeds", "2", "--select-seeds", "1", "--grid", "1:learning_rate=0.05,0.1",
            "--grid", "adamw:learning_rate=0.003,0.01", *FAST, "--out", str(out)]  # fmt: skip
    started = time.monotonic()
    assert cli.main(argv) == 0
    seconds = time.monotonic() - started
    return {"out": out, "events": events, "report": json.loads((out / "compare.json").read_text()),
            "seconds": seconds, "argv": argv}  # fmt: skip


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


@pytest.mark.slow
def test_compare_trains_the_grid_on_the_selection_seed_and_the_choice_on_disjoint_reported_seeds(compared):
    report = compared["report"]
    assert report["seeds"] == {"selection": [0], "reported": [1, 2]}
    runs = report["runs"]
    assert len(runs) == 2 * 2 * 1 + 2 * 2  # each grid point on the selection seed, the choice on 2 seeds
    for record in runs.values():
        assert record["recipe"]["seed"] == record["seed"]
        assert record["recipe"]["eval_split"] == "validation"  # train's own evaluation never reads test
        assert (record["seed"] in (1, 2)) == (record["stage"] == "reported")
        assert record["environment"]["cpu"]["capability"] and record["environment"]["torch"]
    for name, method in report["methods"].items():
        means = [candidate["mean"] for candidate in method["candidates"]]
        assert method["chosen"] == int(np.argmin(means))  # nll: lower is better
        chosen_rate = method["candidates"][method["chosen"]]["settings"]["learning_rate"]
        reported = [r for r in runs.values() if r["method"] == name and r["stage"] == "reported"]
        assert {str(r["recipe"]["learning_rate"]) for r in reported} == {str(float(chosen_rate))}
    assert compared["seconds"] < 60, compared["seconds"]


@pytest.mark.slow
def test_compare_reads_the_test_split_only_after_the_last_training(compared):
    events = compared["events"]
    first_test = next(i for i, event in enumerate(events) if event == ("read", "test"))
    last_training = max(i for i, event in enumerate(events) if event[0] == "train")
    assert last_training < first_test
    # And the early-stopping checkpoints were chosen before it: every validation read of a checkpoint comes first.
    assert sum(event == ("read", "validation") for event in events[:first_test]) >= 4 + 4 * 2


@pytest.mark.slow
def test_the_report_holds_the_evaluators_numbers_every_baseline_and_every_difference(compared):
    report, out = compared["report"], compared["out"]
    rows = report["rows"]
    assert set(rows) == {"ivon", "ivon + temperature", "ivon early-stopped", "ivon ensemble", "adamw",
                         "adamw + temperature", "adamw early-stopped", "adamw ensemble", "adamw MC dropout"}  # fmt: skip
    assert "mc_dropout" not in report["methods"]["ivon"]["baselines"]  # a posterior run has no dropout baseline
    for name, row in rows.items():
        for seed, eval_dir in row["eval_dirs"].items():
            result = json.loads((out / eval_dir / "eval.json").read_text())
            runs = result["tasks"]["synthetic"]["runs"]
            (label,) = [key for key in runs if not key.endswith(" + TS") and key != "ensemble"]  # the run itself
            if name == "ivon":
                expected = runs[label]["sampled"]  # the posterior predictive, S samples
            elif name == "adamw":
                expected = runs[label]["mean"]  # at its weights
            elif name == "adamw MC dropout":
                expected = runs[label]["sampled"]
            elif name.endswith("+ temperature"):
                expected = runs[f"{label} + TS"]["mean"]
            elif name.endswith("ensemble"):
                expected = runs["ensemble"]["sampled"]
            else:
                continue
            assert row["per_seed"][seed] == {c: expected[c] for c in report["metrics"]}, (name, seed)
    metrics = list(report["metrics"])
    assert {"accuracy", "nll", "brier"} <= set(metrics) and any(m.startswith("ece_") for m in metrics)
    assert len(report["differences"]) == 2 * (len(rows) - 1) * len(metrics)
    for difference in report["differences"]:
        low, high = difference["interval"]
        assert low <= difference["difference"] <= high or low == high
        assert difference["difference"] == pytest.approx(np.mean(difference["per_seed"]))
    md = (out / "compare.md").read_text()
    assert "| ivon | adamw + temperature |" in md and "95%" in md and "paired bootstrap" in md
    assert (out / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_a_second_run_reuses_everything_and_gives_the_same_report(compared, capsys):
    out = compared["out"]
    before = {path: os.stat(path).st_mtime_ns for path in out.glob("runs/*/*/*/adapter_model.safetensors")}
    assert cli.main(compared["argv"]) == 0
    again = json.loads((out / "compare.json").read_text())
    assert all(record["reused"] for record in again["runs"].values())
    assert {path: os.stat(path).st_mtime_ns for path in before} == before
    assert again["rows"] == compared["report"]["rows"] and again["differences"] == compared["report"]["differences"]


@pytest.mark.slow
def test_a_killed_compare_resumes_reusing_its_finished_runs_and_gives_the_same_report(tmp_path):
    recipe = _recipes(tmp_path)[0]
    options = [recipe, "--seeds", "2", "--select-seeds", "0", "--baselines", "ensemble", *FAST]
    reference = tmp_path / "reference"
    assert cli.main(["compare", *options, "--out", str(reference)]) == 0

    out = tmp_path / "out"
    process = subprocess.Popen([sys.executable, "-m", "ivon_lora", "compare", *options, "--out", str(out)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT,
                               env={**os.environ, "PYTHONPATH": ROOT})  # fmt: skip
    first = out / "runs" / "ivon" / "c1" / "seed0" / "metrics.json"
    deadline = time.monotonic() + 240
    while not first.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert first.exists() and not (out / "compare.json").exists()
    adapter = first.parent / "adapter_model.safetensors"
    finished = os.stat(adapter).st_mtime_ns

    assert cli.main(["compare", *options, "--out", str(out)]) == 0
    resumed = json.loads((out / "compare.json").read_text())
    assert resumed["runs"]["runs/ivon/c1/seed0"]["reused"] and os.stat(adapter).st_mtime_ns == finished
    expected = json.loads((reference / "compare.json").read_text())
    assert resumed["rows"].keys() == expected["rows"].keys()
    for name, row in expected["rows"].items():
        for seed, metrics in row["per_seed"].items():
            assert resumed["rows"][name]["per_seed"][seed] == pytest.approx(metrics, abs=1e-9), (name, seed)
    for got, want in zip(resumed["differences"], expected["differences"]):
        assert got["interval"] == pytest.approx(want["interval"], abs=1e-9)


# ------------------------------------------------------------------------------------------------ without training


def test_grid_specs_name_a_recipe_by_position_or_name_and_keep_list_values():
    from ivon_lora.comparison.plan import parse_grid, split_values

    axes = parse_grid(["learning_rate=0.1,0.2", "2:weight_decay=0,0.1", "ivon:lora_target=[q_proj, v_proj],[all-linear]"],
                      ["ivon", "adamw"])  # fmt: skip
    assert axes == [{"learning_rate": ["0.1", "0.2"], "lora_target": ["[q_proj, v_proj]", "[all-linear]"]},
                    {"learning_rate": ["0.1", "0.2"], "weight_decay": ["0", "0.1"]}]  # fmt: skip
    assert split_values("1e-3, 3e-3") == ["1e-3", "3e-3"]


@pytest.mark.parametrize(
    "spec, message",
    [("3:learning_rate=0.1", "is no recipe of this comparison"), ("seed=1,2", "compare sets seed itself"),
     ("learning_rate=", "write [N:]KEY=V1,V2"), ("learning_rate=0.1,,0.2", "write [N:]KEY=V1,V2")],
)  # fmt: skip
def test_bad_grid_specs_are_refused(spec, message):
    from ivon_lora.comparison.plan import parse_grid
    from ivon_lora.errors import UsageError

    with pytest.raises(UsageError, match=message.replace("[", r"\[")):
        parse_grid([spec], ["ivon", "adamw"])


def test_the_choice_takes_the_best_mean_over_the_selection_seeds():
    from ivon_lora.comparison.protocol import _choose

    values = {0: {0: 0.5, 1: 0.7}, 1: {0: 0.55, 1: 0.6}, 2: {0: 0.575, 1: 0.575}}
    assert _choose(values, "nll")[0] == 1  # 0.6, 0.575, 0.575: the first of the tie loses to the lower mean
    assert _choose(values, "accuracy")[0] == 0  # higher is better: 0.6
    assert _choose({0: {0: 1.0}, 1: {0: 1.0}}, "nll")[0] == 0  # a tie: the first candidate


def test_the_bootstrap_ece_is_the_evaluators():
    from ivon_lora.comparison.scoring import per_example
    from ivon_lora.evaluation.metrics import calibration_metrics

    generator = torch.Generator().manual_seed(0)
    probs = torch.softmax(3 * torch.randn(200, 4, generator=generator, dtype=torch.float64), dim=-1)
    gold = torch.randint(0, 4, (200,), generator=generator)
    for edges in ("right", "left"):
        expected = calibration_metrics(probs, gold, [10, 15], edges)
        for column in ("accuracy", "nll", "brier", "ece_10", "ece_15"):
            values, statistic = per_example(probs.numpy(), gold.numpy(), column, edges)
            mine = values.mean() if statistic is None else statistic(values[None])[0]
            assert mine == pytest.approx(expected[column], abs=1e-12), (edges, column)
        # A resample is scored as the evaluator scores the resampled examples.
        rows = np.random.default_rng(0).integers(0, 200, size=200)
        values, statistic = per_example(probs.numpy(), gold.numpy(), "ece_10", edges)
        resampled = calibration_metrics(probs[rows], gold[rows], [10], edges)["ece_10"]
        assert statistic(values[rows][None])[0] == pytest.approx(resampled, abs=1e-12)


def test_the_reported_split_cannot_be_scored_before_the_choice_is_final(tmp_path):
    from ivon_lora.comparison.protocol import Protocol
    from ivon_lora.config import CompareConfig

    config = CompareConfig(recipes=["r.yaml"], out=str(tmp_path))
    plan = type("Plan", (), {"config": config, "test_split": "test"})()
    protocol = Protocol(plan, train=None, evaluate=lambda options: pytest.fail("evaluated"))
    with pytest.raises(AssertionError, match="before the choice is final"):
        protocol.evaluated("x", run_dir=str(tmp_path), split="test")


@pytest.mark.slow
def test_dry_run_prints_the_plan_with_a_measured_step_and_writes_nothing(tmp_path, capsys):
    paths = _recipes(tmp_path)
    out = tmp_path / "out"
    argv = ["compare", *paths, "--grid", "1:learning_rate=0.05,0.1", "--grid", "2:learning_rate=0.003,0.01",
            "--dry-run", "--out", str(out)]  # fmt: skip
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "ivon: 2 candidate(s) x 1 selection seed(s) + 3 reported seeds = 5 runs of 8 steps" in printed
    assert "s per step measured" in printed and "total training about" in printed
    assert not out.exists()


def test_a_fixed_grid_override_sets_the_task_every_run_and_the_report_use(tmp_path):
    """`--grid dataset=TASK:test_size=N` (one value: a fixed override) is the task the plan scores, not the recipe's."""
    from ivon_lora.comparison.plan import resolve_plan
    from ivon_lora.config import CompareConfig

    config = CompareConfig(recipes=_recipes(tmp_path), grid=["dataset=synthetic:test_size=300"], out=str(tmp_path))
    plan = resolve_plan(config)
    assert plan.task == "synthetic:test_size=300"
    assert {recipe.data.dataset for method in plan.methods for recipe in method.recipes.values()} == {plan.task}


@pytest.mark.slow
def test_the_docs_render_a_comparison_from_its_json(compared, monkeypatch, tmp_path):
    """The README's and the study pages' tables of a comparison (docs/study_numbers.py) and its page block
    (docs/hooks.py): each cell is compare.json's number as compare.md writes it, each verdict the interval's."""
    sys.path.insert(0, os.path.join(ROOT, "docs"))
    import hooks
    import study_numbers

    from ivon_lora.comparison.report import difference_text, summary_text

    report = compared["report"]
    names = study_numbers.compare_row_names(report)
    assert names == {"ivon": "IVON, 2 posterior samples", "ivon + temperature": "IVON, posterior mean + temperature",
                     "ivon early-stopped": "IVON early-stopped", "ivon ensemble": "IVON, deep ensemble of 2 posterior means",
                     "adamw": "AdamW", "adamw + temperature": "AdamW + temperature",
                     "adamw early-stopped": "AdamW early-stopped", "adamw ensemble": "AdamW, deep ensemble of 2 seeds",
                     "adamw MC dropout": "AdamW, 2 MC-dropout samples"}  # fmt: skip
    rows = study_numbers.compare_rows_table(report).splitlines()
    for name, row in report["rows"].items():
        cells = [summary_text(row["summary"][key], key) for key, _ in study_numbers.COMPARE_COLUMNS]
        assert f"| {names[name]} | {' | '.join(cells)} |" in rows
    differences = study_numbers.compare_differences_table(report, "ivon").splitlines()
    verdicts = study_numbers.compare_verdicts(report, "ivon").splitlines()
    assert len(differences) == 2 + len(report["rows"]) - 1 and len(verdicts) == len(report["rows"]) - 1
    for other, line, verdict in zip([r for r in report["rows"] if r != "ivon"], differences[2:], verdicts):
        assert line.startswith(f"| {names[other]} | ") and verdict.startswith(f"- against {names[other]}: ")
        for key, _ in study_numbers.COMPARE_COLUMNS:
            (found,) = [d for d in report["differences"]
                        if (d["method"], d["against"], d["metric"]) == ("ivon", other, key)]  # fmt: skip
            assert difference_text(found) in line
            title = {"accuracy": "accuracy", "nll": "NLL", "ece_10": "ECE", "brier": "Brier"}[key]
            if found["verdict"] == "no clear difference":
                assert title in verdict.split("no clear difference on ")[1]
            else:
                assert f"{title} ({difference_text(found)})" in verdict.split(f"{found['verdict']} on ")[1]
    # The page block: the command, the environment, compare.md and the figure, from the committed files.
    (tmp_path / "results").mkdir()
    os.symlink(compared["out"], tmp_path / "results" / "tiny")
    monkeypatch.setattr(hooks, "ROOT", str(tmp_path))
    block = hooks.study_block("tiny", depth=1)
    table = re.sub(r"^#{1,2} ", "### ", (compared["out"] / "compare.md").read_text().strip(), flags=re.M)
    assert table in block and "rendered from `compare.json` by `ivon-lora compare`" in block
    assert f"torch {report['environment']['torch']}" in block and "(../results/tiny/compare.png)" in block
