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
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

from train.checkpoints import clean_incomplete, is_complete, latest_complete
from train.errors import ScionError

ADAPTER_DIR = "adapter"
RECIPE_FILE = "recipe.yaml"
RUN_FILE = "run.json"
CHECKPOINTS_DIR = "checkpoints"


def default_output_dir(recipe_name: str) -> Path:
    return Path("runs") / recipe_name / datetime.now().strftime("%Y%m%d-%H%M%S")


def prepare_run_dir(output_dir: str | Path, resume: str) -> tuple[Path, Optional[Path]]:
    """Create output_dir, or find the checkpoint to resume from in an unfinished one.

    Returns (run_dir, checkpoint to resume from or None). A finished run is never written over.
    """
    path = Path(output_dir).expanduser()
    if (path / RUN_FILE).exists() or (path / ADAPTER_DIR).exists():
        raise ScionError(f"trainer.output_dir: {path} already holds a finished run; choose another output_dir")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise ScionError(f"trainer.output_dir: cannot write to {path}: {e.strerror}") from None
    mode = str(resume).strip()
    if mode.lower() in ("never", "false", "no", "none", "off"):
        if latest_complete(path / CHECKPOINTS_DIR):
            raise ScionError(f"trainer.output_dir: {path} holds checkpoints of an unfinished run and trainer.resume={mode}; "
                             "resume it (trainer.resume=auto) or choose another output_dir")
        return path, None
    if mode.lower() == "auto":
        removed = clean_incomplete(path / CHECKPOINTS_DIR)
        if removed:
            print(f"removed incomplete checkpoints: {', '.join(removed)}", flush=True)
        return path, latest_complete(path / CHECKPOINTS_DIR)
    checkpoint = Path(mode).expanduser()
    if not checkpoint.is_dir() or not is_complete(checkpoint):
        raise ScionError(f"trainer.resume: {mode} is not a complete checkpoint folder")
    return path, checkpoint


class RunLock:
    """An exclusive lock on a run directory, held while a run writes it (released at exit)."""

    def __init__(self, run_dir: Path):
        import fcntl

        self.path = run_dir / ".lock"
        self.file = open(self.path, "a+")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.seek(0)
            holder = self.file.read().strip() or "another process"
            self.file.close()
            raise ScionError(f"trainer.output_dir: {run_dir} is being written by another run ({holder})") from None
        self.file.seek(0)
        self.file.truncate()
        self.file.write(f"pid {os.getpid()}")
        self.file.flush()

    def release(self) -> None:
        self.file.close()  # closing drops the flock


def check_free_space(run_dir: Path, needed_bytes: int) -> None:
    import shutil

    free = shutil.disk_usage(run_dir).free
    if free < needed_bytes:
        raise ScionError(f"trainer.output_dir: {run_dir} has {free / 2**30:.2f} GiB free, but the checkpoints and "
                         f"adapter need about {needed_bytes / 2**30:.2f} GiB")


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
