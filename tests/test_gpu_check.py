"""bench/gpu_check.py's CPU dry run: the GPU check works end to end before a GPU ever sees it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT

STEPS = ["environment", "pytest_gpu", "train_e2e", "train_qlora", "checkpointing", "lora_bench", "eval_speed"]


@pytest.mark.slow
def test_gpu_check_dry_run_runs_every_step_and_writes_the_table(tmp_path):
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, str(REPO_ROOT / "bench" / "gpu_check.py"), "--cpu-dry-run", "--out", str(out),
                             "--work", str(tmp_path / "work")], cwd=REPO_ROOT, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    report = json.loads((out / "gpu_check.json").read_text())
    steps = {s["step"]: s for s in report["steps"]}
    assert list(steps) == STEPS and report["cpu_dry_run"] is True
    assert all(s["status"] == "ok" and s["rows"] for s in steps.values()), {k: s["status"] for k, s in steps.items()}
    assert steps["environment"]["rows"][0]["varlen_attn"] is None or "varlen_attn(" in steps["environment"]["rows"][0]["varlen_attn"]
    sigterm, resumed = steps["train_e2e"]["rows"]
    assert sigterm["exit_code"] == 75 and resumed["resumed"] and resumed["published"] == ["adapter", "gguf", "merged"]
    assert {r["policy"] for r in steps["checkpointing"]["rows"]} == {"none", "selective", "full", "offload"}
    assert {r["config"] for r in steps["lora_bench"]["rows"]} == {"stock", "scion"}
    assert steps["eval_speed"]["rows"][0]["projected_500x128_seconds"] > 0
    # The table is printed last and written as markdown, one line per step at least.
    table = (out / "gpu_check.md").read_text()
    assert result.stdout.rstrip().endswith(table.rstrip())
    for name in STEPS:
        assert f"| {name} | ok |" in table


def test_gpu_check_refuses_to_run_without_a_gpu_unless_dry(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    result = subprocess.run([sys.executable, str(REPO_ROOT / "bench" / "gpu_check.py"), "--out", str(tmp_path)],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stderr.startswith("error: no CUDA GPU")
    assert not (tmp_path / "gpu_check.json").exists()
