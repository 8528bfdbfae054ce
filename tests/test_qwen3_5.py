"""Qwen3.5 (tiny:qwen3_5): the architecture, packed rows, merged export and GGUF."""

from __future__ import annotations

import pytest
import torch

from train.arch import qwen3_5


@pytest.fixture(scope="module")
def tiny_dir():
    from train.tiny import ensure_tiny_model

    return ensure_tiny_model("tiny:qwen3_5")


@pytest.fixture(scope="module")
def text_model(tiny_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32).eval()


def test_tiny_is_a_conditional_generation_checkpoint_with_both_layer_kinds(tiny_dir):
    import json

    config = json.loads((tiny_dir / "config.json").read_text())
    assert config["architectures"] == ["Qwen3_5ForConditionalGeneration"]
    assert config["text_config"]["vocab_size"] == 248320
    assert config["text_config"]["layer_types"] == ["linear_attention"] * 3 + ["full_attention"]
    assert config["vision_config"]["depth"] >= 1
    assert (tiny_dir / "preprocessor_config.json").is_file()


def test_training_loads_the_text_model_only_without_vision_weights(text_model, tiny_dir):
    from safetensors import safe_open

    assert type(text_model).__name__ == "Qwen3_5ForCausalLM"
    names = [n for n, _ in text_model.named_parameters()]
    assert not any("visual" in n for n in names)
    # The language model's weights are the checkpoint's, not fresh random ones.
    with safe_open(tiny_dir / "model.safetensors", "pt") as f:
        saved = f.get_tensor("model.language_model.layers.0.linear_attn.in_proj_qkv.weight").float()
    assert torch.equal(text_model.model.layers[0].linear_attn.in_proj_qkv.weight, saved)


def test_default_lora_targets_cover_every_linear_projection_of_both_layer_kinds(text_model):
    linear = {name.rsplit(".", 1)[-1] for name, m in text_model.named_modules() if isinstance(m, torch.nn.Linear)}
    linear.discard("lm_head")
    assert set(qwen3_5.LORA_TARGETS) == linear


def test_packed_row_logits_equal_each_example_alone(text_model):
    from train.deltanet import keep_examples_apart

    assert keep_examples_apart(text_model) is None
    g = torch.Generator().manual_seed(0)
    lengths = [7, 12, 5]
    examples = [torch.randint(0, 248000, (n,), generator=g) for n in lengths]
    with torch.no_grad():
        alone = [text_model(input_ids=e[None]).logits[0] for e in examples]
        row = torch.cat(examples)[None]
        position_ids = torch.cat([torch.arange(n) for n in lengths])[None]
        packed = text_model(input_ids=row, position_ids=position_ids).logits[0]
    for logits, (start, end) in zip(alone, [(0, 7), (7, 19), (19, 24)]):
        torch.testing.assert_close(packed[start:end], logits, rtol=1e-4, atol=1e-4)


def test_unpatched_torch_path_leaks_across_examples(tiny_dir):
    """Why the patch exists: transformers' own torch path carries DeltaNet state into the next example."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32).eval()
    first, second = torch.arange(100, 108), torch.arange(300, 306)
    with torch.no_grad():
        alone = model(input_ids=second[None]).logits[0]
        position_ids = torch.cat([torch.arange(8), torch.arange(6)])[None]
        packed = model(input_ids=torch.cat([first, second])[None], position_ids=position_ids).logits[0, 8:]
    assert not torch.allclose(packed, alone, rtol=1e-4, atol=1e-4)
