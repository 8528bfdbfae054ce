"""Qwen2 / Qwen2.5 (Qwen2ForCausalLM): dense decoder, biases on q/k/v, the Qwen2.5 chat template."""

from train.arch.base import DENSE_LORA_TARGETS, QWEN2_5_ADDED_TOKENS, Architecture

ARCHITECTURE = Architecture(
    name="qwen2",
    hf_class="Qwen2ForCausalLM",
    config_class="Qwen2Config",
    # Qwen2.5's template injects its default system prompt into rows that have none.
    chat_template="qwen2_5.jinja",
    added_tokens=QWEN2_5_ADDED_TOKENS,
    lora_targets=DENSE_LORA_TARGETS,
    gguf_arch="qwen2",
    gguf_block_tensors=("attn_q.bias", "attn_k.bias", "attn_v.bias"),
    gguf_explicit_head_dim=False,  # head_dim = hidden_size / heads in every Qwen2
    liger_patch="apply_liger_kernel_to_qwen2",
)
