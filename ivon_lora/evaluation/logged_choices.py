"""Choice probabilities from the multiple-choice samples that lm-evaluation-harness logs (`--log_samples`).

For a multiple-choice task lm-eval logs, per document, `doc_id`, the gold index `target`, one
`[loglikelihood, is_greedy]` pair per choice in `filtered_resps` (the summed log-probability of the choice's
continuation after the prompt) and its per-document scores `acc` and `acc_norm`. The probabilities here are the
softmax of the choices' log-likelihoods, the distribution whose argmax is lm-eval's `acc`. `acc_norm` ranks the
choices by log-likelihood per byte of the choice text: a ranking, not a distribution, so it is reported beside the
metrics, not turned into probabilities. Rows are plain dicts, from `simple_evaluate(..., log_samples=True)["samples"]`
or from the `samples_TASK_DATE.jsonl` files lm-eval writes (which hold the numbers as text); reading needs no
lm-eval install.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import torch


@dataclass
class LoggedChoices:
    """One task's logged multiple-choice rows: per document its choices' log-likelihoods and gold index."""

    task: str
    doc_ids: list[int]
    gold: torch.Tensor  # N, long
    loglikelihoods: list[list[float]]  # per document, one per choice (documents may have different K)
    acc: list[float]  # lm-eval's per-document scores, as logged
    acc_norm: list[float] | None

    @property
    def num_choices(self) -> list[int]:
        return [len(values) for values in self.loglikelihoods]

    def probs(self) -> torch.Tensor:
        """N x K_max float64 softmax of each document's choice log-likelihoods; absent choices get 0."""
        probs = torch.zeros(len(self.doc_ids), max(self.num_choices), dtype=torch.float64)
        for i, values in enumerate(self.loglikelihoods):
            probs[i, : len(values)] = torch.softmax(torch.tensor(values, dtype=torch.float64), dim=0)
        return probs

    def lm_eval_scores(self) -> dict:
        """lm-eval's own accuracy numbers over these documents (means of its logged per-document scores)."""
        scores = {"acc": sum(self.acc) / len(self.acc)}
        if self.acc_norm is not None:
            scores["acc_norm"] = sum(self.acc_norm) / len(self.acc_norm)
        return scores


def read_logged_samples(path: str) -> list[dict]:
    """The rows of an lm-eval `samples_TASK_DATE.jsonl` file."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def logged_choices(task: str, rows: list[dict]) -> LoggedChoices:
    """Check and collect one task's logged rows; a row that is not multiple choice is an error naming it."""
    if not rows:
        raise ValueError(f"lm-eval task {task!r}: no logged samples")
    doc_ids, gold, loglikelihoods, acc, acc_norm = [], [], [], [], []
    for row in sorted(rows, key=lambda r: r["doc_id"]):
        where = f"lm-eval task {task!r}, doc_id {row.get('doc_id')}"
        responses = row.get("filtered_resps")
        if "acc" not in row or not isinstance(responses, list) or len(responses) < 2:
            raise ValueError(f"{where}: not a multiple-choice row (needs one logged log-likelihood per choice and "
                             "lm-eval's acc); calibration covers output_type: multiple_choice tasks only")  # fmt: skip
        if row.get("filter", "none") != "none" or any(
            not isinstance(r, (list, tuple)) or len(r) != 2 for r in responses
        ):
            raise ValueError(f"{where}: expected unfiltered [loglikelihood, is_greedy] pairs, got {responses[:2]}...")
        target = row.get("target")
        if isinstance(target, str) and target.isdigit():  # the jsonl files hold it as text
            target = int(target)
        if isinstance(target, bool) or not isinstance(target, int) or not 0 <= target < len(responses):
            raise ValueError(f"{where}: target {target!r} is not one choice index in [0, {len(responses)})")
        doc_ids.append(row["doc_id"])
        gold.append(target)
        loglikelihoods.append([float(r[0]) for r in responses])
        acc.append(float(row["acc"]))
        acc_norm.append(float(row["acc_norm"]) if "acc_norm" in row else None)
    return LoggedChoices(task, doc_ids, torch.tensor(gold, dtype=torch.long), loglikelihoods, acc,
                         None if None in acc_norm else acc_norm)  # fmt: skip
