"""GPU-only checks (skipped without CUDA): the real kernels against the reference, and the shipped
recipes training on stand-ins. bench/gpu_check.py runs the kernel checks (`-m gpu -k "not recipe"`);
the recipes run there as train.py steps of their own."""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import REPO_ROOT, run_script
from tests.test_speed import LENGTHS, collate, lora_model, make_examples
from train import attention, packing

pytestmark = pytest.mark.gpu


def loss_and_grads_cuda(model, batch):
    model.zero_grad(set_to_none=True)
    inputs = {k: v.cuda() if hasattr(v, "cuda") else v for k, v in batch.items()}
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = model(**inputs, use_cache=False).loss
    loss.backward()
    return loss.detach().float(), {n: p.grad.detach().float() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("arch", ["qwen2", "qwen3"])
def test_varlen_matches_sdpa_on_loss_and_lora_grads(request, arch):
    """The chosen varlen kernel on a packed row against sdpa on the padded batch, bf16 autocast on the GPU."""
    model_dir = request.getfixturevalue(f"tiny_{arch}_dir")
    attn = attention.pick_attention("cuda", torch.bfloat16)
    assert attn != "sdpa", "no varlen kernel on this GPU"
    examples = make_examples()
    padded = collate(examples, padding_free=False)
    packed = collate(packing.pack_examples(examples, max_tokens=sum(LENGTHS)), padding_free=True)
    loss_ref, grads_ref = loss_and_grads_cuda(lora_model(model_dir, "sdpa").cuda().train(), padded)
    loss_var, grads_var = loss_and_grads_cuda(lora_model(model_dir, attn).cuda().train(), packed)
    assert abs(loss_var - loss_ref) <= 2e-2 * abs(loss_ref)
    for name, ref in grads_ref.items():  # bf16: relative to each tensor's scale
        assert (grads_var[name] - ref).norm() <= 5e-2 * ref.norm() + 1e-6, name


def test_varlen_kernel_takes_fewer_kv_heads():
    """torch's varlen kernel with 2 K/V heads for 4 query heads == sdpa with K/V repeated (no copy needed)."""
    kernel, params = attention.varlen_kernel()
    if kernel is None:
        pytest.skip("this torch has no varlen_attn")
    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(40, 4, 64, device="cuda", dtype=torch.bfloat16, generator=g)
    k, v = (torch.randn(40, 2, 64, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(2))
    cu = torch.tensor([0, 15, 40], dtype=torch.int32, device="cuda")
    out = attention._varlen_cuda(kernel, params, q, k, v, cu, 25, 64**-0.5)
    ref = attention._varlen_by_example(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1), cu, 64**-0.5, 0.0)
    assert (out.float() - ref.float()).norm() <= 1e-2 * ref.float().norm()


def test_standin_is_built_on_the_gpu_in_memory():
    from train.tiny import standin_model

    model = standin_model("Qwen/Qwen3-4B", device="cuda", num_hidden_layers=2)
    assert next(model.parameters()).device.type == "cuda" and model.config.head_dim == 128


@pytest.mark.parametrize("recipe,hub_id", [("qwen3b_lora", "Qwen/Qwen2.5-3B-Instruct"), ("qwen3b_qlora", "Qwen/Qwen2.5-3B-Instruct"),
                                           ("qwen3_4b_qlora", "Qwen/Qwen3-4B")])
def test_recipe_trains_on_gpu_from_the_hf_cache(recipe, hub_id, tmp_path):
    from train.tiny import save_standin

    cache = tmp_path / "hub"
    save_standin(hub_id, cache, commit_sha="c" * 40)  # initialised on the GPU, written once (train.py reads files)
    out = tmp_path / "run"
    result = run_script("train.py", f"recipe={recipe}", "trainer.max_steps=5", f"trainer.output_dir={out}",
                        "eval.enabled=false", cwd=tmp_path,
                        env={"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)}, timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    run = json.loads((out / "run.json").read_text())
    assert (run["base"]["hub_id"], run["base"]["commit_sha"]) == (hub_id, "c" * 40)
    assert run["metrics"]["global_step"] == 5 and run["metrics"]["tokens_per_second"] > 0
    assert run["device"] != "cpu" and (REPO_ROOT / "recipes" / f"{recipe}.yaml").is_file()
