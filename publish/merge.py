"""Merge a LoRA adapter into its base, in the base's own dtype (bf16 for Qwen), never into 4-bit.

Merging into a bitsandbytes 4-bit base (what a QLoRA run trained on) only warns in PEFT and gives
degraded weights (pitfalls.md #8), so the base is always reloaded in full precision here. The
merged model is saved as sharded safetensors in the base's dtype (fp32 would double the size),
with the tokenizer, chat template and a generation_config whose eos ids include <|im_end|>.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from train.errors import ScionError
from train.tokenizer import ENDOFTEXT, IM_END

MAX_SHARD_SIZE = "2GB"


def base_dtype(base_dir: Path):
    """The dtype the base was published in (config.json), bf16 when unstated."""
    import torch

    config = json.loads((Path(base_dir) / "config.json").read_text())
    name = config.get("dtype") or config.get("torch_dtype") or "bfloat16"
    dtype = getattr(torch, name, None)
    if dtype not in (torch.bfloat16, torch.float16, torch.float32):
        raise ScionError(f"merge: unexpected base dtype {name!r} in {base_dir}/config.json")
    return dtype


def merge_adapter(base_dir: Path, adapter_dir: Path, out_dir: Path) -> Path:
    """Write base+adapter merged into out_dir (staged, then renamed). Returns out_dir."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from train.console import peft_wrapping

    dtype = base_dtype(base_dir)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=dtype, use_safetensors=True)
    with peft_wrapping():
        model = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    tokenizer = AutoTokenizer.from_pretrained(adapter_dir)  # the training tokenizer (eos <|im_end|>)

    generation = model.generation_config if model.generation_config is not None else GenerationConfig()
    eos = generation.eos_token_id if generation.eos_token_id is not None else []
    eos = [eos] if isinstance(eos, int) else list(eos)
    for token in (IM_END, ENDOFTEXT):  # a chat turn ends at <|im_end|> (pitfalls.md #1)
        token_id = tokenizer.convert_tokens_to_ids(token)
        if token_id not in eos:
            eos.append(token_id)
    generation.eos_token_id = eos
    generation.pad_token_id = tokenizer.pad_token_id
    model.generation_config = generation
    model.config.eos_token_id = tokenizer.convert_tokens_to_ids(IM_END)
    # Lineage belongs in the card; name_or_path would be a local path.
    model.config._name_or_path = ""

    staging = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    with torch.no_grad():
        model.save_pretrained(staging, safe_serialization=True, max_shard_size=MAX_SHARD_SIZE)
    tokenizer.save_pretrained(staging)
    shutil.rmtree(out_dir, ignore_errors=True)
    staging.rename(out_dir)
    return out_dir
