"""Run under torchrun: shard a tiny PeftModel with torch's FSDP2 (gloo, CPU) and save its adapter the way
train/run.py does (full state dict gathered, written by rank 0). Also writes, before sharding, the
adapter weights one process holds, for the test to compare with.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/helpers/fsdp_save.py OUT_DIR

writes OUT_DIR/<method>/{expected.safetensors,adapter/} for LoRA and DoRA.
"""

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from peft import get_peft_model_state_dict
from safetensors.torch import save_file
from torch.distributed.fsdp import fully_shard

from train import distributed
from train.config import ModelConfig, PeftConfig, PeftMethod, Precision
from train.model import add_adapter, load_model, load_tokenizer, resolve_base
from train.run import save_adapter


def shard_and_save(out: Path, method: str) -> None:
    model_config = ModelConfig(name_or_path="tiny:qwen2")
    peft_config = PeftConfig(method=PeftMethod(method), r=4, alpha=8, dropout=0.0)
    base = resolve_base(model_config)
    model = add_adapter(load_model(base, model_config, peft_config, Precision.fp32), peft_config)
    # Random, identical on every rank (same seed, same order), non-zero B: each shard tells apart.
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator))
    if distributed.is_main():
        out.mkdir(parents=True)
        save_file({k: v.contiguous() for k, v in get_peft_model_state_dict(model).items()}, str(out / "expected.safetensors"))

    for layer in model.get_base_model().model.layers:
        fully_shard(layer)
    fully_shard(model)
    assert any(type(p).__name__ == "DTensor" for p in model.parameters())  # really sharded
    full = distributed.full_state_dict(model)
    if distributed.is_main():
        save_adapter(model, load_tokenizer(base, model_config), base, out, state_dict=full)


dist.init_process_group("gloo")
for method in ("lora", "dora"):
    shard_and_save(Path(sys.argv[1]) / method, method)
dist.barrier()
dist.destroy_process_group()
