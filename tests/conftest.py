"""Shared fixtures: the tiny Qwen models and tokenizers (built once per session), the Hub server."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.hub_server import hub_server  # noqa: F401  (fixture)

REPO_ROOT = Path(__file__).resolve().parent.parent


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def tiny_qwen2_dir() -> Path:
    from train.tiny import ensure_tiny_model

    return ensure_tiny_model("tiny:qwen2")


@pytest.fixture(scope="session")
def tiny_qwen3_dir() -> Path:
    from train.tiny import ensure_tiny_model

    return ensure_tiny_model("tiny:qwen3")


@pytest.fixture(scope="session")
def qwen2_5_tokenizer(tiny_qwen2_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_qwen2_dir)


@pytest.fixture(scope="session")
def qwen3_tokenizer(tiny_qwen3_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_qwen3_dir)


def run_script(script: str, *args: str, cwd: Path | None = None, env: dict | None = None, timeout: int = 600):
    """Run one of the entry scripts as a user would; returns the CompletedProcess."""
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / script), *args],
        cwd=cwd or REPO_ROOT, env=full_env, capture_output=True, text=True, timeout=timeout,
    )


def write_jsonl(path: Path, rows) -> Path:
    import json

    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
