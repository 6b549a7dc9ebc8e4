"""Answer-token resolution across tokenizer conventions, the left-padding collator and K-way logits."""

import copy

import pytest
import torch
from family_tokenizers import FAMILIES
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from ivon_lora.builtin import BUILTIN_MODELS, build_tiny_model
from ivon_lora.choice import (
    ChoiceCollator,
    ChoiceExample,
    answer_token_ids,
    choice_logits,
    format_examples,
    resolve_answers,
)
from ivon_lora.config import ModelArguments, RecipeError

PROMPT = "Select one of the choices that answers the following question: Why? Choices: A. x B. y Answer:"


def sentencepiece_style_tokenizer():
    """A Llama-2-like tokenizer: '▁'-prefixed word pieces (Metaspace), BOS, no pad token."""
    words = PROMPT.replace(":", " :").replace(".", " .").replace("?", " ?").split() + ["A", "B", "True", "False"]
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, ":": 3, ".": 4, "?": 5}
    for word in words:
        vocab.setdefault("▁" + word, len(vocab))
    for piece in (":", ".", "?", "A", "B"):
        vocab.setdefault(piece, len(vocab))
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token="<unk>", continuing_subword_prefix=""))
    tokenizer.normalizer = normalizers.Sequence([normalizers.Replace(":", " :"), normalizers.Replace(".", " .")])
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.decoder = decoders.Metaspace()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


@pytest.mark.parametrize("name", ["llama_tokenizer", "qwen_tokenizer"])
def test_byte_level_answers_resolve_to_the_space_prefixed_letter(name, request):
    tokenizer = request.getfixturevalue(name)
    ids = answer_token_ids(tokenizer, PROMPT, (" A", " B"))
    assert tokenizer.convert_ids_to_tokens(ids) == ["ĠA", "ĠB"]
    # The same ids as the last token of the full text, with the tokenizer's own special tokens (BOS or none).
    full = tokenizer(PROMPT + " B")["input_ids"]
    assert full[-1] == ids[1]
    assert (full[0] == tokenizer.bos_token_id) == (name == "llama_tokenizer")


def test_sentencepiece_style_answers_resolve_to_the_metaspace_letter():
    tokenizer = sentencepiece_style_tokenizer()
    ids = answer_token_ids(tokenizer, PROMPT, (" A", " B"))
    assert tokenizer.convert_ids_to_tokens(ids) == ["▁A", "▁B"]


def test_an_answer_that_is_not_one_token_is_a_clear_error(llama_tokenizer):
    with pytest.raises(ValueError, match="Answer ' Zebracrossing' is not a single token after the prompt"):
        answer_token_ids(llama_tokenizer, PROMPT, (" A", " Zebracrossing"))


def test_collator_left_pads_and_masks_absent_choices(llama_tokenizer):
    rows = [
        {"prompt": PROMPT, "answers": (" A", " B"), "gold": 1},
        {
            "prompt": "Answer the question with only True or False: Why? Answer:",
            "answers": (" A", " B", " C"),
            "gold": 2,
        },
        {"prompt": "Answer:", "answers": (" A", " B"), "gold": 0},
    ]
    batch = ChoiceCollator(llama_tokenizer)(rows)
    assert batch["attention_mask"][:, -1].all(), "every prompt must end at the last position"
    assert not batch["attention_mask"][2, 0], "short prompts are padded on the left"
    assert batch["choice_mask"].tolist() == [[True, True, False], [True, True, True], [True, True, False]]
    assert batch["labels"].tolist() == [1, 2, 0]


def test_collator_truncates_the_start_never_the_end(llama_tokenizer):
    batch = ChoiceCollator(llama_tokenizer, max_length=8)([{"prompt": PROMPT, "answers": (" A", " B"), "gold": 0}])
    assert batch["input_ids"].shape[1] == 8
    assert llama_tokenizer.decode(batch["input_ids"][0]).endswith("Answer:")


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-qwen2"])
def test_batched_left_padded_logits_equal_unpadded_single_prompt_logits(name, synthetic_examples, request):
    tokenizer = request.getfixturevalue("llama_tokenizer" if name == "tiny-llama" else "qwen_tokenizer")
    model = build_tiny_model(BUILTIN_MODELS[f"builtin:{name}"], tokenizer).eval()
    rows = [{"prompt": e.prompt, "answers": e.answers, "gold": e.gold} for e in synthetic_examples["validation"][:6]]
    rows[0] = {**rows[0], "prompt": "Which? " + rows[0]["prompt"] * 2}  # forces padding of the others
    collator = ChoiceCollator(tokenizer)
    with torch.no_grad():
        batched = choice_logits(model, collator(rows))
        single = torch.cat([choice_logits(model, collator([row])) for row in rows])
        # Reference: the full-vocabulary logits at the last position of the unpadded prompt.
        ids = tokenizer(rows[1]["prompt"], return_tensors="pt")["input_ids"]
        full = model(input_ids=ids).logits[0, -1]
    torch.testing.assert_close(batched, single, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(single[1], full[collator(rows[1:2])["choice_token_ids"][0]], rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------- prompt formats (plain, chat)

CHAT_PROMPT = "Select one of the choices that answers the following question: Why? Choices: 1. x 2. y Answer:"


def _args(prompt_format="plain", **chat_template_kwargs):
    return ModelArguments("stand-in", prompt_format=prompt_format, chat_template_kwargs=chat_template_kwargs or None)


def test_plain_format_returns_examples_whose_answers_resolve_unchanged(llama_tokenizer, synthetic_examples):
    examples = synthetic_examples["train"][:5]
    formatted = format_examples(examples, llama_tokenizer, _args())
    assert all(a is b for a, b in zip(formatted, examples))


def test_answers_fall_back_to_the_other_spacing_deterministically():
    tokenizer = FAMILIES["llama3"]()
    # Llama-3 splits " 1" into " " + "1": the digits are scored without their space, as Llama-2 IVON-LoRA does.
    assert resolve_answers(tokenizer, CHAT_PROMPT, (" 1", " 2")) == ("1", "2")
    assert resolve_answers(tokenizer, CHAT_PROMPT, (" A", " B")) == (" A", " B")
    # After whitespace the space is dropped first, though " A" would resolve there too ("\n\n" + "ĠA").
    assert resolve_answers(tokenizer, "Question?\n\n", (" A", " B")) == ("A", "B")
    assert answer_token_ids(tokenizer, "Q?\n\n", (" A", " B")) != answer_token_ids(tokenizer, "Q?\n\n", ("A", "B"))
    message = r"Answer ' Zebracrossing' is not a single token .*Also tried \['A', 'Zebracrossing'\]"
    with pytest.raises(ValueError, match=message):
        resolve_answers(tokenizer, CHAT_PROMPT, (" A", " Zebracrossing"))


def test_chat_format_wraps_the_prompt_with_one_bos_and_unspaced_answers():
    tokenizer = FAMILIES["llama3"]()
    example = ChoiceExample("x", CHAT_PROMPT, (" A", " B"), 1)
    (formatted,) = format_examples([example], tokenizer, _args("chat"))
    assert formatted.answers == ("A", "B") and formatted.gold == 1 and formatted.id == "x"
    assistant = "<|start_header_id|>assistant<|end_header_id|>\n\n"
    assert formatted.prompt.endswith(f"user<|end_header_id|>\n\n{CHAT_PROMPT}<|eot_id|>{assistant}")
    # The template renders <|begin_of_text|>; the tokenizer adds it too: the prompt keeps the tokenizer's only.
    assert not formatted.prompt.startswith("<|begin_of_text|>")
    ids = tokenizer(formatted.prompt)["input_ids"]  # as the collator tokenizes it
    assert ids.count(tokenizer.bos_token_id) == 1 and ids[0] == tokenizer.bos_token_id


def test_chat_template_kwargs_reach_the_template_qwen3_thinking():
    tokenizer = FAMILIES["qwen3"]()
    example = ChoiceExample("x", CHAT_PROMPT, (" A", " B"), 0)
    (no_thinking,) = format_examples([example], tokenizer, _args("chat", enable_thinking=False))
    assert no_thinking.prompt.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert no_thinking.answers == ("A", "B")
    (default,) = format_examples([example], tokenizer, _args("chat"))
    assert default.prompt.endswith("<|im_start|>assistant\n")


def test_chat_format_without_a_chat_template_is_a_recipe_error(qwen_tokenizer):
    example = ChoiceExample("x", CHAT_PROMPT, (" A", " B"), 0)
    tokenizer = copy.deepcopy(qwen_tokenizer)
    tokenizer.chat_template = None
    with pytest.raises(RecipeError, match="Recipe key 'prompt_format': chat needs a tokenizer with a chat template"):
        format_examples([example], tokenizer, _args("chat"))
