"""Scale out: the same train.py under the real launcher (python -m torch.distributed.run, gloo on the CPU).

Two processes with batch_size 1 must train exactly what one process with batch_size 2 trains (same
global batch, same examples per step): same per-step losses, same adapter, one set of files. A
SIGKILL of the whole job and a SIGTERM (exit 75 on every rank) both resume to that same run.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import REPO_ROOT, write_jsonl

pytestmark = [pytest.mark.slow, pytest.mark.reliability]
DATA = REPO_ROOT / "data" / "quickstart" / "train.jsonl"
STEPS = 6
# Accumulation 2 so DDP's no-sync micro-steps are part of what must match; dropout 0 since each rank
# draws its own dropout masks.
COMMON = [f"trainer.max_steps={STEPS}", "trainer.gradient_accumulation_steps=2", "trainer.learning_rate=1e-2",
          "trainer.precision=fp32", "trainer.logging_steps=1", "trainer.save_steps=2", "trainer.save_total_limit=3",
          "trainer.seed=7", "peft.r=4", "peft.alpha=8", "peft.dropout=0.0", f"data.train={DATA}", "data.eval=null",
          "data.max_length=64", "eval.enabled=false"]


def scion_config(overrides: list[str]):
    """The config train.py builds from these command-line overrides."""
    from train.config import compose_config, register_configs, to_scion_config

    register_configs()
    return to_scion_config(compose_config(list(overrides)))


def torchrun(output_dir: Path, *extra: str, processes: int = 2) -> subprocess.Popen:
    """The user's command: python -m torch.distributed.run --standalone --nproc_per_node 2 train.py ..."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", PYTHONPATH=str(REPO_ROOT))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
               str(REPO_ROOT / "train.py"), *COMMON, "trainer.batch_size=1", f"trainer.output_dir={output_dir}", *extra]
    return subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


def finish(job: subprocess.Popen, timeout: int = 400) -> str:
    output, _ = job.communicate(timeout=timeout)
    return output


def step_losses(run_dir: Path) -> list[float]:
    return [e["loss"] for e in json.loads((run_dir / "run.json").read_text())["log_history"] if "loss" in e]


def adapter(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))


def assert_same_run(run_dir: Path, reference: Path) -> None:
    losses, expected = step_losses(run_dir), step_losses(reference)
    assert len(losses) == len(expected) == STEPS
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(expected), rtol=1e-5, atol=1e-6)
    ours, theirs = adapter(run_dir), adapter(reference)
    assert ours.keys() == theirs.keys() and len(ours) > 0
    # Summation order differs (one padded micro-batch of 2 vs two of 1, gradients averaged by DDP) and
    # Adam magnifies it on near-zero gradients: a few 1e-6 on weights of about 1e-2.
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name], rtol=1e-3, atol=2e-5)


def wait_for(predicate, job: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not predicate():
        assert job.poll() is None, f"the job ended early:\n{finish(job)[-3000:]}"
        assert time.time() < deadline, "timed out"
        time.sleep(0.1)


def complete(run_dir: Path, step: int) -> bool:
    return (run_dir / "checkpoints" / f"checkpoint-{step}" / "scion_checkpoint.json").is_file()


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("ddp") / "run"
    job = torchrun(run_dir)
    output = finish(job)
    assert job.returncode == 0, output[-3000:]
    return run_dir, output


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """The same global batch (2 x 2 accumulation) in this one process, through the in-process API."""
    from train.run import train

    run_dir = tmp_path_factory.mktemp("one") / "run"
    config = scion_config([*COMMON, "trainer.batch_size=2", f"trainer.output_dir={run_dir}"])
    train(config)
    return run_dir


def test_two_processes_train_what_one_process_trains(two_processes, one_process):
    run_dir, output = two_processes
    assert_same_run(run_dir, one_process)
    # Rank 0 alone prints and writes: one summary, one set of files.
    assert output.count("run directory:") == 1 and output.count("done in") == 1 and output.count("global batch:") == 1
    assert output.count("data[train]:") == 1 and output.count("model: tiny:qwen2") == 1
    assert "global batch: 4 = batch_size 1 x gradient_accumulation_steps 2 x 2 processes (ddp)" in output
    assert sorted(p.name for p in run_dir.iterdir()) == [".lock", "adapter", "checkpoints", "recipe.yaml", "report.html", "run.json"]
    checkpoints = run_dir / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
    # Each rank's RNG state is in the checkpoint (written by its own rank) before it was marked complete.
    assert {"rng_state_0.pth", "rng_state_1.pth"} <= {p.name for p in (checkpoints / "checkpoint-6").iterdir()}
    run = json.loads((run_dir / "run.json").read_text())
    assert run["distributed"]["engine"] == "ddp" and run["distributed"]["world_size"] == 2
    assert run["distributed"]["global_batch_size"] == 4
    # Every example once per epoch across ranks: 6 steps x 4 examples, counted by the Trainer over both ranks.
    one = json.loads((one_process / "run.json").read_text())
    assert run["metrics"]["tokens_seen"] == one["metrics"]["tokens_seen"] > 0
    speed = run["metrics"]
    assert speed["world_size"] == 2
    assert speed["tokens_per_second_per_device"] == pytest.approx(speed["tokens_per_second"] / 2, abs=0.1)


def test_sigkill_then_sigterm_then_resume_equals_the_straight_run(two_processes, tmp_path):
    reference, _ = two_processes
    run_dir = tmp_path / "run"

    # SIGKILL the whole job (launcher and both ranks) once checkpoint-2 is complete.
    job = torchrun(run_dir)
    wait_for(lambda: complete(run_dir, 2), job)
    import psutil

    # torchrun starts each rank in its own session, so a process-group kill would miss them: kill each process,
    # as a scheduler that ends the job's cgroup does.
    launcher = psutil.Process(job.pid)
    for process in [launcher, *launcher.children(recursive=True)]:
        process.kill()
    finish(job)
    assert not (run_dir / "run.json").exists()

    # Resume; SIGTERM both ranks (as a scheduler does) once checkpoint-4 is complete.
    job = torchrun(run_dir)
    wait_for(lambda: complete(run_dir, 4), job)
    ranks = psutil.Process(job.pid).children()
    assert len(ranks) == 2
    for rank in ranks:
        rank.send_signal(signal.SIGTERM)
    output = finish(job)
    # torchrun reports each rank's exit status: both stopped with 75 after saving the same step.
    assert re.findall(r"exitcode\s*:\s*75", output) and not re.findall(r"exitcode\s*:\s*(?!75)-?\d+", output), output[-3000:]
    saved = sorted(int(p.name.split("-")[1]) for p in (run_dir / "checkpoints").glob("checkpoint-*"))
    assert all(complete(run_dir, step) for step in saved) and 4 < saved[-1] <= STEPS
    assert not (run_dir / "checkpoints" / ".partial").exists()
    assert output.count("stopped: preempted at step") == 1

    # Resume to the end: the same run as the one never interrupted.
    job = torchrun(run_dir)
    output = finish(job)
    assert job.returncode == 0, output[-3000:]
    assert_same_run(run_dir, reference)


def test_bad_row_under_torchrun_is_one_error_line_and_nothing_written(tmp_path):
    rows = [json.loads(line) for line in DATA.read_text().splitlines()[:4]]
    rows[2] = {"messages": [{"role": "user", "content": "no answer"}]}
    data = write_jsonl(tmp_path / "bad.jsonl", rows)
    job = torchrun(tmp_path / "run", f"data.train={data}")
    output = finish(job)
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "bad.jsonl:3" in errors[0], output[-3000:]
    # The one traceback is torchrun's own report (ChildFailedError); no frame from the ranks' code.
    # (A virtual environment inside the checkout, as .ci/run makes, holds torchrun's own frames: not ours.)
    assert not re.search(rf'File "{re.escape(str(REPO_ROOT))}/(train|eval|publish|report|pipeline)\b', output)
    assert output.count("Traceback") <= 1
    assert re.search(r"exitcode\s*:\s*2", output)
    assert not (tmp_path / "run").exists()


def test_fsdp_refusals_name_the_alternative(monkeypatch):
    """FSDP2 through accelerate runs on GPUs only (on the CPU accelerate silently keeps DDP), and not with QLoRA."""
    from train.errors import ScionError
    from train.run import check_config, plan_training

    config = scion_config(["peft=qlora", "trainer.distributed=fsdp", "trainer.precision=bf16"])
    with pytest.raises(ScionError, match=r"trainer.distributed=fsdp does not support peft.method=qlora.*use trainer.distributed=ddp"):
        check_config(config)
    if torch.cuda.is_available():
        return  # FSDP2 runs there
    # What torchrun sets for each rank; the check runs in preflight, before any process group.
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    config = scion_config(["trainer.distributed=fsdp"])
    with pytest.raises(ScionError, match=r"trainer.distributed=fsdp needs GPUs.*use trainer.distributed=ddp"):
        plan_training(config)


@pytest.fixture(scope="module")
def fsdp_saved(tmp_path_factory):
    """tests/helpers/fsdp_save.py under torchrun: LoRA and DoRA adapters sharded over two ranks, then saved."""
    out = tmp_path_factory.mktemp("fsdp")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO_ROOT))
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(REPO_ROOT / "tests/helpers/fsdp_save.py"), str(out)],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_fsdp2_sharded_adapter_is_saved_whole(fsdp_saved, method):
    """torch's FSDP2 on the CPU (gloo): the adapter saved from a model sharded over two ranks holds every
    tensor whole, loads with PeftModel.from_pretrained in one process and equals the unsharded weights."""
    from peft import PeftModel, get_peft_model_state_dict

    from train.config import ModelConfig, PeftConfig, PeftMethod, Precision
    from train.model import load_model, resolve_base

    expected = load_file(str(fsdp_saved / method / "expected.safetensors"))
    saved = load_file(str(fsdp_saved / method / "adapter" / "adapter_model.safetensors"))
    assert saved.keys() == expected.keys() and len(saved) > 0
    for name in saved:
        torch.testing.assert_close(saved[name], expected[name])  # full shapes, not one rank's half

    model_config = ModelConfig(name_or_path="tiny:qwen2")
    peft_config = PeftConfig(method=PeftMethod(method), r=4, alpha=8)
    base = load_model(resolve_base(model_config), model_config, peft_config, Precision.fp32)
    loaded = PeftModel.from_pretrained(base, fsdp_saved / method / "adapter")
    weights = get_peft_model_state_dict(loaded)  # what the loaded model holds, named as saved
    assert weights.keys() == expected.keys()
    for name, tensor in expected.items():
        torch.testing.assert_close(weights[name], tensor)


def test_speed_summary_gives_the_total_and_each_devices_share():
    """tokens/s is the job's total; MFU is per device: 8 H100s at 800,000 tok/s in total run 100,000 each."""
    from train.throughput import matmul_params, run_speed_summary
    from train.tiny import QWEN_ARCHITECTURES, tiny_config

    arch, sizes = QWEN_ARCHITECTURES["Qwen/Qwen2.5-0.5B-Instruct"]
    config = tiny_config(arch, **sizes)
    # 8 processes trained 8M tokens in all in 10 s; this process's 1M tokens had 300k labelled positions.
    summary = run_speed_summary(8_000_000, 300_000, 10.0, config, "NVIDIA H100 80GB HBM3", world_size=8)
    assert summary["tokens_per_second"] == 800_000.0 and summary["tokens_per_second_per_device"] == 100_000.0
    head = config.vocab_size * config.hidden_size
    device_flops = 4 * (matmul_params(config) - head) * 1_000_000 + 4 * head * 300_000
    per_device = device_flops / 10.0 / 989e12
    assert 0.1 < per_device < 1 and summary["mfu"] == round(per_device, 4)
