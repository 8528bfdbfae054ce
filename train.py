"""Fine-tune a Qwen base with LoRA/QLoRA/DoRA from a recipe.

    python train.py                               # recipe=quickstart (offline, CPU, < 3 min)
    python train.py recipe=qwen3b_lora data.train=my_chats.jsonl
    python train.py recipe=qwen3b_qlora --cfg job # print the resolved config
    python train.py --help                        # list recipes and config groups
    python train.py recipe=runs/quickstart/<time>/recipe.yaml   # re-run a saved run

This file is only the Hydra entry point: pipeline.py runs preflight, training (the `train/`
package), evaluation against the base (`eval/`) and publishing (`publish/`). `import train` below
resolves to that package, not to this script: Python prefers a package over a module of the same
name on the same path entry.
"""

import sys

import hydra
from omegaconf import DictConfig

from pipeline import main_from_hydra
from train.config import fail, register_configs, register_recipe_file
from train.config_errors import check_command_line
from train.errors import ScionError

try:
    register_configs()  # recipes/ and the team folders of $SCION_RECIPES
except ScionError as e:  # a missing team folder, or one recipe name in two files
    fail(str(e))
sys.argv[1:] = register_recipe_file(sys.argv[1:])
check_command_line(sys.argv[1:])  # a bad key or value: one line and exit 2, before Hydra's report


@hydra.main(version_base="1.3", config_path="configs", config_name="config")
def main(cfg: DictConfig) -> None:
    main_from_hydra(cfg)


if __name__ == "__main__":
    main()
