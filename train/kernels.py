"""Fused layer kernels: Liger-Kernel's RMSNorm, RoPE and SwiGLU where installed on CUDA."""

from __future__ import annotations

from train.arch import of_config


def apply_fused_layer_kernels(model, device: str) -> bool:
    """Liger-Kernel's fused RMSNorm, RoPE and SwiGLU on a Qwen2/Qwen3 model, where installed on CUDA.

    Call before wrapping with PEFT. Liger's fused linear cross-entropy stays off: TRL's fused lm_head
    does that job, and SFTTrainer refuses Liger's (it replaces the forward TRL patches).
    Returns whether the kernels were applied (False on the CPU: they are Triton kernels).
    """
    if not str(device).startswith("cuda"):
        return False
    architecture = of_config(model.config)
    if architecture is None or architecture.liger_patch is None:
        return False
    try:
        import liger_kernel.transformers as liger
    except ImportError:
        return False
    apply = getattr(liger, architecture.liger_patch)
    apply(rope=True, rms_norm=True, swiglu=True, cross_entropy=False, fused_linear_cross_entropy=False, model=model)
    return True
