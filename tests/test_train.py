"""End-to-end training on the tiny model: the run directory contract, reloading, bad input."""

from __future__ import annotations

import json
import math

import pytest
import torch
from omegaconf import OmegaConf

from tests.conftest import REPO_ROOT, run_script, write_jsonl
from train.config import DataConfig, ModelConfig, PeftConfig, PeftMethod, Precision, ScionConfig, TrainerConfig

SMALL_TRAIN = REPO_ROOT / "data" / "quickstart" / "train.jsonl"
SMALL_EVAL = REPO_ROOT / "data" / "quickstart" / "eval.jsonl"


def tiny_config(output_dir, method=PeftMethod.lora, steps=3, **trainer) -> ScionConfig:
    return ScionConfig(
        model=ModelConfig(name_or_path="tiny:qwen2"),
        peft=PeftConfig(method=method, r=4, alpha=8, dropout=0.0),
        data=DataConfig(train=str(SMALL_TRAIN), eval=str(SMALL_EVAL), max_length=128),
        trainer=TrainerConfig(output_dir=str(output_dir), max_steps=steps, batch_size=4, gradient_accumulation_steps=1,
                              learning_rate=1e-2, precision=Precision.bf16 if method == PeftMethod.qlora else Precision.fp32,
                              logging_steps=1, save_steps=2, **trainer),
        recipe_name="test",
    )


def test_train_py_leaves_a_complete_run_directory(tmp_path):
    out = tmp_path / "run"
    result = run_script("train.py", "recipe=quickstart", "trainer.max_steps=4", "trainer.save_steps=1",
                        "trainer.logging_steps=1", f"trainer.output_dir={out}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    adapter = out / "adapter"
    for name in ("adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        assert (adapter / name).is_file(), name
    assert not (adapter / "README.md").exists()
    # four saves, save_total_limit=2 (the default): rotation deleted the two oldest
    assert sorted(p.name for p in (out / "checkpoints").glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-4"]

    run = json.loads((out / "run.json").read_text())
    assert run["recipe"] == "quickstart"
    assert run["base"]["name_or_path"] == "tiny:qwen2" and run["base"]["architecture"] == "Qwen2ForCausalLM"
    assert run["metrics"]["global_step"] == 4 and run["metrics"]["tokens_seen"] > 0 and "eval_loss" in run["metrics"]
    train_source = run["data"]["sources"][0]
    assert train_source["source"] == str(SMALL_TRAIN) and len(train_source["sha256"]) == 64
    for package in ("torch", "transformers", "peft", "trl", "datasets"):
        assert package in run["versions"]
    assert run["timings"]["total_seconds"] > 0
    assert run["speed"]["checkpointing"] == "none (auto)"  # the CPU keeps every activation
    # The progress bar shows loss and tokens/s; the data report shows counts; one line sums up.
    assert "loss=" in result.stderr and "tok/s=" in result.stderr
    assert "data[train]: 320 examples" in result.stdout
    assert f"4 steps, train loss {run['metrics']['train_loss']:.4f}, eval loss" in result.stdout
    assert run["command"] == f"python train.py recipe=quickstart trainer.max_steps=4 trainer.save_steps=1 " \
                             f"trainer.logging_steps=1 trainer.output_dir={out}"
    # A quiet console: no notice about a 4-bit kernel nothing uses, no Python warning (such as
    # transformers' FutureWarnings on checkpointing names), no library INFO lines, no loading bars.
    console = result.stdout + result.stderr
    for noise in ("gemm_4bit_forward", "kernels-community", "Warning:", "Using default tokenizer", "Loading weights",
                  "Writing model shards"):
        assert noise not in console, noise
    # The fine-tune was evaluated against its base at the end: results, samples and both plots.
    results = json.loads((out / "eval" / "results.json").read_text())
    assert results["metrics"]["loss"]["finetune"] == pytest.approx(run["metrics"]["eval_loss"], rel=1e-3)
    assert (out / "eval" / "samples.jsonl").read_text().strip()
    for plot in ("loss_curves.png", "metrics.png"):
        assert (out / "eval" / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", plot

    # recipe.yaml is the full resolved config, and re-running from it works.
    saved = OmegaConf.load(out / "recipe.yaml")
    assert saved.model.name_or_path == "tiny:qwen2" and saved.trainer.max_steps == 4 and saved.peft.r == 8
    assert "${" not in (out / "recipe.yaml").read_text()
    rerun = run_script("train.py", f"recipe={out / 'recipe.yaml'}", f"trainer.output_dir={tmp_path / 'rerun'}", "--cfg", "job")
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert OmegaConf.create(rerun.stdout).trainer.max_steps == 4


def test_adapter_loads_back_with_peft_and_gives_the_same_logits(tmp_path, tiny_qwen2_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from train.run import train

    result = train(tiny_config(tmp_path / "run"))
    trained = result.model.eval()
    lora_b = [p for n, p in trained.named_parameters() if "lora_B" in n]
    assert lora_b and any(p.abs().sum() > 0 for p in lora_b), "training did not move the adapter"

    base = AutoModelForCausalLM.from_pretrained(tiny_qwen2_dir, dtype=torch.float32)
    reloaded = PeftModel.from_pretrained(base, result.run_dir / "adapter").eval()
    ids = result.tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of Peru?"}],
                                               add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, trained(input_ids=ids).logits, rtol=1e-5, atol=1e-5)
        # The adapter matters: without it the logits differ.
        with reloaded.disable_adapter():
            assert not torch.allclose(reloaded(input_ids=ids).logits, trained(input_ids=ids).logits, atol=1e-3)
    config = json.loads((result.run_dir / "adapter" / "adapter_config.json").read_text())
    assert config["r"] == 4 and set(config["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def test_qlora_trains_on_a_4bit_base(tmp_path):
    pytest.importorskip("bitsandbytes", reason="bitsandbytes is not installed")
    from bitsandbytes.nn import Linear4bit

    from train.run import train

    try:
        result = train(tiny_config(tmp_path / "run", method=PeftMethod.qlora, steps=2))
    except (RuntimeError, NotImplementedError) as e:  # builds of bitsandbytes without CPU kernels
        pytest.skip(f"bitsandbytes 4-bit does not run on this machine: {e}")
    base = result.model.get_base_model()
    assert isinstance(base.model.layers[0].self_attn.q_proj.base_layer, Linear4bit)
    # Non-quantised weights stay bf16 (no fp32 upcast: pitfalls.md #14).
    assert base.model.norm.weight.dtype == torch.bfloat16
    # The adapter (and so AdamW's state) stays fp32 as for LoRA, though SFTTrainer casts it to bf16.
    trainable = {n: p.dtype for n, p in result.model.named_parameters() if p.requires_grad}
    assert trainable and set(trainable.values()) == {torch.float32}
    assert (result.run_dir / "adapter" / "adapter_model.safetensors").is_file()


def test_bad_data_is_one_line_exit_2_and_no_run_dir(tmp_path):
    """Every bad row is reported at once, in one line naming file and row; nothing is left behind."""
    rows = [
        {"messages": [{"role": "user", "content": "hi"}]},
        {"messages": [{"role": "robot", "content": "hi"}, {"role": "assistant", "content": "x"}]},
        {"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "x"}]},
    ]
    bad = write_jsonl(tmp_path / "bad.jsonl", rows)
    out = tmp_path / "run"
    result = run_script("train.py", f"data.train={bad}", f"trainer.output_dir={out}", "data.eval=null", cwd=tmp_path)
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: 3 of 3 rows are invalid")
    for message in ("bad.jsonl:1: no assistant turn", "bad.jsonl:2: message 0 has unknown role 'robot'",
                    "bad.jsonl:3: message 0 content must be a string"):
        assert message in last
    assert not out.exists()


def test_missing_data_file_and_empty_dataset(tmp_path):
    out = tmp_path / "run"
    missing = run_script("train.py", f"data.train={tmp_path}/nope.jsonl", f"trainer.output_dir={out}", cwd=tmp_path)
    assert missing.returncode == 2 and "data.train: data file not found" in missing.stderr
    (tmp_path / "empty.jsonl").write_text("")
    empty = run_script("train.py", f"data.train={tmp_path}/empty.jsonl", f"trainer.output_dir={out}", cwd=tmp_path)
    assert empty.returncode == 2 and "is empty" in empty.stderr.strip().splitlines()[-1]
    assert not out.exists()


def test_model_errors_before_loading(tmp_path):
    from train.errors import ScionError
    from train.run import train

    config = tiny_config(tmp_path / "a")
    config.peft.target_modules = ["q_proj", "qkv_proj"]
    with pytest.raises(ScionError, match=r"peft.target_modules: the model has no module named \['qkv_proj'\]"):
        train(config)
    config = tiny_config(tmp_path / "b")
    config.data.max_length = 10**6
    with pytest.raises(ScionError, match="data.max_length=1000000 exceeds the model's context of 32768"):
        train(config)
    config = tiny_config(tmp_path / "c")
    config.model.name_or_path = str(tmp_path / "no-model-here")
    with pytest.raises(ScionError, match="neither an existing directory nor a Hub id"):
        train(config)
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()


def test_pickle_only_model_directory_is_refused(tmp_path, tiny_qwen2_dir):
    import shutil

    from train.errors import ScionError
    from train.model import resolve_base

    model_dir = tmp_path / "pickled"
    shutil.copytree(tiny_qwen2_dir, model_dir)
    (model_dir / "model.safetensors").unlink()
    (model_dir / "pytorch_model.bin").write_bytes(b"not really a pickle")
    with pytest.raises(ScionError, match=r"no \*.safetensors weights .* pytorch_model.bin: pickle files are refused"):
        resolve_base(ModelConfig(name_or_path=str(model_dir)))


def test_hf_cache_snapshot_gives_hub_id_and_sha_offline(tmp_path, tiny_qwen2_dir, monkeypatch):
    """A base in the local HF cache loads offline by its Hub id, with its commit recorded."""
    import shutil

    from train.model import resolve_base

    sha = "a" * 40
    cache = tmp_path / "hub"
    snapshot = cache / "models--Qwen--Qwen2.5-0.5B-Instruct" / "snapshots" / sha
    shutil.copytree(tiny_qwen2_dir, snapshot)
    (cache / "models--Qwen--Qwen2.5-0.5B-Instruct" / "refs").mkdir()
    (cache / "models--Qwen--Qwen2.5-0.5B-Instruct" / "refs" / "main").write_text(sha)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    by_id = resolve_base(ModelConfig(name_or_path="Qwen/Qwen2.5-0.5B-Instruct"))
    assert (by_id.hub_id, by_id.commit_sha) == ("Qwen/Qwen2.5-0.5B-Instruct", sha)
    by_path = resolve_base(ModelConfig(name_or_path=str(snapshot)))
    assert (by_path.hub_id, by_path.commit_sha) == ("Qwen/Qwen2.5-0.5B-Instruct", sha)


@pytest.mark.parametrize("padding_free", [False, True])
def test_cpu_trained_positions_loss_equals_trls_fused_loss(tiny_qwen2_dir, padding_free):
    """ScionTrainer's CPU loss (LM head on trained positions only) is TRL's loss, value and gradient."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    from train.trainer import ScionTrainer

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_qwen2_dir, dtype=torch.float32)
    add_fused_lm_head(model, outputs=("log_probs",))
    model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    ids = torch.randint(0, 150_000, (2, 12))
    labels = ids.clone()
    labels[:, :7] = -100
    if padding_free:  # two examples in one row, positions restarting
        inputs = {"input_ids": ids.reshape(1, -1), "labels": labels.reshape(1, -1),
                  "position_ids": torch.arange(12).repeat(2)[None]}
        reference_inputs = dict(inputs, labels=inputs["labels"].masked_fill(inputs["position_ids"] == 0, -100))
    else:
        inputs = {"input_ids": ids, "labels": labels, "attention_mask": torch.ones_like(ids)}
        reference_inputs = inputs

    class CpuArgs:
        device = torch.device("cpu")

    trainer = type("T", (), {"args": CpuArgs()})()
    ours = ScionTrainer.trained_positions_loss(trainer, model, inputs, num_items_in_batch=torch.tensor(10))
    ours.backward()
    ours_grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
    model.zero_grad()
    theirs = model(**reference_inputs, fused_lm_head=True, num_items_in_batch=torch.tensor(10)).loss
    theirs.backward()
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    for mine, ref in zip(ours_grads, [p.grad for p in model.parameters() if p.requires_grad]):
        torch.testing.assert_close(mine, ref, rtol=1e-4, atol=1e-7)


def chat_rows(n: int) -> list[dict]:
    return [{"messages": [{"role": "user", "content": f"What is {i} plus {i}?"}, {"role": "assistant", "content": str(2 * i)}]}
            for i in range(n)]


@pytest.mark.slow
@pytest.mark.parametrize("packing", [False, True], ids=["padded", "packed"])
def test_tokens_seen_and_tokens_per_second_count_the_data_and_the_training_time(tmp_path, tiny_qwen2_dir, qwen2_5_tokenizer,
                                                                                      packing):
    """One epoch of 4 short chats: tokens seen must be exactly their prompt + trained tokens, counted here
    with the tokenizer's own chat template; the seconds are the training loop's (transformers' own timer)."""
    from train.run import train

    rows = chat_rows(4)
    data = write_jsonl(tmp_path / "chats.jsonl", rows)
    expected_tokens = sum(len(qwen2_5_tokenizer.apply_chat_template(r["messages"], tokenize=True, return_dict=True)["input_ids"])
                          for r in rows)
    config = tiny_config(tmp_path / "run", steps=-1, packing=packing)
    config.data.train, config.data.eval, config.trainer.batch_size, config.trainer.save_steps = str(data), None, 2, 1000
    result = train(config)
    run = result.run
    metrics, history = run["metrics"], run["log_history"]
    assert metrics["tokens_seen"] == expected_tokens
    assert run["speed"]["packing"] is packing and run["speed"]["padding_free"] is packing
    assert all(math.isfinite(entry["loss"]) for entry in history if "loss" in entry)
    # The seconds are training's: within transformers' own timer of the training loop (which starts after
    # loading and trainer setup), and tokens/s is this run's tokens over them.
    loop_seconds = history[-1]["train_runtime"]
    assert 0 < metrics["train_seconds"] <= loop_seconds + 0.01
    assert metrics["tokens_this_run"] == expected_tokens
    seconds = metrics["train_seconds"]  # rounded to 0.01 s in run.json
    assert expected_tokens / (seconds + 0.006) <= metrics["tokens_per_second"] <= expected_tokens / max(seconds - 0.006, 1e-3)
    # MFU counts what is computed: 4x the weights in matrix products for every token (no weight gradients for
    # the frozen base), counted here from the model's own Linear layers (q,k,v,o,gate,up,down), and the lm_head
    # only for the positions that have a label (the data's trained tokens).
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_pretrained(tiny_qwen2_dir)
    linear_weights = sum(m.weight.numel() for m in plain.modules() if isinstance(m, torch.nn.Linear))
    head = plain.lm_head.weight.numel()
    trained = run["data"]["stats"]["train"]["trained_tokens"]
    expected_flops = 4 * (linear_weights - head) * expected_tokens + 4 * head * trained
    assert metrics["model_flops_per_token"] == pytest.approx(expected_flops / expected_tokens, rel=1e-6)
    assert metrics["mfu"] is None and metrics["peak_flops"] is None  # no known peak on a CPU: no made-up MFU


@pytest.mark.slow
def test_dora_trains_and_reloads_and_eval_enabled_false_skips_evaluation(tmp_path, tiny_qwen2_dir, capsys):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from pipeline import run_pipeline

    config = tiny_config(tmp_path / "run", method=PeftMethod.dora, steps=2)
    config.eval.enabled, config.trainer.save_steps = False, 1000
    result = run_pipeline(config)  # the pipeline decides whether to evaluate
    tensors = load_file(str(result.run_dir / "adapter" / "adapter_model.safetensors"))
    magnitudes = [name for name in tensors if "lora_magnitude_vector" in name]
    assert len(magnitudes) == 2 * 7  # one per adapted projection: 7 per layer, 2 layers
    assert json.loads((result.run_dir / "adapter" / "adapter_config.json").read_text())["use_dora"] is True
    assert math.isfinite(result.run["metrics"]["train_loss"])
    base = AutoModelForCausalLM.from_pretrained(tiny_qwen2_dir, dtype=torch.float32)
    reloaded = PeftModel.from_pretrained(base, result.run_dir / "adapter").eval()
    ids = torch.tensor([[151644, 872, 198, 9707, 151645, 198, 151644, 77091, 198]])
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, result.model.eval()(input_ids=ids).logits, rtol=1e-5, atol=1e-5)
    # The eval split exists, but eval.enabled=false: no base-vs-fine-tune evaluation ran.
    assert not (result.run_dir / "eval").exists() and "eval_loss" in result.run["metrics"]
    assert "held-out examples from" not in capsys.readouterr().out
