"""The held-out examples an evaluation scores, read exactly as training read them.

The rows come from `train.data.split_rows` with the run's data config and seed, so a split made
with `data.eval_ratio` holds the same rows as during training, and every row goes through
`train.data.conversation` (same checks, same system-prompt policy). Each example keeps:
- the whole conversation (its assistant tokens give the held-out loss), and
- the conversation up to its LAST assistant turn as the generation prompt, with that turn's
  content as the reference answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from train.config import DataFormat, ScionConfig
from train.data import Row, content_text, conversation, message_role_and_content, raw_messages, split_rows
from train.errors import ScionError


@dataclass
class EvalExample:
    index: int  # position in the eval split
    where: str  # "path:line", for error messages
    messages: list[dict[str, str]]  # the whole conversation
    prompt: list[dict[str, str]]  # up to (not including) the last assistant turn
    reference: str  # the last assistant turn's content


@dataclass
class EvalSet:
    examples: list[EvalExample]
    available: int  # rows in the eval split before eval.max_examples
    source: dict[str, Any]  # provenance: source and fingerprint


def _filled(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def reference_problem(row: Row, fmt: DataFormat) -> Optional[str]:
    """Why a row has no reference answer to score a generation against, or None when it has one.

    Checked before `conversation()` so the error says "no reference answer" rather than the
    training wording ("nothing to train on"); other malformations are left to `conversation()`.
    """
    data = row.data if isinstance(row.data, dict) else {}
    if fmt == DataFormat.prompt_completion:
        return None if _filled(data.get("completion")) else "its 'completion' is missing or empty"
    if fmt == DataFormat.instruction:
        return None if _filled(data.get("output")) else "its 'output' is missing or empty"
    try:
        raw = raw_messages(data)
    except ValueError:
        return None
    if not isinstance(raw, list):
        return None
    turns = [message_role_and_content(m) for m in raw if isinstance(m, dict)]
    answers = [content for role, content in turns if role == "assistant"]
    if not answers:
        return "it has no assistant turn"
    try:
        last = content_text(answers[-1], len(raw) - 1, row.where)
    except ScionError:  # missing or not text: no answer to score against
        last = None
    if not _filled(last):
        return "its last assistant turn is empty"
    return None


def split_at_last_answer(messages: list[dict[str, str]]) -> tuple[list[dict[str, str]], str]:
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return messages[:last], messages[last]["content"]


def fingerprint(source: dict[str, Any], sources: list[dict[str, Any]]) -> Optional[str]:
    """One string that changes whenever the evaluated rows could: a file's sha256, a Hub
    dataset's fingerprint, or for a ratio split the train file's hash with the ratio and seed."""
    if source.get("sha256") or source.get("fingerprint"):
        return source.get("sha256") or source.get("fingerprint")
    if "split_from_train" in source:
        train = next((s for s in sources if s.get("role") == "train"), {})
        base = train.get("sha256") or train.get("fingerprint")
        return f"{base}:eval_ratio={source['split_from_train']}:seed={source.get('seed')}" if base else None
    return None


def load_eval_set(config: ScionConfig, max_examples: Optional[int]) -> EvalSet:
    """The first `max_examples` rows of the run's eval split, checked and split into prompt + reference."""
    data = config.data
    rows = split_rows(data, seed=config.trainer.seed)
    if not rows.eval:
        raise ScionError(
            "data: the run has no eval split (data.eval is null and data.eval_ratio is 0); evaluation needs "
            "held-out rows with reference answers"
        )
    source = next(s for s in rows.sources if s.get("role") == "eval")
    source = dict(source, fingerprint=fingerprint(source, rows.sources))
    chosen = rows.eval if max_examples is None else rows.eval[:max_examples]
    examples = []
    for index, row in enumerate(chosen):
        problem = reference_problem(row, rows.eval_format)
        if problem:
            raise ScionError(f"data.eval: {row.where}: {problem}, so there is no reference answer to score against")
        messages = conversation(row, rows.eval_format, data)
        prompt, reference = split_at_last_answer(messages)
        examples.append(EvalExample(index=index, where=row.where, messages=messages, prompt=prompt, reference=reference))
    return EvalSet(examples=examples, available=len(rows.eval), source=source)
