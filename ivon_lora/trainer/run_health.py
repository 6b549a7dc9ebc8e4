"""A run's health under the IVON Trainer: the divergence checks, and the `train_loss` total kept across resumes.

Every optimizer step checks its losses and gradient norms (one host sync per step) and stops a diverged run with
one `TrainingDivergedError` that says which step, what survives and what to change; a checkpoint or final save of
non-finite weights is refused. `TrainLossTotal` keeps the sum of the training losses in every checkpoint, so that a
resumed run's `train_loss` is the mean over all its steps. Mixed into `IVONTrainerMixin`; with any optimizer.
"""

from __future__ import annotations

import logging
import os

import torch
import torch.distributed
from torch.distributed.tensor import DTensor
from transformers.trainer_callback import ExportableState, TrainerCallback
from transformers.trainer_utils import get_last_checkpoint

from ..errors import TrainingDivergedError

logger = logging.getLogger(__name__)


def _local(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


class TrainLossTotal(TrainerCallback, ExportableState):
    """The sum of the training losses so far, kept in every checkpoint's trainer_state.json: a resumed run's
    `train_loss` is then the mean over all its steps, equal to the uninterrupted run's (the Trainer's own counts only
    the steps since the resume)."""

    def __init__(self, total: float = 0.0):
        self.total = total

    def state(self) -> dict:
        return {"args": {}, "attributes": {"total": self.total}}


class RunHealthMixin:
    """The divergence checks and the loss total of `IVONTrainerMixin` (see the module docstring)."""

    def _init_run_health(self) -> None:
        self._step_losses: list[torch.Tensor] = []  # the current step's micro-batch (and sample) losses, on device
        # The sum of what training_step returns (what the Trainer sums for its loss), in float64 on the device, from
        # the run's first step: a resume starts it from the checkpoint's TrainLossTotal.
        self._loss_total: torch.Tensor | None = None
        self._loss_total_from_start = True
        self._loss_total_saved = TrainLossTotal()
        self.add_callback(self._loss_total_saved)

    def _diverged(self, what: str) -> TrainingDivergedError:
        """The error that stops a diverged run: which step, what went non-finite, what survives, what to change."""
        step = self.state.global_step + 1
        output_dir = self.args.output_dir
        last = get_last_checkpoint(output_dir) if output_dir and os.path.isdir(output_dir) else None
        kept = f"the last good checkpoint is {last}" if last else "no checkpoint was saved before it"
        return TrainingDivergedError(
            f"Training diverged at step {step}: {what} is NaN or inf; {kept}, and no final adapter or posterior was "
            "written. Lower learning_rate (or, for IVON, keep ivon_clip_radius finite, e.g. 1e-3) and retrain."
        )

    def _check_finite(self, losses: list[torch.Tensor], grad_norms: list[torch.Tensor]) -> None:
        """Raise if a loss or a gradient norm of this optimizer step is NaN or inf: one host sync per step (the
        values stay on the device while the micro-batches run), before the optimizer applies the step."""
        values = [value.detach().float().reshape(()) for value in (*losses, *grad_norms)]
        if not values or bool(torch.isfinite(torch.stack([v.to(values[0].device) for v in values])).all()):
            return
        loss_finite = all(bool(torch.isfinite(loss)) for loss in losses)
        raise self._diverged("the training loss" if not loss_finite else "the gradient")

    def _check_step_finite(self, grad_norms: list[torch.Tensor]) -> None:
        losses, self._step_losses = self._step_losses, []
        self._check_finite(losses, grad_norms)

    def _check_finite_weights(self) -> None:
        model = self.accelerator.unwrap_model(self.model)
        params = [p for p in model.parameters() if p.requires_grad]
        finite = all(bool(_local(p).isfinite().all()) for p in params)
        sharded = [p for p in params if isinstance(p, DTensor)]
        if sharded:  # FSDP2: each rank sees its own shards; all ranks raise if any shard diverged
            flag = torch.tensor([0.0 if finite else 1.0], device=_local(sharded[0]).device)
            torch.distributed.all_reduce(flag, group=sharded[0].device_mesh.get_group())
            finite = float(flag) == 0.0
        if not finite:
            raise self._diverged("a trained weight")

    def _save_checkpoint(self, model, trial):
        self._check_finite_weights()  # a checkpoint of NaN weights would be the one a resume picks
        self._loss_total_saved.total = self._world_loss_total()  # every rank calls this: the reduce is collective
        return super()._save_checkpoint(model, trial)

    def train(self, *args, **kwargs):
        self._loss_total = None
        return super().train(*args, **kwargs)

    def _add_to_loss_total(self, loss: torch.Tensor) -> None:
        if self._loss_total is None:  # the first step of this train(): a resumed state holds the total so far
            saved = (self.state.stateful_callbacks or {}).get(TrainLossTotal.__name__)
            resumed = self.state.global_step > 0
            self._loss_total_from_start = not resumed or saved is not None
            start = saved["attributes"]["total"] if resumed and saved is not None else 0.0
            self._loss_total = torch.tensor(start, dtype=torch.float64, device=loss.device)
        self._loss_total += loss.detach().to(torch.float64)

    def _world_loss_total(self) -> float:
        """The loss total, averaged over the ranks as the Trainer averages its logged loss."""
        if self._loss_total is None:
            return self._loss_total_saved.total
        if self.args.world_size > 1:
            return float(self.accelerator.reduce(self._loss_total.clone(), reduction="mean"))
        return float(self._loss_total)

    def log(self, logs: dict, *args, **kwargs) -> None:
        if "train_loss" in logs and self._loss_total is not None:  # the end of train(), on every rank
            if self._loss_total_from_start:
                logs["train_loss"] = self._world_loss_total() / max(self.state.global_step, 1)
            else:
                logger.warning("train_loss covers only the steps since the resume: the checkpoint was saved by an "
                               "older ivon-lora, which did not keep the loss of the steps before it")  # fmt: skip
        return super().log(logs, *args, **kwargs)
