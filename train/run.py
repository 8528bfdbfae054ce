"""One training run, top to bottom: check everything, load, train, save the run directory.

Everything that can fail on bad input (config values, the base's files, every data row) is
checked before the output directory is created or any weights are loaded.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from train import speed
from train.config import FILE_RECIPES, Checkpointing, PeftMethod, Precision, ScionConfig, to_scion_config
from train.data import PreparedData, prepare_data
from train.errors import Preempted, ScionError
from train.model import BaseModel, add_adapter, check_target_modules, load_model, load_tokenizer, resolve_base
from train.rundir import (
    ADAPTER_DIR, CHECKPOINTS_DIR, RECIPE_FILE, RUN_FILE, RunLock, check_free_space, default_output_dir,
    prepare_run_dir, write_json_atomic, write_text_atomic,
)
from train.checkpoints import check_resume_config

PACKAGES = ["torch", "transformers", "peft", "trl", "datasets", "accelerate", "huggingface_hub", "bitsandbytes", "hydra-core"]


def main_from_hydra(cfg: DictConfig) -> None:
    """Entry from train.py: typed config in, one-line error and exit code 2 on bad input."""
    from hydra.core.hydra_config import HydraConfig

    try:
        config = to_scion_config(cfg)
        choice = HydraConfig.get().runtime.choices.get("recipe") or "custom"
        if choice not in FILE_RECIPES:  # a saved recipe.yaml keeps the name of the run it came from
            config.recipe_name = choice
        train(config)
    except MissingMandatoryValue as e:
        print(f"error: missing value for {e.full_key} (set it in the recipe or as {e.full_key}=...)", file=sys.stderr)
        sys.exit(2)
    except ScionError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except Preempted as e:
        print(f"stopped: {e}", file=sys.stderr)
        sys.exit(e.exit_code)


def package_versions(extra: tuple[str, ...] = ()) -> dict[str, str]:
    """Versions of Python and the packages a result depends on (PACKAGES plus `extra`)."""
    versions = {"python": platform.python_version()}
    for name in (*PACKAGES, *extra):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def check_config(config: ScionConfig) -> None:
    """Value checks the schema's types cannot express; all before any loading."""
    t, p = config.trainer, config.peft
    if not 0 <= t.warmup_ratio < 1:
        raise ScionError(f"trainer.warmup_ratio must be in [0, 1), got {t.warmup_ratio}")
    for key, value in (("trainer.batch_size", t.batch_size), ("trainer.gradient_accumulation_steps", t.gradient_accumulation_steps),
                       ("peft.r", p.r), ("peft.alpha", p.alpha)):
        if value < 1:
            raise ScionError(f"{key} must be at least 1, got {value}")
    if t.learning_rate <= 0:
        raise ScionError(f"trainer.learning_rate must be positive, got {t.learning_rate}")
    if not 0 <= p.dropout < 1:
        raise ScionError(f"peft.dropout must be in [0, 1), got {p.dropout}")
    for target in t.report_to:
        if target not in ("tensorboard", "wandb"):
            raise ScionError(f"trainer.report_to: unknown logger {target!r}; use tensorboard and/or wandb")
    if p.method == PeftMethod.qlora and t.precision == Precision.fp32:
        raise ScionError("peft.method=qlora computes in bf16; set trainer.precision=bf16")


def will_evaluate(config: ScionConfig) -> bool:
    """Evaluation is on by default, and needs a held-out split to compare base and fine-tune on."""
    return config.eval.enabled and bool(config.data.eval or config.data.eval_ratio > 0)


def pick_device(config: ScionConfig) -> str:
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if not config.trainer.allow_cpu:
        raise ScionError("no GPU found and trainer.allow_cpu=false")
    if config.peft.method == PeftMethod.qlora:
        try:
            import bitsandbytes  # noqa: F401
        except Exception as e:
            raise ScionError(f"peft.method=qlora needs bitsandbytes, which failed to import: {e}") from None
    return "cpu"


def report_data(data: PreparedData) -> None:
    for split, s in data.stats.items():
        line = f"data[{split}]: {s.examples} examples, {s.tokens} tokens ({s.trained_tokens} trained) from {s.source}"
        if s.truncated or s.dropped_too_long:
            line += f"; {s.truncated} truncated, {s.dropped_too_long} dropped as too long"
        print(line, flush=True)
        if s.duplicates:
            print(f"warning: data[{split}]: {s.duplicates} duplicate examples ({'; '.join(s.duplicate_examples)})", flush=True)


def sft_args(config: ScionConfig, run_dir: Path, device: str, has_eval: bool):
    from trl import SFTConfig

    t = config.trainer
    if "tensorboard" in t.report_to:  # transformers 5 takes the folder from the environment only
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(run_dir / "logs")
    return SFTConfig(
        output_dir=str(run_dir / CHECKPOINTS_DIR),
        seed=t.seed,
        data_seed=t.seed,
        num_train_epochs=t.epochs,
        max_steps=t.max_steps,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler,
        warmup_steps=t.warmup_ratio,  # a float below 1 is a ratio of the total steps
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        bf16=t.precision == Precision.bf16,
        fp16=t.precision == Precision.fp16,
        gradient_checkpointing=False,  # Scion's own policy, enabled in _train_in (train/speed.py)
        logging_steps=t.logging_steps,
        logging_nan_inf_filter=False,  # a NaN loss must show in the logs (pitfalls.md #4)
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=None,  # rotation is ScionTrainer's: it never deletes the newest complete checkpoint
        eval_strategy="steps" if (has_eval and t.eval_steps) else "no",
        eval_steps=t.eval_steps,
        report_to=list(t.report_to) or "none",
        use_cpu=device == "cpu",
        include_num_input_tokens_seen="non_padding",
        # The data is tokenized and labelled by train/data.py; TRL must not touch it again.
        dataset_kwargs={"skip_prepare_dataset": True},
        remove_unused_columns=False,
        dataloader_num_workers=0,
        # GPU (or packing): padding-free micro-batches for the varlen kernels; the CPU keeps padded
        # batches (same math, tests/test_speed.py), where sdpa would need an O(T^2) block mask.
        **(speed.sft_speed_kwargs(device, t.packing, config.data.max_length)
           if device == "cuda" or t.packing else {"max_length": None}),
    )


def checkpointing_policy(config: ScionConfig, model, free_memory) -> str:
    """Enable the activation checkpointing policy of trainer.checkpointing on `model`; returns its name.

    auto: on a GPU, the fastest policy whose estimate fits the memory that was free before loading
    (speed.auto_checkpointing), for the largest micro-batch the config allows (batch_size rows of at most
    data.max_length tokens); on the CPU, none, since recomputing only costs time there.
    """
    choice = config.trainer.checkpointing
    if choice != Checkpointing.auto:
        policy = choice.value
    elif free_memory is None:
        policy = "none"
    else:
        tokens = config.trainer.batch_size * config.data.max_length
        policy = speed.auto_checkpointing(model, free_memory, tokens, config.peft.dropout)
    try:
        speed.enable_checkpointing(model, policy)
    except ValueError as e:
        raise ScionError(f"trainer.checkpointing={policy}: {e}") from None
    return policy if choice != Checkpointing.auto else f"{policy} (auto)"


def save_adapter(model, tokenizer, base: BaseModel, run_dir: Path) -> Path:
    """Adapter + tokenizer into adapter/, written to a staging folder and renamed into place."""
    target = run_dir / ADAPTER_DIR
    staging = run_dir / f".{ADAPTER_DIR}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    # Lineage: PEFT copies the base's name_or_path, a local path when loaded from disk.
    for peft_config in model.peft_config.values():
        peft_config.base_model_name_or_path = base.hub_id or base.local_dir
        peft_config.revision = base.commit_sha or base.revision
    # save_embedding_layers=False: Scion never trains embeddings, and "auto" makes PEFT fetch the
    # base's config from the Hub to check for a resized vocabulary.
    model.save_pretrained(staging, safe_serialization=True, save_embedding_layers=False)
    tokenizer.save_pretrained(staging)
    # PEFT writes a stub model card; the publisher writes the real one with correct lineage.
    (staging / "README.md").unlink(missing_ok=True)
    staging.rename(target)
    return target


@dataclass
class TrainResult:
    run_dir: Path
    model: Any  # the trained PeftModel, still in memory (for evaluation right after training)
    tokenizer: Any
    run: dict[str, Any]  # the content of run.json


def train(config: ScionConfig) -> TrainResult:
    """Run one fine-tune described by `config`; returns the run directory and the trained model."""
    started = time.time()
    started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")

    # ---- Preflight: config, base files, tokenizer, every data row. Nothing written yet.
    check_config(config)
    if will_evaluate(config):
        from eval.run import preflight as check_eval

        check_eval(config)
    elif config.eval.enabled:
        print("eval: skipped: no held-out split (set data.eval or data.eval_ratio to compare with the base)", flush=True)
    device = pick_device(config)
    base = resolve_base(config.model)
    if base.max_position_embeddings and config.data.max_length > base.max_position_embeddings:
        raise ScionError(
            f"data.max_length={config.data.max_length} exceeds the model's context of {base.max_position_embeddings} tokens"
        )
    check_target_modules(base, config.peft)
    if config.publish.repo_id:
        from publish.run import preflight_publish

        preflight_publish(config.publish, base.hub_id, base.architecture, Path(base.local_dir))
    tokenizer = load_tokenizer(base, config.model)
    data = prepare_data(config.data, tokenizer, seed=config.trainer.seed)
    report_data(data)
    data_done = time.time()

    # ---- Run directory: locked for this run; the resolved recipe first, run.json last.
    run_dir, resume_from = prepare_run_dir(config.trainer.output_dir or default_output_dir(config.recipe_name),
                                           config.trainer.resume)
    lock = RunLock(run_dir)
    try:
        return _train_in(run_dir, resume_from, config, base, tokenizer, data, device, started, started_at, data_done)
    finally:
        lock.release()


def resume_fingerprint(config: ScionConfig, base: BaseModel, data: PreparedData) -> dict[str, Any]:
    """What must not change when a run is resumed (pitfalls.md #11)."""
    return {
        "base": base.hub_id or base.name_or_path,
        "base_revision": base.commit_sha or base.revision,
        "peft.method": config.peft.method.value,
        "peft.r": config.peft.r,
        "peft.alpha": config.peft.alpha,
        "peft.target_modules": sorted(config.peft.target_modules),
        "trainer.batch_size": config.trainer.batch_size,
        "trainer.gradient_accumulation_steps": config.trainer.gradient_accumulation_steps,
        # Packing and the seed decide which examples make up each step (and their order).
        "trainer.packing": config.trainer.packing,
        "trainer.seed": config.trainer.seed,
        "data.max_length": config.data.max_length,
        "data.fingerprints": [s.get("sha256") or s.get("fingerprint") or s.get("source") for s in data.sources],
    }


def _train_in(run_dir, resume_from, config, base, tokenizer, data, device, started, started_at, data_done):
    print(f"run directory: {run_dir}", flush=True)
    fingerprint = resume_fingerprint(config, base, data)
    if resume_from is not None:
        check_resume_config(resume_from, fingerprint, config.trainer.allow_config_change)
        print(f"resuming from {resume_from}", flush=True)
    write_text_atomic(run_dir / RECIPE_FILE, OmegaConf.to_yaml(OmegaConf.structured(config)))

    # ---- Model and adapter.
    import torch
    from transformers import ProgressCallback, set_seed

    from train.progress import ScionProgress
    from train.trainer import PreemptionCallback, ScionTrainer

    set_seed(config.trainer.seed)
    free_memory = torch.cuda.mem_get_info()[0] if device == "cuda" else None  # before the weights arrive
    model = load_model(base, config.model, config.peft, config.trainer.precision, device)
    model = add_adapter(model, config.peft)
    checkpointing = checkpointing_policy(config, model, free_memory)
    trainable, total = model.get_nb_trainable_parameters()
    print(f"model: {base.hub_id or base.name_or_path} ({base.architecture}) on {device}; "
          f"{config.peft.method.value} r={config.peft.r}: {trainable:,} trainable of {total:,} parameters; "
          f"activation checkpointing: {checkpointing}", flush=True)
    # A checkpoint holds the adapter (fp32) plus two AdamW moments: ~12 bytes per trainable weight.
    keep = max(config.trainer.save_total_limit or 1, 1)
    check_free_space(run_dir, int(trainable * 12 * (keep + 1) + trainable * 4 + 64 * 2**20))
    loaded = time.time()

    # ---- Train.
    args = sft_args(config, run_dir, device, data.eval is not None)
    train_rows = data.train
    if config.trainer.packing:  # seeded, so a resumed run sees the same rows
        train_rows = speed.pack_dataset(data.train, config.data.max_length, seed=config.trainer.seed)
    gpu_name = torch.cuda.get_device_name(0) if device == "cuda" else None
    trainer = ScionTrainer(
        model=model,
        args=args,
        train_dataset=train_rows,
        eval_dataset=data.eval,
        processing_class=tokenizer,
        resume_fingerprint=fingerprint,
        keep_checkpoints=config.trainer.save_total_limit,
    )
    trainer.remove_callback(ProgressCallback)
    # tokens/s and MFU into every log (before the progress bar, which shows them)
    trainer.add_callback(speed.speed_callback(speed.model_flops_per_token(model.config), speed.peak_flops(gpu_name)))
    trainer.add_callback(ScionProgress())
    preemption = PreemptionCallback()
    trainer.add_callback(preemption)
    preemption.install()
    # tokens/s counts this call's steps only: a resumed run's tokens_seen includes the steps before it.
    # Read now: rotation may delete the checkpoint during training.
    tokens_before = json.loads((resume_from / "trainer_state.json").read_text()).get("num_input_tokens_seen", 0) if resume_from else 0
    train_started = time.time()
    try:
        result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    finally:
        preemption.uninstall()
    if preemption.signal_received is not None:
        raise Preempted(f"preempted at step {trainer.state.global_step}; checkpoint saved in {run_dir / CHECKPOINTS_DIR}. "
                        f"Run the same command with trainer.output_dir={run_dir} to resume")
    trained = time.time()
    metrics: dict[str, Any] = {
        "train_loss": result.training_loss,
        "global_step": trainer.state.global_step,
        "epochs": trainer.state.epoch,
        "tokens_seen": int(trainer.state.num_input_tokens_seen),
        # transformers' own timer of the training loop: no loading, trainer setup or checkpoint restore
        "train_seconds": round(result.metrics["train_runtime"], 2),
    }
    metrics.update(speed.run_speed_summary(metrics["tokens_seen"] - tokens_before, result.metrics["train_runtime"],
                                           model.config, gpu_name))
    if data.eval is not None:
        eval_loss = trainer.evaluate()["eval_loss"]
        metrics["eval_loss"] = eval_loss
        metrics["eval_perplexity"] = math.exp(eval_loss) if eval_loss < 50 else float("inf")
        print(f"eval: loss {eval_loss:.4f}, perplexity {metrics['eval_perplexity']:.2f}", flush=True)

    # ---- Save: adapter, then run.json (the completion marker).
    save_adapter(trainer.model, tokenizer, base, run_dir)
    finished = time.time()
    run = {
        "scion_run_version": 1,
        "recipe": config.recipe_name,
        "command": " ".join(["python", "train.py", *sys.argv[1:]]),
        "base": base.to_dict(),
        "peft": {"method": config.peft.method.value, "r": config.peft.r, "alpha": config.peft.alpha,
                 "target_modules": list(config.peft.target_modules)},
        "data": {"sources": data.sources, "stats": {k: vars(v) for k, v in data.stats.items()},
                 "max_length": config.data.max_length, "truncation": config.data.truncation.value},
        "metrics": metrics,
        "log_history": trainer.state.log_history,  # per-step loss/lr/eval_loss, for plots
        "device": gpu_name or platform.processor() or "cpu",
        "speed": {"attn_implementation": model.config._attn_implementation, "packing": config.trainer.packing,
                  "padding_free": device == "cuda" or config.trainer.packing, "checkpointing": checkpointing},
        "versions": package_versions(),
        "timings": {
            "started_at": started_at,
            "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "preflight_seconds": round(data_done - started, 2),
            "load_seconds": round(train_started - data_done, 2),  # the model, the adapter and the trainer
            "train_seconds": round(trained - train_started, 2),
            "total_seconds": round(finished - started, 2),
        },
    }
    write_json_atomic(run_dir / RUN_FILE, run)
    print(f"done in {finished - started:.0f}s: train loss {metrics['train_loss']:.4f}; run saved to {run_dir}", flush=True)

    # ---- Evaluate against the base (same split, prompts and decoding), reusing the model in memory.
    if will_evaluate(config):
        from eval.run import evaluate_run

        evaluate_run(run_dir, config.eval, model=trainer.model, tokenizer=tokenizer)

    # ---- Publish, when the recipe or command line names a repo (with the eval results in the card).
    if config.publish.repo_id:
        from publish.run import publish_run

        publish_run(run_dir, config.publish)
    return TrainResult(run_dir=run_dir, model=trainer.model, tokenizer=tokenizer, run=run)
