"""A training progress bar that shows loss, tokens/s and ETA instead of printing log dicts."""

from __future__ import annotations

import math

from tqdm.auto import tqdm
from transformers import ProgressCallback
from transformers.trainer_utils import has_length


class ScionProgress(ProgressCallback):
    """The one tqdm bar (steps, elapsed, ETA) with the latest loss, learning rate, tokens/s and MFU as postfix.

    tokens/s and MFU are put into the logs by throughput.speed_callback, which must run before this one.
    """

    def on_prediction_step(self, args, state, control, eval_dataloader=None, **kwargs):
        """The eval-loss bar clears itself when done (transformers leaves it after training): one bar stays."""
        if state.is_world_process_zero and has_length(eval_dataloader):
            if self.prediction_bar is None:
                self.prediction_bar = tqdm(total=len(eval_dataloader), desc="eval loss", leave=False, dynamic_ncols=True)
            self.prediction_bar.update(1)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or self.training_bar is None or not logs:
            return
        if "loss" in logs:
            loss = logs["loss"]
            # NaN/inf stay visible: formatting them as numbers would hide a diverged run.
            shown = f"{loss:.4f}" if math.isfinite(loss) else str(loss)
            rate = f" tok/s={logs['tokens_per_second']:,.0f}" if "tokens_per_second" in logs else ""
            if "tokens_per_second_per_device" in logs:  # several processes: the total, then each device's share
                rate += f" ({logs['tokens_per_second_per_device']:,.0f}/device)"
            mfu = f" mfu={logs['mfu']:.1%}" if logs.get("mfu") is not None else ""
            self.training_bar.set_postfix_str(
                f"loss={shown} lr={logs.get('learning_rate', 0):.2e}{rate}{mfu}", refresh=True
            )
        elif "eval_loss" in logs:
            self.training_bar.write(f"step {state.global_step}: eval loss {logs['eval_loss']:.4f}")
