"""Command-line parsing for publish.py: key=value arguments checked against PublishConfig.

Not a Hydra app: the settings come from the run's own recipe.yaml (its `publish:` section), and
the command line only overrides them, so a small explicit parser is simpler than composing.
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from train.config import PublishConfig
from train.errors import ScionError
from train.rundir import RECIPE_FILE

ALIASES = {"kind": "kinds"}


def parse_args(argv: list[str]) -> tuple[str, PublishConfig, str | None]:
    """(run_dir, publish config, base hub id override) from key=value arguments."""
    run_dir, hub_id, overrides = None, None, {}
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep:
            raise ScionError(f"expected key=value, got {arg!r}")
        key = key.removeprefix("publish.")
        if key == "run_dir":
            run_dir = value
            continue
        if key == "model.hub_id":
            hub_id = value
            continue
        key = ALIASES.get(key, key)
        parsed = yaml.safe_load(value) if value else None
        if key in ("kinds", "gguf_types", "language", "tags") and isinstance(parsed, str):
            parsed = [parsed]  # kind=adapter means kinds=[adapter]
        overrides[key] = parsed
    if not run_dir:
        raise ScionError("run_dir is required: python publish.py run_dir=<run> repo_id=<org/name>")
    recipe_path = Path(run_dir).expanduser() / RECIPE_FILE
    from_run = yaml.safe_load(recipe_path.read_text()).get("publish", {}) if recipe_path.is_file() else {}
    try:
        merged = OmegaConf.merge(OmegaConf.structured(PublishConfig), from_run or {}, overrides)
        config = OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or ""
        raise ScionError(f"publish{'.' + key if key else ''}: {str(e).splitlines()[0]}") from None
    return run_dir, config, hub_id


def main(argv: list[str]) -> int:
    from publish.run import publish_run

    try:
        run_dir, config, hub_id = parse_args(argv)
        publish_run(run_dir, config, base_hub_id=hub_id)
    except ScionError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    return 0
