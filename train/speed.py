"""The fast training path: padding-free packing, variable-length attention, memory policy, MFU.

What each piece is for, and what already exists underneath it (transformers 5.23, TRL 1.16):

- Padding-free batches. TRL's collator with `padding_free=True` concatenates a micro-batch into one row
  and restarts `position_ids` at every example (from `seq_lengths` when the row is packed, else per
  example); it also sends `cu_seq_lens_q/k` and `max_length_q/k`, and masks the first label of every
  example so that no token is trained to predict the next example. `pack_examples` below bins whole
  examples into rows (best-fit decreasing) when constant-size steps are wanted.
- Attention that keeps examples apart. With `sdpa`/`eager`, transformers sees the restarting
  `position_ids` (with no attention_mask and no cache) and builds a block-diagonal causal mask: correct,
  but an O(T^2) tensor per row. `flash_attention_2/3` take the `cu_seq_lens` path instead. Where
  flash-attn is not installed, `scion_varlen` (registered here) calls PyTorch's own FlashAttention for
  variable lengths, `torch.nn.attention.varlen.varlen_attn`, and never builds a mask.
- The loss. SFTTrainer always patches a chunked lm_head + log-prob into the model
  (`trl.trainer.utils.add_fused_lm_head`): it never builds the (tokens x 151,936) logits, and on CUDA it
  scores only the positions that have a label. Nothing here replaces it.
- Memory policy (`pick_checkpointing`), fused layer kernels (`apply_fused_layer_kernels`, Liger's RMSNorm,
  RoPE and SwiGLU when installed on CUDA) and MFU (`model_flops_per_token`, `mfu`).
"""

from __future__ import annotations

import bisect
import inspect
import random
import time
from functools import lru_cache, partial
from typing import Any, Iterable, Optional

VARLEN_ATTENTION = "scion_varlen"
GIB = 2**30


# ---------------------------------------------------------------------------------------------
# Attention
# ---------------------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def varlen_kernel():
    """torch's varlen_attn and the names of its parameters, or (None, ()) where this torch lacks it.

    The signature changed between releases (torch 2.11: causal only as window_size=(-1, 0) and no GQA;
    2.13 adds enable_gqa), so callers look the parameters up instead of assuming them.
    """
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None, frozenset()
    return varlen_attn, frozenset(inspect.signature(varlen_attn).parameters)


def pick_attention(device: str, dtype=None) -> str:
    """The attn_implementation for training on `device`, from what is installed.

    CUDA in bf16/fp16: FlashAttention 3, then 2 (their varlen kernels read cu_seq_lens), then torch's own
    varlen kernel through `scion_varlen`, then sdpa. fp32 and the CPU get sdpa: FlashAttention kernels
    take half precision only, and sdpa's block-diagonal mask is correct everywhere.
    `flex_attention` is not picked: transformers builds its packed BlockMask fine, but its compilation did
    not finish the first step inside 150 s on the H100 probe.
    """
    import torch

    if not str(device).startswith("cuda") or not torch.cuda.is_available():
        return "sdpa"
    if dtype is not None and dtype not in (torch.bfloat16, torch.float16):
        return "sdpa"
    from transformers.utils import is_flash_attn_2_available, is_flash_attn_3_available

    if is_flash_attn_3_available() and torch.cuda.get_device_capability()[0] == 9:  # FA3 is Hopper-only
        return "flash_attention_3"
    if is_flash_attn_2_available():
        return "flash_attention_2"
    if varlen_kernel()[0] is not None:
        return register_varlen_attention()
    return "sdpa"


def register_varlen_attention() -> str:
    """Register `scion_varlen` with transformers (idempotent) and return its name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(VARLEN_ATTENTION, varlen_attention_forward)
    AttentionMaskInterface.register(VARLEN_ATTENTION, varlen_attention_mask)
    return VARLEN_ATTENTION


def varlen_attention_mask(batch_size, q_length, kv_length, q_offset=0, kv_offset=0, attention_mask=None,
                          local_size=None, **kwargs):
    """The mask builder for `scion_varlen`: none at all for training rows, sdpa's mask otherwise.

    A training row (no padding mask, no cache, no sliding window) needs no mask: the attention reads the
    example boundaries from cu_seq_lens / position_ids. Padded batches and generation (a 2D mask, a
    cache offset) get exactly the mask sdpa would get, and the attention then runs sdpa with it.
    """
    from transformers.masking_utils import sdpa_mask

    no_offset = isinstance(q_offset, int) and q_offset == 0 and isinstance(kv_offset, int) and kv_offset == 0
    if attention_mask is None and local_size is None and no_offset and q_length == kv_length:
        return None
    return sdpa_mask(batch_size=batch_size, q_length=q_length, kv_length=kv_length, q_offset=q_offset,
                     kv_offset=kv_offset, attention_mask=attention_mask, local_size=local_size, **kwargs)


def cu_seqlens_from_position_ids(position_ids):
    """(cu_seqlens int32, max length) of one packed row whose position ids restart at 0 per example."""
    import torch

    pos = position_ids.reshape(-1)
    starts = (pos == 0).nonzero().flatten()
    if starts.numel() == 0 or starts[0] != 0:  # a row that does not start at 0 is one continuing sequence
        starts = torch.cat([starts.new_zeros(1), starts])
    cu = torch.cat([starts, starts.new_tensor([pos.numel()])]).to(torch.int32)
    return cu, int(cu.diff().max())


def varlen_attention_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None,
                             is_causal=None, cu_seq_lens_q=None, max_length_q=None, position_ids=None, **kwargs):
    """Causal attention over one packed row (1, H, T, D), each example attending only to itself.

    Uses cu_seq_lens from TRL's padding-free collator, else the restarts in position_ids. Anything
    that is not a single packed row (a padded batch, decoding with a cache) goes to transformers'
    sdpa unchanged, with the mask `varlen_attention_mask` left for it.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    packed_row = attention_mask is None and query.shape[0] == 1 and query.shape[2] == key.shape[2] > 1
    if not packed_row:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, position_ids=position_ids, **kwargs)
    if cu_seq_lens_q is None:
        if position_ids is None:
            return sdpa_attention_forward(module, query, key, value, None, dropout=dropout, scaling=scaling,
                                          is_causal=is_causal, **kwargs)
        cu_seq_lens_q, max_length_q = cu_seqlens_from_position_ids(position_ids)
    if max_length_q is None:
        max_length_q = int(cu_seq_lens_q.diff().max())
    # (1, H, T, D) -> (T, H, D), the layout of the varlen kernels
    q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))
    kernel, params = varlen_kernel()
    if kernel is not None and q.is_cuda and q.dtype in _half_dtypes() and dropout == 0.0:
        out = _varlen_cuda(kernel, params, q, k, v, cu_seq_lens_q.to(q.device, non_blocking=True), max_length_q, scaling)
    else:
        out = _varlen_by_example(q, k, v, cu_seq_lens_q, scaling, dropout)
    return out.unsqueeze(0), None


def _half_dtypes():
    import torch

    return (torch.bfloat16, torch.float16)


def _varlen_cuda(kernel, params, q, k, v, cu, max_len, scaling):
    """One FlashAttention call for the whole row; GQA and causality spelt as this torch names them."""
    extra: dict[str, Any] = {}
    if q.shape[1] != k.shape[1]:
        if "enable_gqa" in params:
            extra["enable_gqa"] = True
        else:  # torch 2.11: repeat the K/V heads (costs memory, still exact)
            rep = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    if "is_causal" in params:
        extra["is_causal"] = True
    else:
        extra["window_size"] = (-1, 0)  # (left, right): everything before, nothing after
    return kernel(q, k, v, cu, cu, max_len, max_len, scale=scaling, **extra)


def _varlen_by_example(q, k, v, cu, scaling, dropout):
    """The exact fallback (CPU, fp32, no varlen kernel): causal sdpa on each example's slice.

    O(sum of L_i^2) work and no T x T mask; one host sync for the boundaries.
    """
    import torch
    import torch.nn.functional as F

    bounds = cu.tolist()
    gqa = q.shape[1] != k.shape[1]
    outs = []
    for start, end in zip(bounds[:-1], bounds[1:]):
        qs, ks, vs = (t[start:end].transpose(0, 1) for t in (q, k, v))  # (H, L, D)
        o = F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, scale=scaling, dropout_p=dropout, enable_gqa=gqa)
        outs.append(o.transpose(0, 1))
    return torch.cat(outs)


# ---------------------------------------------------------------------------------------------
# Packing
# ---------------------------------------------------------------------------------------------
def best_fit_bins(lengths: list[int], capacity: int, seed: Optional[int] = None) -> list[list[int]]:
    """Best-fit decreasing: indices of `lengths` grouped into bins whose sums stay <= capacity.

    Longest first; each goes into the open bin with the least room that still fits it. Open bins are
    kept by remaining room (at most `capacity` distinct values), so each placement is a bisect.
    A seed shuffles the order of equal lengths, so ties do not follow the data file's order.
    Empty examples (no tokens) go in no bin.
    """
    too_long = [n for n in lengths if n > capacity]
    if too_long:
        raise ValueError(f"{len(too_long)} examples are longer than the row budget {capacity} (longest {max(too_long)})")
    order = list(range(len(lengths)))
    if seed is not None:
        random.Random(seed).shuffle(order)
    order.sort(key=lambda i: -lengths[i])  # stable: ties keep the (shuffled) order
    bins: list[list[int]] = []
    rooms: list[int] = []  # sorted distinct remaining room of open bins
    by_room: dict[int, list[int]] = {}  # room -> bin numbers with that room
    for i in order:
        n = lengths[i]
        if n == 0:
            continue
        at = bisect.bisect_left(rooms, n)
        if at < len(rooms):
            room = rooms[at]
            b = by_room[room].pop()
            if not by_room[room]:
                del by_room[room]
                rooms.pop(at)
        else:
            room, b = capacity, len(bins)
            bins.append([])
        bins[b].append(i)
        left = room - n
        if left > 0:
            if left not in by_room:
                by_room[left] = []
                bisect.insort(rooms, left)
            by_room[left].append(b)
    return bins


def pack_examples(examples: Iterable[dict], max_tokens: int, seed: Optional[int] = None) -> list[dict]:
    """Whole examples (input_ids, labels) packed best-fit into rows of at most `max_tokens` tokens.

    Each row has input_ids, labels and seq_lengths, the format TRL's padding-free collator reads: it
    restarts position_ids at every example from seq_lengths. No example is split or dropped; an example
    longer than max_tokens is an error (train/data.py truncates to data.max_length first).
    """
    examples = list(examples)
    lengths = [len(e["input_ids"]) for e in examples]
    rows = []
    for bin_ in best_fit_bins(lengths, max_tokens, seed):
        rows.append({
            "input_ids": [t for i in bin_ for t in examples[i]["input_ids"]],
            "labels": [t for i in bin_ for t in examples[i]["labels"]],
            "seq_lengths": [lengths[i] for i in bin_],
        })
    return rows


def pack_dataset(dataset, max_tokens: int, seed: Optional[int] = None):
    """`pack_examples` for a datasets.Dataset with input_ids/labels columns; returns a new Dataset."""
    import datasets

    rows = pack_examples(dataset.select_columns(["input_ids", "labels"]), max_tokens, seed)
    return datasets.Dataset.from_list(rows)


def packing_efficiency(rows: list[dict], max_tokens: int) -> float:
    """Real tokens / row capacity: how full the packed rows are (1.0 = no room left anywhere)."""
    return sum(len(r["input_ids"]) for r in rows) / max(1, len(rows) * max_tokens)


def sft_speed_kwargs(device: str, packing: bool, max_length: Optional[int]) -> dict:
    """SFTConfig keyword arguments for the fast path (all exist in TRL 1.16's SFTConfig).

    Always padding-free: a micro-batch becomes one row with no pad tokens, position ids restarting per
    example, and cu_seq_lens for the varlen kernels. The examples in each step are unchanged, so the
    loss and gradients equal the padded run's (tests/test_speed.py).

    packing=True: the rows given to the trainer were packed by `pack_dataset(train, max_length)`;
    `packing=True` tells TRL they are packed rows (it keeps `seq_lengths`, and does not warn about a
    padding-free batch size of 1). TRL packs nothing itself while `skip_prepare_dataset` is set.
    packing=False: max_length must be None, since TRL refuses padding_free with a max_length it cannot
    enforce (the data is truncated by train/data.py already).
    `device` is unused today: the same arguments are right on the CPU (sdpa's block-diagonal mask) and
    on CUDA (varlen kernels); it is kept so a device-specific option has a place.
    """
    del device
    if packing:
        if not max_length:
            raise ValueError("packing needs the row length in tokens (max_length)")
        return {"padding_free": True, "packing": True, "packing_strategy": "bfd", "max_length": max_length}
    return {"padding_free": True, "packing": False, "max_length": None}


# ---------------------------------------------------------------------------------------------
# Kernels and activation memory
# ---------------------------------------------------------------------------------------------
def apply_fused_layer_kernels(model, device: str) -> bool:
    """Liger-Kernel's fused RMSNorm, RoPE and SwiGLU on a Qwen2/Qwen3 model, where installed on CUDA.

    Call before wrapping with PEFT. Liger's fused linear cross-entropy stays off: TRL's fused lm_head
    does that job, and SFTTrainer refuses Liger's (it replaces the forward TRL patches).
    Returns whether the kernels were applied (False on the CPU: they are Triton kernels).
    """
    if not str(device).startswith("cuda"):
        return False
    try:
        from liger_kernel.transformers import apply_liger_kernel_to_qwen2, apply_liger_kernel_to_qwen3
    except ImportError:
        return False
    apply = {"qwen2": apply_liger_kernel_to_qwen2, "qwen3": apply_liger_kernel_to_qwen3}.get(model.config.model_type)
    if apply is None:
        return False
    apply(rope=True, rms_norm=True, swiglu=True, cross_entropy=False, fused_linear_cross_entropy=False, model=model)
    return True


def _cfg(config, key, default=None):
    """A config value from a transformers config or a plain dict."""
    if isinstance(config, dict):
        return config.get(key, default)
    value = getattr(config, key, default)
    return default if value is None else value


def _head_dim(config) -> int:
    return _cfg(config, "head_dim") or _cfg(config, "hidden_size") // _cfg(config, "num_attention_heads")


def activation_bytes_per_token(config, policy: str, lora_dropout: float = 0.0) -> float:
    """Rough bytes of saved activations per training token in bf16, for each checkpointing policy.

    Without checkpointing a decoder layer keeps about 18 hidden-size and 5 intermediate-size tensors per
    token (norm inputs/outputs, q/k/v/attention output, gate/up/act/product). Against the H100 probe's
    peaks without checkpointing (Qwen2.5-0.5B and 3B, Liger kernels on) it is about 10% high, which is
    the safe side. LoRA dropout keeps a dropped copy of each adapted input (and its mask). Full
    checkpointing keeps only each layer's input plus one layer being recomputed; selective also keeps
    the attention output; offload keeps only the layer in flight.
    """
    h, i, layers = _cfg(config, "hidden_size"), _cfg(config, "intermediate_size"), _cfg(config, "num_hidden_layers")
    attn = _cfg(config, "num_attention_heads") * _head_dim(config)
    per_layer = 2 * (18 * h + 5 * i)
    if lora_dropout > 0:
        per_layer += 3 * (5 * h + attn + i)  # bf16 copy + bool mask of q,k,v,gate,up inputs, o and down inputs
    loss = 8 * h  # fp32 gradient of the last hidden state in the fused head
    if policy == "none":
        return layers * per_layer + loss
    if policy == "full":
        return layers * 2 * h + per_layer + loss
    if policy == "selective":
        return layers * (2 * h + 2 * attn) + per_layer + loss
    if policy == "offload":
        return per_layer + loss
    raise ValueError(f"unknown checkpointing policy {policy!r}")


def pick_checkpointing(free_bytes: float, model_bytes: float, tokens_per_step: int, config,
                       lora_dropout: float = 0.0, reserve_bytes: float = 2 * GIB) -> str:
    """The fastest activation policy whose estimate fits: "none", "selective", "full", else "offload".

    free_bytes: free accelerator memory before loading; model_bytes: weights + LoRA weights, gradients
    and optimizer state (`training_state_bytes`). reserve_bytes covers the fused loss tiles, the
    allocator's fragmentation and the CUDA context; 10% of the free memory is held back as well.
    """
    budget = 0.9 * free_bytes - model_bytes - reserve_bytes
    for policy in ("none", "selective", "full"):
        if activation_bytes_per_token(config, policy, lora_dropout) * tokens_per_step <= budget:
            return policy
    return "offload"


def auto_checkpointing(model, free_bytes: float, tokens_per_step: int, lora_dropout: float = 0.0) -> str:
    """`pick_checkpointing` for a PEFT-wrapped model, as train.py's trainer.checkpointing=auto uses it.

    free_bytes: accelerator memory free before the weights were loaded. Offload needs transformers'
    activation_checkpointing_enable (5.23+); where it is missing, full is the next most frugal.
    """
    policy = pick_checkpointing(free_bytes, training_state_bytes(model), tokens_per_step, model.config, lora_dropout)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if policy == "offload" and not hasattr(base, "activation_checkpointing_enable"):
        policy = "full"
    return policy


CHECKPOINTING_POLICIES = ("none", "selective", "full", "offload")


def checkpointing_kwargs(policy: str) -> Optional[dict]:
    """The kwargs for torch.utils.checkpoint under `policy`, or None for "none".

    Always non-reentrant (frozen inputs under LoRA). "selective" saves the attention outputs and
    recomputes the rest: attention is the costliest thing to recompute at long lengths. TRL's own
    selective policy does not know torch's varlen op, hence this one.
    """
    if policy not in CHECKPOINTING_POLICIES:
        raise ValueError(f"unknown checkpointing policy {policy!r}; expected one of {CHECKPOINTING_POLICIES}")
    if policy == "none":
        return None
    kwargs: dict[str, Any] = {"use_reentrant": False}
    if policy == "selective":
        from torch.utils.checkpoint import create_selective_checkpoint_contexts

        kwargs["context_fn"] = partial(create_selective_checkpoint_contexts, _save_attention_policy)
    return kwargs


def enable_checkpointing(model, policy: str) -> None:
    """Turn on activation checkpointing of `policy` on a model, PEFT-wrapped or not.

    "offload" is full checkpointing whose saved layer inputs wait in pinned host memory
    (transformers 5.23's activation_checkpointing_enable(offload=True)): it frees layers x tokens x
    hidden bytes of GPU memory for two copies per layer.
    """
    import torch

    kwargs = checkpointing_kwargs(policy)
    if kwargs is None:
        return
    # On a machine without an accelerator the activations live on the host already, and pinning
    # memory fails there ("no pinned memory allocator"): offload is plain full checkpointing.
    offload = policy == "offload" and torch.cuda.is_available()
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if hasattr(base, "activation_checkpointing_enable"):
        base.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs, offload=offload)
    elif offload:
        raise ValueError("checkpointing offload needs transformers' activation_checkpointing_enable (5.23+)")
    else:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def _save_attention_policy(ctx, op, *args, **kwargs):
    from torch.utils.checkpoint import CheckpointPolicy

    name = str(op)
    keep = ("scaled_dot_product" in name and "attention" in name) or "varlen_attn" in name or "flash_attn" in name
    return CheckpointPolicy.MUST_SAVE if keep else CheckpointPolicy.PREFER_RECOMPUTE


def training_state_bytes(model, optimizer_state_per_param: int = 8) -> int:
    """Bytes of the weights (as stored, 4-bit included) plus gradient and AdamW state of the trainable ones.

    Call it on the PEFT-wrapped model: before wrapping, every weight still requires grad.
    """
    total = 0
    for p in model.parameters():
        total += p.numel() * p.element_size()
        if p.requires_grad:
            total += p.numel() * (p.element_size() + optimizer_state_per_param)
    return total


# ---------------------------------------------------------------------------------------------
# FLOPs and MFU
# ---------------------------------------------------------------------------------------------
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
    h, i, layers = _cfg(config, "hidden_size"), _cfg(config, "intermediate_size"), _cfg(config, "num_hidden_layers")
    heads, kv_heads, hd = _cfg(config, "num_attention_heads"), _cfg(config, "num_key_value_heads"), _head_dim(config)
    attention = h * hd * (2 * heads + 2 * kv_heads)  # q and o: heads*hd each; k and v: kv_heads*hd each
    mlp = 3 * h * i
    return layers * (attention + mlp) + _cfg(config, "vocab_size") * h


def model_flops_per_token(config, mean_attended_keys: float = 0.0) -> float:
    """Model FLOPs of one LoRA training token: 4·N, plus attention scores when a context is given.

    Forward 2·N (a multiply-add per weight); backward 2·N for the input gradients. The frozen base has no
    weight gradients, hence 4·N and not full fine-tuning's 6·N. The LoRA matrices themselves (r << h) and
    checkpoint recomputation are not counted: MFU counts the model's work, not the hardware's.
    Attention scores add 12·layers·heads·head_dim per attended key (QK^T and PV forward, twice that
    backward); pass `mean_attended_keys` (see `mean_attended_keys`) to include them, 0 leaves them out
    as the H100 probe's figures do (about 2% of 4·N at 450-token examples on Qwen2.5-3B).
    """
    attn = 12 * _cfg(config, "num_hidden_layers") * _cfg(config, "num_attention_heads") * _head_dim(config)
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


def speed_callback(flops_per_token: float, peak: Optional[float]):
    """A TrainerCallback that adds tokens/s (and MFU where the peak is known) to every training log.

    Values go into the logs dict (seen by callbacks after this one, e.g. the progress bar and
    TensorBoard) and into state.log_history (so run.json gets them): Trainer.log copies the dict
    into log_history before the callbacks run, hence the explicit update of its last entry.
    Tokens are state.num_input_tokens_seen (include_num_input_tokens_seen="non_padding").
    """
    from transformers import TrainerCallback

    class SpeedLog(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            self.last = (time.perf_counter(), state.num_input_tokens_seen)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not logs or "loss" not in logs or not hasattr(self, "last"):
                return
            now, tokens = time.perf_counter(), state.num_input_tokens_seen
            rate = (tokens - self.last[1]) / max(now - self.last[0], 1e-9)
            self.last = (now, tokens)
            extra = {"tokens_per_second": round(rate, 1)}
            utilisation = mfu(rate, flops_per_token, peak)
            if utilisation is not None:
                extra["mfu"] = round(utilisation, 4)
            logs.update(extra)
            if state.log_history and state.log_history[-1].get("step") == state.global_step:
                state.log_history[-1].update(extra)

    return SpeedLog()


def run_speed_summary(tokens: int, seconds: float, config, device_name: Optional[str]) -> dict:
    """run.json fields: tokens/s over the whole training, FLOPs per token, peak used and MFU."""
    rate = tokens / max(seconds, 1e-9)
    fpt = model_flops_per_token(config)
    peak = peak_flops(device_name)
    utilisation = mfu(rate, fpt, peak)
    return {
        "tokens_per_second": round(rate, 1),
        "model_flops_per_token": fpt,
        "peak_flops": peak,
        "mfu": None if utilisation is None else round(utilisation, 4),
    }


__all__ = [
    "VARLEN_ATTENTION", "pick_attention", "register_varlen_attention", "varlen_attention_forward",
    "best_fit_bins", "pack_examples", "pack_dataset", "packing_efficiency", "sft_speed_kwargs",
    "apply_fused_layer_kernels", "activation_bytes_per_token", "pick_checkpointing", "auto_checkpointing", "checkpointing_kwargs",
    "enable_checkpointing",
    "training_state_bytes", "peak_flops", "matmul_params", "model_flops_per_token", "mean_attended_keys",
    "mfu", "speed_callback", "run_speed_summary",
]
