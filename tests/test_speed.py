"""The fast path changes no math: packed == padded, fused loss == plain loss, GA and resume exact.

All on the CPU with the tiny random Qwen2/Qwen3 (real 151,936 vocabulary) in float32, so tolerances
are tight. What only a GPU can show (the varlen kernel itself, speed, memory) is in bench/; the one
GPU test here is skipped without CUDA.
"""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys

import pytest
import torch

from tests.conftest import REPO_ROOT
from train import activation_checkpointing, attention, packing, throughput

LENGTHS = [9, 23, 5, 31, 16, 12, 27, 8]  # varied, so padding and packing both matter
PAD_ID = 151643  # <|endoftext|>, as train/model.py sets it


def make_examples(lengths=LENGTHS, seed=0):
    """Random chat-like examples: the first ~30% of tokens (and always the first) are prompt (-100)."""
    g = torch.Generator().manual_seed(seed)
    examples = []
    for n in lengths:
        ids = torch.randint(0, 151000, (n,), generator=g).tolist()
        prompt = max(1, int(n * 0.3))
        examples.append({"input_ids": ids, "labels": [-100] * prompt + ids[prompt:]})
    return examples


def collate(rows, padding_free):
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    return DataCollatorForLanguageModeling(pad_token_id=PAD_ID, padding_free=padding_free)(rows)


def lora_model(model_dir, attn="sdpa", fused_head=False):
    """The tiny model with LoRA on all projections, B randomised (at init B=0 and A gets no gradient)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation=attn)
    if fused_head:
        from trl.trainer.utils import add_fused_lm_head

        add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))  # as SFTTrainer does
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, task_type="CAUSAL_LM",
                        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    torch.manual_seed(0)  # lora_A's init draws from the global generator
    model = get_peft_model(model, config)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model


def loss_and_grads(model, batch, **kwargs):
    model.zero_grad(set_to_none=True)
    loss = model(**batch, use_cache=False, **kwargs).loss
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    return loss.detach(), grads


def assert_grads_close(a, b, rtol=1e-5):
    """Every tensor within rtol of the reference, relative to its own scale (norm and largest element).

    Element-wise relative checks fail on the near-zero entries that summation order alone moves.
    """
    assert a.keys() == b.keys() and len(a) > 0
    for name in a:
        diff = (a[name] - b[name]).float()
        assert diff.norm() <= rtol * b[name].norm(), f"{name}: relative error {diff.norm() / b[name].norm():.2e}"
        assert diff.abs().max() <= rtol * b[name].abs().max(), f"{name}: max error {diff.abs().max():.2e}"
    assert any(g.abs().sum() > 0 for g in a.values())


# ---------------------------------------------------------------------------------------------
# 1. No token attends across an example boundary
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch,attn", [("qwen2", "sdpa"), ("qwen2", attention.VARLEN_ATTENTION), ("qwen3", attention.VARLEN_ATTENTION)])
def test_packed_row_equals_each_example_alone(request, arch, attn):
    from transformers import AutoModelForCausalLM

    attention.register_varlen_attention()
    model_dir = request.getfixturevalue(f"tiny_{arch}_dir")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation=attn).eval()
    examples = make_examples()
    row = collate(packing.pack_examples(examples, max_tokens=sum(LENGTHS)), padding_free=True)
    assert row["input_ids"].shape == (1, sum(LENGTHS))
    with torch.no_grad():
        packed = model(input_ids=row["input_ids"], position_ids=row["position_ids"], use_cache=False,
                       output_hidden_states=True)
        alone = [model(input_ids=torch.tensor([e["input_ids"]]), use_cache=False, output_hidden_states=True)
                 for e in _examples_in_row(row, examples)]
    # Every layer's hidden states and the logits, token by token.
    for layer in range(len(packed.hidden_states)):
        expected = torch.cat([a.hidden_states[layer][0] for a in alone])
        torch.testing.assert_close(packed.hidden_states[layer][0], expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(packed.logits[0], torch.cat([a.logits[0] for a in alone]), rtol=1e-5, atol=1e-5)
    # And the test can fail: without restarting positions the examples do see each other.
    with torch.no_grad():
        leaky = model(input_ids=row["input_ids"], use_cache=False).logits[0]
    assert not torch.allclose(leaky, packed.logits[0], atol=1e-3)


def _examples_in_row(row, examples):
    """The examples of a collated packed row, in row order (matched by their tokens)."""
    ids, found = row["input_ids"][0].tolist(), []
    bounds = row["cu_seq_lens_q"].tolist()
    for start, end in zip(bounds[:-1], bounds[1:]):
        found.append(next(e for e in examples if e["input_ids"] == ids[start:end]))
    return found


def test_varlen_attention_matches_sdpa_on_a_packed_row():
    """The varlen function itself (its CPU path) against sdpa with transformers' block-diagonal mask."""

    class Module:
        num_key_value_groups = 2
        is_causal = True

    g = torch.Generator().manual_seed(0)
    lengths = [5, 1, 9, 3]
    q = torch.randn(1, 4, sum(lengths), 8, generator=g)
    k, v = torch.randn(1, 2, sum(lengths), 8, generator=g), torch.randn(1, 2, sum(lengths), 8, generator=g)
    position_ids = torch.cat([torch.arange(n) for n in lengths])[None]
    cu, max_len = attention.cu_seqlens_from_position_ids(position_ids)
    assert cu.tolist() == [0, 5, 6, 15, 18] and max_len == 9
    out, _ = attention.varlen_attention_forward(Module(), q, k, v, None, scaling=8**-0.5, position_ids=position_ids)
    segment = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
    t = torch.arange(sum(lengths))
    mask = (segment[:, None] == segment[None, :]) & (t[:, None] >= t[None, :])
    expected = torch.nn.functional.scaled_dot_product_attention(
        q, k.repeat_interleave(2, dim=1), v.repeat_interleave(2, dim=1), attn_mask=mask, scale=8**-0.5)
    torch.testing.assert_close(out, expected.transpose(1, 2), rtol=1e-5, atol=1e-6)


def causal_attention_per_example(q, k, v, cu, scale, causal=True):
    """(tokens, heads, dim) attention of each example alone with plain sdpa, K/V heads repeated to the query heads."""
    outs = []
    for a, b in zip(cu[:-1].tolist(), cu[1:].tolist()):
        groups = q.shape[1] // k.shape[1]
        qs, ks, vs = (x[a:b].transpose(0, 1) for x in (q, k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)))
        outs.append(torch.nn.functional.scaled_dot_product_attention(qs, ks, vs, is_causal=causal, scale=scale).transpose(0, 1))
    return torch.cat(outs)


def test_varlen_kernel_call_follows_the_signature_of_this_torch():
    """torch 2.11 (no enable_gqa, causal as window_size), 2.13 (enable_gqa) and a later is_causal.

    K/V always reach the kernel with their own 2 heads, never repeated up to the 4 query heads:
    FlashAttention's varlen kernel groups them natively (repeating costs 4-8x K/V memory for backward).
    The stand-in kernel does what torch's varlen_attn does with the arguments it gets (causal only when
    told; where the signature has enable_gqa, grouped K/V heads only with it); the result must be plain
    causal attention of each example alone, computed here with sdpa."""
    calls = []

    def varlen_attn_stand_in(q, k, v, cu_q, cu_k, max_q, max_k, *, scale=None, **kwargs):
        calls.append((k.shape[1], kwargs))
        assert torch.equal(cu_q, cu_k) and max_q == max_k == 7
        if "enable_gqa" in signature:  # torch 2.13+ checks the flag in Python before the same kernel
            assert kwargs.get("enable_gqa") or k.shape[1] == q.shape[1], "grouped K/V heads without enable_gqa"
        causal = kwargs.get("is_causal", False) or kwargs.get("window_size") == (-1, 0)
        return causal_attention_per_example(q, k, v, cu_q, scale, causal=causal)

    g = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(12, 4, 8, generator=g), torch.randn(12, 2, 8, generator=g), torch.randn(12, 2, 8, generator=g)
    cu = torch.tensor([0, 5, 12], dtype=torch.int32)
    expected = causal_attention_per_example(q, k, v, cu, 8**-0.5)
    base = {"query", "key", "value", "cu_seq_q", "cu_seq_k", "max_q", "max_k", "scale", "window_size"}
    for params, call in [
        (base, (2, {"window_size": (-1, 0)})),  # torch 2.11: no flag, the kernel takes the K/V heads as they are
        (base | {"enable_gqa"}, (2, {"enable_gqa": True, "window_size": (-1, 0)})),
        (base | {"enable_gqa", "is_causal"}, (2, {"enable_gqa": True, "is_causal": True})),
    ]:
        signature = params
        out = attention._varlen_cuda(varlen_attn_stand_in, frozenset(params), q, k, v, cu, 7, 8**-0.5)
        assert calls[-1] == call
        torch.testing.assert_close(out, expected)


def test_varlen_attention_leaves_padded_and_cached_calls_to_sdpa(tiny_qwen2_dir, qwen2_5_tokenizer):
    """Generation with a padded batch and a KV cache gives the same tokens as sdpa."""
    from transformers import AutoModelForCausalLM

    attention.register_varlen_attention()
    prompts = ["Hello there", "What is the capital of Peru? Answer briefly."]
    tokenizer = qwen2_5_tokenizer  # session-wide: left padding is asked for per call, not set on it
    batch = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left")
    assert (batch["attention_mask"] == 0).any()
    outputs = {}
    for attn in ("sdpa", attention.VARLEN_ATTENTION):
        model = AutoModelForCausalLM.from_pretrained(tiny_qwen2_dir, dtype=torch.float32, attn_implementation=attn)
        outputs[attn] = model.generate(**batch, max_new_tokens=6, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert torch.equal(outputs["sdpa"], outputs[attention.VARLEN_ATTENTION])


@pytest.mark.gpu
def test_varlen_kernel_on_cuda_keeps_examples_apart(tiny_qwen2_dir, monkeypatch):
    """On a GPU: the chosen attention on a packed bf16 row == each example alone, with the real kernel."""
    from transformers import AutoModelForCausalLM

    attn = attention.pick_attention("cuda", torch.bfloat16)
    assert attn in ("flash_attention_3", "flash_attention_2", attention.VARLEN_ATTENTION)
    monkeypatch.setattr(attention, "_varlen_by_example", lambda *a: pytest.fail("the CPU fallback ran on CUDA"))
    model = AutoModelForCausalLM.from_pretrained(tiny_qwen2_dir, dtype=torch.bfloat16, attn_implementation=attn)
    model = model.cuda().eval()
    examples = make_examples()
    row = collate(packing.pack_examples(examples, max_tokens=sum(LENGTHS)), padding_free=True)
    order = _examples_in_row(row, examples)
    inputs = {k: row[k].cuda() for k in ("input_ids", "position_ids", "cu_seq_lens_q", "cu_seq_lens_k")}
    with torch.no_grad():
        packed = model(**inputs, max_length_q=row["max_length_q"], max_length_k=row["max_length_k"], use_cache=False)
        alone = [model(input_ids=torch.tensor([e["input_ids"]]).cuda(), use_cache=False).logits[0] for e in order]
    expected = torch.cat(alone).float()
    # bf16, and different matmul shapes packed and alone: compare relative to the logits' scale.
    assert (packed.logits[0].float() - expected).norm() <= 1e-2 * expected.norm()


def test_pick_attention_on_cpu_and_registry():
    from transformers import AttentionInterface

    assert attention.pick_attention("cpu") == "sdpa"
    assert attention.pick_attention("cuda", torch.float32) == "sdpa"
    assert attention.register_varlen_attention() in AttentionInterface().valid_keys()
    kernel, params = attention.varlen_kernel()
    if kernel is not None:  # the signature is read, not assumed
        assert {"query", "key", "value", "scale"} <= params


# ---------------------------------------------------------------------------------------------
# 2. Packed batch == padded batch: loss and LoRA gradients
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("attn", ["sdpa", attention.VARLEN_ATTENTION])
def test_packed_loss_and_lora_grads_equal_the_padded_batch(tiny_qwen2_dir, attn):
    attention.register_varlen_attention()
    model = lora_model(tiny_qwen2_dir, attn)
    examples = make_examples()
    padded = collate(examples, padding_free=False)
    assert padded["attention_mask"].sum() < padded["attention_mask"].numel()  # there is padding
    rows = packing.pack_examples(examples, max_tokens=48)
    assert len(rows) > 1  # several packed rows, flattened by the collator
    packed = collate(rows, padding_free=True)
    loss_padded, grads_padded = loss_and_grads(model, padded)
    loss_packed, grads_packed = loss_and_grads(model, packed)
    torch.testing.assert_close(loss_packed, loss_padded, rtol=1e-5, atol=0)
    assert_grads_close(grads_packed, grads_padded)
    # Same normalisation: the tokens that are trained are the same ones.
    assert (packed["labels"] != -100).sum() == (padded["labels"][:, 1:] != -100).sum()


# ---------------------------------------------------------------------------------------------
# 3. The fused lm_head + log-prob SFTTrainer uses == the plain loss
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("padding_free", [False, True])
def test_fused_loss_and_grads_equal_the_plain_loss(tiny_qwen2_dir, padding_free):
    model = lora_model(tiny_qwen2_dir, fused_head=True)
    examples = make_examples()
    batch = collate(packing.pack_examples(examples, 64) if padding_free else examples, padding_free=padding_free)
    loss_plain, grads_plain = loss_and_grads(model, batch)
    loss_fused, grads_fused = loss_and_grads(model, batch, fused_lm_head=True)
    torch.testing.assert_close(loss_fused, loss_plain, rtol=1e-5, atol=0)
    assert_grads_close(grads_fused, grads_plain)


# ---------------------------------------------------------------------------------------------
# 4. Through the real SFTTrainer: gradient accumulation, packing, resume
# ---------------------------------------------------------------------------------------------
def grad_capture():
    """A callback keeping the LoRA gradients seen right before each optimizer step (after clipping)."""
    from transformers import TrainerCallback

    class GradCapture(TrainerCallback):
        def __init__(self):
            self.grads = []

        def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
            self.grads.append({n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad})

    return GradCapture()


def sft_run(model_dir, tokenizer, out, rows, *, batch_size, ga, padding_free, packed=False, steps=1, save_steps=None,
            resume=None, lr=0.0, attn="sdpa"):
    """One SFTTrainer run configured like train/run.py's sft_args, plus sft_speed_kwargs."""
    import datasets
    from trl import SFTConfig, SFTTrainer

    kwargs = packing.sft_speed_kwargs("cpu", packing=packed, max_length=64) if padding_free else {"max_length": None}
    args = SFTConfig(
        output_dir=str(out), seed=0, data_seed=0, max_steps=steps, per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=ga, learning_rate=lr, lr_scheduler_type="constant", warmup_steps=0,
        weight_decay=0.0, max_grad_norm=0.0, logging_steps=1, report_to="none", use_cpu=True,
        # SFTConfig defaults to bf16 autocast and checkpointing; run.py sets both, and fp32 keeps tolerances tight
        bf16=False, fp16=False, gradient_checkpointing=False,
        save_strategy="steps" if save_steps else "no", save_steps=save_steps or 500,
        include_num_input_tokens_seen="non_padding", dataset_kwargs={"skip_prepare_dataset": True},
        remove_unused_columns=False, dataloader_num_workers=0, disable_tqdm=True, **kwargs,
    )
    capture = grad_capture()
    trainer = SFTTrainer(model=lora_model(model_dir, attn), args=args, train_dataset=datasets.Dataset.from_list(rows),
                         processing_class=tokenizer, callbacks=[capture])
    trainer.train(resume_from_checkpoint=resume)
    return trainer, capture.grads


def test_scion_fused_head_loss_equals_trls_with_its_metrics_at_log_time(tmp_path, tiny_qwen2_dir, qwen2_5_tokenizer):
    """ScionTrainer's CUDA training loss (TRL's fused head without TRL's per-micro-batch .item()s) gives
    TRL's loss, and at the next log the same entropy and token accuracy TRL logs (here on the CPU)."""
    import datasets
    from trl import SFTConfig, SFTTrainer

    from train.trainer import ScionTrainer

    args = SFTConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True, bf16=False, gradient_checkpointing=False,
                     dataset_kwargs={"skip_prepare_dataset": True}, remove_unused_columns=False,
                     **packing.sft_speed_kwargs("cpu", packing=False, max_length=64))
    rows = make_examples()
    trainer = ScionTrainer(model=lora_model(tiny_qwen2_dir), args=args, train_dataset=datasets.Dataset.from_list(rows),
                           processing_class=qwen2_5_tokenizer, resume_fingerprint={}, keep_checkpoints=None)
    trainer.model.train()
    batch = collate(packing.pack_examples(rows, 64)[:1], padding_free=True)
    theirs = SFTTrainer.compute_loss(trainer, trainer.model, dict(batch))
    expected = {k: trainer._metrics["train"][k][-1] for k in ("entropy", "mean_token_accuracy")}
    trainer._metrics["train"].clear()
    ours = trainer.fused_head_loss(trainer.model, dict(batch))
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=0)
    logs = {"loss": 1.0}
    trainer.log(logs)
    assert logs["entropy"] == pytest.approx(expected["entropy"], rel=1e-5)
    assert logs["mean_token_accuracy"] == pytest.approx(expected["mean_token_accuracy"], rel=1e-5)


def test_sft_trainer_grads_equal_across_padding_packing_and_accumulation(tmp_path, tiny_qwen2_dir, qwen2_5_tokenizer,
                                                                         monkeypatch):
    """One optimizer step over the same 8 examples, four ways, through SFTTrainer (its fused loss included).

    padded GA=1 batch 8 (the reference) | padded GA=2 batch 4 | padding-free GA=2 batch 4 | packed rows
    one per micro-batch (GA = number of rows) with scion_varlen attention. Pitfall #7: GA=2 with batch
    b must equal GA=1 with batch 2b, which needs the loss normalised by the trained tokens of the whole
    step (Trainer's num_items_in_batch), not averaged per micro-batch: the micro-batches here hold
    different numbers of trained tokens, so a per-micro-batch mean fails this test (checked by hand:
    a relative gradient error of 2e-2).
    """
    examples = make_examples()
    rows = packing.pack_examples(examples, max_tokens=64)
    n_rows = len(rows)
    assert 1 < n_rows < len(examples)
    runs = {
        "padded": dict(rows=examples, batch_size=8, ga=1, padding_free=False),
        "padded_ga2": dict(rows=examples, batch_size=4, ga=2, padding_free=False),
        "padding_free_ga2": dict(rows=examples, batch_size=4, ga=2, padding_free=True),
        "packed_ga": dict(rows=rows, batch_size=1, ga=n_rows, padding_free=True, packed=True,
                          attn=attention.register_varlen_attention()),
    }
    # The packed run's attention must get the example boundaries from the collator's cu_seq_lens,
    # passed through Trainer, PEFT and the fused head, not recompute them from position_ids.
    monkeypatch.setattr(attention, "cu_seqlens_from_position_ids", lambda *a: pytest.fail("cu_seq_lens did not arrive"))
    grads = {}
    for name, kwargs in runs.items():
        trainer, captured = sft_run(tiny_qwen2_dir, qwen2_5_tokenizer, tmp_path / name, **kwargs)
        assert len(captured) == 1 and trainer.state.global_step == 1
        grads[name] = captured[0]
    for name in runs:
        assert_grads_close(grads[name], grads["padded"])


def test_packed_sft_run_resumes_exactly(tmp_path, tiny_qwen2_dir, qwen2_5_tokenizer):
    """2 packed steps straight == 1 step, stop, resume from checkpoint-1 for 1 more (same LoRA weights)."""
    rows = packing.pack_examples(make_examples(seed=3), max_tokens=40)
    common = dict(rows=rows, batch_size=1, ga=1, padding_free=True, packed=True, steps=2, lr=1e-2)
    straight, _ = sft_run(tiny_qwen2_dir, qwen2_5_tokenizer, tmp_path / "straight", **common)
    sft_run(tiny_qwen2_dir, qwen2_5_tokenizer, tmp_path / "stopped", **{**common, "steps": 1}, save_steps=1)
    resumed, _ = sft_run(tiny_qwen2_dir, qwen2_5_tokenizer, tmp_path / "stopped", **common,
                         resume=str(tmp_path / "stopped" / "checkpoint-1"))
    a = {n: p for n, p in straight.model.named_parameters() if p.requires_grad}
    b = {n: p for n, p in resumed.model.named_parameters() if p.requires_grad}
    assert_grads_close({n: p.detach() for n, p in b.items()}, {n: p.detach() for n, p in a.items()})
    losses = lambda t: [round(h["loss"], 5) for h in t.state.log_history if "loss" in h]  # noqa: E731
    assert losses(resumed)[-1:] == losses(straight)[-1:]


# ---------------------------------------------------------------------------------------------
# 5. Best-fit packing
# ---------------------------------------------------------------------------------------------
def test_best_fit_packing_keeps_every_example_whole_and_once():
    import random

    rng = random.Random(0)
    lengths = [min(2048, max(1, int(rng.lognormvariate(6.1, 0.8)))) for _ in range(3000)]
    bins = packing.best_fit_bins(lengths, capacity=4096, seed=0)
    flat = sorted(i for b in bins for i in b)
    assert flat == list(range(len(lengths)))  # every example exactly once
    assert all(sum(lengths[i] for i in b) <= 4096 for b in bins)
    # Best fit is close to the bound: a fill of over 97% here, against 1 row per 4096 tokens.
    assert len(bins) <= 1.03 * sum(lengths) / 4096 + 1

    examples = make_examples([5, 17, 3, 40, 11, 29, 2, 8], seed=4)
    rows = packing.pack_examples(examples, max_tokens=40, seed=1)
    seen = []
    for row in rows:
        assert len(row["input_ids"]) == len(row["labels"]) == sum(row["seq_lengths"]) <= 40
        start = 0
        for n in row["seq_lengths"]:
            piece = {"input_ids": row["input_ids"][start:start + n], "labels": row["labels"][start:start + n]}
            seen.append(examples.index(piece))  # whole: tokens and labels intact
            start += n
    assert sorted(seen) == list(range(len(examples)))
    assert packing.packing_efficiency(rows, 40) > 0.7
    import datasets

    assert packing.pack_dataset(datasets.Dataset.from_list(examples), 40, seed=1).to_list() == rows
    with pytest.raises(ValueError, match="longer than the row budget 30"):
        packing.pack_examples(examples, max_tokens=30)


def test_sft_speed_kwargs_are_sftconfig_fields():
    import dataclasses

    from trl import SFTConfig

    fields = {f.name for f in dataclasses.fields(SFTConfig)}
    for device in ("cpu", "cuda"):
        for packed in (False, True):
            kwargs = packing.sft_speed_kwargs(device, packed, 2048)
            assert set(kwargs) <= fields and kwargs["padding_free"] is True
    assert packing.sft_speed_kwargs("cpu", False, 2048)["max_length"] is None  # TRL refuses padding-free + max_length
    assert packing.sft_speed_kwargs("cpu", True, 2048)["max_length"] == 2048


# ---------------------------------------------------------------------------------------------
# 6. Activation memory policy and FLOPs
# ---------------------------------------------------------------------------------------------
def test_checkpointing_policies_give_the_same_grads(tiny_qwen2_dir):
    batch = collate(packing.pack_examples(make_examples(), 64), padding_free=True)
    _, reference = loss_and_grads(lora_model(tiny_qwen2_dir).train(), batch)
    for policy in ("full", "selective", "offload"):
        model = lora_model(tiny_qwen2_dir).train()
        activation_checkpointing.enable_checkpointing(model, policy)
        assert model.get_base_model().is_gradient_checkpointing
        _, checkpointed = loss_and_grads(model, batch)
        assert_grads_close(checkpointed, reference)


def test_offload_works_on_transformers_5_17(tiny_qwen2_dir, monkeypatch):
    """5.17 to 5.22 have no activation_checkpointing_enable, but gradient_checkpointing_enable(offload=True)
    offloads (its signature, copied from transformers 5.17.0's modeling_utils.py): enabling offload and
    auto's choice of it must use that, on the GPU where pinned memory exists."""
    from transformers import PreTrainedModel

    calls = []

    def gradient_checkpointing_enable_5_17(self, gradient_checkpointing_kwargs=None, every_n_layers=1, offload=False):
        calls.append(offload)

    monkeypatch.delattr(PreTrainedModel, "activation_checkpointing_enable", raising=False)
    monkeypatch.setattr(PreTrainedModel, "gradient_checkpointing_enable", gradient_checkpointing_enable_5_17)
    monkeypatch.setattr(activation_checkpointing, "has_cuda", lambda: True)
    model = lora_model(tiny_qwen2_dir)
    activation_checkpointing.enable_checkpointing(model, "offload")
    assert calls == [True]
    assert activation_checkpointing.auto_checkpointing(model, free_bytes=2**30, tokens_per_step=10**6) == "offload"


def test_train_applies_the_checkpointing_policy_it_reports(tiny_qwen2_dir):
    """trainer.checkpointing: auto picks from the free memory (none on the CPU); what it reports is what runs."""
    from train.config import Checkpointing, DataConfig, ModelConfig, PeftConfig, ScionConfig, TrainerConfig
    from train.run import checkpointing_policy

    config = ScionConfig(model=ModelConfig(name_or_path="tiny:qwen2"), peft=PeftConfig(dropout=0.0),
                         data=DataConfig(train="unused.jsonl", max_length=2048), trainer=TrainerConfig(batch_size=8))
    gib = 2**30

    def applied(free_memory):
        model = lora_model(tiny_qwen2_dir)
        return checkpointing_policy(config, model, free_memory), model.get_base_model().is_gradient_checkpointing

    assert applied(None) == ("none (auto)", False)  # the CPU
    assert applied(1000 * gib) == ("none (auto)", False)  # a GPU with room to spare
    # Room for the weights, the reserve and full checkpointing's activations, but not selective's.
    model = lora_model(tiny_qwen2_dir)
    # (no Liger on the CPU: the estimate for transformers' own kernels)
    full = activation_checkpointing.activation_bytes_per_token(model.config, "full", fused_kernels=False) * 8 * 2048
    selective = activation_checkpointing.activation_bytes_per_token(model.config, "selective", fused_kernels=False) * 8 * 2048
    free = (activation_checkpointing.training_state_bytes(model) + 2 * gib + (full + selective) / 2) / 0.9
    assert applied(free) == ("full (auto)", True)
    config.trainer.checkpointing = Checkpointing.selective
    assert applied(1000 * gib) == ("selective", True)
    config.trainer.checkpointing = Checkpointing.none
    assert applied(1 * gib) == ("none", False)


def saved_activation_bytes_per_token(model_dir, policy, tokens=256):
    """Bytes per token of the tensors autograd saves for backward inside the decoder layers during one
    bf16 LoRA training forward pass (all seven projections adapted, sdpa attention, the CPU).

    A saved_tensors_hooks pack hook sees every tensor autograd keeps; a forward pre/post hook on each
    decoder layer turns counting on only while a layer runs, so the embedding, the final norm and the
    151,936-row head and its loss stay out. Tensors sharing a storage (views) count once, at their
    largest size; the frozen and LoRA weights (saved by every matmul) are not activations and are left out.
    """
    model = lora_model(model_dir).to(torch.bfloat16)
    activation_checkpointing.enable_checkpointing(model, policy)
    model.train()
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}
    inside_layer = [False]
    for layer in model.get_base_model().model.layers:
        layer.register_forward_pre_hook(lambda module, args: inside_layer.__setitem__(0, True))
        layer.register_forward_hook(lambda module, args, output: inside_layer.__setitem__(0, False))

    def pack(t):
        storage = t.untyped_storage().data_ptr()
        if inside_layer[0] and storage not in weights:
            saved[storage] = max(saved.get(storage, 0), t.numel() * t.element_size())
        return t

    ids = torch.randint(0, 151000, (1, tokens), generator=torch.Generator().manual_seed(0))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(input_ids=ids, labels=ids)
    return sum(saved.values()) / tokens, model.config


@pytest.mark.parametrize("arch", ["qwen2", "qwen3"])
def test_activation_estimate_is_on_the_safe_side_of_what_autograd_saves(arch, request):
    """The estimate that trainer.checkpointing=auto trusts, against a measurement: without checkpointing
    the decoder layers' part of activation_bytes_per_token (layers x per-layer; the CPU has no Liger, so
    its unfused-kernel terms) is at least the bytes autograd really saves per token, and not more than
    3x that. Full checkpointing saves far less: the measured bytes fall to each layer's bf16 input."""
    model_dir = request.getfixturevalue(f"tiny_{arch}_dir")
    measured_none, config = saved_activation_bytes_per_token(model_dir, "none")
    measured_full, _ = saved_activation_bytes_per_token(model_dir, "full")
    head_term = 8 * config.hidden_size  # the estimate's loss term, outside the layers
    estimated_layers = activation_checkpointing.activation_bytes_per_token(config, "none", fused_kernels=False) - head_term
    assert measured_none <= estimated_layers <= 3 * measured_none, (estimated_layers, measured_none)
    assert measured_full < measured_none / 4, (measured_full, measured_none)
    assert measured_full == config.num_hidden_layers * config.hidden_size * 2  # one bf16 input per layer


@pytest.mark.slow
def test_training_speed_leaves_out_eval_and_saves_and_the_loop_never_syncs_between_logs(tmp_path, monkeypatch):
    """tokens/s means training tokens per second of training: evaluation and checkpoint saving (made
    1 s slower each here) are not in the seconds, neither in run.json nor in the per-log rates. And no
    micro-batch or optimizer step asks the device for a number (.item(), float(), bool(), .tolist())
    except at logging, evaluation and saving steps: each such sync stalls the GPU's queue."""
    import time as time_module
    import traceback

    import transformers
    from trl import SFTTrainer

    from train.config import DataConfig, ModelConfig, PeftConfig, ScionConfig, TrainerConfig
    from train.run import train
    from train.trainer import ScionTrainer

    def slower(method):
        def wrapper(*args, **kwargs):
            time_module.sleep(1.0)
            return method(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(SFTTrainer, "_save_checkpoint", slower(SFTTrainer._save_checkpoint))
    monkeypatch.setattr(transformers.Trainer, "_evaluate", slower(transformers.Trainer._evaluate))

    syncs, inside = [], [False]
    for name in ("item", "tolist", "__float__", "__int__", "__bool__"):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, _name=name, **kwargs):
            caller = traceback.extract_stack(limit=2)[0]
            # transformers' padding-mask check of the CPU's padded sdpa batches is left out: GPU runs are
            # padding-free, where the varlen attention builds no mask.
            if inside[0] and not caller.filename.endswith("masking_utils.py"):
                syncs.append(f"{_name} at {caller.filename}:{caller.lineno}")
            return _original(self, *args, **kwargs)
        monkeypatch.setattr(torch.Tensor, name, counted)
    for name in ("training_step", "_track_num_input_tokens", "_get_grad_norm"):
        original = getattr(ScionTrainer, name)

        def hot(self, *args, _original=original, **kwargs):
            inside[0] = True
            try:
                return _original(self, *args, **kwargs)
            finally:
                inside[0] = False
        monkeypatch.setattr(ScionTrainer, name, hot)

    data = REPO_ROOT / "data" / "quickstart"
    config = ScionConfig(model=ModelConfig(name_or_path="tiny:qwen2"), peft=PeftConfig(r=4, alpha=8, dropout=0.0),
                         data=DataConfig(train=str(data / "train.jsonl"), eval=str(data / "eval.jsonl"), max_length=64),
                         trainer=TrainerConfig(output_dir=str(tmp_path / "run"), max_steps=4, batch_size=2,
                                               gradient_accumulation_steps=2, logging_steps=2, eval_steps=2, save_steps=2,
                                               precision="fp32"),
                         recipe_name="speed")
    run = train(config).run
    assert syncs == []
    metrics, wall = run["metrics"], run["timings"]["train_seconds"]
    assert metrics["train_seconds"] <= wall - 4.0  # 2 evaluations + 2 saves, 1 s each, left out
    seconds = metrics["train_seconds"]  # rounded to 0.01 s in run.json
    assert metrics["tokens_this_run"] / (seconds + 0.006) <= metrics["tokens_per_second"] <= metrics["tokens_this_run"] / (seconds - 0.006)
    logged = [e for e in run["log_history"] if "tokens_per_second" in e]
    assert [e["step"] for e in logged] == [2, 4]
    seen = [0] + [e["num_input_tokens_seen"] for e in logged]
    logged_seconds = sum((b - a) / e["tokens_per_second"] for a, b, e in zip(seen, seen[1:], logged))
    assert logged_seconds <= metrics["train_seconds"] * 1.02 + 0.1 and seen[-1] == metrics["tokens_seen"]


def test_pick_checkpointing_and_flops():
    from transformers import Qwen2Config

    # Qwen2.5-3B's shape: 4·N is the H100 probe's "model TFLOP/s (4N)" divided by tokens/s.
    cfg = Qwen2Config(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
                      num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True)
    assert throughput.matmul_params(cfg) == 36 * (2048 * 128 * (32 + 4) + 3 * 2048 * 11008) + 151936 * 2048
    assert 146 <= 11851 * throughput.model_flops_per_token(cfg) / 1e12 <= 147  # the probe's packed_varlen_liger row
    assert throughput.model_flops_per_token(cfg, throughput.mean_attended_keys([450])) > throughput.model_flops_per_token(cfg)
    assert throughput.peak_flops("NVIDIA H100 80GB HBM3") == 989e12 and throughput.peak_flops("NVIDIA H100 PCIe") == 756e12
    assert throughput.peak_flops("NVIDIA L40S") == 362e12 and throughput.peak_flops("cpu") is None
    assert throughput.mfu(1000.0, 1e9, None) is None and throughput.mfu(1000.0, 1e9, 1e13) == pytest.approx(0.1)

    gib = 2**30
    # Ordered by memory: none > selective > full > offload, and the policy relaxes as memory grows.
    per = [activation_checkpointing.activation_bytes_per_token(cfg, p) for p in ("none", "selective", "full", "offload")]
    assert per == sorted(per, reverse=True)
    picks = [activation_checkpointing.pick_checkpointing(free * gib, 8 * gib, 16384, cfg) for free in (15, 18, 22, 200)]
    assert picks == ["offload", "full", "selective", "none"]
    # Calibration against the probe: 3B at 8,192 tokens without checkpointing peaked at 51.2 GiB (Liger on).
    assert 40 * gib < activation_checkpointing.activation_bytes_per_token(cfg, "none") * 8192 + 6.5 * gib < 60 * gib


def test_memory_estimate_covers_qwen3_runs_without_liger_and_qlora(tiny_qwen2_dir):
    from transformers import Qwen2Config, Qwen3Config

    # Qwen3-4B: 36 layers, hidden 2560, MLP 9728, attention 32 x 128 = 4096 wide, k/v 8 x 128 = 1024.
    q3 = Qwen3Config(hidden_size=2560, intermediate_size=9728, num_hidden_layers=36, num_attention_heads=32,
                     num_key_value_heads=8, head_dim=128, vocab_size=151936, tie_word_embeddings=True)
    per_layer = 2 * (15 * 2560 + 5 * 4096 + 4 * 1024 + 5 * 9728)  # + q_norm/k_norm and the wider attention
    assert activation_checkpointing.activation_bytes_per_token(q3, "none") == 36 * per_layer + 8 * 2560
    # Without Liger: two HF RMSNorms keep fp32 input and result (8 bytes x hidden each), q/k norms the
    # same over their widths, SwiGLU keeps silu(gate).
    unfused = per_layer + 2 * 8 * 2560 + 2 * 9728 + 8 * (4096 + 1024)
    assert activation_checkpointing.activation_bytes_per_token(q3, "none", fused_kernels=False) == 36 * unfused + 8 * 2560
    q2 = Qwen2Config(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
                     num_key_value_heads=2, vocab_size=151936)
    assert (activation_checkpointing.activation_bytes_per_token(q2, "full", fused_kernels=False)
            - activation_checkpointing.activation_bytes_per_token(q2, "full")) == 16 * 2048 + 2 * 11008
    # The tiny model on the CPU runs transformers' own kernels.
    assert not activation_checkpointing.uses_fused_kernels(lora_model(tiny_qwen2_dir))


def test_qlora_training_state_counts_4bit_weights_and_fp32_adapter(tiny_qwen2_dir):
    """QLoRA's state in the estimate: half a byte per quantised weight, 16 bytes per trainable weight
    (fp32 weight, gradient and two AdamW moments)."""
    pytest.importorskip("bitsandbytes")
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)
    try:
        model = AutoModelForCausalLM.from_pretrained(tiny_qwen2_dir, quantization_config=quant, dtype=torch.bfloat16,
                                                     device_map={"": "cpu"})
    except (RuntimeError, NotImplementedError) as e:
        pytest.skip(f"bitsandbytes 4-bit does not run here: {e}")
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    layers = model.get_base_model().model.layers
    quantised = sum(m.out_features * m.in_features for layer in layers for m in layer.modules()
                    if type(m).__name__ == "Linear4bit")
    other = sum(p.numel() * 2 for n, p in model.named_parameters() if p.dtype == torch.bfloat16)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert quantised > 0 and trainable > 0
    state = activation_checkpointing.training_state_bytes(model)
    assert state == pytest.approx(quantised / 2 + other + 16 * trainable, rel=0.01)


def test_speed_callback_logs_tokens_per_second_into_history():
    from transformers import Qwen2Config, TrainerControl, TrainerState

    # Qwen2.5-0.5B's shape; N by hand from its config.json: 24 layers of q,k,v,o (14 and 2 heads of 64)
    # and gate/up/down, plus the 151,936 x 896 lm_head.
    cfg = Qwen2Config(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                      num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True)
    body, head = 24 * (896 * 64 * (28 + 4) + 3 * 896 * 4864), 151936 * 896
    meter = throughput.TrainingMeter()
    callback = throughput.speed_callback(cfg, peak=1e10, meter=meter)
    state = TrainerState()
    state.num_input_tokens_seen, state.global_step = 0, 0
    callback.on_train_begin(None, state, TrainerControl())
    state.num_input_tokens_seen, state.global_step = 5000, 1
    meter.count_trained(torch.tensor([[-100] * 3500 + [1] * 1500]))  # 1,500 positions whose next token is trained
    logs = {"loss": 1.0}
    state.log_history.append({**logs, "step": 1})
    callback.on_log(None, state, TrainerControl(), logs=logs)
    seconds = 5000 / logs["tokens_per_second"]
    # MFU counts the lm_head on the 1,500 labelled positions only, not on all 5,000 tokens.
    expected = (4 * body * 5000 + 4 * head * 1500) / seconds / 1e10
    assert logs["mfu"] == pytest.approx(expected, rel=1e-2)
    charged_to_every_token = 5000 * throughput.model_flops_per_token(cfg) / seconds / 1e10
    assert 1.2 < charged_to_every_token / logs["mfu"] < 1.3  # the ~25% overstatement on 0.5B at 30% trained
    assert state.log_history[-1]["tokens_per_second"] == logs["tokens_per_second"]
    summary = throughput.run_speed_summary(600_000, 180_000, 2.0, cfg, "NVIDIA H100 80GB HBM3")
    assert summary["tokens_per_second"] == 300_000.0
    assert summary["mfu"] == pytest.approx((4 * body * 600_000 + 4 * head * 180_000) / 2.0 / 989e12, rel=1e-3)
    assert throughput.run_speed_summary(1000, 300, 2.0, cfg, None)["mfu"] is None


# ---------------------------------------------------------------------------------------------
# 7. The benchmark's CPU smoke mode
# ---------------------------------------------------------------------------------------------
def test_bench_smoke_runs_both_configurations(tmp_path):
    out = tmp_path / "bench.json"
    result = subprocess.run([sys.executable, str(REPO_ROOT / "bench" / "lora_bench.py"), "--smoke", "--out", str(out)],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    by_config = {r["config"]: r for r in report["results"]}
    assert set(by_config) >= {"stock", "scion"}
    for r in by_config.values():
        assert r["status"] == "ok" and r["tokens_per_s"] > 0 and r["real_tokens"] > 0
    assert by_config["scion"]["vs_stock_tokens_per_s"] > 0
    # The smoke data as the benchmark documents it: pool of 64 lengths, lognormal(median 24, sigma 0.8)
    # from random.Random(0), clipped to [8, 64]; stock times step 2 (after 1 warm-up) of 2 consecutive
    # examples, i.e. examples 2 and 3, whose first 30% (at least 1 token) is prompt.
    rng = random.Random(0)
    lengths = [int(min(max(8, rng.lognormvariate(math.log(24), 0.8)), 64)) for _ in range(64)]
    timed = lengths[2:4]
    assert by_config["stock"]["real_tokens"] == sum(timed)
    assert by_config["stock"]["trained_tokens"] == sum(n - max(1, int(n * 0.3)) for n in timed)
    assert by_config["scion"]["real_tokens"] <= 128  # one packed row of tokens_per_step
    for r in by_config.values():  # random tiny weights after 2 small steps: near-uniform over the vocabulary
        assert r["loss"] == pytest.approx(math.log(151936), abs=0.1)
    assert "stock" in result.stdout and "scion" in result.stdout  # the table
