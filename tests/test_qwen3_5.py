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


@pytest.fixture(scope="module")
def merged_dir(tiny_dir, tmp_path_factory):
    """An adapter with random (non-zero) LoRA weights on every default target, merged into the tiny base."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from publish.merge import merge_adapter

    root = tmp_path_factory.mktemp("qwen3_5_merge")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.bfloat16)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=list(qwen3_5.LORA_TARGETS), init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(root / "adapter")
    AutoTokenizer.from_pretrained(tiny_dir).save_pretrained(root / "adapter")
    return merge_adapter(tiny_dir, root / "adapter", root / "merged"), root / "adapter"


@pytest.mark.slow
def test_merged_export_is_base_plus_lora_delta_and_bit_identical_elsewhere(tiny_dir, merged_dir):
    import json

    from safetensors import safe_open
    from safetensors.torch import load_file

    merged, adapter = merged_dir
    assert json.loads((merged / "config.json").read_text()) == json.loads((tiny_dir / "config.json").read_text())
    for name in ("preprocessor_config.json", "video_preprocessor_config.json"):
        assert (merged / name).read_bytes() == (tiny_dir / name).read_bytes()
    lora = load_file(adapter / "adapter_model.safetensors")
    scale = 8 / 4
    with safe_open(tiny_dir / "model.safetensors", "pt") as b, safe_open(merged / "model.safetensors", "pt") as m:
        assert list(m.keys()) == list(b.keys())
        changed = 0
        for name in b.keys():
            base, out = b.get_tensor(name), m.get_tensor(name)
            assert out.dtype == base.dtype
            module = name.replace("model.language_model.", "base_model.model.model.").removesuffix(".weight")
            a_key, b_key = f"{module}.lora_A.weight", f"{module}.lora_B.weight"
            if a_key in lora:  # the language model's adapted projections: base + scale * B @ A
                expected = base.float() + scale * lora[b_key].float() @ lora[a_key].float()
                torch.testing.assert_close(out.float(), expected, rtol=1e-2, atol=1e-2)
                assert not torch.equal(out, base)
                changed += 1
            else:  # vision tower, norms, embeddings, DeltaNet's A_log/dt_bias/conv1d: untouched
                assert torch.equal(out, base), name
    assert changed == 3 * 5 + 1 * 4 + 4 * 3  # 3 DeltaNet layers, 1 attention layer, 4 MLPs


@pytest.mark.slow
def test_merged_export_loads_as_the_base_class(merged_dir):
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(merged_dir[0])
    assert type(model).__name__ == "Qwen3_5ForConditionalGeneration"


@pytest.mark.slow
def test_gguf_of_the_text_model_reads_back_as_qwen35(merged_dir, tmp_path):
    import gguf
    import numpy as np
    from safetensors import safe_open

    from publish.gguf import convert_to_gguf

    merged = merged_dir[0]
    path = convert_to_gguf(merged, tmp_path / "m.gguf", qtype="f16", quiet=True)
    reader = gguf.GGUFReader(path)
    field = lambda key: reader.fields[key].contents()  # noqa: E731
    assert field("general.architecture") == "qwen35"
    assert field("qwen35.block_count") == 4
    assert field("qwen35.full_attention_interval") == 4
    assert field("qwen35.ssm.time_step_rank") == 4 and field("qwen35.ssm.group_count") == 2
    assert "<think>" in field("tokenizer.chat_template")
    tensors = {t.name: t for t in reader.tensors}
    assert "blk.0.ssm_conv1d.weight" in tensors and "blk.3.attn_q_norm.weight" in tensors
    assert not any("visual" in name or name.startswith("v.") for name in tensors)
    with safe_open(merged / "model.safetensors", "pt") as f:
        a_log = f.get_tensor("model.language_model.layers.0.linear_attn.A_log").float().numpy()
        norm = f.get_tensor("model.language_model.layers.0.input_layernorm.weight").float().numpy()
    np.testing.assert_allclose(np.asarray(tensors["blk.0.ssm_a"].data), -np.exp(a_log), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(tensors["blk.0.attn_norm.weight"].data), norm + 1.0, rtol=1e-6)
    q8 = gguf.GGUFReader(convert_to_gguf(merged, tmp_path / "q.gguf", qtype="q8_0", quiet=True))
    assert q8.fields["general.architecture"].contents() == "qwen35"
