"""Tiny local stand-ins for the Llama-2, Llama-3, Qwen2.5 and Qwen3 tokenizers (no Hub access needed).

Each is trained with `tokenizers` on a small corpus, with its family's pre-tokenization (Llama-3's and Qwen2's
split regexes + byte-level BPE; Llama-2's Metaspace with single digits and byte fallback), special tokens, BOS
and pad conventions, and a chat template that mimics the family's: what matters for scoring is where the prompt
ends (after "\\n\\n", after "[/INST]") and whether a BOS is rendered by the template and added by the tokenizer.
"""

from __future__ import annotations

import json

from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors, trainers

from ivon_lora.tasks import MC_TEMPLATE

# The pre-tokenizer regexes of the real tokenizer.json files: Llama-3 groups up to 3 digits, Qwen2 single digits.
LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|"
    r"\s+(?!\S)|\s+"
)
QWEN2_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|"
    r"\s+(?!\S)|\s+"
)

LLAMA2_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] | trim + ' [/INST]' }}"
    "{% else %}{{ ' ' + message['content'] | trim + ' ' + eos_token }}{% endif %}{% endfor %}"
)
LLAMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}<|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\n"
    "Today Date: 26 Jul 2024\n\n<|eot_id|>"
    "{% for message in messages %}<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
    "{{ message['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
QWEN25_CHAT_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. "
    "You are a helpful assistant.<|im_end|>\n{% endif %}"
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Qwen3's generation prompt: with enable_thinking=false an empty think block follows the assistant header.
QWEN3_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}{% endif %}"
)

# Task prompts of every registered frame, the answers in both spacings, and the chat templates' own text.
PROMPTS = [
    MC_TEMPLATE.format(question="Which gas do plants take in?", choices="A. oxygen B. carbon dioxide C. water D. salt"),
    MC_TEMPLATE.format(
        question="The trophy did not fit in the suitcase because _ was too big.", choices="1. trophy 2. suitcase"
    ),
    "Answer the question with only True or False: is the sky blue? Context: The sky is blue. Answer:",
]
CORPUS = PROMPTS + [
    "A B C D E True False 1 2 3 4 5 A. B. C. D. E. Answer: A Answer: B Answer: C Answer: D Answer: E",
    "Answer: True Answer: False Answer:True Answer:False Answer:1 Answer:2 Answer: 1 Answer: 2",
    "ABCDE\n\nA\n\nB\n\nC\n\nD\n\nE\n\nTrue\n\nFalse\n\n1\n\n2\nA\nB\nTrue\nFalse\n1\n2",
    "system user assistant Cutting Knowledge Date: December 2023 Today Date: 26 Jul 2024",
    "You are Qwen, created by Alibaba Cloud. You are a helpful assistant. [INST] question [/INST] answer",
]


def _train(pre_tokenizer, vocab_size: int, byte_level: bool) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizer
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet() if byte_level else [],
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS * 10, trainer=trainer)
    return tokenizer


def _byte_level_bpe(regex: str) -> Tokenizer:
    from tokenizers import decoders

    pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(regex), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer = _train(pre_tokenizer, vocab_size=700, byte_level=True)
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def llama3_tokenizer():
    """Llama-3.x: byte-level BPE, BOS <|begin_of_text|> added by the post-processor, NO pad token."""
    from transformers import PreTrainedTokenizerFast

    tokenizer = _byte_level_bpe(LLAMA3_REGEX)
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>", "<|finetune_right_pad_id|>",
                "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]  # fmt: skip
    tokenizer.add_special_tokens(specials)
    bos_id = tokenizer.token_to_id("<|begin_of_text|>")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B",
        special_tokens=[("<|begin_of_text|>", bos_id)],
    )  # fmt: skip
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        chat_template=LLAMA3_CHAT_TEMPLATE,
    )


def llama2_tokenizer():
    """Llama-2: sentencepiece-style BPE ("▁A"), digits split singly, byte fallback, BOS <s>, NO pad token."""
    from transformers import LlamaTokenizer

    # Trained word by word with single digits (as sentencepiece's split_digits), used as LlamaTokenizer does.
    pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always"),
            pre_tokenizers.Digits(individual_digits=True),
        ]
    )
    trained = json.loads(_train(pre_tokenizer, vocab_size=500, byte_level=False).to_str())["model"]
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"<0x{b:02X}>": 3 + b for b in range(256)}}
    for token in trained["vocab"]:
        vocab.setdefault(token, len(vocab))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in trained["merges"]]
    return LlamaTokenizer(vocab=vocab, merges=merges, add_bos_token=True, chat_template=LLAMA2_CHAT_TEMPLATE)


def qwen_tokenizer(thinking: bool):
    """Qwen2.5 (thinking=False) or Qwen3: byte-level BPE, no BOS, pad <|endoftext|>, ChatML template."""
    from transformers import Qwen2Tokenizer

    trained = json.loads(_byte_level_bpe(QWEN2_REGEX).to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in trained["merges"]]
    vocab = dict(trained["vocab"])
    for token in ("<|endoftext|>", "<|im_start|>", "<|im_end|>") + (("<think>", "</think>") if thinking else ()):
        vocab.setdefault(token, len(vocab))
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
        chat_template=QWEN3_CHAT_TEMPLATE if thinking else QWEN25_CHAT_TEMPLATE,
    )
    if thinking:
        from tokenizers import AddedToken

        # Qwen3's think tags are added (never split) but not special tokens.
        tokenizer.add_tokens([AddedToken("<think>", special=False), AddedToken("</think>", special=False)])
    return tokenizer


FAMILIES = {
    "llama2": llama2_tokenizer,
    "llama3": llama3_tokenizer,
    "qwen2.5": lambda: qwen_tokenizer(thinking=False),
    "qwen3": lambda: qwen_tokenizer(thinking=True),
}
