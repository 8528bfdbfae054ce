"""The configuration an evaluation runs with: the run's own recipe, plus command-line overrides.

A run directory keeps its fully resolved config in recipe.yaml. Merging it onto the typed schema
rebuilds the exact `ScionConfig` the run trained with (data split, system prompt, model, precision),
so the evaluation sees the same held-out rows and the same chat rendering as training did. Only
the `eval` section may be overridden on the command line, and every override is checked against
the schema: a misspelt key or a wrong type fails with the full key named.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from train.config import EvalConfig, ScionConfig
from train.errors import ScionError
from train.rundir import RECIPE_FILE


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def load_recipe(run_dir: Path) -> ScionConfig:
    """The typed config a run was trained with, rebuilt from its recipe.yaml."""
    path = run_dir / RECIPE_FILE
    if not path.is_file():
        raise ScionError(f"run_dir: {run_dir} has no {RECIPE_FILE}; it is not a Scion run directory")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(ScionConfig), OmegaConf.load(path))
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None)
        raise ScionError(f"{path}: {key + ': ' if key else ''}{_first_line(e)}") from None


def apply_overrides(config: EvalConfig, overrides: list[str]) -> EvalConfig:
    """`eval.key=value` arguments merged onto `config`; unknown keys and bad values name the key."""
    dotlist = []
    for item in overrides:
        key, sep, _ = item.partition("=")
        if not sep:
            raise ScionError(f"argument {item!r}: expected key=value (e.g. eval.max_new_tokens=64)")
        if not key.startswith("eval."):
            raise ScionError(f"{key}: only run_dir=<path> and eval.* keys can be set when evaluating")
        dotlist.append(item[len("eval."):])
    if not dotlist:
        return config
    try:
        merged = OmegaConf.merge(OmegaConf.structured(config), OmegaConf.from_dotlist(dotlist))
        return OmegaConf.to_object(merged)
    except ConfigKeyError as e:
        raise ScionError(f"eval.{e.full_key}: unknown key (see EvalConfig in train/config.py)") from None
    except ValidationError as e:
        raise ScionError(f"eval.{e.full_key}: {_first_line(e)}") from None
    except OmegaConfBaseException as e:
        raise ScionError(f"eval overrides: {_first_line(e)}") from None


def check_eval_config(config: EvalConfig) -> None:
    """Value checks the schema's types cannot express, done before anything is loaded."""
    positive = {"eval.max_new_tokens": config.max_new_tokens, "eval.batch_size": config.batch_size}
    if config.max_examples is not None:
        positive["eval.max_examples"] = config.max_examples
    if config.harness.limit is not None:
        positive["eval.harness.limit"] = config.harness.limit
    for key, value in positive.items():
        if value < 1:
            raise ScionError(f"{key} must be at least 1, got {value}")
    if config.num_samples < 0:
        raise ScionError(f"eval.num_samples must be 0 or more, got {config.num_samples}")
    if config.harness.num_fewshot is not None and config.harness.num_fewshot < 0:
        raise ScionError(f"eval.harness.num_fewshot must be 0 or more, got {config.harness.num_fewshot}")
    if config.do_sample:
        if config.temperature <= 0:
            raise ScionError(f"eval.temperature must be positive when sampling, got {config.temperature}")
        if not 0 < config.top_p <= 1:
            raise ScionError(f"eval.top_p must be in (0, 1], got {config.top_p}")
    if config.harness.include_path and not Path(config.harness.include_path).expanduser().is_dir():
        raise ScionError(f"eval.harness.include_path: {config.harness.include_path} is not a directory")
