"""Merge a LoRA adapter into its base, in the base's own dtype (bf16 for Qwen), never into 4-bit.

Merging into a bitsandbytes 4-bit base (what a QLoRA run trained on) only warns in PEFT and gives
degraded weights (pitfalls.md #8), so the base is always reloaded in full precision here. The
merged model is saved as sharded safetensors in the base's dtype (fp32 would double the size),
with the tokenizer, chat template and a generation_config whose eos ids include <|im_end|>.

A base whose language model is one part of an image-text-to-text checkpoint (Qwen3.5) stays a
drop-in of that checkpoint: the language model's tensors are replaced by the merged ones, in the
base's own safetensors files and names, and every other tensor (vision tower, multi-token
prediction) and file (config.json, processor and preprocessor configs) is carried over unchanged.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from train.arch import by_hf_class
from train.console import peft_wrapping
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


def _chat_generation_config(generation, tokenizer):
    """`generation` with <|im_end|> and <|endoftext|> among its eos ids and the tokenizer's pad id."""
    from transformers import GenerationConfig

    generation = generation if generation is not None else GenerationConfig()
    eos = generation.eos_token_id if generation.eos_token_id is not None else []
    eos = [eos] if isinstance(eos, int) else list(eos)
    for token in (IM_END, ENDOFTEXT):  # a chat turn ends at <|im_end|> (pitfalls.md #1)
        token_id = tokenizer.convert_tokens_to_ids(token)
        if token_id not in eos:
            eos.append(token_id)
    generation.eos_token_id = eos
    generation.pad_token_id = tokenizer.pad_token_id
    return generation


def merge_adapter(base_dir: Path, adapter_dir: Path, out_dir: Path) -> Path:
    """Write base+adapter merged into out_dir (staged, then renamed). Returns out_dir."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base_dir = Path(base_dir)
    dtype = base_dtype(base_dir)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=dtype, use_safetensors=True)
    with peft_wrapping():
        model = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    tokenizer = AutoTokenizer.from_pretrained(adapter_dir)  # the training tokenizer (eos <|im_end|>)
    architecture = by_hf_class((json.loads((base_dir / "config.json").read_text()).get("architectures") or ["?"])[0])
    if architecture is not None and architecture.language_model_prefix:
        return _merge_into_checkpoint(base_dir, model, tokenizer, architecture.language_model_prefix, out_dir)

    model.generation_config = _chat_generation_config(model.generation_config, tokenizer)
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


def _merge_into_checkpoint(base_dir: Path, merged_lm, tokenizer, prefix: str, out_dir: Path) -> Path:
    """The base checkpoint with its language model's tensors replaced by `merged_lm`'s; all else unchanged.

    `merged_lm` is the merged causal LM (its weights named `model.*` and `lm_head.weight`); in the
    checkpoint they live under `prefix` (e.g. `model.language_model.`). Shard files, tensor names and
    order, config.json and the processor files are the base's.
    """
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file
    from transformers import GenerationConfig

    merged = {name: tensor for name, tensor in merged_lm.state_dict().items()}
    staging = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    replaced = set()
    for file in sorted(base_dir.glob("*.safetensors")):
        tensors = {}
        with safe_open(file, framework="pt") as f:
            metadata = f.metadata()
            for name in f.keys():
                tensor = f.get_tensor(name)
                lm_name = "model." + name[len(prefix):] if name.startswith(prefix) else name if name == "lm_head.weight" else None
                if lm_name is not None:
                    if lm_name not in merged:
                        raise ScionError(f"merge: {name} of {file.name} has no counterpart {lm_name} in the merged language model")
                    tensor = merged[lm_name].to(tensor.dtype).contiguous()
                    replaced.add(lm_name)
                tensors[name] = tensor
        with torch.no_grad():
            save_file(tensors, staging / file.name, metadata=metadata or {"format": "pt"})
    missing = sorted(set(merged) - replaced - ({"lm_head.weight"} if merged_lm.config.tie_word_embeddings else set()))
    if missing:
        raise ScionError(f"merge: the base checkpoint in {base_dir} has no tensor for {missing[0]} (and {len(missing) - 1} more)")
    for path in base_dir.iterdir():  # config.json, index, processor/preprocessor configs, ... unchanged
        if path.is_file() and path.suffix != ".safetensors" and path.name != "README.md" and not path.name.startswith("."):
            shutil.copy2(path, staging / path.name)
    tokenizer.save_pretrained(staging)  # the training tokenizer and chat template
    generation_file = base_dir / "generation_config.json"
    generation = GenerationConfig.from_pretrained(base_dir) if generation_file.is_file() else None
    _chat_generation_config(generation, tokenizer).save_pretrained(staging)
    shutil.rmtree(out_dir, ignore_errors=True)
    staging.rename(out_dir)
    return out_dir
