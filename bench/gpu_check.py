#!/usr/bin/env python
"""The GPU check: one command that measures everything Scion needs to know from a real GPU.

    python bench/gpu_check.py --out DIR              # on an H100/H200: at most 8 minutes, no network
    python bench/gpu_check.py --out DIR --cpu-dry-run   # the same steps on the CPU, tiny models (CI)

Steps, most valuable first. Each runs in its own process group under a time budget; one that
overruns is killed and recorded as "timeout", one that fails as "failed" with the tail of its
output, and the check goes on to the next. Rows a step printed before it stopped are kept.

1. environment   GPU, memory, torch/CUDA, package versions, torch's varlen_attn signature
2. pytest_gpu    `pytest -m gpu`: the real kernels against the reference (packed row vs each example
                 alone, varlen vs sdpa on loss and LoRA gradients) and the recipes on stand-ins
3. train_e2e     train.py on a Qwen2.5-0.5B stand-in: LoRA, SIGTERM mid-run, resume to the end,
                 evaluation against the base, dry-run publish of adapter, merged and GGUF
4. train_qlora   the qwen3b_qlora recipe on a Qwen2.5-3B stand-in for a few steps, peak memory
5. checkpointing peak memory and step time of each checkpointing policy on Qwen2.5-3B vs the estimate
6. lora_bench    bench/lora_bench.py stock vs scion (0.5B, 3B, QLoRA 3B), short windows, ratios
7. eval_speed    bench/eval_speed.py shortened, projected to 500 examples x 128 new tokens on 3B

It writes DIR/gpu_check.json (every row, versions, errors) and DIR/gpu_check.md (the table), and
prints the table last. Stand-ins are random weights of the real shapes: speed and memory, not quality.
See bench/README.md for the device command and the wheels it needs (bench/gpu_wheels.sh).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

TOTAL_BUDGET_S = 480  # the whole check on a GPU: 8 minutes
# (name, GPU budget s, dry-run budget s). The dry run's budgets are generous: it checks the script
# works, on a shared 2-core CI machine where starting Python with torch alone takes seconds.
# The GPU budgets are first estimates (stand-in builds, Python start-ups, a few steps each): adjust
# them from the first GPU run's "s / budget" column. The last steps get what is left of the 480 s.
STEPS = [
    ("environment", 20, 60),
    ("pytest_gpu", 40, 120),
    ("train_e2e", 95, 240),
    ("train_qlora", 60, 120),
    ("checkpointing", 60, 120),
    ("lora_bench", 165, 240),
    ("eval_speed", 45, 120),
]
TARGETS = {  # the issue's targets, for the table's context (measured here, never in a timed test)
    "qwen2.5-3b scion": "LoRA 3B >= 25,000 tok/s at <= 40 GiB (lean: >= 15,000 at <= 12 GiB)",
    "qwen2.5-0.5b scion": ">= 100,000 tok/s",
    "qwen2.5-3b qlora_scion": "<= 8 GiB at >= 10,000 tok/s",
    "eval_speed": "500 x 128 on 3B, base + fine-tune < 60 s",
}
STANDIN_0_5B = "Qwen/Qwen2.5-0.5B-Instruct"
STANDIN_3B = "Qwen/Qwen2.5-3B-Instruct"
PREEMPTED_EXIT_CODE = 75  # train/errors.py


# ---------------------------------------------------------------------------------------------
# Helpers shared by the steps (they run in the step's process)
# ---------------------------------------------------------------------------------------------
def emit(row: dict) -> None:
    """One result row for the parent (kept even when the step later times out)."""
    print("ROW " + json.dumps(row, default=str), flush=True)


def run(cmd: list[str], env: dict | None = None, timeout: float | None = None, cwd: Path | None = None):
    """A child command, its output captured; raises with the output's tail when it fails."""
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    proc = subprocess.run(cmd, env=full_env, cwd=cwd or REPO_ROOT, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... exited {proc.returncode}:\n{(proc.stdout + proc.stderr)[-2500:]}")
    return proc


def cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def standin_cache(work: Path, hub_id: str) -> dict:
    """An HF cache holding a random stand-in of `hub_id` (built on the GPU); env for loading it offline."""
    from train.tiny import save_standin

    cache = work / "hub"
    if not (cache / f"models--{hub_id.replace('/', '--')}").exists():
        save_standin(hub_id, cache)
    return {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)}


# ---------------------------------------------------------------------------------------------
# The steps
# ---------------------------------------------------------------------------------------------
def step_environment(dry: bool, work: Path) -> None:
    import inspect
    import platform

    import torch

    from train.attention import varlen_kernel
    from train.run import package_versions

    row = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
           "versions": package_versions(extra=("liger-kernel", "flash-attn"))}
    if torch.cuda.is_available():
        free, total = torch.cuda.mem_get_info()
        row.update(gpu=torch.cuda.get_device_name(0), gpu_memory_gib=round(total / 2**30, 1),
                   free_gib=round(free / 2**30, 1), capability=".".join(map(str, torch.cuda.get_device_capability())))
    else:
        row.update(gpu=None)
    kernel, _ = varlen_kernel()
    row["varlen_attn"] = f"varlen_attn{inspect.signature(kernel)}" if kernel is not None else None
    emit(row)


def step_pytest_gpu(dry: bool, work: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-k", "not recipe", "tests/test_gpu.py",
                           "tests/test_speed.py", "-p", "no:cacheprovider"],
                          cwd=REPO_ROOT, capture_output=True, text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    summary = (proc.stdout.strip().splitlines() or ["(no output)"])[-1]
    # exit 5: nothing collected/selected; on the CPU every gpu test is skipped, which is expected there
    emit({"summary": summary, "exit_code": proc.returncode})
    if proc.returncode != 0:
        raise RuntimeError(proc.stdout[-3000:])


def train_env_and_args(dry: bool, work: Path) -> tuple[dict, list[str]]:
    """The 0.5B recipe on a stand-in (GPU), or the quickstart's tiny model (dry run)."""
    if dry:
        return {}, ["recipe=quickstart", f"model.hub_id={STANDIN_0_5B}", "trainer.save_steps=2", "trainer.logging_steps=1",
                    "trainer.max_steps=5", "trainer.batch_size=2", "data.max_length=64", "eval.max_examples=4",
                    "eval.max_new_tokens=2", "publish.gguf_types=[f16]"]
    return standin_cache(work, STANDIN_0_5B), [
        "recipe=qwen0.5b_lora", "trainer.save_steps=5", "trainer.logging_steps=5", "trainer.eval_steps=10",
        "trainer.max_steps=20", "eval.max_examples=64", "eval.max_new_tokens=32", "publish.gguf_types=[f16]"]


def step_train_e2e(dry: bool, work: Path) -> None:
    """train.py: SIGTERM after the first checkpoint, the same command resumes, then eval and publish."""
    env, args = train_env_and_args(dry, work)
    out = work / "e2e"
    cmd = [sys.executable, str(REPO_ROOT / "train.py"), *args, f"trainer.output_dir={out}",
           "publish.repo_id=scion-check/e2e", "publish.kinds=[adapter,merged,gguf]", "publish.dry_run=true"]
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", **env)
    started = time.time()
    with open(work / "e2e-first.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT)
        while proc.poll() is None and not list((out / "checkpoints").glob("checkpoint-*")):
            time.sleep(0.2)
        if proc.poll() is not None:
            raise RuntimeError(f"train.py ended (exit {proc.returncode}) before a checkpoint:\n"
                               f"{(work / 'e2e-first.log').read_text()[-2500:]}")
        proc.send_signal(signal.SIGTERM)
        code = proc.wait()
    first = (work / "e2e-first.log").read_text()
    if code != PREEMPTED_EXIT_CODE:
        raise RuntimeError(f"SIGTERM: exit {code}, expected {PREEMPTED_EXIT_CODE}:\n{first[-2500:]}")
    saved = sorted(int(p.name.split("-")[1]) for p in (out / "checkpoints").glob("checkpoint-*"))
    emit({"part": "sigterm", "exit_code": code, "checkpoints": saved, "seconds": round(time.time() - started, 1)})
    started = time.time()
    proc = run(cmd, env=env)
    run_json = json.loads((out / "run.json").read_text())
    metrics = run_json["metrics"]
    published = sorted(p.name for p in (out / "publish").glob("[!.]*") if p.is_dir()) if (out / "publish").is_dir() else []
    results = json.loads((out / "eval" / "results.json").read_text()) if (out / "eval" / "results.json").is_file() else None
    emit({"part": "resume+eval+publish", "resumed": "resuming from" in proc.stdout, "global_step": metrics["global_step"],
          "tokens_per_second": metrics.get("tokens_per_second"), "mfu": metrics.get("mfu"),
          "peak_memory_gib": metrics.get("peak_memory_gib"), "eval_loss": metrics.get("eval_loss"),
          "attn": run_json["speed"]["attn_implementation"], "checkpointing": run_json["speed"]["checkpointing"],
          "eval_results": results is not None, "published": published, "seconds": round(time.time() - started, 1)})
    if published != ["adapter", "gguf", "merged"] or results is None:
        raise RuntimeError(f"expected eval results and publish/{{adapter,gguf,merged}}; got {published}, eval {results is not None}")


def step_train_qlora(dry: bool, work: Path) -> None:
    out = work / "qlora"
    if dry:
        env, args = {}, ["recipe=quickstart", "peft.method=qlora", "trainer.precision=bf16", "trainer.batch_size=2",
                         "data.max_length=64"]
    else:
        env, args = standin_cache(work, STANDIN_3B), ["recipe=qwen3b_qlora"]
    started = time.time()
    run([sys.executable, str(REPO_ROOT / "train.py"), *args, f"trainer.max_steps={2 if dry else 4}", "trainer.logging_steps=1",
         "trainer.save_steps=1000", "eval.enabled=false", f"trainer.output_dir={out}"], env=env)
    run_json = json.loads((out / "run.json").read_text())
    metrics = run_json["metrics"]
    emit({"model": "tiny:qwen2" if dry else STANDIN_3B, "global_step": metrics["global_step"],
          "tokens_per_second": metrics.get("tokens_per_second"), "peak_memory_gib": metrics.get("peak_memory_gib"),
          "checkpointing": run_json["speed"]["checkpointing"], "attn": run_json["speed"]["attn_implementation"],
          "seconds": round(time.time() - started, 1)})


def bench_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("lora_bench", REPO_ROOT / "bench" / "lora_bench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def step_checkpointing(dry: bool, work: Path) -> None:
    """Each policy on the 3B stand-in (tiny on the CPU): peak memory and step time against the estimate.

    Two steps per policy, the second timed (one in the dry run); the estimate is what trainer.checkpointing=auto compares
    with the free memory: training state + activation bytes per token x tokens per step.
    """
    import gc

    import torch

    from train import activation_checkpointing as ac

    bench = bench_module()
    name, tokens, steps = ("tiny", 64, 1) if dry else ("qwen2.5-3b", 16384, 2)
    device = "cuda" if cuda() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    cfg, _ = bench.hf_config(name)
    lengths = bench.example_lengths(600, 24 if dry else 450, 64 if dry else 2048, 8 if dry else 32)
    for policy in ("full", "selective", "offload", "none"):  # the frugal ones first: a late OOM costs least
        model = optimizer = batches = batch = loss = None
        try:
            model, info = bench.build_scion(name, "scion", device, dtype, str(work), tokens, policy)
            estimate = ac.training_state_bytes(model) + ac.activation_bytes_per_token(
                cfg, policy, fused_kernels=ac.uses_fused_kernels(model)) * tokens
            optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
            batches = bench.scion_batches(lengths, steps, tokens, cfg.vocab_size, device)
            if device == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            seconds = 0.0
            for _ in range(steps):
                batch, *_ = next(batches)
                if device == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                with torch.autocast(device, dtype=dtype, enabled=device == "cuda"):
                    loss = model(**batch, fused_lm_head=True).loss
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                if device == "cuda":
                    torch.cuda.synchronize()
                seconds = time.perf_counter() - t0
            peak = torch.cuda.max_memory_allocated() if device == "cuda" else None
            emit({"model": name, "policy": policy, "status": "ok", "tokens_per_step": tokens,
                  "step_seconds": round(seconds, 3), "tokens_per_second": round(tokens / seconds, 1),
                  "peak_gib": None if peak is None else round(peak / 2**30, 2),
                  "estimate_gib": round(estimate / 2**30, 2),
                  "peak_over_estimate": None if peak is None else round(peak / estimate, 3), "attn": info["attn"]})
        except torch.cuda.OutOfMemoryError:
            emit({"model": name, "policy": policy, "status": "oom", "tokens_per_step": tokens})
        finally:  # drop every reference to this policy's tensors (an OOM's graph included) before the next
            model = optimizer = batches = batch = loss = None
            gc.collect()
            if device == "cuda":
                torch.cuda.empty_cache()


def step_lora_bench(dry: bool, work: Path) -> None:
    out = work / "lora_bench.json"
    if dry:
        args = ["--smoke"]
    else:  # short windows: 2 warm-up + 4 timed steps per configuration; qlora_stock left out for time
        args = ["--models", "qwen2.5-0.5b,qwen2.5-3b", "--configs", "stock,scion,qlora_scion", "--steps", "4",
                "--warmup", "2", "--timeout", "75"]
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "bench" / "lora_bench.py"), *args, "--out", str(out)],
                          cwd=REPO_ROOT, capture_output=True, text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    if out.is_file():
        for r in json.loads(out.read_text())["results"]:
            emit({k: r.get(k) for k in ("model", "config", "status", "tokens_per_s", "vs_stock_tokens_per_s", "peak_gib",
                                        "vs_stock_peak", "mfu", "attn", "checkpointing")})
    if proc.returncode != 0:
        raise RuntimeError((proc.stdout + proc.stderr)[-2500:])


def step_eval_speed(dry: bool, work: Path) -> None:
    examples, new_tokens = (4, 4) if dry else (96, 32)
    args = ["--smoke"] if dry else []
    started = time.time()
    proc = run([sys.executable, str(REPO_ROOT / "bench" / "eval_speed.py"), *args, "--examples", str(examples),
                "--max-new-tokens", str(new_tokens), "--work-dir", str(work / "eval_speed")])
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("eval_speed:") and " s " in ln][-1]
    seconds = float(line.split("base + fine-tune: ")[1].split(" s")[0])
    # Generation dominates: time grows with examples x new tokens (batches x decoding steps).
    projected = seconds * (500 * 128) / (examples * new_tokens)
    emit({"examples": examples, "max_new_tokens": new_tokens, "seconds": seconds,
          "projected_500x128_seconds": round(projected, 1), "line": line, "wall_seconds": round(time.time() - started, 1)})


STEP_FUNCTIONS = {"environment": step_environment, "pytest_gpu": step_pytest_gpu, "train_e2e": step_train_e2e,
                  "train_qlora": step_train_qlora, "checkpointing": step_checkpointing,
                  "lora_bench": step_lora_bench, "eval_speed": step_eval_speed}


# ---------------------------------------------------------------------------------------------
# The parent: every step in its own process group, under its budget
# ---------------------------------------------------------------------------------------------
def run_step(name: str, budget: float, dry: bool, work: Path) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--step", name, "--work", str(work)]
    if dry:
        cmd.append("--cpu-dry-run")
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=os.pathsep.join(
        p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p))
    if dry:
        env["CUDA_VISIBLE_DEVICES"] = ""  # the dry run is the CPU run, even on a GPU machine
    print(f"--- {name} (budget {budget:.0f} s)", flush=True)
    started = time.time()
    log_path = work / f"{name}.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code = proc.wait(timeout=budget)
            status = "ok" if code == 0 else "failed"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the step and every child it started
            proc.wait()
            status = "timeout"
    text = log_path.read_text(errors="replace")
    rows = [json.loads(ln[4:]) for ln in text.splitlines() if ln.startswith("ROW ")]
    result = {"step": name, "status": status, "seconds": round(time.time() - started, 1), "budget_s": round(budget), "rows": rows}
    if status != "ok":
        result["error_tail"] = "\n".join(ln for ln in text.splitlines() if not ln.startswith("ROW "))[-3000:]
    print(f"    {status} in {result['seconds']} s, {len(rows)} row(s)", flush=True)
    return result


def fmt(value, spec=""):
    if value is None:
        return "n/a"
    return format(value, spec) if spec else str(value)


def step_figures(step: dict) -> list[tuple[str, str]]:
    """(what, figures) lines of the table for one step."""
    rows = step["rows"]
    name = step["step"]
    if name == "environment" and rows:
        r = rows[0]
        v = r["versions"]
        return [("GPU", f"{r.get('gpu') or 'none (CPU)'} {fmt(r.get('gpu_memory_gib'))} GiB; torch {r['torch']} CUDA {r['cuda']}"),
                ("versions", ", ".join(f"{k} {v[k]}" for k in ("transformers", "peft", "trl", "bitsandbytes", "liger-kernel",
                                                               "flash-attn") if k in v)),
                ("varlen_attn", fmt(r.get("varlen_attn")) or "absent")]
    if name == "pytest_gpu" and rows:
        return [("pytest -m gpu", rows[0]["summary"])]
    if name == "train_e2e":
        out = []
        for r in rows:
            if r["part"] == "sigterm":
                out.append(("SIGTERM", f"exit {r['exit_code']}, checkpoints {r['checkpoints']}"))
            else:
                out.append(("resume, eval, publish", f"step {r['global_step']}, {fmt(r['tokens_per_second'], ',.0f')} tok/s, "
                            f"MFU {fmt(r['mfu'], '.1%')}, peak {fmt(r['peak_memory_gib'])} GiB, {r['attn']}, "
                            f"ckpt {r['checkpointing']}, eval loss {fmt(r['eval_loss'], '.3f')}, published {r['published']}"))
        return out
    if name == "train_qlora":
        return [(r["model"], f"{fmt(r['tokens_per_second'], ',.0f')} tok/s, peak {fmt(r['peak_memory_gib'])} GiB, "
                 f"ckpt {r['checkpointing']}, {r['attn']}") for r in rows]
    if name == "checkpointing":
        return [(f"{r['model']} {r['policy']}", r["status"] if r["status"] != "ok" else
                 f"{fmt(r['tokens_per_second'], ',.0f')} tok/s, peak {fmt(r['peak_gib'])} GiB vs estimate "
                 f"{fmt(r['estimate_gib'])} GiB (x{fmt(r['peak_over_estimate'])})") for r in rows]
    if name == "lora_bench":
        return [(f"{r['model']} {r['config']}", (r["status"] or "")[:60] if r["status"] != "ok" else
                 f"{fmt(r['tokens_per_s'], ',.0f')} tok/s (x{fmt(r['vs_stock_tokens_per_s'])} stock), peak "
                 f"{fmt(r['peak_gib'])} GiB (x{fmt(r['vs_stock_peak'])}), MFU {fmt(r['mfu'], '.1%')}, {r['attn']}, "
                 f"ckpt {r['checkpointing']}" + (f"; target {TARGETS[r['model'] + ' ' + r['config']]}"
                                                  if r["model"] + " " + r["config"] in TARGETS else "")) for r in rows]
    if name == "eval_speed":
        return [("eval", f"{r['examples']} x {r['max_new_tokens']}: {r['seconds']} s; projected 500 x 128: "
                 f"{r['projected_500x128_seconds']} s; target {TARGETS['eval_speed']}") for r in rows]
    return []


def markdown(report: dict) -> str:
    lines = [f"GPU check, {report['created']}, {'CPU dry run (tiny models: figures mean nothing)' if report['cpu_dry_run'] else 'GPU'}",
             f"command: `{report['command']}`", "",
             "| step | status | s / budget | what | figures |", "|---|---|---|---|---|"]
    for step in report["steps"]:
        figures = step_figures(step) or [("", "")]
        for i, (what, text) in enumerate(figures):
            head = (step["step"], step["status"], f"{step['seconds']:.0f} / {step['budget_s']}") if i == 0 else ("", "", "")
            lines.append("| " + " | ".join([*head, what, text.replace("|", "/")]) + " |")
        if step["status"] != "ok":
            tail = (step.get("error_tail") or "").strip().splitlines()[-1:] or [""]
            lines.append(f"| | | | error | {tail[0][:200].replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def parent_main(args) -> int:
    dry = args.cpu_dry_run
    if not dry and not cuda():
        print("error: no CUDA GPU found; use --cpu-dry-run on a machine without one", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="scion-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    deadline = time.time() + (args.max_seconds or (10_000 if dry else TOTAL_BUDGET_S))
    selected = args.steps.split(",") if args.steps else [s[0] for s in STEPS]
    steps = []
    for name, gpu_budget, dry_budget in STEPS:
        if name not in selected:
            continue
        left = deadline - time.time()
        if left < 5:
            steps.append({"step": name, "status": "skipped (no time left)", "seconds": 0, "budget_s": 0, "rows": []})
            continue
        steps.append(run_step(name, min(dry_budget if dry else gpu_budget, left), dry, work))
    from train.run import package_versions

    report = {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "command": " ".join(["python", "bench/gpu_check.py", *sys.argv[1:]]), "cpu_dry_run": dry,
              "versions": package_versions(extra=("liger-kernel", "flash-attn")), "work": str(work), "steps": steps}
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    table = markdown(report)
    (out / "gpu_check.md").write_text(table)
    print(f"wrote {out / 'gpu_check.json'} and {out / 'gpu_check.md'}\n", flush=True)
    print(table, flush=True)
    return 0 if all(s["status"] == "ok" for s in steps) else 1


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", help="folder for gpu_check.json and gpu_check.md")
    p.add_argument("--cpu-dry-run", action="store_true", help="the same steps on the CPU with tiny models (CI)")
    p.add_argument("--steps", default="", help=f"comma-separated subset of {','.join(s[0] for s in STEPS)}")
    p.add_argument("--max-seconds", type=float, help=f"overall budget (default {TOTAL_BUDGET_S} on a GPU)")
    p.add_argument("--work", help="scratch folder for stand-ins and runs (default: a new temporary folder)")
    p.add_argument("--step", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.step:
        STEP_FUNCTIONS[args.step](args.cpu_dry_run, Path(args.work))
        return 0
    if not args.out:
        p.error("--out DIR is required")
    return parent_main(args)


if __name__ == "__main__":
    sys.exit(main())
