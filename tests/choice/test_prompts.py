"""`ivon_lora.generation.prompts`: the one chat-template policy. A chat-rendered prompt is read with exactly the
special tokens its template wrote, once: generation tokenizes the rendered text without adding any; the choice
objective strips a rendered leading BOS where its tokenizer adds one itself (its collator tokenizes with special
tokens). Both read one BOS where the family has one. They give the same token ids except on a Metaspace tokenizer
(Llama-2): there the choice path's text after the BOS gets the tokenizer's prefix space ("▁[INST]", as Meta's
reference encodes it) and generation's does not (as `apply_chat_template(tokenize=True)` and TRL encode it). The
difference is pinned here so that a change to either is a decision, not an accident."""

import pytest
from family_tokenizers import FAMILIES

from ivon_lora.choice.prompts import render_chat_prompt
from ivon_lora.generation.batching import PromptBatches
from ivon_lora.generation.prompts import render_prompts

QUESTIONS = ["Which word is a fruit?\nA. apple\nB. hammer\nAnswer:", "Name a colour."]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_choice_and_generation_read_a_chat_prompt_as_the_same_tokens_with_one_bos(family):
    tokenizer = FAMILIES[family]()
    generation = PromptBatches(tokenizer, render_prompts(tokenizer, QUESTIONS, chat=True), 8, chat=True).encoded
    choice = tokenizer(render_chat_prompt(tokenizer, QUESTIONS))["input_ids"]  # as the ChoiceCollator tokenizes
    bos = tokenizer.bos_token_id
    if family == "llama2":
        for generated, chosen in zip(generation, choice):
            assert generated[0] == chosen[0] == bos and generated[1:] != chosen[1:]
            assert tokenizer.decode(generated[1:]) == tokenizer.decode(chosen[1:]).removeprefix(" ")
    else:
        assert generation == choice
    for ids in generation + choice:
        if family.startswith("llama"):  # their templates render the BOS, and their tokenizers add one: once
            assert ids[0] == bos and ids.count(bos) == 1
        else:
            assert bos is None or bos not in ids
