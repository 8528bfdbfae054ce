"""Evaluation on tiny models: a fine-tune that beats its base, the stop rate, lm-eval on a local
task, results.json against its schema, the eval.py entry point, and bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from tests.conftest import REPO_ROOT, run_script, write_jsonl
from train.config import DataConfig, EvalConfig, HarnessConfig, ModelConfig, PeftConfig, Precision, ScionConfig, TrainerConfig
from train.errors import ScionError

LM_EVAL_TASKS = REPO_ROOT / "tests" / "fixtures" / "lm_eval"
# Echo a word given ten times: a tiny random model learns this in ~20 LoRA steps. Facts like
# "capital of France? -> Paris" it cannot: with embeddings 25x larger than its layer outputs, the
# last prompt position barely sees the question unless the question fills the context.
WORDS = ["blue", "green", "river", "stone"]
EVAL = EvalConfig(max_new_tokens=8, batch_size=8, num_samples=2,
                  harness=HarnessConfig(tasks=["scion_capitals", "scion_hub_only"], include_path=str(LM_EVAL_TASKS), limit=4))


def memorize_config(folder: Path) -> ScionConfig:
    data = write_jsonl(folder / "echo.jsonl", [{"prompt": " ".join([w] * 10), "completion": w} for w in WORDS])
    return ScionConfig(
        model=ModelConfig(name_or_path="tiny:qwen2"),
        peft=PeftConfig(r=16, alpha=32, dropout=0.0),
        # Train == eval: the point is a fine-tune that measurably beats its base.
        data=DataConfig(train=str(data), eval=str(data), max_length=64, system_prompt="Be brief."),
        trainer=TrainerConfig(output_dir=str(folder / "run"), seed=42, max_steps=24, batch_size=len(WORDS),
                              gradient_accumulation_steps=1, learning_rate=1e-2, warmup_ratio=0.0,
                              precision=Precision.fp32, logging_steps=5, save_steps=1000),
        eval=EVAL,
        recipe_name="echo",
    )


def copy_run(run_dir: Path, target: Path) -> Path:
    """The parts of a run directory evaluation reads (no checkpoints)."""
    shutil.copytree(run_dir / "adapter", target / "adapter")
    for name in ("recipe.yaml", "run.json"):
        shutil.copy(run_dir / name, target / name)
    return target


@pytest.fixture(scope="module")
def offline():
    """The Hub is unreachable, as on an offline machine (and instantly, without retries)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
        patch.setattr("datasets.config.HF_HUB_OFFLINE", True)
        yield


@pytest.fixture(scope="module")
def echo(tmp_path_factory, offline):
    """Train on the echo task, then evaluate with the trained model still in memory (as train.py will)."""
    from eval.run import evaluate_run
    from train.run import train

    result = train(memorize_config(tmp_path_factory.mktemp("echo")))
    result.model.train()  # as the Trainer leaves it, with the KV cache off
    result.model.config.use_cache = False
    results = evaluate_run(result.run_dir, EVAL, model=result.model, tokenizer=result.tokenizer)
    return result, results


def test_finetune_beats_its_base_on_loss_and_exact_match(echo):
    result, results = echo
    m = results["metrics"]
    assert m["loss"]["finetune"] < m["loss"]["base"] / 5
    assert m["perplexity"]["finetune"] < m["perplexity"]["base"]
    assert m["exact_match"]["base"] == 0.0 and m["exact_match"]["finetune"] >= 0.5
    assert m["exact_match"]["delta"] == pytest.approx(m["exact_match"]["finetune"])
    assert m["normalized_match"]["finetune"] >= m["exact_match"]["finetune"]
    assert m["rouge_l"]["finetune"] > m["rouge_l"]["base"] and m["chrf"]["finetune"] > m["chrf"]["base"]
    # It learned to stop: answer + <|im_end|>.
    assert m["stop_rate"]["finetune"] == 1.0 and m["mean_generated_tokens"]["finetune"] < 3
    assert results["data"]["examples"] == len(WORDS) and results["data"]["matches_training"] is True
    assert results["decoding"]["strategy"] == "greedy" and results["decoding"]["stop_token_ids"] == [151643, 151645]
    # The caller's train mode survives the evaluation (pitfalls.md #13).
    assert result.model.training and result.model.config.use_cache is False


def test_results_files_and_schema(echo):
    import jsonschema

    result, results = echo
    out = result.run_dir / "eval"
    written = json.loads((out / "results.json").read_text())
    schema = json.loads((REPO_ROOT / "eval" / "results.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.Draft202012Validator(schema).validate(written)
    assert written == json.loads(json.dumps(results))
    assert written["data"]["sha256"] == written["data"]["fingerprint"] and len(written["data"]["fingerprint"]) == 64

    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert [s["index"] for s in samples] == list(range(len(WORDS)))
    assert [s["reference"] for s in samples] == WORDS
    assert samples[0]["prompt"][-1] == {"role": "user", "content": " ".join([WORDS[0]] * 10)}
    assert written["samples"] == samples[:2]
    # Per-example scores add up to the corpus metrics.
    assert sum(s["finetune"]["exact_match"] for s in samples) / len(samples) == results["metrics"]["exact_match"]["finetune"]
    for name in ("loss_curves.png", "metrics.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name


def test_lm_eval_runs_a_local_task_and_skips_one_without_local_data(echo):
    _, results = echo
    harness = results["harness"]
    accuracy = harness["results"]["scion_capitals"]["acc"]
    assert 0.0 <= accuracy["base"] <= 1.0 and 0.0 <= accuracy["finetune"] <= 1.0
    assert accuracy["delta"] == pytest.approx(accuracy["finetune"] - accuracy["base"])
    assert harness["settings"]["limit"] == 4 and "scion_hub_only" not in harness["results"]
    [skipped] = harness["skipped"]
    assert skipped["task"] == "scion_hub_only" and "not available locally" in skipped["reason"]
    assert "\n" not in skipped["reason"]


def test_lm_eval_accuracy_is_what_the_fixture_gives_by_hand(echo):
    """scion_capitals scores each choice by the summed log-probability of " <choice>" after the question;
    the accuracy is the share of rows whose best choice is the answer. Computed here for base and fine-tune."""
    result, results = echo
    model, tok = result.model, result.tokenizer
    rows = [json.loads(line) for line in (LM_EVAL_TASKS / "capitals.jsonl").read_text().splitlines() if line.strip()]

    def accuracy() -> float:
        correct = 0
        for row in rows:
            context = f"Question: What is the capital of {row['country']}?\nAnswer:"
            scores = []
            for choice in row["choices"]:
                whole = tok(context + " " + choice, add_special_tokens=False)["input_ids"]
                start = len(tok(context, add_special_tokens=False)["input_ids"])
                with torch.no_grad():
                    logits = model(input_ids=torch.tensor([whole])).logits[0].float().log_softmax(-1)
                scores.append(sum(logits[i - 1, whole[i]].item() for i in range(start, len(whole))))
            correct += max(range(len(scores)), key=scores.__getitem__) == row["answer"]
        return correct / len(rows)

    with model.disable_adapter():
        base = accuracy()
    accuracy_in_results = results["harness"]["results"]["scion_capitals"]["acc"]
    assert (accuracy_in_results["base"], accuracy_in_results["finetune"]) == (base, accuracy())


def never_stopping(base_dir: Path, tokenizer):
    """The tiny base with an untied lm_head whose <|im_end|> and <|endoftext|> rows are zero: their
    logits are exactly 0, below the largest of ~152k random logits, so greedy never picks them."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    weight = model.get_output_embeddings().weight.detach().clone()  # the input embeddings stay intact
    weight[[tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.convert_tokens_to_ids("<|endoftext|>")]] = 0.0
    model.config.tie_word_embeddings = False
    model.lm_head = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    model.lm_head.weight = torch.nn.Parameter(weight)
    return model


def test_stop_rate_flags_a_model_that_never_stops(echo, tmp_path, tiny_qwen2_dir):
    from peft import PeftModel

    from eval.run import evaluate_run

    result, trained = echo
    run = copy_run(result.run_dir, tmp_path / "run")
    model = PeftModel.from_pretrained(never_stopping(tiny_qwen2_dir, result.tokenizer), run / "adapter")
    assert model.get_base_model().lm_head.weight.data_ptr() != model.get_base_model().get_input_embeddings().weight.data_ptr()
    results = evaluate_run(run, EvalConfig(max_new_tokens=6, batch_size=8, num_samples=0), model=model, tokenizer=result.tokenizer)
    for variant in ("base", "finetune"):
        assert results["metrics"]["stop_rate"][variant] == 0.0
        assert results["metrics"]["mean_generated_tokens"][variant] == 6.0
    assert any("<|im_end|>" in w and "pitfalls.md #1" in w for w in results["warnings"])
    # The same adapter on the intact base stops every time.
    assert trained["metrics"]["stop_rate"]["finetune"] == 1.0 and not trained["warnings"]


def test_the_checkpoints_own_sampling_settings_do_not_leak_into_greedy_decoding(tiny_qwen2_dir, qwen2_5_tokenizer):
    """Qwen's chat checkpoints ship generation_config.json with sampling (temperature 0.7, top_p 0.8,
    top_k 20) and repetition_penalty 1.05; transformers fills every setting left unset from it."""
    from transformers import AutoModelForCausalLM, GenerationConfig

    from eval.scoring import generate_all

    model = AutoModelForCausalLM.from_pretrained(tiny_qwen2_dir, dtype=torch.float32).eval()
    # The random model is nearly certain of its next token (top probability ~0.9999), so sampling
    # would pick the greedy token anyway: an untied, scaled-down head flattens its distribution.
    weight = model.get_output_embeddings().weight.detach().clone() * 0.05
    model.config.tie_word_embeddings = False
    model.lm_head = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    model.lm_head.weight = torch.nn.Parameter(weight)
    prompts = [[{"role": "user", "content": " ".join([word] * n)}] for word in WORDS for n in (1, 5)]
    config = EvalConfig(max_new_tokens=12, batch_size=4)
    model.generation_config = GenerationConfig()
    plain = [g.text for g in generate_all(model, qwen2_5_tokenizer, prompts, config, desc="plain")]
    # Qwen's settings, with the repetition penalty exaggerated (1.05 -> 3) so that it visibly changes
    # this random model's greedy choice when it leaks.
    model.generation_config = GenerationConfig(do_sample=True, temperature=0.7, top_p=0.8, top_k=20, repetition_penalty=3.0,
                                               eos_token_id=[151645, 151643], pad_token_id=151643)
    qwen = [g.text for g in generate_all(model, qwen2_5_tokenizer, prompts, config, desc="qwen defaults")]
    assert qwen == plain


def test_batched_left_padded_generation_equals_one_prompt_at_a_time(tiny_qwen2_dir, qwen2_5_tokenizer):
    """Prompts of different lengths in one batch (so most are padded) give what each gives alone, decoded
    here with plain model.generate on the unpadded prompt."""
    from transformers import AutoModelForCausalLM, GenerationConfig

    from eval.scoring import generate_all

    tok = qwen2_5_tokenizer
    model = AutoModelForCausalLM.from_pretrained(tiny_qwen2_dir, dtype=torch.float32).eval()
    # The tiny model's embeddings are ~25x larger than its layer outputs and its head is tied to them, so
    # it predicts roughly its last input token whatever came before. Shrunk input embeddings and a seeded
    # random head let the context, and any padding leaking into it, decide the greedy token.
    weight = model.get_output_embeddings().weight.detach().clone()
    model.config.tie_word_embeddings = False
    model.lm_head = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    model.lm_head.weight = torch.nn.Parameter(torch.randn(weight.shape, generator=torch.Generator().manual_seed(0)))
    model.get_input_embeddings().weight = torch.nn.Parameter(weight * 0.04)
    model.generation_config = GenerationConfig()  # nothing from the checkpoint's generation_config.json
    prompts = [[{"role": "user", "content": " ".join([word] * n)}] for word, n in zip(WORDS, (1, 4, 9, 2))]
    batched = generate_all(model, tok, prompts, EvalConfig(max_new_tokens=6, batch_size=4), desc="batched")
    stops = {151643, 151645}
    for prompt, generation in zip(prompts, batched):
        ids = tok.apply_chat_template(prompt, add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
        with torch.no_grad():
            new = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=6,
                                 eos_token_id=sorted(stops), pad_token_id=151643)[0, ids.shape[1]:].tolist()
        kept = new[:next((i for i, t in enumerate(new) if t in stops), len(new))]
        assert (generation.text, generation.tokens) == (tok.decode(kept, skip_special_tokens=True), len(kept))


def test_card_model_index_holds_the_finetunes_values_from_results_json(echo, tmp_path):
    import yaml

    from publish.run import publish_run
    from train.config import PublishConfig

    result, _ = echo
    run_dir = copy_run(result.run_dir, tmp_path / "run")
    shutil.copytree(result.run_dir / "eval", run_dir / "eval")
    run = json.loads((run_dir / "run.json").read_text())
    run["base"]["hub_id"] = "scion-test/tiny-qwen2"  # a tiny: base has no Hub id; the card needs one
    (run_dir / "run.json").write_text(json.dumps(run))
    publish_run(run_dir, PublishConfig(repo_id="me/echo", dry_run=True))
    card = yaml.safe_load((run_dir / "publish" / "adapter" / "README.md").read_text().split("---", 2)[1])
    in_card = {m["type"]: m["value"] for entry in card["model-index"] for r in entry["results"] for m in r["metrics"]}
    written = json.loads((run_dir / "eval" / "results.json").read_text())["metrics"]
    finetune = {name: values["finetune"] for name, values in written.items()
                if isinstance(values, dict) and values.get("finetune") is not None}
    assert finetune and in_card.keys() == finetune.keys()
    for name, value in finetune.items():
        assert in_card[name] == pytest.approx(value, abs=1e-6), name
    assert in_card["loss"] != pytest.approx(written["loss"]["base"])  # the fine-tune's, not the base's


def test_eval_py_reloads_the_run_and_matches_the_in_memory_evaluation(echo, tmp_path):
    result, in_memory = echo
    run = copy_run(result.run_dir, tmp_path / "run")
    cli = run_script("eval.py", f"run_dir={run}", "eval.harness.tasks=[]", "eval.num_samples=1", cwd=tmp_path)
    assert cli.returncode == 0, cli.stderr[-3000:]
    assert "fine-tune" in cli.stdout and "Exact match" in cli.stdout
    results = json.loads((run / "eval" / "results.json").read_text())
    assert results["decoding"]["max_new_tokens"] == EVAL.max_new_tokens and len(results["samples"]) == 1
    assert results["harness"]["tasks"] == [] and results["harness"]["results"] == {}
    for name in ("loss", "exact_match", "stop_rate"):
        for variant in ("base", "finetune"):
            assert results["metrics"][name][variant] == pytest.approx(in_memory["metrics"][name][variant], rel=1e-4)


def test_merged_finetune_scores_as_the_unmerged_one_and_leaves_the_weights_exact(echo, tmp_path, monkeypatch):
    """The fine-tune is scored with its LoRA merged into the weights (fewer matmuls per decoding step):
    the same numbers as unmerged PEFT, and afterwards the exact weights the model had before."""
    import contextlib

    import torch

    import eval.run as eval_run

    result, merged = echo  # evaluated with eval_run.MERGE_FINETUNE on
    before = {n: p.detach().clone() for n, p in result.model.named_parameters()}
    merges = []
    monkeypatch.setattr(eval_run, "merged_adapter", lambda model: merges.append(1) or contextlib.nullcontext())
    monkeypatch.setattr(eval_run, "MERGE_FINETUNE", False)
    unmerged = eval_run.evaluate_run(copy_run(result.run_dir, tmp_path / "run"), EVAL, model=result.model,
                                     tokenizer=result.tokenizer)
    assert merges == []
    for name in ("loss", "exact_match", "rouge_l", "mean_generated_tokens"):
        assert unmerged["metrics"][name]["finetune"] == pytest.approx(merged["metrics"][name]["finetune"], rel=1e-5), name
    assert [s["finetune"]["text"] for s in unmerged["samples"]] == [s["finetune"]["text"] for s in merged["samples"]]
    monkeypatch.undo()
    with eval_run.merged_adapter(result.model):
        assert any(not torch.equal(p, before[n]) for n, p in result.model.named_parameters() if "base_layer" in n)
    for name, param in result.model.named_parameters():
        assert torch.equal(param, before[name]), name


def mutate_recipe(run: Path, **data) -> None:
    recipe = OmegaConf.load(run / "recipe.yaml")
    for key, value in data.items():
        recipe.data[key] = value
    OmegaConf.save(recipe, run / "recipe.yaml")


@pytest.mark.parametrize(
    "case,message",
    [
        ("typo", "error: eval.max_new_token: unknown key"),
        ("bad_value", "error: eval.max_new_tokens: Value 'many'"),
        ("not_eval", "error: model.name_or_path: only run_dir=<path> and eval.* keys"),
        ("no_adapter", "has no adapter (adapter/adapter_config.json)"),
        ("empty_eval", "empty.jsonl is empty"),
        ("no_reference", "bad.jsonl:2: it has no assistant turn, so there is no reference answer"),
        ("empty_reference", "bad.jsonl:1: its 'completion' is missing or empty"),
        ("no_eval_split", "the run has no eval split"),
        ("unknown_task", "eval.harness.tasks: unknown task 'scion_capitalz'"),
    ],
)
def test_bad_input_is_a_one_line_error_and_exit_2(echo, tmp_path, capsys, case, message):
    from eval.run import main

    run = copy_run(echo[0].run_dir, tmp_path / "run")
    args = [f"run_dir={run}", "eval.harness.tasks=[]"]
    if case == "typo":
        args.append("eval.max_new_token=4")
    elif case == "bad_value":
        args.append("eval.max_new_tokens=many")
    elif case == "not_eval":
        args.append("model.name_or_path=other")
    elif case == "no_adapter":
        shutil.rmtree(run / "adapter")
    elif case == "empty_eval":
        (tmp_path / "empty.jsonl").write_text("")
        mutate_recipe(run, eval=str(tmp_path / "empty.jsonl"))
    elif case == "no_reference":
        good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
        write_jsonl(tmp_path / "chats.jsonl", [good])  # the format is detected on the train file
        write_jsonl(tmp_path / "bad.jsonl", [good, {"messages": [{"role": "user", "content": "hi"}]}])
        mutate_recipe(run, train=str(tmp_path / "chats.jsonl"), eval=str(tmp_path / "bad.jsonl"))
    elif case == "empty_reference":
        write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "hi", "completion": " "}])
        mutate_recipe(run, eval=str(tmp_path / "bad.jsonl"))
    elif case == "no_eval_split":
        mutate_recipe(run, eval=None, eval_ratio=0.0)
    elif case == "unknown_task":
        args += [f"eval.harness.include_path={LM_EVAL_TASKS}", "eval.harness.tasks=[scion_capitalz]"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    if case == "unknown_task":
        assert "did you mean scion_capitals" in err[0]
    assert not (run / "eval" / "results.json").exists()


def test_preflight_catches_eval_problems_before_training(tmp_path):
    from eval.run import preflight

    config = memorize_config(tmp_path)
    config.data.eval = None
    with pytest.raises(ScionError, match="eval.enabled=true needs held-out data"):
        preflight(config)
    config.eval.enabled = False
    preflight(config)
    config.eval.enabled, config.data.eval_ratio = True, 0.25
    config.eval.harness = HarnessConfig(tasks=["scion_capitals"], include_path=str(LM_EVAL_TASKS))
    preflight(config)
    config.eval.max_new_tokens = 0
    with pytest.raises(ScionError, match="eval.max_new_tokens must be at least 1"):
        preflight(config)


def test_eval_overrides_are_typed_and_checked():
    from eval.config import apply_overrides, check_eval_config

    config = apply_overrides(EvalConfig(), ["eval.max_new_tokens=7", "eval.harness.tasks=[a,b]", "eval.max_examples=null"])
    assert (config.max_new_tokens, config.harness.tasks, config.max_examples) == (7, ["a", "b"], None)
    with pytest.raises(ScionError, match=r"eval.harness.taks: unknown key"):
        apply_overrides(EvalConfig(), ["eval.harness.taks=[a]"])
    with pytest.raises(ScionError, match=r"eval.batch_size must be at least 1, got 0"):
        check_eval_config(apply_overrides(EvalConfig(), ["eval.batch_size=0"]))


@pytest.mark.parametrize("tokenizer_fixture", ["qwen2_5_tokenizer", "qwen3_tokenizer"])
def test_generation_prompt_is_the_training_rendering_up_to_the_last_answer(request, tokenizer_fixture):
    """Prompt + reference + <|im_end|> is exactly what training renders (Qwen3: empty think block)."""
    from eval.data import split_at_last_answer
    from eval.scoring import render_prompt

    tokenizer = request.getfixturevalue(tokenizer_fixture)
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
                {"role": "user", "content": "Capital of Peru?"}, {"role": "assistant", "content": "Lima"}]
    prompt, reference = split_at_last_answer(messages)
    assert reference == "Lima" and prompt == messages[:3]
    assert render_prompt(tokenizer, prompt) + reference + "<|im_end|>\n" == tokenizer.apply_chat_template(messages, tokenize=False)


def test_reference_answers_are_read_as_training_reads_them():
    """Every message shape training accepts (text parts, ShareGPT) gives a reference; empty ones do not."""
    from eval.data import reference_problem
    from train.config import DataFormat
    from train.data import Row

    def problem(assistant_turn):
        return reference_problem(Row({"messages": [{"role": "user", "content": "hi"}, assistant_turn]}, "x.jsonl:1"),
                                 DataFormat.messages)

    assert problem({"role": "assistant", "content": [{"type": "text", "text": "hello"}]}) is None
    assert problem({"from": "gpt", "value": "hello"}) is None
    assert problem({"role": "assistant", "content": " "}) == "its last assistant turn is empty"
    assert problem({"role": "assistant", "content": None}) == "its last assistant turn is empty"
    assert problem({"role": "user", "content": "again"}) == "it has no assistant turn"


def test_normalized_match_ignores_case_punctuation_and_articles():
    from eval.metrics import normalize

    assert normalize("The answer:  Paris!") == normalize("answer paris") == "answer paris"
    assert normalize("An apple.") == "apple" and normalize("Lima") != normalize("Quito")


def test_speed_benchmark_smoke_mode(tmp_path):
    """The timed evaluation ran on the examples and token budget asked for (not the smoke defaults 4 x 4),
    and, as the benchmark's worst case promises, a random model never stops: every generation is the full budget."""
    result = run_script("bench/eval_speed.py", "--smoke", "--examples", "3", "--max-new-tokens", "5",
                        "--work-dir", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("eval_speed: 3 examples x 5 new tokens") and "base + fine-tune:" in last
    results = json.loads((tmp_path / "run" / "eval" / "results.json").read_text())
    assert results["data"]["examples"] == 3 and results["decoding"]["max_new_tokens"] == 5
    samples = [json.loads(line) for line in (tmp_path / "run" / "eval" / "samples.jsonl").read_text().splitlines()]
    assert [s["index"] for s in samples] == [0, 1, 2]
    assert all(s[side]["tokens"] == 5 for s in samples for side in ("base", "finetune"))
    assert results["metrics"]["mean_generated_tokens"]["base"] == results["metrics"]["mean_generated_tokens"]["finetune"] == 5.0
