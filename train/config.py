"""The typed configuration schema of Scion, and its registration with Hydra.

Hydra composes `configs/config.yaml`, its groups (model, peft, data, trainer) and one recipe on
top of the dataclasses below. Because the schema is the first entry of the defaults list, every
later value is checked against it: a misspelt key or a wrong type, in a recipe or on the command
line, fails at compose time and Hydra names the full key path. `to_scion_config` then converts the
composed DictConfig into plain dataclasses once, so the rest of the code never touches Hydra.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Optional

from omegaconf import MISSING, DictConfig, OmegaConf

from train.arch.base import DENSE_LORA_TARGETS

REPO_ROOT = Path(__file__).resolve().parent.parent
RECIPES_DIR = REPO_ROOT / "recipes"

# The seven linear projections of every Qwen2/Qwen3 decoder layer (train/arch/).
ALL_LINEAR = list(DENSE_LORA_TARGETS)


# Data files Scion reads, by suffix. A data source is a local file when it looks like a path
# (relative, absolute or home) or has one of these suffixes; otherwise it is a Hub dataset id.
LOCAL_SUFFIXES = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}


def looks_like_path(source: str) -> bool:
    return source.startswith((".", "/", "~")) or Path(source).suffix.lower() in LOCAL_SUFFIXES

class PeftMethod(str, Enum):
    lora = "lora"
    qlora = "qlora"  # LoRA on a bitsandbytes 4-bit (nf4) base
    dora = "dora"  # weight-decomposed LoRA (PEFT's use_dora)


class Precision(str, Enum):
    bf16 = "bf16"
    fp16 = "fp16"
    fp32 = "fp32"


class Truncation(str, Enum):
    truncate = "truncate"  # keep the first max_length tokens
    drop = "drop"  # drop the whole example


class Checkpointing(str, Enum):
    auto = "auto"  # the fastest policy whose activation estimate fits the GPU's free memory; none on the CPU
    none = "none"  # keep every activation: fastest, most memory
    selective = "selective"  # keep layer inputs and attention outputs, recompute the rest
    full = "full"  # keep only layer inputs, recompute each layer in the backward pass (~30% more compute)
    offload = "offload"  # full, with the kept layer inputs in pinned host memory


class Distributed(str, Enum):
    # Used when a launcher (torchrun, accelerate launch) starts several processes; one process ignores it.
    ddp = "ddp"  # every rank holds the whole model; gradients are averaged (LoRA, DoRA, QLoRA)
    fsdp = "fsdp"  # FSDP2: weights sharded across ranks, for a base too big for one GPU (LoRA, DoRA in bf16)


class DataFormat(str, Enum):
    auto = "auto"  # detect from the columns of the first row
    messages = "messages"
    prompt_completion = "prompt_completion"
    instruction = "instruction"  # instruction / input / output (Alpaca style)


@dataclass
class ModelConfig:
    # Hub id (Qwen/Qwen2.5-3B-Instruct), a local directory (a snapshot in the HF cache works
    # offline), or tiny:qwen2 / tiny:qwen3 for a locally built random model.
    name_or_path: str = MISSING
    # Hub branch, tag or commit sha to pin; null takes main.
    revision: Optional[str] = None
    # The base's Hub id when name_or_path is a plain directory: the lineage written on publish.
    hub_id: Optional[str] = None
    # Off by default; only honoured together with a pinned revision (code can change under a branch).
    trust_remote_code: bool = False
    # null picks sdpa; "flash_attention_2" etc. where installed.
    attn_implementation: Optional[str] = None
    # Path to a Jinja chat template to use instead of the tokenizer's own.
    chat_template: Optional[str] = None


@dataclass
class PeftConfig:
    method: PeftMethod = PeftMethod.lora
    # Higher rank: more capacity and memory; alpha/r scales the update.
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: list(ALL_LINEAR))
    # QLoRA quantisation of the frozen base (only used when method=qlora).
    quant_type: str = "nf4"
    double_quant: bool = True


@dataclass
class DataConfig:
    # One source or a list of them (a mixture, train/mixture.py). A source is a local
    # .json/.jsonl/.parquet/.csv file or a Hub dataset id, or a mapping with `path` and any of
    # format, split, revision (Hub), weight (rows repeated/sampled: 2 = twice, 0.5 = a seeded half)
    # and max_rows (the first N rows). Typed Any: train/mixture.py checks it, naming the key.
    train: Any = MISSING
    # The same for held-out data (no weights); null with eval_ratio > 0 splits each train source.
    eval: Any = None
    eval_ratio: float = 0.0
    # Default split of Hub sources in data.train and data.eval (a source's own `split` wins).
    train_split: str = "train"
    eval_split: str = "test"
    # Default format of every source (auto: detected per source from its first row).
    format: DataFormat = DataFormat.auto
    max_length: int = 2048
    truncation: Truncation = Truncation.truncate
    # Train on assistant turns only (their content and <|im_end|>); false trains every token.
    assistant_only_loss: bool = True
    # Used for rows that have no system message; null leaves the template's own default
    # (Qwen2.5 injects "You are Qwen, created by Alibaba Cloud..."), as at inference.
    system_prompt: Optional[str] = None


@dataclass
class TrainerConfig:
    # null: runs/<recipe>/<timestamp>
    output_dir: Optional[str] = None
    seed: int = 42
    epochs: float = 1.0
    max_steps: int = -1  # > 0 overrides epochs
    batch_size: int = 4  # per device micro-batch
    gradient_accumulation_steps: int = 4
    learning_rate: float = 2e-4
    lr_scheduler: str = "cosine"
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    precision: Precision = Precision.bf16
    # Activation checkpointing policy (train/activation_checkpointing.py). auto picks from the free GPU memory, the
    # micro-batch's tokens (batch_size x data.max_length) and the model's shape, and says which.
    checkpointing: Checkpointing = Checkpointing.auto
    # Pack whole examples into rows of data.max_length tokens (best fit). batch_size then counts
    # rows. Off by default: it changes how many examples a step holds. On a GPU every micro-batch
    # is padding-free either way (one row, no pad tokens, varlen attention).
    packing: bool = False
    logging_steps: int = 10
    save_steps: int = 200
    save_total_limit: int = 2
    eval_steps: Optional[int] = None  # null: evaluate at the end only
    # [] (off), or any of tensorboard, wandb
    report_to: list[str] = field(default_factory=list)
    # How several processes started by torchrun / accelerate launch share the work (README "Scale out").
    # batch_size is per process: the global batch is batch_size x gradient_accumulation_steps x processes.
    distributed: Distributed = Distributed.ddp
    # Allow CPU-only runs (tests, quickstart); a GPU is used whenever one is present.
    allow_cpu: bool = True
    # auto: continue from the newest complete checkpoint in output_dir (when output_dir already
    # holds an unfinished run); never: start fresh; or the path of a checkpoint-N folder.
    resume: str = "auto"
    # Resuming with a changed batch size, accumulation, data, LoRA shape or base is refused
    # unless this is true.
    allow_config_change: bool = False


@dataclass
class HarnessConfig:
    # lm-evaluation-harness task names; [] skips the harness. Offline, tasks whose data is not
    # available locally are skipped with a one-line reason.
    tasks: list[str] = field(default_factory=list)
    # A folder of extra task YAMLs (local tasks with local data).
    include_path: Optional[str] = None
    num_fewshot: Optional[int] = None
    limit: Optional[int] = None  # examples per task; null: all


@dataclass
class EvalConfig:
    # Evaluate base and fine-tune at the end of train.py.
    enabled: bool = True
    # Held-out examples scored (null: all of the eval split).
    max_examples: Optional[int] = 500
    max_new_tokens: int = 128
    # Decoding is bound by steps, not batch width, on a GPU: a wide batch is nearly free.
    batch_size: int = 64
    # Greedy by default; sampling uses temperature/top_p with the seed below.
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    # Side-by-side generations kept in results and printed.
    num_samples: int = 5
    # The template's thinking switch for the eval prompts (Qwen3, Qwen3.5). Exact match, ROUGE-L and
    # chrF then score the answer after the last </think>; stop rate and length count the whole generation.
    enable_thinking: bool = False
    harness: HarnessConfig = field(default_factory=HarnessConfig)


class DerivativeKind(str, Enum):
    adapter = "adapter"  # the PEFT adapter (base_model_relation: adapter)
    merged = "merged"  # adapter merged into the bf16 base (finetune)
    gguf = "gguf"  # GGUF of the merged model (quantized)


@dataclass
class PublishConfig:
    # org/name of the adapter repo; null: do not publish. Other kinds go to <repo_id>-merged and
    # <repo_id>-GGUF unless named below.
    repo_id: Optional[str] = None
    kinds: list[DerivativeKind] = field(default_factory=lambda: [DerivativeKind.adapter])
    merged_repo_id: Optional[str] = None
    gguf_repo_id: Optional[str] = None
    # GGUF types written (f16 plus quantised copies).
    gguf_types: list[str] = field(default_factory=lambda: ["f16", "q8_0"])
    private: bool = False
    # Open a pull request instead of committing to the branch.
    create_pr: bool = False
    revision: str = "main"
    # Print the plan and write the exact upload folders under <run>/publish/<kind>/; upload nothing.
    dry_run: bool = False
    # Extra card metadata.
    language: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)


@dataclass
class ScionConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    peft: PeftConfig = field(default_factory=PeftConfig)
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    publish: PublishConfig = field(default_factory=PublishConfig)
    # Filled in by the entry script from Hydra's choice, for the default output_dir.
    recipe_name: str = "custom"


# Team recipe folders, os.pathsep-separated (`SCION_RECIPES=team/recipes:~/more`): their recipes are
# usable by name and listed in --help beside the built-in ones.
TEAM_RECIPES_ENV = "SCION_RECIPES"


def recipe_folders() -> list[Path]:
    """recipes/ of this checkout, then each folder named in $SCION_RECIPES (which must exist)."""
    import os

    from train.errors import ScionError

    folders = [RECIPES_DIR]
    for entry in os.environ.get(TEAM_RECIPES_ENV, "").split(os.pathsep):
        if not entry.strip():
            continue
        folder = Path(entry).expanduser()
        if not folder.is_dir():
            raise ScionError(f"{TEAM_RECIPES_ENV}: recipe folder not found: {entry}")
        folders.append(folder)
    return folders


def recipe_files() -> dict[str, Path]:
    """Every recipe usable by name: name -> file. A name defined twice is an error naming both files."""
    from train.errors import ScionError

    found: dict[str, Path] = {}
    for folder in recipe_folders():
        for path in sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")]):
            if path.stem in found and found[path.stem].resolve() != path.resolve():
                raise ScionError(f"recipe {path.stem} is defined twice: {found[path.stem]} and {path}; rename one")
            found[path.stem] = path
    return found


def list_recipes() -> list[str]:
    return sorted(recipe_files())


def register_configs() -> None:
    """Register the schema, every recipes/*.yaml and every team recipe with Hydra's ConfigStore.

    Recipes live in a top-level recipes/ folder (where teams look for them) and in the folders of
    $SCION_RECIPES, not under configs/, so they are registered by hand as group `recipe` in the
    global package: `recipe=qwen3b_lora` then merges a recipe at the root, and `--help` lists them.
    """
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    store.store(name="scion_schema", node=ScionConfig)
    for name, path in recipe_files().items():
        store.store(group="recipe", name=name, node=OmegaConf.load(path), package="_global_")


# Recipes given as a file path on the command line: generated name -> the path as given.
FILE_RECIPES: dict[str, str] = {}
# The repo of a `recipe=hub:<repo>` on this command line, if any: its local data files must be supplied.
HUB_RECIPE: list[str] = []

# The arguments as the user typed them, before register_recipe_file rewrites `recipe=<file>` to an
# internal name: what run.json and the model card record as the command (None: not from train.py).
TYPED_ARGS: list[str] | None = None


def typed_command() -> str:
    """The train.py command line that was typed, quoted so that it can be pasted into a shell."""
    import shlex
    import sys

    args = TYPED_ARGS if TYPED_ARGS is not None else sys.argv[1:]
    return shlex.join(["python", "train.py", *args])


def fail(message: str) -> None:
    """A bad command line: one `error:` line on stderr and exit code 2."""
    import sys

    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def register_recipe_file(argv: list[str]) -> list[str]:
    """Let `recipe=<path>.yaml` (e.g. a run's saved recipe.yaml) select a recipe from a file.

    Hydra only selects configs by name, so the file is loaded, registered under a generated
    name, and the argument is rewritten to that name. Other arguments pass through unchanged.
    """
    from hydra.core.config_store import ConfigStore

    global TYPED_ARGS
    TYPED_ARGS = list(argv)
    HUB_RECIPE.clear()
    out = []
    for arg in argv:
        key, _, value = arg.partition("=")
        if key == "recipe" and value.startswith("hub:"):  # the recipe.yaml published beside a model
            HUB_RECIPE.append(value[len("hub:"):])
            path = download_hub_recipe(value[len("hub:"):])
            check_hub_recipe_data(arg, OmegaConf.load(path), argv)
            value = str(path)
        if key == "recipe" and value.endswith((".yaml", ".yml")):  # shipped recipes are named without it
            path = Path(value).expanduser()
            if not path.is_file():
                fail(f"recipe file not found: {value}")
            name = f"file_{len(FILE_RECIPES)}_{path.stem}"
            ConfigStore.instance().store(group="recipe", name=name, node=OmegaConf.load(path), package="_global_")
            FILE_RECIPES[name] = value
            arg = f"recipe={name}"
        out.append(arg)
    return out


def download_hub_recipe(repo_id: str) -> Path:
    """recipe.yaml from a model repo published by Scion (`recipe=hub:org/name`)."""
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo_id, "recipe.yaml"))
    except Exception as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        fail(f"recipe=hub:{repo_id}: cannot download recipe.yaml from the Hub: {first}")


def check_hub_recipe_data(recipe_arg: str, recipe: DictConfig, argv: list[str]) -> None:
    """A published recipe that trained on local files: say which file is missing and how to give it.

    The recipe.yaml records the data paths of the machine it was trained on; they are not uploaded
    with the model. Unless the command line overrides them, stop here with the override to type.
    """
    data = recipe.get("data") or {}
    for key in ("train", "eval"):
        value = data.get(key)
        overridden = any(arg.lstrip("+").startswith(f"data.{key}=") for arg in argv)
        if not isinstance(value, str) or overridden or not looks_like_path(value):
            continue
        if not Path(value).expanduser().is_file():
            name = Path(value).name
            fail(f"{recipe_arg}: data.{key} is a local file of the machine it was trained on, not found here: {value}; "
                 f"give your copy with data.{key}=path/to/{name}")


def compose_config(overrides: list[str]) -> DictConfig:
    """The config train.py composes for these command-line overrides (register_configs() first)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO_ROOT / "configs"), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def to_scion_config(cfg: DictConfig) -> ScionConfig:
    """Convert a composed config into the dataclasses (raises on a missing mandatory value).

    The merge onto a fresh schema refuses keys the schema lacks: Hydra lets `+trainer.lr=1`
    (the append syntax its own error message suggests) add a key to a typed config, and
    to_object alone would silently drop it.
    """
    plain = OmegaConf.to_container(cfg, resolve=False)  # as plain dicts, so the merge checks every key
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ScionConfig), plain))


def to_yaml(config: ScionConfig | DictConfig | dict[str, Any]) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(config) if not isinstance(config, DictConfig) else config)


# `${repo_root:}` in a config resolves to this checkout, so the committed demo data is found
# whatever the working directory.
if not OmegaConf.has_resolver("repo_root"):
    OmegaConf.register_new_resolver("repo_root", lambda: str(REPO_ROOT))
