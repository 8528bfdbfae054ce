"""A training progress bar that shows loss, tokens/s and ETA instead of printing log dicts."""

from __future__ import annotations

import math
import time

from transformers import ProgressCallback


class ScionProgress(ProgressCallback):
    """tqdm bar (steps, elapsed, ETA) with the latest loss, learning rate and tokens/s as postfix."""

    def on_train_begin(self, args, state, control, **kwargs):
        super().on_train_begin(args, state, control, **kwargs)
        self.started = time.time()
        self.tokens_at_start = state.num_input_tokens_seen

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or self.training_bar is None or not logs:
            return
        elapsed = max(time.time() - self.started, 1e-9)
        tokens_per_second = (state.num_input_tokens_seen - self.tokens_at_start) / elapsed
        if "loss" in logs:
            loss = logs["loss"]
            # NaN/inf stay visible: formatting them as numbers would hide a diverged run.
            shown = f"{loss:.4f}" if math.isfinite(loss) else str(loss)
            mfu = f" mfu={logs['mfu']:.1%}" if logs.get("mfu") is not None else ""
            self.training_bar.set_postfix_str(
                f"loss={shown} lr={logs.get('learning_rate', 0):.2e} tok/s={tokens_per_second:,.0f}{mfu}", refresh=True
            )
        elif "eval_loss" in logs:
            self.training_bar.write(f"step {state.global_step}: eval loss {logs['eval_loss']:.4f}")
