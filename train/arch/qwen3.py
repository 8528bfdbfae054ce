"""Qwen3 dense (Qwen3ForCausalLM): q_norm/k_norm instead of q/k/v biases, an explicit head_dim,
and the Qwen3 chat template, which puts an empty `<think>\n\n</think>\n\n` block before the last
answer when thinking is off (train/data.py treats that block as prompt)."""

from train.arch.base import DENSE_LORA_TARGETS, QWEN2_5_ADDED_TOKENS, Architecture

ARCHITECTURE = Architecture(
    name="qwen3",
    hf_class="Qwen3ForCausalLM",
    config_class="Qwen3Config",
    chat_template="qwen3.jinja",
    # Qwen3 appends four tokens to Qwen2.5's (151665..151668).
    added_tokens=QWEN2_5_ADDED_TOKENS + (
        ("<tool_response>", False), ("</tool_response>", False), ("<think>", False), ("</think>", False),
    ),
    lora_targets=DENSE_LORA_TARGETS,
    gguf_arch="qwen3",
    gguf_block_tensors=("attn_q_norm.weight", "attn_k_norm.weight"),
    gguf_explicit_head_dim=True,  # Qwen3-4B: 32 heads x 128 = 4096 != hidden 2560
    liger_patch="apply_liger_kernel_to_qwen3",
    # q_norm/k_norm keep their inputs and outputs (2 query-width and 2 key/value-width tensors beyond
    # Qwen2's); Qwen3's attention is wider than its hidden size (4B: 32 x 128 = 4096 vs 2560).
    saved_query_tensors=5,
    saved_kv_tensors=4,
    qk_norm=True,
    tiny_config={"head_dim": 16},
)
