"""Standard benchmarks through lm-evaluation-harness (`lm-eval`), for base and fine-tune.

`eval.harness.tasks` names lm-eval tasks (groups and tags work too); `eval.harness.include_path`
adds a folder of task YAMLs, e.g. local tasks over local data. The harness runs on the model
already in memory (lm-eval's HFLM wrapper), once with the adapter disabled and once with it on.

Before any model is loaded, `prepare` checks every name (an unknown one is an error naming it)
and loads each task's data: a task whose data cannot be had (offline, not in the local cache) is
skipped with a one-line reason, recorded in results.json. lm-eval is imported only when tasks are
configured, so it stays an optional dependency.
"""

from __future__ import annotations

import difflib
import logging
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from train.config import EvalConfig, HarnessConfig
from train.errors import ScionError

INSTALL_HINT = "pip install 'lm-eval==0.4.13'"


@dataclass
class HarnessPlan:
    manager: Any  # lm_eval.tasks.TaskManager
    tasks: list[str]  # the tasks whose data loaded
    skipped: list[dict[str, str]] = field(default_factory=list)  # {"task", "reason"}


@contextmanager
def quiet_lm_eval() -> Iterator[None]:
    """lm-eval logs every step at INFO/WARNING; our own lines say what happens."""
    logger = logging.getLogger("lm_eval")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _one_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}".rstrip(": ")


def task_manager(cfg: HarnessConfig):
    """lm-eval's task index; with an include_path, the built-in index (about 15,000 YAMLs, ~8 s to
    scan) is only built when a requested name is not among the local tasks."""
    from lm_eval.tasks import TaskManager

    if cfg.include_path:
        include = str(Path(cfg.include_path).expanduser().resolve())
        local = TaskManager(include_path=include, include_defaults=False)
        if all(name in local.all_tasks for name in cfg.tasks):
            return local
        return TaskManager(include_path=include)
    return TaskManager()


def prepare(cfg: HarnessConfig) -> HarnessPlan | None:
    """Check the task names and load each task's data; None when no task is configured."""
    if not cfg.tasks:
        return None
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise ScionError(f"eval.harness.tasks: running {cfg.tasks} needs the lm-eval package ({INSTALL_HINT})") from None
    with quiet_lm_eval():
        manager = task_manager(cfg)
        for name in cfg.tasks:
            if name not in manager.all_tasks:
                close = difflib.get_close_matches(name, manager.all_tasks, n=3)
                hint = f"; did you mean {', '.join(close)}?" if close else ""
                where = f"lm-eval's tasks or {cfg.include_path}" if cfg.include_path else "lm-eval's tasks"
                raise ScionError(f"eval.harness.tasks: unknown task {name!r} (not in {where}){hint}")
        plan = HarnessPlan(manager=manager, tasks=[])
        for name in cfg.tasks:
            try:
                manager.load([name])  # builds the task, which loads (or downloads) its data
            except Exception as e:  # offline, not cached, gated...: skip this task, keep the others
                reason = f"its data is not available locally ({_one_line(e)})"
                print(f"harness: skipping {name}: {reason}", flush=True)
                plan.skipped.append({"task": name, "reason": reason})
            else:
                plan.tasks.append(name)
    return plan


def flatten_results(results: dict[str, Any]) -> dict[str, dict[str, float]]:
    """lm-eval's {"task": {"acc,none": 0.5, "acc_stderr,none": 0.1, ...}} as {"task": {"acc": 0.5, "acc_stderr": 0.1}}."""
    flat: dict[str, dict[str, float]] = {}
    for task, values in results.items():
        metrics = {}
        for key, value in values.items():
            if "," not in key or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue  # alias, name, sample_len, "N/A" stderrs
            metric, _, filter_name = key.partition(",")
            metrics[metric if filter_name == "none" else f"{metric}/{filter_name}"] = float(value)
        flat[task] = metrics
    return flat


def run(plan: HarnessPlan, model, tokenizer, cfg: EvalConfig) -> dict[str, dict[str, float]]:
    """Every runnable task on `model` (as it is: the caller enables or disables the adapter)."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    with quiet_lm_eval():
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=cfg.batch_size)
        output = simple_evaluate(
            model=lm,
            tasks=plan.tasks,
            task_manager=plan.manager,
            num_fewshot=cfg.harness.num_fewshot,
            limit=cfg.harness.limit,
            bootstrap_iters=1000,  # stderr of non-mean metrics; lm-eval's 100,000 is slow
            log_samples=False,
            random_seed=cfg.seed,
            numpy_random_seed=cfg.seed,
            torch_random_seed=cfg.seed,
            fewshot_random_seed=cfg.seed,
        )
    return flatten_results(output["results"])


def settings(cfg: HarnessConfig) -> dict[str, Any]:
    from importlib import metadata

    return {
        "lm_eval_version": metadata.version("lm_eval"),
        "num_fewshot": cfg.num_fewshot,
        "limit": cfg.limit,
        "include_path": cfg.include_path,
        "apply_chat_template": False,
    }
