"""Answer texts scored by likelihood (answer_scoring: text / text_norm) against a plain re-implementation: one
unpadded forward pass per (question, answer), the answer's token log-probs summed, split at the prompt/answer
boundary by lm-evaluation-harness's own `_encode_pair`."""

import json
import types

import pytest
import torch
import torch.nn.functional as F
from family_tokenizers import FAMILIES
from lm_eval.api.model import TemplateLM

from ivon_lora import cli
from ivon_lora.builtin import BUILTIN_MODELS, build_tiny_model
from ivon_lora.choice import ChoiceCollator, choice_logits, format_examples
from ivon_lora.choice.text import encode_pair, text_batch
from ivon_lora.choice.trainer import ChoiceLossMixin, choice_rows
from ivon_lora.config import ModelArguments
from ivon_lora.tasks import load_examples
from ivon_lora.tasks.winogrande import winogrande_example

PAIRS = [
    ("Question: Which gas do plants take in?\nAnswer:", " carbon dioxide"),
    ("The trophy did not fit in the suitcase because the ", "trophy was too big."),
    ("Answer: ", "True"),
    ("Answer:", " 12"),
]
ROWS = [  # prompts of different lengths, answers of 1-4 tokens, 3 and 2 answers (padded choices)
    {"prompt": "Question: which word is a fruit?\nAnswer:", "answers": [" apple", " hammer", " blue sky"], "gold": 0},
    {"prompt": "The cat sat on the ", "answers": ["mat.", "answer A"], "gold": 1},
    {"prompt": "Answer:", "answers": [" B", " C D E"], "gold": 1},
]


def lm_eval_split(tokenizer, context, continuation):
    causal = types.SimpleNamespace(backend="causal", tok_encode=lambda text: tokenizer(text)["input_ids"])
    return TemplateLM._encode_pair(causal, context, continuation)


@pytest.mark.parametrize("family", [*FAMILIES, "tiny-llama", "tiny-qwen2"])
def test_prompt_answer_boundary_is_lm_evals_context_continuation_split(family, request):
    tokenizer = (request.getfixturevalue("llama_tokenizer" if family == "tiny-llama" else "qwen_tokenizer")
                 if family.startswith("tiny") else FAMILIES[family]())  # fmt: skip
    for context, continuation in PAIRS:
        context_ids, answer_ids = encode_pair(tokenizer, context, continuation)
        assert (context_ids, answer_ids) == tuple(lm_eval_split(tokenizer, context, continuation))
        assert answer_ids and context_ids + answer_ids == tokenizer(context + continuation)["input_ids"]


def plain_scores(model, tokenizer, row, scoring):
    """One forward pass per answer: sum over the answer's tokens of log p(token | everything before it)."""
    scores = []
    for answer in row["answers"]:
        context_ids, answer_ids = lm_eval_split(tokenizer, row["prompt"], answer)
        log_probs = torch.log_softmax(model(input_ids=torch.tensor([context_ids + answer_ids])).logits[0].float(), -1)
        total = sum(float(log_probs[len(context_ids) - 1 + j, token]) for j, token in enumerate(answer_ids))
        scores.append(total / (len(answer.lstrip()) if scoring == "text_norm" else 1.0))
    return scores


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-qwen2"])
@pytest.mark.parametrize("scoring", ["text", "text_norm"])
def test_left_padded_text_scores_equal_per_answer_forward_passes(name, scoring, request):
    tokenizer = request.getfixturevalue("llama_tokenizer" if name == "tiny-llama" else "qwen_tokenizer")
    model = build_tiny_model(BUILTIN_MODELS[f"builtin:{name}"], tokenizer).eval()
    rows = [{**row, "scoring": scoring} for row in ROWS]
    batch = ChoiceCollator(tokenizer)(rows)
    assert batch["input_ids"].shape[0] == 3 * 3 and not batch["attention_mask"][3:6].all(), "left-padded rows"
    with torch.no_grad():
        scores = choice_logits(model, batch)
        expected = [plain_scores(model, tokenizer, row, scoring) for row in rows]
    assert torch.isneginf(scores[1:, 2]).all() and batch["choice_mask"][:, 2].tolist() == [True, False, False]
    for i, row in enumerate(expected):
        torch.testing.assert_close(scores[i, : len(row)], torch.tensor(row), rtol=1e-4, atol=1e-4)
    # Training's loss is the K-way cross-entropy over these scores, and it reaches the weights.
    loss = ChoiceLossMixin.compute_loss(None, model, batch)
    padded = [row + [float("-inf")] * (3 - len(row)) for row in expected]
    torch.testing.assert_close(loss, F.cross_entropy(torch.tensor(padded), batch["labels"]), rtol=1e-4, atol=1e-4)
    loss.backward()
    assert model.model.embed_tokens.weight.grad.abs().sum() > 0


def test_single_token_answers_score_as_letters(llama_tokenizer, synthetic_examples):
    """log p(one token | prompt) is the full-vocabulary log-softmax at the last position: the K-way softmax of the
    text scores is the letter scoring's softmax."""
    model = build_tiny_model(BUILTIN_MODELS["builtin:tiny-llama"], llama_tokenizer).eval()
    rows = choice_rows(synthetic_examples["validation"][:6])
    collator = ChoiceCollator(llama_tokenizer)
    with torch.no_grad():
        letters = torch.softmax(choice_logits(model, collator(rows)), -1)
        texts = torch.softmax(choice_logits(model, collator([{**row, "scoring": "text"} for row in rows])), -1)
    torch.testing.assert_close(texts, letters, rtol=1e-4, atol=1e-5)


def test_text_form_of_the_tasks_and_of_chat_prompts(llama_tokenizer):
    example = load_examples("synthetic", "validation", limit=1)[0]
    text = format_examples([example], llama_tokenizer, ModelArguments("x", answer_scoring="text"))[0]
    assert text.prompt.startswith("Question: ") and text.prompt.endswith("\nAnswer:") and "Choices:" not in text.prompt
    from ivon_lora.tasks.synthetic import CATEGORIES

    assert text.answers == tuple(f" {category}" for category in CATEGORIES) == example.texts
    assert text.scoring == "text" and text.gold == example.gold
    chat = format_examples([example], llama_tokenizer, ModelArguments("x", answer_scoring="text_norm",
                                                                      prompt_format="chat"))[0]  # fmt: skip
    assert chat.prompt.endswith("Assistant: ") and chat.answers == tuple(CATEGORIES)
    # WinoGrande: the sentence's start is the context, each option with the sentence's rest the answer.
    wino = winogrande_example({"sentence": "The trophy did not fit because _ was big.", "option1": "it",
                               "option2": "the case", "answer": "2"})  # fmt: skip
    assert (wino.text_prompt, wino.texts, wino.gold) == ("The trophy did not fit because ",
                                                         ("it was big.", "the case was big."), 1)  # fmt: skip


def test_text_batch_refuses_mixed_scorings_and_empty_answers(llama_tokenizer):
    with pytest.raises(ValueError, match="one text scoring"):
        text_batch(llama_tokenizer, [{**ROWS[0], "scoring": "text"}, {**ROWS[1], "scoring": "text_norm"}])
    with pytest.raises(ValueError, match="empty"):
        text_batch(llama_tokenizer, [{"prompt": "Answer:", "answers": [" x", " "], "gold": 0, "scoring": "text_norm"}])
    with pytest.raises(ValueError, match="answer_scoring"):
        ModelArguments("x", answer_scoring="letters")


def test_train_and_eval_with_text_scoring_record_it_in_the_protocol(tmp_path, run_dir, capsys):
    from conftest import DEMO

    out = tmp_path / "text"
    args = ["train", DEMO, f"output_dir={out}", "max_steps=4", "max_train_samples=64", "max_eval_samples=16",
            "eval_mc_samples=2", "disable_tqdm=true", "lora_target=[q_proj, v_proj]", "lora_rank=4",
            "answer_scoring=text_norm"]  # fmt: skip
    assert cli.main(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["protocol"]["answer_scoring"] == "text_norm" and "acc_norm" in metrics["protocol"]["scoring"]
    assert metrics["metrics"]["num_examples"] == 16
    assert cli.main(["eval", str(out), "--limit", "12", "--samples", "2", "--out", str(tmp_path / "eval")]) == 0
    report = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert report["protocol"]["answer_scoring"] == "text_norm"
    rows = [
        json.loads(line) for line in (tmp_path / "eval" / "predictions-synthetic-ivon.jsonl").read_text().splitlines()
    ]
    assert len(rows) == 12 and all(abs(sum(row["mean"]) - 1) < 1e-6 for row in rows)
    # Runs that score their answers differently are not compared side by side.
    assert cli.main(["eval", str(out), "--baseline", run_dir, "--out", str(tmp_path / "mixed")]) == 2
    assert "answer_scoring" in capsys.readouterr().err and not (tmp_path / "mixed").exists()


def test_the_trainer_counts_questions_not_rows_in_a_text_batch(llama_tokenizer):
    from transformers.trainer_pt_utils import find_batch_size

    batch = ChoiceCollator(llama_tokenizer)([{**row, "scoring": "text"} for row in ROWS])
    assert batch["input_ids"].shape[0] == 9 and find_batch_size(batch) == 3
