"""The run directory: the contract between training, evaluation and publishing.

    <output_dir>/                  default runs/<recipe>/<YYYYmmdd-HHMMSS>
      adapter/                     PEFT adapter + tokenizer + chat template (PeftModel.from_pretrained)
      recipe.yaml                  the fully resolved config: `python train.py recipe=<this file>` re-runs it
      run.json                     base id/revision/sha, data sources and fingerprints, package versions,
                                   timings, final metrics; written last, so its presence marks a finished run
      checkpoints/                 Trainer checkpoints (optimizer state etc.; never published)
"""

from __future__ import annotations

import json
import os
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

from train.errors import ScionError

ADAPTER_DIR = "adapter"
RECIPE_FILE = "recipe.yaml"
RUN_FILE = "run.json"
CHECKPOINTS_DIR = "checkpoints"


def default_output_dir(recipe_name: str) -> Path:
    return Path("runs") / recipe_name / datetime.now().strftime("%Y%m%d-%H%M%S")


def create_run_dir(output_dir: str | Path) -> Path:
    """Create (or reuse an empty) output_dir; refuse to write over a finished run."""
    path = Path(output_dir).expanduser()
    if (path / RUN_FILE).exists() or (path / ADAPTER_DIR).exists():
        raise ScionError(f"trainer.output_dir: {path} already holds a run; choose another output_dir")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise ScionError(f"trainer.output_dir: cannot write to {path}: {e.strerror}") from None
    return path


def write_text_atomic(path: Path, text: str) -> None:
    """Write beside the target, fsync, then rename: readers see the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def load_run(run_dir: str | Path) -> dict[str, Any]:
    """run.json of a finished run, with a clear error when the directory is not one."""
    path = Path(run_dir).expanduser()
    if not path.is_dir():
        raise ScionError(f"run_dir: {path} does not exist")
    if not (path / ADAPTER_DIR / "adapter_config.json").is_file():
        raise ScionError(f"run_dir: {path} has no adapter ({ADAPTER_DIR}/adapter_config.json); is the run finished?")
    if not (path / RUN_FILE).is_file():
        raise ScionError(f"run_dir: {path} has no {RUN_FILE}; the run did not finish")
    return json.loads((path / RUN_FILE).read_text())
