"""Score one model on the eval examples: held-out loss over assistant tokens, and generations.

Both functions are called once with the adapter disabled (the base) and once with it enabled
(the fine-tune), on the same examples with the same settings, inside `inference_mode`.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

from train.config import DataConfig, EvalConfig
from train.data import control_tokens, tokenize_conversation
from train.tokenizer import ENDOFTEXT, IM_END

# Rows of hidden states pushed through lm_head at once: a 152k-word vocabulary makes logits the
# largest tensor in the forward pass, so only assistant positions are projected, in chunks.
LOGIT_CHUNK = 2048


@contextmanager
def inference_mode(model) -> Iterator[None]:
    """Eval mode with the KV cache on, restored afterwards (pitfalls.md #13).

    Right after training the model is in train mode, possibly with gradient checkpointing, and
    generating from it then gives garbage; the caller's mode must survive the evaluation.
    """
    import torch

    was_training = model.training
    config = model.config
    had_cache = getattr(config, "use_cache", None)
    model.eval()
    config.use_cache = True
    try:
        with torch.no_grad():
            yield
    finally:
        config.use_cache = had_cache
        model.train(was_training)


def _backbone_and_head(model):
    """The decoder stack and lm_head, through a PEFT wrapper (LoRA layers sit inside them)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return inner.get_decoder(), inner.get_output_embeddings()


# ---------------------------------------------------------------------------------------------
# Held-out loss
# ---------------------------------------------------------------------------------------------
@dataclass
class LossResult:
    loss: float  # mean negative log-likelihood per assistant token
    perplexity: float | None  # exp(loss); None where it overflows
    tokens: int  # assistant tokens scored
    examples: int  # conversations scored (those left with an assistant token after truncation)


def encode_for_loss(messages_list: list[list[dict[str, str]]], wheres: list[str], tokenizer, data: DataConfig):
    """input_ids and labels with training's assistant-only mask, truncated as training truncates."""
    controls = control_tokens(tokenizer)
    encoded = []
    for messages, where in zip(messages_list, wheres):
        # Always assistant-only: the loss compares base and fine-tune on the answers they give.
        input_ids, labels = tokenize_conversation(messages, tokenizer, True, controls, where)
        input_ids, labels = input_ids[: data.max_length], labels[: data.max_length]
        if any(label != -100 for label in labels[1:]):  # the first token is never predicted
            encoded.append((input_ids, labels))
    return encoded


def assistant_loss(model, encoded, pad_id: int, batch_size: int, desc: str) -> LossResult:
    """Token-weighted cross-entropy over every assistant token of the eval conversations."""
    import torch
    import torch.nn.functional as F
    from tqdm.auto import tqdm

    backbone, head = _backbone_and_head(model)
    device = next(model.parameters()).device
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i][0]))  # similar lengths batch together
    total, count = 0.0, 0
    for start in tqdm(range(0, len(order), batch_size), desc=desc, leave=False):
        batch = [encoded[i] for i in order[start:start + batch_size]]
        width = max(len(ids) for ids, _ in batch)
        input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        labels = torch.full((len(batch), width), -100, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        for row, (ids, labs) in enumerate(batch):  # right padding: positions stay 0..n-1
            input_ids[row, : len(ids)] = torch.tensor(ids)
            labels[row, : len(labs)] = torch.tensor(labs)
            attention[row, : len(ids)] = 1
        hidden = backbone(input_ids=input_ids.to(device), attention_mask=attention.to(device)).last_hidden_state
        # Position t predicts token t+1; keep only positions whose next token is an assistant token.
        targets = labels[:, 1:].to(device)
        keep = targets != -100
        states, targets = hidden[:, :-1][keep], targets[keep]
        for chunk in range(0, len(targets), LOGIT_CHUNK):
            logits = head(states[chunk:chunk + LOGIT_CHUNK]).float()
            total += F.cross_entropy(logits, targets[chunk:chunk + LOGIT_CHUNK], reduction="sum").item()
        count += int(keep.sum())
    loss = total / max(count, 1)
    return LossResult(loss=loss, perplexity=math.exp(loss) if loss < 700 else None, tokens=count, examples=len(encoded))


# ---------------------------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------------------------
@dataclass
class Generation:
    text: str  # decoded, special tokens removed
    tokens: int  # generated tokens before the stop token (max_new_tokens when it never stopped)
    stopped: bool  # emitted <|im_end|> (or <|endoftext|>) within max_new_tokens


def stop_token_ids(tokenizer) -> list[int]:
    """<|im_end|> ends a chat turn; <|endoftext|> ends a document (what a base checkpoint may emit)."""
    ids = [tokenizer.convert_tokens_to_ids(IM_END), tokenizer.convert_tokens_to_ids(ENDOFTEXT), tokenizer.eos_token_id]
    return sorted({i for i in ids if isinstance(i, int) and i >= 0})


def render_prompt(tokenizer, prompt: list[dict[str, str]], enable_thinking: bool = False) -> str:
    # enable_thinking=False gives Qwen3's empty think block, as training renders a row without
    # reasoning; Qwen2.5's and Qwen3-2507's templates ignore the flag.
    return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True, enable_thinking=enable_thinking)


def decoding_config(cfg: EvalConfig, tokenizer):
    """Every knob set explicitly, so the model's generation_config.json (Qwen's chat checkpoints ship
    sampling at temperature 0.7 with repetition_penalty 1.05) cannot change how base and fine-tune decode."""
    from transformers import GenerationConfig

    return GenerationConfig(
        max_new_tokens=cfg.max_new_tokens,
        min_new_tokens=0,
        do_sample=cfg.do_sample,
        temperature=cfg.temperature if cfg.do_sample else 1.0,
        top_p=cfg.top_p if cfg.do_sample else 1.0,
        # Off when sampling (the schema exposes temperature and top_p only); unused when greedy.
        top_k=0 if cfg.do_sample else None,
        typical_p=1.0,
        repetition_penalty=1.0,
        no_repeat_ngram_size=0,
        num_beams=1,
        use_cache=True,
        eos_token_id=stop_token_ids(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
    )


def decoding_settings(cfg: EvalConfig, tokenizer) -> dict[str, Any]:
    """What results.json records about decoding (identical for base and fine-tune)."""
    return {
        "strategy": "sampling" if cfg.do_sample else "greedy",
        "max_new_tokens": cfg.max_new_tokens,
        "do_sample": cfg.do_sample,
        "temperature": cfg.temperature if cfg.do_sample else None,
        "top_p": cfg.top_p if cfg.do_sample else None,
        "seed": cfg.seed,
        "batch_size": cfg.batch_size,
        "padding_side": "left",
        "stop_token_ids": stop_token_ids(tokenizer),
        "chat_template": f"tokenizer's own, add_generation_prompt=True, enable_thinking={cfg.enable_thinking}",
    }


def _finish(new_tokens: list[int], stops: set[int], tokenizer) -> Generation:
    for position, token in enumerate(new_tokens):
        if token in stops:
            kept = new_tokens[:position]
            return Generation(tokenizer.decode(kept, skip_special_tokens=True), len(kept), True)
    return Generation(tokenizer.decode(new_tokens, skip_special_tokens=True), len(new_tokens), False)


def generate_all(model, tokenizer, prompts: list[list[dict[str, str]]], cfg: EvalConfig, desc: str) -> list[Generation]:
    """One generation per prompt: batched, left padded, longest prompts first, seeded."""
    import torch
    from tqdm.auto import tqdm
    from transformers import set_seed

    encoded = [tokenizer(render_prompt(tokenizer, p, cfg.enable_thinking), add_special_tokens=False)["input_ids"]
               for p in prompts]
    config = decoding_config(cfg, tokenizer)
    stops = set(config.eos_token_id)
    device = next(model.parameters()).device
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
    results: list[Generation | None] = [None] * len(encoded)
    set_seed(cfg.seed)  # the same random stream for base and fine-tune when sampling
    for start in tqdm(range(0, len(order), cfg.batch_size), desc=desc, leave=False):
        batch = order[start:start + cfg.batch_size]
        width = max(len(encoded[i]) for i in batch)
        input_ids = torch.full((len(batch), width), tokenizer.pad_token_id, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        for row, i in enumerate(batch):  # left padding: every prompt ends where generation starts
            input_ids[row, width - len(encoded[i]):] = torch.tensor(encoded[i])
            attention[row, width - len(encoded[i]):] = 1
        output = model.generate(input_ids=input_ids.to(device), attention_mask=attention.to(device), generation_config=config)
        for i, new_tokens in zip(batch, output[:, width:].tolist()):  # one device-to-host copy per batch
            results[i] = _finish(new_tokens, stops, tokenizer)
    return results  # type: ignore[return-value]
