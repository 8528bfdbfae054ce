"""Convert a saved Hugging Face Qwen2 / Qwen3 causal LM into a single GGUF file (llama.cpp's format).

A small, self-contained converter for exactly the architectures Scion fine-tunes. It uses only the
`gguf` Python library (GGUFWriter, TensorNameMap, gguf.quants), not llama.cpp's convert_hf_to_gguf.py.

Supported:
  * `Qwen2ForCausalLM` (Qwen2 / Qwen2.5: q/k/v biases) -> GGUF architecture "qwen2";
    `Qwen3ForCausalLM` (Qwen3 dense: q_norm / k_norm, explicit head_dim) -> "qwen3";
    `Qwen3_5ForConditionalGeneration` (Qwen3.5: its text model only) -> "qwen35": Gated DeltaNet
    blocks (attn_qkv, attn_gate, ssm_*) and gated full-attention blocks, per `layer_types`, with the
    conversions llama.cpp's qwen35 expects (see _qwen35_tensor). The vision tower and MTP weights are
    not part of this file (llama.cpp keeps vision in a separate mmproj file).
  * Weights from `*.safetensors` (one file or shards); tied or untied embeddings. When tied, only
    `token_embd.weight` is written and llama.cpp reuses it as the output projection.
  * Output types "f32", "f16", "bf16" and "q8_0". Norms and biases (1-D tensors) always stay F32, as
    in llama.cpp; with "q8_0" every 2-D matrix whose rows are a multiple of 32 is Q8_0 (others F16).
  * The tokenizer from `tokenizer.json` (byte-level BPE): tokenizer.ggml.model "gpt2", pre "qwen2",
    one token per embedding row ("[PAD{id}]" for unused ids), token types, merges, bos/eos/pad ids,
    add_bos_token false, and the chat template (tokenizer_config.json or chat_template.jinja).
  * The `general.*` model metadata as llama.cpp's convert_hf_to_gguf.py writes it, through the
    `gguf` library's own Metadata (see `hub_metadata`): name, basename, size label, license, base
    model lineage, repo URL, tags and who quantized it.

Not supported (a one-line ValueError): other architectures (Llama, MoE, vision...), `.bin` /
`.pth` checkpoints, PEFT adapter directories (merge first), RoPE scaling (YaRN etc.), sliding-window
attention, Qwen3 attention biases, k-quants (make those from the F16 file with llama-quantize).

The file is written to a temporary file beside `out_path` and renamed into place, so an interrupted
conversion never leaves a half-written .gguf. Tensors are streamed one at a time (planned from the
safetensors headers first), so memory stays near the size of the largest tensor.
"""

from __future__ import annotations

import copy
import json
import math
import os
from pathlib import Path

import gguf
import numpy as np
from gguf import GGMLQuantizationType as QT
from gguf import LlamaFileType, TokenType

from train.arch import ARCHITECTURES, by_hf_class

# HF architecture -> gguf architecture enum, for every architecture in train/arch/.
SUPPORTED_ARCHITECTURES = {
    a.hf_class: next(arch for arch, name in gguf.MODEL_ARCH_NAMES.items() if name == a.gguf_arch)
    for a in ARCHITECTURES.values()
}
# qtype -> (type of the 2-D weight matrices, general.file_type)
QTYPES = {
    "f32": (QT.F32, LlamaFileType.ALL_F32),
    "f16": (QT.F16, LlamaFileType.MOSTLY_F16),
    "bf16": (QT.BF16, LlamaFileType.MOSTLY_BF16),
    "q8_0": (QT.Q8_0, LlamaFileType.MOSTLY_Q8_0),
}
# Tensors every block must have, per architecture (gguf names without the "blk.N." prefix).
_BLOCK_TENSORS = [
    "attn_norm.weight", "attn_q.weight", "attn_k.weight", "attn_v.weight", "attn_output.weight",
    "ffn_norm.weight", "ffn_gate.weight", "ffn_up.weight", "ffn_down.weight",
]
_ARCH_BLOCK_TENSORS = {SUPPORTED_ARCHITECTURES[a.hf_class]: list(a.gguf_block_tensors) for a in ARCHITECTURES.values()}


def convert_to_gguf(
    model_dir: str | os.PathLike,
    out_path: str | os.PathLike,
    qtype: str = "f16",
    *,
    metadata: gguf.Metadata | None = None,
    quiet: bool = False,
) -> Path:
    """Convert the HF Qwen2/Qwen3 model in `model_dir` to a GGUF file at `out_path`; returns the path.

    qtype: "f16" (default), "bf16", "f32" or "q8_0". metadata: the `general.*` keys (`hub_metadata`
    builds them for a published repo); without it general.name is the directory name. A missing
    size label is computed from the parameter count, as llama.cpp does. Raises ValueError for an
    unsupported architecture, qtype or checkpoint format.
    """
    model_dir, out_path = Path(model_dir), Path(out_path)
    if qtype not in QTYPES:
        raise ValueError(f"unsupported GGUF qtype {qtype!r}: expected one of {', '.join(QTYPES)}")
    config, arch = read_config(model_dir)
    plan = plan_tensors(model_dir, config, arch, qtype)
    metadata = copy.copy(metadata) if metadata is not None else gguf.Metadata(name=model_dir.resolve().name)
    if metadata.size_label is None:  # llama.cpp's fallback: "494M", "3.1B" from the weights written
        total = _parameter_count(plan)
        metadata.size_label = gguf.size_label(total, total, 0, 0)  # dense: every weight is shared

    writer_arch = gguf.MODEL_ARCH_NAMES[arch]
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.{os.getpid()}.tmp")  # same filesystem: atomic rename
    writer = gguf.GGUFWriter(tmp, writer_arch)
    try:
        writer.add_type(gguf.GGUFType.MODEL)
        metadata.set_gguf_meta_model(writer)
        add_metadata(writer, config, arch, QTYPES[qtype][1])
        add_arch_metadata(writer, config, arch)
        add_tokenizer(writer, model_dir, config)
        for gguf_name, (_, _, shape, ggml_type) in plan.items():
            writer.add_tensor_info(gguf_name, shape, np.dtype(np.float32), _nbytes(shape, ggml_type), raw_dtype=ggml_type)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        _write_tensor_data(writer, plan, quiet, arch)
        writer.close()
        os.replace(tmp, out_path)
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    return out_path


def parameter_count(model_dir: str | os.PathLike) -> int:
    """Weights the GGUF of `model_dir` will hold (a tied output matrix once), from the safetensors headers."""
    config, arch = read_config(Path(model_dir))
    return _parameter_count(plan_tensors(Path(model_dir), config, arch, "f16"))


def _parameter_count(plan: dict) -> int:
    return sum(math.prod(shape) for _, _, shape, _ in plan.values())


def read_config(model_dir: Path) -> tuple[dict, gguf.MODEL_ARCH]:
    """config.json as a dict, and the gguf architecture; ValueError if it is not one we convert."""
    config_file = model_dir / "config.json"
    if not config_file.is_file():
        hint = " (a PEFT adapter: merge it into the base model first)" if (model_dir / "adapter_config.json").exists() else ""
        raise ValueError(f"no config.json in {model_dir}{hint}")
    config = json.loads(config_file.read_text())
    archs = config.get("architectures") or [f"<model_type {config.get('model_type')!r}>"]
    if len(archs) != 1 or archs[0] not in SUPPORTED_ARCHITECTURES:
        raise ValueError(
            f"GGUF conversion does not support architecture {', '.join(archs)}: "
            f"only {' and '.join(SUPPORTED_ARCHITECTURES)}"
        )
    arch = SUPPORTED_ARCHITECTURES[archs[0]]
    if isinstance(config.get("text_config"), dict):  # image-text-to-text: the GGUF is its text model
        config = {**config["text_config"], "architectures": archs}
    rope_type = _rope(config).get("rope_type") or _rope(config).get("type") or "default"
    if rope_type != "default":
        raise ValueError(f"GGUF conversion of {archs[0]} does not support RoPE scaling {rope_type!r}")
    if config.get("use_sliding_window"):
        raise ValueError(f"GGUF conversion of {archs[0]} does not support sliding-window attention")
    if "attn_q.bias" not in _ARCH_BLOCK_TENSORS[arch] and config.get("attention_bias"):
        raise ValueError(f"GGUF conversion of {archs[0]} does not support attention biases")
    return config, arch


def plan_tensors(model_dir: Path, config: dict, arch: gguf.MODEL_ARCH, qtype: str) -> dict:
    """gguf name -> (safetensors file, HF name, shape, GGML type), from the safetensors headers only."""
    from safetensors import safe_open

    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        others = sorted(p.name for p in model_dir.glob("*") if p.suffix in (".bin", ".pt", ".pth", ".gguf"))
        found = f" (found {', '.join(others)}; only safetensors are supported)" if others else ""
        raise ValueError(f"no *.safetensors weights in {model_dir}{found}")
    n_layers = config["num_hidden_layers"]
    tied = config.get("tie_word_embeddings", False)
    name_map = gguf.TensorNameMap(arch, n_layers)
    prefix = by_hf_class(config["architectures"][0]).language_model_prefix
    plan = {}
    for file in files:
        with safe_open(file, framework="pt") as f:
            for hf_name in f.keys():
                if hf_name.endswith("rotary_emb.inv_freq"):  # recomputed by llama.cpp
                    continue
                if hf_name == "lm_head.weight" and tied:  # llama.cpp falls back to token_embd
                    continue
                lookup = hf_name
                if prefix:  # the text model of a bigger checkpoint: skip the rest (vision, MTP)
                    if not hf_name.startswith(prefix) and hf_name != "lm_head.weight":
                        continue
                    lookup = _QWEN35_RENAMES(hf_name.replace(prefix, "model.", 1))
                gguf_name = name_map.get_name(lookup, try_suffixes=(".weight", ".bias"))
                if gguf_name is None:
                    raise ValueError(f"cannot map tensor {hf_name!r} of {file.name} to a GGUF {arch.name.lower()} tensor")
                shape = tuple(f.get_slice(hf_name).get_shape())
                if gguf_name.endswith("ssm_conv1d.weight"):  # [channels, 1, width] -> [channels, width]
                    shape = (shape[0], shape[-1])
                plan[gguf_name] = (file, hf_name, shape, _tensor_type(shape, qtype))

    expected = {"token_embd.weight", "output_norm.weight"} | ({"output.weight"} if not tied else set())
    for bid in range(n_layers):
        expected |= {f"blk.{bid}.{t}" for t in _block_tensors(config, arch, bid)}
    if missing := sorted(expected - plan.keys()):
        raise ValueError(f"{model_dir} lacks {len(missing)} tensors a {arch.name.lower()} GGUF needs, e.g. {missing[0]}")
    if unexpected := sorted(plan.keys() - expected):
        raise ValueError(f"{model_dir} has tensors llama.cpp's {arch.name.lower()} does not use, e.g. {unexpected[0]}")
    # A stable, llama.cpp-like order: embeddings, blocks in order, then the output tensors.
    def order(name: str):
        parts = name.split(".")
        return (1, int(parts[1]), name) if parts[0] == "blk" else (0 if name.startswith("token_embd") else 2, 0, name)
    return {k: plan[k] for k in sorted(plan, key=order)}


# Qwen3.5 (llama.cpp's qwen35): which tensors each kind of block has.
_QWEN35_COMMON = ["attn_norm.weight", "post_attention_norm.weight", "ffn_gate.weight", "ffn_up.weight", "ffn_down.weight"]
_QWEN35_FULL_ATTENTION = ["attn_q.weight", "attn_k.weight", "attn_v.weight", "attn_output.weight",
                          "attn_q_norm.weight", "attn_k_norm.weight"]
_QWEN35_LINEAR_ATTENTION = ["attn_qkv.weight", "attn_gate.weight", "ssm_a", "ssm_conv1d.weight", "ssm_dt.bias",
                            "ssm_norm.weight", "ssm_beta.weight", "ssm_alpha.weight", "ssm_out.weight"]


def _QWEN35_RENAMES(name: str) -> str:
    """HF names gguf's TensorNameMap knows under another name: `dt_bias` is the dt projection's bias."""
    return name.replace(".linear_attn.dt_bias", ".linear_attn.dt_proj.bias")


def _block_tensors(config: dict, arch: gguf.MODEL_ARCH, bid: int) -> list[str]:
    if arch == gguf.MODEL_ARCH.QWEN35:
        kind = config["layer_types"][bid]
        return _QWEN35_COMMON + (_QWEN35_FULL_ATTENTION if kind == "full_attention" else _QWEN35_LINEAR_ATTENTION)
    return _BLOCK_TENSORS + _ARCH_BLOCK_TENSORS[arch]


def _qwen35_tensor(gguf_name: str, data: np.ndarray) -> np.ndarray:
    """A Qwen3.5 tensor as llama.cpp's qwen35 stores it (the conversions of its own converter).

    - `ssm_a` holds A = -exp(A_log), not A_log;
    - the RMSNorms of the decoder (attn/post-attention/output norms, q_norm, k_norm) scale by
      (1 + weight) in transformers; llama.cpp multiplies by the weight, so 1 is added. The gated
      norm of the DeltaNet output (`ssm_norm`) already multiplies by its weight and is kept;
    - the depthwise conv1d weight [channels, 1, width] becomes [channels, width].
    """
    if gguf_name.endswith("ssm_a"):
        return -np.exp(data)
    if gguf_name.endswith("norm.weight") and not gguf_name.endswith("ssm_norm.weight"):
        return data + 1.0
    if gguf_name.endswith("ssm_conv1d.weight"):
        return data.reshape(data.shape[0], data.shape[-1])
    return data


def _tensor_type(shape: tuple[int, ...], qtype: str) -> QT:
    matrix_type = QTYPES[qtype][0]
    if len(shape) <= 1:  # norms and biases: F32, as llama.cpp keeps them
        return QT.F32
    if matrix_type == QT.Q8_0 and shape[-1] % gguf.GGML_QUANT_SIZES[QT.Q8_0][0] != 0:
        return QT.F16  # rows not a whole number of blocks: llama.cpp falls back to F16 too
    return matrix_type


def _nbytes(shape: tuple[int, ...], ggml_type: QT) -> int:
    block_size, type_size = gguf.GGML_QUANT_SIZES[ggml_type]
    return int(np.prod(shape[:-1], dtype=np.int64)) * (shape[-1] // block_size) * type_size


def _write_tensor_data(writer: gguf.GGUFWriter, plan: dict, quiet: bool, arch: gguf.MODEL_ARCH = None) -> None:
    import torch
    from safetensors import safe_open
    from tqdm.auto import tqdm

    handles = {}  # one open safetensors file per shard
    for gguf_name, (file, hf_name, _, ggml_type) in tqdm(plan.items(), desc="Writing GGUF", unit="tensor", disable=quiet):
        if file not in handles:
            handles[file] = safe_open(file, framework="pt")
        data = handles[file].get_tensor(hf_name).to(torch.float32).numpy()
        if arch == gguf.MODEL_ARCH.QWEN35:
            data = _qwen35_tensor(gguf_name, data)
        writer.write_tensor_data(gguf.quants.quantize(data, ggml_type))


def _rope(config: dict) -> dict:
    """RoPE settings: transformers 5 writes `rope_parameters`, older files `rope_theta`/`rope_scaling`."""
    return config.get("rope_parameters") or config.get("rope_scaling") or {}


def hub_metadata(repo_id: str, model_id: str, base_id: str, license: str, license_name: str | None = None,
                 license_link: str | None = None, tags: list[str] | None = None, total_params: int = 0,
                 endpoint: str = "https://huggingface.co") -> gguf.Metadata:
    """The `general.*` metadata of a GGUF published to `repo_id`, named as llama.cpp's converter names it.

    model_id: the model the file holds ("org/Name-0.5B-support", usually the GGUF repo without
    -GGUF): general.name is its title ("Name 0.5B Support"), and basename, size label, finetune and
    version are parsed from it by the gguf library's own heuristics (a size label that is far from
    `total_params` is not taken; convert_to_gguf then counts the weights). base_id: the pretrained
    base, as general.base_model.0. A relative license_link (the LICENSE shipped in the repo) becomes
    a URL into the repo, since a .gguf file travels alone. quantized_by: the repo's owner.
    """
    Metadata = gguf.Metadata
    org, name = model_id.split("/", 1) if "/" in model_id else (None, model_id)
    _, _, basename, finetune, version, size_label = Metadata.get_model_id_components(model_id, total_params)
    base_org, base_name = base_id.split("/", 1)
    repo_url = f"{endpoint.rstrip('/')}/{repo_id}"
    if license_link and "://" not in license_link:
        license_link = f"{repo_url}/blob/main/{license_link}"
    return Metadata(
        name=Metadata.id_to_title(name),
        organization=Metadata.id_to_title(org) if org else None,
        basename=basename or name,  # the gguf heuristics give none for a plain name like "support-bot"
        finetune=finetune,
        version=version,
        size_label=size_label,
        license=license,
        license_name=license_name if license == "other" else None,
        license_link=license_link if license == "other" else None,
        repo_url=repo_url,
        quantized_by=repo_id.split("/")[0],
        base_models=[{"name": Metadata.id_to_title(base_name), "organization": Metadata.id_to_title(base_org),
                      "repo_url": f"{endpoint.rstrip('/')}/{base_id}"}],
        tags=list(dict.fromkeys(tags or [])),
    )


def add_metadata(writer: gguf.GGUFWriter, config: dict, arch: gguf.MODEL_ARCH, file_type: int) -> None:
    n_heads = config["num_attention_heads"]
    writer.add_vocab_size(config["vocab_size"])
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(n_heads)
    writer.add_head_count_kv(config.get("num_key_value_heads", n_heads))
    writer.add_rope_freq_base(float(_rope(config).get("rope_theta", config.get("rope_theta", 10000.0))))
    writer.add_layer_norm_rms_eps(float(config["rms_norm_eps"]))
    if by_hf_class(config["architectures"][0]).gguf_explicit_head_dim:  # not hidden_size / heads in general
        head_dim = config.get("head_dim") or config["hidden_size"] // n_heads
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_file_type(int(file_type))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def add_arch_metadata(writer: gguf.GGUFWriter, config: dict, arch: gguf.MODEL_ARCH) -> None:
    """The keys only some architectures have. Qwen3.5: the DeltaNet sizes, the layer schedule and the
    partial, sectioned (M-)RoPE, named as llama.cpp's qwen35 reads them."""
    if arch != gguf.MODEL_ARCH.QWEN35:
        return
    rope = _rope(config)
    head_dim = config["head_dim"]
    writer.add_rope_dimension_count(int(head_dim * rope.get("partial_rotary_factor", 1.0)))
    sections = list(rope.get("mrope_section") or [])
    writer.add_rope_dimension_sections(sections + [0] * (4 - len(sections)))
    writer.add_ssm_conv_kernel(config["linear_conv_kernel_dim"])
    writer.add_ssm_state_size(config["linear_key_head_dim"])
    writer.add_ssm_group_count(config["linear_num_key_heads"])
    writer.add_ssm_time_step_rank(config["linear_num_value_heads"])
    writer.add_ssm_inner_size(config["linear_value_head_dim"] * config["linear_num_value_heads"])
    layer_types = config["layer_types"]
    interval = layer_types.index("full_attention") + 1 if "full_attention" in layer_types else len(layer_types)
    writer.add_full_attention_interval(interval)


def add_tokenizer(writer: gguf.GGUFWriter, model_dir: Path, config: dict) -> None:
    """The byte-level BPE vocabulary of tokenizer.json, padded to the embedding's vocab_size."""
    tokenizer_file = model_dir / "tokenizer.json"
    if not tokenizer_file.is_file():
        raise ValueError(f"no tokenizer.json in {model_dir}: GGUF conversion needs the fast tokenizer")
    tokenizer = json.loads(tokenizer_file.read_text(encoding="utf-8"))
    tok_config_file = model_dir / "tokenizer_config.json"
    tok_config = json.loads(tok_config_file.read_text(encoding="utf-8")) if tok_config_file.is_file() else {}
    model = tokenizer["model"]
    if model.get("type") != "BPE":
        raise ValueError(f"GGUF conversion expects a BPE tokenizer.json, got {model.get('type')!r}")

    vocab_size = config["vocab_size"]
    id_to_token = {i: t for t, i in model["vocab"].items()}
    added = {t["id"]: t for t in tokenizer.get("added_tokens", [])}
    if max([*id_to_token, *added]) >= vocab_size:
        raise ValueError(f"the tokenizer has ids beyond the model's vocab_size {vocab_size}")
    tokens, types = [], []
    for i in range(vocab_size):
        if i in added:
            tokens.append(added[i]["content"])
            types.append(TokenType.CONTROL if added[i]["special"] else TokenType.USER_DEFINED)
        elif i in id_to_token:
            tokens.append(id_to_token[i])
            types.append(TokenType.NORMAL)
        else:  # embedding rows with no token (Qwen pads its 151,665/151,669 ids to 151,936)
            tokens.append(f"[PAD{i}]")
            types.append(TokenType.UNUSED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]

    writer.add_tokenizer_model("gpt2")
    # llama.cpp's pre-tokenizer: Qwen3.5's split pattern (letters with combining marks) is "qwen35".
    writer.add_tokenizer_pre("qwen35" if by_hf_class(config["architectures"][0]).gguf_arch == "qwen35" else "qwen2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)

    token_to_id = {t: i for i, t in enumerate(tokens)}

    def special_id(key: str) -> int | None:
        token = tok_config.get(f"{key}_token")
        if isinstance(token, dict):
            token = token.get("content")
        if token is not None and token in token_to_id:
            return token_to_id[token]
        fallback = config.get(f"{key}_token_id")
        return fallback[0] if isinstance(fallback, list) else fallback

    for key, add in (("bos", writer.add_bos_token_id), ("eos", writer.add_eos_token_id), ("pad", writer.add_pad_token_id)):
        if (token_id := special_id(key)) is not None:
            add(token_id)
    writer.add_add_bos_token(False)

    template = tok_config.get("chat_template")
    if template is None and (model_dir / "chat_template.jinja").is_file():
        template = (model_dir / "chat_template.jinja").read_text(encoding="utf-8")
    if template:
        writer.add_chat_template(template)
