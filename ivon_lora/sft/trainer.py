"""IVON in TRL's `SFTTrainer`: `IVONSFTConfig` and `IVONSFTTrainer`.

Everything TRL's SFT does keeps working (conversational `messages` and prompt-completion datasets, the tokenizer's
chat template, completion-only and assistant-only loss, packing, `max_length`): the trainer is TRL's, with
`IVONTrainerMixin` in front of it. What IVON changes:

* gradient accumulation and data parallelism are exact for the token-level loss: TRL normalises each micro-batch's
  summed token loss by the accumulated batch's token count (`num_items_in_batch`), and the mixin weighs each
  posterior sample's recorded gradient by it (see `ivon_lora.trainer.ivon_trainer`);
* a packed row (`packing=True`) is, for IVON, one micro-batch's worth of tokens like any other: the loss and the
  weighting count tokens, not rows, so packing changes neither;
* with `ivon_eval_samples` = S > 0 each evaluation also reports the validation loss and perplexity of the
  S-sample posterior predictive (`eval_sampled_loss`, `eval_sampled_perplexity`, and `eval_sampled_expected_loss`,
  a single sample's), next to TRL's `eval_loss` at the posterior mean (`ivon_lora.sft.likelihood`).

`ivon_ess` for a token-level likelihood: the loss is the mean over target tokens, so the log-likelihood IVON's
posterior weighs against the prior is ess x that mean, and the exact Bayesian posterior has ess = the number of
target tokens in the train set (every token is one term of the likelihood; counting sequences would temper the
posterior by the mean target length). The default is that count, taken from the tokenized train set (labels
other than -100, as the loss counts them), raised like every objective's so that the initial posterior std is at
most 0.032 (docs/guides/sft.md, "What `ivon_ess` means for SFT").
"""

from __future__ import annotations

from collections.abc import Sized
from dataclasses import dataclass

import numpy as np

from ..posterior import Posterior
from ..trainer import IVONTrainerMixin, IVONTrainingArguments
from .likelihood import predictive_losses

try:
    from trl import SFTConfig, SFTTrainer
except ImportError as error:  # pragma: no cover - exercised without the extra installed
    raise ImportError('IVONSFTTrainer and IVONSFTConfig need TRL: pip install "ivon-lora[sft]" (trl>=1.16)') from error


@dataclass
class IVONSFTConfig(IVONTrainingArguments, SFTConfig):
    """TRL's `SFTConfig` plus IVON's hyperparameters (`IVONTrainingArguments`); `optim` defaults to 'ivon'.

    Every `trl.SFTConfig` field (`max_length`, `packing`, `assistant_only_loss`, `completion_only_loss`, ...) and
    every IVON field of `IVONTrainingArguments` is accepted, with the same meaning. `ivon_ess`'s default is the
    number of target tokens of the tokenized train set (see the module's doc), with the same floor as every
    objective; `ivon_eval_samples` = S adds the S-sample predictive's validation loss and perplexity to every
    evaluation.

    Example:
        ```python
        args = IVONSFTConfig(output_dir="out", learning_rate=0.2, ivon_clip_radius=1e-3, max_steps=2000, bf16=True)
        ```
    """


class IVONSFTTrainer(IVONTrainerMixin, SFTTrainer):
    """TRL's `SFTTrainer` training with IVON (or, with `optim` != 'ivon', the optimizer named), see the module doc.
    `args=None` gives `IVONSFTConfig`'s defaults.

    Example:
        ```python
        trainer = IVONSFTTrainer(model="Qwen/Qwen2.5-0.5B-Instruct", args=IVONSFTConfig(output_dir="out"),
                                 train_dataset=dataset, peft_config=LoraConfig(r=16, target_modules="all-linear"))
        trainer.train()
        trainer.save_model()  # adapter + posterior.safetensors + posterior_config.json
        ```

    Args:
        model: a model id, a local model dir or a model, as `trl.SFTTrainer` takes it.
        args: an `IVONSFTConfig` (a plain `SFTConfig` is refused: it would train with AdamW); None gives its defaults.
        *more: `trl.SFTTrainer`'s further positional arguments.
        prior: a previous run's `Posterior` as IVON's prior (continual finetuning).
        prior_provenance: what to record about the prior's run in the saved posterior.
        **kwargs: `trl.SFTTrainer`'s keyword arguments (`train_dataset`, `eval_dataset`, `peft_config`,
            `processing_class`, ...).

    Raises:
        TypeError: `args` is not an `IVONSFTConfig` (or another class inheriting `IVONTrainingArguments`).
    """

    default_args_class = IVONSFTConfig

    def likelihood_size(self) -> int:
        """The number of target tokens in the tokenized train set: the terms the token-level loss averages over.

        Returns:
            The count of labels other than -100 (each document's first token excluded); for a train set without
            labels, its number of rows.
        """
        dataset = self.train_dataset
        if not isinstance(dataset, Sized) or "labels" not in (dataset.column_names or []):
            return super().likelihood_size()  # no length: its error; no labels (skip_prepare_dataset): rows
        return target_token_count(dataset)

    def sampled_evaluation_metrics(self, eval_dataset, num_samples: int, ignore_keys, metric_key_prefix) -> dict:
        """Validation loss and perplexity of the `num_samples`-sample posterior predictive (sequence-level average).

        The samples come from a generator of their own seeded by `seed`, as in `posterior_sample_outputs`: evaluating
        never moves the optimizer's noise stream.

        Args:
            eval_dataset: the evaluation set, as in `evaluate`.
            num_samples: S, the posterior samples.
            ignore_keys: unused (the signature is the mixin's hook).
            metric_key_prefix: unused (the mixin prefixes the names).

        Returns:
            The sampled predictive's `loss`, `perplexity` and `expected_loss` (a single sample's), by name.
        """
        batches = self.evaluation_batches(eval_dataset)
        model = self.accelerator.unwrap_model(self.model)
        posterior = Posterior.from_optimizer(self.ivon_optimizer, model)
        with self.compute_loss_context_manager():  # the training's autocast
            result = predictive_losses(model, batches, posterior, num_samples, self.args.seed, at_mean=False,
                                       **self.document_gathering(eval_dataset))  # fmt: skip
        return result["sampled"]

    def evaluation_batches(self, eval_dataset=None) -> list[dict]:
        """The evaluation set as this process's collated batches on the model's device, built once and read for
        every posterior sample (`sft.likelihood.predictive_losses` takes them). `eval_dataset` as in `evaluate`."""
        batches = [self._prepare_inputs(batch)
                   for batch in self.get_eval_dataloader(self._prepared_eval_dataset(eval_dataset))]  # fmt: skip
        if self.accelerator.num_processes > 1 and any("attention_mask" not in batch for batch in batches):
            # gather_for_metrics drops the padded repeats of the last batch by row, which a packed row of several
            # documents would miscount.
            raise ValueError(
                "Evaluating an SFT run's loss under data parallelism needs unpacked evaluation rows: set "
                "eval_packing=False (and padding_free=False)."
            )
        return batches

    def document_gathering(self, eval_dataset=None) -> dict:
        """`predictive_losses`' gather arguments: every rank's documents of `eval_dataset` (as in `evaluate`), once
        each. Under data parallelism the rows are documents (`evaluation_batches` refuses packed ones)."""
        if self.accelerator.num_processes == 1:
            return {}
        return {"gather": self.accelerator.gather, "num_documents": len(self._prepared_eval_dataset(eval_dataset))}

    def _prepared_eval_dataset(self, eval_dataset):
        """The evaluation dataset as `SFTTrainer.evaluate` tokenizes it (a name picks one prepared at init)."""
        if eval_dataset is None:
            eval_dataset = self.eval_dataset
            if isinstance(eval_dataset, dict):  # TRL's dict of named evaluation sets, each prepared at init
                names = ", ".join(map(str, eval_dataset))
                raise ValueError(
                    f"This trainer has {len(eval_dataset)} named evaluation datasets ({names}): pass the one to "
                    "evaluate, or its name."
                )
            return eval_dataset
        if isinstance(eval_dataset, str):
            return self.eval_dataset[eval_dataset]
        if isinstance(eval_dataset, dict):
            names = ", ".join(map(str, eval_dataset))
            raise ValueError(
                f"Pass one evaluation dataset, not a dict of {len(eval_dataset)} ({names}): evaluate() evaluates each "
                "of them under its own prefix."
            )
        if self._skip_prepare_dataset:
            return eval_dataset
        packing = self.args.packing if self.args.eval_packing is None else self.args.eval_packing
        # Idempotent: a dataset that is already tokenized is returned as is.
        return self._prepare_dataset(eval_dataset, self.processing_class, self.args, packing, self._formatting_func,
                                     "eval")  # fmt: skip


def target_token_count(dataset) -> int:
    """Labels other than -100 in a tokenized SFT dataset, without the first position of each document (a causal LM
    predicts position t + 1 at t, so a document's first token is never a target; a packed row holds several
    documents, `seq_lengths` long). Counted in Arrow/numpy: an SFT set has up to ~1e9 tokens."""
    table = dataset.with_format("arrow")[:]  # honours any select/shuffle indices
    labels = table.column("labels").combine_chunks()
    is_target = labels.flatten().to_numpy(zero_copy_only=False) != -100
    if "seq_lengths" in table.column_names:
        lengths = table.column("seq_lengths").combine_chunks().flatten().to_numpy(zero_copy_only=False)
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    else:
        starts = labels.offsets.to_numpy()[:-1]
    starts = starts[starts < len(is_target)]
    is_target[starts] = False
    return int(is_target.sum())
