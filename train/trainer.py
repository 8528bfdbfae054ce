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

from transformers import TrainerCallback
from trl import SFTTrainer

from train import distributed
from train.checkpoints import STAGING, commit_checkpoint, rotate
from train.errors import ScionError


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
    def __init__(self, *args, resume_fingerprint: dict[str, Any], keep_checkpoints: Optional[int], **kwargs):
        super().__init__(*args, **kwargs)
        self.resume_fingerprint = resume_fingerprint
        self.keep_checkpoints = keep_checkpoints

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """Off CUDA, project only the trained positions through the LM head.

        TRL's fused LM head scores only labelled positions where Triton runs (CUDA), but every
        position elsewhere: on a CPU that is a 151,936-wide projection and softmax for each prompt
        token too, most of a tiny model's step time. The loss is the same sum over trained tokens
        divided by the same count (tests/test_speed.py checks it against TRL's).
        """
        # Under DDP/FSDP the forward must go through the wrapper (it syncs the gradients), hence TRL's path.
        if self.args.device.type == "cuda" or return_outputs or self.accelerator.num_processes > 1:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
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
        # One host sync per micro-batch: cheap next to a LoRA step, and it names the exact step.
        if not math.isfinite(loss.item()):
            raise NonFiniteError(
                f"training: the loss is {loss.item()} at step {self.state.global_step + 1}; stopping. "
                f"The last good checkpoint is intact{last_checkpoint_hint(self.args.output_dir)}. "
                "Lower trainer.learning_rate or check the data"
            )
        return loss

    def _get_grad_norm(self, model, grad_norm=None):
        # Called at every optimizer step, before the step: the place to catch a NaN/inf gradient.
        norm = super()._get_grad_norm(model, grad_norm=grad_norm)
        value = float(norm) if norm is not None else 0.0
        if not math.isfinite(value):
            raise NonFiniteError(
                f"training: the gradient norm is {value} at step {self.state.global_step + 1}; stopping before the "
                f"optimizer step. The last good checkpoint is intact{last_checkpoint_hint(self.args.output_dir)}"
            )
        return norm

    def _save_checkpoint(self, model, trial):
        """Save into .partial/checkpoint-N, then rename into place and mark complete."""
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


def last_checkpoint_hint(output_dir: str) -> str:
    from train.checkpoints import latest_complete

    latest = latest_complete(Path(output_dir))
    return f" ({latest})" if latest else " (none was saved yet)"
