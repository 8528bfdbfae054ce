"""Find the base model, load it (safetensors only) with its tokenizer, and wrap it with PEFT.

`model.name_or_path` may be:
- a Hub id (Qwen/Qwen2.5-3B-Instruct), fetched with huggingface_hub: weights, config and
  tokenizer files only, never pickles. With HF_HUB_OFFLINE=1 the local HF cache is used.
- a local directory; a snapshot inside the HF cache (.../models--Org--Name/snapshots/<sha>) is
  recognised, so its Hub id and commit are known for lineage without `model.hub_id`.
- tiny:qwen2 / tiny:qwen3 / tiny:qwen3_5, a random model built locally (train/tiny.py).

Qwen3.5 checkpoints are image-text-to-text (Qwen3_5ForConditionalGeneration). Training loads only
their language model: AutoModelForCausalLM maps them to Qwen3_5ForCausalLM with the text config and
skips the vision tower and multi-token-prediction weights, so those never sit in GPU memory.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

from train.arch import SUPPORTED_HF_CLASSES, by_hf_class
from train.arch.base import DENSE_LORA_TARGETS
from train.config import ModelConfig, PeftConfig, PeftMethod, Precision
from train.console import peft_wrapping
from train.errors import ScionError
from train.tiny import TINY_PREFIX, ensure_tiny_model
from train.tokenizer import ENDOFTEXT, IM_END, IM_START

# What a training run needs from a base repo. No *.bin / *.pt / *.pth: those are pickles.
BASE_FILE_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model", "*.tiktoken", "README.md", "LICENSE*", "NOTICE*"]
HF_CACHE_SNAPSHOT = re.compile(r"models--(?P<org>[^/]+?)--(?P<name>[^/]+)/snapshots/(?P<sha>[0-9a-f]{40})/?$")


@dataclass
class BaseModel:
    """Where the base came from: everything lineage and reproduction need."""

    name_or_path: str  # as configured
    local_dir: str  # where the files were read from
    hub_id: Optional[str]  # the Hub id for base_model lineage, when known
    revision: Optional[str]  # as requested
    commit_sha: Optional[str]  # the exact commit, when known
    architecture: str
    max_position_embeddings: Optional[int]
    # Set when the base has no chat template of its own (a -Base checkpoint) and the stock template of
    # its architecture's instruct models is used instead: the template file's name (the card says so).
    chat_template_from: Optional[str] = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check_hub_id(value: str, key: str) -> None:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(value)
    except HFValidationError as e:
        raise ScionError(f"{key}: {value!r} is not a valid Hub id: {e}") from None


def resolve_base(cfg: ModelConfig) -> BaseModel:
    """Locate the base's files (downloading them if needed) without loading any weights."""
    source = cfg.name_or_path
    hub_id, commit_sha = cfg.hub_id, None
    if cfg.hub_id:
        _check_hub_id(cfg.hub_id, "model.hub_id")
    if source.startswith(TINY_PREFIX):
        try:
            local = ensure_tiny_model(source)
        except ValueError as e:
            raise ScionError(f"model.name_or_path: {e}") from None
    elif Path(source).expanduser().is_dir():
        local = Path(source).expanduser().resolve()
        snapshot = HF_CACHE_SNAPSHOT.search(local.as_posix())
        if snapshot:
            hub_id = hub_id or f"{snapshot['org']}/{snapshot['name']}"
            commit_sha = snapshot["sha"]
    elif source.startswith((".", "/", "~")) or source.count("/") != 1:
        raise ScionError(f"model.name_or_path: {source!r} is neither an existing directory nor a Hub id (org/name)")
    else:
        _check_hub_id(source, "model.name_or_path")
        local = _download_base(source, cfg.revision)
        hub_id = hub_id or source
        commit_sha = local.name if re.fullmatch(r"[0-9a-f]{40}", local.name) else None

    config_file = local / "config.json"
    if not config_file.is_file():
        raise ScionError(f"model.name_or_path: {local} has no config.json")
    if not list(local.glob("*.safetensors")):
        pickles = [p.name for p in local.iterdir() if p.suffix in (".bin", ".pt", ".pth")]
        hint = f" (found {', '.join(sorted(pickles))}: pickle files are refused)" if pickles else ""
        raise ScionError(f"model.name_or_path: no *.safetensors weights in {local}{hint}")
    config = json.loads(config_file.read_text())
    architecture = (config.get("architectures") or ["?"])[0]
    if architecture not in SUPPORTED_HF_CLASSES and not cfg.trust_remote_code:
        raise ScionError(
            f"model.name_or_path: architecture {architecture} is not supported; Scion trains {SUPPORTED_HF_CLASSES}"
        )
    if cfg.trust_remote_code and not (cfg.revision and re.fullmatch(r"[0-9a-f]{40}", cfg.revision)):
        raise ScionError("model.trust_remote_code=true needs model.revision pinned to a full commit sha")
    return BaseModel(
        name_or_path=source,
        local_dir=str(local),
        hub_id=hub_id,
        revision=cfg.revision,
        commit_sha=commit_sha,
        architecture=architecture,
        max_position_embeddings=(config.get("text_config") or config).get("max_position_embeddings"),
    )


def _download_base(repo_id: str, revision: Optional[str]) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=BASE_FILE_PATTERNS))
    except RevisionNotFoundError:
        raise ScionError(f"model.revision: {revision!r} does not exist in {repo_id}") from None
    except RepositoryNotFoundError:
        raise ScionError(f"model.name_or_path: Hub repo {repo_id} not found (or private without a token)") from None
    except LocalEntryNotFoundError:
        raise ScionError(
            f"model.name_or_path: {repo_id} is not in the local HF cache and the Hub cannot be reached; "
            "download it once with `hf download` or point name_or_path at a local directory"
        ) from None
    except Exception as e:  # connection errors and the like: one line is enough
        raise ScionError(f"model.name_or_path: cannot fetch {repo_id} from the Hub: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None


def load_tokenizer(base: BaseModel, cfg: ModelConfig):
    """The base's tokenizer, set up for chat training: eos <|im_end|>, pad distinct from eos."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base.local_dir, trust_remote_code=cfg.trust_remote_code)
    if cfg.chat_template:
        path = Path(cfg.chat_template).expanduser()
        if not path.is_file():
            raise ScionError(f"model.chat_template: file not found: {cfg.chat_template}")
        tokenizer.chat_template = path.read_text()
    if not tokenizer.chat_template:
        # A -Base checkpoint (Qwen/Qwen3.5-0.8B-Base, Qwen/Qwen3-4B-Base) ships no template: its instruct
        # siblings' stock template is the one its fine-tunes will be used with.
        architecture = by_hf_class(base.architecture)
        if architecture is None:
            raise ScionError(f"model.name_or_path: the tokenizer in {base.local_dir} has no chat template; set model.chat_template")
        from train.tokenizer import read_chat_template

        tokenizer.chat_template = read_chat_template(architecture.name)
        base.chat_template_from = architecture.chat_template
        print(f"chat template: the base has none; using the stock {architecture.chat_template} of its instruct models", flush=True)
    vocab = tokenizer.get_vocab()
    if IM_END not in vocab:
        raise ScionError(f"model.name_or_path: the tokenizer has no {IM_END} token; Scion trains ChatML (Qwen) models")
    # A chat turn ends with <|im_end|>. Base (non-instruct) Qwen checkpoints say eos=<|endoftext|>,
    # which is also their pad: a collator that masks pad would then never train the stop token.
    tokenizer.eos_token = IM_END
    tokenizer.pad_token = pad_token(tokenizer)
    assert tokenizer.pad_token_id is not None and tokenizer.pad_token_id != tokenizer.eos_token_id
    return tokenizer


def pad_token(tokenizer) -> str:
    """A pad token that is not <|im_end|>: a collator that masks pad would never train the stop token.

    The tokenizer's own pad when it is another token; else <|endoftext|> (Qwen's pad); else another
    special token of the vocabulary (bos, unk, ...: SmolLM2's GGUF tokenizer pads with <|im_end|>),
    never <|im_start|>, which opens every turn.
    """
    vocab = tokenizer.get_vocab()
    own = tokenizer.pad_token
    if own is not None and own in vocab and own not in (IM_END, IM_START):
        return own
    candidates = [ENDOFTEXT, tokenizer.bos_token, tokenizer.unk_token, *tokenizer.all_special_tokens]
    for token in candidates:
        if token is not None and token in vocab and token not in (IM_END, IM_START):
            return token
    raise ScionError("model.name_or_path: the tokenizer has no special token to pad with other than "
                     f"{IM_END} and {IM_START}; add one (e.g. {ENDOFTEXT}) to the tokenizer")


def torch_dtype(precision: Precision):
    import torch

    return {Precision.bf16: torch.bfloat16, Precision.fp16: torch.float16, Precision.fp32: torch.float32}[precision]


def load_model(base: BaseModel, cfg: ModelConfig, peft: PeftConfig, precision: Precision, device: str = "cpu"):
    """The base model in the run's dtype, or in 4-bit nf4 for QLoRA (non-quantised parts in bf16).

    Attention is picked at run time (train/attention.py): varlen/flash kernels on a CUDA GPU where
    installed, sdpa elsewhere; model.attn_implementation overrides it.
    """
    import torch
    from transformers import AutoModelForCausalLM

    from train import attention, deltanet, kernels

    attention.register_varlen_attention()  # lets a recipe name "scion_varlen" too
    dtype = torch.bfloat16 if peft.method == PeftMethod.qlora else torch_dtype(precision)
    kwargs: dict[str, Any] = dict(
        dtype=dtype,
        use_safetensors=True,
        trust_remote_code=cfg.trust_remote_code,
        attn_implementation=cfg.attn_implementation or attention.pick_attention(device, dtype),
    )
    if peft.method == PeftMethod.qlora:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=peft.quant_type,
            bnb_4bit_use_double_quant=peft.double_quant,
            bnb_4bit_compute_dtype=torch.bfloat16,
            # The dtype the packed 4-bit weights are stored in (bf16 lets FSDP shard them with the rest).
            # What keeps the weights that are not quantised (embeddings, norms, lm_head) in bf16 is
            # `dtype=` above (pitfalls.md #14: fp32 upcasts double memory).
            bnb_4bit_quant_storage=torch.bfloat16,
        )
        # The current GPU: each rank's own under torchrun (accelerate set it to LOCAL_RANK), else GPU 0.
        kwargs["device_map"] = {"": torch.cuda.current_device()} if torch.cuda.is_available() else {"": "cpu"}
    elif str(device).startswith("cuda"):
        kwargs["device_map"] = {"": device}  # straight onto the GPU: no 6 GB (3B) trip through host memory
    model = AutoModelForCausalLM.from_pretrained(base.local_dir, **kwargs)
    kernels.apply_fused_layer_kernels(model, device)  # Liger's RMSNorm/RoPE/SwiGLU on CUDA, when installed
    # Gated DeltaNet layers (Qwen3.5) restart their state at example boundaries in packed rows.
    model.scion_packing_unsafe = deltanet.keep_examples_apart(model)
    return model


def default_lora_targets(base: BaseModel, peft: PeftConfig) -> list[str]:
    """peft.target_modules, or the architecture's own default where the recipe kept the dense seven.

    The seven dense names would silently adapt only a quarter of a Qwen3.5 model (its full-attention
    layers and MLPs), so a Qwen3.5 base left at the schema default gets every linear projection of
    both layer kinds (train/arch/qwen3_5.py). A list the recipe names differently is used as given.
    """
    architecture = by_hf_class(base.architecture)
    if architecture is not None and list(peft.target_modules) == list(DENSE_LORA_TARGETS):
        return list(architecture.lora_targets)
    return list(peft.target_modules)


def check_target_modules(base: BaseModel, peft: PeftConfig) -> None:
    """LoRA targets must exist in the model; checked on a weightless (meta) copy, before loading."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(base.local_dir)
    config = getattr(config, "text_config", config)  # an image-text-to-text checkpoint trains its text model
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    leaf_names = {name.rsplit(".", 1)[-1] for name, _ in skeleton.named_modules()}
    missing = [t for t in default_lora_targets(base, peft) if t not in leaf_names]
    if missing:
        raise ScionError(f"peft.target_modules: the model has no module named {missing}")


def add_adapter(model, peft: PeftConfig, target_modules: Optional[list[str]] = None):
    """Wrap the model with a LoRA/DoRA adapter on `target_modules` (default: peft.target_modules;
    checkpointing: train/activation_checkpointing.py)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=peft.r,
        lora_alpha=peft.alpha,
        lora_dropout=peft.dropout,
        target_modules=list(target_modules or peft.target_modules),
        use_dora=peft.method == PeftMethod.dora,
        bias="none",
        task_type="CAUSAL_LM",
    )
    with peft_wrapping():
        return get_peft_model(model, config)
