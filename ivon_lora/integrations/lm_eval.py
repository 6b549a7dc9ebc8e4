"""An lm-evaluation-harness model backend over an ivon-lora run dir: any lm-eval task, posterior-averaged.

Importing this module registers the model name ``ivon-lora`` in lm-eval's model registry, so that
``lm_eval.simple_evaluate(model="ivon-lora", model_args="run=RUN,samples=10", ...)`` works, and
``ivon-lora lm-eval ...`` (`main` below) is lm-eval's own command line with that name registered.
lm-eval 0.4.x discovers no third-party models by itself (no entry points, and ``--include_path`` reads task
YAMLs without importing code before the model is built), so the plain ``lm_eval`` command cannot see it.

model_args (besides those of lm-eval's ``hf`` model, e.g. batch_size, max_length; ``pretrained`` is the run's):

- ``run``: the run, checkpoint or pruned dir (base model, adapter, posterior and recipe are read from it);
- ``samples``: posterior samples S; 0 scores at the posterior mean (default: the run's own ``final_eval_samples``,
  as ``ivon-lora eval``; 0 for runs without a posterior);
- ``mode``: ``bma`` (S samples, the default when S > 0) or ``mean`` (the posterior mean);
- ``seed``: seed of the samples (default: the run's own ``eval_seed``); ``prune``: fraction of adapter entries
  pruned by signal-to-noise ratio (default 0); ``temperature``: the posterior's variance is divided by it
  (default 1).

Scoring with S samples: each request batch (lm-eval's own batching, one-token context cache included) is scored
under each of the same S samples, drawn through one bound `PosteriorSampler` re-seeded per batch.
`loglikelihood` is log (1/S) sum_s p_s(continuation | context), the log-mean-exp of each sample's summed token
log-probabilities (not a product of per-token averages, which differs for continuations of several tokens);
`is_greedy` says whether every continuation token is the argmax of the sample-averaged next-token distribution.
`loglikelihood_rolling` sums each sample's windows first, then takes the log-mean-exp. `generate_until` decodes at
the posterior mean.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import sys
from contextlib import contextmanager, nullcontext

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

try:
    from lm_eval.api.model import CacheHook
    from lm_eval.api.registry import register_model
    from lm_eval.models.huggingface import HFLM
    from lm_eval.models.utils import Collator
    from lm_eval.models.utils_hf import pad_and_concat
except ImportError as error:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        "The lm-evaluation-harness backend needs lm-eval 0.4.x: pip install 'ivon-lora[lm-eval]'"
    ) from error

from ..errors import UsageError

logger = logging.getLogger(__name__)

MODEL_NAME = "ivon-lora"
MODES = ("bma", "mean")
LOGLIKELIHOOD = "log-mean-exp over the S samples of each sample's summed continuation log-probability"
IS_GREEDY = "every continuation token is the argmax of the sample-averaged next-token distribution"


def log_mean_exp(values: torch.Tensor) -> torch.Tensor:
    """log (1/S) sum_s exp(values[s]) over the first dimension, in float64."""
    return torch.logsumexp(values.double(), dim=0) - math.log(values.shape[0])


def _resolve_device(device: str | None) -> torch.device:
    # lm-eval's CLI passes device="cuda:0" by default; on a machine without CUDA its hf model falls back too.
    if device is None or (str(device).startswith("cuda") and not torch.cuda.is_available()):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_sampling(samples: int | None, mode: str | None, has_posterior: bool) -> int | None:
    """The number of posterior samples S that `samples` and `mode` ask for: 0 is the posterior mean, None the
    protocol's default S."""
    if mode is not None and mode not in MODES:
        raise UsageError(f"Invalid mode value: {mode!r} (must be one of {', '.join(MODES)})")
    if samples is not None and (isinstance(samples, bool) or not isinstance(samples, int) or samples < 0):
        raise UsageError(f"Invalid samples value: {samples!r} (must be an integer >= 0; 0 is the posterior mean)")
    if mode == "mean":
        if samples:
            raise UsageError(f"mode=mean scores at the posterior mean: drop samples={samples} or use mode=bma")
        return 0
    if mode == "bma" and samples == 0:
        raise UsageError("mode=bma averages over posterior samples: pass samples=S with S >= 1")
    if not has_posterior:
        if mode == "bma" or samples:
            raise UsageError("This run has no posterior (not trained with optim=ivon): use samples=0 (the weights)")
        return 0
    return samples


def _at_test_time_mean(method):
    """`method` of the lm-eval API with the test-time posterior's mean held in the adapter, the weights back after."""

    @functools.wraps(method)
    def at_mean(self, *args, **kwargs):
        with self._posterior.holding_mean(self.run.model) if self._posterior is not None else nullcontext():
            return method(self, *args, **kwargs)

    return at_mean


class IVONLoRALM(HFLM):
    """lm-eval's ``hf`` model over an ivon-lora run, scoring with the posterior (see the module docstring).

    `run` is a run dir or an already loaded `ivon_lora.rundir.Run` (its model is moved to `device`). Each request
    type (loglikelihood, loglikelihood_rolling, generate_until) runs with the test-time posterior's mean (e.g. after
    pruning) held in the adapter and gives the model's weights back after, as every evaluation entry point does.
    """

    def __init__(self, run, samples: int | None = None, mode: str | None = None, seed: int | None = None,
                 prune: float = 0.0,
                 temperature: float = 1.0, device: str | None = None, **kwargs):  # fmt: skip
        from ..filenames import POSTERIOR_WEIGHTS_NAME
        from ..config.arguments import run_default
        from ..rundir import Run, load_run

        # Everything that can be wrong with the arguments is checked before the model loads.
        for key in ("pretrained", "tokenizer", "peft", "backend"):
            if key in kwargs:
                raise UsageError(f"model_args {key}= is set by the run dir for model={MODEL_NAME}: drop it")
        check_model_args(kwargs)
        if not 0.0 <= prune <= 1.0:
            raise UsageError(f"Invalid prune value: {prune} (must be a fraction in [0, 1])")
        if not temperature > 0:
            raise UsageError(f"Invalid temperature value: {temperature} (must be > 0)")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise UsageError(f"Invalid seed value: {seed!r} (must be an integer)")
        if isinstance(run, Run):
            has_posterior = run.posterior is not None
        elif run is None or not os.path.isdir(str(run)):
            raise FileNotFoundError(f"model_args run={run!r} is not a directory: pass run=RUN_DIR")
        else:
            has_posterior = os.path.isfile(os.path.join(str(run), POSTERIOR_WEIGHTS_NAME))
        num_samples = resolve_sampling(samples, mode, has_posterior)
        if not has_posterior and (prune or temperature != 1.0):
            raise UsageError(f"{run} has no posterior (not an IVON run): prune and temperature need one")
        if not isinstance(run, Run):
            run = load_run(str(run), trust_remote_code=bool(kwargs.get("trust_remote_code")))
        # The run's own settings unless model_args say otherwise, as `ivon-lora eval` resolves them.
        if num_samples is None:
            num_samples = run_default(run.recipe, "final_eval_samples")
        if seed is None:
            seed = run_default(run.recipe, "eval_seed")

        if getattr(run.model, "hf_quantizer", None) is None:  # a bitsandbytes base was placed when it loaded
            run.model.to(_resolve_device(device))
        posterior = run.posterior.at_test_time(prune, temperature) if has_posterior else None
        self._posterior = posterior  # the "mean" is the test-time posterior's (e.g. after pruning)
        super().__init__(pretrained=run.model, tokenizer=run.tokenizer, backend="causal", **kwargs)
        self.run = run
        self.num_samples = num_samples
        self.seed = seed
        # One sampler bound to the adapter for the whole evaluation; re-seeded per batch (see `_score_batch`).
        self._sampler = posterior.sampler(run.model, seed=seed) if num_samples else None
        self._return_per_sample = False
        self.settings = {
            "run": os.path.abspath(run.directory),
            "base_model": run.model_args.model_name_or_path,
            "posterior": has_posterior,
            "mode": "bma" if num_samples else "mean",
            "samples": num_samples,
            "seed": seed,
            "prune": prune,
            "temperature": temperature,
            "loglikelihood": LOGLIKELIHOOD if num_samples else "at the posterior mean",
            "is_greedy": IS_GREEDY if num_samples else "at the posterior mean",
            "generate_until": "greedy or sampled decoding at the posterior mean",
        }
        logger.info("%s: %s", MODEL_NAME, self.settings)

    def get_model_info(self) -> dict:
        """What lm-eval records next to the results: the run and its test-time posterior settings."""
        from importlib.metadata import version

        return {
            "model_num_parameters": sum(p.numel() for p in self.model.parameters()),
            "model_dtype": str(next(self.model.parameters()).dtype),
            "ivon_lora": {**self.settings, "version": version("ivon-lora")},
        }

    # ------------------------------------------------------------------ scoring

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs: int | None = None):
        if self._sampler is None:
            return super()._loglikelihood_tokens(requests, disable_tqdm=disable_tqdm, override_bs=override_bs)
        scored = self._sampled_loglikelihood_tokens(requests, disable_tqdm, override_bs)
        if self._return_per_sample:
            return scored
        return [(float(log_mean_exp(per_sample)), greedy) for per_sample, greedy in scored]

    loglikelihood = _at_test_time_mean(HFLM.loglikelihood)
    generate_until = _at_test_time_mean(HFLM.generate_until)

    @_at_test_time_mean
    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        if self._sampler is None:
            return super().loglikelihood_rolling(requests, disable_tqdm=disable_tqdm)
        # lm-eval's rolling loop sums each request's window scores; given per-sample score vectors it sums them per
        # sample, so the log-mean-exp below is over whole strings. Its cache hook would store those vectors: the
        # final values are stored here instead.
        cache_hook, self.cache_hook, self._return_per_sample = self.cache_hook, CacheHook(None), True
        try:
            totals = super().loglikelihood_rolling(requests, disable_tqdm=disable_tqdm)
        finally:
            self.cache_hook, self._return_per_sample = cache_hook, False
        results = [float(log_mean_exp(total)) for total in totals]
        for request, result in zip(requests, results):
            cache_hook.add_partial("loglikelihood_rolling", request.args, result)
        return results

    def _sampled_loglikelihood_tokens(self, requests, disable_tqdm, override_bs):
        """(per-sample continuation log-probabilities [S] float64, is_greedy) per request, in request order.

        lm-eval's causal batching (longest first, requests sharing a context and all but the last continuation
        token scored by one row), with each batch scored under each of the S samples.
        """

        def longest_first(request):
            tokens = request[1] + request[2]
            return -len(tokens), tuple(tokens)

        def shared_prefix(request):
            return request[-2] + request[-1][:-1]

        batches = Collator(requests, sort_fn=longest_first, group_by="contexts" if self.logits_cache else None,
                           group_fn=shared_prefix)  # fmt: skip
        auto = self.batch_size == "auto"
        batch_size = (override_bs or 0) if auto else self.batch_size
        batch_fn = self._batch_scheduler if auto and len(batches) > 0 and not override_bs else None
        if batch_fn is not None:
            self.batch_sizes = {}
        results = []
        progress = tqdm(total=len(requests), disable=disable_tqdm or self.rank != 0,
                        desc=f"Running loglikelihood requests ({self.num_samples} posterior samples)")  # fmt: skip
        for chunk in batches.get_batched(n=batch_size, batch_fn=batch_fn):
            for row, (request_str, context, continuation) in zip(self._score_batch(chunk), chunk):
                token_logprobs, last_logprobs, mean_logprobs = row
                for request_str, cont_toks, mean_row in batches.get_cache(
                    req_str=request_str, cxt_toks=context, cont_toks=continuation, logits=mean_logprobs[None]
                ):
                    n = len(cont_toks)
                    # Requests sharing a row share its tokens up to the last one, which may differ.
                    per_sample = token_logprobs[:, len(continuation) - n : -1].sum(1) + last_logprobs[:, cont_toks[-1]]
                    target = torch.tensor(cont_toks, device=mean_row.device)
                    greedy = bool((mean_row[0, -n:].argmax(-1) == target).all())
                    results.append((per_sample.double().cpu(), greedy))
                    if request_str is not None:
                        answer = (float(log_mean_exp(per_sample)), greedy)
                        self.cache_hook.add_partial("loglikelihood", request_str, answer)
                    progress.update(1)
        progress.close()
        return batches.get_original(results)

    @torch.no_grad()
    def _score_batch(self, chunk):
        """Per row: the continuation tokens' log-probabilities under each sample [S, n], the last position's
        log-probabilities under each sample [S, vocab], and the log of the sample-averaged distributions [n, vocab]."""
        inputs, continuations = [], []
        for _, context, continuation in chunk:
            if len(context) + len(continuation) > self.max_length + 1:
                logger.warning("context (%d) + continuation (%d) tokens exceed max_length %d: truncated from the left",
                               len(context), len(continuation), self.max_length)  # fmt: skip
            whole = (context + continuation)[-(self.max_length + 1) :][:-1]
            inputs.append(torch.tensor(whole, dtype=torch.long, device=self.device))
            continuations.append(torch.tensor(continuation, dtype=torch.long, device=self.device))
        lengths = [len(x) for x in inputs]
        padded_length = max(lengths)
        batch = pad_and_concat(padded_length, list(inputs), padding_side="right")  # (it pads the list in place)
        num_samples = self.num_samples
        token_logprobs = [torch.empty(num_samples, len(c), device=self.device) for c in continuations]
        last_logprobs, mean_probs = [], []
        # The same S samples for every batch: the sampler's generator restarts from the seed.
        self._sampler.generator.manual_seed(self.seed)
        for s in range(num_samples):
            with self._sampler.sample():
                logprobs = F.log_softmax(self._model_call(batch), dim=-1, dtype=self.softmax_dtype)
            for r, (length, cont) in enumerate(zip(lengths, continuations)):
                context_length = length + (logprobs.shape[1] - padded_length)
                rows = self._select_cont_toks(logprobs[r], contlen=len(cont), inplen=context_length)
                token_logprobs[r][s] = rows.gather(1, cont[:, None]).squeeze(1)
                if s == 0:
                    last_logprobs.append(torch.empty(num_samples, rows.shape[1], device=self.device))
                    mean_probs.append(torch.zeros(rows.shape, dtype=torch.float64, device=self.device))
                last_logprobs[r][s] = rows[-1]
                mean_probs[r] += rows.double().exp()
        mean_logprobs = [(probs / num_samples).log() for probs in mean_probs]
        return list(zip(token_logprobs, last_logprobs, mean_logprobs))


def check_model_args(kwargs: dict) -> None:
    """Refuse a model_args key that neither this backend nor lm-eval's `hf` model takes: `HFLM` swallows unknown
    keys (**kwargs), so `temprature=2` would evaluate at the default without a word."""
    import inspect

    own = set(inspect.signature(IVONLoRALM.__init__).parameters)
    known = own | set(inspect.signature(HFLM.__init__).parameters)
    unknown = sorted(key for key in kwargs if key not in known)
    if unknown:
        import difflib

        hints = [f"{key!r}" + (f" (did you mean {close[0]!r}?)" if (close := difflib.get_close_matches(key, known, n=1))
                               else "") for key in unknown]  # fmt: skip
        raise UsageError(
            f"Unknown model_args key(s) for model={MODEL_NAME}: {', '.join(hints)}; keys: run, samples, "
            "mode, seed, prune, temperature and those of lm-eval's hf model (batch_size, max_length, ...)"
        )


register_model(MODEL_NAME)(IVONLoRALM)


def main(argv: list[str] | None = None) -> None:
    """lm-eval's command line (``lm_eval ...``, arguments unchanged) with ``--model ivon-lora`` registered."""
    from lm_eval.__main__ import cli_evaluate

    sys.argv = ["lm-eval", *(sys.argv[1:] if argv is None else argv)]
    with hub_hint():
        cli_evaluate()


LM_EVAL_LOCAL_HINT = ("without the Hub, give the task a local copy: a task YAML with dataset_path: json and "
                      "dataset_kwargs: {data_files: ...} in a dir passed as --include_path (ivon-lora eval: "
                      "--lm-eval-include-path)")  # fmt: skip


@contextmanager
def hub_hint():
    """An lm-eval task whose dataset the Hub cannot give here: one line naming it and the local way instead."""
    import datasets

    from ..tasks.loading import hub_unreachable

    try:
        yield
    except (ConnectionError, datasets.exceptions.DatasetNotFoundError) as error:
        raise hub_unreachable(_dataset_named_in(error), error, LM_EVAL_LOCAL_HINT) from None


def _dataset_named_in(error: Exception) -> str:
    import re

    named = re.search(r"reach '([^']+)'", str(error)) or re.search(r"dataset '([^']+)'", str(error))
    return named.group(1) if named else "of an lm-eval task"
