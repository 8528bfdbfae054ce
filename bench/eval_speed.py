#!/usr/bin/env python
"""Evaluation speed: base + fine-tune on 500 held-out examples with 128 new tokens each.

Target (the eval issue): under 60 seconds on one H100 for Qwen2.5-3B, base and fine-tune
together. The base is a random-weight stand-in with the exact shape of Qwen2.5-3B's config.json
(speed does not depend on the weight values), saved locally with Qwen's real tokenizer and chat
template; the adapter is a LoRA r=16 on all seven projections with non-zero weights. A random
model never emits <|im_end|>, so every generation runs the full 128 tokens: the worst case.

The timed call is exactly what `python eval.py run_dir=...` runs (`eval.run.evaluate_run` on a
run directory: load base + adapter, held-out loss, batched greedy generation, metrics, files).
Building the stand-in and the run directory is not timed.

    python bench/eval_speed.py                      # GPU: Qwen2.5-3B stand-in, 500 x 128 tokens
    python bench/eval_speed.py --batch-size 128     # eval.batch_size (default: EvalConfig's)
    python bench/eval_speed.py --max-seconds 60     # exit 1 when over the target
    python bench/eval_speed.py --smoke              # CPU: tiny model, 4 x 4 tokens, seconds

The last line printed is the result, e.g.
    eval_speed: 500 examples x 128 new tokens, batch 16, base + fine-tune: <s> s (scoring <s> s, base <s> s,
    fine-tune <s> s) on <GPU>
No H100 figure exists yet: this script has only run in --smoke mode.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # run as a script: make `train` and `eval` importable
    sys.path.insert(0, str(REPO_ROOT))

# Qwen2.5-3B(-Instruct)'s config.json shape.
QWEN2_5_3B = dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
                  num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768, rope_theta=1_000_000.0,
                  rms_norm_eps=1e-6, tie_word_embeddings=True, bos_token_id=151643, eos_token_id=151645)
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
WORDS = ("river mountain city language history music planet garden engine market science winter "
         "ocean forest bridge letter doctor village kitchen castle").split()


def write_eval_data(path: Path, n: int, seed: int = 0) -> None:
    """n chat rows with prompts of varied length (a few to ~100 words) and short references."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        context = " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 100)))
        question = f"Example {i}. Read this: {context}. Which word comes first?"
        rows.append({"messages": [{"role": "user", "content": question},
                                  {"role": "assistant", "content": context.split()[0]}]})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def build_standin(out_dir: Path):
    """A random-weight Qwen2.5-3B-shaped model in bf16 with Qwen's tokenizer, saved like a snapshot;
    returns the model, still in memory, for the adapter."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig, Qwen2Config

    from train.tokenizer import build_qwen_tokenizer

    config = Qwen2Config(**QWEN2_5_3B, architectures=["Qwen2ForCausalLM"])
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.generation_config = GenerationConfig(eos_token_id=[151645, 151643], pad_token_id=151643)
    model.save_pretrained(out_dir, safe_serialization=True)
    build_qwen_tokenizer("qwen2_5").save_pretrained(out_dir)
    return model


def save_adapter(model, adapter_dir: Path) -> None:
    """A LoRA r=16 adapter on all seven projections with random non-zero weights (PEFT's init
    leaves B at zero, which makes the fine-tune the base: same timing, but identical outputs)."""
    import torch
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=LORA_TARGETS, task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.01)
    peft_model.save_pretrained(adapter_dir, safe_serialization=True)


def build_run(work: Path, model, base_name: str, examples: int, max_new_tokens: int, batch_size: int, smoke: bool) -> Path:
    """A run directory as train.py leaves it: adapter/, recipe.yaml, run.json."""
    from omegaconf import OmegaConf

    from train.config import DataConfig, EvalConfig, ModelConfig, PeftConfig, Precision, ScionConfig, TrainerConfig
    from train.files import write_json_atomic, write_text_atomic
    from train.rundir import ADAPTER_DIR, RECIPE_FILE, RUN_FILE

    data = work / "eval.jsonl"
    write_eval_data(data, examples)
    precision = Precision.fp32 if smoke else Precision.bf16
    run_dir = work / "run"
    config = ScionConfig(
        model=ModelConfig(name_or_path=base_name),
        peft=PeftConfig(r=16, alpha=32, dropout=0.0),
        data=DataConfig(train=str(data), eval=str(data), max_length=1024),
        trainer=TrainerConfig(output_dir=str(run_dir), precision=precision),
        eval=EvalConfig(max_examples=examples, max_new_tokens=max_new_tokens, batch_size=batch_size, num_samples=2),
        recipe_name="eval_speed",
    )
    save_adapter(model, run_dir / ADAPTER_DIR)
    write_text_atomic(run_dir / RECIPE_FILE, OmegaConf.to_yaml(OmegaConf.structured(config)))
    write_json_atomic(run_dir / RUN_FILE, {
        "scion_run_version": 1, "recipe": "eval_speed",
        "base": {"name_or_path": base_name, "hub_id": None, "architecture": "Qwen2ForCausalLM"},
        "peft": {"method": "lora", "r": 16, "alpha": 32, "target_modules": LORA_TARGETS},
        "data": {"sources": []}, "log_history": [],
    })
    return run_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny model on the CPU, 4 examples x 4 tokens")
    parser.add_argument("--examples", type=int, help="held-out examples (default 500; smoke 4)")
    parser.add_argument("--max-new-tokens", type=int, help="new tokens per generation (default 128; smoke 4)")
    parser.add_argument("--batch-size", type=int, help="eval.batch_size for generation and loss (default: the schema's)")
    parser.add_argument("--work-dir", type=Path, help="where the stand-in and the run go (default: a temporary folder, removed)")
    parser.add_argument("--max-seconds", type=float, help="exit 1 when base + fine-tune take longer")
    args = parser.parse_args(argv)
    from train.config import EvalConfig

    examples = args.examples or (4 if args.smoke else 500)
    batch_size = args.batch_size or EvalConfig().batch_size
    max_new_tokens = args.max_new_tokens or (4 if args.smoke else 128)

    import torch

    from eval.run import evaluate_run
    from train.tiny import ensure_tiny_model

    if not args.smoke and not torch.cuda.is_available():
        print("eval_speed: no GPU; the full benchmark needs one (use --smoke on the CPU)", file=sys.stderr)
        return 2
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="scion-eval-speed-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        if args.smoke:
            from transformers import AutoModelForCausalLM

            base_name = "tiny:qwen2"
            model = AutoModelForCausalLM.from_pretrained(ensure_tiny_model(base_name), dtype=torch.float32)
        else:
            print("eval_speed: building the Qwen2.5-3B stand-in (not timed)", flush=True)
            base_dir = work / "qwen2.5-3b-standin"
            model = build_standin(base_dir)
            base_name = str(base_dir)
        shutil.rmtree(work / "run", ignore_errors=True)
        run_dir = build_run(work, model, base_name, examples, max_new_tokens, batch_size, args.smoke)
        del model  # evaluate_run loads base + adapter from disk, as eval.py does
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

        config = EvalConfig(max_examples=examples, max_new_tokens=max_new_tokens, batch_size=batch_size, num_samples=2)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        started = time.time()
        results = evaluate_run(run_dir, config)
        seconds = time.time() - started
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)

    timings = results["timings"]
    scoring = timings["base_seconds"] + timings["finetune_seconds"]
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    print(f"eval_speed: {examples} examples x {max_new_tokens} new tokens, batch {batch_size}, "
          f"base + fine-tune: {seconds:.1f} s (scoring {scoring:.1f} s, base {timings['base_seconds']:.1f} s, "
          f"fine-tune {timings['finetune_seconds']:.1f} s) on {device}", flush=True)
    if args.max_seconds is not None and seconds > args.max_seconds:
        print(f"eval_speed: over the target of {args.max_seconds:.0f} s", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
