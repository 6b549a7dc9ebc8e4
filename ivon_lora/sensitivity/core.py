"""The Memory-Perturbation Equation (Nickl et al., NeurIPS 2023, arXiv 2310.19273) for multiple-choice examples.

For example i with K answer logits f_i at the posterior mean, p_i = softmax(f_i) and label y_i:

* error e_i = p_i - onehot(y_i) (the gradient of the K-way cross-entropy in f);
* output Hessian λ_i = p_i (1 - p_i) (its diagonal);
* prediction covariance V_i = J_i Σ J_iᵀ (K x K), J_i = ∂f_i/∂θ over the adapter, Σ the posterior's diagonal
  covariance, or only its diagonal v_i;
* leave-one-out logits f_i^{\\i} ≈ f_i + V_i e_i (the MPE's form for a K-output model), whose -log softmax[y_i]
  averaged over the train set estimates the NLL on unseen data (the LOO-NLL); with the diagonal, f_i + e_i ⊙ v_i;
* sensitivity s_i = Σ_k |Δp_ik|, the first-order change of p_i when i is removed from training: Δp = Λ_i V_i e_i
  with Λ_i = diag(p_i) - p_i p_iᵀ the softmax's Jacobian; with the diagonal, λ ⊙ e ⊙ v with λ = p (1 - p).

The answers' Jacobians can be strongly correlated (an audit of the SmolLM2 studies found two answer logits' rows
0.90-0.96 correlated), so V's off-diagonal terms cancel much of e ⊙ v: the diagonal form overstates the shift.

`mpe_loo_outputs(..., downdate=True)` uses the leave-one-out posterior's variance v / (1 - λ v) instead of v
(Sherman-Morrison): for one output of a model linear in θ with a Gaussian likelihood and prior this is exact
retraining, which the tests hold it to; the default is the MPE's first-order form.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

VARIANCE_ESTIMATORS = ("exact", "sampled")


def mpe_loo_outputs(outputs, errors, variances, hessians=None, downdate: bool = False) -> torch.Tensor:
    """f + e ⊙ v: the outputs with the example removed from training (first order, or `downdate`d; see module)."""
    if downdate:
        if hessians is None:
            raise ValueError("downdate needs the output Hessians")
        variances = variances / (1.0 - hessians * variances)
    return outputs + errors * variances


@dataclass
class Sensitivity:
    """Per-example MPE quantities of N multiple-choice examples (K_max columns; absent choices masked).

    `logits` N x K at the posterior mean (-inf for absent choices), `variance` the prediction covariances N x K x K
    (or their diagonals N x K), `gold` N.
    """

    ids: list[str]
    gold: torch.Tensor
    logits: torch.Tensor
    variance: torch.Tensor
    settings: dict = field(default_factory=dict)

    def __post_init__(self):
        self.logits = self.logits.double()
        self.variance = self.variance.double()
        self.present = torch.isfinite(self.logits)
        if self.variance.dim() not in (2, 3):
            raise ValueError(
                f"Expected variances N x K or covariances N x K x K, got shape {tuple(self.variance.shape)}"
            )
        if bool((self.gold < 0).any()):
            raise ValueError("Every example needs a label (gold >= 0) for its error and sensitivity")

    @property
    def probs(self) -> torch.Tensor:
        return torch.softmax(self.logits, dim=-1)

    @property
    def error(self) -> torch.Tensor:
        onehot = torch.nn.functional.one_hot(self.gold, self.logits.shape[1]).double()
        return (self.probs - onehot).masked_fill(~self.present, 0.0)

    @property
    def hessian(self) -> torch.Tensor:
        probs = self.probs
        return probs * (1.0 - probs)

    @property
    def full(self) -> bool:
        """Whether the K x K covariances are held (else their diagonals)."""
        return self.variance.dim() == 3

    @property
    def diagonal(self) -> torch.Tensor:
        """v_i, N x K: the covariances' diagonals."""
        return torch.diagonal(self.variance, dim1=1, dim2=2) if self.full else self.variance

    @property
    def shift(self) -> torch.Tensor:
        """Δf_i, the change of the logits when i is removed: V_i e_i (or e_i ⊙ v_i), N x K."""
        if self.full:
            return torch.einsum("nkl,nl->nk", self.variance, self.error)
        return self.error * self.variance

    @property
    def sensitivity(self) -> torch.Tensor:
        """s_i = Σ_k |Δp_ik|, N float64 (see the module)."""
        if self.full:
            probs = self.probs.masked_fill(~self.present, 0.0)
            jacobian = torch.diag_embed(probs) - probs[:, :, None] * probs[:, None, :]
            return torch.einsum("nkl,nl->nk", jacobian, self.shift).abs().sum(dim=1)
        return (self.error * self.hessian * self.variance).abs().sum(dim=1)

    @property
    def loo_logits(self) -> torch.Tensor:
        loo = self.logits.masked_fill(~self.present, 0.0) + self.shift
        return loo.masked_fill(~self.present, float("-inf"))

    def _label_log_prob(self, logits) -> torch.Tensor:
        return torch.log_softmax(logits, dim=-1).gather(1, self.gold[:, None])[:, 0]

    @property
    def loss(self) -> torch.Tensor:
        """-log p_i[y_i] at the posterior mean, N."""
        return -self._label_log_prob(self.logits)

    @property
    def loo_label_prob(self) -> torch.Tensor:
        return self._label_log_prob(self.loo_logits).exp()

    @property
    def prediction(self) -> torch.Tensor:
        return self.logits.argmax(dim=1)

    def loo_nll(self) -> float:
        """The LOO-NLL estimate: mean over examples of -log softmax(f + e ⊙ v)[y]."""
        return float(-self._label_log_prob(self.loo_logits).mean())

    def summary(self) -> dict:
        """Set-level numbers: LOO-NLL estimate, NLL and accuracy at the mean, sensitivity quantiles."""
        s = self.sensitivity
        quantiles = torch.quantile(s, torch.tensor([0.5, 0.9, 0.99], dtype=torch.float64)).tolist() if len(s) else []
        return {
            "num_examples": len(self.ids),
            "loo_nll": self.loo_nll(),
            "nll": float(self.loss.mean()),
            "accuracy": float((self.prediction == self.gold).double().mean()),
            "sensitivity": dict(zip(("median", "p90", "p99"), quantiles), mean=float(s.mean()), max=float(s.max())),
            "variance_mean": float(self.diagonal[self.present].mean()),
        }

    def rows(self):
        """One dict per example (the per-example jsonl): id, label, prediction, error (|e| of the label: 1 - p_y),
        the K errors and variances, sensitivity, LOO probability of the label, loss."""
        probs, error, sens = self.probs, self.error, self.sensitivity
        loo_prob, loss = self.loo_label_prob, self.loss
        for i, example_id in enumerate(self.ids):
            k = int(self.present[i].sum())
            label = int(self.gold[i])
            yield {
                "id": example_id,
                "label": label,
                "prediction": int(self.prediction[i]),
                "label_prob": float(probs[i, label]),
                "error": float(-error[i, label]),
                "errors": error[i, :k].tolist(),
                "variance": self.diagonal[i, :k].tolist(),
                **({"covariance": self.variance[i, :k, :k].tolist()} if self.full else {}),
                "sensitivity": float(sens[i]),
                "loo_label_prob": float(loo_prob[i]),
                "loss": float(loss[i]),
            }

    def ranking(self) -> list[int]:
        """Example indices, most sensitive first (ties: by position)."""
        return torch.sort(self.sensitivity, descending=True, stable=True).indices.tolist()
