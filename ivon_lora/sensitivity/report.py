"""What `ivon-lora sensitivity` writes: the ranked list as text and the figure."""

from __future__ import annotations

import math


def ranked_lines(sensitivity, flipped: dict[str, bool] | None = None, limit: int | None = None) -> list[str]:
    """The examples, most sensitive first, one line each (a header first); `limit` lines of examples at most."""
    rows = list(sensitivity.rows())
    order = sensitivity.ranking()
    header = f"{'rank':>5} {'sensitivity':>11} {'loss':>7} {'p(label)':>8} {'LOO p':>7} label pred" + (
        " flipped" if flipped else "") + " id"  # fmt: skip
    lines = [header]
    for rank, i in enumerate(order[:limit] if limit is not None else order, start=1):
        row = rows[i]
        mark = (" " + ("yes" if flipped.get(row["id"]) else "no").rjust(7)) if flipped else ""
        lines.append(f"{rank:>5} {row['sensitivity']:>11.3e} {row['loss']:>7.3f} {row['label_prob']:>8.3f} "
                     f"{row['loo_label_prob']:>7.3f} {row['label']:>5} {row['prediction']:>4}{mark} {row['id']}")  # fmt: skip
    return lines


def plot_sensitivity(sensitivity, path: str, title: str, flipped: dict[str, bool] | None = None) -> None:
    """Two panels: the distribution of log10 s_i (flipped and clean apart when known), and the examples ranked by
    sensitivity against their loss at the posterior mean (flipped labels marked)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = sensitivity.sensitivity.tolist()
    loss = sensitivity.loss.tolist()
    floor = min((v for v in s if v > 0), default=1e-30)
    logs = [math.log10(max(v, floor)) for v in s]
    marked = [bool(flipped.get(i)) for i in sensitivity.ids] if flipped else [False] * len(s)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    if any(marked):
        left.hist([[v for v, m in zip(logs, marked) if not m], [v for v, m in zip(logs, marked) if m]], bins=30,
                  stacked=True, color=["C0", "C3"], label=["label as given", "label flipped (known)"])  # fmt: skip
        left.legend()
    else:
        left.hist(logs, bins=30, color="C0")
    left.set(xlabel="log10 sensitivity s_i = Σ_k |e λ v|", ylabel="training examples",
             title="How much each example's prediction\nwould move if it were left out")  # fmt: skip
    order = sensitivity.ranking()
    ranks = range(1, len(order) + 1)
    right.scatter(ranks, [loss[i] for i in order], s=10, c=["C3" if marked[i] else "C0" for i in order])
    if any(marked):
        right.scatter([], [], c="C3", s=10, label="label flipped (known)")
        right.legend()
    right.set(xlabel="rank by sensitivity (1 = most sensitive)", ylabel="loss -log p(label) at the posterior mean",
              title="Examples ranked by sensitivity, against their loss")  # fmt: skip
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
