"""What Scion knows about each model architecture it trains, one file per architecture.

Everything that differs between Qwen2 and Qwen3 (and the next Qwen) lives in that
architecture's file: the config and model classes, the chat template and control tokens of
its tokenizer, the default LoRA targets, the GGUF tensors and keys llama.cpp expects, the
Liger kernels that fit it, and the terms of the activation-memory estimate. The code that
uses these (train/model.py, train/tokenizer.py, train/tiny.py, train/kernels.py,
train/activation_checkpointing.py, publish/gguf.py) is generic. Adding an architecture is
adding a file here, registering it in ARCHITECTURES below, and testing it.
"""

from __future__ import annotations

from typing import Optional

from train.arch import qwen2, qwen3, qwen3_5
from train.arch.base import Architecture, config_value, head_dim  # noqa: F401  (the package's API)

ARCHITECTURES = {a.name: a for a in (qwen2.ARCHITECTURE, qwen3.ARCHITECTURE, qwen3_5.ARCHITECTURE)}
SUPPORTED_HF_CLASSES = sorted(a.hf_class for a in ARCHITECTURES.values())


def by_name(name: str) -> Architecture:
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}: expected one of {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[name]


def by_hf_class(hf_class: str) -> Optional[Architecture]:
    return next((a for a in ARCHITECTURES.values() if a.hf_class == hf_class), None)


def of_config(config) -> Optional[Architecture]:
    """The architecture of a transformers config or config.json dict (by model_type), if Scion knows it."""
    model_type = config_value(config, "model_type")
    return next((a for a in ARCHITECTURES.values() if model_type in (a.name, *a.other_model_types)), None)
