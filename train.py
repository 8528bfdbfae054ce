"""Fine-tune a Qwen base with LoRA/QLoRA/DoRA from a recipe.

    python train.py                               # recipe=quickstart (offline, CPU, < 3 min)
    python train.py recipe=qwen3b_lora data.train=my_chats.jsonl
    python train.py recipe=qwen3b_qlora --cfg job # print the resolved config
    python train.py --help                        # list recipes and config groups

This file is only the Hydra entry point; the work happens in the `train/` package
(train/run.py). `import train` below resolves to that package, not to this script: Python
prefers a package over a module of the same name on the same path entry.
"""

import hydra
from omegaconf import DictConfig

from train.config import register_configs
from train.run import main_from_hydra

register_configs()


@hydra.main(version_base="1.3", config_path="configs", config_name="config")
def main(cfg: DictConfig) -> None:
    main_from_hydra(cfg)


if __name__ == "__main__":
    main()
