"""Reasoning data: labels on token ids match what each template's model sees and produces at inference.

For a row [user, assistant], the trained tokens must be exactly the tokens that follow the template's
own generation prompt (thinking on where the row has reasoning, off where it has none), up to and
including <|im_end|>: what the model generates after that prompt.
"""

from __future__ import annotations

import pytest

from train.data import tokenize_conversation
from train.tokenizer import read_template_file

REASON, ANSWER = "The user greets; reply briefly.", "Hello there!"
TEMPLATES = {  # name -> (tiny model, template file or None for the stock one)
    "qwen3": ("tiny:qwen3", None),
    "qwen3_2507_instruct": ("tiny:qwen3", "qwen3_2507_instruct.jinja"),
    "qwen3_2507_thinking": ("tiny:qwen3", "qwen3_2507_thinking.jinja"),
    "qwen3_5": ("tiny:qwen3_5", None),
}


@pytest.fixture(scope="module", params=sorted(TEMPLATES))
def tokenizer(request):
    from transformers import AutoTokenizer

    from train.tiny import ensure_tiny_model

    spec, template = TEMPLATES[request.param]
    tok = AutoTokenizer.from_pretrained(ensure_tiny_model(spec))
    if template:
        tok.chat_template = read_template_file(template)
    tok.scion_name = request.param
    return tok


def _ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _expected(tokenizer, messages, thinking):
    """Labels from inference: -100 over the generation prompt, the continuation's tokens after it."""
    prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True,
                                           enable_thinking=thinking)
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    assert full.startswith(prompt) and full.endswith("<|im_end|>\n")
    prompt_ids, full_ids = _ids(tokenizer, prompt), _ids(tokenizer, full)
    assert full_ids[:len(prompt_ids)] == prompt_ids
    return full_ids, [-100] * len(prompt_ids) + full_ids[len(prompt_ids):-1] + [-100]


@pytest.mark.parametrize("given_as", ["reasoning_content", "think_tags"])
def test_reasoning_is_rendered_by_the_template_and_trained(tokenizer, given_as):
    if given_as == "reasoning_content":
        assistant = {"role": "assistant", "content": ANSWER, "reasoning_content": REASON}
    else:
        assistant = {"role": "assistant", "content": f"<think>\n{REASON}\n</think>\n\n{ANSWER}"}
    messages = [{"role": "user", "content": "Hi"}, assistant]
    input_ids, labels = tokenize_conversation(messages, tokenizer)
    expected_ids, expected_labels = _expected(tokenizer, messages, thinking=True)
    assert input_ids == expected_ids
    assert labels == expected_labels
    trained = tokenizer.decode([t for t in labels if t != -100])
    assert REASON in trained and trained.endswith(ANSWER + "<|im_end|>")


def test_row_without_reasoning_matches_inference(tokenizer):
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": ANSWER}]
    input_ids, labels = tokenize_conversation(messages, tokenizer)
    trained = tokenizer.decode([t for t in labels if t != -100])
    if tokenizer.scion_name == "qwen3_2507_thinking":
        # Its generation prompt opens <think>; the model closes the empty block itself. ("<think>\n" +
        # "\n</think>" tokenizes "\n\n" as one token, so this is checked on the text.)
        assert trained == "</think>\n\n" + ANSWER + "<|im_end|>"
        return
    thinking = None if tokenizer.scion_name == "qwen3_2507_instruct" else False
    expected_ids, expected_labels = _expected(tokenizer, messages, thinking=thinking)
    assert (input_ids, labels) == (expected_ids, expected_labels)
    assert trained == ANSWER + "<|im_end|>"


def test_earlier_turns_follow_the_templates_rule_for_past_reasoning(tokenizer):
    messages = [
        {"role": "user", "content": "Q1"},
        {"role": "assistant", "content": "A1", "reasoning_content": "old thoughts"},
        {"role": "user", "content": "Q2"},
        {"role": "assistant", "content": ANSWER, "reasoning_content": REASON},
    ]
    input_ids, labels = tokenize_conversation(messages, tokenizer)
    text = tokenizer.decode(input_ids)
    assert "old thoughts" not in text  # every one of these templates drops reasoning before the last query
    trained = tokenizer.decode([t for t in labels if t != -100])
    assert trained.startswith("A1<|im_end|>") and REASON in trained and trained.endswith(ANSWER + "<|im_end|>")


def test_data_report_counts_rows_with_reasoning(tokenizer, tmp_path):
    import json

    from train.config import DataConfig
    from train.mixture import prepare_data

    rows = [
        {"messages": [{"role": "user", "content": f"q{i}"},
                      {"role": "assistant", "content": f"a{i}", **({"reasoning_content": "r"} if i % 3 == 0 else {})}]}
        for i in range(9)
    ]
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = prepare_data(DataConfig(train=str(path)), tokenizer)
    assert data.stats["train"].with_reasoning == 3


def test_eval_scores_the_answer_after_think_and_counts_the_whole_generation():
    from eval.metrics import generation_metrics
    from eval.scoring import Generation

    thinking = Generation(text="<think>\nParis is the capital.\n</think>\n\nParis", tokens=12, stopped=True)
    metrics, rows = generation_metrics([thinking], ["Paris"])
    assert rows[0]["exact_match"] is True
    assert metrics["mean_generated_tokens"] == 12
