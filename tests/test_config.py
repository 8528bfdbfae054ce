"""Config composition: every recipe validates; typos, wrong types and missing values fail early."""

from __future__ import annotations

import pytest
from hydra.errors import ConfigCompositionException, MissingConfigException
from omegaconf import OmegaConf
from omegaconf.errors import MissingMandatoryValue

from tests.conftest import REPO_ROOT, run_script
from train.arch import qwen3_5
from train.config import ALL_LINEAR, PeftMethod, ScionConfig, compose_config, list_recipes, register_configs, to_scion_config

EXPECTED_RECIPES = {
    "quickstart": ("tiny:qwen2", PeftMethod.lora),
    "quickstart_mixture": ("tiny:qwen2", PeftMethod.lora),
    "qwen0.5b_lora": ("Qwen/Qwen2.5-0.5B-Instruct", PeftMethod.lora),
    "qwen1.5b_lora": ("Qwen/Qwen2.5-1.5B-Instruct", PeftMethod.lora),
    "qwen3b_lora": ("Qwen/Qwen2.5-3B-Instruct", PeftMethod.lora),
    "qwen3b_qlora": ("Qwen/Qwen2.5-3B-Instruct", PeftMethod.qlora),
    "qwen3_1.7b_lora": ("Qwen/Qwen3-1.7B", PeftMethod.lora),
    "qwen3_4b_qlora": ("Qwen/Qwen3-4B", PeftMethod.qlora),
    "qwen3_4b_2507_lora": ("Qwen/Qwen3-4B-Instruct-2507", PeftMethod.lora),
    "qwen3_4b_thinking_lora": ("Qwen/Qwen3-4B-Thinking-2507", PeftMethod.lora),
    "qwen3.5_0.8b_lora": ("Qwen/Qwen3.5-0.8B", PeftMethod.lora),
    "qwen3.5_2b_lora": ("Qwen/Qwen3.5-2B", PeftMethod.lora),
    "qwen3.5_4b_qlora": ("Qwen/Qwen3.5-4B", PeftMethod.qlora),
}


def compose(*overrides: str):
    register_configs()
    return compose_config(list(overrides))


def test_shipped_recipes_are_the_expected_ones():
    assert set(list_recipes()) == set(EXPECTED_RECIPES)


@pytest.mark.parametrize("recipe", sorted(EXPECTED_RECIPES))
def test_every_recipe_composes_and_validates(recipe):
    config = to_scion_config(compose(f"recipe={recipe}"))
    assert isinstance(config, ScionConfig)
    model_id, method = EXPECTED_RECIPES[recipe]
    assert config.model.name_or_path == model_id
    assert config.peft.method == method
    # Qwen3.5: every linear projection of both layer kinds (train/arch/qwen3_5.py), never the vision tower.
    expected_targets = list(qwen3_5.LORA_TARGETS) if recipe.startswith("qwen3.5") else ALL_LINEAR
    assert config.peft.target_modules == expected_targets
    assert config.trainer.lr_scheduler == "cosine" and config.trainer.warmup_ratio > 0
    assert config.model.trust_remote_code is False
    if not recipe.startswith("quickstart"):
        assert config.trainer.precision.value == "bf16"


@pytest.mark.parametrize("recipe", sorted(EXPECTED_RECIPES))
def test_recipe_header_documents_command_hardware_and_purpose(recipe):
    header = (REPO_ROOT / "recipes" / f"{recipe}.yaml").read_text().split("defaults:")[0]
    assert "python train.py" in header and f"recipe={recipe}" in header
    assert "Hardware:" in header and "Trains:" in header


def test_recipes_only_override_and_never_redefine_the_schema():
    schema_keys = set(OmegaConf.structured(ScionConfig).keys())
    for recipe in list_recipes():
        node = OmegaConf.load(REPO_ROOT / "recipes" / f"{recipe}.yaml")
        assert set(node.keys()) - {"defaults"} <= schema_keys, recipe


def test_default_is_the_quickstart():
    config = to_scion_config(compose())
    assert config.model.name_or_path == "tiny:qwen2"
    assert config.data.train.endswith("data/quickstart/train.jsonl")


def test_command_line_overrides_win_over_the_recipe():
    config = to_scion_config(compose("recipe=qwen3b_lora", "trainer.learning_rate=5e-5", "peft.r=8"))
    assert config.trainer.learning_rate == 5e-5 and config.peft.r == 8


def test_unknown_recipe_fails_and_lists_the_available_ones():
    with pytest.raises(MissingConfigException) as err:
        compose("recipe=nope")
    assert "qwen3b_lora" in str(err.value)


def test_typo_in_a_key_names_the_key_path():
    with pytest.raises(ConfigCompositionException) as err:
        compose("trainer.lerning_rate=1e-4")
    assert "trainer.lerning_rate" in str(err.value.__cause__)


def test_wrong_type_names_the_key_path():
    with pytest.raises(ConfigCompositionException) as err:
        compose("trainer.batch_size=eight")
    assert "trainer.batch_size" in str(err.value.__cause__)


def test_bad_enum_value_names_the_key_path():
    with pytest.raises(ConfigCompositionException) as err:
        compose("peft.method=lora2")
    assert "peft.method" in str(err.value.__cause__)


@pytest.mark.parametrize("body,key", [("trainer:\n  learning_rat: 1.0e-4\n", "trainer.learning_rat"),
                                      ("peft:\n  r: sixteen\n", "peft.r")])
def test_typo_inside_a_recipe_file_fails_at_compose_time(tmp_path, body, key):
    """A recipe file goes through Scion's registration and Hydra's composition onto the schema, so its
    keys and types are checked like the command line's, before anything runs."""
    from train.config import register_recipe_file

    recipe = tmp_path / "team.yaml"
    recipe.write_text("defaults:\n  - /recipe/quickstart\n  - _self_\n" + body)
    register_configs()
    with pytest.raises(ConfigCompositionException) as err:
        compose_config(register_recipe_file([f"recipe={recipe}"]))
    assert key in str(err.value.__cause__ or err.value)


def test_missing_value_is_reported_by_key():
    with pytest.raises(MissingMandatoryValue) as err:
        to_scion_config(compose("model.name_or_path=???"))
    assert "model.name_or_path" in str(err.value)


# ---- the same through the real command line: one line naming the key, exit 2 -------------------
def one_error_line(result) -> str:
    """The whole stderr of a refused command line, which must be exactly one `error:` line."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_cli_unknown_recipe(tmp_path):
    line = one_error_line(run_script("train.py", "recipe=nope", cwd=tmp_path))
    assert line.startswith("error: recipe=nope: no such recipe; available: ")
    assert set(line.split("available: ")[1].split(", ")) == set(EXPECTED_RECIPES)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("args, expected", [
    (["trainer.lerning_rate=1"], "error: trainer.lerning_rate: unknown key (did you mean trainer.learning_rate?)"),
    (["trainer.batch_size=abc"], "error: trainer.batch_size: value 'abc' of type 'str' could not be converted to Integer"),
    (["peft.method=lora2"], "error: peft.method: invalid value 'lora2', expected one of [lora, qlora, dora]"),
    # Hydra's own hint for an unknown key is to append it with `+`; the schema refuses that too.
    (["+trainer.lr=1"], "error: trainer.lr: unknown key"),
    (["+wandb_project=x"], "error: wandb_project: unknown key"),
])
def test_cli_typo_and_wrong_type(tmp_path, args, expected):
    assert one_error_line(run_script("train.py", *args, cwd=tmp_path)) == expected
    assert not (tmp_path / "runs").exists()


def test_cli_typo_inside_a_recipe_file_names_the_file(tmp_path):
    recipe = tmp_path / "team.yaml"
    recipe.write_text("defaults:\n  - /recipe/quickstart\n  - _self_\ntrainer:\n  epoch: 2\n")
    line = one_error_line(run_script("train.py", f"recipe={recipe}", cwd=tmp_path))
    assert line == f"error: recipe {recipe}: trainer.epoch: unknown key (did you mean trainer.epochs?)"


def test_cli_missing_value_is_one_line(tmp_path):
    result = run_script("train.py", "data.train=???", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == "error: missing value for data.train (set it in the recipe or as data.train=...)"


def test_cli_help_lists_recipes_and_cfg_job_prints_the_resolved_config():
    help_text = run_script("train.py", "--help").stdout
    for recipe in EXPECTED_RECIPES:
        assert recipe in help_text
    job = run_script("train.py", "recipe=qwen3b_qlora", "--cfg", "job")
    assert job.returncode == 0
    printed = OmegaConf.create(job.stdout)
    assert printed.model.name_or_path == "Qwen/Qwen2.5-3B-Instruct" and printed.peft.method == "qlora"


# ---- team recipes: $SCION_RECIPES -------------------------------------------------------------
def team_recipe(folder, name, lr):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(f"defaults:\n  - /recipe/quickstart\n  - _self_\ntrainer:\n  learning_rate: {lr}\n")
    return path


def test_team_recipes_from_several_folders_are_usable_by_name_and_listed_in_help(tmp_path):
    import os

    team_recipe(tmp_path / "team", "support_bot", 1.5e-4)
    team_recipe(tmp_path / "mine", "orders", 2.5e-4)
    env = {"SCION_RECIPES": os.pathsep.join([str(tmp_path / "team"), str(tmp_path / "mine")])}
    help_text = run_script("train.py", "--help", env=env).stdout
    listed = help_text.split("recipe: ")[1].split("\n")[0].split(", ")
    assert set(listed) == set(EXPECTED_RECIPES) | {"support_bot", "orders"}
    job = run_script("train.py", "recipe=orders", "--cfg", "job", env=env, cwd=tmp_path)
    assert job.returncode == 0, job.stderr
    printed = OmegaConf.create(job.stdout)
    assert printed.trainer.learning_rate == 2.5e-4 and printed.model.name_or_path == "tiny:qwen2"


def test_team_recipe_name_clash_names_both_files(tmp_path, monkeypatch):
    import os

    from train.config import recipe_files
    from train.errors import ScionError

    first = team_recipe(tmp_path / "a", "orders", 1e-4)
    second = team_recipe(tmp_path / "b", "orders", 2e-4)
    monkeypatch.setenv("SCION_RECIPES", os.pathsep.join([str(tmp_path / "a"), str(tmp_path / "b")]))
    with pytest.raises(ScionError, match=f"recipe orders is defined twice: {first} and {second}"):
        recipe_files()
    monkeypatch.setenv("SCION_RECIPES", str(tmp_path / "nope"))
    with pytest.raises(ScionError, match="SCION_RECIPES: recipe folder not found: "):
        recipe_files()
    # A team recipe named like a built-in one: through the command line, one line and exit 2.
    clash = team_recipe(tmp_path / "c", "quickstart", 1e-4)
    line = one_error_line(run_script("train.py", "--cfg", "job", env={"SCION_RECIPES": str(tmp_path / "c")}, cwd=tmp_path))
    assert line == f"error: recipe quickstart is defined twice: {REPO_ROOT / 'recipes' / 'quickstart.yaml'} and {clash}; rename one"
