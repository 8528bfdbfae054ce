"""Data mixtures: several sources in their own formats, weights, seeded composition, duplicates
across sources, per-source errors, resume refusal, a Hub dataset source, per-source eval and the card."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from tests.conftest import REPO_ROOT, run_script, write_jsonl
from train.config import DataConfig, DataFormat
from train.errors import ScionError
from train.mixture import parse_sources, prepare_data, report_lines, split_rows, weighted_indices


def chat(i: int, system: bool = False) -> dict:
    messages = [{"role": "user", "content": f"Question number {i}?"}, {"role": "assistant", "content": f"Answer {i}."}]
    return {"messages": ([{"role": "system", "content": "Be brief."}] if system else []) + messages}


def sharegpt(i: int) -> dict:
    return {"conversations": [{"from": "human", "value": f"Question number {i}?"}, {"from": "gpt", "value": f"Answer {i}."}]}


@pytest.fixture
def two_files(tmp_path):
    """chats.jsonl (10 rows, chat format) and sharegpt.jsonl (8 rows, ShareGPT; its row 1 is chats' row 1)."""
    chats = write_jsonl(tmp_path / "chats.jsonl", [chat(i) for i in range(10)])
    share = write_jsonl(tmp_path / "sharegpt.jsonl", [sharegpt(i) for i in (1, *range(100, 107))])
    return chats, share


def mixture(train, **kwargs) -> DataConfig:
    return DataConfig(train=train, max_length=64, **kwargs)


# ---- the config value ----------------------------------------------------------------------------
def test_one_source_a_list_and_mappings_are_accepted():
    one = parse_sources("a.jsonl", "data.train", "train", DataFormat.auto)
    assert [(s.path, s.key, s.weight) for s in one] == [("a.jsonl", "data.train", 1.0)]
    many = parse_sources(["a.jsonl", {"path": "org/ds", "split": "dev", "revision": "v1", "weight": 0.5, "max_rows": 7,
                                      "format": "instruction"}], "data.train", "train", DataFormat.auto)
    assert [(s.path, s.key) for s in many] == [("a.jsonl", "data.train[0]"), ("org/ds", "data.train[1]")]
    assert (many[1].split, many[1].revision, many[1].weight, many[1].max_rows, many[1].format) == (
        "dev", "v1", 0.5, 7, DataFormat.instruction)


@pytest.mark.parametrize("value, message", [
    ([], "data.train: the list is empty"),
    ([{"path": "a.jsonl", "wieght": 2}], "data.train[0]: unknown key 'wieght'"),
    (["a.jsonl", {"path": "b.jsonl", "weight": 0}], "data.train[1].weight: expected a number above 0"),
    (["a.jsonl", {"path": "b.jsonl", "weight": "two"}], "data.train[1].weight: expected a number above 0"),
    ([{"path": "a.jsonl", "max_rows": 0}], "data.train[0].max_rows: expected a whole number"),
    ([{"path": "a.jsonl", "format": "alpaca"}], "data.train[0].format: 'alpaca' is not one of"),
    ([{"weight": 2}], "data.train[0].path: missing"),
    (["a.jsonl", "a.jsonl"], "data.train[1]: a.jsonl is listed twice"),
    (3, "data.train: expected a file or Hub dataset id"),
])
def test_bad_sources_are_one_line_errors_naming_the_key(value, message):
    with pytest.raises(ScionError) as raised:
        parse_sources(value, "data.train", "train", DataFormat.auto)
    assert str(raised.value).startswith(message) and "\n" not in str(raised.value)


def test_train_py_takes_a_list_on_the_command_line_and_names_a_bad_key(tmp_path):
    result = run_script("train.py", "data.train=[a.jsonl,{path:b.jsonl,wieght:2}]", f"trainer.output_dir={tmp_path}/run",
                        cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: data.train[1]: unknown key 'wieght'")
    assert not (tmp_path / "run").exists()


# ---- weights and determinism --------------------------------------------------------------------
def test_weight_repeats_whole_times_and_samples_the_fraction():
    import random

    assert Counter(weighted_indices(4, 2.0, random.Random(0))) == {0: 2, 1: 2, 2: 2, 3: 2}
    half = weighted_indices(10, 0.5, random.Random(0))
    assert len(half) == 5 and len(set(half)) == 5
    once_and_a_half = Counter(weighted_indices(10, 1.5, random.Random(0)))
    assert sorted(once_and_a_half.values()) == [1] * 5 + [2] * 5


def test_mixture_counts_and_shares_follow_the_weights(two_files, qwen2_5_tokenizer):
    chats, share = two_files
    data = prepare_data(mixture([{"path": str(chats), "weight": 2}, {"path": str(share), "weight": 0.5}]), qwen2_5_tokenizer)
    # 10 rows x 2 and 8 rows x 0.5: 20 + 4 examples; shares 20/24 and 4/24.
    assert len(data.train) == 24
    train = [s for s in data.sources if s["role"] == "train"]
    assert [(s["name"], s["format"], s["examples"], s["mixture_examples"]) for s in train] == [
        ("chats.jsonl", "messages", 10, 20), ("sharegpt.jsonl", "messages", 8, 4)]
    assert [s["share"] for s in train] == [round(20 / 24, 4), round(4 / 24, 4)]
    assert data.stats["train"].examples == 24
    report = "\n".join(report_lines(data))
    assert "data mixture (train):" in report and "83.3%" in report and "16.7%" in report


def test_the_mixture_is_the_same_for_the_same_seed(two_files, qwen2_5_tokenizer):
    chats, share = two_files
    config = mixture([str(chats), {"path": str(share), "weight": 0.5}], eval_ratio=0.2)

    def composed(seed):
        data = prepare_data(config, qwen2_5_tokenizer, seed=seed)
        return sorted(map(tuple, data.train["input_ids"])), sorted(map(tuple, data.eval["input_ids"]))

    first = composed(42)
    assert composed(42) == first
    assert any(composed(seed) != first for seed in (1, 2, 3))  # the sample and the held-out rows follow the seed


def test_eval_ratio_holds_out_rows_of_every_source(two_files):
    chats, share = two_files
    rows = split_rows(mixture([str(chats), str(share)], eval_ratio=0.25), seed=42)
    # round(10 x 0.25) = 2 (banker's rounding of 2.5) and 8 x 0.25 = 2 rows held out of each.
    assert [(name, len(held)) for name, _, held in rows.eval_parts()] == [("chats.jsonl", 2), ("sharegpt.jsonl", 2)]
    assert [len(part.train) for part in rows.train] == [8, 6]


def test_max_rows_keeps_the_first_rows(two_files, qwen2_5_tokenizer):
    chats, share = two_files
    data = prepare_data(mixture([{"path": str(chats), "max_rows": 3}, str(share)]), qwen2_5_tokenizer)
    assert len(data.train) == 3 + 8
    assert qwen2_5_tokenizer.decode(data.train[2]["input_ids"]).count("Question number 2?") == 1


# ---- duplicates and errors ----------------------------------------------------------------------
def test_duplicates_across_sources_and_formats_are_counted(two_files, qwen2_5_tokenizer):
    chats, share = two_files
    data = prepare_data(mixture([str(chats), str(share)]), qwen2_5_tokenizer)
    assert data.stats["train"].duplicates == 1 and data.cross_source_duplicates == 1
    report = "\n".join(report_lines(data))
    assert "warning: data[train]: 1 duplicate examples" in report
    assert f"warning: data[train]: 1 of the duplicates repeat another source ({share}:1 repeats {chats}:2)" in report


def test_bad_rows_of_several_sources_come_in_one_report(tmp_path, qwen2_5_tokenizer):
    chats = write_jsonl(tmp_path / "chats.jsonl", [chat(0), {"messages": [{"role": "user", "content": "no answer"}]}])
    share = write_jsonl(tmp_path / "sharegpt.jsonl", [sharegpt(1), sharegpt(2),
                                                      {"conversations": [{"from": "robot", "value": "x"}]}])
    with pytest.raises(ScionError) as raised:
        prepare_data(mixture([str(chats), str(share)]), qwen2_5_tokenizer)
    message = str(raised.value)
    assert "\n" not in message and message.startswith("2 data sources have problems")
    assert f"data.train[0] (chats.jsonl): {chats}:2: no assistant turn" in message
    assert f"data.train[1] (sharegpt.jsonl): {share}:3: message 0 has unknown role 'robot'" in message


def test_a_missing_source_and_a_bad_one_are_reported_together(tmp_path, qwen2_5_tokenizer):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [}\n')
    with pytest.raises(ScionError) as raised:
        prepare_data(mixture([str(tmp_path / "nope.jsonl"), str(bad)]), qwen2_5_tokenizer)
    assert "data.train[0]: data file not found" in str(raised.value) and f"{bad}:1: invalid JSON" in str(raised.value)


def test_a_hub_recipe_names_the_local_file_to_supply(two_files, monkeypatch):
    import train.mixture

    chats, _ = two_files
    monkeypatch.setattr(train.mixture, "HUB_RECIPE", ["me/model"])
    with pytest.raises(ScionError) as raised:
        split_rows(mixture([str(chats), {"path": "/home/alice/sharegpt.jsonl", "weight": 2}, "org/public"]))
    message = str(raised.value)
    # (org/public cannot be reached here: its error comes in the same report)
    assert "data.train[1]: the recipe from hub:me/model trains on the local file sharegpt.jsonl" in message
    assert ("\"data.train=['<your copy of chats.jsonl>',{path:'<your copy of sharegpt.jsonl>',weight:2.0},"
            "{path:'org/public',split:train}]\"") in message


# ---- resuming -------------------------------------------------------------------------------------
def test_resume_refuses_a_changed_mixture(two_files, qwen2_5_tokenizer, tmp_path):
    from types import SimpleNamespace

    from tests.test_reliability import STAGING
    from train.checkpoints import check_resume_config, commit_checkpoint
    from train.config import ScionConfig
    from train.run import resume_fingerprint

    chats, share = two_files
    base = SimpleNamespace(hub_id="Qwen/Qwen2.5-0.5B-Instruct", name_or_path="/snap", commit_sha="a" * 40, revision=None)
    config = ScionConfig()

    def fingerprint(train):
        config.data = mixture(train)
        return resume_fingerprint(config, base, prepare_data(config.data, qwen2_5_tokenizer))

    saved = fingerprint([str(chats), {"path": str(share), "weight": 2}])
    renamed = tmp_path / "renamed.jsonl"
    renamed.write_bytes(share.read_bytes())
    staged = tmp_path / STAGING / "checkpoint-1"
    staged.mkdir(parents=True)
    commit_checkpoint(staged, tmp_path / "checkpoint-1", {"step": 1, "resume_fingerprint": saved})
    check_resume_config(tmp_path / "checkpoint-1", fingerprint([str(chats), {"path": str(share), "weight": 2}]), False)
    for changed in ([str(chats), str(share)],  # weight
                    [str(chats), {"path": str(share), "weight": 2, "max_rows": 4}],
                    [str(chats), {"path": str(renamed), "weight": 2}],  # the same rows under another name
                    [str(chats)]):  # a source left out
        with pytest.raises(ScionError, match=r"config changed since checkpoint-1 \(data.sources: "):
            check_resume_config(tmp_path / "checkpoint-1", fingerprint(changed), allow_change=False)


# ---- a Hub dataset beside two local files: train, evaluate per source, card -----------------------
@pytest.mark.slow
def test_two_local_formats_and_a_hub_dataset_train_evaluate_and_reach_the_card(two_files, tmp_path, hub_server, monkeypatch):
    import datasets
    import jsonschema
    import yaml
    from huggingface_hub import HfApi

    from publish.card import build_card
    from train.data import file_sha256
    from publish.license import License
    from train.config import DerivativeKind, EvalConfig, ModelConfig, PeftConfig, Precision, ScionConfig, TrainerConfig
    from pipeline import run_pipeline

    chats, share = two_files
    # `datasets` copies the endpoint when first imported, which earlier tests may have done.
    monkeypatch.setattr(datasets.config, "HF_ENDPOINT", hub_server.url)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    api = HfApi()
    api.create_repo("scion-test/pc", repo_type="dataset")
    rows = "".join(json.dumps({"prompt": f"Say {w}", "completion": w}) + "\n" for w in ("red", "blue", "green", "gold", "pink"))
    api.upload_file(path_or_fileobj=rows.encode(), path_in_repo="data/train.jsonl", repo_id="scion-test/pc", repo_type="dataset")
    commit = api.dataset_info("scion-test/pc").sha
    config = ScionConfig(
        model=ModelConfig(name_or_path="tiny:qwen2"),
        peft=PeftConfig(r=4, alpha=8, dropout=0.0),
        data=DataConfig(train=[str(chats), str(share), {"path": "scion-test/pc", "revision": commit}], eval_ratio=0.4,
                        max_length=64),
        trainer=TrainerConfig(output_dir=str(tmp_path / "run"), max_steps=2, batch_size=4, gradient_accumulation_steps=1,
                              precision=Precision.fp32, save_steps=100),
        eval=EvalConfig(max_new_tokens=4, batch_size=8, num_samples=1),
        recipe_name="mix",
    )
    result = run_pipeline(config)  # train, then evaluate against the base
    sources = result.run["data"]["sources"]
    hub = next(s for s in sources if s["source"] == "scion-test/pc" and s["role"] == "train")
    assert (hub["commit"], hub["format"], hub["rows"]) == (commit, "prompt_completion", 5)

    results = json.loads((result.run_dir / "eval" / "results.json").read_text())
    schema = json.loads((REPO_ROOT / "eval" / "results.schema.json").read_text())
    jsonschema.Draft202012Validator(schema).validate(results)
    assert list(results["by_source"]) == ["chats.jsonl", "sharegpt.jsonl", "scion-test/pc"]
    assert [s["examples"] for s in results["data"]["sources"]] == [4, 3, 2]  # 40% of 10, 8 and 5 rows
    assert results["data"]["matches_training"] is True

    recipe = yaml.safe_load((result.run_dir / "recipe.yaml").read_text())
    card = build_card(DerivativeKind.adapter, "me/mix", "Qwen/Qwen2.5-0.5B-Instruct", result.run, recipe,
                      License("apache-2.0"), results)
    assert card.data.datasets == ["scion-test/pc"]
    text = str(card)
    assert f"revision `{commit}`" in text
    assert f"`chats.jsonl` (train, 10 rows, sha256 `{file_sha256(chats)}`" in text
    assert str(tmp_path) not in text.split("The original command")[0]  # no local paths in the lineage
    assert "local files that are not published here: `chats.jsonl`" in text


def test_the_total_loss_weights_each_source_by_its_tokens():
    from eval.run import combine_losses
    from eval.scoring import LossResult

    total = combine_losses([LossResult(2.0, None, tokens=30, examples=3), LossResult(1.0, None, tokens=10, examples=2)])
    assert (total.loss, total.tokens, total.examples) == (pytest.approx(1.75), 40, 5)


def test_the_shipped_mixture_recipe_reads_two_formats_with_a_per_source_eval_split():
    from train.config import compose_config, register_configs, to_scion_config

    register_configs()
    config = to_scion_config(compose_config(["recipe=quickstart_mixture"]))
    rows = split_rows(config.data, seed=config.trainer.seed)
    assert [(part.name, part.format.value, part.spec.weight) for part in rows.train] == [
        ("train.jsonl", "messages", 1.0), ("sharegpt.jsonl", "messages", 2.0)]
    # 10% of 320 and of 29 rows held out: 32 and 3.
    assert [(name, len(held)) for name, _, held in rows.eval_parts()] == [("train.jsonl", 32), ("sharegpt.jsonl", 3)]


def test_train_py_from_a_hub_recipe_names_the_local_source_to_supply(hub_server, tmp_path):
    from huggingface_hub import HfApi

    recipe = {"data": {"train": [str(REPO_ROOT / "data/quickstart/train.jsonl"),
                                 {"path": "/home/alice/private/support.jsonl", "weight": 2}], "eval": None}}
    api = HfApi()
    api.create_repo("me/mix")
    api.upload_file(path_or_fileobj=json.dumps(recipe).encode(), path_in_repo="recipe.yaml", repo_id="me/mix")
    result = run_script("train.py", "recipe=hub:me/mix", f"trainer.output_dir={tmp_path}/run", cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1] == (
        "error: data.train[1]: the recipe from hub:me/mix trains on the local file support.jsonl, which is not published "
        "and not on this machine; supply it with \"data.train=['<your copy of train.jsonl>',"
        "{path:'<your copy of support.jsonl>',weight:2.0}]\"")
    assert not (tmp_path / "run").exists()
