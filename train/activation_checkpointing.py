"""Activation checkpointing: the policy (none, selective, full, offload), its memory estimate,
and turning it on for a model.

`auto` (trainer.checkpointing=auto) picks the fastest policy whose estimate fits the GPU memory
that was free before loading. The per-architecture terms of the estimate live in train/arch/.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Optional

from train.arch import config_value, head_dim, of_config
from train.arch.qwen2 import ARCHITECTURE as DENSE_QWEN_TERMS

GIB = 2**30

CHECKPOINTING_POLICIES = ("none", "selective", "full", "offload")


def activation_bytes_per_token(config, policy: str, lora_dropout: float = 0.0, fused_kernels: bool = True) -> float:
    """Rough bytes of saved activations per training token in bf16, for each checkpointing policy.

    Without checkpointing a dense Qwen decoder layer keeps about 15 hidden-size, 3 query-width and 5
    intermediate-size tensors per token with Liger's kernels (norm inputs/outputs, q/k/v/attention output,
    gate/up/act/product); each architecture states its own counts (train/arch/: Qwen3 adds its q/k norms
    and attention wider than the hidden size), and an unknown one is counted as dense Qwen. Against the
    H100 probe's peaks without checkpointing (Qwen2.5-0.5B and 3B, Liger kernels on) it is about 10%
    high, which is the safe side.
    Without fused kernels (`fused_kernels=False`: no Liger, or the CPU) transformers' RMSNorm keeps an
    fp32 copy of its input and of the normalised result (8 bytes per element, twice per layer, plus
    q_norm/k_norm's), and SwiGLU keeps silu(gate) as one more intermediate-size tensor.
    QLoRA saves the same activations: the 4-bit matmul keeps its bf16 input, as LoRA's lora_A does, and
    dequantises the weight again in the backward; its weights are in `training_state_bytes`.
    LoRA dropout keeps a dropped copy of each adapted input (and its mask). Full checkpointing keeps
    only each layer's input plus one layer being recomputed; selective also keeps the attention output;
    offload keeps only the layer in flight.
    """
    h, i, layers = config_value(config, "hidden_size"), config_value(config, "intermediate_size"), config_value(config, "num_hidden_layers")
    attn = config_value(config, "num_attention_heads") * head_dim(config)
    kv = config_value(config, "num_key_value_heads", config_value(config, "num_attention_heads")) * head_dim(config)
    terms = of_config(config) or DENSE_QWEN_TERMS
    per_layer = 2 * (terms.saved_hidden_tensors * h + terms.saved_query_tensors * attn + terms.saved_kv_tensors * kv
                     + terms.saved_intermediate_tensors * i)
    if not fused_kernels:
        per_layer += 2 * 8 * h + 2 * i  # fp32 input + normalised copy in both RMSNorms; silu(gate)
        if terms.qk_norm:
            per_layer += 8 * (attn + kv)
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


def uses_fused_kernels(model) -> bool:
    """Whether Liger's kernels replaced the model's RMSNorm (train/kernels.py), which sets the estimate's terms."""
    return any(type(m).__name__.startswith("Liger") for m in model.modules())


def pick_checkpointing(free_bytes: float, model_bytes: float, tokens_per_step: int, config,
                       lora_dropout: float = 0.0, reserve_bytes: float = 2 * GIB, fused_kernels: bool = True) -> str:
    """The fastest activation policy whose estimate fits: "none", "selective", "full", else "offload".

    free_bytes: free accelerator memory before loading; model_bytes: weights + LoRA weights, gradients
    and optimizer state (`training_state_bytes`). reserve_bytes covers the fused loss tiles, the
    allocator's fragmentation and the CUDA context; 10% of the free memory is held back as well.
    """
    budget = 0.9 * free_bytes - model_bytes - reserve_bytes
    for policy in ("none", "selective", "full"):
        if activation_bytes_per_token(config, policy, lora_dropout, fused_kernels) * tokens_per_step <= budget:
            return policy
    return "offload"


def auto_checkpointing(model, free_bytes: float, tokens_per_step: int, lora_dropout: float = 0.0) -> str:
    """`pick_checkpointing` for a PEFT-wrapped model, as train.py's trainer.checkpointing=auto uses it.

    free_bytes: accelerator memory free before the weights were loaded. Offload needs a transformers
    that can offload (every release pyproject allows: 5.17+); where it cannot, full is the next most frugal.
    """
    policy = pick_checkpointing(free_bytes, training_state_bytes(model), tokens_per_step, model.config, lora_dropout,
                                fused_kernels=uses_fused_kernels(model))
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if policy == "offload" and not can_offload(base):
        policy = "full"
    return policy


def can_offload(base) -> bool:
    """Whether this transformers offloads checkpointed activations: activation_checkpointing_enable (5.23+)
    or gradient_checkpointing_enable(..., offload=) (5.17 to 5.22)."""
    import inspect

    if hasattr(base, "activation_checkpointing_enable"):
        return True
    return "offload" in inspect.signature(base.gradient_checkpointing_enable).parameters


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

    "offload" is full checkpointing whose saved layer inputs wait in pinned host memory: it frees
    layers x tokens x hidden bytes of GPU memory for two copies per layer. transformers 5.23+ spells it
    activation_checkpointing_enable(offload=True), 5.17 to 5.22 gradient_checkpointing_enable(offload=True)
    (the same save_on_cpu(pin_memory=True) around each checkpoint).
    """
    kwargs = checkpointing_kwargs(policy)
    if kwargs is None:
        return
    # On a machine without an accelerator the activations live on the host already, and pinning
    # memory fails there ("no pinned memory allocator"): offload is plain full checkpointing.
    offload = policy == "offload" and has_cuda()
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if hasattr(base, "activation_checkpointing_enable"):
        base.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs, offload=offload)
    elif offload:
        if not can_offload(base):
            raise ValueError("checkpointing offload needs transformers 5.17 or later")
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs, offload=True)
    else:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


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
