"""Run one training with an injected fault, as a separate process, for the reliability tests.

    python tests/helpers/fault_run.py CONFIG.yaml FAULT STEP

FAULT is one of:
  kill-after-save   SIGKILL right after checkpoint STEP is complete (a hard stop between steps)
  kill-during-save  SIGKILL in the middle of writing checkpoint STEP (adapter and optimizer state
                    written, RNG and trainer state not yet)
The faults are patched in here, so the production code carries no test hooks.
"""

import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from omegaconf import OmegaConf  # noqa: E402

import train.trainer as scion_trainer  # noqa: E402
from train.config import ScionConfig  # noqa: E402
from train.run import train  # noqa: E402


def main() -> None:
    config_path, fault, step = sys.argv[1], sys.argv[2], int(sys.argv[3])
    config = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ScionConfig), OmegaConf.load(config_path)))

    if fault == "kill-after-save":
        commit = scion_trainer.commit_checkpoint

        def commit_then_die(staged, final, marker):
            commit(staged, final, marker)
            if marker["step"] == step:
                os.kill(os.getpid(), signal.SIGKILL)

        scion_trainer.commit_checkpoint = commit_then_die
    elif fault == "kill-during-save":
        parent = scion_trainer.SFTTrainer
        save_optimizer = parent._save_optimizer_and_scheduler

        def save_then_die(self, output_dir):
            save_optimizer(self, output_dir)
            if self.state.global_step == step:
                os.kill(os.getpid(), signal.SIGKILL)

        parent._save_optimizer_and_scheduler = save_then_die
    else:
        raise SystemExit(f"unknown fault {fault}")
    train(config)


if __name__ == "__main__":
    main()
