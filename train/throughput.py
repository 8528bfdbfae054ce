"""Throughput: model FLOPs per token, MFU against the GPU's peak, and tokens/s in the logs and run.json."""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Any, Iterable, Optional

from train.arch import config_value, head_dim

# Dense (no sparsity) bf16 tensor-core peaks from NVIDIA's data sheets, FLOP/s. MFU uses these, the
# usual convention. On the H100 SXM a large bf16 matmul measured about 790e12 (80% of the spec), so
# an MFU of 0.8 is the practical ceiling there. First match wins: more specific names come first.
PEAK_BF16_FLOPS = [
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),  # SXM / "H100 80GB HBM3"
    ("H200", 989e12),  # also GH200
    ("H800", 989e12),
    ("A100", 312e12),
    ("A800", 312e12),
    ("L40S", 362e12),
    ("L4", 121e12),
    ("A10G", 70e12),
]


def peak_flops(device_name: Optional[str]) -> Optional[float]:
    """The dense bf16 peak of a GPU named like torch.cuda.get_device_name(); None if unknown or CPU."""
    if not device_name:
        return None
    for key, flops in PEAK_BF16_FLOPS:
        if key.lower() in device_name.lower():
            return flops
    return None


def matmul_params(config) -> int:
    """N: weights used in matrix products per token: q,k,v,o,gate,up,down of every layer, plus lm_head.

    The lm_head counts even when tied to the embedding: its product runs on every token. The embedding
    lookup is no product and does not count; biases and norms are negligible.
    """
    h, i, layers = config_value(config, "hidden_size"), config_value(config, "intermediate_size"), config_value(config, "num_hidden_layers")
    heads, kv_heads, hd = config_value(config, "num_attention_heads"), config_value(config, "num_key_value_heads"), head_dim(config)
    attention = h * hd * (2 * heads + 2 * kv_heads)  # q and o: heads*hd each; k and v: kv_heads*hd each
    mlp = 3 * h * i
    return layers * (attention + mlp) + config_value(config, "vocab_size") * h


def model_flops_per_token(config, mean_attended_keys: float = 0.0) -> float:
    """Model FLOPs of one LoRA training token: 4·N, plus attention scores when a context is given.

    This charges the lm_head to every token, as the stock benchmarks (which score every position)
    do; for what Scion's training computes use `training_flops`.

    Forward 2·N (a multiply-add per weight); backward 2·N for the input gradients. The frozen base has no
    weight gradients, hence 4·N and not full fine-tuning's 6·N. The LoRA matrices themselves (r << h) and
    checkpoint recomputation are not counted: MFU counts the model's work, not the hardware's.
    Attention scores add 12·layers·heads·head_dim per attended key (QK^T and PV forward, twice that
    backward); pass `mean_attended_keys` (see `mean_attended_keys`) to include them, 0 leaves them out
    as the H100 probe's figures do (about 2% of 4·N at 450-token examples on Qwen2.5-3B).
    """
    attn = 12 * config_value(config, "num_hidden_layers") * config_value(config, "num_attention_heads") * head_dim(config)
    return 4.0 * matmul_params(config) + attn * mean_attended_keys


def mean_attended_keys(lengths: Iterable[int]) -> float:
    """Keys each token attends to on average under causal attention within its own example."""
    lengths = list(lengths)
    return sum(n * (n + 1) / 2 for n in lengths) / max(1, sum(lengths))


def mfu(tokens_per_second: float, flops_per_token: float, peak: Optional[float]) -> Optional[float]:
    """Model FLOPs utilisation in [0, 1]; None without a known peak (the CPU, an unlisted GPU)."""
    if not peak or tokens_per_second is None:
        return None
    return tokens_per_second * flops_per_token / peak


def head_params(config) -> int:
    """The lm_head's share of `matmul_params`: vocabulary x hidden size."""
    return config_value(config, "vocab_size") * config_value(config, "hidden_size")


def training_flops(config, tokens: int, trained_tokens: int) -> float:
    """Model FLOPs of a LoRA training window: what is computed, not 4·N for every token.

    The decoder runs on every token (4·(N - head)); the lm_head only on the positions that have a
    label. TRL's fused head (CUDA) and ScionTrainer's loss (elsewhere) project only those, and with
    assistant-only loss most positions have none: charging the head to every token overstated MFU by
    about 25% on Qwen2.5-0.5B and 8% on 3B.
    """
    body = matmul_params(config) - head_params(config)
    return 4.0 * body * tokens + 4.0 * head_params(config) * trained_tokens


class TrainingMeter:
    """Training tokens and training seconds of this process, for tokens/s and MFU.

    The clock starts when training starts (after the trainer is built and the weights moved) and
    stops while evaluating or saving a checkpoint (`paused`). Token counts start from what this
    process trains, so a resumed run divides its own tokens by its own seconds. Counts that come from
    the GPU stay there as tensors between logging steps (no host sync per micro-batch).
    """

    def __init__(self):
        self.started: Optional[float] = None
        self.first_tokens = 0  # state.num_input_tokens_seen when this process started (above 0 on resume)
        self.paused_seconds = 0.0
        self._trained: Any = 0  # labelled positions of this process, a device tensor once counting

    def start(self, tokens_seen: int = 0) -> None:
        self.started, self.paused_seconds, self._trained = time.perf_counter(), 0.0, 0
        self.first_tokens = tokens_seen

    @contextmanager
    def paused(self):
        began = time.perf_counter()
        try:
            yield
        finally:
            self.paused_seconds += time.perf_counter() - began

    def seconds(self) -> float:
        """Seconds spent training since start(), evaluation and checkpoint saving left out."""
        if self.started is None:
            return 0.0
        return time.perf_counter() - self.started - self.paused_seconds

    def count_trained(self, labels) -> None:
        """Add a micro-batch's labelled positions (those whose next token is trained), on its device."""
        self._trained = self._trained + (labels[..., 1:] != -100).sum()

    def trained_tokens(self) -> int:
        return int(self._trained)  # one host sync, at logging time


def speed_callback(config, peak: Optional[float], meter: TrainingMeter, world_size: int = 1):
    """A TrainerCallback that adds tokens/s (and MFU where the peak is known) to every training log.

    The rate is training tokens per second of training since the previous log (`meter`: evaluation
    and checkpoint time left out); MFU counts the FLOPs that ran (`training_flops`).
    Values go into the logs dict (seen by callbacks after this one, e.g. the progress bar and
    TensorBoard) and into state.log_history (so run.json gets them): Trainer.log copies the dict
    into log_history before the callbacks run, hence the explicit update of its last entry.
    Tokens are state.num_input_tokens_seen (include_num_input_tokens_seen="non_padding"), which the
    Trainer sums over all processes: tokens_per_second is the job's total, tokens_per_second_per_device
    that over `world_size`; MFU is per device (each process counts its own trained positions).
    """
    from transformers import TrainerCallback

    class SpeedLog(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            meter.start(state.num_input_tokens_seen)
            self.last = (0.0, state.num_input_tokens_seen, 0)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not logs or "loss" not in logs or not hasattr(self, "last"):
                return
            now, tokens, trained = meter.seconds(), state.num_input_tokens_seen, meter.trained_tokens()
            seconds = max(now - self.last[0], 1e-9)
            rate = (tokens - self.last[1]) / seconds
            flops = training_flops(config, (tokens - self.last[1]) / world_size, trained - self.last[2]) / seconds
            self.last = (now, tokens, trained)
            extra = {"tokens_per_second": round(rate, 1)}
            if world_size > 1:
                extra["tokens_per_second_per_device"] = round(rate / world_size, 1)
            if peak:
                extra["mfu"] = round(flops / peak, 4)
            logs.update(extra)
            if state.log_history and state.log_history[-1].get("step") == state.global_step:
                state.log_history[-1].update(extra)

    return SpeedLog()


def run_speed_summary(tokens: int, trained_tokens: int, seconds: float, config, device_name: Optional[str],
                      world_size: int = 1) -> dict:
    """run.json fields: training tokens per second of training (the job's, and per device), FLOPs and MFU.

    tokens: this run's training tokens over all processes (a resumed run's own share); trained_tokens:
    this process's labelled positions; seconds: this process's training time, evaluation and
    checkpoint saving left out. MFU is per device.
    """
    rate = tokens / max(seconds, 1e-9)
    device_tokens = tokens / world_size
    flops = training_flops(config, device_tokens, trained_tokens)
    peak = peak_flops(device_name)
    return {
        "tokens_per_second": round(rate, 1),
        "tokens_per_second_per_device": round(rate / world_size, 1),
        "world_size": world_size,
        "model_flops_per_token": round(flops / max(device_tokens, 1), 1),
        "peak_flops": peak,
        "mfu": None if not peak else round(flops / max(seconds, 1e-9) / peak, 4),
    }
