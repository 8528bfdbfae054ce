"""Load chat data, check every row, and turn it into token ids with an assistant-only label mask.

This module reads one source; train/mixture.py composes several (data.train as a list) from it.

Formats (one per source, detected from its first row unless the source or `data.format` says; every
source of a mixture may use its own):
- messages:           {"messages": [{"role": "system"|"user"|"assistant"|"tool", "content": str}, ...]}
                      (content may also be a list of {"type": "text", "text": str} parts)
                      (ShareGPT's {"conversations": [{"from": "human"|"gpt", "value": ...}]} is mapped)
- prompt_completion:  {"prompt": str, "completion": str}
- instruction:        {"instruction": str, "input": str (optional), "output": str}

Labels: the conversation is rendered with the tokenizer's own chat template (Qwen's stock one), then
every assistant block `<|im_start|>assistant\\n ... <|im_end|>` is located in the rendered text and
the tokens inside it (the content and its <|im_end|>) are trained; everything else is -100. This
works with Qwen's stock templates, which carry no `{% generation %}` markers, so we do not rely on
`return_assistant_tokens_mask` (it silently masks nothing there; see pitfalls.md #3).

Reasoning: an assistant turn's reasoning, given as `reasoning_content` or as `<think>...</think>` at
the start of its content, is passed to the template, which renders it its own way (Qwen3 and Qwen3.5
keep it for the turns after the last user query and drop it from earlier ones). The start of an
assistant block that the template's own generation prompt already holds at inference is prompt,
not loss: Qwen3's empty `<think>\\n\\n</think>\\n\\n` (enable_thinking=False), the `<think>\\n` that
Qwen3.5's and Qwen3-Thinking-2507's generation prompt opens. So the reasoning and the answer are
trained exactly as the model produces them after the generation prompt.

Policies:
- Control-token text (e.g. "<|im_end|>") inside any message content is rejected: it would tokenize
  to the real control token and silently restructure the conversation.
- Examples longer than data.max_length are truncated (keep the start) or dropped
  (data.truncation); the run reports how many. An example left with no trained token is an error
  that names its file and row.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from train.config import LOCAL_SUFFIXES, DataConfig, DataFormat, Truncation, looks_like_path
from train.errors import ScionError

MAX_SHOWN = 3  # offending rows quoted in an error or warning
ROLES = {"system", "user", "assistant", "tool"}
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}
# One assistant block in ChatML; group 1 is what gets trained (content + <|im_end|>), less the part of
# it the generation prompt holds (see generation_prompt_heads).
ASSISTANT_BLOCK = re.compile(r"<\|im_start\|>assistant\n(.*?<\|im_end\|>)", re.DOTALL)
ASSISTANT_HEADER = "<|im_start|>assistant\n"
# Qwen3's empty think block: the generation prompt with enable_thinking=False.
EMPTY_THINK = "<think>\n\n</think>\n\n"


@dataclass
class Row:
    data: dict[str, Any]
    where: str  # "path:line" or "hub-id[split] row N", for error messages
    error: str | None = None  # why the row could not be read (reported with the other bad rows)


@dataclass
class SplitStats:
    source: str
    rows: int = 0
    examples: int = 0
    truncated: int = 0
    dropped_too_long: int = 0
    tokens: int = 0
    trained_tokens: int = 0
    duplicates: int = 0
    duplicate_examples: list[str] = field(default_factory=list)
    with_reasoning: int = 0  # examples with an assistant turn that carries reasoning


# ---------------------------------------------------------------------------------------------
# Reading rows, with their location
# ---------------------------------------------------------------------------------------------
def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _read_json_file(path: Path) -> list[Row]:
    """JSON Lines (or a JSON array). Parsed here, not by `datasets`, so errors carry line numbers."""
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: files saved on Windows often start with a BOM
    except UnicodeDecodeError as e:
        line = path.read_bytes()[: e.start].count(b"\n") + 1
        raise ScionError(f"{path}:{line}: not UTF-8 text (byte 0x{e.object[e.start]:02x}); save the file as UTF-8") from None
    if text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as e:
            raise ScionError(f"{path}:{e.lineno}: invalid JSON: {e.msg}") from None
        return [Row(item, f"{path} item {i + 1}") for i, item in enumerate(items)]
    rows = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(Row(json.loads(line), f"{path}:{lineno}"))
        except json.JSONDecodeError as e:  # kept as a bad row, so the file's other bad rows are reported too
            rows.append(Row(None, f"{path}:{lineno}", error=f"invalid JSON: {e.msg}"))
    return rows


def _read_with_datasets(kind: str, path: Path) -> list[Row]:
    import datasets

    try:
        ds = datasets.load_dataset(kind, data_files=str(path), split="train")
    except Exception as e:  # pyarrow/csv parser errors: keep the first line only
        raise ScionError(f"{path}: cannot read as {kind}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    # Data rows are numbered from 1; for CSV, row 1 is the first line after the header.
    return [Row(item, f"{path} row {i + 1}") for i, item in enumerate(ds)]


def _read_hub_dataset(dataset_id: str, split: str, revision: str | None = None,
                      key: str = "data") -> tuple[list[Row], dict[str, Any]]:
    import datasets

    try:
        ds = datasets.load_dataset(dataset_id, split=split, revision=revision)
    except Exception as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        at = f" at revision '{revision}'" if revision else ""
        raise ScionError(f"{key}: cannot load Hub dataset '{dataset_id}' (split '{split}'{at}): {first}") from None
    rows = [Row(item, f"{dataset_id}[{split}] row {i + 1}") for i, item in enumerate(ds)]
    return rows, {"source": dataset_id, "split": split, "revision": revision, "commit": _dataset_commit(ds),
                  "fingerprint": ds._fingerprint, "rows": len(rows)}


def _dataset_commit(ds) -> str | None:
    """The Hub commit a loaded dataset was read at: `datasets` names its cache folder after it."""
    for cached in getattr(ds, "cache_files", None) or []:
        folder = Path(cached.get("filename", "")).parent.name
        if re.fullmatch(r"[0-9a-f]{40}", folder):
            return folder
    return None


def read_rows(source: str, split: str, key: str, revision: str | None = None) -> tuple[list[Row], dict[str, Any]]:
    """Rows and provenance of a local file or Hub dataset. `key` names the config key in errors."""
    path = Path(source).expanduser()
    if path.is_file():
        kind = LOCAL_SUFFIXES.get(path.suffix.lower())
        if kind is None:
            raise ScionError(f"{key}: unsupported file type '{path.suffix}' ({path}); use .jsonl, .json, .parquet or .csv")
        rows = _read_json_file(path) if kind == "json" else _read_with_datasets(kind, path)
        return rows, {"source": str(path.resolve()), "sha256": file_sha256(path), "rows": len(rows)}
    if path.exists():
        raise ScionError(f"{key}: {path} is a directory; give a data file")
    if looks_like_path(source):
        raise ScionError(f"{key}: data file not found: {source}")
    return _read_hub_dataset(source, split, revision, key)


# ---------------------------------------------------------------------------------------------
# Rows to checked chat messages
# ---------------------------------------------------------------------------------------------
def detect_format(rows: list[Row]) -> DataFormat:
    """The format of a file, from its first row that could be read."""
    row = next((r for r in rows if r.error is None), rows[0])
    if row.error is not None:
        raise ScionError(f"{row.where}: {row.error}")
    if not isinstance(row.data, dict):
        raise ScionError(f"{row.where}: expected a JSON object per row, got {type(row.data).__name__}")
    keys = set(row.data)
    if "messages" in keys or "conversations" in keys:
        return DataFormat.messages
    if {"prompt", "completion"} <= keys:
        return DataFormat.prompt_completion
    if {"instruction", "output"} <= keys:
        return DataFormat.instruction
    raise ScionError(
        f"{row.where}: cannot tell the data format from columns {sorted(keys)}; expected 'messages', "
        "'prompt'+'completion' or 'instruction'+'output'"
    )


def _text(value: Any, what: str, where: str) -> str:
    if not isinstance(value, str):
        raise ScionError(f"{where}: {what} must be a string, got {type(value).__name__}")
    return value


def raw_messages(data: dict[str, Any]) -> Any:
    """A row's 'messages' (or ShareGPT 'conversations') as stored; raises ValueError for non-JSON text.

    CSV cells hold the list as JSON text, so a string is parsed.
    """
    raw = data.get("messages", data.get("conversations"))
    return json.loads(raw) if isinstance(raw, str) else raw


def message_role_and_content(msg: dict[str, Any]) -> tuple[Any, Any]:
    """(role, content) of one stored message, ShareGPT's {"from": "gpt", "value": ...} mapped to chat roles."""
    if "from" in msg and "role" not in msg:
        return SHAREGPT_ROLES.get(msg["from"], msg["from"]), msg.get("value")
    return msg.get("role"), msg.get("content")


def content_text(content: Any, index: int, where: str) -> str:
    """A message's content as text: a string, or OpenAI-style parts [{"type": "text", "text": ...}, ...].

    Part lists are what many exported chat logs and multimodal datasets hold; text parts are joined
    as written. Any other part (an image, audio) is refused: these are text-only models.
    """
    if isinstance(content, list):
        texts = []
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            if kind != "text" or not isinstance(part.get("text"), str):
                raise ScionError(f"{where}: message {index} content has a {kind!r} part; only text parts can be trained")
            texts.append(part["text"])
        return "".join(texts)
    return _text(content, f"message {index} content", where)


def to_messages(row: Row, fmt: DataFormat) -> list[dict[str, str]]:
    if row.error is not None:
        raise ScionError(f"{row.where}: {row.error}")
    data = row.data
    if not isinstance(data, dict):
        raise ScionError(f"{row.where}: expected a JSON object per row, got {type(data).__name__}")
    if fmt == DataFormat.messages:
        try:
            raw = raw_messages(data)
        except ValueError:
            raise ScionError(f"{row.where}: 'messages' is not a list (a string that is not JSON)") from None
        if not isinstance(raw, list) or not raw:
            raise ScionError(f"{row.where}: 'messages' must be a non-empty list of {{role, content}} objects")
        messages = []
        for i, msg in enumerate(raw):
            if not isinstance(msg, dict):
                raise ScionError(f"{row.where}: message {i} is not an object")
            role, content = message_role_and_content(msg)
            if role not in ROLES:
                raise ScionError(f"{row.where}: message {i} has unknown role {role!r}; expected one of {sorted(ROLES)}")
            message = {"role": role, "content": content_text(content, i, row.where)}
            reasoning = msg.get("reasoning_content")
            if role == "assistant" and reasoning is not None:  # rendered by the template (module doc)
                message["reasoning_content"] = _text(reasoning, f"message {i} reasoning_content", row.where)
            messages.append(message)
    elif fmt == DataFormat.prompt_completion:
        prompt, completion = data.get("prompt"), data.get("completion")
        messages = [
            {"role": "user", "content": _text(prompt, "'prompt'", row.where)},
            {"role": "assistant", "content": _text(completion, "'completion'", row.where)},
        ]
    else:  # instruction / input / output
        instruction = _text(data.get("instruction"), "'instruction'", row.where)
        extra = data.get("input") or ""
        user = instruction + ("\n\n" + _text(extra, "'input'", row.where) if extra else "")
        messages = [{"role": "user", "content": user},
                    {"role": "assistant", "content": _text(data.get("output"), "'output'", row.where)}]
    check_messages(messages, row.where)
    return messages


def check_messages(messages: list[dict[str, str]], where: str) -> None:
    if not any(m["role"] == "assistant" for m in messages):
        raise ScionError(f"{where}: no assistant turn, so nothing to train on")
    for i, m in enumerate(messages):
        if not m["content"].strip():
            raise ScionError(f"{where}: message {i} ({m['role']}) has empty content")
    if any(m["role"] == "system" for m in messages[1:]):
        raise ScionError(f"{where}: a system message may only come first")


# ---------------------------------------------------------------------------------------------
# Tokenizing with the label mask
# ---------------------------------------------------------------------------------------------
def control_tokens(tokenizer) -> list[str]:
    """Added tokens flagged special (<|im_start|>, <|im_end|>, <|endoftext|>, vision tokens...)."""
    return sorted(t.content for t in tokenizer.added_tokens_decoder.values() if t.special)


def render_conversation(messages, tokenizer, controls, where: str) -> str:
    """The conversation as the chat template renders it, after refusing control-token text in content
    and text that is not valid Unicode."""
    for i, m in enumerate(messages):
        try:
            m["content"].encode("utf-8")
        except UnicodeEncodeError as e:  # JSON may escape half of a UTF-16 pair ("\ud800"); no tokenizer takes it
            raise ScionError(f"{where}: message {i} ({m['role']}) is not valid Unicode text: it holds a lone surrogate "
                             f"{m['content'][e.start]!r} at character {e.start}") from None
        for token in controls:
            if token in m["content"]:
                raise ScionError(
                    f"{where}: message {i} ({m['role']}) contains the control token text {token!r}; "
                    "it would be read as a real control token, so such rows are rejected"
                )
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False)
    except Exception as e:  # the template itself refused the conversation (raise_exception in Jinja)
        raise ScionError(f"{where}: the chat template cannot render this row: {_first_line(e)}") from None


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__


def _encode(tokenizer, texts: list[str], wheres: list[str], offsets: bool) -> list:
    """Each text's encoding (input_ids, offsets or None), or the ScionError of a text the tokenizer refused.

    One batch call (spread over the CPU cores by the fast tokenizer); if it fails, the texts are
    encoded one by one so that only the rows at fault are reported.
    """
    def encode(batch):
        encoding = tokenizer(batch, add_special_tokens=False, return_offsets_mapping=offsets)
        return [(ids, encoding["offset_mapping"][n] if offsets else None) for n, ids in enumerate(encoding["input_ids"])]

    try:
        return encode(texts)
    except Exception:
        pass
    results = []
    for text, where in zip(texts, wheres):
        try:
            results.append(encode([text])[0])
        except Exception as e:
            results.append(ScionError(f"{where}: the tokenizer cannot encode this row: {_first_line(e)}"))
    return results


def has_reasoning(message: dict) -> bool:
    """Whether an assistant message carries reasoning (reasoning_content, or <think>...</think> content)."""
    reasoning = message.get("reasoning_content")
    if isinstance(reasoning, str) and reasoning.strip():
        return True
    content = message.get("content") or ""
    return "</think>" in content and bool(content.split("</think>")[0].replace("<think>", "").strip())


def generation_prompt_heads(tokenizer) -> tuple[str, ...]:
    """What the template's generation prompt puts after `<|im_start|>assistant\\n`, with thinking on and
    off (longest first): the start of an assistant block that is prompt, not loss, at inference."""
    probe = [{"role": "user", "content": "x"}]
    plain = tokenizer.apply_chat_template(probe, tokenize=False)
    heads = set()
    for thinking in (True, False):
        prompt = tokenizer.apply_chat_template(probe, tokenize=False, add_generation_prompt=True, enable_thinking=thinking)
        tail = prompt[len(plain):] if prompt.startswith(plain) else ""
        if tail.startswith(ASSISTANT_HEADER):
            heads.add(tail[len(ASSISTANT_HEADER):])
    return tuple(sorted(heads, key=len, reverse=True))


def assistant_labels(text: str, input_ids: list[int], offsets, assistant_turns: int, where: str,
                     prompt_heads: tuple[str, ...] = (EMPTY_THINK,)) -> list[int]:
    """Labels that train exactly the tokens lying inside an assistant block of `text`, -100 elsewhere.

    A block that starts with one of `prompt_heads` (what the generation prompt holds; the longest that
    fits) has that start left as prompt. Token character offsets are non-decreasing (byte-level BPE may
    give the pieces of one character the same span), so the tokens inside a block are one slice, found
    by bisection.
    """
    spans = []
    for match in ASSISTANT_BLOCK.finditer(text):
        start, end = match.span(1)
        head = next((h for h in prompt_heads if h and text.startswith(h, start)), "")
        spans.append((start + len(head), end))
    if len(spans) != assistant_turns:
        raise ScionError(
            f"{where}: the chat template rendered {len(spans)} ChatML assistant blocks for {assistant_turns} assistant "
            "turns; assistant-only loss needs a ChatML (<|im_start|>assistant ... <|im_end|>) template"
        )
    starts = [start for start, _ in offsets]
    ends = [end for _, end in offsets]
    labels = [-100] * len(input_ids)
    for span_start, span_end in spans:
        first, stop = bisect.bisect_left(starts, span_start), bisect.bisect_right(ends, span_end)
        labels[first:stop] = input_ids[first:stop]
    return labels


def tokenize_conversations(conversations, tokenizer, assistant_only_loss: bool, wheres, controls=None) -> list:
    """(input_ids, labels) for each conversation, or the ScionError that describes what is wrong with it.

    All texts go to the fast tokenizer in one batch call, which spreads them over the CPU cores.
    """
    controls = control_tokens(tokenizer) if controls is None else controls
    heads = generation_prompt_heads(tokenizer) if assistant_only_loss else ()
    results: list = [None] * len(conversations)
    texts, positions = [], []
    for i, (messages, where) in enumerate(zip(conversations, wheres)):
        try:
            texts.append(render_conversation(messages, tokenizer, controls, where))
            positions.append(i)
        except ScionError as e:
            results[i] = e
    if not texts:
        return results
    encodings = _encode(tokenizer, texts, [wheres[i] for i in positions], assistant_only_loss)
    for n, i in enumerate(positions):
        if isinstance(encodings[n], ScionError):
            results[i] = encodings[n]
            continue
        input_ids, offsets = encodings[n]
        if not assistant_only_loss:
            results[i] = (input_ids, list(input_ids))
            continue
        turns = sum(m["role"] == "assistant" for m in conversations[i])
        try:
            results[i] = (input_ids, assistant_labels(texts[n], input_ids, offsets, turns, wheres[i], heads))
        except ScionError as e:
            results[i] = e
    return results


def tokenize_conversation(messages, tokenizer, assistant_only_loss: bool = True, controls=None, where: str = "row"):
    """input_ids and labels for one conversation, rendered with the tokenizer's chat template."""
    result = tokenize_conversations([messages], tokenizer, assistant_only_loss, [where], controls)[0]
    if isinstance(result, ScionError):
        raise result
    return result


TOKENIZE_CHUNK = 1000  # rows rendered and tokenized per batch call (bounded memory, a moving progress bar)


def tokenize_rows(rows: list[Row], fmt: DataFormat, tokenizer, cfg: DataConfig, stats: SplitStats, desc: str = "tokenizing"):
    """Check and tokenize every row; returns the examples and fills `stats`.

    Every row is checked before anything fails, so one run reports all the bad rows (their count
    and the first few locations) instead of one per attempt.
    """
    from tqdm.auto import tqdm

    controls = control_tokens(tokenizer)
    examples, problems = [], []
    seen: dict[str, str] = {}
    bar = tqdm(total=len(rows), desc=desc, unit="rows", disable=len(rows) < 5 * TOKENIZE_CHUNK)
    for chunk_start in range(0, len(rows), TOKENIZE_CHUNK):
        chunk = rows[chunk_start:chunk_start + TOKENIZE_CHUNK]
        parsed = []  # each row's checked messages, or the error that describes it
        for row in chunk:
            try:
                parsed.append(conversation(row, fmt, cfg))
            except ScionError as e:
                parsed.append(e)
            except Exception as e:  # a shape no check foresaw (e.g. a list as role): still this row's one line
                parsed.append(ScionError(f"{row.where}: cannot read this row: {_first_line(e)}"))
        good = [i for i, messages in enumerate(parsed) if not isinstance(messages, ScionError)]
        encoded = dict(zip(good, tokenize_conversations([parsed[i] for i in good], tokenizer, cfg.assistant_only_loss,
                                                        [chunk[i].where for i in good], controls)))
        for i, row in enumerate(chunk):
            stats.rows += 1
            result = encoded.get(i, parsed[i])  # (input_ids, labels), or the row's error
            if isinstance(result, ScionError):
                problems.append(str(result))
                continue
            example = _fit_example(row, parsed[i], *result, cfg, stats, seen, problems)
            if example is not None:
                examples.append(example)
        bar.update(len(chunk))
    bar.close()
    if len(problems) == 1:
        raise ScionError(problems[0])
    if problems:
        raise ScionError(f"{len(problems)} of {stats.rows} rows are invalid; the first {min(len(problems), MAX_SHOWN)}: "
                         + " | ".join(problems[:MAX_SHOWN]))
    return examples


def _fit_example(row, messages, input_ids, labels, cfg: DataConfig, stats: SplitStats, seen, problems):
    """One tokenized row after the duplicate check and the length policy; None if it is not kept."""
    key = json.dumps(messages, sort_keys=True)
    if key in seen:
        stats.duplicates += 1
        if stats.duplicates <= MAX_SHOWN:
            stats.duplicate_examples.append(f"{row.where} repeats {seen[key]}")
    else:
        seen[key] = row.where
    if len(input_ids) > cfg.max_length:
        if cfg.truncation == Truncation.drop:
            stats.dropped_too_long += 1
            return None
        input_ids, labels = input_ids[: cfg.max_length], labels[: cfg.max_length]
        stats.truncated += 1
    trained = sum(label != -100 for label in labels)
    if trained == 0:
        problems.append(
            f"{row.where}: no trained token left after truncation to data.max_length={cfg.max_length} "
            "(the answer is cut off entirely); raise data.max_length or set data.truncation=drop"
        )
        return None
    stats.examples += 1
    stats.with_reasoning += any(m["role"] == "assistant" and has_reasoning(m) for m in messages)
    stats.tokens += len(input_ids)
    stats.trained_tokens += trained
    return {"input_ids": input_ids, "labels": labels}


def conversation(row: Row, fmt: DataFormat, cfg: DataConfig) -> list[dict[str, str]]:
    """The checked chat messages of a row, with data.system_prompt applied as in training."""
    messages = to_messages(row, fmt)
    if cfg.system_prompt is not None and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": cfg.system_prompt}] + messages
    return messages
