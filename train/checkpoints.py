"""Checkpoints that are either complete or absent, and resumes that refuse a changed config.

transformers' Trainer writes checkpoint-N in place, so a crash mid-save leaves a folder that
looks like the newest checkpoint (pitfalls.md #11). Scion's trainer saves into
<checkpoints>/.partial/checkpoint-N, fsyncs every file, renames the folder into place and only
then writes a completion marker (scion_checkpoint.json, also fsynced). Resume considers only
checkpoints with a marker and deletes the others; rotation keeps the newest complete ones.

The marker also records what must not change across a resume (batch size, accumulation, data
fingerprints, LoRA shape, base model and revision); resuming with any of them changed is refused
unless trainer.allow_config_change=true.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Optional

from train.errors import ScionError
from train.files import write_json_atomic

MARKER = "scion_checkpoint.json"
STAGING = ".partial"
CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def _fsync_tree(folder: Path) -> None:
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def commit_checkpoint(staged: Path, final: Path, marker: dict[str, Any]) -> None:
    """fsync the staged checkpoint, rename it into place, then write its completion marker."""
    _fsync_tree(staged)
    if final.exists():  # a stale, incomplete folder of the same step (never a complete one: steps only grow)
        shutil.rmtree(final)
    os.replace(staged, final)
    _fsync_dir(final.parent)
    write_json_atomic(final / MARKER, marker)  # fsynced temp file, then renamed
    _fsync_dir(final)


def is_complete(checkpoint: Path) -> bool:
    return (checkpoint / MARKER).is_file()


def list_checkpoints(root: Path) -> list[Path]:
    """checkpoint-N folders under root, oldest first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and CHECKPOINT.match(p.name)]
    return sorted(found, key=lambda p: int(CHECKPOINT.match(p.name).group(1)))


def clean_incomplete(root: Path) -> list[str]:
    """Delete half-written checkpoints and the staging area; returns what was removed."""
    removed = []
    for checkpoint in list_checkpoints(root):
        if not is_complete(checkpoint):
            shutil.rmtree(checkpoint)
            removed.append(checkpoint.name)
    shutil.rmtree(root / STAGING, ignore_errors=True)
    return removed


def latest_complete(root: Path) -> Optional[Path]:
    complete = [c for c in list_checkpoints(root) if is_complete(c)]
    return complete[-1] if complete else None


def rotate(root: Path, keep: Optional[int]) -> None:
    """Keep the `keep` newest complete checkpoints; the newest complete one is never deleted."""
    if not keep or keep < 1:
        return
    complete = [c for c in list_checkpoints(root) if is_complete(c)]
    for old in complete[:-keep]:
        shutil.rmtree(old)


def config_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    keys = sorted(set(saved) | set(current))
    return [f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in keys if saved.get(k) != current.get(k)]


def check_resume_config(checkpoint: Path, current: dict[str, Any], allow_change: bool) -> None:
    saved = json.loads((checkpoint / MARKER).read_text()).get("resume_fingerprint", {})
    differences = config_differences(saved, current)
    if differences and not allow_change:
        raise ScionError(
            f"trainer.resume: the config changed since {checkpoint.name} ({'; '.join(differences)}); "
            "resuming would not continue the same run. Use another output_dir, or trainer.allow_config_change=true"
        )
    if differences:
        print(f"warning: resuming {checkpoint.name} with a changed config: {'; '.join(differences)}", flush=True)
