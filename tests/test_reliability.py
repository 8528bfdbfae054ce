"""Reliability: exact resume, atomic checkpoints, preemption, numerical faults, preflight, output
safety, token hygiene and safe loading. Run alone with `python -m pytest -m reliability`."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from tests.conftest import REPO_ROOT, run_script, write_jsonl
from train.checkpoints import MARKER, STAGING
from train.config import DataConfig, ModelConfig, PeftConfig, PeftMethod, Precision, ScionConfig, TrainerConfig
from train.errors import ScionError

pytestmark = pytest.mark.reliability
DATA = REPO_ROOT / "data" / "quickstart" / "train.jsonl"
STEPS = 6


def config_for(output_dir: Path, **trainer) -> ScionConfig:
    """Gradient accumulation 2 and LoRA dropout on, so RNG and accumulation are part of what must match.
    Three saves (steps 2, 4, 6) against a limit of two, so rotation has something to delete."""
    settings = dict(output_dir=str(output_dir), max_steps=STEPS, batch_size=2, gradient_accumulation_steps=2,
                    learning_rate=1e-2, precision=Precision.fp32, logging_steps=1,
                    save_steps=2, save_total_limit=2, seed=7)
    settings.update(trainer)
    return ScionConfig(
        model=ModelConfig(name_or_path="tiny:qwen2"),
        peft=PeftConfig(r=4, alpha=8, dropout=0.1),
        data=DataConfig(train=str(DATA), max_length=64),
        trainer=TrainerConfig(**settings),
        recipe_name="reliability",
    )


def save_config(config: ScionConfig, path: Path) -> Path:
    path.write_text(OmegaConf.to_yaml(OmegaConf.structured(config)))
    return path


def step_losses(run_dir: Path) -> list[float]:
    history = json.loads((run_dir / "run.json").read_text())["log_history"]
    return [entry["loss"] for entry in history if "loss" in entry]


def adapter_tensors(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))


def fault_run(config: ScionConfig, tmp_path: Path, fault: str, step: int) -> subprocess.CompletedProcess:
    path = save_config(config, tmp_path / f"{fault}.yaml")
    return subprocess.run([sys.executable, str(REPO_ROOT / "tests/helpers/fault_run.py"), str(path), fault, str(step)],
                          capture_output=True, text=True, timeout=600, cwd=REPO_ROOT)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The reference: STEPS steps straight through."""
    from train.run import train

    run_dir = tmp_path_factory.mktemp("straight") / "run"
    train(config_for(run_dir))
    return run_dir


def assert_same_run(run_dir: Path, reference: Path) -> None:
    losses, expected = step_losses(run_dir), step_losses(reference)
    assert len(losses) == len(expected) == STEPS
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(expected), rtol=1e-5, atol=1e-6)
    ours, theirs = adapter_tensors(run_dir), adapter_tensors(reference)
    assert ours.keys() == theirs.keys()
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name], rtol=1e-5, atol=1e-6)


# ---- 1. exact resume ------------------------------------------------------------------------
def test_hard_stop_then_resume_matches_the_straight_run(straight, tmp_path):
    from train.run import train

    run_dir = tmp_path / "run"
    killed = fault_run(config_for(run_dir), tmp_path, "kill-after-save", 4)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert (run_dir / "checkpoints" / "checkpoint-4" / MARKER).is_file() and not (run_dir / "run.json").exists()
    tokens_before = json.loads((run_dir / "checkpoints" / "checkpoint-4" / "trainer_state.json").read_text())["num_input_tokens_seen"]
    train(config_for(run_dir))  # resume=auto picks checkpoint-4
    assert_same_run(run_dir, straight)
    # The resumed process's speed is its own tokens over its own seconds, not the run's cumulative tokens.
    metrics = json.loads((run_dir / "run.json").read_text())["metrics"]
    assert 0 < tokens_before < metrics["tokens_seen"] and metrics["tokens_this_run"] == metrics["tokens_seen"] - tokens_before
    seconds = metrics["train_seconds"]  # rounded to 0.01 s in run.json
    assert metrics["tokens_this_run"] / (seconds + 0.006) <= metrics["tokens_per_second"] <= metrics["tokens_this_run"] / (seconds - 0.006)


# ---- 2. atomic checkpoints ----------------------------------------------------------------
def test_sigkill_in_the_middle_of_a_save_keeps_the_previous_checkpoint(straight, tmp_path, capsys):
    from train.run import train

    run_dir = tmp_path / "run"
    killed = fault_run(config_for(run_dir), tmp_path, "kill-during-save", 4)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    checkpoints = run_dir / "checkpoints"
    assert sorted(p.name for p in checkpoints.glob("checkpoint-*")) == ["checkpoint-2"]
    assert (checkpoints / "checkpoint-2" / MARKER).is_file()
    assert (checkpoints / STAGING / "checkpoint-4" / "optimizer.pt").is_file()  # the half-written save
    # A half-written folder in place (as transformers itself would leave) is ignored and removed too.
    shutil.copytree(checkpoints / "checkpoint-2", checkpoints / "checkpoint-9", ignore=shutil.ignore_patterns(MARKER))
    train(config_for(run_dir))
    assert "removed incomplete checkpoints: checkpoint-9" in capsys.readouterr().out
    assert not (checkpoints / STAGING).exists()
    assert_same_run(run_dir, straight)


def test_rotation_keeps_the_newest_complete_checkpoints(straight):
    # The straight run saved at steps 2, 4 and 6 with save_total_limit=2: the oldest must be gone.
    names = sorted(p.name for p in (straight / "checkpoints").glob("checkpoint-*"))
    assert names == ["checkpoint-4", "checkpoint-6"]
    assert all((straight / "checkpoints" / n / MARKER).is_file() for n in names)


def test_rotation_with_limit_one_never_leaves_zero(tmp_path):
    from train.checkpoints import commit_checkpoint, list_checkpoints, rotate

    root = tmp_path / "checkpoints"
    for step in (2, 4):
        staged = root / STAGING / f"checkpoint-{step}"
        staged.mkdir(parents=True)
        (staged / "weights").write_text(str(step))
        commit_checkpoint(staged, root / f"checkpoint-{step}", {"step": step})
        rotate(root, 1)
    (root / "checkpoint-6").mkdir()  # incomplete: must not count as the newest
    rotate(root, 1)
    assert [p.name for p in list_checkpoints(root)] == ["checkpoint-4", "checkpoint-6"]


# ---- 3. preemption ------------------------------------------------------------------------
class Training:
    """train.py in a subprocess, with its stdout and stderr collected by a thread so the test can watch them."""

    def __init__(self, tmp_path: Path, run_dir: Path, steps: int):
        import threading

        args = ["recipe=quickstart", f"trainer.output_dir={run_dir}", f"trainer.max_steps={steps}", "trainer.save_steps=1000",
                "trainer.logging_steps=1", "trainer.batch_size=2", "data.eval=null", "data.max_length=64"]
        self.process = subprocess.Popen([sys.executable, str(REPO_ROOT / "train.py"), *args], cwd=tmp_path, text=True,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        env=dict(os.environ, PYTHONUNBUFFERED="1"))
        self.output: list[str] = []
        self.reader = threading.Thread(target=lambda: self.output.extend(iter(lambda: self.process.stdout.read(1), "")))
        self.reader.start()

    def wait_for(self, text: str, timeout: float = 300) -> None:
        """Block until `text` shows in the output (stdout and stderr together)."""
        deadline = time.time() + timeout
        while time.time() < deadline and self.process.poll() is None:
            if text in "".join(self.output):
                return
            time.sleep(0.005)
        raise AssertionError(f"never saw {text!r}: {''.join(self.output)[-2000:]}")

    def wait_until_training(self, timeout: float = 300) -> None:
        """Block until the progress bar shows a logged loss (training is under way)."""
        self.wait_for("loss=", timeout)

    def finish(self, timeout: float = 300) -> str:
        self.process.wait(timeout=timeout)
        self.reader.join(timeout=30)
        return "".join(self.output)


def test_sigterm_checkpoints_at_the_step_boundary_exits_75_and_resumes(tmp_path):
    run_dir = tmp_path / "run"
    training = Training(tmp_path, run_dir, steps=400)
    training.wait_until_training()
    training.process.send_signal(signal.SIGTERM)
    stderr = training.finish()
    assert training.process.returncode == 75, stderr[-2000:]
    assert "stopped: preempted at step" in stderr
    saved = [p for p in (run_dir / "checkpoints").glob("checkpoint-*") if (p / MARKER).is_file()]
    assert len(saved) == 1 and not (run_dir / "run.json").exists()
    step = int(saved[0].name.split("-")[1])
    state = json.loads((saved[0] / "trainer_state.json").read_text())
    assert state["global_step"] == step  # saved after a whole optimizer step

    # Resuming with a changed batch size is refused, and the message lists the difference.
    changed = run_script("train.py", "recipe=quickstart", f"trainer.output_dir={run_dir}", f"trainer.max_steps={step + 2}",
                         "trainer.batch_size=4", "data.eval=null", "data.max_length=64", cwd=tmp_path)
    assert changed.returncode == 2 and "trainer.batch_size: 2 -> 4" in changed.stderr
    resumed = run_script("train.py", "recipe=quickstart", f"trainer.output_dir={run_dir}", f"trainer.max_steps={step + 2}",
                         "trainer.batch_size=2", "trainer.save_steps=1000", "trainer.logging_steps=1", "data.eval=null",
                         "data.max_length=64", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming from {saved[0]}" in resumed.stdout
    assert json.loads((run_dir / "run.json").read_text())["metrics"]["global_step"] == step + 2


@pytest.mark.slow
def test_sigint_checkpoints_and_exits_75_like_sigterm(tmp_path):
    run_dir = tmp_path / "run"
    training = Training(tmp_path, run_dir, steps=400)
    training.wait_until_training()
    training.process.send_signal(signal.SIGINT)
    output = training.finish()
    assert training.process.returncode == 75, (training.process.returncode, output[-2000:])
    assert "received SIGINT" in output and "stopped: preempted at step" in output and "KeyboardInterrupt" not in output
    saved = [p for p in (run_dir / "checkpoints").glob("checkpoint-*") if (p / MARKER).is_file()]
    assert len(saved) == 1 and not (run_dir / "run.json").exists()


@pytest.mark.slow
def test_a_second_signal_exits_at_once_without_damage(tmp_path):
    """The second signal is sent only once the first was handled, so the two are never merged into one."""
    run_dir = tmp_path / "run"
    training = Training(tmp_path, run_dir, steps=400)
    training.wait_until_training()
    training.process.send_signal(signal.SIGTERM)
    training.wait_for("received SIGTERM")
    training.process.send_signal(signal.SIGTERM)
    output = training.finish()
    assert training.process.returncode == 128 + signal.SIGTERM, (training.process.returncode, output[-2000:])
    assert "stopped: preempted" not in output
    for checkpoint in (run_dir / "checkpoints").glob("checkpoint-*"):
        assert (checkpoint / MARKER).is_file(), f"{checkpoint} is incomplete but in place"


# ---- 4. changed config ----------------------------------------------------------------------
def unfinished_copy_of(straight: Path, run_dir: Path, step: int = 4) -> Path:
    """A run directory holding only the straight run's checkpoint-<step>: an unfinished run to resume."""
    shutil.copytree(straight / "checkpoints" / f"checkpoint-{step}", run_dir / "checkpoints" / f"checkpoint-{step}")
    return run_dir


@pytest.mark.slow
def test_resume_refuses_each_changed_setting_unless_allowed(straight, tmp_path, capsys):
    """Against the fingerprint train() itself recorded in the checkpoint, not one built by the test."""
    from train.run import train

    run_dir = unfinished_copy_of(straight, tmp_path / "run")
    other_data = write_jsonl(tmp_path / "other.jsonl", [json.loads(line) for line in DATA.read_text().splitlines()[:40]])
    changes = {
        "trainer.batch_size": lambda c: setattr(c.trainer, "batch_size", 4),
        "peft.r": lambda c: setattr(c.peft, "r", 8),
        "data.sources": lambda c: setattr(c.data, "train", str(other_data)),
        "base": lambda c: setattr(c.model, "name_or_path", "tiny:qwen3"),
        "base_revision": lambda c: setattr(c.model, "revision", "v2"),
    }
    for key, change in changes.items():
        config = config_for(run_dir)
        change(config)
        with pytest.raises(ScionError, match=rf"the config changed since checkpoint-4 \({key}: "):
            train(config)
    assert not (run_dir / "run.json").exists()

    # Allowed: the run resumes (with a warning naming the difference) and continues the same steps.
    config = config_for(run_dir)
    config.model.revision, config.trainer.allow_config_change = "v2", True
    capsys.readouterr()
    train(config)
    out = capsys.readouterr().out
    assert "warning: resuming checkpoint-4 with a changed config: base_revision: None -> 'v2'" in out
    assert f"resuming from {run_dir / 'checkpoints' / 'checkpoint-4'}" in out
    assert json.loads((run_dir / "run.json").read_text())["base"]["revision"] == "v2"
    assert_same_run(run_dir, straight)  # only the label changed, so the steps are the straight run's


@pytest.mark.slow
def test_resume_never_refuses_checkpoints_and_resume_path_picks_that_checkpoint(straight, tmp_path):
    from train.run import train

    run_dir = unfinished_copy_of(straight, tmp_path / "run")
    with pytest.raises(ScionError, match="holds checkpoints of an unfinished run and trainer.resume=never"):
        train(config_for(run_dir, resume="never"))

    # A checkpoint path (here another run's) is resumed even though the output directory is empty.
    elsewhere = tmp_path / "elsewhere"
    result = train(config_for(elsewhere, resume=str(straight / "checkpoints" / "checkpoint-4")))
    assert_same_run(elsewhere, straight)
    # tokens/s of a resumed run counts only the steps it ran (5 and 6), over its own training loop.
    history = json.loads((straight / "run.json").read_text())["log_history"]
    seen = {entry["step"]: entry["num_input_tokens_seen"] for entry in history if "loss" in entry}
    metrics = result.run["metrics"]
    assert metrics["tokens_seen"] == seen[6]
    # This run's tokens (steps 5 and 6) over its own training seconds, within transformers' timer of the loop.
    seconds = metrics["train_seconds"]
    assert metrics["tokens_this_run"] == seen[6] - seen[4]
    assert 0 < seconds <= result.run["log_history"][-1]["train_runtime"] + 0.01
    assert (seen[6] - seen[4]) / (seconds + 0.006) <= metrics["tokens_per_second"] <= (seen[6] - seen[4]) / (seconds - 0.006)


def test_resume_fingerprint_covers_every_setting_that_changes_the_steps(tmp_path):
    """Each of these changes which examples make up a step or what the adapter is: a resume must see it."""
    import copy
    from types import SimpleNamespace

    from train.run import resume_fingerprint

    base = SimpleNamespace(hub_id="Qwen/Qwen2.5-0.5B-Instruct", name_or_path="/snap", commit_sha="a" * 40, revision=None)
    data = SimpleNamespace(sources=[{"sha256": "abc"}])
    config = config_for(tmp_path / "run")
    before = resume_fingerprint(config, base, data)
    changes = {
        "packing": lambda c: setattr(c.trainer, "packing", not c.trainer.packing),
        "seed": lambda c: setattr(c.trainer, "seed", c.trainer.seed + 1),
        "batch_size": lambda c: setattr(c.trainer, "batch_size", c.trainer.batch_size + 1),
        "accumulation": lambda c: setattr(c.trainer, "gradient_accumulation_steps", 3),
        "max_length": lambda c: setattr(c.data, "max_length", c.data.max_length // 2),
        "rank": lambda c: setattr(c.peft, "r", c.peft.r * 2),
        "targets": lambda c: setattr(c.peft, "target_modules", ["q_proj"]),
    }
    for name, change in changes.items():
        changed = copy.deepcopy(config)
        change(changed)
        assert resume_fingerprint(changed, base, data) != before, name
    assert resume_fingerprint(config, base, SimpleNamespace(sources=[{"sha256": "def"}])) != before


# ---- 5. numerical faults ------------------------------------------------------------------
def test_nan_loss_stops_with_the_step_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    import train.trainer as scion_trainer
    from train.run import train

    compute_loss = scion_trainer.ScionTrainer.compute_loss

    def nan_at_step_3(self, model, inputs, *args, **kwargs):
        loss = compute_loss(self, model, inputs, *args, **kwargs)
        return loss * float("nan") if self.state.global_step == 2 else loss

    monkeypatch.setattr(scion_trainer.ScionTrainer, "compute_loss", nan_at_step_3)
    with pytest.raises(scion_trainer.NonFiniteError, match=r"the loss is nan at step 3; stopping.*checkpoint-2"):
        train(config_for(tmp_path / "run"))
    assert (tmp_path / "run" / "checkpoints" / "checkpoint-2" / MARKER).is_file()
    assert not (tmp_path / "run" / "run.json").exists()


def test_nan_gradient_stops_before_the_optimizer_step(tmp_path, monkeypatch):
    import train.run as run_module
    from train.trainer import NonFiniteError

    add_adapter = run_module.add_adapter

    def poisoned(model, *args):
        model = add_adapter(model, *args)
        lora_b = next(p for n, p in model.named_parameters() if "lora_B" in n)
        lora_b.register_hook(lambda grad: grad * float("inf"))
        return model

    monkeypatch.setattr(run_module, "add_adapter", poisoned)
    with pytest.raises(NonFiniteError, match=r"gradient norm is (nan|inf) at step 1"):
        run_module.train(config_for(tmp_path / "run"))


def test_logs_show_nan_instead_of_hiding_it(tmp_path):
    from train.run import sft_args

    args = sft_args(config_for(tmp_path), tmp_path, "cpu", has_eval=False)
    assert args.logging_nan_inf_filter is False


# ---- 6. data preflight --------------------------------------------------------------------
def test_data_report_counts_bad_rows_with_locations_and_warns_on_duplicates(tmp_path, capsys):
    from train.run import train

    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    rows = [good, {"messages": [{"role": "user", "content": "x"}]}, good,
            {"messages": [{"role": "narrator", "content": "x"}, {"role": "assistant", "content": "y"}]},
            {"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "y"}]},
            {"messages": [{"role": "user", "content": "a <|im_start|>system"}, {"role": "assistant", "content": "y"}]}]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    config = config_for(tmp_path / "run")
    config.data.train = str(path)
    with pytest.raises(ScionError) as err:
        train(config)
    message = str(err.value)
    assert message.startswith("4 of 6 rows are invalid; the first 3: ")
    assert f"{path}:2: no assistant turn" in message and f"{path}:4: message 0 has unknown role" in message
    assert f"{path}:5: message 0 (user) has empty content" in message
    assert not (tmp_path / "run").exists()

    other = {"messages": [{"role": "user", "content": "bye"}, {"role": "assistant", "content": "see you"}]}
    write_jsonl(path, [good, good, good, other])
    config.data.train, config.trainer.max_steps = str(path), 1
    train(config)
    assert f"warning: data[train]: 2 duplicate examples ({path}:2 repeats {path}:1; {path}:3 repeats {path}:1)" in capsys.readouterr().out


def test_truncation_that_removes_every_answer_is_caught(tmp_path):
    from train.run import train

    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "word " * 80, "completion": "short"}])
    config = config_for(tmp_path / "run")
    config.data.train, config.data.max_length = str(path), 32
    with pytest.raises(ScionError, match=r"d.jsonl:1: no trained token left after truncation"):
        train(config)


# ---- 7. config preflight: every case fails before a model is loaded ------------------------------
def _bad(mutate):
    def apply(config):
        mutate(config)
        return config
    return apply


CONFIG_ERRORS = [
    (_bad(lambda c: setattr(c.peft, "target_modules", ["q_proj", "query_key_value"])), "peft.target_modules: the model has no module named \\['query_key_value'\\]"),
    (_bad(lambda c: setattr(c.data, "max_length", 100_000)), "data.max_length=100000 exceeds the model's context of 32768"),
    (_bad(lambda c: (setattr(c.peft, "method", PeftMethod.qlora), setattr(c.trainer, "precision", Precision.fp32))), "qlora computes in bf16"),
    (_bad(lambda c: setattr(c.trainer, "warmup_ratio", 1.5)), "trainer.warmup_ratio must be in"),
    (_bad(lambda c: setattr(c.trainer, "batch_size", 0)), "trainer.batch_size must be at least 1"),
    (_bad(lambda c: setattr(c.trainer, "report_to", ["mlflow"])), "trainer.report_to: unknown logger 'mlflow'"),
    (_bad(lambda c: setattr(c.model, "name_or_path", "tiny:llama")), "unknown tiny architecture 'llama'"),
    (_bad(lambda c: setattr(c.model, "trust_remote_code", True)), "trust_remote_code=true needs model.revision pinned"),
    (_bad(lambda c: setattr(c.data, "eval_ratio", 1.0)), "data.eval_ratio must be in"),
    (_bad(lambda c: setattr(c.publish, "repo_id", "bad repo id")), "model.hub_id|not a valid Hub repo id"),
]


@pytest.mark.parametrize("mutate,message", CONFIG_ERRORS, ids=[m.split(":")[0].split(" ")[0] for _, m in CONFIG_ERRORS])
def test_config_errors_fail_before_any_model_is_loaded(tmp_path, monkeypatch, mutate, message):
    import train.run as run_module
    from pipeline import run_pipeline

    monkeypatch.setattr(run_module, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    with pytest.raises(ScionError, match=message):
        run_pipeline(mutate(config_for(tmp_path / "run")))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("override,key", [("trainer.lerning_rate=1", "trainer.lerning_rate"), ("peft.r=big", "peft.r"),
                                          ("peft.method=lora4", "peft.method"), ("data.truncation=cut", "data.truncation"),
                                          ("model.name_or_path=???", "model.name_or_path")])
def test_recipe_errors_name_the_key_on_the_command_line(tmp_path, override, key):
    result = run_script("train.py", override, cwd=tmp_path)
    assert result.returncode != 0 and key in result.stderr
    assert not (tmp_path / "runs").exists()


def test_qlora_run_merges_into_bf16_never_into_4bit(tmp_path):
    pytest.importorskip("bitsandbytes")
    from publish.merge import merge_adapter
    from train.run import train

    config = config_for(tmp_path / "run", max_steps=1, precision=Precision.bf16)
    config.peft.method = PeftMethod.qlora
    try:
        result = train(config)
    except (RuntimeError, NotImplementedError) as e:
        pytest.skip(f"bitsandbytes 4-bit does not run here: {e}")
    merged = merge_adapter(Path(result.run["base"]["local_dir"]), result.run_dir / "adapter", tmp_path / "merged")
    tensors = load_file(str(merged / "model.safetensors"))
    assert {t.dtype for t in tensors.values()} == {torch.bfloat16}
    assert not any("absmax" in k or "quant" in k for k in tensors)


# ---- 8. output safety -----------------------------------------------------------------------
def test_unwritable_output_dir_and_short_disk_are_reported_before_training(tmp_path, monkeypatch):
    import train.rundir as rundir
    from train.run import train

    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ScionError, match="trainer.output_dir: cannot write to"):
        train(config_for(blocker / "run"))

    monkeypatch.setattr(rundir.shutil if hasattr(rundir, "shutil") else shutil, "disk_usage",
                        lambda path: shutil._ntuple_diskusage(10**12, 10**12 - 1024, 1024))
    with pytest.raises(ScionError, match=r"has 0.00 GiB free, but the checkpoints and adapter need about"):
        train(config_for(tmp_path / "run"))
    assert not list((tmp_path / "run").glob("checkpoints/*"))


def test_two_runs_cannot_write_the_same_output_dir(tmp_path):
    from train.rundir import RunLock
    from train.run import train

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    lock = RunLock(run_dir)
    try:
        with pytest.raises(ScionError, match=rf"{run_dir} is being written by another run \(pid {os.getpid()}\)"):
            train(config_for(run_dir))
    finally:
        lock.release()


def test_a_finished_run_is_never_overwritten(straight):
    from train.run import train

    with pytest.raises(ScionError, match="already holds a finished run"):
        train(config_for(straight))


# ---- 10. safe loading -------------------------------------------------------------------------
class _Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ['SCION_PWNED']}",))


def test_checkpoint_rng_state_is_loaded_with_weights_only(straight, tmp_path, monkeypatch):
    import pickle

    from train.run import train

    run_dir = tmp_path / "run"
    shutil.copytree(straight / "checkpoints", run_dir / "checkpoints",
                    ignore=lambda d, names: [n for n in names if n in ("checkpoint-6",)])
    pwned = tmp_path / "pwned"
    monkeypatch.setenv("SCION_PWNED", str(pwned))
    (run_dir / "checkpoints" / "checkpoint-4" / "rng_state.pth").write_bytes(pickle.dumps({"python": _Exploit()}))
    with pytest.raises(Exception, match="(?i)weights_only|unpickl|global"):
        train(config_for(run_dir))
    assert not pwned.exists()


def test_pickle_weights_are_refused(tmp_path, tiny_qwen2_dir):
    from train.run import train

    base = tmp_path / "base"
    shutil.copytree(tiny_qwen2_dir, base)
    (base / "model.safetensors").rename(base / "pytorch_model.bin")
    config = config_for(tmp_path / "run")
    config.model.name_or_path = str(base)
    with pytest.raises(ScionError, match="pickle files are refused"):
        train(config)


# ---- 9. token hygiene ---------------------------------------------------------------------------
def test_canary_token_never_appears_in_output_files_or_uploads(hub_server, tiny_qwen2_dir, tmp_path, monkeypatch):
    """A full train (from a Hub id), evaluation and publish with a canary token, against the test Hub."""
    import secrets

    from huggingface_hub import HfApi, hf_hub_download

    canary = "hf_canary" + secrets.token_hex(12)
    hub_server.add_token(canary, write=True)
    monkeypatch.setenv("HF_TOKEN", canary)
    api = HfApi(token=canary)
    api.create_repo("scion-test/tiny-qwen2")
    api.upload_folder(repo_id="scion-test/tiny-qwen2", folder_path=str(tiny_qwen2_dir))

    out = tmp_path / "run"
    data = REPO_ROOT / "data/quickstart/eval.jsonl"
    trained = run_script("train.py", "model.name_or_path=scion-test/tiny-qwen2", f"data.train={data}", f"data.eval={data}",
                         "trainer.max_steps=2", "eval.max_examples=4", "eval.max_new_tokens=4", f"trainer.output_dir={out}",
                         "publish.repo_id=me/canary", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr[-3000:]
    published = run_script("publish.py", f"run_dir={out}", "repo_id=me/canary-more", "kind=merged", cwd=tmp_path)
    assert published.returncode == 0, published.stderr[-3000:]

    for stream in (trained.stdout, trained.stderr, published.stdout, published.stderr):
        assert canary not in stream
    files = [p for p in out.rglob("*") if p.is_file()]
    assert files and not [p for p in files if canary.encode() in p.read_bytes()]
    uploaded = 0
    for repo in ("me/canary", "me/canary-more"):
        for name in api.list_repo_files(repo):
            assert canary.encode() not in Path(hf_hub_download(repo, name, token=canary)).read_bytes(), name
            uploaded += 1
    assert uploaded >= 8
