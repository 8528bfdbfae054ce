"""Publishing to a Hub-compatible server on 127.0.0.1 with the real huggingface_hub client."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import REPO_ROOT, run_script
from train.config import DataConfig, DerivativeKind, ModelConfig, PeftConfig, Precision, PublishConfig, ScionConfig, TrainerConfig
from train.errors import ScionError

BASE_ID = "scion-test/tiny-qwen2"
QUESTION = [{"role": "user", "content": "What is the capital of Peru?"}]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_qwen2_dir):
    """One tiny run whose base is a plain local directory with a declared Hub id."""
    from train.run import train

    out = tmp_path_factory.mktemp("publish") / "run"
    config = ScionConfig(
        model=ModelConfig(name_or_path=str(tiny_qwen2_dir), hub_id=BASE_ID),
        peft=PeftConfig(r=4, alpha=8, dropout=0.0),
        data=DataConfig(train=str(REPO_ROOT / "data/quickstart/train.jsonl"), max_length=96),
        trainer=TrainerConfig(output_dir=str(out), max_steps=3, batch_size=4, gradient_accumulation_steps=1,
                              learning_rate=2e-2, precision=Precision.fp32, save_steps=100),
        recipe_name="test",
    )
    result = train(config)
    # Something a careless publisher would upload: it must never leave the machine.
    (out / "adapter" / "training_args.bin").write_bytes(b"pickle")
    return result


def fresh_run(trained, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(trained.run_dir, copy, ignore=shutil.ignore_patterns("publish", "checkpoints"))
    return copy


def reference_logits(trained, tiny_qwen2_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    ids = trained.tokenizer.apply_chat_template(QUESTION, add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
    base = AutoModelForCausalLM.from_pretrained(tiny_qwen2_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, trained.run_dir / "adapter").eval()
    with torch.no_grad():
        return ids, model(input_ids=ids).logits.float()


def assert_close_logits(logits, reference, rel: float):
    """Max error relative to the logit scale, and the same greedy token at nearly every position."""
    logits = logits.float()
    scale = reference.abs().max()
    assert (logits - reference).abs().max() <= rel * scale, float((logits - reference).abs().max() / scale)
    agree = (logits.argmax(-1) == reference.argmax(-1)).float().mean()
    assert agree >= 0.9, float(agree)


def card_metadata(path: Path) -> dict:
    return yaml.safe_load(path.read_text().split("---", 2)[1])


def test_all_three_kinds_publish_with_lineage_and_load_back(hub_server, trained, tiny_qwen2_dir, tmp_path):
    from huggingface_hub import HfApi, snapshot_download
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from publish.run import publish_run

    run_dir = fresh_run(trained, tmp_path)
    publish_run(run_dir, PublishConfig(repo_id="me/quick", kinds=[DerivativeKind.adapter, DerivativeKind.merged, DerivativeKind.gguf]))
    api = HfApi()
    ids, reference = reference_logits(trained, tiny_qwen2_dir)

    # adapter
    adapter = Path(snapshot_download("me/quick"))
    assert not (adapter / "training_args.bin").exists()
    assert {"README.md", "recipe.yaml", "adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in adapter.iterdir()}
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == BASE_ID
    meta = card_metadata(adapter / "README.md")
    assert (meta["base_model"], meta["base_model_relation"], meta["library_name"]) == (BASE_ID, "adapter", "peft")
    assert meta["license"] == "apache-2.0" and meta["pipeline_tag"] == "text-generation"
    assert str(tiny_qwen2_dir) not in (adapter / "README.md").read_text()
    assert f"base_model:adapter:{BASE_ID}" in api.model_info("me/quick").tags
    base = AutoModelForCausalLM.from_pretrained(tiny_qwen2_dir, dtype=torch.float32)
    with torch.no_grad():
        logits = PeftModel.from_pretrained(base, adapter).eval()(input_ids=ids).logits
    torch.testing.assert_close(logits, reference, rtol=1e-5, atol=1e-5)

    # merged: bf16 like the base, full weights, im_end among the eos ids
    merged = Path(snapshot_download("me/quick-merged"))
    meta = card_metadata(merged / "README.md")
    assert (meta["base_model"], meta["base_model_relation"], meta["library_name"]) == (BASE_ID, "finetune", "transformers")
    assert f"base_model:finetune:{BASE_ID}" in api.model_info("me/quick-merged").tags
    assert 151645 in json.loads((merged / "generation_config.json").read_text())["eos_token_id"]
    model = AutoModelForCausalLM.from_pretrained(merged)
    assert model.dtype == torch.bfloat16 and not any("lora" in n for n, _ in model.named_parameters())
    with torch.no_grad():
        assert_close_logits(model.float()(input_ids=ids).logits, reference, rel=0.03)

    # gguf: quantizes the merged repo, so the chain base -> fine-tune -> quantized stays connected
    gguf_dir = Path(snapshot_download("me/quick-GGUF"))
    meta = card_metadata(gguf_dir / "README.md")
    assert (meta["base_model"], meta["base_model_relation"]) == ("me/quick-merged", "quantized")
    assert "base_model:quantized:me/quick-merged" in api.model_info("me/quick-GGUF").tags
    assert sorted(p.name for p in gguf_dir.glob("*.gguf")) == ["quick-F16.gguf", "quick-Q8_0.gguf"]
    # transformers reads a GGUF back independently of our writer (Q8_0 is checked in test_gguf.py,
    # with a faster reader: each from_pretrained of a Qwen-vocabulary GGUF takes ~40 s here).
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file="quick-F16.gguf", dtype=torch.float32)
    with torch.no_grad():
        assert_close_logits(gguf_model(input_ids=ids).logits, reference, rel=0.03)


def test_same_content_again_makes_no_commit_and_dry_run_uploads_nothing(hub_server, trained, tmp_path, capsys):
    from publish.run import publish_run

    run_dir = fresh_run(trained, tmp_path)
    publish_run(run_dir, PublishConfig(repo_id="me/again"))
    commits = hub_server.commits("me/again")
    publish_run(run_dir, PublishConfig(repo_id="me/again"))
    assert hub_server.commits("me/again") == commits
    assert "already up to date (no commit)" in capsys.readouterr().out

    hub_server.clear_requests()
    publish_run(run_dir, PublishConfig(repo_id="me/dry", dry_run=True))
    out = capsys.readouterr().out
    assert hub_server.requests == []
    assert "== adapter -> me/dry @ main" in out and "adapter_model.safetensors" in out and '"base_model": "scion-test/tiny-qwen2"' in out
    assert (run_dir / "publish" / "adapter" / "README.md").is_file()


def test_publish_is_one_commit_and_create_pr_and_branch(hub_server, trained, tmp_path):
    from publish.run import publish_run

    run_dir = fresh_run(trained, tmp_path)
    publish_run(run_dir, PublishConfig(repo_id="me/one"))
    titles = [c["title"] for c in hub_server.commits("me/one")]
    assert len(titles) == 2 and titles[0].startswith("Scion: publish adapter")  # initial commit + ours

    main_before = hub_server.head("me/one")
    (run_dir / "recipe.yaml").write_text((run_dir / "recipe.yaml").read_text() + "# changed\n")
    publish_run(run_dir, PublishConfig(repo_id="me/one", create_pr=True))
    assert hub_server.head("me/one") == main_before
    assert hub_server.head("me/one", "refs/pr/1") is not None

    publish_run(run_dir, PublishConfig(repo_id="me/one", revision="dev"))
    assert hub_server.head("me/one") == main_before and hub_server.head("me/one", "dev") != main_before


def test_retries_a_commit_that_failed_with_503(hub_server, trained, tmp_path):
    from publish.run import publish_run

    hub_server.create_repo("me/flaky")
    fault = hub_server.inject(r"/commit/main$", "POST", [503])
    publish_run(fresh_run(trained, tmp_path), PublishConfig(repo_id="me/flaky"))
    assert fault.hits == 1 and len(hub_server.commits("me/flaky")) == 2


def test_persistent_5xx_is_a_clear_error_and_main_is_untouched(hub_server, trained, tmp_path):
    from publish.run import publish_run

    hub_server.create_repo("me/down")
    before = hub_server.commits("me/down")
    hub_server.inject(r"/commit/main$", "POST", [500], persistent=True)
    with pytest.raises(ScionError, match=r"the commit to me/down@main failed 3 times .* the branch is unchanged"):
        publish_run(fresh_run(trained, tmp_path), PublishConfig(repo_id="me/down"))
    assert hub_server.commits("me/down") == before


def test_lost_commit_response_makes_no_duplicate(hub_server, trained, tmp_path):
    from publish.run import publish_run

    hub_server.create_repo("me/lost")
    hub_server.inject(r"/commit/main$", "POST", ["drop"], after=True)
    publish_run(fresh_run(trained, tmp_path), PublishConfig(repo_id="me/lost"))
    assert len(hub_server.commits("me/lost")) == 2  # the initial commit and exactly one of ours


def test_branch_moved_under_us_is_a_conflict(hub_server, trained, tmp_path):
    from publish.run import publish_run

    hub_server.create_repo("me/race")
    hub_server.inject(r"/commit/main$", "POST", [lambda: hub_server.add_commit("me/race", {"x.txt": b"theirs"})])
    with pytest.raises(ScionError, match="moved while publishing"):
        publish_run(fresh_run(trained, tmp_path), PublishConfig(repo_id="me/race"))
    assert [c["title"] for c in hub_server.commits("me/race")][0] == "Commit from someone else"


@pytest.mark.parametrize("token,message", [("hf_invalid", "rejected the token"), ("hf_test_read_token", "may not write here")])
def test_bad_tokens(hub_server, trained, tmp_path, monkeypatch, token, message):
    from publish.run import publish_run

    monkeypatch.setenv("HF_TOKEN", token)
    with pytest.raises(ScionError, match=message) as err:
        publish_run(fresh_run(trained, tmp_path), PublishConfig(repo_id="scion-tester/denied"))
    assert token not in str(err.value)


def test_bad_input_fails_before_any_network_call(hub_server, trained, tmp_path):
    from publish.run import publish_run

    run_dir = fresh_run(trained, tmp_path)
    hub_server.clear_requests()
    cases = [
        (tmp_path / "nope", PublishConfig(repo_id="me/x"), "does not exist"),
        (run_dir, PublishConfig(repo_id="not a repo id"), "not a valid Hub repo id"),
        (run_dir, PublishConfig(repo_id=None), "publish.repo_id: missing"),
    ]
    for path, cfg, message in cases:
        with pytest.raises(ScionError, match=message):
            publish_run(path, cfg)
    no_adapter = fresh_run(trained, tmp_path / "b")
    shutil.rmtree(no_adapter / "adapter")
    with pytest.raises(ScionError, match="has no adapter"):
        publish_run(no_adapter, PublishConfig(repo_id="me/x"))
    local_only = fresh_run(trained, tmp_path / "c")
    run = json.loads((local_only / "run.json").read_text())
    run["base"]["hub_id"] = None
    (local_only / "run.json").write_text(json.dumps(run))
    with pytest.raises(ScionError, match="model.hub_id"):
        publish_run(local_only, PublishConfig(repo_id="me/x"))
    assert hub_server.requests == []


def test_unknown_license_and_unsupported_gguf_arch(trained, tmp_path, tiny_qwen2_dir):
    from publish.run import publish_run

    base = tmp_path / "base"
    shutil.copytree(tiny_qwen2_dir, base)
    (base / "README.md").write_text("---\nlibrary_name: transformers\n---\nno license here\n")
    run_dir = fresh_run(trained, tmp_path)
    run = json.loads((run_dir / "run.json").read_text())
    run["base"].update(local_dir=str(base), hub_id="someone/unknown-model")
    (run_dir / "run.json").write_text(json.dumps(run))
    with pytest.raises(ScionError, match="cannot find the license of the base someone/unknown-model"):
        publish_run(run_dir, PublishConfig(repo_id="me/x", dry_run=True))

    run["base"].update(local_dir=str(tiny_qwen2_dir), hub_id=BASE_ID, architecture="LlamaForCausalLM")
    (run_dir / "run.json").write_text(json.dumps(run))
    with pytest.raises(ScionError, match="GGUF conversion does not support LlamaForCausalLM"):
        publish_run(run_dir, PublishConfig(repo_id="me/x", kinds=[DerivativeKind.gguf], dry_run=True))


def qwen_research_run(trained, tmp_path, tiny_qwen2_dir) -> Path:
    """A run whose base stands in for Qwen2.5-3B-Instruct's snapshot: its card's license front matter and a LICENSE file."""
    base = tmp_path / "models--Qwen--Qwen2.5-3B-Instruct" / "snapshots" / ("b" * 40)
    shutil.copytree(tiny_qwen2_dir, base)
    (base / "README.md").write_text(
        "---\nlicense: other\nlicense_name: qwen-research\n"
        "license_link: https://huggingface.co/Qwen/Qwen2.5-3B-Instruct/blob/main/LICENSE\nlanguage:\n- en\n"
        "pipeline_tag: text-generation\nbase_model: Qwen/Qwen2.5-3B\n---\n# Qwen2.5-3B-Instruct\n")
    (base / "LICENSE").write_text("Qwen RESEARCH LICENSE AGREEMENT (stand-in text for the test)\n")
    run_dir = fresh_run(trained, tmp_path)
    run = json.loads((run_dir / "run.json").read_text())
    run["base"].update(local_dir=str(base), hub_id="Qwen/Qwen2.5-3B-Instruct")
    (run_dir / "run.json").write_text(json.dumps(run))
    return run_dir


def test_qwen_research_license_is_inherited_with_its_files(trained, tmp_path, tiny_qwen2_dir, capsys):
    from publish.run import publish_run

    run_dir = qwen_research_run(trained, tmp_path, tiny_qwen2_dir)
    publish_run(run_dir, PublishConfig(repo_id="me/q3b", kinds=[DerivativeKind.adapter, DerivativeKind.merged], dry_run=True))
    out = capsys.readouterr().out
    assert '"license_name": "qwen-research"' in out and "merged into the base in its own dtype (bf16" in out
    for kind in ("adapter", "merged"):
        folder = run_dir / "publish" / kind
        meta = card_metadata(folder / "README.md")
        assert (meta["license"], meta["license_name"]) == ("other", "qwen-research")
        assert meta["license_link"] == "https://huggingface.co/Qwen/Qwen2.5-3B-Instruct/blob/main/LICENSE"
        assert (folder / "LICENSE").read_text().startswith("Qwen RESEARCH LICENSE AGREEMENT")
        assert "Qwen RESEARCH LICENSE AGREEMENT" in (folder / "NOTICE").read_text()


def test_gguf_files_carry_name_lineage_and_license(trained, tmp_path, tiny_qwen2_dir):
    """general.* keys as llama.cpp's converter writes them, read back with gguf.GGUFReader."""
    from gguf import Keys

    from publish.run import publish_run
    from tests.test_gguf import InMemoryGGUFReader

    run_dir = qwen_research_run(trained, tmp_path, tiny_qwen2_dir)
    publish_run(run_dir, PublishConfig(repo_id="me/Qwen2.5-3B-support", kinds=[DerivativeKind.adapter, DerivativeKind.gguf],
                                       gguf_types=["f16"], tags=["orders"], dry_run=True))
    [path] = (run_dir / "publish" / "gguf").glob("*.gguf")
    assert path.name == "Qwen2.5-3B-support-F16.gguf"
    reader = InMemoryGGUFReader(path)
    keys = {name: f.contents() for name, f in reader.fields.items() if name.startswith("general.")}
    base = Keys.General
    # The published repo's name, parsed as llama.cpp parses "Qwen2.5-3B-support". "3B" is not taken
    # as the size: the file holds ~10M weights, so the label is counted from them (as llama.cpp does).
    from transformers import AutoModelForCausalLM

    n_params = AutoModelForCausalLM.from_pretrained(tiny_qwen2_dir).num_parameters()  # tied output counted once
    assert 9_000_000 < n_params < 11_000_000 and keys[base.SIZE_LABEL] == "10M"
    assert keys[base.NAME] == "Qwen2.5 3B Support" and keys[base.BASENAME] == "Qwen2.5"
    assert keys[base.ORGANIZATION] == "Me" and keys[base.FINETUNE] == "3b-support"
    assert keys[base.LICENSE] == "other" and keys[base.LICENSE_NAME] == "qwen-research"
    assert keys[base.LICENSE_LINK] == "https://huggingface.co/Qwen/Qwen2.5-3B-Instruct/blob/main/LICENSE"
    assert keys[base.BASE_MODEL_COUNT] == 1
    assert keys[base.BASE_MODEL_NAME.format(id=0)] == "Qwen2.5 3B Instruct"
    assert keys[base.BASE_MODEL_ORGANIZATION.format(id=0)] == "Qwen"
    assert keys[base.BASE_MODEL_REPO_URL.format(id=0)] == "https://huggingface.co/Qwen/Qwen2.5-3B-Instruct"
    assert keys[base.REPO_URL] == "https://huggingface.co/me/Qwen2.5-3B-support-GGUF"
    assert keys[base.TAGS] == ["scion", "qwen", "quantized", "orders", "text-generation"]
    assert keys[base.QUANTIZED_BY] == "me"
    assert reader.fields[Keys.Tokenizer.CHAT_TEMPLATE].contents() == (tiny_qwen2_dir / "chat_template.jinja").read_text()
    print("GGUF keys read back:", json.dumps(keys, indent=1))


def test_gguf_license_keys_for_a_hub_license_and_a_shipped_license_file():
    from publish.gguf import hub_metadata

    apache = hub_metadata("me/bot-GGUF", "me/bot", "Qwen/Qwen3-4B", "apache-2.0", None, None)
    assert (apache.license, apache.license_name, apache.license_link) == ("apache-2.0", None, None)
    shipped = hub_metadata("me/bot-GGUF", "me/bot", "Qwen/Qwen3-4B", "other", "acme-1", "LICENSE", endpoint="https://hub.example")
    assert shipped.license_link == "https://hub.example/me/bot-GGUF/blob/main/LICENSE"
    assert shipped.basename == "bot" and shipped.name == "Bot"  # no size or version in the name: basename is the name


def test_publish_py_command_line(hub_server, trained, tmp_path):
    run_dir = fresh_run(trained, tmp_path)
    typo = run_script("publish.py", f"run_dir={run_dir}", "repo_id=me/cli", "dry_rn=true")
    assert typo.returncode == 2 and "dry_rn" in typo.stderr.strip().splitlines()[-1]
    bad_kind = run_script("publish.py", f"run_dir={run_dir}", "repo_id=me/cli", "kind=onnx")
    assert bad_kind.returncode == 2 and "kinds" in bad_kind.stderr
    ok = run_script("publish.py", f"run_dir={run_dir}", "repo_id=me/cli", "kind=adapter")
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert hub_server.head("me/cli") is not None
    assert "hf_test_write_token" not in ok.stdout + ok.stderr


def test_train_from_a_hub_id_then_publish_and_retrain_from_the_hub_recipe(hub_server, tiny_qwen2_dir, tmp_path):
    """Download, training, publishing and lineage all for real, against the test server.

    The run is started from a team recipe file on local data, as a user would: run.json and the card
    record the command as typed, and `recipe=hub:` on a machine without that data file says which
    file is missing and which override gives it, in one line.
    """
    import shlex

    from huggingface_hub import HfApi, hf_hub_download

    api = HfApi()
    api.create_repo(BASE_ID)
    api.upload_folder(repo_id=BASE_ID, folder_path=str(tiny_qwen2_dir), commit_message="tiny base")
    base_sha = hub_server.head(BASE_ID)
    data = tmp_path / "orders.jsonl"
    shutil.copy(REPO_ROOT / "data/quickstart/eval.jsonl", data)
    recipe = tmp_path / "team recipes" / "orders.yaml"  # a space, to check the recorded command is quoted
    recipe.parent.mkdir()
    recipe.write_text(f"defaults:\n  - /recipe/quickstart\n  - _self_\ndata:\n  train: {data}\n  eval: null\n")
    out = tmp_path / "run"
    args = [f"recipe={recipe}", f"model.name_or_path={BASE_ID}", "trainer.max_steps=2", f"trainer.output_dir={out}",
            "publish.repo_id=me/from-hub"]
    result = run_script("train.py", *args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    run = json.loads((out / "run.json").read_text())
    assert (run["base"]["hub_id"], run["base"]["commit_sha"]) == (BASE_ID, base_sha)
    assert f"base_model:adapter:{BASE_ID}" in api.model_info("me/from-hub").tags  # from the card's own relation
    meta = card_metadata(Path(hf_hub_download("me/from-hub", "README.md")))
    assert (meta["base_model"], meta["base_model_relation"]) == (BASE_ID, "adapter")
    typed = shlex.join(["python", "train.py", *args])
    assert run["command"] == typed and "file_0" not in run["command"]
    card = (out / "publish" / "adapter" / "README.md").read_text()
    assert f"The original command was `{typed}`" in card
    assert "python train.py recipe=hub:me/from-hub data.train=path/to/orders.jsonl\n" in card

    again = run_script("train.py", "recipe=hub:me/from-hub", "--cfg", "job", cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert yaml.safe_load(again.stdout)["model"]["name_or_path"] == BASE_ID

    # On a machine without the data file: one line naming it and the override, before anything loads.
    data.unlink()
    missing = run_script("train.py", "recipe=hub:me/from-hub", cwd=tmp_path)
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1, missing.stderr[-2000:]
    assert missing.stderr.startswith(f"error: recipe=hub:me/from-hub: data.train is a local file of the machine it "
                                     f"was trained on, not found here: {data}; give your copy with data.train=path/to/orders.jsonl")
    mine = tmp_path / "my_orders.jsonl"
    shutil.copy(REPO_ROOT / "data/quickstart/eval.jsonl", mine)
    overridden = run_script("train.py", "recipe=hub:me/from-hub", f"data.train={mine}", "--cfg", "job", cwd=tmp_path)
    assert overridden.returncode == 0, overridden.stderr[-2000:]
    assert yaml.safe_load(overridden.stdout)["data"]["train"] == str(mine)

def test_dry_run_writes_exactly_the_files_a_real_push_uploads(hub_server, trained, tmp_path):
    """The whole file list and every file's bytes, for both kinds that stage weights from the run."""
    import hashlib

    from huggingface_hub import HfApi, hf_hub_download

    from publish.run import publish_run

    def digest(path: Path) -> str:
        return hashlib.sha256(path.read_bytes()).hexdigest()

    run_dir = fresh_run(trained, tmp_path)
    kinds = [DerivativeKind.adapter, DerivativeKind.merged]
    publish_run(run_dir, PublishConfig(repo_id="me/planned", kinds=kinds, dry_run=True))
    planned = {kind.value: {p.relative_to(run_dir / "publish" / kind.value).as_posix(): digest(p)
                            for p in (run_dir / "publish" / kind.value).rglob("*") if p.is_file()} for kind in kinds}
    shutil.rmtree(run_dir / "publish")  # the real push stages again from scratch

    publish_run(run_dir, PublishConfig(repo_id="me/planned", kinds=kinds))
    api = HfApi()
    for kind, repo in (("adapter", "me/planned"), ("merged", "me/planned-merged")):
        uploaded = {name: digest(Path(hf_hub_download(repo, name))) for name in api.list_repo_files(repo)
                    if name != ".gitattributes"}  # written by the server when the repo is created
        # report.html says "planned" in a dry run and "published" after a push; every other file is the same bytes.
        assert set(uploaded) == set(planned[kind]), kind
        assert {n: d for n, d in uploaded.items() if n != "report.html"} == \
            {n: d for n, d in planned[kind].items() if n != "report.html"}, kind


def test_license_is_read_from_the_hub_card_when_the_snapshot_has_no_readme(hub_server, trained, tmp_path, tiny_qwen2_dir):
    from huggingface_hub import HfApi

    from publish.run import publish_run

    base = tmp_path / "base"
    shutil.copytree(tiny_qwen2_dir, base, ignore=shutil.ignore_patterns("README.md"))
    api = HfApi()
    api.create_repo("someone/mit-base")
    api.upload_file(repo_id="someone/mit-base", path_or_fileobj=b"---\nlicense: mit\n---\n# a base\n", path_in_repo="README.md")
    run_dir = fresh_run(trained, tmp_path)
    run = json.loads((run_dir / "run.json").read_text())
    run["base"].update(local_dir=str(base), hub_id="someone/mit-base")
    (run_dir / "run.json").write_text(json.dumps(run))
    publish_run(run_dir, PublishConfig(repo_id="me/mit", dry_run=True))
    meta = card_metadata(run_dir / "publish" / "adapter" / "README.md")
    assert (meta["license"], meta["base_model"]) == ("mit", "someone/mit-base")


def test_private_repo_with_the_token_from_hf_auth_login(hub_server, trained, tmp_path, monkeypatch):
    """No HF_TOKEN: publish.py finds the token `hf auth login` stored under HF_HOME, and never prints it."""
    from huggingface_hub import HfApi, login
    from huggingface_hub.errors import RepositoryNotFoundError

    from tests.hub_server import WRITE_TOKEN

    monkeypatch.delenv("HF_TOKEN")
    login(token=WRITE_TOKEN, add_to_git_credential=False)  # what `hf auth login` does: a token file under HF_HOME
    run_dir = fresh_run(trained, tmp_path)
    result = run_script("publish.py", f"run_dir={run_dir}", "repo_id=me/secret", "kind=adapter", "private=true")
    assert result.returncode == 0, result.stderr[-2000:]
    assert WRITE_TOKEN not in result.stdout + result.stderr
    assert HfApi(token=WRITE_TOKEN).model_info("me/secret").private is True
    with pytest.raises(RepositoryNotFoundError):
        HfApi(token=False).model_info("me/secret")  # anonymous visitors do not see it
