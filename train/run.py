"""One training run, top to bottom: check everything, load, train, save the run directory.

Everything that can fail on bad input (config values, the base's files, every data row) is
checked before the output directory is created or any weights are loaded:

    plan = plan_training(config)   # config values, device, the base's files, LoRA targets
    load_training_data(plan)       # the tokenizer and every data row
    result = run_training(plan)    # run directory, weights, training, adapter, run.json

`train(config)` does the three in a row. Evaluation and publishing are not training's business:
pipeline.py (called by train.py) runs their preflights between these steps and the steps
themselves after training.
"""

from __future__ import annotations

import math
import os
import platform
import shutil
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Optional

from omegaconf import OmegaConf

from train import activation_checkpointing, distributed, packing, throughput
from train.config import Checkpointing, Distributed, PeftMethod, Precision, ScionConfig, typed_command
from train.console import quiet_console
from train.mixture import PreparedData, prepare_data, report_lines
from train.errors import Preempted, ScionError
from train.model import (BaseModel, add_adapter, check_target_modules, default_lora_targets, load_model, load_tokenizer,
                         resolve_base)
from train.checkpoints import check_resume_config
from train.files import write_json_atomic, write_text_atomic
from train.rundir import (
    ADAPTER_DIR, CHECKPOINTS_DIR, RECIPE_FILE, RUN_FILE, RunLock, check_free_space, default_output_dir, prepare_run_dir,
)

PACKAGES = ["torch", "transformers", "peft", "trl", "datasets", "accelerate", "huggingface_hub", "bitsandbytes", "hydra-core"]


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
    if wants_fsdp(config) and p.method == PeftMethod.qlora:
        raise ScionError("trainer.distributed=fsdp does not support peft.method=qlora (4-bit weights under FSDP2 give "
                         "wrong outputs or NaN upstream: bitsandbytes #1424, accelerate #3874); use trainer.distributed=ddp")


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
    for line in report_lines(data):
        print(line, flush=True)


def checkpointing_argument() -> str:
    """The TrainingArguments field that switches activation checkpointing, on this transformers.

    Newer releases name it `activation_checkpointing` and warn on the old `gradient_checkpointing`
    (a deprecated alias kept until v6); older supported releases only know the old name.
    """
    import dataclasses

    from transformers import TrainingArguments

    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    return "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"


def wants_fsdp(config: ScionConfig) -> bool:
    """trainer.distributed=fsdp, or an accelerate config / `accelerate launch --use_fsdp` (accelerate honours those)."""
    return config.trainer.distributed == Distributed.fsdp or os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true"


def distributed_kwargs(config: ScionConfig, model) -> dict[str, Any]:
    """TrainingArguments for several processes: DDP needs nothing more; FSDP2 shards each decoder layer."""
    if not distributed.launched() or config.trainer.distributed != Distributed.fsdp:
        return {"ddp_find_unused_parameters": False} if distributed.launched() else {}
    layer = type(model.get_base_model().model.layers[0]).__name__
    return {"fsdp": True,
            "fsdp_config": {"version": 2, "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
                            "transformer_layer_cls_to_wrap": [layer], "state_dict_type": "FULL_STATE_DICT",
                            "reshard_after_forward": True}}


def engine_name(trainer) -> str:
    """What actually runs (accelerate may enable FSDP from its own config): single, ddp or fsdp."""
    if trainer.is_fsdp_enabled:
        return "fsdp"
    return "ddp" if distributed.launched() else "single"


def sft_args(config: ScionConfig, run_dir: Path, device: str, has_eval: bool, extra: Optional[dict[str, Any]] = None,
             padding_free_ok: bool = True):
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
        **{checkpointing_argument(): False},  # Scion's own policy, enabled in _train_in (train/activation_checkpointing.py)
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
        **(extra or {}),  # several processes: distributed_kwargs
        remove_unused_columns=False,
        dataloader_num_workers=0,
        # GPU (or packing): padding-free micro-batches for the varlen kernels; the CPU keeps padded
        # batches (same math, tests/test_speed.py), where sdpa would need an O(T^2) block mask.
        # padding_free_ok=False: the model cannot keep packed examples apart (train/deltanet.py).
        **(packing.sft_speed_kwargs(device, t.packing, config.data.max_length)
           if padding_free_ok and (device == "cuda" or t.packing) else {"max_length": None}),
    )


def checkpointing_policy(config: ScionConfig, model, free_memory) -> str:
    """Enable the activation checkpointing policy of trainer.checkpointing on `model`; returns its name.

    auto: on a GPU, the fastest policy whose estimate fits the memory that was free before loading
    (activation_checkpointing.auto_checkpointing), for the largest micro-batch the config allows (batch_size rows of at most
    data.max_length tokens); on the CPU, none, since recomputing only costs time there.
    """
    choice = config.trainer.checkpointing
    if choice != Checkpointing.auto:
        policy = choice.value
    elif free_memory is None:
        policy = "none"
    else:
        tokens = config.trainer.batch_size * config.data.max_length
        policy = activation_checkpointing.auto_checkpointing(model, free_memory, tokens, config.peft.dropout)
    try:
        activation_checkpointing.enable_checkpointing(model, policy)
    except ValueError as e:
        raise ScionError(f"trainer.checkpointing={policy}: {e}") from None
    return policy if choice != Checkpointing.auto else f"{policy} (auto)"


def save_adapter(model, tokenizer, base: BaseModel, run_dir: Path, state_dict=None) -> Path:
    """Adapter + tokenizer into adapter/, written to a staging folder and renamed into place.

    `state_dict`: the full (gathered) weights when the model is sharded across ranks (FSDP2).
    """
    target = run_dir / ADAPTER_DIR
    staging = run_dir / f".{ADAPTER_DIR}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    # Lineage: PEFT copies the base's name_or_path, a local path when loaded from disk.
    for peft_config in model.peft_config.values():
        peft_config.base_model_name_or_path = base.hub_id or base.local_dir
        peft_config.revision = base.commit_sha or base.revision
    # save_embedding_layers=False: Scion never trains embeddings, and "auto" makes PEFT fetch the
    # base's config from the Hub to check for a resized vocabulary.
    model.save_pretrained(staging, safe_serialization=True, save_embedding_layers=False, state_dict=state_dict)
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


@dataclass
class TrainingPlan:
    """A run that passed preflight: what `run_training` needs, found and checked, nothing written."""

    config: ScionConfig
    device: str
    base: BaseModel
    started: float  # time.time() when preflight began
    started_at: str  # the same, as ISO 8601 UTC
    tokenizer: Any = None  # set by load_training_data
    data: Optional[PreparedData] = None
    data_done: Optional[float] = None


def plan_training(config: ScionConfig) -> TrainingPlan:
    """Preflight, first part: config values, device, the base's files and LoRA targets (no weights).

    Under torchrun every rank runs the whole preflight itself (no process group yet), so bad input
    fails on every rank alike; only rank 0 prints.
    """
    distributed.quiet_other_ranks()
    started = time.time()
    started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    quiet_console(quantized_on_cpu=config.peft.method == PeftMethod.qlora)
    check_config(config)
    device = pick_device(config)
    base = resolve_base(config.model)
    if base.max_position_embeddings and config.data.max_length > base.max_position_embeddings:
        raise ScionError(
            f"data.max_length={config.data.max_length} exceeds the model's context of {base.max_position_embeddings} tokens"
        )
    check_target_modules(base, config.peft)
    if device == "cpu" and distributed.launched() and wants_fsdp(config):
        raise ScionError("trainer.distributed=fsdp needs GPUs: accelerate shards with FSDP2 only on GPUs and would train "
                         "with plain DDP on the CPU; use trainer.distributed=ddp")
    return TrainingPlan(config=config, device=device, base=base, started=started, started_at=started_at)


def load_training_data(plan: TrainingPlan) -> None:
    """Preflight, second part: the tokenizer and every data row, checked, tokenized and reported."""
    config = plan.config
    plan.tokenizer = load_tokenizer(plan.base, config.model)
    plan.data = prepare_data(config.data, plan.tokenizer, seed=config.trainer.seed)
    report_data(plan.data)
    plan.data_done = time.time()


def run_training(plan: TrainingPlan) -> TrainResult:
    """Train a planned run: lock its run directory, then load, train and save (run.json last)."""
    config = plan.config
    distributed.join_process_group(plan.device)  # after preflight: a bad input never reaches the group
    locks: list[RunLock] = []

    def claim_run_dir() -> tuple[Path, Optional[Path]]:  # rank 0 only; every rank gets its answer or error
        found = prepare_run_dir(config.trainer.output_dir or default_output_dir(config.recipe_name), config.trainer.resume)
        locks.append(RunLock(found[0]))
        return found

    run_dir, resume_from = distributed.on_main(claim_run_dir)
    try:
        return _train_in(run_dir, resume_from, config, plan.base, plan.tokenizer, plan.data, plan.device,
                         plan.started, plan.started_at, plan.data_done)
    finally:
        for lock in locks:
            lock.release()


def train(config: ScionConfig) -> TrainResult:
    """Run one fine-tune described by `config`; returns the run directory and the trained model.

    Training only: pipeline.run_pipeline adds the evaluation against the base and publishing.
    """
    plan = plan_training(config)
    load_training_data(plan)
    return run_training(plan)


def run_summary(metrics: dict[str, Any], seconds: float, run_dir: Path) -> str:
    """The one line that ends training: time, steps, losses, speed and where the run is."""
    parts = [f"{metrics['global_step']} steps", f"train loss {metrics['train_loss']:.4f}"]
    if "eval_loss" in metrics:
        parts.append(f"eval loss {metrics['eval_loss']:.4f}")
    parts.append(f"{metrics['tokens_per_second']:,.0f} tokens/s")
    if metrics.get("mfu") is not None:
        parts.append(f"MFU {metrics['mfu']:.1%}")
    return f"done in {seconds:.0f}s: {', '.join(parts)}; run saved to {run_dir}"


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
        "data.sources": [source_fingerprint(s) for s in data.sources],
    }


def source_fingerprint(source: dict[str, Any]) -> str:
    """One data source as resuming compares it: role, name, content hash, and how it is used."""
    content = source.get("sha256") or source.get("fingerprint") or source.get("train_fingerprint") or source.get("source")
    used = {k: source.get(k) for k in ("split", "revision", "format", "weight", "max_rows", "split_from_train")
            if source.get(k) is not None}
    return " ".join([source.get("role", "?"), source.get("name") or str(source.get("source")), str(content)[:16]]
                    + [f"{k}={v}" for k, v in used.items()])


def _train_in(run_dir, resume_from, config, base, tokenizer, data, device, started, started_at, data_done):
    print(f"run directory: {run_dir}", flush=True)
    fingerprint = resume_fingerprint(config, base, data)
    if resume_from is not None:
        check_resume_config(resume_from, fingerprint, config.trainer.allow_config_change)
        print(f"resuming from {resume_from}", flush=True)
    if distributed.is_main():
        write_text_atomic(run_dir / RECIPE_FILE, OmegaConf.to_yaml(OmegaConf.structured(config)))

    # ---- Model and adapter.
    import torch
    from transformers import ProgressCallback, set_seed

    from train.progress import ScionProgress
    from train.trainer import PreemptionCallback, ScionTrainer

    set_seed(config.trainer.seed)
    free_memory = torch.cuda.mem_get_info()[0] if device == "cuda" else None  # before the weights arrive
    model = load_model(base, config.model, config.peft, config.trainer.precision, device)
    if model.scion_packing_unsafe:  # never train on rows whose examples see each other
        print(f"packing and padding-free: off for this model: {model.scion_packing_unsafe}", flush=True)
        config.trainer.packing = False
    model = add_adapter(model, config.peft, default_lora_targets(base, config.peft))
    checkpointing = checkpointing_policy(config, model, free_memory)
    trainable, total = model.get_nb_trainable_parameters()
    print(f"model: {base.hub_id or base.name_or_path} ({base.architecture}) on {device}; "
          f"{config.peft.method.value} r={config.peft.r}: {trainable:,} trainable of {total:,} parameters; "
          f"activation checkpointing: {checkpointing}", flush=True)
    # A checkpoint holds the adapter (fp32) plus two AdamW moments: ~12 bytes per trainable weight.
    keep = max(config.trainer.save_total_limit or 1, 1)
    distributed.on_main(lambda: check_free_space(run_dir, int(trainable * 12 * (keep + 1) + trainable * 4 + 64 * 2**20)))

    # ---- Train.
    args = sft_args(config, run_dir, device, data.eval is not None, distributed_kwargs(config, model),
                    padding_free_ok=not model.scion_packing_unsafe)
    train_rows = data.train
    if config.trainer.packing:  # seeded, so a resumed run sees the same rows
        train_rows = packing.pack_dataset(data.train, config.data.max_length, seed=config.trainer.seed)
    gpu_name = torch.cuda.get_device_name(0) if device == "cuda" else None
    meter = throughput.TrainingMeter()  # training tokens and seconds of this process (eval and saves left out)
    trainer = ScionTrainer(
        model=model,
        args=args,
        train_dataset=train_rows,
        eval_dataset=data.eval,
        processing_class=tokenizer,
        resume_fingerprint=fingerprint,
        keep_checkpoints=config.trainer.save_total_limit,
        meter=meter,
    )
    if config.trainer.distributed == Distributed.fsdp and distributed.launched() and not trainer.is_fsdp_enabled:
        raise ScionError("trainer.distributed=fsdp: accelerate did not enable FSDP2 on this machine; use trainer.distributed=ddp")
    world = args.world_size
    engine = engine_name(trainer)
    global_batch = config.trainer.batch_size * config.trainer.gradient_accumulation_steps * world
    print(f"global batch: {global_batch} = batch_size {config.trainer.batch_size} x gradient_accumulation_steps "
          f"{config.trainer.gradient_accumulation_steps} x {world} process{'es' if world > 1 else ''} ({engine})", flush=True)
    trainer.remove_callback(ProgressCallback)
    # tokens/s and MFU into every log (before the progress bar, which shows them)
    trainer.add_callback(throughput.speed_callback(model.config, throughput.peak_flops(gpu_name), meter, world))
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    trainer.add_callback(ScionProgress())
    preemption = PreemptionCallback()
    trainer.add_callback(preemption)
    preemption.install()
    train_started = time.time()
    try:
        result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    finally:
        preemption.uninstall()
    if preemption.signal_received is not None:
        raise Preempted(f"preempted at step {trainer.state.global_step}; checkpoint saved in {run_dir / CHECKPOINTS_DIR}. "
                        f"Run the same command with trainer.output_dir={run_dir} to resume")
    trained = time.time()
    # Speed: this process's training tokens over its seconds of training (a resumed run counts its own
    # share; building the trainer, evaluation and checkpoint saves are left out).
    tokens_this_run = int(trainer.state.num_input_tokens_seen - meter.first_tokens)
    metrics: dict[str, Any] = {
        "train_loss": distributed.mean(result.training_loss, args.device),  # each rank's own mean otherwise
        "global_step": trainer.state.global_step,
        "epochs": trainer.state.epoch,
        "tokens_seen": int(trainer.state.num_input_tokens_seen),
        "tokens_this_run": tokens_this_run,
        "train_seconds": round(meter.seconds(), 2),
    }
    metrics.update(throughput.run_speed_summary(tokens_this_run, meter.trained_tokens(), meter.seconds(), model.config, gpu_name,
                                                world))
    if device == "cuda":
        metrics["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    if data.eval is not None:
        eval_loss = trainer.evaluate()["eval_loss"]
        metrics["eval_loss"] = eval_loss
        metrics["eval_perplexity"] = math.exp(eval_loss) if eval_loss < 50 else float("inf")
        print(f"eval: loss {eval_loss:.4f}, perplexity {metrics['eval_perplexity']:.2f}", flush=True)

    # ---- Save (rank 0): adapter, then run.json (the completion marker).
    sharded = trainer.is_fsdp_enabled
    # Under FSDP2 each rank holds a shard: gather the whole adapter (a collective: every rank calls it).
    full_weights = distributed.full_state_dict(trainer.model) if sharded else None
    if not distributed.is_main():
        distributed.leave_process_group()
        return TrainResult(run_dir=run_dir, model=None, tokenizer=tokenizer, run={})
    save_adapter(trainer.model, tokenizer, base, run_dir, state_dict=full_weights)
    finished = time.time()
    run = {
        "scion_run_version": 1,
        "recipe": config.recipe_name,
        "command": typed_command(),  # as typed: recipe=<file> stays the file, not Hydra's internal name
        "base": base.to_dict(),
        "peft": {"method": config.peft.method.value, "r": config.peft.r, "alpha": config.peft.alpha,
                 "target_modules": default_lora_targets(base, config.peft)},
        "data": {"sources": data.sources, "stats": {k: vars(v) for k, v in data.stats.items()},
                 "max_length": config.data.max_length, "truncation": config.data.truncation.value},
        "metrics": metrics,
        "log_history": trainer.state.log_history,  # per-step loss/lr/eval_loss, for plots
        "device": gpu_name or platform.processor() or "cpu",
        "distributed": {"engine": engine, "world_size": world, "global_batch_size": global_batch,
                        "accelerate_type": str(trainer.accelerator.distributed_type.value)},
        "speed": {"attn_implementation": model.config._attn_implementation, "packing": config.trainer.packing,
                  "padding_free": not model.scion_packing_unsafe and (device == "cuda" or config.trainer.packing),
                  "checkpointing": checkpointing},
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
    distributed.leave_process_group()  # the other ranks exit; evaluation and publishing run on rank 0 alone
    print(run_summary(metrics, finished - started, run_dir), flush=True)
    # A sharded model cannot run without its group: evaluation then loads the saved (full) adapter.
    return TrainResult(run_dir=run_dir, model=None if sharded else trainer.model, tokenizer=tokenizer, run=run)
