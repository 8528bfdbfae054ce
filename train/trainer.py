"""TRL's SFTTrainer with three guarantees it lacks: atomic checkpoints, a hard stop on NaN/inf,
and preemption that checkpoints at the next step boundary.

Preemption: the first SIGTERM or SIGINT asks for a checkpoint at the end of the current optimizer
step (so no accumulated gradient is lost) and a clean stop; `train()` then exits with
PREEMPTED_EXIT_CODE (train/errors.py). A second signal exits at once; checkpoints on disk are safe because they are
only ever renamed into place complete.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
from pathlib import Path
from typing import Any, Optional

import torch
from transformers import TrainerCallback
from trl import SFTTrainer

from train import distributed
from train.checkpoints import STAGING, commit_checkpoint, rotate
from train.errors import ScionError
from train.throughput import TrainingMeter


class NonFiniteError(ScionError):
    pass


class PreemptionCallback(TrainerCallback):
    """Turns the first SIGTERM/SIGINT into 'save at the step boundary, then stop'."""

    def __init__(self):
        self.signal_received: Optional[int] = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            self._previous[signum] = signal.signal(signum, self._handle)

    def uninstall(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        if self.signal_received is not None:
            # Under torchrun the launcher passes on the SIGTERM it got, so a rank often sees it twice:
            # only a second SIGINT (Ctrl-C again) leaves at once there. Files on disk stay consistent.
            if distributed.is_distributed() and signum == signal.SIGTERM:
                return
            os._exit(128 + signum)
        self.signal_received = signum
        again = "press Ctrl-C again" if distributed.is_distributed() else "send it again"
        print(f"\nreceived {signal.Signals(signum).name}: saving a checkpoint at the end of this step, then stopping "
              f"({again} to stop at once)", flush=True)

    def on_step_end(self, args, state, control, **kwargs):
        # All ranks must save at the same step: a signal seen by any rank counts for all of them.
        if distributed.any_rank(self.signal_received is not None, args.device):
            if self.signal_received is None:
                self.signal_received = signal.SIGTERM
            control.should_save = True
            control.should_training_stop = True
        return control


class ScionTrainer(SFTTrainer):
    """No host synchronisation per micro-batch: the loss and gradient-norm checks, the token counts and
    TRL's train metrics stay on the device until a logging, evaluation or saving step (or the end),
    where one sync checks and folds them in. A NaN/inf therefore stops the run at the next such step,
    still naming the step it first appeared in, and before anything after it is saved."""

    def __init__(self, *args, resume_fingerprint: dict[str, Any], keep_checkpoints: Optional[int],
                 meter: Optional[TrainingMeter] = None, **kwargs):
        super().__init__(*args, **kwargs)
        keep_adapter_fp32(self.model)
        self.resume_fingerprint = resume_fingerprint
        self.keep_checkpoints = keep_checkpoints
        self.meter = meter or TrainingMeter()
        self._unchecked: list[tuple[int, str, Any]] = []  # (step, what, 0-dim tensor) since the last check
        self._pending_tokens: Any = 0  # input tokens not yet in state.num_input_tokens_seen
        self._metric_sums: Any = None  # labelled positions, entropy sum, top-1 hits (TRL's train metrics)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The loss over labelled positions only, with no host sync.

        CUDA, training: TRL's fused lm_head as SFTTrainer runs it, minus its per-micro-batch `.item()`s.
        Off CUDA: project only the trained positions through the LM head. TRL's fused head scores
        every position where Triton does not run: on a CPU that is a 151,936-wide projection and
        softmax for each prompt token too, most of a tiny model's step time. Both are the same sum over
        trained tokens divided by the same count (tests/test_speed.py checks them against TRL's).
        """
        if return_outputs or (self.args.device.type == "cuda" and not model.training):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if model.training:
            self.meter.count_trained(inputs["labels"])
        if self.args.device.type == "cuda":
            return self.fused_head_loss(model, inputs, num_items_in_batch)
        if self.accelerator.num_processes > 1:  # under DDP the forward must go through the wrapper (it syncs gradients)
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        return self.trained_positions_loss(model, inputs, num_items_in_batch)

    def fused_head_loss(self, model, inputs, num_items_in_batch=None):
        """TRL's fused-head loss (sum of -log p over labelled positions / their count); its train
        metrics are summed on the device and turned into numbers only when logging (`log`)."""
        outputs = model(**{**inputs, "use_cache": False}, fused_lm_head=True)
        count = outputs.label_mask.sum() if num_items_in_batch is None else num_items_in_batch
        loss = (-outputs.log_probs).sum() / torch.as_tensor(count).clamp(min=1)
        sums = torch.stack([outputs.label_mask.sum(), outputs.entropy.detach().sum(), outputs.is_top1.sum()]).float()
        self._metric_sums = sums if self._metric_sums is None else self._metric_sums + sums
        return loss

    def trained_positions_loss(self, model, inputs, num_items_in_batch=None):
        import torch.nn.functional as F

        labels = inputs["labels"]
        causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
        decoder_inputs = {k: v for k, v in inputs.items() if k not in ("labels", "num_items_in_batch")}
        hidden = causal_lm.model(**decoder_inputs, use_cache=False).last_hidden_state
        targets = labels[:, 1:]
        if "position_ids" in inputs and "attention_mask" not in inputs:  # padding-free: no target across examples
            targets = targets.masked_fill(inputs["position_ids"][:, 1:] == 0, -100)
        mask = targets != -100
        logits = causal_lm.lm_head(hidden[:, :-1][mask]).float()
        total = F.cross_entropy(logits, targets[mask], reduction="sum")
        count = num_items_in_batch if num_items_in_batch is not None else mask.sum().clamp(min=1)
        return total / count

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        self._unchecked.append((self.state.global_step + 1, "loss", loss.detach()))  # checked by check_finite
        return loss

    def _get_grad_norm(self, model, grad_norm=None):
        # Called at every optimizer step; the norm stays a tensor (no sync) until check_finite.
        norm = super()._get_grad_norm(model, grad_norm=grad_norm)
        if norm is not None:
            self._unchecked.append((self.state.global_step + 1, "gradient norm", torch.as_tensor(norm, device=self.args.device)))
        return norm

    def check_finite(self) -> None:
        """One host sync for every loss and gradient norm since the last check; stop at the first bad one."""
        if not self._unchecked:
            return
        unchecked, self._unchecked = self._unchecked, []
        values = torch.stack([v.float().reshape(()) for _, _, v in unchecked]).tolist()
        for (step, what, _), value in zip(unchecked, values):
            if not math.isfinite(value):
                hint = last_checkpoint_hint(self.args.output_dir)
                if what == "loss":
                    raise NonFiniteError(f"training: the loss is {value} at step {step}; stopping. "
                                         f"The last good checkpoint is intact{hint}. Lower trainer.learning_rate or check the data")
                raise NonFiniteError(f"training: the gradient norm is {value} at step {step}; stopping before anything "
                                     f"after it is saved. The last good checkpoint is intact{hint}")

    def _track_num_input_tokens(self, inputs):
        # transformers adds `.item()` of every micro-batch's count to the state; sum on the device instead.
        if self.args.include_num_input_tokens_seen == "no":
            return
        if "attention_mask" in inputs:
            count = inputs["attention_mask"].sum()
        else:
            count = (inputs["input_ids"] != self.processing_class.pad_token_id).sum()
        self._pending_tokens = self._pending_tokens + count

    def sync_counts(self) -> None:
        """Fold the device-side counts into the state and check the losses: at log, eval, save and the end."""
        self.check_finite()
        if self.accelerator.num_processes > 1:  # the state counts every process's tokens, as transformers' does
            pending = torch.as_tensor(self._pending_tokens, device=self.args.device, dtype=torch.int64)
            self.state.num_input_tokens_seen += int(self.accelerator.gather(pending).sum())
            self._pending_tokens = 0
        elif not isinstance(self._pending_tokens, int) or self._pending_tokens:
            self.state.num_input_tokens_seen += int(self._pending_tokens)
            self._pending_tokens = 0

    def _maybe_log_save_evaluate(self, *args, **kwargs):
        c = self.control
        if c.should_log or c.should_evaluate or c.should_save or c.should_training_stop:
            self.sync_counts()
        return super()._maybe_log_save_evaluate(*args, **kwargs)

    def _finalize_training(self, *args, **kwargs):
        self.sync_counts()
        return super()._finalize_training(*args, **kwargs)

    def log(self, logs: dict[str, float], start_time: Optional[float] = None) -> None:
        if self.model.training and self._metric_sums is not None:  # the fused head's sums since the last log
            valid, entropy, correct = self._metric_sums.tolist()
            self._metrics["train"]["entropy"] = [entropy / valid if valid else 0.0]
            self._metrics["train"]["mean_token_accuracy"] = [correct / valid if valid else 0.0]
            self._metric_sums = None
        super().log(logs, start_time)

    def _evaluate(self, *args, **kwargs):
        with self.meter.paused():  # tokens/s means training tokens per second of training
            return super()._evaluate(*args, **kwargs)

    def _save_checkpoint(self, model, trial):
        """Save into .partial/checkpoint-N, then rename into place and mark complete."""
        with self.meter.paused():
            root = Path(self.args.output_dir)
            step = self.state.global_step
            staging_root = root / STAGING
            name = f"checkpoint-{step}"
            self.args.output_dir = str(staging_root)
            try:
                super()._save_checkpoint(model, trial)  # every rank writes its part (its RNG state, FSDP shards)
            finally:
                self.args.output_dir = str(root)
            # Marked complete only once every rank has written its part; a rank that died never gets here,
            # and neither does anyone else (the barrier fails), so nothing incomplete is marked.
            distributed.barrier()
            if distributed.is_main():
                commit_checkpoint(staging_root / name, root / name, {"step": step, "resume_fingerprint": self.resume_fingerprint})
                shutil.rmtree(staging_root, ignore_errors=True)  # also holds TRL's per-save model card
                rotate(root, self.keep_checkpoints)
            distributed.barrier()  # no rank stages the next checkpoint before this one is in place


def keep_adapter_fp32(model) -> None:
    """Put the trainable weights back in fp32 after SFTTrainer cast a quantised model's to bf16.

    TRL casts every trainable weight of a 4/8-bit base to bf16 (after the QLoRA paper), leaving out only
    DoRA's magnitude, whose small updates round away in bf16. Late in a cosine schedule lora_A's
    updates round away the same way, and AdamW's state follows the weights' dtype. Scion keeps QLoRA's
    adapter and optimizer state in fp32, as for LoRA: they are about 1% of the weights (3B, r=32:
    ~60 M trainable, 0.7 GB of fp32 weights + AdamW state), and the bf16 autocast still runs the matmuls
    in bf16. Called before the optimizer is built, so its state is fp32 too.
    """
    for param in model.parameters():
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()


def last_checkpoint_hint(output_dir: str) -> str:
    from train.checkpoints import latest_complete

    latest = latest_complete(Path(output_dir))
    return f" ({latest})" if latest else " (none was saved yet)"
