"""publish/gguf.py: convert tiny Qwen2 / Qwen3 models and read the GGUFs back with independent readers.

Weights are checked through logits. The f16 files go through transformers' GGUF loader end to end
(`from_pretrained(gguf_file=...)`: gguf.GGUFReader, its own GGUF->HF name map, its config mapping).
The q8_0 files go through transformers' own fast GGUF reader and torch dequantizer (not gguf.quants,
which wrote them). Metadata and tokenizer are checked with gguf.GGUFReader, tensor types with
transformers' tensor-table reader.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as QT  # noqa: E402
from gguf import TokenType  # noqa: E402

from publish.gguf import convert_to_gguf  # noqa: E402
from train.tiny import QWEN_VOCAB_SIZE  # noqa: E402

ARCHS = ["qwen2", "qwen3"]
QTYPES = ["f16", "q8_0"]
UNTIED = {"qwen3"}
# Max |logit difference| between the model read back from the GGUF and what the file should hold:
# for f16 the original model (its bf16 weights are exact in f16), for q8_0 the original with every
# matrix rounded to Q8_0 by gguf.quants in HF's own naming. A correct file is off by <4e-6 (logits
# reach ~40). Q8_0 rounding itself moves logits by ~0.2, as much as some mapping bugs, hence the
# rounded reference rather than a loose tolerance. Bugs planted in the converter's plan fail at every
# (arch, qtype): swapping ffn_gate/ffn_up 0.009 to 0.06, q_norm/k_norm 0.0096, attn_norm/ffn_norm
# 0.1 to 0.35, attn_k/attn_v 0.26 to 1.6. (A missing tensor, e.g. a bias, the converter refuses.)
TOLERANCE = 1e-3
# A few sequences: chat control tokens, and ids from all over the (151,936-row) embedding table.
_CHAT = [151644, 872, 198, 9707, 11, 1879, 0, 151645, 198, 151644, 77091, 198]
TOKENS = torch.stack([
    torch.tensor(_CHAT),
    torch.randint(0, 151643, (12,), generator=torch.Generator().manual_seed(0)),
    torch.randint(100_000, QWEN_VOCAB_SIZE, (12,), generator=torch.Generator().manual_seed(1)),
])


class InMemoryGGUFReader(gguf.GGUFReader):
    """gguf.GGUFReader over the file's bytes in memory instead of an np.memmap.

    GGUFReader slices its buffer once per string, and a full Qwen vocabulary (tokens + merges) is
    ~450k strings; np.memmap slicing makes that ~15 s a file, a plain array ~4 s. Same parser.
    """

    def __init__(self, path, mode="r"):
        data = np.fromfile(path, dtype=np.uint8)
        with mock.patch.object(np, "memmap", lambda *args, **kwargs: data):
            super().__init__(path, mode)


@pytest.fixture(scope="module", autouse=True)
def cached_gguf_reader():
    """Every GGUFReader of this module (transformers' loader included) parses each file only once."""
    cache: dict[str, gguf.GGUFReader] = {}

    def reader(path, mode="r"):
        key = str(Path(path).resolve())
        if key not in cache:
            cache[key] = InMemoryGGUFReader(path, mode)
        return cache[key]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(gguf, "GGUFReader", reader)
        yield reader


@pytest.fixture(scope="module")
def tiny(tiny_qwen2_dir, tiny_qwen3_dir, tmp_path_factory):
    """arch -> (model dir, {qtype: expected logits}) of tiny models whose norms and biases are random too.

    Copies of conftest's tiny models (save_tiny_model, cached): those leave biases at 0 and norms at
    1, which would hide a missing bias or swapped norms. The qwen3 copy is also untied (an lm_head of
    its own, like Qwen3-8B and up); qwen2 stays tied, like Qwen2.5-0.5B to 3B.
    """
    from transformers import AutoModelForCausalLM

    models = {}
    for arch, source in zip(ARCHS, [tiny_qwen2_dir, tiny_qwen3_dir]):
        model_dir = tmp_path_factory.mktemp(arch) / f"tiny-{arch}"
        shutil.copytree(source, model_dir)
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16)
        generator = torch.Generator().manual_seed(2)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if param.dim() == 1:
                    base = 1.0 if name.endswith("norm.weight") else 0.0
                    param.copy_(base + 0.3 * torch.randn(param.shape, generator=generator))
        if arch in UNTIED:
            model.config.tie_word_embeddings = False
            lm_head = 0.08 * torch.randn(model.lm_head.weight.shape, generator=generator)
            model.lm_head.weight = torch.nn.Parameter(lm_head.to(torch.bfloat16))
        model.save_pretrained(model_dir)
        model = model.float()
        with torch.no_grad():
            f16 = model(TOKENS).logits
            for param in model.parameters():
                if param.dim() == 2:  # what a Q8_0 file should hold: each matrix rounded row-block-wise
                    blocks = gguf.quants.quantize(param.numpy(), QT.Q8_0)
                    param.copy_(torch.from_numpy(gguf.quants.dequantize(blocks, QT.Q8_0)))
            models[arch] = model_dir, {"f16": f16, "q8_0": model(TOKENS).logits}
    return models


_converted: dict[tuple[Path, str], Path] = {}
_from_pretrained: dict[Path, torch.nn.Module] = {}


def converted(model_dir: Path, qtype: str) -> Path:
    """The model converted to `qtype` (once per module)."""
    if (model_dir, qtype) not in _converted:
        out = model_dir.parent / "gguf" / f"{model_dir.name}-{qtype}.gguf"
        _converted[model_dir, qtype] = convert_to_gguf(model_dir, out, qtype, quiet=True)
    return _converted[model_dir, qtype]


def from_pretrained(path: Path):
    """`AutoModelForCausalLM.from_pretrained(gguf_file=)`: transformers' GGUF loader, config included."""
    from transformers import AutoModelForCausalLM

    if path not in _from_pretrained:
        reader = gguf.GGUFReader(path)
        overrides = {}
        if field(reader, "general.architecture") == "qwen3":
            # transformers 5.23 maps `attention.key_length` to head_dim for qwen3_moe only, so a dense
            # qwen3 GGUF gets Qwen3Config's default head_dim (128). Take it from the file.
            overrides["head_dim"] = int(field(reader, "qwen3.attention.key_length"))
        _from_pretrained[path] = AutoModelForCausalLM.from_pretrained(
            path.parent, gguf_file=path.name, dtype=torch.float32, **overrides
        )
    return _from_pretrained[path]


def field(reader, key):
    return reader.fields[key].contents()


def load_with_transformers_reader(path: Path, config):
    """The model of a GGUF as transformers' own fast GGUF reader and torch dequantizer see it.

    Used for the Q8_0 files: it decodes the blocks with transformers' code rather than gguf.quants
    (which wrote them), and skips GGUFReader's ~5 s parse of the vocabulary.
    """
    from transformers import AutoModelForCausalLM
    from transformers.integrations.gguf.dequant import dequantize
    from transformers.integrations.gguf.reader import GgufHeader, load_gguf_state_dict
    from transformers.modeling_gguf_pytorch_utils import TensorProcessor, get_gguf_hf_weights_map

    header = GgufHeader.from_file(str(path))
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    hf_name = get_gguf_hf_weights_map(model, TensorProcessor())  # what from_pretrained(gguf_file=) uses
    state = {}
    for info, (name, lazy) in zip(header.tensors, load_gguf_state_dict(header).items()):
        raw = lazy[...]
        values = raw.float() if raw.is_floating_point() else dequantize(raw.reshape(-1), info.ggml_type)
        state[hf_name[name]] = values.reshape(info.shape)
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and missing == (["lm_head.weight"] if config.tie_word_embeddings else [])
    return model


@pytest.mark.parametrize("qtype", QTYPES)
@pytest.mark.parametrize("arch", ARCHS)
def test_gguf_gives_the_same_logits(tiny, arch, qtype):
    model_dir, expected = tiny[arch]
    f16_model = from_pretrained(converted(model_dir, "f16"))
    config = f16_model.config  # read from the GGUF metadata by transformers
    assert config.model_type == arch and config.tie_word_embeddings == (arch not in UNTIED)
    assert (config.hidden_size, config.intermediate_size, config.num_hidden_layers) == (64, 128, 2)
    assert (config.num_attention_heads, config.num_key_value_heads, config.vocab_size) == (4, 2, QWEN_VOCAB_SIZE)
    assert config.rope_parameters["rope_theta"] == 1_000_000.0 and config.rms_norm_eps == pytest.approx(1e-6)
    if qtype == "f16":  # transformers' GGUF loader, end to end
        model = f16_model
    else:
        model = load_with_transformers_reader(converted(model_dir, qtype), config)
    with torch.no_grad():
        logits = model(TOKENS).logits
    diff = (logits - expected[qtype]).abs().max().item()
    assert diff < TOLERANCE, f"{arch} {qtype}: max |logit diff| {diff}"


@pytest.mark.parametrize("arch", ARCHS)
def test_metadata_and_tokenizer(tiny, arch):
    model_dir, _ = tiny[arch]
    reader = gguf.GGUFReader(converted(model_dir, "f16"))
    assert field(reader, "general.architecture") == arch
    assert field(reader, "general.name") == model_dir.name
    assert field(reader, "general.file_type") == gguf.LlamaFileType.MOSTLY_F16
    assert field(reader, f"{arch}.context_length") == 32768
    assert field(reader, f"{arch}.embedding_length") == 64
    assert field(reader, f"{arch}.block_count") == 2
    assert field(reader, f"{arch}.feed_forward_length") == 128
    assert field(reader, f"{arch}.attention.head_count") == 4
    assert field(reader, f"{arch}.attention.head_count_kv") == 2
    assert field(reader, f"{arch}.rope.freq_base") == 1_000_000.0
    assert field(reader, f"{arch}.attention.layer_norm_rms_epsilon") == pytest.approx(1e-6)
    if arch == "qwen3":
        assert field(reader, "qwen3.attention.key_length") == field(reader, "qwen3.attention.value_length") == 16

    assert field(reader, "tokenizer.ggml.model") == "gpt2"
    assert field(reader, "tokenizer.ggml.pre") == "qwen2"
    assert field(reader, "tokenizer.chat_template") == (model_dir / "chat_template.jinja").read_text()
    assert field(reader, "tokenizer.ggml.eos_token_id") == 151645
    assert field(reader, "tokenizer.ggml.padding_token_id") == 151643
    assert field(reader, "tokenizer.ggml.bos_token_id") == 151643
    assert field(reader, "tokenizer.ggml.add_bos_token") is False

    tokens = field(reader, "tokenizer.ggml.tokens")
    types = field(reader, "tokenizer.ggml.token_type")
    assert len(tokens) == len(types) == QWEN_VOCAB_SIZE
    assert tokens[151643:151646] == ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    assert tokens[0] == "!" and tokens[220] == "Ġ" and types[0] == TokenType.NORMAL
    assert types[151645] == TokenType.CONTROL
    assert tokens[151657] == "<tool_call>" and types[151657] == TokenType.USER_DEFINED
    last_used = 151668 if arch == "qwen3" else 151664
    assert tokens[last_used + 1] == f"[PAD{last_used + 1}]" and types[last_used + 1] == TokenType.UNUSED
    assert tokens[-1] == f"[PAD{QWEN_VOCAB_SIZE - 1}]"
    merges = json.loads((model_dir / "tokenizer.json").read_text())["model"]["merges"]
    gguf_merges = reader.fields["tokenizer.ggml.merges"]
    assert len(gguf_merges.data) == len(merges) and gguf_merges.contents(0) == " ".join(merges[0])

    names = {t.name for t in reader.tensors}
    untied = arch in UNTIED
    assert "token_embd.weight" in names and ("output.weight" in names) == untied  # tied: llama.cpp reuses token_embd
    extra = {"qwen2": ["attn_q.bias", "attn_k.bias", "attn_v.bias"], "qwen3": ["attn_q_norm.weight", "attn_k_norm.weight"]}
    assert all(f"blk.1.{name}" in names for name in extra[arch])
    assert len(names) == 2 + untied + 2 * (9 + len(extra[arch]))


@pytest.mark.parametrize("qtype", QTYPES)
@pytest.mark.parametrize("arch", ARCHS)
def test_tensor_types(tiny, arch, qtype):
    from transformers.integrations.gguf.reader import GgufHeader, read_gguf_metadata

    model_dir, _ = tiny[arch]
    path = str(converted(model_dir, qtype))
    header = GgufHeader.from_file(path)  # transformers' tensor-table reader: no vocabulary parse
    matrix_type = {"f16": QT.F16, "q8_0": QT.Q8_0}[qtype]
    for tensor in header.tensors:
        expected = matrix_type if len(tensor.shape) == 2 else QT.F32  # norms and biases stay F32
        assert tensor.ggml_type == expected, tensor.name
    assert header.tensors[0].name == "token_embd.weight" and header.tensors[0].shape == (QWEN_VOCAB_SIZE, 64)
    assert read_gguf_metadata(path)[0]["general.file_type"] == {"f16": 1, "q8_0": 7}[qtype]


def test_failed_conversion_leaves_no_partial_file(tiny, tmp_path):
    model_dir, _ = tiny["qwen2"]
    out = tmp_path / "model.gguf"
    out.write_bytes(b"previous")
    # Fails once the temporary file holds the header: a full disk, or a Ctrl-C, mid-write.
    with mock.patch.object(gguf.GGUFWriter, "write_kv_data_to_file", side_effect=OSError("No space left on device")):
        with pytest.raises(OSError, match="No space left"):
            convert_to_gguf(model_dir, out, "f16", quiet=True)
    assert out.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["model.gguf"]


@pytest.mark.parametrize("arch_name", ["LlamaForCausalLM", "GPT2LMHeadModel"])
def test_unsupported_architecture_is_refused(tmp_path, arch_name):
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

    if arch_name == "LlamaForCausalLM":
        config = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                             num_attention_heads=2, num_key_value_heads=1)
    else:
        config = GPT2Config(vocab_size=128, n_embd=32, n_layer=1, n_head=2, n_positions=64)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "model")
    with pytest.raises(ValueError, match=f"does not support architecture {arch_name}"):
        convert_to_gguf(tmp_path / "model", tmp_path / "model.gguf")
    assert not (tmp_path / "model.gguf").exists()


def test_bad_inputs_are_refused(tiny, tmp_path):
    model_dir, _ = tiny["qwen2"]
    no_weights = tmp_path / "bin"
    no_weights.mkdir()
    shutil.copy(model_dir / "config.json", no_weights)
    torch.save({}, no_weights / "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"no \*\.safetensors weights .*pytorch_model\.bin"):
        convert_to_gguf(no_weights, tmp_path / "x.gguf")
    with pytest.raises(ValueError, match="unsupported GGUF qtype 'q4_k'"):
        convert_to_gguf(model_dir, tmp_path / "x.gguf", "q4_k")
    with pytest.raises(ValueError, match="no config.json"):
        convert_to_gguf(tmp_path, tmp_path / "x.gguf")
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    with pytest.raises(ValueError, match="PEFT adapter: merge it"):
        convert_to_gguf(adapter, tmp_path / "x.gguf")
    assert not list(tmp_path.glob("*.gguf"))
