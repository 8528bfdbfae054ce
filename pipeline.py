"""The whole path of `python train.py`: preflight everything, train, evaluate against the base, publish.

Every check runs before the run directory is created or any weights load, cheapest first, so a
typo in the eval or publish section never costs a training run. Training (train/) knows nothing
of evaluation or publishing; this is the one place that strings them together.
"""

from __future__ import annotations

import sys
from pathlib import Path

from omegaconf import DictConfig
from omegaconf.errors import MissingMandatoryValue

from eval.run import evaluate_run
from eval.run import preflight as preflight_eval
from publish.run import preflight_publish, publish_run
from report.html import write_report
from train import distributed
from train.config import FILE_RECIPES, PeftMethod, ScionConfig, to_scion_config
from train.console import quiet_console
from train.errors import Preempted, ScionError
from train.run import TrainResult, load_training_data, plan_training, run_training


def will_evaluate(config: ScionConfig) -> bool:
    """Evaluation is on by default, and needs a held-out split to compare base and fine-tune on."""
    return config.eval.enabled and bool(config.data.eval or config.data.eval_ratio > 0)


def run_pipeline(config: ScionConfig) -> TrainResult:
    # Under torchrun / accelerate launch every rank runs this; rank 0 alone prints, writes, evaluates, publishes.
    distributed.quiet_other_ranks()
    quiet_console(quantized_on_cpu=config.peft.method == PeftMethod.qlora)  # before eval's preflight imports

    # ---- Preflight: config, eval settings, the base's files, publish targets, every data row.
    if will_evaluate(config):
        preflight_eval(config)
    elif config.eval.enabled:
        print("eval: skipped: no held-out split (set data.eval or data.eval_ratio to compare with the base)", flush=True)
    plan = plan_training(config)
    if config.publish.repo_id:
        preflight_publish(config.publish, plan.base.hub_id, plan.base.architecture, Path(plan.base.local_dir))
    load_training_data(plan)

    # ---- Train: the run directory, the adapter and run.json.
    result = run_training(plan)
    if not distributed.is_main():
        return result  # training is done and the process group left; rank 0 carries on alone

    # ---- Evaluate against the base (same split, prompts and decoding), reusing the model in memory.
    if will_evaluate(config):
        evaluate_run(result.run_dir, config.eval, model=result.model, tokenizer=result.tokenizer)

    # ---- The run report, <run>/report.html, with the evaluation when there was one (publish re-renders it).
    print(f"report: {write_report(result.run_dir)}", flush=True)

    # ---- Publish, when the recipe or command line names a repo (with the eval results in the card).
    if config.publish.repo_id:
        publish_run(result.run_dir, config.publish)
    return result


def main_from_hydra(cfg: DictConfig) -> None:
    """Entry from train.py: typed config in, one-line error and exit code 2 on bad input."""
    from hydra.core.hydra_config import HydraConfig

    try:
        config = to_scion_config(cfg)
        choice = HydraConfig.get().runtime.choices.get("recipe") or "custom"
        if choice not in FILE_RECIPES:  # a saved recipe.yaml keeps the name of the run it came from
            config.recipe_name = choice
        run_pipeline(config)
    # Every rank fails alike (same checks, same data, or rank 0's error shared): one line from rank 0.
    except MissingMandatoryValue as e:
        say(f"error: missing value for {e.full_key} (set it in the recipe or as {e.full_key}=...)")
        sys.exit(2)
    except ScionError as e:
        say(f"error: {e}")
        sys.exit(e.exit_code)
    except Preempted as e:
        say(f"stopped: {e}")
        sys.exit(e.exit_code)


def say(line: str) -> None:
    if distributed.is_main():
        print(line, file=sys.stderr, flush=True)
