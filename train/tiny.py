"""Tiny random-weight models of the exact Qwen2, Qwen3 and Qwen3.5 architectures, with the real vocabulary.

They stand in for real checkpoints wherever no weights can be downloaded: the quickstart recipe
(`model.name_or_path: tiny:qwen2`), the tests, and the CPU smoke runs. A tiny model is written
once to a local snapshot directory (config, safetensors, tokenizer, generation_config, README)
and then loads through exactly the same code path as a real base model.

`tiny:qwen3_5` is saved like the released Qwen3.5 checkpoints: a `Qwen3_5ForConditionalGeneration`
(config with text_config and vision_config) with four decoder layers (three Gated DeltaNet, one full
attention), the real 248,320-row vocabulary and template, a two-block vision tower and the processor
files, so a merged export can be checked to carry the vision part over unchanged.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from train.arch import ARCHITECTURES
from train.tokenizer import ENDOFTEXT, IM_END, build_qwen_tokenizer

TINY_PREFIX = "tiny:"
# Bump when the tiny architecture or tokenizer changes, so stale caches are rebuilt.
TINY_VERSION = "v3"
QWEN_VOCAB_SIZE = 151936  # Qwen's embedding rows (151,669 used ids, padded)

TINY_README = """---
license: apache-2.0
library_name: transformers
pipeline_tag: text-generation
tags:
- scion-tiny
---
# Tiny random {arch}

A {arch}-architecture model with random weights and the real Qwen vocabulary, built locally by
Scion (`train/tiny.py`) for tests and the offline quickstart. It knows nothing.
"""


def scion_cache_dir() -> Path:
    return Path(os.environ.get("SCION_CACHE", Path.home() / ".cache" / "scion"))


def tiny_config(arch: str, **sizes):
    """A 2-layer config of the given architecture: small enough for CPU tests, real in shape.
    `sizes` overrides dimensions (for full-size stand-ins); derived fields follow them."""
    import transformers

    common = dict(
        vocab_size=QWEN_VOCAB_SIZE,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=32768,
        rope_theta=1_000_000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,  # as in Qwen2.5-0.5B/1.5B/3B and Qwen3-0.6B..4B
        bos_token_id=151643,
        eos_token_id=151645,
        pad_token_id=151643,
        dtype="bfloat16",
    )
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown tiny architecture {arch!r}: expected one of {', '.join(ARCHITECTURES)}")
    if arch == "qwen3_5":
        return qwen3_5_config(**sizes)
    architecture = ARCHITECTURES[arch]
    config_class = getattr(transformers, architecture.config_class)
    return config_class(**{**architecture.tiny_config, **common, **sizes})


# Tiny Qwen3.5: 4 layers (3 Gated DeltaNet + 1 full attention), small heads, a 2-block vision tower.
TINY_QWEN3_5_TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                         num_key_value_heads=2, head_dim=16, linear_num_key_heads=2, linear_num_value_heads=4,
                         linear_key_head_dim=16, linear_value_head_dim=16)
TINY_QWEN3_5_VISION = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, num_position_embeddings=64)


def qwen3_5_config(vision: dict | None = None, **text):
    """A Qwen3_5Config (text_config + vision_config) of the given sizes; tiny by default."""
    import transformers

    from train.arch import qwen3_5

    text = {**TINY_QWEN3_5_TEXT, **text}
    num_layers, head_dim = text.pop("num_hidden_layers"), text.pop("head_dim")
    text_config = qwen3_5.config_kwargs(num_layers, head_dim, **text)
    vision_config = {**TINY_QWEN3_5_VISION, **(vision or {}), "out_hidden_size": text_config["hidden_size"]}
    return transformers.Qwen3_5Config(text_config=text_config, vision_config=vision_config,
                                      tie_word_embeddings=text_config["tie_word_embeddings"])


# The processor files of a Qwen3.5 checkpoint, in the fields transformers' Qwen3VLProcessor reads
# (patch 16, temporal patch 2, merge 2, mean/std 0.5). Written as JSON: building the processor
# objects needs torchvision, which a CPU test machine may lack. Training never reads them; they
# are there so a merged export can be checked to carry them over unchanged.
QWEN3_5_PREPROCESSOR = {
    "image_processor_type": "Qwen2VLImageProcessorFast", "processor_class": "Qwen3VLProcessor",
    "do_resize": True, "do_rescale": True, "rescale_factor": 0.00392156862745098, "do_normalize": True,
    "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "do_convert_rgb": True,
    "patch_size": 16, "temporal_patch_size": 2, "merge_size": 2,
    "size": {"longest_edge": 16777216, "shortest_edge": 65536},
}
QWEN3_5_VIDEO_PREPROCESSOR = {
    **{k: v for k, v in QWEN3_5_PREPROCESSOR.items() if k != "image_processor_type"},
    "video_processor_type": "Qwen3VLVideoProcessor", "fps": 2, "min_frames": 4, "max_frames": 768,
    "size": {"longest_edge": 25165824, "shortest_edge": 4096},
}


def save_processor_files(out_dir: Path) -> None:
    import json

    (out_dir / "preprocessor_config.json").write_text(json.dumps(QWEN3_5_PREPROCESSOR, indent=2) + "\n")
    (out_dir / "video_preprocessor_config.json").write_text(json.dumps(QWEN3_5_VIDEO_PREPROCESSOR, indent=2) + "\n")


def random_model(config):
    """A random bf16 model of `config`, of the class its checkpoints are saved as: image-text-to-text
    (Qwen3_5ForConditionalGeneration) for Qwen3.5, the causal LM otherwise."""
    import torch
    import transformers

    if getattr(config, "model_type", None) == "qwen3_5":
        return transformers.Qwen3_5ForConditionalGeneration._from_config(config, dtype=torch.bfloat16)
    return transformers.AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)


def save_tiny_model(arch: str, out_dir: str | Path, seed: int = 0) -> Path:
    """Write a tiny random `arch` model (weights, tokenizer, generation config, README) to out_dir."""
    import torch
    from transformers import GenerationConfig

    out_dir = Path(out_dir)
    torch.manual_seed(seed)
    config = tiny_config(arch)
    model = random_model(config)
    # With hidden size 64 and the default init (std 0.02), the largest reachable logit is about 1,
    # so the model could never leave the uniform distribution over 151,936 tokens (loss ~11.9).
    # Wider embeddings (tied to lm_head) let a few LoRA steps move the loss, as on a real model.
    with torch.no_grad():
        model.get_input_embeddings().weight.normal_(0.0, 0.5)
    tokenizer = build_qwen_tokenizer(arch)
    model.generation_config = GenerationConfig(
        eos_token_id=[tokenizer.convert_tokens_to_ids(IM_END), tokenizer.convert_tokens_to_ids(ENDOFTEXT)],
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    if arch == "qwen3_5":
        save_processor_files(out_dir)
    (out_dir / "README.md").write_text(TINY_README.format(arch=arch.capitalize()))
    return out_dir


def ensure_tiny_model(spec: str) -> Path:
    """Resolve `tiny:qwen2` / `tiny:qwen3` / `tiny:qwen3_5` to a local snapshot, building it once (atomically)."""
    arch = spec[len(TINY_PREFIX):]
    tiny_config(arch)  # validates the name before any work
    target = scion_cache_dir() / "tiny" / f"{arch}-{TINY_VERSION}"
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{arch}-", dir=target.parent))
    try:
        save_tiny_model(arch, staging)
        try:
            staging.rename(target)
        except OSError:  # another process finished first; its copy is identical
            if not (target / "config.json").exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


# The architectures of the bases the recipes name (from their config.json on the Hub), for
# random-weight stand-ins where the real weights cannot be downloaded.
QWEN_ARCHITECTURES = {
    "Qwen/Qwen2.5-0.5B-Instruct": ("qwen2", dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                                                  num_attention_heads=14, num_key_value_heads=2)),
    "Qwen/Qwen2.5-1.5B-Instruct": ("qwen2", dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                                                  num_attention_heads=12, num_key_value_heads=2)),
    "Qwen/Qwen2.5-3B-Instruct": ("qwen2", dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
                                                num_attention_heads=16, num_key_value_heads=2)),
    "Qwen/Qwen3-1.7B": ("qwen3", dict(hidden_size=2048, intermediate_size=6144, num_hidden_layers=28,
                                      num_attention_heads=16, num_key_value_heads=8, head_dim=128,
                                      max_position_embeddings=40960)),
    "Qwen/Qwen3-4B": ("qwen3", dict(hidden_size=2560, intermediate_size=9728, num_hidden_layers=36,
                                    num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                                    max_position_embeddings=40960)),
    # Qwen3-4B-Instruct-2507 / -Thinking-2507: Qwen3-4B's architecture with a 262,144-token context.
    "Qwen/Qwen3-4B-Instruct-2507": ("qwen3", dict(hidden_size=2560, intermediate_size=9728, num_hidden_layers=36,
                                                  num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                                                  max_position_embeddings=262144)),
    "Qwen/Qwen3-4B-Thinking-2507": ("qwen3", dict(hidden_size=2560, intermediate_size=9728, num_hidden_layers=36,
                                                  num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                                                  max_position_embeddings=262144)),
    # Qwen3.5: text sizes of each config.json's text_config; the vision tower is 12 blocks of 768 in
    # 0.8B and 24 blocks of 1024 in 2B/4B.
    "Qwen/Qwen3.5-0.8B": ("qwen3_5", dict(hidden_size=1024, intermediate_size=3584, num_hidden_layers=24,
                                          num_attention_heads=8, num_key_value_heads=2, head_dim=256,
                                          linear_num_key_heads=16, linear_num_value_heads=16,
                                          linear_key_head_dim=128, linear_value_head_dim=128,
                                          vision=dict(depth=12, hidden_size=768, intermediate_size=3072,
                                                      num_heads=12, num_position_embeddings=2304))),
    "Qwen/Qwen3.5-2B": ("qwen3_5", dict(hidden_size=2048, intermediate_size=6144, num_hidden_layers=24,
                                        num_attention_heads=8, num_key_value_heads=2, head_dim=256,
                                        linear_num_key_heads=16, linear_num_value_heads=16,
                                        linear_key_head_dim=128, linear_value_head_dim=128,
                                        vision=dict(depth=24, hidden_size=1024, intermediate_size=4096,
                                                    num_heads=16, num_position_embeddings=2304))),
    "Qwen/Qwen3.5-4B": ("qwen3_5", dict(hidden_size=2560, intermediate_size=9216, num_hidden_layers=32,
                                        num_attention_heads=16, num_key_value_heads=4, head_dim=256,
                                        linear_num_key_heads=16, linear_num_value_heads=32,
                                        linear_key_head_dim=128, linear_value_head_dim=128,
                                        vision=dict(depth=24, hidden_size=1024, intermediate_size=4096,
                                                    num_heads=16, num_position_embeddings=2304))),
}


def standin_model(hub_id: str, device=None, seed: int = 0, **config_overrides):
    """A random-weight bf16 model with the exact architecture of `hub_id`, built in memory on `device`.

    Initialising on the device (a GPU: seconds for 3B) skips building it on the CPU and copying it
    over; tests and benchmarks that need no file use this directly.
    """
    import torch

    arch, sizes = QWEN_ARCHITECTURES[hub_id]
    config = tiny_config(arch, **{**sizes, **config_overrides})
    torch.manual_seed(seed)
    with torch.device(device or "cpu"):
        return random_model(config)


def save_standin(hub_id: str, hf_cache: str | Path, commit_sha: str = "0" * 40, device=None) -> Path:
    """A random-weight model with the exact architecture of `hub_id`, as a snapshot in an HF cache.

    `model.name_or_path=<hub_id>` with HF_HUB_OFFLINE=1 and HF_HUB_CACHE=<hf_cache> then loads it
    through the same path as the real download. Weights are bf16 and random: it shows speed and
    memory, not quality. `device` (default: CUDA when present) is where the weights are initialised.
    """
    import torch

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    arch, _ = QWEN_ARCHITECTURES[hub_id]
    repo = Path(hf_cache) / f"models--{hub_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit_sha
    snapshot.mkdir(parents=True, exist_ok=True)
    model = standin_model(hub_id, device)
    model.save_pretrained(snapshot, safe_serialization=True, max_shard_size="2GB")
    del model
    tokenizer = build_qwen_tokenizer(arch)
    if hub_id.endswith("-2507"):  # the 2507 checkpoints ship their own templates
        from train.tokenizer import read_template_file

        tokenizer.chat_template = read_template_file(
            "qwen3_2507_thinking.jinja" if "Thinking" in hub_id else "qwen3_2507_instruct.jinja")
    tokenizer.save_pretrained(snapshot)
    if arch == "qwen3_5":
        save_processor_files(snapshot)
    (snapshot / "README.md").write_text(TINY_README.format(arch=f"stand-in of {hub_id}"))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit_sha)
    return snapshot


if __name__ == "__main__":
    import argparse

    # python -m train.tiny Qwen/Qwen2.5-3B-Instruct [--hf-cache DIR]
    parser = argparse.ArgumentParser(description="Save a random-weight stand-in of a Qwen base into an HF cache.")
    parser.add_argument("hub_id", choices=sorted(QWEN_ARCHITECTURES))
    parser.add_argument("--hf-cache", default=os.environ.get("HF_HUB_CACHE", Path.home() / ".cache" / "huggingface" / "hub"))
    args = parser.parse_args()
    print(save_standin(args.hub_id, args.hf_cache))
