"""GPU-only checks (skipped without CUDA): the shipped recipes train on a real GPU."""

from __future__ import annotations

import json

import pytest

from tests.conftest import REPO_ROOT, run_script

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("recipe,hub_id", [("qwen3b_lora", "Qwen/Qwen2.5-3B-Instruct"), ("qwen3b_qlora", "Qwen/Qwen2.5-3B-Instruct"),
                                           ("qwen3_4b_qlora", "Qwen/Qwen3-4B")])
def test_recipe_trains_on_gpu_from_the_hf_cache(recipe, hub_id, tmp_path):
    from train.tiny import save_standin

    cache = tmp_path / "hub"
    save_standin(hub_id, cache, commit_sha="c" * 40)
    out = tmp_path / "run"
    result = run_script("train.py", f"recipe={recipe}", "trainer.max_steps=5", f"trainer.output_dir={out}",
                        "eval.enabled=false", cwd=tmp_path,
                        env={"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)}, timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    run = json.loads((out / "run.json").read_text())
    assert (run["base"]["hub_id"], run["base"]["commit_sha"]) == (hub_id, "c" * 40)
    assert run["metrics"]["global_step"] == 5 and run["metrics"]["tokens_per_second"] > 0
    assert run["device"] != "cpu" and (REPO_ROOT / "recipes" / f"{recipe}.yaml").is_file()
