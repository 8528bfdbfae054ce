#!/usr/bin/env python
"""LoRA/QLoRA training throughput and memory: stock transformers + PEFT against Scion's path, one run.

Each configuration runs in its own process (peak memory and kernel patches must not leak between
them) on the same seeded synthetic chat-length data, and the parent prints a table with ratios
against stock and writes JSON. See bench/README.md.

    python bench/lora_bench.py                                  # every model, on the GPU
    python bench/lora_bench.py --models qwen2.5-3b --steps 12   # one model (stock, scion, qlora_*)
    python bench/lora_bench.py --smoke                          # tiny model on the CPU, seconds

Configurations:
- stock: what a plain transformers + PEFT script does (the settings of ../shared/bench's probe):
  `seqs` sequences per step padded to the longest, sdpa, non-reentrant gradient checkpointing, the
  model's own loss (full fp32 logits), LoRA r=16 on all seven projections, AdamW.
- scion: what train/run.py runs (train/packing.py, train/attention.py, train/activation_checkpointing.py): whole examples packed best-fit into one
  padding-free row of `tokens_per_step` tokens (TRL's collator, position ids restarting per example),
  the attention `pick_attention` chooses, TRL's fused lm_head + log-prob loss, Liger's RMSNorm/RoPE/
  SwiGLU where installed, bf16 autocast as the Trainer uses, checkpointing chosen by
  `pick_checkpointing` from the free memory (or --ckpt).
- qlora_stock / qlora_scion (Qwen2.5-3B): the same on a bitsandbytes nf4 base. qlora_stock goes
  through peft.prepare_model_for_kbit_training (fp32 upcasts, as scripts usually do); qlora_scion
  loads as train/model.py does (non-quantised weights kept bf16) with fp32 LoRA weights, as
  ScionTrainer keeps them.

Tokens are real tokens (no padding): the sum of the example lengths in the timed steps.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # run as a script: make `train` importable
    sys.path.insert(0, str(REPO_ROOT))

PAD_ID = 151643  # <|endoftext|>
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

# The exact shapes of the real checkpoints' config.json (weights are random: speed does not depend on them).
MODELS = {
    "qwen2.5-0.5b": dict(arch="qwen2", hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                         num_attention_heads=14, num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True,
                         max_position_embeddings=32768, rope_theta=1_000_000.0, rms_norm_eps=1e-6),
    "qwen2.5-3b": dict(arch="qwen2", hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
                       num_attention_heads=16, num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True,
                       max_position_embeddings=32768, rope_theta=1_000_000.0, rms_norm_eps=1e-6),
    "qwen3-4b": dict(arch="qwen3", hidden_size=2560, intermediate_size=9728, num_hidden_layers=36,
                     num_attention_heads=32, num_key_value_heads=8, head_dim=128, vocab_size=151936,
                     tie_word_embeddings=True, max_position_embeddings=40960, rope_theta=1_000_000.0,
                     rms_norm_eps=1e-6),
    # train/tiny.py's shape: the CPU smoke run
    "tiny": dict(arch="qwen2", hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True, max_position_embeddings=32768,
                 rope_theta=1_000_000.0, rms_norm_eps=1e-6),
}
CONFIGS = {"qwen2.5-0.5b": ["stock", "scion"], "qwen2.5-3b": ["stock", "scion", "qlora_stock", "qlora_scion"],
           "qwen3-4b": ["stock", "scion"], "tiny": ["stock", "scion"]}
BASELINE = {"scion": "stock", "qlora_stock": "stock", "qlora_scion": "stock"}

# Full-size defaults (the probe's) and the smoke run's.
DEFAULTS = dict(steps=12, warmup=3, seqs=8, tokens_per_step=16384, median=450, max_len=2048, min_len=32, pool=6000)
SMOKE = dict(steps=1, warmup=1, seqs=2, tokens_per_step=128, median=24, max_len=64, min_len=8, pool=64)


# ---------------------------------------------------------------------------------------------
# Data: seeded lengths; tokens of example i depend on (seed, i) only, so every config sees the same
# ---------------------------------------------------------------------------------------------
def example_lengths(n, median, max_len, min_len, seed=0):
    """Chat-like lengths: lognormal around the median (sigma 0.8), clipped to [min_len, max_len]."""
    rng = random.Random(seed)
    return [int(min(max(min_len, rng.lognormvariate(math.log(median), 0.8)), max_len)) for _ in range(n)]


def example(i, length, vocab, seed=0):
    """Example i: random ids; the first 30% (at least the first token) is prompt, labelled -100."""
    import torch

    g = torch.Generator().manual_seed(seed * 1_000_003 + i)
    ids = torch.randint(0, vocab - 300, (length,), generator=g).tolist()
    prompt = max(1, int(length * 0.3))
    return {"input_ids": ids, "labels": [-100] * prompt + ids[prompt:]}


def stock_batches(lengths, n_steps, seqs, vocab, device):
    """`seqs` consecutive examples per step, right-padded to the longest (what a plain script does)."""
    import torch

    for step in range(n_steps):
        idx = range(step * seqs, (step + 1) * seqs)
        exs = [example(i, lengths[i], vocab) for i in idx]
        width = max(len(e["input_ids"]) for e in exs)
        ids = torch.full((seqs, width), PAD_ID, dtype=torch.long)
        mask = torch.zeros((seqs, width), dtype=torch.long)
        labels = torch.full((seqs, width), -100, dtype=torch.long)
        for r, e in enumerate(exs):
            n = len(e["input_ids"])
            ids[r, :n], mask[r, :n], labels[r, :n] = torch.tensor(e["input_ids"]), 1, torch.tensor(e["labels"])
        batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
        yield {k: v.to(device) for k, v in batch.items()}, sum(lengths[i] for i in idx), int((labels[:, 1:] != -100).sum())


def scion_batches(lengths, n_steps, tokens_per_step, vocab, device, seed=0):
    """Best-fit rows of the pool (train/packing.py), a seeded random pick of them, TRL's padding-free collator."""
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from train.packing import best_fit_bins

    bins = best_fit_bins(lengths, tokens_per_step, seed=seed)
    if len(bins) < n_steps:
        raise SystemExit(f"the pool packs into {len(bins)} rows, fewer than {n_steps} steps: raise --pool")
    collator = DataCollatorForLanguageModeling(pad_token_id=PAD_ID, padding_free=True)
    for b in random.Random(seed).sample(bins, n_steps):
        exs = [example(i, lengths[i], vocab) for i in b]
        row = {"input_ids": [t for e in exs for t in e["input_ids"]], "labels": [t for e in exs for t in e["labels"]],
               "seq_lengths": [lengths[i] for i in b]}
        batch = collator([row])
        moved = {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}
        yield moved, sum(row["seq_lengths"]), int((batch["labels"] != -100).sum()), len(row["input_ids"]) / tokens_per_step


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------
def hf_config(name):
    from transformers import Qwen2Config, Qwen3Config

    spec = dict(MODELS[name])
    arch = spec.pop("arch")
    return (Qwen2Config if arch == "qwen2" else Qwen3Config)(**spec), arch


def model_class(arch):
    from transformers import Qwen2ForCausalLM, Qwen3ForCausalLM

    return Qwen2ForCausalLM if arch == "qwen2" else Qwen3ForCausalLM


def random_model(name, device, dtype, attn):
    """Random weights built directly on the device (seeded: every config starts from the same ones)."""
    import torch

    cfg, arch = hf_config(name)
    torch.manual_seed(0)
    with torch.device(device):
        return model_class(arch)._from_config(cfg, dtype=dtype, attn_implementation=attn)


def quantized_model(name, attn, cache_dir, scion):
    """nf4 base: random bf16 weights saved once to cache_dir, then loaded 4-bit as a real QLoRA load is."""
    import torch
    from transformers import BitsAndBytesConfig

    cfg, arch = hf_config(name)
    folder = Path(cache_dir) / f"{name}-bf16"
    if not (folder / "config.json").exists():
        model = random_model(name, "cuda", torch.bfloat16, "sdpa")
        model.save_pretrained(folder, safe_serialization=True)
        del model
        torch.cuda.empty_cache()
    quant = dict(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                 bnb_4bit_compute_dtype=torch.bfloat16)
    if scion:  # train/model.py: keep what is not quantised in bf16 (pitfalls.md #14)
        quant["bnb_4bit_quant_storage"] = torch.bfloat16
    return model_class(arch).from_pretrained(folder, quantization_config=BitsAndBytesConfig(**quant),
                                             dtype=torch.bfloat16, attn_implementation=attn, device_map={"": 0})


def add_lora(model):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=LORA_TARGETS, task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def build_stock(name, config, device, dtype, cache_dir):
    """The probe's stock (and qlora_stock) model: sdpa, checkpointing, plain PEFT."""
    if config == "qlora_stock":
        from peft import prepare_model_for_kbit_training

        model = quantized_model(name, "sdpa", cache_dir, scion=False)
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    else:
        model = random_model(name, device, dtype, "sdpa")
    model = add_lora(model)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()
    model.config.use_cache = False
    return model, {"attn": "sdpa", "checkpointing": "full", "liger": False}


def build_scion(name, config, device, dtype, cache_dir, tokens_per_step, ckpt):
    """Scion's path: chosen attention, fused layer kernels, fused lm_head, policy-chosen checkpointing."""
    from trl.trainer.utils import add_fused_lm_head

    from train import activation_checkpointing, attention, kernels

    attn = attention.pick_attention(device, dtype)
    qlora = config == "qlora_scion"
    model = quantized_model(name, attn, cache_dir, scion=True) if qlora else random_model(name, device, dtype, attn)
    liger = kernels.apply_fused_layer_kernels(model, device)
    add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))  # as SFTTrainer
    model.config.use_cache = False
    model = add_lora(model)  # fp32 adapter, QLoRA included, as ScionTrainer keeps it (train/trainer.py)
    policy = ckpt or choose_policy(model, device, tokens_per_step)  # after wrapping, as train/run.py does
    activation_checkpointing.enable_checkpointing(model, policy)
    return model, {"attn": attn, "checkpointing": policy, "liger": liger}


def choose_policy(model, device, tokens_per_step):
    """train.py's trainer.checkpointing=auto (activation_checkpointing.auto_checkpointing); CPU: full, like stock."""
    import torch

    from train import activation_checkpointing

    if not str(device).startswith("cuda"):
        return "full"
    free, _ = torch.cuda.mem_get_info()
    return activation_checkpointing.auto_checkpointing(model, free + torch.cuda.memory_allocated(), tokens_per_step)  # free before loading


# ---------------------------------------------------------------------------------------------
# One configuration (the worker process)
# ---------------------------------------------------------------------------------------------
def run_worker(name, config, opts, cache_dir, ckpt):
    import torch

    from train import throughput

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    dtype = torch.bfloat16 if cuda else torch.float32
    scion = config.endswith("scion")
    n_steps = opts["warmup"] + opts["steps"]
    cfg, _ = hf_config(name)
    lengths = example_lengths(opts["pool"], opts["median"], opts["max_len"], opts["min_len"])
    if scion:
        model, info = build_scion(name, config, device, dtype, cache_dir, opts["tokens_per_step"], ckpt)
        batches = scion_batches(lengths, n_steps, opts["tokens_per_step"], cfg.vocab_size, device)
    else:
        if opts["pool"] < n_steps * opts["seqs"]:
            raise SystemExit("the pool is smaller than steps x seqs: raise --pool")
        model, info = build_stock(name, config, device, dtype, cache_dir)
        batches = stock_batches(lengths, n_steps, opts["seqs"], cfg.vocab_size, device)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4, fused=cuda)
    autocast = torch.autocast(device, dtype=dtype, enabled=scion and cuda)  # the Trainer's bf16 autocast
    if cuda:  # after the build, as the probe: the peak of training, resident weights included
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()

    real = trained = 0
    fill = []
    started = None
    for step in range(n_steps):
        if step == opts["warmup"]:
            if cuda:
                torch.cuda.synchronize()
            started, real, trained = time.perf_counter(), 0, 0
        batch, n_real, n_trained, *rest = next(batches)
        with autocast:
            out = model(**batch, fused_lm_head=True) if scion else model(**batch)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        real, trained = real + n_real, trained + n_trained
        fill += rest
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    rate = real / seconds
    fpt = throughput.model_flops_per_token(cfg)
    device_name = torch.cuda.get_device_name(0) if cuda else platform.processor() or "cpu"
    utilisation = throughput.mfu(rate, fpt, throughput.peak_flops(device_name) if cuda else None)
    return {
        "model": name, "config": config, "status": "ok", "device": device_name, **info,
        "steps": opts["steps"], "real_tokens": real, "trained_tokens": trained,
        "tokens_per_step": round(real / opts["steps"]), "seconds": round(seconds, 3),
        "tokens_per_s": round(rate, 1), "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
        "model_tflops": round(rate * fpt / 1e12, 2), "mfu": None if utilisation is None else round(utilisation, 4),
        "row_fill": round(sum(fill) / len(fill), 3) if fill else None, "loss": round(out.loss.item(), 4),
    }


def worker_main(args):
    opts = SMOKE if args.smoke else {k: getattr(args, k) for k in DEFAULTS}
    try:
        result = run_worker(args.worker[0], args.worker[1], opts, args.cache_dir, args.ckpt)
    except Exception as e:  # out of memory is a result, not a failure
        import torch

        if not isinstance(e, torch.cuda.OutOfMemoryError):
            raise
        traceback.print_exc()
        result = {"model": args.worker[0], "config": args.worker[1], "status": "oom"}
    print("RESULT " + json.dumps(result), flush=True)


# ---------------------------------------------------------------------------------------------
# The parent: one process per configuration, the table, the JSON
# ---------------------------------------------------------------------------------------------
def run_one(name, config, args, cache_dir):
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", name, config, "--cache-dir", cache_dir]
    cmd += ["--smoke"] if args.smoke else [f"--{k.replace('_', '-')}={getattr(args, k)}" for k in DEFAULTS]
    if args.ckpt:
        cmd.append(f"--ckpt={args.ckpt}")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if args.smoke:
        env["CUDA_VISIBLE_DEVICES"] = ""  # the smoke run is the CPU run, even on a GPU machine
    print(f"--- {name} {config}", flush=True)
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"model": name, "config": config, "status": f"timeout after {args.timeout}s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        sys.stderr.write(proc.stderr[-4000:])
        return {"model": name, "config": config, "status": f"error: {tail[:300]}"}
    return json.loads(lines[-1][len("RESULT "):])


def add_ratios(results):
    """tokens/s and peak memory of each row divided by those of the same model's stock row."""
    for r in results:
        base = next((b for b in results if b["model"] == r["model"] and b["config"] == BASELINE.get(r["config"])), None)
        if r["status"] != "ok" or base is None or base["status"] != "ok":
            continue
        r["vs_stock_tokens_per_s"] = round(r["tokens_per_s"] / base["tokens_per_s"], 3)
        if r.get("peak_gib") and base.get("peak_gib"):
            r["vs_stock_peak"] = round(r["peak_gib"] / base["peak_gib"], 3)


def table(results):
    head = ["model", "config", "tokens/s", "x stock", "peak GiB", "x stock", "MFU", "attention", "ckpt", "tok/step"]
    rows = [head]
    for r in results:
        ok = r["status"] == "ok"
        fmt = lambda key, spec: (format(r[key], spec) if ok and r.get(key) is not None else "")  # noqa: E731
        rows.append([r["model"], r["config"], fmt("tokens_per_s", ",.0f") if ok else r["status"][:40],
                     fmt("vs_stock_tokens_per_s", ".2f"), fmt("peak_gib", ".1f"), fmt("vs_stock_peak", ".2f"),
                     fmt("mfu", ".1%"), r.get("attn", ""), r.get("checkpointing", ""), fmt("tokens_per_step", ",")])
    widths = [max(len(str(row[c])) for row in rows) for c in range(len(head))]
    return "\n".join("  ".join(str(v).ljust(w) for v, w in zip(row, widths)) for row in rows)


def parent_main(args):
    models = ["tiny"] if args.smoke else args.models.split(",")
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        raise SystemExit(f"unknown model(s) {unknown}; known: {sorted(MODELS)}")
    results = []
    with tempfile.TemporaryDirectory(prefix="lora-bench-") as cache_dir:
        for name in models:
            configs = CONFIGS[name] if not args.configs else [c for c in args.configs.split(",") if c in CONFIGS[name]]
            for config in configs:
                results.append(run_one(name, config, args, cache_dir))
    add_ratios(results)
    print(table(results), flush=True)
    from train.run import package_versions

    report = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([sys.executable, *sys.argv]),
        "smoke": args.smoke,
        "settings": SMOKE if args.smoke else {k: getattr(args, k) for k in DEFAULTS},
        "versions": package_versions(extra=("liger-kernel", "flash-attn")),
        "results": results,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    if any(r["status"].startswith(("error", "timeout")) for r in results):
        sys.exit(1)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="qwen2.5-0.5b,qwen2.5-3b,qwen3-4b", help=f"comma-separated, of {sorted(MODELS)}")
    p.add_argument("--configs", default="", help="comma-separated subset of stock,scion,qlora_stock,qlora_scion")
    p.add_argument("--smoke", action="store_true", help="tiny model on the CPU, a few steps (what the tests run)")
    p.add_argument("--out", default="bench/results.json")
    p.add_argument("--ckpt", choices=["none", "selective", "full", "offload"], help="scion: force a checkpointing policy")
    p.add_argument("--timeout", type=int, default=1200, help="seconds per configuration")
    for key, value in DEFAULTS.items():
        p.add_argument(f"--{key.replace('_', '-')}", type=int, default=value)
    p.add_argument("--worker", nargs=2, metavar=("MODEL", "CONFIG"), help=argparse.SUPPRESS)
    p.add_argument("--cache-dir", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


if __name__ == "__main__":
    parsed = parse_args()
    worker_main(parsed) if parsed.worker else parent_main(parsed)
