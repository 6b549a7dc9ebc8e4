"""Decoding from the posterior (`ivon_lora.generation.decoding`) against plain re-implementations: the mean's answers are
`model.generate`'s; the batched per-sample answers are S sequential `generate()` / `model.generate` passes under
`PosteriorSampler.sample()`; the posterior-averaged answers and their per-position uncertainty are a cache-free loop
over the samples, recomputed by hand; stop strings cut answers that are prefixes of the unstopped ones; answers do not
depend on the batch size; the adapter comes back bitwise, also on error."""

import pytest
import torch

from ivon_lora.builtin import BUILTIN_MODELS, build_tiny_model, build_tokenizer
from ivon_lora.config import ModelArguments
from ivon_lora.generation.decoding import Answer, AveragedAnswer, decode_averaged, decode_mean, decode_samples
from ivon_lora.generation import _stop_ids, generate, render_prompts
from ivon_lora.modeling import apply_lora
from ivon_lora.posterior import Posterior, adapter_parameters

PROMPTS = ["Question: which word", "A B C", "hello world, this prompt is longer than the others by far", "x"]
MAX_NEW_TOKENS = 6
SEED = 3


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(BUILTIN_MODELS["builtin:tiny-llama"])


@pytest.fixture(scope="module")
def model(tokenizer):
    """A tiny Llama with a q/v LoRA adapter, in eval mode."""
    base = build_tiny_model(BUILTIN_MODELS["builtin:tiny-llama"], tokenizer)
    lora = ModelArguments(model_name_or_path="tiny", lora_rank=4, lora_alpha=8.0, lora_dropout=0.0,
                          lora_target=["q_proj", "v_proj"])  # fmt: skip
    return apply_lora(base, lora).eval()


@pytest.fixture(scope="module")
def posterior(model):
    """A mean with B != 0 and a variance wide enough that samples change the answers; the model holds the mean."""
    generator = torch.Generator().manual_seed(0)
    params = adapter_parameters(model)
    posterior = Posterior({k: 0.3 * torch.randn(p.shape, generator=generator) for k, p in params.items()},
                          {k: torch.full(p.shape, 0.05) for k, p in params.items()})  # fmt: skip
    posterior.apply_mean(model)
    return posterior


def snapshot(model) -> dict[str, torch.Tensor]:
    return {key: p.detach().clone() for key, p in adapter_parameters(model).items()}


def assert_adapter_is(model, before):
    for key, p in adapter_parameters(model).items():
        assert torch.equal(p, before[key]), key


def sample_weights(model, posterior, num_samples: int) -> list[dict[str, torch.Tensor]]:
    """The adapter under each of the first S samples of the seeded sampler, as `sampler.sample()` holds them."""
    sampler = posterior.sampler(model, generator=torch.Generator().manual_seed(SEED))
    weights = []
    for _ in range(num_samples):
        with sampler.sample():
            weights.append(snapshot(model))
    return weights


def load(model, weights):
    with torch.no_grad():
        for key, p in adapter_parameters(model).items():
            p.copy_(weights[key])


def prompt_ids(tokenizer) -> list[list[int]]:
    return tokenizer(PROMPTS)["input_ids"]


def greedy_tokens(model, tokenizer, ids: list[int], max_new_tokens=MAX_NEW_TOKENS) -> list[int]:
    """One prompt's greedy tokens by `model.generate`, alone (no padding), up to and including a stop id."""
    stop_ids = _stop_ids(model, tokenizer, {})
    with torch.no_grad():
        out = model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id,
                             eos_token_id=stop_ids)[0, len(ids) :].tolist()  # fmt: skip
    end = next((j + 1 for j, token in enumerate(out) if token in stop_ids), len(out))
    return out[:end]


def test_the_means_answers_are_model_generates_and_generates(model, tokenizer, posterior):
    before = snapshot(model)
    pruned = posterior.prune(0.5)
    pruned.apply_mean(model)
    expected = [greedy_tokens(model, tokenizer, ids) for ids in prompt_ids(tokenizer)]
    load(model, before)
    answers = decode_mean(model, tokenizer, PROMPTS, posterior=pruned, max_new_tokens=MAX_NEW_TOKENS, chat=False)
    assert_adapter_is(model, before)
    assert all(isinstance(a, Answer) for a in answers)
    assert [list(a.token_ids) for a in answers] == expected
    assert [a.finish_reason for a in answers] == ["length"] * len(PROMPTS)
    assert [a.text for a in answers] == [tokenizer.decode(ids, skip_special_tokens=True) for ids in expected]
    assert [a.text for a in answers] == [
        g.mean for g in generate(model, tokenizer, PROMPTS, posterior=pruned, max_new_tokens=MAX_NEW_TOKENS, chat=False)
    ]
    # Chat-rendered texts are tokenized as generate() tokenizes the prompts it renders (no special tokens added).
    rendered = decode_mean(model, tokenizer, render_prompts(tokenizer, PROMPTS), max_new_tokens=MAX_NEW_TOKENS)
    assert [a.text for a in rendered] == [g.mean for g in generate(model, tokenizer, PROMPTS,
                                                                     max_new_tokens=MAX_NEW_TOKENS)]  # fmt: skip


def test_batched_samples_are_sequential_generate_calls_with_sample_ks_weights(model, tokenizer, posterior):
    num_samples = 3
    before = snapshot(model)
    answers = decode_samples(model, tokenizer, PROMPTS, posterior, num_samples, seed=SEED,
                             max_new_tokens=MAX_NEW_TOKENS, chat=False)  # fmt: skip
    assert_adapter_is(model, before)
    assert all(len(a) == num_samples for a in answers)
    sequential = generate(model, tokenizer, PROMPTS, posterior=posterior, num_samples=num_samples, seed=SEED,
                          max_new_tokens=MAX_NEW_TOKENS, chat=False)  # fmt: skip
    assert [tuple(a.text for a in samples) for samples in answers] == [g.samples for g in sequential]
    for k, weights in enumerate(sample_weights(model, posterior, num_samples)):
        load(model, weights)
        expected = [greedy_tokens(model, tokenizer, ids) for ids in prompt_ids(tokenizer)]
        assert [list(samples[k].token_ids) for samples in answers] == expected, f"sample {k}"
    load(model, before)
    # The variance is wide enough that the test means something: samples differ from each other.
    assert all(len({a.token_ids for a in samples}) > 1 for samples in answers)


def entropy(p: torch.Tensor) -> torch.Tensor:
    return -torch.special.xlogy(p, p).sum(-1)


def averaged_reference(model, tokenizer, ids, weights, max_new_tokens=MAX_NEW_TOKENS):
    """Posterior-averaged greedy decoding of one prompt, plainly: each step, for each sample in turn, its weights in
    the adapter and a full forward pass over prompt + answer so far (no cache, no padding); the softmaxes averaged;
    the argmax appended. Per position: each sample's log-prob of the token, MI and EPKL by their definitions."""
    stop_ids = _stop_ids(model, tokenizer, {})
    tokens, log_probs, information, pairwise = [], [], [], []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            probs = []
            for w in weights:
                load(model, w)
                probs.append(torch.softmax(model(input_ids=torch.tensor([ids + tokens])).logits[0, -1].float(), -1))
            probs = torch.stack(probs)
            token = int(probs.mean(0).argmax())
            p = probs.double()
            num = len(weights)
            kl = [(p[s] * (p[s].log() - p[t].log())).sum() for s in range(num) for t in range(num) if s != t]
            tokens.append(token)
            log_probs.append(p[:, token].log())
            information.append(entropy(p.mean(0)) - entropy(p).mean())
            pairwise.append(torch.stack(kl).mean())
            if token in stop_ids:
                break
    return tokens, torch.stack(log_probs), torch.stack(information), torch.stack(pairwise)


@pytest.fixture(scope="module")
def eos_tokenizer(model, tokenizer, posterior):
    """A tokenizer whose EOS is the third token of prompt 0's averaged answer: that answer ends on it."""
    (answer,) = decode_averaged(model, tokenizer, PROMPTS[:1], posterior, 3, seed=SEED, chat=False,
                                max_new_tokens=MAX_NEW_TOKENS)  # fmt: skip
    stop = answer.token_ids[2]
    assert stop not in answer.token_ids[:2]
    eos_tokenizer = build_tokenizer(BUILTIN_MODELS["builtin:tiny-llama"])
    eos_tokenizer.eos_token = eos_tokenizer.convert_ids_to_tokens(stop)
    return eos_tokenizer


def test_averaged_decoding_is_the_plain_loop_over_samples_and_its_uncertainty_is_by_hand(model, eos_tokenizer,
                                                                                           posterior):  # fmt: skip
    num_samples = 3
    tokenizer = eos_tokenizer
    before = snapshot(model)
    answers = decode_averaged(model, tokenizer, PROMPTS, posterior, num_samples, seed=SEED,
                              max_new_tokens=MAX_NEW_TOKENS, chat=False)  # fmt: skip
    assert_adapter_is(model, before)
    weights = sample_weights(model, posterior, num_samples)
    for answer, ids in zip(answers, prompt_ids(tokenizer)):
        tokens, log_probs, information, pairwise = averaged_reference(model, tokenizer, ids, weights)
        assert isinstance(answer, AveragedAnswer)
        assert list(answer.token_ids) == tokens
        assert answer.sample_log_probs.shape == (len(tokens), num_samples)
        torch.testing.assert_close(answer.sample_log_probs, log_probs, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(answer.mutual_information, information, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(answer.expected_pairwise_kl, pairwise, rtol=1e-4, atol=1e-6)
    load(model, before)
    eos = tokenizer.eos_token_id
    assert answers[0].finish_reason == "eos" and answers[0].token_ids[-1] == eos and len(answers[0].token_ids) == 3
    assert answers[0].text == tokenizer.decode(answers[0].token_ids[:-1])
    assert {a.finish_reason for a in answers} == {"eos", "length"}  # some answers run to max_new_tokens
    # The samples disagree (the uncertainty is not trivially 0) and the averaged answer is not sample 0's.
    assert all(bool((a.mutual_information > 0).all()) for a in answers)
    samples = decode_samples(model, tokenizer, PROMPTS, posterior, num_samples, seed=SEED,
                             max_new_tokens=MAX_NEW_TOKENS, chat=False)  # fmt: skip
    assert any(a.token_ids != s[0].token_ids for a, s in zip(answers, samples))


def test_one_sample_averaged_is_that_samples_answer(model, tokenizer, posterior):
    options = {"seed": SEED, "max_new_tokens": MAX_NEW_TOKENS, "chat": False}
    averaged = decode_averaged(model, tokenizer, PROMPTS, posterior, 1, **options)
    sampled = decode_samples(model, tokenizer, PROMPTS, posterior, 1, **options)
    assert [(a.text, a.token_ids, a.finish_reason) for a in averaged] == \
        [(s.text, s.token_ids, s.finish_reason) for (s,) in sampled]  # fmt: skip
    for a in averaged:
        assert a.sample_log_probs.shape == (len(a.token_ids), 1)
        assert bool((a.mutual_information == 0).all()) and bool((a.expected_pairwise_kl == 0).all())


def test_stop_strings_cut_the_unstopped_answers(model, tokenizer, posterior):
    """Stopping never changes the tokens before the stop: each stopped answer's tokens are a prefix of the unstopped
    answer's, up to the first token whose decoded prefix holds a stop string; its text ends before the stop."""
    options = {"max_new_tokens": MAX_NEW_TOKENS, "chat": False}
    sampled = {"seed": SEED, **options}
    free = decode_mean(model, tokenizer, PROMPTS, **options)
    # A stop string inside a mean answer that its (j+1)-th token completes, j >= 2: the answer's last character
    # before that token and the token's first one.
    index, j, stop = next(
        (i, j, cur[len(prev) - 1 : len(prev) + 1])
        for i, answer in enumerate(free) for j in range(2, len(answer.token_ids))
        for prev, cur in [(tokenizer.decode(answer.token_ids[:j]), tokenizer.decode(answer.token_ids[: j + 1]))]
        if cur.startswith(prev) and len(cur) > len(prev) and cur[len(prev) - 1 : len(prev) + 1] not in prev
    )  # fmt: skip
    stops = [stop, " "]
    runs = [
        (free, decode_mean(model, tokenizer, PROMPTS, stop_strings=stops, **options)),
        *zip(zip(*decode_samples(model, tokenizer, PROMPTS, posterior, 2, **sampled)),
             zip(*decode_samples(model, tokenizer, PROMPTS, posterior, 2, stop_strings=stops, **sampled))),
        (decode_averaged(model, tokenizer, PROMPTS, posterior, 2, **sampled),
         decode_averaged(model, tokenizer, PROMPTS, posterior, 2, stop_strings=stops, **sampled)),
    ]  # fmt: skip
    reasons = set()
    for unstopped, stopped in runs:
        for full, cut in zip(unstopped, stopped):
            reasons.add(cut.finish_reason)
            ids = list(cut.token_ids)
            assert ids == list(full.token_ids[: len(ids)])
            prefixes = [tokenizer.decode(ids[:end], skip_special_tokens=True) for end in range(1, len(ids) + 1)]
            hits = [any(s in text for s in stops) for text in prefixes]
            if cut.finish_reason == "stop":
                assert hits.index(True) == len(ids) - 1
                assert prefixes[-1].startswith(cut.text) and any(prefixes[-1][len(cut.text) :].startswith(s)
                                                                 for s in stops)  # fmt: skip
                assert not any(s in cut.text for s in stops)
            else:
                assert (cut.text, cut.token_ids, cut.finish_reason) == (full.text, full.token_ids, full.finish_reason)
                assert not any(hits)
            if isinstance(cut, AveragedAnswer):
                assert len(cut.mutual_information) == len(ids)
                torch.testing.assert_close(cut.sample_log_probs, full.sample_log_probs[: len(ids)])
    assert reasons == {"stop", "length"}
    (first,) = decode_mean(model, tokenizer, PROMPTS[index : index + 1], stop_strings=[stop], **options)
    assert first.token_ids == free[index].token_ids[: j + 1] and first.finish_reason == "stop"
    completed = tokenizer.decode(first.token_ids)
    assert first.text == completed[: completed.index(stop)] == tokenizer.decode(first.token_ids[:j])[:-1]


@pytest.mark.parametrize("mode", ["mean", "samples", "averaged"])
def test_answers_do_not_depend_on_the_batch_size_and_a_seed_fixes_them(model, tokenizer, posterior, mode):
    def answers(batch_size, seed=SEED):
        options = {"max_new_tokens": MAX_NEW_TOKENS, "chat": False, "batch_size": batch_size}
        if mode == "mean":
            out = decode_mean(model, tokenizer, PROMPTS, posterior=posterior, **options)
        elif mode == "samples":
            out = decode_samples(model, tokenizer, PROMPTS, posterior, 3, seed=seed, **options)
        else:
            out = decode_averaged(model, tokenizer, PROMPTS, posterior, 3, seed=seed, **options)
        return out

    def key(out):
        flat = [a for item in out for a in (item if isinstance(item, tuple) else (item,))]
        return [(a.text, a.token_ids, a.finish_reason) for a in flat]

    one_by_one = answers(1)
    for batch_size in (3, 8):
        other = answers(batch_size)
        assert key(other) == key(one_by_one)
        if mode == "averaged":
            for a, b in zip(other, one_by_one):
                for name in ("sample_log_probs", "mutual_information", "expected_pairwise_kl"):
                    torch.testing.assert_close(getattr(a, name), getattr(b, name), rtol=1e-5, atol=1e-6)
    if mode != "mean":
        assert key(answers(3, seed=SEED + 1)) != key(one_by_one)


@pytest.mark.parametrize("mode", ["mean", "samples", "averaged"])
def test_the_adapter_and_training_mode_come_back_after_an_error(model, tokenizer, posterior, mode, monkeypatch):
    from ivon_lora.generation import decoding

    before = snapshot(model)
    calls = []

    def failing(self, tokens):
        calls.append(tokens)
        if len(calls) > 3:
            raise RuntimeError("injected")
        return False

    monkeypatch.setattr(decoding._Decoder, "stopped_by_string", failing)
    model.train()
    try:
        with pytest.raises(RuntimeError, match="injected"):
            if mode == "mean":
                decode_mean(model, tokenizer, PROMPTS, posterior=posterior.prune(0.5), stop_strings=["\n"])
            elif mode == "samples":
                decode_samples(model, tokenizer, PROMPTS, posterior, 2, stop_strings=["\n"])
            else:
                decode_averaged(model, tokenizer, PROMPTS, posterior, 2, stop_strings=["\n"])
        assert model.training
    finally:
        model.eval()
    assert_adapter_is(model, before)
    assert not any("forward" in vars(m) for m in model.modules())  # per_sample_lora's patches are gone


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda m, t, p: decode_mean(m, t, "x"), TypeError, "list of non-empty prompt strings"),
        (lambda m, t, p: decode_mean(m, t, ["x", ""]), TypeError, "list of non-empty prompt strings"),
        (lambda m, t, p: decode_mean(m, t, ["x"], stop_strings="\n"), TypeError, "stop_strings"),
        (lambda m, t, p: decode_mean(m, t, ["x"], max_new_tokens=0), ValueError, "max_new_tokens"),
        (lambda m, t, p: decode_mean(m, t, ["x"], batch_size=0), ValueError, "batch_size"),
        (lambda m, t, p: decode_samples(m, t, ["x"], None, 2), ValueError, "needs a posterior"),
        (lambda m, t, p: decode_averaged(m, t, ["x"], p, 0), ValueError, "num_samples"),
    ],
)  # fmt: skip
def test_bad_arguments_are_refused(model, tokenizer, posterior, call, error, message):
    with pytest.raises(error, match=message):
        call(model, tokenizer, posterior)


def test_left_padding_keeps_absolute_positions(tokenizer):
    """On a model with absolute position embeddings (GPT-2; RoPE is blind to a shift), a padded prompt's positions
    must count its real tokens only: the batched answers are each prompt's `model.generate` answer alone."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=len(tokenizer), n_positions=128, n_embd=32, n_layer=2, n_head=2,
                        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config).eval()
    expected = [greedy_tokens(model, tokenizer, ids) for ids in prompt_ids(tokenizer)]
    for batch_size in (1, len(PROMPTS)):
        answers = decode_mean(model, tokenizer, PROMPTS, max_new_tokens=MAX_NEW_TOKENS, chat=False,
                              batch_size=batch_size)  # fmt: skip
        assert [list(a.token_ids) for a in answers] == expected
