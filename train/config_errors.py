"""One-line errors for a command line that does not compose.

Hydra reports a bad override in five to fifteen lines (the OmegaConf key dump, the config search
path, a hint to append the key with `+`, which a typed schema then refuses anyway). Before Hydra
runs the job, `check_command_line` composes the same config through Hydra's compose API and, if
that fails, prints one line naming the key path (and the recipe file it came from) and exits 2:

    error: trainer.lerning_rate: unknown key (did you mean trainer.learning_rate?)
    error: recipe=nope: no such recipe; available: quickstart, qwen0.5b_lora, ...
    error: trainer.precision: invalid value 'fp8', expected one of [bf16, fp16, fp32]

Command lines that only Hydra understands (--help, --multirun, another config path) are left to it.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import sys
from typing import Optional

from train.config import FILE_RECIPES, compose_config, to_scion_config

# Hydra flags that take a value, and those after which the compose API cannot reproduce the run.
FLAGS_WITH_VALUE = {"--cfg", "-c", "--package", "-p"}
FLAGS_WITHOUT_VALUE = {"--resolve"}


def config_overrides(argv: list[str]) -> Optional[list[str]]:
    """The overrides in argv that compose the job config, or None where Hydra must handle it alone."""
    overrides, skip_value = [], False
    for arg in argv:
        if skip_value:
            skip_value = False
        elif arg in FLAGS_WITH_VALUE:
            skip_value = True
        elif arg in FLAGS_WITHOUT_VALUE:
            continue
        elif arg.startswith("-"):  # --help, --multirun, --config-path, --info, ...
            return None
        elif not arg.lstrip("+~").startswith(("hydra.", "hydra/")):  # Hydra's own settings are not ours
            overrides.append(arg)
    return overrides


def check_command_line(argv: list[str]) -> None:
    """Compose the config of `argv` and convert it to the schema; on failure print one line and exit 2."""
    overrides = config_overrides(argv)
    if overrides is None:
        return
    from omegaconf.errors import MissingMandatoryValue

    try:
        to_scion_config(compose_config(overrides))
    except MissingMandatoryValue:
        return  # reported with the exact key by pipeline.py, which knows the recipe in use
    except Exception as e:  # noqa: BLE001 - every composition failure becomes the one line below
        from train.distributed import is_main

        if is_main():  # under torchrun every rank checks the same command line; rank 0 says it once
            print(f"error: {one_line(e)}", file=sys.stderr)
        sys.exit(2)


def one_line(error: BaseException) -> str:
    """A Hydra/OmegaConf composition error as one line: where (key path, recipe file) and what."""
    from hydra.errors import MissingConfigException, OverrideParseException
    from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

    text = str(error)
    if isinstance(error, MissingConfigException):
        found = re.search(r"Could not find '([^'/]+)/([^']+)'", text)
        options = re.findall(r"^\t(\S+)$", text.split("Config search path")[0], flags=re.MULTILINE)
        if found:
            group, name = found.groups()
            what = "recipe" if group == "recipe" else f"{group} config"
            return f"{group}={name}: no such {what}; available: {', '.join(options)}"
    if isinstance(error, OverrideParseException):
        lines = [line for line in text.splitlines() if line and not line.startswith("See https://")]
        return ": ".join(lines[:2])
    cause = error if isinstance(error, OmegaConfBaseException) else (error.__cause__ or error.__context__)
    if isinstance(cause, OmegaConfBaseException):
        where = recipe_file_of(text)
        key = getattr(cause, "full_key", None) or ""
        first = str(cause).splitlines()[0]
        if isinstance(cause, (ConfigKeyError, AttributeError)) and "not in" in first:
            message = f"{key}: unknown key{did_you_mean(key, getattr(cause, 'object_type', None))}"
        else:
            message = f"{key}: {first[0].lower()}{first[1:]}" if key else first
        return f"{where}: {message}" if where else message
    # Anything else Hydra raises (an ambiguous sweep value, ...): its lines joined, hints dropped.
    lines = [line.strip() for line in text.split("Config search path")[0].splitlines()]
    return "; ".join(line for line in lines if line and "HYDRA_FULL_ERROR" not in line)


def recipe_file_of(text: str) -> Optional[str]:
    """The recipe file named in Hydra's "In 'recipe/<name>': ..." prefix, as the user wrote it."""
    found = re.match(r"In 'recipe/([^']+)'", text)
    if not found:
        return None
    name = found.group(1)
    return f"recipe {FILE_RECIPES.get(name, name)}"


def did_you_mean(full_key: str, schema: Optional[type]) -> str:
    """' (did you mean <section>.<closest field>?)' for a misspelt key, or '' when nothing is close."""
    if not (schema and dataclasses.is_dataclass(schema)):
        return ""
    section, _, key = full_key.rpartition(".")
    close = difflib.get_close_matches(key, [f.name for f in dataclasses.fields(schema)], n=1, cutoff=0.6)
    if not close:
        return ""
    return f" (did you mean {section + '.' if section else ''}{close[0]}?)"
